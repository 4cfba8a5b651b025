"""Train / val / test splits that are identical across runs and machines, and leakage checks.

The order inside each class comes from a keyed hash (blake2b) of the seed and each image's path
relative to the dataset root, never from Python's ``hash()`` (salted per process) or from
directory listing order (file-system dependent). Exact duplicates (same content hash) always land
in the same split, so a seeded split never creates train/test leakage of its own.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections import defaultdict

import numpy as np

from transferkit.core.errors import DataError
from transferkit.data.imageset import ImageSet

logger = logging.getLogger(__name__)


def _order_key(seed: int, relative_path: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{relative_path}".encode(), digest_size=16).digest()


def duplicate_groups(imageset: ImageSet) -> list[list[int]]:
    """Indices of images with identical content (groups of 2+), in a deterministic order."""
    if imageset.hashes is None:
        return []
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(imageset.hashes):
        if h:
            by_hash[h].append(i)
    rel = imageset.relative_paths()
    groups = [sorted(g, key=lambda i: rel[i]) for g in by_hash.values() if len(g) > 1]
    return sorted(groups, key=lambda g: rel[g[0]])


def leaking_groups(imageset: ImageSet, groups: list[list[int]] | None = None) -> list[list[int]]:
    """Duplicate groups with a member in test and another in train or val."""
    if imageset.split is None:
        return []
    groups = duplicate_groups(imageset) if groups is None else groups
    out = []
    for g in groups:
        splits = {imageset.split[i] for i in g}
        if "test" in splits and splits & {"train", "val"}:
            out.append(g)
    return out


def _allocate(units: list[int], fractions: tuple[float, float]) -> tuple[int, int]:
    """How many of ``units`` go to val and test (rounded; train keeps at least one)."""
    n = len(units)
    val_f, test_f = fractions
    # Half rounds up (2.5 -> 3), not Python's round-half-to-even, so counts are easy to predict.
    n_test = math.floor(test_f * n + 0.5)
    n_val = math.floor(val_f * n + 0.5)
    # A class of three or more keeps at least one example in each requested split.
    if n >= 3:
        n_test = max(n_test, 1 if test_f > 0 else 0)
        n_val = max(n_val, 1 if val_f > 0 else 0)
    while n_test + n_val >= n and n > 0 and (n_test or n_val):
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _seeded_split(
    unit_members: list[list[int]], unit_labels: list[int], unit_keys: list[bytes], *,
    val: float, test: float, stratified: bool,
) -> dict[int, str]:
    """Assign each unit (a duplicate group or a single image) to train/val/test."""
    strata: dict[int, list[int]] = defaultdict(list)
    for u, label in enumerate(unit_labels):
        strata[label if stratified else 0].append(u)
    assignment: dict[int, str] = {}
    for label in sorted(strata):
        units = sorted(strata[label], key=lambda u: unit_keys[u])
        n_val, n_test = _allocate(units, (val, test))
        for rank, u in enumerate(units):
            name = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            for i in unit_members[u]:
                assignment[i] = name
    return assignment


def split_imageset(
    imageset: ImageSet,
    *,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    stratified: bool = True,
    use_official: bool = True,
) -> ImageSet:
    """Give every image a split: "train", "val" or "test"; returns a new ImageSet.

    With ``use_official`` and a set that already carries a split (Oxford-IIIT's trainval/test,
    split folders, a CSV split column), that split is kept: its test part stays test and, when it
    has no val part, ``val`` (a fraction of the train part) is carved from train, stratified and
    seeded. Otherwise ``test`` and ``val`` are fractions of the whole set.

    The result depends only on ``seed``, the images' paths relative to ``imageset.root``, their
    labels and content hashes: the same on every run and machine. Exact duplicates stay together.

    Args:
        imageset: the images (from :func:`transferkit.data.load_images` or built directly).
        val: fraction for validation.
        test: fraction for test (ignored when the official split is used).
        seed: any int; changes the assignment.
        stratified: keep class proportions in every split.
        use_official: keep the dataset's own split when it has one.

    Raises:
        DataError: fractions outside [0, 1) or summing to 1 or more.
    """
    for name, f in (("val", val), ("test", test)):
        if not 0.0 <= float(f) < 1.0:
            raise DataError(f"{name}={f} must be a fraction in [0, 1), e.g. 0.15")
    if val + test >= 1.0:
        raise DataError(f"val + test = {val + test:.2f} leaves nothing to train on; use smaller fractions")
    n = len(imageset)
    rel = imageset.relative_paths()
    groups = duplicate_groups(imageset)
    group_of = {i: gi for gi, g in enumerate(groups) for i in g}

    official = use_official and imageset.split is not None
    if official:
        splits = list(imageset.split)  # type: ignore[arg-type]
        pool = [i for i in range(n) if splits[i] == "train"]
        carve_val = val > 0 and "val" not in splits
        fractions = (val, 0.0)
        method = "official split" + (f"; val carved from train ({val:.0%} of it, seed {seed})" if carve_val else "")
    else:
        splits = ["train"] * n
        pool = list(range(n))
        carve_val = True
        fractions = (val, test)
        method = f"seeded {'stratified ' if stratified else ''}split val={val} test={test} seed={seed}"

    if carve_val:
        # Units: duplicate groups (restricted to the pool) or single images.
        unit_of: dict[object, list[int]] = {}
        for i in pool:
            unit_of.setdefault(("g", group_of[i]) if i in group_of else ("i", i), []).append(i)
        members = [sorted(m, key=lambda i: rel[i]) for m in unit_of.values()]
        labels = [int(imageset.labels[m[0]]) for m in members]
        keys = [_order_key(seed, rel[m[0]]) for m in members]
        assignment = _seeded_split(members, labels, keys, val=fractions[0], test=fractions[1], stratified=stratified)
        for i, name in assignment.items():
            splits[i] = name

    out = ImageSet(
        paths=list(imageset.paths),
        labels=imageset.labels.copy(),
        class_names=list(imageset.class_names),
        split=splits,
        report=copy.deepcopy(imageset.report),
        root=imageset.root,
        hashes=list(imageset.hashes) if imageset.hashes is not None else None,
        sizes=list(imageset.sizes) if imageset.sizes is not None else None,
    )
    out.report.leakage = [[str(out.paths[i]) for i in g] for g in leaking_groups(out, groups)]
    out.report.options = {**out.report.options, "split": method}
    counts = out.split_counts()
    logger.info("%s -> %s", method, counts)
    if out.report.leakage:
        logger.warning("%d duplicate groups span train/val and test (leakage)", len(out.report.leakage))
    empty = [c for c in range(out.num_classes) if not any(
        s == "train" and lab == c for s, lab in zip(splits, out.labels))]
    if empty:
        names = ", ".join(out.class_names[c] for c in empty[:5])
        out.report.notes.append(f"{len(empty)} classes have no training image ({names})")
    return out


def split_summary(imageset: ImageSet) -> dict[str, dict[str, int]]:
    """Per split, images per class (for reports and ``data inspect``)."""
    if imageset.split is None:
        return {}
    table: dict[str, dict[str, int]] = {}
    split_arr = np.asarray(imageset.split)
    for name in ("train", "val", "test"):
        mask = split_arr == name
        if mask.any():
            counts = np.bincount(imageset.labels[mask], minlength=imageset.num_classes)
            table[name] = {c: int(k) for c, k in zip(imageset.class_names, counts)}
    return table
