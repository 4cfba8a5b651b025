"""Augmentation presets, mixup/cutmix and test-time augmentation.

Training transforms are torchvision's (they draw from torch's RNG, which the data pipeline seeds
per image and epoch, so runs and resumed runs see identical augmentations). Evaluation uses the
backbone spec's own resize and centre crop (:func:`transferkit.data.decode.resize_center_crop`).
All transforms map a PIL image to a [3, H, W] tensor of pixels in [0, 1]: normalisation lives in
the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from transferkit.backbones.spec import BackboneSpec

# scale range of RandomResizedCrop, colour jitter strength, default auto-augment, per preset
_PRESETS = {
    "light": {"scale": (0.6, 1.0), "jitter": 0.0, "auto": "none"},
    "standard": {"scale": (0.35, 1.0), "jitter": 0.2, "auto": "none"},
    "strong": {"scale": (0.15, 1.0), "jitter": 0.3, "auto": "trivialaugment"},
}


def eval_transform(spec: BackboneSpec, image_size: int | None = None) -> Callable:
    """The backbone's evaluation preprocessing (resize shorter side, centre crop) -> pixels in [0, 1]."""
    from transferkit.data.decode import resize_center_crop, to_tensor01

    if image_size is not None and image_size != spec.image_size:
        import dataclasses

        spec = dataclasses.replace(spec, input_size=(spec.input_size[0], int(image_size), int(image_size)))

    def transform(img):
        return to_tensor01(resize_center_crop(img, spec))

    return transform


def train_transform(spec: BackboneSpec, preset: str = "standard", *, image_size: int | None = None, auto_augment: str | None = None) -> Callable:
    """The training augmentation of a preset, at ``image_size`` (default: the spec's).

    Presets:
        none: the evaluation transform (no randomness).
        light: RandomResizedCrop(scale 0.6-1) + horizontal flip.
        standard: RandomResizedCrop(scale 0.35-1) + flip + colour jitter 0.2.
        strong: RandomResizedCrop(scale 0.15-1) + flip + colour jitter 0.3 + TrivialAugment
            (or RandAugment with ``auto_augment="randaugment"``).
    """
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    from transferkit.data.decode import to_tensor01

    size = int(image_size or spec.image_size)
    if preset == "none":
        return eval_transform(spec, size)
    if preset not in _PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; use none, light, standard or strong")
    p = _PRESETS[preset]
    interp = InterpolationMode(spec.interpolation)
    ops: list = [T.RandomResizedCrop(size, scale=p["scale"], interpolation=interp), T.RandomHorizontalFlip()]
    if p["jitter"]:
        j = p["jitter"]
        ops.append(T.ColorJitter(brightness=j, contrast=j, saturation=j))
    auto = auto_augment or p["auto"]
    if auto == "trivialaugment":
        ops.append(T.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR))
    elif auto == "randaugment":
        ops.append(T.RandAugment(num_ops=2, magnitude=9, interpolation=InterpolationMode.BILINEAR))
    ops.append(T.Lambda(to_tensor01))
    return T.Compose(ops)


def soft_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).float()


def mix_batch(x: torch.Tensor, targets: torch.Tensor, *, mixup: float, cutmix: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix (half the batches each when both are on) with soft targets.

    Draws from torch's global RNG, which the training loop seeds per step.

    Args:
        x: images [N, 3, H, W]; targets: soft targets [N, K].
        mixup, cutmix: Beta(alpha, alpha) parameters; 0 disables that kind.
    """
    if mixup <= 0 and cutmix <= 0:
        return x, targets
    use_cutmix = cutmix > 0 and (mixup <= 0 or bool(torch.rand(()) < 0.5))
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0])
    if use_cutmix:
        h, w = x.shape[-2:]
        cut = (1.0 - lam) ** 0.5
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the area actually kept
    else:
        x = lam * x + (1.0 - lam) * x[perm]
    return x, lam * targets + (1.0 - lam) * targets[perm]


TTA_MODES = ("none", "flip", "flip-zoom")


def tta_views(x01: torch.Tensor, mode: str = "flip") -> list[torch.Tensor]:
    """The test-time views of a batch of pixels in [0, 1].

    ``none``: the batch; ``flip``: plus its mirror image; ``flip-zoom``: plus a 1.15x centre zoom of
    both (resized back to the same size).
    """
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; use one of {', '.join(TTA_MODES)}")
    views = [x01]
    if mode in ("flip", "flip-zoom"):
        views.append(torch.flip(x01, dims=[-1]))
    if mode == "flip-zoom":
        h, w = x01.shape[-2:]
        ch, cw = int(round(h / 1.15)), int(round(w / 1.15))
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = x01[..., top : top + ch, left : left + cw]
        zoom = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False).clamp_(0, 1)
        views += [zoom, torch.flip(zoom, dims=[-1])]
    return views


@torch.no_grad()
def tta_predict_proba(model: torch.nn.Module, x01: torch.Tensor, mode: str = "flip") -> torch.Tensor:
    """Class probabilities averaged over test-time views (what ``evaluate --tta`` uses).

    Args:
        model: pixels in [0, 1] -> logits (a :class:`~transferkit.classifier.bundle.ClassifierModel`).
        x01: a batch [N, 3, H, W] already preprocessed with the backbone's evaluation transform.
        mode: ``"none"``, ``"flip"`` or ``"flip-zoom"``.

    Returns:
        [N, K] probabilities (the mean of the views' softmaxes).
    """
    probs = [torch.softmax(model(v).float(), dim=1) for v in tta_views(x01, mode)]
    return torch.stack(probs).mean(0)
