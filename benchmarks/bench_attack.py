"""Time per image of transferkit's PGD against torchattacks' PGD: same model, same inputs, same run.

ImageNet EfficientNet-Lite0 (the bundled weights), N dog photos from ../shared/data/catsdogs at
224 px, targeted to "tabby cat", L-inf eps 4/255, alpha 1/255, 10 steps. Both attacks get the
same NCHW float tensor in one batch. Rounds are interleaved (ours, theirs, ours, ...) so a load
spike from other jobs on the shared CPU hits both; the table reports medians and the ratio
torchattacks / transferkit (> 1 means transferkit is faster).

Also checks, on the same inputs: FGSM max |difference| and the PGD (no random start) success sets.

Usage: python benchmarks/bench_attack.py [--images 16] [--rounds 3] [--threads 1] [--data ../shared/data/catsdogs]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "catsdogs"))
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads; 1 avoids OpenMP barrier stalls on a crowded CPU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import torchattacks

    from transferkit.attacks import attack
    from transferkit.backbones import create_backbone
    from transferkit.backbones.imagenet import resolve_imagenet_class
    from transferkit.data.decode import load_for_spec

    model = create_backbone("efficientnet_lite0")
    dogs = sorted((Path(args.data) / "dog").glob("*.jpg"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))[: args.images]
    x = torch.stack([load_for_spec(p, model.spec) for p in dogs])
    n = len(x)
    tabby = resolve_imagenet_class("tabby cat")
    target = torch.full((n,), tabby)
    eps, alpha, steps = 4 / 255, 1 / 255, args.steps

    ta_pgd = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    ta_pgd.set_mode_targeted_by_label(quiet=True)

    def run_theirs():
        t = time.perf_counter()
        adv = ta_pgd(x, target)
        return time.perf_counter() - t, adv

    def run_ours(**kw):
        t = time.perf_counter()
        r = attack(model, x, method="bim", target=target, eps=eps, alpha=alpha, steps=steps, batch_size=n, **kw)
        return time.perf_counter() - t, r

    run_ours()  # warm-up (oneDNN primitive caches) for both
    run_theirs()
    times: dict[str, list[float]] = {"transferkit": [], "transferkit (channels_last=False)": [], "torchattacks": []}
    for _ in range(args.rounds):
        s, ours = run_ours()
        times["transferkit"].append(s)
        s, _ = run_ours(channels_last=False)
        times["transferkit (channels_last=False)"].append(s)
        s, theirs = run_theirs()
        times["torchattacks"].append(s)

    with torch.no_grad():
        pred_theirs = model(theirs).argmax(1)
    same_success = bool(torch.equal(ours.success, pred_theirs == target))
    plain = run_ours(channels_last=False)[1]
    pgd_diff_same_layout = float((plain.adv - theirs).abs().max())

    # FGSM agreement. Our default feeds the model NHWC (channels_last) tensors; torchattacks keeps
    # the layout it is given. Same layout -> same kernels -> the same numbers. Different layouts
    # sum in a different order, and a gradient component within rounding of 0 can flip its sign.
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        clean_pred = model(x).argmax(1)
    fgsm_rows = []
    for name, goal, targeted in (("targeted", target, True), ("untargeted", clean_pred, False)):
        def ta_fgsm(inp, targeted=targeted, goal=goal):
            a = torchattacks.FGSM(model, eps=eps)
            if targeted:
                a.set_mode_targeted_by_label(quiet=True)
            return a(inp, goal)

        kw = {"target": goal} if targeted else {}
        ours_nhwc = attack(model, x, None if targeted else goal, method="fgsm", eps=eps, **kw).adv
        ours_nchw = attack(model, x, None if targeted else goal, method="fgsm", eps=eps, channels_last=False, **kw).adv
        ref_nchw, ref_nhwc = ta_fgsm(x), ta_fgsm(x_nhwc)
        d_mixed = (ours_nhwc - ref_nchw).abs()
        fgsm_rows.append((name, float((ours_nhwc - ref_nhwc).abs().max()), float((ours_nchw - ref_nchw).abs().max()), int((d_mixed > 1e-6).sum())))

    med = {k: statistics.median(v) / n for k, v in times.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores shared with other helpers' jobs;"
          f" torch {torch.__version__}, {torch.get_num_threads()} threads; torchattacks {torchattacks.__version__}")
    print(f"EfficientNet-Lite0 224 px, {n} dog photos in one batch, targeted -> tabby, eps 4/255, alpha 1/255, {steps} steps,"
          f" no random start; {args.rounds} interleaved rounds")
    print()
    print("| attack | median s / image | torchattacks / this |")
    print("|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {med['torchattacks'] / v:.2f} |")
    print()
    print(f"success: transferkit {int(ours.success.sum())}/{n}, torchattacks {int((pred_theirs == target).sum())}/{n}; same success set: {same_success}")
    print(f"PGD max |adv difference| with the same layout (channels_last=False vs torchattacks NCHW): {pgd_diff_same_layout:.2e}")
    print()
    print("| FGSM eps 4/255 | max abs diff, both NHWC | max abs diff, both NCHW | pixels > 1e-6 apart, ours NHWC vs theirs NCHW |")
    print("|---|---|---|---|")
    for name, a, b, c in fgsm_rows:
        print(f"| {name} | {a:.1e} | {b:.1e} | {c} of {x.numel()} |")
    print("raw seconds per round:", {k: [round(s, 2) for s in v] for k, v in times.items()})


if __name__ == "__main__":
    main()
