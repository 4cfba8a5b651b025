"""Devices, precision, torchrun/DDP plumbing and atomic checkpoints."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transferkit.finetune.config import FinetuneError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), or report a single process.

    NCCL on CUDA, gloo otherwise. A group someone already initialised is reused as is.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise FinetuneError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    use_nccl = torch.cuda.is_available() and not device.startswith("cpu")
    dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    log.info("distributed: rank %d of %d (%s)", info.rank, info.world_size, "nccl" if use_nccl else "gloo")
    return info


def resolve_device(name: str, dist_info: DistInfo | None = None) -> torch.device:
    """``auto`` -> CUDA (this process's local rank), else Apple MPS, else CPU."""
    local = dist_info.local_rank if dist_info else 0
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FinetuneError(f"device {name!r} asked for but CUDA is not available here; use --device cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local % torch.cuda.device_count())
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise FinetuneError("device 'mps' asked for but Apple MPS is not available here; use --device cpu or auto")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (``None`` = plain fp32)."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a temp file in the same folder, fsync, then ``os.replace``.

    A kill -9 at any moment leaves either the old checkpoint or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (tensors and plain containers only, no code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a corrupt file
        import textwrap

        detail = textwrap.shorten(str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable", width=160, placeholder=" ...")
        raise FinetuneError(f"checkpoint {path} cannot be read ({detail}); delete it to start over") from None
