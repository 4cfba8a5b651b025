"""`transferkit predict`: classify images with a trained model bundle."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import typer

from transferkit.cli import output


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given; folders expanded to the image files inside them (sorted, recursive)."""
    from transferkit.core.errors import DataError

    suffixes = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            inside = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in suffixes)
            if not inside:
                raise DataError(f"{p} holds no image files (looked for {', '.join(sorted(suffixes))})")
            found.extend(inside)
        elif p.exists():
            found.append(p)
        else:
            raise DataError(f"{p} does not exist; pass image files or folders")
    return found


def predict(
    model: Path = typer.Argument(..., help="model bundle directory (from `transferkit train`)"),
    images: list[Path] = typer.Argument(..., help="image files or folders"),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="classes to show per image"),
    fmt: str = typer.Option("table", "--format", help="table, csv or json"),
    engine: str = typer.Option("auto", "--engine", help="auto, torch or onnxruntime"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
) -> None:
    """Predict the classes of images with a trained model bundle."""
    from transferkit.classifier.bundle import load_bundle
    from transferkit.cli.train import extraction_progress
    from transferkit.evaluate.metrics import predict_images

    output.check_format(fmt, ("table", "csv", "json"))
    output.check_format(engine, ("auto", "torch", "onnxruntime"))
    clf = load_bundle(model)
    files = _expand(list(images))
    with extraction_progress("predicting") as progress:
        results = predict_images(clf, files, top_k=top_k, engine=engine, batch_size=batch_size, progress=progress if len(files) > 64 else None)
    if fmt == "json":
        output.print_json({"model": str(model), "class_names": clf.class_names, "results": [r.to_dict() for r in results]})
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "rank", "label", "probability", "error"])
        for r in results:
            if not r.ok:
                w.writerow([r.path, "", "", "", r.error])
            for rank, (label, p) in enumerate(r.top, 1):
                w.writerow([r.path, rank, label, f"{p:.6f}", ""])
        sys.stdout.write(buf.getvalue())
    else:
        k = min(top_k, len(clf.class_names))
        rows = []
        for r in results:
            if not r.ok:
                rows.append((r.path, "error: " + r.error, ""))
                continue
            rows.append((r.path, r.top[0][0], "  ".join(f"{c} {p:.3f}" for c, p in r.top[:k])))
        output.print_table(f"predictions ({model})", ("image", "class", f"top {k}"), rows)
    for r in results:
        if not r.ok:
            output.error_line(f"{r.path}: {r.error}")
    if not any(r.ok for r in results):
        raise typer.Exit(1)
