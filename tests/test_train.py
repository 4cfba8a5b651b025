"""train / predict / evaluate end to end on tiny generated images with timm's tiny test network."""

from __future__ import annotations

import json

import pytest

from transferkit.classifier.bundle import load_bundle, read_bundle_meta
from transferkit.core.errors import TransferkitError
from transferkit.pipeline.train import TrainConfig, train, train_probe


def _config(tmp_path, **kw):
    base = dict(data="", backbone="test_efficientnet", weights="none", engine="torch", out=str(tmp_path / "model"),
                val=0.2, test=0.3, seed=0, batch_size=8)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def tiny_set(tiny_image_folder):
    from transferkit.data import load_images

    return load_images(tiny_image_folder)


@pytest.mark.parametrize("head", ["logistic", "mlp"])
def test_train_probe_writes_bundle_and_report(tmp_path, tiny_set, tiny_backbone, head):
    result = train(_config(tmp_path, head=head), imageset=tiny_set, backbone=tiny_backbone)
    m = result.metrics
    assert m["split"] == "test" and sum(m["images"].values()) == len(tiny_set)
    # Three colour-coded classes: even random features of a tiny net separate them.
    assert m["accuracy"] >= 0.8
    meta = read_bundle_meta(result.bundle_path)
    assert meta["class_names"] == tiny_set.class_names and meta["config"]["head"] == head
    assert meta["metrics"]["accuracy"] == m["accuracy"]
    html = result.report_path.read_text()
    assert "data:image/png;base64," in html and "calibration" in html
    assert json.loads((result.report_path.parent / "metrics.json").read_text())["n"] == m["images"]["test"]
    # The saved bundle predicts exactly what the in-memory model predicts.
    import torch

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(load_bundle(result.bundle_path)(x), result.model.network()(x))


def test_warm_rerun_computes_no_features(tmp_path, tiny_set, tiny_backbone):
    cold = train_probe(_config(tmp_path, report=False), imageset=tiny_set, backbone=tiny_backbone)
    warm = train_probe(_config(tmp_path, report=False), imageset=tiny_set, backbone=tiny_backbone)
    assert cold.metrics["features"]["computed"] == len(tiny_set)
    assert warm.metrics["features"]["computed"] == 0 and warm.metrics["features"]["cached"] == len(tiny_set)
    assert warm.metrics["accuracy"] == cold.metrics["accuracy"]


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(TransferkitError, match="unknown mode 'magic'"):
        train(_config(tmp_path, mode="magic"))


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(TransferkitError):
        train(_config(tmp_path, data=str(tmp_path / "no-such-folder")))


def test_cli_train_predict_evaluate_cache(tmp_path, tiny_image_folder, capsys):
    from transferkit.cli.main import main

    model = tmp_path / "m"
    args = ["train", str(tiny_image_folder), "--backbone", "test_efficientnet", "--weights", "none", "--engine", "torch",
            "--out", str(model), "--val", "0.2", "--test", "0.3", "--format", "json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["images"]["test"] > 0 and (model / "bundle.json").is_file()

    image = sorted((tiny_image_folder / "class_2").glob("*.jpg"))[0]
    assert main(["predict", str(model), str(image), str(tiny_image_folder / "class_0"), "--format", "json", "--top-k", "2"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert len(pred["results"]) == 1 + 6 and len(pred["results"][0]["predictions"]) == 2
    assert main(["predict", str(model), str(image), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "path,rank,label,probability,error"

    assert main(["evaluate", str(model), str(tiny_image_folder), "--out", str(tmp_path / "ev"), "--format", "json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["metrics"]["n"] == 18 and (tmp_path / "ev" / "confusion_matrix.png").is_file()
    assert (tmp_path / "ev" / "report.html").is_file()

    assert main(["cache", "info", "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["feature_entries"] >= 18
    import os
    from pathlib import Path

    cache_dir = Path(os.environ["TRANSFERKIT_CACHE_DIR"])
    (cache_dir / "datasets").mkdir(parents=True, exist_ok=True)
    (cache_dir / "datasets" / "kept.txt").write_text("downloaded data is not a derived cache")
    assert any((cache_dir / d).exists() for d in ("heads", "verify"))
    assert main(["cache", "clear", "--yes"]) == 0
    left = sorted(p.relative_to(cache_dir).as_posix() for p in cache_dir.rglob("*") if p.is_file())
    assert left == ["datasets/kept.txt"]


def test_cli_refuses_a_tampered_bundle(tmp_path, tiny_image_folder, capsys):
    from transferkit.cli.main import main

    model = tmp_path / "m"
    assert main(["train", str(tiny_image_folder), "--backbone", "test_efficientnet", "--weights", "none", "--engine", "torch",
                 "--out", str(model), "--no-report", "--format", "json"]) == 0
    capsys.readouterr()
    head = model / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    image = sorted(tiny_image_folder.rglob("*.jpg"))[0]
    assert main(["predict", str(model), str(image)]) == 1
    assert "sha256" in capsys.readouterr().err


def test_cli_train_accepts_a_fixed_C_when_too_few_images_to_choose_it(tmp_path, capsys):
    # One image per class: C cannot be chosen on held-out data, and the error says to pass --C.
    from PIL import Image

    from transferkit.cli.main import main

    data = tmp_path / "few"
    for c, colour in enumerate([(200, 0, 0), (0, 0, 200)]):
        (data / f"class_{c}").mkdir(parents=True)
        Image.new("RGB", (32, 32), colour).save(data / f"class_{c}" / "img.png")
    args = ["train", str(data), "--backbone", "test_efficientnet", "--weights", "none", "--engine", "torch",
            "--val", "0", "--test", "0", "--no-report", "--no-cache", "--out", str(tmp_path / "m")]
    assert main(args) == 1
    assert "--C" in capsys.readouterr().err
    assert main(args + ["--C", "0.5", "--format", "json"]) == 0
    assert read_bundle_meta(tmp_path / "m")["config"]["C"] == 0.5


def test_cli_usage_errors_are_click_usage_messages_not_crash_lines(capsys):
    from transferkit.cli.main import main

    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "Missing argument" in err and "TRANSFERKIT_DEBUG" not in err
    assert main(["train", "x", "--format", "yaml"]) == 2
    err = capsys.readouterr().err
    assert "'yaml' is not one of table, json" in err and "TRANSFERKIT_DEBUG" not in err


def test_one_class_data_fails_before_any_feature_is_extracted(tmp_path, monkeypatch):
    from PIL import Image

    import transferkit.features.extract as extract
    from transferkit.core.errors import DataError
    from transferkit.data import load_images

    folder = tmp_path / "only" / "cat"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (16, 16), (i * 30, 10, 10)).save(folder / f"{i}.png")
    import transferkit.features.distributed as distributed

    for module in (extract, distributed):
        monkeypatch.setattr(module, "extract_features", lambda *a, **k: pytest.fail("features were extracted"))
    with pytest.raises(DataError, match="at least 2 classes, found only 'cat'"):
        train(_config(tmp_path, data=str(tmp_path / "only")))
    assert len(load_images(tmp_path / "only")) == 6
