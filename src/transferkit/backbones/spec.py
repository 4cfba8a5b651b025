"""BackboneSpec: the one description of a pretrained backbone that every later stage uses.

It carries the preprocessing from timm's pretrained config (the weights' own input size, mean, std,
interpolation and crop), where the weights came from and their sha256. It travels from extraction
to the saved bundle, prediction, export, attacks and visualisation: no ImageNet constants live
anywhere else.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from transferkit.core.errors import TransferkitError

SPEC_VERSION = 1
# Network input sides a spec may ask for: below, no backbone here works; above, one image alone
# would need gigabytes.
MIN_INPUT_SIZE = 8
MAX_INPUT_SIZE = 4096


class SpecError(TransferkitError, ValueError):
    """A backbone spec that makes no sense (zero std, two means, a 100000 px input, ...)."""


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
    def from_dict(cls, d: dict[str, Any]) -> BackboneSpec:
        """The spec :meth:`to_dict` wrote, checked with :meth:`validate`.

        Raises:
            SpecError: a field is missing, of the wrong type, or out of range (all problems in one line).
        """
        if not isinstance(d, dict):
            raise SpecError(f"backbone spec is not a table of fields (got {type(d).__name__})")
        d = dict(d)
        d.pop("spec_version", None)
        problems: list[str] = []
        for key, conv in (("input_size", int), ("mean", float), ("std", float)):
            if key not in d:
                problems.append(f"{key} is missing")
                continue
            try:
                d[key] = tuple(conv(v) for v in d[key])
            except (TypeError, ValueError, OverflowError):
                problems.append(f"{key} must be a list of numbers, not {str(d[key])[:40]}")
        for key, conv in (("num_features", int), ("num_classes", int), ("crop_pct", float)):
            if key in d:
                try:
                    if isinstance(d[key], bool) or (conv is int and float(d[key]) != int(d[key])):
                        raise ValueError
                    d[key] = conv(d[key])
                except (TypeError, ValueError, OverflowError):
                    problems.append(f"{key} must be a number, not {str(d[key])[:40]}")
        for key in ("name", "timm_name", "num_features", "num_classes"):
            if key not in d:
                problems.append(f"{key} is missing")
        if problems:
            raise SpecError("backbone spec: " + "; ".join(problems))
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            spec = cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as exc:  # pragma: no cover - every required field was checked above
            raise SpecError(f"backbone spec: {exc}") from None
        return spec.validate()

    def validate(self) -> BackboneSpec:
        """``self`` if every field makes sense, else :class:`SpecError` listing what does not.

        Checked: three finite means; three finite stds > 0; input size (3, H, W) with H and W in
        ``MIN_INPUT_SIZE..MAX_INPUT_SIZE``; ``crop_pct`` in (0, 1]; ``num_features`` >= 1,
        ``num_classes`` >= 0; names that are non-empty strings.
        """
        problems: list[str] = []

        def finite(values) -> bool:
            return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)

        if len(self.mean) != 3 or not finite(self.mean):
            problems.append(f"mean must be three finite numbers, not {list(self.mean)}")
        if len(self.std) != 3 or not finite(self.std) or not all(v > 0 for v in self.std):
            problems.append(f"std must be three finite numbers above 0, not {list(self.std)}")
        size = tuple(self.input_size)
        if len(size) != 3 or size[0] != 3 or not all(MIN_INPUT_SIZE <= int(v) <= MAX_INPUT_SIZE for v in size[1:]):
            problems.append(f"input size must be (3, height, width) with sides {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} px, not {list(size)}")
        if not (isinstance(self.crop_pct, (int, float)) and math.isfinite(self.crop_pct) and 0 < self.crop_pct <= 1):
            problems.append(f"crop_pct must be in (0, 1], not {self.crop_pct}")
        if not isinstance(self.num_features, int) or self.num_features < 1:
            problems.append(f"num_features must be a positive whole number, not {self.num_features}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            problems.append(f"num_classes must be a whole number >= 0, not {self.num_classes}")
        for key in ("name", "timm_name"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{key} must be a non-empty name")
        if problems:
            raise SpecError("backbone spec: " + "; ".join(problems))
        return self

    def cache_key_fields(self) -> dict[str, Any]:
        """The fields that change what a network computes from an image (for cache keys)."""
        d = self.to_dict()
        for k in ("name", "weights_location", "extra"):
            d.pop(k, None)
        return d
