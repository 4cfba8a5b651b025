"""Decoding any image file Pillow can read into RGB, and preprocessing it for a backbone.

Every failure becomes an :class:`ImageDecodeError` whose message is the reason, so callers can
report the file and carry on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

from transferkit.backbones.spec import BackboneSpec
from transferkit.core.errors import TransferkitError
from transferkit.runtime.decode import to_rgb  # one mode conversion for the bundle and its runtime

logger = logging.getLogger(__name__)

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


class ImageDecodeError(TransferkitError):
    """A file could not be turned into an RGB image; the message is the reason."""


class TruncatedImageError(ImageDecodeError):
    """The file ends before the image data does (accepted with ``allow_truncated``)."""


class _TruncationGate:
    """Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is one switch for the whole process.

    Strict decodes (the common case, switch off) run side by side; a lenient decode of a cut-off
    file waits for them, turns the switch on alone, and turns it back off before any strict decode
    resumes, so decoding threads with different options never see each other's setting. (A program
    that turns the switch on itself makes every decode lenient; transferkit leaves that alone.)
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._strict = 0
        self._lenient = False
        self._lenient_waiting = 0

    @contextlib.contextmanager
    def strict(self):
        with self._cond:
            # A waiting lenient decode goes first, or a steady stream of strict ones would starve it.
            while self._lenient or self._lenient_waiting:
                self._cond.wait()
            self._strict += 1
        try:
            yield
        finally:
            with self._cond:
                self._strict -= 1
                if self._strict == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def lenient(self):
        with self._cond:
            self._lenient_waiting += 1
            try:
                while self._lenient or self._strict:
                    self._cond.wait()
            finally:
                self._lenient_waiting -= 1
            self._lenient = True
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
            with self._cond:
                self._lenient = False
                self._cond.notify_all()


_TRUNCATION_GATE = _TruncationGate()


def pil_interpolation(name: str) -> Image.Resampling:
    try:
        return _INTERPOLATIONS[name]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; use one of {sorted(_INTERPOLATIONS)}") from None


def open_rgb(
    path: str | Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_truncated: bool = False,
    draft_size: int | None = None,
) -> Image.Image:
    """Read an image file as an RGB PIL image, EXIF orientation applied.

    Args:
        path: any file Pillow can read (JPEG, PNG, GIF, WebP, BMP, TIFF, ...), whatever its suffix.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard);
            ``None`` disables the guard.
        allow_truncated: decode truncated files (missing data filled grey) instead of rejecting.
        draft_size: if set, let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale as long as the
            shorter side stays >= ``draft_size`` (nearly free, much faster for large photos).

    Raises:
        ImageDecodeError: with the reason (empty file, not an image, truncated, too large, ...).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}") from None
    if path.is_dir():
        raise ImageDecodeError("is a directory, not a file")
    if size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    img, _info = decode_rgb(path, max_pixels=max_pixels, allow_truncated=allow_truncated, draft_size=draft_size)
    return img


def decode_rgb(
    source: str | Path | BinaryIO,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_truncated: bool = False,
    draft_size: int | None = None,
    draft_scale: int | None = None,
) -> tuple[Image.Image, dict]:
    """Decode ``source`` (a path or a binary file object) to RGB; also return what was found.

    ``draft_scale`` (2, 4 or 8) asks libjpeg for that reduction whatever the target size: the verify
    pass uses it because a scaled decode still reads every byte (so truncation is still caught)
    at a fraction of the cost.

    Returns:
        (RGB image, info) where info holds ``width``/``height`` (full size, before any draft and
        after EXIF rotation), ``mode`` and ``format`` of the file and ``frames``.

    Raises:
        ImageDecodeError: with the reason (:class:`TruncatedImageError` for a cut-off file).
    """
    kwargs = dict(max_pixels=max_pixels, draft_size=draft_size, draft_scale=draft_scale)
    if allow_truncated and not isinstance(source, (str, Path)) and not (hasattr(source, "seekable") and source.seekable()):
        source = io.BytesIO(source.read())  # a lenient retry reads the stream a second time
    try:
        with _TRUNCATION_GATE.strict():
            return _decode_once(source, **kwargs)
    except TruncatedImageError:
        if not allow_truncated:
            raise
    # A cut-off file the caller accepts: decode again with Pillow's (process-wide) truncation
    # switch on, while no strict decode runs in another thread.
    if hasattr(source, "seek"):
        source.seek(0)
    with _TRUNCATION_GATE.lenient():
        return _decode_once(source, **kwargs)


def _decode_once(source, *, max_pixels, draft_size, draft_scale) -> tuple[Image.Image, dict]:
    previous_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below is the guard; Pillow's global warning would otherwise
            # reject (or merely warn about) images the caller explicitly allowed.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Corrupt EXIF data" on good photos
            if max_pixels is None or max_pixels > 2 * (previous_limit or 0):
                # Pillow's limit is a module global: lift it under a lock, so that two decoding
                # threads cannot restore each other's temporary value and leave it lifted for good.
                # (Image.open reads only the header, so holding the lock costs little.)
                with _PILLOW_LIMIT_LOCK:
                    previous_limit = Image.MAX_IMAGE_PIXELS
                    Image.MAX_IMAGE_PIXELS = None
                    try:
                        img = Image.open(source)
                    finally:
                        Image.MAX_IMAGE_PIXELS = previous_limit
            else:
                img = Image.open(source)
            with img:
                w, h = img.size
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageDecodeError(
                        f"too many pixels: {w}x{h} = {w * h} > max_pixels {max_pixels} "
                        "(decompression-bomb guard; raise max_pixels if the file is trusted)"
                    )
                info = {"mode": img.mode, "format": img.format or "", "frames": int(getattr(img, "n_frames", 1) or 1)}
                if info["frames"] > 1:
                    img.seek(0)  # first frame of an animation
                if img.format == "JPEG":
                    if draft_scale and draft_scale > 1:
                        img.draft("RGB", (max(1, w // draft_scale), max(1, h // draft_scale)))
                    elif draft_size and min(w, h) >= 2 * draft_size:
                        # draft keeps the image at least the requested size; ask for the scale that
                        # keeps the shorter side >= draft_size.
                        scale = min(w, h) / draft_size
                        img.draft("RGB", (int(w / scale), int(h / scale)))
                img.load()
                orientation = _exif_orientation(img)
                if orientation in (5, 6, 7, 8):
                    w, h = h, w
                info["width"], info["height"] = w, h
                if orientation in (2, 3, 4, 5, 6, 7, 8):  # exif_transpose copies the image even for 1
                    try:
                        rotated = ImageOps.exif_transpose(img)
                        img = rotated if rotated is not None else img
                    except Exception:  # a broken EXIF block must not cost a good photo
                        logger.debug("ignoring unreadable EXIF orientation")
                return to_rgb(img), info
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"too many pixels (decompression-bomb guard): {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can read") from None
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise TruncatedImageError(f"truncated image ({msg}); pass allow_truncated to accept it") from None
        raise ImageDecodeError(f"cannot decode: {msg}") from None
    except (ValueError, SyntaxError, struct_error(), EOFError, MemoryError) as exc:
        raise ImageDecodeError(f"cannot decode: {type(exc).__name__}: {exc}") from None


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


def struct_error() -> type[Exception]:
    import struct

    return struct.error


def resize_center_crop(img: Image.Image, spec: BackboneSpec) -> Image.Image:
    """timm's evaluation geometry: shorter side to ``spec.resize_size``, then a centre crop."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    mode = InterpolationMode(spec.interpolation)
    if spec.crop_mode == "squash":
        img = TF.resize(img, [spec.resize_size, spec.resize_size], interpolation=mode)
    else:
        img = TF.resize(img, spec.resize_size, interpolation=mode)
    return TF.center_crop(img, [spec.image_size, spec.image_size])


def to_tensor01(img: Image.Image):
    """RGB PIL image -> float32 tensor [3, H, W] with values in [0, 1]."""
    import torch

    arr = np.asarray(img, dtype=np.uint8)
    # In numpy, not torch: for one small image torch's intra-op threads cost ~10x the work itself
    # (2.4 ms vs 0.2 ms of CPU per photo on a busy 2-core machine). float32 x / 255 is correctly
    # rounded in both, so the values are bit-identical to ``tensor.float().div_(255)``.
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32)
    return torch.from_numpy(chw / np.float32(255.0))


def load_for_spec(path: str | Path, spec: BackboneSpec, *, fast: bool = True, **open_kwargs):
    """Decode ``path`` and preprocess it for ``spec``: a [3, H, W] tensor of pixels in [0, 1].

    ``fast`` lets libjpeg decode large JPEGs at reduced scale (only when the image is at least
    twice the resize target, so the result stays close to a full decode).
    """
    draft = spec.resize_size if fast else None
    img = open_rgb(path, draft_size=draft, **open_kwargs)
    return to_tensor01(resize_center_crop(img, spec))
