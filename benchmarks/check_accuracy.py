"""Accuracy across real sets: probe, fine-tune (defaults), auto (defaults) and a GridSearchCV peer probe.

Usage:
    python benchmarks/check_accuracy.py [--sets catsdogs,digits] [--work-dir DIR] [--out benchmarks/results/accuracy.json]

Protocol (declared in this file, committed before it ran; each setting looks at a set's test images once):

* Sets, all real images (``../shared/data`` for the photos, Debian's ``dataset-fashion-mnist``,
  scikit-learn's digits); each is built deterministically from its seed, and train and test never share a file:

  - ``catsdogs``: the 2000 photos of ``../shared/data/catsdogs``, the library's 50/50 split
    (``val=0, test=0.5, seed=0``): the split of the probe's 99.3 % and of the peer it was compared with.
  - ``catsdogs-few``: 25 photos per class for training (seed 3), every other photo of the set as test (1950).
  - ``pets-species``: the 376 readable photos of ``../shared/data/oxford-pets-sample`` labelled cat / dog,
    the library's stratified 50/50 split (``test=0.5, seed=0``; the annotation's own test split holds
    only 21 of these photos, too few to measure anything).
  - ``pets-breeds``: the same photos labelled by breed, the same kind of split (about 5 training photos a breed).
  - ``fashion-mnist``: 100 per class from the official training file (seed 11), 200 per class from the
    official test file (seed 13) never used before: the demo's test images (30 per class, seed 1)
    and the far-domain check's (200 per class, seed 7) are excluded.
  - ``digits``: scikit-learn's 1797 handwritten 8x8 digits as PNGs, 40 per class for training (seed 5),
    the rest (1397) as test.

* Settings, the library's defaults apart from the split (``val=0.15`` carved from training, ``seed=0``,
  EfficientNet-Lite0 with its bundled weights, the default engine, the default time budget of auto):
  ``mode="probe"``, ``mode="finetune"``, ``mode="auto"``.
* Peer: scikit-learn ``GridSearchCV(StandardScaler + LogisticRegression(max_iter=2000))`` over
  ``C = 10**(-4..4 in 17 steps)``, 5 stratified shuffled folds (seed 0), accuracy, refit, on the same
  Lite0 features and the same training images the probe fits on (every image that is not test).
* Reported: test accuracy of each, McNemar's exact test of each against the probe on the same test
  images (two-sided p), what auto chose and why, and wall / CPU seconds. Every set is reported,
  whatever the result.

Added later, declared here before their first run (after auto gained the probes over several
backbones, whose exploration had looked at the six sets' test images): two sets whose test images no
setting has seen, run with every setting and the peer like the first six.

  - ``fashion-mnist-fresh``: 100 per class for training (seed 21) from the official training images
    not used by ``fashion-mnist``, 280 per class (seed 23) from the official test images used by none
    of: the demo, the far-domain check, ``fashion-mnist``.
  - ``fashion-mnist-few``: 20 per class for training (seed 31) from the training images used by
    neither set above, 280 per class (seed 33) from the test images left after ``fashion-mnist-fresh``.

Added last, declared here before their first run, after the probes over several backbones had been
measured on the test images of all eight sets above (which is what motivated auto's opt-in
``prefer_combined``: take the backbones' probes averaged unless the configured backbone's probe is
clearly better). The official test file is nearly used up, so their test images come from the
official *training* file, images no set and no run has used:

  - ``fashion-holdout``: 100 per class for training (seed 41), 500 per class as test (seed 43);
  - ``fashion-holdout-few``: 20 per class for training (seed 51), 500 per class as test (seed 53).

  Settings: the three above and ``auto-prefer-combined`` (``mode="auto", prefer_combined=True``),
  plus the peer. The question they answer: is ``auto-prefer-combined`` above the probe on both, and
  above auto with its defaults?
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ("catsdogs", "catsdogs-few", "pets-species", "pets-breeds", "fashion-mnist", "digits", "fashion-mnist-fresh", "fashion-mnist-few",
        "fashion-holdout", "fashion-holdout-few")
# The library's seeded, stratified split where a set has no train/ and test/ folders of its own.
SPLITS = {"catsdogs": {"val": 0.0, "test": 0.5}, "pets-species": {"test": 0.5}, "pets-breeds": {"test": 0.5}}
MODES = ("probe", "finetune", "auto")
# Settings that are a mode with options (the name is what the table shows).
SETTINGS = {"auto-prefer-combined": {"mode": "auto", "prefer_combined": True}}


def _write_split_folders(folder: Path, items: list[tuple[str, str, object]]) -> Path:
    """Write ``(split, class, source)`` items as ``split/class/file`` (``split`` may be ``""``; a source is a path to copy or a
    ``(name, PIL image)`` pair); built under a temporary name and renamed, so a set is whole or absent."""
    if folder.exists():
        return folder
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, label, src in items:
        (tmp / split / label).mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            shutil.copy2(src, tmp / split / label / src.name)
        else:
            name, image = src
            image.save(tmp / split / label / name)
    os.replace(tmp, folder)
    return folder


def build_set(name: str, work: Path) -> Path:
    """The folder of set ``name`` (see the module's protocol)."""
    if name == "catsdogs":
        return SHARED / "catsdogs"
    if name == "catsdogs-few":
        rng = np.random.default_rng(3)
        items = []
        for label in ("cat", "dog"):
            files = sorted((SHARED / "catsdogs" / label).iterdir())
            order = rng.permutation(len(files))
            items += [("train" if rank < 25 else "test", label, files[i]) for rank, i in enumerate(order)]
        return _write_split_folders(work / name, items)
    if name in ("pets-species", "pets-breeds"):
        items = []
        for f in sorted((SHARED / "oxford-pets-sample" / "images").iterdir()):
            breed = f.stem.rsplit("_", 1)[0]
            items.append(("", breed if name == "pets-breeds" else ("cat" if breed[0].isupper() else "dog"), f))
        return _write_split_folders(work / name, items)
    if name in FASHION_SETS:
        return _fashion_set(name, work)
    if name == "digits":
        from PIL import Image
        from sklearn.datasets import load_digits

        from transferkit.data.sources.fashion_mnist import stratified_indices

        d = load_digits()
        train = set(stratified_indices(d.target, 40, seed=5).tolist())
        items = [("train" if i in train else "test", str(int(d.target[i])),
                  (f"{i:04d}.png", Image.fromarray((d.images[i] * 255.0 / 16.0).round().astype(np.uint8))))
                 for i in range(len(d.target))]
        return _write_split_folders(work / name, items)
    raise SystemExit(f"unknown set {name!r}; choose from {', '.join(SETS)}")


# Fashion-MNIST sets: (training images per class, seed), (test images per class, seed), in the order they were declared;
# each takes its images from those the sets before it (and the demo, and the far-domain check) did not use.
# The holdout sets draw their test images from the official training file ("train"), after every set before them.
FASHION_SETS = {"fashion-mnist": ((100, 11), (200, 13)), "fashion-mnist-fresh": ((100, 21), (280, 23)),
                "fashion-mnist-few": ((20, 31), (280, 33)), "fashion-holdout": ((100, 41), (500, 43), "train"),
                "fashion-holdout-few": ((20, 51), (500, 53), "train")}


def _draw(labels: np.ndarray, used: set[int], per_class: int, seed: int, *, first: bool = False) -> list[int]:
    """``per_class`` indices of each class not in ``used`` (added to it), drawn with ``seed``."""
    if first:  # the first set's training images, drawn as the demo's helper draws them
        from transferkit.data.sources.fashion_mnist import stratified_indices

        picked = stratified_indices(labels, per_class, seed=seed).tolist()
    else:
        rng = np.random.default_rng(seed)
        picked = []
        for c in range(int(labels.max()) + 1):
            pool = [i for i in np.flatnonzero(labels == c) if i not in used]
            picked += sorted(rng.permutation(pool)[:per_class].tolist())
    used.update(picked)
    return picked


def _fashion_set(name: str, work: Path) -> Path:
    from PIL import Image

    from transferkit.data.sources.fashion_mnist import CLASS_NAMES, FILES, debian_source, read_idx, stratified_indices

    src = debian_source()
    if src is None:
        raise SystemExit("needs the Debian package dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)")
    arrays = {k: read_idx(src / f) for k, f in FILES.items()}
    train_labels, test_labels = arrays["train_labels"], arrays["test_labels"]
    used_test = set(stratified_indices(test_labels, 30, seed=1).tolist())  # the demo's test images
    _draw(test_labels, used_test, 200, 7)  # the far-domain check's, as that script drew them
    used_train: set[int] = set()
    for i, (set_name, ((n_train, s_train), (n_test, s_test), *test_file)) in enumerate(FASHION_SETS.items()):
        from_train = test_file == ["train"]
        train_idx = _draw(train_labels, used_train, n_train, s_train, first=i == 0)
        test_idx = _draw(train_labels, used_train, n_test, s_test) if from_train else _draw(test_labels, used_test, n_test, s_test)
        if set_name == name:
            break
    else:
        raise SystemExit(f"unknown set {name!r}")
    test_src = ("train_labels", "train_images", "t") if from_train else ("test_labels", "test_images", "")
    items = [("train", CLASS_NAMES[train_labels[i]], (f"{int(i):05d}.png", Image.fromarray(arrays["train_images"][i]))) for i in train_idx]
    items += [("test", CLASS_NAMES[arrays[test_src[0]][i]], (f"{test_src[2]}{int(i):05d}.png", Image.fromarray(arrays[test_src[1]][i])))
              for i in test_idx]
    return _write_split_folders(work / name, items)


def grid_search_peer(folder: Path, test_paths: set[str], seed: int = 0) -> dict:
    """The hand-written peer: GridSearchCV over C on Lite0 features of every image that is not test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transferkit.backbones import create_backbone
    from transferkit.data import load_images
    from transferkit.features.extract import extract_features

    data = load_images(folder)
    feats = extract_features(data.paths, create_backbone("efficientnet_lite0"))
    keys = [str(p) for p in data.paths]
    is_test = np.array([k in test_paths for k in keys])
    tr = ~is_test & feats.ok
    te = is_test & feats.ok
    t = time.perf_counter()
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                          {"logisticregression__C": np.logspace(-4, 4, 17)}, cv=StratifiedKFold(5, shuffle=True, random_state=seed),
                          scoring="accuracy", refit=True, n_jobs=1)
    search.fit(feats.X[tr], data.labels[tr])
    pred = search.predict(feats.X[te])
    correct = dict(zip(np.array(keys)[te].tolist(), (pred == data.labels[te]).tolist()))
    return {"correct": correct, "C": float(search.best_params_["logisticregression__C"]), "train_images": int(tr.sum()),
            "seconds": round(time.perf_counter() - t, 1)}


def run_set(name: str, work: Path, modes: tuple[str, ...] = MODES, peer: bool = True) -> dict:
    from transferkit.evaluate.compare import mcnemar
    from transferkit.pipeline.train import TrainConfig, train

    folder = build_set(name, work)
    rows, correct = {}, {}
    for mode in ("probe", *[m for m in modes if m != "probe"]):  # every setting is compared with the probe
        t, c = time.perf_counter(), time.process_time()
        setting = SETTINGS.get(mode, {"mode": mode})
        result = train(TrainConfig(data=str(folder), seed=0, out=None, report=False, **setting, **SPLITS.get(name, {})))
        ev = result.evaluation
        correct[mode] = dict(zip(map(str, ev.paths), (ev.probs.argmax(1) == ev.y).tolist()))
        auto = result.auto.to_dict() if result.auto is not None else None
        rows[mode] = {"test_acc": float(result.accuracy), "test_correct": int(sum(correct[mode].values())), "test_images": len(ev.y),
                      "images": result.images, "kept_epoch": result.finetune.best_epoch if result.finetune else None,
                      "auto": auto, "wall_s": round(time.perf_counter() - t, 1), "cpu_s": round(time.process_time() - c, 1)}
        print(name, mode, f"{rows[mode]['test_acc']:.4f}", f"({rows[mode]['test_correct']}/{rows[mode]['test_images']})",
              f"{rows[mode]['wall_s']} s", (auto or {}).get("mode", ""), (auto or {}).get("backbone", ""), flush=True)
    if peer:
        found = grid_search_peer(folder, set(correct["probe"]))
        assert set(found["correct"]) == set(correct["probe"]), "the peer must be scored on the probe's test images"
        correct["gridsearchcv"] = found.pop("correct")
        rows["gridsearchcv"] = {"test_acc": float(np.mean(list(correct["gridsearchcv"].values()))),
                                "test_correct": int(sum(correct["gridsearchcv"].values())), **found}
        print(name, "gridsearchcv", f"{rows['gridsearchcv']['test_acc']:.4f}", f"C={found['C']:g}", flush=True)
    keys = sorted(correct["probe"])
    for other in (r for r in rows if r != "probe"):
        cmp = mcnemar([correct[other][k] for k in keys], [correct["probe"][k] for k in keys])
        rows[other]["vs_probe"] = {"wins": cmp.b, "losses": cmp.c, "mcnemar_p_two_sided": round(cmp.p_two_sided, 5)}
    return {"folder": str(folder), "rows": rows}


def render_markdown(results: dict) -> str:
    """The results table: test accuracy per set and setting, and each setting against the probe."""
    from scipy.stats import binomtest

    m = results.get("machine", {})
    lines = [f"Machine: {m.get('cpu', '?')} ({m.get('cpu_count', '?')} cores; {', '.join(m.get('cpu_flags', [])) or 'no AVX-512/AMX'}), "
             f"torch {m.get('torch', '?')}. Test accuracy (correct / test images); against the probe: images won / lost and "
             "McNemar's exact two-sided p on the same test images.", "",
             "| set | test images | probe | finetune (defaults) | auto (defaults) | auto chose | GridSearchCV peer |",
             "|---|---:|---|---|---|---|---|"]

    def cell(row: dict, versus: bool = True) -> str:
        text = f"{100 * row['test_acc']:.2f} % ({row['test_correct']})"
        if versus and "vs_probe" in row:
            v = row["vs_probe"]
            n = v["wins"] + v["losses"]
            p = binomtest(v["wins"], n, 0.5).pvalue if n else 1.0  # exact, not the stored 5-decimal rounding
            text += f"; +{v['wins']} / -{v['losses']}, p = {p:.2g}"
        return text

    def chose(row: dict) -> str:
        auto = row.get("auto") or {}
        return f"{auto.get('mode', '?')}, {auto.get('backbone', '?')}"

    for name, entry in results.get("sets", {}).items():
        rows = entry["rows"]
        lines.append(f"| {name} | {rows['probe']['test_images']} | {cell(rows['probe'], False)} | {cell(rows['finetune'])} | {cell(rows['auto'])} "
                     f"| {chose(rows['auto'])} | {cell(rows['gridsearchcv'])} (C = {rows['gridsearchcv']['C']:g}) |")
    extra = {name: [m for m in entry["rows"] if m in SETTINGS] for name, entry in results.get("sets", {}).items()}
    if any(extra.values()):
        lines += ["", "| set | setting | test accuracy; vs the probe | what auto chose |", "|---|---|---|---|"]
        for name, modes in extra.items():
            rows = results["sets"][name]["rows"]
            lines += [f"| {name} | {m} | {cell(rows[m])} | {chose(rows[m])} |" for m in modes]
    lines += ["", "| set | probe s | finetune s | auto s (wall; CPU) |", "|---|---:|---:|---:|"]
    for name, entry in results.get("sets", {}).items():
        rows = entry["rows"]
        lines.append(f"| {name} | {rows['probe']['wall_s']} | {rows['finetune']['wall_s']} | {rows['auto']['wall_s']}; {rows['auto']['cpu_s']} |")
    for tag, rerun in results.get("reruns", {}).items():
        extra = ["auto chose"] if "auto" in rerun["modes"] else []
        lines += ["", f"Rerun `{tag}`: {rerun.get('why', '')}", "", "| set | probe (again) | " + " | ".join(rerun["modes"] + extra) + " |",
                  "|---|---|" + "---|" * (len(rerun["modes"]) + len(extra))]
        for name, entry in rerun["sets"].items():
            rows = entry["rows"]
            cells = [cell(rows[m]) for m in rerun["modes"]] + ([chose(rows["auto"])] if extra else [])
            lines.append(f"| {name} | {cell(rows['probe'], False)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import platform

    import torch

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().split("\n"):
            if line.startswith("flags"):
                flags = {f for f in line.split(":", 1)[1].split() if f.startswith(("avx512", "amx"))}
                break
    except OSError:
        pass
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().split("\n") if ln.startswith("model name")), "")
    return {"cpu": model, "cpu_flags": sorted(flags), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "torch": torch.__version__, "load_average_end": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--work-dir", default="/tmp/transferkit_accuracy")
    ap.add_argument("--out", default="benchmarks/results/accuracy.json")
    ap.add_argument("--md", default=None, help="also write the results table (Markdown) here")
    ap.add_argument("--render-only", action="store_true", help="only write --md from the results in --out")
    ap.add_argument("--rerun", default=None, metavar="TAG",
                    help="a changed setting measured again: only --modes (and the probe), stored under reruns/TAG")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--why", default="", help="with --rerun: what changed")
    args = ap.parse_args()
    if args.render_only:
        if not args.md:
            ap.error("--render-only writes the table to --md FILE; give --md")
        Path(args.md).write_text(render_markdown(json.loads(Path(args.out).read_text())))
        return
    if not args.rerun and not set(MODES) <= set(args.modes.split(",")):
        ap.error(f"a first run measures every setting ({','.join(MODES)}); measure a changed one with --rerun TAG --modes ...")
    from transferkit.core.atomic import atomic_write_text

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["protocol"] = __doc__
    modes = tuple(args.modes.split(","))
    for name in args.sets.split(","):
        if args.rerun:
            rerun = results.setdefault("reruns", {}).setdefault(args.rerun, {"why": args.why, "modes": [m for m in modes if m != "probe"], "sets": {}})
            rerun["sets"][name] = run_set(name, work, modes, peer=False)
            rerun["machine"] = machine()
        else:
            results.setdefault("sets", {})[name] = run_set(name, work, modes)
            results["machine"] = machine()
        atomic_write_text(out, json.dumps(results, indent=1, default=str))
        if args.md:
            atomic_write_text(args.md, render_markdown(results))


if __name__ == "__main__":
    main()
