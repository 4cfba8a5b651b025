"""`transferkit predict`: classify images with a trained model bundle."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import typer

from transferkit.cli import output


def predict(
    model: Path = typer.Argument(..., help="model bundle directory (from `transferkit train`)"),
    images: list[Path] = typer.Argument(..., help="image files or folders (searched recursively)"),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="classes to show per image"),
    fmt: str = typer.Option("table", "--format", help="table, csv or json (on stdout)"),
    out: Path = typer.Option(None, "--out", "-o", help="stream results to this .csv or .jsonl file as they come (any number of files)"),
    resume: bool = typer.Option(False, "--resume", help="with --out: continue a file a killed run left, skipping the images in it"),
    engine: str = typer.Option("auto", "--engine", help="auto, torch or onnxruntime"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
) -> None:
    """Predict the classes of images with a trained model bundle."""
    from transferkit.classifier.multi import load_classifier
    from transferkit.cli.train import extraction_progress
    from transferkit.data.files import list_image_files
    from transferkit.data.unused import UnusedFiles
    from transferkit.evaluate.predict import CSV_HEADER, csv_rows, predict_images, predict_to_file

    output.check_format(fmt, ("table", "csv", "json"))
    output.check_format(engine, ("auto", "torch", "onnxruntime"))
    clf = load_classifier(model)
    files = list_image_files(images)
    if out is not None:
        with extraction_progress("predicting") as progress:
            counts = predict_to_file(clf, files, out, resume=resume, top_k=top_k, engine=engine, batch_size=batch_size, progress=progress)
        unused = UnusedFiles.collect(errors=counts["failed"])
        output.info(f"{counts['written']} predictions written to {out}" +
                    (f" ({counts['skipped_done']} already there)" if counts["skipped_done"] else ""))
        if unused:
            output.warn(unused.summary())
        if counts["written"] and len(unused) == counts["written"]:
            raise typer.Exit(1)
        return
    with extraction_progress("predicting") as progress:
        results = predict_images(clf, files, top_k=top_k, engine=engine, batch_size=batch_size, progress=progress if len(files) > 64 else None)
    unused = UnusedFiles.collect(errors={r.path: r.error for r in results if not r.ok})
    if fmt == "json":
        output.print_json({"model": str(model), "class_names": clf.class_names, "results": [r.to_dict() for r in results],
                           "unused_files": unused.to_dict()})
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(CSV_HEADER)
        for r in results:
            w.writerows(csv_rows(r))
        sys.stdout.flush()
    else:
        k = min(top_k, len(clf.class_names))
        rows = [(r.path, r.top[0][0], "  ".join(f"{c} {p:.3f}" for c, p in r.top[:k])) if r.ok else (r.path, "error: " + r.error, "")
                for r in results]
        output.print_table(f"predictions ({model})", ("image", "class", f"top {k}"), rows)
    for r in results:
        if not r.ok:
            output.error_line(f"{r.path}: {r.error}")
    if unused:
        output.warn(unused.summary())
    if not any(r.ok for r in results):
        raise typer.Exit(1)
