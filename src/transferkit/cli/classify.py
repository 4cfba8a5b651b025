"""`transferkit classify`: ImageNet labels for images, from a pretrained backbone."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli import output


def classify(
    images: list[Path] = typer.Argument(None, help="image files (any format Pillow reads)"),
    samples: bool = typer.Option(False, "--samples", help="also classify the sample photos that installed packages ship"),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", "-b", help="timm name; see `transferkit backbones`"),
    weights: str = typer.Option("auto", "--weights", help="auto, a .safetensors/.pth file, package, hub, or none"),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, max=1000, help="labels to show per image"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Classify images into the 1000 ImageNet classes with a pretrained backbone."""
    from transferkit.backbones import create_backbone
    from transferkit.classifier.imagenet import classify_images

    from transferkit.data.samples import sample_photos

    output.check_format(fmt, ("table", "json"))
    paths = list(images or [])
    if samples:
        paths += list(sample_photos().values())
    if not paths:
        raise output.fail("no images given: pass image files, or --samples for the photos that installed packages ship")
    model = create_backbone(backbone, weights=weights)
    spec = model.spec
    results = classify_images(paths, model, top_k=top_k)
    if fmt == "json":
        output.print_json({"backbone": spec.to_dict(), "results": [r.to_dict() for r in results]})
    else:
        output.info(f"backbone {spec.name} ({spec.timm_name}), weights: {spec.weights_source} {spec.weights_location}")
        rows = []
        for r in results:
            if not r.ok:
                output.error_line(f"{r.path}: {r.error}")
                continue
            for n, (_, label, p) in enumerate(r.top):
                rows.append((Path(r.path).name if n == 0 else "", n + 1, label, f"{p:.4f}"))
        if rows:
            output.print_table(None, ("image", "rank", "class", "probability"), rows)
    if not any(r.ok for r in results):
        raise typer.Exit(1)
