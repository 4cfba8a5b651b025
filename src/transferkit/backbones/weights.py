"""Reading weights safely: safetensors, or .pth/.pt through ``torch.load(weights_only=True)``.

A file holding pickled Python objects is refused, never executed. Hashes are sha256 of the file.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import warnings
from pathlib import Path

from transferkit.core.errors import WeightsError

log = logging.getLogger(__name__)

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of_bytes(path: str | Path) -> str:
    """sha256 of a file's bytes, read every time (for integrity checks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, memoised on path, size and mtime (for large weights read often)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_of_bytes(path)
    return _SHA_CACHE[key]


def _unwrap(obj, path: Path) -> dict:
    import torch

    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
            inner = obj.get(wrapper)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            return tensors
    raise WeightsError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__})")


def load_state_dict(path: str | Path) -> dict:
    """Load a state dict from ``.safetensors`` or ``.pth``/``.pt``/``.bin`` without unpickling code.

    Raises:
        WeightsError: missing, truncated or corrupt file, or one that holds pickled objects.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {path} is empty (0 bytes); download it again")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"weights file {path} is corrupt or truncated ({exc}); download it again") from None
    try:
        with warnings.catch_warnings():
            # torch's "Detected pickle protocol 4 in the checkpoint ..." would print two lines before
            # the one-line refusal below; whatever the file holds, the answer is ours to give.
            warnings.filterwarnings("ignore", message=r".*pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise WeightsError(
                f"refused {path}: it holds pickled Python objects, not only tensors, and loading it could run "
                "code. Save a plain state dict (torch.save(model.state_dict(), ...)) or a .safetensors file."
            ) from None
        raise WeightsError(f"weights file {path} is corrupt or truncated ({first}); download it again") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"weights file {path} is corrupt or truncated ({first}); download it again") from None
    return _unwrap(obj, path)


def load_into(model, state_dict: dict, source: str) -> None:
    """Strictly load ``state_dict`` into ``model``; a mismatch is a :class:`WeightsError`."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            parts.append(f"{len(mismatched)} of another shape (e.g. {mismatched[0]})")
        raise WeightsError(f"weights from {source} do not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)
