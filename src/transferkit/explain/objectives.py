"""Composable objectives (losses to minimise) for growing images.

An :class:`Objective` maps a :class:`RenderState` (the clean image and the logits of its
transformed views) to a scalar loss. Objectives add and scale like numbers, lucent-style::

    loss = class_logprob(281) + 0.5 * total_variation_loss() + 0.01 * l2_loss()

The class terms are the negative log-probability (or negative logit) of the target class, so that
lower is better for every term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from transferkit.core.registry import Registry


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of each image: mean |vertical step| + mean |horizontal step|.

    For an image ``x`` of shape [C, H, W]::

        TV(x) = mean_{c,i,j} |x[c,i+1,j] - x[c,i,j]| + mean_{c,i,j} |x[c,i,j+1] - x[c,i,j]|

    Means (not sums) make the value independent of image size: a flat image has 0, a checkerboard
    of 0s and 1s has 2, uniform random noise about 2/3.

    Args:
        images: [N, C, H, W] or [C, H, W], H and W at least 2.

    Returns:
        [N] tensor (or a 0-d tensor for a single [C, H, W] image).
    """
    single = images.dim() == 3
    x = images.unsqueeze(0) if single else images
    if x.dim() != 4 or x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"total_variation wants [N, C, H, W] or [C, H, W] with H, W >= 2, got {tuple(images.shape)}")
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(dim=1)
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(dim=1)
    tv = dy + dx
    return tv[0] if single else tv


@dataclass
class RenderState:
    """What an objective may look at during one optimisation step.

    Attributes:
        image: the clean (untransformed) images in [0, 1], [N, 3, H, W].
        views: the transformed views fed to the network, [N * V, 3, h, w].
        logits: the network's logits for ``views``, [N * V, num_classes].
    """

    image: torch.Tensor
    views: torch.Tensor
    logits: torch.Tensor


class Objective:
    """A named scalar loss of a :class:`RenderState`; supports ``+``, ``-`` and scaling by numbers."""

    def __init__(self, fn: Callable[[RenderState], torch.Tensor], name: str) -> None:
        self.fn = fn
        self.name = name

    def __call__(self, state: RenderState) -> torch.Tensor:
        return self.fn(state)

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, (int, float)):
            return Objective(lambda s: self(s) + other, f"{self.name} + {other}")
        return Objective(lambda s: self(s) + other(s), f"{self.name} + {other.name}")

    __radd__ = __add__

    def __neg__(self) -> Objective:
        return -1.0 * self

    def __sub__(self, other: Objective) -> Objective:
        return self + (-other)

    def __mul__(self, weight: float) -> Objective:
        if not isinstance(weight, (int, float)):
            return NotImplemented
        w = float(weight)
        return Objective(lambda s: w * self(s), f"{w:g} * {self.name}")

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def class_logprob(class_index: int) -> Objective:
    """Negative mean log-softmax probability of ``class_index`` over the views."""
    return Objective(lambda s: -torch.log_softmax(s.logits, dim=1)[:, class_index].mean(), f"-log p[{class_index}]")


def class_logit(class_index: int) -> Objective:
    """Negative mean logit of ``class_index`` over the views (unbounded: pair it with a penalty)."""
    return Objective(lambda s: -s.logits[:, class_index].mean(), f"-logit[{class_index}]")


def total_variation_loss() -> Objective:
    """Mean :func:`total_variation` of the clean images (smoothness penalty)."""
    return Objective(lambda s: total_variation(s.image).mean(), "TV")


def l2_loss(center: float = 0.5) -> Objective:
    """Mean squared distance of the clean pixels from ``center`` (keeps colours from saturating)."""
    return Objective(lambda s: (s.image - center).pow(2).mean(), "L2")


# Class terms by name; each factory takes the class index.
CLASS_OBJECTIVES: Registry[Callable[[int], Objective]] = Registry("class objective")
CLASS_OBJECTIVES.register("logprob", class_logprob)
CLASS_OBJECTIVES.register("logit", class_logit)


def build_class_objective(
    class_index: int, *, kind: str = "logprob", tv_weight: float = 0.0, l2_weight: float = 0.0
) -> Objective:
    """``kind``'s class term + tv_weight * TV + l2_weight * L2 (zero weights are left out)."""
    objective = CLASS_OBJECTIVES.get(kind)(class_index)
    if tv_weight:
        objective = objective + tv_weight * total_variation_loss()
    if l2_weight:
        objective = objective + l2_weight * l2_loss()
    return objective


__all__ = [
    "CLASS_OBJECTIVES",
    "Objective",
    "RenderState",
    "build_class_objective",
    "class_logit",
    "class_logprob",
    "l2_loss",
    "total_variation",
    "total_variation_loss",
]
