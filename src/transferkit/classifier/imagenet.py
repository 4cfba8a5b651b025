"""Classify images with a pretrained backbone's own (ImageNet) head, streaming over many files.

:func:`iter_classify` decodes files a few at a time and yields results chunk by chunk, so a folder
of any size is classified in bounded memory; :func:`classify_images` is its list form.

The network runs on the feature engine that extraction uses (``engine="auto"``: the fastest faithful
one measured on this machine, see :mod:`transferkit.features.select`): the engine gives the pooled
features, and the backbone's own classifier layer turns them into ImageNet logits. So ``classify``
shares the engine decision, the exported graph and the feature cache with ``train`` and ``predict``
(photos classified once are not decoded again when a probe is trained on them). ``engine="torch"``
runs the whole network eagerly in PyTorch, batch by batch, as the reference.
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


# Files per extraction call on the engine path: decoding overlaps the network inside a chunk, and
# results are yielded chunk by chunk.
CHUNK_BATCHES = 8


def iter_classify(
    paths: Iterable[str | Path], model, *, top_k: int = 5, batch_size: int = 16, workers: int = 2,
    engine: str = "auto", cache: bool = True, device: str | None = None,
) -> Iterator[Classification]:
    """Top-k ImageNet labels for each image, yielded in input order as each chunk is classified.

    Files are decoded a chunk at a time (on ``workers`` threads), so memory holds a few batches of
    images however many files there are. Unreadable files get an ``error`` and the rest go on.

    Args:
        paths: image files (any format Pillow reads; EXIF orientation applied); any iterable.
        model: a :class:`~transferkit.backbones.model.PixelModel` with a 1000-class ImageNet head.
        top_k: how many labels to keep per image.
        batch_size: images per forward pass (a chunk is :data:`CHUNK_BATCHES` batches on an engine).
        workers: decoding threads (0: decode in the calling thread; eager ``"torch"`` path only).
        engine: ``"auto"`` (the extraction engine measured fastest and faithful here), ``"onnxruntime"``,
            ``"openvino"``, or ``"torch"`` (the whole network eagerly, batch by batch).
        cache: use the cache folder: the measured engine choice and exported graph, and the pooled
            features (keyed by image content), as extraction does. Without a usable cache nothing is
            written there, and ``"auto"`` runs eagerly (measuring the engines on every call would cost
            more than it saves).
        device: torch device for the torch engines.

    Raises:
        ValueError: the model has no 1000-class ImageNet head (raised at the call, not at the
            first ``next``).
        EngineError: an unknown engine name (likewise at the call).
    """
    from transferkit.features.cache import usable_cache
    from transferkit.features.engines import plan_engine

    if model.num_classes != 1000:
        raise ValueError("classify needs a backbone with its pretrained 1000-class ImageNet head")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    plan_engine(engine, "fp32", device)
    k = max(1, min(top_k, 1000))
    store = usable_cache(cache) if engine != "torch" else None
    if engine == "torch" or (engine == "auto" and store is None) or not hasattr(getattr(model, "net", None), "get_classifier"):
        return _classify_stream(paths, model, k, batch_size, workers)
    return _classify_on_engine(paths, model, k, batch_size, max(1, workers), engine, store, device)


def classify_images(paths: list[str | Path], model, *, top_k: int = 5, batch_size: int = 16, engine: str = "auto",
                    cache: bool = True) -> list[Classification]:
    """Top-k ImageNet labels for each image, as a list (see :func:`iter_classify`)."""
    return list(iter_classify(paths, model, top_k=top_k, batch_size=batch_size, engine=engine, cache=cache))


def _classify_on_engine(paths, model, k: int, batch_size: int, workers: int, engine: str, store, device) -> Iterator[Classification]:
    from itertools import islice

    from transferkit.features.extract import extract_features
    from transferkit.features.select import EngineOnFirstUse

    run = EngineOnFirstUse(model.eval(), engine, cache_dir=store.directory if store is not None else None, device=device)
    classifier = model.net.get_classifier()
    on = next(iter(classifier.parameters()), torch.empty(0)).device
    names = imagenet_class_names()
    it = iter(paths)
    while chunk := [Path(p) for p in islice(it, batch_size * CHUNK_BATCHES)]:
        feats = extract_features(chunk, model, engine=run, batch_size=batch_size, cache=store, workers=workers, device=device)
        results = [Classification(path=str(p)) for p in chunk]
        good = [i for i in range(len(chunk)) if feats.ok[i]]
        if good:
            with torch.inference_mode():
                logits = classifier(torch.from_numpy(feats.X[good]).to(on))
                values, indices = logits.double().softmax(dim=1).topk(k, dim=1)
            for i, vals, idxs in zip(good, values.tolist(), indices.tolist()):
                results[i].top = [(j, names[j], float(v)) for j, v in zip(idxs, vals)]
        for i, p in enumerate(chunk):
            if not feats.ok[i]:
                results[i].error = feats.errors.get(str(p), "cannot read file")
        yield from results


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
