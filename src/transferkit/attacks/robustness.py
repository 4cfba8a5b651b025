"""How fragile is a model, as numbers: accuracy under attack for a range of eps.

Conventions (RobustBench's): an image counts as robustly correct when the model classifies the
clean image correctly *and* the untargeted attack fails on it. Images the model already gets wrong
are not attacked and count as wrong at every eps, so robust accuracy never exceeds clean accuracy.
The success rate is over the images that were attacked (the clean-correct ones).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from transferkit.attacks.core import ATTACKS, _AttackMode, _logits, attack

log = logging.getLogger(__name__)


@dataclass
class RobustnessPoint:
    """One eps of the curve."""

    eps: float
    accuracy: float  # robustly correct / all images
    success_rate: float  # attacks that changed the prediction / clean-correct images attacked
    attacked: int
    mean_linf: float
    mean_l2: float
    seconds: float


@dataclass
class RobustnessCurve:
    """Accuracy against eps for one attack configuration."""

    method: str
    norm: str
    steps: int | None
    alpha: float | None
    images: int
    clean_accuracy: float
    points: list[RobustnessPoint] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[tuple[str, ...]]:
        """Table rows: eps (as k/255), accuracy, success rate, attacked, mean L-inf, seconds."""
        return [
            (
                format_eps(p.eps),
                f"{p.accuracy:.3f}",
                "-" if p.attacked == 0 or p.eps == 0 else f"{p.success_rate:.3f}",
                str(p.attacked),
                f"{p.mean_linf * 255:.2f}/255",
                f"{p.seconds:.1f}",
            )
            for p in self.points
        ]


def format_eps(eps: float) -> str:
    """4/255 for values on the 8-bit grid, else the decimal."""
    k = eps * 255
    return f"{round(k):g}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.5g}"


def _predict(model: nn.Module, images01: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad(), _AttackMode(model):
        return torch.cat([_logits(model, images01[s : s + batch_size], True).argmax(dim=1) for s in range(0, len(images01), batch_size)])


def robustness_curve(
    model: nn.Module,
    images01: torch.Tensor,
    labels: torch.Tensor,
    eps_values: Sequence[float],
    *,
    method: str = "pgd",
    steps: int | None = None,
    alpha: float | None = None,
    norm: str = "linf",
    generator: torch.Generator | None = None,
    quantize: bool = True,
    batch_size: int = 32,
    progress: Callable[[float, int], None] | None = None,
    **options,
) -> RobustnessCurve:
    """Robust accuracy and attack success rate of ``model`` for each eps (untargeted attacks).

    Args:
        model: any ``nn.Module`` mapping pixels in [0, 1] to logits.
        images01: [N,3,H,W] images in [0, 1] (the model's preprocessed input).
        labels: [N] true classes.
        eps_values: radii to try (pixel units); 0 gives the clean accuracy.
        method: a registered attack (``fgsm``, ``bim``, ``pgd``; ``unconstrained`` has no eps).
        steps, alpha, norm, generator, quantize, batch_size, **options: passed to
            :func:`~transferkit.attacks.core.attack`; ``alpha=None`` scales with each eps.
        progress: called with (eps, images attacked) before each eps.

    Returns:
        A :class:`RobustnessCurve` with one point per eps, in the order given.
    """
    if not ATTACKS.get(method).needs_eps:
        raise ValueError(f"{method!r} has no eps ball; a robustness curve needs fgsm, bim or pgd")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (images01.shape[0],):
        raise ValueError(f"labels must have one class per image ({images01.shape[0]}), got shape {tuple(labels.shape)}")
    n = images01.shape[0]
    t0 = time.perf_counter()
    clean_pred = _predict(model, images01, batch_size)
    correct = clean_pred == labels
    clean_acc = float(correct.float().mean()) if n else 0.0
    clean_seconds = time.perf_counter() - t0
    idx = torch.nonzero(correct).flatten()
    curve = RobustnessCurve(
        method=method, norm=norm, steps=steps, alpha=alpha, images=n, clean_accuracy=clean_acc,
        settings={"quantize": quantize, "batch_size": batch_size, **options},
    )
    for eps in eps_values:
        eps = float(eps)
        if progress is not None:
            progress(eps, int(idx.numel()))
        if eps == 0 or idx.numel() == 0:
            curve.points.append(RobustnessPoint(eps, clean_acc, 0.0, 0, 0.0, 0.0, clean_seconds if eps == 0 else 0.0))
            continue
        result = attack(
            model, images01[idx], labels[idx], method=method, eps=eps, alpha=alpha, steps=steps, norm=norm,
            generator=generator, quantize=quantize, batch_size=batch_size, **options,
        )
        robust = int((~result.success).sum())
        curve.points.append(
            RobustnessPoint(
                eps=eps,
                accuracy=robust / n,
                success_rate=result.success_rate,
                attacked=int(idx.numel()),
                mean_linf=float(result.linf.mean()),
                mean_l2=float(result.l2.mean()),
                seconds=result.seconds,
            )
        )
        log.info("eps %s: robust accuracy %.3f, success %.3f", format_eps(eps), robust / n, result.success_rate)
    return curve


def plot_robustness(curves: Sequence[RobustnessCurve], path, *, title: str = "") -> None:
    """Write accuracy against eps (one line per curve) to ``path`` (PNG), via matplotlib's Agg."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    for c in curves:
        xs = [p.eps * 255 for p in c.points]
        ax.plot(xs, [p.accuracy for p in c.points], marker="o", label=f"{c.method} ({c.norm}) accuracy")
        ax.plot(xs, [p.success_rate for p in c.points], marker="x", linestyle="--", label=f"{c.method} success rate")
    ax.set_xlabel("eps (8-bit levels, x/255)")
    ax.set_ylabel("fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    from transferkit.core.atomic import save_figure_png

    save_figure_png(fig, path)
