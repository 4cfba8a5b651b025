"""`transferkit data inspect`: the numbers, as JSON and as tables; bad input is one line + exit 1."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from transferkit.cli.main import main
from transferkit.data.messy import write_bad_files, write_good_images


def _dataset(root):
    write_good_images(root / "a")
    write_bad_files(root / "b")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(root / "b" / f"{i}.jpg")
    shutil.copy(root / "a" / "rgb.jpg", root / "b" / "dup.jpg")
    return root


def test_inspect_json_reports_counts_classes_sizes_and_splits(tmp_path, capsys):
    root = _dataset(tmp_path / "ds")
    assert main(["data", "inspect", str(root), "--json", "--seed", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "folder"
    assert info["counts"] == {"kept": 21, "rejected": 6, "missing": 0, "duplicate_groups": 1, "leakage_groups": 0}
    assert info["classes"] == {"a": 16, "b": 5}
    assert info["imbalance_ratio"] == 3.2
    assert info["sizes"]["width"]["max"] == 40 and info["sizes"]["height"]["min"] == 24
    assert sum(info["rejected_by_reason"].values()) == 6
    assert {r["path"].rsplit("/", 1)[1] for r in info["rejected"]} >= {"truncated.jpg", "bomb.png"}
    assert sum(info["split_sizes"].values()) == 21 and set(info["split_sizes"]) == {"train", "val", "test"}
    assert len(info["duplicates"][0]) == 2


def test_inspect_table_view_and_format_option(tmp_path, capsys):
    root = _dataset(tmp_path / "ds")
    assert main(["data", "inspect", str(root), "--format", "folder", "--show", "2"]) == 0
    captured = capsys.readouterr()
    assert "kept 21, rejected 6, missing 0" in captured.out
    assert "4 more; --json lists them all" in captured.out
    assert "6 files not used" in captured.err


def test_inspect_bad_path_is_one_line_and_exit_1(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err
    assert "\n" not in err  # one line, no traceback


def test_inspect_rejects_unknown_layout(tmp_path, capsys):
    _dataset(tmp_path / "ds")
    assert main(["data", "inspect", str(tmp_path / "ds"), "--format", "parquet"]) != 0


def test_inspect_max_pixels_and_no_cache(tmp_path, capsys):
    root = _dataset(tmp_path / "ds")
    assert main(["data", "inspect", str(root), "--json", "--max-pixels", "1000"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"]["kept"] == 4  # only the four 40x24 photos are under 1000 pixels
    (root / "b" / "bomb.png").unlink()  # with the guard off it would be decoded for real
    assert main(["data", "inspect", str(root), "--json", "--max-pixels", "0", "--no-cache"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"]["kept"] == 21 and info["counts"]["rejected"] == 5 and info["cache_hits"] == 0


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_command_line_asks_openmp_for_passive_waiting_unless_the_user_chose(preset, expected):
    """Spinning OpenMP threads cost up to 76x on a shared 2-core box; the CLI sets PASSIVE before torch loads."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, sys, transferkit.cli.main; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == [expected, "False"]
