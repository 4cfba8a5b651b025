"""FinetuneConfig: every knob of a fine-tuning run, as one typed dataclass (``None`` = default)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from transferkit.core.errors import TransferkitError


class FinetuneError(TransferkitError):
    """A fine-tuning run was configured wrongly or cannot resume; the message says what to change."""


STRATEGIES = ("full", "cached")
AUGMENT_PRESETS = ("none", "light", "standard", "strong")
AUTO_AUGMENTS = ("none", "randaugment", "trivialaugment")
SCHEDULES = ("cosine", "onecycle", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BALANCE = ("none", "sampler", "loss")
HEAD_INITS = ("probe", "random")


@dataclass
class FinetuneConfig:
    """How to fine-tune a pretrained backbone (LP-FT by default: probe-initialised head, then
    the top layers with smaller learning rates, BatchNorm statistics frozen).

    Attributes:
        epochs: total epochs, stage 1 included.
        head_epochs: stage 1 epochs: only the head trains, the backbone is frozen (BatchNorm
            statistics too). Stage 2 (the remaining epochs) unfreezes the top ``unfreeze`` groups.
        unfreeze: how many layer groups, counted from the top, stage 2 trains (``"all"`` = whole
            backbone). EfficientNet-Lite0 has 9 groups: stem, 7 stages, the 1x1 head conv.
        strategy: ``"full"`` pushes augmented images through the whole network every step;
            ``"cached"`` (the CPU trick) runs the frozen trunk once on ``cached_views`` augmented views
            of each training image, stores its activations and trains only the top ``unfreeze`` groups
            plus the head on them (needs an integer ``unfreeze``).
        cached_views: views per training image for ``strategy="cached"``; view 0 is the plain
            evaluation view, the others use the augmentation preset.
        batch_size: images per step (per process under torchrun).
        lr: learning rate of the head; the group ``k`` levels below the head gets ``lr * layer_decay**k``.
        layer_decay: layer-wise learning-rate decay (discriminative learning rates).
        weight_decay: AdamW weight decay (never applied to norms and biases).
        schedule: ``"cosine"`` (linear warmup then cosine), ``"onecycle"`` or ``"constant"``; restarted
            at the start of each stage.
        warmup_frac: fraction of a stage's steps spent warming up.
        label_smoothing: cross-entropy label smoothing.
        grad_clip: max global gradient norm (``None`` = no clipping).
        augment: ``"none"``, ``"light"``, ``"standard"`` or ``"strong"``.
        auto_augment: ``None`` (the preset's choice: TrivialAugment for strong), ``"randaugment"``,
            ``"trivialaugment"`` or ``"none"``.
        mixup, cutmix: Beta(alpha, alpha) parameters (0 disables); ``strategy="full"`` only.
        image_size: training resolution (``None`` = the backbone's); evaluation always uses the
            backbone spec's own size and crop.
        freeze_bn_stats: keep every BatchNorm in eval mode in all stages (LP-FT; small batches and
            small data make batch statistics noisy).
        head_init: ``"probe"`` fits a logistic regression on frozen features first and starts the head
            from it (LP-FT); ``"random"`` starts from a zero-mean random head.
        probe_c: inverse L2 strength of the probe head (``None`` = chosen by 5-fold cross-validated
            log loss over 0.01-10, as the issue-4 probe does).
        balance: class imbalance: ``"none"``, ``"sampler"`` (weighted sampling) or ``"loss"`` (class
            weights in the loss).
        patience: early stopping after this many epochs without validation improvement over the best
            fine-tuned epoch so far (``None`` = off); the probe at epoch 0 is kept as a fallback but is
            not the bar patience measures against.
        device: ``"auto"`` (CUDA, then MPS, then CPU), or ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        precision: ``"auto"`` (bf16 autocast on CUDA when supported, fp32 elsewhere), ``"fp32"``,
            ``"bf16"`` or ``"fp16"`` (with a gradient scaler on CUDA).
        channels_last: memory format (``None`` = on for CPU and CUDA).
        num_workers: DataLoader worker processes.
        cache_decoded: decode each image once and keep it in memory, downscaled (the CPU trick for
            ``strategy="full"``; decoding otherwise repeats every epoch).
        seed: all randomness (order, augmentation, dropout, mixup) derives from it.
        checkpoint_dir: where ``last.pt`` / ``best.pt`` go (``None`` = no checkpoints, no resume).
        checkpoint_every: also checkpoint every this many steps (``None`` = epoch ends only).
        resume: continue from ``checkpoint_dir/last.pt`` when it exists.
        max_steps_per_epoch: cap steps per epoch (quick runs and benchmarks).
    """

    epochs: int = 6
    head_epochs: int = 1
    unfreeze: int | str = "all"
    strategy: str = "full"
    cached_views: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    layer_decay: float = 0.7
    weight_decay: float = 0.05
    schedule: str = "cosine"
    warmup_frac: float = 0.1
    label_smoothing: float = 0.1
    grad_clip: float | None = 1.0
    augment: str = "standard"
    auto_augment: str | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    image_size: int | None = None
    freeze_bn_stats: bool = True
    head_init: str = "probe"
    probe_c: float | None = None
    balance: str = "none"
    patience: int | None = 3
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    num_workers: int = 0
    cache_decoded: bool = True
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    max_steps_per_epoch: int | None = None

    def validate(self) -> FinetuneConfig:
        """Check values; raises :class:`FinetuneError` naming the allowed ones."""

        def choice(name: str, value: Any, allowed: tuple) -> None:
            if value not in allowed:
                raise FinetuneError(f"finetune {name}={value!r} is not allowed; use one of {', '.join(map(str, allowed))}")

        choice("strategy", self.strategy, STRATEGIES)
        choice("augment", self.augment, AUGMENT_PRESETS)
        if self.auto_augment is not None:
            choice("auto_augment", self.auto_augment, AUTO_AUGMENTS)
        choice("schedule", self.schedule, SCHEDULES)
        choice("precision", self.precision, PRECISIONS)
        choice("balance", self.balance, BALANCE)
        choice("head_init", self.head_init, HEAD_INITS)
        if self.epochs < 1 or not 0 <= self.head_epochs <= self.epochs:
            raise FinetuneError(f"need epochs >= 1 and 0 <= head_epochs <= epochs (got {self.epochs}, {self.head_epochs})")
        if self.unfreeze != "all" and (not isinstance(self.unfreeze, int) or self.unfreeze < 0):
            raise FinetuneError(f"unfreeze must be 'all' or a number of layer groups >= 0 (got {self.unfreeze!r})")
        if self.strategy == "cached" and not isinstance(self.unfreeze, int):
            raise FinetuneError("strategy='cached' trains only the top layer groups: give unfreeze a number, e.g. 3")
        if self.strategy == "cached" and (self.mixup > 0 or self.cutmix > 0):
            raise FinetuneError("mixup/cutmix mix images; strategy='cached' trains on cached activations: use strategy='full'")
        if self.batch_size < 1 or self.cached_views < 1:
            raise FinetuneError("batch_size and cached_views must be >= 1")
        if self.lr <= 0 or not 0 < self.layer_decay <= 1:
            raise FinetuneError(f"need lr > 0 and 0 < layer_decay <= 1 (got {self.lr}, {self.layer_decay})")
        if self.resume and not self.checkpoint_dir:
            raise FinetuneError("resume needs a checkpoint directory (checkpoint_dir / --checkpoint-dir)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # Fields that may differ between a run and its resumption without changing the result.
    RESUME_FREE_FIELDS = ("resume", "checkpoint_dir", "checkpoint_every", "num_workers", "device")
