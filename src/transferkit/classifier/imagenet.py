"""Classify images with a pretrained backbone's own (ImageNet) head, streaming over many files.

:func:`iter_classify` decodes files a few at a time and yields results batch by batch, so a folder
of any size is classified in bounded memory; :func:`classify_images` is its list form.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

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


def iter_classify(
    paths: Iterable[str | Path], model, *, top_k: int = 5, batch_size: int = 16, workers: int = 2
) -> Iterator[Classification]:
    """Top-k ImageNet labels for each image, yielded in input order as each batch is classified.

    Files are decoded a few at a time (on ``workers`` threads, at most ``batch_size`` ahead), so
    memory holds about two batches of images however many files there are. Unreadable files
    get an ``error`` and the rest go on.

    Args:
        paths: image files (any format Pillow reads; EXIF orientation applied); any iterable.
        model: a :class:`~transferkit.backbones.model.PixelModel` with a 1000-class ImageNet head.
        top_k: how many labels to keep per image.
        batch_size: images per forward pass.
        workers: decoding threads (0: decode in the calling thread).

    Raises:
        ValueError: the model has no 1000-class ImageNet head (raised at the call, not at the
            first ``next``).
    """
    if model.num_classes != 1000:
        raise ValueError("classify needs a backbone with its pretrained 1000-class ImageNet head")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return _classify_stream(paths, model, max(1, min(top_k, 1000)), batch_size, workers)


def classify_images(paths: list[str | Path], model, *, top_k: int = 5, batch_size: int = 16) -> list[Classification]:
    """Top-k ImageNet labels for each image, as a list (see :func:`iter_classify`)."""
    return list(iter_classify(paths, model, top_k=top_k, batch_size=batch_size))


def _classify_stream(paths, model, k: int, batch_size: int, workers: int) -> Iterator[Classification]:
    pending: list[tuple[Classification, torch.Tensor | None]] = []
    decoded = 0
    for result, tensor in _decoded(paths, model.spec, workers, window=batch_size):
        pending.append((result, tensor))
        decoded += tensor is not None
        if decoded == batch_size:
            yield from _classify_batch(pending, model, k)
            pending, decoded = [], 0
    yield from _classify_batch(pending, model, k)


def _classify_batch(pending, model, k: int) -> Iterator[Classification]:
    """Fill in the predictions of the decoded entries of ``pending`` (one forward pass), in order."""
    good = [(result, tensor) for result, tensor in pending if tensor is not None]
    if good:
        names = imagenet_class_names()
        with torch.inference_mode():
            values, indices = model(torch.stack([t for _, t in good])).softmax(dim=1).topk(k, dim=1)
        for (result, _), vals, idxs in zip(good, values.tolist(), indices.tolist()):
            result.top = [(j, names[j], float(v)) for j, v in zip(idxs, vals)]
    for result, _ in pending:
        yield result


def _decoded(paths, spec, workers: int, window: int) -> Iterator[tuple[Classification, torch.Tensor | None]]:
    """(result, model input or None) per path, in order, decoding at most ``window`` files ahead."""
    if workers <= 0:
        for p in paths:
            yield _decode_one(p, spec)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="classify-decode")
    ahead: deque = deque()
    try:
        for p in paths:
            ahead.append(pool.submit(_decode_one, p, spec))
            if len(ahead) >= window:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
    finally:  # a caller that stops early leaves no decoding behind
        pool.shutdown(wait=True, cancel_futures=True)


def _decode_one(path, spec) -> tuple[Classification, torch.Tensor | None]:
    result = Classification(path=str(path))
    try:
        return result, load_for_spec(path, spec)
    except ImageDecodeError as exc:
        result.error = str(exc)
        log.info("%s: %s", path, exc)  # the result carries the error; callers report it
        return result, None
