"""Learning-rate range test (Smith 2015 / fastai's lr_find): exponential LR sweep, loss curve, suggestion."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from transferkit.core.atomic import save_figure_png
from transferkit.data.imageset import ImageSet
from transferkit.finetune.config import FinetuneConfig, FinetuneError

log = logging.getLogger(__name__)


@dataclass
class LrFindResult:
    """The sweep: ``lrs[i]`` was used for the step whose smoothed loss is ``losses[i]``.

    ``suggestion`` is the learning rate of the steepest descent of the smoothed loss (fastai's
    "steep"), bounded above by a tenth of the LR at the minimum loss.
    """

    lrs: list[float]
    losses: list[float]
    suggestion: float
    min_loss_lr: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def lr_find(
    images: ImageSet,
    config: FinetuneConfig | None = None,
    *,
    backbone: Any = "efficientnet_lite0",
    weights: str = "auto",
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    steps: int = 60,
    stop_factor: float = 4.0,
) -> LrFindResult:
    """Sweep the head learning rate exponentially from ``start_lr`` to ``end_lr`` over ``steps`` steps.

    Uses stage 2's setup (the top ``unfreeze`` groups trainable with layer-wise decay), so the
    suggestion is directly a ``lr`` for :class:`FinetuneConfig`. Stops early once the smoothed
    loss exceeds ``stop_factor`` times its minimum. Nothing is saved; the backbone is a copy.
    """
    from transferkit.finetune.layers import param_groups
    from transferkit.finetune.loop import _prepare, _prepare_input, _set_stage, apply_train_mode, loss_fn

    if not 0 < start_lr < end_lr:
        raise FinetuneError(f"need 0 < start_lr < end_lr (got {start_lr}, {end_lr})")
    cfg = dataclasses.replace(config or FinetuneConfig(), epochs=1, head_epochs=0, checkpoint_dir=None, resume=False)
    cfg.validate()
    train = images.where_split("train") if images.split is not None else images
    with torch.random.fork_rng(devices=[]):
        run = _prepare(train, None, cfg, backbone, weights)
        _set_stage(run, 2)
        opt = torch.optim.AdamW(param_groups(run.groups if cfg.strategy == "full" else run.trainable, run.model.head,
                                             lr=start_lr, layer_decay=cfg.layer_decay, weight_decay=cfg.weight_decay))
        base = [g["lr"] for g in opt.param_groups]
        gamma = (end_lr / start_lr) ** (1 / max(1, steps - 1))
        run.train_module.train()
        apply_train_mode(run.train_module, trainable_groups=run.trainable, freeze_bn_stats=cfg.freeze_bn_stats)
        lrs: list[float] = []
        losses: list[float] = []
        avg, best = 0.0, math.inf
        step, epoch = 0, 0
        while step < steps:
            run.train_data.set_epoch(epoch)
            run.sampler.set_epoch(epoch)
            for x, y in DataLoader(run.train_data, batch_size=cfg.batch_size, sampler=run.sampler, num_workers=cfg.num_workers):
                if step >= steps:
                    break
                mult = gamma**step
                for g, b in zip(opt.param_groups, base):
                    g["lr"] = b * mult
                logits = run.train_module(_prepare_input(run, x))
                loss = loss_fn(logits, y.to(run.device), label_smoothing=cfg.label_smoothing, class_weights=run.class_weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                avg = 0.9 * avg + 0.1 * float(loss.detach())
                smoothed = avg / (1 - 0.9 ** (step + 1))  # bias-corrected moving average
                lrs.append(start_lr * mult)
                losses.append(smoothed)
                best = min(best, smoothed)
                step += 1
                if not math.isfinite(smoothed) or smoothed > stop_factor * best:
                    step = steps
                    break
            epoch += 1
    if len(losses) < 3:
        raise FinetuneError("lr-find stopped after fewer than 3 steps; lower --start-lr or check the data")
    i_min = min(range(len(losses)), key=losses.__getitem__)
    slopes = [(losses[i + 1] - losses[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1])) for i in range(1, max(2, i_min))]
    i_steep = 1 + min(range(len(slopes)), key=slopes.__getitem__) if slopes else 0
    suggestion = min(lrs[i_steep], lrs[i_min] / 10)
    return LrFindResult(lrs, losses, float(suggestion), float(lrs[i_min]))


def plot_lr_find(result: LrFindResult, path: str | Path) -> Path:
    """Save the loss-vs-LR curve (log x axis) with the suggestion marked, as a PNG (written atomically)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses)
    ax.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggested lr {result.suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head; lower groups scaled by layer_decay)")
    ax.set_ylabel("smoothed training loss")
    ax.legend()
    fig.tight_layout()
    return save_figure_png(fig, path)
