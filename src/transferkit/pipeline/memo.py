"""Caches that make a warm rerun of ``transferkit train`` (probe mode) cheap, without changing its result.

- **Head cache**: a fitted head (as the ``nn.Module`` the bundle stores, plus the few facts the
  metrics record, e.g. the chosen ``C``) keyed by a digest of the exact training/validation
  features and labels, the head's name and options, the number of classes and the library
  versions. Same inputs -> the cold run's head, bit for bit, without refitting (choosing ``C`` by
  cross-validation is most of a warm rerun otherwise). One safetensors file per entry in
  ``<cache dir>/heads/`` (weights as arrays, the rest as JSON in its metadata), written to a temp
  name then renamed; never unpickled. An unreadable or inconsistent entry is ignored (recomputed).
  The held-out probabilities of that head are cached the same way in ``<cache dir>/probs/``
  (keyed by the head's key and the exact held-out features), so a warm rerun needs no PyTorch.
- **Backbone memo**: what a pretrained backbone request (name, weights, image size, seed)
  resolves to -- its :class:`BackboneSpec` and the feature-cache model key (a digest of all its
  weights) -- so a rerun whose features are all cached need not build the network. An entry is
  trusted only while the weights file has the size, mtime and inode recorded (the same fast path
  as the feature cache's content hashes) and the library versions are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.classifier.trained import HeadWeights
from transferkit.core.paths import cache_unusable

log = logging.getLogger(__name__)

HEAD_CACHE_VERSION = 1
BACKBONE_MEMO_VERSION = 1
_META_KEY = "transferkit_head_cache"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def library_versions() -> dict[str, str]:
    """Versions of everything that could change a fitted head or a backbone's weights."""
    from transferkit import __version__

    return {"transferkit": __version__, **{d: _version(d) for d in ("numpy", "torch", "scikit-learn", "timm", "scipy")}}


def _hash_array(h, name: str, a) -> None:
    if a is None:
        h.update(f"{name}:none;".encode())
        return
    a = np.ascontiguousarray(a)
    h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
    h.update(memoryview(a).cast("B"))  # the array's own buffer: no copy of a large feature matrix


def head_cache_key(X_train, y_train, X_val, y_val, *, head: str, options: dict[str, Any], num_classes: int) -> str:
    """Digest of everything a fitted head depends on: the exact features and labels, the config, versions."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": HEAD_CACHE_VERSION, "head": head, "options": options, "num_classes": int(num_classes),
                         "versions": library_versions()}, sort_keys=True, default=repr).encode())
    for name, a in (("X_train", X_train), ("y_train", y_train), ("X_val", X_val), ("y_val", y_val)):
        _hash_array(h, name, a)
    return h.hexdigest()


def probs_cache_key(head_key: str, X_held_out) -> str:
    """Digest of a head (by its cache key) applied to the exact held-out features."""
    h = hashlib.sha256(f"probs:v{HEAD_CACHE_VERSION}:{head_key};".encode())
    _hash_array(h, "X", X_held_out)
    return h.hexdigest()


def _save_entry(cache_dir, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any], folder_name: str = "heads") -> Path | None:
    """One safetensors file: ``arrays`` plus ``meta`` as JSON in its header; temp name, then rename."""
    from safetensors.numpy import save_file

    from transferkit.classifier.bundle_files import json_safe

    folder = Path(cache_dir) / folder_name
    path = folder / f"{key}.safetensors"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"v": HEAD_CACHE_VERSION, "key": key, **json_safe(meta)}, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata={_META_KEY: text})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except Exception as exc:  # noqa: BLE001 - a cache write must never fail training
        cache_unusable(cache_dir, exc)
        return None
    return path


def _load_entry(cache_dir, key: str, folder_name: str = "heads") -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    path = Path(cache_dir) / folder_name / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {})[_META_KEY])
            arrays = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("v") != HEAD_CACHE_VERSION or meta.get("key") != key:
            raise ValueError("entry written for another key or format")
        return arrays, meta
    except Exception as exc:  # noqa: BLE001 - corrupt entry: recompute, never fail
        log.warning("ignoring unreadable cache entry %s (%s); computing it again", path, exc)
        return None


def save_head(cache_dir: str | os.PathLike, key: str, head: HeadWeights, info: dict[str, Any]) -> Path | None:
    """Store a fitted head's weights and ``info`` (e.g. the chosen ``C``).

    Best effort: a cache that cannot be written only costs the next run a refit.
    """
    return _save_entry(cache_dir, key, head.state, {"kind": "head", "head": head.config, "info": info})


def load_head(cache_dir: str | os.PathLike, key: str) -> tuple[HeadWeights, dict[str, Any]] | None:
    """``(head, info)`` cached under ``key``, or ``None`` when absent, unreadable or inconsistent."""
    entry = _load_entry(cache_dir, key)
    if entry is None:
        return None
    arrays, meta = entry
    head = HeadWeights(meta.get("head") or {}, arrays)
    try:
        consistent = meta.get("kind") == "head" and head.num_outputs > 0 and head.is_finite()
    except Exception:  # noqa: BLE001 - a malformed entry is just a miss
        consistent = False
    if not consistent:
        log.warning("ignoring inconsistent head cache entry %s; fitting again", key[:16])
        return None
    return head, dict(meta.get("info") or {})


def save_probs(cache_dir, key: str, probs: np.ndarray) -> None:
    """Store held-out probabilities (best effort)."""
    _save_entry(cache_dir, key, {"probs": np.asarray(probs, dtype=np.float64)}, {"kind": "probs"}, "probs")


def load_probs(cache_dir, key: str, shape: tuple[int, int]) -> np.ndarray | None:
    """Held-out probabilities cached under ``key`` with this shape, or ``None``."""
    entry = _load_entry(cache_dir, key, "probs")
    if entry is None or entry[1].get("kind") != "probs":
        return None
    probs = entry[0].get("probs")
    if probs is None or probs.shape != tuple(shape) or probs.dtype != np.float64 or not np.isfinite(probs).all():
        return None
    return probs


# ------------------------------------------------------------------------------------------------
# Backbone memo


def _memo_path(cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / "backbones.json"


def _weights_file(spec) -> Path | None:
    """The weights file behind a pretrained spec (``None``: not a local file, e.g. random or hub)."""
    if spec.weights_source == "file":
        return Path(spec.weights_location)
    if spec.weights_source == "package":
        from transferkit.backbones.lite_packages import package_weights_path

        try:
            return Path(package_weights_path(spec.name))
        except Exception:  # noqa: BLE001
            return None
    return None


def _request_key(name: str, weights: str, image_size: int | None, seed: int) -> str:
    weights_str = os.fspath(weights)
    if weights_str not in ("auto", "package", "hub", "none"):
        weights_str = str(Path(weights_str).expanduser().resolve())
    return json.dumps({"v": BACKBONE_MEMO_VERSION, "name": name, "weights": weights_str, "image_size": image_size,
                       "seed": int(seed), "versions": library_versions()}, sort_keys=True)


def _fingerprint(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_memo(cache_dir) -> dict:
    try:
        data = json.loads(_memo_path(cache_dir).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def lookup_backbone(cache_dir, name: str, weights: str, image_size: int | None, seed: int):
    """``(spec, model_key)`` remembered for this backbone request, or ``None``."""
    from transferkit.backbones.spec import BackboneSpec

    entry = _read_memo(cache_dir).get(_request_key(name, weights, image_size, seed))
    if not isinstance(entry, dict):
        return None
    try:
        spec = BackboneSpec.from_dict(entry["spec"])
        if os.fspath(weights) == "auto" and spec.weights_source == "package":
            from transferkit.backbones.lite_packages import package_installed

            if not package_installed(name):  # "auto" would resolve elsewhere now
                return None
        file = _weights_file(spec)
        if file is None or _fingerprint(file) != entry["fingerprint"]:
            return None
        return spec, str(entry["model_key"])
    except Exception:  # noqa: BLE001 - a stale or malformed entry is just a miss
        return None


def remember_backbone(cache_dir, name: str, weights: str, image_size: int | None, seed: int, spec, model_key: str) -> None:
    """Record what a pretrained backbone request resolved to (best effort; random weights are not recorded)."""
    file = _weights_file(spec) if spec.is_pretrained else None
    fingerprint = _fingerprint(file) if file is not None else None
    if fingerprint is None:
        return
    path = _memo_path(cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        memo = _read_memo(cache_dir)
        memo[_request_key(name, weights, image_size, seed)] = {"spec": spec.to_dict(), "model_key": model_key, "fingerprint": fingerprint}
        fd, tmp = tempfile.mkstemp(prefix=".backbones.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(memo, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        cache_unusable(cache_dir, exc)


__all__ = ["head_cache_key", "load_head", "load_probs", "lookup_backbone", "probs_cache_key", "remember_backbone", "save_head", "save_probs"]
