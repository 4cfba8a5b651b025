"""Layer groups, staged unfreezing with BatchNorm handling, and layer-wise LR param groups.

A backbone is seen as an ordered list of *layer groups*, bottom to top (for EfficientNet: stem,
each stage of ``blocks``, the 1x1 head conv + its BatchNorm). Stage 2 unfreezes the top N groups;
the group ``k`` levels below the head learns at ``lr * layer_decay**k``. Frozen BatchNorm layers are
kept in eval mode so their running statistics never move (as Lightning's ``BaseFinetuning``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from transferkit.finetune.config import FinetuneError


@dataclass
class LayerGroup:
    name: str
    modules: list[nn.Module]

    def parameters(self):
        for m in self.modules:
            yield from m.parameters()


def layer_groups(net: nn.Module) -> list[LayerGroup]:
    """The backbone's layer groups, bottom to top (the ImageNet classifier is not included).

    EfficientNet / MobileNet-style timm models (``conv_stem``, ``bn1``, ``blocks``, ``conv_head``)
    and ResNets (``conv1``, ``layer1..4``) are split by stage; other timm models by their own
    ``group_matcher`` (coarse).
    """
    if all(hasattr(net, a) for a in ("conv_stem", "bn1", "blocks")):
        groups = [LayerGroup("stem", [net.conv_stem, net.bn1])]
        groups += [LayerGroup(f"blocks.{i}", [b]) for i, b in enumerate(net.blocks)]
        top = [m for m in (getattr(net, "conv_head", None), getattr(net, "bn2", None)) if isinstance(m, nn.Module)]
        if top:
            groups.append(LayerGroup("head_conv", top))
        return groups
    if all(hasattr(net, a) for a in ("conv1", "layer1", "layer4")):
        stem = [m for m in (net.conv1, getattr(net, "bn1", None)) if isinstance(m, nn.Module)]
        return [LayerGroup("stem", stem)] + [LayerGroup(f"layer{i}", [getattr(net, f"layer{i}")]) for i in range(1, 5)]
    # Generic timm model: group parameters by the model's own matcher, keep module granularity.
    from timm.models import group_modules

    if not hasattr(net, "group_matcher"):
        raise FinetuneError(f"{type(net).__name__} has no layer grouping; fine-tune it with unfreeze='all' and layer_decay=1")
    grouped = group_modules(net, net.group_matcher(coarse=True))
    classifier = getattr(net, "default_cfg", {}).get("classifier", "classifier")
    groups = []
    for gid, names in sorted(grouped.items(), key=lambda kv: kv[0]):
        mods = [net.get_submodule(n) for n in names if not n.startswith(classifier)]
        if mods:
            groups.append(LayerGroup(f"group{gid}", mods))
    return groups


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def freeze_batchnorm_stats(module: nn.Module) -> None:
    """Put every BatchNorm in eval mode (running statistics fixed, affine params may still train)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def apply_train_mode(model: nn.Module, *, trainable_groups: list[LayerGroup], freeze_bn_stats: bool) -> None:
    """Train mode only where something trains: frozen groups (and, if asked, every BatchNorm) stay in eval.

    Call after ``model.train()`` each epoch, since ``train()`` resets every submodule.
    """
    model.eval()
    for g in trainable_groups:
        for m in g.modules:
            m.train()
    if hasattr(model, "head"):
        model.head.train()
    if freeze_bn_stats:
        freeze_batchnorm_stats(model)


def top_groups(groups: list[LayerGroup], unfreeze: int | str) -> list[LayerGroup]:
    if unfreeze == "all":
        return list(groups)
    n = int(unfreeze)
    if n > len(groups):
        raise FinetuneError(f"unfreeze={n} but the backbone has only {len(groups)} layer groups ({', '.join(g.name for g in groups)})")
    return groups[len(groups) - n :] if n else []


def _is_no_decay(name: str, p: nn.Parameter) -> bool:
    # Biases and norm scales/shifts are 1-D; decaying them only hurts (standard practice, timm too).
    return p.ndim <= 1 or name.endswith(".bias")


def param_groups(groups: list[LayerGroup], head: nn.Module, *, lr: float, layer_decay: float, weight_decay: float) -> list[dict]:
    """AdamW param groups: head at ``lr``, group k levels below at ``lr * layer_decay**(k+1)``.

    Each layer group is split in two: weights (decayed) and norms/biases (``weight_decay=0``).
    """
    out: list[dict] = []
    named = [("head", [(n, p) for n, p in head.named_parameters()], lr)]
    for depth, g in enumerate(reversed(groups)):
        params = [(f"{g.name}.{n}", p) for m in g.modules for n, p in m.named_parameters()]
        named.append((g.name, params, lr * layer_decay ** (depth + 1)))
    seen: set[int] = set()
    for gname, params, glr in named:
        decay = [p for n, p in params if id(p) not in seen and not _is_no_decay(n, p)]
        no_decay = [p for n, p in params if id(p) not in seen and _is_no_decay(n, p)]
        seen.update(id(p) for _, p in params)
        if decay:
            out.append({"params": decay, "lr": glr, "weight_decay": weight_decay, "name": f"{gname}.decay"})
        if no_decay:
            out.append({"params": no_decay, "lr": glr, "weight_decay": 0.0, "name": f"{gname}.no_decay"})
    return out


class TopNet(nn.Module):
    """The top of a sequential backbone plus the head: cached trunk activations -> logits.

    Shares its modules (and so its parameters) with the full model.
    """

    def __init__(self, net: nn.Module, top: list[LayerGroup], head: nn.Module) -> None:
        super().__init__()
        self.top = nn.ModuleList([m for g in top for m in g.modules])
        self.pool = net.global_pool
        self.head = head

    def forward(self, acts: torch.Tensor) -> torch.Tensor:
        x = acts
        for m in self.top:
            x = m(x)
        return self.head(self.pool(x).flatten(1))


def trunk_forward(net: nn.Module, trunk: list[LayerGroup], x_normalized: torch.Tensor) -> torch.Tensor:
    """Run the bottom groups of an EfficientNet/MobileNet-style backbone (see :func:`supports_cached`)."""
    x = x_normalized
    for g in trunk:
        for m in g.modules:
            x = m(x)
    return x


def supports_cached(net: nn.Module) -> bool:
    return all(hasattr(net, a) for a in ("conv_stem", "bn1", "blocks", "global_pool"))
