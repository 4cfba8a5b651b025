"""Where downloaded and prepared datasets live: ``$TRANSFERKIT_CACHE_DIR`` or ``~/.cache/transferkit``."""

from __future__ import annotations

from pathlib import Path

from transferkit.core.paths import cache_root


def datasets_dir(root: Path | None = None) -> Path:
    """Prepared datasets, one folder per dataset name."""
    return (root or cache_root()) / "datasets"


def downloads_dir(root: Path | None = None) -> Path:
    """Downloaded archives (kept so a rerun never downloads twice; partial files end in ``.part``)."""
    return (root or cache_root()) / "downloads"


__all__ = ["cache_root", "datasets_dir", "downloads_dir"]
