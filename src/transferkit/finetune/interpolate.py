"""Weight-space ensembling of the probe and the fine-tuned network (WiSE-FT, Wortsman et al. 2022).

LP-FT starts the fine-tune from the probe, so both networks lie in one basin of the loss and the
straight line between their weights is a line of working networks. The midpoint usually keeps
what fine-tuning learned and what the probe knew: an ensemble of the two with the size and speed of
one network, so a bundle, its export and the runtime stay as they are.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def interpolate_weights(start: nn.Module, tuned: nn.Module, alpha: float) -> nn.Module:
    """A copy of ``tuned`` whose floating-point weights are ``(1 - alpha) * start + alpha * tuned``.

    ``alpha=0`` gives ``start``'s weights, ``alpha=1`` ``tuned``'s. Integer buffers (BatchNorm's
    step counters) are ``tuned``'s. The two modules must have the same state-dict keys and shapes.

    Raises:
        ValueError: ``alpha`` outside [0, 1], or modules of different architectures.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a, b = start.state_dict(), tuned.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise ValueError("cannot interpolate networks of different architectures")
    mixed = {k: torch.lerp(a[k].to(b[k].dtype), b[k], alpha) if b[k].is_floating_point() else b[k].clone() for k in b}
    out = copy.deepcopy(tuned)
    out.load_state_dict(mixed)
    return out.eval()


__all__ = ["interpolate_weights"]
