"""Gaussians <-> PLY in the INRIA 3D Gaussian Splatting layout (what splat viewers read):
x y z nx ny nz f_dc_0..2 f_rest_* opacity(logit) scale_0..2(log) rot_0..3(wxyz), float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from ilrm_nerfstudio.core.gaussians import Gaussians


def ply_properties(sh_degree: int) -> list[str]:
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def save_ply(gaussians: Gaussians, path: Path) -> Path:
    g = gaussians.map(lambda t: t.detach().float().cpu())
    n = len(g)
    rest = g.sh[:, 1:].transpose(1, 2).reshape(n, -1)  # INRIA order: all red, then green, then blue
    opacity = torch.logit(g.opacities.clamp(1e-6, 1 - 1e-6))[:, None]
    quats = torch.nn.functional.normalize(g.quats, dim=-1)
    columns = torch.cat([g.means, torch.zeros(n, 3), g.sh[:, 0], rest, opacity, torch.log(g.scales), quats], dim=1)
    names = ply_properties(g.sh_degree)
    vertices = np.empty(n, dtype=[(name, "<f4") for name in names])
    for name, column in zip(names, columns.numpy().T):
        vertices[name] = column
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(vertices, "vertex")], byte_order="<").write(str(path))
    return path


def load_ply(path: Path) -> Gaussians:
    """Read an INRIA-layout PLY (ours or ns-export's) back into Gaussians."""
    vertex = PlyData.read(str(path))["vertex"]

    def column(*names):
        return torch.from_numpy(np.stack([np.asarray(vertex[n], dtype=np.float32) for n in names], axis=1))

    rest_names = sorted((p.name for p in vertex.properties if p.name.startswith("f_rest_")), key=lambda s: int(s[7:]))
    n = len(vertex.data)
    dc = column("f_dc_0", "f_dc_1", "f_dc_2")[:, None]
    rest = column(*rest_names).reshape(n, 3, -1).transpose(1, 2) if rest_names else torch.zeros(n, 0, 3)
    return Gaussians(
        means=column("x", "y", "z"),
        scales=torch.exp(column("scale_0", "scale_1", "scale_2")),
        quats=column("rot_0", "rot_1", "rot_2", "rot_3"),
        opacities=torch.sigmoid(column("opacity")[:, 0]),
        sh=torch.cat([dc, rest], dim=1),
    )
