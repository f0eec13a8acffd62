"""Camera conventions, rays and pose normalization (pure PyTorch).

One convention everywhere inside the package: camera-to-world matrices `c2w` [..., 4, 4] in the
OpenCV convention (x right, y down, z forward) and pixel-unit intrinsics `K` [..., 3, 3]. Pixel
(x, y) covers [x, x + 1) x [y, y + 1); its center is (x + 0.5, y + 0.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """[..., 4, 4] or [..., 3, 4] OpenGL c2w -> OpenCV c2w (its own inverse).

    OpenGL/nerfstudio (x right, y up, z back) <-> OpenCV (x right, y down, z forward): the y and z
    axes (columns 1 and 2) change sign. (A sign flip, not a product with a constant matrix: no
    constant is copied to the device at every call.)"""
    return torch.cat([c2w[..., :1], -c2w[..., 1:3], c2w[..., 3:]], dim=-1)


opencv_to_opengl = opengl_to_opencv


def to_homogeneous(c2w: Tensor) -> Tensor:
    """[..., 3, 4] -> [..., 4, 4] (no-op for [..., 4, 4])."""
    if c2w.shape[-2] == 4:
        return c2w
    # (0, 0, 0, 1) made where c2w is: writing a Python 1.0 into a CUDA tensor would copy it there
    bottom = torch.eye(4, dtype=c2w.dtype, device=c2w.device)[3:].expand(*c2w.shape[:-2], 1, 4)
    return torch.cat([c2w, bottom], dim=-2)


def rigid_inverse(c2w: Tensor) -> Tensor:
    """World-to-camera matrices [..., 4, 4] of rigid camera-to-world matrices c2w [..., 4, 4]
    (rotation R, translation t): [R^T, -R^T t]. Exact for rigid poses and free of the device sync
    of `torch.linalg.inv` (which checks for singular matrices on the host)."""
    rotation_t = c2w[..., :3, :3].transpose(-1, -2)  # [..., 3, 3]
    translation = -(rotation_t @ c2w[..., :3, 3:])  # [..., 3, 1]
    return to_homogeneous(torch.cat([rotation_t, translation], dim=-1))


def intrinsics_matrix(fx: Tensor, fy: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """Per-camera focal lengths and principal points [...] -> K [..., 3, 3]."""
    K = torch.zeros(*fx.shape, 3, 3, dtype=fx.dtype, device=fx.device)
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = fx, fy, cx, cy, 1.0
    return K


def scale_intrinsics(K: Tensor, factor_x: float, factor_y: float | None = None) -> Tensor:
    """Intrinsics for the same camera sampled on a grid `factor` times finer (factor < 1: coarser).

    With pixel-center conventions the continuous image plane just scales, so fx, fy, cx, cy all
    scale by the same factor; this is exact for any principal point.
    """
    factor_y = factor_x if factor_y is None else factor_y
    # rows (fx, 0, cx) and (0, fy, cy) scale; Python scalars: no constant tensor copied to the device
    return torch.cat([K[..., :1, :] * factor_x, K[..., 1:2, :] * factor_y, K[..., 2:, :]], dim=-2)


@torch.autocast("cuda", enabled=False)
def rays_through(c2w: Tensor, K: Tensor, pixel_xy: Tensor) -> tuple[Tensor, Tensor]:
    """World-space rays through continuous pixel positions, computed in fp32.

    c2w [..., 4, 4], K [..., 3, 3], pixel_xy [..., *grid, 2] (x, y in pixels; the leading
    dimensions match the cameras') -> origins, unit directions [..., *grid, 3].
    """
    c2w, K, pixel_xy = c2w.float(), K.float(), pixel_xy.float()
    cameras = c2w.shape[:-2]
    grid_ones = (1,) * (pixel_xy.dim() - 1 - len(cameras))  # broadcast cameras over the grid
    fx, fy = K[..., 0, 0].reshape(*cameras, *grid_ones), K[..., 1, 1].reshape(*cameras, *grid_ones)
    cx, cy = K[..., 0, 2].reshape(*cameras, *grid_ones), K[..., 1, 2].reshape(*cameras, *grid_ones)
    x, y = pixel_xy[..., 0], pixel_xy[..., 1]
    camera_dirs = torch.stack([(x - cx) / fx, (y - cy) / fy, torch.ones_like(x)], dim=-1)
    rotation = c2w[..., :3, :3].reshape(*cameras, *grid_ones, 3, 3)
    directions = F.normalize((rotation @ camera_dirs[..., None])[..., 0], dim=-1)
    origins = c2w[..., :3, 3].reshape(*cameras, *grid_ones, 3).expand_as(directions)
    return origins, directions


def pixel_centers(height: int, width: int, device=None) -> Tensor:
    """[height, width, 2] pixel-center positions (x + 0.5, y + 0.5)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32) + 0.5,
        torch.arange(width, device=device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    return torch.stack([xs, ys], dim=-1)


def pixel_rays(c2w: Tensor, K: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Rays through every pixel center: c2w [..., 4, 4], K [..., 3, 3] -> origins, unit
    directions [..., height, width, 3] (fp32)."""
    centers = pixel_centers(height, width, c2w.device)
    centers = centers.expand(*c2w.shape[:-2], height, width, 2)
    return rays_through(c2w, K, centers)


def plucker(origins: Tensor, directions: Tensor) -> Tensor:
    """Plücker coordinates (o x d, d) [..., 6] of rays given by origins and unit directions."""
    return torch.cat([torch.cross(origins, directions, dim=-1), directions], dim=-1)


def average_camera(c2w: Tensor) -> Tensor:
    """The mean pose of cameras c2w [N, 4, 4] (OpenCV): mean position, mean forward (z),
    mean down (y) orthogonalized against it."""
    position = c2w[:, :3, 3].mean(0)
    forward = F.normalize(c2w[:, :3, 2].mean(0), dim=0)
    down = c2w[:, :3, 1].mean(0)
    down = F.normalize(down - (down @ forward) * forward, dim=0)
    right = torch.cross(down, forward, dim=0)
    mean = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    mean[:3, 0], mean[:3, 1], mean[:3, 2], mean[:3, 3] = right, down, forward, position
    return mean


def normalize_poses(
    context_c2w: Tensor, other_c2w: Tensor | None = None, largest: str = "distance"
) -> tuple[Tensor, Tensor | None, float]:
    """Express cameras relative to the average context camera and scale so that the farthest
    context camera sits at distance 1 (the peers' convention; `largest="coordinate"`: so that the
    largest absolute coordinate is 1, as the published iLRM code does). Returns the new context
    poses, the new other poses and the scale that was applied to translations."""
    to_origin = torch.linalg.inv(average_camera(context_c2w))
    context = to_origin @ context_c2w
    positions = context[:, :3, 3]
    extent = float(positions.abs().max() if largest == "coordinate" else positions.norm(dim=-1).max())
    scale = 1.0 / extent if extent > 1e-8 else 1.0
    context[:, :3, 3] *= scale
    other = None
    if other_c2w is not None:
        other = to_origin @ other_c2w
        other[:, :3, 3] *= scale
    return context, other, scale


def resize_and_crop_intrinsics(
    K: Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int]
) -> tuple[Tensor, tuple[int, int], tuple[int, int]]:
    """Intrinsics after resizing an image of size `in_hw` so it covers `out_hw` and center cropping.

    Returns the new K, the intermediate resized size (h, w) and the crop offset (top, left).
    Both the focal lengths and the principal point are transformed, so this is exact for
    off-center principal points too.
    """
    (in_h, in_w), (out_h, out_w) = in_hw, out_hw
    scale = max(out_h / in_h, out_w / in_w)
    resized_h, resized_w = max(out_h, round(in_h * scale)), max(out_w, round(in_w * scale))
    top, left = (resized_h - out_h) // 2, (resized_w - out_w) // 2
    K = scale_intrinsics(K, resized_w / in_w, resized_h / in_h).clone()
    K[..., 0, 2] -= left
    K[..., 1, 2] -= top
    return K, (resized_h, resized_w), (top, left)
