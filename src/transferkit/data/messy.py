"""Generate the kinds of files real image collections hold, for tests, demos and checks.

:func:`write_good_images` writes one small image per colour mode and container trick (grayscale,
CMYK, palette, LA, RGBA, 16-bit, 1-bit, animated GIF, PNG and GIF named .jpg, an EXIF-rotated JPEG,
...). :func:`write_bad_files` writes one file of each bad kind (truncated JPEG, empty, not an
image, a decompression bomb, an unreadable path, a non-image suffix). Every file is a few hundred
bytes to a few kilobytes.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

GOOD_KINDS = (
    "rgb.jpg", "gray.jpg", "cmyk.jpg", "exif_rotated.jpg", "palette.png", "palette_transparent.png",
    "la.png", "rgba.png", "i16.png", "bilevel.png", "animated.gif", "png_named.jpg", "gif_named.jpg",
    "rgb.bmp", "rgb.webp", "i16.tif",
)
BAD_KINDS = ("truncated.jpg", "empty.jpg", "not_image.jpg", "bomb.png", "unreadable.jpg", "notes.txt")


def _noise(size: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def write_good_images(folder: str | Path, *, size: int = 32) -> list[Path]:
    """One decodable image of each kind in :data:`GOOD_KINDS`; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_noise((size, size), 1))
    rgb.save(folder / "rgb.jpg", quality=90)
    rgb.convert("L").save(folder / "gray.jpg")
    Image.new("CMYK", (size, size), (0, 0, 0, 0)).save(folder / "cmyk.jpg")  # CMYK zero ink = white
    # EXIF orientation 6 (rotate 90 CW): stored 2s x s, shown s x 2s.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_noise((2 * size, size), 2)).save(folder / "exif_rotated.jpg", exif=exif.tobytes())
    rgb.quantize(16).save(folder / "palette.png")
    pal = rgb.quantize(16)
    pal.info["transparency"] = 0
    pal.save(folder / "palette_transparent.png", transparency=0)
    la = Image.merge("LA", (rgb.convert("L"), Image.new("L", (size, size), 128)))
    la.save(folder / "la.png")
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[: size // 2, :, 3] = 0  # top half fully transparent -> composited onto white
    rgba[size // 2 :, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.full((size, size), 65535, dtype=np.uint16)).save(folder / "i16.png")
    Image.new("1", (size, size), 1).save(folder / "bilevel.png")
    frames = [Image.new("RGB", (size, size), (255, 0, 0)), Image.new("RGB", (size, size), (0, 0, 255))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    rgb.save(folder / "png_named.jpg", format="PNG")
    rgb.save(folder / "gif_named.jpg", format="GIF")
    rgb.save(folder / "rgb.bmp")
    try:
        rgb.save(folder / "rgb.webp")
    except (OSError, KeyError):  # Pillow built without WebP: write a PNG under that name instead
        rgb.save(folder / "rgb.webp", format="PNG")
    Image.fromarray(np.full((size, size), 32768, dtype=np.uint16)).save(folder / "i16.tif")
    return [folder / name for name in GOOD_KINDS]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png_bytes(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (the guard must refuse it)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    body = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def write_bad_files(folder: str | Path, *, size: int = 64) -> list[Path]:
    """One file of each kind in :data:`BAD_KINDS`; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    full = folder / "_full.jpg"
    Image.fromarray(_noise((size, size), 3)).save(full, quality=95)
    data = full.read_bytes()
    full.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "not_image.jpg").write_text("this is a text file with a .jpg name\n")
    (folder / "bomb.png").write_bytes(bomb_png_bytes())
    # A dangling symlink: readable by nobody, even root (chmod 000 does not stop root).
    (folder / "unreadable.jpg").symlink_to(folder / "does-not-exist.jpg")
    (folder / "notes.txt").write_text("not an image\n")
    return [folder / name for name in BAD_KINDS]
