"""A full-attention, pixel-aligned baseline in the style of GS-LRM, built from iLRM's blocks.

All image tokens of all views enter one self-attention (cost grows with (V * H * W)^2) and every
image pixel becomes one Gaussian along its ray (V * H * W Gaussians). It exists for side-by-side
cost and quality comparisons with `ILRM` (benchmarks/bench_scaling.py, docs/scalability.md):
same tokenizer, same pre-norm blocks (QK-norm, bias-free, GELU MLP), same Gaussian head and
decoding, and the same depth as an iLRM of `num_layers` update layers (2 * num_layers blocks).
Only `patch_size`, `width`, `num_heads`, `num_layers`, `mlp_ratio`, `image_ray_origins`, the
Gaussian parametrization, `attention_backend`, `gradient_checkpointing` and `compile` of the
config are used; there are no viewpoint tokens, so `viewpoint_factor` is 1.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ilrm_nerfstudio.core.cameras import pixel_centers
from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.core.network import (
    Block,
    ILRMNetworkConfig,
    Tokenizer,
    decode_gaussians,
    init_weights,
    pixel_features,
    unpatchify,
)
from ilrm_nerfstudio.core.precision import no_autocast


class FullAttentionLRM(nn.Module):
    def __init__(self, config: ILRMNetworkConfig):
        super().__init__()
        config = dataclasses.replace(config, viewpoint_factor=1, uplift=1, cross_attention_groups=1)
        config.validate()
        self.config = config
        p, d = config.patch_size, config.width
        self.image_tokenizer = Tokenizer(config.image_channels, p, d)
        self.blocks = nn.ModuleList(
            Block(d, config.num_heads, config.mlp_ratio, backend=config.attention_backend)
            for _ in range(2 * config.num_layers)
        )
        self.head_norm = nn.LayerNorm(d, bias=False)
        self.head = nn.Linear(d, p * p * sum(config.gaussian_channels.values()), bias=False)
        self.apply(init_weights)
        if config.compile:
            for block in self.blocks:
                block.compile()

    def num_gaussians(self, num_views: int, height: int, width: int) -> int:
        return num_views * height * width

    def forward(self, images: Tensor, c2w: Tensor, K: Tensor) -> Gaussians:
        """images [B, V, 3, H, W] in [0, 1]; c2w [B, V, 4, 4] OpenCV; K [B, V, 3, 3] in pixels.
        Returns batched Gaussians, one per pixel: N = V * H * W."""
        cfg = self.config
        B, V, _, H, W = images.shape
        p = cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} must be divisible by patch_size {p}")
        fp32 = no_autocast(images.device)  # rays and Gaussians: never bf16
        with fp32:
            features = pixel_features(images, c2w, K, cfg.image_ray_origins)  # [B, V, H, W, 9]
        tokens = self.image_tokenizer(features.to(images.dtype))  # [B, V, T, d]
        T, d = tokens.shape[-2:]
        x = tokens.reshape(B, V * T, d)  # every token of every view in one sequence
        for block in self.blocks:
            if cfg.gradient_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        raw = self.head(self.head_norm(x)).reshape(B, V, T, -1)  # [B, V, T, p*p*c]
        raw = unpatchify(raw, p, H // p, W // p).float()  # [B, V, H, W, c]
        with fp32:
            grid_xy = pixel_centers(H, W, images.device).expand(B, V, H, W, 2)
            return decode_gaussians(cfg, raw, c2w, K.float(), grid_xy, images.float().permute(0, 1, 3, 4, 2))
