"""Evaluation reports: ``metrics.json``, PNG plots and one self-contained HTML page.

The HTML embeds every image (plots and the gallery of most confidently wrong images) as base64,
so the single file can be mailed or attached to a ticket. Plots use matplotlib's Agg backend (no
display needed).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.core.atomic import atomic_write_bytes, save_figure_png
from transferkit.core.errors import TransferkitError
from transferkit.core.paths import describe_os_error

log = logging.getLogger(__name__)


def _write_failed(path: Path, exc: OSError) -> TransferkitError:
    return TransferkitError(f"{describe_os_error(exc)} writing {path}; free some space or choose another --out")


def _atomic_write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:  # a full or read-only disk: the file and the cause, not a raw OSError
        raise _write_failed(path, exc) from None


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def confusion_matrix_png(confusion: np.ndarray, class_names: list[str]) -> bytes:
    """The confusion matrix as a PNG (rows true, columns predicted; counts in the cells)."""
    # A pyplot-free Figure: no global backend switch (a notebook keeps its inline plots), nothing to close.
    from matplotlib.figure import Figure

    k = len(class_names)
    side = min(14.0, 2.5 + 0.45 * k)
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    row_sums = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, row_sums, out=np.zeros_like(confusion, dtype=float), where=row_sums > 0)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels=class_names, rotation=90 if k > 4 else 0, fontsize=8 if k > 10 else 10)
    ax.set_yticks(range(k), labels=class_names, fontsize=8 if k > 10 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 40:
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7 if k > 10 else 10,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title("confusion matrix (colour: row-normalised)")
    return _figure_png(fig)


def calibration_png(table: list[dict], ece: float) -> bytes:
    """Reliability diagram: accuracy against confidence per bin."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    if table:
        mids = [(b["lo"] + b["hi"]) / 2 for b in table]
        width = table[0]["hi"] - table[0]["lo"]
        ax.bar(mids, [b["accuracy"] for b in table], width=width * 0.9, alpha=0.7, label="accuracy")
        ax.plot([b["confidence"] for b in table], [b["accuracy"] for b in table], "o", color="C3", label="(confidence, accuracy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"calibration, ECE = {ece:.4f}")
    ax.legend(loc="upper left", fontsize=8)
    return _figure_png(fig)


def _cached_png(cache_dir: Path | None, kind: str, inputs: Any, draw) -> bytes:
    """``draw()``'s PNG, memoised on disk by its inputs when ``cache_dir`` is given.

    Drawing is pure overhead on a rerun with the same numbers (most of it is importing
    matplotlib); the cached bytes are the ones the first run drew.
    """
    if cache_dir is None:
        return draw()
    import hashlib
    from importlib import metadata

    from transferkit import __version__
    from transferkit.classifier.bundle_files import json_safe as _json_safe

    try:
        mpl = metadata.version("matplotlib")
    except metadata.PackageNotFoundError:
        mpl = ""
    key = hashlib.sha256(json.dumps({"kind": kind, "inputs": _json_safe(inputs), "matplotlib": mpl, "transferkit": __version__},
                                    sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir) / "report-png" / f"{key}.png"
    try:
        data = path.read_bytes()
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return data
    except OSError:
        pass
    data = draw()
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:  # an unusable cache costs a redraw next time: one warning per cache folder
        from transferkit.core.paths import cache_unusable

        cache_unusable(cache_dir, exc)
    return data


def _thumbnail_b64(path: str, size: int = 160) -> str | None:
    from transferkit.data.decode import ImageDecodeError, open_rgb

    try:
        img = open_rgb(path, draft_size=size, allow_truncated=True)  # a thumbnail of a cut-off photo still helps
    except (ImageDecodeError, OSError):
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def _img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.card{width:170px;font-size:12px}
.card img{max-width:160px;max-height:160px;display:block}.plots img{max-width:520px;margin-right:1em}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}
"""


REPORT_FILES = ("metrics.json", "confusion_matrix.png", "calibration.png", "report.html")


def write_report(evaluation, out_dir: str | os.PathLike, *, title: str = "transferkit evaluation",
                 details: dict[str, Any] | None = None, gallery: int = 16, png_cache: str | os.PathLike | None = None) -> Path:
    """Write ``metrics.json``, ``confusion_matrix.png``, ``calibration.png`` and ``report.html``.

    The folder also gets a manifest of these files
    (:data:`~transferkit.classifier.bundle_files.FOLDER_MANIFEST`), written before them and
    updated after, so a bundle holding this folder (``<bundle>/evaluation``) can later be replaced
    without deleting anything that transferkit did not write.

    Args:
        evaluation: an :class:`~transferkit.evaluate.metrics.Evaluation`.
        out_dir: the folder to write into (created if needed).
        title: the page title.
        details: anything else to show (the training config, ...), JSON-able.
        gallery: how many of the most confidently wrong images to show.
        png_cache: a folder to memoise the plots in, keyed by what they show (``None``: draw them).

    Returns:
        The path of ``report.html``.
    """
    from transferkit.classifier.bundle_files import json_safe as _json_safe
    from transferkit.classifier.bundle_files import write_folder_manifest

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_folder_manifest(out, REPORT_FILES)  # first: a run killed half-way still leaves only files it names
    except OSError as exc:
        raise _write_failed(out, exc) from None
    m = evaluation.metrics
    metrics_json = json.dumps(_json_safe({**m, "details": details or {}}), indent=2, sort_keys=True).encode()
    _atomic_write(out / "metrics.json", metrics_json)
    cm_png = _cached_png(png_cache, "confusion", [evaluation.confusion, evaluation.class_names],
                         lambda: confusion_matrix_png(evaluation.confusion, evaluation.class_names))
    _atomic_write(out / "confusion_matrix.png", cm_png)
    cal_png = _cached_png(png_cache, "calibration", [evaluation.calibration, m["ece"]],
                          lambda: calibration_png(evaluation.calibration, m["ece"]))
    _atomic_write(out / "calibration.png", cal_png)

    e = html.escape
    summary_rows = [
        ("images", m["n"]),
        ("accuracy", f"{m['accuracy']:.4f}"),
        *[(f"{k} accuracy", f"{v:.4f}") for k, v in m["top_k"].items() if k != "top1"],
        ("macro F1", f"{m['macro_f1']:.4f}"),
        ("expected calibration error (15 bins)", f"{m['ece']:.4f}"),
        ("log loss", f"{m['log_loss']:.4f}"),
        ("errors", m["errors"]),
    ]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>", "<table>"]
    parts += [f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in summary_rows]
    parts.append("</table><h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>")
    for name, v in m["per_class"].items():
        parts.append(f"<tr><td>{e(name)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td><td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>")
    parts.append("</table><h2>Confusion matrix and calibration</h2><div class='plots'>")
    parts += [_img_tag(cm_png, "confusion matrix"), _img_tag(cal_png, "calibration"), "</div>"]
    wrong = evaluation.confidently_wrong[:gallery]
    parts.append(f"<h2>Most confidently wrong ({len(wrong)} of {m['errors']} errors)</h2><div class='gallery'>")
    for w in wrong:
        thumb = _thumbnail_b64(w["path"]) if w.get("path") else None
        img = f'<img alt="{e(w["path"])}" src="data:image/jpeg;base64,{thumb}">' if thumb else "<em>(image unavailable)</em>"
        parts.append(
            f"<div class='card'>{img}<b>{e(w['predicted'])}</b> {w['confidence']:.3f}<br>true: {e(w['true'])} "
            f"({w['true_probability']:.3f})<br><span title='{e(w['path'])}'>{e(Path(w['path']).name)}</span></div>"
        )
    if not wrong:
        parts.append("<p>No mistakes.</p>")
    parts.append("</div>")
    if details:
        parts.append(f"<h2>Details</h2><pre>{e(json.dumps(_json_safe(details), indent=2, sort_keys=True))}</pre>")
    parts.append("</body></html>")
    path = out / "report.html"
    _atomic_write(path, "\n".join(parts).encode())
    try:
        write_folder_manifest(out, REPORT_FILES)
    except OSError as exc:
        raise _write_failed(out, exc) from None
    log.info("wrote report %s", path)
    return path


__all__ = ["calibration_png", "confusion_matrix_png", "write_report"]


def training_curves_png(history: list[dict], path: Path) -> Path:
    """Loss and accuracy per epoch (train and validation) as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    a1, a2 = fig.subplots(1, 2)
    for key, ax in (("loss", a1), ("acc", a2)):
        for split, style in (("train", "-o"), ("val", "-s")):
            pts = [(r["epoch"], r[f"{split}_{key}"]) for r in history if f"{split}_{key}" in r]
            if pts:
                ax.plot(*zip(*pts), style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
    fig.tight_layout()
    from transferkit.classifier.bundle_files import write_folder_manifest

    path = Path(path)
    try:
        save_figure_png(fig, path)
        write_folder_manifest(path.parent, [path.name])  # transferkit's, like the rest of the report folder
    except OSError as exc:
        raise _write_failed(path, exc) from None
    return path
