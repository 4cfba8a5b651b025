"""Image parameterisations: what the optimiser actually changes when it grows an image.

Each parameterisation is an ``nn.Module`` whose ``forward()`` returns images of shape
[N, 3, H, W] with pixels in [0, 1] (a sigmoid keeps them there, so no clipping is needed and the
gradient never dies at the bounds).

* :class:`PixelParam`: one free value per pixel (the lesson's version; it drifts to
  high-frequency noise unless something stops it).
* :class:`FourierParam`: the image is the inverse FFT of a spectrum scaled by 1/frequency, with
  colours decorrelated (Lucid / lucent). Every frequency learns at about the same speed, so
  large smooth structures appear first.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from transferkit.core.registry import Registry

# Square root of the colour covariance of ImageNet photos (Lucid's
# ``color_correlation_svd_sqrt``), so that the three learned channels are roughly uncorrelated
# and the optimiser does not have to learn that real colours move together.
_COLOR_CORRELATION_SVD_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)
_MAX_NORM_SVD_SQRT = float(np.max(np.linalg.norm(_COLOR_CORRELATION_SVD_SQRT, axis=0)))
COLOR_CORRELATION = torch.from_numpy(_COLOR_CORRELATION_SVD_SQRT / _MAX_NORM_SVD_SQRT)

PARAMETERISATIONS: Registry[type] = Registry("parameterisation")


def _randn(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float32)


class ImageParam(nn.Module):
    """Base class: ``forward()`` returns images [N, 3, H, W] with pixels in [0, 1]."""

    def __init__(self, size: int | tuple[int, int], batch: int = 1) -> None:
        super().__init__()
        h, w = (size, size) if isinstance(size, int) else size
        if h < 2 or w < 2 or batch < 1:
            raise ValueError(f"image size must be at least 2x2 and batch >= 1 (got {h}x{w}, batch {batch})")
        self.height, self.width, self.batch = int(h), int(w), int(batch)

    def forward(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@PARAMETERISATIONS.register("pixel")
class PixelParam(ImageParam):
    """One free parameter per pixel and channel; pixels = sigmoid(parameter).

    Starts from random noise around mid grey: pixel = sigmoid(``init_std`` * N(0, 1)).

    Args:
        size: image side (int) or (height, width).
        batch: how many images to grow at once.
        generator: seeds the starting noise.
        init_std: spread of the starting noise in logit space (1.0 spans most of [0, 1]).
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        batch: int = 1,
        *,
        generator: torch.Generator | None = None,
        init_std: float = 1.0,
    ) -> None:
        super().__init__(size, batch)
        self.logits = nn.Parameter(_randn((self.batch, 3, self.height, self.width), generator) * init_std)

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Frequency magnitude of each coefficient of a real 2-D FFT of an h x w image."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def decorrelate_colors(t: torch.Tensor) -> torch.Tensor:
    """Map decorrelated channels [N, 3, H, W] to RGB-correlated ones (before the sigmoid)."""
    matrix = COLOR_CORRELATION.to(dtype=t.dtype, device=t.device)
    return torch.einsum("nchw,dc->ndhw", t, matrix)


@PARAMETERISATIONS.register("fourier")
class FourierParam(ImageParam):
    """Image = sigmoid(decorrelate(irfft(spectrum / frequency))) (Lucid's ``fft_image``).

    Args:
        size: image side (int) or (height, width).
        batch: how many images to grow at once.
        generator: seeds the starting spectrum.
        init_std: spread of the starting spectrum (Lucid uses 0.01: a nearly grey start with a
            little coloured noise).
        decay_power: the 1/frequency**decay_power scaling; 1 equalises learning speed across
            frequencies for natural-image statistics.
        decorrelate: apply the ImageNet colour decorrelation.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        batch: int = 1,
        *,
        generator: torch.Generator | None = None,
        init_std: float = 0.01,
        decay_power: float = 1.0,
        decorrelate: bool = True,
    ) -> None:
        super().__init__(size, batch)
        freqs = rfft2d_freqs(self.height, self.width)
        self.spectrum = nn.Parameter(_randn((self.batch, 3) + freqs.shape + (2,), generator) * init_std)
        scale = 1.0 / np.maximum(freqs, 1.0 / max(self.height, self.width)) ** decay_power
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32)[None, None, :, :, None], persistent=False)
        self.decorrelate = bool(decorrelate)

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex((self.scale * self.spectrum).contiguous())
        image = torch.fft.irfftn(spectrum, s=(self.height, self.width), norm="ortho")
        # Lucid's "magic" 4: keeps the pre-sigmoid values in a range where sigmoid is not flat.
        image = image / 4.0
        if self.decorrelate:
            image = decorrelate_colors(image)
        return torch.sigmoid(image)


def create_param(
    kind: str,
    size: int | tuple[int, int],
    *,
    batch: int = 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    **options,
) -> ImageParam:
    """Build a registered parameterisation ("pixel" or "fourier").

    Args:
        kind: registered name; ``PARAMETERISATIONS.list()`` shows them.
        size: image side or (height, width).
        batch: images grown at once.
        seed: seeds a fresh generator when ``generator`` is not given.
        generator: random source for the starting point.
        **options: passed to the class (``init_std``, ``decorrelate``, ...).
    """
    cls = PARAMETERISATIONS.get(kind)
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    return cls(size, batch, generator=generator, **options)


def inverse_sigmoid(pixels: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """The pre-sigmoid values that give ``pixels`` (clamped away from 0 and 1)."""
    p = pixels.clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


__all__ = [
    "COLOR_CORRELATION",
    "FourierParam",
    "ImageParam",
    "PARAMETERISATIONS",
    "PixelParam",
    "create_param",
    "decorrelate_colors",
    "inverse_sigmoid",
    "rfft2d_freqs",
]

