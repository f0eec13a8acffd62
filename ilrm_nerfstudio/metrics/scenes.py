"""Results of an evaluation over held-out scenes: the summary of the per-scene metric rows, and
each scene's renders written next to their ground truth (ns-eval and ilrm-eval alike)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from PIL import Image

from ilrm_nerfstudio.core.errors import ILRMError


def summarize(per_scene: list[dict], with_std: bool = True) -> dict[str, float]:
    """Mean (and standard deviation) over scenes of every metric of the per-scene rows."""
    if not per_scene:
        raise ILRMError("no held-out scenes to evaluate")
    summary: dict[str, float] = {"num_scenes": float(len(per_scene))}
    for name in [k for k, v in per_scene[0].items() if isinstance(v, float)]:
        values = torch.tensor([row[name] for row in per_scene], dtype=torch.float64)
        summary[name] = float(values.mean())
        if with_std:
            summary[f"{name}_std"] = float(values.std()) if len(values) > 1 else 0.0
    return summary


def save_renders(outputs: dict, batch: dict, render_dir: Path) -> None:
    """<render_dir>/<scene>/frame_NNNNN.png (render) and frame_NNNNN_gt.png (ground truth)."""
    for b, scene in enumerate(batch["scene"]):
        folder = Path(render_dir) / (re.sub(r"[^A-Za-z0-9._#-]+", "_", scene) or "scene")
        folder.mkdir(parents=True, exist_ok=True)
        for t, index in enumerate(batch["target_indices"][b].tolist()):
            for suffix, image in (("", outputs["rgb"][b, t]), ("_gt", batch["target_images"][b, t].permute(1, 2, 0))):
                pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
                Image.fromarray(pixels).save(folder / f"frame_{index:05d}{suffix}.png")
