"""The iLRM network: posed images -> 3D Gaussians in one forward pass (pure PyTorch).

Read top to bottom:
  1. tokenizers turn rays (and pixels) into tokens,
  2. update layers refine the viewpoint tokens: per-view cross-attention to that view's image
     tokens, then self-attention over the viewpoint tokens of all views,
  3. the Gaussian head decodes every viewpoint token into p x p Gaussians, one per pixel of the
     viewpoint grid, placed along that pixel's ray.

Shapes: B scenes, V context views, images H x W, patch size p, viewpoint grid Hv x Wv =
(H / f) x (W / f) for the viewpoint factor f (1 = "F", 2 = "H"), width d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .cameras import pixel_centers, plucker, rays_through, scale_intrinsics
from .gaussians import Gaussians

SH_C0 = 0.28209479177387814  # zeroth spherical-harmonics basis constant


@dataclass
class ILRMNetworkConfig:
    patch_size: int = 8
    width: int = 768
    num_heads: int = 12
    num_layers: int = 12
    mlp_ratio: float = 4.0
    viewpoint_factor: int = 2
    """Image resolution / viewpoint-grid resolution: 1 = full ("F"), 2 = half ("H")."""
    uplift: int | None = None
    """Token uplifting factor k; None = 2 when the viewpoint grid is coarser than the image, else 1."""
    image_ray_origins: bool = False
    """Image tokens from 12 channels (rgb, Plücker, ray origin) instead of 9 (rgb, Plücker)."""
    sh_degree: int = 0
    gaussian_param: str = "bounded"
    """"bounded": log-uniform distance in [near, far], scales relative to the pixel footprint
    (well conditioned for training from scratch); "published": the public iLRM constants."""
    near: float = 0.05
    far: float = 100.0
    pixel_offset: bool = True
    """Let each Gaussian move within its viewpoint-grid pixel before being cast along the ray."""
    gradient_checkpointing: bool = False

    @property
    def uplift_factor(self) -> int:
        if self.uplift is not None:
            return self.uplift
        return 2 if self.viewpoint_factor > 1 else 1

    @property
    def image_channels(self) -> int:
        return 12 if self.image_ray_origins else 9

    @property
    def gaussian_channels(self) -> dict[str, int]:
        """Channels the head predicts per Gaussian, in order."""
        channels = {"distance": 3 if self.gaussian_param == "published" else 1}
        if self.pixel_offset:
            channels["offset"] = 2
        channels.update(scale=3, rotation=4, opacity=1, sh=3 * (self.sh_degree + 1) ** 2)
        return channels


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def patchify(x: Tensor, p: int) -> Tensor:
    """[..., H, W, C] -> [..., (H/p)*(W/p), p*p*C], patches in row-major order."""
    *lead, H, W, C = x.shape
    x = x.reshape(*lead, H // p, p, W // p, p, C).transpose(-4, -3)
    return x.reshape(*lead, (H // p) * (W // p), p * p * C)


def unpatchify(x: Tensor, p: int, h: int, w: int) -> Tensor:
    """[..., h*w, p*p*C] -> [..., h*p, w*p, C] (inverse of `patchify`)."""
    *lead, _, D = x.shape
    C = D // (p * p)
    x = x.reshape(*lead, h, w, p, p, C).transpose(-4, -3)
    return x.reshape(*lead, h * p, w * p, C)


class QKNorm(nn.Module):
    """Learnable RMSNorm over each head's channels, computed in fp32 for bf16 stability."""

    def __init__(self, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with QK-norm and bias-free projections.

    With `uplift` k > 1 every query token is split into k query tokens of width d (the query
    projection is d -> k*d) and the k outputs are merged back (k*d -> d): coarse viewpoint
    tokens read fine image tokens with k times as many queries.
    """

    def __init__(self, dim: int, num_heads: int, uplift: int = 1):
        super().__init__()
        self.num_heads, self.uplift = num_heads, uplift
        self.head_dim = dim // num_heads
        self.to_q = nn.Linear(dim, uplift * dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(uplift * dim, dim, bias=False)
        self.q_norm, self.k_norm = QKNorm(self.head_dim), QKNorm(self.head_dim)

    def split_heads(self, x: Tensor) -> Tensor:  # [N, T, d] -> [N, heads, T, head_dim]
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, queries: Tensor, keys_values: Tensor) -> Tensor:
        N, Tq, d = queries.shape
        q = self.to_q(queries).reshape(N, Tq * self.uplift, d)  # uplift: k tokens per query
        q = self.q_norm(self.split_heads(q))
        k = self.k_norm(self.split_heads(self.to_k(keys_values)))
        v = self.split_heads(self.to_v(keys_values))
        out = F.scaled_dot_product_attention(q, k, v)  # [N, heads, Tq*k, head_dim]
        out = out.transpose(1, 2).reshape(N, Tq, self.uplift * d)  # merge the k outputs back
        return self.to_out(out)


class MLP(nn.Sequential):
    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden, bias=False), nn.GELU(), nn.Linear(hidden, dim, bias=False))


class Block(nn.Module):
    """Pre-norm residual block. Self-attention when called with one argument; cross-attention
    (only the query side normalized) when given `context` tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, uplift: int = 1):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim, bias=False)
        self.attn = Attention(dim, num_heads, uplift)
        self.norm_mlp = nn.LayerNorm(dim, bias=False)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.norm_attn(x)
        x = x + self.attn(h, h if context is None else context)
        return x + self.mlp(self.norm_mlp(x))


class UpdateLayer(nn.Module):
    """One refinement step V(l) = V(l-1) + F(V(l-1), S): each view's viewpoint tokens read that
    view's image tokens, then all viewpoint tokens of a scene attend to each other."""

    def __init__(self, config: ILRMNetworkConfig):
        super().__init__()
        d, heads, ratio = config.width, config.num_heads, config.mlp_ratio
        self.cross = Block(d, heads, ratio, uplift=config.uplift_factor)
        self.self_attn = Block(d, heads, ratio)

    def forward(self, viewpoint_tokens: Tensor, image_tokens: Tensor) -> Tensor:
        B, V, Tv, d = viewpoint_tokens.shape
        x = self.cross(viewpoint_tokens.flatten(0, 1), image_tokens.flatten(0, 1))  # [B*V, Tv, d]
        x = self.self_attn(x.reshape(B, V * Tv, d))  # [B, V*Tv, d]
        return x.reshape(B, V, Tv, d)


class Tokenizer(nn.Sequential):
    """p x p patches of per-pixel features -> Linear -> LayerNorm."""

    def __init__(self, channels: int, patch_size: int, dim: int):
        super().__init__(nn.Linear(channels * patch_size**2, dim, bias=False), nn.LayerNorm(dim, bias=False))
        self.patch_size = patch_size

    def forward(self, features: Tensor) -> Tensor:  # [..., H, W, C] -> [..., T, d]
        return super().forward(patchify(features, self.patch_size))


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


class ILRM(nn.Module):
    def __init__(self, config: ILRMNetworkConfig):
        super().__init__()
        if config.width % config.num_heads:
            raise ValueError(f"width {config.width} must be divisible by num_heads {config.num_heads}")
        if config.gaussian_param not in ("bounded", "published"):
            raise ValueError(f"gaussian_param must be 'bounded' or 'published', got {config.gaussian_param!r}")
        self.config = config
        p, d = config.patch_size, config.width
        self.viewpoint_tokenizer = Tokenizer(6, p, d)
        self.image_tokenizer = Tokenizer(config.image_channels, p, d)
        self.layers = nn.ModuleList(UpdateLayer(config) for _ in range(config.num_layers))
        self.head_norm = nn.LayerNorm(d, bias=False)
        self.head = nn.Linear(d, p * p * sum(config.gaussian_channels.values()), bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_gaussians(self, num_views: int, height: int, width: int) -> int:
        f = self.config.viewpoint_factor
        return num_views * (height // f) * (width // f)

    def check_inputs(self, images: Tensor, c2w: Tensor, K: Tensor) -> None:
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, V, 3, H, W], got {list(images.shape)}")
        B, V, _, H, W = images.shape
        if c2w.shape != (B, V, 4, 4) or K.shape != (B, V, 3, 3):
            raise ValueError(f"for images {list(images.shape)} expected c2w [{B}, {V}, 4, 4] and K [{B}, {V}, 3, 3], got {list(c2w.shape)} and {list(K.shape)}")
        multiple = self.config.patch_size * self.config.viewpoint_factor
        if H % multiple or W % multiple:
            raise ValueError(
                f"image size {H}x{W} must be divisible by patch_size x viewpoint_factor = "
                f"{self.config.patch_size} x {self.config.viewpoint_factor} = {multiple}; resize or crop the images"
            )
        if not (torch.isfinite(c2w).all() and torch.isfinite(K).all()):
            raise ValueError("camera poses or intrinsics contain NaN or infinite values")

    def forward(self, images: Tensor, c2w: Tensor, K: Tensor) -> Gaussians:
        """images [B, V, 3, H, W] in [0, 1]; c2w [B, V, 4, 4] OpenCV; K [B, V, 3, 3] in pixels.

        Returns batched Gaussians: every field has a leading [B] and N = V * Hv * Wv Gaussians.
        """
        self.check_inputs(images, c2w, K)
        cfg = self.config
        B, V, _, H, W = images.shape
        f, p = cfg.viewpoint_factor, cfg.patch_size
        Hv, Wv = H // f, W // f

        # Image tokens: computed once, re-read by every layer.
        ray_o, ray_d = rays_through(c2w, K, pixel_centers(H, W, images.device).expand(B, V, H, W, 2))
        pixels = [2 * images.permute(0, 1, 3, 4, 2) - 1, plucker(ray_o, ray_d)]  # [B, V, H, W, 3 + 6]
        if cfg.image_ray_origins:
            pixels.append(ray_o)
        image_tokens = self.image_tokenizer(torch.cat(pixels, dim=-1).to(images.dtype))  # [B, V, Ti, d]

        # Viewpoint tokens: from the rays of the (coarser) viewpoint grid only, not from pixels.
        K_grid = scale_intrinsics(K, 1.0 / f)
        grid_xy = pixel_centers(Hv, Wv, images.device).expand(B, V, Hv, Wv, 2)
        grid_o, grid_d = rays_through(c2w, K_grid, grid_xy)
        viewpoint_tokens = self.viewpoint_tokenizer(plucker(grid_o, grid_d))  # [B, V, Tv, d]

        for layer in self.layers:
            if cfg.gradient_checkpointing and self.training:
                viewpoint_tokens = checkpoint(layer, viewpoint_tokens, image_tokens, use_reentrant=False)
            else:
                viewpoint_tokens = layer(viewpoint_tokens, image_tokens)

        raw = self.head(self.head_norm(viewpoint_tokens))  # [B, V, Tv, p*p*c]
        raw = unpatchify(raw, p, Hv // p, Wv // p).float()  # [B, V, Hv, Wv, c]
        return self.decode_gaussians(raw, c2w, K_grid, grid_xy)

    def decode_gaussians(self, raw: Tensor, c2w: Tensor, K_grid: Tensor, grid_xy: Tensor) -> Gaussians:
        """Raw head output [B, V, Hv, Wv, c] -> Gaussians placed along the viewpoint-grid rays."""
        cfg = self.config
        parts = dict(zip(cfg.gaussian_channels, raw.split(list(cfg.gaussian_channels.values()), dim=-1)))
        if cfg.pixel_offset:
            grid_xy = grid_xy + torch.sigmoid(parts["offset"]) - 0.5
        ray_o, ray_d = rays_through(c2w, K_grid, grid_xy)  # [B, V, Hv, Wv, 3]

        if cfg.gaussian_param == "published":
            distance = torch.sigmoid(parts["distance"].mean(-1, keepdim=True)) * 500.0
            scales = torch.exp(torch.clamp_max(parts["scale"] - 6.9, -1.2))
            opacities = torch.sigmoid(parts["opacity"] - 2.0)
        else:
            log_near, log_far = math.log(cfg.near), math.log(cfg.far)
            distance = torch.exp(log_near + (log_far - log_near) * torch.sigmoid(parts["distance"]))
            # One viewpoint-grid pixel seen at that distance; scales live in [0.1, 4] of it.
            focal = K_grid[..., 0, 0, None, None, None].float()
            footprint = distance / focal
            scales = footprint * (0.1 + 3.9 * torch.sigmoid(parts["scale"]))
            opacities = torch.sigmoid(parts["opacity"])

        means = ray_o + distance * ray_d
        quats = parts["rotation"]
        if cfg.gaussian_param == "bounded":  # start near the identity rotation
            quats = quats + torch.tensor([1.0, 0.0, 0.0, 0.0], device=raw.device)
        quats = F.normalize(quats, dim=-1)
        sh = parts["sh"].unflatten(-1, ((cfg.sh_degree + 1) ** 2, 3))
        B = raw.shape[0]
        return Gaussians(
            means=means.reshape(B, -1, 3),
            scales=scales.reshape(B, -1, 3),
            quats=quats.reshape(B, -1, 4),
            opacities=opacities.reshape(B, -1),
            sh=sh.reshape(B, -1, *sh.shape[-2:]),
        )
