"""`transferkit attack` and `transferkit robustness`: adversarial examples and robustness curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    """(model, class_names, description) from a bundle or an ImageNet backbone."""
    if model_path is not None and backbone is not None:
        raise AttackUsageError("give either --model BUNDLE or --backbone NAME, not both")
    if model_path is not None:
        from transferkit.classifier.bundle import load_bundle

        model = load_bundle(model_path)
        return model, list(model.class_names), f"bundle {model_path} ({model.spec.name}, {len(model.class_names)} classes)"
    from transferkit.backbones import DEFAULT_BACKBONE, create_backbone
    from transferkit.backbones.imagenet import imagenet_class_names

    model = create_backbone(backbone or DEFAULT_BACKBONE, weights=weights)
    if model.num_classes != 1000:
        raise AttackUsageError(f"backbone {model.spec.name} has no 1000-class ImageNet head; attack a bundle (--model) instead")
    return model, list(imagenet_class_names()), f"ImageNet backbone {model.spec.name} (weights: {model.spec.weights_source})"


def resolve_class(query: str, class_names: list[str], *, imagenet: bool) -> int:
    """Index of ``query`` among ``class_names``; ImageNet names go through the forgiving resolver.

    A target must be exactly one class: "cat" on an ImageNet model lists the cat classes and asks
    for one (e.g. "tabby cat" or 281).
    """
    if imagenet:
        from transferkit.backbones.imagenet import resolve_imagenet_class

        return resolve_imagenet_class(query)
    q = query.strip().lower()
    if q.isdigit() and int(q) < len(class_names):
        return int(q)
    exact = [i for i, c in enumerate(class_names) if c.lower() == q]
    if not exact:
        exact = [i for i, c in enumerate(class_names) if c.lower().startswith(q)]
    if len(exact) == 1:
        return exact[0]
    listed = ", ".join(class_names[:20]) + (" ..." if len(class_names) > 20 else "")
    what = "matches several" if exact else "is not one"
    raise AttackUsageError(f"class {query!r} {what} of the model's classes: {listed}")


def _label(class_names: list[str], idx: int, imagenet: bool) -> str:
    name = class_names[idx]
    if imagenet:
        from transferkit.backbones.imagenet import short_name

        return f"{short_name(name)} ({idx})"
    return name


def _top(probs, class_names, imagenet: bool, k: int = 3) -> list[tuple[str, float]]:
    vals, idxs = probs.topk(min(k, probs.numel()))
    return [(_label(class_names, int(i), imagenet), float(v)) for v, i in zip(vals.tolist(), idxs.tolist())]


def _figure(clean01, adv01, pert_img, before: str, after: str, stats: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import numpy as np
    from matplotlib.figure import Figure

    from transferkit.attacks.images import tensor_to_pil

    fig = Figure(figsize=(11, 4.2), dpi=110)
    panels = [(tensor_to_pil(clean01), f"original\n{before}"), (pert_img, "perturbation (amplified)"), (tensor_to_pil(adv01), f"adversarial\n{after}")]
    for n, (img, title) in enumerate(panels):
        ax = fig.add_subplot(1, 3, n + 1)
        ax.imshow(np.asarray(img))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(stats, fontsize=9)
    fig.tight_layout()
    from transferkit.core.atomic import save_figure_png

    save_figure_png(fig, path)


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
    out: Path | None = typer.Option(None, "--out", "-o", help="output folder (default: ./attack-<image name>)"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Turn IMAGE into an adversarial example: writes a PNG that fools the model, the perturbation and a figure."""
    import torch

    from transferkit.attacks import attack, psnr, ssim
    from transferkit.attacks.images import frame_for_spec, perturbation_image, save_png
    from transferkit.attacks.robustness import format_eps
    from transferkit.data.decode import load_for_spec, open_rgb

    output.check_format(fmt, ("table", "json"))
    if (target is None) == (not untargeted):
        raise AttackUsageError("say what to do: --target CLASS (e.g. --target 'tabby cat') or --untargeted")
    if norm not in ("linf", "l2"):
        raise AttackUsageError(f"--norm {norm!r} is not one of linf, l2")
    from transferkit.attacks import ATTACKS

    ATTACKS.get(method)  # unknown names fail here with close matches, before the model loads
    eps_value = parse_fraction(eps, "--eps") if norm == "linf" else _parse_l2(eps)
    alpha_value = _parse_alpha(alpha)
    model, class_names, description = _load_model(model_path, backbone, weights)
    imagenet = model_path is None
    target_idx = resolve_class(target, class_names, imagenet=imagenet) if target is not None else None
    spec = model.spec
    clean = load_for_spec(image, spec)[None]
    generator = torch.Generator().manual_seed(seed)
    result = attack(
        model, clean, None, method=method, target=target_idx, eps=eps_value, alpha=alpha_value, steps=steps,
        norm=norm, generator=generator,
    )
    adv = result.adv[0]
    out_dir = out or Path(f"attack-{image.stem}")
    out_dir.mkdir(parents=True, exist_ok=True)
    adv_path = save_png(frame_for_spec(open_rgb(image), spec, adv), out_dir / f"{image.stem}_adv.png")
    pert = perturbation_image(adv - clean[0])
    pert_path = save_png(pert, out_dir / f"{image.stem}_perturbation.png")
    # The proof: read the saved file back through the ordinary preprocessing and classify it.
    with torch.no_grad():
        reread = load_for_spec(adv_path, spec)[None]
        reread_probs = model.eval()(reread).softmax(dim=1)[0]
    reread_pred = int(reread_probs.argmax())
    if target_idx is not None:
        png_fools = reread_pred == target_idx
    else:
        png_fools = reread_pred != int(result.labels[0])
    before, after = _top(result.probs_before[0], class_names, imagenet), _top(reread_probs, class_names, imagenet)
    quality = {
        "linf": float(result.linf[0]),
        "linf_255": float(result.linf[0]) * 255,
        "l2": float(result.l2[0]),
        "psnr_db": float(psnr(clean, result.adv)[0]),
        "ssim": float(ssim(clean, result.adv)[0]),
    }
    eps_text = "none (penalty)" if result.eps is None else (format_eps(result.eps) if norm == "linf" else f"{result.eps:g}")
    stats = (
        f"{method} {norm} eps {eps_text}, {result.steps} steps: L-inf {quality['linf_255']:.1f}/255, "
        f"L2 {quality['l2']:.3f}, PSNR {quality['psnr_db']:.1f} dB, SSIM {quality['ssim']:.4f}"
    )
    fig_path = out_dir / f"{image.stem}_attack.png"
    _figure(clean[0], adv, pert, f"{before[0][0]} {before[0][1]:.1%}", f"{after[0][0]} {after[0][1]:.1%}", stats, fig_path)
    data: dict[str, Any] = {
        "image": str(image),
        "model": description,
        "target": _label(class_names, target_idx, imagenet) if target_idx is not None else None,
        "attack": result.summary(),
        "success": bool(result.success[0]),
        "saved_png_fools_model": bool(png_fools),
        "top3_before": before,
        "top3_after_saved_png": after,
        **quality,
        "files": {"adversarial": str(adv_path), "perturbation": str(pert_path), "figure": str(fig_path)},
    }
    if fmt == "json":
        output.print_json(data)
    else:
        output.info(f"model: {description}")
        goal = f"target {data['target']}" if target_idx is not None else f"away from {_label(class_names, int(result.labels[0]), imagenet)}"
        output.info(f"attack: {stats}; {goal}")
        output.print_table("before", ("rank", "class", "probability"), [(n + 1, c, f"{p:.4f}") for n, (c, p) in enumerate(before)])
        output.print_table("after (saved PNG read back)", ("rank", "class", "probability"), [(n + 1, c, f"{p:.4f}") for n, (c, p) in enumerate(after)])
        output.info(f"success: {'yes' if result.success[0] else 'no'}; saved 8-bit PNG still fools the model: {'yes' if png_fools else 'no'}")
        output.info(f"wrote {adv_path} (lossless, {spec.resize_size}px so its centre crop is exactly the attacked input), {pert_path}, {fig_path}")
    if not png_fools:
        output.warn("the attack did not succeed; try a larger --eps or more --steps")


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


def _imagenet_labels(imageset, model) -> tuple[Any, str]:
    """True ImageNet labels when every class folder names one ImageNet class, else clean predictions."""
    from transferkit.backbones.imagenet import find_imagenet_classes

    mapping = {}
    for name in imageset.class_names:
        found = find_imagenet_classes(name.replace("_", " "))
        if len(found) != 1:
            return None, (
                f"class {name!r} is not exactly one ImageNet class ({len(found)} match); accuracy is measured "
                "against the model's own clean predictions (so clean accuracy is 1 by definition)"
            )
        mapping[name] = found[0]
    return [mapping[imageset.class_names[y]] for y in imageset.labels], ""


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
    import torch

    from transferkit.attacks import format_eps, plot_robustness, robustness_curve
    from transferkit.data import load_images
    from transferkit.data.decode import ImageDecodeError, load_for_spec

    output.check_format(fmt, ("table", "json"))
    if norm not in ("linf", "l2"):
        raise AttackUsageError(f"--norm {norm!r} is not one of linf, l2")
    if backbone is not None:
        if len(args) != 1:
            raise AttackUsageError("with --backbone give only DATA: transferkit robustness DATA --backbone efficientnet_lite0")
        model_arg, data_arg = None, args[0]
    else:
        if len(args) != 2:
            raise AttackUsageError("give MODEL DATA (a bundle directory and a dataset), or DATA with --backbone NAME")
        model_arg, data_arg = args
        if not Path(model_arg).exists():
            backbone, model_arg = model_arg, None  # an ImageNet backbone name in MODEL's place
    eps_values = parse_eps_list(eps) if norm == "linf" else [_parse_l2(e) for e in eps.split(",") if e.strip()]
    alpha_value = _parse_alpha(alpha)
    model, class_names, description = _load_model(Path(model_arg) if model_arg else None, backbone, weights)
    imageset = load_images(data_arg)
    if split is not None:
        imageset = imageset.where_split(split)
    n_total = len(imageset)
    if limit and n_total > limit:
        imageset = imageset.subset(_stratified_sample(list(imageset.labels), limit, seed))
    note = ""
    if model_arg is None:
        labels, note = _imagenet_labels(imageset, model)
    else:
        bundle_index = {c: i for i, c in enumerate(class_names)}
        missing = [c for c in imageset.class_names if c not in bundle_index]
        if missing:
            raise AttackUsageError(
                f"dataset classes {', '.join(missing[:5])} are not among the bundle's classes ({', '.join(class_names[:10])}); "
                "use the data the bundle was trained for"
            )
        labels = [bundle_index[imageset.class_names[y]] for y in imageset.labels]
    tensors, kept = [], []
    for i, p in enumerate(imageset.paths):
        try:
            tensors.append(load_for_spec(p, model.spec))
            kept.append(i)
        except ImageDecodeError as exc:
            output.warn(f"{p}: {exc}")
    if not tensors:
        raise AttackUsageError(f"no readable images in {data_arg}")
    images01 = torch.stack(tensors)
    if labels is None:
        from transferkit.attacks.robustness import _predict

        label_tensor = _predict(model, images01, batch_size)
    else:
        label_tensor = torch.tensor([labels[i] for i in kept])
    if note:
        output.warn(note)
    if fmt == "table":
        output.info(f"model: {description}; data: {data_arg} ({len(kept)} of {n_total} images)")
    curve = robustness_curve(
        model, images01, label_tensor, eps_values, method=method, steps=steps, alpha=alpha_value, norm=norm,
        generator=torch.Generator().manual_seed(seed), batch_size=batch_size,
        progress=(lambda e, k: output.info(f"  eps {format_eps(e)}: attacking {k} images ...") if e > 0 else None) if fmt == "table" else None,
    )
    plot_path = plot or Path("robustness.png")
    plot_robustness([curve], plot_path, title=f"{description}: {method} ({norm}), {len(kept)} images")
    if fmt == "json":
        output.print_json({"model": description, "data": str(data_arg), "note": note or None, "plot": str(plot_path), **curve.to_dict()})
        return
    output.print_table(
        f"{method} ({norm}, {curve.points[-1].attacked if curve.points else 0} attacked), clean accuracy {curve.clean_accuracy:.3f}",
        ("eps", "accuracy", "attack success", "attacked", "mean L-inf", "seconds"),
        curve.rows(),
    )
    output.info(f"wrote {plot_path}")


def _stratified_sample(labels: list[int], limit: int, seed: int) -> list[int]:
    """``limit`` indices drawn round-robin over the classes (balanced), reproducible for a seed; sorted."""
    import random

    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    for idx in by_class.values():
        rng.shuffle(idx)
    # round-robin over the shuffled classes keeps every class even for small limits
    chosen: list[int] = []
    queues = [list(v) for _, v in sorted(by_class.items())]
    while len(chosen) < limit and any(queues):
        for q in queues:
            if q and len(chosen) < limit:
                chosen.append(q.pop())
    return sorted(chosen)
