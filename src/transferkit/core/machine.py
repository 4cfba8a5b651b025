"""What this process may use of the machine."""

from __future__ import annotations

import os


def cpu_threads() -> int:
    """Threads worth giving a compute engine: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


__all__ = ["cpu_threads"]
