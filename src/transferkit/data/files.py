"""Image files named on a command line: files as given, folders expanded to the images inside."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from transferkit.core.errors import DataError
from transferkit.data.formats import IMAGE_SUFFIXES, is_image_name

log = logging.getLogger(__name__)


def list_image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, folders replaced by the image files inside them (recursive, sorted).

    A file named directly is kept whatever its suffix (decoding it says whether it is an image).
    Inside a folder only names with an image suffix (``IMAGE_SUFFIXES``: .jpg, .png, .webp, ...)
    count; hidden files and folders (names starting with ".") and symlinked folders are skipped.

    Args:
        paths: files and folders, in the order wanted.

    Returns:
        The files: each argument's in turn, a folder's sorted by path.

    Raises:
        DataError: a path does not exist, or a folder holds no image file.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = _images_under(path)
            if not inside:
                raise DataError(f"{path} holds no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            found.extend(inside)
        elif path.exists():
            found.append(path)
        else:
            raise DataError(f"{path} does not exist; pass image files or folders")
    return found


def _images_under(folder: Path) -> list[Path]:
    images: list[Path] = []
    skipped = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath, name)
            if not name.startswith(".") and is_image_name(path):
                images.append(path)
            else:
                skipped += 1
    if skipped:
        log.info("%s: skipped %d files that are hidden or have no image suffix", folder, skipped)
    return sorted(images)
