"""PixelModel: a timm network that takes pixels in [0, 1] and normalises them itself."""

from __future__ import annotations

import torch
from torch import nn

from transferkit.backbones.spec import BackboneSpec


class PixelModel(nn.Module):
    """Wraps a timm model so public calls take pixels in [0, 1] (normalisation lives inside).

    Attack and visualisation code can then work in pixel space without knowing mean and std.

    Attributes:
        net: the timm model (``forward_features`` / ``forward_head`` / ``reset_classifier``).
        spec: the :class:`BackboneSpec` describing weights and preprocessing.
    """

    def __init__(self, net: nn.Module, spec: BackboneSpec) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean.to(x01.dtype)) / self.std.to(x01.dtype)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Logits of the network's classifier for pixels in [0, 1], shape [N, num_classes]."""
        return self.net(self.normalize(x01))

    def forward_features(self, x01: torch.Tensor) -> torch.Tensor:
        """Pooled features (the classifier's input), shape [N, num_features]."""
        x = self.net.forward_features(self.normalize(x01))
        return self.net.forward_head(x, pre_logits=True)

    @property
    def num_features(self) -> int:
        return int(self.net.num_features)

    @property
    def num_classes(self) -> int:
        return int(getattr(self.net, "num_classes", 0))
