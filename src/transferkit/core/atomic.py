"""Atomic file writes: a temporary name in the same folder, then one rename.

A reader never sees a half-written file, a crash leaves the old file (or nothing) in place, and the
result gets the permissions the user's umask gives ordinary files (``mkstemp`` alone makes it private).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then rename it to ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_figure_png(fig, path: str | os.PathLike) -> Path:
    """Write a matplotlib ``Figure`` to ``path`` as a PNG, atomically (temporary name, then rename).

    Build figures with ``matplotlib.figure.Figure`` (no pyplot): nothing global to select or close.
    """
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def replace_directory(new: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the finished folder ``new`` at ``target`` (same file system), replacing any old folder.

    The old folder is moved aside first and put back if the rename fails, so ``target`` never ends
    up empty; it is deleted only once the new folder is in place.
    """
    import shutil
    import time

    new, target = Path(new), Path(target)
    old = None
    if target.exists() or target.is_symlink():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{time.time_ns()}"
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        if old.is_symlink() or not old.is_dir():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
    return target
