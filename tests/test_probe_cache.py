"""Warm-rerun caches of `train` (probe mode): the head cache and the backbone memo give the cold run's result."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from transferkit.classifier.bundle import HEAD_FILE, read_bundle_meta
from transferkit.features import FeatureCache
from transferkit.pipeline import memo as probe_cache
from transferkit.pipeline.train import TrainConfig, train_probe


def _config(tmp_path, name="model", **kw):
    base = dict(data="", backbone="test_efficientnet", weights="none", engine="torch", out=str(tmp_path / name),
                val=0.2, test=0.3, seed=0, batch_size=8, report=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def tiny_set(tiny_image_folder):
    from transferkit.data import load_images

    return load_images(tiny_image_folder)


def _head_entries() -> list:
    folder = FeatureCache().directory / "heads"
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def _same_result(a, b) -> None:
    ma, mb = read_bundle_meta(a.bundle_path), read_bundle_meta(b.bundle_path)
    assert ma["files"] == mb["files"] and ma["head"] == mb["head"] and ma["backbone"] == mb["backbone"]
    strip = lambda m: {k: v for k, v in m.items() if k not in ("timings", "features")}  # noqa: E731
    assert strip(a.metrics) == strip(b.metrics)


@pytest.mark.parametrize("head", ["logistic", "mlp"])
def test_head_cache_hit_gives_the_identical_head(tmp_path, tiny_set, tiny_backbone, head):
    cold = train_probe(_config(tmp_path, "cold", head=head), imageset=tiny_set, backbone=tiny_backbone)
    assert len(_head_entries()) == 1
    warm = train_probe(_config(tmp_path, "warm", head=head), imageset=tiny_set, backbone=tiny_backbone)
    assert "head" in warm.from_cache and "head" not in cold.from_cache
    _same_result(cold, warm)
    for name, a in cold.model.head.state.items():
        assert np.array_equal(a, warm.model.head.state[name])
    if head == "logistic":
        assert warm.head.C == cold.head.C == cold.metrics["head"]["C"]


def test_changed_config_or_features_miss_the_cache(tmp_path, tiny_set, tiny_backbone):
    train_probe(_config(tmp_path, "a"), imageset=tiny_set, backbone=tiny_backbone)
    other_c = train_probe(_config(tmp_path, "b", C=0.01), imageset=tiny_set, backbone=tiny_backbone)
    assert "head" not in other_c.from_cache and other_c.metrics["head"]["C"] == 0.01
    other_seed = train_probe(_config(tmp_path, "c", seed=1), imageset=tiny_set, backbone=tiny_backbone)
    assert "head" not in other_seed.from_cache
    assert len(_head_entries()) == 3

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 8)).astype(np.float32), np.arange(20) % 2
    key = probe_cache.head_cache_key(X, y, None, None, head="logistic", options={"C": None}, num_classes=2)
    X2 = X.copy()
    X2[3, 5] = np.nextafter(X2[3, 5], np.float32(np.inf))  # one feature, one ulp
    assert probe_cache.head_cache_key(X2, y, None, None, head="logistic", options={"C": None}, num_classes=2) != key
    assert probe_cache.head_cache_key(X, y[::-1].copy(), None, None, head="logistic", options={"C": None}, num_classes=2) != key
    assert probe_cache.head_cache_key(X, y, None, None, head="mlp", options={"C": None}, num_classes=2) != key
    assert probe_cache.head_cache_key(X, y, None, None, head="logistic", options={"C": 1.0}, num_classes=2) != key
    assert probe_cache.head_cache_key(X, y, None, None, head="logistic", options={"C": None}, num_classes=3) != key
    assert probe_cache.head_cache_key(X, y, None, None, head="logistic", options={"C": None}, num_classes=2) == key


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_key"])
def test_corrupt_head_entry_is_recomputed_not_fatal(tmp_path, tiny_set, tiny_backbone, damage):
    cold = train_probe(_config(tmp_path, "cold"), imageset=tiny_set, backbone=tiny_backbone)
    (entry,) = _head_entries()
    good = entry.read_bytes()
    if damage == "garbage":
        entry.write_bytes(b"not a safetensors file")
    elif damage == "truncated":
        entry.write_bytes(good[: len(good) // 2])
    else:  # a valid entry filed under another key must not be trusted
        other = entry.with_name("0" * 64 + ".safetensors")
        other.write_bytes(good)
        assert probe_cache.load_head(FeatureCache().directory, "0" * 64) is None
        entry.write_bytes(good.replace(entry.stem.encode(), b"f" * 64))
    assert probe_cache.load_head(FeatureCache().directory, entry.stem) is None
    again = train_probe(_config(tmp_path, "again"), imageset=tiny_set, backbone=tiny_backbone)
    assert "head" not in again.from_cache
    _same_result(cold, again)
    # The refit rewrote a good entry: the next run hits it.
    assert "head" in train_probe(_config(tmp_path, "third"), imageset=tiny_set, backbone=tiny_backbone).from_cache


def test_warm_rerun_with_pretrained_weights_skips_the_backbone(tmp_path, tiny_set, tiny_backbone):
    from safetensors.torch import save_file

    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.net.state_dict().items()}, str(weights))
    cfg = dict(weights=str(weights), image_size=32)
    cold = train_probe(_config(tmp_path, "cold", **cfg), imageset=tiny_set)
    warm = train_probe(_config(tmp_path, "warm", **cfg), imageset=tiny_set)
    assert cold.metrics["features"]["computed"] == len(tiny_set)
    assert warm.metrics["features"]["engine"] == "cache" and warm.timings["backbone"] == 0.0
    assert not warm.model.is_built  # the network is built only when asked for
    _same_result(cold, warm)
    assert (cold.bundle_path / HEAD_FILE).read_bytes() == (warm.bundle_path / HEAD_FILE).read_bytes()
    # Built on first access: the same classifier as the cold run's.
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(warm.model.network()(x), cold.model.network()(x))
    # Other weights in the same file (new mtime/size): the memo is not trusted, the backbone is built.
    state = {k: v.contiguous() + (0.01 if v.is_floating_point() else 0) for k, v in tiny_backbone.net.state_dict().items()}
    save_file(state, str(weights))
    os.utime(weights, ns=(1, 1))
    changed = train_probe(_config(tmp_path, "changed", **cfg), imageset=tiny_set)
    assert changed.metrics["features"]["computed"] == len(tiny_set)
    assert read_bundle_meta(changed.bundle_path)["backbone"]["weights_sha256"] != read_bundle_meta(cold.bundle_path)["backbone"]["weights_sha256"]


_WARM_CHILD = """
import json, sys
from transferkit.pipeline.train import TrainConfig, train_probe
cfg = TrainConfig(**json.loads(sys.argv[1]))
result = train_probe(cfg)
heavy = sorted(m for m in ("torch", "timm", "sklearn", "matplotlib", "onnxruntime") if m in sys.modules)
print(json.dumps({"heavy": heavy, "metrics": result.metrics}))
"""


def test_warm_rerun_imports_no_torch_and_matches_the_cold_run(tmp_path, tiny_image_folder, tiny_backbone):
    import dataclasses
    import json
    import subprocess
    import sys

    from safetensors.torch import save_file

    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.net.state_dict().items()}, str(weights))
    config = _config(tmp_path, "model", data=str(tiny_image_folder), weights=str(weights), image_size=32, report=True)
    cold = train_probe(config)
    cold_files = read_bundle_meta(cold.bundle_path)["files"]
    proc = subprocess.run([sys.executable, "-c", _WARM_CHILD, json.dumps(dataclasses.asdict(config))],
                          capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warm = json.loads(proc.stdout.strip().splitlines()[-1])
    assert warm["heavy"] == []
    assert warm["metrics"]["features"]["engine"] == "cache"
    strip = lambda m: {k: v for k, v in m.items() if k not in ("timings", "features")}  # noqa: E731
    assert strip(warm["metrics"]) == json.loads(json.dumps(strip(cold.metrics)))
    assert read_bundle_meta(cold.bundle_path)["files"] == cold_files  # the warm run rewrote the same weights
    assert (cold.report_path.parent / "confusion_matrix.png").is_file()
