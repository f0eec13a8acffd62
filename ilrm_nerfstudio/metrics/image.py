"""PSNR and SSIM as pixelSplat / MVSplat / DepthSplat / iLRM evaluate, and 3DGS's training SSIM.

Scores are per image (Tensor[B]); average over the targets of a scene, then over scenes. PSNR is
computed on images clipped to [0, 1]; `ssim` is skimage's ``structural_similarity`` exactly as the
peers call it. LPIPS is in :mod:`ilrm_nerfstudio.metrics.perceptual`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ilrm_nerfstudio.core.precision import no_autocast
from ilrm_nerfstudio.metrics.perceptual import PerceptualLoss, load_perceptual

__all__ = ["image_metrics", "psnr", "ssim", "training_ssim"]


def _check_images(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.dim() != 4:
        raise ValueError(f"{name}: expected images [B, C, H, W], got shape {tuple(pred.shape)}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (fp16, bf16, ints, fp32) is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# PSNR
# --------------------------------------------------------------------------------------------


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of images [B, C, H, W] clipped to [0, 1] -> Tensor[B].

    Identical images give ``inf`` (as in the peers' ``-10 * mse.log10()``).
    """
    _check_images(pred, target, "psnr")
    dtype = _compute_dtype(pred)
    with no_autocast(pred.device):
        p = pred.to(dtype).clamp(0.0, 1.0)
        t = target.to(dtype).clamp(0.0, 1.0)
        mse = (p - t).square().flatten(1).mean(dim=1)
        return -10.0 * torch.log10(mse)


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------


def _gaussian_kernel1d(sigma: float, radius: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """scipy.ndimage's 1-D Gaussian kernel (computed in float64, normalized to sum 1)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * x * x / (sigma * sigma))
    return (k / k.sum()).to(dtype=dtype, device=device)


def _reflect_indices(n: int, pad: int, device: torch.device) -> Tensor:
    """Indices of scipy.ndimage mode="reflect" (d c b a | a b c d | d c b a) padding by `pad`."""
    idx = torch.arange(-pad, n + pad, device=device)
    idx = torch.remainder(idx, 2 * n)
    return torch.where(idx >= n, 2 * n - 1 - idx, idx)


def ssim(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    use_sample_covariance: bool = True,
    k1: float = 0.01,
    k2: float = 0.03,
    clip: bool = False,
) -> Tensor:
    """Per-image SSIM of images [B, C, H, W] -> Tensor[B] (mean over pixels and channels).

    Equals ``skimage.metrics.structural_similarity(target[b], pred[b], win_size=win_size,
    gaussian_weights=True, sigma=sigma, use_sample_covariance=use_sample_covariance,
    data_range=data_range, channel_axis=0)`` for every b. The defaults are the peers' evaluation
    protocol: skimage's default ``use_sample_covariance=True`` scales the variances by
    ``NP / (NP - 1)``, ``NP = win_size**2``, even with a Gaussian window (False: Wang et al. 2004).
    As skimage: ``scipy.ndimage.gaussian_filter(sigma, truncate=3.5, mode="reflect")`` per channel,
    then a crop of ``(win_size - 1) // 2`` pixels per side before averaging. Differentiable,
    batched, any device; computed in float32 (float64 for float64 inputs) with autocast disabled.
    ``clip=True`` clamps both images to [0, 1] first.
    """
    _check_images(pred, target, "ssim")
    if win_size % 2 != 1:
        raise ValueError(f"ssim: win_size must be odd, got {win_size}")
    if sigma <= 0:
        raise ValueError(f"ssim: sigma must be positive, got {sigma}")
    B, C, H, W = pred.shape
    if min(H, W) < win_size:
        raise ValueError(f"ssim: images {H}x{W} are smaller than win_size={win_size}")

    dtype = _compute_dtype(pred)
    device = pred.device
    radius = int(3.5 * sigma + 0.5)  # skimage: truncate=3.5 (11 taps for sigma=1.5)
    crop = (win_size - 1) // 2  # skimage crops this many pixels on each border before averaging
    pad = max(radius - crop, 0)  # symmetric padding needed so that the cropped region is exact
    start = crop + pad - radius  # offset of the first kept pixel in the "valid" filter output

    with no_autocast(device):
        x = pred.to(dtype)
        y = target.to(dtype)
        if clip:
            x, y = x.clamp(0.0, 1.0), y.clamp(0.0, 1.0)
        stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
        if pad > 0:
            stack = stack.index_select(2, _reflect_indices(H, pad, device))
            stack = stack.index_select(3, _reflect_indices(W, pad, device))
        k = _gaussian_kernel1d(sigma, radius, dtype, device)
        n = stack.shape[1]
        stack = F.conv2d(stack, k.view(1, 1, -1, 1).expand(n, 1, -1, 1), groups=n)
        stack = F.conv2d(stack, k.view(1, 1, 1, -1).expand(n, 1, 1, -1), groups=n)
        h_out, w_out = H - 2 * crop, W - 2 * crop
        stack = stack[:, :, start : start + h_out, start : start + w_out]
        ux, uy, uxx, uyy, uxy = stack.split(C, dim=1)

        npix = win_size * win_size
        cov_norm = npix / (npix - 1.0) if use_sample_covariance else 1.0
        vx = cov_norm * (uxx - ux * ux)
        vy = cov_norm * (uyy - uy * uy)
        vxy = cov_norm * (uxy - ux * uy)
        c1 = (k1 * data_range) ** 2
        c2 = (k2 * data_range) ** 2
        num = (2.0 * ux * uy + c1) * (2.0 * vxy + c2)
        den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
        return (num / den).flatten(1).mean(dim=1)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def image_metrics(
    pred: Tensor,
    target: Tensor,
    perceptual: PerceptualLoss | None = None,
    *,
    with_lpips: bool = True,
    clip: bool = True,
) -> dict[str, Tensor]:
    """Evaluation metrics of images [B, 3, H, W]: {"psnr", "ssim"[, "lpips"]} each Tensor[B].

    ``clip`` clamps both images to [0, 1] first (PSNR always clips; the peers' SSIM/LPIPS see the
    renderer output as is, which for a clamped renderer is the same). "lpips" is present when
    ``with_lpips`` and the network is available (`perceptual`, else the shared one of
    :func:`load_perceptual` on the images' device); otherwise it is omitted after one warning.
    """
    with torch.no_grad():
        if clip:
            pred, target = pred.clamp(0.0, 1.0), target.clamp(0.0, 1.0)
        out = {"psnr": psnr(pred, target), "ssim": ssim(pred, target)}
        if with_lpips:
            if perceptual is None:
                perceptual = load_perceptual(required=False, device=pred.device)
            if perceptual is not None:
                out["lpips"] = perceptual(pred, target)
    return out


# --------------------------------------------------------------------------------------------
# SSIM of 3DGS training
# --------------------------------------------------------------------------------------------


def _gaussian_band(n: int, sigma: float, radius: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[n, n - 2 radius]: column j is the normalized Gaussian window centered on row j + radius
    (a "valid" 1-D convolution as a matrix product)."""
    kernel = _gaussian_kernel1d(sigma, radius, dtype, device)
    band = torch.zeros(n, n - 2 * radius, dtype=dtype, device=device)
    columns = torch.arange(n - 2 * radius, device=device)
    for k in range(2 * radius + 1):
        band[columns + k, columns] = kernel[k]
    return band


def training_ssim(
    pred: Tensor, target: Tensor, sigma: float = 1.5, radius: int = 5, banded: bool | None = None
) -> Tensor:
    """SSIM as 3D Gaussian splatting trains with it (Gaussian window 11, sigma 1.5, valid region,
    data range 1; the same value as pytorch_msssim.ssim), per image [B]. The five window sums are
    one blur of the stacked images: numba loops on a CPU (blur_cpu.py), products with banded
    matrices elsewhere (`banded` True / False forces one); both differentiable. Evaluation uses
    `ssim` (skimage's protocol)."""
    _check_images(pred, target, "training_ssim")
    B, C, height, width = pred.shape
    stacked = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)
    if banded is None:
        banded = pred.device.type != "cpu" or pred.dtype not in (torch.float32, torch.float64)
    if not banded:
        from ilrm_nerfstudio.metrics.blur_cpu import ValidBlur

        sums = ValidBlur.apply(stacked, _gaussian_kernel1d(sigma, radius, pred.dtype, pred.device))
    else:
        rows = _gaussian_band(height, sigma, radius, pred.dtype, pred.device)
        cols = _gaussian_band(width, sigma, radius, pred.dtype, pred.device)
        sums = rows.T @ (stacked @ cols)
    mu_p, mu_t, pp, tt, pt = sums.reshape(B, 5, C, height - 2 * radius, width - 2 * radius).unbind(1)
    var_p, var_t, cov = pp - mu_p * mu_p, tt - mu_t * mu_t, pt - mu_p * mu_t
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p * mu_p + mu_t * mu_t + c1) * (var_p + var_t + c2))
    return value.mean(dim=(1, 2, 3))
