"""`transferkit train` under torchrun: the ranks share the work, rank 0 alone evaluates, prints and saves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from transferkit.cli.main import main


def _torchrun(args: list[str], cache: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRANSFERKIT_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "transferkit", *args],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("mode_args", [[], ["--mode", "finetune", "--epochs", "1", "--head-epochs", "0", "--strategy", "cached",
                                            "--unfreeze", "1", "--batch-size", "4"]], ids=["probe", "finetune"])
def test_torchrun_train_writes_one_bundle_and_prints_once(tiny_image_folder, tmp_path, mode_args):
    base = ["train", str(tiny_image_folder), "--backbone", "test_efficientnet", "--weights", "none", "--engine", "onnxruntime",
            "--seed", "0", *mode_args]
    proc = _torchrun([*base, "--out", str(tmp_path / "ddp"), "--format", "json"], str(tmp_path / "cache-ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"bundle":') == 1  # rank 0 alone printed the result
    assert (tmp_path / "ddp" / "bundle.json").is_file() and not list(tmp_path.glob(".ddp.tmp-*"))
    if not mode_args:  # the probe on sharded features is the one-process probe, bit for bit
        os.environ["TRANSFERKIT_CACHE_DIR"] = str(tmp_path / "cache-one")
        assert main([*base, "--out", str(tmp_path / "one")]) == 0
        assert (tmp_path / "ddp" / "head.safetensors").read_bytes() == (tmp_path / "one" / "head.safetensors").read_bytes()
