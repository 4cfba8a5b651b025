"""`transferkit attack` and `transferkit robustness`: adversarial examples and robustness curves."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli import output
from transferkit.core.errors import TransferkitError


class AttackUsageError(TransferkitError):
    """A bad value for an attack option (eps fraction, class name, model choice)."""


def parse_fraction(text: str, what: str = "eps") -> float:
    """"4/255" -> 0.01568..., "0.03" -> 0.03; values must be pixel units in [0, 1]."""
    raw = text.strip()
    try:
        if "/" in raw:
            num, den = raw.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(raw)
    except (ValueError, ZeroDivisionError):
        raise AttackUsageError(f"{what} {text!r} is not a number; write it like 4/255 or 0.0157") from None
    if not 0 <= value <= 1:
        hint = f" (did you mean {raw}/255?)" if value > 1 and "/" not in raw else ""
        raise AttackUsageError(f"{what} {text!r} = {value:g} is outside the pixel range [0, 1]{hint}")
    return value


def parse_eps_list(text: str) -> list[float]:
    """"0,1/255,2/255" -> [0.0, 0.0039..., 0.0078...]."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if not parts:
        raise AttackUsageError("--eps needs at least one value, like 0,1/255,2/255,4/255,8/255")
    return [parse_fraction(p) for p in parts]


def _load_model(model_path: Path | None, backbone: str | None, weights: str):
    """(model, description) from a bundle or an ImageNet backbone."""
    if model_path is not None and backbone is not None:
        raise AttackUsageError("give either --model BUNDLE or --backbone NAME, not both")
    if model_path is not None:
        from transferkit.classifier.bundle import load_bundle

        model = load_bundle(model_path)
        return model, f"bundle {model_path} ({model.spec.name}, {len(model.class_names)} classes)"
    from transferkit.backbones import DEFAULT_BACKBONE, create_backbone

    model = create_backbone(backbone or DEFAULT_BACKBONE, weights=weights)
    if model.num_classes != 1000:
        raise AttackUsageError(f"backbone {model.spec.name} has no 1000-class ImageNet head; attack a bundle (--model) instead")
    return model, f"ImageNet backbone {model.spec.name} (weights: {model.spec.weights_source})"


def _check_norm(norm: str) -> None:
    if norm not in ("linf", "l2"):
        raise AttackUsageError(f"--norm {norm!r} is not one of linf, l2")


def _probability_rows(top: list[tuple[str, float]]) -> list[tuple[int, str, str]]:
    return [(n + 1, c, f"{p:.4f}") for n, (c, p) in enumerate(top)]


def attack_command(
    image: Path = typer.Argument(..., help="the photo to attack (any format Pillow reads)"),
    target: str | None = typer.Option(None, "--target", "-t", help="class to turn it into: an ImageNet class (name or index) or a bundle class"),
    untargeted: bool = typer.Option(False, "--untargeted", help="push away from the model's own prediction instead"),
    model_path: Path | None = typer.Option(None, "--model", "-m", help="a classifier bundle directory"),
    backbone: str | None = typer.Option(None, "--backbone", "-b", help="an ImageNet backbone (default efficientnet_lite0)"),
    weights: str = typer.Option("auto", "--weights", help="backbone weights: auto, a file, package, hub or none"),
    method: str = typer.Option("pgd", "--method", help="fgsm, bim, pgd or unconstrained"),
    eps: str = typer.Option("4/255", "--eps", help="L-inf (or L2) radius in pixel units, e.g. 4/255"),
    steps: int | None = typer.Option(None, "--steps", min=1, help="iterations (default: fgsm 1, bim/pgd 10, unconstrained 100)"),
    alpha: str | None = typer.Option(None, "--alpha", help="step size, e.g. 1/255 (default 2.5*eps/steps; unconstrained: Adam lr 1/255)"),
    norm: str = typer.Option("linf", "--norm", help="linf or l2"),
    seed: int = typer.Option(0, "--seed", help="seed for PGD's random start"),
    out: Path | None = typer.Option(None, "--out", "-o", help="the adversarial PNG (a name ending in .png) or a folder (default: ./attack-<image name>)"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Turn IMAGE into an adversarial example: writes a PNG that fools the model, the perturbation and a figure.

    With --out adv.png the adversarial image is written to adv.png (adv_perturbation.png and
    adv_attack.png beside it); any other --out is a folder.
    """
    from transferkit.attacks import ATTACKS, attack_image_file, attack_output_paths

    output.check_format(fmt, ("table", "json"))
    if (target is None) == (not untargeted):
        raise AttackUsageError("say what to do: --target CLASS (e.g. --target 'tabby cat') or --untargeted")
    _check_norm(norm)
    ATTACKS.get(method)  # unknown names fail here with close matches, before the model loads
    attack_output_paths(image, out)  # a lossy --out fails here too
    eps_value = parse_fraction(eps, "--eps") if norm == "linf" else _parse_l2(eps)
    alpha_value = _parse_alpha(alpha)
    model, description = _load_model(model_path, backbone, weights)
    report = attack_image_file(
        model, image, target=target, method=method, eps=eps_value, alpha=alpha_value, steps=steps, norm=norm, seed=seed,
        out=out, description=description,
    )
    if fmt == "json":
        output.print_json(report.to_dict())
    else:
        _print_attack_table(report, model.spec.resize_size)
    if not report.saved_png_fools_model:
        output.warn("the attack did not succeed; try a larger --eps or more --steps")


def _print_attack_table(report, resize_size: int) -> None:
    goal = f"target {report.target}" if report.target is not None else f"away from {report.source}"
    files = report.files
    output.info(f"model: {report.model}")
    output.info(f"attack: {report.settings_line()}; {goal}")
    output.print_table("before", ("rank", "class", "probability"), _probability_rows(report.top_before))
    output.print_table("after (saved PNG read back)", ("rank", "class", "probability"), _probability_rows(report.top_after))
    output.info(f"success: {'yes' if report.success else 'no'}; saved 8-bit PNG still fools the model: "
                f"{'yes' if report.saved_png_fools_model else 'no'}")
    output.info(f"wrote {files.adversarial} (lossless, {resize_size}px so its centre crop is exactly the attacked input), "
                f"{files.perturbation}, {files.figure}")


def _parse_l2(text: str) -> float:
    try:
        value = float(text.split("/")[0]) / float(text.split("/")[1]) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise AttackUsageError(f"--eps {text!r} is not a number") from None
    if value < 0:
        raise AttackUsageError(f"--eps {text!r} must be >= 0")
    return value


def _parse_alpha(text: str | None) -> float | None:
    return None if text is None else parse_fraction(text, "--alpha")


def robustness_command(
    args: list[str] = typer.Argument(..., help="MODEL DATA: a bundle directory (or ImageNet backbone name) and a dataset; with --backbone only DATA"),
    backbone: str | None = typer.Option(None, "--backbone", "-b", help="attack this ImageNet backbone instead of a bundle"),
    weights: str = typer.Option("auto", "--weights", help="backbone weights: auto, a file, package, hub or none"),
    eps: str = typer.Option("0,1/255,2/255,4/255,8/255", "--eps", help="comma-separated radii in pixel units"),
    method: str = typer.Option("pgd", "--method", help="fgsm, bim or pgd"),
    steps: int | None = typer.Option(None, "--steps", min=1, help="iterations (default: fgsm 1, bim/pgd 10)"),
    alpha: str | None = typer.Option(None, "--alpha", help="step size (default 2.5*eps/steps for each eps)"),
    norm: str = typer.Option("linf", "--norm", help="linf or l2"),
    limit: int = typer.Option(200, "--limit", min=0, help="attack at most this many images (a seeded sample, classes balanced); 0 for all"),
    split: str | None = typer.Option(None, "--split", help="use only this split of the dataset (train, val, test) when it has one"),
    seed: int = typer.Option(0, "--seed", help="seed for the sample and PGD's random start"),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="images per forward/backward pass"),
    plot: Path | None = typer.Option(None, "--plot", help="write the accuracy-vs-eps plot here (PNG); default robustness.png"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Accuracy against eps (untargeted attacks) for a bundle or an ImageNet backbone, as a table and a plot."""
    from transferkit.attacks import dataset_robustness, format_eps

    output.check_format(fmt, ("table", "json"))
    _check_norm(norm)
    model_arg, backbone, data_arg = _model_and_data(args, backbone)
    eps_values = parse_eps_list(eps) if norm == "linf" else [_parse_l2(e) for e in eps.split(",") if e.strip()]
    alpha_value = _parse_alpha(alpha)
    model, description = _load_model(Path(model_arg) if model_arg else None, backbone, weights)
    if fmt == "table":
        output.info(f"model: {description}; data: {data_arg}")
    run = dataset_robustness(
        model, data_arg, eps_values, method=method, steps=steps, alpha=alpha_value, norm=norm, split=split, limit=limit,
        seed=seed, batch_size=batch_size, plot=plot or Path("robustness.png"), description=description,
        progress=(lambda e, k: output.info(f"  eps {format_eps(e)}: attacking {k} images ...") if e > 0 else None) if fmt == "table" else None,
    )
    for path, reason in run.unreadable:
        output.warn(f"{path}: {reason}")
    if run.note:
        output.warn(run.note)
    if fmt == "json":
        output.print_json(run.to_dict())
        return
    curve = run.curve
    output.print_table(
        f"{method} ({norm}, {run.images} of {run.total} images, {curve.points[-1].attacked if curve.points else 0} attacked), "
        f"clean accuracy {curve.clean_accuracy:.3f}",
        ("eps", "accuracy", "attack success", "attacked", "mean L-inf", "seconds"),
        curve.rows(),
    )
    output.info(f"wrote {run.plot}")


def _model_and_data(args: list[str], backbone: str | None) -> tuple[str | None, str | None, str]:
    """(bundle path, backbone name, data) from the arguments; an ImageNet backbone name may stand for MODEL."""
    if backbone is not None:
        if len(args) != 1:
            raise AttackUsageError("with --backbone give only DATA: transferkit robustness DATA --backbone efficientnet_lite0")
        return None, backbone, args[0]
    if len(args) != 2:
        raise AttackUsageError("give MODEL DATA (a bundle directory and a dataset), or DATA with --backbone NAME")
    model_arg, data_arg = args
    if not Path(model_arg).exists():
        return None, model_arg, data_arg  # an ImageNet backbone name in MODEL's place
    return model_arg, None, data_arg
