"""Procedural multi-view data set with exact poses: the plugin's default, download-free data.

Each scene is a small analytic 3D world (a furnished room, or a cluster of objects on a ground
plane under a sky gradient) that is ray-traced in numpy, so every image is *exactly* consistent
with its written camera pose and intrinsics: no Gaussian renderer, no estimated poses.

Layout written by `generate_dataset` (nerfstudio format, one folder per scene)::

    <output>/manifest.json                      scene names per split + generation arguments
    <output>/{train,test}/<scene>/transforms.json
    <output>/{train,test}/<scene>/images/frame_00000.png ...

Conventions: world is z-up; cameras are OpenCV c2w [4, 4] (x right, y down, z forward)
internally and OpenGL c2w (y up, z back) in `transforms.json`, as nerfstudio expects. Depth maps
returned by `render_view` are z-depth (distance along the optical axis), `inf` where a ray hits
the sky. Pure numpy + pillow: importing this package does not import torch or nerfstudio.

Modules: `scene` (Texture, Scene, random scene building), `cameras` (poses along a scene's
trajectory, intrinsics), `raytrace` (ray/primitive intersections, closest hits, shadow rays),
`shading` (solid textures, lighting), `render` (`render_view`, `depth_at`), `dataset` (writing a
data set: `generate_dataset`, manifest, `split_indices`, argument checks).

Command line: ``ilrm-generate-data --output DIR`` (``ilrm_nerfstudio.tools.generate_data``).
"""

from ilrm_nerfstudio.core.errors import ILRMError

from .cameras import camera_poses, intrinsics, look_at
from .dataset import (
    GENERATOR_NAME,
    GENERATOR_VERSION,
    SUPERSAMPLE,
    generate_dataset,
    split_indices,
)
from .render import depth_at, render_view
from .scene import Scene, Texture, make_scene, scene_for_index, scene_rng

__all__ = [
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "SUPERSAMPLE",
    "ILRMError",
    "Scene",
    "Texture",
    "camera_poses",
    "depth_at",
    "generate_dataset",
    "intrinsics",
    "look_at",
    "make_scene",
    "render_view",
    "scene_for_index",
    "scene_rng",
    "split_indices",
]
