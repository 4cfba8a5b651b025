"""``--mode auto``: the rule that picks probe or fine-tuning, and the run that applies it."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from transferkit.finetune.config import FinetuneConfig
from transferkit.pipeline.finetune import finetune_config_from, train_finetune, write_finetune_outputs

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


def auto_candidates(config: FinetuneConfig, user_options: dict | None = None) -> list[dict]:
    """Settings ``--mode auto`` compares on validation: one dict of overrides per candidate.

    Only the learning rate varies, and only on the CPU recipe (``strategy="cached"``) and when the
    user did not fix ``lr`` themselves; otherwise the one given config is the only candidate.
    """
    if config.strategy != "cached" or "lr" in (user_options or {}):
        return [{}]
    return [{"lr": lr} for lr in AUTO_CPU_LRS]



def train_auto(config, **kwargs):
    """``--mode auto``: probe or fine-tune by :func:`choose_mode` (data size, device)."""
    from transferkit.pipeline.train import load_config_imageset, train_probe

    imageset = load_config_imageset(config, kwargs.pop("imageset", None))
    labels, train_share = imageset.labels, max(0.0, 1.0 - config.val - config.test)
    if imageset.split is not None and "train" in imageset.split:  # an official split: its training part, less validation
        labels = imageset.labels[np.asarray(imageset.split) == "train"]
        train_share = 1.0 if "val" in imageset.split else max(0.0, 1.0 - config.val)
    counts = np.bincount(labels, minlength=len(imageset.class_names))
    mode, reason = choose_mode([int(c * train_share) for c in counts], device=config.device or "auto")
    log.info("--mode auto chose %s: %s", mode, reason)
    ft_keys = {f.name for f in dataclasses.fields(FinetuneConfig)} | {"tta"}
    probe_config = dataclasses.replace(config, mode="probe", options={k: v for k, v in (config.options or {}).items() if k not in ft_keys})
    if mode == "probe":
        result = train_probe(probe_config, imageset=imageset, **kwargs)
    else:
        base = auto_finetune_config(config.device or "auto")
        merged, _ = finetune_config_from(config, base)  # the user's options can change the strategy
        candidates = auto_candidates(merged, config.options)
        tuned = train_finetune(config, imageset=imageset, finetune_config=base, candidates=candidates, write_outputs=False, **kwargs)
        if tuned.metrics["finetune"].get("best_epoch") != 0:
            tuned.metrics["auto"] = {"mode": mode, "reason": reason}
            return write_finetune_outputs(config, tuned)
        # Validation preferred the probe LP-FT started from: that is the probe mode's model, fitted
        # on every training image (the fine-tune may have held some out to choose its setting).
        mode, reason = "probe", (f"{reason}; but no fine-tuned epoch beat the probe on validation, so the probe was fitted "
                                 "on all training images instead")
        log.info("--mode auto: %s", reason)
        result = train_probe(probe_config, imageset=imageset, **kwargs)
        result.metrics["auto_finetune_candidates"] = [{k: v for k, v in c.items() if k != "chosen"}
                                                      for c in tuned.metrics["finetune"].get("candidates", [])]
        result.timings["auto_finetune_tried"] = tuned.timings.get("finetune", 0.0)
        result.metrics.setdefault("timings", {})["auto_finetune_tried"] = round(result.timings["auto_finetune_tried"], 4)
    result.metrics["auto"] = {"mode": mode, "reason": reason}
    return result
