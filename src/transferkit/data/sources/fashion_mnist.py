"""Fashion-MNIST as a folder of PNGs, so the ordinary loaders (and the demo) can use it.

The source is the four IDX files (``train-images-idx3-ubyte.gz`` and friends): those of Debian's
``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``, MIT licence) when
installed, or the ones ``transferkit datasets download fashion-mnist`` fetches from the official
mirror. A deterministic, stratified subset is written as split folders of class folders::

    <cache>/datasets/fashion-mnist-<train>x<test>/{train,test}/<class>/<index>.png

(``index`` is the image's index in the original file), which ``transferkit.data.load_images``
reads as class folders with the official train/test split.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import struct
from pathlib import Path

import numpy as np

from transferkit.core.atomic import replace_directory
from transferkit.core.errors import DataError

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# Folder-safe names of the ten classes, in label order ("T-shirt/top" cannot be a folder name).
CLASS_NAMES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")
FORMAT_VERSION = 1
MARKER = ".transferkit-dataset.json"


def debian_source() -> Path | None:
    """The Debian package's folder when all four files are there, else ``None``."""
    return DEBIAN_DIR if all((DEBIAN_DIR / f).is_file() for f in FILES.values()) else None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a uint8 array of its stated shape.

    Raises:
        DataError: not an IDX file of unsigned bytes, or shorter than its header says.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path} ({exc}); reinstall {DEBIAN_PACKAGE} or download again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {body.size} bytes of data, its header says {int(np.prod(shape))}")
    return body.reshape(shape)


def stratified_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` indices of each label (or all it has), seeded, sorted: the same on every machine."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.append(np.sort(rng.permutation(idx)[:per_class]))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def subset_dir(root: Path, train_per_class: int, test_per_class: int) -> Path:
    return root / f"fashion-mnist-{train_per_class}x{test_per_class}"


def is_prepared(folder: Path) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("format_version") == FORMAT_VERSION
    except (OSError, ValueError):
        return False


def prepare_fashion_mnist(
    source: Path,
    datasets_root: Path,
    *,
    train_per_class: int = 100,
    test_per_class: int = 30,
    seed: int = 0,
) -> Path:
    """Write (once) a stratified subset of Fashion-MNIST as PNG class folders; returns the folder.

    Args:
        source: folder holding the four IDX .gz files.
        datasets_root: where prepared datasets live (``<cache>/datasets``).
        train_per_class: images per class taken from the official training file.
        test_per_class: images per class taken from the official test file.
        seed: picks which images; the subset only depends on it and the files.

    Returns:
        The folder with ``train/<class>/*.png`` and ``test/<class>/*.png``. A finished folder has
        a marker file and is reused; an interrupted one is never seen (written to a temporary
        name, renamed at the end).
    """
    from PIL import Image

    target = subset_dir(datasets_root, train_per_class, test_per_class)
    if is_prepared(target):
        log.info("using prepared %s", target)
        return target
    missing = [f for f in FILES.values() if not (source / f).is_file()]
    if missing:
        raise DataError(f"{source} lacks {', '.join(missing)}; install {DEBIAN_PACKAGE} or run `transferkit datasets download fashion-mnist`")
    arrays = {key: read_idx(source / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{source}: {split} images {images.shape} and labels {labels.shape} do not fit together")
        if labels.max(initial=0) >= len(CLASS_NAMES):
            raise DataError(f"{source}: {split} labels go up to {labels.max()}, Fashion-MNIST has 10 classes")
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    counts: dict[str, int] = {}
    content = hashlib.sha256()
    try:
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            picked = stratified_indices(labels, per_class, seed + (0 if split == "train" else 1))
            for name in CLASS_NAMES:
                (tmp / split / name).mkdir(parents=True, exist_ok=True)
            for i in picked:
                out = tmp / split / CLASS_NAMES[labels[i]] / f"{int(i):05d}.png"
                Image.fromarray(np.ascontiguousarray(images[i])).save(out, optimize=False)
                content.update(images[i].tobytes())
            counts[split] = int(len(picked))
        marker = {
            "format_version": FORMAT_VERSION,
            "dataset": "fashion-mnist",
            "source": str(source),
            "license": "MIT (Zalando Research); Debian package dataset-fashion-mnist",
            "train_per_class": train_per_class,
            "test_per_class": test_per_class,
            "seed": seed,
            "counts": counts,
            "pixels_sha256": content.hexdigest(),
            "classes": list(CLASS_NAMES),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        replace_directory(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s (%s)", target, counts)
    return target
