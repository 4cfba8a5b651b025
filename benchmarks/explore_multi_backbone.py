"""Exploration, not a shipped setting: would a probe over several backbones beat the one-backbone probe?

Usage:
    python benchmarks/explore_multi_backbone.py [--sets catsdogs,...] [--out benchmarks/results/multi_backbone.json]

Protocol (declared in this file before it ran; the sets and splits are ``check_accuracy.py``'s):

* For each set, the Lite0 probe as ``mode="probe"`` trains it (its test images define the split), and
  the pooled features of EfficientNet-Lite0, -Lite1 and -Lite2 for every image (the feature cache).
* Two candidates that ``--mode auto`` could compare without extracting anything more:
  - **concat**: one logistic head (the library's ``LogisticHead``, C by 5-fold CV) on the three
    feature vectors concatenated (1280 + 1280 + 1408 numbers per image);
  - **ensemble**: the three backbones' probes (each its own ``LogisticHead``), probabilities averaged.
* What auto would see: out-of-fold accuracy over every training image (each image predicted by fits
  that did not see it; the three heads share their folds), and McNemar's one-sided p against the Lite0
  probe there. Then test accuracy, once, with McNemar's two-sided p against the Lite0 probe.

Whether this is worth a model of several networks (bundle, export, runtime, server) is what it is
for; nothing here changes the library.

Run a second time (declared here before it ran) on ``fashion-mnist-fresh`` and ``fashion-mnist-few``,
after the shipped auto, whose rule switches only at McNemar p < 0.05 out of fold, kept the probe on
both: every candidate's test accuracy there shows what a rule switching on weaker evidence would have
given. Those test images are then looked at by these candidates too, which the table says.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from check_accuracy import SETS, SPLITS, build_set, machine

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def explore(name: str, work: Path) -> dict:
    from transferkit.backbones import create_backbone
    from transferkit.data import load_images
    from transferkit.evaluate.compare import mcnemar
    from transferkit.features.extract import extract_features
    from transferkit.heads import LogisticHead
    from transferkit.pipeline.train import TrainConfig, train

    folder = build_set(name, work)
    probe = train(TrainConfig(data=str(folder), mode="probe", seed=0, out=None, report=False, **SPLITS.get(name, {})))
    test_paths = {str(p) for p in probe.evaluation.paths}
    data = load_images(folder)
    keys = [str(p) for p in data.paths]
    feats = [extract_features(data.paths, create_backbone(b)) for b in BACKBONES]
    ok = np.logical_and.reduce([f.ok for f in feats])
    is_test = np.array([k in test_paths for k in keys])
    tr, te = np.flatnonzero(~is_test & ok), np.flatnonzero(is_test & ok)
    y = data.labels
    t = time.perf_counter()
    heads = [LogisticHead(random_state=0).fit(f.X[tr], y[tr]) for f in feats]
    concat_X = np.concatenate([f.X for f in feats], axis=1)
    concat = LogisticHead(random_state=0).fit(concat_X[tr], y[tr])
    seconds = round(time.perf_counter() - t, 1)

    def oof_correct(head_list) -> np.ndarray:
        proba = np.mean([h.oof_proba_ for h in head_list], axis=0)
        return head_list[0].classes_[proba.argmax(1)] == y[tr][heads[0].oof_index_]

    def test_correct(models) -> np.ndarray:
        proba = np.mean([m.predict_proba(X[te]) for m, X in models], axis=0)
        return models[0][0].classes_[proba.argmax(1)] == y[te]

    assert all(np.array_equal(h.oof_index_, heads[0].oof_index_) for h in [*heads, concat]), "the heads must share their folds"
    rows = {}
    base_oof, base_test = oof_correct(heads[:1]), test_correct([(heads[0], feats[0].X)])
    candidates = {"probe lite0": (heads[:1], [(heads[0], feats[0].X)]),
                  **{f"probe {b.split('_')[1]}": ([h], [(h, f.X)]) for b, h, f in zip(BACKBONES[1:], heads[1:], feats[1:])},
                  "concat (lite0+1+2)": ([concat], [(concat, concat_X)]),
                  "ensemble (lite0, 1, 2 averaged)": (heads, [(h, f.X) for h, f in zip(heads, feats)])}
    for label, (oof_heads, test_models) in candidates.items():
        o, c = oof_correct(oof_heads), test_correct(test_models)
        vs_oof, vs_test = mcnemar(o, base_oof), mcnemar(c, base_test)
        rows[label] = {"oof_acc": float(o.mean()), "oof_vs_lite0": {"wins": vs_oof.b, "losses": vs_oof.c, "p_better": vs_oof.p_better},
                       "test_acc": float(c.mean()), "test_correct": int(c.sum()),
                       "test_vs_lite0": {"wins": vs_test.b, "losses": vs_test.c, "p_two_sided": vs_test.p_two_sided}}
        print(name, label, f"oof {o.mean():.4f} (p {vs_oof.p_better:.3g})", f"test {c.mean():.4f} ({int(c.sum())}/{len(c)}, p {vs_test.p_two_sided:.3g})",
              flush=True)
    return {"train_images": len(tr), "test_images": len(te), "fit_seconds": seconds, "rows": rows,
            "probe_mode_test_acc": float(probe.accuracy)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--work-dir", default="/tmp/transferkit_accuracy")
    ap.add_argument("--out", default="benchmarks/results/multi_backbone.json")
    args = ap.parse_args()
    results = {"protocol": __doc__, "sets": {}}
    for name in args.sets.split(","):
        results["sets"][name] = explore(name, Path(args.work_dir))
        results["machine"] = machine()
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
