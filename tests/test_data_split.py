"""split_imageset: reproducible everywhere, stratified, official splits respected, no leakage made."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from transferkit.core.errors import DataError
from transferkit.data import ImageSet, split_imageset


def _set(per_class=(10, 10), root="/data", hashes=None, split=None) -> ImageSet:
    paths = [f"{root}/c{k}/img_{i}.jpg" for k, n in enumerate(per_class) for i in range(n)]
    labels = [k for k, n in enumerate(per_class) for _ in range(n)]
    return ImageSet(paths, labels, [f"c{k}" for k in range(len(per_class))], root=root, hashes=hashes, split=split)


def _assignment(s: ImageSet) -> dict[str, str]:
    return dict(zip(s.relative_paths(), s.split))


# Frozen: this exact assignment must come out on every machine, Python version and run. If it
# changes, splits saved by earlier versions no longer match (a silent train/test mix-up).
GOLDEN_SEED0 = {
    "c0/img_3.jpg": "val", "c0/img_5.jpg": "val", "c0/img_7.jpg": "test", "c0/img_9.jpg": "test",
    "c1/img_3.jpg": "test", "c1/img_4.jpg": "val", "c1/img_7.jpg": "test", "c1/img_9.jpg": "val",
}


def test_split_matches_the_frozen_golden_assignment():
    out = split_imageset(_set(), val=0.2, test=0.2, seed=0)
    assert {k: v for k, v in _assignment(out).items() if v != "train"} == GOLDEN_SEED0


def test_split_is_the_same_in_a_fresh_process_with_another_hash_seed():
    code = (
        "from transferkit.data import ImageSet, split_imageset;"
        "s = ImageSet([f'/data/c{k}/img_{i}.jpg' for k in range(2) for i in range(10)],"
        " [k for k in range(2) for i in range(10)], ['c0', 'c1'], root='/data');"
        "print(''.join(x[:2] for x in split_imageset(s, val=0.2, test=0.2).split))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.strip()
    here = "".join(x[:2] for x in split_imageset(_set(), val=0.2, test=0.2).split)
    assert got == here


def test_split_does_not_depend_on_input_order_or_root():
    base = _assignment(split_imageset(_set(), seed=3))
    s = _set()
    order = np.random.default_rng(0).permutation(len(s))
    shuffled = _assignment(split_imageset(s.subset(order), seed=3))
    assert shuffled == base
    moved = _assignment(split_imageset(_set(root="/elsewhere/deeper"), seed=3))
    assert moved == base


def test_seed_changes_the_assignment():
    a = split_imageset(_set(), seed=0).split
    b = split_imageset(_set(), seed=1).split
    assert a != b


def test_stratified_fractions_per_class():
    out = split_imageset(_set((20, 40, 60)), val=0.15, test=0.25, seed=0)
    for k, n in enumerate((20, 40, 60)):
        mask = out.labels == k
        got = {name: int(np.sum(np.asarray(out.split)[mask] == name)) for name in ("train", "val", "test")}
        assert got == {"test": round(0.25 * n), "val": round(0.15 * n), "train": n - round(0.25 * n) - round(0.15 * n)}


def test_unstratified_split_uses_whole_set_fractions():
    out = split_imageset(_set((5, 95)), val=0.1, test=0.2, stratified=False, seed=0)
    assert out.split_counts() == {"train": 70, "val": 10, "test": 20}


def test_small_classes_keep_a_training_image():
    out = split_imageset(_set((1, 2, 3)), val=0.3, test=0.3, seed=0)
    for k in range(3):
        assert "train" in [sp for sp, lab in zip(out.split, out.labels) if lab == k]


def test_exact_duplicates_never_straddle_splits():
    n = 40
    hashes = [f"h{i}" for i in range(n)]
    hashes[1] = hashes[2] = hashes[25] = "same"  # c0/img_1, c0/img_2 and c1/img_5 identical
    for seed in range(5):
        out = split_imageset(_set((20, 20), hashes=hashes), seed=seed)
        assert len({out.split[1], out.split[2], out.split[25]}) == 1
        assert out.report.leakage == []


def test_official_split_keeps_test_and_carves_val_from_train():
    per_class = ["train"] * 7 + ["test"] * 3
    s = _set((10, 10), split=per_class + per_class[::-1])
    out = split_imageset(s, val=0.25, seed=0)
    assert [sp for sp, orig in zip(out.split, s.split) if orig == "test"] == ["test"] * 6
    assert out.split_counts() == {"train": 10, "val": 4, "test": 6}  # val = 25% of each class's 7 train
    assert "official split" in out.report.options["split"]
    assert s.split.count("val") == 0  # the input set is not modified
    ignored = split_imageset(s, val=0.25, test=0.25, use_official=False, seed=0)
    # 25% of 10 is 2.5: rounded half up (not Python's round-half-even), 3 per class.
    assert ignored.split_counts() == {"train": 8, "val": 6, "test": 6}


def test_official_split_leakage_is_reported():
    hashes = [f"h{i}" for i in range(4)]
    hashes[3] = hashes[0]
    s = _set((4,), hashes=hashes, split=["train", "train", "train", "test"])
    out = split_imageset(s, val=0.0)
    assert out.report.leakage == [["/data/c0/img_0.jpg", "/data/c0/img_3.jpg"]]


@pytest.mark.parametrize("kwargs", [{"val": -0.1}, {"test": 1.0}, {"val": 0.6, "test": 0.5}])
def test_bad_fractions_raise(kwargs):
    with pytest.raises(DataError):
        split_imageset(_set(), **kwargs)
