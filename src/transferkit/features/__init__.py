"""Frozen-backbone features: streaming extraction, CPU/GPU engines (chosen by measurement) and the on-disk cache.

Names are imported on first use (PEP 562): the engines need PyTorch, and a warm ``train`` rerun
that only reads the cache should not pay for importing it.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CacheInfo": "cache",
    "FeatureCache": "cache",
    "default_cache_dir": "cache",
    "ENGINES": "engines",
    "EngineError": "engines",
    "OnnxEngine": "engines",
    "OpenVinoEngine": "engines",
    "PRECISIONS": "engines",
    "TorchEngine": "engines",
    "TorchVariantEngine": "engines",
    "create_engine": "select",
    "EngineOnFirstUse": "select",
    "weights_digest": "engines",
    "Features": "extract",
    "cached_features": "extract",
    "extract_features": "extract",
    "model_cache_key": "extract",
    "Candidate": "select",
    "EngineChoice": "select",
    "choose_engine": "select",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
