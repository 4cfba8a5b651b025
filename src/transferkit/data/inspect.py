"""A plain-data description of an ImageSet: what ``transferkit data inspect`` shows."""

from __future__ import annotations

from typing import Any

import numpy as np

from transferkit.data.imageset import ImageSet
from transferkit.data.split import split_summary


def _distribution(values: list[int]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    q = np.percentile(arr, [0, 5, 50, 95, 100])
    return {"min": float(q[0]), "p5": float(q[1]), "median": float(q[2]), "p95": float(q[3]), "max": float(q[4])}


def describe_imageset(imageset: ImageSet) -> dict[str, Any]:
    """Classes and counts, imbalance ratio, image size distribution, the report and split sizes.

    Returns:
        A JSON-ready dict: ``format``, ``format_reason``, ``root``, ``counts`` (kept / rejected /
        missing / duplicate_groups / leakage_groups), ``classes`` (name -> images),
        ``imbalance_ratio`` (largest class / smallest class), ``sizes`` (width, height, shorter
        side, megapixels distributions; only when verified), ``rejected_by_reason``, ``rejected``,
        ``missing``, ``duplicates``, ``leakage``, ``splits`` (split -> class -> images), ``notes``.
    """
    report = imageset.report
    counts = imageset.class_counts()
    nonzero = [c for c in counts.values() if c > 0]
    out: dict[str, Any] = {
        "root": str(imageset.root) if imageset.root is not None else None,
        "format": report.format,
        "format_reason": report.format_reason,
        "counts": report.counts,
        "found": report.found,
        "listed": report.listed,
        "num_classes": imageset.num_classes,
        "classes": counts,
        "imbalance_ratio": round(max(nonzero) / min(nonzero), 3) if nonzero else None,
        "verified": report.verified,
        "cache_hits": report.cache_hits,
        "verify_seconds": round(report.verify_seconds, 3),
    }
    if imageset.sizes:
        widths = [w for w, _ in imageset.sizes]
        heights = [h for _, h in imageset.sizes]
        out["sizes"] = {
            "width": _distribution(widths),
            "height": _distribution(heights),
            "shorter_side": _distribution([min(w, h) for w, h in imageset.sizes]),
            "megapixels": {k: round(v / 1e6, 3) for k, v in _distribution([w * h for w, h in imageset.sizes]).items()},
        }
    out["rejected_by_reason"] = report.rejected_reasons()
    out["rejected"] = [{"path": r.path, "reason": r.reason} for r in report.rejected]
    out["missing"] = list(report.missing)
    out["duplicates"] = [list(g) for g in report.duplicates]
    out["leakage"] = [list(g) for g in report.leakage]
    out["splits"] = split_summary(imageset)
    out["split_sizes"] = {k: sum(v.values()) for k, v in out["splits"].items()}
    out["split_method"] = report.options.get("split")
    out["notes"] = list(report.notes)
    return out
