"""Rendering views: supersampled color and z-depth of a scene from a camera (`render_view`), and
exact depth along single rays (`depth_at`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .raytrace import RayCamera, trace
from .shading import shade

if TYPE_CHECKING:
    from .scene import Scene


def render_samples(
    scene: Scene, c2w: np.ndarray, K: np.ndarray, height: int, width: int, supersample: int, with_depth: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """rgb [H, W, 3] in [0, 1] (box filter of supersample^2 stratified samples per pixel) and,
    when `with_depth`, z-depth [H, W] at pixel centers (else None). `generate_dataset` skips the
    depth rays."""
    c2w, K = np.asarray(c2w, float), np.asarray(K, float)
    origin, rotation = c2w[:3, 3], c2w[:3, :3]
    # ss x ss stratified samples per pixel (pixel (x, y) spans [x, x + 1) x [y, y + 1)).
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(width)[:, None] + offsets).reshape(-1)  # [W * ss]
    ys = (np.arange(height)[:, None] + offsets).reshape(-1)  # [H * ss]
    blocks = [(0, xs, ys)]
    if with_depth:  # pixel centers as extra rays: depth is not averaged across edges
        blocks.append((len(xs) * len(ys), np.arange(width) + 0.5, np.arange(height) + 0.5))
    px, py = [], []
    for _, bx, by in blocks:
        grid_y, grid_x = np.meshgrid(by, bx, indexing="ij")  # [R, C] row-major ray order
        px.append(grid_x.reshape(-1))
        py.append(grid_y.reshape(-1))
    cam_x = (np.concatenate(px) - K[0, 2]) / K[0, 0]  # [M]
    cam_y = (np.concatenate(py) - K[1, 2]) / K[1, 1]  # [M]
    # Directions with camera-space z = 1, so the hit parameter t is the z-depth.
    d = rotation[:, :1] * cam_x + rotation[:, 1:2] * cam_y + rotation[:, 2:3]  # [3, M]
    hits = trace(scene, RayCamera(origin, rotation, K, blocks), d)
    color = shade(scene, hits, origin, d, float(K[0, 0]))  # [3, M]
    n_ss = height * width * supersample * supersample
    samples = color[:, :n_ss].reshape(3, height, supersample, width, supersample)
    # Box filter as a sum of strided views (much faster than .mean over axes (2, 4)).
    rgb = sum(samples[:, :, a, :, b] for a in range(supersample) for b in range(supersample))
    rgb = np.clip(rgb.transpose(1, 2, 0) / supersample**2, 0.0, 1.0)  # [H, W, 3]
    depth = hits.t[n_ss:].reshape(height, width) if with_depth else None
    return rgb, depth


def render_view(
    scene: Scene, c2w_opencv: np.ndarray, K: np.ndarray, height: int, width: int, supersample: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Ray-traces one view.

    c2w_opencv [4, 4] (or [3, 4]), K [3, 3] pixel units -> rgb [H, W, 3] float in [0, 1]
    (average of supersample^2 samples per pixel) and depth [H, W]: z-depth at pixel centers,
    inf where the ray hits the sky. The PNGs of `generate_dataset` are round(255 * rgb).
    """
    rgb, depth = render_samples(scene, c2w_opencv, K, height, width, supersample, with_depth=True)
    return rgb, depth


def depth_at(scene: Scene, c2w_opencv: np.ndarray, K: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Exact z-depth [P] of the rays through continuous pixel positions points [P, 2] (x, y;
    the center of pixel (i, j) is (j + 0.5, i + 0.5)); inf for sky. For exact geometry checks."""
    c2w, K, points = np.asarray(c2w_opencv, float), np.asarray(K, float), np.asarray(points, float)
    rotation = c2w[:3, :3]
    cam_x, cam_y = (points[:, 0] - K[0, 2]) / K[0, 0], (points[:, 1] - K[1, 2]) / K[1, 1]
    d = rotation[:, :1] * cam_x + rotation[:, 1:2] * cam_y + rotation[:, 2:3]  # [3, P]
    return trace(scene, RayCamera(c2w[:3, 3], rotation, K, None), d).t
