"""Streaming feature extraction: decode in threads, overlapped with the engine, cached on disk.

Memory stays bounded whatever the number of images: only a few batches of decoded pixels are in
flight, and features are committed to the cache batch by batch (the result matrix itself is
``N x D`` float32, 5 KB per image for EfficientNet-Lite0).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferkit.features.cache import CACHE_FORMAT_VERSION, FeatureCache
from transferkit.features.preprocess import decode_uint8, digest, preprocessing_fields

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each batch (images served from cache count as done)."""


@dataclass
class Features:
    """Pooled features for a list of images.

    Attributes:
        X: ``[N, D]`` float32; rows of images that could not be decoded are NaN.
        ok: ``[N]`` bool, False where the image could not be decoded.
        errors: path -> reason for each image that could not be decoded.
        model_key: the cache key of (backbone, weights, preprocessing).
        stats: counts and timings (cached, computed, seconds, images_per_s, engine).
    """

    X: np.ndarray
    ok: np.ndarray
    errors: dict[str, str] = field(default_factory=dict)
    model_key: str = ""
    stats: dict = field(default_factory=dict)


VIEWS = ("image", "mirror")


def model_cache_key(backbone, precision: str = "fp32", view: str = "image") -> str:
    """Cache key of everything that decides a feature vector except the image itself.

    ``precision``: what the engine computes in; reduced-precision (``bf16``/``fp16``) features get
    their own key, fp32 ones keep the key they always had. ``view``: ``"mirror"`` (the preprocessed
    image flipped left to right, for test-time augmentation) gets its own key too.
    """
    from transferkit.features.engines import weights_digest

    fields = {
        "cache_format": CACHE_FORMAT_VERSION,
        "spec": backbone.spec.cache_key_fields(),
        "weights": weights_digest(backbone),
        "preprocess": preprocessing_fields(backbone.spec),
        "output": "pooled-features",
    }
    if precision != "fp32":
        fields["precision"] = precision
    if view != "image":
        fields["view"] = view
    return digest(fields)


def _plan(backbone, engine, precision: str, device, cache_dir):
    """(precision the features will have, engine object or None to build later, EngineChoice or None)."""
    from transferkit.features.engines import engine_precision, plan_engine

    if not isinstance(engine, str):
        return engine_precision(engine), engine, None
    _, planned = plan_engine(engine, precision, device)
    if engine == "auto" and precision != "fp32":
        # Which precision "auto" ends on is a measured decision (cached after the first time).
        from transferkit.features.select import choose_engine

        choice = choose_engine(backbone, precision=precision, device=device, cache_dir=cache_dir)
        return choice.precision, None, choice
    return planned, None, None


def _decode(path: Path, spec, decode_options: dict, mirror: bool = False) -> tuple[np.ndarray | None, str, bool]:
    """(pixels, error, lenient): ``lenient`` when only ``allow_truncated`` made the file readable; ``mirror``
    flips the preprocessed pixels left to right."""
    from transferkit.data.decode import ImageDecodeError, TruncatedImageError

    options = dict(decode_options)
    allow_truncated = bool(options.pop("allow_truncated", False))

    def decoded(**extra) -> np.ndarray:
        px = decode_uint8(path, spec, **options, **extra)
        return np.ascontiguousarray(px[:, ::-1]) if mirror else px

    try:
        return decoded(), "", False
    except TruncatedImageError as exc:
        if not allow_truncated:
            return None, str(exc), False
        try:
            return decoded(allow_truncated=True), "", True
        except ImageDecodeError as again:
            return None, str(again), False
    except ImageDecodeError as exc:
        return None, str(exc), False
    except Exception as exc:  # a decoder bug on one odd file must not end a long run
        return None, f"cannot decode: {type(exc).__name__}: {exc}", False


def _lookup(paths: list[Path], spec, key: str, store: FeatureCache | None, X: np.ndarray, ok: np.ndarray,
            errors: dict[str, str]) -> tuple[list[str | None], list[int]]:
    """Fill ``X``/``ok`` from the cache; returns the content hashes and the indices still to compute."""
    n = len(paths)
    hashes: list[str | None] = [None] * n
    todo = list(range(n))
    if store is not None:
        hashes = store.content_hashes(paths)
        for i, h in enumerate(hashes):
            if h is None:
                errors[str(paths[i])] = "cannot read file"
        todo = []
        readable = [i for i, h in enumerate(hashes) if h is not None]
        # Chunk by chunk: all cached vectors at once would hold the features twice (the blobs and X).
        for start in range(0, len(readable), 4096):
            part = readable[start : start + 4096]
            cached = store.get_many(key, [hashes[i] for i in part])
            for i in part:
                vec = cached.get(hashes[i])
                if vec is not None and vec.shape[0] == spec.num_features:
                    X[i] = vec
                    ok[i] = True
                else:
                    todo.append(i)
            del cached
        store.register_model(key, f"{spec.name} ({spec.timm_name}, {spec.weights_source}) {spec.image_size}px")
    return hashes, todo


def cached_features(paths: Sequence[str | Path], spec, model_key: str, cache: FeatureCache) -> Features | None:
    """The :class:`Features` :func:`extract_features` would return, if every readable image is cached.

    Needs only the backbone's spec and :func:`model_cache_key` (not the network), so a warm rerun
    can skip building the backbone. ``None`` when any image would have to be computed.
    """
    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    n = len(paths)
    X = np.full((n, spec.num_features), np.nan, dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    errors: dict[str, str] = {}
    _, todo = _lookup(paths, spec, model_key, cache, X, ok, errors)
    if todo:
        return None
    stats = {"images": n, "cached": int(ok.sum()), "computed": 0, "failed": len(errors), "engine": "cache",
             "seconds": round(time.perf_counter() - t0, 4), "images_per_s_computed": None}
    log.info("features: %s", stats)
    return Features(X=X, ok=ok, errors=errors, model_key=model_key, stats=stats)


def extract_features(
    paths: Sequence[str | Path],
    backbone,
    *,
    engine="auto",
    precision: str = "fp32",
    batch_size: int = 32,
    cache: FeatureCache | bool | None = True,
    workers: int = 2,
    progress: ProgressCallback | None = None,
    device: str | None = None,
    decode_options: dict | None = None,
    view: str = "image",
) -> Features:
    """Pooled features of ``backbone`` for each image, from the cache where possible.

    Args:
        paths: image files.
        backbone: a frozen :class:`~transferkit.backbones.model.PixelModel`.
        engine: ``"auto"``, ``"torch"``, ``"onnxruntime"``, or an engine object (callable on a
            ``[N, H, W, 3]`` uint8 array); created only if some image is not cached.
        precision: ``"fp32"`` (default), ``"auto"`` or ``"bf16"``/``"fp16"``: what a named engine
            may compute in (:func:`~transferkit.features.select.choose_engine`); reduced-precision
            features are cached under their own key.
        batch_size: images per engine call.
        cache: a :class:`FeatureCache`, ``True`` for the default one, ``False``/``None`` for none.
        workers: decoding threads (Pillow releases the GIL while decoding and resizing).
        progress: optional ``progress(done, total)`` callback.
        device: torch device for the torch engine.
        decode_options: ``allow_truncated`` / ``max_pixels`` for decoding (pass an ImageSet's
            :attr:`~transferkit.data.imageset.ImageSet.decode_options`, so files the loader kept
            under those options are not rejected here).
        view: ``"image"``, or ``"mirror"``: the preprocessed image flipped left to right (test-time
            augmentation); cached under its own key.

    Returns:
        :class:`Features`; undecodable images are reported in ``errors``, not raised.
    """
    from transferkit.features.select import create_engine

    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    n = len(paths)
    spec = backbone.spec
    store = FeatureCache() if cache is True else (cache or None)
    cache_dir = store.directory if store is not None else None
    feature_precision, run, choice = _plan(backbone, engine, precision, device, cache_dir)
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; use one of {', '.join(VIEWS)}")
    key = model_cache_key(backbone, feature_precision, view)
    X = np.full((n, spec.num_features), np.nan, dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    errors: dict[str, str] = {}

    hashes, todo = _lookup(paths, spec, key, store, X, ok, errors)
    n_cached = int(ok.sum())
    if progress is not None:
        progress(n - len(todo), n)

    engine_name = "cache"
    t_compute = 0.0
    if todo:
        if run is None:
            run = (choice.engine(backbone, cache_dir=cache_dir, device=device) if choice is not None
                   else create_engine(backbone, engine, cache_dir=cache_dir, device=device, precision=precision))
        engine_name = getattr(run, "name", type(run).__name__)
        t_start = time.perf_counter()
        # Bounded prefetch: at most `window` decoded images wait for the engine.
        window = max(batch_size * 2, workers * 4)
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tk-decode") as pool:
            pending: deque = deque()
            it = iter(todo)

            def refill() -> None:
                while len(pending) < window:
                    i = next(it, None)
                    if i is None:
                        return
                    pending.append((i, pool.submit(_decode, paths[i], spec, dict(decode_options or {}), view == "mirror")))

            refill()
            while pending:
                batch_idx: list[int] = []
                batch_px: list[np.ndarray] = []
                lenient: set[int] = set()
                while pending and len(batch_idx) < batch_size:
                    i, fut = pending.popleft()
                    px, err, was_lenient = fut.result()
                    if px is None:
                        errors[str(paths[i])] = err
                        log.info("%s: %s", paths[i], err)  # Features.errors carries it; callers report it once
                    else:
                        batch_idx.append(i)
                        batch_px.append(px)
                        if was_lenient:
                            lenient.add(i)
                    refill()  # keep the decoders busy while the engine runs
                if batch_idx:
                    feats = np.asarray(run(np.stack(batch_px)), dtype=np.float32)
                    X[batch_idx] = feats
                    ok[batch_idx] = True
                    if store is not None:
                        # A cut-off file read only because allow_truncated was given is not cached:
                        # a later strict run must report it, not serve its features.
                        store.put_many(key, ((hashes[i], X[i]) for i in batch_idx if i not in lenient))
                done = int(ok.sum()) + len(errors)
                if progress is not None:
                    progress(done, n)
        t_compute = time.perf_counter() - t_start
    seconds = time.perf_counter() - t0
    computed = int(ok.sum()) - n_cached
    stats = {
        "images": n,
        "cached": n_cached,
        "computed": computed,
        "failed": len(errors),
        "engine": engine_name,
        "precision": feature_precision,
        "seconds": round(seconds, 4),
        "images_per_s_computed": round(computed / t_compute, 2) if t_compute > 0 else None,
    }
    log.info("features: %s", stats)
    return Features(X=X, ok=ok, errors=errors, model_key=key, stats=stats)
