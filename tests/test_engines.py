"""Engines chosen by measurement: OpenVINO, the faithfulness rule, the cached decision, precision keys."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from transferkit.features import (
    EngineError,
    FeatureCache,
    create_engine,
    extract_features,
    model_cache_key,
    select,
)
from transferkit.features import engines as engines_mod
from transferkit.features.select import Candidate, choose_engine, judge


def _paths(folder):
    return sorted(folder.rglob("*.jpg"))


class Counting:
    """Counts build_engine calls by name."""

    def __init__(self, monkeypatch) -> None:
        self.built: list[str] = []
        real = engines_mod.build_engine

        def build(name, backbone, **kw):
            self.built.append(name)
            return real(name, backbone, **kw)

        monkeypatch.setattr(engines_mod, "build_engine", build)


def test_decision_is_cached_and_reused(tmp_path, tiny_backbone, monkeypatch):
    counting = Counting(monkeypatch)
    first = choose_engine(tiny_backbone, device="cpu", cache_dir=tmp_path, budget_s=0.05)
    assert not first.cached and counting.built[0] == "torch"
    assert {c.name for c in first.candidates} >= {"torch", "torch-channels-last", "onnxruntime"}
    chosen = next(c for c in first.candidates if c.name == first.name)
    assert chosen.faithful and chosen.allowed and chosen.precision == "fp32" and first.reason
    files = list((tmp_path / "engines").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["name"] == first.name

    counting.built.clear()
    again = choose_engine(tiny_backbone, device="cpu", cache_dir=tmp_path, budget_s=0.05)
    assert again.cached and again.name == first.name and again.images_per_s == first.images_per_s
    assert counting.built == []  # nothing measured again
    engine = create_engine(tiny_backbone, "auto", cache_dir=tmp_path, device="cpu")
    assert counting.built == [first.name] and engine.name == first.name


def test_no_cache_dir_writes_no_decision(tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.chdir(tmp_path)
    choice = choose_engine(tiny_backbone, device="cpu", cache_dir=None, budget_s=0.05)
    assert not choice.cached and not list(tmp_path.rglob("*.json"))


@pytest.mark.filterwarnings("ignore:falling back to the PyTorch engine")
def test_an_unfaithful_candidate_is_rejected_however_fast(tmp_path, tiny_backbone, monkeypatch):
    real = engines_mod.build_engine

    class Perturbed:
        """Instant, and off by 1e-2 on every feature: fast enough to win, but wrong."""

        name = "onnxruntime"

        def __init__(self, inner) -> None:
            self.inner = inner
            self.memo = {}

        def __call__(self, pixels):
            key = pixels.tobytes()[:4096]
            if key not in self.memo:
                self.memo[key] = self.inner(pixels) + 1e-2
            return self.memo[key]

    def build(name, backbone, **kw):
        engine = real(name, backbone, **kw)
        return Perturbed(engine) if name == "onnxruntime" else engine

    monkeypatch.setattr(engines_mod, "build_engine", build)
    choice = choose_engine(tiny_backbone, device="cpu", cache_dir=tmp_path, budget_s=0.05)
    bad = next(c for c in choice.candidates if c.name == "onnxruntime")
    assert not bad.faithful and "differs from fp32 torch" in bad.note
    assert choice.name != "onnxruntime"


def test_feature_cache_key_differs_by_precision(tiny_image_folder, tiny_backbone):
    assert model_cache_key(tiny_backbone) == model_cache_key(tiny_backbone, "fp32")  # fp32 keys unchanged
    assert len({model_cache_key(tiny_backbone, p) for p in ("fp32", "bf16", "fp16")}) == 3
    paths = _paths(tiny_image_folder)[:6]
    cache = FeatureCache()
    fp32 = extract_features(paths, tiny_backbone, engine="torch", cache=cache)
    bf16 = extract_features(paths, tiny_backbone, engine="torch", precision="bf16", cache=cache, device="cpu")
    assert bf16.model_key != fp32.model_key and bf16.stats["precision"] == "bf16"
    assert bf16.stats["computed"] == len(paths)  # not served the fp32 entries
    again = extract_features(paths, tiny_backbone, engine="torch", precision="bf16", cache=cache, device="cpu")
    assert again.stats["cached"] == len(paths)
    np.testing.assert_array_equal(again.X, bf16.X)


def test_without_openvino_the_selection_still_works(tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    choice = choose_engine(tiny_backbone, device="cpu", cache_dir=tmp_path, precision="bf16", budget_s=0.05)
    for c in choice.candidates:
        if c.name.startswith("openvino"):
            assert c.note.startswith("not installed") and c.images_per_s is None
    assert not choice.name.startswith("openvino")
    with pytest.raises(EngineError, match="openvino is not installed"):
        create_engine(tiny_backbone, "openvino", cache_dir=tmp_path)


def test_openvino_engine_matches_torch(tmp_path, tiny_image_folder, tiny_backbone):
    pytest.importorskip("openvino")
    engine = create_engine(tiny_backbone, "openvino", cache_dir=tmp_path)
    assert engine.name == "openvino" and engine.precision == "fp32" and engine.max_abs_diff < 1e-4
    assert engine.path == engines_mod.onnx_model_path(tiny_backbone, tmp_path)  # the ONNX Runtime engine's export
    paths = _paths(tiny_image_folder)
    a = extract_features(paths, tiny_backbone, engine=engine, cache=False, batch_size=5)
    b = extract_features(paths, tiny_backbone, engine="torch", cache=False)
    assert np.abs(a.X - b.X).max() < 1e-4 and a.stats["precision"] == "fp32"
    bf16 = create_engine(tiny_backbone, "openvino", cache_dir=tmp_path, precision="bf16")
    assert bf16.name == "openvino-bf16" and bf16.precision == "bf16" and bf16.min_cosine > 0.98


def test_openvino_without_a_cache_leaves_nothing_behind(tiny_backbone):
    pytest.importorskip("openvino")
    engine = create_engine(tiny_backbone, "openvino", cache_dir=None)
    assert not engine.path.exists()
    assert engine(engines_mod.synthetic_probe_pixels(tiny_backbone.spec, 3)).shape == (3, tiny_backbone.num_features)


def _judged(precision_asked, *, cand_precision="bf16", noise=1e-3, top1_same=True):
    g = np.random.default_rng(0)
    ref = g.uniform(0, 3, (32, 64)).astype(np.float32)
    got = ref + g.normal(0, noise, ref.shape).astype(np.float32)
    top = np.arange(32)
    return judge(Candidate("x", cand_precision), ref, got, ref_top1=top, got_top1=top if top1_same else top[::-1],
                 precision_asked=precision_asked)


def test_reduced_precision_only_where_allowed():
    assert not _judged("fp32").allowed and "--precision bf16" in _judged("fp32").note
    assert _judged("bf16").faithful and _judged("bf16").allowed
    assert _judged("auto").allowed  # close, and the same top-1 everywhere
    assert not _judged("auto", top1_same=False).allowed
    assert not _judged("bf16", noise=0.5).faithful  # too far even when asked for
    fp32 = _judged("fp32", cand_precision="fp32", noise=1e-6)
    assert fp32.faithful and fp32.allowed
    assert not _judged("fp32", cand_precision="fp32", noise=1e-3).faithful


def test_plans_and_bad_combinations():
    assert engines_mod.plan_engine("openvino", "bf16", "cpu") == ("openvino-bf16", "bf16")
    assert engines_mod.plan_engine("torch", "fp32", "cpu") == ("torch", "fp32")
    assert engines_mod.plan_engine("torch", "fp16", "cuda") == ("torch-cuda-fp16", "fp16")
    with pytest.raises(EngineError, match="fp32 only"):
        engines_mod.plan_engine("onnxruntime", "bf16", "cpu")
    with pytest.raises(EngineError, match="unknown precision"):
        engines_mod.plan_engine("auto", "int4", "cpu")


def test_candidates_follow_the_cpu():
    amx = {"model": "x", "flags": ["avx512f", "amx_bf16"]}
    avx2 = {"model": "y", "flags": ["avx2", "fma"]}
    names = lambda cpu, p: [n for n, _ in select.candidate_names("cpu", precision=p, cpu=cpu)]
    assert "openvino-bf16" in names(amx, "bf16") and "openvino-bf16" not in names(avx2, "bf16")
    assert "openvino-bf16" not in names(amx, "fp32")  # not even measured when fp32 is asked
    assert [n for n, _ in select.candidate_names("cuda", precision="fp16")] == ["torch-cuda", "torch-cuda-fp16"]


def test_engines_command_prints_the_measured_table(capsys):
    from transferkit.cli.main import main

    argv = ["engines", "--backbone", "test_efficientnet", "--weights", "none", "--image-size", "32", "--format", "json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    names = {c["name"] for c in out["candidates"]}
    assert out["name"] in names and "torch" in names and out["reason"]
    assert all("images_per_s" in c and "faithful" in c for c in out["candidates"])
    assert main(argv[:-2]) == 0  # the table; the second run reads the cached decision
    assert "cached decision" in capsys.readouterr().out


def test_a_cached_decision_that_no_longer_builds_is_measured_again(tmp_path, tiny_backbone):
    first = choose_engine(tiny_backbone, device="cpu", cache_dir=tmp_path, budget_s=0.05)
    path = next((tmp_path / "engines").glob("*.json"))
    data = json.loads(path.read_text())
    data["name"] = "an-engine-gone-since"  # e.g. its runtime was uninstalled with the same versions recorded
    path.write_text(json.dumps(data))
    engine = create_engine(tiny_backbone, "auto", cache_dir=tmp_path, device="cpu")
    assert engine.name in {c.name for c in first.candidates}
    assert json.loads(path.read_text())["name"] == engine.name  # the fresh decision replaced the stale one


def test_the_tables_decision_serves_auto_and_not_the_other_way_round(tmp_path, tiny_backbone, monkeypatch):
    counting = Counting(monkeypatch)
    narrow = choose_engine(tiny_backbone, device="cpu", cache_dir=tmp_path, budget_s=0.05)
    full = choose_engine(tiny_backbone, device="cpu", cache_dir=tmp_path, budget_s=0.05, include_all=True)
    assert not full.cached or {c.name for c in full.candidates} == {c.name for c in narrow.candidates}
    counting.built.clear()
    again = choose_engine(tiny_backbone, device="cpu", cache_dir=tmp_path, budget_s=0.05)
    assert again.cached and counting.built == []


def test_an_fp32_decision_serves_other_weights_of_the_same_network_but_reduced_precision_does_not(tmp_path, monkeypatch):
    """A fine-tuned copy of a backbone reuses its fp32 decision (speed is the architecture's; each build is
    checked against PyTorch with its own weights); a reduced-precision decision is judged on the weights."""
    from transferkit.backbones import create_backbone

    a = create_backbone("test_efficientnet", weights="none", image_size=32, seed=0)
    b = create_backbone("test_efficientnet", weights="none", image_size=32, seed=1)
    assert engines_mod.weights_digest(a) != engines_mod.weights_digest(b)
    counting = Counting(monkeypatch)
    first = choose_engine(a, device="cpu", cache_dir=tmp_path, budget_s=0.05)
    counting.built.clear()
    again = choose_engine(b, device="cpu", cache_dir=tmp_path, budget_s=0.05)
    assert again.cached and again.name == first.name and counting.built == []
    engine = create_engine(b, "auto", cache_dir=tmp_path, device="cpu")
    x = engines_mod.synthetic_probe_pixels(b.spec, 3)
    assert np.abs(engine(x) - engines_mod.TorchEngine(b, "cpu")(x)).max() < 1e-4  # b's own weights, not a's
    key = dict(device="cpu", machine=select.machine_description("cpu"), probe=select.probe_pixels(a.spec))
    assert select.decision_key(a, precision="auto", **key) != select.decision_key(b, precision="auto", **key)
