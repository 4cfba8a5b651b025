"""Predicting with a bundle and measuring it: accuracy, top-k, per-class P/R/F1, confusion
matrix, calibration error and the most confidently wrong images.

Everything here returns values; files are written by :mod:`transferkit.evaluate.report` and printing is
the CLI's job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transferkit.core.errors import DataError, TransferkitError

log = logging.getLogger(__name__)

ECE_BINS = 15


def probabilities_from_features(head, X: np.ndarray) -> np.ndarray:
    """Softmax of ``head`` (an nn.Module features -> logits) on feature rows, float64."""
    import torch

    with torch.inference_mode():
        logits = head.eval()(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)))
    probs = logits.double().softmax(dim=1).numpy()
    _check_finite(probs, "the model")
    return probs


def _check_finite(probs: np.ndarray, source: str) -> None:
    """Non-finite probabilities (NaN, inf) are never passed on as predictions or metrics."""
    bad = ~np.isfinite(probs).all(axis=1) if probs.ndim == 2 else ~np.isfinite(probs)
    if bad.any():
        raise TransferkitError(
            f"{source} produced non-finite outputs (NaN or infinity) for {int(bad.sum())} of {len(bad)} images; "
            "its weights or bundle.json are broken: re-create the bundle"
        )


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """ECE of the top-1 confidence over ``bins`` equal-width bins, and the per-bin table."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if m.any():
            acc, c = float(correct[m].mean()), float(conf[m].mean())
            ece += m.mean() * abs(acc - c)
            table.append({"lo": float(lo), "hi": float(hi), "count": int(m.sum()), "accuracy": acc, "confidence": c})
    return float(ece), table


@dataclass
class Evaluation:
    """Metrics plus what the report needs to draw them.

    Attributes:
        metrics: JSON-able numbers (accuracy, top_k, per_class, macro averages, ece, ...).
        confusion: ``[K, K]`` counts, rows = true class, columns = predicted.
        class_names: the K names.
        probs: ``[N, K]`` probabilities.
        y: ``[N]`` true labels.
        paths: image paths (may be empty).
        calibration: per-bin accuracy / confidence table.
        confidently_wrong: the worst mistakes, most confident first.
    """

    metrics: dict[str, Any]
    confusion: np.ndarray
    class_names: list[str]
    probs: np.ndarray
    y: np.ndarray
    paths: list[str] = field(default_factory=list)
    calibration: list[dict] = field(default_factory=list)
    confidently_wrong: list[dict] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    def write_report(self, out_dir, *, title: str = "transferkit evaluation", details: dict[str, Any] | None = None):
        """Write the HTML report, ``metrics.json`` and the plots into ``out_dir``; returns report.html's path."""
        from transferkit.evaluate.report import write_report

        return write_report(self, out_dir, title=title, details=details)

    def __repr__(self) -> str:
        return f"Evaluation(n={self.metrics.get('n')}, accuracy={self.metrics.get('accuracy', float('nan')):.4f}, classes={len(self.class_names)})"


def evaluate_probabilities(
    probs: np.ndarray, y: np.ndarray, class_names: Sequence[str], *, paths: Sequence[str] | None = None,
    top_k: Sequence[int] = (1, 5), wrong_limit: int = 16,
) -> Evaluation:
    """All metrics from predicted probabilities and true labels."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    k = len(class_names)
    if probs.shape != (len(y), k):
        raise DataError(f"probabilities of shape {probs.shape} do not match {len(y)} labels and {k} classes")
    if len(y) == 0:
        raise DataError("nothing to evaluate: no images")
    _check_finite(probs, "the probabilities to evaluate come from a model that")
    pred = probs.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    order = np.argsort(-probs, axis=1, kind="stable")
    topk = {}
    for t in sorted(set(min(int(v), k) for v in top_k)):
        topk[f"top{t}"] = float((order[:, :t] == y[:, None]).any(axis=1).mean())
    per_class = {}
    for c, name in enumerate(class_names):
        tp = confusion[c, c]
        support = int(confusion[c].sum())
        predicted = int(confusion[:, c].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": support}
    present = [v for v in per_class.values() if v["support"] > 0]
    ece, table = expected_calibration_error(probs, y)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:wrong_limit]
    paths = list(paths) if paths is not None else []
    confidently_wrong = [
        {
            "index": int(i),
            "path": paths[i] if paths else "",
            "true": class_names[y[i]],
            "predicted": class_names[pred[i]],
            "confidence": float(probs[i, pred[i]]),
            "true_probability": float(probs[i, y[i]]),
        }
        for i in wrong
    ]
    eps = 1e-12
    metrics = {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()),
        "top_k": topk,
        "macro_precision": float(np.mean([v["precision"] for v in present])),
        "macro_recall": float(np.mean([v["recall"] for v in present])),
        "macro_f1": float(np.mean([v["f1"] for v in present])),
        "log_loss": float(-np.mean(np.log(probs[np.arange(len(y)), y] + eps))),
        "ece": ece,
        "errors": int(len(np.flatnonzero(pred != y))),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
    }
    return Evaluation(metrics, confusion, list(class_names), probs, y, paths, table, confidently_wrong)


__all__ = [
    "Evaluation",
    "evaluate_probabilities",
    "expected_calibration_error",
    "probabilities_from_features",
]
