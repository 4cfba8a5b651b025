"""`transferkit attack` / `transferkit robustness` on a tiny bundle, and the saved PNG round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from transferkit.attacks import attack, quantize_8bit
from transferkit.attacks.images import frame_for_spec, save_png
from transferkit.cli.attack import parse_eps_list, parse_fraction
from transferkit.cli.main import main
from transferkit.core.errors import TransferkitError
from transferkit.data.decode import load_for_spec, open_rgb


@pytest.fixture
def tiny_bundle(tmp_path, tiny_backbone):
    from transferkit.classifier.bundle import ClassifierModel, save_bundle

    torch.manual_seed(0)
    head = nn.Linear(tiny_backbone.num_features, 3)
    with torch.no_grad():
        head.weight.mul_(20)  # a random net's features barely differ; scale so the classes do
    model = ClassifierModel(tiny_backbone, head, ["class_0", "class_1", "class_2"]).eval()
    return save_bundle(tmp_path / "bundle", model)


@pytest.fixture
def photo(tmp_path) -> str:
    """A non-square 8-bit photo-like image (so resize and crop both do something)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:45, 0:60]
    arr = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1) + rng.integers(0, 40, (45, 60, 3))
    path = tmp_path / "photo.png"
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
    return str(path)


def test_parse_fraction():
    assert parse_fraction("4/255") == pytest.approx(4 / 255)
    assert parse_fraction("0.03") == pytest.approx(0.03)
    assert parse_eps_list("0, 1/255,8/255") == pytest.approx([0, 1 / 255, 8 / 255])
    with pytest.raises(TransferkitError, match="4/255"):
        parse_fraction("4")
    with pytest.raises(TransferkitError, match="not a number"):
        parse_fraction("four")


@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_framed_png_reads_back_as_exactly_the_attacked_input(tmp_path, tiny_backbone, photo, crop_mode):
    import dataclasses

    spec = dataclasses.replace(tiny_backbone.spec, crop_mode=crop_mode)
    clean = load_for_spec(photo, spec)
    adv = quantize_8bit((clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)) * 0.05).clamp(0, 1))
    framed = frame_for_spec(open_rgb(photo), spec, adv)
    assert framed.size == (spec.resize_size, spec.resize_size)
    path = save_png(framed, tmp_path / "adv.png")
    assert torch.equal(load_for_spec(path, spec), adv)


def test_attack_cli_writes_files_and_the_png_still_fools(tmp_path, capsys, tiny_bundle, photo):
    out = tmp_path / "out"
    code = main(["attack", photo, "--model", str(tiny_bundle), "--untargeted", "--method", "bim", "--eps", "16/255", "--out", str(out), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert data["success"] is True and data["saved_png_fools_model"] is True
    assert data["linf_255"] <= 16 + 1e-4
    assert 0 < data["ssim"] < 1 and data["psnr_db"] > 10
    assert data["top3_before"][0][0] != data["top3_after_saved_png"][0][0]
    for key in ("adversarial", "perturbation", "figure"):
        with Image.open(data["files"][key]) as img:
            assert img.format == "PNG"
    from transferkit.classifier.bundle import load_bundle

    spec = load_bundle(tiny_bundle).spec
    with Image.open(data["files"]["adversarial"]) as img:
        assert img.size == (spec.resize_size, spec.resize_size) and spec.resize_size > spec.image_size


def test_attack_cli_table_targeted(tmp_path, capsys, tiny_bundle, photo):
    code = main(["attack", photo, "--model", str(tiny_bundle), "--target", "class_2", "--method", "fgsm", "--eps", "8/255", "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "PSNR" in captured.out and "SSIM" in captured.out and "class_2" in captured.out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eps", "4"], "4/255"),
        ([], "--target"),
        (["--target", "zebra"], "not one of the model's classes"),
        (["--untargeted", "--method", "pdg"], "pgd"),
    ],
)
def test_attack_cli_bad_input_is_one_line(capsys, tiny_bundle, photo, args, message):
    if "--untargeted" not in args and "--target" not in args and args:
        args = args + ["--untargeted"]
    code = main(["attack", photo, "--model", str(tiny_bundle), *args])
    err = capsys.readouterr().err.strip()
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


def test_robustness_cli(tmp_path, capsys, tiny_bundle, tiny_image_folder):
    plot = tmp_path / "rob.png"
    code = main(["robustness", str(tiny_bundle), str(tiny_image_folder), "--eps", "0,2/255,16/255",
        "--method", "bim", "--steps", "3", "--plot", str(plot), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    accs = [p["accuracy"] for p in data["points"]]
    assert accs[0] == pytest.approx(data["clean_accuracy"])
    assert all(a <= data["clean_accuracy"] + 1e-12 for a in accs)
    assert data["images"] == 18
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_robustness_cli_wrong_classes(capsys, tmp_path, tiny_backbone, tiny_image_folder):
    from transferkit.classifier.bundle import ClassifierModel, save_bundle

    bundle = save_bundle(tmp_path / "b", ClassifierModel(tiny_backbone, nn.Linear(tiny_backbone.num_features, 2), ["cat", "dog"]))
    code = main(["robustness", str(bundle), str(tiny_image_folder), "--eps", "0,1/255", "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert code == 1 and "not among the bundle's classes" in err


def test_attack_library_on_a_bundle_agrees_with_cli_rules(tiny_bundle, photo):
    from transferkit.classifier.bundle import load_bundle

    model = load_bundle(tiny_bundle)
    x = load_for_spec(photo, model.spec)[None]
    r = attack(model, x, method="pgd", eps=8 / 255, generator=torch.Generator().manual_seed(0))
    assert float(r.linf[0]) <= 8 / 255 + 1e-6


def test_attack_cli_out_png_is_the_adversarial_file(tmp_path, capsys, tiny_bundle, photo):
    out = tmp_path / "results" / "adv.png"
    code = main(["attack", photo, "--model", str(tiny_bundle), "--untargeted", "--method", "fgsm", "--eps", "8/255", "--out", str(out), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.is_file() and not out.is_dir()
    assert sorted(p.name for p in out.parent.iterdir()) == ["adv.png", "adv_attack.png", "adv_perturbation.png"]
    files = json.loads(captured.out)["files"]
    assert files == {"adversarial": str(out), "perturbation": str(out.parent / "adv_perturbation.png"),
                     "figure": str(out.parent / "adv_attack.png")}


def test_attack_cli_out_without_suffix_is_a_folder(tmp_path, capsys, tiny_bundle, photo):
    out = tmp_path / "adv"
    code = main(["attack", photo, "--model", str(tiny_bundle), "--untargeted", "--method", "fgsm", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["photo_adv.png", "photo_attack.png", "photo_perturbation.png"]


@pytest.mark.parametrize("name", ["adv.jpg", "adv.jpeg", "adv.webp"])
def test_attack_cli_refuses_a_lossy_out_in_one_line(tmp_path, capsys, tiny_bundle, photo, name):
    code = main(["attack", photo, "--model", str(tiny_bundle), "--untargeted", "--out", str(tmp_path / name)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error:") and "lossy" in err[0] and "undo the attack" in err[0]
    assert "Error" not in err[0].split("error:", 1)[1]  # no exception class names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "photo.png"]


def test_robustness_cli_limit_draws_a_balanced_sample(tmp_path, capsys, tiny_bundle, tiny_image_folder):
    code = main(["robustness", str(tiny_bundle), str(tiny_image_folder), "--eps", "0,2/255", "--method", "fgsm", "--limit", "6",
                 "--plot", str(tmp_path / "p.png")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "6 of 18 images" in captured.out and f"wrote {tmp_path / 'p.png'}" in captured.out.replace("\n", "")
