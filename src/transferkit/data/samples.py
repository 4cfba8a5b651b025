"""Photos that installed packages ship, so every command has real images to work on offline.

scikit-image ships `chelsea` (a tabby cat), `coffee`, `astronaut` and `rocket`; scikit-learn
ships `china.jpg` and `flower.jpg`; matplotlib ships `grace_hopper.jpg`; Debian's `darknet`
package ships a few photos, a dog among them. Only those actually present are returned.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# name -> (top-level package whose folder holds it, relative path); Debian paths are absolute.
# Top-level packages only: finding one does not import it (finding ``sklearn.datasets`` would run
# scikit-learn's ``__init__``, over a second of start-up for every engine decision that reads these).
_SAMPLES: dict[str, tuple[str, str]] = {
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "astronaut": ("skimage", "data/astronaut.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "dog": ("", "/usr/share/darknet/data/dog.jpg"),
}


def _module_dir(package: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
        return Path(spec.origin).parent
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]) if locations else None


def sample_photos() -> dict[str, Path]:
    """Name -> path of every sample photo present on this machine, in a fixed order."""
    found: dict[str, Path] = {}
    for name, (module, rel) in _SAMPLES.items():
        base = _module_dir(module) if module else Path("/")
        if base is None:
            continue
        path = base / rel if module else Path(rel)
        if path.is_file():
            found[name] = path
    return found


def sample_photo(name: str) -> Path | None:
    """Path of one named sample photo, or ``None`` when the package holding it is absent."""
    return sample_photos().get(name)
