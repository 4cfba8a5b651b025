"""Model bundles: round trip, tamper refusal, atomic writes, no pickles."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from transferkit.classifier.bundle import ClassifierModel, build_head, head_config, load_bundle, read_bundle_meta, save_bundle
from transferkit.core.errors import BundleError


def _model(tiny_backbone, hidden: bool = False) -> ClassifierModel:
    torch.manual_seed(0)
    d = tiny_backbone.num_features
    head = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3)) if hidden else nn.Linear(d, 3)
    return ClassifierModel(tiny_backbone, head, ["a", "b", "c"]).eval()


@pytest.mark.parametrize("hidden", [False, True])
def test_round_trip_predicts_identically(tmp_path, tiny_backbone, hidden):
    model = _model(tiny_backbone, hidden)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = model(x)
    save_bundle(tmp_path / "m", model, metrics={"accuracy": 0.5}, config={"seed": 0})
    loaded = load_bundle(tmp_path / "m")
    with torch.inference_mode():
        after = loaded(x)
    assert torch.equal(before, after)
    assert loaded.class_names == ["a", "b", "c"]
    assert loaded.spec == model.spec
    meta = read_bundle_meta(tmp_path / "m")
    assert meta["metrics"] == {"accuracy": 0.5}
    assert meta["backbone"]["name"] == "test_efficientnet"
    # random backbone weights cannot be rebuilt from a source, so they are stored
    assert meta["include_backbone"] is True and "backbone.safetensors" in meta["files"]


def test_tampered_head_is_refused(tmp_path, tiny_backbone):
    save_bundle(tmp_path / "m", _model(tiny_backbone))
    head_file = tmp_path / "m" / "head.safetensors"
    data = bytearray(head_file.read_bytes())
    data[-3] ^= 0x01  # flip one bit inside the last float
    head_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(tmp_path / "m")


def test_tampered_backbone_is_refused(tmp_path, tiny_backbone):
    save_bundle(tmp_path / "m", _model(tiny_backbone), include_backbone=True)
    f = tmp_path / "m" / "backbone.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x10
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="backbone.safetensors"):
        load_bundle(tmp_path / "m")


def test_pretrained_spec_with_other_weights_is_refused(tmp_path, tiny_backbone):
    save_bundle(tmp_path / "m", _model(tiny_backbone))
    meta_path = tmp_path / "m" / "bundle.json"
    meta = json.loads(meta_path.read_text())
    meta["include_backbone"] = False
    meta["backbone"]["weights_source"] = "package"
    meta["backbone"]["name"] = "efficientnet_lite0"
    meta["backbone"]["timm_name"] = "tf_efficientnet_lite0"
    meta["backbone"]["weights_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(tmp_path / "m")


def test_missing_and_non_bundle_paths(tmp_path):
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(BundleError, match="not a transferkit bundle"):
        load_bundle(tmp_path / "plain")


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path, tiny_backbone):
    save_bundle(tmp_path / "m", _model(tiny_backbone))
    model2 = _model(tiny_backbone)
    with torch.no_grad():
        model2.head.bias.fill_(3.0)
    save_bundle(tmp_path / "m", model2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert torch.equal(load_bundle(tmp_path / "m").head.bias, model2.head.bias)


def test_head_config_round_trip_and_refusal():
    head = nn.Sequential(nn.Linear(8, 4), nn.GELU(), nn.Linear(4, 2))
    rebuilt = build_head(head_config(head))
    assert [type(m) for m in rebuilt] == [nn.Linear, nn.GELU, nn.Linear]
    with pytest.raises(BundleError, match="cannot save a head"):
        head_config(nn.Sequential(nn.Linear(8, 4), nn.Conv1d(1, 1, 1)))


@pytest.mark.pretrained
def test_pretrained_bundle_rebuilds_from_package_without_storing_backbone(tmp_path):
    from transferkit.backbones import create_backbone

    backbone = create_backbone("efficientnet_lite0")
    model = ClassifierModel(backbone, nn.Linear(backbone.num_features, 2), ["cat", "dog"]).eval()
    save_bundle(tmp_path / "m", model)
    assert not (tmp_path / "m" / "backbone.safetensors").exists()
    loaded = load_bundle(tmp_path / "m")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("bad_head", ["linear", {"type": "sequential", "layers": []},
                                      {"type": "sequential", "layers": ["linear"]},
                                      {"type": "sequential", "layers": [{"type": "linear", "in_features": 8}]}])
def test_malformed_head_config_is_a_bundle_error(bad_head):
    # A hand-edited bundle.json must give one clear BundleError, not AttributeError/IndexError/KeyError.
    with pytest.raises(BundleError, match="head config"):
        build_head(bad_head)


def test_failed_swap_keeps_the_previous_bundle(tmp_path, tiny_backbone, monkeypatch):
    import os

    from transferkit.classifier import bundle_files

    save_bundle(tmp_path / "m", _model(tiny_backbone))
    before = (tmp_path / "m" / "head.safetensors").read_bytes()
    real_replace = os.replace

    def failing_replace(src, dst):
        if ".tmp-" in os.fspath(src):  # the new bundle moving into place
            raise OSError("disk trouble")
        return real_replace(src, dst)

    monkeypatch.setattr(bundle_files.os, "replace", failing_replace)
    model2 = _model(tiny_backbone)
    with torch.no_grad():
        model2.head.bias.fill_(3.0)
    with pytest.raises(BundleError, match="cannot put the new bundle in place .*disk trouble.*previous one is unchanged"):
        save_bundle(tmp_path / "m", model2)
    monkeypatch.undo()
    assert (tmp_path / "m" / "head.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    load_bundle(tmp_path / "m")


@pytest.mark.parametrize("key,value", [("class_names", "ab"), ("class_names", None), ("class_names", []),
                                       ("files", {"head.safetensors": 5}), ("files", ["head.safetensors"])])
def test_malformed_bundle_json_fields_are_refused(tmp_path, tiny_backbone, key, value):
    save_bundle(tmp_path / "m", _model(tiny_backbone))
    meta_file = tmp_path / "m" / "bundle.json"
    meta = json.loads(meta_file.read_text())
    meta[key] = value
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=key.replace("_", " ") if key == "class_names" else "files"):
        load_bundle(tmp_path / "m")


def test_unwritable_bundle_path_is_a_bundle_error(tmp_path, tiny_backbone):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(BundleError, match="cannot write a bundle"):
        save_bundle(tmp_path / "a_file" / "m", _model(tiny_backbone))


def test_overwriting_a_bundle_replaces_its_reports_but_refuses_to_delete_other_files(tmp_path, tiny_backbone, caplog):
    from transferkit.core.errors import BundleError

    save_bundle(tmp_path / "m", _model(tiny_backbone))
    (tmp_path / "m" / "evaluation").mkdir()
    (tmp_path / "m" / "evaluation" / "report.html").write_text("old model")
    with caplog.at_level("INFO", logger="transferkit.classifier.bundle_files"):
        save_bundle(tmp_path / "m", _model(tiny_backbone))
    assert any("evaluation/" in r.getMessage() for r in caplog.records if r.levelname == "INFO")
    assert not (tmp_path / "m" / "evaluation").exists()  # a report of the old model does not describe the new one
    (tmp_path / "m" / "my_notes.txt").write_text("mine")
    before = (tmp_path / "m" / "bundle.json").read_bytes()
    with pytest.raises(BundleError, match="my_notes.txt"):
        save_bundle(tmp_path / "m", _model(tiny_backbone))
    assert (tmp_path / "m" / "my_notes.txt").read_text() == "mine" and (tmp_path / "m" / "bundle.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folder left behind


def test_train_refuses_a_bad_out_before_training(tmp_path, tiny_image_folder, monkeypatch):
    import transferkit.pipeline.train as train_module
    from transferkit.core.errors import BundleError
    from transferkit.pipeline.train import TrainConfig, train

    monkeypatch.setattr(train_module, "train_probe", lambda *a, **k: pytest.fail("trained although --out is unusable"))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(BundleError, match="not a bundle"):
        train(TrainConfig(data=str(tiny_image_folder), out=str(tmp_path / "photos")))


def test_a_late_refusal_keeps_the_finished_bundle_beside_the_target(tmp_path, tiny_backbone, monkeypatch):
    import transferkit.classifier.bundle_files as bundle_files
    from transferkit.core.errors import BundleError

    real = bundle_files.check_bundle_target
    calls = []

    def refuse_second_time(path):
        calls.append(path)
        if len(calls) == 2:  # something appeared at --out while the model trained
            raise BundleError(f"{path} is a non-empty directory that is not a bundle; choose another --out")
        real(path)

    monkeypatch.setattr(bundle_files, "check_bundle_target", refuse_second_time)
    with pytest.raises(BundleError, match="kept at") as info:
        save_bundle(tmp_path / "m", _model(tiny_backbone))
    (kept,) = tmp_path.glob("m.new-*")
    assert str(kept) in str(info.value) and (kept / "bundle.json").is_file()
    assert torch.equal(load_bundle(kept).head.bias, _model(tiny_backbone).head.bias)
