"""Downloading dataset archives: progress, checksum, cache, resume, atomic result.

A file is written to ``<dest>.part`` first. A rerun after an interruption asks the server for the
rest with an HTTP ``Range`` request and appends; a server that ignores ``Range`` (answers 200)
makes the download start over. Only a file whose checksum matches is renamed to ``dest``
(``os.replace``, atomic on one file system), so ``dest`` is either absent or complete and right;
a mismatching file is deleted and the download refused.

Archives are unpacked into a temporary folder next to the target and renamed into place at the
end, with tar's ``data`` filter and a zip member check so no member lands outside the target.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transferkit.core.atomic import replace_directory
from transferkit.core.errors import DataError

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, "int | None"], None]
"""``progress(bytes_done, bytes_total_or_None)``, called as data arrives."""

_CHUNK = 1 << 20
_ALGORITHMS = ("sha256", "md5")


class DownloadError(DataError):
    """A download failed, was interrupted, or gave a file whose checksum does not match."""


@dataclass(frozen=True)
class Checksum:
    """An expected digest, written ``"sha256:<hex>"`` or ``"md5:<hex>"``."""

    algorithm: str
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        algorithm, sep, digest = text.partition(":")
        algorithm = algorithm.strip().lower()
        if not sep or algorithm not in _ALGORITHMS or not digest.strip():
            raise ValueError(f"checksum {text!r} must look like 'sha256:<hex>' or 'md5:<hex>'")
        return cls(algorithm, digest.strip().lower())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _user_agent() -> str:
    from transferkit import __version__

    return f"transferkit/{__version__} (+python urllib)"


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": _user_agent()}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes a-b/n`` header."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    try:
        return int(content_range[6:].split("-", 1)[0])
    except ValueError:
        return None


def _fetch_into(url: str, part: Path, *, size: int | None, progress: ProgressCallback | None, timeout: float) -> None:
    """One attempt: append the rest of ``url`` to ``part`` (or rewrite it when the server ignores Range)."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        log.info("%s is larger than the expected %d bytes; starting over", part, size)
        part.unlink()
        offset = 0
    if size is not None and offset == size and offset > 0:
        return  # complete already; the checksum decides
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset > 0:
            # "Range not satisfiable": the partial file already holds everything (or is junk);
            # the checksum check that follows tells which.
            log.info("server says %s is complete at %d bytes", part.name, offset)
            return
        raise
    with response:
        status = getattr(response, "status", 200)
        length = response.headers.get("Content-Length")
        if status == 206 and _range_start(response.headers.get("Content-Range")) == offset:
            mode, done = "ab", offset
            log.info("resuming %s at byte %d", url, offset)
        else:
            if offset:
                log.info("server ignored the Range request (status %s); downloading %s from the start", status, url)
            mode, done = "wb", 0
        total = done + int(length) if length is not None and length.isdigit() else size
        with open(part, mode) as fh:
            if progress:
                progress(done, total)
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            fh.flush()
            os.fsync(fh.fileno())
        if total is not None and done < total:
            raise DownloadError(f"connection closed after {done} of {total} bytes of {url}")


def download_file(
    url: str,
    dest: str | Path,
    *,
    checksum: str | None = None,
    size: int | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    backoff_s: float = 2.0,
) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is already there.

    Args:
        url: http(s) address of the file.
        dest: final path; the download goes to ``<dest>.part`` and is renamed when verified.
        checksum: ``"sha256:<hex>"`` or ``"md5:<hex>"``; ``None`` skips the check (the digest
            actually seen is logged so it can be pinned).
        size: expected size in bytes, when known (lets a complete ``.part`` skip the network).
        progress: called with (bytes done, bytes total or None) as data arrives.
        timeout: seconds to wait for the server on each read.
        retries: how many times an interrupted transfer is resumed automatically.
        backoff_s: seconds to wait before the first automatic resume (doubles each time, at most 10 s).

    Returns:
        ``dest``, complete and (when ``checksum`` is given) verified.

    Raises:
        DownloadError: the server could not be reached, the transfer kept failing (the partial
            file is kept so a rerun resumes), or the checksum did not match (the file is deleted).
    """
    dest = Path(dest)
    expected = Checksum.parse(checksum) if checksum else None
    if dest.is_file():
        if expected is None or file_digest(dest, expected.algorithm) == expected.hexdigest:
            log.info("using cached %s", dest)
            return dest
        log.warning("cached %s does not match %s; downloading it again", dest, expected)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            _fetch_into(url, part, size=size, progress=progress, timeout=timeout)
            break
        except (urllib.error.URLError, OSError, DownloadError) as exc:
            have = part.stat().st_size if part.exists() else 0
            if isinstance(exc, urllib.error.HTTPError) and exc.code not in (408, 429, 500, 502, 503, 504):
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}; check the address or try later") from None
            if attempt >= retries:
                reason = getattr(exc, "reason", None) or exc
                raise DownloadError(
                    f"downloading {url} failed ({reason}); {have} bytes kept in {part}, rerun the same command to resume"
                ) from None
            attempt += 1
            log.warning("download interrupted (%s); resuming from byte %d (try %d of %d)", exc, have, attempt, retries)
            time.sleep(min(backoff_s * 2 ** (attempt - 1), 10.0))
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink()
        raise DownloadError(f"{url} gave {got_size} bytes, expected {size}; the file was deleted, rerun to download again")
    if expected is not None:
        digest = file_digest(part, expected.algorithm)
        if digest != expected.hexdigest:
            part.unlink()
            raise DownloadError(
                f"checksum mismatch for {url}: expected {expected}, got {expected.algorithm}:{digest}; "
                "the file was deleted, rerun to download again (if it persists the server's copy changed)"
            )
    else:
        log.info("%s has sha256:%s (no published checksum to compare with)", dest.name, file_digest(part))
    os.replace(part, dest)
    return dest


def _safe_zip_extract(archive: Path, target: Path) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:  # truncated download or not a zip at all
        raise DownloadError(f"{archive} could not be unpacked ({exc}); delete it and download again") from None
    with zf:
        bad = zf.testzip()  # CRC of every member: catches a corrupt archive without a published checksum
        if bad is not None:
            raise DownloadError(f"{archive} is corrupt (CRC error in {bad}); delete it and download again")
        root = target.resolve()
        for member in zf.infolist():
            out = (target / member.filename).resolve()
            if root != out and root not in out.parents:
                raise DownloadError(f"{archive} holds a member outside its folder ({member.filename}); refusing to unpack")
        zf.extractall(target)


def extract_archive(archive: str | Path, target: str | Path) -> Path:
    """Unpack a .tar.gz / .tgz / .tar / .zip into ``target``, atomically.

    The archive goes into ``<target>.tmp-<pid>`` first; ``target`` appears only when unpacking
    finished, so an interrupted run never leaves a half-unpacked dataset that looks complete.
    """
    archive, target = Path(archive), Path(target)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        name = archive.name.lower()
        if name.endswith(".zip"):
            _safe_zip_extract(archive, tmp)
        elif name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
            try:
                with tarfile.open(archive) as tf:
                    tf.extractall(tmp, filter="data")  # refuses absolute paths, '..' and device files
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise DownloadError(f"{archive} could not be unpacked ({exc}); delete it and download again") from None
        else:
            raise DownloadError(f"do not know how to unpack {archive.name} (expected .tar.gz, .tar or .zip)")
        replace_directory(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
