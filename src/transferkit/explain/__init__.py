"""Looking inside a network: feature maps and ideal class images.

Split like lucent: :mod:`~transferkit.explain.param` (how the image is parameterised),
:mod:`~transferkit.explain.objectives` (composable losses, including total variation),
:mod:`~transferkit.explain.transforms` (seeded jitter / scale / rotate), and
:mod:`~transferkit.explain.render` (the loop). :mod:`~transferkit.explain.featuremaps` shows a
layer's activations. Everything works on any ``nn.Module`` that maps pixels in [0, 1] to logits.
"""

from transferkit.explain.featuremaps import (
    FeatureMaps,
    LayerInfo,
    extract_feature_maps,
    feature_map_grid,
    list_layers,
    resolve_layer,
)
from transferkit.explain.objectives import (
    CLASS_OBJECTIVES,
    Objective,
    build_class_objective,
    class_logit,
    class_logprob,
    l2_loss,
    total_variation,
    total_variation_loss,
)
from transferkit.explain.param import PARAMETERISATIONS, FourierParam, PixelParam, create_param
from transferkit.explain.render import RenderConfig, RenderResult, StepRecord, plain_config, render, render_class_image, resolve_class, to_uint8
from transferkit.explain.transforms import RandomAffine, jitter, random_rotate, random_scale

__all__ = [
    "CLASS_OBJECTIVES",
    "FeatureMaps",
    "FourierParam",
    "LayerInfo",
    "Objective",
    "PARAMETERISATIONS",
    "PixelParam",
    "RandomAffine",
    "RenderConfig",
    "RenderResult",
    "StepRecord",
    "build_class_objective",
    "class_logit",
    "class_logprob",
    "create_param",
    "extract_feature_maps",
    "feature_map_grid",
    "jitter",
    "l2_loss",
    "list_layers",
    "plain_config",
    "random_rotate",
    "random_scale",
    "render",
    "render_class_image",
    "resolve_class",
    "resolve_layer",
    "to_uint8",
    "total_variation",
    "total_variation_loss",
]
