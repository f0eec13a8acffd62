"""Starting Gaussians for the per-scene stage when no network predicts them (pure PyTorch + OpenCV).

- `points_to_gaussians`: one isotropic Gaussian per 3D point (SfM points, or the points
  `triangulate_points` finds), sized by the distance to its nearest neighbours, as 3D Gaussian
  splatting starts from COLMAP's points.
- `triangulate_points`: when the data brings no point cloud (a transforms.json without
  `ply_file_path`), SIFT matches between neighbouring views are triangulated with the known poses.
- `random_gaussians`: uniform random Gaussians around the cameras (the from-scratch baseline).

Cameras are OpenCV camera-to-world [V, 4, 4] with pixel intrinsics [V, 3, 3] (pixel centers at
+0.5), as everywhere in the package.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.core.sh import rgb_to_sh0


def nearest_neighbor_distance(points: Tensor, k: int = 3) -> Tensor:
    """Mean distance of every point to its k nearest other points."""
    from scipy.spatial import cKDTree

    if len(points) < 2:
        return torch.ones(len(points))
    xyz = points.detach().double().cpu().numpy()
    distances, _ = cKDTree(xyz).query(xyz, k=min(k + 1, len(xyz)))
    return torch.from_numpy(distances[:, 1:].mean(-1)).float()


def points_to_gaussians(xyz: Tensor, rgb: Tensor, sh_degree: int, opacity: float = 0.1) -> Gaussians:
    """Points [P, 3] with colors [P, 3] in [0, 1] -> isotropic Gaussians (no rotation)."""
    xyz = xyz.float().cpu()
    scales = nearest_neighbor_distance(xyz).clamp_min(1e-7)[:, None].expand(-1, 3).clone()
    sh = torch.zeros(len(xyz), (sh_degree + 1) ** 2, 3)
    sh[:, 0] = rgb_to_sh0(rgb.float().cpu().clamp(0, 1))
    quats = torch.zeros(len(xyz), 4)
    quats[:, 0] = 1.0
    return Gaussians(means=xyz, scales=scales, quats=quats, opacities=torch.full((len(xyz),), opacity), sh=sh)


def random_gaussians(count: int, camera_c2w: Tensor, sh_degree: int, extent: float = 10.0, seed: int = 0) -> Gaussians:
    """The usual random start of 3D Gaussian splatting: `count` Gaussians uniform in a cube of side
    `extent` x (camera spread) around the cameras' centroid, random colors, opacity 0.1, random
    rotations, scales = mean distance to the 3 nearest neighbors."""
    generator = torch.Generator().manual_seed(seed)
    centers = camera_c2w[:, :3, 3].float().cpu()
    center = centers.mean(0)
    spread = float((centers - center).norm(dim=-1).max().clamp_min(0.1))
    means = center + (torch.rand(count, 3, generator=generator) - 0.5) * extent * spread
    scales = nearest_neighbor_distance(means).clamp_min(1e-6)[:, None].expand(-1, 3).clone()
    sh = torch.zeros(count, (sh_degree + 1) ** 2, 3)
    sh[:, 0] = rgb_to_sh0(torch.rand(count, 3, generator=generator))
    return Gaussians(
        means=means,
        scales=scales,
        quats=F.normalize(torch.randn(count, 4, generator=generator), dim=-1),
        opacities=torch.full((count,), 0.1),
        sh=sh,
    )


def neighbour_pairs(c2w: Tensor, neighbours: int) -> list[tuple[int, int]]:
    """For every view, its `neighbours` nearest views (camera centers) among those looking the
    same way (forward axes within 75 degrees): the pairs worth matching, each once."""
    centers = c2w[:, :3, 3].double()
    forward = F.normalize(c2w[:, :3, 2].double(), dim=-1)
    distance = torch.cdist(centers, centers)
    distance[(forward @ forward.T) < 0.25] = float("inf")
    distance.fill_diagonal_(float("inf"))
    pairs = set()
    for i in range(len(c2w)):
        for j in distance[i].argsort()[:neighbours].tolist():
            if distance[i, j].isfinite():
                pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def triangulate_points(
    images: list[np.ndarray],
    c2w: Tensor,
    K: Tensor,
    neighbours: int = 3,
    max_features: int = 3000,
    max_error_px: float = 1.5,
    min_angle_deg: float = 1.0,
    max_points: int = 150_000,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """3D points seen in pairs of neighbouring views: SIFT keypoints, ratio-test matches,
    triangulated with the known cameras and kept when they lie in front of both cameras, reproject
    within `max_error_px` and are seen under at least `min_angle_deg`. images: uint8 [H, W, 3]
    each. Returns xyz [P, 3] and colors [P, 3] in [0, 1] (P may be 0)."""
    import cv2

    sift = cv2.SIFT_create(nfeatures=max_features)
    features = []
    for image in images:
        keypoints, descriptors = sift.detectAndCompute(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), None)
        # OpenCV puts pixel centers at integers; ours are at +0.5.
        xy = np.array([kp.pt for kp in keypoints], dtype=np.float64).reshape(-1, 2) + 0.5
        features.append((xy, descriptors))
    w2c = torch.linalg.inv(c2w.double()).numpy()
    projections = [K[i].double().numpy() @ w2c[i, :3] for i in range(len(images))]
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    all_xyz, all_rgb = [], []
    for i, j in neighbour_pairs(c2w, neighbours):
        (xy_i, desc_i), (xy_j, desc_j) = features[i], features[j]
        if desc_i is None or desc_j is None or len(desc_i) < 2 or len(desc_j) < 2:
            continue
        matches = [m for m, n in matcher.knnMatch(desc_i, desc_j, k=2) if m.distance < 0.75 * n.distance]
        if len(matches) < 8:
            continue
        a = xy_i[[m.queryIdx for m in matches]]
        b = xy_j[[m.trainIdx for m in matches]]
        homogeneous = cv2.triangulatePoints(projections[i], projections[j], a.T, b.T)
        xyz = (homogeneous[:3] / homogeneous[3:]).T
        keep = np.isfinite(xyz).all(1)
        for view, pixels in ((i, a), (j, b)):
            camera = (w2c[view, :3, :3] @ xyz.T + w2c[view, :3, 3:]).T
            projected = (projections[view] @ np.c_[xyz, np.ones(len(xyz))].T).T
            with np.errstate(divide="ignore", invalid="ignore"):
                error = np.linalg.norm(projected[:, :2] / projected[:, 2:] - pixels, axis=1)
            keep &= (camera[:, 2] > 0) & (error < max_error_px)
        rays_i = xyz - c2w[i, :3, 3].double().numpy()
        rays_j = xyz - c2w[j, :3, 3].double().numpy()
        cosine = (rays_i * rays_j).sum(1) / (np.linalg.norm(rays_i, axis=1) * np.linalg.norm(rays_j, axis=1) + 1e-12)
        keep &= cosine < np.cos(np.deg2rad(min_angle_deg))
        if not keep.any():
            continue
        colors = []
        for view, pixels in ((i, a[keep]), (j, b[keep])):
            x = np.clip(pixels[:, 0].astype(int), 0, images[view].shape[1] - 1)
            y = np.clip(pixels[:, 1].astype(int), 0, images[view].shape[0] - 1)
            colors.append(images[view][y, x].astype(np.float64) / 255.0)
        all_xyz.append(xyz[keep])
        all_rgb.append(0.5 * (colors[0] + colors[1]))
    if not all_xyz:
        return torch.zeros(0, 3), torch.zeros(0, 3)
    xyz, rgb = np.concatenate(all_xyz), np.concatenate(all_rgb)
    if len(xyz) > max_points:
        chosen = np.random.default_rng(seed).choice(len(xyz), max_points, replace=False)
        xyz, rgb = xyz[chosen], rgb[chosen]
    return torch.from_numpy(xyz).float(), torch.from_numpy(rgb).float()
