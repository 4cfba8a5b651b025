"""`transferkit classify`: ImageNet labels for images, from a pretrained backbone."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli import output


def classify(
    images: list[Path] = typer.Argument(None, help="image files or folders (searched recursively for image files)"),
    samples: bool = typer.Option(False, "--samples", help="also classify the sample photos that installed packages ship"),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", "-b", help="timm name; see `transferkit backbones`"),
    weights: str = typer.Option("auto", "--weights", help="auto, a .safetensors/.pth file, package, hub, or none"),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, max=1000, help="labels to show per image"),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="images per forward pass"),
    engine: str = typer.Option("auto", "--engine", help="auto (fastest faithful, measured here), onnxruntime, openvino or torch"),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not read or write the feature cache"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Classify images into the 1000 ImageNet classes with a pretrained backbone.

    Results are printed as each chunk of batches is classified, so a large folder shows progress at once.
    The network runs on the engine `train` and `predict` use (`transferkit engines`).
    """
    from transferkit.backbones import create_backbone
    from transferkit.classifier.imagenet import iter_classify
    from transferkit.data.files import list_image_files
    from transferkit.data.samples import sample_photos

    output.check_format(fmt, ("table", "json"))
    output.check_format(engine, ("auto", "torch", "onnxruntime", "openvino"))
    paths = list_image_files(images or [])
    if samples:
        paths += list(sample_photos().values())
    if not paths:
        raise output.fail("no images given: pass image files or folders, or --samples for the photos that installed packages ship")
    model = create_backbone(backbone, weights=weights)
    spec = model.spec
    results = iter_classify(paths, model, top_k=top_k, batch_size=batch_size, engine=engine, cache=not no_cache)
    if fmt == "json":
        rows = [r.to_dict() for r in results]
        output.print_json({"backbone": spec.to_dict(), "results": rows})
        any_ok = any(r["error"] is None for r in rows)
    else:
        output.info(f"backbone {spec.name} ({spec.timm_name}), weights: {spec.weights_source} {spec.weights_location}")
        any_ok = _print_as_they_come(results)
    if not any_ok:
        raise typer.Exit(1)


def _print_as_they_come(results) -> bool:
    """Each image's ranked labels (or its error) as soon as its batch is done; True if any image was read."""
    from rich.markup import escape  # file names may hold [brackets]

    any_ok = False
    for r in results:
        if not r.ok:
            output.error_line(f"{escape(r.path)}: {escape(r.error)}")
            continue
        any_ok = True
        output.line(escape(r.path))
        for rank, (_, label, p) in enumerate(r.top, 1):
            output.info(f"  {rank:>3}  {p:.4f}  {label}")
    return any_ok
