"""Render 3D Gaussians to images: gsplat on CUDA, a matching CPU rasterizer (numba) elsewhere.

One entry point, `render()`, in the spirit of `gsplat.rasterization()`. Two backends:

* ``"gsplat"``: calls gsplat 1.4's CUDA rasterizer (classic mode, unpacked, RGB+ED).
* ``"torch"``: our own differentiable CPU rasterizer (numba kernels in ``raster_cpu.py``, torch
  autograd around them). It runs anywhere (CUDA tensors are copied to the CPU and back; this is
  what CPU training and the tests use) and reproduces gsplat 1.4.0's conventions, read from its
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

Design of the CPU backend (see docs/rasterizer.md and raster_cpu.py): gsplat's own structure.
`_Project` is gsplat's fully_fused_projection with its hand-written backward (to means, quats,
scales and the camera), parallel over Gaussians. The SH colors are torch autograd. `_Rasterize`
bins the Gaussians of each camera, front to back, into 8 x 8 pixel blocks (inside gsplat's 16 px
tile ranges and the alpha >= 1/255 ellipse); each block's 64 pixels are SIMD lanes walking its
list with early termination, and the backward re-walks back to front from where each pixel
stopped (T / (1 - alpha), as gsplat). Per-pixel state only: no per-pair memory.
"""

from __future__ import annotations

import numbers
import sys
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ilrm_nerfstudio.core.cameras import rigid_inverse
from ilrm_nerfstudio.core.errors import ILRMError, brief
from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.core.precision import no_autocast
from ilrm_nerfstudio.core.sh import sh_to_rgb

# gsplat 1.4.0 constants (rasterize_to_pixels_fwd.cu / fully_fused_projection_fwd.cu).
ALPHA_MAX = 0.999  # alpha = min(0.999, opacity * exp(-power))
ALPHA_MIN = 1.0 / 255.0  # pairs with a smaller alpha are skipped
T_MIN = 1e-4  # a pixel stops before the Gaussian that would bring T to <= T_MIN
EPS2D = 0.3  # low-pass filter added to the 2D covariance diagonal, px^2
TILE_SIZE = 16  # gsplat's default tile size; it decides where tails are clipped
FOV_MARGIN = 0.3  # x/z is clamped to the image bounds + 0.3 * tan(fov / 2)

RIGID_TOLERANCE = 1e-3  # |R R^T - I| of a camera pose, as the data loaders' check (data/validate.py)

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
    means2d: Tensor | None = None  # [C, N, 2] (gsplat's meta on CUDA)
    radii: Tensor | None = None  # [C, N] int32 (gsplat's meta on CUDA)

    @property
    def info(self) -> dict:
        """gsplat-style meta for `gsplat.strategy.DefaultStrategy` (packed=False)."""
        C, H, W = self.rgb.shape[:3]
        return {
            "means2d": self.means2d,
            "radii": self.radii,
            "gaussian_ids": None,  # None: not packed
            "width": W,
            "height": H,
            "n_cameras": C,
        }


# ----------------------------------------------------------------------------------------------
# Rasterization (CPU: numba tile kernels in raster_cpu.py)
# ----------------------------------------------------------------------------------------------


def _numba_threads() -> int:
    """Kernel threads: torch's CPU thread count, capped by numba's (the number of cores)."""
    try:
        import numba
    except ImportError as error:  # a dependency of the package; say what is missing
        raise ImportError(f"the CPU renderer (backend='torch') needs numba: pip install numba ({error})") from error
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


# One kernel launch at a time: numba's fallback threading layer (workqueue, where neither TBB nor
# OpenMP is available) must not be entered from two threads at once (the viewer renders from its
# own thread).
_KERNEL_LOCK = threading.Lock()


def _locked(fn):
    def wrapper(*args):
        # nerfstudio's viewer interrupts a render by raising from a trace function (sys.settrace);
        # raised inside numba's dispatcher it becomes a SystemError that kills the render thread.
        # No tracing inside the kernel call: a pending interrupt is raised right after it instead.
        trace = sys.gettrace()
        sys.settrace(None)
        try:
            with _KERNEL_LOCK:
                return fn(*args)
        finally:
            sys.settrace(trace)

    return wrapper


def _np(t: Tensor):
    return t.detach().cpu().contiguous().numpy()


class _Project(torch.autograd.Function):
    """gsplat's `fully_fused_projection` (pinhole, classic, packed=False) on the CPU (numba).

    forward(means [N, 3], quats [N, 4], scales [N, 3], w2c [C, 4, 4], K [C, 3, 3], width, height,
    near, far) -> means2d [C, N, 2], conics [C, N, 3], depths [C, N], cov2d [C, N, 3] (no grad),
    radii [C, N] int32 (0 where culled; every output is 0 there). The backward is gsplat's
    (fully_fused_projection_bwd), to means, quats, scales and w2c.
    """

    @staticmethod
    @_locked
    def forward(ctx, means, quats, scales, w2c, K, width, height, near_plane, far_plane):
        from ilrm_nerfstudio.render import raster_cpu as raster_cpu

        _numba_threads()
        arrays = [_np(t) for t in (means, quats, scales, w2c.double(), K.double())]
        out = raster_cpu.project_fwd(*arrays, width, height, near_plane, far_plane, EPS2D, FOV_MARGIN)
        means2d, conics, depths, cov2d, radii = (torch.from_numpy(a).to(means.device) for a in out)
        ctx.state = (arrays, out[4], out[1], width, height)
        ctx.mark_non_differentiable(cov2d, radii)
        return means2d, conics, depths, cov2d, radii

    @staticmethod
    @_locked
    def backward(ctx, v_means2d, v_conics, v_depths, _v_cov2d, _v_radii):
        from ilrm_nerfstudio.render import raster_cpu as raster_cpu

        arrays, radii, conics, width, height = ctx.state
        means, quats, scales, w2c, K = arrays
        C, N = radii.shape
        grads = [
            np.zeros(shape, means.dtype) if v is None else _np(v)
            for v, shape in ((v_means2d, (C, N, 2)), (v_conics, (C, N, 3)), (v_depths, (C, N)))
        ]
        want_cam = bool(ctx.needs_input_grad[3])
        _numba_threads()
        v_means, v_quats, v_scales, v_cam = raster_cpu.project_bwd(
            means, quats, scales, w2c, K, width, height, FOV_MARGIN, radii, conics, *grads, want_cam
        )
        dtype, device = v_means2d.dtype, v_means2d.device
        v_w2c = None
        if want_cam:
            v_cam = torch.from_numpy(v_cam.sum(axis=1))  # [C, 12]
            v_w2c = torch.zeros(C, 4, 4, dtype=torch.float64)
            v_w2c[:, :3, :3] = v_cam[:, :9].reshape(C, 3, 3)
            v_w2c[:, :3, 3] = v_cam[:, 9:]
            v_w2c = v_w2c.to(device=device, dtype=dtype)
        as_t = lambda a: torch.from_numpy(a).to(device=device, dtype=dtype)  # noqa: E731
        return as_t(v_means), as_t(v_quats), as_t(v_scales), v_w2c, None, None, None, None, None


class _Rasterize(torch.autograd.Function):
    """Front-to-back alpha compositing of projected Gaussians into C cameras, gsplat's rules.

    forward(means2d [C, N, 2], conics [C, N, 3], opacities [N], features [C, N, 4] (the last one
    is the depth, which also sets the order), cov2d [C, N, 3], radii [C, N], width, height) ->
    accumulated features [C, H * W, 4], alpha [C, H * W]. Entries with radius 0 or opacity
    < 1/255 are not drawn; the others are sorted front to back per camera (stable: ties keep the
    index order, as gsplat's radix sort). cov2d and radii only decide which 8 x 8 pixel blocks
    list a Gaussian (no gradient). The kernels (`raster_cpu`) run on the CPU; tensors on another
    device are copied there and back. The backward re-walks every pixel back to front from where
    its forward stopped (no per-pair state is saved).
    """

    @staticmethod
    @_locked
    def forward(ctx, means2d, conics, opacities, features, cov2d, radii, width, height):
        from ilrm_nerfstudio.render import raster_cpu as raster_cpu

        if features.shape[-1] != raster_cpu.N_FEATURES:
            raise ValueError(f"the CPU kernels composite {raster_cpu.N_FEATURES} features, got {features.shape[-1]}")
        _numba_threads()
        dtype = np.float64 if features.dtype == torch.float64 else np.float32
        m, co, cv, f = (np.ascontiguousarray(_np(t), dtype=dtype) for t in (means2d, conics, cov2d, features))
        o = np.ascontiguousarray(_np(opacities), dtype=dtype)
        r = _np(radii.to(torch.int32))
        consts = raster_cpu.constants(dtype)
        accum, t_final, states = [], [], []
        for c in range(m.shape[0]):
            visible = np.flatnonzero((r[c] > 0) & (o >= ALPHA_MIN))
            order = visible[np.argsort(f[c, visible, 3], kind="stable")]
            starts, _, packed, g_start, slot = raster_cpu.bin_gaussians(
                m[c], co[c], cv[c], o, r[c], f[c], order, width, height
            )
            out_c, t_c, end = raster_cpu.rasterize_fwd(starts, packed, width, height, consts)
            accum.append(out_c)
            t_final.append(t_c)
            states.append((order, starts, packed, g_start, slot, t_c, end))
        ctx.state = (states, width, height, consts, m.shape)
        device, dtype = features.device, features.dtype
        alpha = torch.from_numpy(1.0 - np.stack(t_final)).to(device=device, dtype=dtype)
        return torch.from_numpy(np.stack(accum)).to(device=device, dtype=dtype), alpha

    @staticmethod
    @_locked
    def backward(ctx, v_out, v_alpha):
        from ilrm_nerfstudio.render import raster_cpu as raster_cpu

        states, width, height, consts, (C, N, _) = ctx.state
        _numba_threads()
        fdtype = consts.dtype
        v_out_np = np.ascontiguousarray(_np(v_out), dtype=fdtype)
        v_alpha_np = np.ascontiguousarray(_np(v_alpha), dtype=fdtype)
        sums = np.zeros((C, N, 6 + raster_cpu.N_FEATURES), fdtype)
        for c, (order, starts, packed, g_start, slot, t_c, end) in enumerate(states):
            grads = raster_cpu.rasterize_bwd(
                starts, packed, t_c, end, v_out_np[c], v_alpha_np[c], width, height, consts
            )
            sums[c, order] = raster_cpu.reduce_entries(grads, g_start, slot)
        sums = torch.from_numpy(sums).to(device=v_out.device, dtype=v_out.dtype)
        return sums[..., 0:2], sums[..., 2:5], sums[..., 5].sum(0), sums[..., 6:], None, None, None, None


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def _validate(
    gaussians: Gaussians, c2w: Tensor, K: Tensor, width, height, background, near_plane, far_plane, backend
) -> dict[str, Tensor]:
    """Types, shapes, options and devices -> ValueError naming the input (no tensor values are
    read: no device sync). Returns the input tensors by name, for `_check_values`."""
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
    return tensors


def _check_values(tensors: dict[str, Tensor], quats: Tensor, c2w: Tensor) -> None:
    """NaN or Inf anywhere, all-zero quaternions, camera poses that are not rigid -> ValueError
    naming the input. Reading the answers back is a host-device sync (see `render`)."""
    # One read-back for all the NaN/Inf checks; name the culprit only when one fails.
    # (max |t| propagates NaN and Inf and is ~10x cheaper than isfinite(t).all() on a CPU)
    finite = torch.stack(
        [
            torch.isfinite(t.abs().amax()) if t.numel() else torch.ones((), dtype=torch.bool, device=t.device)
            for t in tensors.values()
        ]
    )
    if not bool(finite.all()):
        bad = [name for name, ok in zip(tensors, finite.tolist()) if not ok]
        raise ValueError(f"{', '.join(bad)} contain{'s' if len(bad) == 1 else ''} NaN or Inf values")
    if len(quats) and bool((quats == 0).all(dim=-1).any()):
        raise ValueError("gaussians.quats contains all-zero quaternions (no rotation can be derived from them)")
    # render() inverts poses as rigid transforms ([R^T, -R^T t]): anything else would be drawn wrong
    pose = c2w.detach().double()
    rotation = pose[:, :3, :3]
    eye = torch.eye(3, dtype=torch.float64, device=pose.device)
    error = (rotation @ rotation.transpose(1, 2) - eye).abs().amax(dim=(1, 2))  # [C]
    error = error.maximum(pose[:, 3, :3].abs().amax(1)).maximum((pose[:, 3, 3] - 1.0).abs())
    if bool((error > RIGID_TOLERANCE).any()):
        i = int(error.argmax())
        raise ValueError(
            f"c2w[{i}] is not a rigid camera pose (rotation not orthonormal or last row not 0 0 0 1: "
            f"error {float(error[i]):.3g}); render() takes rotation + translation camera-to-world matrices"
        )


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
    check_values: bool | None = None,
    rasterize_mode: str = "classic",
) -> RenderOutput:
    """Render `gaussians` into C cameras.

    gaussians: see `Gaussians` (means [N, 3], scales [N, 3], quats [N, 4] wxyz, opacities [N],
        sh [N, K, 3]); the SH degree comes from K.
    c2w: [C, 4, 4] OpenCV camera-to-world, rigid (rotation + translation; inverted as [R^T, -R^T t]);
        K: [C, 3, 3] pixel intrinsics (pixel centers at +0.5).
    background: [3] (or [C, 3]) color composited as rgb + (1 - alpha) * background; None = black.
    backend: "gsplat" (CUDA only), "torch" (the CPU rasterizer; anywhere) or "auto" (gsplat for
        CUDA tensors). The first gsplat render checks once that gsplat's CUDA kernels load
        (`check_gsplat`).
    check_values: look for NaN/Inf values, all-zero quaternions and non-rigid poses (ValueError
        naming the input). None (default): only for CPU tensors, where it is free; on CUDA it
        would stall the GPU at every render (the values come from data that the loaders check on
        the CPU, or from the network). True/False: always/never.
    rasterize_mode: gsplat's "classic" or "antialiased" (gsplat only; the CPU rasterizer is classic).
    Everything is computed in fp32 with autocast disabled; outputs are fp32.

    Returns a `RenderOutput`: rgb [C, H, W, 3], alpha [C, H, W, 1], depth [C, H, W, 1] and, for
    densification, what gsplat's `rasterization(packed=False)` puts in its meta:
      means2d [C, N, 2] float32: projected pixel coordinates of every (camera, Gaussian), 0 where
        culled (torch backend; gsplat leaves those entries undefined). A non-leaf tensor of the
        graph: call `out.means2d.retain_grad()` before `backward()`, then `out.means2d.grad` is
        the screen-space gradient (pixel units) that gsplat's DefaultStrategy accumulates (it
        rescales by width / 2 * n_cameras itself).
      radii [C, N] int32: gsplat's 3-sigma pixel radius, 0 where culled (visible = radii > 0).
      info: a dict {"means2d", "radii", "gaussian_ids": None, "width", "height", "n_cameras"},
        what `DefaultStrategy.step_pre_backward / step_post_backward(..., info, packed=False)`
        read.
    """
    tensors = _validate(gaussians, c2w, K, width, height, background, near_plane, far_plane, backend)
    device = gaussians.means.device
    if check_values if check_values is not None else device.type == "cpu":
        _check_values(tensors, gaussians.quats, c2w)
    if backend == "auto":
        backend = "gsplat" if device.type == "cuda" else "torch"
    width, height = int(width), int(height)
    with no_autocast(device):
        g = gaussians.map(lambda t: t.float())
        c2w, K = c2w.float(), K.float()
        C = c2w.shape[0]
        bg = None if background is None else background.float().expand(C, 3)
        if len(g) == 0:
            return _empty_output(g, c2w, width, height, bg)
        if backend == "gsplat":
            return _render_gsplat(g, c2w, K, width, height, bg, near_plane, far_plane, rasterize_mode)
        if rasterize_mode != "classic":
            raise ValueError(f"rasterize_mode {rasterize_mode!r} needs gsplat (CUDA); the CPU rasterizer is classic")
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
    g: Gaussians,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    bg: Tensor | None,
    near_plane: float,
    far_plane: float,
) -> RenderOutput:
    C = c2w.shape[0]
    w2c = rigid_inverse(c2w)  # [C, 4, 4]
    means2d, conics, depths, cov2d, radii = _Project.apply(
        g.means, g.quats, g.scales, w2c, K, width, height, near_plane, far_plane
    )
    # colors of all C x N entries (culled ones are never drawn and get no gradient)
    colors = sh_to_rgb(g.sh[None], g.means[None] - c2w[:, None, :3, 3])  # [C, N, 3]
    features = torch.cat([colors, depths[..., None]], dim=-1)  # [C, N, 4] = rgb + z
    accum, alpha = _Rasterize.apply(means2d, conics, g.opacities, features, cov2d, radii, width, height)
    accum = accum.reshape(C, height, width, 4)
    alpha = alpha.reshape(C, height, width, 1)
    rgb = accum[..., :3]
    if bg is not None:
        rgb = rgb + (1.0 - alpha) * bg[:, None, None, :]
    depth = accum[..., 3:] / alpha.clamp_min(1e-10)  # expected depth, as gsplat's "RGB+ED"
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, means2d=means2d, radii=radii)


def _render_gsplat(
    g: Gaussians,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    bg: Tensor | None,
    near_plane: float,
    far_plane: float,
    rasterize_mode: str = "classic",
) -> RenderOutput:
    if c2w.device.type != "cuda":
        raise ValueError(f"backend='gsplat' needs CUDA tensors, got device {c2w.device}; use backend='torch'")
    check_gsplat()
    from gsplat import rasterization

    if g.sh_degree == 0:  # view-independent: gsplat composites the colors as given, no SH pass
        colors, sh_degree = sh_to_rgb(g.sh, g.means), None  # [N, 3] (degree 0 ignores directions)
    else:
        colors, sh_degree = g.sh, g.sh_degree  # [N, K, 3]; gsplat adds 0.5 and clamps at 0
    rgbd, alphas, meta = rasterization(
        means=g.means,
        quats=g.quats,
        scales=g.scales,
        opacities=g.opacities,
        colors=colors,
        viewmats=rigid_inverse(c2w),
        Ks=K,
        width=width,
        height=height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=EPS2D,
        sh_degree=sh_degree,
        packed=False,
        tile_size=TILE_SIZE,
        backgrounds=None if bg is None else bg.contiguous(),
        render_mode="RGB+ED",
        rasterize_mode=rasterize_mode,
    )
    # gsplat's own screen-space means and radii: what its DefaultStrategy densifies with.
    return RenderOutput(
        rgb=rgbd[..., :3], alpha=alphas, depth=rgbd[..., 3:4], means2d=meta.get("means2d"), radii=meta.get("radii")
    )


# ----------------------------------------------------------------------------------------------
# gsplat's CUDA kernels: checked once per process
# ----------------------------------------------------------------------------------------------

_GSPLAT_LOCK = threading.Lock()
_gsplat_problem: list[str | None] = []  # empty until checked; then [None] (works) or [the cause]


def check_gsplat() -> None:
    """Make sure, once per process, that gsplat's CUDA kernels load and run; afterwards answer
    from memory: a failure raises ILRMError, one line naming the cause, at every later call.

    gsplat 1.4.0 ships CUDA sources, not kernels: its first kernel call JIT-builds them with nvcc
    (minutes) into torch's extension cache, a build that fails is tried again at every later call
    (its wrappers import `gsplat.cuda._backend` per call), and without nvcc every call fails with
    "'NoneType' object has no attribute ...". `render()` calls this before its first gsplat
    render, so that none of that reaches a training loop.
    """
    with _GSPLAT_LOCK:
        if not _gsplat_problem:
            _gsplat_problem.append(_find_gsplat_problem())
        problem = _gsplat_problem[0]
    if problem is not None:
        raise ILRMError(f"backend='gsplat' cannot render: {problem}; use backend='torch' (the CPU rasterizer)")


def _find_gsplat_problem() -> str | None:
    """None when gsplat renders on this machine's GPU, else the cause as a clause."""
    if not torch.cuda.is_available():
        return "no CUDA device is available (gsplat's rasterizer runs CUDA kernels only)"
    problem = gsplat_kernels_problem()
    if problem is not None:
        return problem
    return _gsplat_test_render_problem()


def gsplat_kernels_problem() -> str | None:
    """Load gsplat's compiled kernels (the extension a gsplat build ships, else gsplat's JIT build
    of its sources, minutes the first time) without needing a GPU: None when they load, else the
    cause (gsplat missing, no nvcc to build them, the build failed)."""
    try:
        import gsplat  # noqa: F401
    except Exception as error:
        return f"gsplat cannot be imported ({brief(error)}); pip install 'gsplat>=1.4,<1.5'"
    try:
        from gsplat.cuda._backend import _C as kernels
    except Exception as error:  # the JIT build failed (nvcc error, compiler, disk, ...)
        return (
            f"building gsplat's CUDA kernels failed ({brief(error)}); the build log is in torch's extension "
            "folder (TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions)"
        )
    if kernels is None:  # gsplat found no nvcc and disabled its kernels
        return (
            "gsplat has no compiled CUDA kernels and there is no nvcc on the PATH to build them "
            "(gsplat 1.4.0 compiles its kernels on first use: install the CUDA toolkit or a gsplat build "
            "with its kernels)"
        )
    return None


def _gsplat_test_render_problem() -> str | None:
    """One Gaussian through gsplat into a 16 x 16 image: the kernels run on this GPU (a build for
    another architecture loads but fails here)."""
    from gsplat import rasterization

    try:
        one = lambda *shape: torch.ones(*shape, device="cuda")  # noqa: E731
        viewmat, K = torch.eye(4, device="cuda")[None], torch.eye(3, device="cuda")[None] * 16.0
        K[0, :2, 2], K[0, 2, 2] = 8.0, 1.0
        means = torch.zeros(1, 3, device="cuda")
        means[0, 2] = 2.0
        rasterization(means, one(1, 4), one(1, 3) * 0.1, one(1) * 0.5, one(1, 3), viewmat, K, 16, 16)
        torch.cuda.synchronize()
    except Exception as error:
        return f"gsplat's CUDA kernels failed on a one-Gaussian test render ({brief(error)})"
    return None
