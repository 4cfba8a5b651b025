"""Feature maps (library) and the `featuremaps` / `dream` commands, on timm's tiny test network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.cli.main import main
from transferkit.core.errors import UnknownNameError
from transferkit.explain.featuremaps import (
    default_layers,
    extract_feature_maps,
    feature_map_grid,
    feature_map_grids,
    list_layers,
    resolve_layer,
)

TINY_ARGS = ["--backbone", "test_efficientnet", "--weights", "none"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny workloads: two OpenMP threads on a busy shared machine mostly wait on each other.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    arr = np.zeros((40, 48, 3), dtype=np.uint8)
    arr[:, 24:] = 255  # a vertical edge, plus a little noise
    arr = np.clip(arr + rng.normal(0, 10, arr.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "edge.png"
    Image.fromarray(arr).save(path)
    return path


# --- library -----------------------------------------------------------------------------------


def test_list_layers_runs_from_stem_to_head(tiny_backbone):
    layers = list_layers(tiny_backbone)
    assert [info.index for info in layers] == list(range(len(layers)))
    assert layers[0].name == "bn1" and layers[0].role == "stem"
    stages = [info for info in layers if info.role == "stage"]
    assert [info.name for info in stages] == [f"blocks.{i}" for i in range(len(stages))] and len(stages) >= 3
    assert layers[-1].role == "head"
    # spatial size shrinks (or stays) from early to late layers; shapes are (C, H, W) at 32 px
    sizes = [info.shape[1] for info in layers]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 16
    early_to_late = [layers[0]] + stages
    assert default_layers(tiny_backbone) == [early_to_late[0].name, early_to_late[len(early_to_late) // 2].name, stages[-1].name]


def test_resolve_layer_by_index_name_and_errors(tiny_backbone):
    layers = list_layers(tiny_backbone)
    assert resolve_layer(tiny_backbone, 2) == layers[2]
    assert resolve_layer(tiny_backbone, "-1") == layers[-1]
    named = resolve_layer(tiny_backbone, "blocks.1.0.conv_pwl")
    assert named.index is None and len(named.shape) == 3
    with pytest.raises(UnknownNameError, match="out of range"):
        resolve_layer(tiny_backbone, 99)
    with pytest.raises(UnknownNameError, match="Did you mean blocks.1.0.conv_pwl"):
        resolve_layer(tiny_backbone, "blocks.1.0.conv_pw")
    with pytest.raises(UnknownNameError, match="feature map"):
        resolve_layer(tiny_backbone, "classifier")


def test_feature_maps_pick_the_most_active_channels(tiny_backbone):
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = extract_feature_maps(tiny_backbone, x, 1, channels=5)
    c, h, w = maps.layer.shape
    assert maps.activations.shape == (c, h, w)
    means = maps.activations.flatten(1).mean(1)
    assert maps.channels == torch.topk(means, 5).indices.tolist()
    assert maps.scores == sorted(maps.scores, reverse=True)


@pytest.mark.parametrize("channels, grid_cells", [(16, (4, 4)), (5, (2, 3)), (1, (1, 1))])
def test_grid_shape(tiny_backbone, channels, grid_cells):
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    grid = feature_map_grid(extract_feature_maps(tiny_backbone, x, 0, channels=channels), tile=10, pad=2)
    rows, cols = grid_cells
    assert grid.shape == (rows * 10 + (rows + 1) * 2, cols * 10 + (cols + 1) * 2, 3) and grid.dtype == np.uint8


def test_feature_map_grids_for_reports(tiny_backbone, photo):
    grids = feature_map_grids(tiny_backbone, photo, channels=4, tile=8)
    assert list(grids) == default_layers(tiny_backbone)
    png, info = next(iter(grids.values()))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(info["channels"]) == 4


# --- CLI ---------------------------------------------------------------------------------------


def test_featuremaps_cli_lists_layers_and_writes_grid(tmp_path, photo, capsys):
    assert main(["featuremaps", "--list-layers", "--format", "json", *TINY_ARGS]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["name"] == "bn1" and listed[0]["index"] == 0
    out = tmp_path / "maps.png"
    assert main(["featuremaps", str(photo), *TINY_ARGS, "--layer", "0", "--channels", "9", "--tile", "12", "--out", str(out)]) == 0
    assert Image.open(out).size == (3 * 12 + 4 * 2, 3 * 12 + 4 * 2)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_featuremaps_cli_bad_layer_and_image(tmp_path, photo, capsys):
    assert main(["featuremaps", str(photo), *TINY_ARGS, "--layer", "nope"]) == 1
    assert "no layer named 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["featuremaps", str(bad), *TINY_ARGS]) == 1
    assert "bad.jpg" in capsys.readouterr().err


def test_dream_cli_compare_and_gif(tmp_path, capsys):
    out, gif = tmp_path / "zebra.png", tmp_path / "zebra.gif"
    argv = ["dream", "zebra", *TINY_ARGS, "--steps", "4", "--size", "32", "--compare", "--gif", str(gif), "--out", str(out), "--format", "json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["index"] == 340 and [r["variant"] for r in report["renders"]] == ["main", "noisy (tv 0)"]
    main_cfg, noisy_cfg = (r["config"] for r in report["renders"])
    assert (main_cfg["param"], main_cfg["transforms"]) == ("fourier", True)
    assert (noisy_cfg["param"], noisy_cfg["transforms"], noisy_cfg["tv_weight"]) == ("pixel", False, 0.0)
    assert Image.open(out).size == (32 + 8 + 32, 32)
    with Image.open(gif) as g:
        assert g.n_frames >= 3


def test_dream_cli_tv_weight_zero_is_the_noisy_version(tmp_path, capsys):
    argv = ["dream", "340", *TINY_ARGS, "--steps", "2", "--size", "16", "--tv-weight", "0", "--out", str(tmp_path / "z.png"), "--format", "json"]
    assert main(argv) == 0
    cfg = json.loads(capsys.readouterr().out)["renders"][0]["config"]
    assert (cfg["param"], cfg["transforms"], cfg["tv_weight"]) == ("pixel", False, 0.0)


def test_dream_cli_ambiguous_class_lists_choices(capsys):
    assert main(["dream", "cat", *TINY_ARGS, "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "matches" in err and "tabby" in err and "Persian cat" in err


def test_dream_cli_on_a_bundle_class(tmp_path, tiny_backbone, capsys):
    from torch import nn

    from transferkit.classifier.bundle import ClassifierModel, save_bundle

    torch.manual_seed(0)
    model = ClassifierModel(tiny_backbone, nn.Linear(tiny_backbone.num_features, 3), ["Abyssinian", "Bengal", "Birman"]).eval()
    save_bundle(tmp_path / "pets", model)
    out = tmp_path / "bengal.png"
    assert main(["dream", "bengal", "--model", str(tmp_path / "pets"), "--steps", "3", "--out", str(out), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["index"], report["class"]) == (1, "Bengal")
    assert Image.open(out).size == (32, 32)  # the bundle's own input size
    assert main(["dream", "Sphynx", "--model", str(tmp_path / "pets"), "--steps", "1"]) == 1
    assert "Abyssinian, Bengal, Birman" in capsys.readouterr().err
    # feature maps of a bundle look inside its backbone
    assert main(["featuremaps", "--list-layers", "--model", str(tmp_path / "pets"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "bn1"
