"""Images/s of `classify`, `predict` and `evaluate` (a fine-tuned bundle): the engine path against eager PyTorch.

Each command runs as a whole CLI process, once with ``--engine torch`` (eager PyTorch: the path
these commands had before the feature engine served them) and once with the default ``--engine
auto``, alternated A B A B ... for ``--rounds`` rounds. Reported: each run's seconds, the
median images/s of each, and the median of the per-round ratios. Every process starts from a cache
that holds only the engine decision and the exported graphs (copied from a warmed template), so each
image is decoded and run through the network, as for new photos.

Usage:
    transferkit train DATA --mode finetune --out FT_BUNDLE        # a fine-tuned bundle
    python benchmarks/bench_inference_paths.py --images DIR --bundle FT_BUNDLE [--data DATA] [--rounds 3] [--out r.json]

``--data`` is the data set ``evaluate`` reads (its test split, as the bundle was trained).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What a warmed cache keeps: the engine decision, exported graphs, compiled OpenVINO blobs.
KEEP = ("engines", "onnx", "openvino")


def cpu_name() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor()


def _env(cache: Path) -> dict:
    return dict(os.environ, TRANSFERKIT_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")


def run(cmd: list[str], cache_template: Path) -> float:
    """Wall seconds of one CLI process, with a fresh copy of the warmed cache."""
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as tmp:
        cache = Path(tmp) / "cache"
        shutil.copytree(cache_template, cache)
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "transferkit", *cmd], env=_env(cache), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()[-400:]}")
    return seconds


def warm_template(cmd: list[str], folder: Path) -> None:
    """Run once so the engine decision and the exported graphs exist; keep only those."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "transferkit", *cmd], env=_env(folder), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"warm-up of {' '.join(cmd)} failed: {done.stderr.strip()[-400:]}")
    for p in folder.glob("*"):
        if p.name not in KEEP:  # features, file hashes, the verify pass, heads: every measured run computes its images
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", required=True, help="photos for classify and predict")
    ap.add_argument("--bundle", required=True, help="a fine-tuned bundle")
    ap.add_argument("--data", default=None, help="data set for evaluate (--split test)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/tmp/tk-bench-paths")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(args.work)
    from transferkit.data.files import list_image_files

    n_photos = len(list_image_files([args.images]))  # the files classify and predict will read
    commands = {"classify": (["classify", args.images, "--top-k", "1", "--format", "json"], n_photos),
                "predict (fine-tuned bundle)": (["predict", args.bundle, args.images, "--format", "json"], n_photos)}
    if args.data:
        meta = json.loads((Path(args.bundle) / "bundle.json").read_text())
        n_test = int(meta.get("metrics", {}).get("images", {}).get("test", 0)) or None
        commands["evaluate (fine-tuned bundle)"] = (["evaluate", args.bundle, args.data, "--split", "test", "--out", str(work / "eval")], n_test)
    results = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_start": os.getloadavg(), "rounds": args.rounds, "commands": {}}
    for name, (cmd, n) in commands.items():
        variants = {"torch": [*cmd, "--engine", "torch"], "auto": [*cmd, "--engine", "auto"]}
        templates = {v: work / f"template-{name.split()[0]}-{v}" for v in variants}
        for v, c in variants.items():
            warm_template(c, templates[v])
        seconds = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v, c in variants.items():
                seconds[v].append(run(c, templates[v]))
        ratios = [t / a for t, a in zip(seconds["torch"], seconds["auto"])]
        entry = {"images": n, "seconds": seconds, "median_ratio_torch_over_auto": round(statistics.median(ratios), 2)}
        if n:
            entry["median_images_per_s"] = {v: round(n / statistics.median(s), 1) for v, s in seconds.items()}
        results["commands"][name] = entry
        print(name, json.dumps(entry), flush=True)
    results["load_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
