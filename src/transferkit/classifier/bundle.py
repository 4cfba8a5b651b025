"""Model bundles: a classifier saved as a directory that rebuilds itself, never unpickled.

A bundle directory holds:

- ``bundle.json``: format version, toolkit version, the backbone's :class:`BackboneSpec` (with the
  sha256 of its pretrained weights), the head's architecture as data, the class names, metrics, the
  training config, and the sha256 of every weights file;
- ``head.safetensors``: the head's weights;
- ``backbone.safetensors`` (only with ``include_backbone=True``, e.g. after fine-tuning, or when
  the backbone's weights are random and so cannot be rebuilt from their source).

Loading checks every weights file against its recorded hash and rebuilds the backbone with
:func:`~transferkit.backbones.create_backbone` from the spec (its weights must hash to the recorded
sha256) or from the bundle's own backbone weights. Writing goes to a temporary directory that is
renamed into place, so a reader never sees half a bundle.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.backbones.spec import BackboneSpec
from transferkit.classifier.bundle_files import (
    BACKBONE_FILE,
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    BUNDLE_JSON,
    HEAD_FILE,
    MULTI_BACKBONE_KIND,
    MULTI_BUNDLE_FORMAT_VERSION,
    write_bundle_dir,
)
from transferkit.classifier.bundle_files import sha256_file as _sha256
from transferkit.classifier.bundle_files import umask as _umask  # noqa: F401 - kept for importers
from transferkit.core.errors import BundleError, TransferkitError

log = logging.getLogger(__name__)



class ClassifierModel(nn.Module):
    """A backbone plus a head: pixels in [0, 1] -> logits over ``class_names``.

    Attributes:
        backbone: the :class:`~transferkit.backbones.model.PixelModel` (normalises inside).
        head: an ``nn.Module`` mapping pooled features ``[N, D]`` to logits ``[N, K]``.
        class_names: the K class names, in logit order.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, class_names: list[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.class_names = list(class_names)

    @property
    def spec(self) -> BackboneSpec:
        """The backbone's spec (preprocessing, weights source and sha256)."""
        return self.backbone.spec

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward_features(self, x01: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features for pixels in [0, 1], shape [N, D]."""
        return self.backbone.forward_features(x01)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Logits over ``class_names`` for pixels in [0, 1], shape [N, K]."""
        return self.head(self.forward_features(x01))


# ---------------------------------------------------------------------------------------------
# Heads as data: the architecture is stored as JSON, the weights as safetensors.

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "identity": nn.Identity}


def _layer_config(layer: nn.Module) -> dict[str, Any]:
    if isinstance(layer, nn.Linear):
        return {"type": "linear", "in_features": layer.in_features, "out_features": layer.out_features, "bias": layer.bias is not None}
    if isinstance(layer, nn.Dropout):
        return {"type": "dropout", "p": float(layer.p)}
    if isinstance(layer, nn.BatchNorm1d):
        return {"type": "batchnorm1d", "num_features": layer.num_features, "eps": layer.eps}
    if isinstance(layer, nn.LayerNorm):
        return {"type": "layernorm", "normalized_shape": list(layer.normalized_shape), "eps": layer.eps}
    for name, cls in _ACTIVATIONS.items():
        if type(layer) is cls:
            return {"type": name}
    raise BundleError(
        f"cannot save a head containing {type(layer).__name__}: bundles store heads built from "
        "Linear, Dropout, BatchNorm1d, LayerNorm, ReLU, GELU, Tanh and Identity layers"
    )


def head_config(head: nn.Module) -> dict[str, Any]:
    """The head's architecture as JSON-able data (``nn.Linear`` or an ``nn.Sequential`` of layers)."""
    if isinstance(head, nn.Sequential):
        return {"type": "sequential", "layers": [_layer_config(layer) for layer in head]}
    return {"type": "sequential", "layers": [_layer_config(head)]}


def _build_layer(cfg: dict[str, Any]) -> nn.Module:
    kind = cfg.get("type")
    if kind == "linear":
        return nn.Linear(int(cfg["in_features"]), int(cfg["out_features"]), bias=bool(cfg.get("bias", True)))
    if kind == "dropout":
        return nn.Dropout(float(cfg.get("p", 0.0)))
    if kind == "batchnorm1d":
        return nn.BatchNorm1d(int(cfg["num_features"]), eps=float(cfg.get("eps", 1e-5)))
    if kind == "layernorm":
        return nn.LayerNorm([int(v) for v in cfg["normalized_shape"]], eps=float(cfg.get("eps", 1e-5)))
    if kind in _ACTIVATIONS:
        return _ACTIVATIONS[kind]()
    raise BundleError(f"bundle head has an unknown layer type {kind!r}; it was written by a newer transferkit?")


def build_head(config: dict[str, Any]) -> nn.Module:
    """Rebuild a head (with fresh weights) from :func:`head_config`'s output."""
    if not isinstance(config, dict) or config.get("type") != "sequential" or not isinstance(config.get("layers"), list) \
            or not config["layers"] or not all(isinstance(c, dict) for c in config["layers"]):
        raise BundleError(f"bundle head config is not understood: {str(config)[:120]}; re-create the bundle")
    try:
        layers = [_build_layer(c) for c in config["layers"]]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        # A hand-edited or truncated bundle.json must give one clear line, not a traceback.
        raise BundleError(f"bundle head config has a malformed layer ({type(exc).__name__}: {exc}); re-create the bundle") from None
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# Hashing and atomic writes.


def state_for_saving(module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous tensors that share no storage; channels_last or views would fail.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_bundle(
    path: str | os.PathLike,
    model: ClassifierModel,
    *,
    metrics: dict[str, Any] | None = None,
    config: Any = None,
    include_backbone: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a bundle directory at ``path`` (replacing an existing bundle there).

    Args:
        path: the bundle directory to create.
        model: the classifier to save.
        metrics: evaluation numbers to record (JSON-able).
        config: the training config (a dataclass or dict), recorded as data.
        include_backbone: also store the backbone's weights (needed after fine-tuning). Forced on
            when the backbone's weights are random (``weights_source == "none"``), since those
            cannot be rebuilt from a source.
        extra: anything else JSON-able to record under ``"extra"``.

    Returns:
        The bundle directory.

    Raises:
        BundleError: the head cannot be described as data, or ``path`` is a file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    spec: BackboneSpec = model.spec
    if not include_backbone and not spec.is_pretrained:
        log.info("backbone %s has random weights; storing them in the bundle", spec.name)
        include_backbone = True

    def writer(module: nn.Module):
        return lambda file: save_file(state_for_saving(module), file)

    weights = {HEAD_FILE: writer(model.head)}
    if include_backbone:
        weights[BACKBONE_FILE] = writer(model.backbone.net)
    return write_bundle_dir(path, spec=spec, head_cfg=head_config(model.head), weights=weights, class_names=list(model.class_names),
                            include_backbone=include_backbone, metrics=metrics, config=config, extra=extra)


def read_bundle_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``bundle.json`` of a bundle, checked for format (no weights are read)."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"no model bundle at {path}; train one with `transferkit train DATA --out {path}`")
    if not path.is_dir() or not (path / BUNDLE_JSON).is_file():
        raise BundleError(f"{path} is not a transferkit bundle (no {BUNDLE_JSON} inside); pass the directory `train --out` wrote")
    try:
        meta = json.loads((path / BUNDLE_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path / BUNDLE_JSON} is unreadable or corrupt ({exc}); re-create the bundle") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not a transferkit bundle (bundle.json has no format {BUNDLE_FORMAT!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > MULTI_BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{path} has bundle format version {version!r}; this transferkit reads up to {MULTI_BUNDLE_FORMAT_VERSION}. Upgrade transferkit."
        )
    multi = is_multi_backbone(meta)
    if multi != (version >= MULTI_BUNDLE_FORMAT_VERSION):
        raise BundleError(f"{path / BUNDLE_JSON} has format version {version} but " +
                          ("describes several backbones" if multi else "no kind of model it holds") + "; re-create the bundle")
    for key in ("class_names", "members", "combine", "files") if multi else ("class_names", "backbone", "head", "files"):
        if key not in meta:
            raise BundleError(f"{path / BUNDLE_JSON} lacks {key!r}; the bundle is incomplete, re-create it")
    names, files = meta["class_names"], meta["files"]
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
        raise BundleError(f"{path / BUNDLE_JSON} has no list of class names (got {str(names)[:60]}); re-create the bundle")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise BundleError(f"{path / BUNDLE_JSON} has a malformed 'files' table (name -> sha256); re-create the bundle")
    if multi:
        members = meta["members"]
        if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, dict) and isinstance(m.get("dir"), str)
                                                                        and isinstance(m.get("backbone"), str) for m in members):
            raise BundleError(f"{path / BUNDLE_JSON} has a malformed list of member models; re-create the bundle")
        return meta
    _check_meta_sense(path, meta)
    return meta


def is_multi_backbone(meta: dict[str, Any]) -> bool:
    """Whether a parsed ``bundle.json`` is a model of several backbones (:mod:`transferkit.classifier.multi`)."""
    return meta.get("kind") == MULTI_BACKBONE_KIND


def one_backbone_only(path: Path, meta: dict[str, Any]) -> BundleError:
    """The one-line refusal for a command that takes a model of one backbone and got several."""
    names = ", ".join(m["backbone"] for m in meta["members"])
    return BundleError(f"{path} combines {len(meta['members'])} members ({names}); this takes a model of one network "
                       "(attack, dream, featuremaps, robustness, int8 export, --tta flip-zoom): train one with `--no-combine`; "
                       "`predict`, `evaluate`, fp32 `export` and `serve` take both")


def _check_meta_sense(path: Path, meta: dict[str, Any]) -> None:
    """Refuse a bundle.json whose values make no sense (a hand edit, a tampered file) with one line."""
    try:
        spec = BackboneSpec.from_dict(meta["backbone"])
    except ValueError as exc:  # SpecError: says what is wrong with which field
        raise BundleError(f"{path / BUNDLE_JSON} has an invalid {exc}; re-create the bundle") from None
    names = meta["class_names"]
    if any(not c.strip() for c in names):
        raise BundleError(f"{path / BUNDLE_JSON} has an empty class name; re-create the bundle")
    if len(set(names)) != len(names):
        dup = sorted({c for c in names if names.count(c) > 1})
        raise BundleError(f"{path / BUNDLE_JSON} has class names that are not unique ({', '.join(dup[:5])}); re-create the bundle")
    head = meta["head"]
    layers = head.get("layers") if isinstance(head, dict) else None
    linear = [c for c in layers if isinstance(c, dict) and c.get("type") == "linear"] if isinstance(layers, list) else []

    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if linear and whole(linear[-1].get("out_features")) and linear[-1]["out_features"] != len(names):
        raise BundleError(f"{path / BUNDLE_JSON}: the head has {linear[-1]['out_features']} outputs but {len(names)} class names; "
                          "re-create the bundle")
    first = layers[0] if isinstance(layers, list) and layers else None
    if isinstance(first, dict) and first.get("type") == "linear" and whole(first.get("in_features")) \
            and first["in_features"] != spec.num_features:
        raise BundleError(f"{path / BUNDLE_JSON}: the head takes {first['in_features']} features but the backbone gives "
                          f"{spec.num_features} features; re-create the bundle")


def check_file_hash(path: Path, name: str, files: dict[str, str]) -> Path:
    """``path / name``, after checking it is there and hashes to what ``bundle.json`` records for it."""
    file = path / name
    expected = files.get(name)
    if not expected:
        raise BundleError(f"{path / BUNDLE_JSON} records no sha256 for {name}; the bundle is incomplete, re-create it")
    if not file.is_file():
        raise BundleError(f"bundle {path} is missing {name}; re-create it")
    actual = _sha256(file)
    if actual != expected:
        raise BundleError(
            f"refused bundle {path}: {name} has sha256 {actual[:12]}... but bundle.json records {expected[:12]}...; "
            "it was modified or corrupted. Re-create or re-download the bundle."
        )
    return file


def _load_checked(path: Path, name: str, files: dict[str, str]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = check_file_hash(path, name, files)
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"bundle {path}: {name} cannot be read ({exc}); re-create it") from None


def rebuild_backbone(spec: BackboneSpec, backbone_state: dict[str, torch.Tensor] | None, where: str):
    """The backbone a classifier was trained on: from ``backbone_state``, else from its weights source.

    ``where`` names the classifier in error messages (e.g. ``"bundle m"``). The weights found must
    hash to ``spec.weights_sha256``.

    Raises:
        BundleError: weights missing, unreadable, or not the ones the classifier was trained on.
    """
    from transferkit.backbones import create_backbone
    from transferkit.backbones.model import PixelModel
    from transferkit.backbones.weights import load_into

    if backbone_state is not None:
        # Architecture only; the bundle's own weights are loaded strictly on top.
        fresh = create_backbone(spec.name, weights="none", num_classes=spec.num_classes, image_size=spec.image_size, warn_random=False)
        try:
            load_into(fresh.net, backbone_state, where)
        except TransferkitError as exc:
            raise BundleError(str(exc)) from None
        return PixelModel(fresh.net, spec).eval()
    if spec.weights_source == "file":
        weights: str = spec.weights_location
        if not Path(weights).is_file():
            raise BundleError(
                f"{where} needs the backbone weights file {weights}, which is not there; "
                "put it back or save the bundle with include_backbone=True"
            )
    elif spec.weights_source in ("package", "hub"):
        weights = spec.weights_source
    else:
        raise BundleError(f"{where} has no backbone weights and its spec says source {spec.weights_source!r}; re-create it")
    try:
        rebuilt = create_backbone(spec.name, weights=weights, num_classes=spec.num_classes, image_size=spec.image_size)
    except TransferkitError as exc:
        raise BundleError(f"{where}: cannot rebuild backbone {spec.name}: {exc}") from None
    if spec.weights_sha256 and rebuilt.spec.weights_sha256 != spec.weights_sha256:
        raise BundleError(
            f"refused {where}: backbone weights found here ({rebuilt.spec.weights_location}) have sha256 "
            f"{rebuilt.spec.weights_sha256[:12]}... but the bundle was trained on {spec.weights_sha256[:12]}...; "
            "install the same weights or save the bundle with include_backbone=True"
        )
    return PixelModel(rebuilt.net, spec).eval()


def load_bundle(path: str | os.PathLike, *, member: bool = False) -> ClassifierModel:
    """Load a bundle written by :func:`save_bundle`, in eval mode on the CPU.

    Never unpickles: metadata is JSON and weights are safetensors whose sha256 must match the
    values recorded in ``bundle.json``.

    Raises:
        BundleError: missing, incomplete, corrupt or tampered bundle, or backbone weights that are
            not the ones the bundle was trained on.
    """
    from transferkit.backbones.weights import load_into

    path = Path(path)
    meta = read_bundle_meta(path)
    if is_multi_backbone(meta):
        raise one_backbone_only(path, meta)
    part_of = (meta.get("extra") or {}).get("member_of") if isinstance(meta.get("extra"), dict) else None
    if part_of == "concat" and not member:
        raise BundleError(f"{path} is one part of a model whose backbones' features are concatenated: alone it predicts nothing "
                          f"meaningful; use the whole model, {path.parent}")
    files = meta["files"]
    head_state = _load_checked(path, HEAD_FILE, files)
    backbone_state = _load_checked(path, BACKBONE_FILE, files) if meta.get("include_backbone") else None
    try:
        spec = BackboneSpec.from_dict(meta["backbone"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path / BUNDLE_JSON} has an unreadable backbone spec ({exc}); re-create the bundle") from None
    head = build_head(meta["head"])
    try:
        load_into(head, head_state, f"bundle {path}")
    except TransferkitError as exc:
        raise BundleError(str(exc)) from None
    class_names = [str(c) for c in meta["class_names"]]
    out_features = [m.out_features for m in head.modules() if isinstance(m, nn.Linear)]
    if out_features and out_features[-1] != len(class_names):
        raise BundleError(f"bundle {path}: the head has {out_features[-1]} outputs but {len(class_names)} class names; re-create it")
    backbone = rebuild_backbone(spec, backbone_state, f"bundle {path}")
    return ClassifierModel(backbone, head, class_names).eval()


__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "ClassifierModel",
    "build_head",
    "check_file_hash",
    "head_config",
    "is_multi_backbone",
    "load_bundle",
    "one_backbone_only",
    "read_bundle_meta",
    "save_bundle",
]
