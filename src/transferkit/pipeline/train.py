"""Training entry points: ``train(config)`` dispatches on ``config.mode``.

``"probe"`` (here): frozen pretrained backbone -> cached pooled features -> a head fitted on them
(logistic regression with C chosen on validation data, or a small MLP) -> evaluation on the
held-out split -> model bundle + report. ``"finetune"`` and ``"auto"`` live in
:mod:`transferkit.finetune`, imported only when asked for.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from transferkit.core.errors import DataError, TransferkitError

log = logging.getLogger(__name__)

MODES = ("probe", "finetune", "auto")


@dataclass
class TrainConfig:
    """Everything a training run depends on (recorded in the bundle and report).

    ``None`` means "the backbone's / the data's default".

    Attributes:
        data: dataset folder or CSV (any layout :func:`transferkit.data.load_images` reads).
        backbone: timm name (``transferkit backbones`` lists the curated ones).
        weights: ``"auto"``, a weights file, ``"package"``, ``"hub"`` or ``"none"``.
        mode: ``"probe"`` (frozen features + head), ``"finetune"`` or ``"auto"``.
        out: bundle directory to write (``None``: do not save).
        engine: feature engine: ``"auto"``, ``"torch"`` or ``"onnxruntime"``.
        head: ``"logistic"`` or ``"mlp"``.
        val, test: split fractions (a dataset's official split is kept when it has one).
        seed: seed for the split and the head.
        batch_size: images per forward pass.
        class_weight: ``None`` or ``"balanced"`` (for imbalanced classes).
        C: fixed inverse L2 strength for the logistic head (``None``: chosen on validation data).
        image_size: override the backbone's input size.
        format: dataset layout (``"auto"`` detects it).
        cache: use the on-disk feature cache.
        report: write an HTML report next to the bundle (``<out>/report``).
        workers: decoding threads.
        device: torch device (``None``: CUDA when available, else CPU).
    """

    data: str = ""
    backbone: str = "efficientnet_lite0"
    weights: str = "auto"
    mode: str = "probe"
    out: str | None = None
    engine: str = "auto"
    head: str = "logistic"
    val: float = 0.15
    test: float = 0.15
    seed: int = 0
    batch_size: int = 32
    class_weight: str | None = None
    C: float | None = None
    image_size: int | None = None
    format: str = "auto"
    cache: bool = True
    report: bool = True
    workers: int = 2
    device: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model: the :class:`~transferkit.classifier.bundle.ClassifierModel`.
        metrics: evaluation on the held-out split (``"test"``, else ``"val"``), plus bookkeeping.
        bundle_path: where the bundle was written (``None`` if ``config.out`` was ``None``).
        report_path: the HTML report (``None`` if not written).
        timings: seconds per stage.
        head: the fitted scikit-learn-style head (probe mode).
    """

    model: Any
    metrics: dict[str, Any]
    bundle_path: Path | None = None
    report_path: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    head: Any = None
    evaluation: Any = None


def _deferred_model_get(self):
    model = self.__dict__.get("_model")
    if isinstance(model, _DeferredModel):
        model = self.__dict__["_model"] = model.build()
    return model


def _deferred_model_set(self, value) -> None:
    self.__dict__["_model"] = value


# ``TrainResult.model`` may be built on first access (a warm rerun never needs the network).
TrainResult.model = property(_deferred_model_get, _deferred_model_set, doc=TrainResult.__doc__)  # type: ignore[assignment]


def _build_backbone(config: TrainConfig):
    from transferkit.backbones import create_backbone

    return create_backbone(config.backbone, weights=config.weights, image_size=config.image_size, seed=config.seed)


class _DeferredModel:
    """A classifier whose backbone is built only when needed.

    Has what :func:`~transferkit.classifier.bundle.save_bundle` reads of a pretrained model (``spec``,
    ``head``, ``class_names``); :meth:`build` makes the real
    :class:`~transferkit.classifier.bundle.ClassifierModel`, checking the weights are the ones remembered.
    """

    def __init__(self, config: TrainConfig, spec, head, class_names: list[str]) -> None:
        from transferkit.pipeline.memo import CachedHead

        self.config, self.spec, self.class_names = config, spec, list(class_names)
        # A CachedHead (numpy weights) becomes an nn.Module only if someone asks for ``head``.
        self.cached_head = head if isinstance(head, CachedHead) else None
        self._head = None if self.cached_head is not None else head

    @property
    def head(self):
        if self._head is None:
            self._head = self.cached_head.module.eval()
        return self._head

    def build(self):
        from transferkit.classifier.bundle import ClassifierModel

        backbone = _build_backbone(self.config)
        if backbone.spec != self.spec:
            raise TransferkitError(
                f"backbone {self.config.backbone} now resolves to other weights than the cached run used "
                f"({backbone.spec.weights_sha256[:12]}... vs {self.spec.weights_sha256[:12]}...); run `transferkit cache clear`")
        return ClassifierModel(backbone, self.head, self.class_names).eval()


def load_config_imageset(config: TrainConfig, imageset=None):
    """``imageset``, or the images at ``config.data``; one clear error when there are none."""
    from transferkit.data import load_images

    if imageset is None:
        if not config.data:
            raise DataError("no dataset given; pass a folder or CSV (transferkit train DATA)")
        imageset = load_images(config.data, format=config.format)
    if len(imageset) == 0:
        raise DataError(f"no usable images in {config.data}; check the path and `transferkit data inspect`")
    return imageset


def _load_split(config: TrainConfig, imageset=None):
    """The images of ``config`` split into train / val / test as ``config`` says."""
    from transferkit.data import split_imageset

    imageset = load_config_imageset(config, imageset)
    return split_imageset(imageset, val=config.val, test=config.test, seed=config.seed, stratified=True)


def train_probe(
    config: TrainConfig,
    *,
    imageset=None,
    backbone=None,
    progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Linear probe / MLP on frozen features; see the module docstring.

    Args:
        config: the run's settings.
        imageset: an ImageSet to use instead of loading ``config.data`` (split if it has none).
        backbone: a PixelModel to use instead of building ``config.backbone``.
        progress: ``progress(done, total)`` during feature extraction.

    Raises:
        DataError: no images, or a split without training images of at least 2 classes.
    """
    # Imports stay inside the branches that need them: a warm rerun (features, head and held-out
    # probabilities all cached) never imports PyTorch, timm, scikit-learn or matplotlib.
    from transferkit.pipeline import memo as probe_cache
    from transferkit.evaluate.metrics import evaluate_probabilities
    from transferkit.features.cache import FeatureCache
    from transferkit.features.extract import cached_features

    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = _load_split(config, imageset)
    timings["load_data"] = time.perf_counter() - t

    cache = FeatureCache() if config.cache else None
    spec = feats = None
    if backbone is None and cache is not None:
        # Warm rerun: when every feature is cached, the network itself is not needed (the bundle
        # records only its spec and weights sha256), so it is built only if someone asks for it.
        t = time.perf_counter()
        remembered = probe_cache.lookup_backbone(cache.directory, config.backbone, config.weights, config.image_size, config.seed)
        if remembered is not None:
            spec, model_key = remembered
            feats = cached_features(data.paths, spec, model_key, cache)
        timings["backbone"] = time.perf_counter() - t
        if feats is not None:
            timings["features"], timings["backbone"] = timings["backbone"], 0.0
            if progress is not None:
                progress(len(data.paths), len(data.paths))
    if feats is None:
        from transferkit.features.extract import extract_features, model_cache_key

        t = time.perf_counter()
        if backbone is None:
            backbone = _build_backbone(config)
        spec = backbone.spec
        timings["backbone"] = time.perf_counter() - t

        t = time.perf_counter()
        feats = extract_features(
            data.paths, backbone, engine=config.engine, batch_size=config.batch_size, cache=cache,
            workers=config.workers, progress=progress, device=config.device, decode_options=data.decode_options,
        )
        timings["features"] = time.perf_counter() - t
        if cache is not None and spec.is_pretrained:
            probe_cache.remember_backbone(cache.directory, config.backbone, config.weights, config.image_size, config.seed,
                                          spec, feats.model_key or model_cache_key(backbone))

    split = np.array(data.split)
    ok = feats.ok
    idx = {s: np.flatnonzero((split == s) & ok) for s in ("train", "val", "test")}
    if len(idx["train"]) == 0:
        raise DataError("the split left no training images; lower --val/--test")
    held_out = "test" if len(idx["test"]) else "val" if len(idx["val"]) else ""
    X, y = feats.X, data.labels

    t = time.perf_counter()
    options = dict(config.options)
    options.setdefault("class_weight", config.class_weight)
    options.setdefault("random_state", config.seed)
    if config.head == "logistic" and config.C is not None:
        options.setdefault("C", config.C)
    X_val = X[idx["val"]] if len(idx["val"]) else None
    y_val = y[idx["val"]] if len(idx["val"]) else None
    head = head_module = head_key = None
    if cache is not None:
        head_key = probe_cache.head_cache_key(X[idx["train"]], y[idx["train"]], X_val, y_val, head=config.head,
                                              options=options, num_classes=data.num_classes)
        head = probe_cache.load_head(cache.directory, head_key)
    if head is None:
        from transferkit.heads import create_head

        head = create_head(config.head, **options)
        try:
            head.fit(X[idx["train"]], y[idx["train"]], X_val, y_val)
        except TransferkitError as exc:
            raise DataError(f"cannot fit the head: {exc}") from None
        head_module = head.expand_module(data.num_classes)
        if head_key is not None:
            probe_cache.save_head(cache.directory, head_key, head_module, {"C": head.C_} if hasattr(head, "C_") else {})
    if backbone is not None:
        from transferkit.classifier.bundle import ClassifierModel

        model = ClassifierModel(backbone, head_module if head_module is not None else head.module, data.class_names).eval()
    else:
        model = _DeferredModel(config, spec, head_module if head_module is not None else head, data.class_names)
    timings["head"] = time.perf_counter() - t

    t = time.perf_counter()
    evaluation = None
    metrics: dict[str, Any] = {}
    if held_out:
        sel = idx[held_out]
        probs = probs_key = None
        if head_key is not None:
            probs_key = probe_cache.probs_cache_key(head_key, X[sel])
            probs = probe_cache.load_probs(cache.directory, probs_key, (len(sel), data.num_classes))
        if probs is None:
            from transferkit.evaluate.metrics import probabilities_from_features

            probs = probabilities_from_features(model.head, X[sel])
            if probs_key is not None:
                probe_cache.save_probs(cache.directory, probs_key, probs)
        evaluation = evaluate_probabilities(probs, y[sel], data.class_names, paths=[str(data.paths[i]) for i in sel])
        metrics = dict(evaluation.metrics)
        metrics["split"] = held_out
    metrics["images"] = {s: int(len(v)) for s, v in idx.items()}
    metrics["failed_images"] = len(feats.errors)
    metrics["head"] = {"type": config.head, **({"C": head.C_} if hasattr(head, "C_") else {})}
    metrics["features"] = feats.stats
    timings["evaluate"] = time.perf_counter() - t

    bundle_path = report_path = None
    if config.out:
        t = time.perf_counter()
        if isinstance(model, _DeferredModel) and isinstance(model.cached_head, probe_cache.CachedHead):
            # From the spec and the cached weights alone: the same files the built model would give.
            from transferkit.classifier.bundle_files import HEAD_FILE, save_numpy_weights, write_bundle_dir

            bundle_path = write_bundle_dir(
                config.out, spec=spec, head_cfg=model.cached_head.config, weights={HEAD_FILE: save_numpy_weights(model.cached_head.state)},
                class_names=data.class_names, include_backbone=False, metrics=metrics, config=asdict(config))
        else:
            from transferkit.classifier.bundle import save_bundle

            bundle_path = save_bundle(config.out, model, metrics=metrics, config=asdict(config))
        timings["save"] = time.perf_counter() - t
        if config.report and evaluation is not None:
            from transferkit.evaluate.report import write_report

            t = time.perf_counter()
            report_path = write_report(
                evaluation, Path(config.out) / "report", title=f"{Path(config.data).name or 'data'}: {config.backbone} probe ({held_out} split)",
                details={"config": asdict(config), "head": metrics["head"], "images": metrics["images"]},
                png_cache=cache.directory if cache is not None else None,
            )
            timings["report"] = time.perf_counter() - t
    metrics["timings"] = {k: round(v, 4) for k, v in timings.items()}
    return TrainResult(model=model, metrics=metrics, bundle_path=bundle_path, report_path=report_path,
                       timings=timings, head=head, evaluation=evaluation)


def train(config: TrainConfig, **kwargs) -> TrainResult:
    """Train a classifier as ``config.mode`` says: ``"probe"``, ``"finetune"`` or ``"auto"``.

    Fine-tuning lives in :mod:`transferkit.finetune` and is imported only when asked for.

    Raises:
        TransferkitError: unknown mode, or whatever the chosen trainer raises.
    """
    if config.out:
        from transferkit.classifier.bundle_files import check_bundle_target

        check_bundle_target(config.out)  # a bad --out fails now, not after the training
    if config.mode == "probe":
        return train_probe(config, **kwargs)
    if config.mode == "finetune":
        from transferkit.pipeline.finetune import train_finetune

        return train_finetune(config, **kwargs)
    if config.mode == "auto":
        from transferkit.pipeline.auto import train_auto

        return train_auto(config, **kwargs)
    raise TransferkitError(f"unknown mode {config.mode!r}; use one of {', '.join(MODES)}")


__all__ = ["MODES", "TrainConfig", "TrainResult", "train", "train_probe"]
