"""The fine-tuning loop: a pretrained backbone trained with the usual tricks.

Entry points:

- :func:`finetune` ``(images, config, backbone=...) -> FinetuneResult``: LP-FT (the head starts as
  the logistic probe of :mod:`transferkit.heads`), staged unfreezing, layer-wise LR decay, frozen
  BatchNorm statistics, AdamW, warmup + cosine / one-cycle, label smoothing, gradient clipping,
  augmentation presets, mixup/cutmix, class balancing, early stopping, best checkpoint, exact
  resume, DDP via torchrun, CUDA autocast and the CPU tricks (``strategy="cached"``, lower
  training resolution).
- :func:`lr_find` / :func:`plot_lr_find`: the learning-rate range test.
- :func:`tta_predict_proba`: test-time augmentation for evaluation.
- :func:`interpolate_weights`: the probe and the fine-tuned network averaged in weight space (WiSE-FT).

Names are imported on first use (PEP 562), so ``FinetuneConfig`` is available without PyTorch.
"""

from __future__ import annotations

import importlib

from transferkit.finetune.config import FinetuneConfig, FinetuneError

_LAZY = {
    "FinetuneResult": "loop", "StepInfo": "loop", "evaluate": "loop", "finetune": "loop",
    "LrFindResult": "lr_range", "lr_find": "lr_range", "plot_lr_find": "lr_range",
    "TTA_MODES": "transforms", "eval_transform": "transforms", "train_transform": "transforms",
    "tta_predict_proba": "transforms", "tta_views": "transforms", "interpolate_weights": "interpolate",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"transferkit.finetune.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'transferkit.finetune' has no attribute {name!r}")


__all__ = ["FinetuneConfig", "FinetuneError", *_LAZY]
