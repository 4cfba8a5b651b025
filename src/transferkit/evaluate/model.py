"""Evaluating a classifier on an image set: its predictions through the feature engine (or TTA), then the metrics."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from transferkit.core.errors import DataError
from transferkit.evaluate.metrics import Evaluation, evaluate_probabilities, probabilities_from_features
from transferkit.evaluate.predict import model_features


def evaluate_model(
    model, imageset, *, engine: str = "auto", batch_size: int = 32, cache: bool = True,
    progress: Callable[[int, int], None] | None = None, device: str | None = None, tta: str = "none",
) -> Evaluation:
    """Evaluate a ClassifierModel on an ImageSet whose class names the model knows.

    Labels are matched by class *name*, so a dataset with fewer classes or another order works.
    ``tta="flip"`` averages the probabilities of each image and its mirror image, both on the feature
    engine; ``"flip-zoom"`` runs the whole network on its four views (:mod:`transferkit.evaluate.tta`).

    Raises:
        DataError: the data has classes the model does not know, or no readable image.
    """
    if tta not in ("none", "flip"):
        from transferkit.evaluate.tta import evaluate_tta

        return evaluate_tta(model, imageset, tta=tta, batch_size=batch_size)
    unknown = sorted(set(imageset.class_names) - set(model.class_names))
    if unknown:
        raise DataError(
            f"the data has classes the model was not trained on: {', '.join(unknown[:8])}; "
            f"the model knows {', '.join(model.class_names[:8])}{' ...' if len(model.class_names) > 8 else ''}"
        )
    to_model = np.array([model.class_names.index(c) for c in imageset.class_names], dtype=np.int64)
    if tta == "flip" and isinstance(engine, str):  # one engine for both views, built (and measured) once
        from transferkit.features.cache import usable_cache
        from transferkit.features.select import EngineOnFirstUse

        store = usable_cache(cache)
        engine = EngineOnFirstUse(model.backbone, engine, cache_dir=store.directory if store is not None else None, device=device)
    feats = model_features(model, imageset.paths, engine=engine, batch_size=batch_size, cache=cache, progress=progress, device=device,
                            decode_options=imageset.decode_options)
    good = np.flatnonzero(feats.ok)
    if len(good) == 0:
        raise DataError("none of the images could be read; see `transferkit data inspect`")
    probs = probabilities_from_features(model.head, feats.X[good])
    if tta == "flip":  # the mirror images' features, on the same engine; averaged like tta_predict_proba does
        mirrored = model_features(model, [imageset.paths[i] for i in good], engine=engine, batch_size=batch_size, cache=cache, progress=None,
                                  device=device, decode_options=imageset.decode_options, view="mirror")
        both = mirrored.ok[:, None]  # a file that changed between the two reads keeps its one view
        probs = np.where(both, (probs + probabilities_from_features(model.head, np.where(both, mirrored.X, 0.0))) / 2.0, probs)
    ev = evaluate_probabilities(probs, to_model[imageset.labels[good]], model.class_names, paths=[str(imageset.paths[i]) for i in good])
    ev.metrics["failed_images"] = {p: r for p, r in feats.errors.items()}
    ev.metrics["features"] = feats.stats
    if tta != "none":
        ev.metrics["tta"] = tta
    return ev


__all__ = ["evaluate_model"]
