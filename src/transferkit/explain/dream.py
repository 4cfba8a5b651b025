"""Ideal class images as the lesson shows them: settings, the regularised and the noisy render, and their files."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from torch import nn

from transferkit.explain.render import RenderConfig, RenderResult, StepRecord, plain_config, render_class_image, resolve_class, to_uint8


def dream_config(*, steps: int = 256, lr: float = 0.05, size: int | None = None, seed: int = 0, objective: str = "logit",
                 l2_weight: float = 0.0, tv_weight: float | None = None, param: str | None = None, transforms: bool | None = None,
                 gif: bool = False) -> RenderConfig:
    """The :class:`RenderConfig` for these settings.

    ``tv_weight=0`` means the lesson's noisy version (raw pixels, no transforms, one view) unless
    ``param`` / ``transforms`` say otherwise; ``gif`` keeps about 48 frames.
    """
    config = RenderConfig(steps=steps, lr=lr, size=size, seed=seed, objective=objective, l2_weight=l2_weight,
                          frame_every=max(1, steps // 48) if gif else 0)
    if tv_weight is not None:
        config = replace(config, tv_weight=tv_weight)
    if tv_weight == 0:
        config = replace(config, param="pixel", transforms=False, views=1)
    if param is not None:
        config = replace(config, param=param)
    if transforms is not None:
        config = replace(config, transforms=transforms, views=config.views if transforms else 1)
    return config


@dataclass
class Dream:
    """One or two renders of a class: ``renders[0]`` with the given settings, ``renders[1]`` the noisy version."""

    class_index: int
    class_name: str
    variants: list[str]
    renders: list[RenderResult]

    def side_by_side(self) -> np.ndarray:
        """The renders as one ``HxWx3`` uint8 image (left: the given settings, right: the noisy version)."""
        images = [to_uint8(r.image) for r in self.renders]
        if len(images) == 1:
            return images[0]
        gap = np.full((images[0].shape[0], 8, 3), 255, dtype=np.uint8)
        return np.concatenate([images[0], gap, images[1]], axis=1)

    def save_png(self, path: str | os.PathLike) -> Path:
        from PIL import Image

        from transferkit.core.atomic import atomic_write

        path = Path(path)
        atomic_write(path, lambda tmp: Image.fromarray(self.side_by_side()).save(tmp, format="PNG"))
        return path

    def save_gif(self, path: str | os.PathLike) -> Path:
        """The optimisation of the first render as an animated GIF (needs ``frame_every`` > 0)."""
        from PIL import Image

        from transferkit.core.atomic import atomic_write

        first = self.renders[0]
        frames = [Image.fromarray(to_uint8(f)) for f in first.frames] + [Image.fromarray(to_uint8(first.image))]
        path = Path(path)
        atomic_write(path, lambda tmp: frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=80, loop=0))
        return path


def dream(model: nn.Module, target: str | int, config: RenderConfig = RenderConfig(), *, compare: bool = False,
          callback: Callable[[str, StepRecord], None] | None = None) -> Dream:
    """Grow an ideal image of ``target`` (a class name or index of ``model``); ``compare`` adds the noisy version.

    ``callback(variant, step)`` is called after every step of each render.
    """
    index, name = resolve_class(model, target)
    variants = [("main", config)]
    if compare:
        variants.append(("noisy (tv 0)", replace(plain_config(config), frame_every=0)))
    renders = []
    for label, cfg in variants:
        step_callback = (lambda rec, label=label: callback(label, rec)) if callback is not None else None
        renders.append(render_class_image(model, index, cfg, class_name=name, callback=step_callback))
    return Dream(index, name, [label for label, _ in variants], renders)


__all__ = ["Dream", "dream", "dream_config"]
