"""Real spherical harmonics (degrees 0..3) as gsplat and nerfstudio define them: the basis, colors
from coefficients (color = max(0, 0.5 + sum_k Y_k(d) sh_k)), and the constant that maps an RGB
color to the zeroth coefficient."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Sloan's formulation, as in gsplat / nerfstudio.
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """The zeroth SH coefficient that shows `rgb` from every direction."""
    return (rgb - 0.5) / SH_C0


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Real SH basis at unit directions dirs [..., 3] -> [..., (degree + 1) ** 2], degrees 0..3."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        z2 = z * z
        c1, s1 = x * x - y * y, 2.0 * x * y  # cos(2 phi), sin(2 phi) times sin^2(theta)
        out += [
            0.5462742152960395 * s1,
            -1.092548430592079 * z * y,
            0.9461746957575601 * z2 - 0.3153915652525201,
            -1.092548430592079 * z * x,
            0.5462742152960395 * c1,
        ]
        if degree >= 3:
            c2, s2 = x * c1 - y * s1, x * s1 + y * c1
            t0 = -2.285228997322329 * z2 + 0.4570457994644658
            t1 = 1.445305721320277 * z
            out += [
                -0.5900435899266435 * s2,
                t1 * s1,
                t0 * y,
                z * (1.865881662950577 * z2 - 1.119528997770346),
                t0 * x,
                t1 * c1,
                -0.5900435899266435 * c2,
            ]
    return torch.stack(out, dim=-1)


def sh_to_rgb(sh: Tensor, dirs: Tensor) -> Tensor:
    """Colors of SH coefficients sh [..., K, 3] seen along dirs [..., 3] (any length, not 0).

    color = max(0, 0.5 + sum_k Y_k(d) sh_k), as gsplat's `rasterization(sh_degree=...)` does.
    """
    degree = int(round(math.sqrt(sh.shape[-2]))) - 1
    if (degree + 1) ** 2 != sh.shape[-2]:
        raise ValueError(f"sh must have (degree + 1)^2 coefficients, got {sh.shape[-2]}")
    if degree == 0:  # constant basis: no directions needed
        return torch.clamp_min(SH_C0 * sh[..., 0, :] + 0.5, 0.0).expand(
            *torch.broadcast_shapes(sh.shape[:-2], dirs.shape[:-1]), 3
        )
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    basis = sh_basis(dirs, degree)  # [..., K]
    # (einsum: about 2x faster than a broadcast product and sum, forward and backward)
    return torch.clamp_min(torch.einsum("...k,...kc->...c", basis, sh) + 0.5, 0.0)
