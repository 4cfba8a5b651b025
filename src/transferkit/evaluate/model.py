"""Evaluating a classifier on an image set: its predictions through the feature engine (or TTA), then the metrics."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from transferkit.core.errors import DataError
from transferkit.evaluate.metrics import Evaluation, evaluate_probabilities
from transferkit.evaluate.predict import model_probabilities


def evaluate_model(
    model, imageset, *, engine: str = "auto", batch_size: int = 32, cache: bool = True,
    progress: Callable[[int, int], None] | None = None, device: str | None = None, tta: str = "none",
) -> Evaluation:
    """Evaluate a ClassifierModel (or a multi-backbone model) on an ImageSet whose class names the model knows.

    Labels are matched by class *name*, so a dataset with fewer classes or another order works.
    ``tta="flip"`` averages the probabilities of each image and its mirror image, both on the feature
    engine; ``"flip-zoom"`` runs the whole network on its four views (:mod:`transferkit.evaluate.tta`).

    Raises:
        DataError: the data has classes the model does not know, or no readable image.
    """
    members = getattr(model, "members", None)
    if tta not in ("none", "flip"):
        if members is not None:
            raise DataError(f"--tta {tta} runs one network on zoomed views; a model of several backbones takes --tta none or flip")
        from transferkit.evaluate.tta import evaluate_tta

        return evaluate_tta(model, imageset, tta=tta, batch_size=batch_size)
    unknown = sorted(set(imageset.class_names) - set(model.class_names))
    if unknown:
        raise DataError(
            f"the data has classes the model was not trained on: {', '.join(unknown[:8])}; "
            f"the model knows {', '.join(model.class_names[:8])}{' ...' if len(model.class_names) > 8 else ''}"
        )
    to_model = np.array([model.class_names.index(c) for c in imageset.class_names], dtype=np.int64)
    if tta == "flip" and isinstance(engine, str):  # one engine per backbone for both views, built (and measured) once
        from transferkit.features.cache import usable_cache
        from transferkit.features.select import EngineOnFirstUse

        store = usable_cache(cache)
        where = store.directory if store is not None else None
        engine = [EngineOnFirstUse(m.backbone, engine, cache_dir=where, device=device) for m in (members or [model])]
        engine = engine if members is not None else engine[0]
    out = model_probabilities(model, imageset.paths, engine=engine, batch_size=batch_size, cache=cache, progress=progress, device=device,
                              decode_options=imageset.decode_options)
    good = np.flatnonzero(out.ok)
    if len(good) == 0:
        raise DataError("none of the images could be read; see `transferkit data inspect`")
    probs = out.probs
    if tta == "flip":  # the mirror images' probabilities, on the same engines; averaged like tta_predict_proba does
        mirrored = model_probabilities(model, [imageset.paths[i] for i in good], engine=engine, batch_size=batch_size, cache=cache,
                                       progress=None, device=device, decode_options=imageset.decode_options, view="mirror")
        both = np.flatnonzero(mirrored.ok)  # a file that changed between the two reads keeps its one view
        probs = probs.copy()
        probs[both] = (probs[both] + mirrored.probs) / 2.0
    ev = evaluate_probabilities(probs, to_model[imageset.labels[good]], model.class_names, paths=[str(imageset.paths[i]) for i in good])
    ev.metrics["failed_images"] = dict(out.errors)
    ev.metrics["features"] = out.stats
    if tta != "none":
        ev.metrics["tta"] = tta
    return ev


__all__ = ["evaluate_model"]
