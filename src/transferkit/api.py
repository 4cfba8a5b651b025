"""The Python API in one place: :class:`Classifier`, :func:`dream`, :func:`attack`, :func:`featuremaps`.

A scikit-learn-style estimator over the same library calls the command line makes::

    import transferkit as tk
    clf = tk.Classifier("efficientnet_lite0", mode="auto").fit("photos/")
    clf.predict(["a.jpg", pil_image, uint8_array], top_k=3)
    ev = clf.evaluate("photos/", split="test"); ev.accuracy; ev.write_report("eval/")
    clf.save("my-model"); clf = tk.Classifier.load("my-model")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.core.errors import TransferkitError
from transferkit.finetune.config import FinetuneConfig
from transferkit.pipeline.config import TrainConfig


class NotFittedError(TransferkitError):
    """The classifier has not been trained or loaded yet."""


def _load_imageset(data, data_format: str = "auto"):
    from transferkit.data import ImageSet, load_images

    return data if isinstance(data, ImageSet) else load_images(data, format=data_format)


class Classifier:
    """An image classifier on a pretrained backbone: ``fit`` on a folder, then ``predict``, ``evaluate``, ``save``.

    Args:
        backbone: a timm name (``transferkit backbones`` lists the curated ones).
        mode: ``"auto"`` (decides on validation data), ``"probe"`` (frozen features + a head) or ``"finetune"``.
        weights: ``"auto"``, a weights file, ``"package"``, ``"hub"`` or ``"none"`` (random).
        head: the probe's head, ``"logistic"`` or ``"mlp"``.
        C: the logistic head's fixed inverse L2 strength (``None``: chosen by cross-validation).
        class_weight: ``None`` or ``"balanced"``.
        finetune: fine-tuning settings (``None``: the mode's recipe).
        lr_candidates: learning rates fine-tuning compares on validation data.
        tta: test-time augmentation for a fine-tuned model's held-out metrics.
        val, test: split fractions (an official split is kept).
        seed: seed of the split, the head and fine-tuning.
        combine: ``mode="auto"`` may choose a probe over several backbones together when it is clearly
            better; ``False`` keeps one backbone (what :func:`dream`, :func:`attack`, :func:`featuremaps` and int8 export need).
        prefer_combined: ``mode="auto"`` takes the backbones' probes averaged unless a candidate is clearly better
            (see :class:`~transferkit.pipeline.config.TrainConfig`).
        batch_size, image_size, engine, device, cache, workers: as for ``transferkit train``.

    Attributes (after :meth:`fit` or :meth:`load`):
        model_: the :class:`~transferkit.classifier.trained.TrainedModel` (or, for several backbones, the
            :class:`~transferkit.classifier.multi.TrainedMultiModel`).
        classes_: the class names, in output order.
        result_: the :class:`~transferkit.pipeline.result.TrainResult` of :meth:`fit` (``None`` after :meth:`load`).
    """

    def __init__(self, backbone: str = "efficientnet_lite0", *, mode: str = "auto", weights: str = "auto", head: str = "logistic",
                 C: float | None = None, class_weight: str | None = None, finetune: FinetuneConfig | None = None,
                 lr_candidates: tuple[float, ...] | None = None, tta: str = "none", val: float = 0.15, test: float = 0.15,
                 seed: int = 0, batch_size: int = 32, image_size: int | None = None, engine: str = "auto",
                 device: str | None = None, cache: bool = True, workers: int = 2, combine: bool = True,
                 prefer_combined: bool = False) -> None:
        self.backbone, self.mode, self.weights, self.head, self.C = backbone, mode, weights, head, C
        self.class_weight, self.finetune, self.lr_candidates, self.tta = class_weight, finetune, lr_candidates, tta
        self.val, self.test, self.seed, self.batch_size, self.image_size = val, test, seed, batch_size, image_size
        self.engine, self.device, self.cache, self.workers, self.combine = engine, device, cache, workers, combine
        self.prefer_combined = prefer_combined
        self.model_ = None
        self.result_ = None
        self._recorded_config: dict[str, Any] = {}

    # ------------------------------------------------------------------ training

    def config(self, data: str | os.PathLike = "", *, out: str | os.PathLike | None = None, report: bool = True,
               data_format: str = "auto") -> TrainConfig:
        """The :class:`TrainConfig` ``fit`` runs with (the same one ``transferkit train`` builds)."""
        return TrainConfig(data=os.fspath(data), backbone=self.backbone, weights=self.weights, mode=self.mode,
                           out=os.fspath(out) if out else None, engine=self.engine, head=self.head, C=self.C,
                           class_weight=self.class_weight, val=self.val, test=self.test, seed=self.seed, batch_size=self.batch_size,
                           image_size=self.image_size, format=data_format, cache=self.cache, report=report and out is not None,
                           workers=self.workers, device=self.device, finetune=self.finetune, lr_candidates=self.lr_candidates,
                           tta=self.tta, combine=self.combine, prefer_combined=self.prefer_combined)

    def fit(self, data, *, out: str | os.PathLike | None = None, report: bool = True, data_format: str = "auto",
            progress: Callable[[int, int], None] | None = None) -> Classifier:
        """Train on ``data`` (a folder, a CSV, or an :class:`~transferkit.data.imageset.ImageSet`); returns ``self``.

        ``out`` also writes the bundle (and its report) there. Files that could not be used are in
        ``result_.unused``.
        """
        from transferkit.data import ImageSet
        from transferkit.pipeline.train import train

        imageset = data if isinstance(data, ImageSet) else None
        config = self.config("" if imageset is not None else data, out=out, report=report, data_format=data_format)
        self.result_ = train(config, imageset=imageset, progress=progress)
        self.model_ = self.result_.model
        self._recorded_config = config.to_dict()
        return self

    @property
    def classes_(self) -> list[str]:
        return list(self._fitted().class_names)

    def _fitted(self):
        if self.model_ is None:
            raise NotFittedError("this Classifier is not trained yet; call fit(data) or Classifier.load(path) first")
        return self.model_

    @property
    def network(self):
        """The trained ``nn.Module`` (pixels in [0, 1] -> logits); what :func:`dream`, :func:`attack` and :func:`featuremaps` use."""
        return self._fitted().network()

    # ------------------------------------------------------------------ prediction

    def predict_proba(self, images: Sequence[Any] | Any) -> np.ndarray:
        """``[N, K]`` class probabilities; see :meth:`predict` for what ``images`` may be.

        Raises:
            DataError: an image cannot be read.
        """
        from transferkit.core.errors import DataError

        predictions = self._predict(images, top_k=len(self.classes_))
        bad = [p for p in predictions if not p.ok]
        if bad:
            raise DataError(f"{bad[0].path}: {bad[0].error}")
        index = {c: i for i, c in enumerate(self.classes_)}
        out = np.zeros((len(predictions), len(index)))
        for row, p in enumerate(predictions):
            for label, prob in p.top:
                out[row, index[label]] = prob
        return out

    def predict(self, images: Sequence[Any] | Any, *, top_k: int = 3):
        """Top-k predictions (:class:`~transferkit.evaluate.metrics.Prediction`) for each image, in order.

        ``images``: a path (file or folder, searched recursively), a PIL image, an ``HxWx3`` uint8
        array, or a list of those. A file that cannot be read gets an ``error`` and the rest go on.
        """
        return self._predict(images, top_k=top_k)

    def _predict(self, images, *, top_k: int):
        from transferkit.data.files import list_image_files
        from transferkit.evaluate.predict import Prediction, predict_images

        items = list(images) if isinstance(images, (list, tuple)) else [images]
        expanded: list[Any] = []
        for item in items:
            if isinstance(item, (str, os.PathLike)):
                expanded.extend(list_image_files([Path(item)]) if Path(item).is_dir() else [Path(item)])
            else:
                expanded.append(item)
        files = [i for i, x in enumerate(expanded) if isinstance(x, Path)]
        results: list[Prediction | None] = [None] * len(expanded)
        network = self.network
        if files:
            for i, p in zip(files, predict_images(network, [expanded[i] for i in files], top_k=top_k, engine=self.engine,
                                                  batch_size=self.batch_size, cache=self.cache, device=self.device)):
                results[i] = p
        for i, x in enumerate(expanded):
            if results[i] is None:
                results[i] = _predict_in_memory(network, x, f"<image {i}>", top_k)
        return results

    # ------------------------------------------------------------------ evaluation and saving

    def evaluate(self, data, *, split: str = "all", tta: str = "none", data_format: str = "auto", progress=None):
        """Metrics on ``data`` (:class:`~transferkit.evaluate.metrics.Evaluation`: ``.accuracy``, ``.write_report(dir)``).

        ``split="test"`` (or ``"val"``, ``"train"``) re-creates the split this model was trained
        with (same fractions and seed) and evaluates that part only.
        """
        from transferkit.evaluate.model import evaluate_model
        from transferkit.evaluate.selection import select_split

        images = select_split(_load_imageset(data, data_format), split, self._recorded_config)
        return evaluate_model(self.network, images, engine=self.engine, batch_size=self.batch_size, cache=self.cache,
                              progress=progress, device=self.device, tta=tta)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as a bundle directory (``transferkit predict PATH`` reads it)."""
        metrics = self.result_.metrics if self.result_ is not None else {}
        return self._fitted().save(path, metrics=metrics, config=self._recorded_config or None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Classifier:
        """A classifier from a bundle directory (sha256-checked, never unpickled)."""
        from transferkit.classifier.bundle import is_multi_backbone, read_bundle_meta
        from transferkit.classifier.multi import load_trained

        meta = read_bundle_meta(path)
        recorded = meta.get("config") or {}
        known = {k: recorded[k] for k in ("mode", "weights", "head", "C", "class_weight", "val", "test", "seed", "batch_size", "engine")
                 if k in recorded}
        backbone = meta["members"][0]["backbone"] if is_multi_backbone(meta) else meta["backbone"]["name"]
        clf = cls(backbone, **known)
        clf.model_ = load_trained(path)
        clf._recorded_config = recorded
        return clf

    def __repr__(self) -> str:
        state = f"fitted: {len(self.classes_)} classes" if self.model_ is not None else "not fitted"
        acc = f", {self.result_.split} accuracy {self.result_.accuracy:.4f}" if self.result_ is not None and self.result_.accuracy is not None else ""
        return f"Classifier({self.backbone!r}, mode={self.mode!r}, head={self.head!r}, seed={self.seed}; {state}{acc})"


def _predict_in_memory(network, image, name: str, top_k: int):
    """Top-k of one PIL image or uint8 array, preprocessed as files are."""
    import torch
    from PIL import Image

    from transferkit.data.decode import resize_center_crop, to_tensor01
    from transferkit.evaluate.predict import Prediction

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            return Prediction(name, error=f"an array image must be HxW or HxWx3 uint8, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not hasattr(image, "convert"):
        return Prediction(name, error=f"cannot read a {type(image).__name__}; pass a path, a PIL image or a uint8 array")
    if hasattr(network, "members"):  # several backbones, each preprocessing the image its own way
        probs = network.probabilities_of_image(image.convert("RGB"))
    else:
        x = to_tensor01(resize_center_crop(image.convert("RGB"), network.spec))[None]
        with torch.inference_mode():
            probs = network(x).double().softmax(dim=1)[0].numpy()
    order = np.argsort(-probs, kind="stable")[: max(1, min(top_k, len(probs)))]
    return Prediction(name, [(network.class_names[j], float(probs[j])) for j in order])


def _model_of(model, **backbone_options):
    """The ``nn.Module`` of a :class:`Classifier`, a backbone name (built with ``backbone_options``:
    weights, image_size, ...), or a module as given."""
    if isinstance(model, Classifier):
        network = model.network
        if hasattr(network, "members"):
            from transferkit.core.errors import TransferkitError

            raise TransferkitError(f"this classifier combines several backbones ({network.name}); dream, attack and featuremaps take "
                                   "one network: fit one with Classifier(..., combine=False)")
        return network
    if isinstance(model, str):
        from transferkit.backbones import create_backbone

        return create_backbone(model, **backbone_options)
    return model


def classify(images, model="efficientnet_lite0", *, top_k: int = 5, engine: str = "auto", cache: bool = True, **backbone_options):
    """ImageNet labels for ``images`` (paths or folders) from a pretrained backbone's own head.

    ``engine``: ``"auto"`` (the extraction engine measured fastest and faithful here) or ``"torch"`` (eager);
    ``cache``: use the cache folder (engine choice, exported graph, the images' pooled features).
    Returns one :class:`~transferkit.classifier.imagenet.Classification` per file (``.top``: index, label, probability).
    """
    from transferkit.classifier.imagenet import classify_images
    from transferkit.data.files import list_image_files

    items = images if isinstance(images, (list, tuple)) else [images]
    return classify_images(list_image_files(items), _model_of(model, **backbone_options), top_k=top_k, engine=engine, cache=cache)


def dream(model, target: str | int, *, compare: bool = False, backbone_options: dict | None = None, **settings):
    """An "ideal" image of class ``target`` (a class name or index) for ``model`` (:class:`Classifier`, backbone name or module).

    ``settings`` are :class:`~transferkit.explain.render.RenderConfig` fields (steps, size, tv_weight, seed, ...);
    ``compare`` also grows the lesson's noisy version. Returns a :class:`~transferkit.explain.dream.Dream`
    (``.renders``, ``.side_by_side()``, ``.save_png(path)``).
    """
    from transferkit.explain.dream import dream as grow
    from transferkit.explain.render import RenderConfig

    return grow(_model_of(model, **(backbone_options or {})), target, RenderConfig(**settings), compare=compare)


def attack(model, image: str | os.PathLike, *, target: str | int | None = None, backbone_options: dict | None = None, **options):
    """Attack the photo ``image`` (towards ``target``, or away from the prediction); saves and re-checks the PNG.

    ``options`` go to :func:`transferkit.attacks.attack_image_file` (method, eps, steps, out, ...);
    ``backbone_options`` to ``create_backbone`` when ``model`` is a backbone name.
    """
    from transferkit.attacks.image_file import attack_image_file

    return attack_image_file(_model_of(model, **(backbone_options or {})), image, target=target, **options)


def featuremaps(model, image, *, layer: str | int = 3, channels: int = 16, **backbone_options):
    """The most active channels of ``layer`` for ``image`` (a path, PIL image or tensor in [0, 1])."""
    from transferkit.explain.featuremaps import extract_feature_maps, load_image_for

    network = _model_of(model, **backbone_options)
    return extract_feature_maps(network, load_image_for(network, image), layer, channels=channels)


__all__ = ["Classifier", "NotFittedError", "attack", "classify", "dream", "featuremaps"]
