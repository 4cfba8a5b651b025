"""Frozen-backbone features: streaming extraction, CPU/GPU engines and the on-disk cache."""

from transferkit.features.cache import CacheInfo, FeatureCache, default_cache_dir
from transferkit.features.engines import ENGINES, EngineError, OnnxEngine, TorchEngine, create_engine, weights_digest
from transferkit.features.extract import Features, cached_features, extract_features, model_cache_key

__all__ = [
    "CacheInfo",
    "ENGINES",
    "EngineError",
    "FeatureCache",
    "Features",
    "OnnxEngine",
    "TorchEngine",
    "create_engine",
    "default_cache_dir",
    "cached_features",
    "extract_features",
    "model_cache_key",
    "weights_digest",
]
