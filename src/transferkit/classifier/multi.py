"""A classifier over several backbones: each member a one-backbone classifier, their outputs combined.

No single backbone wins everywhere, and probes over several of them together are often better than
any one (``benchmarks/results/accuracy.md``). Two ways to combine (:data:`COMBINES`):

- ``"concat"``: one logistic probe on the members' features concatenated. Its linear layer is split
  by feature columns (:func:`split_concat_head`): member ``i``'s head maps its own features to its
  share of the logits (the bias sits with the first member), and the shares are summed before the
  softmax, which is exactly the concatenated probe.
- ``"ensemble"``: one probe per backbone; their class probabilities are averaged.

Each member keeps its own preprocessing (input size, mean, std), feature engine and cache entries,
and is saved as a complete one-backbone bundle inside the multi-backbone bundle (``member-<i>/``),
whose ``bundle.json`` records the sha256 of each member's ``bundle.json`` (which records its
weights'). ``predict``, ``evaluate``, the Python API, fp32 export (one ONNX graph with an input per
member), the runtime and the server take it; what needs one network end to end (attacks, feature
maps, ideal images, int8 export, flip-zoom TTA) refuses it with one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.classifier.bundle_files import BUNDLE_JSON, MULTI_BACKBONE_KIND, MULTI_BUNDLE_FORMAT_VERSION, sha256_file, write_bundle
from transferkit.classifier.trained import HeadWeights, TrainedModel
from transferkit.core.errors import BundleError

COMBINES = ("concat", "ensemble")
COMBINE_WORDS = {"concat": "features concatenated", "ensemble": "probabilities averaged"}


def _check_combine(combine: str) -> None:
    if combine not in COMBINES:
        raise BundleError(f"unknown way to combine backbones {combine!r}; use one of {', '.join(COMBINES)}")


def combine_logits(combine: str, logits: Sequence[np.ndarray]) -> np.ndarray:
    """Class probabilities (float64) from each member's logits on the same images."""
    _check_combine(combine)
    if combine == "concat":
        z = np.sum([np.asarray(v, dtype=np.float64) for v in logits], axis=0)
        return _softmax(z)
    return np.mean([_softmax(np.asarray(v, dtype=np.float64)) for v in logits], axis=0)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    if not np.isfinite(p).all():
        raise BundleError("the model produced non-finite outputs (NaN or infinity); its weights are broken: re-create the bundle")
    return p


def head_logits(head, X: np.ndarray) -> np.ndarray:
    """Logits (float64) of a head (an ``nn.Module`` or :class:`HeadWeights`) on feature rows."""
    if isinstance(head, HeadWeights):
        layers = head.config.get("layers", [])
        if len(layers) == 1 and layers[0].get("type") == "linear":  # the probe's head: no torch needed
            W = np.asarray(head.state["weight"], dtype=np.float64)
            b = np.asarray(head.state["bias"], dtype=np.float64) if "bias" in head.state else 0.0
            return np.asarray(X, dtype=np.float64) @ W.T + b
        head = head.to_module()
    import torch

    with torch.inference_mode():
        return head.eval()(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))).double().numpy()


def split_concat_head(head: HeadWeights, dims: Sequence[int]) -> list[HeadWeights]:
    """One linear head per member from a linear head over the members' features concatenated.

    Member ``i`` gets the weight columns of its features; the first member keeps the bias, the others
    get zeros, so the members' logits sum to the concatenated head's.

    Raises:
        BundleError: the head is not one linear layer, or its inputs are not ``sum(dims)`` features.
    """
    layers = head.config.get("layers", [])
    if len(layers) != 1 or layers[0].get("type") != "linear":
        raise BundleError("features of several backbones are concatenated under a linear head only (the logistic probe)")
    W = np.asarray(head.state["weight"])
    b = np.asarray(head.state.get("bias", np.zeros(W.shape[0], dtype=W.dtype)))
    if W.shape[1] != sum(dims):
        raise BundleError(f"the head takes {W.shape[1]} features but the backbones give {sum(dims)} together")
    out, start = [], 0
    for i, d in enumerate(dims):
        cfg = {"type": "sequential", "layers": [{"type": "linear", "in_features": int(d), "out_features": int(W.shape[0]), "bias": True}]}
        bias = b.copy() if i == 0 else np.zeros_like(b)
        out.append(HeadWeights(cfg, {"weight": np.ascontiguousarray(W[:, start : start + d]), "bias": bias}))
        start += d
    return out


class _Members:
    """What both forms of a model of several members share: the members, how they combine, the class names."""

    def __init__(self, members: Sequence, combine: str) -> None:
        _check_combine(combine)
        if len(members) < 2:
            raise BundleError("a model of several backbones needs at least two members")
        names = list(members[0].class_names)
        if any(list(m.class_names) != names for m in members):
            raise BundleError("the members of a multi-backbone model must share their class names, in the same order")
        self.members, self.combine, self.class_names = list(members), combine, names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def specs(self) -> list:
        return [m.spec for m in self.members]

    @property
    def name(self) -> str:
        return describe(self.combine, [s.name for s in self.specs])

    def _combined(self, heads: Sequence, features: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities (float64) from each member's head and features of the same images, in member order."""
        if len(features) != len(self.members):
            raise ValueError(f"{len(features)} feature sets for {len(self.members)} members")
        return combine_logits(self.combine, [head_logits(h, X) for h, X in zip(heads, features)])


class MultiBackboneModel(_Members):
    """Several one-backbone classifiers (:class:`~transferkit.classifier.bundle.ClassifierModel`) whose outputs are combined.

    Not an ``nn.Module``: each member takes pixels at its own input size, so there is no single
    tensor to pass through all of them. Prediction extracts each member's features
    (:func:`transferkit.evaluate.predict.model_probabilities`) and calls :meth:`probabilities`.
    """

    def eval(self) -> MultiBackboneModel:
        for m in self.members:
            m.eval()
        return self

    def probabilities(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities (float64) from each member's features of the same images, in member order."""
        return self._combined([m.head for m in self.members], features)

    def probabilities_of_image(self, image) -> np.ndarray:
        """Class probabilities of one PIL image, each member preprocessing it as files are."""
        import torch

        from transferkit.data.decode import resize_center_crop, to_tensor01

        feats = []
        with torch.inference_mode():
            for m in self.members:
                x = to_tensor01(resize_center_crop(image, m.spec))[None]
                feats.append(m.forward_features(x).float().numpy())
        return self.probabilities(feats)[0]

    def __repr__(self) -> str:
        return f"MultiBackboneModel({self.name}, {self.num_classes} classes)"


def describe(combine: str, names: Sequence[str]) -> str:
    """``"efficientnet_lite0 + efficientnet_lite1 (features concatenated)"``."""
    return f"{' + '.join(names)} ({COMBINE_WORDS.get(combine, combine)})"


class TrainedMultiModel(_Members):
    """A trained model of several backbones as data: one :class:`TrainedModel` per member and how they combine.

    The counterpart of :class:`TrainedModel` (same ``class_names``, ``network()``, ``save()``,
    ``load()``), so a training result and the Python API hold either.
    """

    def __init__(self, members: Sequence[TrainedModel], combine: str) -> None:
        super().__init__(members, combine)
        self._network: MultiBackboneModel | None = None

    @property
    def is_built(self) -> bool:
        return self._network is not None

    def probabilities(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities from each member's features of the same images (no network is built)."""
        return self._combined([m.network().head if m.is_built else m.head for m in self.members], features)

    def network(self) -> MultiBackboneModel:
        """The :class:`MultiBackboneModel` (each member's ``ClassifierModel`` built once)."""
        if self._network is None:
            self._network = MultiBackboneModel([m.network() for m in self.members], self.combine)
        return self._network

    def save(self, path: str | os.PathLike, *, metrics: dict[str, Any] | None = None, config: Any = None,
             extra: dict[str, Any] | None = None, **write_options: Callable) -> Path:
        """Write the bundle directory at ``path`` atomically: one member bundle per backbone inside it."""

        def write_members(tmp: Path) -> dict[str, Any]:
            members, files = [], {}
            for i, m in enumerate(self.members):
                folder = f"member-{i}"
                m.save(tmp / folder, config=None, extra={"member_of": self.combine, "member": i})
                files[f"{folder}/{BUNDLE_JSON}"] = sha256_file(tmp / folder / BUNDLE_JSON)
                members.append({"dir": folder, "backbone": m.spec.name})
            return {"kind": MULTI_BACKBONE_KIND, "combine": self.combine, "members": members, "include_backbone": False,
                    "files": files}

        return write_bundle(path, model=write_members, weights={}, class_names=self.class_names,
                            format_version=MULTI_BUNDLE_FORMAT_VERSION, metrics=metrics, config=config, extra=extra,
                            what=self.name, **write_options)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainedMultiModel:
        """Read a multi-backbone bundle: each member's ``bundle.json`` is checked against its recorded sha256
        before the member (and its weights, against theirs) is loaded."""
        from transferkit.classifier.bundle import check_file_hash, is_multi_backbone, read_bundle_meta

        path = Path(path)
        meta = read_bundle_meta(path)
        if not is_multi_backbone(meta):
            raise BundleError(f"{path} is a model of one backbone; load it with TrainedModel.load")
        members = []
        folders = [m["dir"] for m in meta["members"]]
        if len(set(folders)) != len(folders):
            raise BundleError(f"{path / BUNDLE_JSON} names a member folder twice; re-create the bundle")
        for m, folder in zip(meta["members"], folders):
            if "/" in folder or "\\" in folder or folder in ("", ".", ".."):
                raise BundleError(f"{path / BUNDLE_JSON} names a member folder {folder!r} outside the bundle; re-create the bundle")
            check_file_hash(path, f"{folder}/{BUNDLE_JSON}", meta["files"])
            if is_multi_backbone(read_bundle_meta(path / folder)):
                raise BundleError(f"{path / folder} is itself a model of several members; re-create the bundle")
            member = TrainedModel.load(path / folder, member=True)
            if member.class_names != list(meta["class_names"]) or member.spec.name != m["backbone"]:
                raise BundleError(f"{path / folder} does not match what {path / BUNDLE_JSON} says of it (backbone, class names); "
                                  "re-create the bundle")
            members.append(member)
        return cls(members, str(meta["combine"]))

    def __repr__(self) -> str:
        return f"TrainedMultiModel({self.name}, {self.num_classes} classes)"


def load_trained(path: str | os.PathLike):
    """A :class:`TrainedModel` or :class:`TrainedMultiModel`, whichever the bundle at ``path`` holds."""
    from transferkit.classifier.bundle import is_multi_backbone, read_bundle_meta

    if is_multi_backbone(read_bundle_meta(path)):
        return TrainedMultiModel.load(path)
    return TrainedModel.load(path)


def load_classifier(path: str | os.PathLike):
    """The network of any bundle: a ``ClassifierModel``, or a :class:`MultiBackboneModel` for several backbones."""
    return load_trained(path).network()


__all__ = ["COMBINES", "MultiBackboneModel", "TrainedMultiModel", "combine_logits", "describe", "head_logits", "load_classifier",
           "load_trained", "split_concat_head"]
