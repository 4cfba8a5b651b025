"""The fine-tuning loop: a pretrained backbone trained with the usual tricks.

Entry points:

- :func:`finetune` ``(images, config, backbone=...) -> (ClassifierModel, history)``: LP-FT
  (probe-initialised head, staged unfreezing, layer-wise LR decay, frozen BatchNorm statistics),
  AdamW, warmup + cosine / one-cycle, label smoothing, gradient clipping, augmentation presets,
  mixup/cutmix, class balancing, early stopping, best checkpoint, exact resume, DDP via torchrun,
  CUDA autocast and the CPU tricks (``strategy="cached"``, lower training resolution).
- :func:`lr_find` / :func:`plot_lr_find`: the learning-rate range test.
- :func:`tta_predict_proba`: test-time augmentation for evaluation.
"""

from __future__ import annotations

from transferkit.finetune.config import FinetuneConfig, FinetuneError
from transferkit.finetune.loop import StepInfo, evaluate, finetune
from transferkit.finetune.lr_find import LrFindResult, lr_find, plot_lr_find
from transferkit.finetune.transforms import TTA_MODES, eval_transform, train_transform, tta_predict_proba, tta_views

__all__ = [
    "FinetuneConfig",
    "FinetuneError",
    "LrFindResult",
    "StepInfo",
    "TTA_MODES",
    "eval_transform",
    "evaluate",
    "finetune",
    "lr_find",
    "plot_lr_find",
    "train_transform",
    "tta_predict_proba",
    "tta_views",
]
