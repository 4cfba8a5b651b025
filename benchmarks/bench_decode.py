"""Verify + decode throughput on real photos: transferkit vs plain Pillow, measured in the same run.

    python benchmarks/bench_decode.py [--data /work/shared/data/catsdogs] [--limit 1000] [--repeats 3]
                                      [--backbone efficientnet_lite0] [--image-sizes 224,112]

Every configuration decodes the same photos to the network input of a backbone spec (shorter side
to the spec's resize size with its interpolation, centre crop, float tensor [3, H, W] in [0, 1]).
The configurations are interleaved and each is run ``--repeats`` times; the tables give medians.
Two clocks: wall time (images/s) and CPU time of this process and its workers (ms of CPU per
image). On a machine shared with other jobs CPU time is the steadier comparison.

Rows:
- plain + torchvision: ``Image.open(p).convert("RGB")``, PIL resize + crop, ``TF.to_tensor``:
  what a training script usually does; no checks (it crashes on the first bad file).
- plain + numpy: the same with a numpy tensor conversion (the cheapest plain path).
- transferkit decode: ``load_for_spec(p, spec, fast=True)`` (JPEG draft when the photo is at least
  twice the resize size, EXIF rotation, any mode to RGB, bomb guard), and ``fast=False``.
- transferkit verify pass: read + content hash + 1/8-scale decode of every file, cold with 1 and
  with all workers, and warm (second look: one stat per file against the on-disk cache).
- transferkit verify + decode: the cold (all workers) or warm verify pass plus the fast decode.

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

from transferkit.data.decode import load_for_spec, pil_interpolation
from transferkit.data.verify import VerifyOptions, verify_files


def _plain_image(path: Path, spec) -> Image.Image:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = spec.resize_size / min(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), pil_interpolation(spec.interpolation))
    w, h = img.size
    left, top = (w - spec.image_size) // 2, (h - spec.image_size) // 2
    return img.crop((left, top, left + spec.image_size, top + spec.image_size))


def plain_torchvision(path: Path, spec):
    import torchvision.transforms.functional as TF

    return TF.to_tensor(_plain_image(path, spec))


def plain_numpy(path: Path, spec):
    import torch

    arr = np.asarray(_plain_image(path, spec), dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children)."""
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, _cpu() - c0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "catsdogs")
    parser.add_argument("--limit", type=int, default=1000, help="images per pass (split evenly over the classes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-sizes", type=lambda t: [int(x) for x in t.split(",")], default=[224, 112],
                        help="network input sizes, comma separated (the draft helps when photos are >= 2x the resize size)")
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
    warm_dir = cache_root / "warm"

    def verify(workers: int, warm: bool = False):
        cache_dir = warm_dir if warm else cache_root / f"cold{next(counter)}"  # a fresh folder is a cold cache
        checks, _ = verify_files(paths, root=args.data, options=VerifyOptions(), workers=workers, cache=True,
                                 cache_dir=cache_dir)
        assert all(c.ok for c in checks), [c.reason for c in checks if not c.ok][:3]

    verify(cores, warm=True)  # fills the warm cache and the OS page cache

    def each(fn, spec):
        return lambda: [fn(p, spec) for p in paths]

    def tk(fast):
        return lambda p, spec: load_for_spec(p, spec, fast=fast)

    runs: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for spec in specs:
            tag = f"@{spec.image_size}"
            for key, fn in (("plain_tv", plain_torchvision), ("plain_np", plain_numpy), ("fast", tk(True)), ("full", tk(False))):
                runs.setdefault(key + tag, []).append(timed(each(fn, spec)))
        runs.setdefault("verify_cold_1", []).append(timed(lambda: verify(1)))
        runs.setdefault("verify_cold_all", []).append(timed(lambda: verify(cores)))
        runs.setdefault("verify_warm", []).append(timed(lambda: verify(cores, warm=True)))
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}

    def ips(sec: float) -> str:
        return f"{n / sec:.0f}" if sec > 0 else "inf"

    def ms(sec: float) -> str:
        return f"{1000 * sec / n:.2f}"

    print(f"# bench_decode: {n} JPEGs from {args.data} (shorter side median {int(np.median([min(s) for s in sizes]))} px), "
          f"{args.backbone} spec ({specs[0].interpolation}) at {', '.join(str(s.image_size) for s in specs)} px")
    print(f"# machine: {platform.machine()}, {cores} cores (load average {os.getloadavg()[0]:.1f} at the end: shared "
          f"with other jobs), Python {platform.python_version()}, Pillow {Image.__version__}; "
          f"medians of {args.repeats} interleaved passes")
    print("\nVerify pass alone:\n")
    print("| verify pass | wall images/s | CPU ms / image |")
    print("|---|---|---|")
    for key, label in (("verify_cold_1", "cold, 1 worker"), ("verify_cold_all", f"cold, {cores} workers"),
                       ("verify_warm", "warm (second look, on-disk cache)")):
        print(f"| {label} | {ips(wall[key])} | {ms(cpu[key])} |")
    print("\nDecode to the network input, 1 process (verify + decode adds the verify pass above):\n")
    print("| input size | JPEGs drafted | path | wall images/s | CPU ms / image | wall vs plain+torchvision | CPU vs plain+torchvision |")
    print("|---|---|---|---|---|---|---|")
    for spec in specs:
        tag = f"@{spec.image_size}"
        drafted = sum(1 for w, h in sizes if min(w, h) >= 2 * spec.resize_size)
        rows = [
            ("plain Image.open().convert(\"RGB\") + resize + crop + TF.to_tensor", wall["plain_tv" + tag], cpu["plain_tv" + tag]),
            ("plain ... + numpy to tensor", wall["plain_np" + tag], cpu["plain_np" + tag]),
            ("transferkit load_for_spec(fast=False)", wall["full" + tag], cpu["full" + tag]),
            ("transferkit load_for_spec(fast=True) (draft)", wall["fast" + tag], cpu["fast" + tag]),
            (f"transferkit verify (cold, {cores} workers) + fast decode",
             wall["verify_cold_all"] + wall["fast" + tag], cpu["verify_cold_all"] + cpu["fast" + tag]),
            ("transferkit verify (warm) + fast decode",
             wall["verify_warm"] + wall["fast" + tag], cpu["verify_warm"] + cpu["fast" + tag]),
        ]
        for label, w, c in rows:
            print(f"| {spec.image_size} (resize {spec.resize_size}) | {drafted}/{n} | {label} | {ips(w)} | {ms(c)} "
                  f"| {wall['plain_tv' + tag] / w:.2f}x | {cpu['plain_tv' + tag] / c:.2f}x |")
    for spec in specs:
        drafted_paths = [p for p, (w, h) in zip(paths, sizes) if min(w, h) >= 2 * spec.resize_size][:50]
        if drafted_paths:
            diffs = [float((load_for_spec(p, spec, fast=True) - load_for_spec(p, spec, fast=False)).abs().mean())
                     for p in drafted_paths]
            print(f"\n{spec.image_size} px: draft vs full decode, mean |difference| per pixel on {len(diffs)} drafted "
                  f"photos: median {np.median(diffs):.4f}, max {max(diffs):.4f} (pixels in 0..1)")
    print("\nall passes (wall s, CPU s):", {k: [(round(w, 3), round(c, 3)) for w, c in v] for k, v in runs.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
