"""The images a training run uses: loaded, checked before any expensive work, and split."""

from __future__ import annotations

import numpy as np

from transferkit.core.errors import DataError
from transferkit.pipeline.config import TrainConfig


def load_config_imageset(config: TrainConfig, imageset=None):
    """``imageset``, or the images at ``config.data``; one clear error when there are none."""
    from transferkit.data import load_images

    if imageset is None:
        if not config.data:
            raise DataError("no dataset given; pass a folder or CSV (transferkit train DATA)")
        imageset = load_images(config.data, format=config.format, cache=config.cache)
    if len(imageset) == 0:
        raise DataError(f"no usable images in {config.data}; check the path and `transferkit data inspect`")
    return imageset


def load_split(config: TrainConfig, imageset=None):
    """The images of ``config`` split into train / val / test as ``config`` says.

    Raises:
        DataError: no images, or a training part with fewer than 2 classes (found before any
            feature is extracted).
    """
    from transferkit.data import split_imageset

    imageset = load_config_imageset(config, imageset)
    data = split_imageset(imageset, val=config.val, test=config.test, seed=config.seed, stratified=True)
    train_labels = data.labels[np.asarray(data.split) == "train"]
    if len(train_labels) == 0:
        raise DataError("the split left no training images; lower --val/--test")
    # bincount, not np.unique: unique imports numpy.ma (25 ms), a tenth of a warm rerun
    present = [data.class_names[i] for i in np.flatnonzero(np.bincount(train_labels, minlength=data.num_classes))]
    if len(present) < 2:
        found = f"only {present[0]!r}" if present else "none"
        raise DataError(f"training needs images of at least 2 classes, found {found}; check the data "
                        f"(`transferkit data inspect {config.data or 'DATA'}`) — unreadable folders and files are listed there")
    return data


def held_out_split(data) -> str:
    """``"test"`` when the data has test images, else ``"val"`` when it has validation images, else ``""``."""
    split = set(data.split or ())
    return "test" if "test" in split else "val" if "val" in split else ""


__all__ = ["held_out_split", "load_config_imageset", "load_split"]
