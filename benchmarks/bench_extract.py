"""Benchmark: transferkit's feature extraction and probe training against what people write by hand.

Parts (run all, or one with --part):

- ``throughput``: end-to-end extraction (decode included) of the same images with the same
  EfficientNet-Lite0 weights, both sides in the same run, alternated for ``--rounds`` rounds:
  the peer is torchvision ``ImageFolder`` + ``DataLoader(num_workers=2)`` + timm eager
  ``tf_efficientnet_lite0``; transferkit is ``extract_features(..., cache=False)`` on ONNX Runtime
  (engine creation and its check against PyTorch included; the one-off ONNX export is timed
  separately because it is cached once per backbone).
- ``train``: ``transferkit train`` as a fresh CLI process, cold (empty cache dir) then warm.
- ``memory``: peak RSS of a process extracting features of ``--count`` generated images.
- ``logistic``: the logistic head (C chosen on a validation split of the training half) against
  scikit-learn's ``LogisticRegressionCV`` (5-fold CV over the same grid) on the same features.

Usage:
    python benchmarks/bench_extract.py --data /work/shared/data/catsdogs --out /tmp/bench_extract.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def machine() -> dict:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "load_avg_at_start": os.getloadavg()}


def subset_folder(data: Path, per_class: int, root: Path) -> Path:
    """A class-folder copy (symlinks) of the first ``per_class`` images of each class."""
    for cls in sorted(p for p in data.iterdir() if p.is_dir()):
        (root / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.glob("*.jpg"))[:per_class]:
            (root / cls.name / f.name).symlink_to(f.resolve())
    return root


# --------------------------------------------------------------------------------------------- peer
def peer_extract(folder: Path, state_dict: dict, spec, batch_size: int = 32) -> tuple[np.ndarray, float]:
    """What people write by hand: ImageFolder + DataLoader(2 workers) + timm eager."""
    import timm
    import torch
    from torchvision import datasets, transforms
    from torchvision.transforms import InterpolationMode

    t0 = time.perf_counter()
    tf = transforms.Compose([
        transforms.Resize(spec.resize_size, interpolation=InterpolationMode(spec.interpolation)),
        transforms.CenterCrop(spec.image_size),
        transforms.ToTensor(),
        transforms.Normalize(spec.mean, spec.std),
    ])
    ds = datasets.ImageFolder(str(folder), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=2, shuffle=False)
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
    model.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith("classifier.")})
    model.eval()
    out = []
    with torch.inference_mode():
        for x, _ in loader:
            out.append(model(x).numpy())
    return np.concatenate(out), time.perf_counter() - t0


def tk_extract(folder: Path, backbone, batch_size: int = 32) -> tuple[np.ndarray, float, dict]:
    from transferkit.features import extract_features

    paths = sorted(p for p in folder.rglob("*.jpg"))  # same order as ImageFolder (class, then name)
    t0 = time.perf_counter()
    feats = extract_features(paths, backbone, engine="onnxruntime", cache=False, batch_size=batch_size)
    return feats.X, time.perf_counter() - t0, feats.stats


def part_throughput(args) -> dict:
    import torch

    from transferkit.backbones import create_backbone
    from transferkit.features import FeatureCache, create_engine

    backbone = create_backbone("efficientnet_lite0")
    state = {k: v.clone() for k, v in backbone.net.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-"))
    folder = subset_folder(Path(args.data), args.images // 2, tmp / "imgs")
    n = sum(1 for _ in folder.rglob("*.jpg"))
    # One-off: export to ONNX (cached per backbone + weights digest) -- timed on its own.
    cache_dir = Path(os.environ.get("TRANSFERKIT_CACHE_DIR", tmp / "cache"))
    os.environ["TRANSFERKIT_CACHE_DIR"] = str(cache_dir)
    t0 = time.perf_counter()
    create_engine(backbone, "onnxruntime", cache_dir=FeatureCache().directory)
    export_s = time.perf_counter() - t0
    rounds = []
    for r in range(args.rounds):
        Xp, tp = peer_extract(folder, state, backbone.spec)
        Xt, tt, stats = tk_extract(folder, backbone)
        diff = float(np.abs(Xp - Xt).max())
        rel = float(np.linalg.norm(Xp - Xt) / np.linalg.norm(Xp))
        rounds.append({"peer_img_s": n / tp, "transferkit_img_s": n / tt, "ratio": tp / tt, "max_abs_diff": diff, "rel_l2_diff": rel})
        print(f"round {r}: peer {n / tp:.1f} img/s, transferkit {n / tt:.1f} img/s, ratio {tp / tt:.2f}x, "
              f"feature max|diff| {diff:.2e} (relative L2 {rel:.1e}), load {os.getloadavg()[0]:.1f}", flush=True)
    med = lambda k: statistics.median(r[k] for r in rounds)  # noqa: E731
    return {
        "images": n, "rounds": rounds, "torch_threads": torch.get_num_threads(),
        "median_peer_img_s": med("peer_img_s"), "median_transferkit_img_s": med("transferkit_img_s"),
        "median_ratio": med("ratio"), "onnx_export_and_check_s_first_time": export_s,
    }


# -------------------------------------------------------------------------------------------- train
def _run_cli(argv: list[str], env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "transferkit.cli.main", *argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"train failed: {proc.stderr[-2000:]}")
    return wall, json.loads(proc.stdout)


def _result_metrics(metrics: dict) -> dict:
    """Metrics minus bookkeeping that legitimately differs between runs (timings, cache counts)."""
    return {k: v for k, v in metrics.items() if k not in ("timings", "features")}


def part_train(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-train-"))
    env = dict(os.environ, TRANSFERKIT_CACHE_DIR=str(tmp / "cache"))
    argv = ["train", args.data, "--val", "0", "--test", "0.5", "--seed", "0", "--out", str(tmp / "model"), "--format", "json"]
    cold_wall, cold = _run_cli(argv, env)
    print(f"cold train: {cold_wall:.1f} s, test accuracy {cold['metrics']['accuracy']:.4f}", flush=True)
    cold_files = json.loads((tmp / "model" / "bundle.json").read_text())["files"]
    warm = []
    identical = True
    for _ in range(args.rounds):
        wall, res = _run_cli(argv, env)
        warm.append((wall, res))
        # The warm result must be the cold one: same weights files (sha256) and same metrics.
        identical &= json.loads((tmp / "model" / "bundle.json").read_text())["files"] == cold_files
        identical &= _result_metrics(res["metrics"]) == _result_metrics(cold["metrics"])
        print(f"warm train: {wall:.2f} s (in-process stages {sum(res['metrics']['timings'].values()):.2f} s), "
              f"accuracy {res['metrics']['accuracy']:.4f}", flush=True)
    warm_wall = statistics.median(w for w, _ in warm)
    cold_stages = sum(cold["metrics"]["timings"].values())
    warm_stages = statistics.median(sum(r["metrics"]["timings"].values()) for _, r in warm)
    return {
        "cold_wall_s": cold_wall, "warm_wall_s_median": warm_wall, "wall_ratio": cold_wall / warm_wall,
        "cold_stages_s": cold_stages, "warm_stages_s_median": warm_stages, "stages_ratio": cold_stages / warm_stages,
        "cold_timings": cold["metrics"]["timings"], "warm_timings": warm[-1][1]["metrics"]["timings"],
        "test_accuracy": cold["metrics"]["accuracy"], "warm_test_accuracy": warm[-1][1]["metrics"]["accuracy"],
        "C": cold["metrics"]["head"].get("C"), "ece": cold["metrics"]["ece"], "warm_identical_to_cold": identical,
    }


def part_train_inprocess(args) -> dict:
    """``train()`` called twice in one process: what the cache saves, without import time.

    Heavy imports (torch, timm, sklearn, matplotlib) are done before the cold run: they are the
    same for a cold and a warm process and have nothing to do with the cache.
    """
    import matplotlib.pyplot  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import timm  # noqa: F401

    from transferkit.pipeline.train import TrainConfig, train

    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-train-ip-"))
    os.environ["TRANSFERKIT_CACHE_DIR"] = str(tmp / "cache")
    config = TrainConfig(data=args.data, val=0.0, test=0.5, seed=0, out=str(tmp / "model"))
    t0 = time.perf_counter()
    cold = train(config)
    cold_s = time.perf_counter() - t0
    print(f"in-process cold train: {cold_s:.1f} s {cold.metrics['timings']}", flush=True)
    warm = []
    identical = True
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        res = train(config)
        warm.append(time.perf_counter() - t0)
        identical &= _result_metrics(res.metrics) == _result_metrics(cold.metrics)
        print(f"in-process warm train: {warm[-1]:.2f} s {res.metrics['timings']}", flush=True)
    return {"warm_identical_to_cold": identical, "cold_s": cold_s, "warm_s_median": statistics.median(warm), "ratio": cold_s / statistics.median(warm),
            "cold_timings": cold.metrics["timings"], "warm_timings": res.metrics["timings"], "test_accuracy": cold.metrics["accuracy"]}


# ------------------------------------------------------------------------------------------- memory
_MEMORY_CHILD = """
import resource, sys, time, json
from pathlib import Path
from transferkit.backbones import create_backbone
from transferkit.features import extract_features
paths = sorted(Path(sys.argv[1]).rglob("*.jpg"))
backbone = create_backbone("efficientnet_lite0")
t0 = time.perf_counter()
f = extract_features(paths, backbone, engine="onnxruntime")
dt = time.perf_counter() - t0
print(json.dumps({"images": len(paths), "ok": int(f.ok.sum()), "seconds": dt,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def generate_images(root: Path, count: int, size: tuple[int, int] = (400, 300)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    per_folder = 1000
    for i in range(count):
        folder = root / f"c{i // per_folder:03d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # smooth colour blobs, photo-sized
        Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(folder / f"img_{i:06d}.jpg", quality=85)


def part_memory(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-mem-"))
    t0 = time.perf_counter()
    generate_images(tmp / "imgs", args.count)
    gen_s = time.perf_counter() - t0
    print(f"generated {args.count} images in {gen_s:.0f} s", flush=True)
    script = tmp / "child.py"
    script.write_text(_MEMORY_CHILD)
    env = dict(os.environ, TRANSFERKIT_CACHE_DIR=str(tmp / "cache"))
    proc = subprocess.run([sys.executable, str(script), str(tmp / "imgs")], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["images_per_s"] = res["images"] / res["seconds"]
    print(f"memory: {res}", flush=True)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------------------- logistic
def part_logistic(args) -> dict:
    import warnings

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from transferkit.backbones import create_backbone
    from transferkit.data import load_images, split_imageset
    from transferkit.features import extract_features
    from transferkit.heads import DEFAULT_CS, LogisticHead, MLPHead

    data = split_imageset(load_images(args.data), val=0.0, test=0.5, seed=0)
    feats = extract_features(data.paths, create_backbone("efficientnet_lite0"))  # cached by the train part
    split = np.array(data.split)
    tr, te = split == "train", split == "test"
    X, y = feats.X, data.labels
    t0 = time.perf_counter()
    ours = LogisticHead(random_state=0).fit(X[tr], y[tr])
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mlp = MLPHead(random_state=0).fit(X[tr], y[tr])
    mlp_s = time.perf_counter() - t0
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        peer = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=list(DEFAULT_CS), cv=5, max_iter=1000)).fit(X[tr], y[tr])
        peer_s = time.perf_counter() - t0
    res = {
        "train": int(tr.sum()), "test": int(te.sum()),
        "ours_accuracy": float((ours.predict(X[te]) == y[te]).mean()), "ours_C": ours.C_, "ours_fit_s": ours_s,
        "mlp_accuracy": float((mlp.predict(X[te]) == y[te]).mean()), "mlp_fit_s": mlp_s,
        "sklearn_cv_accuracy": float(peer.score(X[te], y[te])), "sklearn_cv_C": float(np.ravel(peer[-1].C_)[0]), "sklearn_cv_fit_s": peer_s,
    }
    res["difference_points"] = 100 * (res["ours_accuracy"] - res["sklearn_cv_accuracy"])
    print(f"logistic: {res}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data/catsdogs")
    ap.add_argument("--part", choices=["all", "throughput", "train", "train_inprocess", "memory", "logistic"], default="all")
    ap.add_argument("--images", type=int, default=512, help="images for the throughput part (half per class)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=25000, help="generated images for the memory part")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    results = {"machine": machine()}
    parts = ["throughput", "train", "train_inprocess", "logistic", "memory"] if args.part == "all" else [args.part]
    for part in parts:
        results[part] = globals()[f"part_{part}"](args)
    results["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(results, indent=2, default=float)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
