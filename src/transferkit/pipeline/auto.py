"""``--mode auto``: the rule that picks probe or fine-tuning, and the run that applies it."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from transferkit.finetune.config import FinetuneConfig
from transferkit.pipeline.config import TrainConfig
from transferkit.pipeline.finetune import train_finetune
from transferkit.pipeline.result import AutoChoice, Candidate, TrainResult

log = logging.getLogger(__name__)

# --mode auto thresholds (see choose_mode).
AUTO_MIN_PER_CLASS = 20
AUTO_MAX_CPU_IMAGES = 20_000


def choose_mode(class_counts: dict[str, int] | list[int], device: str = "auto") -> tuple[str, str]:
    """The ``--mode auto`` rule: ``("probe" | "finetune", reason)``.

    1. Fewer than 20 training images in some class -> ``probe``: too little data for fine-tuning to
       beat a linear probe on frozen features reliably.
    2. A GPU (CUDA or Apple MPS) is available -> ``finetune`` (staged, ``strategy="full"``).
    3. CPU only and at most 20,000 training images -> ``finetune`` with ``strategy="cached"``
       (trunk activations cached once, top blocks trained), a few CPU-minutes; the learning rates
       of :data:`AUTO_CPU_LRS` are compared on validation data, and the probe LP-FT starts from is
       kept when no fine-tuned epoch beats it there (see :func:`auto_finetune_config`).
    4. CPU only and more images -> ``probe`` (fine-tuning would take hours on a CPU).

    Whenever it fine-tunes (GPU or CPU) and no fine-tuned epoch beats the probe on validation,
    ``--mode auto`` returns the probe mode's model instead, fitted on all training images.
    """
    import torch

    counts = list(class_counts.values()) if isinstance(class_counts, dict) else list(class_counts)
    total = int(sum(counts))
    smallest = int(min(counts)) if counts else 0
    if smallest < AUTO_MIN_PER_CLASS:
        return "probe", f"the smallest class has {smallest} training images (< {AUTO_MIN_PER_CLASS}): a probe is safer"
    has_gpu = (device == "auto" and (torch.cuda.is_available() or (getattr(torch.backends, "mps", None) is not None
                                                                   and torch.backends.mps.is_available()))) or device.startswith(("cuda", "mps"))
    if has_gpu:
        return "finetune", "a GPU is available: full staged fine-tuning"
    if total <= AUTO_MAX_CPU_IMAGES:
        return "finetune", f"CPU with {total} training images (<= {AUTO_MAX_CPU_IMAGES}): fine-tune the top blocks on cached activations"
    return "probe", f"CPU with {total} training images (> {AUTO_MAX_CPU_IMAGES}): fine-tuning would take hours, use the probe"


# --mode auto on a CPU tries these head learning rates (the layer groups below get less) and keeps
# what validation prefers, the probe it starts from included. Far-from-ImageNet data (Fashion-MNIST:
# 2e-3 wins) and near-ImageNet photos (cats vs dogs: small rates keep the probe's accuracy) want
# rates an order of magnitude apart; both candidates share one trunk-activation cache.
AUTO_CPU_LRS = (3e-4, 2e-3)


def auto_finetune_config(device: str = "auto", **overrides) -> FinetuneConfig:
    """The config ``--mode auto`` uses when it picks fine-tuning (cached top blocks on CPU).

    On a CPU: the top 3 layer groups train on cached trunk activations of 4 views (light
    augmentation), 3 epochs, no label smoothing (it pulled LP-FT below the probe on cats vs dogs),
    the best validation epoch kept (epoch 0 = the probe). The learning rate is the first of
    :data:`AUTO_CPU_LRS`; :func:`auto_candidates` lists the others ``--mode auto`` tries.
    """
    import torch

    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available()
                                 and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()))
    base = dict(strategy="cached", unfreeze=3, cached_views=4, epochs=3, head_epochs=0, lr=AUTO_CPU_LRS[0], label_smoothing=0.0,
                augment="light") if on_cpu else {}
    base.update(overrides)
    return FinetuneConfig(**base)


def auto_lr_candidates(config: FinetuneConfig) -> tuple[float, ...]:
    """Learning rates ``--mode auto`` compares on validation: :data:`AUTO_CPU_LRS` on the CPU recipe
    (``strategy="cached"``), else the config's own rate alone."""
    return AUTO_CPU_LRS if config.strategy == "cached" else (config.lr,)


def _class_counts_for_choice(config: TrainConfig, imageset) -> list[int]:
    """Training images per class the split will leave (an official split: its training part, less validation)."""
    labels, train_share = imageset.labels, max(0.0, 1.0 - config.val - config.test)
    if imageset.split is not None and "train" in imageset.split:
        labels = imageset.labels[np.asarray(imageset.split) == "train"]
        train_share = 1.0 if "val" in imageset.split else max(0.0, 1.0 - config.val)
    counts = np.bincount(labels, minlength=len(imageset.class_names))
    return [int(c * train_share) for c in counts]


def _as_candidate(tuned: TrainResult) -> Candidate:
    """The one fine-tune a run tried, as a row of the candidates table."""
    ft = tuned.finetune
    row = next((r for r in ft.history if r["epoch"] == ft.best_epoch), {})
    return Candidate(lr=ft.config.lr, best_epoch=ft.best_epoch, val_acc=row.get("val_acc", float("nan")),
                     val_loss=row.get("val_loss", float("nan")), seconds=round(tuned.timings.get("finetune", 0.0), 2))


def train_auto(config: TrainConfig, *, imageset=None, **kwargs) -> TrainResult | None:
    """``--mode auto``: probe or fine-tune by :func:`choose_mode`; the probe wins unless a fine-tuned epoch beats it on validation."""
    from transferkit.features.distributed import barrier, is_main_process
    from transferkit.pipeline.data import load_config_imageset
    from transferkit.pipeline.outputs import write_outputs
    from transferkit.pipeline.probe import _data_name, train_probe

    imageset = load_config_imageset(config, imageset)
    mode, reason = choose_mode(_class_counts_for_choice(config, imageset), device=config.device or "auto")
    log.info("--mode auto chose %s: %s", mode, reason)
    probe_config = dataclasses.replace(config, mode="probe")
    if mode == "probe":
        result = train_probe(probe_config, imageset=imageset, **kwargs)
        if result is not None:
            result.auto = AutoChoice(mode, reason)
        return result
    base = config.finetune or auto_finetune_config(config.device or "auto")
    lrs = config.lr_candidates or auto_lr_candidates(base)
    tuned = train_finetune(config, imageset=imageset, base=base, lrs=lrs, write=False, **kwargs)
    if tuned.finetune.best_epoch != 0:  # the same on every rank: validation metrics are all-reduced
        if not is_main_process():
            barrier()
            return None
        tuned.auto = AutoChoice(mode, reason)
        result = write_outputs(tuned, data_name=_data_name(config), kind="fine-tuned")
        barrier()
        return result
    # Validation preferred the probe LP-FT started from: that is the probe mode's model, fitted
    # on every training image (the fine-tune may have held some out to choose its setting).
    reason = f"{reason}; but no fine-tuned epoch beat the probe on validation, so the probe was fitted on all training images instead"
    log.info("--mode auto: %s", reason)
    result = train_probe(probe_config, imageset=imageset, **kwargs)
    if result is None:
        return None
    tried = [dataclasses.replace(c, chosen=False) for c in tuned.finetune.candidates] or [_as_candidate(tuned)]
    result.auto = AutoChoice("probe", reason, tried=tried, tried_seconds=tuned.timings.get("finetune", 0.0))
    result.timings["auto_finetune_tried"] = result.auto.tried_seconds
    return result


__all__ = ["AUTO_CPU_LRS", "AUTO_MAX_CPU_IMAGES", "AUTO_MIN_PER_CLASS", "auto_finetune_config", "auto_lr_candidates",
           "choose_mode", "train_auto"]
