"""A trained iLRM network applied to one scene: the input size for the scene's frames, the forward
pass over its input views (Gaussians mapped back into the scene's frame), groups of nearby views
for a pass each, and the SH degree the scene keeps."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ilrm_nerfstudio.core.cameras import normalize_poses
from ilrm_nerfstudio.core.frames import normalized_to_world
from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.core.network import ILRM


@dataclass
class TrainedNetwork:
    network: ILRM
    resolution: tuple[int, int]  # (height, width) the run trained at
    sh_degree: int
    checkpoint: Path
    bf16: bool = True
    context_views: int = 2  # views per sample the run trained on
    published: bool = False  # the authors' weights: their pose normalization


def network_input_size(frame_hw: tuple[int, int], trained_hw: tuple[int, int], multiple: int) -> tuple[int, int]:
    """The network's input size for frames of `frame_hw`: their aspect ratio, the longest side of
    the training resolution, both sides rounded down to `multiple` (a crop under `multiple` px)."""
    (frame_h, frame_w), longest = frame_hw, max(trained_hw)
    scale = longest / max(frame_h, frame_w)
    height = max(multiple, int(frame_h * scale) // multiple * multiple)
    width = max(multiple, int(frame_w * scale) // multiple * multiple)
    return height, width


@torch.no_grad()
def predict_gaussians(trained: TrainedNetwork, images: Tensor, c2w: Tensor, K: Tensor) -> Gaussians:
    """Input views (images [V, 3, H, W] at the network's resolution, OpenCV c2w [V, 4, 4] and K
    [V, 3, 3] in the scene's frame) -> Gaussians in the scene's frame (one forward pass)."""
    device = next(trained.network.parameters()).device
    if trained.published:
        from ilrm_nerfstudio.core.published import published_normalize_poses

        normalized, _, scale = published_normalize_poses(c2w.double())
    else:
        normalized, _, scale = normalize_poses(c2w.double())
    use_bf16 = trained.bf16 and device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
        g = trained.network(images[None].to(device), normalized[None].float().to(device), K[None].float().to(device))
    g = g.map(lambda t: t[0].float())
    return normalized_to_world(g, c2w.to(device), scale)


def view_groups(c2w: Tensor, anchors: list[int], size: int) -> list[list[int]]:
    """For every anchor view, the anchor first and its size - 1 nearest other views (camera
    centers, among views facing within 45 degrees of it; the closest ones otherwise)."""
    centers = c2w[:, :3, 3].double()
    forward = F.normalize(c2w[:, :3, 2].double(), dim=-1)
    groups = []
    for anchor in anchors:
        distance = (centers - centers[anchor]).norm(dim=-1)
        distance[(forward @ forward[anchor]) < math.cos(math.pi / 4)] += 1e9
        distance[anchor] = float("inf")
        groups.append([anchor] + distance.argsort()[: size - 1].tolist())
    return groups


def with_sh_degree(g: Gaussians, degree: int) -> Gaussians:
    """Pad (zeros) or truncate the SH coefficients to `degree`."""
    K = (degree + 1) ** 2
    sh = g.sh[:, :K]
    if sh.shape[1] < K:
        sh = torch.cat([sh, sh.new_zeros(len(g), K - sh.shape[1], 3)], dim=1)
    return dataclasses.replace(g, sh=sh)
