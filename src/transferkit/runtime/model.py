"""Predicting with an exported transferkit model: ONNX Runtime, numpy and Pillow, no torch.

The file's contract (written by :mod:`transferkit.classifier.export`):

- input ``pixels``: uint8, ``[N, H, W, 3]`` (NHWC, RGB), ``H = W = preprocessing.image_size``,
  the image already decoded, resized and centre-cropped as :mod:`transferkit.runtime.decode` does;
- output ``probabilities``: float32 ``[N, K]`` (softmax over ``class_names``), any batch size N;
- metadata key ``transferkit``: JSON with the class names, the preprocessing (the backbone spec),
  the source bundle's sha256, the toolkit version, the precision and what was measured at export.

A model of several members (format version 2) takes one input per member, ``pixels_0``,
``pixels_1``, ..., each preprocessed as its ``inputs[i].preprocessing`` says (its own size and crop),
and outputs the combined probabilities.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.core.errors import TransferkitError
from transferkit.core.machine import cpu_threads
from transferkit.runtime.decode import (
    DEFAULT_MAX_PIXELS,
    Geometry,
    ImageInputError,
    load_pixels,
)

log = logging.getLogger(__name__)

METADATA_KEY = "transferkit"
FORMAT = "transferkit-onnx"
FORMAT_VERSION = 1
MULTI_FORMAT_VERSION = 2  # one input per member of a model of several backbones
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
LAYOUT = "NHWC"


class ModelFileError(TransferkitError):
    """An exported model file is missing, unreadable or not a transferkit export."""



@dataclass
class Prediction:
    """The top classes for one input, or the reason it could not be read.

    Attributes:
        source: the path (or ``"<image N>"`` for in-memory inputs).
        top: ``(class name, probability)`` pairs, most probable first.
        error: why the input was not classified (empty when it was).
    """

    source: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "top": [{"label": c, "probability": p} for c, p in self.top]}
        if self.error:
            d["error"] = self.error
        return d


def open_session(path: str | Path, *, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path`` (passive waiting threads, all graph optimisations).

    Raises:
        ModelFileError: onnxruntime missing, or the file cannot be loaded.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelFileError("onnxruntime is not installed; pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or cpu_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelFileError(f"{path} is not a loadable ONNX model ({type(exc).__name__}: {str(exc)[:160]}); export it again") from None


def read_metadata(session, path: str | Path) -> dict[str, Any]:
    """The ``transferkit`` metadata of an open session, checked for format and version."""
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ModelFileError(f"{path} has no transferkit metadata; export it with `transferkit export MODEL --out {Path(path).name}`")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ModelFileError(f"{path}: its transferkit metadata is not JSON; export it again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a transferkit export (metadata format {str(meta)[:40]!r})")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > MULTI_FORMAT_VERSION:
        raise ModelFileError(f"{path} has export format version {meta.get('format_version')!r}; this runtime reads up to "
                             f"{MULTI_FORMAT_VERSION}. Upgrade transferkit.")
    inputs = meta.get("inputs")
    if meta["format_version"] >= MULTI_FORMAT_VERSION and not (
            isinstance(inputs, list) and inputs and all(isinstance(i, dict) and isinstance(i.get("name"), str)
                                                        and isinstance(i.get("preprocessing"), dict) for i in inputs)):
        raise ModelFileError(f"{path}: the metadata has no list of inputs with their preprocessing; export it again")
    members = meta.get("members")
    if members is not None and not (isinstance(members, list) and all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                                                      for m in members)):
        raise ModelFileError(f"{path}: the metadata's list of members is malformed; export it again")
    names = meta.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
        raise ModelFileError(f"{path}: the metadata has no list of class names; export it again")
    if not isinstance(meta.get("preprocessing"), dict):
        raise ModelFileError(f"{path}: the metadata has no preprocessing; export it again")
    return meta


class Runtime:
    """An exported model ready to classify images; thread-safe (one session shared by all threads).

    Example:
        >>> rt = Runtime("model.onnx")
        >>> rt.predict(["cat.jpg", "dog.png"], top_k=3)[0].top
        [('cat', 0.97), ('dog', 0.03)]

    Args:
        path: the ``.onnx`` file written by ``transferkit export``.
        threads: ONNX Runtime intra-op threads (default: the cores this process may use).
        max_pixels: refuse images with more pixels (decompression-bomb guard); ``None`` disables it.

    Raises:
        ModelFileError: the file is missing, not ONNX, or not a transferkit export.
    """

    max_batch = 16  # ORT keeps the largest batch's activations in its arena

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"no exported model at {self.path}; create one with `transferkit export MODEL --out {self.path}`")
        self.session = open_session(self.path, threads=threads)
        self.metadata = read_metadata(self.session, self.path)
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.inputs: list[dict[str, Any]] = self.metadata.get("inputs") or [{"name": INPUT_NAME,
                                                                              "preprocessing": self.metadata["preprocessing"]}]
        self.geometries = _geometries(self.inputs, self.session, self.path)
        self.geometry = self.geometries[0]
        self.max_pixels = max_pixels

    @property
    def image_size(self) -> int:
        """Side of the square input the graph takes, in pixels (a model of several members: its first input's;
        ``geometries`` has each)."""
        return self.geometry.image_size

    def preprocess(self, source):
        """Decode and resize/crop one input (path, bytes, file object or PIL image): ``[H, W, 3]`` uint8
        (for a model of several members: a tuple, one array per input, each decoded as that member's was).

        Raises:
            ImageInputError: the input is not a usable image (the message says why).
        """
        if len(self.geometries) == 1:
            return load_pixels(source, self.geometry, max_pixels=self.max_pixels)
        if hasattr(source, "read"):  # a stream is read once, from its start as Pillow would, then decoded for each member
            try:
                if getattr(source, "seekable", lambda: False)():
                    source.seek(0)
                source = source.read()
            except (OSError, ValueError) as exc:
                raise ImageInputError(f"cannot read the input stream ({exc})") from None
        return tuple(load_pixels(source, g, max_pixels=self.max_pixels) for g in self.geometries)

    def stack(self, items: Sequence) -> np.ndarray | tuple[np.ndarray, ...]:
        """A batch of :meth:`preprocess` outputs, as :meth:`run` takes it."""
        if len(self.geometries) == 1:
            return np.stack(items)
        return tuple(np.stack([item[i] for item in items]) for i in range(len(self.geometries)))

    def run(self, pixels) -> np.ndarray:
        """Class probabilities ``[N, K]`` (float32) for preprocessed ``[N, H, W, 3]`` uint8 pixels (several members: one
        such array per input, in order)."""
        if len(self.geometries) == 1:
            arrays = [pixels]
        elif isinstance(pixels, (list, tuple)) and len(pixels) == len(self.geometries):
            arrays = list(pixels)
        else:
            raise ImageInputError(f"this model takes a list of {len(self.geometries)} pixel arrays, one per member (see stack()); "
                                  f"got {type(pixels).__name__}")
        arrays = [np.ascontiguousarray(a, dtype=np.uint8) for a in arrays]
        for a, g in zip(arrays, self.geometries):
            if a.ndim != 4 or a.shape[1:] != (g.image_size, g.image_size, 3):
                raise ImageInputError(f"pixels must be [N, {g.image_size}, {g.image_size}, 3] uint8, got {list(a.shape)}")
        if len({len(a) for a in arrays}) > 1:
            raise ImageInputError(f"the members' pixel arrays hold different numbers of images: {[len(a) for a in arrays]}")
        names = [i["name"] for i in self.inputs]
        chunks = [self.session.run([OUTPUT_NAME], {n: a[i : i + self.max_batch] for n, a in zip(names, arrays)})[0]
                  for i in range(0, len(arrays[0]), self.max_batch)]
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.class_names)), np.float32)

    def top(self, probs: np.ndarray, top_k: int = 3) -> list[list[tuple[str, float]]]:
        """The ``top_k`` (class, probability) pairs of each row of ``probs``."""
        k = max(1, min(int(top_k), len(self.class_names)))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]

    def predict(self, inputs, top_k: int = 3) -> list[Prediction]:
        """Top-k predictions for images: paths, bytes, file objects or PIL images (one or a list).

        An input that cannot be read gets an ``error`` and the others are still classified.
        """
        items = _as_list(inputs)
        results = [Prediction(_name(x, i)) for i, x in enumerate(items)]
        for start in range(0, len(items), self.max_batch):  # decoded a batch at a time: memory stays bounded
            self._predict_batch(items, results, range(start, min(start + self.max_batch, len(items))), top_k)
        return results

    def _predict_batch(self, items: list, results: list[Prediction], indices: range, top_k: int) -> None:
        good: list[int] = []
        batch: list[np.ndarray] = []
        for i in indices:
            try:
                batch.append(self.preprocess(items[i]))
                good.append(i)
            except ImageInputError as exc:
                results[i].error = str(exc)
        if good:
            for i, top in zip(good, self.top(self.run(self.stack(batch)), top_k)):
                results[i].top = top


def _geometries(inputs: list[dict[str, Any]], session, path: Path) -> list[Geometry]:
    """Each input's resize and crop, checked against the graph's own inputs (names, order and sizes).

    Raises:
        ModelFileError: the metadata does not describe this graph, or its preprocessing is malformed.
    """
    graph = session.get_inputs()
    if [i["name"] for i in inputs] != [g.name for g in graph]:
        raise ModelFileError(f"{path}: the metadata names inputs {[i['name'] for i in inputs]} but the graph takes "
                             f"{[g.name for g in graph]}; export it again")
    out = []
    for spec, g in zip(inputs, graph):
        try:
            geometry = Geometry(spec["preprocessing"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: the preprocessing of input {spec['name']} is malformed ({exc}); export it again") from None
        except ImageInputError as exc:
            raise ModelFileError(f"{path}: {exc}") from None
        side = [d for d in g.shape[1:3] if isinstance(d, int)]
        if any(d != geometry.image_size for d in side):
            raise ModelFileError(f"{path}: input {g.name} is {g.shape[1]}x{g.shape[2]} pixels but its preprocessing says "
                                 f"{geometry.image_size}; export it again")
        out.append(geometry)
    return out


def _as_list(inputs) -> list:
    if isinstance(inputs, (str, Path, bytes, bytearray)) or hasattr(inputs, "read") or hasattr(inputs, "getpixel"):
        return [inputs]
    return list(inputs)


def _name(x, i: int) -> str:
    if isinstance(x, (str, Path)):
        return str(x)
    return str(getattr(x, "name", "") or getattr(x, "filename", "") or f"<image {i}>")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


def expand_paths(paths: Iterable[str | Path], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Files as given; folders expanded to the image files inside them (sorted, recursive).

    Raises:
        ImageInputError: a path does not exist, or a folder holds no image file.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in suffixes)
            if not inside:
                raise ImageInputError(f"{p} holds no image files (looked for {', '.join(suffixes)})")
            found.extend(inside)
        elif p.exists():
            found.append(p)
        else:
            raise ImageInputError(f"{p} does not exist; pass image files or folders")
    return found
