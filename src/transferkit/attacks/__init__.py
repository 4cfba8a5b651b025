"""Adversarial examples in pixel space and how robust a model is to them.

``attack(model, images01, labels, method="pgd", target=..., eps=4/255)`` runs a registered attack
(``list_attacks()``: fgsm, bim, pgd, unconstrained) on any model that maps pixels in [0, 1] to
logits; ``robustness_curve`` measures accuracy against eps; ``psnr`` / ``ssim`` say how visible the
change is. For files: ``attack_image_file(model, "dog.jpg", target="tabby cat", out="adv.png")``
attacks a photo, saves the adversarial PNG and classifies the saved file again;
``dataset_robustness(model, "photos/", eps_values)`` samples, labels and attacks a dataset.
"""

from transferkit.attacks.classes import AttackInputError, ClassSpace, describe_model
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
from transferkit.attacks.dataset import DatasetRobustness, dataset_robustness, stratified_sample
from transferkit.attacks.image_file import AttackFiles, ImageAttackReport, attack_image_file, attack_output_paths
from transferkit.attacks.metrics import psnr, ssim
from transferkit.attacks.robustness import RobustnessCurve, RobustnessPoint, format_eps, plot_robustness, robustness_curve
from transferkit.attacks.unconstrained import total_variation, unconstrained

__all__ = [
    "ATTACKS",
    "AttackFiles",
    "AttackInputError",
    "AttackMethod",
    "AttackResult",
    "ClassSpace",
    "DatasetRobustness",
    "ImageAttackReport",
    "RobustnessCurve",
    "RobustnessPoint",
    "attack",
    "attack_image_file",
    "attack_output_paths",
    "dataset_robustness",
    "default_alpha",
    "describe_model",
    "format_eps",
    "is_on_8bit_grid",
    "list_attacks",
    "pgd",
    "plot_robustness",
    "psnr",
    "quantize_8bit",
    "robustness_curve",
    "ssim",
    "stratified_sample",
    "total_variation",
    "unconstrained",
]
