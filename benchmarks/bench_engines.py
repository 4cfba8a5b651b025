"""Benchmark: the engine ``--engine auto`` picks, end to end, against the hand-written peer; probe accuracy per engine.

Parts (run all, or one with --part):

- ``table``: ``choose_engine(..., include_all=True, refresh=True)`` on EfficientNet-Lite0 (224 px):
  every candidate's forward images/s (median of round-robin rounds) and its faithfulness numbers;
  the same table ``transferkit engines`` prints.
- ``e2e``: end-to-end extraction (JPEG decode + resize + network) of the same ``--images`` photos,
  alternated A B C D for ``--rounds`` rounds in one process: the peer is torchvision ``ImageFolder``
  + ``DataLoader(num_workers=2)`` + timm ``tf_efficientnet_lite0`` eager in channels_last; then
  transferkit's ``extract_features`` with ``--engine auto`` at precision fp32 (the default), at
  precision bf16, and with today's ONNX Runtime engine. Engine creation from the warm caches (the
  cached decision, export and compiled blob, and the engine's own check against PyTorch) is inside
  transferkit's time; the one-off measurement and export are timed separately.
- ``probe``: the probe ``transferkit train DATA --val 0 --test 0.5`` fits (LogisticHead, seed 0) on
  features from each engine: test accuracy, and how many test predictions differ from fp32 torch.

Usage:
    python benchmarks/bench_engines.py --data ../shared/data/catsdogs --out /tmp/bench_engines.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does


def machine() -> dict:
    from transferkit.features.select import cpu_description

    return {"cpu": cpu_description(), "cores": os.cpu_count(), "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg()}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def subset_folder(data: Path, per_class: int, root: Path) -> Path:
    """A class-folder copy (symlinks) of the first ``per_class`` images of each class."""
    for cls in sorted(p for p in data.iterdir() if p.is_dir()):
        (root / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.glob("*.jpg"))[:per_class]:
            (root / cls.name / f.name).symlink_to(f.resolve())
    return root


# ------------------------------------------------------------------------------------------- table
def part_table(args, cache_dir: Path) -> dict:
    from transferkit.backbones import create_backbone
    from transferkit.features.select import choose_engine

    backbone = create_backbone("efficientnet_lite0")
    out = {}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        choice = choose_engine(backbone, precision=precision, cache_dir=cache_dir, include_all=True, refresh=True)
        out[precision] = {"chosen": choice.name, "reason": choice.reason, "seconds": time.perf_counter() - t0, "load": load(),
                          "candidates": [vars(c) for c in choice.candidates]}
        print(f"table precision={precision} (load {load()}): {choice.reason}", flush=True)
        for c in choice.candidates:
            print(f"  {c.name:26s} {c.precision:5s} {c.images_per_s or 0:7.1f} img/s  rounds {c.rounds}  "
                  f"maxdiff {c.max_abs_diff if c.max_abs_diff is not None else float('nan'):.1e}  "
                  f"min cos {c.cosine_min if c.cosine_min is not None else float('nan'):.6f}  faithful {c.faithful} "
                  f"allowed {c.allowed}  {c.note}", flush=True)
    return out


# --------------------------------------------------------------------------------------------- e2e
def peer_extract(folder: Path, state_dict: dict, spec, batch_size: int = 32) -> tuple[np.ndarray, float]:
    """What people write by hand: ImageFolder + DataLoader(2 workers) + timm eager, channels_last."""
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
    model = model.eval().to(memory_format=torch.channels_last)
    out = []
    with torch.inference_mode():
        for x, _ in loader:
            out.append(model(x.contiguous(memory_format=torch.channels_last)).numpy())
    return np.concatenate(out), time.perf_counter() - t0


def tk_extract(paths, backbone, cache_dir: Path, engine: str, precision: str) -> tuple[np.ndarray, float, str]:
    from transferkit.features import create_engine, extract_features

    t0 = time.perf_counter()
    run = create_engine(backbone, engine, cache_dir=cache_dir, precision=precision)  # warm caches: no measuring
    feats = extract_features(paths, backbone, engine=run, cache=False, batch_size=32, workers=2)
    return feats.X, time.perf_counter() - t0, run.name


def part_e2e(args, cache_dir: Path) -> dict:
    import torch

    from transferkit.backbones import create_backbone
    from transferkit.features.select import choose_engine

    backbone = create_backbone("efficientnet_lite0")
    state = {k: v.clone() for k, v in backbone.net.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-engines-"))
    folder = subset_folder(Path(args.data), args.images // 2, tmp / "imgs")
    paths = sorted(p for p in folder.rglob("*.jpg"))  # ImageFolder's order (class, then name)
    n = len(paths)
    one_off = {}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        choose_engine(backbone, precision=precision, cache_dir=cache_dir)  # cached after the first time
        one_off[precision] = time.perf_counter() - t0
    configs = {"auto_fp32": ("auto", "fp32"), "auto_bf16": ("auto", "bf16"), "onnxruntime": ("onnxruntime", "fp32")}
    rows: dict[str, list] = {"peer": [], **{k: [] for k in configs}}
    names, diffs = {}, {}
    for r in range(args.rounds):
        Xp, tp = peer_extract(folder, state, backbone.spec)
        rows["peer"].append({"img_s": n / tp, "load": load()})
        line = [f"round {r}: peer {n / tp:.1f}"]
        for key, (engine, precision) in configs.items():
            Xt, tt, names[key] = tk_extract(paths, backbone, cache_dir, engine, precision)
            cos = (Xp * Xt).sum(1) / np.linalg.norm(Xp, axis=1) / np.linalg.norm(Xt, axis=1)
            diffs[key] = {"max_abs_diff_vs_peer": float(np.abs(Xp - Xt).max()), "cosine_min_vs_peer": float(cos.min())}
            rows[key].append({"img_s": n / tt, "ratio_vs_peer": tp / tt, "load": load()})
            line.append(f"{key} ({names[key]}) {n / tt:.1f} ({tp / tt:.2f}x)")
        print(", ".join(line) + f" img/s; load {load()}", flush=True)
    med = lambda key, field: statistics.median(x[field] for x in rows[key])
    summary = {"peer_img_s": med("peer", "img_s")}
    for key in configs:
        summary[key] = {"engine": names[key], "img_s": med(key, "img_s"), "ratio_vs_peer": med(key, "ratio_vs_peer"), **diffs[key]}
    return {"images": n, "rounds": rows, "medians": summary, "torch_threads": torch.get_num_threads(),
            "one_off_choose_s_warm": one_off}


# ------------------------------------------------------------------------------------------- probe
def part_probe(args, cache_dir: Path) -> dict:
    from transferkit.backbones import create_backbone
    from transferkit.data import load_images, split_imageset
    from transferkit.features import create_engine, extract_features
    from transferkit.heads import LogisticHead

    backbone = create_backbone("efficientnet_lite0")
    data = split_imageset(load_images(args.data), val=0.0, test=0.5, seed=0)
    split = np.array(data.split)
    tr, te = split == "train", split == "test"
    y = np.asarray(data.labels)
    out, preds = {}, {}
    configs = {"torch_fp32": ("torch", "fp32"), "onnxruntime": ("onnxruntime", "fp32"), "auto_fp32": ("auto", "fp32"),
               "openvino_bf16": ("openvino", "bf16"), "torch_bf16": ("torch", "bf16")}
    if args.skip_torch_probe:
        configs.pop("torch_fp32"), configs.pop("torch_bf16")
    ref_X = None
    for key, (engine, precision) in configs.items():
        run = create_engine(backbone, engine, cache_dir=cache_dir, precision=precision, device="cpu")
        t0 = time.perf_counter()
        feats = extract_features(data.paths, backbone, engine=run, cache=False, decode_options=data.decode_options)
        secs = time.perf_counter() - t0
        X = feats.X
        ok = feats.ok
        head = LogisticHead(random_state=0).fit(X[tr & ok], y[tr & ok])
        p = head.predict(X[te & ok])
        preds[key] = p
        if ref_X is None:
            ref_X, ref_key = X, key
        cos = (ref_X * X).sum(1) / np.linalg.norm(ref_X, axis=1) / np.linalg.norm(X, axis=1)
        out[key] = {"engine": run.name, "precision": precision, "test_accuracy": float((p == y[te & ok]).mean()),
                    "test_images": int((te & ok).sum()), "C": head.C_, "extract_s": secs, "extract_img_s": len(X) / secs,
                    "cosine_vs_first_median": float(np.nanmedian(cos)), "cosine_vs_first_min": float(np.nanmin(cos)),
                    "predictions_differing_from_first": int((p != preds[ref_key]).sum()), "load": load()}
        print(f"probe {key} ({run.name}): accuracy {out[key]['test_accuracy']:.4f} (C {head.C_}), "
              f"{out[key]['predictions_differing_from_first']} predictions differ from {ref_key}, cosine min "
              f"{out[key]['cosine_vs_first_min']:.5f}, {len(X) / secs:.1f} img/s, load {load()}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/catsdogs")
    ap.add_argument("--part", choices=["all", "table", "e2e", "probe"], default="all")
    ap.add_argument("--images", type=int, default=320, help="images for the e2e part (half per class)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-torch-probe", action="store_true", help="probe part: skip the slow torch engines")
    ap.add_argument("--cache-dir", default=None, help="engine decisions and exports (default: a fresh temporary folder)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    cache_dir = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="tk-bench-engines-cache-"))
    results = {"machine": machine(), "args": vars(args)}
    parts = ["table", "e2e", "probe"] if args.part == "all" else [args.part]
    for part in parts:
        results[part] = globals()[f"part_{part}"](args, cache_dir)
    results["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(results, indent=2, default=float)
    if args.out:
        Path(args.out).write_text(text)
    print(text[:2000])


if __name__ == "__main__":
    main()
