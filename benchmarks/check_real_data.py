"""Check transferkit.data on the real photos in ../shared/data (not a test: needs that folder).

    python benchmarks/check_real_data.py [--data /work/shared/data]

Prints the numbers and exits 1 when a check fails:
- oxford-pets-sample: breeds and species counted, the GIF and the PNG named .jpg decode, the
  listed-but-missing count equals (entries in list.txt) - (listed images present), the official
  trainval/test split is used (and val is carved from trainval only).
- catsdogs: 2 classes, 1000 images each, nothing rejected; a second look is served from the cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from transferkit.data import load_images, split_imageset
from transferkit.data.verify import check_file

failures: list[str] = []


def check(condition: bool, what: str) -> None:
    print(f"  [{'ok' if condition else 'FAIL'}] {what}")
    if not condition:
        failures.append(what)


def oxford(root: Path) -> None:
    print(f"oxford-pets-sample ({root})")
    breeds = load_images(root, workers=2)
    r = breeds.report
    print(f"  {r.summary()}; format_reason: {r.format_reason}")
    print(f"  classes ({breeds.num_classes}): {breeds.class_counts()}")
    listed = [ln.split()[0] for ln in (root / "annotations" / "list.txt").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    on_disk = {p.stem for p in (root / "images").glob("*.jpg")}
    expected_missing = len(set(listed) - on_disk)
    check(len(r.missing) == expected_missing,
          f"listed-but-missing = {len(r.missing)} (list.txt {len(listed)} entries, {len(set(listed) & on_disk)} of them present)")
    present_breeds = {n.rsplit("_", 1)[0] for n in on_disk & set(listed)}
    sampled = {b for b, n in breeds.class_counts().items() if n >= 10}
    check(breeds.num_classes == len(present_breeds),
          f"{breeds.num_classes} breeds = breeds of the listed images present: {len(sampled)} sampled breeds with "
          f">= 10 images (the README's '34 breeds') + Abyssinian, present only as the PNG named .jpg "
          "(and the unlisted GIF)")
    for name, fmt in (("Abyssinian_34.jpg", "GIF"), ("Abyssinian_5.jpg", "PNG")):
        c = check_file(root / "images" / name)
        check(c.ok and c.format == fmt, f"{name} decodes: {c.format} {c.width}x{c.height} {c.mode} {c.reason}")
    kept_names = {p.name for p in breeds.paths}
    rejected = {Path(x.path).name: x.reason for x in r.rejected}
    print(f"  Abyssinian_5.jpg (PNG, listed in test.txt) kept: {'Abyssinian_5.jpg' in kept_names}")
    print(f"  Abyssinian_34.jpg (GIF, not in list.txt): {rejected.get('Abyssinian_34.jpg', 'kept')}")
    check("Abyssinian_5.jpg" in kept_names, "the PNG named .jpg is in the set")
    test_names = {ln.split()[0] for ln in (root / "annotations" / "test.txt").read_text().splitlines() if ln.strip()}
    official_ok = all((s == "test") == (p.stem in test_names) for p, s in zip(breeds.paths, breeds.split))
    check(official_ok, f"official split used: {breeds.split_counts()} (test = exactly the images in test.txt)")
    split = split_imageset(breeds, val=0.15, seed=0)
    carved = all(not (s == "val" and p.stem in test_names) for p, s in zip(split.paths, split.split))
    check(carved and split.split_counts()["test"] == breeds.split_counts()["test"],
          f"split_imageset keeps the official test, val from trainval: {split.split_counts()}")
    species = load_images(root, label_by="species", workers=2)
    check(species.class_names == ["cat", "dog"], f"by species: {species.class_counts()}")
    check(len(r.leakage) == 0, f"duplicates {len(r.duplicates)}, leakage {len(r.leakage)}")


def catsdogs(root: Path) -> None:
    print(f"catsdogs ({root})")
    t0 = time.perf_counter()
    s = load_images(root)
    cold = time.perf_counter() - t0
    r = s.report
    print(f"  {r.summary()}; format_reason: {r.format_reason}")
    check(s.class_counts() == {"cat": 1000, "dog": 1000}, f"classes {s.class_counts()}")
    check(len(r.rejected) == 0 and len(r.missing) == 0, f"rejected {len(r.rejected)}, missing {len(r.missing)}")
    t0 = time.perf_counter()
    again = load_images(root)
    warm = time.perf_counter() - t0
    check(again.report.cache_hits == 2000, f"second look: {again.report.cache_hits} from cache")
    print(f"  load_images cold {cold:.2f}s ({2000 / cold:.0f} images/s, {os.cpu_count()} cores), "
          f"warm {warm:.3f}s ({2000 / warm:.0f} images/s)")
    print(f"  duplicates: {len(r.duplicates)} groups {[[Path(p).name for p in g] for g in r.duplicates][:5]}")
    split = split_imageset(s, seed=0)
    print(f"  split_imageset(seed=0): {split.split_counts()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    # A private cache so "cold" really is cold.
    os.environ["TRANSFERKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="tk-check-")
    for name, fn in (("oxford-pets-sample", oxford), ("catsdogs", catsdogs)):
        if (args.data / name).is_dir():
            fn(args.data / name)
        else:
            print(f"{args.data / name} not found; skipped")
    print("all checks passed" if not failures else f"{len(failures)} checks FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
