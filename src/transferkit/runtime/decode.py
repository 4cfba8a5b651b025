"""Image decoding for exported models with Pillow and numpy only (no torch, no torchvision).

It reproduces, pixel for pixel, what a transferkit bundle feeds its network: the file decoded by
Pillow (first frame of an animation, EXIF orientation applied, any mode converted to RGB with
transparency composited onto white, large JPEGs decoded by libjpeg at reduced scale when they are
at least twice the resize target), the shorter side resized to the spec's ``resize_size`` with its
interpolation (torchvision's rounding), then a centre crop to ``image_size``. The result is a
``[H, W, 3]`` uint8 array, which is what an exported graph takes (stacked to ``[N, H, W, 3]``).
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

from transferkit.core.errors import TransferkitError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own default limit (about 179 MP)
_PILLOW_LIMIT_LOCK = threading.Lock()
_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class ImageInputError(TransferkitError):
    """An input could not be turned into an RGB image; the message is the reason."""


class ImageTooLargeError(ImageInputError):
    """The image has more pixels than allowed (decompression-bomb guard)."""


class TruncatedImageInputError(ImageInputError):
    """The file ends before the image data does."""


class Geometry:
    """The resize and crop of a model's preprocessing (read from the exported file's metadata).

    Args:
        preprocessing: a mapping with ``image_size``, ``resize_size``, ``interpolation`` and
            ``crop_mode`` (the ``preprocessing`` entry of an exported model's metadata).
    """

    def __init__(self, preprocessing: Mapping[str, Any]) -> None:
        self.image_size = int(preprocessing["image_size"])
        self.resize_size = int(preprocessing["resize_size"])
        self.crop_mode = str(preprocessing.get("crop_mode", "center"))
        name = str(preprocessing.get("interpolation", "bicubic"))
        if name not in _INTERPOLATIONS:
            raise ImageInputError(f"unknown interpolation {name!r} in the model's metadata; re-export the model")
        self.resample = _INTERPOLATIONS[name]


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparent pixels are composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) / ((hi - lo) or 1.0) * 255.0 + 0.5).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _open(source, max_pixels: int | None) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)  # e.g. "Corrupt EXIF data" on good photos
        if max_pixels is None or max_pixels > 2 * (Image.MAX_IMAGE_PIXELS or 0):
            with _PILLOW_LIMIT_LOCK:  # Pillow's limit is a global: lift it only while reading the header
                previous = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
                try:
                    return Image.open(source)
                finally:
                    Image.MAX_IMAGE_PIXELS = previous
        return Image.open(source)


def _draft(img: Image.Image, draft_size: int | None) -> None:
    w, h = img.size
    if img.format == "JPEG" and draft_size and min(w, h) >= 2 * draft_size:
        scale = min(w, h) / draft_size
        img.draft("RGB", (int(w / scale), int(h / scale)))


def _orient(img: Image.Image) -> Image.Image:
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:
        return img
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return img
    try:
        rotated = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not cost a good photo
        log.debug("ignoring unreadable EXIF orientation")
        return img
    return rotated if rotated is not None else img


def _decode(source, *, max_pixels: int | None, draft_size: int | None) -> Image.Image:
    with _open(source, max_pixels) as img:
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageTooLargeError(f"too many pixels: {w}x{h} = {w * h} > the limit of {max_pixels} (decompression-bomb guard)")
        if int(getattr(img, "n_frames", 1) or 1) > 1:
            img.seek(0)
        _draft(img, draft_size)
        img.load()
        return to_rgb(_orient(img))


def decode_image(
    source: str | Path | bytes | BinaryIO | Image.Image,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode a file, its bytes or a PIL image to RGB (EXIF orientation applied).

    Args:
        source: a path, the file's bytes, a binary file object, or a PIL image (converted only).
        max_pixels: refuse images with more pixels (decompression-bomb guard); ``None`` disables it.
        draft_size: let libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale while its shorter
            side stays >= this (what transferkit does with ``resize_size``).

    Raises:
        ImageInputError: empty, not an image, truncated, too many pixels, unreadable (the reason).
    """
    if isinstance(source, Image.Image):
        return to_rgb(_orient(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageInputError("empty file (0 bytes)")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            raise ImageInputError("is a directory, not a file")
        try:
            if path.stat().st_size == 0:
                raise ImageInputError("empty file (0 bytes)")
        except OSError as exc:
            raise ImageInputError(f"cannot read file: {exc.strerror or exc}") from None
    try:
        return _decode(source, max_pixels=max_pixels, draft_size=draft_size)
    except ImageInputError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"too many pixels (decompression-bomb guard): {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageInputError("not an image Pillow can read") from None
    except OSError as exc:
        if "truncated" in str(exc).lower() or "broken data stream" in str(exc).lower():
            raise TruncatedImageInputError(f"truncated image ({exc})") from None
        raise ImageInputError(f"cannot decode: {exc}") from None
    except (ValueError, SyntaxError, EOFError, MemoryError, ArithmeticError, IndexError) as exc:
        raise ImageInputError(f"cannot decode: {type(exc).__name__}: {exc}") from None


def _resized_size(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision's rule: the shorter side becomes ``size``, the longer one is truncated."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def resize_center_crop(img: Image.Image, geometry: Geometry) -> Image.Image:
    """Resize the shorter side to ``resize_size`` (or squash), then centre-crop to ``image_size``.

    Bit-identical to torchvision's ``resize`` + ``center_crop`` on PIL images, which bundles use.
    """
    w, h = img.size
    side = geometry.image_size
    if geometry.crop_mode == "squash":
        target = (geometry.resize_size, geometry.resize_size)
    else:
        target = _resized_size(w, h, geometry.resize_size)
    if target != (w, h):
        img = img.resize(target, geometry.resample)
    w, h = img.size
    if side > w or side > h:  # torchvision pads with black, centred (the extra pixel right/bottom)
        canvas = Image.new(img.mode, (max(w, side), max(h, side)), 0)
        canvas.paste(img, ((side - w) // 2 if side > w else 0, (side - h) // 2 if side > h else 0))
        img, (w, h) = canvas, canvas.size
        if (w, h) == (side, side):
            return img
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    return img.crop((left, top, left + side, top + side))


def load_pixels(source, geometry: Geometry, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``source`` and preprocess it for the model: a ``[H, W, 3]`` uint8 array.

    Raises:
        ImageInputError: the input is not a usable image (the message says why).
    """
    img = decode_image(source, max_pixels=max_pixels, draft_size=geometry.resize_size)
    return np.asarray(resize_center_crop(img, geometry), dtype=np.uint8)

