"""Image-quality numbers for a perturbation: PSNR and SSIM (pixels in [0, 1]).

SSIM follows Wang et al. (2004) exactly as scikit-image computes it with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1``: an 11x11 Gaussian
window, K1 = 0.01, K2 = 0.03, the SSIM map averaged over pixels at least 5 px from the border
(scikit-image crops that border, so no padding rule is needed) and then over channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_K1, _K2 = 0.01, 0.03
_SIGMA = 1.5
_RADIUS = 5  # skimage asks scipy for truncate=3.5: int(3.5 * 1.5 + 0.5) = 5, an 11x11 window


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        return x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected an image [C,H,W] or a batch [N,C,H,W], got shape {tuple(x.shape)}")
    return x


def psnr(reference: torch.Tensor, image: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (``inf`` where the images are identical).

    Args:
        reference: [C,H,W] or [N,C,H,W] pixels in [0, 1].
        image: same shape as ``reference``.
        data_range: the pixel range (1 for [0, 1] images).

    Returns:
        A tensor [N] (float64) of PSNR values.
    """
    ref, img = _as_batch(reference).double(), _as_batch(image).double()
    if ref.shape != img.shape:
        raise ValueError(f"shapes differ: {tuple(ref.shape)} vs {tuple(img.shape)}")
    mse = (ref - img).pow(2).flatten(1).mean(dim=1)
    return torch.where(mse > 0, 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-300)), torch.full_like(mse, math.inf))


def _gaussian_kernel(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(-_RADIUS, _RADIUS + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (coords / _SIGMA) ** 2)
    return k / k.sum()


def _filter_valid(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter keeping only the 'valid' part (the border skimage crops)."""
    c = x.shape[1]
    kh = kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    return F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)


def ssim(reference: torch.Tensor, image: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image (1 = identical), averaged over channels.

    Args:
        reference: [C,H,W] or [N,C,H,W] pixels in [0, 1]; both sides at least 11 px.
        image: same shape as ``reference``.
        data_range: the pixel range (1 for [0, 1] images).

    Returns:
        A tensor [N] (float64) of SSIM values; matches ``skimage.metrics.structural_similarity``
        with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False`` to about 1e-12.
    """
    ref, img = _as_batch(reference).double(), _as_batch(image).double()
    if ref.shape != img.shape:
        raise ValueError(f"shapes differ: {tuple(ref.shape)} vs {tuple(img.shape)}")
    if min(ref.shape[-2:]) < 2 * _RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least {2 * _RADIUS + 1} px per side, got {tuple(ref.shape[-2:])}")
    kernel = _gaussian_kernel(ref.dtype, ref.device)
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    ux, uy = _filter_valid(ref, kernel), _filter_valid(img, kernel)
    uxx, uyy, uxy = _filter_valid(ref * ref, kernel), _filter_valid(img * img, kernel), _filter_valid(ref * img, kernel)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3)).mean(dim=1)
