"""Benchmark: deploying a bundle: fp32/int8 exports on real photos, and `transferkit serve` under load.

Parts (run all, or one with --part):

- ``accuracy``: the bundle's own test split (re-created from its recorded config: same fractions
  and seed). The fp32 export, through the torch-free runtime (its own decoding), against
  ``transferkit predict``'s PyTorch path on every test image (top-1 and largest probability
  difference). Then an int8 export calibrated on ``--calibration-images`` images of the bundle's
  training part and measured by ``transferkit export`` itself on the test part: accuracy vs fp32,
  top-1 agreement, file size ratio, forward speed ratio (both timed in the same run).
- ``load``: three servers, each its own process on 127.0.0.1: ``transferkit serve`` with the fp32
  export, with the int8 export, and a plain FastAPI app calling the PyTorch bundle per request
  (the way people write it). Clients (threads, one httpx connection each) post real photos at 1, 4
  and 16 concurrent clients, bounded by ``--requests`` and ``--seconds`` per level: requests/s,
  p50 and p99 latency; the servers alternate for ``--rounds`` rounds and medians are reported. Then the server's RSS before and after ten rounds of the
  hostile-upload battery (every answer must be a 4xx).

Loopback only; every part is bounded in count and time.

Usage:
    python benchmarks/bench_serve.py --bundle /tmp/catsdogs --data ../shared/data/catsdogs --out /tmp/bench_serve.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from fastapi import UploadFile  # module level: FastAPI resolves the endpoint's annotations here

LEVELS = (1, 4, 16)


def machine() -> dict:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}


def bundle_split(bundle: Path, data: Path):
    """The bundle's train and test parts, re-created from the split config it recorded."""
    from transferkit.classifier.bundle import read_bundle_meta
    from transferkit.data import load_images, split_imageset

    cfg = read_bundle_meta(bundle).get("config") or {}
    split = split_imageset(load_images(data), val=float(cfg.get("val", 0.15)), test=float(cfg.get("test", 0.15)),
                           seed=int(cfg.get("seed", 0)))
    return split.where_split("train"), split.where_split("test")


def _linked_folder(root: Path, imageset, limit: int | None = None) -> Path:
    """A class-folder layout of symlinks to ``imageset``'s files (at most ``limit``, evenly spread)."""
    idx = np.arange(len(imageset))
    if limit is not None and len(idx) > limit:
        idx = np.linspace(0, len(idx) - 1, limit).round().astype(int)
    for i in idx:
        folder = root / imageset.class_names[imageset.labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / imageset.paths[i].name).symlink_to(imageset.paths[i].resolve())
    return root


def part_accuracy(args, work: Path) -> dict:
    from transferkit.classifier.bundle import load_bundle
    from transferkit.classifier.export import export_model
    from transferkit.evaluate.predict import predict_images
    from transferkit.runtime import Runtime

    train, test = bundle_split(args.bundle, args.data)
    model = load_bundle(args.bundle)
    fp32 = export_model(args.bundle, work / "fp32.onnx")
    k = len(model.class_names)
    start = time.perf_counter()
    ours = Runtime(fp32.path).predict(test.paths, top_k=k)
    runtime_s = time.perf_counter() - start
    theirs = predict_images(model, test.paths, top_k=k, engine="torch", cache=False)
    diffs, same = [], 0
    for a, b in zip(ours, theirs):
        pa, pb = dict(a.top), dict(b.top)
        diffs.append(max(abs(pa[c] - pb[c]) for c in model.class_names))
        same += a.top[0][0] == b.top[0][0]
    y = [test.class_names[lab] for lab in test.labels]
    acc_runtime = float(np.mean([r.top[0][0] == t for r, t in zip(ours, y)]))
    calib = _linked_folder(work / "calib", train, args.calibration_images)
    evald = _linked_folder(work / "eval", test)
    int8 = export_model(args.bundle, work / "int8.onnx", int8=True, calibration=calib, eval_data=evald, max_int8_loss=100.0,
                        calibration_images=args.calibration_images)
    return {
        "test_images": len(test), "fp32_top1_agreement_with_bundle": same / len(test), "fp32_disagreements": len(test) - same,
        "fp32_max_abs_prob_diff": float(max(diffs)), "fp32_median_abs_prob_diff": float(np.median(diffs)),
        "fp32_runtime_accuracy": acc_runtime, "runtime_seconds_decode_and_predict": runtime_s,
        "fp32_check_at_export": fp32.metadata["check"], "int8": int8.metadata["quantization"],
        "files": {"fp32": str(fp32.path), "int8": str(int8.path)},
    }


# ---------------------------------------------------------------------------------------------
# Servers (each runs in its own process: `bench_serve.py _server KIND MODEL PORT`).


def plain_torch_app(bundle: Path):
    """The way people serve a PyTorch classifier: decode, preprocess and run the model per request."""
    import torch
    from fastapi import FastAPI, File

    from transferkit.classifier.bundle import load_bundle
    from transferkit.data.decode import decode_rgb, resize_center_crop, to_tensor01

    model = load_bundle(bundle)
    app = FastAPI()

    @app.post("/v1/predict")
    def predict(files: list[UploadFile] = File(...)):  # noqa: B008 - FastAPI's idiom
        img, _ = decode_rgb(io.BytesIO(files[0].file.read()), draft_size=model.spec.resize_size)
        x = to_tensor01(resize_center_crop(img, model.spec)).unsqueeze(0)
        with torch.inference_mode():
            p = model(x).softmax(1)[0]
        j = int(p.argmax())
        return {"results": [{"top": [{"label": model.class_names[j], "probability": float(p[j])}]}]}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app


def run_server(kind: str, model: str, port: int) -> None:
    import uvicorn

    if kind == "torch":
        app = plain_torch_app(Path(model))
    else:
        from transferkit.serve import create_app, load_runtime

        app = create_app(load_runtime(model))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, model: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "_server", kind, str(model), str(port)], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{kind} server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{kind} server did not start")


def load_level(url: str, photos: list[bytes], clients: int, requests: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + seconds

    def client(c: int) -> None:
        with httpx.Client(timeout=60) as session:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t = time.perf_counter()
                r = session.post(url + "/v1/predict", files={"files": (f"{i}.jpg", photos[i % len(photos)], "image/jpeg")})
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    errors[0] += r.status_code != 200

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {"clients": clients, "requests": len(lat), "errors": errors[0], "seconds": wall, "requests_per_s": len(lat) / wall,
            "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def hostile_round(url: str) -> list[int]:
    """One pass of hostile uploads; returns the status codes (all must be 4xx)."""
    import httpx
    from PIL import Image

    def png(img) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()

    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(good, "JPEG")
    cases = [
        {"files": {"files": ("x.jpg", b"not an image at all", "image/jpeg")}},
        {"files": {"files": ("t.txt", b"hello", "text/plain")}},
        {"files": {"files": ("cut.jpg", good.getvalue()[:4000], "image/jpeg")}},
        {"files": {"files": ("e.jpg", b"", "image/jpeg")}},
        {"files": {"files": ("bomb.png", png(Image.new("L", (10000, 10000))), "image/png")}},
        {"files": {"files": ("big.jpg", b"\xff" * (21 * 1024 * 1024), "image/jpeg")}},
        {"json": {"image": "x"}},
        {"files": [("files", (f"{i}.jpg", good.getvalue(), "image/jpeg")) for i in range(17)]},
    ]
    with httpx.Client(timeout=60) as c:
        return [c.post(url + "/v1/predict", **kw).status_code for kw in cases]


def _serve_and_load(kind: str, model: Path, photos: list[bytes], args, with_memory: bool) -> tuple[list[dict], dict | None]:
    proc, url = start(kind, model)
    try:
        load_level(url, photos, 1, 8, 30)  # warm-up
        levels = [load_level(url, photos, c, args.requests, args.seconds) for c in LEVELS]
        memory = None
        if with_memory:
            before = rss_kb(proc.pid)
            codes = [code for _ in range(10) for code in hostile_round(url)]
            load_level(url, photos, 1, 8, 30)
            after = rss_kb(proc.pid)
            memory = {"rss_mb_before": before / 1024, "rss_mb_after": after / 1024, "hostile_requests": len(codes),
                      "all_4xx": all(400 <= c < 500 for c in codes), "codes": sorted(set(codes))}
        return levels, memory
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _medians(rounds: list[list[dict]]) -> list[dict]:
    out = []
    for i, c in enumerate(LEVELS):
        rows = [r[i] for r in rounds]
        out.append({"clients": c, "rounds": len(rows), "requests": sum(x["requests"] for x in rows), "errors": sum(x["errors"] for x in rows),
                    **{k: statistics.median(x[k] for x in rows) for k in ("requests_per_s", "p50_ms", "p99_ms")}})
    return out


def part_load(args, work: Path, files: dict) -> dict:
    test = bundle_split(args.bundle, args.data)[1]
    photos = [p.read_bytes() for p in test.paths[:: max(1, len(test) // 32)][:32]]
    servers = {"transferkit serve fp32": ("onnx", Path(files["fp32"])), "transferkit serve int8": ("onnx", Path(files["int8"])),
               "plain FastAPI + PyTorch": ("torch", args.bundle)}
    raw: dict = {name: [] for name in servers}
    memory: dict = {}
    for r in range(args.rounds):  # servers alternate within each round, so load from elsewhere hits all alike
        for name, (kind, model) in servers.items():
            levels, mem = _serve_and_load(kind, model, photos, args, with_memory=(r == 0 and kind == "onnx"))
            raw[name].append(levels)
            if mem:
                memory[name] = mem
    medians = {name: _medians(rounds) for name, rounds in raw.items()}
    base = medians["plain FastAPI + PyTorch"]
    ratios = {name: [m["requests_per_s"] / b["requests_per_s"] for m, b in zip(levels, base)] for name, levels in medians.items()}
    return {"photos": len(photos), "rounds": args.rounds, "medians": medians, "rps_ratio_vs_plain_torch": ratios,
            "raw": raw, "memory": memory}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        run_server(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="a bundle trained on --data")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--part", choices=("all", "accuracy", "load"), default="all")
    ap.add_argument("--calibration-images", type=int, default=200)
    ap.add_argument("--requests", type=int, default=300, help="requests per concurrency level (at most)")
    ap.add_argument("--seconds", type=float, default=10.0, help="time bound per concurrency level")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument("--work", type=Path, default=None, help="folder for the exported files (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_serve."))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine(), "bundle": str(args.bundle), "data": str(args.data)}
    if args.part in ("all", "accuracy"):
        result["accuracy"] = part_accuracy(args, work)
    if args.part in ("all", "load"):
        files = (result.get("accuracy") or {}).get("files") or {"fp32": str(work / "fp32.onnx"), "int8": str(work / "int8.onnx")}
        result["load"] = part_load(args, work, files)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        from transferkit.core.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
