"""Attack one photo file and prove the result on the saved file.

:func:`attack_image_file` decodes a photo the way ``transferkit classify`` does, attacks it, writes
the adversarial image as a lossless PNG (framed so the standard preprocessing maps it back onto
exactly the attacked pixels, see :mod:`transferkit.attacks.images`), the amplified perturbation
and a side-by-side figure, and then reads the saved PNG back and classifies it again: the
"after" predictions it reports are those of the file on disk, not of a tensor in memory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.attacks.classes import AttackInputError, ClassSpace, describe_model
from transferkit.attacks.core import ATTACKS, NORMS, AttackResult, _AttackMode, attack
from transferkit.attacks.images import frame_for_spec, perturbation_image, save_attack_figure, save_png
from transferkit.attacks.metrics import psnr, ssim
from transferkit.attacks.robustness import format_eps

log = logging.getLogger(__name__)

_LOSSY_SUFFIXES = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".webp": "WebP",
                   ".gif": "GIF (256 colours)", ".avif": "AVIF", ".heic": "HEIC", ".heif": "HEIF"}
_OTHER_IMAGE_SUFFIXES = {".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".jxl", ".jp2"}


@dataclass(frozen=True)
class AttackFiles:
    """Where an attack on a photo writes its images.

    Attributes:
        adversarial: the adversarial PNG (classify it to see the attack work).
        perturbation: the change, amplified to the full range (grey = unchanged).
        figure: original, perturbation and adversarial side by side (``None`` when not drawn).
    """

    adversarial: Path
    perturbation: Path
    figure: Path | None

    def to_dict(self) -> dict[str, str | None]:
        return {"adversarial": str(self.adversarial), "perturbation": str(self.perturbation),
                "figure": str(self.figure) if self.figure is not None else None}


def attack_output_paths(image: str | os.PathLike, out: str | os.PathLike | None = None) -> AttackFiles:
    """The files an attack on ``image`` writes, from an output name.

    Args:
        image: the photo attacked (its name names the files inside a folder).
        out: ``None``: the folder ``attack-<photo name>``; a ``.png`` path: the adversarial image
            itself, with ``<name>_perturbation.png`` and ``<name>_attack.png`` beside it; any other
            path (or an existing folder): a folder holding ``<photo name>_adv.png`` and the others.

    Raises:
        AttackInputError: ``out`` names another image format (lossy ones would undo the attack).
    """
    stem = Path(image).stem
    folder = Path(f"attack-{stem}") if out is None else Path(out)
    suffix = folder.suffix.lower() if out is not None else ""
    if suffix and not folder.is_dir():
        if suffix in _LOSSY_SUFFIXES:
            raise AttackInputError(
                f"{folder}: {_LOSSY_SUFFIXES[suffix]} is a lossy format and its compression would undo the attack; "
                f"name the adversarial image {folder.with_suffix('.png').name} (lossless PNG) or give a folder"
            )
        if suffix in _OTHER_IMAGE_SUFFIXES:
            raise AttackInputError(f"{folder}: adversarial images are written as PNG; name it {folder.with_suffix('.png').name} or give a folder")
        if suffix == ".png":
            return AttackFiles(folder, folder.with_name(f"{folder.stem}_perturbation.png"), folder.with_name(f"{folder.stem}_attack.png"))
    return AttackFiles(folder / f"{stem}_adv.png", folder / f"{stem}_perturbation.png", folder / f"{stem}_attack.png")


@dataclass
class ImageAttackReport:
    """What :func:`attack_image_file` did, with the saved PNG's own predictions.

    Attributes:
        image: the photo attacked.
        model: one line naming the model.
        target: label of the target class, or ``None`` for an untargeted attack.
        source: label of the class the clean photo is predicted as (what untargeted pushes from).
        result: the raw :class:`~transferkit.attacks.core.AttackResult` (tensors, batch of one).
        success: the attack succeeded on the model input.
        saved_png_fools_model: the saved PNG, read back and preprocessed, still fools the model.
        top_before: the clean photo's top classes as (label, probability).
        top_after: the saved PNG's top classes, read back from disk.
        linf, l2: size of the change in pixel units ([0, 1]).
        psnr_db, ssim: how visible it is (higher PSNR / SSIM nearer 1: less visible).
        files: the written files.
    """

    image: Path
    model: str
    target: str | None
    source: str
    result: AttackResult
    success: bool
    saved_png_fools_model: bool
    top_before: list[tuple[str, float]]
    top_after: list[tuple[str, float]]
    linf: float
    l2: float
    psnr_db: float
    ssim: float
    files: AttackFiles

    @property
    def linf_255(self) -> float:
        """The L-inf size in 8-bit levels."""
        return self.linf * 255

    def settings_line(self) -> str:
        """"pgd linf eps 4/255, 10 steps: L-inf 4.0/255, L2 0.712, PSNR 41.2 dB, SSIM 0.9871"."""
        r = self.result
        eps = "none (penalty)" if r.eps is None else (format_eps(r.eps) if r.norm == "linf" else f"{r.eps:g}")
        return (f"{r.method} {r.norm} eps {eps}, {r.steps} steps: L-inf {self.linf_255:.1f}/255, "
                f"L2 {self.l2:.3f}, PSNR {self.psnr_db:.1f} dB, SSIM {self.ssim:.4f}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: settings, success, top classes before and after (of the saved PNG), quality, files."""
        return {
            "image": str(self.image),
            "model": self.model,
            "target": self.target,
            "attack": self.result.summary(),
            "success": self.success,
            "saved_png_fools_model": self.saved_png_fools_model,
            "top3_before": self.top_before,
            "top3_after_saved_png": self.top_after,
            "linf": self.linf,
            "linf_255": self.linf_255,
            "l2": self.l2,
            "psnr_db": self.psnr_db,
            "ssim": self.ssim,
            "files": self.files.to_dict(),
        }


def attack_image_file(
    model: nn.Module,
    image: str | os.PathLike,
    *,
    target: str | int | None = None,
    method: str = "pgd",
    eps: float | None = 4 / 255,
    alpha: float | None = None,
    steps: int | None = None,
    norm: str = "linf",
    seed: int = 0,
    out: str | os.PathLike | None = None,
    figure: bool = True,
    top_k: int = 3,
    description: str | None = None,
) -> ImageAttackReport:
    """Attack the photo ``image``, save the adversarial PNG and classify the saved file again.

    Args:
        model: a classifier bundle (:func:`~transferkit.classifier.bundle.load_bundle`) or an
            ImageNet backbone (:func:`~transferkit.backbones.create_backbone`).
        image: the photo (any format Pillow reads).
        target: the class to turn it into (a name, e.g. "tabby cat", or an index); ``None`` pushes
            away from the model's own prediction (untargeted).
        method: a registered attack (``fgsm``, ``bim``, ``pgd``, ``unconstrained``).
        eps: radius in pixel units (4/255 = four 8-bit levels); ignored by ``unconstrained``.
        alpha: step size (``None``: the method's default).
        steps: iterations (``None``: the method's default).
        norm: ``"linf"`` or ``"l2"``.
        seed: seeds PGD's random start.
        out: where to write (see :func:`attack_output_paths`): ``None``, a ``.png`` file or a folder.
        figure: also draw the side-by-side figure.
        top_k: classes listed before and after.
        description: the model's name in the report (default: :func:`describe_model`).

    Returns:
        An :class:`ImageAttackReport`.

    Raises:
        AttackInputError: an unknown class, a model without classes, or a lossy ``out``.
        UnknownNameError: no attack is registered under ``method``.
        ImageDecodeError: the photo cannot be read.
    """
    from transferkit.data.decode import load_for_spec, open_rgb

    if norm not in NORMS:
        raise AttackInputError(f"norm {norm!r} is not one of {', '.join(NORMS)}")
    ATTACKS.get(method)  # unknown names fail here, with close matches, before any work
    space = ClassSpace.of(model)
    target_idx = space.resolve(target) if target is not None else None
    files = attack_output_paths(image, out)
    image = Path(image)
    spec = model.spec
    clean = load_for_spec(image, spec)[None]
    result = attack(model, clean, None, method=method, target=target_idx, eps=eps, alpha=alpha, steps=steps, norm=norm,
                    generator=torch.Generator().manual_seed(seed))
    adv = result.adv[0]
    perturbation = perturbation_image(adv - clean[0])
    save_png(frame_for_spec(open_rgb(image), spec, adv), files.adversarial)
    save_png(perturbation, files.perturbation)
    saved_probs = _classify_saved_png(model, files.adversarial)
    saved_pred = int(saved_probs.argmax())
    fools = saved_pred == target_idx if target_idx is not None else saved_pred != int(result.labels[0])
    report = ImageAttackReport(
        image=image,
        model=description or describe_model(model),
        target=space.label(target_idx) if target_idx is not None else None,
        source=space.label(int(result.labels[0])),
        result=result,
        success=bool(result.success[0]),
        saved_png_fools_model=bool(fools),
        top_before=space.top(result.probs_before[0], top_k),
        top_after=space.top(saved_probs, top_k),
        linf=float(result.linf[0]),
        l2=float(result.l2[0]),
        psnr_db=float(psnr(clean, result.adv)[0]),
        ssim=float(ssim(clean, result.adv)[0]),
        files=files if figure else AttackFiles(files.adversarial, files.perturbation, None),
    )
    if figure:
        _draw_figure(report, clean[0], perturbation)
    log.info("%s: %s; saved PNG fools the model: %s", image, report.settings_line(), report.saved_png_fools_model)
    return report


def _classify_saved_png(model: nn.Module, path: Path) -> torch.Tensor:
    """Class probabilities [K] of a saved file, through the ordinary preprocessing: the proof."""
    from transferkit.data.decode import load_for_spec

    reread = load_for_spec(path, model.spec)[None]
    with torch.no_grad(), _AttackMode(model):
        return model(reread).softmax(dim=1)[0]


def _draw_figure(report: ImageAttackReport, clean01: torch.Tensor, perturbation) -> None:
    before, after = report.top_before[0], report.top_after[0]
    save_attack_figure(
        clean01, report.result.adv[0], perturbation, before=f"{before[0]} {before[1]:.1%}", after=f"{after[0]} {after[1]:.1%}",
        caption=report.settings_line(), path=report.files.figure,
    )
