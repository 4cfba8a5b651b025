"""Do ideal class images mean something beyond the network that grew them?

EfficientNet-Lite0 grows an image for each class and seed twice: with the default regularised
settings (Fourier parameterisation + jitter/scale/rotate views + TV penalty) and with the lesson's
noisy baseline (raw pixels, no transforms, --tv-weight 0; :func:`plain_config`). Each image is
saved as an 8-bit PNG and EfficientNet-Lite2 judges it through the ordinary loading path
(``load_for_spec``: resize + centre crop to Lite2's 260 px). We count how often the target class is
in Lite2's top 5.

Also records, for every image, Lite0's probability for the class (float image and after 8-bit
rounding) and the total variation, so the "p >= 0.99" and "TV at least 5x lower" checks come from
the same renders.

Runs ``--workers`` processes with one thread each (on a shared 2-core machine, two single-thread
processes waste less CPU time on thread synchronisation than one two-thread process).

Usage:
    python benchmarks/check_dream_transfer.py [--steps 256] [--seeds 5] [--workers 2] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

CLASSES = ("tabby cat", "zebra", "goldfish", "daisy")
_STATE: dict = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    from transferkit.backbones import create_backbone

    _STATE["maker"] = create_backbone("efficientnet_lite0")
    _STATE["judge"] = create_backbone("efficientnet_lite2")


def _run_one(task: tuple[str, int, str, int, str]) -> dict:
    import torch
    from PIL import Image

    from transferkit.backbones.imagenet import imagenet_class_names, resolve_imagenet_class, short_name
    from transferkit.data.decode import load_for_spec
    from transferkit.explain.render import RenderConfig, plain_config, render_class_image, to_uint8

    class_query, seed, variant, steps, out_dir = task
    maker, judge = _STATE["maker"], _STATE["judge"]
    index = resolve_imagenet_class(class_query)
    config = RenderConfig(steps=steps, seed=seed)
    if variant == "plain":
        config = plain_config(config)
    result = render_class_image(maker, index, config, class_name=class_query)
    path = os.path.join(out_dir, f"{class_query.replace(' ', '_')}_seed{seed}_{variant}.png")
    Image.fromarray(to_uint8(result.image)).save(path)
    names = imagenet_class_names()
    with torch.no_grad():
        maker_p8 = float(maker(load_for_spec(path, maker.spec)[None]).softmax(1)[0, index])
        probs = judge(load_for_spec(path, judge.spec)[None]).softmax(1)[0]
    rank = int((probs > probs[index]).sum()) + 1
    top = probs.topk(5)
    return {
        "class": class_query,
        "index": index,
        "seed": seed,
        "variant": variant,
        "steps": steps,
        "lite0_p": result.probability,
        "lite0_p_png": maker_p8,
        "tv": result.tv,
        "lite2_rank": rank,
        "lite2_p": float(probs[index]),
        "lite2_top5": [(short_name(names[i]), round(float(p), 4)) for p, i in zip(top.values, top.indices)],
        "cpu_seconds": result.cpu_seconds,
        "wall_seconds": result.wall_seconds,
        "image": path,
        "config": asdict(config),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--classes", default=",".join(CLASSES))
    parser.add_argument("--out-dir", default="/tmp/dream_transfer")
    parser.add_argument("--json", default="benchmarks/results/dream_transfer.json")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    # Seed-major order: the first renders already cover every class, so a cut-short run still says something.
    tasks = [(c, s, v, args.steps, args.out_dir) for s in range(args.seeds) for c in classes for v in ("regularised", "plain")]
    t0 = time.perf_counter()
    rows: list[dict] = []
    with ProcessPoolExecutor(max_workers=args.workers, initializer=_init_worker) as pool:
        for row in pool.map(_run_one, tasks):
            rows.append(row)
            print(
                f"{row['class']:>10} seed {row['seed']} {row['variant']:>11}: lite0 p={row['lite0_p']:.4f} "
                f"(png {row['lite0_p_png']:.4f}) tv={row['tv']:.4f} lite2 rank {row['lite2_rank']} "
                f"top5={row['lite2_top5']} cpu {row['cpu_seconds']:.1f}s",
                flush=True,
            )
            with open(args.json + ".partial", "w") as fh:
                json.dump(rows, fh, indent=1)
    wall = time.perf_counter() - t0

    lines = [
        f"Lite0 renders judged by Lite2, {args.steps} steps, seeds 0-{args.seeds - 1}; machine: "
        f"{platform.machine()} {os.cpu_count()} cores (shared with other jobs); total wall {wall:.0f} s.",
        "",
        "| class | regularised: target in Lite2 top 5 | plain (tv 0): in top 5 | regularised top 1 |"
        " Lite0 p min (reg / plain) | TV median (reg / plain) | TV ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in classes:
        reg = [r for r in rows if r["class"] == c and r["variant"] == "regularised"]
        pla = [r for r in rows if r["class"] == c and r["variant"] == "plain"]
        tv_reg, tv_pla = statistics.median(r["tv"] for r in reg), statistics.median(r["tv"] for r in pla)
        lines.append(
            f"| {c} | {sum(r['lite2_rank'] <= 5 for r in reg)}/{len(reg)} | {sum(r['lite2_rank'] <= 5 for r in pla)}/{len(pla)} "
            f"| {sum(r['lite2_rank'] == 1 for r in reg)}/{len(reg)} "
            f"| {min(r['lite0_p'] for r in reg):.4f} / {min(r['lite0_p'] for r in pla):.4f} "
            f"| {tv_reg:.3f} / {tv_pla:.3f} | {tv_pla / tv_reg:.1f}x |"
        )
    cpu_reg = [r["cpu_seconds"] for r in rows if r["variant"] == "regularised"]
    lines += ["", f"median CPU seconds per regularised render: {statistics.median(cpu_reg):.1f}"]
    print("\n".join(lines))
    with open(args.json, "w") as fh:
        json.dump({"rows": rows, "summary": lines, "wall_seconds": wall}, fh, indent=1)
    if os.path.exists(args.json + ".partial"):
        os.remove(args.json + ".partial")
    return 0


if __name__ == "__main__":
    sys.exit(main())
