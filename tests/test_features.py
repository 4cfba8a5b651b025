"""Feature extraction and the on-disk cache: bit-for-bit hits, content keys, resume after a kill."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from transferkit.features import FeatureCache, TorchEngine, create_engine, extract_features, model_cache_key


def _paths(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


class CountingEngine:
    """Wraps an engine and counts the images it computes."""

    name = "counting"

    def __init__(self, inner) -> None:
        self.inner = inner
        self.images = 0

    def __call__(self, pixels):
        self.images += len(pixels)
        return self.inner(pixels)


def test_cache_hit_reproduces_features_bit_for_bit(tiny_image_folder, tiny_backbone):
    paths = _paths(tiny_image_folder)
    first = extract_features(paths, tiny_backbone, engine="torch", batch_size=4)
    assert first.stats["computed"] == len(paths) and first.ok.all()
    engine = CountingEngine(TorchEngine(tiny_backbone, "cpu"))
    second = extract_features(paths, tiny_backbone, engine=engine, batch_size=4)
    assert engine.images == 0 and second.stats["cached"] == len(paths)
    assert second.X.dtype == np.float32
    assert np.array_equal(first.X.view(np.uint32), second.X.view(np.uint32))


def test_features_match_the_backbone(tiny_image_folder, tiny_backbone):
    from transferkit.features.preprocess import decode_uint8, to_tensor01

    paths = _paths(tiny_image_folder)[:5]
    feats = extract_features(paths, tiny_backbone, engine="torch", cache=False)
    pixels = np.stack([decode_uint8(p, tiny_backbone.spec) for p in paths])
    with torch.inference_mode():
        expected = tiny_backbone.forward_features(to_tensor01(pixels)).numpy()
    np.testing.assert_allclose(feats.X, expected, rtol=0, atol=1e-5)


def test_cache_key_is_content_not_path(tmp_path, tiny_image_folder, tiny_backbone):
    paths = _paths(tiny_image_folder)
    extract_features(paths, tiny_backbone, engine="torch")
    # A copy under another name is a hit; an image edited in place is a miss.
    copy = tmp_path / "renamed.jpg"
    shutil.copy(paths[0], copy)
    edited = paths[1]
    from PIL import Image

    Image.new("RGB", (32, 32), (10, 200, 30)).save(edited, quality=95)
    engine = CountingEngine(TorchEngine(tiny_backbone, "cpu"))
    out = extract_features([copy, edited, paths[2]], tiny_backbone, engine=engine)
    assert engine.images == 1 and out.stats["cached"] == 2


def test_different_weights_never_share_entries(tiny_image_folder, tiny_backbone):
    from transferkit.backbones import create_backbone

    other = create_backbone("test_efficientnet", weights="none", image_size=32, seed=1)
    assert other.spec == tiny_backbone.spec  # same spec, other random weights
    assert model_cache_key(other) != model_cache_key(tiny_backbone)
    paths = _paths(tiny_image_folder)[:4]
    a = extract_features(paths, tiny_backbone, engine="torch")
    b = extract_features(paths, other, engine="torch")
    assert b.stats["computed"] == 4 and not np.allclose(a.X, b.X)


def test_unreadable_images_are_reported_not_raised(tmp_path, tiny_image_folder, tiny_backbone):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    paths = [*_paths(tiny_image_folder)[:3], bad]
    out = extract_features(paths, tiny_backbone, engine="torch")
    assert out.ok.tolist() == [True, True, True, False]
    assert "not an image" in out.errors[str(bad)]
    assert np.isnan(out.X[3]).all()


def test_interrupted_extraction_resumes(tiny_image_folder, tiny_backbone):
    paths = _paths(tiny_image_folder)
    reference = extract_features(paths, tiny_backbone, engine="torch", cache=False, batch_size=4)

    def stop_after_two_batches(done: int, total: int) -> None:
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(paths, tiny_backbone, engine="torch", batch_size=4, progress=stop_after_two_batches)
    engine = CountingEngine(TorchEngine(tiny_backbone, "cpu"))
    resumed = extract_features(paths, tiny_backbone, engine=engine, batch_size=4)
    assert resumed.stats["cached"] == 8 and engine.images == len(paths) - 8
    np.testing.assert_array_equal(resumed.X, reference.X)


_KILLED_WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from transferkit.backbones import create_backbone
    from transferkit.features import TorchEngine, extract_features

    backbone = create_backbone("test_efficientnet", weights="none", image_size=32)
    inner = TorchEngine(backbone, "cpu")

    def slow(pixels):
        out = inner(pixels)
        time.sleep(0.4)
        return out

    def report(done, total):
        print(done, flush=True)

    paths = sorted(Path(sys.argv[1]).rglob("*.jpg"))
    extract_features(paths, backbone, engine=slow, batch_size=2, progress=report)
    """
)


def test_killed_extraction_resumes_without_corrupt_entries(tmp_path, tiny_image_folder, tiny_backbone):
    script = tmp_path / "worker.py"
    script.write_text(_KILLED_WORKER)
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_image_folder)], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        for line in proc.stdout:  # wait until a few batches are committed, then kill -9 mid-run
            if int(line) >= 6:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    paths = _paths(tiny_image_folder)
    engine = CountingEngine(TorchEngine(tiny_backbone, "cpu"))
    resumed = extract_features(paths, tiny_backbone, engine=engine, batch_size=4)
    assert 6 <= resumed.stats["cached"] < len(paths)
    assert engine.images == len(paths) - resumed.stats["cached"]
    reference = extract_features(paths, tiny_backbone, engine="torch", cache=False)
    np.testing.assert_allclose(resumed.X, reference.X, rtol=0, atol=1e-6)


def test_onnx_engine_exports_once_and_matches_torch(tiny_image_folder, tiny_backbone):
    from transferkit.features.engines import OnnxEngine

    cache = FeatureCache()
    engine = create_engine(tiny_backbone, "onnxruntime", cache_dir=cache.directory)
    assert isinstance(engine, OnnxEngine) and engine.max_abs_diff < 1e-4
    exported = engine.path.stat().st_mtime_ns
    again = create_engine(tiny_backbone, "onnxruntime", cache_dir=cache.directory)
    assert again.path == engine.path and again.path.stat().st_mtime_ns == exported
    paths = _paths(tiny_image_folder)
    a = extract_features(paths, tiny_backbone, engine=engine, cache=False)
    b = extract_features(paths, tiny_backbone, engine="torch", cache=False)
    assert np.abs(a.X - b.X).max() < 1e-4


def test_onnx_mismatch_falls_back_to_torch_with_warning(monkeypatch, tiny_backbone, caplog):
    import transferkit.features.engines as engines

    monkeypatch.setattr(engines, "ONNX_MAX_ABS_DIFF", -1.0)  # no output can pass the check
    with caplog.at_level("WARNING"):
        engine = create_engine(tiny_backbone, "auto", device="cpu")
    assert any("falling back" in r.getMessage() for r in caplog.records)
    assert isinstance(engine, TorchEngine)
    with pytest.raises(engines.EngineError, match="differs from PyTorch"):
        create_engine(tiny_backbone, "onnxruntime")


def test_a_stale_cached_onnx_graph_is_exported_again(tiny_backbone):
    """A cached graph that loads but no longer matches PyTorch is replaced, not trusted forever."""
    from transferkit.backbones import create_backbone
    from transferkit.features.engines import OnnxEngine, export_onnx

    cache = FeatureCache()
    path = create_engine(tiny_backbone, "onnxruntime", cache_dir=cache.directory).path
    other = create_backbone("test_efficientnet", weights="none", image_size=32, seed=7)
    export_onnx(other, path)  # a loadable graph with the wrong weights under the right name
    engine = create_engine(tiny_backbone, "onnxruntime", cache_dir=cache.directory)
    assert isinstance(engine, OnnxEngine) and engine.max_abs_diff < 1e-4


def test_a_failing_fresh_export_is_not_left_in_the_cache(monkeypatch, tiny_backbone):
    import transferkit.features.engines as engines

    cache = FeatureCache()
    monkeypatch.setattr(engines, "ONNX_MAX_ABS_DIFF", -1.0)
    with pytest.raises(engines.EngineError, match="differs from PyTorch"):
        create_engine(tiny_backbone, "onnxruntime", cache_dir=cache.directory)
    assert not engines.onnx_model_path(tiny_backbone, cache.directory).exists()


def test_unknown_engine_is_refused(tiny_backbone):
    from transferkit.features import EngineError

    with pytest.raises(EngineError, match="auto, torch, onnxruntime"):
        create_engine(tiny_backbone, "tensorrt")


def test_cache_info_and_clear(tiny_image_folder, tiny_backbone):
    paths = _paths(tiny_image_folder)
    extract_features(paths, tiny_backbone, engine="torch")
    cache = FeatureCache()
    info = cache.info()
    assert info.feature_entries == len(paths) and info.models[0]["entries"] == len(paths)
    assert cache.clear() > 0
    assert FeatureCache().info().feature_entries == 0


def test_cache_dir_comes_from_environment(tmp_path, monkeypatch):
    from transferkit.features import default_cache_dir

    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("TRANSFERKIT_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "transferkit"


def test_extraction_decodes_with_the_imagesets_own_options(tmp_path, tiny_backbone):
    """A truncated JPEG kept by ``load_images(allow_truncated=True)`` must not be rejected by extraction."""
    from transferkit.data import load_images
    from transferkit.data.messy import write_bad_files, write_good_images

    write_good_images(tmp_path / "d" / "a")
    write_bad_files(tmp_path / "d" / "b")
    images = load_images(tmp_path / "d", allow_truncated=True)
    assert images.decode_options["allow_truncated"] is True
    truncated = [i for i, p in enumerate(images.paths) if p.name == "truncated.jpg"]
    assert len(truncated) == 1
    kept = extract_features(images.paths, tiny_backbone, engine="torch", cache=False, decode_options=images.decode_options)
    assert kept.ok.all(), kept.errors
    strict = extract_features(images.paths, tiny_backbone, engine="torch", cache=False)
    assert not strict.ok[truncated[0]] and "truncated" in strict.errors[str(images.paths[truncated[0]])]
    # Through the on-disk cache: the lenient run caches every file but the cut-off one, so a later
    # strict run still reports it instead of serving its features.
    lenient = extract_features(images.paths, tiny_backbone, engine="torch", decode_options=images.decode_options)
    assert lenient.ok.all()
    again = extract_features(images.paths, tiny_backbone, engine="torch")
    assert again.stats["cached"] == len(images) - 1 and not again.ok[truncated[0]]
    # subsets keep the options (they share the report)
    assert images.subset(truncated).decode_options == images.decode_options
