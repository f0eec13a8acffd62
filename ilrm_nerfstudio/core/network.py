"""The iLRM network: posed images -> 3D Gaussians in one forward pass (pure PyTorch).

Read top to bottom:
  1. tokenizers turn rays (and pixels) into tokens,
  2. update layers refine the viewpoint tokens: per-view cross-attention to that view's image
     tokens, then self-attention over the viewpoint tokens of all views,
  3. the Gaussian head decodes every viewpoint token into p x p Gaussians, one per pixel of the
     viewpoint grid, placed along that pixel's ray.

Shapes: B scenes, V context views, images H x W, patch size p, viewpoint grid Hv x Wv =
(H / f) x (W / f) for the viewpoint factor f (1 = "F", 2 = "H"), width d. Per view there are
Tv = (Hv / p) * (Wv / p) viewpoint tokens and Ti image tokens (Ti = f^2 Tv; Ti = Tv without
resolution decoupling).

Mini-batch cross-attention (`cross_attention_groups` G > 1) splits each view's tokens into G
matching subsets (see `TokenGroups`); the ablation switches of paper Table 7 are
`iterative_refinement`, `resolution_decoupling` and `uplift`. docs/scalability.md has the
measurements behind the defaults.

Published-model options (`ilrm_nerfstudio/core/published.py` loads the authors' checkpoints with them;
docs/published.md): the per-pixel channel orders of the tokenizers (`viewpoint_features`,
`image_features`), the layout of uplifted queries (`uplift_layout`) and the order of the head's
channels (`head_channel_order`). Their defaults are this package's own layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ilrm_nerfstudio.core.cameras import pixel_centers, rays_through, scale_intrinsics
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.core.precision import no_autocast
from ilrm_nerfstudio.core.sh import rgb_to_sh0

# Per-pixel feature channels a tokenizer can read: "rgb" = 2 * rgb - 1 (3), and of the pixel's ray
# "origin" o (3), "direction" d (3, unit) and "moment" o x d (3); (moment, direction) = Plücker.
PIXEL_FEATURES = ("rgb", "origin", "direction", "moment")
PixelFeature = Literal["rgb", "origin", "direction", "moment"]
RayFeature = Literal["origin", "direction", "moment"]


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
    """Token uplifting factor k; None = 2 when the viewpoint tokens are coarser than the image
    tokens, else 1. Set 1 for the "w/o token uplifting" ablation (paper Table 7)."""
    image_ray_origins: bool = False
    """Image tokens from 12 channels (rgb, Plücker, ray origin) instead of 9 (rgb, Plücker).
    Ignored when `image_features` is given."""
    viewpoint_features: tuple[RayFeature, ...] = ("moment", "direction")
    """Per-pixel channels of the viewpoint rays, in this order (3 each): "origin", "direction",
    "moment" (o x d). Default: Plücker (o x d, d), as the published RE10K model; the published DL3DV
    model reads (origin, direction, moment)."""
    image_features: tuple[PixelFeature, ...] | None = None
    """Per-pixel channels of the image tokens, in this order: "rgb" (2 rgb - 1) and the ray
    channels above. None: (rgb, moment, direction), then origin with `image_ray_origins`. The
    published DL3DV model reads (origin, direction, moment, rgb)."""
    uplift_layout: Literal["blocks", "interleaved"] = "blocks"
    """How the k*d query projection of token uplifting is cut into k query tokens (and the k
    outputs merged back, the same way): "blocks": token s takes channels [s d, (s+1) d);
    "interleaved" (the published DL3DV model): channels in (head, head channel, s) order with s
    fastest, i.e. token s takes channels s, s + k, s + 2k, ..."""
    head_channel_order: tuple[str, ...] | None = None
    """Order of the Gaussian head's per-pixel channel groups (names of `gaussian_channels`:
    distance, offset, scale, rotation, opacity, sh); None: that default order. Published RE10K:
    (distance, sh, scale, rotation, opacity); DL3DV: (offset, distance, sh, scale, rotation,
    opacity)."""
    sh_degree: int = 0
    gaussian_param: str = "bounded"
    """"bounded": log-uniform distance in [near, far], scales relative to the pixel footprint
    (well conditioned for training from scratch); "published": the public iLRM constants."""
    near: float = 0.05
    far: float = 100.0
    pixel_offset: bool = True
    """Let each Gaussian move within its viewpoint-grid pixel before being cast along the ray."""
    color_skip: bool = False
    """Add each viewpoint-grid pixel's own color (its view's image area-averaged onto the grid) to
    the predicted base color, so the head learns a correction instead of fetching every color
    through attention. Not in the paper; on small CPU budgets it is what makes training converge
    in minutes (docs/training.md)."""
    gradient_checkpointing: bool = False

    # -- scalability (docs/scalability.md) ------------------------------------------------------
    cross_attention_groups: Literal[1, 2, 4] = 1
    """Mini-batch cross-attention: each view's viewpoint tokens and image tokens are split into G
    matching subsets and each viewpoint subset attends only to its paired image subset (1 = full,
    2 = half, 4 = quarter; subsets are 2x1 / 2x2 over the token grid's rows x columns). Divides the
    cross-attention score matrices by G; token projections and MLPs cost the same. Applies in
    training and inference. Default 1: the published model, and with fused attention kernels the
    saving is small (see docs/scalability.md); 4 with "strided" and rotation is the choice for
    large-view training when attention scores dominate time or memory."""
    cross_attention_split: Literal["strided", "spatial"] = "strided"
    """How a token grid is split into the G subsets. "spatial": contiguous blocks (subset (a, b) =
    rows [a h/gh, (a+1) h/gh) x columns [b w/gw, (b+1) w/gw)); a viewpoint block and the image block
    of the same index cover the same image region. "strided": interleaved lattices (subset (a, b) =
    rows r with r % gh == a, columns c with c % gw == b); every subset spans the whole image."""
    cross_attention_rotation: bool = True
    """Rotate the pairing across layers: in layer l viewpoint subset g reads image subset
    (g + l) mod G, so over G consecutive layers every viewpoint token reads every image token of its
    view (with "strided" and f = 2, one of the 2x2 image tokens under it in each layer)."""
    iterative_refinement: bool = True
    """False: the "w/o iterative refinement" ablation: only the first layer cross-attends to the
    image tokens; the other layers replace their cross-attention by a second self-attention block
    (same number of blocks)."""
    resolution_decoupling: bool = True
    """False: the "w/o resolution decoupling" ablation: image tokens are built at the viewpoint
    resolution (pixels area-averaged onto the viewpoint grid, rays through its pixel centers)."""
    attention_backend: Literal["auto", "flash", "efficient", "cudnn", "math"] = "auto"
    """PyTorch SDPA kernel: "auto" lets PyTorch choose; "flash" needs CUDA with bf16/fp16 (on CPU it
    selects PyTorch's fused CPU kernel); "math" materializes the attention matrix."""
    compile: bool = False
    """torch.compile every update layer (parameter names unchanged). Worth it on CUDA; the first
    forward compiles for tens of seconds."""

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (one viewpoint token per multiple x multiple)."""
        return self.patch_size * self.viewpoint_factor

    def check_image_size(self, height: int, width: int, what: str = "image size") -> None:
        if height % self.size_multiple or width % self.size_multiple:
            raise ILRMError(
                f"{what} {height}x{width} must be divisible by patch_size x viewpoint_factor = "
                f"{self.patch_size} x {self.viewpoint_factor} = {self.size_multiple}; resize or crop the images"
            )

    @property
    def image_grid_scale(self) -> int:
        """Image tokens per viewpoint token along each axis."""
        return self.viewpoint_factor if self.resolution_decoupling else 1

    @property
    def uplift_factor(self) -> int:
        if self.uplift is not None:
            return self.uplift
        return 2 if self.image_grid_scale > 1 else 1

    @property
    def image_feature_order(self) -> tuple[str, ...]:
        """The image tokens' per-pixel channel groups, in order."""
        if self.image_features is not None:
            return tuple(self.image_features)
        return ("rgb", "moment", "direction") + (("origin",) if self.image_ray_origins else ())

    @property
    def image_channels(self) -> int:
        return 3 * len(self.image_feature_order)

    @property
    def viewpoint_channels(self) -> int:
        return 3 * len(self.viewpoint_features)

    @property
    def gaussian_channels(self) -> dict[str, int]:
        """Channels the head predicts per Gaussian, in order."""
        channels = {"distance": 3 if self.gaussian_param == "published" else 1}
        if self.pixel_offset:
            channels["offset"] = 2
        channels.update(scale=3, rotation=4, opacity=1, sh=3 * (self.sh_degree + 1) ** 2)
        if self.head_channel_order is not None:
            channels = {name: channels[name] for name in self.head_channel_order}
        return channels

    def check(self, prefix: str) -> None:
        """Impossible values -> ILRMError naming the option (`prefix` + the field, e.g.
        "--pipeline.model.network."): sizes positive, near < far, then `validate`."""
        for name in ("patch_size", "width", "num_heads", "num_layers", "viewpoint_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ILRMError(f"{prefix}{name.replace('_', '-')} {value}: must be a whole number, at least 1")
        if self.uplift is not None and self.uplift < 1:
            raise ILRMError(f"{prefix}uplift {self.uplift}: must be at least 1 (or None: automatic)")
        if not (math.isfinite(self.mlp_ratio) and self.mlp_ratio > 0):
            raise ILRMError(f"{prefix}mlp-ratio {self.mlp_ratio}: must be positive")
        if not (math.isfinite(self.near) and math.isfinite(self.far) and 0 < self.near < self.far):
            raise ILRMError(f"{prefix}near {self.near}, far {self.far}: need 0 < near < far")
        try:
            self.validate()
        except ValueError as error:  # its messages name the field
            raise ILRMError(f"{prefix}*: {error}") from None

    def validate(self) -> None:
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} must be divisible by num_heads {self.num_heads}")
        if self.gaussian_param not in ("bounded", "published"):
            raise ValueError(f"gaussian_param must be 'bounded' or 'published', got {self.gaussian_param!r}")
        if self.cross_attention_groups not in TokenGroups.LAYOUTS:
            raise ValueError(f"cross_attention_groups must be 1, 2 or 4, got {self.cross_attention_groups}")
        if self.cross_attention_split not in ("strided", "spatial"):
            raise ValueError(
                f"cross_attention_split must be 'strided' or 'spatial', got {self.cross_attention_split!r}"
            )
        if self.attention_backend not in SDPA_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {sorted(SDPA_BACKENDS)}, got {self.attention_backend!r}"
            )
        for field_name, names, allowed in (
            ("viewpoint_features", tuple(self.viewpoint_features), PIXEL_FEATURES[1:]),
            ("image_features", self.image_feature_order, PIXEL_FEATURES),
        ):
            if not names or len(set(names)) != len(names) or not set(names) <= set(allowed):
                raise ValueError(f"{field_name} must be distinct names out of {allowed}, got {names}")
        if self.uplift_layout not in ("blocks", "interleaved"):
            raise ValueError(f"uplift_layout must be 'blocks' or 'interleaved', got {self.uplift_layout!r}")
        if self.head_channel_order is not None:
            expected = dataclasses.replace(self, head_channel_order=None).gaussian_channels
            if sorted(self.head_channel_order) != sorted(expected):
                raise ValueError(
                    f"head_channel_order must order exactly {tuple(expected)}, got {tuple(self.head_channel_order)}"
                )


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


SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


def sdpa_backend(name: str):
    """Context manager restricting `F.scaled_dot_product_attention` to one kernel ("auto": any)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return sdpa_kernel(kernels[name])


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
    tokens read fine image tokens with k times as many queries. `backend` picks the SDPA kernel
    (inside forward, so that checkpointed recomputation uses the same kernel).
    """

    def __init__(self, dim: int, num_heads: int, uplift: int = 1, backend: str = "auto", uplift_layout: str = "blocks"):
        super().__init__()
        self.num_heads, self.uplift, self.backend, self.uplift_layout = num_heads, uplift, backend, uplift_layout
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
        k_up = self.uplift
        q = self.to_q(queries)  # [N, Tq, k*d]
        if self.uplift_layout == "interleaved":  # channels (head, head channel, s), s fastest
            q = q.unflatten(-1, (d, k_up)).transpose(-1, -2)  # [N, Tq, k, d]
        q = q.reshape(N, Tq * k_up, d)  # uplift: k tokens per query, token (t, s) at t*k + s
        q = self.q_norm(self.split_heads(q))
        k = self.k_norm(self.split_heads(self.to_k(keys_values)))
        v = self.split_heads(self.to_v(keys_values))
        with sdpa_backend(self.backend):
            out = F.scaled_dot_product_attention(q, k, v)  # [N, heads, Tq*k, head_dim]
        out = out.transpose(1, 2).reshape(N, Tq, k_up, d)  # the k outputs of each query token
        if self.uplift_layout == "interleaved":  # merged back in the same (head, channel, s) order
            out = out.transpose(-1, -2)  # [N, Tq, d, k]
        return self.to_out(out.reshape(N, Tq, k_up * d))


class MLP(nn.Sequential):
    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden, bias=False), nn.GELU(), nn.Linear(hidden, dim, bias=False))


class Block(nn.Module):
    """Pre-norm residual block. Self-attention when called with one argument; cross-attention
    (only the query side normalized) when given `context` tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        uplift: int = 1,
        backend: str = "auto",
        uplift_layout: str = "blocks",
    ):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim, bias=False)
        self.attn = Attention(dim, num_heads, uplift, backend, uplift_layout)
        self.norm_mlp = nn.LayerNorm(dim, bias=False)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.norm_attn(x)
        x = x + self.attn(h, h if context is None else context)
        return x + self.mlp(self.norm_mlp(x))


# ---------------------------------------------------------------------------------------------
# Mini-batch cross-attention: matching token subsets
# ---------------------------------------------------------------------------------------------


class TokenGroups:
    """Splits each view's row-major h x w token grid into G = gh x gw subsets (g = a * gw + b).

    "spatial": subset (a, b) is the block of rows [a h/gh, (a+1) h/gh) x columns [b w/gw, ...).
    "strided": subset (a, b) is the lattice of rows r % gh == a and columns c % gw == b.
    Viewpoint and image grids of a view cover the same image (the image grid is s = f times finer
    per axis), so spatial subset g of both covers the same image region, and with s = 2 each strided
    viewpoint token has exactly one of the 2x2 image tokens under it in every image subset.

    The network keeps tokens in *group order* (subset 0's tokens first, then subset 1's, ...):
    a permutation within each view that self-attention and MLPs do not see, done once after the
    tokenizers and undone before the head, so every layer's split into [B*V*G, T/G, d] is a free
    reshape.
    """

    LAYOUTS = {1: (1, 1), 2: (2, 1), 4: (2, 2)}  # G -> (gh, gw): rows first

    def __init__(self, groups: int, split: str):
        self.groups, self.split = groups, split
        self.gh, self.gw = self.LAYOUTS[groups]

    def check_grid(self, h: int, w: int) -> bool:
        return h % self.gh == 0 and w % self.gw == 0

    def to_group_order(self, x: Tensor, h: int, w: int) -> Tensor:
        """[..., h*w, d] row-major -> [..., h*w, d] ordered subset by subset."""
        if self.groups == 1:
            return x
        gh, gw = self.gh, self.gw
        *lead, T, d = x.shape
        n = len(lead)
        if self.split == "spatial":
            x = x.reshape(*lead, gh, h // gh, gw, w // gw, d)  # (a, row in block, b, col in block)
            x = x.permute(*range(n), n, n + 2, n + 1, n + 3, n + 4)  # (a, b, row in block, col in block)
        else:
            x = x.reshape(*lead, h // gh, gh, w // gw, gw, d)  # (row / gh, a, col / gw, b)
            x = x.permute(*range(n), n + 1, n + 3, n, n + 2, n + 4)  # (a, b, row / gh, col / gw)
        return x.reshape(*lead, T, d)

    def to_grid_order(self, x: Tensor, h: int, w: int) -> Tensor:
        """Inverse of `to_group_order`."""
        if self.groups == 1:
            return x
        gh, gw = self.gh, self.gw
        *lead, T, d = x.shape
        n = len(lead)
        x = x.reshape(*lead, gh, gw, h // gh, w // gw, d)
        if self.split == "spatial":
            x = x.permute(*range(n), n, n + 2, n + 1, n + 3, n + 4)  # (a, row in block, b, col in block)
        else:
            x = x.permute(*range(n), n + 2, n, n + 3, n + 1, n + 4)  # (row / gh, a, col / gw, b)
        return x.reshape(*lead, T, d)

    def indices(self, h: int, w: int) -> Tensor:
        """[G, h*w/G] row-major token indices of each subset (for tests and docs)."""
        order = self.to_group_order(torch.arange(h * w)[:, None], h, w)[:, 0]
        return order.reshape(self.groups, -1)


# ---------------------------------------------------------------------------------------------
# Update layers
# ---------------------------------------------------------------------------------------------


class UpdateLayer(nn.Module):
    """One refinement step V(l) = V(l-1) + F(V(l-1), S): each view's viewpoint tokens read that
    view's image tokens, then all viewpoint tokens of a scene attend to each other.

    Mini-batch cross-attention: tokens arrive in group order (`TokenGroups`), so viewpoint subset g
    and image subset g are reshapes; `shift` rolls the viewpoint subsets so that subset g reads
    image subset (g + shift) mod G. With `reads_images=False` (the "w/o iterative refinement"
    ablation) the cross-attention block is replaced by a second self-attention block.
    """

    def __init__(self, config: ILRMNetworkConfig, shift: int = 0, reads_images: bool = True):
        super().__init__()
        d, heads, ratio, backend = config.width, config.num_heads, config.mlp_ratio, config.attention_backend
        self.groups, self.shift, self.reads_images = config.cross_attention_groups, shift, reads_images
        if reads_images:
            self.cross = Block(
                d, heads, ratio, uplift=config.uplift_factor, backend=backend, uplift_layout=config.uplift_layout
            )
        else:
            self.global_attn = Block(d, heads, ratio, backend=backend)
        self.self_attn = Block(d, heads, ratio, backend=backend)

    def pairing(self) -> list[int]:
        """pairing()[g] = the image subset that viewpoint subset g reads in this layer."""
        return [(g + self.shift) % self.groups for g in range(self.groups)]

    def forward(self, viewpoint_tokens: Tensor, image_tokens: Tensor) -> Tensor:
        B, V, Tv, d = viewpoint_tokens.shape
        G = self.groups
        if self.reads_images:
            queries = viewpoint_tokens.unflatten(2, (G, Tv // G))  # [B, V, G, Tv/G, d]
            if self.shift:
                queries = queries.roll(self.shift, dims=2)  # slot j: viewpoint subset j - shift
            context = image_tokens.unflatten(2, (G, -1))  # [B, V, G, Ti/G, d], slot j: image subset j
            x = self.cross(queries.flatten(0, 2), context.flatten(0, 2))  # [B*V*G, Tv/G, d]
            x = x.unflatten(0, (B, V, G))
            if self.shift:
                x = x.roll(-self.shift, dims=2)
            x = x.reshape(B, V * Tv, d)
        else:
            x = self.global_attn(viewpoint_tokens.reshape(B, V * Tv, d))
        x = self.self_attn(x)  # [B, V*Tv, d]
        return x.reshape(B, V, Tv, d)


class Tokenizer(nn.Sequential):
    """p x p patches of per-pixel features -> Linear -> LayerNorm."""

    def __init__(self, channels: int, patch_size: int, dim: int):
        super().__init__(nn.Linear(channels * patch_size**2, dim, bias=False), nn.LayerNorm(dim, bias=False))
        self.patch_size = patch_size

    def forward(self, features: Tensor) -> Tensor:  # [..., H, W, C] -> [..., T, d]
        return super().forward(patchify(features, self.patch_size))


def ray_features(names, ray_o: Tensor, ray_d: Tensor, images: Tensor | None = None) -> Tensor:
    """Per-pixel channels [..., h, w, 3 * len(names)] in the order of `names` (see
    `PIXEL_FEATURES`): rays ray_o, ray_d [..., h, w, 3]; images [..., 3, h, w] in [0, 1] for "rgb"."""
    parts = {
        "origin": lambda: ray_o,
        "direction": lambda: ray_d,
        "moment": lambda: torch.cross(ray_o, ray_d, dim=-1),
        "rgb": lambda: 2 * images.movedim(-3, -1).float() - 1,
    }
    return torch.cat([parts[name]() for name in names], dim=-1)


def pixel_features(images: Tensor, c2w: Tensor, K: Tensor, features) -> Tensor:
    """Per-pixel image-token features [B, V, H, W, 3 * groups]; images [B, V, 3, H, W], rays through
    the pixel centers of K, computed in fp32. `features`: channel names in order (see
    `PIXEL_FEATURES`), or a bool for (2 rgb - 1, Plücker[, origin]) (`image_ray_origins`)."""
    if isinstance(features, bool):
        features = ("rgb", "moment", "direction") + (("origin",) if features else ())
    B, V, _, H, W = images.shape
    ray_o, ray_d = rays_through(c2w, K, pixel_centers(H, W, images.device).expand(B, V, H, W, 2))
    return ray_features(features, ray_o, ray_d, images)


def init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


class ILRM(nn.Module):
    def __init__(self, config: ILRMNetworkConfig):
        super().__init__()
        config.validate()
        self.config = config
        p, d = config.patch_size, config.width
        self.groups = TokenGroups(config.cross_attention_groups, config.cross_attention_split)
        self.viewpoint_tokenizer = Tokenizer(config.viewpoint_channels, p, d)
        self.image_tokenizer = Tokenizer(config.image_channels, p, d)
        self.layers = nn.ModuleList(
            UpdateLayer(
                config,
                shift=i % config.cross_attention_groups if config.cross_attention_rotation else 0,
                reads_images=config.iterative_refinement or i == 0,
            )
            for i in range(config.num_layers)
        )
        self.head_norm = nn.LayerNorm(d, bias=False)
        self.head = nn.Linear(d, p * p * sum(config.gaussian_channels.values()), bias=False)
        self.apply(init_weights)
        if config.compile:
            for layer in self.layers:
                layer.compile()  # compiles __call__ in place: parameter names stay the same

    def num_gaussians(self, num_views: int, height: int, width: int) -> int:
        f = self.config.viewpoint_factor
        return num_views * (height // f) * (width // f)

    def check_inputs(self, images: Tensor, c2w: Tensor, K: Tensor) -> None:
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, V, 3, H, W], got {list(images.shape)}")
        B, V, _, H, W = images.shape
        if c2w.shape != (B, V, 4, 4) or K.shape != (B, V, 3, 3):
            raise ValueError(
                f"for images {list(images.shape)} expected c2w [{B}, {V}, 4, 4] and K [{B}, {V}, 3, 3], got "
                f"{list(c2w.shape)} and {list(K.shape)}"
            )
        cfg = self.config
        cfg.check_image_size(H, W)
        multiple = cfg.size_multiple
        h, w = H // multiple, W // multiple
        if not self.groups.check_grid(h, w):
            raise ValueError(
                f"the {h}x{w} viewpoint-token grid of {H}x{W} images cannot be split into "
                f"cross_attention_groups = {cfg.cross_attention_groups} ({self.groups.gh}x{self.groups.gw} "
                f"subsets): image size must be divisible by {multiple * self.groups.gh}x{multiple * self.groups.gw}"
            )
        if c2w.device.type == "cpu":  # values: see check_values
            self.check_values(c2w, K)

    @staticmethod
    def check_values(c2w: Tensor, K: Tensor) -> None:
        """NaN/Inf cameras -> ValueError. Run for host tensors only, where it is free (data enters
        there and the loaders check it): reading a CUDA tensor's answer back would stall the GPU at
        every step."""
        if not (torch.isfinite(c2w).all() and torch.isfinite(K).all()):
            raise ValueError("camera poses or intrinsics contain NaN or infinite values")

    def forward(self, images: Tensor, c2w: Tensor, K: Tensor) -> Gaussians:
        """images [B, V, 3, H, W] in [0, 1]; c2w [B, V, 4, 4] OpenCV; K [B, V, 3, 3] in pixels.

        Returns batched Gaussians: every field has a leading [B] and N = V * Hv * Wv Gaussians.
        Rays and the Gaussian decoding run in fp32 even under autocast.
        """
        self.check_inputs(images, c2w, K)
        cfg = self.config
        B, V, _, H, W = images.shape
        f, p = cfg.viewpoint_factor, cfg.patch_size
        Hv, Wv = H // f, W // f
        h, w = Hv // p, Wv // p  # viewpoint-token grid
        s = cfg.image_grid_scale  # image-token grid: (s h) x (s w)

        fp32 = no_autocast(images.device)  # rays and Gaussians: never bf16

        # Viewpoint tokens: from the rays of the (coarser) viewpoint grid only, not from pixels.
        with fp32:
            K_grid = scale_intrinsics(K.float(), 1.0 / f)
            grid_xy = pixel_centers(Hv, Wv, images.device).expand(B, V, Hv, Wv, 2)
            grid_o, grid_d = rays_through(c2w, K_grid, grid_xy)
            viewpoint_rays = ray_features(cfg.viewpoint_features, grid_o, grid_d)  # [B, V, Hv, Wv, 6 (or 9)]
        viewpoint_tokens = self.viewpoint_tokenizer(viewpoint_rays)  # [B, V, Tv, d]

        # Image tokens: computed once, re-read by every layer.
        with fp32:
            pooled = F.avg_pool2d(images.flatten(0, 1).float(), f).unflatten(0, (B, V))  # [B, V, 3, Hv, Wv]
            if cfg.resolution_decoupling:
                features = pixel_features(images, c2w, K, cfg.image_feature_order)  # [B, V, H, W, 9 (or 12)]
            else:  # ablation: pixels area-averaged onto the viewpoint grid
                features = pixel_features(pooled, c2w, K_grid, cfg.image_feature_order)  # [B, V, Hv, Wv, 9]
        image_tokens = self.image_tokenizer(features.to(images.dtype))  # [B, V, Ti, d]

        # Group order for mini-batch cross-attention (identity when G = 1).
        viewpoint_tokens = self.groups.to_group_order(viewpoint_tokens, h, w)
        image_tokens = self.groups.to_group_order(image_tokens, s * h, s * w)
        for layer in self.layers:
            if cfg.gradient_checkpointing and self.training:
                viewpoint_tokens = checkpoint(layer, viewpoint_tokens, image_tokens, use_reentrant=False)
            else:
                viewpoint_tokens = layer(viewpoint_tokens, image_tokens)
        viewpoint_tokens = self.groups.to_grid_order(viewpoint_tokens, h, w)

        raw = self.head(self.head_norm(viewpoint_tokens))  # [B, V, Tv, p*p*c]
        raw = unpatchify(raw, p, h, w).float()  # [B, V, Hv, Wv, c]
        with fp32:
            return decode_gaussians(cfg, raw, c2w, K_grid, grid_xy, pooled.permute(0, 1, 3, 4, 2))


def decode_gaussians(
    cfg: ILRMNetworkConfig, raw: Tensor, c2w: Tensor, K_grid: Tensor, grid_xy: Tensor, grid_colors: Tensor
) -> Gaussians:
    """Raw head output [B, V, h, w, c] (fp32) -> Gaussians placed along the rays through the
    pixel centers grid_xy [B, V, h, w, 2] of cameras (c2w, K_grid). grid_colors [B, V, h, w, 3]:
    the images on that grid (used by `color_skip`)."""
    parts = dict(zip(cfg.gaussian_channels, raw.split(list(cfg.gaussian_channels.values()), dim=-1)))
    if cfg.color_skip:  # DC coefficient of the pixel's own color (rendered color = 0.5 + SH_C0 * dc)
        parts["sh"] = torch.cat([parts["sh"][..., :3] + rgb_to_sh0(grid_colors), parts["sh"][..., 3:]], -1)
    if cfg.pixel_offset:
        grid_xy = grid_xy + torch.sigmoid(parts["offset"]) - 0.5
    ray_o, ray_d = rays_through(c2w, K_grid, grid_xy)  # [B, V, h, w, 3]

    if cfg.gaussian_param == "published":
        distance = torch.sigmoid(parts["distance"].mean(-1, keepdim=True)) * 500.0
        scales = torch.exp(torch.clamp_max(parts["scale"] - 6.9, -1.2))
        opacities = torch.sigmoid(parts["opacity"] - 2.0)
    else:
        log_near, log_far = math.log(cfg.near), math.log(cfg.far)
        distance = torch.exp(log_near + (log_far - log_near) * torch.sigmoid(parts["distance"]))
        # One grid pixel seen at that distance; scales live in [0.1, 4] of it.
        focal = K_grid[..., 0, 0, None, None, None].float()
        footprint = distance / focal
        # Starts at ~0.5 footprint: large initial splats make the first steps slow and blurry.
        scales = footprint * (0.1 + 3.9 * torch.sigmoid(parts["scale"] - 2.0))
        opacities = torch.sigmoid(parts["opacity"])

    means = ray_o + distance * ray_d
    quats = parts["rotation"]
    if cfg.gaussian_param == "bounded":  # start near the identity rotation: w + 1
        quats = torch.cat([quats[..., :1] + 1.0, quats[..., 1:]], dim=-1)
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
