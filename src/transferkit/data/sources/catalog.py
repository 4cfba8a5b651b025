"""The datasets `transferkit datasets download NAME` knows, and how each one is fetched and unpacked.

Every dataset ends up in ``<cache>/datasets/<folder>`` in the layout
:func:`transferkit.data.load_images` detects on its own, with a marker file written last: a
folder without the marker is an interrupted preparation and is done again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from transferkit.core.errors import DataError
from transferkit.core.registry import Registry
from transferkit.data.sources import fashion_mnist
from transferkit.data.sources.cache import datasets_dir, downloads_dir
from transferkit.data.sources.download import ProgressCallback, download_file, extract_archive

log = logging.getLogger(__name__)

MARKER = ".transferkit-dataset.json"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset on its official site.

    Attributes:
        url: where it is.
        filename: name in the downloads cache.
        checksum: ``"md5:<hex>"`` / ``"sha256:<hex>"`` as published (None when nobody publishes one;
            zip archives then still get their CRCs checked).
        unpack: the top-level folder inside the archive that is moved into the dataset folder
            (``None``: the file is kept as it is, not unpacked).
        size: bytes, when known.
    """

    url: str
    filename: str
    checksum: str | None
    unpack: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset the toolkit can fetch."""

    name: str
    title: str
    description: str
    license: str
    homepage: str
    files: tuple[RemoteFile, ...]
    folder: str
    approx_download: str
    classes: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def host(self) -> str:
        from urllib.parse import urlparse

        return urlparse(self.files[0].url).hostname or ""


DATASETS: Registry[DatasetInfo] = Registry("dataset")

DATASETS.register("oxford-pets", DatasetInfo(
    name="oxford-pets",
    title="Oxford-IIIT Pet",
    description="7,349 photos of 37 cat and dog breeds with the official trainval/test split",
    license="CC BY-SA 4.0 (Parkhi et al. 2012)",
    homepage="https://www.robots.ox.ac.uk/~vgg/data/pets/",
    # Checksums as published with torchvision's OxfordIIITPet (md5 of each archive).
    files=(
        RemoteFile("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz", "oxford-pets-images.tar.gz",
                   "md5:5c4f3ee8e5d25df40f4fd59a7f44e54c", unpack="images"),
        RemoteFile("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz", "oxford-pets-annotations.tar.gz",
                   "md5:95a8c909bbe2e81eed6a22bccdf3f68f", unpack="annotations"),
    ),
    folder="oxford-pets",
    approx_download="about 800 MB",
    classes="37 breeds (or 2 species)",
))

DATASETS.register("petimages", DatasetInfo(
    name="petimages",
    title="Microsoft PetImages (Kaggle Cats and Dogs)",
    description="about 25,000 cat and dog photos, with the truncated and non-JPEG files the loaders report",
    license="Microsoft Research, for research use (Asirra)",
    homepage="https://www.microsoft.com/en-us/download/details.aspx?id=54765",
    # Microsoft publishes no checksum; the zip's own CRCs are checked before unpacking.
    files=(
        RemoteFile("https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip",
                   "kagglecatsanddogs_5340.zip", None, unpack="PetImages"),
    ),
    folder="petimages",
    approx_download="about 790 MB",
    classes="2 (Cat, Dog)",
))

DATASETS.register("fashion-mnist", DatasetInfo(
    name="fashion-mnist",
    title="Fashion-MNIST (stratified subset as PNGs)",
    description="28x28 grey photos of 10 kinds of clothing: a far-domain transfer from ImageNet photos",
    license="MIT (Zalando Research)",
    homepage="https://github.com/zalandoresearch/fashion-mnist",
    # md5 of the official .gz files, as published with torchvision's FashionMNIST.
    files=tuple(
        RemoteFile(f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{name}", name, f"md5:{md5}")
        for name, md5 in (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        )
    ),
    folder="fashion-mnist-raw",
    approx_download="about 30 MB (none with the Debian package)",
    classes="10",
    notes=("taken from the Debian package dataset-fashion-mnist when installed (no download)",),
))


def list_datasets() -> list[DatasetInfo]:
    """Every dataset the toolkit can fetch, by name."""
    return [DATASETS.get(n) for n in DATASETS.list()]


def get_dataset_info(name: str) -> DatasetInfo:
    """The catalog entry for ``name``; raises UnknownNameError naming close matches."""
    return DATASETS.get(name.strip().lower())


def _marker_ok(folder: Path) -> bool:
    marker = folder / MARKER
    try:
        return marker.is_file() and json.loads(marker.read_text()).get("complete") is True
    except (OSError, ValueError):
        return False


def prepared_path(name: str, *, cache: Path | None = None, fashion_sizes: tuple[int, int] = (100, 30)) -> Path | None:
    """Where dataset ``name`` is ready to load from the cache, or ``None`` when it is not (yet) there."""
    info = get_dataset_info(name)
    root = datasets_dir(cache)
    if info.name == "fashion-mnist":
        folder = fashion_mnist.subset_dir(root, *fashion_sizes)
        return folder if fashion_mnist.is_prepared(folder) else None
    folder = root / info.folder
    return folder if _marker_ok(folder) else None


def download_dataset(
    name: str,
    *,
    cache: Path | None = None,
    progress_factory: Callable[[str], ProgressCallback | None] | None = None,
    fashion_sizes: tuple[int, int] = (100, 30),
    seed: int = 0,
    prefer_local: bool = True,
) -> Path:
    """Fetch (or reuse) dataset ``name`` and return the folder to load it from.

    Args:
        name: a name from :func:`list_datasets`.
        cache: cache root (default ``$TRANSFERKIT_CACHE_DIR`` or ``~/.cache/transferkit``).
        progress_factory: given a file name, returns a progress callback for its download.
        fashion_sizes: (train, test) images per class of the Fashion-MNIST subset.
        seed: which Fashion-MNIST images make the subset.
        prefer_local: for Fashion-MNIST, use the Debian package's files when installed.

    Raises:
        UnknownNameError: no such dataset.
        DownloadError: a download failed or did not match its checksum.
    """
    info = get_dataset_info(name)
    ready = prepared_path(info.name, cache=cache, fashion_sizes=fashion_sizes)
    if ready is not None:
        log.info("%s is already prepared in %s", info.name, ready)
        return ready
    root = datasets_dir(cache)
    downloads = downloads_dir(cache)
    if info.name == "fashion-mnist":
        source = fashion_mnist.debian_source() if prefer_local else None
        if source is None:
            source = root / info.folder
            for f in info.files:
                download_file(f.url, source / f.filename, checksum=f.checksum, size=f.size,
                              progress=progress_factory(f.filename) if progress_factory else None)
        return fashion_mnist.prepare_fashion_mnist(source, root, train_per_class=fashion_sizes[0],
                                                   test_per_class=fashion_sizes[1], seed=seed)
    folder = root / info.folder
    folder.mkdir(parents=True, exist_ok=True)
    for f in info.files:
        archive = download_file(f.url, downloads / f.filename, checksum=f.checksum, size=f.size,
                                progress=progress_factory(f.filename) if progress_factory else None)
        if f.unpack is None:
            shutil.copy2(archive, folder / f.filename)
            continue
        unpacked = extract_archive(archive, folder / f".unpack-{f.unpack}")
        inner = unpacked / f.unpack
        if not inner.is_dir():
            shutil.rmtree(unpacked, ignore_errors=True)
            raise DataError(f"{f.filename} does not hold a {f.unpack}/ folder; the archive may have changed, delete {archive}")
        if (folder / f.unpack).exists():
            shutil.rmtree(folder / f.unpack)
        os.replace(inner, folder / f.unpack)
        shutil.rmtree(unpacked, ignore_errors=True)
    tmp_marker = folder / (MARKER + ".tmp")
    tmp_marker.write_text(json.dumps({"complete": True, "dataset": info.name, "license": info.license,
                                      "files": [{"url": f.url, "checksum": f.checksum} for f in info.files]}, indent=2))
    os.replace(tmp_marker, folder / MARKER)
    return folder
