"""transferkit: pretrained ImageNet networks turned into custom image classifiers.

The Python API (imported on first use, so ``import transferkit`` stays cheap and never imports torch)::

    import transferkit as tk
    clf = tk.Classifier("efficientnet_lite0", mode="auto").fit("photos/")
    clf.predict("new_photos/", top_k=3)

Layers below it: ``transferkit.backbones``, ``data``, ``features``, ``heads``, ``classifier``,
``finetune``, ``evaluate``, ``pipeline``, ``explain``, ``attacks``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Classifier": "transferkit.api", "NotFittedError": "transferkit.api", "attack": "transferkit.api",
    "dream": "transferkit.api", "featuremaps": "transferkit.api", "classify": "transferkit.api",
    "TrainConfig": "transferkit.pipeline.config", "FinetuneConfig": "transferkit.finetune.config",
    "load_images": "transferkit.data", "create_backbone": "transferkit.backbones",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", *_LAZY]
