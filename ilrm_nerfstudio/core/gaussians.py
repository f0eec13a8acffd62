"""The 3D Gaussians that the network predicts and the renderer draws."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Gaussians:
    """A set of N 3D Gaussians in world space (one scene, no batch dimension).

    means:     [N, 3]     centers, world coordinates
    scales:    [N, 3]     standard deviations along the local axes (linear, > 0)
    quats:     [N, 4]     rotations as quaternions, w first (need not be normalized)
    opacities: [N]        in (0, 1)
    sh:        [N, K, 3]  spherical-harmonics color coefficients, K = (degree + 1) ** 2;
                          color = max(0, 0.5 + SH(direction)), as gsplat and nerfstudio do
    """

    means: Tensor
    scales: Tensor
    quats: Tensor
    opacities: Tensor
    sh: Tensor

    @property
    def sh_degree(self) -> int:
        return int(round(self.sh.shape[1] ** 0.5)) - 1

    def __len__(self) -> int:
        return self.means.shape[0]

    def map(self, fn) -> Gaussians:
        """Apply `fn` to every tensor (e.g. `.detach()`, `.to(device)`, indexing)."""
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    @staticmethod
    def cat(parts: list[Gaussians]) -> Gaussians:
        return Gaussians(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Gaussians)})
