"""``train(config)``: the one entry point of a training run, dispatching on ``config.mode``.

- ``"probe"``: :mod:`transferkit.pipeline.probe` (frozen features + a head);
- ``"finetune"``: :mod:`transferkit.pipeline.finetune` (LP-FT through :mod:`transferkit.finetune`);
- ``"auto"``: :mod:`transferkit.pipeline.auto` (the rule that picks one, decided on validation data).
"""

from __future__ import annotations

import dataclasses

from transferkit.core.errors import TransferkitError
from transferkit.finetune.config import FinetuneConfig
from transferkit.pipeline.config import MODES, TrainConfig
from transferkit.pipeline.probe import train_probe
from transferkit.pipeline.result import TrainResult


def finetune_recipe(mode: str, device: str | None = None, **overrides) -> FinetuneConfig:
    """The fine-tuning settings ``mode`` starts from, with ``overrides``.

    ``"finetune"`` and ``"auto"`` share one recipe (:func:`transferkit.pipeline.auto.auto_finetune_config`:
    on a CPU the top 3 layer groups on cached trunk activations, 3 epochs, two learning rates compared on
    validation, epoch 0 = the probe kept when nothing beats it); any other mode gets the library's defaults.
    """
    if mode in ("auto", "finetune"):
        from transferkit.pipeline.auto import auto_finetune_config

        return auto_finetune_config(device or "auto", **overrides)
    return dataclasses.replace(FinetuneConfig(), **overrides)


def train(config: TrainConfig, **kwargs) -> TrainResult | None:
    """Train a classifier as ``config.mode`` says: ``"probe"``, ``"finetune"`` or ``"auto"``.

    Keyword arguments (``imageset``, ``backbone``, ``progress``) go to the mode's trainer. Under
    ``torchrun`` every rank runs this: the work is shared (sharded extraction, DDP fine-tuning),
    rank 0 alone evaluates and writes the bundle, and the other ranks get ``None``.

    Raises:
        TransferkitError: unknown mode, a bad ``out``, or whatever the chosen trainer raises.
    """
    if config.mode not in MODES:
        raise TransferkitError(f"unknown mode {config.mode!r}; use one of {', '.join(MODES)}")
    if config.out:
        from transferkit.classifier.bundle_files import check_bundle_target

        check_bundle_target(config.out)  # a bad --out fails now, not after the training
    if config.mode == "probe":
        return train_probe(config, **kwargs)
    if config.mode == "finetune":
        from transferkit.pipeline.auto import auto_lr_candidates
        from transferkit.pipeline.finetune import train_finetune

        if config.finetune is None and "base" not in kwargs:  # the recipe, with its learning rates compared
            base = finetune_recipe("finetune", config.device)
            kwargs.setdefault("lrs", config.lr_candidates or auto_lr_candidates(base))
            kwargs["base"] = base
        return train_finetune(config, **kwargs)
    from transferkit.pipeline.auto import train_auto

    return train_auto(config, **kwargs)


__all__ = ["MODES", "TrainConfig", "TrainResult", "finetune_recipe", "train", "train_probe"]
