"""`transferkit evaluate`: metrics, plots and an HTML report for a model bundle on a dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli import output


def evaluate(
    model: Path = typer.Argument(..., help="model bundle directory (from `transferkit train`)"),
    data: Path = typer.Argument(..., help="dataset folder or CSV with the same class names"),
    out: Path = typer.Option(None, "--out", "-o", help="report folder (default: <model>/evaluation)"),
    split: str = typer.Option("all", "--split", help="all, or train/val/test: re-create the split recorded in the bundle and use that part"),
    engine: str = typer.Option("auto", "--engine", help="auto, torch or onnxruntime"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    data_format: str = typer.Option("auto", "--data-format", help="dataset layout (auto detects it)"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
    tta: str = typer.Option("none", "--tta", help="test-time augmentation: none, flip (image + mirror) or flip-zoom (4 views); averages probabilities"),
) -> None:
    """Evaluate a bundle: accuracy, top-k, per-class P/R/F1, confusion matrix, calibration, worst mistakes."""
    from transferkit.classifier.bundle import read_bundle_meta
    from transferkit.classifier.multi import load_classifier
    from transferkit.cli.train import extraction_progress
    from transferkit.data import load_images
    from transferkit.data.unused import UnusedFiles
    from transferkit.evaluate.model import evaluate_model
    from transferkit.evaluate.report import write_report
    from transferkit.evaluate.selection import SPLIT_CHOICES, select_split

    output.check_format(fmt, ("table", "json"))
    output.check_format(split, SPLIT_CHOICES)
    output.check_format(engine, ("auto", "torch", "onnxruntime"))
    output.check_format(tta, ("none", "flip", "flip-zoom"))
    meta = read_bundle_meta(model)
    clf = load_classifier(model)
    loaded = load_images(data, format=data_format)
    images = select_split(loaded, split, meta.get("config"))
    with extraction_progress("evaluating") as progress:
        ev = evaluate_model(clf, images, engine=engine, batch_size=batch_size, progress=progress, tta=tta)
    unused = UnusedFiles.collect(loaded.report, ev.metrics.get("failed_images"))
    ev.metrics["unused_files"] = unused.to_dict()
    out_dir = out if out is not None else Path(model) / "evaluation"
    report = write_report(ev, out_dir, title=f"{Path(model).name} on {Path(data).name} ({split})",
                          details={"model": str(model), "data": str(data), "split": split, "bundle_metrics": meta.get("metrics", {}).get("accuracy"),
                                   "unused_files": unused.to_dict()})
    if unused:
        output.warn(unused.summary())
    m = ev.metrics
    if fmt == "json":
        output.print_json({"report": str(report), "metrics": m})
        return
    rows = [("images", m["n"]), ("accuracy", f"{m['accuracy']:.4f}")]
    rows += [(f"{k} accuracy", f"{v:.4f}") for k, v in m["top_k"].items() if k != "top1"]
    rows += [("macro F1", f"{m['macro_f1']:.4f}"), ("calibration error (ECE)", f"{m['ece']:.4f}"), ("errors", m["errors"])]
    output.print_table(f"{Path(model).name} on {Path(data).name}", ("", ""), rows)
    per = [(c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]) for c, v in m["per_class"].items()]
    output.print_table("per class", ("class", "precision", "recall", "F1", "support"), per)
    output.info(f"report: {report} (metrics.json, confusion_matrix.png, calibration.png alongside)")
