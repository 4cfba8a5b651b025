"""Classifier heads on frozen features, following the scikit-learn estimator contract.

- :class:`LogisticHead`: multinomial logistic regression on standardised features, with the L2
  strength ``C`` chosen on given validation data (then refitted on train + validation) or, without
  it, by stratified 5-fold cross-validation as ``GridSearchCV`` does (what the probe mode uses); its
  out-of-fold probabilities are kept for paired comparisons.
- :class:`MLPHead`: one hidden layer (ReLU, dropout) trained with AdamW and early stopping on
  validation loss.

Both accept ``class_weight`` (``None``, ``"balanced"`` or ``{class: weight}``) for imbalanced data,
and turn into a plain ``nn.Module`` (standardisation folded into the first linear layer) with
:meth:`to_module` for a :class:`~transferkit.classifier.bundle.ClassifierModel`.
"""

from __future__ import annotations

from typing import Any

from transferkit.heads.base import DEFAULT_CS, HEADS, FeatureHead, HeadError
from transferkit.heads.logistic import LogisticHead
from transferkit.heads.mlp import MLPHead


def create_head(name: str = "logistic", **options: Any) -> FeatureHead:
    """A head by registry name (``"logistic"`` or ``"mlp"``) with keyword options."""
    cls = HEADS.get(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise HeadError(f"head {name!r}: {exc}") from None


__all__ = ["DEFAULT_CS", "HEADS", "HeadError", "LogisticHead", "MLPHead", "create_head"]
