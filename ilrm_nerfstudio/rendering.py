"""Render 3D Gaussians to images: gsplat on CUDA, a matching pure-PyTorch rasterizer elsewhere.

One entry point, `render()`, in the spirit of `gsplat.rasterization()`. Two backends:

* ``"gsplat"``: calls gsplat 1.4's CUDA rasterizer (classic mode, unpacked, RGB+ED).
* ``"torch"``: our own differentiable rasterizer in plain PyTorch. It runs anywhere (this is what
  CPU training and the tests use) and reproduces gsplat 1.4.0's conventions, read from its
  kernels (``fully_fused_projection_fwd.cu``, ``utils.cuh``, ``isect_tiles.cu``,
  ``rasterize_to_pixels_fwd.cu``, ``spherical_harmonics.cuh``):

  - EWA splatting: cov3d = R S S^T R^T; camera-space Jacobian with x/z, y/z clamped to the image
    bounds widened by 0.3 * tan(fov/2) on each side (the "1.3 x fov" limit);
  - a 0.3 px^2 low-pass added to the diagonal of the 2D covariance (classic mode: the opacity is
    not compensated);
  - radius = ceil(3 * sqrt(b + sqrt(max(0.01, b^2 - det)))), b = trace / 2;
  - culled when z < near or z > far, when det <= 0, or when the radius box misses the image;
  - 16 x 16 tiles: a Gaussian is only drawn in the tiles that its radius box touches (this clips
    its faint tails at tile borders, exactly as gsplat does);
  - front-to-back by camera z; alpha = min(0.999, opacity * exp(-power)); a Gaussian is skipped at
    a pixel where power < 0 or alpha < 1/255; a pixel stops at the first Gaussian after which the
    transmittance would be <= 1e-4 (that Gaussian is not drawn);
  - color = max(0, 0.5 + SH(normalize(mean - camera center))), gsplat's SH constants and signs.

Design of the torch rasterizer (see docs/rasterizer.md). Instead of a dense pixels x Gaussians
product it lists the sparse (pixel, Gaussian) pairs that can contribute: each projected Gaussian
covers, row by row, only the pixels of its ellipse where alpha >= 1/255 is possible, clipped to its
gsplat tile range. The pairs are sorted by (pixel, depth); the transmittance in front of every pair
is a segmented cumulative sum of log(1 - alpha) (float64), pixel values are scatter-adds of
alpha * T * feature. Compositing is a custom autograd Function: its forward runs without autograd
and keeps only the pairs that are drawn, its hand-written backward runs over those alone. The
projection and the SH colors before it are ordinary autograd.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from ilrm_nerfstudio.gaussians import Gaussians

# gsplat 1.4.0 constants (rasterize_to_pixels_fwd.cu / fully_fused_projection_fwd.cu).
ALPHA_MAX = 0.999  # alpha = min(0.999, opacity * exp(-power))
ALPHA_MIN = 1.0 / 255.0  # pairs with a smaller alpha are skipped
T_MIN = 1e-4  # a pixel stops before the Gaussian that would bring T to <= T_MIN
EPS2D = 0.3  # low-pass filter added to the 2D covariance diagonal, px^2
TILE_SIZE = 16  # gsplat's default tile size; it decides where tails are clipped
PAIR_CHUNK = 1 << 22  # candidate (pixel, Gaussian) pairs evaluated at once, bounds temporaries
FOV_MARGIN = 0.3  # x/z is clamped to the image bounds + 0.3 * tan(fov / 2)

# Real spherical harmonics constants, as in gsplat / nerfstudio (Sloan's formulation).
SH_C0 = 0.2820947917738781
SH_C1 = 0.48860251190292

BACKENDS = ("auto", "gsplat", "torch")


@dataclass
class RenderOutput:
    """Rendered images, C cameras of height H and width W."""

    rgb: Tensor  # [C, H, W, 3], background composited
    alpha: Tensor  # [C, H, W, 1], 1 - final transmittance
    depth: Tensor  # [C, H, W, 1], expected camera z (accumulated z / alpha), 0 where alpha is 0


# ----------------------------------------------------------------------------------------------
# Spherical harmonics
# ----------------------------------------------------------------------------------------------


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
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    basis = sh_basis(dirs, degree)  # [..., K]
    return torch.clamp_min((basis[..., None] * sh).sum(dim=-2) + 0.5, 0.0)


# ----------------------------------------------------------------------------------------------
# Projection (EWA)
# ----------------------------------------------------------------------------------------------


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Quaternions [..., 4] (w, x, y, z; normalized here) -> rotation matrices [..., 3, 3]."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def _matmul(A: Tensor, B: Tensor) -> Tensor:
    """Batched product of small matrices [..., n, k] @ [..., k, m] -> [..., n, m]."""
    return (A[..., :, :, None] * B[..., None, :, :]).sum(-2)


@dataclass
class _Projected:
    means2d: Tensor  # [M, 2] pixel coordinates
    conics: Tensor  # [M, 3] inverse 2D covariance (a, b, c) of [[a, b], [b, c]]
    cov2d: Tensor  # [M, 3] blurred 2D covariance (xx, xy, yy)
    depths: Tensor  # [M] camera z
    radii: Tensor  # [M] int, 0 where culled


def _project(
    means: Tensor,  # [M, 3] world
    quats: Tensor,  # [M, 4]
    scales: Tensor,  # [M, 3]
    w2c: Tensor,  # [M, 4, 4] the camera of each entry
    K: Tensor,  # [M, 3, 3]
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
) -> _Projected:
    """gsplat's `fully_fused_projection` (pinhole, classic) for M (camera, Gaussian) entries."""
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    mean_c = (R * means[:, None, :]).sum(-1) + t  # [M, 3]
    x, y, z = mean_c.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)
    # Entries outside the depth range are culled; give them a harmless z so that nothing here
    # divides by ~0 (the caller only differentiates through entries that survive).
    z = torch.where(in_depth, z, torch.ones_like(z))

    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    # Clamp the Jacobian's x/z, y/z to 1.3x the field of view (gsplat's persp_proj).
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + FOV_MARGIN * tan_fovx
    lim_x_neg = cx / fx + FOV_MARGIN * tan_fovx
    lim_y_pos = (height - cy) / fy + FOV_MARGIN * tan_fovy
    lim_y_neg = cy / fy + FOV_MARGIN * tan_fovy
    rz = 1.0 / z
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    zero = torch.zeros_like(z)
    J = torch.stack(
        [fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz], dim=-1
    ).reshape(-1, 2, 3)
    # cov2d = J R cov3d R^T J^T with cov3d = rot S S rot^T, i.e. T T^T for T = J R rot S [M, 2, 3].
    # Tiny per-entry products are written as broadcast sums: much faster than bmm on CPU.
    T = _matmul(_matmul(J, R), quat_to_rotmat(quats)) * scales[:, None, :]
    a = (T[:, 0] * T[:, 0]).sum(-1) + EPS2D
    b = (T[:, 0] * T[:, 1]).sum(-1)
    c = (T[:, 1] * T[:, 1]).sum(-1) + EPS2D
    det = a * c - b * b
    ok = in_depth & (det > 0)
    det = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    with torch.no_grad():  # the 3-sigma radius and the culling are not differentiable
        half_trace = 0.5 * (a + c)
        v1 = half_trace + torch.sqrt(torch.clamp_min(half_trace * half_trace - det, 0.01))
        radius = torch.ceil(3.0 * torch.sqrt(v1))
        mx, my = means2d.unbind(-1)
        on_screen = (mx + radius > 0) & (mx - radius < width) & (my + radius > 0) & (my - radius < height)
        ok = ok & (radius > 0) & on_screen
        # (clamped so that absurdly large Gaussians cannot overflow int32)
        radii = torch.where(ok, radius.clamp_max(2.0**30), torch.zeros_like(radius)).to(torch.int32)
    return _Projected(means2d, conics, torch.stack([a, b, c], dim=-1), z, radii)


# ----------------------------------------------------------------------------------------------
# Rasterization (sparse pixel-Gaussian pairs)
# ----------------------------------------------------------------------------------------------


def _enumerate_pairs(
    means2d: Tensor,  # [S, 2], Gaussians sorted front to back
    conics: Tensor,  # [S, 3]
    cov2d: Tensor,  # [S, 3]
    opacities: Tensor,  # [S]
    radii: Tensor,  # [S] int
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Every (pixel, Gaussian) pair of one camera where gsplat could draw the Gaussian, sorted by
    pixel and, within a pixel, front to back. Returns pixel ids [P] (y * W + x) and Gaussian
    indices [P] (into the S inputs), both int32 (int64 for huge images).

    A pair is listed when the pixel lies (a) in one of the 16 x 16 tiles that the Gaussian's
    radius box touches (gsplat's isect_tiles: tails outside are clipped), (b) in the image and
    (c) inside the ellipse power <= log(255 * opacity), outside of which alpha < 1/255 and gsplat
    skips the pair. (c) is solved row by row, with 0.01 px of slack for rounding; the exact tests
    run per pair afterwards.
    """
    device = means2d.device
    S = means2d.shape[0]
    mx, my = means2d.unbind(-1)
    a, b, c = conics.unbind(-1)

    # (a) gsplat's tile range: [floor(t - r), ceil(t + r)) in tile units, clamped to the grid.
    tile_w, tile_h = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    tile_r = radii.to(means2d.dtype) / TILE_SIZE
    tx, ty = mx / TILE_SIZE, my / TILE_SIZE
    box_x0 = torch.floor(tx - tile_r).clamp(0, tile_w) * TILE_SIZE
    box_x1 = (torch.ceil(tx + tile_r).clamp(0, tile_w) * TILE_SIZE).clamp(max=width)  # (b)
    box_y0 = torch.floor(ty - tile_r).clamp(0, tile_h) * TILE_SIZE
    box_y1 = (torch.ceil(ty + tile_r).clamp(0, tile_h) * TILE_SIZE).clamp(max=height)

    # (c) power = 0.5 (a dx^2 + c dy^2) + b dx dy <= thresh, dx = mx - px, dy = my - py. Its y
    # extent is sqrt(2 thresh cov_yy); pixel centers sit at y + 0.5.
    thresh = torch.log(torch.clamp_min(opacities * 255.0, 1.0))
    ey = torch.sqrt(2.0 * thresh * cov2d[:, 2])
    y0 = torch.maximum(torch.ceil(my - ey - 0.5 - 0.01), box_y0)
    y1 = torch.minimum(torch.floor(my + ey - 0.5 + 0.01) + 1, box_y1)
    n_rows = (y1 - y0).clamp_min(0).long()  # [S]

    # One entry per (Gaussian, row): solve the row's quadratic in dx for its x range.
    row_g = torch.repeat_interleave(torch.arange(S, device=device), n_rows)  # [R]
    first_row = torch.cumsum(n_rows, 0) - n_rows  # [S] index of each Gaussian's first row entry
    row_y = y0[row_g] + (torch.arange(len(row_g), device=device) - first_row[row_g])
    dy = my[row_g] - (row_y + 0.5)
    a_r, b_r = a[row_g], b[row_g]
    disc = (b_r * b_r - a_r * c[row_g]) * dy * dy + 2.0 * a_r * thresh[row_g]
    half = torch.sqrt(disc.clamp_min(0.0)) / a_r
    center = mx[row_g] + b_r * dy / a_r  # px where the row's power is smallest
    x0 = torch.maximum(torch.ceil(center - half - 0.5 - 0.01), box_x0[row_g])
    x1 = torch.minimum(torch.floor(center + half - 0.5 + 0.01) + 1, box_x1[row_g])
    n_cols = torch.where(disc >= 0, x1 - x0, torch.zeros_like(x0)).clamp_min(0).long()  # [R]

    # Pairs, Gaussian by Gaussian (front to back), row by row: pixel id = row start + offset.
    n_pairs = int(n_cols.sum())
    small = height * width < 2**31 and S < 2**31
    index_dtype = torch.int32 if small else torch.int64  # int32 halves the memory traffic
    row_start = row_y.long() * width + x0.long() - (torch.cumsum(n_cols, 0) - n_cols)
    pix = torch.repeat_interleave(row_start.to(index_dtype), n_cols)
    pix += torch.arange(n_pairs, device=device, dtype=index_dtype)
    gauss = torch.repeat_interleave(row_g.to(index_dtype), n_cols)  # [P]
    # A stable sort by pixel keeps the front-to-back order inside every pixel.
    pix, order = torch.sort(pix, stable=True)
    return pix, gauss.index_select(0, order)


class _Composite(torch.autograd.Function):
    """Front-to-back alpha compositing of sorted (pixel, Gaussian) pairs, gsplat's rules.

    forward(means2d [S, 2], conics [S, 3], opacities [S], features [S, D], pix [P], gauss [P],
    pixel_centers [n_pix, 2]) -> accumulated features [n_pix, D], alpha [n_pix].

    The forward runs without autograd over all P candidate pairs, then keeps only the pairs that
    are drawn (alpha >= 1/255, power >= 0, in front of the transmittance stop); the hand-written
    backward runs over those alone and saves a few numbers per kept pair instead of autograd's
    dozens of [P] intermediates.

    Per-pixel running sums (transmittance in front of a pair, light behind it) are segmented
    cumulative sums over the pixel-sorted pairs. They are computed as one global float64 cumsum
    minus the total of all earlier pixels (a cumsum over per-pixel totals), which keeps
    everything vectorized and exact to ~1e-10.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, pix, gauss, pixel_centers):
        dtype, n_pix = features.dtype, pixel_centers.shape[0]
        params = torch.cat([means2d, conics, opacities[:, None]], dim=-1)  # [S, 6]
        # Candidates are processed in chunks of whole pixels so that the [P]-sized temporaries
        # stay bounded; only the drawn pairs are kept.
        kept = [_drawn_pairs(params, pixel_centers, pix[a:b], gauss[a:b]) for a, b in _pixel_chunks(pix)]
        pix, gauss, alpha, log_1ma, log_t_after = (torch.cat(parts) for parts in zip(*kept))
        del kept
        t_before = torch.exp(log_t_after - log_1ma).to(dtype)  # T in front of each kept pair
        del log_t_after

        weight = alpha * t_before
        accum = torch.zeros(n_pix, features.shape[1], dtype=dtype, device=features.device)
        accum.index_put_((pix.long(),), weight[:, None] * features.index_select(0, gauss), accumulate=True)
        log_t_final = torch.zeros(n_pix, dtype=torch.float64, device=features.device).index_add_(0, pix, log_1ma)
        ctx.save_for_backward(
            means2d, conics, opacities, features, pixel_centers, pix, gauss, alpha, t_before, log_t_final
        )
        # 1 - T as -expm1(log T): exact even when alpha is tiny
        return accum, (-torch.expm1(log_t_final)).to(dtype)

    @staticmethod
    def backward(ctx, v_accum, v_alpha_img):
        saved = ctx.saved_tensors
        means2d, conics, opacities, features, pixel_centers, pix, gauss, alpha, t_before, log_t_final = saved
        S, D = means2d.shape[0], features.shape[1]
        v_alpha_t = torch.exp(log_t_final).to(features.dtype) * v_alpha_img  # [n_pix] v_alpha T_final
        # Per-Gaussian sums of 6 + D per-pair quantities (see _backward_sums), accumulated over
        # chunks of whole pixels to bound the temporaries.
        sums = torch.zeros(6 + D, S, dtype=features.dtype, device=features.device)
        for a, b in _pixel_chunks(pix):
            _backward_sums(
                sums, means2d, features, pixel_centers, v_accum, v_alpha_t,
                pix[a:b], gauss[a:b], alpha[a:b], t_before[a:b],
            )  # fmt: skip
        s_v, s_x, s_y, s_xx, s_xy, s_yy = sums[:6]
        a, b, c = conics.unbind(-1)
        v_means2d = torch.stack([a * s_x + b * s_y, b * s_x + c * s_y], dim=-1)
        v_conics = torch.stack([0.5 * s_xx, s_xy, 0.5 * s_yy], dim=-1)
        return v_means2d, v_conics, -s_v / opacities, sums[6:].T, None, None, None


def _backward_sums(
    sums: Tensor,  # [6 + D, S] accumulated here
    means2d: Tensor,  # [S, 2]
    features: Tensor,  # [S, D]
    pixel_centers: Tensor,  # [n_pix, 2]
    v_accum: Tensor,  # [n_pix, D] upstream gradient of the accumulated features
    v_alpha_t: Tensor,  # [n_pix] upstream gradient of alpha times the final transmittance
    pix: Tensor,  # [K] kept pairs of whole pixels, sorted
    gauss: Tensor,  # [K]
    alpha: Tensor,  # [K]
    t_before: Tensor,  # [K]
) -> None:
    """Backward of the compositing for some kept pairs: adds to `sums` the per-Gaussian sums of
    v, v dx, v dy, v dx^2, v dx dy, v dy^2 (v = dL/dpower) and w * v_accum (the features' grad).

    With w_i = a_i T_i, T_i = prod_{j<i} (1 - a_j), out = sum_i w_i f_i, alpha = 1 - T_final:
      d out / d f_i = w_i
      dL / d a_i = T_i <f_i, v> - (sum_{k>i} w_k <f_k, v>) / (1 - a_i) + v_alpha T_final / (1 - a_i)
    alpha = min(0.999, o exp(-power)): no gradient where clamped (as gsplat); else
    d alpha / d power = -alpha and d alpha / d o = alpha / o. power = 0.5 a dx^2 + 0.5 c dy^2 +
    b dx dy with dx = mean_x - pixel_x, so its gradients are per-Gaussian conic entries times
    per-pair moments: only the moments need scattering.
    """
    dtype, n_pix = features.dtype, pixel_centers.shape[0]
    v_c = v_accum.index_select(0, pix)  # [K, D] upstream gradient at each pair's pixel
    weight = alpha * t_before
    q = (features.index_select(0, gauss) * v_c).sum(-1)  # <f_i, v>
    wq = (weight * q).double()
    # light behind a pair = pixel total - inclusive running sum (segmented cumsums, float64)
    incl = torch.cumsum(wq, 0) - _earlier_pixels_total(wq, pix, n_pix).index_select(0, pix)
    pixel_total = torch.zeros(n_pix, dtype=torch.float64, device=wq.device).index_add_(0, pix, wq)
    behind = (pixel_total.index_select(0, pix) - incl).to(dtype)
    del incl, wq, pixel_total
    v_a = t_before * q + (v_alpha_t.index_select(0, pix) - behind) / (1.0 - alpha)
    v_power = torch.where(alpha < ALPHA_MAX, -v_a * alpha, torch.zeros_like(v_a))
    del v_a, behind, q

    pc = pixel_centers.index_select(0, pix)
    m = means2d.index_select(0, gauss)
    dx, dy = m[:, 0] - pc[:, 0], m[:, 1] - pc[:, 1]
    del pc, m
    v_dx, v_dy = v_power * dx, v_power * dy
    per_pair = [v_power, v_dx, v_dy, v_dx * dx, v_dx * dy, v_dy * dy]
    per_pair += [weight * v_c[:, d] for d in range(v_c.shape[1])]
    # one 1-D index_add per quantity: on CPU this beats scattering the rows of a [K, 6 + D] matrix
    for row, values in zip(sums, per_pair):
        row.index_add_(0, gauss, values)


def _pixel_chunks(pix: Tensor) -> list[tuple[int, int]]:
    """Split pixel-sorted pairs [P] into ranges of about PAIR_CHUNK pairs that never split a pixel."""
    n, chunk = len(pix), PAIR_CHUNK
    if n <= chunk:
        return [(0, n)]
    # start each chunk at the first pair of the pixel found at every multiple of `chunk`
    starts = torch.searchsorted(pix, pix[chunk::chunk].contiguous()).tolist()
    bounds = sorted(set([0] + starts + [n]))
    return list(zip(bounds[:-1], bounds[1:]))


def _drawn_pairs(params: Tensor, pixel_centers: Tensor, pix: Tensor, gauss: Tensor) -> tuple[Tensor, ...]:
    """Evaluate candidate pairs (whole pixels, sorted) with gsplat's rules and keep those drawn.

    params [S, 6] = (mean x, mean y, conic a, b, c, opacity); pix, gauss [P]. Returns, for the
    kept pairs, pix, gauss, alpha, log(1 - alpha) and log T after the pair (float64).
    """
    pc = pixel_centers.index_select(0, pix)  # [P, 2]
    g = params.index_select(0, gauss)  # [P, 6]
    dx, dy = g[:, 0] - pc[:, 0], g[:, 1] - pc[:, 1]
    del pc
    power = 0.5 * (g[:, 2] * dx * dx + g[:, 4] * dy * dy) + g[:, 3] * dx * dy
    alpha = torch.clamp_max(g[:, 5] * torch.exp(-power), ALPHA_MAX)
    valid = (power >= 0) & (alpha >= ALPHA_MIN)
    del g, dx, dy, power
    # log T after each pair: inclusive segmented cumsum of log(1 - alpha) along each pixel.
    log_1ma = torch.where(valid, torch.log1p(-alpha), torch.zeros_like(alpha)).double()
    n_pix = pixel_centers.shape[0]
    log_t_after = torch.cumsum(log_1ma, 0) - _earlier_pixels_total(log_1ma, pix, n_pix).index_select(0, pix)
    # gsplat stops at the first Gaussian whose next T would be <= 1e-4 and does not draw it;
    # log T only decreases along a pixel, so all later pairs of that pixel go too.
    keep = torch.nonzero(valid & (log_t_after > math.log(T_MIN))).squeeze(1)
    return tuple(t.index_select(0, keep) for t in (pix, gauss, alpha, log_1ma, log_t_after))


def _earlier_pixels_total(values: Tensor, pix: Tensor, n_pix: int) -> Tensor:
    """For pixel-sorted pairs: the sum of `values` over all pairs of lower pixel ids, per pixel
    [n_pix]. A global cumsum minus this at a pair's pixel is the pixel's own running sum."""
    per_pixel = torch.zeros(n_pix, dtype=values.dtype, device=values.device).index_add_(0, pix, values)
    return torch.cumsum(per_pixel, 0) - per_pixel


def _rasterize(
    features: Tensor,  # [S, D] per projected Gaussian (colors, depth, ...), sorted front to back
    means2d: Tensor,  # [S, 2]
    conics: Tensor,  # [S, 3]
    cov2d: Tensor,  # [S, 3] (no grad needed)
    opacities: Tensor,  # [S]
    radii: Tensor,  # [S] int
    pixel_centers: Tensor,  # [H * W, 2]
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Composite one camera's Gaussians front to back -> features [H*W, D] and alpha [H*W]."""
    with torch.no_grad():
        pix, gauss = _enumerate_pairs(
            means2d.detach(), conics.detach(), cov2d.detach(), opacities.detach(), radii, width, height
        )
    return _Composite.apply(means2d, conics, opacities, features, pix, gauss, pixel_centers)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def _validate(
    gaussians: Gaussians, c2w: Tensor, K: Tensor, width, height, background, near_plane, far_plane, backend
) -> None:
    if not isinstance(gaussians, Gaussians):
        raise ValueError(f"gaussians must be a Gaussians instance, got {type(gaussians).__name__}")
    means = gaussians.means
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"gaussians.means must be [N, 3], got {list(means.shape)}")
    N = means.shape[0]
    expected = {"scales": (N, 3), "quats": (N, 4), "opacities": (N,)}
    for name, shape in expected.items():
        t = getattr(gaussians, name)
        if tuple(t.shape) != shape:
            raise ValueError(f"gaussians.{name} must be {list(shape)} (N={N} from means), got {list(t.shape)}")
    sh = gaussians.sh
    if sh.dim() != 3 or sh.shape[0] != N or sh.shape[2] != 3:
        raise ValueError(f"gaussians.sh must be [N, K, 3] (N={N} from means), got {list(sh.shape)}")
    if sh.shape[1] not in (1, 4, 9, 16):
        raise ValueError(f"gaussians.sh must have K = 1, 4, 9 or 16 coefficients (SH degree 0..3), got K={sh.shape[1]}")
    if c2w.dim() != 3 or tuple(c2w.shape[1:]) != (4, 4):
        hint = " (cameras.to_homogeneous turns [C, 3, 4] into [C, 4, 4])" if tuple(c2w.shape[-2:]) == (3, 4) else ""
        raise ValueError(f"c2w must be [C, 4, 4] camera-to-world matrices, got {list(c2w.shape)}{hint}")
    if K.dim() != 3 or tuple(K.shape[1:]) != (3, 3):
        raise ValueError(f"K must be [C, 3, 3] pixel intrinsics, got {list(K.shape)}")
    if c2w.shape[0] != K.shape[0]:
        raise ValueError(f"c2w and K must have the same number of cameras, got {c2w.shape[0]} and {K.shape[0]}")
    if c2w.shape[0] == 0:
        raise ValueError("at least one camera is needed (c2w is [0, 4, 4])")
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if background is not None and tuple(background.shape) not in ((3,), (c2w.shape[0], 3)):
        raise ValueError(f"background must be [3] or [C, 3], got {list(background.shape)}")
    if not 0 < near_plane < far_plane:
        raise ValueError(f"need 0 < near_plane < far_plane, got near={near_plane}, far={far_plane}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    tensors = {f"gaussians.{k}": getattr(gaussians, k) for k in ("means", "scales", "quats", "opacities", "sh")}
    tensors.update(c2w=c2w, K=K)
    if background is not None:
        tensors["background"] = background
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(str(d) for d in devices)}")
    # One device sync for all the NaN/Inf checks; name the culprit only when one fails.
    finite = torch.stack([torch.isfinite(t).all() for t in tensors.values()])
    if not bool(finite.all()):
        bad = [name for name, ok in zip(tensors, finite.tolist()) if not ok]
        raise ValueError(f"{', '.join(bad)} contain{'s' if len(bad) == 1 else ''} NaN or Inf values")
    if N and bool((gaussians.quats == 0).all(dim=-1).any()):
        raise ValueError("gaussians.quats contains all-zero quaternions (no rotation can be derived from them)")


def render(
    gaussians: Gaussians,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    backend: str = "auto",
) -> RenderOutput:
    """Render `gaussians` into C cameras.

    gaussians: see `Gaussians` (means [N, 3], scales [N, 3], quats [N, 4] wxyz, opacities [N],
        sh [N, K, 3]); the SH degree comes from K.
    c2w: [C, 4, 4] OpenCV camera-to-world; K: [C, 3, 3] pixel intrinsics (pixel centers at +0.5).
    background: [3] (or [C, 3]) color composited as rgb + (1 - alpha) * background; None = black.
    backend: "gsplat" (CUDA only), "torch" (anywhere) or "auto" (gsplat for CUDA tensors).
    Everything is computed in fp32 with autocast disabled; outputs are fp32.
    """
    _validate(gaussians, c2w, K, width, height, background, near_plane, far_plane, backend)
    device = gaussians.means.device
    if backend == "auto":
        backend = "gsplat" if device.type == "cuda" else "torch"
    width, height = int(width), int(height)
    with torch.autocast(device_type=device.type, enabled=False):
        g = gaussians.map(lambda t: t.float())
        c2w, K = c2w.float(), K.float()
        C = c2w.shape[0]
        bg = None if background is None else background.float().expand(C, 3)
        if len(g) == 0:
            return _empty_output(g, c2w, width, height, bg)
        if backend == "gsplat":
            return _render_gsplat(g, c2w, K, width, height, bg, near_plane, far_plane)
        return _render_torch(g, c2w, K, width, height, bg, near_plane, far_plane)


def _empty_output(g: Gaussians, c2w: Tensor, width: int, height: int, bg: Tensor | None) -> RenderOutput:
    """Nothing to draw: background, alpha 0, depth 0 (still attached to the autograd graph)."""
    C, device = c2w.shape[0], c2w.device
    zero = sum(t.sum() for t in (g.means, g.scales, g.quats, g.opacities, g.sh)) * 0.0
    rgb = torch.zeros(C, height, width, 3, device=device) + zero
    if bg is not None:
        rgb = rgb + bg[:, None, None, :]
    empty = torch.zeros(C, height, width, 1, device=device) + zero
    return RenderOutput(rgb=rgb, alpha=empty, depth=empty.clone())


def _render_torch(
    g: Gaussians, c2w: Tensor, K: Tensor, width: int, height: int, bg: Tensor | None, near_plane: float, far_plane: float
) -> RenderOutput:
    C, N, device = c2w.shape[0], len(g), c2w.device
    w2c = torch.linalg.inv(c2w)  # [C, 4, 4]

    # Pass 1 (no grad) over all C x N entries: which ones survive culling. Pass 2 below recomputes
    # the survivors with autograd (same function, same values), so culled entries -- behind the
    # camera, z ~ 0 -- never enter the backward pass.
    with torch.no_grad():
        cam_all = torch.arange(C, device=device).repeat_interleave(N)
        gid_all = torch.arange(N, device=device).repeat(C)
        radii = _project(
            g.means[gid_all], g.quats[gid_all], g.scales[gid_all], w2c[cam_all], K[cam_all],
            width, height, near_plane, far_plane,
        ).radii  # fmt: skip
        visible = (radii > 0) & (g.opacities[gid_all] >= ALPHA_MIN)  # fainter ones never draw
        idx = torch.nonzero(visible).squeeze(1)
        cam, gid = cam_all[idx], gid_all[idx]  # [S]
        del cam_all, gid_all
    if len(idx) == 0:
        return _empty_output(g, c2w, width, height, bg)

    proj = _project(g.means[gid], g.quats[gid], g.scales[gid], w2c[cam], K[cam], width, height, near_plane, far_plane)
    opac = g.opacities[gid]
    colors = sh_to_rgb(g.sh[gid], g.means[gid] - c2w[cam, :3, 3])  # [S, 3]

    # Group the entries by camera, front to back inside each (ties: index order, like gsplat).
    with torch.no_grad():
        order = torch.argsort(proj.depths, stable=True)
        order = order[torch.argsort(cam[order], stable=True)]
        ends = torch.cumsum(torch.bincount(cam, minlength=C), 0).tolist()
        ys, xs = torch.meshgrid(
            torch.arange(height, device=device, dtype=torch.float32) + 0.5,
            torch.arange(width, device=device, dtype=torch.float32) + 0.5,
            indexing="ij",
        )
        pixel_centers = torch.stack([xs, ys], dim=-1).reshape(-1, 2)  # [H * W, 2]
    features = torch.cat([colors, proj.depths[:, None]], dim=-1)[order]  # [S, 4] = rgb + z
    means2d, conics, cov2d = proj.means2d[order], proj.conics[order], proj.cov2d[order]
    opac, radii = opac[order], radii[idx][order]
    # One camera at a time: bounds the memory and keeps pixel ids small.
    accum, alpha = [], []
    for start, end in zip([0] + ends[:-1], ends):
        part = slice(start, end)
        a_c, t_c = _rasterize(
            features[part], means2d[part], conics[part], cov2d[part], opac[part], radii[part],
            pixel_centers, width, height,
        )  # fmt: skip
        accum.append(a_c)
        alpha.append(t_c)
    accum, alpha = torch.stack(accum), torch.stack(alpha)
    accum = accum.reshape(C, height, width, 4)
    alpha = alpha.reshape(C, height, width, 1)
    rgb = accum[..., :3]
    if bg is not None:
        rgb = rgb + (1.0 - alpha) * bg[:, None, None, :]
    depth = accum[..., 3:] / alpha.clamp_min(1e-10)  # expected depth, as gsplat's "RGB+ED"
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth)


def _render_gsplat(
    g: Gaussians, c2w: Tensor, K: Tensor, width: int, height: int, bg: Tensor | None, near_plane: float, far_plane: float
) -> RenderOutput:
    if c2w.device.type != "cuda":
        raise ValueError(f"backend='gsplat' needs CUDA tensors, got device {c2w.device}; use backend='torch'")
    try:
        from gsplat import rasterization
    except Exception as error:  # ImportError, or a broken CUDA extension
        raise RuntimeError(
            "backend='gsplat' needs the gsplat package (pip install gsplat>=1.4.0) with a working "
            f"CUDA build; importing it failed: {error!r}. Use backend='torch' instead."
        ) from error
    colors, alphas, _ = rasterization(
        means=g.means,
        quats=g.quats,
        scales=g.scales,
        opacities=g.opacities,
        colors=g.sh,
        viewmats=torch.linalg.inv(c2w),
        Ks=K,
        width=width,
        height=height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=EPS2D,
        sh_degree=g.sh_degree,
        packed=False,
        tile_size=TILE_SIZE,
        backgrounds=None if bg is None else bg.contiguous(),
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    return RenderOutput(rgb=colors[..., :3], alpha=alphas, depth=colors[..., 3:4])
