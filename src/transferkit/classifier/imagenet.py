"""Classify images with a pretrained backbone's own (ImageNet) head."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from transferkit.backbones.imagenet import imagenet_class_names
from transferkit.data.decode import ImageDecodeError, load_for_spec

log = logging.getLogger(__name__)


@dataclass
class Classification:
    """Top-k predictions for one image, or the reason it could not be read."""

    path: str
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (index, label, probability)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def to_dict(self) -> dict:
        d = {"path": self.path, "error": self.error or None}
        d["predictions"] = [{"index": i, "label": lbl, "probability": p} for i, lbl, p in self.top]
        return d


def classify_images(paths: list[str | Path], model, *, top_k: int = 5, batch_size: int = 16) -> list[Classification]:
    """Top-k ImageNet labels for each image; unreadable files get an ``error`` and the rest go on.

    Args:
        paths: image files (any format Pillow reads; EXIF orientation applied).
        model: a :class:`~transferkit.backbones.model.PixelModel` with a 1000-class ImageNet head.
        top_k: how many labels to keep per image.
    """
    import torch

    if model.num_classes != 1000:
        raise ValueError("classify needs a backbone with its pretrained 1000-class ImageNet head")
    names = imagenet_class_names()
    results = [Classification(path=str(p)) for p in paths]
    good: list[tuple[int, torch.Tensor]] = []
    for i, p in enumerate(paths):
        try:
            good.append((i, load_for_spec(p, model.spec)))
        except ImageDecodeError as exc:
            results[i].error = str(exc)
            log.info("%s: %s", p, exc)  # the result carries the error; callers report it
    k = max(1, min(top_k, len(names)))
    with torch.inference_mode():
        for start in range(0, len(good), batch_size):
            chunk = good[start : start + batch_size]
            probs = model(torch.stack([t for _, t in chunk])).softmax(dim=1)
            values, indices = probs.topk(k, dim=1)
            for (i, _), vals, idxs in zip(chunk, values.tolist(), indices.tolist()):
                results[i].top = [(j, names[j], float(v)) for j, v in zip(idxs, vals)]
    return results
