"""Robustness of a model on a dataset: pick the images, label them, attack them at each eps.

:func:`dataset_robustness` is what ``transferkit robustness`` runs: it loads a dataset (any layout
:func:`~transferkit.data.load_images` reads), keeps one split if asked, draws a seeded sample with
the classes balanced (:func:`stratified_sample`), maps the dataset's classes onto the model's and
measures :func:`~transferkit.attacks.robustness.robustness_curve`.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.attacks.classes import AttackInputError, ClassSpace, describe_model
from transferkit.attacks.core import ATTACKS, NORMS
from transferkit.attacks.robustness import RobustnessCurve, _predict, plot_robustness, robustness_curve

log = logging.getLogger(__name__)


def stratified_sample(labels: Sequence[int], limit: int, seed: int = 0) -> list[int]:
    """``limit`` indices drawn round-robin over the classes (balanced), reproducible for a seed.

    Args:
        labels: one class per item.
        limit: how many to draw (all of them when there are fewer).
        seed: seeds the shuffle within each class.

    Returns:
        The chosen indices, sorted.
    """
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    for indices in by_class.values():
        rng.shuffle(indices)
    # round-robin over the shuffled classes keeps every class even for small limits
    chosen: list[int] = []
    queues = [list(v) for _, v in sorted(by_class.items())]
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop())
    return sorted(chosen)


@dataclass
class DatasetRobustness:
    """What :func:`dataset_robustness` measured.

    Attributes:
        curve: accuracy and attack success against eps.
        model: one line naming the model.
        data: the dataset as given.
        images: images attacked (sampled and readable).
        total: images in the dataset (after the split), before sampling.
        note: how the labels were chosen when they are not the dataset's own (else empty).
        unreadable: (path, reason) of sampled files that could not be decoded.
        plot: the accuracy-against-eps plot, when one was written.
    """

    curve: RobustnessCurve
    model: str
    data: str
    images: int
    total: int
    note: str = ""
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    plot: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the model, the data, the note, the plot and every number of the curve."""
        return {"model": self.model, "data": self.data, "note": self.note or None,
                "plot": str(self.plot) if self.plot is not None else None, **self.curve.to_dict()}


def dataset_robustness(
    model: nn.Module,
    data,
    eps_values: Sequence[float],
    *,
    method: str = "pgd",
    steps: int | None = None,
    alpha: float | None = None,
    norm: str = "linf",
    split: str | None = None,
    limit: int = 200,
    seed: int = 0,
    batch_size: int = 16,
    plot: str | os.PathLike | None = None,
    description: str | None = None,
    progress: Callable[[float, int], None] | None = None,
) -> DatasetRobustness:
    """Accuracy against eps (untargeted attacks) of a bundle or an ImageNet backbone on a dataset.

    A bundle is scored against the dataset's labels (its classes must be among the bundle's). An
    ImageNet backbone is scored against the true ImageNet classes when every class folder names
    exactly one ImageNet class, else against its own clean predictions (the ``note`` says so).

    Args:
        model: a classifier bundle or an ImageNet backbone.
        data: a dataset path (any layout ``load_images`` reads) or an :class:`~transferkit.data.ImageSet`.
        eps_values: radii in pixel units; 0 gives the clean accuracy.
        method: ``fgsm``, ``bim`` or ``pgd``.
        steps, alpha, norm, batch_size: passed to :func:`~transferkit.attacks.robustness.robustness_curve`.
        split: keep only this split (``train``, ``val``, ``test``) of a dataset that has one.
        limit: attack at most this many images (a seeded, class-balanced sample); 0 for all.
        seed: seeds the sample and PGD's random start.
        plot: write the accuracy-against-eps plot (PNG) here.
        description: the model's name in the result and the plot (default: :func:`describe_model`).
        progress: called with (eps, images attacked) before each eps.

    Raises:
        AttackInputError: a bad method or norm, classes the bundle lacks, or no readable image.
        DataError: the dataset cannot be read.
    """
    if norm not in NORMS:
        raise AttackInputError(f"norm {norm!r} is not one of {', '.join(NORMS)}")
    if not ATTACKS.get(method).needs_eps:
        raise AttackInputError(f"{method!r} has no eps ball; a robustness curve needs fgsm, bim or pgd")
    space = ClassSpace.of(model)
    imageset = _load(data, split)
    total = len(imageset)
    if limit and total > limit:
        imageset = imageset.subset(stratified_sample(list(imageset.labels), limit, seed))
    labels, note = _model_labels(imageset, space)
    images01, kept, unreadable = _decode_all(imageset.paths, model.spec)
    if not kept:
        raise AttackInputError(f"no readable images in {data}")
    if labels is None:
        label_tensor = _predict(model, images01, batch_size)
    else:
        label_tensor = torch.tensor([labels[i] for i in kept])
    curve = robustness_curve(
        model, images01, label_tensor, eps_values, method=method, steps=steps, alpha=alpha, norm=norm,
        generator=torch.Generator().manual_seed(seed), batch_size=batch_size, progress=progress,
    )
    description = description or describe_model(model)
    plot_path = None
    if plot is not None:
        plot_path = Path(plot)
        plot_robustness([curve], plot_path, title=f"{description}: {method} ({norm}), {len(kept)} images")
    return DatasetRobustness(curve, description, str(data), len(kept), total, note, unreadable, plot_path)


def _load(data, split: str | None):
    from transferkit.data import ImageSet, load_images

    imageset = data if isinstance(data, ImageSet) else load_images(data)
    return imageset.where_split(split) if split is not None else imageset


def _model_labels(imageset, space: ClassSpace) -> tuple[list[int] | None, str]:
    """The model's class for each image (``None``: use the clean predictions) and a note saying why."""
    if space.imagenet:
        return _imagenet_labels(imageset)
    index = {c: i for i, c in enumerate(space.names)}
    missing = [c for c in imageset.class_names if c not in index]
    if missing:
        raise AttackInputError(
            f"dataset classes {', '.join(missing[:5])} are not among the bundle's classes ({', '.join(space.names[:10])}); "
            "use the data the bundle was trained for"
        )
    return [index[imageset.class_names[y]] for y in imageset.labels], ""


def _imagenet_labels(imageset) -> tuple[list[int] | None, str]:
    """True ImageNet labels when every class folder names one ImageNet class, else ``None`` and why."""
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


def _decode_all(paths, spec) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Model inputs of the readable files, their indices, and (path, reason) of the others."""
    from transferkit.data.decode import ImageDecodeError, load_for_spec

    tensors, kept, unreadable = [], [], []
    for i, p in enumerate(paths):
        try:
            tensors.append(load_for_spec(p, spec))
            kept.append(i)
        except ImageDecodeError as exc:
            unreadable.append((str(p), str(exc)))
            log.info("%s: %s", p, exc)  # the result lists it; callers report it
    images01 = torch.stack(tensors) if tensors else torch.empty(0)
    return images01, kept, unreadable
