"""Predicting many files: in chunks (bounded memory), streamed to CSV or JSONL, resumable after a kill."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferkit.core.errors import TransferkitError
from transferkit.evaluate.metrics import probabilities_from_features

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Top-k classes for one image, or why it could not be read."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def to_dict(self) -> dict:
        return {"path": self.path, "error": self.error or None, "predictions": [{"label": c, "probability": p} for c, p in self.top]}


def model_features(model, paths: Sequence[Path], *, engine, batch_size, cache, progress, device, decode_options=None, view: str = "image"):
    from transferkit.features import extract_features

    return extract_features(paths, model.backbone, engine=engine, batch_size=batch_size, cache=cache, progress=progress, device=device,
                            decode_options=decode_options, view=view)


@dataclass
class ModelOutput:
    """A model's class probabilities for image files.

    Attributes:
        probs: ``[n_ok, K]`` float64, one row per readable image, in order.
        ok: ``[N]`` which files were read (by every member of a multi-backbone model).
        errors: path -> why a file could not be read.
        stats: feature-extraction counts (for several backbones: summed, with ``members`` each's own).
    """

    probs: np.ndarray
    ok: np.ndarray
    errors: dict[str, str]
    stats: dict


def model_probabilities(model, paths: Sequence[Path], *, engine="auto", batch_size: int = 32, cache=True, progress=None, device=None,
                        decode_options=None, view: str = "image") -> ModelOutput:
    """Class probabilities of a ``ClassifierModel`` or a :class:`~transferkit.classifier.multi.MultiBackboneModel` for image files.

    A multi-backbone model extracts each member's features on its own preprocessing, engine and cache
    entries (``engine`` may be one per member), then combines them; an image counts as readable when
    every member read it.
    """
    members = getattr(model, "members", None)
    if members is None:
        feats = model_features(model, paths, engine=engine, batch_size=batch_size, cache=cache, progress=progress, device=device,
                               decode_options=decode_options, view=view)
        good = np.flatnonzero(feats.ok)
        probs = probabilities_from_features(model.head, feats.X[good]) if len(good) else np.zeros((0, model.num_classes))
        return ModelOutput(probs, feats.ok, dict(feats.errors), feats.stats)
    engines = list(engine) if isinstance(engine, (list, tuple)) else [engine] * len(members)
    all_feats = []
    for i, (member, member_engine) in enumerate(zip(members, engines)):

        def member_progress(done: int, _total: int, base: int = i * len(paths)) -> None:
            progress((base + done) // len(members), len(paths))  # counted in images, as for one backbone

        all_feats.append(model_features(member, paths, engine=member_engine, batch_size=batch_size, cache=cache,
                                        progress=member_progress if progress is not None else None, device=device,
                                        decode_options=decode_options, view=view))
    ok, errors, stats = merge_extractions(all_feats)
    good = np.flatnonzero(ok)
    probs = model.probabilities([f.X[good] for f in all_feats]) if len(good) else np.zeros((0, model.num_classes))
    return ModelOutput(probs, ok, errors, stats)


def merge_extractions(feats: Sequence) -> tuple[np.ndarray, dict[str, str], dict]:
    """Several backbones' features of the same files as one: ``(which files every backbone read, the first reason
    each other file was not, one stats record: counts summed, engines named, each backbone's own record kept)``."""
    ok = np.logical_and.reduce([f.ok for f in feats])
    errors: dict[str, str] = {}
    for f in feats:
        for p, e in f.errors.items():
            errors.setdefault(p, e)
    stats = {k: sum(int(f.stats.get(k, 0)) for f in feats) for k in ("computed", "cached")}
    stats.update(failed=int((~ok).sum()), engine=" + ".join(str(f.stats.get("engine")) for f in feats),
                 members=[dict(f.stats) for f in feats])
    return ok, errors, stats


def predict_images(
    model, paths: Sequence[str | Path], *, top_k: int = 5, engine: str = "auto", batch_size: int = 32,
    cache: bool = True, progress: Callable[[int, int], None] | None = None, device: str | None = None,
) -> list[Prediction]:
    """Top-k predictions of a ``ClassifierModel`` (or a multi-backbone model) for image files.

    Unreadable files get an ``error`` and the rest go on.
    """
    paths = [Path(p) for p in paths]
    out = model_probabilities(model, paths, engine=engine, batch_size=batch_size, cache=cache, progress=progress, device=device)
    results = [Prediction(str(p)) for p in paths]
    good = np.flatnonzero(out.ok)
    if len(good):
        k = max(1, min(top_k, out.probs.shape[1]))
        order = np.argsort(-out.probs, axis=1, kind="stable")[:, :k]
        for row, i in enumerate(good):
            results[i].top = [(model.class_names[j], float(out.probs[row, j])) for j in order[row]]
    for i, p in enumerate(paths):
        if not out.ok[i]:
            results[i].error = out.errors.get(str(p), "cannot read file")
    return results

CHUNK = 2048
STREAM_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
CSV_HEADER = ["path", "rank", "label", "probability", "error"]


def iter_predictions(model, paths: Sequence[str | Path], *, top_k: int = 5, chunk: int = CHUNK,
                     progress: Callable[[int, int], None] | None = None, **options) -> Iterator[Prediction]:
    """:func:`predict_images` over ``chunk`` files at a time, in order.

    Memory stays bounded by the chunk, whatever the number of files; ``options`` go to ``predict_images``.
    """
    total = len(paths)
    for start in range(0, total, chunk):
        part = list(paths[start : start + chunk])
        done_before = start

        def chunk_progress(done: int, _total: int, base=done_before) -> None:
            if progress is not None:
                progress(base + done, total)

        yield from predict_images(model, part, top_k=top_k, progress=chunk_progress, **options)


def csv_rows(p: Prediction) -> list[list]:
    if not p.ok:
        return [[p.path, "", "", "", p.error]]
    return [[p.path, rank, label, f"{prob:.6f}", ""] for rank, (label, prob) in enumerate(p.top, 1)]


def _done_paths(path: Path, fmt: str) -> set[str]:
    """Paths already written to ``path``; a line cut off by a kill is removed first."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    text = data.decode("utf-8", errors="replace")
    if fmt == "jsonl":
        done = set()
        for line in text.splitlines():
            try:
                done.add(json.loads(line)["path"])
            except (ValueError, KeyError, TypeError):
                raise TransferkitError(f"{path} has a line that is not a prediction; write to a new --out file") from None
        return done
    rows = list(csv.reader(io.StringIO(text)))
    if rows and rows[0] != CSV_HEADER:
        raise TransferkitError(f"{path} is not a transferkit predictions CSV; write to a new --out file")
    return {r[0] for r in rows[1:] if r}


class PredictionWriter:
    """Appends predictions to a ``.csv`` or ``.jsonl`` file as they come, flushed and synced per chunk.

    With ``resume=True`` an existing file is continued: the paths it holds are reported by
    :attr:`done` (skip them) and a last line cut off by a kill is dropped.

    Raises:
        TransferkitError: unknown suffix, or an existing file without ``resume`` / not written by transferkit.
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool = False) -> None:
        self.path = Path(path)
        self.format = STREAM_FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise TransferkitError(f"--out {self.path}: use a .csv or .jsonl file name")
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists and not resume:
            raise TransferkitError(f"{self.path} exists; pass --resume to continue it, or choose another --out")
        self.done = _done_paths(self.path, self.format) if exists else set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        if not exists and self.format == "csv":
            csv.writer(self._file).writerow(CSV_HEADER)
        self.written = 0

    def write(self, predictions: Iterable[Prediction]) -> None:
        for p in predictions:
            if self.format == "jsonl":
                self._file.write(json.dumps(p.to_dict()) + "\n")
            else:
                csv.writer(self._file).writerows(csv_rows(p))
            self.written += 1

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self.sync()
        self._file.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def predict_to_file(model, paths: Sequence[str | Path], out: str | os.PathLike, *, resume: bool = False, top_k: int = 5,
                    chunk: int = CHUNK, progress: Callable[[int, int], None] | None = None, **options) -> dict[str, int | dict]:
    """Predict ``paths`` into ``out`` (CSV or JSONL) chunk by chunk; returns counts and the unreadable files."""
    with PredictionWriter(out, resume=resume) as writer:
        todo = [p for p in paths if str(p) not in writer.done]
        if writer.done:
            log.info("%s: %d of %d files already predicted; continuing with %d", out, len(paths) - len(todo), len(paths), len(todo))
        failed: dict[str, str] = {}
        for start in range(0, len(todo), chunk):
            part = list(iter_predictions(model, todo[start : start + chunk], top_k=top_k, chunk=chunk, **options))
            writer.write(part)
            writer.sync()
            failed.update({p.path: p.error for p in part if not p.ok})
            if progress is not None:
                progress(start + len(part), len(todo))
    return {"total": len(paths), "skipped_done": len(paths) - len(todo), "written": writer.written, "failed": failed}


__all__ = ["CSV_HEADER", "ModelOutput", "Prediction", "PredictionWriter", "csv_rows", "iter_predictions", "merge_extractions",
           "model_probabilities", "predict_images", "predict_to_file"]
