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
        details["auto"] = result.auto.to_dict()

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
    """Save ``result``'s bundle under ``config.out``, its report (when asked for and there is a held-out
    split) built inside it, so both appear in one rename. A report that fails leaves the bundle in
    place and ``result.report_error`` says why."""
    config = result.config
    if not config.out:
        return result
    write_report = None
    if config.report and result.evaluation is not None:
        what = getattr(result.model, "name", "") or config.backbone  # several backbones name themselves
        report_writer = _report_writer(result, f"{data_name}: {what} {kind} ({result.split} split)")

        def write_report(folder: Path) -> Path:
            t = time.perf_counter()
            try:
                return report_writer(folder / REPORT_DIR)
            finally:
                result.timings["report"] = time.perf_counter() - t

    t = time.perf_counter()
    bundle = result.model.save(config.out, metrics=result.metrics, config=config.to_dict(), extras=write_report)
    result.timings["save"] = time.perf_counter() - t - result.timings.get("report", 0.0)
    result.bundle_path = Path(bundle)
    if write_report is not None:
        error = getattr(bundle, "extras_error", None)
        if error:
            result.report_error = str(error)
        else:
            result.report_path = result.bundle_path / REPORT_DIR / "report.html"
    return result
