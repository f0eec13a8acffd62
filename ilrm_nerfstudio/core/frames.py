"""Moving Gaussians between coordinate frames.

The network predicts Gaussians in the normalized frame of its context cameras (`normalize_poses`:
relative to the average context camera, translations scaled so the farthest context camera is at
distance 1). Single-scene tools (ns-viewer, ns-render, ns-export, ns-eval) use the scene's own
frame (the file's, or the nerfstudio dataparser's). The two differ by a similarity transform
x_world = R (x / s) + t, which moves means, scales, rotations and the view-dependent SH bands.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ilrm_nerfstudio.core.cameras import average_camera, normalize_poses
from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.core.sh import sh_basis


def rotmat_to_quat(R: Tensor) -> Tensor:
    """Rotation matrix [3, 3] -> unit quaternion (w, x, y, z), w >= 0."""
    R = R.double()
    m = R
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    # The largest of the four candidates keeps the square root well conditioned.
    candidates = torch.stack([trace, m[0, 0], m[1, 1], m[2, 2]])
    k = int(candidates.argmax())
    if k == 0:
        r = torch.sqrt(1.0 + trace) * 2
        q = torch.stack([0.25 * r, (m[2, 1] - m[1, 2]) / r, (m[0, 2] - m[2, 0]) / r, (m[1, 0] - m[0, 1]) / r])
    elif k == 1:
        r = torch.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = torch.stack([(m[2, 1] - m[1, 2]) / r, 0.25 * r, (m[0, 1] + m[1, 0]) / r, (m[0, 2] + m[2, 0]) / r])
    elif k == 2:
        r = torch.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = torch.stack([(m[0, 2] - m[2, 0]) / r, (m[0, 1] + m[1, 0]) / r, 0.25 * r, (m[1, 2] + m[2, 1]) / r])
    else:
        r = torch.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = torch.stack([(m[1, 0] - m[0, 1]) / r, (m[0, 2] + m[2, 0]) / r, (m[1, 2] + m[2, 1]) / r, 0.25 * r])
    q = F.normalize(q, dim=0)
    return q if q[0] >= 0 else -q


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of quaternions (w, x, y, z) [..., 4] (broadcasting)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def _sphere_directions(count: int = 128) -> Tensor:
    """Well-spread unit directions (Fibonacci sphere), float64."""
    i = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / count
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    r = torch.sqrt(1.0 - z * z)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


def sh_rotation(R: Tensor, degree: int) -> list[Tensor]:
    """Per band l = 1..degree, the matrix T_l [2l+1, 2l+1] such that coefficients c' = T_l c give
    color'(d) = color(R^T d): the SH function rotated by R. Solved exactly by least squares on
    well-spread directions (each band is closed under rotation)."""
    dirs = _sphere_directions()
    R = R.double().cpu()
    A = sh_basis(dirs, degree)  # Y(d)
    B = sh_basis(dirs @ R, degree)  # Y(R^T d): rows are (R^T d)^T = d^T R
    blocks = []
    for band in range(1, degree + 1):
        cols = slice(band * band, (band + 1) * (band + 1))
        blocks.append(torch.linalg.lstsq(A[:, cols], B[:, cols]).solution.float())
    return blocks


def transform_gaussians(g: Gaussians, R: Tensor, t: Tensor, scale: float) -> Gaussians:
    """Apply x -> scale * R x + t to Gaussians: means, scales (x scale), rotations (R * q) and
    view-dependent SH coefficients (rotated band by band)."""
    R = R.to(g.means)
    t = t.to(g.means)
    q = rotmat_to_quat(R).to(g.quats)
    sh = g.sh
    if g.sh_degree > 0:
        bands = [sh[:, :1]]
        for band, T in enumerate(sh_rotation(R, g.sh_degree), start=1):
            coefficients = sh[:, band * band : (band + 1) * (band + 1)]
            bands.append(torch.einsum("jk,nkc->njc", T.to(sh), coefficients))
        sh = torch.cat(bands, dim=1)
    return Gaussians(
        means=scale * g.means @ R.T + t,
        scales=g.scales * scale,
        quats=quat_multiply(q, g.quats),
        opacities=g.opacities,
        sh=sh,
    )


def normalized_to_world(g: Gaussians, context_c2w: Tensor, scale: float | None = None) -> Gaussians:
    """Gaussians predicted from context cameras normalized by `normalize_poses(context_c2w)`
    (context_c2w: the cameras in the target frame, OpenCV [V, 4, 4]) -> Gaussians in that frame.
    `scale`: the normalization's translation scale when another rule chose it (published models)."""
    context_c2w = context_c2w.double()
    mean = average_camera(context_c2w)
    s = normalize_poses(context_c2w)[2] if scale is None else scale
    return transform_gaussians(g, mean[:3, :3], mean[:3, 3], 1.0 / s)


def to_viewer_frame(c2w: Tensor, transform: Tensor, scale: float) -> Tensor:
    """Camera-to-world matrices [N, 4, 4] (any convention) moved by x -> scale * (R x + t), where
    transform = [R | t] [3, 4]: into the frame the single-scene tools see (nerfstudio/viewer_scene.py)."""
    out = c2w.double().clone()
    out[:, :3, :] = transform.to(out) @ c2w.double()
    out[:, :3, 3] *= scale
    return out.to(c2w.dtype)
