"""The per-scene stage's one check of a capture: what nerfstudio's dataparser returns.

nerfstudio's dataparsers trust their input: an infinite pose, a missing image or a single frame end
in a traceback deep inside them, or worse in NaN Gaussians later. `check_outputs` checks the
frames any dataparser returned (pose, intrinsics, camera model, image): unusable ones are dropped
with one warning line each while `MIN_TRAINING_FRAMES` usable training frames at different
positions remain, otherwise one ILRMError line. When a dataparser fails outright,
`explain_parse_failure` names the file and, for transforms.json, the first problem the package's
one reader of it (data/scene.py) finds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from nerfstudio.cameras.cameras import CameraType
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

from ilrm_nerfstudio.core.errors import ILRMError, brief
from ilrm_nerfstudio.data import validate
from ilrm_nerfstudio.data.images import PHOTO_SUFFIXES
from ilrm_nerfstudio.data.scene import load_nerfstudio_scene
from ilrm_nerfstudio.data.validate import (
    K4_PROBLEM,
    intrinsics_problem,
    matrix_problem,
    number_problem,
    rigid_problem,
    spread_problem,
)

MIN_TRAINING_FRAMES = 2

Warn = Callable[[str], None]


def check_images(paths: list[Path], sizes: list[tuple[int, int] | None]) -> list[str | None]:
    """`validate.image_problem` of many images, decoded in parallel (Pillow releases the GIL)."""
    workers = max(1, min(8, os.cpu_count() or 1, len(paths)))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(validate.image_problem, paths, sizes))


# ------------------------------------------------------------------------------------------------
# Options of nerfstudio's dataparser that cannot work
# ------------------------------------------------------------------------------------------------


def check_parser_options(config) -> None:
    """nerfstudio-data options that would fail deep inside the parser (or be ignored)."""
    if not isinstance(config, NerfstudioDataParserConfig):
        return
    if config.eval_mode == "interval" and (isinstance(config.eval_interval, bool) or not config.eval_interval >= 1):
        raise ILRMError(
            f"nerfstudio-data --eval-interval must be >= 1 (every k-th frame held out), got {config.eval_interval}"
        )
    if config.eval_mode == "fraction" and not 0.0 <= config.train_split_fraction <= 1.0:
        raise ILRMError(f"nerfstudio-data --train-split-fraction must be in [0, 1], got {config.train_split_fraction}")
    if config.downscale_factor is not None and not config.downscale_factor >= 1:
        raise ILRMError(f"nerfstudio-data --downscale-factor must be >= 1 (or unset), got {config.downscale_factor}")
    for name in ("scale_factor", "scene_scale"):
        problem = number_problem(getattr(config, name), positive=True)
        if problem is not None:
            raise ILRMError(f"nerfstudio-data --{name.replace('_', '-')} {problem}")


# ------------------------------------------------------------------------------------------------
# transforms.json that nerfstudio could not read: the one reader of the package says why
# ------------------------------------------------------------------------------------------------


def transforms_path(data: Path) -> Path:
    """The file nerfstudio's Nerfstudio dataparser opens for `data` (its own rule)."""
    return data if data.suffix == ".json" else data / "transforms.json"


def explain_parse_failure(config, data: Path, error: BaseException) -> str:
    """One line for a capture nerfstudio's dataparser failed on: for transforms.json the first
    problem data/scene.py's reader finds in it (file, frame, value), else nerfstudio's own error,
    naming the data."""
    path = transforms_path(Path(data))
    if isinstance(config.dataparser, NerfstudioDataParserConfig):
        if Path(data).is_dir() and not path.exists():
            if any(p.suffix.lower() in PHOTO_SUFFIXES for p in Path(data).iterdir()):
                return (
                    f"{data}: photos without camera poses: run `ilrm-process {data} SCENE` first (COLMAP, on the "
                    "CPU), then ns-train ilrm-finetune --data SCENE"
                )
            return (
                f"{path}: not found; nerfstudio-data reads a transforms.json (ns-process-data output). For a COLMAP "
                "folder add the dataparser subcommand: ns-train ilrm-finetune --data DIR colmap"
            )
        problem = transforms_problem(Path(data))
        if problem is not None:
            return problem
    return (
        f"{data}: nerfstudio's dataparser ({type(config.dataparser).__name__.removesuffix('Config')}) could not read "
        f"it ({brief(error)}); check the capture, or read it with another dataparser subcommand (nerfstudio-data, "
        "colmap)"
    )


def transforms_problem(data: Path) -> str | None:
    """The first problem of a capture's transforms.json (the file, a value for every frame, then a
    frame), or None."""
    try:
        scene = load_nerfstudio_scene(data)
    except ILRMError as problem:
        return str(problem)
    if len(scene) < MIN_TRAINING_FRAMES:
        return f"{transforms_path(data)}: {len(scene)} frame: at least {MIN_TRAINING_FRAMES} training frames are needed"
    return None


# ------------------------------------------------------------------------------------------------
# What any dataparser returns
# ------------------------------------------------------------------------------------------------


def frame_problems(outputs, check_image_files: bool) -> list[str | None]:
    """Per frame of dataparser `outputs`: why it cannot be used (pose, intrinsics, image), or None."""
    n = len(outputs.image_filenames)
    cameras = outputs.cameras
    c2w = cameras.camera_to_worlds.reshape(n, 3, 4).double().cpu().numpy()
    fx, fy, cx, cy = (getattr(cameras, name).reshape(n).double().tolist() for name in ("fx", "fy", "cx", "cy"))
    width, height = cameras.width.reshape(n).tolist(), cameras.height.reshape(n).tolist()
    types = cameras.camera_type.reshape(n).tolist()
    k4 = cameras.distortion_params[..., 3].reshape(n).tolist() if cameras.distortion_params is not None else [0] * n
    problems: list[str | None] = []
    for i in range(n):
        pose, problem = matrix_problem(c2w[i], ((3, 4),))
        problem = f"camera pose {problem}" if problem else None
        if problem is None and rigid_problem(pose) is not None:
            problem = f"camera pose {rigid_problem(pose)}"
        if problem is None:
            problem = intrinsics_problem(fx[i], fy[i], cx[i], cy[i], width[i], height[i])
            problem = f"intrinsics: {problem}" if problem else None
        if problem is None and types[i] != CameraType.PERSPECTIVE.value:
            problem = "not a perspective camera (undistort the images first, e.g. with COLMAP's image_undistorter)"
        if problem is None and k4[i] != 0:  # nerfstudio undistorts perspective images without k4
            problem = K4_PROBLEM
        problems.append(problem)
    if check_image_files:
        todo = [i for i in range(n) if problems[i] is None]
        files = [Path(outputs.image_filenames[i]) for i in todo]
        for i, problem in zip(todo, check_images(files, [(int(height[i]), int(width[i])) for i in todo])):
            problems[i] = problem
    return problems


def subset_outputs(outputs, keep: list[int]):
    """Dataparser outputs restricted to the frames `keep` (masks dropped: the stage ignores them)."""
    metadata = dict(outputs.metadata)
    metadata.pop("mask_color", None)
    depths = metadata.get("depth_filenames")
    if isinstance(depths, list) and len(depths) == len(outputs.image_filenames):
        metadata["depth_filenames"] = [depths[i] for i in keep]
    return dataclasses.replace(
        outputs,
        image_filenames=[outputs.image_filenames[i] for i in keep],
        cameras=outputs.cameras[torch.tensor(keep, dtype=torch.long)],
        mask_filenames=None,
        metadata=metadata,
    )


def check_outputs(outputs, data: Path, split: str, warn: Warn, check_image_files: bool, training: bool):
    """The usable frames of a split returned by a dataparser; each dropped one is a warning. The
    training split must keep `MIN_TRAINING_FRAMES` frames at different positions."""
    problems = frame_problems(outputs, check_image_files)
    keep = [i for i, problem in enumerate(problems) if problem is None]
    if training:
        centers = outputs.cameras.camera_to_worlds.reshape(-1, 3, 4)[keep, :, 3].double().cpu().numpy()
        problem = spread_problem(centers, MIN_TRAINING_FRAMES)
        if problem is not None:
            bad = [(i, p) for i, p in enumerate(problems) if p is not None]
            detail = f"; {len(bad)} unusable, e.g. {outputs.image_filenames[bad[0][0]]}: {bad[0][1]}" if bad else ""
            cause = transforms_problem(Path(data)) if transforms_path(Path(data)).is_file() else None
            if cause is not None:  # e.g. one infinite pose: nerfstudio's centering spread it to every frame
                raise ILRMError(cause)
            raise ILRMError(
                f"{data}: the dataparser's training split ({len(problems)} frames) {problem}{detail}; fix the "
                f"capture (at least {MIN_TRAINING_FRAMES} training frames at different positions)"
            )
    if training and (outputs.mask_filenames or outputs.metadata.get("depth_filenames")):
        warn(f"{data}: mask_path / depth_file_path are not used by ilrm-finetune (ignored)")
    for i, problem in enumerate(problems):
        if problem is not None:
            path = str(outputs.image_filenames[i])
            warn(f"{data}: {split} frame {i}{'' if path in problem else f' ({path})'}: {problem}; frame dropped")
    return outputs if len(keep) == len(problems) and outputs.mask_filenames is None else subset_outputs(outputs, keep)
