"""The verify pass: decode every file once, in parallel, and remember the answer on disk.

Each file gets a :class:`FileCheck`: whether it decodes to RGB, the reason when it does not, its
size, mode, format and a content hash (for duplicates). Results are cached per file under
``$TRANSFERKIT_CACHE_DIR/verify`` (default ``~/.cache/transferkit/verify``), keyed on the absolute
path, size, mtime_ns and inode plus the decoding options, so looking at the same folder again
costs one ``stat`` per file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transferkit.core.paths import cache_root, cache_unusable
from transferkit.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_rgb

logger = logging.getLogger(__name__)

VERIFY_FORMAT_VERSION = 1
# Below this many files to check, starting worker processes costs more than it saves (one worker
# checks about 400-1000 small JPEGs a second).
INLINE_THRESHOLD = 128
_CHUNK = 16


@dataclass(frozen=True)
class VerifyOptions:
    """Decoding options that change a file's verdict (so they are part of the cache key)."""

    allow_truncated: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def key(self) -> str:
        return json.dumps({"v": VERIFY_FORMAT_VERSION, **asdict(self)}, sort_keys=True)


@dataclass
class FileCheck:
    """The verdict on one file."""

    ok: bool
    reason: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    frames: int = 1
    sha: str = ""  # blake2b-128 of the file bytes; "" when the file could not be read

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_cache_dir() -> Path:
    """``$TRANSFERKIT_CACHE_DIR`` or ``~/.cache/transferkit`` (:func:`transferkit.core.paths.cache_root`)."""
    return cache_root()


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def check_file(path: str | Path, options: VerifyOptions = VerifyOptions()) -> FileCheck:
    """Read, hash and decode one file; never raises (every failure becomes a reason)."""
    path = Path(path)
    try:
        if path.is_dir():
            return FileCheck(False, "is a directory, not a file")
        data = path.read_bytes()
    except OSError as exc:
        return FileCheck(False, f"cannot read file: {exc.strerror or exc}")
    if not data:
        return FileCheck(False, "empty file (0 bytes)", sha=content_hash(data))
    sha = content_hash(data)
    try:
        # A 1/8-scale JPEG decode still consumes every byte of the entropy-coded data, so a
        # truncated file still fails, at a fraction of the cost of a full decode.
        img, info = decode_rgb(
            io.BytesIO(data),
            max_pixels=options.max_pixels,
            allow_truncated=options.allow_truncated,
            draft_scale=8,
        )
        img.close()
    except ImageDecodeError as exc:
        return FileCheck(False, str(exc), sha=sha)
    except Exception as exc:  # anything Pillow throws must become a reason, not a crash
        return FileCheck(False, f"cannot decode: {type(exc).__name__}: {exc}", sha=sha)
    return FileCheck(
        True,
        "",
        width=int(info["width"]),
        height=int(info["height"]),
        mode=str(info["mode"]),
        format=str(info["format"]),
        frames=int(info["frames"]),
        sha=sha,
    )


def _check_chunk(paths: list[str], options: VerifyOptions) -> list[dict[str, Any]]:
    return [check_file(p, options).to_json() for p in paths]


def _unreadable(path: Path, options: VerifyOptions) -> FileCheck:
    try:
        path.stat()
    except OSError as exc:
        return FileCheck(False, f"cannot read file: {exc.strerror or exc}")
    return check_file(path, options)  # it appeared in the meantime


def _stat_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class VerifyCache:
    """Per-file verdicts for one folder and one set of options, in one JSON file.

    A cache that cannot be read or written only costs time: one warning (per cache folder and
    process) and the checks go on without it.
    """

    def __init__(self, root: Path, options: VerifyOptions, cache_dir: Path | None = None):
        self.root_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key = hashlib.blake2b(f"{Path(root).resolve()}\0{options.key()}".encode(), digest_size=12).hexdigest()
        self.file = self.root_dir / "verify" / f"{key}.json"
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False
        self.usable = True
        try:
            data = json.loads(self.file.read_text())
            if isinstance(data, dict) and data.get("version") == VERIFY_FORMAT_VERSION and data.get("options") == options.key() \
                    and isinstance(data.get("entries"), dict):
                self.entries = data["entries"]
        except FileNotFoundError:
            pass
        except (NotADirectoryError, PermissionError) as exc:  # the folder itself is unusable
            self.usable = False
            cache_unusable(self.root_dir, exc)
        except (OSError, ValueError) as exc:  # a damaged file: checked again and rewritten
            logger.warning("ignoring unreadable verify cache %s: %s", self.file, exc)
        self.options = options

    def get(self, path: Path, stat_key: list[int] | None) -> FileCheck | None:
        entry = self.entries.get(str(path))
        if not isinstance(entry, dict) or stat_key is None or entry.get("stat") != stat_key:
            return None
        try:
            return FileCheck(**entry["check"])
        except (KeyError, TypeError):  # a damaged entry is a miss (checked again), never a crash
            return None

    def put(self, path: Path, stat_key: list[int] | None, check: FileCheck) -> None:
        if stat_key is None:
            return  # unreadable: nothing stable to key on, check again next time
        self.entries[str(path)] = {"stat": stat_key, "check": check.to_json()}
        self.dirty = True

    def prune(self, current: set[str]) -> int:
        """Drop entries of files that no longer exist (``current`` paths are known to; others are checked)."""
        gone = [k for k in self.entries if k not in current and not os.path.lexists(k)]
        for k in gone:
            del self.entries[k]
        if gone:
            self.dirty = True
            logger.info("verify cache: dropped %d entries of deleted files", len(gone))
        return len(gone)

    def save(self) -> None:
        """Write atomically (temp file + os.replace) so a crash never leaves half a cache."""
        if not self.dirty or not self.usable:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            payload = {"version": VERIFY_FORMAT_VERSION, "options": self.options.key(), "entries": self.entries}
            fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=self.file.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(payload, fh, separators=(",", ":"))
                os.replace(tmp, self.file)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self.dirty = False
        except OSError as exc:  # a read-only or full cache dir must not stop the load
            self.usable = False
            cache_unusable(self.root_dir, exc)


def _usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _pool_context():
    # Linux: fork. Workers start in milliseconds and never re-import ``__main__``, so scripts
    # without an ``if __name__ == "__main__"`` guard, notebooks and ``python -`` all work. The
    # worker only runs Pillow, none of the torch/OpenMP state that makes fork risky.
    # Elsewhere: spawn (fork is unsafe on macOS); if that fails the pass falls back to inline.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _check_parallel(paths: list[Path], todo: list[int], options: VerifyOptions, n_workers: int,
                    results: list[FileCheck | None]) -> int:
    """Fill ``results[i]`` for ``i`` in ``todo`` using a process pool; returns the workers used."""
    chunks = [todo[k : k + _CHUNK] for k in range(0, len(todo), _CHUNK)]
    try:
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=_pool_context()) as pool:
            futures = [pool.submit(_check_chunk, [str(paths[i]) for i in chunk], options) for chunk in chunks]
            for chunk, fut in zip(chunks, futures):
                for i, check in zip(chunk, fut.result()):
                    results[i] = FileCheck(**check)
        return n_workers
    except (BrokenProcessPool, OSError, RuntimeError) as exc:
        logger.warning("verify pass: worker processes failed (%s); checking the rest in this process", exc)
        for i in todo:
            if results[i] is None:
                results[i] = check_file(paths[i], options)
        return 1


def verify_files(
    paths: Sequence[Path],
    *,
    root: Path,
    options: VerifyOptions = VerifyOptions(),
    workers: int | None = None,
    cache: bool = True,
    cache_dir: Path | None = None,
) -> tuple[list[FileCheck], dict[str, Any]]:
    """Check every path; returns the checks (same order) and stats (cache hits, seconds, workers).

    Args:
        paths: files to check.
        root: the dataset folder (names the cache file).
        options: decoding options.
        workers: processes to use; ``None`` = all cores, 1 or 0 = inline.
        cache: reuse and store verdicts on disk.
        cache_dir: overrides ``$TRANSFERKIT_CACHE_DIR``.
    """
    start = time.perf_counter()
    paths = [Path(p).absolute() for p in paths]
    store = VerifyCache(root, options, cache_dir) if cache else None
    results: list[FileCheck | None] = [None] * len(paths)
    stat_keys = [_stat_key(p) for p in paths]
    todo: list[int] = []
    for i, p in enumerate(paths):
        hit = store.get(p, stat_keys[i]) if store is not None else None
        if stat_keys[i] is None:  # vanished or a dangling link: nothing to decode
            results[i] = _unreadable(p, options)
        elif hit is not None:
            results[i] = hit
        else:
            todo.append(i)
    hits = sum(1 for i, k in enumerate(stat_keys) if k is not None) - len(todo)
    n_workers = min(workers if workers is not None else _usable_cores(), max(1, len(todo) // _CHUNK))
    if todo and (n_workers <= 1 or len(todo) < INLINE_THRESHOLD):
        n_workers = 1
        for i in todo:
            results[i] = check_file(paths[i], options)
    elif todo:
        n_workers = _check_parallel(paths, todo, options, n_workers, results)
    if store is not None:
        for i in todo:
            store.put(paths[i], stat_keys[i], results[i])  # type: ignore[arg-type]
        store.prune({str(p) for p, k in zip(paths, stat_keys) if k is not None})
        store.save()
    seconds = time.perf_counter() - start
    logger.info(
        "verified %d files in %.2fs (%d from cache, %d decoded with %d worker(s))",
        len(paths), seconds, hits, len(todo), n_workers,
    )
    return [r for r in results if r is not None], {"cache_hits": hits, "seconds": seconds, "workers": n_workers}
