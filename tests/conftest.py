"""Shared test fixtures: offline, isolated caches, tiny generated images, a tiny backbone."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# No test may touch the network or the user's caches.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Each test gets empty transferkit and Hugging Face caches."""
    root = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(root / "transferkit"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root / "hf"))
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def chelsea_path() -> Path:
    """scikit-image's `chelsea`: a real photo of a tabby cat, shipped with the package."""
    skimage_data = pytest.importorskip("skimage.data")
    path = Path(skimage_data.__file__).parent / "chelsea.png"
    assert path.is_file(), "scikit-image is installed without its sample photos"
    return path


def _write_class_images(root: Path, classes: int, per_class: int, size: int, seed: int) -> Path:
    """Write ``classes`` x ``per_class`` small JPEGs whose colour depends on the class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.zeros(3)
        base[c % 3] = 200
        for i in range(per_class):
            arr = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"img_{i}.jpg", quality=95)
    return root


@pytest.fixture
def tiny_image_folder(tmp_path) -> Path:
    """3 classes x 6 images of 32 px in the class-folder layout."""
    return _write_class_images(tmp_path / "images", classes=3, per_class=6, size=32, seed=0)


@pytest.fixture(scope="session")
def tiny_backbone():
    """timm's tiny `test_efficientnet` at 32 px with explicitly random (seeded) weights."""
    from transferkit.backbones import create_backbone

    return create_backbone("test_efficientnet", weights="none", image_size=32)
