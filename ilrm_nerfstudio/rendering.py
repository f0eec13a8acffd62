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

import numpy as np
import torch
from torch import Tensor

from ilrm_nerfstudio.gaussians import Gaussians

# gsplat 1.4.0 constants (rasterize_to_pixels_fwd.cu / fully_fused_projection_fwd.cu).
ALPHA_MAX = 0.999  # alpha = min(0.999, opacity * exp(-power))
ALPHA_MIN = 1.0 / 255.0  # pairs with a smaller alpha are skipped
T_MIN = 1e-4  # a pixel stops before the Gaussian that would bring T to <= T_MIN
EPS2D = 0.3  # low-pass filter added to the 2D covariance diagonal, px^2
TILE_SIZE = 16  # gsplat's default tile size; it decides where tails are clipped
FOV_MARGIN = 0.3  # x/z is clamped to the image bounds + 0.3 * tan(fov / 2)

# Real spherical harmonics constants, as in gsplat / nerfstudio (Sloan's formulation).
SH_C0 = 0.2820947917738781
SH_C1 = 0.48860251190292

BACKENDS = ("auto", "gsplat", "torch")


@dataclass
class RenderOutput:
    """Rendered images, C cameras of height H and width W, and what densification needs.

    means2d and radii follow gsplat's `rasterization(packed=False)` meta (N Gaussians):
    means2d [C, N, 2] are the projected pixel coordinates, a non-leaf tensor of the autograd graph
    (call `means2d.retain_grad()` before backward to read its `.grad`, the screen-space gradient
    that gsplat's DefaultStrategy accumulates); radii [C, N] int32 the 3-sigma pixel radii, 0 where
    culled. `info` packs them with width, height and n_cameras as gsplat's strategies expect.
    """

    rgb: Tensor  # [C, H, W, 3], background composited
    alpha: Tensor  # [C, H, W, 1], 1 - final transmittance
    depth: Tensor  # [C, H, W, 1], expected camera z (accumulated z / alpha), 0 where alpha is 0
    means2d: Tensor | None = None  # [C, N, 2] (torch backend; None from the gsplat backend)
    radii: Tensor | None = None  # [C, N] int32 (torch backend; None from the gsplat backend)

    @property
    def info(self) -> dict:
        """gsplat-style meta for `gsplat.strategy.DefaultStrategy` (packed=False)."""
        C, H, W = self.rgb.shape[:3]
        return {"means2d": self.means2d, "radii": self.radii, "width": W, "height": H, "n_cameras": C}


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
# Rasterization (CPU: numba tile kernels in raster_cpu.py)
# ----------------------------------------------------------------------------------------------


def _numba_threads() -> int:
    """Kernel threads: torch's CPU thread count, capped by numba's (the number of cores)."""
    import numba

    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


def _np(t: Tensor):
    return t.detach().cpu().contiguous().numpy()


class _Rasterize(torch.autograd.Function):
    """Front-to-back alpha compositing of one camera's projected Gaussians, gsplat's rules.

    forward(means2d [S, 2], conics [S, 3], opacities [S], features [S, D], cov2d [S, 3],
    radii [S] int, width, height) -> accumulated features [H * W, D], alpha [H * W]. The S
    Gaussians must be sorted front to back; cov2d and radii only decide which 8 x 8 pixel blocks
    list a Gaussian (no gradient). The kernels (`raster_cpu`) run on the CPU; tensors on
    another device are copied there and back. The backward re-walks every pixel back to front
    from where its forward stopped (no per-pair state is saved).
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, cov2d, radii, width, height):
        from ilrm_nerfstudio import raster_cpu

        if features.shape[1] != raster_cpu.N_FEATURES:
            raise ValueError(f"the CPU kernels composite {raster_cpu.N_FEATURES} features, got {features.shape[1]}")
        _numba_threads()
        dtype = np.float64 if features.dtype == torch.float64 else np.float32
        arrays = [np.ascontiguousarray(_np(t), dtype=dtype) for t in (means2d, conics, cov2d, opacities, features)]
        m, co, cv, o, f = arrays
        starts, ids, packed, g_start, slot = raster_cpu.bin_gaussians(
            m, co, cv, o, _np(radii.to(torch.int32)), f, width, height
        )
        consts = raster_cpu.constants(dtype)
        out, t_final, end = raster_cpu.rasterize_fwd(starts, packed, width, height, consts)
        ctx.state = (starts, packed, g_start, slot, t_final, end, width, height, consts)
        device, dtype = features.device, features.dtype
        alpha = torch.from_numpy(1.0 - t_final).to(device=device, dtype=dtype)
        return torch.from_numpy(out).to(device=device, dtype=dtype), alpha

    @staticmethod
    def backward(ctx, v_out, v_alpha):
        from ilrm_nerfstudio import raster_cpu

        starts, packed, g_start, slot, t_final, end, width, height, consts = ctx.state
        device, dtype = v_out.device, v_out.dtype
        _numba_threads()
        v_out_np = np.ascontiguousarray(_np(v_out), dtype=packed.dtype)
        v_alpha_np = np.ascontiguousarray(_np(v_alpha), dtype=packed.dtype)
        grads = raster_cpu.rasterize_bwd(starts, packed, t_final, end, v_out_np, v_alpha_np, width, height, consts)
        sums = torch.from_numpy(raster_cpu.reduce_entries(grads, g_start, slot)).to(device=device, dtype=dtype)
        return sums[:, 0:2], sums[:, 2:5], sums[:, 5], sums[:, 6:], None, None, None, None


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


def _empty_output(
    g: Gaussians, c2w: Tensor, width: int, height: int, bg: Tensor | None, radii: Tensor | None = None
) -> RenderOutput:
    """Nothing to draw: background, alpha 0, depth 0 (still attached to the autograd graph)."""
    C, N, device = c2w.shape[0], len(g), c2w.device
    zero = sum(t.sum() for t in (g.means, g.scales, g.quats, g.opacities, g.sh)) * 0.0
    rgb = torch.zeros(C, height, width, 3, device=device) + zero
    if bg is not None:
        rgb = rgb + bg[:, None, None, :]
    empty = torch.zeros(C, height, width, 1, device=device) + zero
    means2d = torch.zeros(C, N, 2, device=device) + zero
    if radii is None:
        radii = torch.zeros(C, N, dtype=torch.int32, device=device)
    return RenderOutput(rgb=rgb, alpha=empty, depth=empty.clone(), means2d=means2d, radii=radii)


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
        radii_all = _project(
            g.means[gid_all], g.quats[gid_all], g.scales[gid_all], w2c[cam_all], K[cam_all],
            width, height, near_plane, far_plane,
        ).radii  # fmt: skip
        visible = (radii_all > 0) & (g.opacities[gid_all] >= ALPHA_MIN)  # fainter ones never draw
        idx = torch.nonzero(visible).squeeze(1)
        cam, gid = cam_all[idx], gid_all[idx]  # [S]
        del cam_all, gid_all
    radii_out = radii_all.reshape(C, N)
    if len(idx) == 0:
        return _empty_output(g, c2w, width, height, bg, radii_out)

    proj = _project(g.means[gid], g.quats[gid], g.scales[gid], w2c[cam], K[cam], width, height, near_plane, far_plane)
    opac = g.opacities[gid]
    colors = sh_to_rgb(g.sh[gid], g.means[gid] - c2w[cam, :3, 3])  # [S, 3]
    # The [C, N, 2] screen-space means (gsplat's meta["means2d"]): the rasterizer reads them from
    # this tensor, so its .grad (after retain_grad) is the gradient that densification uses.
    means2d_full = torch.zeros(C, N, 2, device=device, dtype=proj.means2d.dtype)
    means2d_full = means2d_full.reshape(C * N, 2).index_put((idx,), proj.means2d).reshape(C, N, 2)

    # Group the entries by camera, front to back inside each (ties: index order, like gsplat).
    with torch.no_grad():
        order = torch.argsort(proj.depths, stable=True)
        order = order[torch.argsort(cam[order], stable=True)]
        ends = torch.cumsum(torch.bincount(cam, minlength=C), 0).tolist()
    features = torch.cat([colors, proj.depths[:, None]], dim=-1)[order]  # [S, 4] = rgb + z
    means2d = means2d_full.reshape(C * N, 2)[idx[order]]
    conics, opac = proj.conics[order], opac[order]
    cov2d, radii = proj.cov2d.detach()[order], radii_all[idx][order]
    # One camera at a time (each kernel call is parallel over the camera's pixel blocks).
    accum, alpha = [], []
    for start, end in zip([0] + ends[:-1], ends):
        part = slice(start, end)
        a_c, t_c = _Rasterize.apply(
            means2d[part], conics[part], opac[part], features[part], cov2d[part], radii[part], width, height
        )
        accum.append(a_c)
        alpha.append(t_c)
    accum = torch.stack(accum).reshape(C, height, width, 4)
    alpha = torch.stack(alpha).reshape(C, height, width, 1)
    rgb = accum[..., :3]
    if bg is not None:
        rgb = rgb + (1.0 - alpha) * bg[:, None, None, :]
    depth = accum[..., 3:] / alpha.clamp_min(1e-10)  # expected depth, as gsplat's "RGB+ED"
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, means2d=means2d_full, radii=radii_out)


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
