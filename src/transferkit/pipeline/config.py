"""What a training run depends on: :class:`TrainConfig`, typed, recorded in the bundle and report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from transferkit.finetune.config import FinetuneConfig

MODES = ("probe", "finetune", "auto")
HEAD_KINDS = ("logistic", "mlp")
TTA_CHOICES = ("none", "flip", "flip-zoom")


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "the backbone's / the data's / the mode's default".

    Attributes:
        data: dataset folder or CSV (any layout :func:`transferkit.data.load_images` reads).
        backbone: timm name (``transferkit backbones`` lists the curated ones).
        weights: ``"auto"``, a weights file, ``"package"``, ``"hub"`` or ``"none"``.
        mode: ``"probe"`` (frozen features + head), ``"finetune"`` or ``"auto"`` (see
            :func:`transferkit.pipeline.auto.choose_mode`).
        out: bundle directory to write (``None``: do not save).
        engine: feature engine: ``"auto"``, ``"torch"`` or ``"onnxruntime"``.
        head: the probe's head, ``"logistic"`` or ``"mlp"``.
        C: fixed inverse L2 strength of the logistic head (``None``: chosen by 5-fold cross-validation on the rows it is fitted on).
        class_weight: ``None`` or ``"balanced"`` (for imbalanced classes; fine-tuning balances its loss).
        val, test: split fractions (a dataset's official split is kept when it has one).
        seed: seed for the split, the head and fine-tuning.
        batch_size: images per forward pass.
        image_size: override the backbone's input size.
        format: dataset layout (``"auto"`` detects it).
        cache: use the on-disk caches (features, fitted heads).
        report: write an HTML report into the bundle (``<out>/report``).
        workers: decoding threads.
        device: torch device (``None``: CUDA when available, else CPU).
        finetune: fine-tuning settings for ``mode="finetune"`` / ``"auto"`` (``None``: the mode's
            recipe; see :func:`transferkit.pipeline.auto.auto_finetune_config`).
        lr_candidates: learning rates to compare on validation data when fine-tuning (``None``:
            auto's CPU recipe compares :data:`transferkit.pipeline.auto.AUTO_CPU_LRS`, anything else
            uses ``finetune.lr`` alone).
        tta: test-time augmentation for a fine-tuned model's held-out metrics: ``"none"``, ``"flip"``, ``"flip-zoom"``.
        time_budget: seconds ``mode="auto"`` may spend comparing candidates (``None``: its default,
            :data:`transferkit.pipeline.auto.AUTO_TIME_BUDGET`; ``float("inf")``: no limit). The probe
            of the configured backbone always runs; what does not fit is skipped and reported.
        backbone_candidates: backbones ``mode="auto"`` compares probes of (``None``: EfficientNet-Lite0/1/2
            when ``backbone`` is one of them with its offline weights; ``()``: ``backbone`` alone).
        combine: ``mode="auto"`` also compares probes over the compared backbones together (features
            concatenated, and probabilities averaged; see :mod:`transferkit.classifier.multi`). ``False``
            keeps a model of one backbone, which attacks, feature maps and int8 export need.
        prefer_combined: ``mode="auto"`` takes the compared backbones' probes averaged unless the configured
            backbone's probe is clearly better than them (or another candidate clearly better than them):
            usually more accurate where the training images are too few to show a difference, at about four
            times the prediction time of one backbone. ``False`` (default): the configured backbone's
            probe unless a candidate is clearly better.
    """

    data: str = ""
    backbone: str = "efficientnet_lite0"
    weights: str = "auto"
    mode: str = "probe"
    out: str | None = None
    engine: str = "auto"
    head: str = "logistic"
    C: float | None = None
    class_weight: str | None = None
    val: float = 0.15
    test: float = 0.15
    seed: int = 0
    batch_size: int = 32
    image_size: int | None = None
    format: str = "auto"
    cache: bool = True
    report: bool = True
    workers: int = 2
    device: str | None = None
    finetune: FinetuneConfig | None = None
    lr_candidates: tuple[float, ...] | None = None
    tta: str = "none"
    time_budget: float | None = None
    backbone_candidates: tuple[str, ...] | None = None
    combine: bool = True
    prefer_combined: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record of the settings (what bundles and reports store)."""
        return asdict(self)


__all__ = ["HEAD_KINDS", "MODES", "TTA_CHOICES", "TrainConfig"]
