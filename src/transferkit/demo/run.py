"""The whole lesson in one offline run: ``run_demo(DemoConfig()) -> DemoResult``.

Eight steps, each a call into the library that the separate commands use (so the same seed gives
the same numbers). They run in this order, and the console and the report number them the same
way (among the steps asked for, with ``steps=``):

1. ``classify``: the pretrained network labels a few photos (:func:`transferkit.classifier.imagenet.classify_images`).
2. ``transfer``: frozen features + a logistic head on a dataset (:func:`transferkit.pipeline.train.train`,
   ``mode="probe"``, the same call as ``transferkit train``): accuracy, confusion matrix, mistakes.
3. ``featuremaps``: what the channels of early and late layers respond to in a cat photo.
4. ``dream``: ideal "tabby cat" and "zebra" images, with and without the TV penalty
   (:func:`transferkit.explain.render.render_class_image`).
5. ``attack``: a dog photo pushed into "tabby cat" (or a cat into a dog) by targeted PGD
   (:func:`transferkit.attacks.attack`).
6. ``robustness``: the transfer model's accuracy against eps (:func:`transferkit.attacks.robustness_curve`).
7. ``deploy``: the transfer model exported to ONNX (fp32 and int8, calibrated on the dataset) and
   the held-out images predicted through the torch-free runtime (:mod:`transferkit.runtime`).
8. ``finetune``: LP-FT fine-tuning (:func:`transferkit.finetune.finetune`), last, so it can use
   whatever time the budget has left.

A step that cannot run (a missing optional package, no time left) is recorded as skipped with the
reason, and a step that fails is recorded as failed with its error; the others still run and the
report says which. Images are kept as PNG bytes for the self-contained HTML report
(:mod:`transferkit.demo.report`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import platform
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.core.errors import TransferkitError
from transferkit.demo.result import RUN_ORDER, DemoConfig, DemoResult, StepOutcome

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ helpers


def png_bytes(image) -> bytes:
    """PNG bytes of a PIL image, a [3,H,W] float tensor in [0, 1], or an HxWx3 uint8 array."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        import torch

        if isinstance(image, torch.Tensor):
            image = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def thumbnail_png(path: str | Path, size: int = 160) -> bytes:
    """A small PNG of an image file (EXIF-rotated, RGB), for galleries."""
    from PIL import Image

    from transferkit.data.decode import open_rgb

    img = open_rgb(path)
    if max(img.size) < size // 2:
        # Tiny images (Fashion-MNIST's 28 px) are blown up with hard pixel edges, not left as specks.
        factor = max(1, size // max(img.size))
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
    img.thumbnail((size, size))
    return png_bytes(img)


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default: active spinning)"),
        # Other work on the same cores changes every timing here: the load says how much there was.
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def _stable_key(seed: int, text: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=16).digest()


def cap_imageset(imageset, max_images: int, seed: int):
    """A stratified, seeded subset of at most ``max_images`` images (each class keeps its share,
    each split its images' official split); the same on every machine. Returns the set unchanged
    when it is small enough."""
    n = len(imageset)
    if n <= max_images:
        return imageset
    rel = imageset.relative_paths()
    keep: list[int] = []
    for c in range(imageset.num_classes):
        members = [i for i in range(n) if imageset.labels[i] == c]
        quota = max(1, int(round(len(members) * max_images / n)))
        members.sort(key=lambda i: _stable_key(seed, rel[i]))
        keep.extend(members[:quota])
    return imageset.subset(sorted(keep))


def write_imageset_csv(imageset, path: Path) -> Path:
    """Write ``path,label[,split]`` rows (absolute paths) that ``load_images`` reads back to the same set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"] if imageset.split is not None else ["path", "label"])
        for i, p in enumerate(imageset.paths):
            row = [str(Path(p).resolve()), imageset.class_names[imageset.labels[i]]]
            if imageset.split is not None:
                row.append(imageset.split[i])
            w.writerow(row)
    os.replace(tmp, path)
    return path


def _top(probs, names, k: int = 3) -> list[dict[str, Any]]:
    import torch

    values, indices = torch.as_tensor(probs).topk(k)
    return [{"index": int(i), "label": names[int(i)], "probability": float(v)} for v, i in zip(values.tolist(), indices.tolist())]


# ---------------------------------------------------------------------------------- the runner


class _Context:
    """State shared between steps (the backbone, the dataset, the transfer model)."""

    def __init__(self, config: DemoConfig, out: Path, notify: Callable[[str], None], progress_factory=None) -> None:
        self.config = config
        self.progress_factory = progress_factory
        self.out = out
        self.notify = notify
        self.started = time.perf_counter()
        self.backbone = None
        self.resolved = None
        self.data_path: Path | None = None
        self.imageset = None
        self.transfer = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def imagenet_backbone(self):
        if self.backbone is None:
            from transferkit.backbones import create_backbone

            self.backbone = create_backbone(self.config.backbone, weights=self.config.weights,
                                            image_size=self.config.image_size, seed=self.config.seed).eval()
        return self.backbone


def _step_classify(ctx: _Context, step: StepOutcome) -> None:
    from transferkit.classifier.imagenet import classify_images
    from transferkit.data.samples import sample_photos

    photos = sample_photos()
    if not photos:
        step.status, step.message = "skipped", "no sample photos installed (pip install scikit-image gives chelsea, coffee, astronaut, rocket)"
        return
    chosen = dict(list(photos.items())[: ctx.config.photos])
    results = classify_images(list(chosen.values()), ctx.imagenet_backbone(), top_k=3)
    rows = []
    for (name, path), r in zip(chosen.items(), results):
        rows.append({"photo": name, "path": str(path), "error": r.error or None,
                     "top": [{"label": lbl, "probability": p} for _, lbl, p in r.top]})
        if r.ok:
            step.images[f"photo_{name}"] = thumbnail_png(path, 192)
    step.data = {"photos": rows, "backbone": ctx.config.backbone}
    step.command = f"transferkit classify --samples --backbone {ctx.config.backbone} --top-k 3"


def _resolve_data(ctx: _Context) -> None:
    from transferkit.data import load_images
    from transferkit.data.sources import resolve_dataset

    cfg = ctx.config
    ctx.resolved = resolve_dataset(data=cfg.data, dataset=cfg.dataset, fashion_sizes=cfg.fashion_sizes,
                                   progress_factory=ctx.progress_factory)
    ctx.notify(f"dataset: {ctx.resolved.name} at {ctx.resolved.path}\n  why: {ctx.resolved.reason}")
    full = load_images(ctx.resolved.path)
    capped = cap_imageset(full, cfg.max_images, cfg.seed)
    if capped is full:
        ctx.data_path = Path(ctx.resolved.path)
    else:
        # The exact images used, as a CSV `transferkit train` reads: the separate command then
        # sees the same images, labels and official split, so it gives the same numbers.
        ctx.data_path = write_imageset_csv(capped, ctx.out / "dataset.csv")
        ctx.notify(f"  using a stratified subset of {len(capped)} of {len(full)} images (--max-images {cfg.max_images}), listed in {ctx.data_path}")
    ctx.imageset = capped


def transfer_train_config(config: DemoConfig, data_path: str | Path, out_dir: str | Path):
    """The :class:`~transferkit.pipeline.train.TrainConfig` of the demo's transfer step, the same one
    ``transferkit train DATA --backbone B --seed S --out DIR`` builds."""
    from transferkit.pipeline.train import TrainConfig

    return TrainConfig(data=str(data_path), backbone=config.backbone, weights=config.weights, mode="probe",
                       out=str(out_dir), seed=config.seed, engine=config.engine, image_size=config.image_size, report=False)


def _step_transfer(ctx: _Context, step: StepOutcome) -> None:
    from transferkit.pipeline.train import train

    cfg = ctx.config
    if ctx.data_path is None:
        _resolve_data(ctx)
    train_config = transfer_train_config(cfg, ctx.data_path, ctx.out / "model")
    result = train(train_config)
    ctx.transfer = result
    metrics = result.metrics
    ev = result.evaluation
    step.data = {
        "dataset": ctx.resolved.to_dict(),
        "data_path": str(ctx.data_path),
        "images": metrics.get("images"),
        "classes": list(ctx.imageset.class_names),
        "accuracy": metrics.get("accuracy"),
        "top_k": metrics.get("top_k"),
        "macro_f1": metrics.get("macro_f1"),
        "ece": metrics.get("ece"),
        "split": metrics.get("split"),
        "head": metrics.get("head"),
        "features": {k: v for k, v in (metrics.get("features") or {}).items() if isinstance(v, (int, float, str))},
        "timings": metrics.get("timings"),
        "bundle": str(result.bundle_path) if result.bundle_path else None,
        "mistakes": [],
        "confusion_matrix": ev.confusion.tolist() if ev is not None else None,
    }
    if ev is not None:
        from transferkit.evaluate.report import confusion_matrix_png

        step.images["confusion"] = confusion_matrix_png(ev.confusion, ev.class_names)
        for n, wrong in enumerate(ev.confidently_wrong[:8]):
            step.data["mistakes"].append({k: wrong[k] for k in ("path", "true", "predicted", "confidence")})
            if wrong.get("path"):
                step.images[f"mistake_{n}"] = thumbnail_png(wrong["path"], 128)
    step.command = (f"transferkit train {ctx.data_path} --backbone {cfg.backbone} --seed {cfg.seed} "
                    f"--out {ctx.out / 'model'} --no-report")


FINETUNE_CLI_FLAGS = {"epochs": "--epochs", "head_epochs": "--head-epochs", "strategy": "--strategy",
                      "unfreeze": "--unfreeze", "lr": "--lr", "augment": "--augment"}


def finetune_options(config: DemoConfig) -> dict[str, Any]:
    """The fine-tuning settings of the demo, all expressible as `transferkit train --mode finetune` flags:
    the top 3 layer groups train on cached trunk activations of augmented views (the CPU strategy),
    the head starts from the probe (LP-FT) and BatchNorm statistics stay frozen. Measured on the
    demo's Fashion-MNIST subset: 86.3 % / 87.0 % against the probe's 85.3 %, while the current
    ``--mode auto`` CPU settings gave 84.7 % in 468 s (benchmarks/results/demo.md)."""
    return {"epochs": config.finetune_epochs, "head_epochs": 0, "strategy": "cached", "unfreeze": 3, "lr": 2e-3,
            "augment": "light"}


def finetune_train_config(config: DemoConfig, data_path: str | Path, out_dir: str | Path):
    """The TrainConfig of the fine-tuning step, the one `transferkit train DATA --mode finetune ...` builds."""
    from dataclasses import replace

    from transferkit.pipeline.train import finetune_recipe

    options = finetune_options(config)
    return replace(transfer_train_config(config, data_path, out_dir), mode="finetune", finetune=finetune_recipe("finetune", **options),
                   lr_candidates=(options["lr"],))


def _forward_seconds_per_image(ctx: _Context, batch: int = 8) -> float:
    """Wall seconds per image of one eager forward pass of the backbone, measured now (after a warm-up)."""
    import torch

    model = ctx.imagenet_backbone()
    x = torch.rand(batch, *model.spec.input_size)
    with torch.inference_mode():
        model(x[:2])
        t0 = time.perf_counter()
        model(x)
    return (time.perf_counter() - t0) / batch


def _step_finetune(ctx: _Context, step: StepOutcome) -> None:
    cfg = ctx.config
    if cfg.quick:
        step.status, step.message = "skipped", "--quick skips fine-tuning"
        return
    if ctx.transfer is None or ctx.imageset is None:
        step.status, step.message = "skipped", "the transfer step did not produce a model to compare with"
        return
    from transferkit.finetune import FinetuneConfig

    images = ctx.transfer.metrics.get("images") or {}
    n_train = int(images.get("train", len(ctx.imageset)))
    n_eval = len(ctx.imageset) - n_train
    views = FinetuneConfig().cached_views
    # The cached strategy decodes, augments and runs the frozen trunk once per view of each
    # training image, then trains the top blocks on stored activations; evaluation runs the whole
    # network once per held-out image. So the cost is about (views * train + eval) forward passes,
    # priced by timing one eager forward pass on this machine now (cached features from an earlier
    # run say nothing about it). The factor 3.5 covers decoding, augmenting, choosing the probe
    # head's C by cross-validation and training the top blocks: measured here, 292 s for an
    # estimate of 73 s at factor 1 (load 3), so this errs on the side of skipping.
    per_image = _forward_seconds_per_image(ctx)
    estimate = 3.5 * per_image * (views * n_train + n_eval) + 10.0
    left = cfg.time_budget_s - ctx.elapsed()
    step.data["estimate_seconds"] = round(estimate, 1)
    step.data["budget_left_seconds"] = round(left, 1)
    if estimate > left:
        step.status = "skipped"
        step.message = (f"about {estimate:.0f} s needed, {left:.0f} s of the {cfg.time_budget_s:.0f} s budget left; "
                        "rerun with a larger --time-budget or fewer --max-images")
        return
    from transferkit.pipeline.train import train

    result = train(finetune_train_config(cfg, ctx.data_path, ctx.out / "model-finetuned"))
    metrics = result.metrics
    ev = result.evaluation
    step.data.update({
        "accuracy": metrics.get("accuracy"),
        "split": metrics.get("split"),
        "probe_accuracy": ctx.transfer.metrics.get("accuracy"),
        "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()} for h in metrics.get("history", [])],
        "options": finetune_options(cfg),
        "confusion_matrix": ev.confusion.tolist() if ev is not None else None,
        "timings": metrics.get("timings"),
    })
    if ev is not None:
        from transferkit.evaluate.report import confusion_matrix_png

        step.images["confusion"] = confusion_matrix_png(ev.confusion, ev.class_names)
    flags = " ".join(f"{FINETUNE_CLI_FLAGS[k]} {v}" for k, v in finetune_options(cfg).items())
    step.command = (f"transferkit train {ctx.data_path} --mode finetune {flags} --backbone {cfg.backbone} "
                    f"--seed {cfg.seed} --out {ctx.out / 'model-finetuned'} --no-report")


def _cat_photo() -> Path | None:
    from transferkit.data.samples import sample_photo

    return sample_photo("chelsea")


def _step_featuremaps(ctx: _Context, step: StepOutcome) -> None:
    try:
        from transferkit.explain import featuremaps as fm
    except ImportError:
        step.status, step.message = "skipped", "transferkit.explain.featuremaps is not in this build"
        return
    photo = _cat_photo()
    if photo is None:
        step.status, step.message = "skipped", "no cat photo: install scikit-image (it ships chelsea, a tabby cat)"
        return
    model = ctx.imagenet_backbone()
    grids = fm.feature_map_grids(model, photo, layers=fm.default_layers(model))
    for name, (png, info) in grids.items():
        step.images[f"layer_{name}"] = png
        step.data.setdefault("layers", []).append({"layer": name, **info})
    step.images["photo"] = thumbnail_png(photo, 224)
    first = next(iter(grids), "")
    step.command = f"transferkit featuremaps {photo} --backbone {ctx.config.backbone} --layer {first}"


def _step_dream(ctx: _Context, step: StepOutcome) -> None:
    from transferkit.backbones.imagenet import imagenet_class_names, resolve_imagenet_class, short_name
    from transferkit.explain.render import RenderConfig, plain_config, render_class_image

    cfg = ctx.config
    model = ctx.imagenet_backbone()
    names = imagenet_class_names()
    base = RenderConfig(steps=cfg.dream_steps, size=cfg.dream_size, seed=cfg.seed)
    rows = []
    for query in ("tabby cat", "zebra"):
        index = resolve_imagenet_class(query)
        for label, rcfg in (("with TV + transforms", base), ("no TV (raw pixels)", plain_config(base))):
            r = render_class_image(model, index, rcfg, class_name=names[index])
            key = f"{query.replace(' ', '_')}_{'tv' if rcfg is base else 'plain'}"
            step.images[key] = png_bytes(r.image)
            rows.append({"class": query, "variant": label, "image": key, "probability": r.probability, "tv": r.tv,
                         "top": [{"label": short_name(names[i]), "probability": p} for i, p in r.top[:3]],
                         "seconds": round(r.wall_seconds, 2)})
    step.data = {"renders": rows, "steps": cfg.dream_steps, "size": cfg.dream_size}
    step.command = (f"transferkit dream \"tabby cat\" --backbone {cfg.backbone} --steps {cfg.dream_steps} "
                    f"--size {cfg.dream_size} --seed {cfg.seed} --compare")


def _dog_in_dataset(ctx: _Context) -> Path | None:
    """A dog photo from the dataset, when it has a dog class (Oxford-IIIT breeds in lower case are dogs)."""
    s = ctx.imageset
    if s is None:
        return None
    for c, name in enumerate(s.class_names):
        oxford = s.report.format == "oxford-pets" or (ctx.resolved is not None and ctx.resolved.name == "oxford-pets")
        is_dog = name.lower() in ("dog", "dogs") or (oxford and name[:1].islower())
        if is_dog:
            idx = [i for i in range(len(s)) if s.labels[i] == c]
            if idx:
                return s.paths[idx[0]]
    return None


def _step_attack(ctx: _Context, step: StepOutcome) -> None:
    import torch

    from transferkit.attacks import attack, psnr, ssim
    from transferkit.attacks.images import perturbation_image
    from transferkit.backbones.imagenet import imagenet_class_names, resolve_imagenet_class, short_name
    from transferkit.data.decode import load_for_spec
    from transferkit.data.samples import sample_photo

    cfg = ctx.config
    model = ctx.imagenet_backbone()
    names = imagenet_class_names()
    dog = sample_photo("dog")
    source = "the sample photo 'dog' (Debian package darknet)" if dog else ""
    if dog is None:
        dog = _dog_in_dataset(ctx)
        source = "a dog photo from the dataset" if dog else ""
    if dog is not None:
        photo, target_name, direction = dog, "tabby cat", "dog to cat"
    else:
        photo, target_name, direction = _cat_photo(), "golden retriever", "cat to dog"
        source = "the sample photo 'chelsea' (no dog photo at hand: no darknet package, no dog class in the dataset)"
        if photo is None:
            step.status, step.message = "skipped", "no dog or cat photo available (install scikit-image)"
            return
    target = resolve_imagenet_class(target_name)
    x = load_for_spec(photo, model.spec)[None]
    gen = torch.Generator().manual_seed(cfg.seed)
    r = attack(model, x, method="pgd", target=target, eps=cfg.attack_eps, steps=cfg.attack_steps, generator=gen)
    before, after = r.probs_before[0], r.probs_after[0]
    short = [short_name(n) for n in names]
    step.images["original"] = png_bytes(x[0])
    step.images["adversarial"] = png_bytes(r.adv[0])
    step.images["perturbation"] = png_bytes(perturbation_image(r.adv[0] - x[0]))
    step.data = {
        "direction": direction, "photo": str(photo), "source": source, "target": target_name,
        "success": bool(r.success[0]), "eps": cfg.attack_eps, "eps_255": round(cfg.attack_eps * 255, 3), "steps": cfg.attack_steps,
        "linf_255": round(float(r.linf[0]) * 255, 3), "l2": float(r.l2[0]),
        "psnr": float(psnr(x, r.adv)[0]), "ssim": float(ssim(x, r.adv)[0]),
        "top_before": _top(before, short), "top_after": _top(after, short), "seconds": round(r.seconds, 2),
    }
    step.command = (f"transferkit attack {photo} --target \"{target_name}\" --backbone {cfg.backbone} --method pgd "
                    f"--eps {cfg.attack_eps * 255:g}/255 --steps {cfg.attack_steps}")


def _step_robustness(ctx: _Context, step: StepOutcome) -> None:
    import torch

    from transferkit.attacks import plot_robustness, robustness_curve
    from transferkit.data import load_images
    from transferkit.data.decode import load_for_spec

    cfg = ctx.config
    if ctx.transfer is None:
        step.status, step.message = "skipped", "needs the transfer step's model"
        return
    model = ctx.transfer.model.network().eval()
    s = ctx.imageset
    split = s.split or ["test"] * len(s)
    pool = [i for i in range(len(s)) if split[i] == "test"] or list(range(len(s)))
    pool.sort(key=lambda i: _stable_key(cfg.seed, str(s.paths[i])))
    chosen = s.subset(sorted(pool[: cfg.robustness_images]))
    # The attacked images go into a CSV and are read back from it, exactly as
    # `transferkit robustness MODEL that.csv --limit 0` reads them: same images, same order, same batches.
    images_csv = write_imageset_csv(chosen, ctx.out / "robustness_images.csv")
    chosen = load_images(images_csv)
    x = torch.stack([load_for_spec(p, model.spec) for p in chosen.paths])
    y = torch.as_tensor([model.class_names.index(chosen.class_names[c]) for c in chosen.labels], dtype=torch.long)
    batch_size = 16  # the robustness command's default: batch composition can move float results
    curve = robustness_curve(model, x, y, cfg.robustness_eps, method=cfg.robustness_method, steps=cfg.robustness_steps,
                             generator=torch.Generator().manual_seed(cfg.seed), batch_size=batch_size)
    label = lambda e: f"{e * 255:g}/255"  # noqa: E731 - whole 8-bit levels read better than decimals
    plot_path = ctx.out / "robustness.png"
    plot_robustness([curve], plot_path, title=f"{cfg.robustness_method.upper()} on the transfer model, {len(chosen)} images")
    step.images["curve"] = plot_path.read_bytes()
    step.data = {
        "images": len(chosen), "images_csv": str(images_csv), "method": cfg.robustness_method, "steps": cfg.robustness_steps,
        "clean_accuracy": curve.clean_accuracy,
        "points": [{"eps": label(p.eps), "accuracy": p.accuracy, "success_rate": p.success_rate} for p in curve.points],
    }
    eps_arg = ",".join(label(e) for e in cfg.robustness_eps)
    steps_arg = f" --steps {cfg.robustness_steps}" if cfg.robustness_steps else ""
    step.command = (f"transferkit robustness {ctx.out / 'model'} {images_csv} --limit 0 --eps {eps_arg} "
                    f"--method {cfg.robustness_method}{steps_arg} --seed {cfg.seed} --format json")


def _step_deploy(ctx: _Context, step: StepOutcome) -> None:
    """Export the transfer model to ONNX (fp32, and int8 calibrated on the dataset) and predict the
    held-out images through the torch-free runtime."""
    from transferkit.classifier.export import export_model
    from transferkit.runtime import Runtime

    cfg = ctx.config
    if ctx.transfer is None or ctx.transfer.bundle_path is None or ctx.transfer.evaluation is None:
        step.status, step.message = "skipped", "needs the transfer step's saved model and its held-out images"
        return
    bundle, ev = ctx.transfer.bundle_path, ctx.transfer.evaluation
    out = ctx.out / "deploy"
    fp32 = export_model(bundle, out / "model.onnx")
    runtime = Runtime(fp32.path)
    predictions = runtime.predict([Path(p) for p in ev.paths], top_k=1)
    got = [ctx.transfer.model.class_names.index(r.top[0][0]) if r.ok else -1 for r in predictions]
    bundle_top1 = ev.probs.argmax(axis=1)
    step.data = {
        "fp32_bytes": fp32.size_bytes, "images": len(got),
        "fp32_runtime_agrees_with_bundle": float(np.mean(np.array(got) == bundle_top1)),
        "fp32_runtime_accuracy": float(np.mean(np.array(got) == ev.y)), "bundle_accuracy": float(ev.metrics["accuracy"]),
    }
    step.command = f"transferkit export {bundle} --out {out / 'model-int8.onnx'} --int8 --calibration {ctx.data_path}"
    if cfg.quick:
        step.message = "--quick: int8 quantization skipped"
        return
    int8 = export_model(bundle, out / "model-int8.onnx", int8=True, calibration=ctx.data_path, force=True)
    q = int8.metadata.get("quantization", {})
    step.data.update({
        "int8_bytes": int8.size_bytes, "size_ratio": q.get("size_ratio"), "speedup": q.get("speedup"),
        "int8_agreement": q.get("agreement"), "accuracy_fp32": q.get("accuracy_fp32"), "accuracy_int8": q.get("accuracy_int8"),
        "loss_points": q.get("loss_points"), "eval_images": q.get("eval_images"),
        "refused_by_default": bool(q.get("loss_points") is not None and q["loss_points"] > 1.0),
    })


_STEPS: dict[str, Callable[[_Context, StepOutcome], None]] = {
    "classify": _step_classify,
    "transfer": _step_transfer,
    "finetune": _step_finetune,
    "featuremaps": _step_featuremaps,
    "dream": _step_dream,
    "attack": _step_attack,
    "robustness": _step_robustness,
    "deploy": _step_deploy,
}


def run_demo(
    config: DemoConfig,
    *,
    notify: Callable[[str], None] | None = None,
    steps: tuple[str, ...] | None = None,
    write_report: bool = True,
    progress_factory: Callable[[str], Callable[[int, int | None], None] | None] | None = None,
) -> DemoResult:
    """Run the demo and write its HTML report into ``config.out``.

    Args:
        config: the settings (:meth:`DemoConfig.effective` is applied).
        notify: called with one line of progress per event (the CLI prints them).
        steps: run only these steps (default: all, fine-tuning last); used by tests.
        write_report: write ``<out>/report.html`` and ``<out>/summary.json``.
        progress_factory: file name -> download progress callback, when a dataset is downloaded.

    Returns:
        A :class:`DemoResult`; ``result.ok`` is False when a step failed.

    Raises:
        DataError: no dataset could be found (the message says what to do).
    """
    from transferkit.core.errors import DataError
    from transferkit.data.sources import DownloadError

    cfg = config.effective()
    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    say = notify or (lambda line: log.info("%s", line))
    ctx = _Context(cfg, out, say, progress_factory)
    result = DemoResult(config=cfg, machine=machine_info())
    wanted = [k for k in RUN_ORDER if steps is None or k in steps]
    if any(k in wanted for k in ("transfer", "finetune", "robustness")):
        # Dataset first: a missing dataset is reported before minutes of other work, and the
        # choice (with its reason) is the first thing printed.
        say("dataset: looking for one (--data, --dataset, Oxford-IIIT Pet, Debian's Fashion-MNIST)")
        _resolve_data(ctx)
    for n, key in enumerate(wanted, 1):
        step = StepOutcome(key)
        say(f"[{n}/{len(wanted)}] {step.title}")
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            _STEPS[key](ctx, step)
        except (DataError, DownloadError) as exc:
            step.status, step.message = "failed", str(exc)
        except ImportError as exc:
            step.status, step.message = "skipped", f"not available in this installation ({exc})"
        except (TransferkitError, RuntimeError, ValueError, OSError, KeyError, AttributeError, TypeError) as exc:
            step.status, step.message = "failed", f"{type(exc).__name__}: {exc}"
            log.debug("step %s failed:\n%s", key, traceback.format_exc())
        step.seconds = time.perf_counter() - t0
        step.cpu_seconds = time.process_time() - c0
        result.steps[key] = step
        say(f"      {step.status} in {step.seconds:.1f} s" + (f": {step.message}" if step.message else ""))
    if ctx.resolved is not None:
        result.dataset = {**ctx.resolved.to_dict(), "used": str(ctx.data_path),
                          "images": len(ctx.imageset) if ctx.imageset is not None else 0,
                          "classes": ctx.imageset.num_classes if ctx.imageset is not None else 0}
    result.seconds = ctx.elapsed()
    if hasattr(os, "getloadavg"):
        result.machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    if write_report:
        from transferkit.demo.report import write_demo_report

        result.report_path = write_demo_report(result, out / "report.html")
    return result
