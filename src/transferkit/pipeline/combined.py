"""Probes over several backbones together: auto's candidates, and the model it keeps when one wins.

``--mode auto`` has every compared backbone's features of every image already (its first stage), so
two more candidates cost only head fits (:mod:`transferkit.classifier.multi` says how they combine):

- **concatenated**: one logistic probe over the features side by side, C by cross-validation;
- **averaged**: each backbone's own probe, their out-of-fold probabilities averaged.

They are scored like the single-backbone probes, by out-of-fold predictions over every training image,
and must beat the configured backbone's probe clearly (McNemar) to be kept. :func:`train_combined`
then fits the kept one on the training images, evaluates it on the held-out split and saves a
multi-backbone bundle.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from transferkit.classifier.multi import TrainedMultiModel, describe, split_concat_head
from transferkit.data.unused import UnusedFiles
from transferkit.pipeline.config import TrainConfig
from transferkit.pipeline.data import held_out_split
from transferkit.pipeline.probe import fit_head, split_rows, timed, trained_model
from transferkit.pipeline.result import AutoCandidate, HeadSummary, TrainResult

log = logging.getLogger(__name__)

# The features of several backbones side by side are one more copy of them all (and the cross-validated
# fit copies its folds): above this size (about 34,000 images of the three EfficientNet-Lites) the
# concatenated probe is not tried.
CONCAT_MAX_BYTES = 512 * 2**20


@dataclasses.dataclass
class MemberFeatures:
    """One backbone's part in a combined candidate: its features of every image, spec and built network (or ``None``)."""

    name: str
    feats: object
    spec: object
    backbone: object = None


@dataclasses.dataclass
class CombinedScore:
    """A combined candidate's out-of-fold record over the training images, in ``rows`` order."""

    combine: str
    row: AutoCandidate
    rows: np.ndarray | None = None
    correct: np.ndarray | None = None


def concat_candidate(config: TrainConfig, data, members: list[MemberFeatures], probe_cv) -> CombinedScore:
    """The logistic probe over the members' features concatenated, scored out of fold (``probe_cv`` fits it)."""
    from transferkit.evaluate.predict import merge_extractions
    from transferkit.pipeline.probe import head_rows

    name = "probe " + describe("concat", [m.name for m in members])
    ok = merge_extractions([m.feats for m in members])[0]

    rows = head_rows(split_rows(data, ok))
    size = int(ok.sum()) * sum(m.feats.X.shape[1] for m in members) * 4  # what the kept model's fit stacks
    if size > CONCAT_MAX_BYTES:
        return CombinedScore("concat", AutoCandidate(name, "backbone", note=f"skipped: the features side by side would take "
                                                                             f"{size / 2**20:.0f} MB (more than {CONCAT_MAX_BYTES // 2**20} MB)"))
    t = time.perf_counter()
    X = np.hstack([m.feats.X[rows] for m in members])
    head = probe_cv(config, X, data.labels[rows], None)  # fitted on X itself, no second copy
    del X
    oof_rows = rows[head.oof_index_]
    y = np.searchsorted(head.classes_, data.labels[oof_rows])
    correct = np.argmax(head.oof_proba_, axis=1) == y
    row = AutoCandidate(name, "backbone", n=len(y), accuracy=float(correct.mean()), log_loss=head.cv_summary["log_loss"],
                        seconds=round(time.perf_counter() - t, 2))
    return CombinedScore("concat", row, oof_rows, correct)


def ensemble_candidate(members: list[MemberFeatures], oof: list[tuple[np.ndarray, np.ndarray]], labels: np.ndarray) -> CombinedScore:
    """Each member's own probe, out-of-fold probabilities averaged: ``oof`` holds each member's ``(rows, proba)``.

    Members scored on different images (a file only some of them could read) are not averaged.
    """
    name = "probe " + describe("ensemble", [m.name for m in members])
    rows0 = oof[0][0]
    order0 = np.argsort(rows0)
    aligned = []
    for rows, proba in oof:
        if len(rows) != len(rows0) or not np.array_equal(np.sort(rows), rows0[order0]):
            return CombinedScore("ensemble", AutoCandidate(name, "backbone", note="skipped: the backbones' probes were scored on "
                                                                                   "different images"))
        order = np.argsort(rows)
        p = np.empty_like(proba)
        p[order0] = proba[order]  # each member's row r moved to where rows0 holds r
        aligned.append(p)
    proba = np.mean(aligned, axis=0)
    y = labels[rows0]
    correct = np.argmax(proba, axis=1) == y
    loss = float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0)).mean())
    return CombinedScore("ensemble", AutoCandidate(name, "backbone", n=len(y), accuracy=float(correct.mean()), log_loss=loss), rows0, correct)


def train_combined(config: TrainConfig, *, data, members: list[MemberFeatures], combine: str, auto=None) -> TrainResult:
    """Fit the combined probe kept by ``--mode auto`` on the training images, evaluate it on the held-out split, save it.

    ``concat``: one logistic head over the features side by side (C by cross-validation), split into one
    head per member. ``ensemble``: each member's own probe, as ``--mode probe`` fits it on that backbone.
    """
    from transferkit.evaluate.metrics import evaluate_probabilities
    from transferkit.evaluate.predict import merge_extractions
    from transferkit.features.cache import usable_cache
    from transferkit.pipeline.outputs import write_outputs
    from transferkit.pipeline.probe import _data_name

    timings: dict[str, float] = {}
    cache = usable_cache(config.cache)
    ok, errors, stats = merge_extractions([m.feats for m in members])
    idx = split_rows(data, ok)
    held_out = held_out_split(data)
    sel = idx[held_out] if held_out and len(idx[held_out]) else None
    K = data.num_classes
    with timed(timings, "head"):
        if combine == "concat":
            # A new array: the fit may standardise it in place, the members' features stay as they are.
            X = np.hstack([m.feats.X for m in members])
            head, summary, _ = fit_head(config, X, data.labels, idx, K, cache, consume_X=True)
            del X
            heads = split_concat_head(head, [m.feats.X.shape[1] for m in members])
        else:
            heads, Cs = [], []
            for m in members:
                h, s, _ = fit_head(dataclasses.replace(config, backbone=m.name), m.feats.X, data.labels, idx, K, cache)
                heads.append(h)
                Cs.append(s.C)
            summary = HeadSummary(config.head, None, tuple(Cs))
    model = TrainedMultiModel([trained_model(m.spec, h, data.class_names, m.backbone) for m, h in zip(members, heads)], combine)
    result = TrainResult(model=model, config=config, images={s: int(len(v)) for s, v in idx.items()}, head=summary,
                         unused=UnusedFiles.collect(data.report, errors), features=stats, timings=timings)
    if sel is not None:
        with timed(timings, "evaluate"):
            probs = model.probabilities([m.feats.X[sel] for m in members])
            result.evaluation = evaluate_probabilities(probs, data.labels[sel], data.class_names, paths=[str(data.paths[i]) for i in sel])
            result.split = held_out
    result.auto = auto
    if result.unused:
        log.warning("%s", result.unused.summary())
    return write_outputs(result, data_name=_data_name(config), kind="probe")


__all__ = ["CONCAT_MAX_BYTES", "CombinedScore", "MemberFeatures", "concat_candidate", "ensemble_candidate",
           "train_combined"]
