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


# ------------------------------------------------------------------------------------------------
# The ONNX export cache


def test_no_cache_exports_onnx_to_a_temporary_folder_and_writes_nothing_under_the_cache(monkeypatch, tiny_image_folder,
                                                                                        tiny_backbone):
    from transferkit.core.paths import cache_root
    from transferkit.features import extract_features
    from transferkit.features.engines import OnnxEngine, create_engine

    engine = create_engine(tiny_backbone, "onnxruntime", cache_dir=None)
    assert isinstance(engine, OnnxEngine) and engine.max_abs_diff < 1e-4
    feats = extract_features(_paths(tiny_image_folder)[:4], tiny_backbone, engine="onnxruntime", cache=False)
    assert feats.ok.all()
    assert not cache_root().exists()
    assert not engine.path.exists()  # the temporary export is gone once the session holds it


def test_an_unwritable_onnx_cache_exports_to_a_temporary_folder_with_one_warning(tmp_path, caplog, tiny_backbone):
    from transferkit.features.engines import OnnxEngine, create_engine

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING):
        engine = create_engine(tiny_backbone, "onnxruntime", cache_dir=blocker)
    assert isinstance(engine, OnnxEngine)
    _assert_one_cache_warning(caplog, blocker)


def test_a_full_disk_during_onnx_export_falls_back_to_a_temporary_folder(tmp_path, monkeypatch, caplog, tiny_backbone):
    import transferkit.features.engines as engines

    cache_dir = tmp_path / "cache"
    real_export = engines._export_to

    def export(backbone, tmp):
        if str(tmp).startswith(str(cache_dir)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_export(backbone, tmp)

    monkeypatch.setattr(engines, "_export_to", export)
    with caplog.at_level(logging.WARNING):
        engine = engines.create_engine(tiny_backbone, "onnxruntime", cache_dir=cache_dir)
    assert isinstance(engine, engines.OnnxEngine)
    assert "no space left on device" in _assert_one_cache_warning(caplog, cache_dir)
    assert not any((cache_dir / "onnx").glob("*.tmp"))


def test_a_temp_file_left_by_a_killed_export_is_cleaned_up_later(tiny_backbone):
    from transferkit.features import FeatureCache
    from transferkit.features.engines import create_engine, onnx_model_path

    cache = FeatureCache()
    folder = onnx_model_path(tiny_backbone, cache.directory).parent
    folder.mkdir(parents=True)
    stale = folder / ".x.onnx.abc123.tmp"
    stale.write_bytes(b"half an export")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    fresh = folder / ".y.onnx.def456.tmp"  # maybe another run's export in progress: left alone
    fresh.write_bytes(b"in progress")
    create_engine(tiny_backbone, "onnxruntime", cache_dir=cache.directory)
    assert not stale.exists() and fresh.exists()


@pytest.mark.xfail(strict=True, reason="the fallback lives in transferkit.features.select now, which still warns through "
                   "warnings.warn and the log; its owner makes it one log warning")
def test_falling_back_to_the_torch_engine_warns_once_without_a_source_line(monkeypatch, caplog, tiny_backbone):
    import transferkit.features.engines as engines

    monkeypatch.setattr(engines, "ONNX_MAX_ABS_DIFF", -1.0)  # no output can pass the check
    with warnings.catch_warnings(record=True) as raised, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        engine = engines.create_engine(tiny_backbone, "auto", device="cpu")
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
    import transferkit.data.verify as verify

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(verify.tempfile, "mkstemp", full)
    files = _folder_of_images(tmp_path / "d")
    with caplog.at_level(logging.WARNING):
        checks, _ = verify.verify_files(files, root=tmp_path / "d", workers=1)
    assert all(c.ok for c in checks)
    msg = _assert_one_cache_warning(caplog, verify.default_cache_dir())
    assert "no space left on device" in msg
