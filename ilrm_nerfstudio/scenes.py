"""Scenes on disk: nerfstudio `transforms.json` folders -> cameras in our convention and images
resized/cropped to the training resolution with exactly adjusted intrinsics.

No nerfstudio import: a scene is a folder with a `transforms.json` (OpenGL c2w, pixel intrinsics
either global or per frame), as written by `ns-process-data`, DL3DV and `ilrm-generate-data`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .cameras import intrinsics_matrix, opengl_to_opencv, resize_and_crop_intrinsics


class SceneError(ValueError):
    """Bad input data: the message names the file and the problem."""


@dataclass
class Scene:
    name: str
    image_paths: list[Path]
    c2w: Tensor  # [N, 4, 4] OpenCV camera-to-world
    K: Tensor  # [N, 3, 3] pixel intrinsics at the size of the stored images
    image_sizes: list[tuple[int, int]]  # (height, width) of each stored image

    def __len__(self) -> int:
        return len(self.image_paths)


def _intrinsics_of(frame: dict, meta: dict, path: Path) -> tuple[list[float], tuple[int, int]]:
    values = []
    for key in ("fl_x", "fl_y", "cx", "cy", "h", "w"):
        value = frame.get(key, meta.get(key))
        if value is None:
            raise SceneError(f"{path}: missing camera intrinsic '{key}' (neither per frame nor global)")
        values.append(float(value))
    fx, fy, cx, cy, h, w = values
    if not all(math.isfinite(v) for v in values) or min(fx, fy, h, w) <= 0:
        raise SceneError(f"{path}: invalid intrinsics fl_x={fx} fl_y={fy} cx={cx} cy={cy} w={w} h={h}")
    return [fx, fy, cx, cy], (int(h), int(w))


def load_nerfstudio_scene(scene_dir: Path) -> Scene:
    """Read `<scene_dir>/transforms.json`; check that poses are finite and rigid and that every
    image file exists. Image contents are read later, lazily."""
    scene_dir = Path(scene_dir)
    path = scene_dir / "transforms.json"
    if not path.is_file():
        raise SceneError(f"{path}: not found (a scene folder needs a nerfstudio transforms.json)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SceneError(f"{path}: not valid JSON ({error})") from None
    frames = meta.get("frames")
    if not frames:
        raise SceneError(f"{path}: no 'frames'")
    if meta.get("camera_model", "OPENCV") not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
        raise SceneError(f"{path}: camera_model {meta['camera_model']!r} is not supported (pinhole cameras only)")
    if any(abs(float(meta.get(k, 0.0))) > 1e-6 for k in ("k1", "k2", "k3", "k4", "p1", "p2")):
        raise SceneError(f"{path}: lens distortion is not supported; undistort the images first")

    paths, poses, intrinsics, sizes = [], [], [], []
    for i, frame in enumerate(frames):
        if "file_path" not in frame or "transform_matrix" not in frame:
            raise SceneError(f"{path}: frame {i} needs 'file_path' and 'transform_matrix'")
        image_path = scene_dir / frame["file_path"]
        if not image_path.is_file():
            raise SceneError(f"{path}: frame {i}: image file {image_path} not found")
        pose = np.asarray(frame["transform_matrix"], dtype=np.float64)
        if pose.shape not in ((4, 4), (3, 4)) or not np.isfinite(pose).all():
            raise SceneError(f"{path}: frame {i} ({frame['file_path']}): transform_matrix must be a finite 4x4 matrix")
        rotation = pose[:3, :3]
        if np.abs(rotation @ rotation.T - np.eye(3)).max() > 1e-3 or np.linalg.det(rotation) < 0:
            raise SceneError(f"{path}: frame {i} ({frame['file_path']}): transform_matrix is not a rigid transform")
        params, size = _intrinsics_of(frame, meta, path)
        paths.append(image_path)
        poses.append(pose[:3])
        intrinsics.append(params)
        sizes.append(size)

    c2w_gl = torch.eye(4, dtype=torch.float64).repeat(len(poses), 1, 1)
    c2w_gl[:, :3] = torch.from_numpy(np.stack(poses))
    fx, fy, cx, cy = torch.tensor(intrinsics, dtype=torch.float64).unbind(-1)
    return Scene(scene_dir.name, paths, opengl_to_opencv(c2w_gl).float(), intrinsics_matrix(fx, fy, cx, cy).float(), sizes)


def find_scene_dirs(root: Path, split: str | None = None) -> list[Path]:
    """Scene folders under `root/<split>/` (or `root/` when it has no such split folder),
    sorted by name. `root` itself may be a single scene."""
    root = Path(root)
    if not root.exists():
        raise SceneError(f"{root}: data folder not found")
    if (root / "transforms.json").is_file():
        return [root]
    base = root / split if split is not None and (root / split).is_dir() else root
    scenes = sorted(p.parent for p in base.glob("*/transforms.json"))
    if not scenes:
        raise SceneError(f"{base}: no scene folders with a transforms.json found")
    return scenes


def load_view(scene: Scene, index: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Image `index` of `scene` resized to cover (height, width) and center cropped.

    Returns the image [3, height, width] in [0, 1] and its intrinsics [3, 3], adjusted exactly
    (focal lengths and principal point).
    """
    path = scene.image_paths[index]
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise SceneError(f"{path}: cannot read image ({error})") from None
    stored_h, stored_w = scene.image_sizes[index]
    # Intrinsics refer to the size written in transforms.json; a downscaled copy rescales them.
    K = scene.K[index].clone()
    if (image.height, image.width) != (stored_h, stored_w):
        K[0] *= image.width / stored_w
        K[1] *= image.height / stored_h
    K, (resized_h, resized_w), (top, left) = resize_and_crop_intrinsics(K, (image.height, image.width), (height, width))
    if (resized_h, resized_w) != (image.height, image.width):
        image = image.resize((resized_w, resized_h), Image.LANCZOS)
    image = image.crop((left, top, left + width, top + height))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels.float() / 255.0, K
