"""Fine-tuning benchmark: training throughput vs a plain timm loop, and accuracy vs the linear probe.

Usage:
    python benchmarks/bench_finetune.py --data ../shared/data/catsdogs [--part throughput|accuracy|all]

Throughput (EfficientNet-Lite0, batch 32, same run, same model, medians of steps after a warm-up):
    plain     a plain timm training loop: decode JPEG + RandomResizedCrop + flip + ToTensor + Normalize
              every step, model.train() (BatchNorm updating), AdamW over every parameter, NCHW.
    full      transferkit strategy="full", unfreeze="all" at 224 px (decoded-image cache,
              channels_last, frozen BatchNorm statistics).
    full160   the same at 160 px training resolution.
    cached    strategy="cached": top 3 layer groups + head on cached trunk activations.
Accuracy: stratified 50/50 split (seed 0), the probe (logistic regression on frozen pooled features;
transferkit's LP-FT starting point, reported as epoch 0) against the cached fine-tune; test accuracy
per epoch and the wall time at which the fine-tune first reaches the probe's accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time

import numpy as np
import torch


def _split(data: str):
    from transferkit.data import load_images, split_imageset

    ims = load_images(data)
    ims = split_imageset(ims, val=0.0, test=0.5, seed=0, stratified=True)
    return ims.where_split("train"), ims.where_split("test")


def plain_timm_loop(train, steps: int, batch: int, size: int = 224) -> list[float]:
    """A plain training loop as a user would write it from the timm / torchvision docs."""
    from PIL import Image
    from torchvision import transforms as T

    from transferkit.backbones import create_backbone

    bb = create_backbone("efficientnet_lite0")
    net = bb.net
    net.reset_classifier(len(train.class_names))
    spec = bb.spec
    tf = T.Compose([T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(spec.mean, spec.std)])

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(train)

        def __getitem__(self, i):
            return tf(Image.open(train.paths[i]).convert("RGB")), int(train.labels[i])

    loader = torch.utils.data.DataLoader(DS(), batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.05)
    net.train()
    walls, cpus = [], []
    t, c = time.perf_counter(), time.process_time()
    for i, (x, y) in enumerate(loader):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        now, cnow = time.perf_counter(), time.process_time()
        walls.append(now - t)
        cpus.append(cnow - c)
        t, c = now, cnow
        if i + 1 >= steps:
            break
    # first step = warm-up; images per wall second and per CPU second (the CPU is shared)
    return [batch / s for s in walls[1:]], [batch / s for s in cpus[1:]]


def transferkit_rates(train, cfg, steps: int) -> tuple[list[float], list[float]]:
    """Images per wall second and per CPU second of transferkit's loop, per step (first step dropped)."""
    import dataclasses

    from transferkit.finetune import finetune
    from transferkit.finetune import loop as L

    walls: list[float] = []
    cpus: list[float] = []
    last = [0.0, 0.0]

    def on_step(info):
        now, cnow = time.perf_counter(), time.process_time()
        walls.append(cfg.batch_size / (now - last[0]))
        cpus.append(cfg.batch_size / (cnow - last[1]))
        last[0], last[1] = now, cnow

    orig = L.train_one_epoch

    def timed_epoch(*a, **k):  # start the clock when the loop starts (setup is reported separately)
        last[0], last[1] = time.perf_counter(), time.process_time()
        return orig(*a, **k)

    cfg = dataclasses.replace(cfg, epochs=1, head_epochs=0, max_steps_per_epoch=steps, head_init="random", patience=None)
    L.train_one_epoch = timed_epoch
    try:
        finetune(train, cfg, on_step=on_step)
    finally:
        L.train_one_epoch = orig
    return walls[1:], cpus[1:]


def part_throughput(train, steps: int, batch: int) -> dict:
    from transferkit.finetune import FinetuneConfig

    runs = {
        "full": FinetuneConfig(strategy="full", unfreeze="all", batch_size=batch, augment="standard"),
        "full160": FinetuneConfig(strategy="full", unfreeze="all", batch_size=batch, augment="standard", image_size=160),
        "cached": FinetuneConfig(strategy="cached", unfreeze=3, cached_views=1, batch_size=batch),
    }
    out = {}
    for name in ["plain", *runs, "plain_again"]:
        t = time.perf_counter()
        if name.startswith("plain"):
            wall, cpu = plain_timm_loop(train, steps if name == "plain" else max(3, steps - 1), batch)
        else:
            wall, cpu = transferkit_rates(train, runs[name], steps if name != "cached" else len(train) // batch)
        out[name] = {"wall": wall, "cpu": cpu}
        print(f"{name}: median {statistics.median(wall):.2f} img/s wall, {statistics.median(cpu):.2f} img per CPU-s "
              f"({time.perf_counter() - t:.0f} s incl. setup)", flush=True)
    return out


def part_accuracy(train, test, args) -> dict:
    from transferkit.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(strategy="cached", unfreeze=args.unfreeze, cached_views=args.views, epochs=args.epochs, head_epochs=0,
                         lr=args.lr, layer_decay=0.7, weight_decay=0.05, label_smoothing=args.label_smoothing, augment=args.augment,
                         batch_size=32, patience=None, seed=0, checkpoint_dir=args.cache_dir, probe_c=args.probe_c)
    t0 = time.perf_counter()
    model_fit = finetune(train, cfg, val=test)
    history = model_fit.history
    total = time.perf_counter() - t0
    timings = model_fit.timings
    probe = history[0]["val_acc"]
    elapsed = timings["prepare_s"]
    reached = None
    for r in history[1:]:
        elapsed += r["train_seconds"]
        r["elapsed_s"] = elapsed
        if reached is None and r["val_acc"] > probe:
            reached = elapsed
    return {"config": cfg.to_dict(), "history": history, "probe_acc": probe, "final_acc": history[-1]["val_acc"],
            "best_acc": max(r["val_acc"] for r in history[1:]), "total_s": total, "timings": timings,
            "time_to_beat_probe_s": reached}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/catsdogs")
    ap.add_argument("--part", default="all", choices=["throughput", "accuracy", "all"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--subset", type=int, default=256, help="training images used by the throughput part")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--unfreeze", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--augment", default="standard")
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--probe-c", type=float, default=None, help="C of the probe head (default: 5-fold CV)")
    ap.add_argument("--out", default="benchmarks/results/finetune.json")
    ap.add_argument("--cache-dir", default=None, help="keep the trunk activations here (reused by runs with other lr/epochs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    train, test = _split(args.data)
    result = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                          "torch": torch.__version__, "note": "CPU shared with other jobs: prefer the ratios"},
              "train_images": len(train), "test_images": len(test)}
    if args.part in ("throughput", "all"):
        sub = train.subset(np.random.default_rng(0).permutation(len(train))[: args.subset])
        thr = part_throughput(sub, args.steps, args.batch)
        summary = {}
        for kind in ("wall", "cpu"):
            med = {k: statistics.median(v[kind]) for k, v in thr.items()}
            plain = statistics.median(thr["plain"][kind] + thr["plain_again"][kind])
            summary[kind] = {"median": med, "ratio_vs_plain": {k: med[k] / plain for k in ("full", "full160", "cached")}}
        result["throughput"] = {"raw": thr, **summary}
        print(json.dumps(summary, indent=1), flush=True)
    if args.part in ("accuracy", "all"):
        acc = part_accuracy(train, test, args)
        result["accuracy"] = acc
        print(json.dumps({k: v for k, v in acc.items() if k != "history"}, indent=1, default=str))
        for r in acc["history"]:
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    from transferkit.core.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
