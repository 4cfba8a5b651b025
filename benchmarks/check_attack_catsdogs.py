"""Check the attack claims on real photos (../shared/data/catsdogs), CPU, EfficientNet-Lite0.

1. A cats-vs-dogs bundle: a logistic-regression head on frozen Lite0 features, fitted here on
   photos 501.. of each class, saved with ``save_bundle`` and loaded back with ``load_bundle``.
   On 200 other photos (cat.1-100, dog.1-100): targeted PGD (eps 2/255, 10 steps) dog -> cat and
   cat -> dog, and FGSM at eps 1, 2, 4, 8/255.
2. The ImageNet Lite0 itself: dog photos -> "tabby cat" top-1 at the smallest eps <= 4/255 that
   works; the adversarial PNG is saved, read back through the ordinary preprocessing and
   classified again.

Usage: python benchmarks/check_attack_catsdogs.py [--data ../shared/data/catsdogs] [--per-class 100]
           [--train-per-class 150] [--dogs 10] [--out /tmp/attack_check] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch


def _numbered(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.suffix.lower() == ".jpg"]
    return sorted(files, key=lambda p: int(re.findall(r"\d+", p.name)[-1]))


def _load(paths, spec):
    from transferkit.data.decode import load_for_spec

    return torch.stack([load_for_spec(p, spec) for p in paths])


def _features(backbone, x, batch=32):
    with torch.no_grad():
        return torch.cat([backbone.forward_features(x[i : i + batch].contiguous(memory_format=torch.channels_last)) for i in range(0, len(x), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "catsdogs"))
    ap.add_argument("--per-class", type=int, default=100, help="attacked photos per class")
    ap.add_argument("--train-per-class", type=int, default=150, help="photos per class to fit the head on")
    ap.add_argument("--dogs", type=int, default=10, help="dog photos for the ImageNet tabby check")
    ap.add_argument("--out", default="/tmp/attack_check")
    ap.add_argument("--json", default=None)
    ap.add_argument("--parts", default="pgd,fgsm,tabby", help="comma-separated: pgd, fgsm, fgsm-targeted, tabby")
    ap.add_argument("--threads", type=int, default=1, help="torch threads; 1 avoids OpenMP barrier stalls on a crowded CPU")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    torch.set_num_threads(args.threads)

    from sklearn.linear_model import LogisticRegression
    from torch import nn

    from transferkit.backbones import create_backbone
    from transferkit.classifier.bundle import ClassifierModel, load_bundle, save_bundle

    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.data)
    cats, dogs = _numbered(root / "cat"), _numbered(root / "dog")
    n, m = args.per_class, args.train_per_class
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other helpers' jobs)"
                    f", torch {torch.__version__}, threads {torch.get_num_threads()}"}

    # --- 1. the cats-vs-dogs bundle ------------------------------------------------------------
    t0 = time.perf_counter()
    backbone = create_backbone("efficientnet_lite0")
    spec = backbone.spec
    train_paths = cats[500 : 500 + m] + dogs[500 : 500 + m]
    train_y = np.array([0] * m + [1] * m)
    feats = _features(backbone, _load(train_paths, spec)).numpy()
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(feats, train_y)
    head = nn.Linear(feats.shape[1], 2)
    with torch.no_grad():
        # binary logistic regression -> two logits whose softmax equals its probability
        w = torch.tensor(clf.coef_[0], dtype=torch.float32)
        b = float(clf.intercept_[0])
        head.weight.copy_(torch.stack([-w / 2, w / 2]))
        head.bias.copy_(torch.tensor([-b / 2, b / 2]))
    bundle_dir = save_bundle(out / "catsdogs_bundle", ClassifierModel(backbone, head, ["cat", "dog"]),
                            metrics={"train_accuracy": float(clf.score(feats, train_y))})
    model = load_bundle(bundle_dir)
    report["fit_seconds"] = round(time.perf_counter() - t0, 1)

    eval_paths = cats[:n] + dogs[:n]
    y = torch.tensor([0] * n + [1] * n)
    x = _load(eval_paths, spec)
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 32]) for i in range(0, len(x), 32)]).argmax(1)
    correct = pred == y
    report["bundle"] = {"eval_images": len(y), "clean_accuracy": float(correct.float().mean())}
    print(f"bundle clean accuracy on {len(y)} photos: {report['bundle']['clean_accuracy']:.3f}", flush=True)

    other = 1 - y
    is_dog, is_cat = y == 1, y == 0
    gen = torch.Generator().manual_seed(0)
    if "pgd" in parts:
        _pgd_part(report, model, x, y, other, correct, gen, is_dog, is_cat)
    if "fgsm" in parts or "fgsm-targeted" in parts:
        _fgsm_part(report, model, x, y, other, correct, is_dog, is_cat, targeted="fgsm-targeted" in parts)
    if "tabby" in parts:
        _tabby_part(report, backbone, spec, dogs[: args.dogs], out)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


def _pgd_part(report, model, x, y, other, correct, gen, is_dog, is_cat):
    from transferkit.attacks import attack, psnr, ssim

    r = attack(model, x, y, method="pgd", target=other, eps=2 / 255, steps=10, generator=gen, batch_size=16)
    report["targeted_pgd_eps2"] = {
        "alpha": r.alpha,
        "dogs_to_cat": float(r.success[is_dog].float().mean()),
        "cats_to_dog": float(r.success[is_cat].float().mean()),
        "dogs_to_cat_among_clean_correct": float(r.success[is_dog & correct].float().mean()),
        "cats_to_dog_among_clean_correct": float(r.success[is_cat & correct].float().mean()),
        "max_linf_255": float(r.linf.max()) * 255,
        "mean_psnr_db": float(psnr(x, r.adv).mean()),
        "mean_ssim": float(ssim(x, r.adv).mean()),
        "seconds_per_image": r.seconds / len(y),
    }
    # the saved-PNG property for the whole batch: quantised images are exactly what a PNG holds
    report["targeted_pgd_eps2"]["adv_on_8bit_grid"] = bool(torch.equal(torch.round(r.adv * 255) / 255, r.adv))
    print("targeted PGD eps 2/255:", json.dumps(report["targeted_pgd_eps2"], indent=None), flush=True)


def _fgsm_part(report, model, x, y, other, correct, is_dog, is_cat, targeted):
    from transferkit.attacks import attack, ssim

    fgsm_rows = []
    for k in (1, 2, 4, 8):
        un = attack(model, x, y, method="fgsm", eps=k / 255, batch_size=16)
        flipped = un.success & correct
        row = {
            "eps_255": k,
            "untargeted_success_among_clean_correct": float(flipped.sum()) / max(1, int(correct.sum())),
            "untargeted_success_all": un.success_rate,
            "accuracy_under_attack": float((correct & ~un.success).float().mean()),
            "mean_ssim": float(ssim(x, un.adv).mean()),
            "seconds_per_image": un.seconds / len(y),
        }
        if targeted:
            tg = attack(model, x, y, method="fgsm", target=other, eps=k / 255, batch_size=16)
            row.update(targeted_dogs_to_cat=float(tg.success[is_dog].float().mean()), targeted_cats_to_dog=float(tg.success[is_cat].float().mean()))
        fgsm_rows.append(row)
        print("FGSM", fgsm_rows[-1], flush=True)
    report["fgsm"] = fgsm_rows


def _tabby_part(report, backbone, spec, dog_paths, out):
    """ImageNet Lite0: dog photos -> tabby at the smallest eps in 1..4/255 that works."""
    from transferkit.attacks import attack, psnr, ssim
    from transferkit.attacks.images import frame_for_spec, save_png
    from transferkit.backbones.imagenet import imagenet_class_names, resolve_imagenet_class, short_name
    from transferkit.data.decode import load_for_spec, open_rgb

    names = imagenet_class_names()
    tabby = resolve_imagenet_class("tabby cat")
    rows = []
    for path in dog_paths:
        clean = load_for_spec(path, spec)[None]
        row = {"photo": path.name, "eps_255": None}
        for k in (1, 2, 3, 4):
            res = attack(backbone, clean, method="bim", target=tabby, eps=k / 255, steps=10)
            row["before"] = short_name(names[int(res.pred_before[0])])
            if bool(res.success[0]):
                png = save_png(frame_for_spec(open_rgb(path), spec, res.adv[0]), out / f"{path.stem}_tabby_eps{k}.png")
                reread = load_for_spec(png, spec)[None]
                with torch.no_grad():
                    probs = backbone(reread).softmax(1)[0]
                row.update(
                    eps_255=k,
                    p_tabby=float(res.probs_after[0, tabby]),
                    png_top1=short_name(names[int(probs.argmax())]),
                    png_p_tabby=float(probs[tabby]),
                    png_equals_attacked_input=bool(torch.equal(reread, res.adv)),
                    psnr_db=float(psnr(clean, res.adv)[0]),
                    ssim=float(ssim(clean, res.adv)[0]),
                    png=str(png),
                )
                break
        rows.append(row)
        print("tabby", row, flush=True)
    report["imagenet_dogs_to_tabby"] = rows


if __name__ == "__main__":
    main()
