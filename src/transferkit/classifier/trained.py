"""A trained classifier as data: what a bundle holds, on both the cold and the warm path.

:class:`TrainedModel` is the backbone's :class:`~transferkit.backbones.spec.BackboneSpec`, the head
as :class:`HeadWeights` (architecture + numpy arrays), the class names and, after fine-tuning, the
backbone's own weights. It saves itself as a bundle without importing PyTorch, so a warm rerun of
``train`` (everything cached) stays torch-free, and it builds its
:class:`~transferkit.classifier.bundle.ClassifierModel` (an ``nn.Module``) only when something asks
for :meth:`TrainedModel.network`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.backbones.spec import BackboneSpec
from transferkit.classifier.bundle_files import BACKBONE_FILE, HEAD_FILE, save_numpy_weights, write_bundle_dir
from transferkit.core.errors import BundleError


@dataclass
class HeadWeights:
    """A head as data: its architecture (``bundle.head_config``) and its state dict as numpy arrays."""

    config: dict[str, Any]
    state: dict[str, np.ndarray]

    @classmethod
    def from_module(cls, module) -> HeadWeights:
        """The head of an ``nn.Module`` built from bundle-storable layers."""
        from transferkit.classifier.bundle import head_config, state_for_saving

        return cls(head_config(module), {k: v.numpy() for k, v in state_for_saving(module).items()})

    @property
    def num_outputs(self) -> int:
        linear = [layer for layer in self.config.get("layers", []) if isinstance(layer, dict) and layer.get("type") == "linear"]
        if not linear:
            raise BundleError("head config has no linear layer; re-create the bundle")
        return int(linear[-1]["out_features"])

    def is_finite(self) -> bool:
        return all(np.all(np.isfinite(a)) for a in self.state.values() if a.dtype.kind == "f")

    def to_module(self):
        """A fresh ``nn.Module`` with these weights, in eval mode."""
        import torch

        from transferkit.classifier.bundle import build_head

        module = build_head(self.config)
        module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state.items()}, strict=True)
        return module.eval()


class TrainedModel:
    """A classifier the pipeline trained (or a bundle loaded): spec, head weights, class names.

    Args:
        spec: the backbone's spec (preprocessing, weights source and sha256).
        head: the head's weights.
        class_names: one name per head output, in logit order.
        backbone_state: the backbone's own weights (fine-tuned, or random) as numpy arrays;
            ``None`` when the backbone is rebuilt from its pretrained source.
        network: the ``ClassifierModel`` when it already exists (it is then never rebuilt).
    """

    def __init__(self, spec: BackboneSpec, head: HeadWeights, class_names: list[str], *,
                 backbone_state: dict[str, np.ndarray] | None = None, network=None) -> None:
        if head.num_outputs != len(class_names):
            raise BundleError(f"the head has {head.num_outputs} outputs but there are {len(class_names)} class names")
        self.spec, self.head, self.class_names = spec, head, list(class_names)
        self.backbone_state = backbone_state
        self._network = network

    @classmethod
    def from_network(cls, network, *, include_backbone: bool = False) -> TrainedModel:
        """Wrap a built ``ClassifierModel`` (``include_backbone``: its backbone weights go into bundles).

        Random backbone weights are always included, since no source can rebuild them.
        """
        from transferkit.classifier.bundle import state_for_saving

        backbone_state = None
        if include_backbone or not network.spec.is_pretrained:
            backbone_state = {k: v.numpy() for k, v in state_for_saving(network.backbone.net).items()}
        return cls(network.spec, HeadWeights.from_module(network.head), network.class_names, backbone_state=backbone_state,
                   network=network)

    @classmethod
    def load(cls, path: str | os.PathLike, *, member: bool = False) -> TrainedModel:
        """Read a bundle directory (sha256-checked, never unpickled); see ``load_bundle`` (``member``: a part of a
        model of several backbones, read by that model)."""
        from transferkit.classifier.bundle import load_bundle, read_bundle_meta

        network = load_bundle(path, member=member)
        include = bool(read_bundle_meta(path).get("include_backbone"))
        return cls.from_network(network, include_backbone=include)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_built(self) -> bool:
        """Whether the ``nn.Module`` exists yet (a warm rerun never needs it)."""
        return self._network is not None

    def network(self):
        """The :class:`~transferkit.classifier.bundle.ClassifierModel` (pixels in [0, 1] -> logits), built once.

        Raises:
            BundleError: the backbone's weights now found are not the ones this model was trained on.
        """
        if self._network is None:
            import torch

            from transferkit.classifier.bundle import ClassifierModel, rebuild_backbone

            state = None if self.backbone_state is None else {k: torch.from_numpy(np.array(v)) for k, v in self.backbone_state.items()}
            backbone = rebuild_backbone(self.spec, state, where=f"the {self.spec.name} classifier")
            self._network = ClassifierModel(backbone, self.head.to_module(), self.class_names).eval()
        return self._network

    def save(self, path: str | os.PathLike, *, metrics: dict[str, Any] | None = None, config: Any = None,
             extra: dict[str, Any] | None = None, **write_options: Callable) -> Path:
        """Write a bundle directory at ``path`` atomically (replacing an earlier bundle there).

        Extra keyword arguments go to :func:`~transferkit.classifier.bundle_files.write_bundle_dir`.
        """
        weights = {HEAD_FILE: save_numpy_weights(dict(self.head.state))}
        if self.backbone_state is not None:
            weights[BACKBONE_FILE] = save_numpy_weights(dict(self.backbone_state))
        return write_bundle_dir(path, spec=self.spec, head_cfg=self.head.config, weights=weights, class_names=self.class_names,
                                include_backbone=self.backbone_state is not None, metrics=metrics, config=config, extra=extra,
                                **write_options)

    def __repr__(self) -> str:
        kind = "fine-tuned" if self.backbone_state is not None and self.spec.is_pretrained else "probe"
        return f"TrainedModel({self.spec.name}, {kind}, {self.num_classes} classes)"


__all__ = ["HeadWeights", "TrainedModel"]
