"""Turning an attacked model input back into files a person (and the model) can read.

An attack works on the model's input: the photo resized (shorter side ``spec.resize_size``) and
centre-cropped to ``spec.image_size``. Saving just that crop would not survive
``transferkit classify``: its preprocessing would resize the crop again and blur the perturbation
away. So :func:`frame_for_spec` saves a ``resize_size`` x ``resize_size`` picture: the attacked crop
in the middle, framed by the clean photo's own surrounding pixels. The standard preprocessing maps
that picture back onto exactly the attacked pixels (a resize to the size it already has is a copy,
and the centre crop lands on the attacked square), so the PNG fools the model as is.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transferkit.backbones.spec import BackboneSpec


def tensor_to_pil(image01: torch.Tensor) -> Image.Image:
    """[3,H,W] pixels in [0, 1] -> 8-bit RGB image (rounded, as :func:`quantize_8bit` rounds)."""
    arr = torch.round(image01.detach().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def _crop_offset(size: int, crop: int) -> int:
    return int(round((size - crop) / 2.0))  # torchvision's center_crop rule


def frame_for_spec(original: Image.Image, spec: BackboneSpec, adv01: torch.Tensor) -> Image.Image:
    """Paste the attacked crop ``adv01`` [3,S,S] back into the clean photo's resized frame.

    Args:
        original: the clean RGB photo as decoded (before any resizing).
        spec: the backbone spec whose preprocessing produced the attacked crop.
        adv01: the attacked model input [3, image_size, image_size].

    Returns:
        A ``resize_size`` x ``resize_size`` RGB image that ``load_for_spec(..., spec)`` turns back
        into exactly ``adv01`` (when ``adv01`` is on the 8-bit grid).
    """
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    size, frame = spec.image_size, max(spec.resize_size, spec.image_size)
    if tuple(adv01.shape[-2:]) != (size, size):
        raise ValueError(f"the attacked image is {tuple(adv01.shape[-2:])}, the spec's input is {size}x{size}")
    mode = InterpolationMode(spec.interpolation)
    if spec.crop_mode == "squash":
        resized = TF.resize(original, [spec.resize_size, spec.resize_size], interpolation=mode)
    else:
        resized = TF.resize(original, spec.resize_size, interpolation=mode)
    w, h = resized.size
    inner = _crop_offset(frame, size)
    left = max(0, min(_crop_offset(w, size) - inner, w - frame))
    top = max(0, min(_crop_offset(h, size) - inner, h - frame))
    canvas = Image.new("RGB", (frame, frame))
    canvas.paste(resized.crop((left, top, left + min(frame, w), top + min(frame, h))), (0, 0))
    canvas.paste(tensor_to_pil(adv01), (inner, inner))
    return canvas


def perturbation_image(delta: torch.Tensor) -> Image.Image:
    """The perturbation [3,H,W] amplified to the full range: grey is 0, its largest |value| is 0 or 255."""
    peak = float(delta.abs().max())
    scaled = 0.5 + delta / (2 * peak) if peak > 0 else torch.full_like(delta, 0.5)
    return tensor_to_pil(scaled)


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a lossless PNG atomically (temporary name, then rename)."""
    from transferkit.core.atomic import atomic_write

    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_attack_figure(
    clean01: torch.Tensor, adv01: torch.Tensor, perturbation: Image.Image, *, before: str, after: str, caption: str,
    path: str | os.PathLike,
) -> Path:
    """Write the side-by-side figure (original, amplified perturbation, adversarial) as a PNG.

    Args:
        clean01: the clean model input [3,H,W].
        adv01: the adversarial model input [3,H,W].
        perturbation: the amplified perturbation (:func:`perturbation_image`).
        before: caption under the original ("tabby (281) 93.0%").
        after: caption under the adversarial image.
        caption: the figure's title line (attack settings and image-quality numbers).
        path: where to write it (atomically).
    """
    from matplotlib.figure import Figure

    from transferkit.core.atomic import save_figure_png

    fig = Figure(figsize=(11, 4.2), dpi=110)
    panels = [(tensor_to_pil(clean01), f"original\n{before}"), (perturbation, "perturbation (amplified)"),
              (tensor_to_pil(adv01), f"adversarial\n{after}")]
    for n, (img, title) in enumerate(panels):
        ax = fig.add_subplot(1, 3, n + 1)
        ax.imshow(np.asarray(img))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    return save_figure_png(fig, path)
