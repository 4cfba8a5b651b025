"""Reliability: unusable caches never stop a run, disk errors name the path and the cause, bundles
are swapped in whole and refuse to delete what transferkit did not write, and nonsense in a
bundle.json is refused on load."""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from transferkit.core.errors import BundleError, DataError, TransferkitError
from transferkit.features import select


@pytest.fixture(autouse=True)
def _fresh_cache_warnings():
    from transferkit.core import paths

    paths._forget_warnings()
    yield
    paths._forget_warnings()


def _paths(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _assert_one_cache_warning(caplog, folder) -> str:
    msgs = _warnings(caplog)
    assert len(msgs) == 1, msgs
    msg = msgs[0]
    assert str(folder) in msg and "TRANSFERKIT_CACHE_DIR" in msg and "--no-cache" in msg, msg
    assert "Error" not in msg, msg  # no raw exception class names
    return msg


# ------------------------------------------------------------------------------------------------
# One cache root


def test_every_cache_user_shares_one_cache_root(tmp_path, monkeypatch):
    from transferkit.core.paths import cache_root
    from transferkit.data import verify
    from transferkit.data.sources import cache as sources_cache
    from transferkit.features import cache as features_cache

    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", "  ")  # blank: the default, not a folder named "  "
    default = Path.home() / ".cache" / "transferkit"
    assert cache_root() == default
    assert features_cache.default_cache_dir() == default
    assert verify.default_cache_dir() == default
    assert sources_cache.cache_root() == default
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path / "c"))
    assert features_cache.default_cache_dir() == verify.default_cache_dir() == sources_cache.cache_root() == tmp_path / "c"


# ------------------------------------------------------------------------------------------------
# The feature cache


def test_a_file_where_the_cache_folder_should_be_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, caplog,
                                                                                tiny_image_folder, tiny_backbone):
    from transferkit.features import extract_features

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(blocker))
    paths = _paths(tiny_image_folder)
    with caplog.at_level(logging.WARNING):
        feats = extract_features(paths, tiny_backbone, engine="torch", batch_size=4, cache=True)
    assert feats.ok.all() and feats.stats["computed"] == len(paths)
    _assert_one_cache_warning(caplog, blocker)


class _FullDiskConnection:
    """A real SQLite connection whose writes fail as on a full disk."""

    def __init__(self, conn):
        self._conn = conn

    def _check(self, sql):
        if sql.lstrip().upper().startswith(("INSERT", "CREATE", "PRAGMA")):
            raise sqlite3.OperationalError("database or disk is full")

    def execute(self, sql, *args):
        self._check(sql)
        return self._conn.execute(sql, *args)

    def executemany(self, sql, *args):
        self._check(sql)
        return self._conn.executemany(sql, *args)

    def executescript(self, sql):
        self._check(sql)
        return self._conn.executescript(sql)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._conn.__exit__(*exc)

    def close(self):
        self._conn.close()


@pytest.mark.parametrize("fail_at", ["open", "write"])
def test_a_full_cache_disk_warns_once_and_the_run_goes_on(monkeypatch, caplog, tiny_image_folder, tiny_backbone, fail_at):
    import transferkit.features.cache as fc
    from transferkit.features import FeatureCache, extract_features

    paths = _paths(tiny_image_folder)
    cache = FeatureCache()
    if fail_at == "write":  # the database opens, then the disk fills up
        cache._conn()
        real = cache._local.conn
        cache._local.conn = _FullDiskConnection(real)
    else:
        real_connect = sqlite3.connect
        monkeypatch.setattr(fc.sqlite3, "connect", lambda *a, **k: _FullDiskConnection(real_connect(*a, **k)))
    with caplog.at_level(logging.WARNING):
        feats = extract_features(paths, tiny_backbone, engine="torch", batch_size=4, cache=cache)
        again = extract_features(paths, tiny_backbone, engine="torch", batch_size=4, cache=cache)
    assert feats.ok.all() and again.ok.all()
    np.testing.assert_array_equal(feats.X, again.X)
    msg = _assert_one_cache_warning(caplog, cache.directory)
    assert "no space left on device" in msg


def test_a_feature_cache_that_fails_reports_itself_unavailable(tmp_path):
    from transferkit.features import FeatureCache

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert FeatureCache(tmp_path / "ok").available
    broken = FeatureCache(blocker)
    assert not broken.available
    assert broken.get_many("k", ["a"]) == {} and broken.put_many("k", [("a", np.zeros(3, np.float32))]) == 0
    assert broken.info().feature_entries == 0
    assert broken.clear() == 0  # `transferkit cache clear`: nothing there to clear, not a raw error


# ------------------------------------------------------------------------------------------------
# The ONNX export cache


def test_no_cache_exports_onnx_to_a_temporary_folder_and_writes_nothing_under_the_cache(monkeypatch, tiny_image_folder,
                                                                                        tiny_backbone):
    from transferkit.core.paths import cache_root
    from transferkit.features import extract_features
    from transferkit.features.engines import OnnxEngine
    from transferkit.features.select import create_engine

    engine = create_engine(tiny_backbone, "onnxruntime", cache_dir=None)
    assert isinstance(engine, OnnxEngine) and engine.max_abs_diff < 1e-4
    feats = extract_features(_paths(tiny_image_folder)[:4], tiny_backbone, engine="onnxruntime", cache=False)
    assert feats.ok.all()
    assert not cache_root().exists()
    assert not engine.path.exists()  # the temporary export is gone once the session holds it


def test_an_unwritable_onnx_cache_exports_to_a_temporary_folder_with_one_warning(tmp_path, caplog, tiny_backbone):
    from transferkit.features.engines import OnnxEngine
    from transferkit.features.select import create_engine

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING):
        engine = create_engine(tiny_backbone, "onnxruntime", cache_dir=blocker)
    assert isinstance(engine, OnnxEngine)
    _assert_one_cache_warning(caplog, blocker)


def test_a_full_disk_during_onnx_export_falls_back_to_a_temporary_folder(tmp_path, monkeypatch, caplog, tiny_backbone):
    from transferkit.features import engines

    cache_dir = tmp_path / "cache"
    real_export = engines._export_to

    def export(backbone, tmp):
        if str(tmp).startswith(str(cache_dir)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_export(backbone, tmp)

    monkeypatch.setattr(engines, "_export_to", export)
    with caplog.at_level(logging.WARNING):
        engine = select.create_engine(tiny_backbone, "onnxruntime", cache_dir=cache_dir)
    assert isinstance(engine, engines.OnnxEngine)
    assert "no space left on device" in _assert_one_cache_warning(caplog, cache_dir)
    assert not any((cache_dir / "onnx").glob("*.tmp"))


def test_a_temp_file_left_by_a_killed_export_is_cleaned_up_later(tiny_backbone):
    from transferkit.features import FeatureCache
    from transferkit.features.engines import onnx_model_path

    cache = FeatureCache()
    folder = onnx_model_path(tiny_backbone, cache.directory).parent
    folder.mkdir(parents=True)
    stale = folder / ".x.onnx.abc123.tmp"
    stale.write_bytes(b"half an export")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    fresh = folder / ".y.onnx.def456.tmp"  # maybe another run's export in progress: left alone
    fresh.write_bytes(b"in progress")
    select.create_engine(tiny_backbone, "onnxruntime", cache_dir=cache.directory)
    assert not stale.exists() and fresh.exists()


def test_falling_back_to_the_torch_engine_warns_once_without_a_source_line(monkeypatch, caplog, tiny_backbone):
    from transferkit.features import engines

    monkeypatch.setattr(engines, "ONNX_MAX_ABS_DIFF", -1.0)  # no output can pass the check
    with warnings.catch_warnings(record=True) as raised, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        engine = select.create_engine(tiny_backbone, "auto", device="cpu")
    assert isinstance(engine, engines.TorchEngine)
    assert [str(w.message) for w in raised if issubclass(w.category, RuntimeWarning)] == []
    msgs = _warnings(caplog)
    assert len(msgs) == 1 and "falling back to the PyTorch engine" in msgs[0], msgs


# ------------------------------------------------------------------------------------------------
# The verify cache


def _folder_of_images(root: Path, n: int = 4) -> list[Path]:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = root / f"{i}.png"
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(p)
        out.append(p)
    return out


def test_an_unusable_verify_cache_warns_once_and_checks_go_on(tmp_path, caplog):
    from transferkit.data.verify import verify_files

    files = _folder_of_images(tmp_path / "d")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING):
        checks, _ = verify_files(files, root=tmp_path / "d", workers=1, cache_dir=blocker)
        checks2, _ = verify_files(files, root=tmp_path / "d", workers=1, cache_dir=blocker)
    assert all(c.ok for c in checks + checks2)
    _assert_one_cache_warning(caplog, blocker)


def test_a_full_disk_under_the_verify_cache_warns_once(tmp_path, monkeypatch, caplog):
    from transferkit.data import verify

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(verify.tempfile, "mkstemp", full)
    files = _folder_of_images(tmp_path / "d")
    with caplog.at_level(logging.WARNING):
        checks, _ = verify.verify_files(files, root=tmp_path / "d", workers=1)
    assert all(c.ok for c in checks)
    msg = _assert_one_cache_warning(caplog, verify.default_cache_dir())
    assert "no space left on device" in msg


# ------------------------------------------------------------------------------------------------
# Writing bundles: disk errors, the report inside the swap, the manifest


def _write(path, spec, *, extras=None, classes=("a", "b", "c"), bias: float = 0.0, backbone=None):
    """A bundle written the way a warm rerun writes it (numpy weights); loadable when given the backbone."""
    from transferkit.classifier.bundle_files import (
        BACKBONE_FILE,
        HEAD_FILE,
        save_numpy_weights,
        write_bundle_dir,
    )

    d = spec.num_features
    state = {"weight": np.zeros((len(classes), d), np.float32), "bias": np.full(len(classes), bias, np.float32)}
    head_cfg = {"type": "sequential", "layers": [{"type": "linear", "in_features": d, "out_features": len(classes), "bias": True}]}
    weights = {HEAD_FILE: save_numpy_weights(state)}
    if backbone is not None:
        weights[BACKBONE_FILE] = save_numpy_weights({k: v.detach().numpy().copy() for k, v in backbone.net.state_dict().items()})
    return write_bundle_dir(path, spec=spec, head_cfg=head_cfg, weights=weights, class_names=list(classes),
                            include_backbone=backbone is not None, extras=extras)


def _write_report_files(folder: Path, names=("report.html", "metrics.json")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(f"{name} of this model")


@pytest.fixture
def spec(tiny_backbone):
    return tiny_backbone.spec


def test_a_full_disk_while_writing_the_weights_names_the_file_and_the_cause(tmp_path, monkeypatch, spec):
    import safetensors.numpy
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    with pytest.raises(BundleError) as info:
        _write(tmp_path / "m", spec)
    msg = str(info.value)
    assert f"no space left on device writing {tmp_path / 'm' / 'head.safetensors'}" in msg, msg
    assert "SafetensorError" not in msg and "IoError" not in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # no temp folder left


def test_a_full_disk_while_writing_bundle_json_names_the_file_and_the_cause(tmp_path, monkeypatch, spec):
    import transferkit.classifier.bundle_files as bf

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bf.json, "dump", full)
    with pytest.raises(BundleError, match=f"no space left on device writing {tmp_path / 'm' / 'bundle.json'}"):
        _write(tmp_path / "m", spec)
    assert list(tmp_path.iterdir()) == []


def test_the_report_is_written_inside_the_bundle_before_the_swap(tmp_path, spec):
    from transferkit.classifier.bundle import read_bundle_meta

    out = tmp_path / "m"
    _write(out, spec, extras=lambda d: _write_report_files(d / "report"))
    seen_during_extras = {}

    def extras(tmp_dir: Path) -> None:
        seen_during_extras["old report still in place"] = (out / "report" / "report.html").read_text()
        assert tmp_dir.parent == out.parent and tmp_dir != out
        _write_report_files(tmp_dir / "report", ("report.html", "metrics.json", "confusion_matrix.png"))

    written = _write(out, spec, extras=extras, bias=1.0)
    assert written == out and written.extras_error is None
    assert seen_during_extras["old report still in place"] == "report.html of this model"
    assert sorted(p.name for p in (out / "report").iterdir()) == ["confusion_matrix.png", "metrics.json", "report.html"]
    manifest = read_bundle_meta(out)["manifest"]
    assert {"head.safetensors", "report/report.html", "report/metrics.json", "report/confusion_matrix.png"} <= set(manifest)
    assert manifest["report/metrics.json"] == (out / "report" / "metrics.json").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_when_only_the_report_fails_the_bundle_is_kept_and_the_caller_told(tmp_path, caplog, spec, tiny_backbone):
    from transferkit.classifier.bundle import load_bundle

    def extras(tmp_dir: Path) -> None:
        _write_report_files(tmp_dir / "report", ("metrics.json",))
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_dir / "report" / "report.html"))

    with caplog.at_level(logging.WARNING):
        written = _write(tmp_path / "m", spec, extras=extras, backbone=tiny_backbone)
    assert written == tmp_path / "m"
    assert "no space left on device" in written.extras_error
    assert f"{tmp_path / 'm' / 'report' / 'report.html'}" in written.extras_error  # the final path, not the temp one
    assert not (tmp_path / "m" / "report").exists()  # no half report
    msgs = _warnings(caplog)
    assert len(msgs) == 1 and "kept" in msgs[0] and "report" in msgs[0], msgs
    load_bundle(tmp_path / "m")


def test_a_user_file_inside_a_bundles_report_folder_is_never_deleted(tmp_path, spec):
    out = tmp_path / "m"
    _write(out, spec, extras=lambda d: _write_report_files(d / "report"))
    mine = out / "report" / "my_analysis.txt"
    mine.write_text("mine")
    with pytest.raises(BundleError) as info:
        _write(out, spec)
    msg = str(info.value)
    assert "report/my_analysis.txt" in msg and "\n" not in msg, msg
    assert mine.read_text() == "mine"
    nested = out / "report" / "deeper" / "notes.md"
    mine.unlink()
    nested.parent.mkdir()
    nested.write_text("mine too")
    with pytest.raises(BundleError, match="report/deeper/notes.md"):
        _write(out, spec)
    assert nested.read_text() == "mine too"


def test_an_evaluation_written_later_is_replaced_but_a_user_file_beside_it_is_not(tmp_path, spec):
    from transferkit.evaluate.metrics import evaluate_probabilities
    from transferkit.evaluate.report import write_report

    out = tmp_path / "m"
    _write(out, spec)
    ev = evaluate_probabilities(np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]]), np.array([0, 2]), ["a", "b", "c"])
    write_report(ev, out / "evaluation")
    write_report(ev, out / "evaluation" / "again")  # `evaluate --out m/evaluation/again`
    _write(out, spec)  # everything there was written by transferkit: replaced
    assert not (out / "evaluation").exists()
    write_report(ev, out / "evaluation")
    (out / "evaluation" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="evaluation/notes.txt"):
        _write(out, spec)


def _make_old_release_bundle(out: Path, spec, backbone=None) -> None:
    """A bundle as the previous release wrote it: no manifest."""
    _write(out, spec, backbone=backbone)
    meta_file = out / "bundle.json"
    meta = json.loads(meta_file.read_text())
    del meta["manifest"]
    meta_file.write_text(json.dumps(meta))


def test_a_bundle_of_the_previous_release_stays_loadable_and_replaceable(tmp_path, spec, tiny_backbone):
    from transferkit.classifier.bundle import load_bundle

    out = tmp_path / "m"
    _make_old_release_bundle(out, spec, tiny_backbone)
    _write_report_files(out / "report", ("report.html", "metrics.json", "confusion_matrix.png", "calibration.png", "curves.png"))
    _write_report_files(out / "evaluation", ("report.html", "metrics.json", "mistakes_01.jpg"))
    load_bundle(out)
    _write(out, spec)
    assert not (out / "report").exists() and "manifest" in json.loads((out / "bundle.json").read_text())


@pytest.mark.parametrize("foreign", ["report/my_analysis.txt", "evaluation/sub/metrics.json", "my_notes.txt", "extra/x.bin"])
def test_a_bundle_of_the_previous_release_with_user_files_is_refused(tmp_path, spec, foreign):
    out = tmp_path / "m"
    _make_old_release_bundle(out, spec)
    _write_report_files(out / "report")
    (out / foreign).parent.mkdir(parents=True, exist_ok=True)
    (out / foreign).write_text("mine")
    with pytest.raises(BundleError, match=foreign):
        _write(out, spec)
    assert (out / foreign).read_text() == "mine"


# ------------------------------------------------------------------------------------------------
# Nonsense in bundle.json is refused on load; non-finite outputs are never a prediction


def _tamper(out: Path, edit) -> None:
    meta_file = out / "bundle.json"
    meta = json.loads(meta_file.read_text())
    edit(meta)
    meta_file.write_text(json.dumps(meta))  # json.dumps writes NaN as NaN, which json.loads reads back


def _set_backbone(key, value):
    return lambda meta: meta["backbone"].__setitem__(key, value)


@pytest.mark.parametrize("edit,words", [
    (_set_backbone("std", [0, 0, 0]), "std"),
    (_set_backbone("std", [0.2, -0.1, 0.2]), "std"),
    (_set_backbone("std", [0.2, float("inf"), 0.2]), "std"),
    (_set_backbone("mean", [0.5]), "mean"),
    (_set_backbone("mean", [0.5, float("nan"), 0.5]), "mean"),
    (_set_backbone("mean", ["a", 0, 0]), "mean"),
    (_set_backbone("input_size", [3, 100000, 100000]), "input size"),
    (_set_backbone("input_size", [3, 2, 2]), "input size"),
    (_set_backbone("input_size", [3, 224]), "input size"),
    (_set_backbone("crop_pct", 0), "crop_pct"),
    (_set_backbone("crop_pct", 7.5), "crop_pct"),
    (_set_backbone("num_features", -4), "num_features"),
    (lambda meta: meta["backbone"].pop("mean"), "mean"),
    (lambda meta: meta.__setitem__("class_names", ["a", "a", "b"]), "unique"),
    (lambda meta: meta.__setitem__("class_names", ["a", " ", "b"]), "empty"),
    (lambda meta: meta.__setitem__("class_names", ["a", "b"]), "3 outputs but 2 class names"),
    (lambda meta: meta["head"]["layers"][0].__setitem__("in_features", 7), "features"),
])
def test_a_tampered_bundle_json_is_one_bundle_error(tmp_path, spec, tiny_backbone, edit, words):
    from transferkit.classifier.bundle import load_bundle, read_bundle_meta

    out = tmp_path / "m"
    _write(out, spec, backbone=tiny_backbone)
    _tamper(out, edit)
    for load in (read_bundle_meta, load_bundle):
        with pytest.raises(BundleError) as info:
            load(out)
        msg = str(info.value)
        assert words in msg and "\n" not in msg and "re-create" in msg, msg
        assert "Error" not in msg.replace("BundleError", ""), msg  # no raw exception names


def test_backbone_spec_validates_what_it_loads(spec):
    from transferkit.backbones.spec import BackboneSpec

    assert BackboneSpec.from_dict(spec.to_dict()) == spec
    assert spec.validate() is spec
    bad = {**spec.to_dict(), "std": [0, 0, 0], "input_size": [3, 100000, 100000]}
    with pytest.raises(ValueError) as info:
        BackboneSpec.from_dict(bad)
    assert isinstance(info.value, TransferkitError)
    assert "std" in str(info.value) and "input size" in str(info.value)


def test_predict_on_a_bundle_with_zero_std_is_refused_not_printed_as_nan(tmp_path, capsys, spec, tiny_backbone, tiny_image_folder):
    from transferkit.cli.main import main

    out = tmp_path / "m"
    _write(out, spec, backbone=tiny_backbone)
    _tamper(out, _set_backbone("std", [0, 0, 0]))
    code = main(["predict", str(out), str(_paths(tiny_image_folder)[0]), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 1 and "nan" not in captured.out.lower()
    assert "std" in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err


def test_non_finite_model_outputs_are_an_error_not_a_prediction():
    import torch

    from transferkit.evaluate.metrics import (
        evaluate_probabilities,
        probabilities_from_features,
    )

    head = torch.nn.Linear(4, 3)
    with torch.no_grad():
        head.weight.fill_(float("nan"))
    X = np.ones((5, 4), np.float32)
    with pytest.raises(TransferkitError, match="non-finite") as info:
        probabilities_from_features(head, X)
    assert "5 of 5" in str(info.value)
    probs = np.full((2, 3), 1 / 3)
    probs[1, 0] = np.nan
    with pytest.raises(TransferkitError, match="non-finite"):
        evaluate_probabilities(probs, np.array([0, 1]), ["a", "b", "c"])


# ------------------------------------------------------------------------------------------------
# Smaller findings


def test_a_pickled_weights_file_is_refused_without_torchs_warning(tmp_path):
    import pickle

    from transferkit.backbones.weights import load_state_dict
    from transferkit.core.errors import WeightsError

    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"weight": Path("not a tensor")}, protocol=4))
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        with pytest.raises(WeightsError, match="refused"):
            load_state_dict(bad)
    assert [str(w.message) for w in raised] == []


def test_the_checkpoint_read_error_is_not_cut_mid_word(tmp_path, monkeypatch):
    import torch

    from transferkit.finetune.runtime import load_checkpoint

    original = "PytorchStreamReader failed reading zip archive: " + " ".join(f"word{i}" for i in range(80))

    def broken(*a, **k):
        raise RuntimeError(original)

    monkeypatch.setattr(torch, "load", broken)
    with pytest.raises(TransferkitError) as info:
        load_checkpoint(tmp_path / "ckpt.pt")
    msg = str(info.value)
    inner = msg[msg.index("(") + 1 : msg.rindex(")")]
    assert set(inner.split()) <= set(original.split()) | {"..."}, inner  # whole words only
    assert inner.startswith("PytorchStreamReader failed") and len(msg) < 400
    assert "RuntimeError" not in msg and msg.endswith("delete it to start over")


def _class_folders(root: Path, classes=("cat", "dog"), n: int = 3) -> Path:
    for c in classes:
        _folder_of_images(root / c, n)
    return root


def test_an_unreadable_class_folder_is_named_with_its_reason(tmp_path, monkeypatch):
    from transferkit.data import formats, load_images

    root = _class_folders(tmp_path / "d", ("cat", "dog", "bird"))
    locked = root / "dog"
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(os.fspath(path)) == locked:  # what chmod 000 does to a user who is not root
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(formats.os, "scandir", scandir)
    images = load_images(root, workers=1)
    assert images.class_names == ["bird", "cat"]
    rejected = {r.path: r.reason for r in images.report.rejected}
    assert str(locked) in rejected, rejected
    assert "cannot read folder" in rejected[str(locked)] and "permission denied" in rejected[str(locked)]


def test_an_unreadable_dataset_folder_is_one_data_error(tmp_path, monkeypatch):
    from transferkit.data import load_images

    root = _class_folders(tmp_path / "d")
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == root:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(DataError, match=f"cannot read the folder {root}.*permission denied"):
        load_images(root, workers=1)


def _csv(tmp_path: Path, rows: list[str]) -> Path:
    _folder_of_images(tmp_path / "img", 4)
    f = tmp_path / "labels.csv"
    f.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return f


def test_a_csv_row_with_an_unknown_split_is_an_error_naming_the_row(tmp_path):
    from transferkit.data import load_images

    f = _csv(tmp_path, ["img/0.png,cat,train", "img/1.png,dog,trian", "img/2.png,dog,test"])
    with pytest.raises(DataError) as info:
        load_images(f, workers=1)
    msg = str(info.value)
    assert "line 3" in msg and "'trian'" in msg and "train, val, test" in msg and str(f) in msg, msg


def test_csv_rows_with_a_missing_file_or_an_empty_label_are_reported_with_a_reason(tmp_path):
    from transferkit.data import load_images

    f = _csv(tmp_path, ["img/0.png,cat,train", "img/1.png,dog,train", "img/gone.png,dog,train", "img/2.png,,train",
                        "img/3.png,cat,test"])
    images = load_images(f, workers=1)
    assert len(images) == 3
    assert [Path(p).name for p in images.report.missing] == ["gone.png"]  # listed, absent: the report's missing list
    rejected = {r.path: r.reason for r in images.report.rejected}
    assert rejected == {f"{f}:5": "CSV row has an empty path or label"}


def test_report_plots_in_an_unusable_cache_add_no_second_warning(tmp_path, caplog):
    from transferkit.evaluate.metrics import evaluate_probabilities
    from transferkit.evaluate.report import write_report

    blocker = tmp_path / "file"
    blocker.write_text("x")
    ev = evaluate_probabilities(np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 1]), ["a", "b"])
    with caplog.at_level(logging.WARNING):
        write_report(ev, tmp_path / "r", png_cache=blocker)  # two plots, one folder
    assert (tmp_path / "r" / "report.html").is_file()
    _assert_one_cache_warning(caplog, blocker)


def test_a_report_that_cannot_be_written_names_the_file_and_the_cause(tmp_path, monkeypatch, spec):
    import transferkit.evaluate.report as report
    from transferkit.evaluate.metrics import evaluate_probabilities

    ev = evaluate_probabilities(np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 1]), ["a", "b"])
    real = report.atomic_write_bytes

    def full(path, data):
        if Path(path).name == "report.html":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(report, "atomic_write_bytes", full)
    with pytest.raises(TransferkitError, match=f"no space left on device writing {tmp_path / 'ev' / 'report.html'}"):
        report.write_report(ev, tmp_path / "ev")
    # Inside a bundle being written: the message names where the file was going, not the temp folder.
    written = _write(tmp_path / "m", spec, extras=lambda d: report.write_report(ev, d / "report"))
    assert written.extras_error.startswith(f"no space left on device writing {tmp_path / 'm' / 'report' / 'report.html'}")
    assert not (tmp_path / "m" / "report").exists()


def test_every_export_removes_what_killed_exports_left(tmp_path, tiny_backbone):
    from transferkit.features.engines import export_onnx

    folder = tmp_path / "onnx"
    folder.mkdir()
    stale = folder / ".g.onnx.old.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    export_onnx(tiny_backbone, folder / "g.onnx")
    assert not stale.exists() and (folder / "g.onnx").is_file()


def test_training_curves_are_in_their_folders_manifest(tmp_path):
    from transferkit.classifier.bundle_files import read_folder_manifest
    from transferkit.evaluate.report import training_curves_png

    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "train_acc": 0.5, "val_acc": 0.4},
               {"epoch": 2, "train_loss": 0.6, "val_loss": 0.9, "train_acc": 0.7, "val_acc": 0.6}]
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "notes.txt").write_text("mine")
    training_curves_png(history, tmp_path / "report" / "curves.png")
    assert read_folder_manifest(tmp_path / "report") == {"curves.png"}
