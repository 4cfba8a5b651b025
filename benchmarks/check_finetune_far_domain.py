"""Far-domain check: does fine-tuning beat the probe where the probe has room above it?

Usage:
    python benchmarks/check_finetune_far_domain.py [--work-dir DIR] [--out benchmarks/results/finetune_far_domain.json]

Needs the Debian package dataset-fashion-mnist (real labelled photos of clothing: a far domain for
an ImageNet network, where the linear probe sits near 85 %, not at a ceiling as on cats vs dogs).

Protocol (written and committed before it runs; the test images below were never used before):

1. Training images: the demo's Fashion-MNIST training subset (100 per class from the official
   training file, ``stratified_indices(labels, 100, seed=0)``), 1000 images.
2. Test images: 200 per class from the official test file, drawn (seed 7) from the images the demo
   never uses: the demo's 30 test images per class (``stratified_indices(labels, 30, seed=1)``),
   which informed the ``--mode auto`` learning rates, are excluded. 2000 images.
3. Both models through the library's ``train`` with the CLI defaults (``val=0.15`` carved from the
   training images, seed 0, EfficientNet-Lite0 with its bundled ImageNet weights):
   the probe (``mode="probe"``) and ``mode="auto"`` (on this CPU: cached top 3 groups, lr 3e-4 and
   2e-3 compared on the validation images, the probe kept if no epoch beats it). Nothing is tuned.
4. Primary: test accuracy of auto vs probe on the 2000 images, with McNemar's exact test on the
   images exactly one of them gets right. Each model looks at the test images once.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def build_folder(root: Path) -> Path:
    from PIL import Image

    from transferkit.data.sources.fashion_mnist import CLASS_NAMES, FILES, debian_source, read_idx, stratified_indices

    src = debian_source()
    if src is None:
        raise SystemExit("needs the Debian package dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)")
    arrays = {k: read_idx(src / name) for k, name in FILES.items()}
    train_idx = stratified_indices(arrays["train_labels"], 100, seed=0)
    demo_test = set(stratified_indices(arrays["test_labels"], 30, seed=1).tolist())
    rng = np.random.default_rng(7)
    test_idx = []
    for c in range(len(CLASS_NAMES)):
        pool = [i for i in np.flatnonzero(arrays["test_labels"] == c) if i not in demo_test]
        test_idx.extend(sorted(rng.permutation(pool)[:200].tolist()))
    assert not demo_test & set(test_idx) and len(test_idx) == 2000
    folder = root / "fashion-mnist-far-domain"
    if folder.exists():
        return folder
    tmp = root / f".fashion-mnist-far-domain.tmp-{os.getpid()}"
    for split, idx in (("train", train_idx), ("test", test_idx)):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        for i in idx:
            out = tmp / split / CLASS_NAMES[labels[i]] / f"{int(i):05d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(images[i])).save(out)
    os.replace(tmp, folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work-dir", default="/tmp/transferkit_far_domain")
    ap.add_argument("--out", default="benchmarks/results/finetune_far_domain.json")
    args = ap.parse_args()
    from check_finetune_clean import machine_info, paired  # the sibling script: one McNemar test, one machine record

    from transferkit.core.atomic import atomic_write_text
    from transferkit.pipeline.train import TrainConfig, train

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    folder = build_folder(work)
    rows, correct = {}, {}
    for mode in ("probe", "auto"):
        t, c = time.perf_counter(), time.process_time()
        result = train(TrainConfig(data=str(folder), mode=mode, seed=0, out=None, report=False))
        ev = result.evaluation
        m = result.metrics
        correct[mode] = dict(zip(map(str, ev.paths), (ev.probs.argmax(1) == ev.y).tolist()))
        rows[mode] = {"test_acc": m["accuracy"], "test_correct": int(sum(correct[mode].values())), "test_images": len(ev.y),
                      "test_log_loss": m.get("log_loss"), "images": m["images"], "auto": m.get("auto"),
                      "candidates": m.get("finetune", {}).get("candidates") or m.get("auto_finetune_candidates"),
                      "kept_epoch": m.get("finetune", {}).get("best_epoch"),
                      "wall_s": round(time.perf_counter() - t, 1), "cpu_s": round(time.process_time() - c, 1)}
        print(mode, json.dumps(rows[mode], default=str), flush=True)
    test = paired(correct["probe"], correct["auto"], names=("probe", "auto"))
    print("paired", test, flush=True)
    result = {"protocol": __doc__, "models": rows, "paired": test, "machine": machine_info()}
    atomic_write_text(args.out, json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
