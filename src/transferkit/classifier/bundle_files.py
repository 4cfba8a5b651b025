"""Writing a bundle directory without PyTorch: the file layout, hashes and the atomic swap.

:func:`transferkit.classifier.bundle.save_bundle` writes through :func:`write_bundle_dir`, and so does a
warm ``train`` rerun that never built the network (it has the head's weights as numpy arrays):
importing PyTorch costs more than the rest of such a rerun. safetensors writes the same bytes
from numpy arrays as from the equal torch tensors, so both routes give identical files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from transferkit import __version__
from transferkit.core.atomic import replace_directory
from transferkit.backbones.weights import sha256_of_bytes
from transferkit.core.errors import BundleError

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "transferkit-bundle"
BUNDLE_FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
HEAD_FILE = "head.safetensors"
BACKBONE_FILE = "backbone.safetensors"


# Bundle integrity checks hash the bytes every time (never the memoised weights hash).
sha256_file = sha256_of_bytes


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_safe(obj: Any) -> Any:
    """Make configs and metrics JSON-able (dataclasses, paths, numpy scalars and arrays)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_safe(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def save_numpy_weights(arrays: dict) -> Callable[[str], None]:
    """A writer for :func:`write_bundle_dir` that stores numpy arrays as safetensors."""

    def write(path: str) -> None:
        from safetensors.numpy import save_file

        save_file(arrays, path)

    return write


def write_bundle_dir(
    path: str | os.PathLike,
    *,
    spec,
    head_cfg: dict[str, Any],
    weights: dict[str, Callable[[str], None]],
    class_names: list[str],
    include_backbone: bool,
    metrics: dict[str, Any] | None = None,
    config: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle directory at ``path`` atomically (see :func:`transferkit.classifier.bundle.save_bundle`).

    Args:
        spec: the backbone's :class:`~transferkit.backbones.spec.BackboneSpec`.
        head_cfg: the head's architecture (:func:`transferkit.classifier.bundle.head_config`).
        weights: file name -> ``write(path)`` for each weights file (``head.safetensors``, and
            ``backbone.safetensors`` when ``include_backbone``).

    Raises:
        BundleError: ``path`` is a file, or a non-empty directory that is not a bundle.
    """
    path = Path(path)
    check_bundle_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as exc:  # read-only place, a file where a folder should be, ...
        raise BundleError(f"cannot write a bundle to {path} ({exc.strerror or exc}); choose a writable --out") from None
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; a bundle is meant to be shared
        files: dict[str, str] = {}
        for name, write in weights.items():
            write(str(tmp / name))
            files[name] = sha256_file(tmp / name)
        meta = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "toolkit_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "class_names": list(class_names),
            "backbone": spec.to_dict(),
            "include_backbone": bool(include_backbone),
            "head": head_cfg,
            "files": files,
            "metrics": json_safe(metrics or {}),
            "config": json_safe(config) if config is not None else None,
            "extra": json_safe(extra or {}),
        }
        with open(tmp / BUNDLE_JSON, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask())
        try:
            check_bundle_target(path)  # again: something may have been put there while the model trained
        except BundleError as exc:
            kept = path.with_name(f"{path.name}.new-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(tmp, kept)  # the finished model is not thrown away
            raise BundleError(f"{exc} (the new bundle was kept at {kept})") from None
        generated = _extra_entries(path)
        replace_directory(tmp, path)  # the previous bundle is put back if the swap fails
        if generated:
            log.info("replaced the bundle %s and the old model's %s", path, ", ".join(generated))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved bundle %s (%d classes, backbone %s)", path, len(class_names), spec.name)
    return path


# Folders transferkit itself writes inside a bundle: reports of the model they sit beside.
GENERATED_ENTRIES = ("report/", "evaluation/")


def check_bundle_target(path: str | Path) -> None:
    """Raise :class:`BundleError` now if a bundle cannot replace what is at ``path``.

    Callers run it before long work (training), so a bad ``--out`` fails in a second, not after the
    run. Allowed: nothing there, an empty folder, or an earlier bundle with nothing inside but its
    own files and the reports transferkit writes beside them (``report/``, ``evaluation/``).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BundleError(f"cannot write a bundle to {path}: it is a file; choose a directory path")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not (path / BUNDLE_JSON).is_file():
        raise BundleError(f"{path} is a non-empty directory that is not a bundle; choose another --out")
    others = [e for e in _extra_entries(path) if e not in GENERATED_ENTRIES]
    if others:
        raise BundleError(f"{path} is a bundle that also holds other files ({', '.join(others[:5])}); replacing it would delete "
                          "them: move them out or choose another --out")


def _extra_entries(path: Path) -> list[str]:
    """Names inside an existing bundle folder that are not bundle files (e.g. an ``evaluation/`` report)."""
    meta_file = path / BUNDLE_JSON
    if not meta_file.is_file():
        return []
    try:
        known = set(json.loads(meta_file.read_text()).get("files", {})) | {BUNDLE_JSON}
    except (OSError, ValueError, AttributeError):
        known = {BUNDLE_JSON}
    return sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if p.name not in known)


__all__ = ["BUNDLE_FORMAT", "BUNDLE_FORMAT_VERSION", "check_bundle_target", "json_safe", "save_numpy_weights", "sha256_file", "write_bundle_dir"]
