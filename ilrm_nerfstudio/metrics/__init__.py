"""Image metrics (PSNR, SSIM, LPIPS) and the trivial baselines that a reconstruction must beat."""

from ilrm_nerfstudio.metrics.baselines import mean_color_baseline, nearest_view_baseline
from ilrm_nerfstudio.metrics.image import image_metrics, psnr, ssim, training_ssim
from ilrm_nerfstudio.metrics.perceptual import PerceptualLoss, load_perceptual

__all__ = [
    "PerceptualLoss",
    "image_metrics",
    "load_perceptual",
    "mean_color_baseline",
    "nearest_view_baseline",
    "psnr",
    "ssim",
    "training_ssim",
]
