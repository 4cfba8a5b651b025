"""Decoding an image file into the exact uint8 pixels a backbone's engine consumes.

The geometry is the backbone's own (``BackboneSpec``: resize shorter side, centre crop, its
interpolation); big JPEGs are decoded at reduced scale by libjpeg (``draft``) when they are at
least twice the resize target. Scaling to [0, 1] and normalising happen inside the engine, so what
travels between threads is a compact ``[H, W, 3]`` uint8 array.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from transferkit.backbones.spec import BackboneSpec

# Bump when the decode/resize code changes what pixels come out: it is part of every cache key.
PREPROCESS_VERSION = 1


def preprocessing_fields(spec: BackboneSpec) -> dict:
    """Everything besides the network that decides the pixels fed to it (for cache keys)."""
    return {
        "version": PREPROCESS_VERSION,
        "decoder": "pillow-rgb-exif-draft",
        "image_size": spec.image_size,
        "resize_size": spec.resize_size,
        "interpolation": spec.interpolation,
        "crop_mode": spec.crop_mode,
    }


def decode_uint8(path: str | Path, spec: BackboneSpec, **decode_options) -> np.ndarray:
    """Decode ``path`` and apply the backbone's resize and crop: a ``[H, W, 3]`` uint8 array.

    ``decode_options`` (``allow_truncated``, ``max_pixels``) go to :func:`~transferkit.data.decode.open_rgb`.

    Raises:
        ImageDecodeError: the file is not a readable image (the message says why).
    """
    from transferkit.data.decode import open_rgb, resize_center_crop

    img = open_rgb(path, draft_size=spec.resize_size, **decode_options)
    return np.asarray(resize_center_crop(img, spec), dtype=np.uint8)


def to_tensor01(batch_uint8: np.ndarray):
    """``[N, H, W, 3]`` uint8 -> ``[N, 3, H, W]`` float32 tensor of pixels in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch_uint8)).permute(0, 3, 1, 2).float().div_(255.0)


def digest(obj) -> str:
    """sha256 of a JSON-able object (sorted keys), for cache keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
