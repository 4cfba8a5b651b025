"""Random transformations for transformation robustness (jitter, scale, rotate).

An image that only fools the network at one exact pixel alignment is adversarial noise; asking
it to work under small random shifts, zooms and rotations pushes the optimiser towards
features that survive them (Lucid's "transformation robustness").

Every random draw takes an explicit ``torch.Generator``, so a seeded render is reproducible.
Jitter, scale and rotation are all affine maps, so :class:`RandomAffine` composes them into a
single ``grid_sample`` (one interpolation instead of three, and no growing padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _apply_theta(images: torch.Tensor, theta: torch.Tensor, out_size: tuple[int, int] | None) -> torch.Tensor:
    n, c, h, w = images.shape
    oh, ow = out_size if out_size is not None else (h, w)
    grid = F.affine_grid(theta.to(images.dtype), [n, c, oh, ow], align_corners=False)
    # Reflection keeps the borders image-like instead of inventing a grey frame to optimise.
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _theta(n: int, *, scale: torch.Tensor, angle_rad: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor) -> torch.Tensor:
    # affine_grid maps output coords to input coords: zooming in by s samples a 1/s window.
    cos, sin = torch.cos(angle_rad) / scale, torch.sin(angle_rad) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos, -sin, shift_x
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin, cos, shift_y
    return theta


def jitter(images: torch.Tensor, pixels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by a random whole number of pixels in [-pixels, pixels] (reflected border)."""
    n, _, h, w = images.shape
    dx = torch.randint(-pixels, pixels + 1, (n,), generator=generator).float() * 2 / w
    dy = torch.randint(-pixels, pixels + 1, (n,), generator=generator).float() * 2 / h
    one, zero = torch.ones(n), torch.zeros(n)
    return _apply_theta(images, _theta(n, scale=one, angle_rad=zero, shift_x=dx, shift_y=dy), None)


def random_scale(images: torch.Tensor, low: float, high: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zoom each image by a random factor in [low, high] about its centre, keeping its size."""
    n = images.shape[0]
    zero = torch.zeros(n)
    return _apply_theta(images, _theta(n, scale=_uniform(n, low, high, generator), angle_rad=zero, shift_x=zero, shift_y=zero), None)


def random_rotate(images: torch.Tensor, degrees: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each image by a random angle in [-degrees, degrees] about its centre."""
    n = images.shape[0]
    zero, one = torch.zeros(n), torch.ones(n)
    angle = _uniform(n, -degrees, degrees, generator) * math.pi / 180
    return _apply_theta(images, _theta(n, scale=one, angle_rad=angle, shift_x=zero, shift_y=zero), None)


@dataclass(frozen=True)
class RandomAffine:
    """Jitter + scale + rotate in one resampling.

    Attributes:
        jitter: largest shift in pixels (of the source image).
        scale: (low, high) zoom range.
        degrees: largest rotation in degrees.
    """

    jitter: int = 16
    scale: tuple[float, float] = (0.9, 1.1)
    degrees: float = 10.0

    def __call__(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        views: int = 1,
        out_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``views`` random views of each image, [N * views, C, *out_size] (image-major order)."""
        x = images.repeat_interleave(views, dim=0) if views > 1 else images
        n, _, h, w = x.shape
        scale = _uniform(n, *self.scale, generator)
        angle = _uniform(n, -self.degrees, self.degrees, generator) * math.pi / 180
        dx = _uniform(n, -self.jitter, self.jitter, generator) * 2 / w
        dy = _uniform(n, -self.jitter, self.jitter, generator) * 2 / h
        return _apply_theta(x, _theta(n, scale=scale, angle_rad=angle, shift_x=dx, shift_y=dy), out_size)


def resize_to(images: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (used when the rendered size differs from the network's input size)."""
    if tuple(images.shape[-2:]) == tuple(out_size):
        return images
    return F.interpolate(images, size=out_size, mode="bilinear", align_corners=False, antialias=True)


__all__ = ["RandomAffine", "jitter", "random_rotate", "random_scale", "resize_to"]
