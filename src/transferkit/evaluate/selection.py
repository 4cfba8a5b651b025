"""Which images an evaluation uses: all of a dataset, or one part of the split a model was trained with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transferkit.core.errors import DataError

SPLIT_CHOICES = ("all", "train", "val", "test")


def select_split(images, split: str = "all", recorded: Mapping[str, Any] | None = None):
    """``images`` itself (``split="all"``), or its ``split`` part re-created as training split it.

    Args:
        images: an :class:`~transferkit.data.imageset.ImageSet`.
        split: ``"all"``, ``"train"``, ``"val"`` or ``"test"``.
        recorded: the training config a bundle records (its ``val``, ``test`` and ``seed``); the
            same fractions and seed give the same split on any machine (an official split is kept).

    Raises:
        DataError: an unknown split name, or an empty part.
    """
    from transferkit.data import split_imageset

    if split not in SPLIT_CHOICES:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLIT_CHOICES)}")
    if split == "all":
        return images
    cfg = dict(recorded or {})
    parts = split_imageset(images, val=float(cfg.get("val", 0.15)), test=float(cfg.get("test", 0.15)), seed=int(cfg.get("seed", 0)))
    part = parts.where_split(split)
    if len(part) == 0:
        raise DataError(f"the {split} split is empty with the fractions the model was trained with "
                        f"(val {cfg.get('val', 0.15)}, test {cfg.get('test', 0.15)}); use --split all")
    return part


__all__ = ["SPLIT_CHOICES", "select_split"]
