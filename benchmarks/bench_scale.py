"""Scale benchmark: peak memory and images/s of ``transferkit train`` and ``transferkit predict`` at 10k-100k images.

Generates small JPEGs (``--px``, default 48 px; classes differ by colour and a shape, plus noise)
once into a pool of 1000-image chunks, grown only as far as the largest size asked for, and reuses
it for every size. For each size N:

- ``train``: a fresh CLI process ``transferkit train LIST.csv --no-report`` (the first N images, cold:
  an empty cache folder), then the same command again (warm: everything cached);
- ``predict``: ``transferkit predict BUNDLE CHUNK_FOLDERS... --format csv`` on the same N images in a
  fresh process with an empty cache (new images, as predict usually sees), output to a file.

Peak RSS is the child's ``ru_maxrss`` (``os.wait4``), so it covers exactly that one command.
Results go to ``--json`` and a Markdown table (``--md``) with the machine named.
``--inject-features`` stores made-up features in the cache first, so sizes the CPU could not
extract in the time still measure everything else (benchmarks/results/scale.md).

Usage:
    python benchmarks/bench_scale.py --sizes 10000,30000,100000 [--backbone efficientnet_lite0] [--root /tmp/tk-scale]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHUNK = 1000


def machine() -> dict:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    try:
        mem = next(int(line.split()[1]) // 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem = None
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_mb": mem, "python": platform.python_version(), "load_avg_at_start": [round(v, 1) for v in os.getloadavg()]}


def grow_pool(pool: Path, n: int, classes: int, px: int) -> float:
    """Make sure chunks 0 .. ceil(n/CHUNK)-1 exist (each CHUNK images, all classes); returns seconds spent."""
    import numpy as np
    from PIL import Image, ImageDraw

    t = time.perf_counter()
    for k in range(-(-n // CHUNK)):
        folder = pool / f"chunk_{k:03d}"
        if (folder / ".done").exists():
            continue
        rng = np.random.default_rng(k)
        for c in range(classes):
            (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for j in range(CHUNK):
            c = j % classes
            base = np.array([(60 + 60 * c) % 256, (200 - 40 * c) % 256, (90 * c) % 256], dtype=np.float32)
            arr = np.clip(base + rng.normal(0, 40, (px, px, 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(arr)
            r = int(px * rng.uniform(0.15, 0.35))
            x, y = rng.integers(r, px - r, 2)
            (ImageDraw.Draw(img).ellipse if c % 2 == 0 else ImageDraw.Draw(img).rectangle)((x - r, y - r, x + r, y + r),
                                                                                           fill=tuple(int(v) for v in 255 - base))
            img.save(folder / f"class_{c}" / f"img_{k:03d}_{j:04d}.jpg", quality=90)
        (folder / ".done").write_text("")
    return time.perf_counter() - t


def listing(pool: Path, n: int, out: Path) -> Path:
    """A CSV ``path,label`` of the first n images (whole chunks, in order)."""
    rows = ["path,label"]
    for k in range(n // CHUNK):
        for p in sorted((pool / f"chunk_{k:03d}").glob("class_*/*.jpg")):
            rows.append(f"{p},{p.parent.name}")
    out.write_text("\n".join(rows) + "\n")
    return out


def inject_features(pool: Path, n: int, cache_dir: Path, backbone: str, weights: str, classes: int) -> float:
    """Store made-up features (a class mean plus noise) for the first n images under the backbone's real cache key.

    ``transferkit train`` / ``predict`` then find every image cached: everything but the network runs
    (file hashing, cache reads, the head fit, evaluation, the bundle, the CSV), at a size the 2-core
    box could never extract in the time. Returns seconds spent.
    """
    import numpy as np

    from transferkit.backbones import create_backbone
    from transferkit.features.cache import FeatureCache
    from transferkit.features.extract import model_cache_key

    t = time.perf_counter()
    bb = create_backbone(backbone, weights=weights)
    key, dim = model_cache_key(bb), bb.spec.num_features
    store = FeatureCache(cache_dir)
    rng = np.random.default_rng(0)
    means = rng.normal(0, 1, (classes, dim)).astype(np.float32)
    for k in range(n // CHUNK):
        paths = sorted((pool / f"chunk_{k:03d}").glob("class_*/*.jpg"))
        hashes = store.content_hashes(paths)
        labels = [int(p.parent.name.split("_")[1]) for p in paths]
        noise = rng.normal(0, 3, (len(paths), dim)).astype(np.float32)
        store.put_many(key, ((h, means[c] + e) for h, c, e in zip(hashes, labels, noise) if h))
    store.register_model(key, f"{backbone} (injected by bench_scale)")
    store.close()
    return time.perf_counter() - t


def run_measured(cmd: list[str], env: dict, stdout_path: Path | None = None, timeout: float | None = None) -> dict:
    """Run a command; wall seconds, its peak RSS (MB, from wait4) and exit code."""
    t = time.perf_counter()
    out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.PIPE)
        deadline = None if timeout is None else time.monotonic() + timeout
        err = b""
        # wait4 gives this child's own rusage; stderr is drained by a thread so the child never blocks on it
        import threading

        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.append(proc.stderr.read()), daemon=True)
        reader.start()
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        reader.join(timeout=5)
        err = b"".join(chunks)
    finally:
        if stdout_path:
            out.close()
    return {"seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "rc": proc.returncode,
            "stderr_tail": err.decode(errors="replace")[-400:] if proc.returncode else ""}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,30000,100000")
    ap.add_argument("--px", type=int, default=48)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="auto")
    ap.add_argument("--engine", default="auto", help="feature engine for both commands")
    ap.add_argument("--parts", default="train,predict")
    ap.add_argument("--root", default="/tmp/tk-scale")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per command")
    ap.add_argument("--json", default=None, help="results file (default: ROOT/scale.json)")
    ap.add_argument("--md", default=None, help="also write a Markdown table here")
    ap.add_argument("--inject-features", action="store_true",
                    help="put made-up features in the cache first, so train/predict run everything but the network")
    args = ap.parse_args(argv)

    root = Path(args.root)
    args.json = args.json or str(root / "scale.json")
    pool = root / "pool"
    sizes = [int(s) for s in args.sizes.split(",") if s]
    parts = args.parts.split(",")
    tk = shutil.which("transferkit") or str(Path(sys.executable).parent / "transferkit")
    result: dict = {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k not in ("json", "md")}, "runs": []}
    gen = grow_pool(pool, max(sizes), args.classes, args.px)
    result["generate_seconds"] = round(gen, 1)
    print(f"pool ready ({max(sizes)} images, {gen:.0f} s generating)", flush=True)
    base_env = dict(os.environ, HF_HUB_OFFLINE="1")
    for n in sizes:
        csv_path = listing(pool, n, root / f"list_{n}.csv")
        bundle = root / f"model_{n}"
        row: dict = {"images": n}
        common = ["--backbone", args.backbone, "--weights", args.weights, "--engine", args.engine]
        if args.inject_features:
            cache = root / "cache_injected"
            row["inject_seconds"] = round(inject_features(pool, n, cache, args.backbone, args.weights, args.classes), 1)
            env = dict(base_env, TRANSFERKIT_CACHE_DIR=str(cache))
            if "train" in parts:
                cmd = [tk, "train", str(csv_path), "--out", str(bundle), "--no-report", *common]
                row["train_features_cached"] = run_measured(cmd, env, timeout=args.timeout)
            if "predict" in parts and bundle.exists():
                out_csv = root / f"predict_{n}.csv"
                chunks = [str(pool / f"chunk_{k:03d}") for k in range(n // CHUNK)]
                row["predict_features_cached"] = run_measured([tk, "predict", str(bundle), *chunks, "--format", "csv", "--engine", args.engine],
                                                              env, stdout_path=out_csv, timeout=args.timeout)
                row["predict_rows"] = max(0, sum(1 for _ in open(out_csv)) - 1) if out_csv.exists() else 0
        if "train" in parts and not args.inject_features:
            cache = root / f"cache_train_{n}"
            shutil.rmtree(cache, ignore_errors=True)
            env = dict(base_env, TRANSFERKIT_CACHE_DIR=str(cache))
            cmd = [tk, "train", str(csv_path), "--out", str(bundle), "--no-report", *common]
            row["train_cold"] = run_measured(cmd, env, timeout=args.timeout)
            row["train_warm"] = run_measured(cmd, env, timeout=args.timeout)
            shutil.rmtree(cache, ignore_errors=True)
        if "predict" in parts and bundle.exists() and not args.inject_features:
            cache = root / f"cache_predict_{n}"
            shutil.rmtree(cache, ignore_errors=True)
            env = dict(base_env, TRANSFERKIT_CACHE_DIR=str(cache))
            chunks = [str(pool / f"chunk_{k:03d}") for k in range(n // CHUNK)]
            out_csv = root / f"predict_{n}.csv"
            row["predict_cold"] = run_measured([tk, "predict", str(bundle), *chunks, "--format", "csv", "--engine", args.engine], env, stdout_path=out_csv,
                                               timeout=args.timeout)
            row["predict_rows"] = max(0, sum(1 for _ in open(out_csv)) - 1) if out_csv.exists() else 0
            shutil.rmtree(cache, ignore_errors=True)
        for key in ("train_cold", "train_warm", "predict_cold", "train_features_cached", "predict_features_cached"):
            if key in row and row[key]["seconds"] > 0:
                row[key]["images_per_s"] = round(n / row[key]["seconds"], 1)
        meta = bundle / "bundle.json"
        if meta.exists():
            try:
                m = json.loads(meta.read_text()).get("metrics", {})
                row["test_accuracy"] = m.get("accuracy")
            except ValueError:
                pass
        result["runs"].append(row)
        print(json.dumps(row), flush=True)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.md:
        lines = [f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, {result['machine']['memory_mb']} MB; "
                 f"backbone {args.backbone} ({args.weights}), engine {args.engine}, {args.px} px JPEGs, {args.classes} classes.", "",
                 "| images | command | wall s | images/s | peak RSS MB |", "|---:|---|---:|---:|---:|"]
        for r in result["runs"]:
            for name, v in r.items():
                if isinstance(v, dict) and "peak_rss_mb" in v:
                    lines.append(f"| {r['images']:,} | {name} | {v['seconds']} | {v.get('images_per_s')} | {v['peak_rss_mb']} |")
        Path(args.md).write_text("\n".join(lines) + "\n")
    return 0 if all(v.get("rc", 0) == 0 for r in result["runs"] for v in r.values() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
