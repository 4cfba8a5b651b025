"""Adversarial examples in pixel space and how robust a model is to them.

``attack(model, images01, labels, method="pgd", target=..., eps=4/255)`` runs a registered attack
(``list_attacks()``: fgsm, bim, pgd, unconstrained) on any model that maps pixels in [0, 1] to
logits; ``robustness_curve`` measures accuracy against eps; ``psnr`` / ``ssim`` say how visible the
change is.
"""

from transferkit.attacks.core import (
    ATTACKS,
    AttackMethod,
    AttackResult,
    attack,
    default_alpha,
    is_on_8bit_grid,
    list_attacks,
    pgd,
    quantize_8bit,
)
from transferkit.attacks.metrics import psnr, ssim
from transferkit.attacks.robustness import RobustnessCurve, RobustnessPoint, format_eps, plot_robustness, robustness_curve
from transferkit.attacks.unconstrained import total_variation, unconstrained

__all__ = [
    "ATTACKS",
    "AttackMethod",
    "AttackResult",
    "RobustnessCurve",
    "RobustnessPoint",
    "attack",
    "default_alpha",
    "format_eps",
    "is_on_8bit_grid",
    "list_attacks",
    "pgd",
    "plot_robustness",
    "psnr",
    "quantize_8bit",
    "robustness_curve",
    "ssim",
    "total_variation",
    "unconstrained",
]
