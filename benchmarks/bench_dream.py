"""CPU cost of growing one ideal class image: 256 steps at 224 px with EfficientNet-Lite0.

Measures process CPU time (all threads) and wall time of :func:`render_class_image` with the
default settings (Fourier parameterisation, 2 transformed views per step, TV penalty), and, in the
same run, peers that put the number in context:

* the bare network: forward + backward to the input for a batch of 2 at 224 px, the same number of
  times (the floor any render loop pays);
* the default render with 2 torch threads instead of 1 (fewer steps, scaled to 256);
* the default render without the channels-last switch (fewer steps, scaled to 256).

Usage:
    python benchmarks/bench_dream.py [--steps 256] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time


def _timed(fn) -> tuple[float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu0, time.perf_counter() - wall0


def main(argv: list[str] | None = None) -> int:
    import torch

    from transferkit.backbones import create_backbone
    from transferkit.explain.objectives import build_class_objective
    from transferkit.explain.render import RenderConfig, render

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--short-steps", type=int, default=64, help="steps for the 2-thread and channels-first peers (scaled up in the table)")
    args = parser.parse_args(argv)

    model = create_backbone("efficientnet_lite0")
    index = 340  # zebra
    objective = build_class_objective(index, tv_weight=RenderConfig().tv_weight)
    results: dict[str, list[tuple[float, float]]] = {}

    def run_render(steps: int, channels_last: bool) -> None:
        render(model, objective, RenderConfig(steps=steps), class_index=index, channels_last=channels_last)

    def run_bare(steps: int) -> None:
        net = model.to(memory_format=torch.channels_last)
        for p in net.parameters():
            p.requires_grad_(False)
        x = torch.rand(2, 3, 224, 224).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        for _ in range(steps):
            net(x)[:, index].sum().backward()
        model.to(memory_format=torch.contiguous_format)

    variants = [
        ("render, default settings, 1 thread", 1, lambda: run_render(args.steps, True), args.steps),
        ("bare network fwd+bwd (batch 2), 1 thread", 1, lambda: run_bare(args.steps), args.steps),
        # Few steps: on a busy machine two threads can cost 10x the CPU time (spin-waiting).
        ("render, default settings, 2 threads", 2, lambda: run_render(args.short_steps, True), args.short_steps),
        ("render, channels-first (no switch), 1 thread", 1, lambda: run_render(args.short_steps, False), args.short_steps),
    ]
    run_render(2, True)  # warm-up: allocator, oneDNN primitives
    for _ in range(args.repeats):
        for name, threads, fn, steps in variants:
            torch.set_num_threads(threads)
            cpu, wall = _timed(fn)
            scale = args.steps / steps
            results.setdefault(name, []).append((cpu * scale, wall * scale))
            print(f"{name}: cpu {cpu:.1f} s, wall {wall:.1f} s for {steps} steps", flush=True)

    base_cpu = statistics.median(c for c, _ in results[variants[0][0]])
    lines = [
        f"EfficientNet-Lite0, {args.steps} steps at 224 px, median of {args.repeats}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}.",
        "",
        f"| variant | CPU s per {args.steps} steps | wall s | CPU vs default render |",
        "|---|---|---|---|",
    ]
    for name, _, _, steps in variants:
        cpu = statistics.median(c for c, _ in results[name])
        wall = statistics.median(w for _, w in results[name])
        note = f" (measured {steps} steps, scaled)" if steps != args.steps else ""
        lines.append(f"| {name}{note} | {cpu:.1f} | {wall:.1f} | {cpu / base_cpu:.2f}x |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
