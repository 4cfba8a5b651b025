"""Test-time augmentation: probabilities averaged over views of each image, through the whole network."""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def predict_proba(model, images, *, batch_size: int = 64, tta: str = "none") -> np.ndarray:
    """Probabilities for an ImageSet with the backbone's evaluation preprocessing (and optional TTA)."""
    from transferkit.finetune.loop import _batched, _load_eval_pixels
    from transferkit.finetune.transforms import tta_predict_proba

    pixels = _load_eval_pixels(images, model.spec)
    model.eval()
    out = [tta_predict_proba(model, pixels[sl].float() / 255, tta).numpy() for sl in _batched(len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(model.class_names)), dtype=np.float32)


def evaluate_tta(model, images, *, tta: str = "flip", batch_size: int = 64):
    """:func:`transferkit.evaluate.model.evaluate_model` with test-time augmentation (labels matched by class name).

    Unreadable images are skipped and listed in ``metrics["failed_images"]``.
    """
    from transferkit.core.errors import DataError
    from transferkit.data.decode import ImageDecodeError, open_rgb
    from transferkit.evaluate.metrics import evaluate_probabilities

    unknown = sorted(set(images.class_names) - set(model.class_names))
    if unknown:
        raise DataError(f"the data has classes the model was not trained on: {', '.join(unknown[:8])}")
    to_model = np.array([model.class_names.index(c) for c in images.class_names], dtype=np.int64)
    good, failed = [], {}
    options = images.decode_options
    for i, p in enumerate(images.paths):
        try:
            open_rgb(p, **options)
            good.append(i)
        except ImageDecodeError as exc:
            failed[str(p)] = str(exc)
    if not good:
        raise DataError("none of the images could be read; see `transferkit data inspect`")
    subset = images.subset(good)
    probs = predict_proba(model, subset, batch_size=batch_size, tta=tta)
    ev = evaluate_probabilities(probs, to_model[subset.labels], model.class_names, paths=[str(p) for p in subset.paths])
    ev.metrics["failed_images"] = failed
    ev.metrics["tta"] = tta
    return ev
