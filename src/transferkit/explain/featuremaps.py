"""Feature maps: what a layer of the network sees in an image.

Layers are found by name in the timm network's ``named_modules()``; for convenience a short
list of meaningful layers (the stem, each stage, the head convolution) can be addressed by index,
from early (edges, colours) to late (textures, parts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from transferkit.core.errors import UnknownNameError

# Containers whose children are the stages of common timm CNNs.
_STAGE_CONTAINERS = ("blocks", "stages", "features", "layers")
_STEM_NAMES = ("bn1", "stem", "conv_stem", "conv1")  # bn1 first: timm's BatchNormAct2d is conv+bn+act
_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
_HEAD_NAMES = ("bn2", "conv_head", "final_conv")


class _StopForward(Exception):
    """Raised by the hook so the forward pass stops once the layer is reached."""


@dataclass(frozen=True)
class LayerInfo:
    """One addressable layer.

    Attributes:
        index: position in :func:`list_layers` (``None`` when named directly).
        name: the module's name in the network's ``named_modules()``.
        role: "stem", "stage", "head" or "" (any other module).
        shape: output (channels, height, width) for the model's input size.
    """

    index: int | None
    name: str
    role: str
    shape: tuple[int, int, int]


@dataclass
class FeatureMaps:
    """A layer's activations for one image.

    Attributes:
        layer: which layer.
        activations: [C, H, W] float tensor.
        channels: the channels chosen for display, most active first.
        scores: their mean activation.
    """

    layer: LayerInfo
    activations: torch.Tensor
    channels: list[int]
    scores: list[float]


def network_of(model: nn.Module) -> nn.Module:
    """The timm network inside a PixelModel (``.net``) or a bundle's ClassifierModel (``.backbone.net``)."""
    if hasattr(model, "net") and isinstance(model.net, nn.Module):
        return model.net
    backbone = getattr(model, "backbone", None)
    if backbone is not None and isinstance(getattr(backbone, "net", None), nn.Module):
        return backbone.net
    return model


def _input_size(model: nn.Module) -> int:
    spec = getattr(model, "spec", None) or getattr(getattr(model, "backbone", None), "spec", None)
    return int(getattr(spec, "image_size", 0) or 224)


def _candidate_names(net: nn.Module) -> list[tuple[str, str]]:
    modules = dict(net.named_modules())
    names: list[tuple[str, str]] = []
    stem = next((n for n in _STEM_NAMES if n in modules), None)
    if stem:
        names.append((stem, "stem"))
    stages = [n for n in _RESNET_STAGES if n in modules]
    if not stages:
        for container in _STAGE_CONTAINERS:
            if container in modules and len(list(modules[container].children())) > 0:
                stages = [f"{container}.{child}" for child, _ in modules[container].named_children()]
                break
    names += [(n, "stage") for n in stages]
    head = next((n for n in _HEAD_NAMES if n in modules and n != stem), None)
    if head:
        names.append((head, "head"))
    return names


def _output_shapes(model: nn.Module, names: list[str]) -> dict[str, tuple[int, ...]]:
    net = network_of(model)
    modules = dict(net.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in names:
        def hook(_module, _inputs, output, name=name):
            if isinstance(output, torch.Tensor):
                shapes[name] = tuple(output.shape[1:])
        handles.append(modules[name].register_forward_hook(hook))
    size = _input_size(model)
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size, device=_device(model)))
    finally:
        for h in handles:
            h.remove()
    return shapes


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def list_layers(model: nn.Module) -> list[LayerInfo]:
    """The meaningful layers of ``model`` (stem, each stage, head conv) with their output shapes.

    Args:
        model: a PixelModel or a bundle's ClassifierModel (anything holding a timm ``net``).
    """
    candidates = _candidate_names(network_of(model))
    shapes = _output_shapes(model, [n for n, _ in candidates])
    layers = []
    for name, role in candidates:
        shape = shapes.get(name)
        if shape is not None and len(shape) == 3:  # only spatial maps can be shown
            layers.append(LayerInfo(len(layers), name, role, tuple(int(v) for v in shape)))  # type: ignore[arg-type]
    return layers


def resolve_layer(model: nn.Module, layer: str | int) -> LayerInfo:
    """Find a layer by index into :func:`list_layers` (negative counts from the end) or by module name."""
    layers = list_layers(model)
    text = str(layer).strip()
    if text.lstrip("-").isdigit():
        i = int(text)
        if not -len(layers) <= i < len(layers):
            raise UnknownNameError(f"layer index {i} is out of range: this network has {len(layers)} listed layers (0-{len(layers) - 1}); see --list-layers")
        return layers[i]
    for info in layers:
        if info.name == text:
            return info
    modules = dict(network_of(model).named_modules())
    if text not in modules or text == "":
        import difflib

        close = difflib.get_close_matches(text, list(modules), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"no layer named {text!r} in this network.{hint} Use --list-layers for indices, or a name from named_modules().")
    shape = _output_shapes(model, [text]).get(text)
    if shape is None or len(shape) != 3:
        raise UnknownNameError(f"layer {text!r} does not output a [C, H, W] feature map (output shape {shape}); pick a convolutional layer")
    return LayerInfo(None, text, "", tuple(int(v) for v in shape))  # type: ignore[arg-type]


def extract_feature_maps(model: nn.Module, image01: torch.Tensor, layer: str | int | LayerInfo, *, channels: int = 16) -> FeatureMaps:
    """Activations of ``layer`` for one image, and its ``channels`` most active channels.

    Args:
        model: maps pixels in [0, 1] to logits and holds a timm network.
        image01: [3, H, W] pixels in [0, 1] (already resized for the model).
        layer: index into :func:`list_layers`, a module name, or a :class:`LayerInfo`.
        channels: how many channels to pick (by mean activation, highest first).
    """
    info = layer if isinstance(layer, LayerInfo) else resolve_layer(model, layer)
    module = dict(network_of(model).named_modules())[info.name]
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        captured["out"] = output.detach()
        raise _StopForward  # the rest of the network is not needed

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model.eval()(image01.unsqueeze(0).to(_device(model)))
    except _StopForward:
        pass
    finally:
        handle.remove()
    acts = captured["out"][0].float().cpu()
    scores = acts.flatten(1).mean(dim=1)
    k = max(1, min(int(channels), acts.shape[0]))
    top = torch.topk(scores, k)
    return FeatureMaps(info, acts, top.indices.tolist(), top.values.tolist())


def feature_map_grid(maps: FeatureMaps, *, tile: int = 96, pad: int = 2, cmap: str = "viridis") -> np.ndarray:
    """A grid image of the chosen channels, each scaled to its own min..max and coloured.

    Args:
        maps: from :func:`extract_feature_maps`.
        tile: side of each tile in pixels (maps are upsampled with nearest neighbour so pixels stay
            visible).
        pad: white gap between tiles.
        cmap: a matplotlib colormap name.

    Returns:
        [H, W, 3] uint8 array: ceil(sqrt(k)) columns, as many rows as needed.
    """
    import math

    from matplotlib import colormaps

    k = len(maps.channels)
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    grid = np.full((rows * tile + (rows + 1) * pad, cols * tile + (cols + 1) * pad, 3), 255, dtype=np.uint8)
    colour = colormaps[cmap]
    for n, ch in enumerate(maps.channels):
        fm = maps.activations[ch]
        lo, hi = float(fm.min()), float(fm.max())
        norm = (fm - lo) / (hi - lo) if hi > lo else torch.zeros_like(fm)
        up = torch.nn.functional.interpolate(norm[None, None], size=(tile, tile), mode="nearest")[0, 0].numpy()
        rgb = (colour(up)[..., :3] * 255).round().astype(np.uint8)
        r, c = divmod(n, cols)
        y, x = pad + r * (tile + pad), pad + c * (tile + pad)
        grid[y : y + tile, x : x + tile] = rgb
    return grid


def default_layers(model: nn.Module) -> list[str]:
    """Three layers worth showing first: the stem (edges, colours), a middle stage, the last stage."""
    layers = [info for info in list_layers(model) if info.role in ("stem", "stage")]
    if len(layers) <= 3:
        return [info.name for info in layers]
    picks = [layers[0], layers[len(layers) // 2], layers[-1]]
    return [info.name for info in picks]


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an [H, W, 3] uint8 array as PNG bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def load_image_for(model: nn.Module, image) -> torch.Tensor:
    """A path (or PIL image, or [3, H, W] tensor in [0, 1]) prepared the way ``model``'s spec wants."""
    if isinstance(image, torch.Tensor):
        return image
    from transferkit.data.decode import load_for_spec, resize_center_crop, to_tensor01

    spec = getattr(model, "spec", None) or getattr(getattr(model, "backbone", None), "spec", None)
    if spec is None:
        raise ValueError("the model has no spec; pass the image as a [3, H, W] tensor in [0, 1]")
    if hasattr(image, "convert"):  # a PIL image
        return to_tensor01(resize_center_crop(image.convert("RGB"), spec))
    return load_for_spec(image, spec)


def feature_map_grids(
    model: nn.Module, image, *, layers: list[str | int] | None = None, channels: int = 16, tile: int = 64
) -> dict[str, tuple[bytes, dict]]:
    """PNG grids of the most active channels of several layers (for reports).

    Args:
        model: a PixelModel or bundle ClassifierModel.
        image: an image path, PIL image or [3, H, W] tensor in [0, 1].
        layers: names or indices (default: :func:`default_layers`).
        channels: channels per grid.
        tile: tile side in pixels.

    Returns:
        layer name -> (PNG bytes, info dict with index, role, shape and the channels shown).
    """
    x = load_image_for(model, image)
    out: dict[str, tuple[bytes, dict]] = {}
    for layer in layers if layers is not None else default_layers(model):
        maps = extract_feature_maps(model, x, layer, channels=channels)
        info = {"index": maps.layer.index, "role": maps.layer.role, "shape": list(maps.layer.shape), "channels": maps.channels}
        out[maps.layer.name] = (png_bytes(feature_map_grid(maps, tile=tile)), info)
    return out


__all__ = ["FeatureMaps", "LayerInfo", "default_layers", "extract_feature_maps", "feature_map_grid", "feature_map_grids",
           "load_image_for", "png_bytes", "list_layers", "network_of", "resolve_layer"]
