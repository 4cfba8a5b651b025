"""Backbones: offline weights from packages, strict key mapping, the spec, and clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from transferkit.backbones import create_backbone, list_backbones, resolve_data_config, weights_availability
from transferkit.backbones.lite_packages import map_lukemelas_to_timm, package_weights_path
from transferkit.backbones.weights import load_state_dict, sha256_file
from transferkit.core.errors import UnknownNameError, WeightsError
from transferkit.core.registry import Registry

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.mark.parametrize("name", LITES)
def test_bundled_weights_map_strictly_onto_timm(name):
    import timm

    arch = name.replace("efficientnet", "tf_efficientnet")
    net = timm.create_model(arch, pretrained=False)
    raw = load_state_dict(package_weights_path(name))
    mapped = map_lukemelas_to_timm(raw, [len(s) for s in net.blocks])
    own = net.state_dict()
    assert set(mapped) == set(own)
    assert all(mapped[k].shape == own[k].shape for k in own)
    # Every tensor is used exactly once: the mapping is a bijection on the values too.
    assert len(mapped) == len(raw)
    net.load_state_dict(mapped, strict=True)


def test_mapping_rejects_a_foreign_key():
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    raw = dict(load_state_dict(package_weights_path("efficientnet_lite0")))
    raw["_blocks.0._se_reduce.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="cannot map"):
        map_lukemelas_to_timm(raw, [len(s) for s in net.blocks])


@pytest.mark.parametrize("name", LITES)
def test_spec_equals_timm_data_config(name):
    model = create_backbone(name)
    spec = model.spec
    cfg = resolve_data_config(name)
    assert spec.input_size == tuple(cfg["input_size"])
    assert spec.mean == tuple(cfg["mean"]) == (0.5, 0.5, 0.5)
    assert spec.std == tuple(cfg["std"])
    assert spec.interpolation == cfg["interpolation"]
    assert spec.crop_pct == pytest.approx(cfg["crop_pct"])
    assert spec.crop_mode == cfg["crop_mode"]
    assert spec.num_features == 1280 and spec.num_classes == 1000
    assert spec.weights_source == "package"
    assert spec.weights_sha256 == sha256_file(package_weights_path(name))


def test_spec_round_trips_through_json():
    from transferkit.backbones.spec import BackboneSpec

    spec = create_backbone("test_efficientnet", weights="none", image_size=32).spec
    assert BackboneSpec.from_dict(__import__("json").loads(spec.to_json())) == spec
    assert spec.image_size == 32 and spec.weights_source == "none"


def test_unknown_backbone_names_close_matches():
    with pytest.raises(UnknownNameError, match="Did you mean .*efficientnet_lite0"):
        create_backbone("efficientnet_lite0x")


def test_no_weights_offline_is_one_clear_error():
    # resnet18 has no bundled package and the hub cache is empty and offline (conftest).
    with pytest.raises(WeightsError) as info:
        create_backbone("resnet18")
    msg = str(info.value)
    assert "--weights PATH" in msg and "package" in msg and "internet" in msg and "--weights none" in msg
    assert weights_availability("resnet18") == "needs download"
    assert weights_availability("efficientnet_lite0") == "bundled package"


def test_hub_cache_is_used_offline(tmp_path):
    """Weights already in the Hugging Face cache load with no network at all."""
    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    reference = timm.create_model("test_efficientnet", pretrained=False)
    torch.nn.init.normal_(reference.classifier.weight)
    hub_id = reference.pretrained_cfg["hf_hub_id"]
    repo = tmp_path / "hf" / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(snap / "model.safetensors"))
    constants.HF_HUB_CACHE = str(tmp_path / "hf")  # restored by the autouse fixture's monkeypatch

    assert weights_availability("test_efficientnet") == "hub cache"
    model = create_backbone("test_efficientnet")
    assert model.spec.weights_source == "hub"
    assert model.spec.weights_sha256 == sha256_file(snap / "model.safetensors")
    assert torch.equal(model.net.classifier.weight, reference.classifier.weight)


def test_weights_file_safetensors_and_pth(tmp_path):
    from safetensors.torch import save_file

    src = create_backbone("test_efficientnet", weights="none", seed=3)
    sd = {k: v.contiguous() for k, v in src.net.state_dict().items()}
    st, pth = tmp_path / "w.safetensors", tmp_path / "w.pth"
    save_file(sd, str(st))
    torch.save({"state_dict": sd}, pth)
    for path in (st, pth):
        model = create_backbone("test_efficientnet", weights=path)
        assert model.spec.weights_source == "file"
        assert model.spec.weights_sha256 == sha256_file(path)
        assert all(torch.equal(a, b) for a, b in zip(model.net.state_dict().values(), sd.values()))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_weights_file_is_a_clear_error(tmp_path, suffix):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in create_backbone("test_efficientnet", weights="none").net.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        create_backbone("test_efficientnet", weights=path)


class _Boom:
    """Unpickling this would write a marker file: the loader must never do it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv_stem.weight": _Boom(str(marker))}, f)
    # torch.save produces a zip; a plain pickle and a zip holding an object must both be refused.
    zpath = tmp_path / "evil_zip.pth"
    torch.save({"weights": _Boom(str(marker))}, zpath)
    for p in (path, zpath):
        with pytest.raises(WeightsError, match="refused|corrupt"):
            create_backbone("test_efficientnet", weights=p)
    assert not marker.exists()
    with pytest.raises(WeightsError, match="refused"):
        create_backbone("test_efficientnet", weights=zpath)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lite.safetensors"
    save_file({"conv_stem.weight": torch.zeros(8, 3, 3, 3)}, str(path))
    with pytest.raises(WeightsError, match="do not fit"):
        create_backbone("test_efficientnet", weights=path)


def test_pixel_model_normalises_inside():
    model = create_backbone("test_efficientnet", weights="none", image_size=32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.net((x - model.mean) / model.std)
        assert torch.equal(model(x), expected)
        feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features)


def test_num_classes_replaces_the_head():
    model = create_backbone("test_efficientnet", weights="none", num_classes=7)
    assert model.num_classes == 7 and model.spec.num_classes == 7 and model.spec.label_set == ""


def test_list_backbones_filters_curated():
    assert list_backbones("efficientnet_lite*") == LITES
    assert "vgg16" in list_backbones() and "resnet50" in list_backbones()


def test_registry_refuses_duplicates_and_suggests():
    reg: Registry[int] = Registry("thing")
    reg.register("alpha", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", 2)
    with pytest.raises(UnknownNameError, match="alpha"):
        reg.get("alpah")
    assert reg.list("a*") == ["alpha"] and "alpha" in reg and len(reg) == 1
