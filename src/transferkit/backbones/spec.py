"""BackboneSpec: the one description of a pretrained backbone that every later stage uses.

It carries the preprocessing from timm's pretrained config (the weights' own input size, mean, std,
interpolation and crop), where the weights came from and their sha256. It travels from extraction
to the saved bundle, prediction, export, attacks and visualisation: no ImageNet constants live
anywhere else.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

SPEC_VERSION = 1


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone is and how its inputs must look.

    Attributes:
        name: the name the user asked for (a timm name, e.g. ``efficientnet_lite0``).
        timm_name: the timm architecture actually built (``tf_efficientnet_lite0``).
        num_features: width of the pooled feature vector (input to the classifier).
        num_classes: outputs of the pretrained classifier (1000 for ImageNet-1k, 0 if none).
        input_size: (channels, height, width) the weights were trained at.
        mean, std: per-channel normalisation applied *inside* the model to pixels in [0, 1].
        interpolation: resize filter ("bilinear", "bicubic", ...).
        crop_pct: fraction of the resized image kept by the centre crop at evaluation.
        crop_mode: timm's crop mode ("center", "squash", "border").
        label_set: which class names the pretrained head predicts ("imagenet-1k" or "").
        weights_source: "file", "package", "hub" or "none" (explicitly random).
        weights_location: the file path, package name or hub id the weights came from.
        weights_sha256: sha256 of the weights file (empty for random or unhashable hub weights).
    """

    name: str
    timm_name: str
    num_features: int
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    label_set: str = "imagenet-1k"
    weights_source: str = "none"
    weights_location: str = ""
    weights_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        """Side of the square network input, in pixels."""
        return int(self.input_size[-1])

    @property
    def resize_size(self) -> int:
        """Shorter side the image is resized to before the centre crop (timm's rule)."""
        import math

        return int(math.floor(self.image_size / self.crop_pct))

    @property
    def is_pretrained(self) -> bool:
        return self.weights_source != "none"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["spec_version"] = SPEC_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BackboneSpec":
        d = dict(d)
        d.pop("spec_version", None)
        d["input_size"] = tuple(int(v) for v in d["input_size"])
        d["mean"] = tuple(float(v) for v in d["mean"])
        d["std"] = tuple(float(v) for v in d["std"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def cache_key_fields(self) -> dict[str, Any]:
        """The fields that change what a network computes from an image (for cache keys)."""
        d = self.to_dict()
        for k in ("name", "weights_location", "extra"):
            d.pop(k, None)
        return d
