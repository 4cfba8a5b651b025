"""`transferkit featuremaps` and `transferkit dream`: looking inside a network."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli import output


def _load_model(backbone: str | None, bundle: Path | None, weights: str):
    """A bundle's ClassifierModel when --model is given, else a pretrained backbone."""
    if backbone and bundle:
        raise typer.BadParameter("give either --model BUNDLE or --backbone NAME, not both")
    if bundle is not None:
        from transferkit.classifier.bundle import load_bundle

        return load_bundle(bundle)
    from transferkit.backbones import DEFAULT_BACKBONE, create_backbone

    return create_backbone(backbone or DEFAULT_BACKBONE, weights=weights)


def _write_atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename (no half-written files)."""
    from transferkit.core.atomic import atomic_write

    atomic_write(path, write)


def _save_png(path: Path, rgb) -> None:
    from PIL import Image

    _write_atomic(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


def featuremaps(
    image: Path = typer.Argument(None, help="the image to look at (any format Pillow reads)"),
    backbone: str = typer.Option(None, "--backbone", "-b", help="timm name (default efficientnet_lite0)"),
    model: Path = typer.Option(None, "--model", "-m", help="a model bundle directory (from `transferkit train`)"),
    weights: str = typer.Option("auto", "--weights", help="backbone weights: auto, a file, package, hub or none"),
    layer: str = typer.Option("1", "--layer", "-l", help="index into --list-layers, or a module name from named_modules()"),
    list_layers_flag: bool = typer.Option(False, "--list-layers", help="list the layers that have an index and exit"),
    channels: int = typer.Option(16, "--channels", "-c", min=1, max=1024, help="how many of the most active channels to show"),
    tile: int = typer.Option(96, "--tile", min=8, max=512, help="side of each channel's tile in pixels"),
    out: Path = typer.Option(None, "--out", "-o", help="PNG to write (default: <image>_<layer>.png in the current folder)"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Show what a layer sees: a grid PNG of its most active channels for one image."""
    from transferkit.explain.featuremaps import extract_feature_maps, feature_map_grid, list_layers, load_image_for, resolve_layer

    output.check_format(fmt, ("table", "json"))
    net = _load_model(backbone, model, weights)
    if list_layers_flag:
        layers = list_layers(net)
        if fmt == "json":
            output.print_json([{"index": i.index, "name": i.name, "role": i.role, "shape": list(i.shape)} for i in layers])
        else:
            output.print_table("layers (early: edges and colours; late: textures and parts)", ("index", "name", "role", "output C x H x W"),
                               [(i.index, i.name, i.role, "x".join(str(v) for v in i.shape)) for i in layers])
        return
    if image is None:
        raise typer.BadParameter("IMAGE is required (or use --list-layers)")
    from transferkit.core.errors import DataError
    from transferkit.data.decode import ImageDecodeError

    try:
        x = load_image_for(net, image)
    except (ImageDecodeError, FileNotFoundError, OSError) as exc:
        raise DataError(f"cannot read {image}: {exc}") from None
    info = resolve_layer(net, layer)
    maps = extract_feature_maps(net, x, info, channels=channels)
    grid = feature_map_grid(maps, tile=tile)
    out = out or Path(f"{Path(image).stem}_{info.name.replace('.', '_')}.png")
    _save_png(out, grid)
    if fmt == "json":
        output.print_json({"image": str(image), "layer": info.name, "index": info.index, "shape": list(info.shape),
                           "channels": maps.channels, "mean_activation": maps.scores, "out": str(out)})
    else:
        output.info(f"layer {info.name} ({info.role or 'module'}, {'x'.join(str(v) for v in info.shape)}): "
                    f"{len(maps.channels)} most active channels -> {out}")


def dream(
    target: str = typer.Argument(..., metavar="CLASS", help='class to grow: an ImageNet name ("tabby cat"), an index, or a class of --model'),
    backbone: str = typer.Option(None, "--backbone", "-b", help="timm name (default efficientnet_lite0)"),
    model: Path = typer.Option(None, "--model", "-m", help="a model bundle directory: grow one of its own classes"),
    weights: str = typer.Option("auto", "--weights", help="backbone weights: auto, a file, package, hub or none"),
    steps: int = typer.Option(256, "--steps", min=1, help="optimisation steps"),
    tv_weight: float = typer.Option(None, "--tv-weight", min=0.0,
                                    help="total-variation weight (default 100; 0 = the lesson's noisy version: raw pixels, no transforms)"),
    l2_weight: float = typer.Option(0.0, "--l2-weight", min=0.0, help="L2 weight pulling pixels towards grey"),
    size: int = typer.Option(None, "--size", min=8, max=2048, help="image side in pixels (default: the network's input size)"),
    seed: int = typer.Option(0, "--seed", help="seeds the starting noise and the random transforms"),
    param: str = typer.Option(None, "--param", help="fourier or pixel (default fourier; pixel when --tv-weight 0)"),
    transforms: bool = typer.Option(None, "--transforms/--no-transforms", help="random jitter/scale/rotate views (default on; off when --tv-weight 0)"),
    objective: str = typer.Option("logit", "--objective", help="logit (-logit) or logprob (-log p)"),
    lr: float = typer.Option(0.05, "--lr", min=1e-6, help="Adam learning rate"),
    compare: bool = typer.Option(False, "--compare", help="also grow the noisy version (tv 0, raw pixels) and write both side by side"),
    gif: Path = typer.Option(None, "--gif", help="also write an animated GIF of the optimisation"),
    out: Path = typer.Option(None, "--out", "-o", help="PNG to write (default dream_<class>.png)"),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: torch's choice, all cores)"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Grow an image from noise until the network sees CLASS in it (an "ideal class image")."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from transferkit.explain.dream import dream as grow
    from transferkit.explain.dream import dream_config

    output.check_format(fmt, ("table", "json"))
    output.check_format(objective, ("logit", "logprob"))
    if param is not None:
        output.check_format(param, ("fourier", "pixel"))
    if threads:
        import torch

        torch.set_num_threads(threads)
    net = _load_model(backbone, model, weights)
    config = dream_config(steps=steps, lr=lr, size=size, seed=seed, objective=objective, l2_weight=l2_weight, tv_weight=tv_weight,
                          param=param, transforms=transforms, gif=gif is not None)
    tasks: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("p={task.fields[p]:.3f}"),
                  TimeElapsedColumn(), console=output.err_console, transient=fmt == "json") as progress:
        def step(variant: str, rec) -> None:
            if variant not in tasks:
                tasks[variant] = progress.add_task(f"{target} ({variant})", total=config.steps, p=0.0)
            progress.update(tasks[variant], advance=1, p=rec.probability)

        result = grow(net, target, config, compare=compare, callback=step)
    name, index = result.class_name, result.class_index
    safe = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_") or str(index)
    out = result.save_png(out or Path(f"dream_{safe}.png"))
    if gif:
        result.save_gif(gif)
    pairs = list(zip(result.variants, result.renders))
    if fmt == "json":
        output.print_json({"class": name, "index": index, "out": str(out), "gif": str(gif) if gif else None,
                           "renders": [dict(variant=label, **r.summary()) for label, r in pairs]})
        return
    rows = [(label, r.config.param, "on" if r.config.transforms else "off", f"{r.config.tv_weight:g}",
             f"{r.probability:.4f}", f"{r.tv:.4f}", f"{r.wall_seconds:.1f}") for label, r in pairs]
    output.print_table(f"{name} (class {index})", ("image", "param", "transforms", "tv weight", "p(class)", "TV", "seconds"), rows)
    renders = result.renders
    if len(renders) == 2 and renders[0].tv > 0:
        output.info(f"the noisy image has {renders[1].tv / renders[0].tv:.1f}x the total variation of the regularised one")
    output.info(f"wrote {out}" + (" (left: regularised, right: noisy)" if compare else "") + (f" and {gif}" if gif else ""))
