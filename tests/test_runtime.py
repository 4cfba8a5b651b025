"""The torch-free runtime: the same pixels as transferkit's own preprocessing, predictions, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.backbones.spec import BackboneSpec
from transferkit.runtime import (
    Geometry,
    ImageInputError,
    ModelFileError,
    Runtime,
    decode_image,
    load_pixels,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_backbone) -> Path:
    import torch
    from torch import nn

    from transferkit.classifier.bundle import ClassifierModel, save_bundle
    from transferkit.classifier.export import export_model

    root = tmp_path_factory.mktemp("runtime")
    torch.manual_seed(0)
    model = ClassifierModel(tiny_backbone, nn.Linear(tiny_backbone.num_features, 3), ["red", "green", "blue"]).eval()
    save_bundle(root / "bundle", model)
    return export_model(root / "bundle", root / "model.onnx").path


def _spec(size=224, crop_pct=0.875, interpolation="bicubic", crop_mode="center") -> BackboneSpec:
    return BackboneSpec(name="t", timm_name="t", num_features=8, num_classes=0, input_size=(3, size, size), mean=(0.5,) * 3,
                        std=(0.5,) * 3, interpolation=interpolation, crop_pct=crop_pct, crop_mode=crop_mode)


def _geometry(spec: BackboneSpec) -> Geometry:
    return Geometry({"image_size": spec.image_size, "resize_size": spec.resize_size, "interpolation": spec.interpolation,
                     "crop_mode": spec.crop_mode})


def _noise(h, w, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def image_battery(tmp_path_factory) -> list[Path]:
    """Files in every shape the decoders must agree on: modes, EXIF, draft-sized JPEGs, animations."""
    d = tmp_path_factory.mktemp("battery")
    out = []

    def save(name, img, **kw):
        out.append(d / name)
        img.save(d / name, **kw)

    rgb = Image.fromarray(_noise(600, 900))
    save("big.jpg", Image.fromarray(_noise(1300, 1000, 1)), quality=90)  # >= 2x the resize target: libjpeg draft
    save("landscape.jpg", rgb, quality=92)
    save("cmyk.jpg", rgb.convert("CMYK"))
    save("gray.png", rgb.convert("L"))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(_noise(600, 900, 2)[:, :, 0]))
    save("alpha.png", rgba)
    save("palette.gif", rgb.convert("P", palette=Image.Palette.ADAPTIVE), transparency=3)
    save("deep.png", Image.fromarray(_noise(300, 200, 3)[:, :, 0].astype(np.uint16) * 257))
    exif = Image.Exif()
    exif[0x0112] = 6
    save("rotated.jpg", Image.fromarray(_noise(480, 640, 4)), exif=exif.tobytes())
    frames = [Image.fromarray(_noise(100, 120, s)).convert("P") for s in (5, 6)]
    out.append(d / "anim.gif")
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    save("thin.png", Image.fromarray(_noise(40, 700, 7)))
    save("tiny.bmp", Image.fromarray(_noise(9, 13, 8)))
    return out


@pytest.mark.parametrize("spec", [_spec(), _spec(32), _spec(224, 1.0, "bilinear"), _spec(96, 0.9, crop_mode="squash"),
                                  _spec(64, 1.25)], ids=["lite0", "tiny", "bilinear-full", "squash", "padded"])
def test_runtime_pixels_equal_transferkits_own_preprocessing(image_battery, chelsea_path, spec):
    from transferkit.features.preprocess import decode_uint8

    geometry = _geometry(spec)
    for path in [*image_battery, chelsea_path]:
        ours = load_pixels(path, geometry)
        theirs = decode_uint8(path, spec)
        assert ours.dtype == np.uint8 and ours.shape == (spec.image_size, spec.image_size, 3)
        assert np.array_equal(ours, theirs), path.name
        assert np.array_equal(load_pixels(path.read_bytes(), geometry), theirs), path.name  # bytes decode the same


def test_runtime_predicts_paths_bytes_and_images_and_reports_bad_inputs(exported, tiny_image_folder, tmp_path):
    rt = Runtime(exported)
    assert rt.class_names == ["red", "green", "blue"] and rt.image_size == 32
    files = sorted(tiny_image_folder.rglob("*.jpg"))[:3]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    inputs = [files[0], str(files[1]), files[2].read_bytes(), Image.open(files[0]), tmp_path / "bad.jpg", tmp_path / "empty.png"]
    results = rt.predict(inputs, top_k=2)
    assert [r.ok for r in results] == [True, True, True, True, False, False]
    assert "not an image" in results[4].error and "empty" in results[5].error
    probs = rt.run(np.stack([rt.preprocess(f) for f in files]))
    for r, p in zip(results[:3], probs):
        assert len(r.top) == 2 and r.top[0] == (rt.class_names[int(p.argmax())], pytest.approx(float(p.max())))
    assert [c for c, _ in results[3].top] == [c for c, _ in results[0].top]
    single = rt.predict(files[0], top_k=2)[0].top  # a single input needs no list
    assert [c for c, _ in single] == [c for c, _ in results[0].top]
    assert [p for _, p in single] == pytest.approx([p for _, p in results[0].top], abs=1e-6)
    with pytest.raises(ImageInputError, match="pixels must be"):
        rt.run(np.zeros((1, 31, 31, 3), np.uint8))


def test_decompression_bomb_and_missing_model_file(tmp_path, exported):
    bomb = tmp_path / "bomb.png"
    Image.new("L", (5000, 5000)).save(bomb)  # 25 MP of zeros: a few KB on disk
    with pytest.raises(ImageInputError, match="too many pixels"):
        decode_image(bomb, max_pixels=1_000_000)
    assert decode_image(bomb, max_pixels=None).size == (5000, 5000)
    with pytest.raises(ModelFileError, match="no exported model"):
        Runtime(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        Runtime(tmp_path / "junk.onnx")
    import onnx

    proto = onnx.load(str(exported))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(ModelFileError, match="no transferkit metadata"):
        Runtime(tmp_path / "plain.onnx")


_NO_TORCH = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "torchvision"):
            raise ImportError(f"{name} must not be imported by the runtime")
sys.meta_path.insert(0, Block())
sys.argv = ["transferkit.runtime", *sys.argv[1:]]
try:
    runpy.run_module("transferkit.runtime", run_name="__main__")
finally:
    bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "torchvision"))
    sys.stderr.write("IMPORTED:" + ",".join(bad) + "\\n")
"""


def test_python_m_runtime_runs_without_torch(exported, tiny_image_folder):
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(exported), str(tiny_image_folder), "--json", "--top-k", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED:\n" in proc.stderr  # nothing from torch, torchvision or timm
    results = json.loads(proc.stdout)["results"]
    assert len(results) == 18 and all(len(r["top"]) == 1 and r["top"][0]["label"] in ("red", "green", "blue") for r in results)
    plain = subprocess.run([sys.executable, "-m", "transferkit.runtime", str(exported), str(tiny_image_folder / "class_0")],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and len(plain.stdout.splitlines()) == 6 and "\t" in plain.stdout
    missing = subprocess.run([sys.executable, "-m", "transferkit.runtime", str(exported), "/no/such/photo.jpg"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
