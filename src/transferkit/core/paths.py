"""Where transferkit keeps what it can recompute, and what to do when that place is unusable.

Everything cached (features, exported ONNX graphs, fitted probe heads, report plots, the verify
pass, downloaded datasets) lives under one root: ``$TRANSFERKIT_CACHE_DIR`` when set, else
``~/.cache/transferkit``.

A cache only saves time, so a cache that cannot be used (not writable, a file where the folder
should be, a full disk) never stops a run: the code that meets the problem calls
:func:`cache_unusable`, which logs one warning per folder and process naming the folder and the
way out, and carries on without it.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "TRANSFERKIT_CACHE_DIR"
WAY_OUT = f"set {CACHE_ENV} to a writable folder or pass --no-cache"

_warned: set[str] = set()
_warned_lock = threading.Lock()


def cache_root() -> Path:
    """The cache folder: ``$TRANSFERKIT_CACHE_DIR`` when set (and not blank), else ``~/.cache/transferkit``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "transferkit"


def describe_os_error(exc: BaseException) -> str:
    """A short cause for an ``OSError`` or SQLite error, without the exception's class name."""
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "no space left on device"
        if exc.errno == errno.EDQUOT:
            return "disk quota exceeded"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "permission denied"
        if exc.errno == errno.EROFS:
            return "read-only file system"
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            return "a file is in the way where a folder should be"
        if exc.strerror:
            return exc.strerror.lower()
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "disk is full" in text or "disk I/O error" in text:
        return "no space left on device" if "full" in text else "disk I/O error"
    return text or "unusable"


def cache_unusable(folder: str | os.PathLike, exc: BaseException | str) -> None:
    """Warn once per ``folder`` (and process) that the cache there cannot be used; never raises.

    The message names the folder, the cause and the way out; the caller goes on without the cache.
    """
    key = os.path.abspath(os.fspath(folder))
    with _warned_lock:
        if key in _warned:
            log.debug("cache %s still unusable: %s", key, exc)
            return
        _warned.add(key)
    cause = exc if isinstance(exc, str) else describe_os_error(exc)
    log.warning("cache folder %s cannot be used (%s); going on without it: %s", key, cause, WAY_OUT)


CACHE_ERRORS: tuple[type[BaseException], ...] = (OSError, sqlite3.Error)
"""What an unusable cache raises: file system errors, and SQLite's (a full disk, a locked or corrupt file)."""


def _forget_warnings() -> None:
    """Tests: warn again about folders already reported."""
    with _warned_lock:
        _warned.clear()


__all__ = ["CACHE_ENV", "CACHE_ERRORS", "WAY_OUT", "cache_root", "cache_unusable", "describe_os_error"]
