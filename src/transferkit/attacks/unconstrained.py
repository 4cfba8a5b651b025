"""The lesson's unconstrained attack: gradient descent on the image itself, no eps ball.

Instead of a hard limit on the perturbation, the loss trades "be classified as the target" against
"stay close to the original and smooth":

    loss = margin + l2_weight * ||x - x0||_2^2 + tv_weight * TV(x - x0)

with the Carlini-Wagner margin ``max(max_{j != t} z_j - z_t, -kappa)`` (targeted) or
``max(z_y - max_{j != y} z_j, -kappa)`` (untargeted): once the model is ``kappa`` logits sure,
only the closeness terms act. Adam moves the pixels; ``x`` is clamped to [0, 1] and, with
``quantize=True``, the model sees the 8-bit rounding (straight-through). Per image the successful
iterate with the smallest L2 distance is kept, so ``success`` describes exactly what is returned.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from transferkit.attacks.core import (
    ATTACKS,
    AttackMethod,
    AttackResult,
    _as_class_tensor,
    _AttackMode,
    _check_common,
    _clean_labels,
    _finish,
    _logits,
    _run_batched,
    quantize_8bit,
)

DEFAULT_STEPS = 100
DEFAULT_LR = 1.0 / 255
DEFAULT_L2_WEIGHT = 0.05
DEFAULT_TV_WEIGHT = 0.0005
DEFAULT_KAPPA = 2.0


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image: sum of |horizontal| + |vertical| differences, [N]."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).sum(dim=1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).sum(dim=1)
    return dh + dw


def _margin(logits: torch.Tensor, cls: torch.Tensor, kappa: float, targeted: bool) -> torch.Tensor:
    own = logits.gather(1, cls.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, cls.view(-1, 1), float("-inf")).amax(dim=1)
    gap = others - own if targeted else own - others
    return gap.clamp(min=-kappa)


def _unconstrained_batch(model, x0, labels, target, *, lr, steps, l2_weight, tv_weight, kappa, quantize, channels_last, generator):
    targeted = target is not None
    cls = target if targeted else labels
    delta = torch.zeros_like(x0, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=lr)
    best = x0.clone()
    best_l2 = torch.full((x0.shape[0],), float("inf"), device=x0.device)
    logits_before = None
    for _ in range(steps + 1):  # the last pass only scores the final iterate
        x = (x0 + delta).clamp(0, 1)
        seen = x + (quantize_8bit(x) - x).detach() if quantize else x
        logits = _logits(model, seen, channels_last)
        if logits_before is None:
            logits_before = logits.detach()
        with torch.no_grad():
            pred = logits.argmax(dim=1)
            ok = pred == cls if targeted else pred != cls
            dist = (seen - x0).flatten(1).norm(dim=1)
            better = ok & (dist < best_l2)
            best = torch.where(better.view(-1, 1, 1, 1), seen.detach(), best)
            best_l2 = torch.where(better, dist, best_l2)
        if _ == steps:
            break
        diff = x - x0
        loss = (_margin(logits, cls, kappa, targeted) + l2_weight * diff.pow(2).flatten(1).sum(dim=1) + tv_weight * total_variation(diff)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    never = torch.isinf(best_l2)
    final = quantize_8bit((x0 + delta).clamp(0, 1)) if quantize else (x0 + delta).clamp(0, 1)
    adv = torch.where(never.view(-1, 1, 1, 1), final.detach(), best)
    return adv.detach(), logits_before


def unconstrained(
    model: nn.Module,
    images01: torch.Tensor,
    labels=None,
    *,
    target=None,
    alpha: float | None = None,
    steps: int | None = None,
    random_start: bool | None = None,
    generator: torch.Generator | None = None,
    norm: str = "linf",
    quantize: bool = True,
    l2_weight: float = DEFAULT_L2_WEIGHT,
    tv_weight: float = DEFAULT_TV_WEIGHT,
    kappa: float = DEFAULT_KAPPA,
    batch_size: int = 32,
    channels_last: bool = True,
) -> AttackResult:
    """Push images toward ``target`` (or away from ``labels``) with a closeness/TV penalty.

    Args:
        model: any ``nn.Module`` mapping pixels in [0, 1] to logits.
        images01: [N,3,H,W] clean images in [0, 1].
        labels: [N] true classes for an untargeted attack; ``None`` uses the clean predictions.
        target: class index or [N] indices; ``None`` for untargeted.
        alpha: Adam's learning rate (pixel units per step); default 1/255.
        steps: Adam steps; default 100.
        random_start: unused (always starts at the image); must not be True.
        generator: unused (the method is deterministic); accepted for a uniform signature.
        norm: unused: the L2 and TV penalties replace the eps ball.
        quantize: the model sees the 8-bit rounding of the image (straight-through gradient).
        l2_weight: weight of ``||x - x0||_2^2`` (sum over pixels, per image).
        tv_weight: weight of the total variation of ``x - x0`` (keeps the change smooth).
        kappa: margin in logits beyond which only the closeness terms act.
        batch_size: images per pass.
        channels_last: feed the model NHWC tensors (faster on CPU).

    Returns:
        An :class:`~transferkit.attacks.core.AttackResult` with ``eps=None``.
    """
    t0 = time.perf_counter()
    steps = DEFAULT_STEPS if steps is None else int(steps)
    lr = DEFAULT_LR if alpha is None else float(alpha)
    if random_start:
        raise ValueError("the unconstrained attack always starts at the image; drop random_start")
    _check_common(model, images01, None, norm, steps, quantize, False)
    for name, value in (("l2_weight", l2_weight), ("tv_weight", tv_weight), ("kappa", kappa), ("alpha", lr)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    images01 = images01.detach()
    n = images01.shape[0]
    target = _as_class_tensor(target, n, images01.device, "target")
    labels = _as_class_tensor(labels, n, images01.device, "labels")
    if labels is None and target is None:
        labels = _clean_labels(model, images01, batch_size, channels_last)
    with _AttackMode(model):
        adv, before, after = _run_batched(
            model, images01, labels, target, batch_size=batch_size, channels_last=channels_last,
            batch_fn=lambda x0, lab, tgt: _unconstrained_batch(
                model, x0, lab, tgt, lr=lr, steps=steps, l2_weight=l2_weight, tv_weight=tv_weight,
                kappa=kappa, quantize=quantize, channels_last=channels_last, generator=generator,
            ),
        )
    result = _finish(
        images01, adv, before, after, labels, target, method="unconstrained", eps=None, alpha=lr, steps=steps,
        norm="l2+tv penalty", random_start=False, quantized=quantize,
    )
    result.extra.update(l2_weight=l2_weight, tv_weight=tv_weight, kappa=kappa)
    result.seconds = time.perf_counter() - t0
    return result


ATTACKS.register(
    "unconstrained",
    AttackMethod(
        "unconstrained",
        "Adam on the pixels toward the target with an L2 + total-variation closeness penalty instead of an eps ball",
        unconstrained,
        DEFAULT_STEPS,
        False,
        needs_eps=False,
    ),
)
