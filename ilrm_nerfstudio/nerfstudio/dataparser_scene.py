"""A single capture read through nerfstudio's dataparsers (COLMAP models, transforms.json) into
our `Scene` (OpenCV c2w, pixel intrinsics): the multi-scene data manager's "single-scene" source.
Here, not in data/, because it needs nerfstudio."""

from __future__ import annotations

from pathlib import Path

import torch
from nerfstudio.cameras.cameras import CameraType
from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.utils.rich_utils import CONSOLE

from ilrm_nerfstudio.core.cameras import intrinsics_matrix, opengl_to_opencv
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.data.scene import Scene, choose_image_folder, load_opencv_scene
from ilrm_nerfstudio.data.sources import LoadOptions, colmap_model_dir
from ilrm_nerfstudio.data.validate import K4_PROBLEM


def _dataparser_for(root: Path):
    """nerfstudio's dataparser for a capture: the file's own poses (no orientation, centering or
    scaling), no downscaling (which would prompt), every image in the 'train' split."""
    common = dict(
        orientation_method="none",
        center_method="none",
        auto_scale_poses=False,
        scale_factor=1.0,
        downscale_factor=1,
        eval_mode="all",
    )
    if root.suffix == ".json" or (root / "transforms.json").is_file():
        return NerfstudioDataParserConfig(data=root, load_3D_points=False, **common)
    if (root / "nerfstudio" / "transforms.json").is_file():
        return NerfstudioDataParserConfig(data=root / "nerfstudio", load_3D_points=False, **common)
    model = colmap_model_dir(root)
    if model is not None:
        images = next((p for p in ("images", "input", "colmap/images") if (root / p).is_dir()), "images")
        return ColmapDataParserConfig(
            data=root,
            colmap_path=model.relative_to(root),
            images_path=Path(images),
            assume_colmap_world_coordinate_convention=False,
            load_3D_points=False,
            **common,
        )
    raise ILRMError(f"{root}: not a single scene (no transforms.json, opencv_cameras.json or COLMAP model)")


def scene_from_dataparser_outputs(outputs, name: str, distortion: str = "undistort") -> Scene:
    """nerfstudio `DataparserOutputs` -> Scene (OpenCV c2w, pixel intrinsics, frames in file-name
    order). Other dataparsers than `_dataparser_for`'s may move the poses by a similarity, which
    the per-sample pose normalization removes."""
    cameras = outputs.cameras
    n = len(outputs.image_filenames)
    camera_types = cameras.camera_type.reshape(-1)
    if bool((camera_types != CameraType.PERSPECTIVE.value).any()):
        raise ILRMError(
            f"scene {name}: only perspective cameras are supported (found {CameraType(int(camera_types[0])).name}); "
            "undistort fisheye images first, e.g. with COLMAP's image_undistorter"
        )
    c2w_gl = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w_gl[:, :3] = cameras.camera_to_worlds.double().reshape(n, 3, 4)
    fx, fy = cameras.fx.double().reshape(n), cameras.fy.double().reshape(n)
    cx, cy = cameras.cx.double().reshape(n), cameras.cy.double().reshape(n)
    heights, widths = cameras.height.reshape(n).tolist(), cameras.width.reshape(n).tolist()
    dist = None
    if cameras.distortion_params is not None and distortion == "undistort":
        params = cameras.distortion_params.double().reshape(n, 6)  # k1, k2, k3, k4, p1, p2
        if bool(params[:, 3].abs().max() > 0):
            raise ILRMError(f"scene {name}: {K4_PROBLEM}")
        if bool(params.abs().max() > 0):
            dist = params[:, [0, 1, 4, 5, 2]].float()  # OpenCV order k1, k2, p1, p2, k3
    paths = [Path(p) for p in outputs.image_filenames]
    order = sorted(range(n), key=lambda i: str(paths[i]))
    scene = Scene(
        name,
        [paths[i] for i in order],
        opengl_to_opencv(c2w_gl[order]),
        intrinsics_matrix(fx, fy, cx, cy)[order],
        [(int(heights[i]), int(widths[i])) for i in order],
        None if dist is None else dist[order],
    )
    scene.check_poses()
    return scene


def load_single_scene(root: Path, options: LoadOptions) -> Scene:
    """One capture (ns-process-data output, COLMAP folder, transforms.json or opencv_cameras.json)."""
    root = Path(root)
    name = root.stem if root.is_file() else root.name
    if (
        root.is_dir() and (root / "opencv_cameras.json").is_file() and not (root / "transforms.json").is_file()
    ) or root.name == "opencv_cameras.json":
        return load_opencv_scene(root, options.image_folder, options.target_hw)
    config = _dataparser_for(root)
    quiet, CONSOLE.quiet = CONSOLE.quiet, True  # its eval-mode=all notice does not apply here
    try:
        outputs = config.setup().get_dataparser_outputs(split="train")
    except Exception as error:  # nerfstudio's parsers assert / raise on bad input: name the scene
        raise ILRMError(
            f"{root}: nerfstudio's {type(config).__name__.replace('Config', '')} could not read the scene "
            f"({type(error).__name__}: {error})"
        ) from None
    finally:
        CONSOLE.quiet = quiet
    scene = scene_from_dataparser_outputs(outputs, name, options.distortion)
    scene.image_paths = choose_image_folder(
        scene.image_paths, scene.image_sizes, options.image_folder, options.target_hw, root
    )
    for i, path in enumerate(scene.image_paths):
        if not path.is_file():
            raise ILRMError(f"scene {name}: frame {i}: image file {path} not found")
    return scene
