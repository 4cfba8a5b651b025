"""`transferkit engines`: every feature engine measured on this machine, and the one `--engine auto` uses."""

from __future__ import annotations

import typer

from transferkit.cli import output


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def engines_command(
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", "-b", help="timm name; see `transferkit backbones`"),
    weights: str = typer.Option("auto", "--weights", help="auto, a .safetensors/.pth file, package, hub, or none"),
    image_size: int = typer.Option(None, "--image-size", min=16, help="input size (default: the weights' own)"),
    precision: str = typer.Option("fp32", "--precision",
                                  help="fp32 (default: only engines that reproduce fp32 PyTorch), auto, bf16 or fp16"),
    device: str = typer.Option(None, "--device", help="cpu or cuda (default: CUDA when available)"),
    refresh: bool = typer.Option(False, "--refresh", help="measure again instead of showing the cached decision"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Measure the feature engines on this machine for a backbone and show which one `--engine auto` picks.

    Each engine is checked against fp32 PyTorch on the pooled features of a probe batch and timed
    for a few seconds; the decision is cached, so `--engine auto` measures once per machine.
    """
    from transferkit.backbones import create_backbone
    from transferkit.features.cache import default_cache_dir
    from transferkit.features.engines import PRECISIONS
    from transferkit.features.select import choose_engine

    output.check_format(fmt, ("table", "json"))
    output.check_format(precision, PRECISIONS)
    model = create_backbone(backbone, weights=weights, image_size=image_size)
    choice = choose_engine(model, precision=precision, device=device, cache_dir=default_cache_dir(), refresh=refresh,
                           include_all=True)
    if fmt == "json":
        output.print_json(choice.to_dict())
        return
    rows, notes = [], []
    for c in sorted(choice.candidates, key=lambda c: -(c.images_per_s or 0)):
        faithful = "yes" if c.faithful else "no" if c.max_abs_diff is not None else "-"
        rows.append((
            c.name, c.precision, _num(c.images_per_s, ".0f"), _num(c.max_abs_diff, ".0e"), _num(c.cosine_min, ".5f"),
            _num(c.top1_agreement, ".2f"), faithful, "yes" if c.allowed else "no", "<-" if c.name == choice.name else "",
        ))
        if c.note:
            notes.append(f"  {c.name}: {c.note}")
    cpu = choice.machine.get("cpu", {})
    output.info(f"{model.spec.name} at {model.spec.image_size}px on {cpu.get('model', '?')}, {choice.machine.get('threads')} threads "
                f"({', '.join(cpu.get('flags', [])) or 'no SIMD flags read'})")
    output.print_table(None, ("engine", "prec", "img/s", "maxdiff", "min cos", "top1", "faithful", "allowed", ""), rows)
    for line in notes:
        output.info(line)
    when = "cached decision" if choice.cached else f"measured now in {choice.seconds:.1f} s"
    output.info(f"--engine auto --precision {precision}: {choice.name} ({when}). {choice.reason}")
