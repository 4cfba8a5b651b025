"""Which dataset the demo uses, and why.

Order: an explicit folder (``--data``); an explicit catalog name (``--dataset``); Oxford-IIIT Pet
(from the cache, else downloaded when its site is reachable); Fashion-MNIST from Debian's
``dataset-fashion-mnist`` package; else a clear error saying what to do. Reachability is a DNS
lookup in a thread with a timeout: offline, a failed lookup answers at once, whereas an HTTP
request may hang for its whole timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transferkit.core.errors import DataError
from transferkit.core.network import unreachable_reason
from transferkit.data.sources import fashion_mnist
from transferkit.data.sources.catalog import download_dataset, get_dataset_info, prepared_path
from transferkit.data.sources.download import ProgressCallback

log = logging.getLogger(__name__)

PREFERRED = "oxford-pets"


@dataclass(frozen=True)
class ResolvedDataset:
    """The dataset chosen for a run.

    Attributes:
        path: folder (or CSV) to pass to :func:`transferkit.data.load_images`.
        name: catalog name, or "folder" for ``--data``.
        reason: one sentence saying why this one was chosen (printed and put in the report).
        license: licence / origin, for the report.
    """

    path: Path
    name: str
    reason: str
    license: str = ""

    def to_dict(self) -> dict:
        return {"path": str(self.path), "name": self.name, "reason": self.reason, "license": self.license}


def resolve_dataset(
    *,
    data: str | Path | None = None,
    dataset: str | None = None,
    cache: Path | None = None,
    reachable: Callable[[str], str | None] = unreachable_reason,
    progress_factory: Callable[[str], ProgressCallback | None] | None = None,
    fashion_sizes: tuple[int, int] = (100, 30),
) -> ResolvedDataset:
    """Pick the dataset for the demo (see the module docstring for the order).

    Args:
        data: a dataset folder or CSV given by the user; wins over everything.
        dataset: a catalog name (``oxford-pets``, ``petimages``, ``fashion-mnist``): fetched or reused.
        cache: cache root (default ``$TRANSFERKIT_CACHE_DIR`` or ``~/.cache/transferkit``).
        reachable: host -> reason it is unreachable or ``None`` (tests pass a fake).
        progress_factory: progress callbacks for downloads.
        fashion_sizes: (train, test) images per class of the Fashion-MNIST subset.

    Raises:
        DataError: ``data`` does not exist, or no dataset can be had (the message says what to do).
    """
    if data is not None:
        path = Path(data).expanduser()
        if not path.exists():
            raise DataError(f"--data {path} does not exist; pass a folder of class folders, an Oxford-IIIT or PetImages folder, or a CSV")
        return ResolvedDataset(path, "folder", f"--data {path} was given")
    if dataset is not None:
        info = get_dataset_info(dataset)
        cached = prepared_path(info.name, cache=cache, fashion_sizes=fashion_sizes)
        if cached is not None:
            return ResolvedDataset(cached, info.name, f"--dataset {info.name}: found in the cache at {cached}", info.license)
        local = info.name == "fashion-mnist" and fashion_mnist.debian_source() is not None
        if not local:
            why = reachable(info.host)
            if why is not None:
                raise DataError(f"--dataset {info.name} is not in the cache and {info.homepage} cannot be reached ({why}); "
                                "connect to the internet once, or pass --data DIR")
        path = download_dataset(info.name, cache=cache, progress_factory=progress_factory, fashion_sizes=fashion_sizes)
        how = "converted from the Debian package dataset-fashion-mnist" if local else f"downloaded from {info.homepage}"
        return ResolvedDataset(path, info.name, f"--dataset {info.name}: {how}", info.license)

    pets = get_dataset_info(PREFERRED)
    cached = prepared_path(PREFERRED, cache=cache)
    if cached is not None:
        return ResolvedDataset(cached, PREFERRED, f"{pets.title} found in the cache at {cached}", pets.license)
    why_not = reachable(pets.host)
    if why_not is None:
        path = download_dataset(PREFERRED, cache=cache, progress_factory=progress_factory)
        return ResolvedDataset(path, PREFERRED, f"{pets.title} downloaded from {pets.homepage} ({pets.approx_download})", pets.license)
    fashion = get_dataset_info("fashion-mnist")
    cached = prepared_path("fashion-mnist", cache=cache, fashion_sizes=fashion_sizes)
    if cached is None and fashion_mnist.debian_source() is not None:
        cached = download_dataset("fashion-mnist", cache=cache, fashion_sizes=fashion_sizes)
    if cached is not None:
        return ResolvedDataset(
            cached, "fashion-mnist",
            f"{pets.title} is not cached and cannot be downloaded ({why_not}); using Fashion-MNIST from the "
            f"Debian package {fashion_mnist.DEBIAN_PACKAGE} instead (a far-domain transfer: photos to clothing)",
            fashion.license,
        )
    raise DataError(
        f"no dataset for the demo: {pets.title} is not cached and cannot be downloaded ({why_not}), and the Debian "
        f"package {fashion_mnist.DEBIAN_PACKAGE} is not installed. Do one of: `apt-get install -y {fashion_mnist.DEBIAN_PACKAGE}`; "
        "connect to the internet; or pass --data DIR (a folder of class folders)"
    )
