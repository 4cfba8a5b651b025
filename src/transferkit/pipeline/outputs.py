"""Writing a training run's bundle and report (the one place both the probe and fine-tuning save)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transferkit.pipeline.result import TrainResult

log = logging.getLogger(__name__)

REPORT_DIR = "report"


def _report_writer(result: TrainResult, title: str):
    """A function that writes the run's report into a folder and returns its report.html."""
    from transferkit.evaluate.report import training_curves_png, write_report

    config = result.config
    details = {"config": config.to_dict(), "images": result.images, "unused_files": result.unused.to_dict()}
    if result.finetune is not None:
        details.update(finetune=result.finetune.to_dict(), history=result.finetune.history, curves="curves.png")
    else:
        details["head"] = result.head.to_dict() if result.head else {}
    if result.auto is not None:
        details["auto"] = {"mode": result.auto.mode, "reason": result.auto.reason,
                           "tried": [c.to_dict() for c in result.auto.tried]}

    def write(folder: Path) -> Path:
        if result.finetune is not None:
            training_curves_png(result.finetune.history, folder / "curves.png")
        png_cache = None
        if config.cache and result.finetune is None:
            from transferkit.features.cache import FeatureCache

            png_cache = FeatureCache().directory
        return write_report(result.evaluation, folder, title=title, details=details, png_cache=png_cache)

    return write


def write_outputs(result: TrainResult, *, data_name: str, kind: str) -> TrainResult:
    """Save ``result``'s bundle (and report, when asked for and there is a held-out split) under ``config.out``."""
    config = result.config
    if not config.out:
        return result
    t = time.perf_counter()
    result.bundle_path = result.model.save(config.out, metrics=result.metrics, config=config.to_dict())
    result.timings["save"] = time.perf_counter() - t
    if config.report and result.evaluation is not None:
        t = time.perf_counter()
        title = f"{data_name}: {config.backbone} {kind} ({result.split} split)"
        result.report_path = _report_writer(result, title)(Path(config.out) / REPORT_DIR)
        result.timings["report"] = time.perf_counter() - t
    return result


__all__ = ["REPORT_DIR", "write_outputs"]
