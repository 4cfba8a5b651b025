"""Verify + decode throughput on real photos: transferkit vs plain Pillow, measured in the same run.

    python benchmarks/bench_decode.py [--data /work/shared/data/catsdogs] [--limit 1000] [--repeats 5]
                                      [--backbone efficientnet_lite0]

Rows (images/s, median of ``--repeats`` passes, the configurations interleaved so that load from
other processes on a shared machine hits them alike):

- plain: ``Image.open(p).convert("RGB")``, shorter side resized to the spec's resize size with
  the spec's interpolation, centre crop, to a [0, 1] tensor; one process, no checks at all (it
  crashes on the first bad file).
- transferkit decode: ``load_for_spec(p, spec, fast=True)`` (JPEG draft when the photo is at least
  twice the resize size, EXIF rotation, mode conversion, bomb guard); also ``fast=False``.
- transferkit verify: the verify pass (read, content hash, 1/8-scale decode) cold with 1 and with
  all workers, and warm (second look, on-disk cache).
- transferkit verify + decode: cold verify (all workers) then the fast decode, and the same with a
  warm cache; the ratio column compares each row with plain.

Files come from the OS page cache after the first pass, so disk speed is not measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.data.decode import load_for_spec, pil_interpolation, to_tensor01
from transferkit.data.verify import VerifyOptions, verify_files


def plain_decode(path: Path, spec) -> object:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = spec.resize_size / min(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), pil_interpolation(spec.interpolation))
    w, h = img.size
    left, top = (w - spec.image_size) // 2, (h - spec.image_size) // 2
    img = img.crop((left, top, left + spec.image_size, top + spec.image_size))
    return to_tensor01(img)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "catsdogs")
    parser.add_argument("--limit", type=int, default=1000, help="images per pass (half cats, half dogs)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-sizes", type=lambda t: [int(x) for x in t.split(",")], default=[224, 112],
                        help="network input sizes to measure, comma separated (the draft helps when photos are "
                             ">= 2x the resize size)")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"{args.data} not found; pass --data", file=sys.stderr)
        return 1

    from transferkit.backbones import create_backbone

    specs = [create_backbone(args.backbone, weights="none", image_size=size).spec for size in args.image_sizes]
    classes = sorted(d for d in args.data.iterdir() if d.is_dir())
    per = args.limit // max(1, len(classes))
    paths = [p for d in classes for p in sorted(d.glob("*.jpg"))[:per]]
    n = len(paths)
    sizes = [Image.open(p).size for p in paths]
    cores = os.cpu_count() or 1

    cache_root = Path(tempfile.mkdtemp(prefix="tk-bench-"))
    counter = iter(range(10**6))

    def verify(workers: int, warm_dir: Path | None = None):
        cache_dir = warm_dir or cache_root / f"cold{next(counter)}"  # fresh dir = cold
        checks, _ = verify_files(paths, root=args.data, options=VerifyOptions(), workers=workers, cache=True,
                                 cache_dir=cache_dir)
        assert all(c.ok for c in checks), [c.reason for c in checks if not c.ok][:3]

    warm_dir = cache_root / "warm"
    verify(cores, warm_dir)  # fill the warm cache (and the OS page cache)

    def tk_decode(spec, fast: bool):
        for p in paths:
            load_for_spec(p, spec, fast=fast)

    def plain(spec):
        for p in paths:
            plain_decode(p, spec)

    runs: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for spec in specs:
            tag = f"{spec.image_size}px"
            runs.setdefault(f"plain@{tag}", []).append(timed(lambda: plain(spec)))
            runs.setdefault(f"fast@{tag}", []).append(timed(lambda: tk_decode(spec, True)))
            runs.setdefault(f"full@{tag}", []).append(timed(lambda: tk_decode(spec, False)))
        runs.setdefault("verify_cold_1", []).append(timed(lambda: verify(1)))
        runs.setdefault("verify_cold_all", []).append(timed(lambda: verify(cores)))
        runs.setdefault("verify_warm", []).append(timed(lambda: verify(cores, warm_dir)))
    med = {k: statistics.median(v) for k, v in runs.items()}

    print(f"# bench_decode: {n} JPEGs from {args.data} (shorter side median {int(np.median([min(s) for s in sizes]))} px), "
          f"backbone {args.backbone} ({specs[0].interpolation}) at {', '.join(f'{s.image_size}' for s in specs)} px")
    print(f"# machine: {platform.processor() or platform.machine()}, {cores} cores, Python {platform.python_version()}, "
          f"Pillow {Image.__version__}; medians of {args.repeats} interleaved passes; CPU shared with other jobs")
    print()
    print("Verify pass alone (read + content hash + 1/8-scale decode of every file):\n")
    print("| verify pass | seconds / pass | images/s |")
    print("|---|---|---|")
    for key, label in (("verify_cold_1", "cold, 1 worker"), ("verify_cold_all", f"cold, {cores} workers"),
                       ("verify_warm", "warm (second look, on-disk cache)")):
        print(f"| {label} | {med[key]:.3f} | {n / med[key]:.0f} |")
    print()
    print("Verify + decode to the network input (1 process for the decode), against plain Pillow:\n")
    print("| input | JPEGs drafted | plain open+convert+resize img/s | transferkit decode fast / full img/s "
          "| transferkit verify(cold) + fast decode img/s | ratio vs plain | verify(warm) + fast decode img/s | ratio vs plain |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in specs:
        tag = f"{spec.image_size}px"
        drafted = sum(1 for w, h in sizes if min(w, h) >= 2 * spec.resize_size)
        cold = med["verify_cold_all"] + med[f"fast@{tag}"]
        warm = med["verify_warm"] + med[f"fast@{tag}"]
        print(f"| {spec.image_size} px (resize {spec.resize_size}) | {drafted}/{n} | {n / med[f'plain@{tag}']:.0f} "
              f"| {n / med[f'fast@{tag}']:.0f} / {n / med[f'full@{tag}']:.0f} | {n / cold:.0f} | {med[f'plain@{tag}'] / cold:.2f}x "
              f"| {n / warm:.0f} | {med[f'plain@{tag}'] / warm:.2f}x |")
        diffs = [float((load_for_spec(p, spec, fast=True) - load_for_spec(p, spec, fast=False)).abs().mean())
                 for p, (w, h) in zip(paths, sizes) if min(w, h) >= 2 * spec.resize_size][:50]
        if diffs:
            print(f"\n  {tag}: draft vs full decode, mean |difference| per pixel on {len(diffs)} drafted photos: "
                  f"median {np.median(diffs):.4f}, max {max(diffs):.4f} (pixels in 0..1)")
    print("\nall passes (s):", {k: [round(x, 3) for x in v] for k, v in runs.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
