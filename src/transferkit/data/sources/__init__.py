"""Datasets: finding, downloading (progress, checksum, cache, resume) and preparing them.

- :func:`resolve_dataset`: which dataset the demo uses and why (``--data``, a catalog name,
  Oxford-IIIT Pet when reachable, Fashion-MNIST from Debian's package, else a clear error).
- :func:`download_dataset` / :func:`list_datasets`: the catalog behind ``transferkit datasets``.
- :func:`download_file`: the download machinery itself.
"""

from transferkit.data.sources.cache import cache_root, datasets_dir, downloads_dir
from transferkit.data.sources.catalog import DatasetInfo, download_dataset, get_dataset_info, list_datasets, prepared_path
from transferkit.data.sources.download import DownloadError, download_file, extract_archive, file_digest
from transferkit.data.sources.resolve import ResolvedDataset, resolve_dataset, unreachable_reason

__all__ = [
    "DatasetInfo",
    "DownloadError",
    "ResolvedDataset",
    "cache_root",
    "datasets_dir",
    "download_dataset",
    "download_file",
    "downloads_dir",
    "extract_archive",
    "file_digest",
    "get_dataset_info",
    "list_datasets",
    "prepared_path",
    "resolve_dataset",
    "unreachable_reason",
]
