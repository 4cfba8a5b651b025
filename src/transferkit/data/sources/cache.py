"""Where downloaded and prepared datasets live: ``$TRANSFERKIT_CACHE_DIR`` or ``~/.cache/transferkit``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The toolkit's cache folder (``TRANSFERKIT_CACHE_DIR`` when set, else ``~/.cache/transferkit``)."""
    env = os.environ.get("TRANSFERKIT_CACHE_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "transferkit"


def datasets_dir(root: Path | None = None) -> Path:
    """Prepared datasets, one folder per dataset name."""
    return (root or cache_root()) / "datasets"


def downloads_dir(root: Path | None = None) -> Path:
    """Downloaded archives (kept so a rerun never downloads twice; partial files end in ``.part``)."""
    return (root or cache_root()) / "downloads"
