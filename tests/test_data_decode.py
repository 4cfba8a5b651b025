"""Robust decoding: every colour mode and container trick -> RGB, every bad kind -> a reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from transferkit.data import ImageDecodeError, load_for_spec, open_rgb
from transferkit.data.messy import BAD_KINDS, GOOD_KINDS, write_bad_files, write_good_images
from transferkit.data.verify import VerifyOptions, check_file


@pytest.fixture
def good(tmp_path):
    write_good_images(tmp_path / "good")
    return tmp_path / "good"


@pytest.fixture
def bad(tmp_path):
    write_bad_files(tmp_path / "bad")
    return tmp_path / "bad"


@pytest.mark.parametrize("name", GOOD_KINDS)
def test_every_good_kind_decodes_to_rgb(good, name):
    img = open_rgb(good / name)
    assert img.mode == "RGB"
    expected = (32, 64) if name == "exif_rotated.jpg" else (32, 32)
    assert img.size == expected
    check = check_file(good / name)
    assert check.ok, check.reason
    assert (check.width, check.height) == expected
    assert len(check.sha) == 32


def test_file_formats_are_sniffed_not_taken_from_the_suffix(good):
    assert check_file(good / "png_named.jpg").format == "PNG"
    assert check_file(good / "gif_named.jpg").format == "GIF"
    assert check_file(good / "cmyk.jpg").mode == "CMYK"
    assert check_file(good / "i16.png").mode.startswith("I")


def test_alpha_is_composited_onto_white_the_same_way_every_time(good):
    first = np.asarray(open_rgb(good / "rgba.png"))
    second = np.asarray(open_rgb(good / "rgba.png"))
    assert np.array_equal(first, second)
    assert tuple(first[0, 0]) == (255, 255, 255)  # fully transparent -> white
    assert tuple(first[-1, 0]) == (255, 0, 0)  # opaque red stays red
    assert tuple(np.asarray(open_rgb(good / "palette_transparent.png"))[0, 0]) == (255, 255, 255)


def test_animation_gives_its_first_frame(good):
    arr = np.asarray(open_rgb(good / "animated.gif"))
    assert tuple(arr[5, 5]) == (255, 0, 0)  # frame 0 is red, frame 1 blue
    assert check_file(good / "animated.gif").frames == 2


def test_sixteen_bit_cmyk_and_bilevel_values(good):
    assert tuple(np.asarray(open_rgb(good / "i16.png"))[0, 0]) == (255, 255, 255)  # 65535 -> 255
    assert tuple(np.asarray(open_rgb(good / "i16.tif"))[0, 0]) == (128, 128, 128)  # 32768 -> 128
    assert tuple(np.asarray(open_rgb(good / "cmyk.jpg"))[0, 0]) == (255, 255, 255)  # no ink -> white
    assert tuple(np.asarray(open_rgb(good / "bilevel.png"))[0, 0]) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: stored left becomes top
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100)
    img = np.asarray(open_rgb(tmp_path / "rot.jpg"))
    assert img.shape == (40, 20, 3)
    assert img[2, 10, 0] > 200 and img[-3, 10, 0] < 60


@pytest.mark.parametrize(
    "name, reason",
    [
        ("truncated.jpg", "truncated"),
        ("empty.jpg", "empty file"),
        ("not_image.jpg", "not an image"),
        ("bomb.png", "too many pixels"),
        ("unreadable.jpg", "cannot read file"),
        ("notes.txt", "not an image"),
    ],
)
def test_every_bad_kind_gives_a_reason_not_an_exception(bad, name, reason):
    assert set(BAD_KINDS) == {p.name for p in bad.iterdir()}
    with pytest.raises(ImageDecodeError, match=reason):
        open_rgb(bad / name)
    check = check_file(bad / name)
    assert not check.ok
    assert reason in check.reason


def test_truncated_jpeg_accepted_only_when_asked(bad):
    with pytest.raises(ImageDecodeError, match="allow_truncated"):
        open_rgb(bad / "truncated.jpg")
    img = open_rgb(bad / "truncated.jpg", allow_truncated=True)
    assert img.size == (64, 64) and img.mode == "RGB"
    assert check_file(bad / "truncated.jpg", VerifyOptions(allow_truncated=True)).ok
    # The global Pillow flag is restored: a later strict decode still refuses it.
    with pytest.raises(ImageDecodeError):
        open_rgb(bad / "truncated.jpg")


def test_truncated_png_is_rejected_too(good, tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "n.png")
    data = (tmp_path / "n.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    check = check_file(tmp_path / "cut.png")
    assert not check.ok and "truncated" in check.reason


def test_max_pixels_is_configurable(good):
    with pytest.raises(ImageDecodeError, match="max_pixels 1000"):
        open_rgb(good / "rgb.jpg", max_pixels=1000)
    assert open_rgb(good / "rgb.jpg", max_pixels=32 * 32).size == (32, 32)
    assert not check_file(good / "rgb.jpg", VerifyOptions(max_pixels=1023)).ok


def test_fast_draft_decode_stays_close_to_full_decode(tmp_path, tiny_backbone):
    # A smooth 256 px photo-like JPEG, 8x the 32 px target: draft decodes it at reduced scale.
    yy, xx = np.mgrid[0:256, 0:256]
    arr = np.stack([xx, yy, (xx + yy) // 2], axis=-1).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=95)
    fast = load_for_spec(tmp_path / "big.jpg", tiny_backbone.spec, fast=True)
    full = load_for_spec(tmp_path / "big.jpg", tiny_backbone.spec, fast=False)
    assert fast.shape == full.shape == (3, 32, 32)
    assert float((fast - full).abs().max()) < 0.06
    assert 0.0 <= float(fast.min()) and float(fast.max()) <= 1.0


def test_to_tensor01_is_bit_identical_to_the_torch_formula():
    import torch

    from transferkit.data.decode import to_tensor01

    arr = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3) % 256
    img = Image.fromarray(arr.astype(np.uint8))
    reference = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255.0)
    got = to_tensor01(img)
    assert got.dtype == torch.float32 and got.shape == (3, 16, 16)
    assert torch.equal(got, reference)  # every uint8 value maps to exactly the same float


def test_threads_lifting_the_pixel_limit_leave_pillows_own_limit_in_place(good):
    """Decoding with max_pixels=None lifts Pillow's global limit for a moment; threads must not leave it lifted."""
    from concurrent.futures import ThreadPoolExecutor

    before = Image.MAX_IMAGE_PIXELS
    paths = [good / "rgb.jpg", good / "rgba.png"] * 200
    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(lambda p: open_rgb(p, max_pixels=None).size, paths))
    assert sizes == [Image.open(p).size for p in paths]  # every decode succeeded, nothing was refused
    assert Image.MAX_IMAGE_PIXELS == before


def test_threads_with_different_truncation_options_never_see_each_others_setting(good, bad):
    """Pillow's truncation switch is process-wide: a lenient decode must not leak into a strict one, or back."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import ImageFile

    truncated, fine = bad / "truncated.jpg", good / "rgb.jpg"
    jobs = [(truncated, True), (truncated, False), (fine, False)] * 300

    def decode(job):
        path, allow = job
        try:
            open_rgb(path, allow_truncated=allow)
            return "ok"
        except ImageDecodeError as exc:
            return "truncated" if "truncated" in str(exc) else str(exc)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(decode, jobs))
    expected = ["ok", "truncated", "ok"] * 300
    assert sum(r != e for r, e in zip(results, expected)) == 0
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_a_truncated_image_from_a_stream_that_cannot_seek(bad):
    import io

    from transferkit.data.decode import TruncatedImageError, decode_rgb

    class OneWay(io.RawIOBase):  # e.g. a pipe or an HTTP body
        def __init__(self, data):
            self._inner = io.BytesIO(data)

        def readable(self):
            return True

        def seekable(self):
            return False

        def readinto(self, buf):
            return self._inner.readinto(buf)

    data = (bad / "truncated.jpg").read_bytes()
    img, _ = decode_rgb(io.BufferedReader(OneWay(data)), allow_truncated=True)
    assert img.mode == "RGB" and img.size[0] > 0
    with pytest.raises(TruncatedImageError):
        decode_rgb(io.BytesIO(data))
