"""The fine-tuning loop: readable, two stages, resumable, optionally distributed.

Reading order: :func:`finetune` builds everything (:func:`_prepare`), then runs
:func:`train_one_epoch` / :func:`evaluate` per epoch, checkpointing as it goes.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from transferkit.data.imageset import ImageSet
from transferkit.finetune.config import FinetuneConfig, FinetuneError
from transferkit.finetune.data import AugmentedImages, EpochSampler, TensorItems, balanced_weights, item_seed
from transferkit.finetune.layers import (
    LayerGroup,
    TopNet,
    apply_train_mode,
    layer_groups,
    param_groups,
    set_trainable,
    supports_cached,
    top_groups,
    trunk_forward,
)
from transferkit.finetune.runtime import (
    DistInfo,
    autocast,
    init_distributed,
    load_checkpoint,
    resolve_device,
    resolve_precision,
    save_checkpoint,
)
from transferkit.finetune.transforms import eval_transform, mix_batch, train_transform

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"


@dataclass
class StepInfo:
    """What a step callback sees (tests use it to simulate a crash)."""

    epoch: int
    step_in_epoch: int
    global_step: int
    loss: float
    module: Any = field(default=None, repr=False, compare=False)  # the trained module (grads still set)


@dataclass
class _Run:
    """Everything :func:`_prepare` builds; the loop only reads it."""

    config: FinetuneConfig
    dist: DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    model: nn.Module  # ClassifierModel (what gets saved)
    train_module: nn.Module  # model itself, or TopNet for strategy="cached"
    groups: list[LayerGroup]
    trainable: list[LayerGroup]
    train_data: Any
    val_inputs: torch.Tensor | None
    val_labels: torch.Tensor | None
    class_weights: torch.Tensor | None
    sampler: EpochSampler
    num_classes: int
    channels_last: bool
    timings: dict[str, float] = field(default_factory=dict)
    # running sums of the epoch in progress (checkpointed, so a resumed epoch reports whole-epoch numbers)
    partial: dict[str, float] = field(default_factory=lambda: {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0})


def _lr_lambda(config: FinetuneConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of each group's base LR at a global step: warmup then cosine / one-cycle, per stage."""
    s1 = config.head_epochs * steps_per_epoch
    s2 = (config.epochs - config.head_epochs) * steps_per_epoch

    def stage_factor(t: int, n: int) -> float:
        if n <= 0 or config.schedule == "constant":
            return 1.0
        if config.schedule == "onecycle":
            peak = max(1, int(0.3 * n))
            if t < peak:
                return 0.04 + 0.96 * (1 - math.cos(math.pi * t / peak)) / 2
            return 1e-4 + (1 - 1e-4) * (1 + math.cos(math.pi * (t - peak) / max(1, n - peak))) / 2
        warm = int(config.warmup_frac * n)
        if t < warm:
            return (t + 1) / (warm + 1)
        return 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, n - warm)))

    def factor(step: int) -> float:
        return stage_factor(step, s1) if step < s1 else stage_factor(step - s1, s2)

    return factor


def _config_fingerprint(config: FinetuneConfig, train: ImageSet, backbone_spec) -> str:
    d = {k: v for k, v in config.to_dict().items() if k not in FinetuneConfig.RESUME_FREE_FIELDS}
    d["labels"] = train.labels.tolist()
    return _key_with_images(d, train, backbone_spec)


def _key_with_images(fields: dict, images: ImageSet, backbone_spec) -> str:
    """sha256 of ``fields`` plus the images (paths, size/mtime/inode) and the backbone spec."""
    d = dict(fields)
    d["images"] = [str(p) for p in images.paths]
    # Paths alone would serve stale activations for an image edited in place: add size and mtime
    # (the same fast path the feature cache uses).
    d["stats"] = [_file_stamp(p) for p in images.paths]
    d["backbone"] = backbone_spec.cache_key_fields()
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


# The config fields that change the cached trunk activations (others, e.g. lr or epochs, do not).
_TRUNK_CACHE_FIELDS = ("strategy", "unfreeze", "cached_views", "augment", "auto_augment", "image_size", "seed")


def _file_stamp(path) -> list[int] | None:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _trunk_cache_key(config: FinetuneConfig, train: ImageSet, backbone_spec) -> str:
    return _key_with_images({k: getattr(config, k) for k in _TRUNK_CACHE_FIELDS}, train, backbone_spec)


# Trunk activations shared in memory between finetune() calls inside shared_trunk_activations()
# (runs that differ only in optimisation settings, e.g. --mode auto's learning rates).
_TRUNK_MEMO: contextvars.ContextVar[dict | None] = contextvars.ContextVar("transferkit_trunk_memo", default=None)


@contextlib.contextmanager
def shared_trunk_activations():
    """Within this block, ``strategy="cached"`` runs on the same images, views and backbone compute the
    frozen trunk once and share its activations in memory (no files needed)."""
    token = _TRUNK_MEMO.set({})
    try:
        yield
    finally:
        _TRUNK_MEMO.reset(token)


def _batched(n: int, batch: int):
    for i in range(0, n, batch):
        yield slice(i, min(n, i + batch))


def _load_eval_pixels(images: ImageSet, spec, image_size: int | None = None) -> torch.Tensor:
    """Evaluation view of each image as uint8 [N, 3, H, W] (decoded once, kept compactly)."""
    from transferkit.data.decode import open_rgb

    tf = eval_transform(spec, image_size)
    size = int(image_size or spec.image_size)
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    options = images.decode_options
    for i, p in enumerate(images.paths):
        out[i] = tf(open_rgb(p, draft_size=int(size / spec.crop_pct), **options)).mul(255).round().to(torch.uint8)
    return out


@torch.no_grad()
def _cache_trunk(run_model, groups, trunk, images: ImageSet, config: FinetuneConfig, device, channels_last) -> torch.Tensor:
    """Trunk activations of ``cached_views`` views per image: [V, N, C, h, w] float16.

    View 0 is the evaluation view at the training resolution, the others the augmentation preset
    (seeded per view and image, so a rerun rebuilds exactly the same cache).
    """
    backbone = run_model.backbone
    spec = backbone.spec
    size = int(config.image_size or spec.image_size)
    plain = AugmentedImages(images, eval_transform(spec, size), seed=config.seed, short_side=int(size / spec.crop_pct), cache_decoded=True)
    aug = AugmentedImages(images, train_transform(spec, config.augment, image_size=size, auto_augment=config.auto_augment),
                          seed=config.seed, short_side=int(size / spec.crop_pct), cache_decoded=False)
    aug.decoded = plain.decoded  # decode each file once for all views
    views = []
    for v in range(config.cached_views):
        ds = plain if v == 0 else aug
        ds.set_epoch(-1 - v)  # view v gets its own seeds, distinct from any epoch's
        chunks = []
        for sl in _batched(len(images), 64):
            x = torch.stack([ds[i][0] for i in range(sl.start, sl.stop)]).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            chunks.append(trunk_forward(backbone.net, trunk, backbone.normalize(x)).to("cpu", torch.float16))
        views.append(torch.cat(chunks))
        log.info("cached trunk activations: view %d of %d", v + 1, config.cached_views)
    return torch.stack(views)


@torch.no_grad()
def _fit_probe_head(features: torch.Tensor, labels: np.ndarray, head: nn.Linear, num_classes: int, seed: int,
                    C: float | None = None) -> None:
    """LP-FT: start the head from the probe mode's logistic head fitted on frozen features.

    ``C=None`` chooses C as the probe does (cross-validated log loss on the training images); with
    too few images for that, C = 1.
    """
    from transferkit.heads import HeadError, LogisticHead

    X = features.float().numpy()
    try:
        probe = LogisticHead(C=C, random_state=seed).fit(X, labels)
    except HeadError as exc:
        if C is not None:
            raise
        log.info("probe head: %s; using C=1", exc)
        probe = LogisticHead(C=1.0, random_state=seed).fit(X, labels)
    fitted = probe.expand_module(num_classes)
    head.weight.copy_(fitted.weight)
    head.bias.copy_(fitted.bias)


def _make_classifier(backbone, head, class_names):
    from transferkit.classifier.bundle import ClassifierModel

    return ClassifierModel(backbone, head, class_names)


def _prepare(train: ImageSet, val: ImageSet | None, config: FinetuneConfig, backbone, weights: str) -> _Run:
    from transferkit.backbones import create_backbone
    from transferkit.backbones.model import PixelModel

    dist_info = init_distributed(config.device)
    device = resolve_device(config.device, dist_info)
    amp_dtype = resolve_precision(config.precision, device)
    channels_last = config.channels_last if config.channels_last is not None else device.type in ("cpu", "cuda")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    if isinstance(backbone, PixelModel):
        bb = copy.deepcopy(backbone)
    else:
        bb = create_backbone(str(backbone), weights=weights, seed=config.seed)
    bb = bb.eval()
    set_trainable(bb, False)  # everything frozen; stages unfreeze what they train
    net = bb.net
    groups = layer_groups(net)
    trainable = top_groups(groups, config.unfreeze)
    num_classes = len(train.class_names)
    torch.manual_seed(config.seed)
    head = nn.Linear(bb.num_features, num_classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    model = _make_classifier(bb, head, train.class_names).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    spec = bb.spec
    size = int(config.image_size or spec.image_size)

    if config.strategy == "cached":
        if not supports_cached(net):
            raise FinetuneError(f"strategy='cached' needs an EfficientNet/MobileNet-style backbone; {spec.name} is not: use strategy='full'")
        n_top = len(trainable)
        trunk = groups[: len(groups) - n_top]
        # With a checkpoint folder the cache is kept there, so a resumed run does not redo the
        # expensive part (the key covers config, images and backbone).
        cache_file = None
        train_key = _trunk_cache_key(config, train, spec)
        memo = _TRUNK_MEMO.get()
        if config.checkpoint_dir:
            cache_file = Path(config.checkpoint_dir) / f"trunk-{train_key[:16]}.pt"
        memo_key = None
        if memo is not None:
            from transferkit.features.engines import weights_digest

            # In memory two backbones with one spec but other weights must never meet: key on the weights too.
            memo_key = train_key + weights_digest(net)
        if memo_key is not None and memo_key in memo:
            acts = memo[memo_key]
            log.info("reusing trunk activations computed earlier in this process")
        elif cache_file is not None and cache_file.is_file():
            acts = load_checkpoint(cache_file)["activations"]
            log.info("loaded cached trunk activations from %s", cache_file)
        else:
            acts = _cache_trunk(model, groups, trunk, train, config, device, channels_last)
            if cache_file is not None and dist_info.is_main:
                save_checkpoint(cache_file, {"activations": acts})
        if memo_key is not None:
            memo[memo_key] = acts
        train_data = TensorItems(acts, train.labels, seed=config.seed)
        train_module = TopNet(net, trainable, head)
        val_inputs = None
        if val is not None and len(val):
            val_key = "val-" + _trunk_cache_key(config, val, spec)
            val_file = cache_file.with_name(f"trunk-val-{val_key[4:20]}.pt") if cache_file else None
            val_memo_key = val_key + memo_key if memo_key is not None else None
            if val_memo_key is not None and val_memo_key in memo:
                val_inputs = memo[val_memo_key]
            elif val_file is not None and val_file.is_file():
                val_inputs = load_checkpoint(val_file)["activations"]
            else:
                pix = _load_eval_pixels(val, spec)
                with torch.no_grad():
                    val_inputs = torch.cat([
                        trunk_forward(net, trunk, bb.normalize(pix[sl].to(device).float().div(255))).to("cpu", torch.float16)
                        for sl in _batched(len(val), 64)
                    ])
                if val_file is not None and dist_info.is_main:
                    save_checkpoint(val_file, {"activations": val_inputs})
            if val_memo_key is not None:
                memo[val_memo_key] = val_inputs
        timings["cache_s"] = time.perf_counter() - t0
        if config.head_init == "probe":
            with torch.no_grad():
                feats = torch.cat([
                    train_module.pool(_run_top(train_module, acts[0, sl].to(device).float())).flatten(1).cpu()
                    for sl in _batched(len(train), 64)
                ])
            _fit_probe_head(feats, train.labels, head, num_classes, config.seed, config.probe_c)
    else:
        train_data = AugmentedImages(
            train,
            train_transform(spec, config.augment, image_size=size, auto_augment=config.auto_augment),
            seed=config.seed,
            short_side=max(int(size / spec.crop_pct), int(size * 1.15)),
            cache_decoded=config.cache_decoded,
        )
        train_module = model
        if config.cache_decoded:
            for i in range(len(train)):  # decode every file once, up front (timed in prepare_s)
                train_data.decoded.get(i)
        val_inputs = _load_eval_pixels(val, spec) if val is not None and len(val) else None
        if config.head_init == "probe":
            pix = _load_eval_pixels(train, spec)
            with torch.no_grad():
                feats = torch.cat([bb.forward_features(pix[sl].to(device).float().div(255)).cpu() for sl in _batched(len(train), 64)])
            _fit_probe_head(feats, train.labels, head, num_classes, config.seed, config.probe_c)
    timings["prepare_s"] = time.perf_counter() - t0
    head.to(device)

    sample_w, class_w = balanced_weights(train.labels, num_classes)
    sampler = EpochSampler(len(train), seed=config.seed, rank=dist_info.rank, world_size=dist_info.world_size,
                           weights=sample_w if config.balance == "sampler" else None)
    class_weights = torch.tensor(class_w, dtype=torch.float32, device=device) if config.balance == "loss" else None
    val_labels = torch.as_tensor(val.labels, dtype=torch.long) if val_inputs is not None else None
    return _Run(config, dist_info, device, amp_dtype, model, train_module, groups, trainable, train_data, val_inputs,
                val_labels, class_weights, sampler, num_classes, channels_last, timings)


def _run_top(top: TopNet, acts: torch.Tensor) -> torch.Tensor:
    x = acts
    for m in top.top:
        x = m(x)
    return x


def _prepare_input(run: _Run, x: torch.Tensor) -> torch.Tensor:
    x = x.to(run.device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    else:
        x = x.float()
    if run.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _set_stage(run: _Run, stage: int) -> None:
    """Stage 1: head only. Stage 2: head + the top ``unfreeze`` groups. The rest stays frozen."""
    set_trainable(run.model.backbone, False)
    set_trainable(run.model.head, True)
    if stage == 2:
        for g in run.trainable:
            for m in g.modules:
                set_trainable(m, True)


def _stage_groups(run: _Run, stage: int) -> list[LayerGroup]:
    return run.trainable if stage == 2 else []


def _wrap(run: _Run) -> nn.Module:
    if not run.dist.enabled:
        return run.train_module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [run.device.index] if run.device.type == "cuda" else None
    # Rewrapped at each stage change: DDP registers the parameters that require grad at construction.
    return DDP(run.train_module, device_ids=ids, broadcast_buffers=False)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float, class_weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy with label smoothing; ``targets`` are class indices or soft targets."""
    return F.cross_entropy(logits.float(), targets, weight=class_weights, label_smoothing=label_smoothing)


def train_one_epoch(run: _Run, module: nn.Module, optimizer, scheduler, scaler, epoch: int, start_step: int,
                    global_step: int, on_step: Callable[[StepInfo], None] | None, save: Callable[[int, int], None]) -> tuple[dict, int]:
    """One pass over the training data from batch ``start_step``; returns (stats, global_step)."""
    cfg = run.config
    stage = 1 if epoch < cfg.head_epochs else 2
    run.train_module.train()
    apply_train_mode(run.train_module, trainable_groups=_stage_groups(run, stage), freeze_bn_stats=cfg.freeze_bn_stats)
    run.train_data.set_epoch(epoch)
    run.sampler.set_epoch(epoch, skip=start_step * cfg.batch_size)
    loader = DataLoader(run.train_data, batch_size=cfg.batch_size, sampler=run.sampler, num_workers=cfg.num_workers,
                        drop_last=False, persistent_workers=False)
    steps_cap = _steps_per_epoch(run)
    acc = run.partial if start_step > 0 else {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0}
    run.partial = acc
    seen_before = acc["seen"]
    t0 = time.perf_counter()
    step = start_step
    for x, y in loader:
        if step >= steps_cap:
            break
        # Dropout, drop-path and mixup draw from torch's RNG: seed it per step so a resumed run
        # draws exactly what the uninterrupted one drew.
        torch.manual_seed(item_seed(cfg.seed, 1_000_000 + epoch, step))
        x = _prepare_input(run, x)
        y = y.to(run.device)
        targets: torch.Tensor = y
        if cfg.mixup > 0 or cfg.cutmix > 0:
            x, targets = mix_batch(x, F.one_hot(y, run.num_classes).float(), mixup=cfg.mixup, cutmix=cfg.cutmix)
        with autocast(run.device, run.amp_dtype):
            logits = module(x)
        loss = loss_fn(logits, targets, label_smoothing=cfg.label_smoothing, class_weights=run.class_weights)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"] if p.grad is not None], cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        step += 1
        global_step += 1
        acc["loss_sum"] += float(loss.detach()) * len(y)
        acc["correct"] += float((logits.detach().argmax(1) == y).sum())
        acc["seen"] += len(y)
        if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0 and step < steps_cap:
            save(epoch, step)
        if on_step is not None:
            on_step(StepInfo(epoch, step, global_step, float(loss.detach()), run.train_module))
    dt = time.perf_counter() - t0
    seen = acc["seen"]
    stats = {"train_loss": acc["loss_sum"] / max(seen, 1), "train_acc": acc["correct"] / max(seen, 1), "train_images": int(seen),
             "train_seconds": dt, "train_images_per_s": (seen - seen_before) / dt if dt > 0 else float("nan")}
    return stats, global_step


def _steps_per_epoch(run: _Run) -> int:
    per_rank = -(-len(run.train_data) // run.dist.world_size)
    steps = -(-per_rank // run.config.batch_size)
    if run.config.max_steps_per_epoch:
        steps = min(steps, int(run.config.max_steps_per_epoch))
    return steps


@torch.no_grad()
def evaluate(run: _Run, batch_size: int = 64) -> dict[str, float]:
    """Validation loss and accuracy (sharded across processes, summed with all_reduce)."""
    if run.val_inputs is None:
        return {}
    module = run.train_module
    was_training = module.training
    module.eval()
    n = len(run.val_labels)
    idx = torch.arange(run.dist.rank, n, run.dist.world_size)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.float64)
    for sl in _batched(len(idx), batch_size):
        ii = idx[sl]
        x = _prepare_input(run, run.val_inputs[ii])
        y = run.val_labels[ii].to(run.device)
        with autocast(run.device, run.amp_dtype):
            logits = module(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
    totals = torch.stack([loss_sum, correct])
    if run.dist.enabled:
        import torch.distributed as dist

        dist.all_reduce(totals)
    module.train(was_training)
    return {"val_loss": float(totals[0]) / n, "val_acc": float(totals[1]) / n}


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced.

    Attributes:
        model: the fine-tuned :class:`~transferkit.classifier.bundle.ClassifierModel` (CPU, eval mode).
        history: one dict per epoch (epoch 0 = the starting point when there is validation data).
        best_epoch: the epoch whose weights ``model`` holds (``None`` without validation data: the last).
        timings: seconds per preparation stage.
        strategy: ``"full"`` or ``"cached"``.
        device: where it trained.
        world_size: processes under torchrun (1 otherwise).
    """

    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int | None
    timings: dict[str, float]
    strategy: str
    device: str
    world_size: int = 1

    @property
    def kept_row(self) -> dict[str, Any] | None:
        """The history row of the epoch that was kept (``None`` without validation data)."""
        return next((r for r in self.history if r["epoch"] == self.best_epoch), None)


def finetune(
    images: ImageSet,
    config: FinetuneConfig | None = None,
    *,
    backbone: Any = "efficientnet_lite0",
    weights: str = "auto",
    val: ImageSet | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> FinetuneResult:
    """Fine-tune a pretrained backbone plus a new head on ``images`` (LP-FT with the training tricks).

    Stage 1 (``head_epochs``) trains only the head on the frozen backbone (BatchNorm statistics
    frozen too); stage 2 unfreezes the top ``unfreeze`` layer groups with layer-wise decayed
    learning rates. AdamW, warmup + cosine (or one-cycle), label smoothing, gradient clipping.
    Under ``torchrun`` every process runs this function: DistributedDataParallel, sharded
    sampling, metrics all-reduced, only rank 0 logs and writes checkpoints.

    Args:
        images: the training images; if they carry a split and ``val`` is None, the "train" part
            trains and the "val" part (if any) drives early stopping and the best checkpoint.
        config: the run's :class:`FinetuneConfig` (defaults when None).
        backbone: a backbone name or a :class:`~transferkit.backbones.model.PixelModel` (copied,
            never modified).
        weights: weights for a backbone given by name (see ``create_backbone``).
        val: validation images (optional).
        on_step: called after every optimisation step with a :class:`StepInfo`.

    Returns:
        A :class:`FinetuneResult`: the :class:`~transferkit.classifier.bundle.ClassifierModel` on the
        CPU in eval mode (the best validation epoch's weights when there is validation data; with the
        default ``head_init="probe"`` that can be epoch 0, the untouched backbone with the probe head,
        when no fine-tuned epoch beats the probe on validation: ``result.best_epoch == 0``), and one
        dict per epoch (stage, lr, train/val loss and accuracy, seconds, images/s). Early stopping's
        patience counts epochs without improvement over the best fine-tuned epoch.

    Raises:
        FinetuneError: bad config, or a checkpoint that does not belong to this run.
    """
    config = (config or FinetuneConfig()).validate()
    train = images
    if val is None and images.split is not None:
        train = images.where_split("train")
        if "val" in images.split:
            val = images.where_split("val")
    if len(train) == 0:
        raise FinetuneError("no training images (split 'train' is empty)")
    with torch.random.fork_rng(devices=[]):
        return _finetune(train, val, config, backbone, weights, on_step)


def _finetune(train, val, config, backbone, weights, on_step):
    run = _prepare(train, val, config, backbone, weights)
    cfg = run.config
    opt = torch.optim.AdamW(param_groups(run.groups if cfg.strategy == "full" else run.trainable, run.model.head,
                                         lr=cfg.lr, layer_decay=cfg.layer_decay, weight_decay=cfg.weight_decay))
    spe = _steps_per_epoch(run)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, spe))
    scaler = torch.amp.GradScaler(run.device.type) if run.amp_dtype == torch.float16 and run.device.type == "cuda" else None
    fingerprint = _config_fingerprint(cfg, train, run.model.spec)
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None

    # best_metric/best_epoch: the best validation score so far, epoch 0 (the probe) included;
    # tuned_best: the best over fine-tuned epochs only, which early stopping's patience counts against.
    state = {"epoch": 0, "step": 0, "global_step": 0, "history": [], "best_metric": None, "best_epoch": None, "bad_epochs": 0,
             "tuned_best": None}
    best_state: dict[str, torch.Tensor] | None = None

    def save(epoch: int, step: int, name: str = LAST) -> None:
        if ckpt_dir is None or not run.dist.is_main:
            return
        save_checkpoint(ckpt_dir / name, {
            "version": CHECKPOINT_VERSION,
            "fingerprint": fingerprint,
            "model": run.model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch, "step": step, "global_step": state["global_step"],
            "history": state["history"], "best_metric": state["best_metric"], "best_epoch": state["best_epoch"],
            "bad_epochs": state["bad_epochs"], "tuned_best": state["tuned_best"], "partial": dict(run.partial) if step > 0 else None,
        })

    if cfg.resume and ckpt_dir is not None and (ckpt_dir / LAST).is_file():
        ck = load_checkpoint(ckpt_dir / LAST)
        if ck.get("fingerprint") != fingerprint:
            raise FinetuneError(f"checkpoint {ckpt_dir / LAST} belongs to a different run (config, images or backbone differ); "
                                "use another --checkpoint-dir or drop --resume")
        run.model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["torch_rng"])
        for k in ("epoch", "step", "global_step", "history", "best_metric", "best_epoch", "bad_epochs"):
            state[k] = ck[k]
        state["tuned_best"] = ck.get("tuned_best")
        if ck.get("partial"):
            run.partial = dict(ck["partial"])
        if state["best_epoch"] is not None and (ckpt_dir / BEST).is_file():
            best = load_checkpoint(ckpt_dir / BEST)
            # best.pt must be this run's and the epoch last.pt names; anything else is left over
            # from another run in the same folder and is never restored.
            if best.get("fingerprint") == fingerprint and best.get("epoch") == state["best_epoch"]:
                best_state = best["model"]
            else:
                log.warning("ignoring %s: it is not this run's best epoch (left by another run in the same folder); "
                            "the best epoch is chosen again from the epochs still to run", ckpt_dir / BEST)
                state["best_metric"] = state["best_epoch"] = None
        log.info("resumed from %s at epoch %d step %d", ckpt_dir / LAST, state["epoch"], state["step"])

    stopped_early = False
    start_epoch, start_step = state["epoch"], state["step"]
    if not state["history"] and start_step == 0 and run.val_inputs is not None:
        # Epoch 0: the starting point (with head_init="probe", the linear probe LP-FT starts from).
        row0 = {"epoch": 0, "stage": 0, "lr": 0.0, **evaluate(run)}
        state["history"].append(row0)
        if cfg.head_init == "probe":
            # The probe is a model in its own right: if no epoch beats it on validation, it is what
            # comes back (best_epoch 0), never a fine-tune that validation says is worse.
            state["best_metric"], state["best_epoch"] = [row0["val_acc"], -row0["val_loss"]], 0
            best_state = {k: v.detach().to("cpu").clone() for k, v in run.model.state_dict().items()}
            if ckpt_dir is not None and run.dist.is_main:
                save_checkpoint(ckpt_dir / BEST, {"model": best_state, "epoch": 0, "fingerprint": fingerprint})
    for epoch in range(start_epoch, cfg.epochs):
        if stopped_early:
            break
        stage = 1 if epoch < cfg.head_epochs else 2
        _set_stage(run, stage)
        module = _wrap(run)
        stats, state["global_step"] = train_one_epoch(run, module, opt, sched, scaler, epoch, start_step if epoch == start_epoch else 0,
                                                      state["global_step"], on_step, save)
        metrics = evaluate(run)
        row = {"epoch": epoch + 1, "stage": stage, "lr": sched.get_last_lr()[0], **stats, **metrics}
        state["history"].append(row)
        if run.dist.is_main:
            log.info("epoch %d/%d (stage %d): %s", epoch + 1, cfg.epochs, stage,
                     ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
        if "val_acc" in metrics:
            score = (metrics["val_acc"], -metrics["val_loss"])
            if state["best_metric"] is None or score > tuple(state["best_metric"]):
                state["best_metric"], state["best_epoch"] = list(score), epoch + 1
                best_state = {k: v.detach().to("cpu").clone() for k, v in run.model.state_dict().items()}
                if ckpt_dir is not None and run.dist.is_main:
                    save_checkpoint(ckpt_dir / BEST, {"model": best_state, "epoch": epoch + 1, "fingerprint": fingerprint})
            # Patience counts epochs without improvement over the best fine-tuned epoch (the probe
            # at epoch 0 is a fallback, not the bar: LP-FT often dips below it before improving).
            if state["tuned_best"] is None or score > tuple(state["tuned_best"]):
                state["tuned_best"], state["bad_epochs"] = list(score), 0
            else:
                state["bad_epochs"] += 1
                if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
                    log.info("early stopping after epoch %d (no val improvement for %d epochs)", epoch + 1, cfg.patience)
                    stopped_early = True
        save(epoch + 1 if not stopped_early else cfg.epochs, 0)
        if run.dist.enabled:
            import torch.distributed as dist

            dist.barrier()
    if best_state is not None:
        run.model.load_state_dict(best_state)
    model = run.model.to("cpu", memory_format=torch.contiguous_format).eval()
    set_trainable(model, True)
    return FinetuneResult(model=model, history=state["history"], best_epoch=state["best_epoch"], timings=run.timings,
                          strategy=cfg.strategy, device=str(run.device), world_size=run.dist.world_size)
