"""The on-disk feature cache: one SQLite file, keyed by content, safe to kill at any moment.

Key of a cached feature vector = the model key (backbone spec fields that change the computation,
a digest of the actual weights, the preprocessing, the cache format version) + the image's content
hash (sha256 of its bytes). Paths never enter a key: a renamed or copied image is still a hit,
and an image edited in place is a miss.

Hashing every image on every run would cost a full read; a second table remembers
``(path, size, mtime_ns, inode) -> sha256`` so unchanged files are not read again (the same fast
path ``make`` and ``git`` use).

SQLite gives the safety properties for free: every batch of entries is one transaction, so a killed
run keeps what was committed, never leaves a half-written row, and resumes with what is missing.
The directory is ``$TRANSFERKIT_CACHE_DIR`` or ``~/.cache/transferkit``.

A cache only saves time: when it cannot be used (a folder that is not writable, a file where the
folder should be, a full disk, a corrupt database) there is one warning naming the folder and the
way out, and every later call behaves as an empty cache that stores nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferkit.backbones.weights import sha256_of_bytes
from transferkit.core.errors import TransferkitError
from transferkit.core.paths import CACHE_ERRORS, cache_root, cache_unusable, describe_os_error

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
DB_NAME = "features.sqlite"
# Everything else transferkit derives and caches here (all recomputable): exported ONNX graphs,
# fitted probe heads and held-out probabilities, report plots, the data verify pass, the backbone memo.
DERIVED_FOLDERS = ("onnx", "heads", "probs", "report-png", "verify")
DERIVED_FILES = ("backbones.json",)
_SQL_CHUNK = 500  # stays under SQLite's limit on bound variables


def default_cache_dir() -> Path:
    """``$TRANSFERKIT_CACHE_DIR`` if set, else ``~/.cache/transferkit`` (:func:`transferkit.core.paths.cache_root`)."""
    return cache_root()


@dataclass
class CacheInfo:
    """What is in a cache directory."""

    directory: str
    feature_entries: int
    models: list[dict]
    hashed_files: int
    onnx_models: list[str]
    size_bytes: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class FeatureCache:
    """Feature vectors keyed by (model key, image content hash) in ``<dir>/features.sqlite``.

    Safe to use from several threads (one connection per thread) and several processes (SQLite
    locking; writers wait up to 60 s). Never raises for a cache that cannot be used: see
    :attr:`available`.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.path = self.directory / DB_NAME
        self._local = threading.local()
        self._failed = False

    # -- connection ---------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """Whether the cache can be used (opens it on first use); ``False`` after any failure."""
        return self._conn() is not None

    def _disable(self, exc: BaseException) -> None:
        """Stop using the cache for the rest of this object's life, with one warning."""
        self._failed = True
        cache_unusable(self.directory, exc)
        self.close()

    def _conn(self) -> sqlite3.Connection | None:
        if self._failed:
            return None
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=60.0)
                self._set_up(conn)
                self._local.conn = conn
            except CACHE_ERRORS as exc:
                self._disable(exc)
                return None
        return conn

    @staticmethod
    def _set_up(conn: sqlite3.Connection, attempts: int = 20) -> None:
        """WAL mode and the tables. Processes opening a new cache at once (torchrun ranks) can get
        "database is locked" at once here (SQLite skips its busy wait when two lock upgrades would
        deadlock), so this is retried for a few seconds before the cache counts as unusable."""
        for attempt in range(attempts):
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(
                    """
                    CREATE TABLE IF NOT EXISTS features (
                        model_key TEXT NOT NULL, content_hash TEXT NOT NULL, dim INTEGER NOT NULL,
                        data BLOB NOT NULL, PRIMARY KEY (model_key, content_hash));
                    CREATE TABLE IF NOT EXISTS models (
                        model_key TEXT PRIMARY KEY, description TEXT NOT NULL);
                    CREATE TABLE IF NOT EXISTS file_hashes (
                        path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER, sha256 TEXT);
                    """
                )
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            try:
                conn.close()
            except CACHE_ERRORS:  # closing a broken database must not end the run either
                pass

    # -- content hashes -----------------------------------------------------------------------
    def content_hashes(self, paths: Sequence[str | os.PathLike]) -> list[str | None]:
        """sha256 of each file's bytes (``None`` when it cannot be read).

        Files whose size, mtime and inode match what was recorded are not read again.
        """
        conn = self._conn()
        keys = [os.path.abspath(os.fspath(p)) for p in paths]
        known: dict[str, tuple] = {}
        try:
            for start in range(0, len(keys) if conn is not None else 0, _SQL_CHUNK):
                chunk = keys[start : start + _SQL_CHUNK]
                q = f"SELECT path, size, mtime_ns, inode, sha256 FROM file_hashes WHERE path IN ({','.join('?' * len(chunk))})"
                for row in conn.execute(q, chunk):
                    known[row[0]] = row[1:]
        except CACHE_ERRORS as exc:
            self._disable(exc)
            known, conn = {}, None
        out: list[str | None] = []
        fresh: list[tuple] = []
        for key in keys:
            try:
                st = os.stat(key)
            except OSError:
                out.append(None)
                continue
            rec = known.get(key)
            if rec is not None and rec[:3] == (st.st_size, st.st_mtime_ns, st.st_ino):
                out.append(rec[3])
                continue
            try:
                digest = sha256_of_bytes(Path(key))
            except OSError:
                out.append(None)
                continue
            out.append(digest)
            fresh.append((key, st.st_size, st.st_mtime_ns, st.st_ino, digest))
        if fresh and conn is not None:
            try:
                with conn:
                    conn.executemany("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?, ?)", fresh)
            except CACHE_ERRORS as exc:
                self._disable(exc)
        return out

    # -- features -----------------------------------------------------------------------------
    def register_model(self, model_key: str, description: str) -> None:
        conn = self._conn()
        if conn is None:
            return
        try:
            with conn:
                conn.execute("INSERT OR IGNORE INTO models VALUES (?, ?)", (model_key, description))
        except CACHE_ERRORS as exc:
            self._disable(exc)

    def get_many(self, model_key: str, content_hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``content_hashes`` (missing ones are simply absent)."""
        conn = self._conn()
        wanted = sorted(set(h for h in content_hashes if h))
        found: dict[str, np.ndarray] = {}
        if conn is None:
            return found
        try:
            for start in range(0, len(wanted), _SQL_CHUNK):
                chunk = wanted[start : start + _SQL_CHUNK]
                q = f"SELECT content_hash, dim, data FROM features WHERE model_key = ? AND content_hash IN ({','.join('?' * len(chunk))})"
                for content_hash, dim, data in conn.execute(q, [model_key, *chunk]):
                    vec = np.frombuffer(data, dtype="<f4")
                    if vec.shape[0] == dim:  # anything else would be a corrupt row: treat as missing
                        found[content_hash] = vec
        except CACHE_ERRORS as exc:
            self._disable(exc)
            return {}
        return found

    def put_many(self, model_key: str, items: Iterable[tuple[str, np.ndarray]]) -> int:
        """Store vectors in one transaction (all of them or none); returns how many."""
        rows = [(model_key, h, int(v.shape[0]), np.ascontiguousarray(v, dtype="<f4").tobytes()) for h, v in items]
        if not rows:
            return 0
        conn = self._conn()
        if conn is None:
            return 0
        try:
            with conn:
                conn.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?)", rows)
        except CACHE_ERRORS as exc:  # a full disk: keep going, the features are in memory
            self._disable(exc)
            return 0
        return len(rows)

    # -- maintenance --------------------------------------------------------------------------
    def info(self) -> CacheInfo:
        """Counts and sizes, without changing anything."""
        size = sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file()) if self.directory.is_dir() else 0
        onnx = sorted(p.name for p in (self.directory / "onnx").glob("*.onnx")) if (self.directory / "onnx").is_dir() else []
        if not self.path.is_file():
            return CacheInfo(str(self.directory), 0, [], 0, onnx, size)
        conn = self._conn()
        if conn is None:
            return CacheInfo(str(self.directory), 0, [], 0, onnx, size)
        try:
            models = [
                {"model_key": k[:16], "description": d, "entries": n}
                for k, d, n in conn.execute(
                    "SELECT m.model_key, m.description, COUNT(f.content_hash) FROM models m "
                    "LEFT JOIN features f ON f.model_key = m.model_key GROUP BY m.model_key ORDER BY m.description"
                )
            ]
            entries = conn.execute("SELECT COUNT(*) FROM features").fetchone()[0]
            hashed = conn.execute("SELECT COUNT(*) FROM file_hashes").fetchone()[0]
        except CACHE_ERRORS as exc:
            self._disable(exc)
            return CacheInfo(str(self.directory), 0, [], 0, onnx, size)
        return CacheInfo(str(self.directory), int(entries), models, int(hashed), onnx, size)

    def clear(self) -> int:
        """Delete everything transferkit cached in the directory; returns the bytes freed."""
        if not self.directory.is_dir():
            return 0  # nothing cached there (no folder, or a file in its place)
        size = self.info().size_bytes
        self.close()
        for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm") + DERIVED_FILES:
            try:
                (self.directory / name).unlink(missing_ok=True)
            except OSError as exc:
                raise TransferkitError(f"cannot clear the cache folder {self.directory} ({describe_os_error(exc)} "
                                       f"removing {name}); check its permissions") from None
        for folder in DERIVED_FOLDERS:
            shutil.rmtree(self.directory / folder, ignore_errors=True)
        # Downloaded or converted datasets (datasets/) are kept: they are data, not derived results.
        return size - self.info().size_bytes


def usable_cache(enabled: bool = True) -> FeatureCache | None:
    """The default feature cache, or ``None`` when caching is off or the cache cannot be used
    (it has warned once already; the run goes on without it)."""
    if not enabled:
        return None
    cache = FeatureCache()
    return cache if cache.available else None
