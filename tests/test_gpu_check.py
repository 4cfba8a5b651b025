"""The GPU check cannot rot: its dry run (every step, tiny, on the CPU) passes, and a failed step does not stop the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_runs_every_step_on_the_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="2")
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert summary["failed"] == [] and summary["passed"] == ["env", "data", "extract", "finetune", "torchrun", "dream", "attack"]
    steps = {name: entry["result"] for name, entry in summary["steps"].items()}
    assert steps["env"]["missing"] == []
    assert steps["extract"]["end_to_end"]["ok"] == steps["data"]["images"] == 24
    assert all(steps["extract"][v]["images_per_s"] > 0 for v in ("fp32", "fp32_channels_last", "bf16_channels_last"))
    assert 0.0 <= steps["finetune"]["val_acc"] <= 1.0
    assert steps["torchrun"]["backend"] == "gloo" and steps["torchrun"]["all_reduce_ok"] and steps["torchrun"]["tk_is_main"]
    assert steps["dream"]["steps"] == 3 and 0.0 <= steps["attack"]["success_rate"] <= 1.0
    assert "gpu check: 7 of 7 steps passed" in proc.stdout


def test_a_failing_step_is_reported_and_the_next_ones_still_run(tmp_path):
    # Asking for CUDA on a machine without it: the CUDA steps fail with one clear line, "data" still runs.
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--in-process", "--device", "cuda",
                           "--steps", "env,data,extract", "--out", str(tmp_path), "--work", str(tmp_path / "work")],
                          cwd=tmp_path, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=300, check=False)
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 1
    assert summary["passed"] == ["data"] and summary["failed"] == ["env", "extract"]
    assert "CUDA is not available" in summary["steps"]["extract"]["error"]
    assert "[extract] FAILED" in proc.stdout
