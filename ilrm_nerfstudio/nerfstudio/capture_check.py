"""The per-scene stage's checks of one capture, before and after nerfstudio's dataparser reads it.

nerfstudio's dataparsers trust their input: a string focal length, a ragged or infinite pose, a
missing first image or a single frame end in a traceback deep inside them (or, worse, in NaN
Gaussians later). So:

- `check_transforms` reads a nerfstudio-data `transforms.json` first (with data/validate.py) and
  keeps only the usable frames; `reading_checked` has nerfstudio's parser read that checked copy in
  place of the file, with the rest of its logic (relative paths, `images_N` folders, split lists)
  unchanged. Frame numbers in messages are the file's.
- `check_outputs` checks what any dataparser (colmap, ...) returns: poses, intrinsics, images.

Frames that cannot be used are dropped with one warning line each when at least
`MIN_TRAINING_FRAMES` usable training frames at different positions remain; otherwise one
ILRMError line. The held-out split may end up empty (then nothing is scored, and ns-eval says so).
The train / held-out split is made over every frame the file lists, before any is dropped, so that
a frame damaged later never moves another frame from one split to the other.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nerfstudio.cameras.cameras import CAMERA_MODEL_TO_TYPE, CameraType
from nerfstudio.data.dataparsers import nerfstudio_dataparser
from nerfstudio.data.dataparsers.nerfstudio_dataparser import MAX_AUTO_RESOLUTION, NerfstudioDataParserConfig
from nerfstudio.data.utils import dataparsers_utils
from PIL import Image

from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.data import validate
from ilrm_nerfstudio.data.images import PHOTO_SUFFIXES
from ilrm_nerfstudio.data.validate import (
    intrinsics_problem,
    matrix_problem,
    number_problem,
    pose_problem,
    read_json,
    rigid_problem,
    spread_problem,
)

MIN_TRAINING_FRAMES = 2
INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")  # nerfstudio's names; a global value wins
DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")
UNUSED_FRAME_KEYS = ("mask_path", "depth_file_path")  # the per-scene stage uses neither
SPLIT_KEYS = ("train_filenames", "val_filenames", "test_filenames")

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
# transforms.json, before nerfstudio reads it
# ------------------------------------------------------------------------------------------------


@dataclass
class CheckedCapture:
    transforms: Path  # the file nerfstudio's parser opens
    meta: dict  # what it reads instead: the usable frames only
    downscale_factor: int | None  # the factor it picks for the images (None: images not checked)
    frames: int  # frames the file lists
    dropped: int


def transforms_path(data: Path) -> Path:
    """The file nerfstudio's Nerfstudio dataparser opens for `data` (its own rule)."""
    return data if data.suffix == ".json" else data / "transforms.json"


def _global_problems(meta: dict) -> str | None:
    """Values that apply to every frame: a problem here is the scene's, not one frame's."""
    model = meta.get("camera_model", "OPENCV")
    if not isinstance(model, str) or model not in CAMERA_MODEL_TO_TYPE:
        return f"camera_model must be one of {', '.join(CAMERA_MODEL_TO_TYPE)}, got {model!r}"
    if CAMERA_MODEL_TO_TYPE[model] != CameraType.PERSPECTIVE:
        return (
            f"camera_model {model!r} is not supported (perspective cameras only); undistort the images first, "
            "e.g. with COLMAP's image_undistorter"
        )
    for key in INTRINSICS:
        if key in meta:
            problem = number_problem(meta[key], positive=key != "cx" and key != "cy")
            if problem is None and key in ("w", "h") and float(meta[key]) != int(meta[key]):
                problem = f"must be whole pixels, got {meta[key]!r}"
            if problem is not None:
                return f"{key} {problem}"
    problem = _distortion_problem(meta)
    if problem is not None:
        return problem
    if "applied_transform" in meta:
        _, problem = matrix_problem(meta["applied_transform"], ((3, 4), (4, 4)))
        if problem is not None:
            return f"applied_transform {problem}"
    if "applied_scale" in meta and number_problem(meta["applied_scale"], positive=True) is not None:
        return f"applied_scale {number_problem(meta['applied_scale'], positive=True)}"
    if meta.get("orientation_override", "none") not in ("pca", "up", "vertical", "none"):
        return f"orientation_override must be pca, up, vertical or none, got {meta['orientation_override']!r}"
    for key in SPLIT_KEYS:
        if key in meta and (not isinstance(meta[key], list) or not all(isinstance(x, str) for x in meta[key])):
            return f"{key} must be a list of image paths"
    return None


def _distortion_problem(source: dict) -> str | None:
    for key in DISTORTION:
        if key in source:
            problem = number_problem(source[key])
            if problem is not None:
                return f"distortion coefficient {key} {problem}"
    if "distortion_params" in source:
        values = source["distortion_params"]
        if not isinstance(values, list) or len(values) != 6 or any(number_problem(v) for v in values):
            return f"distortion_params must be a list of 6 finite numbers (k1, k2, k3, k4, p1, p2), got {values!r}"[
                :200
            ]
    return None


def _file_path_problem(frame: object) -> str | None:
    if not isinstance(frame, dict):
        return f"must be an object with file_path and transform_matrix, got {type(frame).__name__}"
    if "file_path" not in frame:
        return "has no file_path"
    if not isinstance(frame["file_path"], str) or not frame["file_path"].strip():
        return f"file_path must be the image's path, got {frame['file_path']!r}"
    return None


def _camera_problem(frame: dict, meta: dict) -> tuple[np.ndarray | None, tuple[int, int] | None, str | None]:
    """(4x4 pose, camera (h, w), None) of a frame with a file path, or (.., .., why not usable)."""
    if "transform_matrix" not in frame:
        return None, None, "has no transform_matrix"
    pose, problem = pose_problem(frame["transform_matrix"])
    if problem is not None:
        return None, None, f"transform_matrix {problem}"
    values = []
    for key in INTRINSICS:
        source = meta if key in meta else frame
        if key not in source:
            return None, None, f"has no {key} (neither in the frame nor for the whole file)"
        values.append(source[key])
    problem = intrinsics_problem(*values[:4], values[4], values[5])
    if problem is not None:
        names = {"fx": "fl_x", "fy": "fl_y", "width": "w", "height": "h"}
        first = problem.split(" ", 1)
        return None, None, f"{names.get(first[0], first[0])} {first[1]}"
    if not any(key in meta for key in (*DISTORTION, "distortion_params")):
        problem = _distortion_problem(frame)
        if problem is not None:
            return None, None, problem
    full = np.eye(4)
    full[: len(pose)] = pose
    return full, (int(float(values[5])), int(float(values[4]))), None


def _downscale_factor(config: NerfstudioDataParserConfig, data_dir: Path, file_path: str) -> int:
    """The factor nerfstudio's parser picks from the first frame's image (its `_get_fname`)."""
    if config.downscale_factor is not None:
        return int(config.downscale_factor)
    with Image.open(data_dir / file_path) as image:
        max_res = max(image.size)
    df = 0
    while (
        max_res / 2**df > MAX_AUTO_RESOLUTION and (data_dir / f"images_{2 ** (df + 1)}" / Path(file_path).name).exists()
    ):
        df += 1
    return 2**df


def _image_file(data_dir: Path, file_path: str, factor: int) -> Path:
    """The image file nerfstudio's parser reads for a frame (its `_get_fname`)."""
    if factor > 1:
        return data_dir / f"images_{factor}" / Path(file_path).name
    return data_dir / file_path


def _split(config: NerfstudioDataParserConfig, names: list[Path], path: Path) -> tuple[list[int], list[int]]:
    """nerfstudio's train / eval split of the frames `names` (already in its sorted order)."""
    try:
        if config.eval_mode == "fraction":
            i_train, i_eval = dataparsers_utils.get_train_eval_split_fraction(names, config.train_split_fraction)
        elif config.eval_mode == "filename":
            i_train, i_eval = dataparsers_utils.get_train_eval_split_filename(names)
        elif config.eval_mode == "interval":
            i_train, i_eval = dataparsers_utils.get_train_eval_split_interval(names, config.eval_interval)
        else:
            i_train, i_eval = dataparsers_utils.get_train_eval_split_all(names)
    except ValueError:  # eval-mode filename: a name with neither "train" nor "eval"
        raise ILRMError(
            f"{path}: nerfstudio-data --eval-mode filename needs 'train' or 'eval' in every image file name; "
            "use --eval-mode interval"
        ) from None
    return [int(i) for i in i_train], [int(i) for i in i_eval]


def check_transforms(
    config: NerfstudioDataParserConfig, data: Path, warn: Warn, check_image_files: bool = True
) -> CheckedCapture:
    """Read and check `data`'s transforms.json (see the module's docstring). `check_image_files`
    False: the images are neither opened nor required (ns-export / ns-render camera-path)."""
    path = transforms_path(Path(data))
    if Path(data).is_dir() and not path.exists():
        if any(p.suffix.lower() in PHOTO_SUFFIXES for p in Path(data).iterdir()):
            raise ILRMError(
                f"{data}: photos without camera poses: run `ilrm-process {data} SCENE` first (COLMAP, on the CPU), "
                "then ns-train ilrm-finetune --data SCENE"
            )
        raise ILRMError(
            f"{path}: not found; nerfstudio-data reads a transforms.json (ns-process-data output). For a COLMAP "
            "folder add the dataparser subcommand: ns-train ilrm-finetune --data DIR colmap"
        )
    meta = read_json(path)
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise ILRMError(f"{path}: no 'frames' (a non-empty list of frames with file_path and transform_matrix)")
    problem = _global_problems(meta)
    if problem is not None:
        raise ILRMError(f"{path}: {problem}")
    data_dir = path.parent

    problems: dict[int, str] = {}
    cameras: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}
    listed = []  # frames with an image path: these make the split
    for i, frame in enumerate(frames):
        problem = _file_path_problem(frame)
        if problem is None:
            listed.append(i)
            pose, hw, problem = _camera_problem(frame, meta)
            if problem is None:
                cameras[i] = (pose, hw)
        if problem is not None:
            problems[i] = problem

    factor = None
    if check_image_files:
        usable = [i for i in listed if i in cameras]
        for i in usable:  # nerfstudio opens the first frame's image to pick the images_N folder
            try:
                factor = _downscale_factor(config, data_dir, frames[i]["file_path"])
                break
            except (OSError, ValueError, SyntaxError):
                problems[i] = validate.image_problem(data_dir / frames[i]["file_path"]) or "cannot open the image"
        usable = [i for i in usable if i not in problems]
        files = [_image_file(data_dir, frames[i]["file_path"], factor or 1) for i in usable]
        sizes = [cameras[i][1] for i in usable]
        for i, problem in zip(usable, check_images(files, sizes)):
            if problem is not None:
                problems[i] = problem

    # The split over every listed frame, as nerfstudio makes it (its sorted order).
    names = {i: os.path.normpath(_image_file(data_dir, frames[i]["file_path"], factor or 1)) for i in listed}
    order = sorted(listed, key=lambda i: Path(names[i]))
    if any(key in meta for key in SPLIT_KEYS):
        train_names = {os.path.normpath(_image_file(data_dir, x, factor or 1)) for x in meta.get("train_filenames", [])}
        train = [i for i in order if names[i] in train_names]
        eval_frames = None  # the file's own lists, filtered below
    else:
        i_train, i_eval = _split(config, [Path(names[i]) for i in order], path)
        train, eval_frames = [order[k] for k in i_train], [order[k] for k in i_eval]
    kept = [i for i in range(len(frames)) if i not in problems]
    kept_train = [i for i in train if i not in problems]

    def described(i: int) -> str:
        file_path = frames[i].get("file_path") if isinstance(frames[i], dict) else None
        return f"frame {i}" + (f" ({file_path})" if isinstance(file_path, str) else "")

    problem = spread_problem(np.stack([cameras[i][0][:3, 3] for i in kept_train]) if kept_train else np.zeros((0, 3)))
    if problem is not None:
        detail = ""
        if problems:
            first = min(problems)
            detail = (
                f"; {len(problems)} of {len(frames)} frames are unusable, e.g. {described(first)}: {problems[first]}"
            )
        raise ILRMError(
            f"{path}: the training split ({len(train)} of {len(frames)} frames) {problem}{detail}; "
            f"fix the capture (at least {MIN_TRAINING_FRAMES} training frames at different positions)"
        )
    for i in sorted(problems):
        warn(f"{path}: {described(i)}: {problems[i]}; frame dropped")

    checked = copy.deepcopy(meta)
    checked["frames"] = []
    for i in kept:
        frame = {key: value for key, value in frames[i].items() if key not in UNUSED_FRAME_KEYS}
        frame["transform_matrix"] = cameras[i][0].tolist()  # 4x4 always (3x4 rows completed)
        checked["frames"].append(frame)
    if any(isinstance(frames[i], dict) and set(UNUSED_FRAME_KEYS) & set(frames[i]) for i in kept):
        warn(f"{path}: mask_path / depth_file_path are not used by ilrm-finetune (ignored)")
    if problems:
        kept_names = {names[i] for i in kept}
        if eval_frames is None:  # the file's split lists, without the dropped frames
            for key in SPLIT_KEYS:
                if key in meta:
                    checked[key] = [
                        x for x in meta[key] if os.path.normpath(_image_file(data_dir, x, factor or 1)) in kept_names
                    ]
        else:  # the split made above, so that dropping a frame does not move the others
            kept_eval = [frames[i]["file_path"] for i in eval_frames if i not in problems]
            checked["train_filenames"] = [frames[i]["file_path"] for i in kept_train]
            checked["val_filenames"] = checked["test_filenames"] = kept_eval
    return CheckedCapture(path, checked, factor, len(frames), len(problems))


@contextlib.contextmanager
def reading_checked(checked: CheckedCapture) -> Iterator[None]:
    """nerfstudio's Nerfstudio dataparser reads `checked.meta` in place of `checked.transforms`
    (it loads the file through this module attribute; every other file it reads is untouched)."""
    original = nerfstudio_dataparser.load_from_json
    target = os.path.abspath(checked.transforms)

    def load(filename):
        if os.path.abspath(filename) == target:
            return copy.deepcopy(checked.meta)  # the parser edits what it reads
        return original(filename)

    nerfstudio_dataparser.load_from_json = load
    try:
        yield
    finally:
        nerfstudio_dataparser.load_from_json = original


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
    problems: list[str | None] = []
    for i in range(n):
        pose, problem = matrix_problem(c2w[i], ((3, 4),))
        problem = f"camera pose {problem}" if problem else None
        if problem is None and rigid_problem(pose) is not None:
            problem = f"camera pose {rigid_problem(pose)}"
        if problem is None:
            problem = intrinsics_problem(fx[i], fy[i], cx[i], cy[i], width[i], height[i])
            problem = f"intrinsics: {problem}" if problem else None
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
            raise ILRMError(
                f"{data}: the dataparser's training split ({len(problems)} frames) {problem}{detail}; fix the "
                f"capture (at least {MIN_TRAINING_FRAMES} training frames at different positions)"
            )
    for i, problem in enumerate(problems):
        if problem is not None:
            path = str(outputs.image_filenames[i])
            warn(f"{data}: {split} frame {i}{'' if path in problem else f' ({path})'}: {problem}; frame dropped")
    return outputs if len(keep) == len(problems) and outputs.mask_filenames is None else subset_outputs(outputs, keep)
