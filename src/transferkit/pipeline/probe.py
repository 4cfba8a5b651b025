"""``mode="probe"``: frozen pretrained backbone -> cached pooled features -> a head -> evaluation.

The warm rerun (features, head and held-out probabilities all cached) is served from
:mod:`transferkit.pipeline.memo` and never imports PyTorch: the result is the same
:class:`~transferkit.classifier.trained.TrainedModel`, whose network is built only if asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np

from transferkit.classifier.trained import HeadWeights, TrainedModel
from transferkit.core.errors import DataError, TransferkitError
from transferkit.data.unused import UnusedFiles
from transferkit.pipeline.config import TrainConfig
from transferkit.pipeline.data import held_out_split, load_split
from transferkit.pipeline.result import HeadSummary, TrainResult

log = logging.getLogger(__name__)


@contextmanager
def timed(timings: dict[str, float], name: str):
    """Add the seconds the block takes to ``timings[name]``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t


def build_backbone(config: TrainConfig):
    from transferkit.backbones import create_backbone

    return create_backbone(config.backbone, weights=config.weights, image_size=config.image_size, seed=config.seed)


def _remembered_features(config: TrainConfig, paths, cache):
    """Features of a warm rerun straight from the cache, without building the network; or ``None``."""
    from transferkit.features.extract import cached_features
    from transferkit.pipeline import memo

    remembered = memo.lookup_backbone(cache.directory, config.backbone, config.weights, config.image_size, config.seed)
    if remembered is None:
        return None
    spec, model_key = remembered
    feats = cached_features(paths, spec, model_key, cache)
    return None if feats is None else (feats, spec)


def probe_features(config: TrainConfig, data, cache, backbone, progress, timings):
    """``(features, spec, backbone or None)`` for every image of ``data``.

    Under torchrun the extraction is sharded across the ranks; rank 0 gets every image's features,
    the other ranks ``None`` for the features.
    """
    from transferkit.features.distributed import world
    from transferkit.pipeline import memo

    distributed = world().enabled
    if backbone is None and cache is not None and not distributed:  # the warm shortcut would desync ranks
        with timed(timings, "features"):
            warm = _remembered_features(config, data.paths, cache)
        if warm is not None:
            if progress is not None:
                progress(len(data.paths), len(data.paths))
            timings["backbone"] = 0.0
            return warm[0], warm[1], None
    from transferkit.features.distributed import extract_features_distributed
    from transferkit.features.extract import model_cache_key

    with timed(timings, "backbone"):
        backbone = backbone if backbone is not None else build_backbone(config)
    with timed(timings, "features"):
        feats = extract_features_distributed(data.paths, backbone, engine=config.engine, batch_size=config.batch_size, cache=cache,
                                             workers=config.workers, progress=progress, device=config.device,
                                             decode_options=data.decode_options)
    if feats is not None and cache is not None and backbone.spec.is_pretrained:
        memo.remember_backbone(cache.directory, config.backbone, config.weights, config.image_size, config.seed,
                               backbone.spec, feats.model_key or model_cache_key(backbone))
    return feats, backbone.spec, backbone


def head_options(config: TrainConfig) -> dict:
    """Keyword options of the probe's head (what its cache key records)."""
    options = {"class_weight": config.class_weight, "random_state": config.seed}
    if config.head == "logistic" and config.C is not None:
        options["C"] = config.C
    return options


def _rows(a: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``a[index]``, without a copy when ``index`` is one contiguous run of rows (100k features are 500 MB)."""
    if len(index) and index[-1] - index[0] + 1 == len(index):
        return a[index[0] : index[-1] + 1]
    return a[index]


def split_rows(data, ok: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of each split (``train``, ``val``, ``test``) among the images whose features were read (``ok``)."""
    split = np.asarray(data.split)
    return {s: np.flatnonzero((split == s) & ok) for s in ("train", "val", "test")}


def head_rows(idx: dict[str, np.ndarray]) -> np.ndarray:
    """The rows the probe's head is fitted on: the training rows, and the validation rows too when a
    test split holds the evaluation (the held-out rows never shape the head).

    The logistic head then chooses its L2 strength by 5-fold cross-validation on these rows, as
    scikit-learn's ``GridSearchCV`` does, rather than on one small validation split.
    """
    if len(idx.get("test", ())) and len(idx["val"]):
        return np.union1d(idx["train"], idx["val"])
    return idx["train"]


_MOVE_BLOCK = 4096  # rows copied at a time: a bounded temporary (20 MB at 1280 float32 features)


def _move_rows_to_front(a: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``a[index]`` moved to ``a[:len(index)]`` in place, a block at a time; returns that view.

    ``index`` is sorted, so row ``index[i] >= i``: each block's sources lie at or after its
    destination, and no row is overwritten before it is read.
    """
    for start in range(0, len(index), _MOVE_BLOCK):
        part = index[start : start + _MOVE_BLOCK]
        a[start : start + len(part)] = a[part]
    return a[: len(index)]


def fit_head(config: TrainConfig, X, y, idx, num_classes: int, cache, *, consume_X: bool = False) -> tuple[HeadWeights, HeadSummary, bool]:
    """``(head weights, summary, served from cache)`` of the head fitted on :func:`head_rows` (C chosen by cross-validation there).

    ``consume_X``: the caller no longer needs ``X``; the training rows are moved to its front and
    standardised there, so 100k feature rows are never copied (``X`` is garbage afterwards).
    """
    from transferkit.pipeline import memo

    options = head_options(config)
    rows = head_rows(idx)
    # Only an in-memory array is overwritten: never a memory-mapped file, nor a read-only view.
    consume_X = consume_X and type(X) is np.ndarray and X.flags.writeable
    X_train = _move_rows_to_front(X, rows) if consume_X else _rows(X, rows)
    y_train = _rows(y, rows)
    X_val = y_val = None
    key = None
    if cache is not None:
        key = memo.head_cache_key(X_train, y_train, X_val, y_val, head=config.head, options=options, num_classes=num_classes)
        hit = memo.load_head(cache.directory, key)
        if hit is not None and hit[0].num_outputs == num_classes:
            return hit[0], HeadSummary(config.head, hit[1].get("C")), True
    from transferkit.heads import create_head

    head = create_head(config.head, **options)
    if "copy_X" in head.get_params() and (consume_X or not np.may_share_memory(X_train, X)):
        head.set_params(copy_X=False)  # X_train is ours to overwrite: the fit standardises it in place
    try:
        head.fit(X_train, y_train, X_val, y_val)
    except TransferkitError as exc:
        raise DataError(f"cannot fit the head: {exc}") from None
    weights = HeadWeights.from_module(head.expand_module(num_classes))
    C = float(head.C_) if hasattr(head, "C_") else None
    if key is not None:
        memo.save_head(cache.directory, key, weights, {"C": C} if C is not None else {})
    return weights, HeadSummary(config.head, C), False


def held_out_probabilities(model: TrainedModel, X_held, cache, head_key_parts) -> tuple[np.ndarray, bool]:
    """Probabilities of the held-out rows (from the cache on a warm rerun) and whether they were cached."""
    from transferkit.pipeline import memo

    key = None
    if cache is not None:
        key = memo.probs_cache_key(head_key_parts, X_held)
        probs = memo.load_probs(cache.directory, key, (len(X_held), model.num_classes))
        if probs is not None:
            return probs, True
    from transferkit.evaluate.metrics import probabilities_from_features

    probs = probabilities_from_features(model.network().head if model.is_built else model.head.to_module(), X_held)
    if key is not None:
        memo.save_probs(cache.directory, key, probs)
    return probs, False


def _head_digest(head: HeadWeights) -> str:
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(head.config, sort_keys=True).encode())
    for name in sorted(head.state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(head.state[name]).tobytes())
    return h.hexdigest()


def train_probe(config: TrainConfig, *, imageset=None, backbone=None,
                progress: Callable[[int, int], None] | None = None, auto=None) -> TrainResult | None:
    """Fit a head on frozen features of ``config.backbone``; evaluate on the held-out split; save.

    Args:
        config: the run's settings.
        imageset: an ImageSet to use instead of loading ``config.data`` (split if it has none).
        backbone: a PixelModel to use instead of building ``config.backbone``.
        progress: ``progress(done, total)`` during feature extraction.
        auto: what ``mode="auto"`` chose (an :class:`~transferkit.pipeline.result.AutoChoice`), recorded
            in the result, the bundle and the report.

    Returns:
        The result; ``None`` on the ranks other than 0 of a torchrun job (rank 0 alone fits,
        evaluates and saves).

    Raises:
        DataError: no images, or a split without training images of at least 2 classes.
    """
    from transferkit.evaluate.metrics import evaluate_probabilities
    from transferkit.features.cache import usable_cache
    from transferkit.features.distributed import barrier

    timings: dict[str, float] = {}
    with timed(timings, "load_data"):
        data = load_split(config, imageset)
    cache = usable_cache(config.cache)
    feats, spec, backbone = probe_features(config, data, cache, backbone, progress, timings)
    if feats is None:  # another rank of a torchrun job: its shard is done; rank 0 fits, evaluates, saves
        barrier()
        return None
    idx = split_rows(data, feats.ok)
    if len(idx["train"]) == 0:
        raise DataError("no training image could be read; see `transferkit data inspect`")
    held_out = held_out_split(data)
    X_held = feats.X[idx[held_out]] if held_out and len(idx[held_out]) else None
    with timed(timings, "head"):
        # The fit takes over feats.X (not read again below): at 100k images no second copy of the features.
        head, summary, head_hit = fit_head(config, feats.X, data.labels, idx, data.num_classes, cache, consume_X=True)
        model = trained_model(spec, head, data.class_names, backbone)
    from_cache = (("features",) if feats.stats.get("computed", 1) == 0 else ()) + (("head",) if head_hit else ())
    result = TrainResult(model=model, config=config, images={s: int(len(v)) for s, v in idx.items()}, head=summary,
                         unused=UnusedFiles.collect(data.report, feats.errors), features=feats.stats, timings=timings)
    if X_held is not None:
        with timed(timings, "evaluate"):
            sel = idx[held_out]
            probs, probs_hit = held_out_probabilities(model, X_held, cache, _head_digest(head))
            result.evaluation = evaluate_probabilities(probs, data.labels[sel], data.class_names,
                                                       paths=[str(data.paths[i]) for i in sel])
            result.split = held_out
            from_cache += ("probabilities",) if probs_hit else ()
    result.from_cache = from_cache
    result.auto = auto
    if result.unused:
        log.warning("%s", result.unused.summary())
    from transferkit.pipeline.outputs import write_outputs

    result = write_outputs(result, data_name=_data_name(config), kind="probe")
    barrier()  # under torchrun: the other ranks wait until the bundle is written
    return result


def trained_model(spec, head: HeadWeights, class_names, backbone) -> TrainedModel:
    """The probe as a :class:`TrainedModel` (its network built now only when the backbone already is)."""
    if backbone is None:
        return TrainedModel(spec, head, class_names)
    from transferkit.classifier.bundle import ClassifierModel

    return TrainedModel.from_network(ClassifierModel(backbone, head.to_module(), class_names).eval())


def _data_name(config: TrainConfig) -> str:
    from pathlib import Path

    return Path(config.data).name or "data"


__all__ = ["build_backbone", "fit_head", "head_rows", "probe_features", "split_rows", "timed", "train_probe", "trained_model"]
