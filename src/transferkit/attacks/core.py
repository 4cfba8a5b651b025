"""Gradient attacks in pixel space: FGSM, BIM and PGD (L-inf or L2), targeted or not.

The maths is torchattacks' (``FGSM``, ``PGD``, ``PGDL2`` in torchattacks 3.5.1), written as one
function instead of stateful objects:

* untargeted: ascend ``CrossEntropy(model(x), label)``; targeted: descend
  ``CrossEntropy(model(x), target)`` (torchattacks' ``cost = -loss(outputs, target)``);
* L-inf step ``x <- x + alpha * sign(grad)``, L2 step ``x <- x + alpha * grad / (||grad|| + 1e-10)``;
* then project onto the eps ball around the clean image and clamp to [0, 1].

FGSM is one such step with ``alpha = eps`` and no random start; BIM is PGD without a random start.
Models take pixels in [0, 1] and normalise inside (as :class:`~transferkit.backbones.model.PixelModel`
and :class:`~transferkit.classifier.bundle.ClassifierModel` do), so eps is always in pixel units.

With ``quantize=True`` (the default) every image the model sees during the attack, and the
returned one, lies on the 8-bit grid (k/255) and inside the eps ball: the gradient step is taken on
a float copy and the model is run on its rounded version (a straight-through estimate). So the
adversarial image survives being saved as an 8-bit PNG bit for bit, and ``success`` is measured on
exactly what is returned. With the usual settings (8-bit images, eps and alpha multiples of 1/255)
rounding changes nothing but float noise: FGSM equals torchattacks' to about 3e-8. Over many PGD
steps that noise can flip the sign of a gradient component near 0 and the iterates drift apart
(measured on Lite0: the same success set, different pixels); ``quantize=False`` with
``channels_last=False`` reproduces torchattacks' PGD bit for bit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.core.registry import Registry

log = logging.getLogger(__name__)

NORMS = ("linf", "l2")
_GRID = 255.0
_GRID_TOL = 1e-3  # in units of 1/255; float32 noise on k/255 is about 1.5e-5 of a grid step
_L2_EPS_FOR_DIVISION = 1e-10  # torchattacks PGDL2's eps_for_division


@dataclass
class AttackResult:
    """What an attack did to a batch of images.

    Attributes:
        adv: adversarial images [N,3,H,W], pixels in [0, 1] (on the 8-bit grid when quantized).
        success: [N] bool; targeted: ``pred_after == target``; untargeted: ``pred_after != labels``.
        linf: [N] L-inf size of ``adv - images`` (pixel units; multiply by 255 for 8-bit levels).
        l2: [N] L2 size of ``adv - images``.
        pred_before: [N] top-1 class of the clean images.
        pred_after: [N] top-1 class of ``adv``.
        logits_before: [N,K] logits of the clean images.
        logits_after: [N,K] logits of ``adv``.
        labels: [N] true (or clean-predicted) classes used for untargeted attacks.
        target: [N] target classes, or ``None`` for an untargeted attack.
        method, eps, alpha, steps, norm, random_start, quantized: the settings used.
        seconds: wall time of the attack (all batches, including the clean and final forwards).
    """

    adv: torch.Tensor
    success: torch.Tensor
    linf: torch.Tensor
    l2: torch.Tensor
    pred_before: torch.Tensor
    pred_after: torch.Tensor
    logits_before: torch.Tensor
    logits_after: torch.Tensor
    labels: torch.Tensor
    target: torch.Tensor | None
    method: str
    eps: float | None
    alpha: float
    steps: int
    norm: str
    random_start: bool
    quantized: bool
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else 0.0

    @property
    def probs_before(self) -> torch.Tensor:
        return self.logits_before.softmax(dim=1)

    @property
    def probs_after(self) -> torch.Tensor:
        return self.logits_after.softmax(dim=1)

    def summary(self) -> dict[str, Any]:
        """Settings and aggregate numbers as JSON-able data."""
        return {
            "method": self.method,
            "norm": self.norm,
            "eps": self.eps,
            "alpha": self.alpha,
            "steps": self.steps,
            "random_start": self.random_start,
            "quantized": self.quantized,
            "targeted": self.target is not None,
            "images": int(self.success.numel()),
            "success_rate": self.success_rate,
            "mean_linf": float(self.linf.mean()) if self.linf.numel() else 0.0,
            "mean_l2": float(self.l2.mean()) if self.l2.numel() else 0.0,
            "seconds": self.seconds,
            **self.extra,
        }


@dataclass(frozen=True)
class AttackMethod:
    """A registered attack: its function and the defaults that make it that attack."""

    name: str
    description: str
    run: Callable[..., AttackResult]
    default_steps: int
    random_start: bool
    needs_eps: bool = True


ATTACKS: Registry[AttackMethod] = Registry("attack")


def list_attacks(pattern: str = "*") -> list[str]:
    """Names of the registered attacks matching a shell-style ``pattern``."""
    return ATTACKS.list(pattern)


def default_alpha(eps: float, steps: int) -> float:
    """Step size when none is given: ``eps`` for one step (FGSM), else ``2.5 * eps / steps``.

    2.5 * eps / steps (Madry et al.) lets the iterate cross the ball and come back; for 10 steps it
    is eps / 4, the ratio of torchattacks' PGD defaults (eps 8/255, alpha 2/255).
    """
    return float(eps) if steps == 1 else 2.5 * float(eps) / steps


# ---------------------------------------------------------------------------------------------
# helpers


def is_on_8bit_grid(images01: torch.Tensor) -> bool:
    """True when every pixel is k/255 (as decoded 8-bit photos are)."""
    scaled = images01.detach().double() * _GRID
    return bool(((scaled - scaled.round()).abs() <= _GRID_TOL).all())


def quantize_8bit(images01: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid exactly as saving a PNG and reading it back does (k / 255)."""
    return torch.round(images01.clamp(0, 1) * _GRID) / _GRID


def _grid_bounds(x0: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer grid levels [lo, hi] that lie inside both the eps ball around ``x0`` and [0, 1]."""
    lo = torch.ceil((x0 - eps) * _GRID - _GRID_TOL).clamp_(0, _GRID)
    hi = torch.floor((x0 + eps) * _GRID + _GRID_TOL).clamp_(0, _GRID)
    return lo, hi


def _quantize_linf(adv: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.maximum(torch.round(adv * _GRID), lo), hi) / _GRID


def _quantize_l2(adv: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    """Round to the grid; where rounding pushes ||delta|| over eps, shrink delta and round again."""
    base = torch.round(x0 * _GRID)
    delta = adv * _GRID - base
    q = torch.round(delta)
    limit = eps * _GRID * (1 + 1e-6)
    for _ in range(30):
        over = q.flatten(1).norm(dim=1) > limit
        if not bool(over.any()):
            break
        delta = torch.where(over.view(-1, 1, 1, 1), delta * 0.97, delta)
        q = torch.round(delta)
    else:  # rounding toward zero never grows any component, so it always fits
        q = torch.where(over.view(-1, 1, 1, 1), torch.trunc(delta), q)
    return (base + q).clamp_(0, _GRID) / _GRID


def _project(adv: torch.Tensor, x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """torchattacks' projection: onto the eps ball around ``x0``, then clamp to [0, 1]."""
    if norm == "linf":
        delta = torch.clamp(adv - x0, min=-eps, max=eps)
    else:
        delta = adv - x0
        norms = torch.norm(delta.reshape(delta.shape[0], -1), p=2, dim=1)
        factor = torch.min(eps / norms, torch.ones_like(norms))
        delta = delta * factor.view(-1, 1, 1, 1)
    return torch.clamp(x0 + delta, min=0, max=1)


def _random_start(x0: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """torchattacks' random start (uniform in the L-inf box; uniform radius on a random L2 direction)."""
    if norm == "linf":
        noise = torch.empty_like(x0).uniform_(-eps, eps, generator=generator)
    else:
        noise = torch.empty_like(x0).normal_(generator=generator)
        n = noise.reshape(x0.shape[0], -1).norm(p=2, dim=1).view(-1, 1, 1, 1)
        r = torch.zeros_like(n).uniform_(0, 1, generator=generator)
        noise = noise * (r / n * eps)
    return torch.clamp(x0 + noise, min=0, max=1)


class _AttackMode:
    """Eval mode and no parameter gradients for the duration of an attack, restored afterwards.

    Parameter gradients are never used (only d loss / d pixels), and not tracking them spares
    autograd from saving activations for weight gradients.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.training = self.model.training
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.eval()
        for p, _ in self.flags:
            p.requires_grad_(False)

    def __exit__(self, *exc) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)
        self.model.train(self.training)


def _as_class_tensor(value, n: int, device: torch.device, what: str) -> torch.Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.long, device=device)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"{what} must be one class index or one per image ({n}), got shape {tuple(t.shape)}")
    return t.clone()


def _check_common(model, images01: torch.Tensor, eps: float | None, norm: str, steps: int, quantize: bool, needs_eps: bool) -> None:
    if not isinstance(images01, torch.Tensor) or images01.dim() != 4:
        raise ValueError("images01 must be a float tensor [N, C, H, W] of pixels in [0, 1]")
    if images01.numel() and (float(images01.min()) < 0 or float(images01.max()) > 1):
        raise ValueError("images01 must hold pixels in [0, 1] (the model normalises them itself)")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if needs_eps and (eps is None or not eps >= 0):
        raise ValueError(f"eps must be a number >= 0 (pixel units, e.g. 4/255), got {eps!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if quantize and not is_on_8bit_grid(images01):
        raise ValueError(
            "quantize=True needs images on the 8-bit grid (k/255, as decoded 8-bit photos are); "
            "pass quantize=False to attack other inputs"
        )


def _logits(model: nn.Module, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and x.dim() == 4:
        # oneDNN's NHWC kernels are faster on CPU; only the input's layout changes, never the model.
        x = x.contiguous(memory_format=torch.channels_last)
    return model(x)


# ---------------------------------------------------------------------------------------------
# the gradient-sign family: FGSM / BIM / PGD


def _pgd_batch(model, x0, labels, target, *, eps, alpha, steps, random_start, generator, norm, quantize, channels_last):
    if quantize:
        lo, hi = _grid_bounds(x0, eps) if norm == "linf" else (None, None)

        def q(a: torch.Tensor) -> torch.Tensor:
            return _quantize_linf(a, lo, hi) if norm == "linf" else _quantize_l2(a, x0, eps)
    else:

        def q(a: torch.Tensor) -> torch.Tensor:
            return a

    adv = x0.clone()
    if random_start:
        adv = _random_start(x0, eps, norm, generator)
    logits_before = None
    for _ in range(steps):
        model_input = q(adv).detach().requires_grad_(True)
        logits = _logits(model, model_input, channels_last)
        if logits_before is None and not random_start:
            logits_before = logits.detach()  # the first step sees the clean image: a free clean forward
        if target is not None:
            cost = -F.cross_entropy(logits, target)
        else:
            cost = F.cross_entropy(logits, labels)
        (grad,) = torch.autograd.grad(cost, model_input)
        # straight-through: the step is taken on the float iterate, with the gradient at its rounding
        if norm == "linf":
            adv = adv.detach() + alpha * grad.sign()
        else:
            grad_norms = torch.norm(grad.reshape(grad.shape[0], -1), p=2, dim=1) + _L2_EPS_FOR_DIVISION
            adv = adv.detach() + alpha * (grad / grad_norms.view(-1, 1, 1, 1))
        adv = _project(adv, x0, eps, norm).detach()
    return q(adv).detach(), logits_before


def _run_batched(model, images01, labels, target, *, batch_size, channels_last, batch_fn) -> tuple:
    """Run ``batch_fn`` over batches; clean and final forwards done here (once per batch)."""
    advs, before, after = [], [], []
    n = images01.shape[0]
    for start in range(0, n, batch_size):
        x0 = images01[start : start + batch_size]
        lab = labels[start : start + batch_size] if labels is not None else None
        tgt = target[start : start + batch_size] if target is not None else None
        adv, logits_before = batch_fn(x0, lab, tgt)
        with torch.no_grad():
            if logits_before is None:
                logits_before = _logits(model, x0, channels_last)
            logits_after = _logits(model, adv, channels_last)
        advs.append(adv)
        before.append(logits_before)
        after.append(logits_after)
    return torch.cat(advs), torch.cat(before), torch.cat(after)


def _finish(images01, adv, logits_before, logits_after, labels, target, **settings) -> AttackResult:
    pred_before, pred_after = logits_before.argmax(dim=1), logits_after.argmax(dim=1)
    if labels is None:  # targeted without labels: record the clean predictions
        labels = pred_before.clone()
    success = pred_after == target if target is not None else pred_after != labels
    delta = (adv - images01).flatten(1)
    return AttackResult(
        adv=adv,
        success=success,
        linf=delta.abs().amax(dim=1) if delta.shape[1] else torch.zeros(adv.shape[0]),
        l2=delta.norm(p=2, dim=1),
        pred_before=pred_before,
        pred_after=pred_after,
        logits_before=logits_before,
        logits_after=logits_after,
        labels=labels,
        target=target,
        **settings,
    )


def _clean_labels(model, images01, batch_size, channels_last) -> torch.Tensor:
    with torch.no_grad(), _AttackMode(model):
        return torch.cat(
            [_logits(model, images01[s : s + batch_size], channels_last).argmax(dim=1) for s in range(0, images01.shape[0], batch_size)]
        )


def pgd(
    model: nn.Module,
    images01: torch.Tensor,
    labels=None,
    *,
    target=None,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    norm: str = "linf",
    quantize: bool = True,
    batch_size: int = 32,
    channels_last: bool = True,
    method: str = "pgd",
) -> AttackResult:
    """Projected gradient descent (Madry et al. 2018) in pixel space; FGSM and BIM are special cases.

    Args:
        model: any ``nn.Module`` mapping pixels in [0, 1] [N,3,H,W] to logits [N,K].
        images01: clean images [N,3,H,W], pixels in [0, 1].
        labels: [N] true classes (untargeted attacks push away from them); ``None`` uses the
            model's own clean predictions.
        target: a class index or [N] indices to push towards (targeted); ``None`` for untargeted.
        eps: radius of the ball (pixel units: 4/255 is four 8-bit levels; L2 in the same units).
        alpha: step size; ``None`` -> :func:`default_alpha`.
        steps: gradient steps.
        random_start: start from a uniformly random point of the ball (PGD) or the image (BIM).
        generator: ``torch.Generator`` for the random start (``None``: torch's global RNG, as
            torchattacks uses).
        norm: ``"linf"`` (sign steps, box projection) or ``"l2"``.
        quantize: keep every image on the 8-bit grid (see the module docstring).
        batch_size: images per forward/backward pass.
        channels_last: feed the model NHWC tensors (same maths, faster oneDNN kernels on CPU).
        method: name recorded in the result.

    Returns:
        An :class:`AttackResult`.
    """
    t0 = time.perf_counter()
    _check_common(model, images01, eps, norm, steps, quantize, True)
    eps = float(eps)
    alpha = default_alpha(eps, steps) if alpha is None else float(alpha)
    images01 = images01.detach()
    n = images01.shape[0]
    target = _as_class_tensor(target, n, images01.device, "target")
    labels = _as_class_tensor(labels, n, images01.device, "labels")
    if labels is None and target is None:
        labels = _clean_labels(model, images01, batch_size, channels_last)
    with _AttackMode(model):
        adv, before, after = _run_batched(
            model, images01, labels, target, batch_size=batch_size, channels_last=channels_last,
            batch_fn=lambda x0, lab, tgt: _pgd_batch(
                model, x0, lab, tgt, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                generator=generator, norm=norm, quantize=quantize, channels_last=channels_last,
            ),
        )
    result = _finish(
        images01, adv, before, after, labels, target, method=method, eps=eps, alpha=alpha, steps=steps,
        norm=norm, random_start=random_start, quantized=quantize,
    )
    result.seconds = time.perf_counter() - t0
    log.info("%s eps=%.5f alpha=%.5f steps=%d: success %.3f in %.2fs", method, eps, alpha, steps, result.success_rate, result.seconds)
    return result


def _fgsm(model, images01, labels=None, *, eps, alpha=None, steps=None, random_start=None, **kw) -> AttackResult:
    if steps not in (None, 1):
        raise ValueError("FGSM is a single step; use bim or pgd for more steps")
    if random_start:
        raise ValueError("FGSM has no random start; use pgd with steps=1 for that")
    return pgd(model, images01, labels, eps=eps, alpha=eps if alpha is None else alpha, steps=1, random_start=False, method="fgsm", **kw)


def _bim(model, images01, labels=None, *, eps, alpha=None, steps=None, random_start=None, **kw) -> AttackResult:
    if random_start:
        raise ValueError("BIM starts at the image; use pgd for a random start")
    return pgd(model, images01, labels, eps=eps, alpha=alpha, steps=10 if steps is None else steps, random_start=False, method="bim", **kw)


def _pgd(model, images01, labels=None, *, eps, alpha=None, steps=None, random_start=None, **kw) -> AttackResult:
    return pgd(
        model, images01, labels, eps=eps, alpha=alpha, steps=10 if steps is None else steps,
        random_start=True if random_start is None else random_start, method="pgd", **kw,
    )


ATTACKS.register("fgsm", AttackMethod("fgsm", "Fast Gradient Sign Method: one step of size eps (Goodfellow et al. 2015)", _fgsm, 1, False))
ATTACKS.register("bim", AttackMethod("bim", "Basic Iterative Method: PGD from the clean image, no random start (Kurakin et al. 2017)", _bim, 10, False))
ATTACKS.register("pgd", AttackMethod("pgd", "Projected Gradient Descent from a random point of the eps ball (Madry et al. 2018)", _pgd, 10, True))


def attack(
    model: nn.Module,
    images01: torch.Tensor,
    labels=None,
    *,
    method: str = "pgd",
    target=None,
    eps: float | None = None,
    alpha: float | None = None,
    steps: int | None = None,
    random_start: bool | None = None,
    generator: torch.Generator | None = None,
    norm: str = "linf",
    quantize: bool = True,
    **options,
) -> AttackResult:
    """Attack ``model`` on ``images01`` with a registered method (``list_attacks()``).

    Args:
        model: any ``nn.Module`` mapping pixels in [0, 1] to logits (normalisation inside).
        images01: [N,3,H,W] clean images, pixels in [0, 1] (the model's preprocessed input).
        labels: [N] true classes; ``None`` uses the model's clean predictions.
        method: ``"fgsm"``, ``"bim"``, ``"pgd"`` or ``"unconstrained"``.
        target: class index or [N] indices for a targeted attack; ``None`` for untargeted.
        eps: ball radius in pixel units (4/255 = four 8-bit levels). Not used by "unconstrained".
        alpha: step size (learning rate for "unconstrained"); ``None`` for the method's default.
        steps: iterations; ``None`` for the method's default (fgsm 1, bim/pgd 10, unconstrained 100).
        random_start: ``None`` for the method's default (pgd True, fgsm/bim False).
        generator: ``torch.Generator`` for any randomness.
        norm: ``"linf"`` or ``"l2"``.
        quantize: keep every image the model sees on the 8-bit grid, so the saved PNG still fools it.
        **options: method-specific (``batch_size``, ``channels_last``; for "unconstrained"
            ``l2_weight``, ``tv_weight``, ``kappa``).

    Returns:
        An :class:`AttackResult`.

    Raises:
        UnknownNameError: no attack is registered under ``method``.
        ValueError: bad shapes, pixel range or settings.
    """
    spec = ATTACKS.get(method)
    kwargs: dict[str, Any] = dict(target=target, alpha=alpha, steps=steps, random_start=random_start, generator=generator,
                           norm=norm, quantize=quantize, **options)
    if spec.needs_eps:
        kwargs["eps"] = eps
    elif eps is not None:
        log.info("%s ignores eps=%s (it has no eps ball)", method, eps)
    return spec.run(model, images01, labels, **kwargs)
