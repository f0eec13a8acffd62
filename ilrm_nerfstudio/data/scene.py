"""Scenes: cameras in our convention plus a way to read frame i lazily, and `load_view`, which
turns a frame into an image at the training resolution with exactly adjusted intrinsics.

One convention inside the package: OpenCV camera-to-world `c2w` [N, 4, 4] and pixel intrinsics
`K` [N, 3, 3] that refer to the stored image size `image_sizes[i]` (a downscaled copy of the
image, e.g. DL3DV's `images_4`, rescales them by its actual size when it is read). Pixel centers
sit at (x + 0.5, y + 0.5), as in COLMAP and nerfstudio.

Readers here (no nerfstudio import):
- `load_nerfstudio_scene`: a folder with a nerfstudio `transforms.json` (OpenGL c2w), as written
  by `ns-process-data`, DL3DV (also under `<scene>/nerfstudio/`) and `ilrm-generate-data`.
- `load_opencv_scene`: a Long-LRM / iLRM-wide `opencv_cameras.json` (OpenCV w2c, pixel units).
- `ChunkScene`: one example of a pixelSplat-style torch chunk (see `sources.py`), JPEG bytes
  decoded only when a frame is read.
Lens distortion (OpenCV k1, k2, p1, p2, k3) is removed when a frame is read (`undistort_image`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ilrm_nerfstudio.core.cameras import intrinsics_matrix, opengl_to_opencv, resize_and_crop_intrinsics
from ilrm_nerfstudio.core.errors import ILRMError

DOWNSCALE_FACTORS = (8, 4, 2)  # `images_8`, `images_4`, `images_2` next to `images`


@dataclass
class Scene:
    name: str
    image_paths: list[Path]
    c2w: Tensor  # [N, 4, 4] OpenCV camera-to-world (float64)
    K: Tensor  # [N, 3, 3] pixel intrinsics at the size of the stored images (float64)
    image_sizes: list[tuple[int, int]]  # (height, width) the intrinsics refer to
    distortion: Tensor | None = None  # [N, 5] OpenCV (k1, k2, p1, p2, k3); None: pinhole
    frame_ids: list[int] | None = None  # frame numbers in the original sequence (after `subset`)

    def __len__(self) -> int:
        return len(self.c2w)

    def frame_id(self, index: int) -> int:
        return index if self.frame_ids is None else self.frame_ids[index]

    def describe(self, index: int) -> str:
        """'scene NAME frame I (FILE)' for messages."""
        return f"scene {self.name} frame {self.frame_id(index)} ({self.image_paths[index]})"

    def read_image(self, index: int) -> Image.Image:
        """Frame `index` decoded as an RGB PIL image (raises ILRMError naming scene and frame)."""
        path = self.image_paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise ILRMError(f"{path}: image file not found ({self.describe(index)})") from None
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise ILRMError(f"{path}: cannot read image ({error}) ({self.describe(index)})") from None

    def subset(self, indices: list[int]) -> Scene:
        """The scene restricted to `indices` (messages keep the original frame numbers)."""
        return dataclasses.replace(
            self,
            image_paths=[self.image_paths[i] for i in indices],
            c2w=self.c2w[indices],
            K=self.K[indices],
            image_sizes=[self.image_sizes[i] for i in indices],
            distortion=None if self.distortion is None else self.distortion[indices],
            frame_ids=[self.frame_id(i) for i in indices],
        )

    def check_poses(self, indices: list[int] | None = None) -> None:
        """Raise ILRMError naming the first frame whose pose is not finite or not rigid."""
        indices = list(range(len(self))) if indices is None else indices
        problem = pose_problems(self.c2w[indices])
        if problem is not None:
            i, what = problem
            raise ILRMError(f"{self.describe(indices[i])}: camera pose {what}")


@dataclass
class ChunkScene(Scene):
    """A scene of a torch chunk: frames are JPEG bytes in memory, decoded when read."""

    jpegs: list[Tensor] = dataclasses.field(default_factory=list)  # uint8 1-D tensors

    def describe(self, index: int) -> str:
        return f"scene {self.name} frame {self.frame_id(index)} (chunk {self.image_paths[index]})"

    def read_image(self, index: int) -> Image.Image:
        try:
            data = self.jpegs[index].numpy().tobytes()
            with Image.open(io.BytesIO(data)) as image:
                return image.convert("RGB")
        except UnidentifiedImageError:
            raise ILRMError(f"{self.describe(index)}: cannot decode the image (not a valid JPEG/PNG)") from None
        except (OSError, ValueError, AttributeError) as error:
            raise ILRMError(f"{self.describe(index)}: cannot decode the image ({error})") from None

    def subset(self, indices: list[int]) -> ChunkScene:
        scene = Scene.subset(self, indices)
        scene.jpegs = [self.jpegs[i] for i in indices]
        return scene


def pose_problems(c2w: Tensor) -> tuple[int, str] | None:
    """(index, problem) of the first camera [N, 4, 4] that is not finite or not a rigid transform."""
    c2w = c2w.double()
    finite = torch.isfinite(c2w).flatten(1).all(1)
    rotation = c2w[:, :3, :3]
    eye = torch.eye(3, dtype=torch.float64)
    orthonormal = ((rotation @ rotation.transpose(1, 2) - eye).abs().flatten(1).amax(1) <= 1e-3) & (
        torch.linalg.det(rotation) > 0
    )
    bad = (~finite | ~orthonormal).nonzero()
    if len(bad) == 0:
        return None
    i = int(bad[0])
    return i, "is not finite (NaN or inf)" if not finite[i] else "is not a rigid transform (rotation not orthonormal)"


# ------------------------------------------------------------------------------------------------
# nerfstudio transforms.json
# ------------------------------------------------------------------------------------------------

_DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3")  # OpenCV order


def _intrinsics_of(frame: dict, meta: dict, path: Path) -> tuple[list[float], tuple[int, int]]:
    # As nerfstudio's own dataparser reads them: a global value applies to every frame, per-frame
    # values are used where there is no global one.
    values = []
    for key in ("fl_x", "fl_y", "cx", "cy", "h", "w"):
        value = meta.get(key, frame.get(key))
        if value is None:
            raise ILRMError(f"{path}: missing camera intrinsic '{key}' (neither per frame nor global)")
        values.append(float(value))
    fx, fy, cx, cy, h, w = values
    if not all(math.isfinite(v) for v in values) or min(fx, fy, h, w) <= 0:
        raise ILRMError(f"{path}: invalid intrinsics fl_x={fx} fl_y={fy} cx={cx} cy={cy} w={w} h={h}")
    return [fx, fy, cx, cy], (int(h), int(w))


def _distortion_of(frame: dict, meta: dict, path: Path, i: int) -> list[float]:
    if abs(float(meta.get("k4", frame.get("k4", 0.0)))) > 1e-12:
        raise ILRMError(f"{path}: frame {i}: distortion coefficient k4 is not supported for perspective cameras")
    return [float(meta.get(k, frame.get(k, 0.0))) for k in _DISTORTION_KEYS]


def resolve_transforms(scene_dir: Path) -> Path:
    """The transforms.json of a scene folder: `<dir>/transforms.json` or DL3DV's
    `<dir>/nerfstudio/transforms.json`; `scene_dir` may also be the json file itself."""
    scene_dir = Path(scene_dir)
    if scene_dir.suffix == ".json" and scene_dir.is_file():
        return scene_dir
    for candidate in (scene_dir / "transforms.json", scene_dir / "nerfstudio" / "transforms.json"):
        if candidate.is_file():
            return candidate
    raise ILRMError(f"{scene_dir / 'transforms.json'}: not found (a scene folder needs a nerfstudio transforms.json)")


def choose_image_folder(
    paths: list[Path],
    sizes: list[tuple[int, int]],
    image_folder: str | None,
    target_hw: tuple[int, int] | None,
    where: Path,
) -> list[Path]:
    """Swap `images/` for a downscaled copy `images_N/` (DL3DV, ns-process-data).

    image_folder None or "images": keep the paths; "images_N": that folder (must exist); "auto":
    the most downscaled existing copy that still covers `target_hw` (no upsampling). Only the
    directory part changes; intrinsics are rescaled from the actual image size when read."""
    if image_folder in (None, "images") or not paths:
        return paths

    def swapped(folder: str) -> list[Path]:
        return [p.parent.parent / folder / p.name for p in paths]

    if image_folder != "auto":
        new = swapped(image_folder)
        if not new[0].parent.is_dir():
            raise ILRMError(f"{where}: image folder {new[0].parent} not found (image_folder={image_folder!r})")
        return new
    folder = paths[0].parent.name
    min_h, min_w = min(s[0] for s in sizes), min(s[1] for s in sizes)
    for factor in DOWNSCALE_FACTORS:  # most downscaled first
        if target_hw is None or min_h // factor < target_hw[0] or min_w // factor < target_hw[1]:
            continue
        new = swapped(f"{folder}_{factor}")
        if new[0].is_file() and new[-1].is_file():
            return new
    if not paths[0].is_file():  # no full-resolution copy (e.g. DL3DV-960P): the largest copy there is
        for factor in sorted(DOWNSCALE_FACTORS):
            new = swapped(f"{folder}_{factor}")
            if new[0].is_file():
                return new
    return paths


def load_nerfstudio_scene(
    scene_dir: Path,
    image_folder: str | None = None,
    target_hw: tuple[int, int] | None = None,
    distortion: str = "undistort",
    name: str | None = None,
) -> Scene:
    """Read a nerfstudio scene (see `resolve_transforms`); check that poses are finite and rigid
    and that every image file exists. Image contents are read later, lazily.

    `image_folder`: see `choose_image_folder`. `distortion`: "undistort" (frames are undistorted
    when read) or "ignore" (treat the cameras as pinholes, as the peer projects do)."""
    scene_dir = Path(scene_dir)
    path = resolve_transforms(scene_dir)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ILRMError(f"{path}: not valid JSON ({error})") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not frames:
        raise ILRMError(f"{path}: no 'frames'")
    if meta.get("camera_model", "OPENCV") not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
        raise ILRMError(
            f"{path}: camera_model {meta['camera_model']!r} is not supported (pinhole and OPENCV cameras only; "
            "undistort fisheye/equirectangular images first, e.g. with COLMAP's image_undistorter)"
        )
    base = path.parent
    paths, poses, intrinsics, sizes, distortions = [], [], [], [], []
    for i, frame in enumerate(frames):
        if "file_path" not in frame or "transform_matrix" not in frame:
            raise ILRMError(f"{path}: frame {i} needs 'file_path' and 'transform_matrix'")
        pose = np.asarray(frame["transform_matrix"], dtype=np.float64)
        if pose.shape not in ((4, 4), (3, 4)) or not np.isfinite(pose).all():
            raise ILRMError(f"{path}: frame {i} ({frame['file_path']}): transform_matrix must be a finite 4x4 matrix")
        rotation = pose[:3, :3]
        if np.abs(rotation @ rotation.T - np.eye(3)).max() > 1e-3 or np.linalg.det(rotation) < 0:
            raise ILRMError(f"{path}: frame {i} ({frame['file_path']}): transform_matrix is not a rigid transform")
        params, size = _intrinsics_of(frame, meta, path)
        paths.append(base / frame["file_path"])
        poses.append(pose[:3])
        intrinsics.append(params)
        sizes.append(size)
        distortions.append(_distortion_of(frame, meta, path, i))
    chosen = choose_image_folder(paths, sizes, image_folder, target_hw, path)
    for i, image_path in enumerate(chosen):
        if not image_path.is_file():
            raise ILRMError(f"{path}: frame {i}: image file {image_path} not found")

    c2w_gl = torch.eye(4, dtype=torch.float64).repeat(len(poses), 1, 1)
    c2w_gl[:, :3] = torch.from_numpy(np.stack(poses))
    fx, fy, cx, cy = torch.tensor(intrinsics, dtype=torch.float64).unbind(-1)
    dist = torch.tensor(distortions, dtype=torch.float32)
    dist = dist if distortion == "undistort" and bool(dist.abs().max() > 0) else None
    if name is None:
        name = scene_dir.name if scene_dir.suffix != ".json" else scene_dir.parent.name
    return Scene(name, chosen, opengl_to_opencv(c2w_gl), intrinsics_matrix(fx, fy, cx, cy), sizes, dist)


# ------------------------------------------------------------------------------------------------
# opencv_cameras.json (Long-LRM / iLRM wide)
# ------------------------------------------------------------------------------------------------


def load_opencv_scene(
    path: Path, image_folder: str | None = None, target_hw: tuple[int, int] | None = None, name: str | None = None
) -> Scene:
    """Read `{scene_name, frames: [{file_path, w2c (4x4), h, w, fx, fy, cx, cy}]}` (OpenCV, pixel
    units). `path` is the json file or its folder; relative file paths are relative to the json."""
    path = Path(path)
    if path.is_dir():
        path = path / "opencv_cameras.json"
    if not path.is_file():
        raise ILRMError(f"{path}: not found (an opencv_cameras.json scene)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ILRMError(f"{path}: not valid JSON ({error})") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not frames:
        raise ILRMError(f"{path}: no 'frames'")
    paths, w2cs, intrinsics, sizes = [], [], [], []
    for i, frame in enumerate(frames):
        try:
            w2c = np.asarray(frame["w2c"], dtype=np.float64)
            values = [float(frame[k]) for k in ("fx", "fy", "cx", "cy", "h", "w")]
            file_path = frame["file_path"]
        except (KeyError, TypeError, ValueError) as error:
            raise ILRMError(f"{path}: frame {i} needs file_path, w2c, h, w, fx, fy, cx, cy ({error!r})") from None
        if w2c.shape not in ((4, 4), (3, 4)) or not np.isfinite(w2c).all():
            raise ILRMError(f"{path}: frame {i} ({file_path}): w2c must be a finite 4x4 matrix")
        rotation = w2c[:3, :3]
        if np.abs(rotation @ rotation.T - np.eye(3)).max() > 1e-3 or np.linalg.det(rotation) < 0:
            raise ILRMError(f"{path}: frame {i} ({file_path}): w2c is not a rigid transform")
        fx, fy, cx, cy, h, w = values
        if not all(math.isfinite(v) for v in values) or min(fx, fy, h, w) <= 0:
            raise ILRMError(f"{path}: frame {i}: invalid intrinsics fx={fx} fy={fy} cx={cx} cy={cy} w={w} h={h}")
        full = np.eye(4)
        full[:3] = w2c[:3]
        paths.append(Path(file_path) if Path(file_path).is_absolute() else path.parent / file_path)
        w2cs.append(full)
        intrinsics.append([fx, fy, cx, cy])
        sizes.append((int(h), int(w)))
    chosen = choose_image_folder(paths, sizes, image_folder, target_hw, path)
    for i, image_path in enumerate(chosen):
        if not image_path.is_file():
            raise ILRMError(f"{path}: frame {i}: image file {image_path} not found")
    c2w = torch.linalg.inv(torch.from_numpy(np.stack(w2cs)))
    fx, fy, cx, cy = torch.tensor(intrinsics, dtype=torch.float64).unbind(-1)
    name = name or str(meta.get("scene_name") or path.parent.name)
    return Scene(name, chosen, c2w, intrinsics_matrix(fx, fy, cx, cy), sizes)


# ------------------------------------------------------------------------------------------------
# pixelSplat-style chunk examples
# ------------------------------------------------------------------------------------------------


def chunk_example_to_scene(example: dict, chunk: Path) -> ChunkScene:
    """One chunk example {key, url, timestamps, images (JPEG bytes), cameras [N, 18]} -> scene.

    cameras = [fx/W, fy/H, cx/W, cy/H, 0, 0, w2c (3x4, row-major, OpenCV)]. The normalized
    intrinsics are turned into pixels with the size of the first frame (read from its JPEG
    header); frames of another size get them rescaled when read."""
    key = str(example.get("key", "?"))
    try:
        cameras = torch.as_tensor(example["cameras"]).double()
        jpegs = list(example["images"])
    except (KeyError, TypeError) as error:
        raise ILRMError(
            f"scene {key} (chunk {chunk}): malformed example, needs 'cameras' and 'images' ({error!r})"
        ) from None
    if cameras.ndim != 2 or cameras.shape[1] != 18 or len(cameras) != len(jpegs):
        raise ILRMError(
            f"scene {key} (chunk {chunk}): cameras must be [N, 18] with one row per image, got "
            f"{tuple(cameras.shape)} for {len(jpegs)} images"
        )
    if not jpegs:
        raise ILRMError(f"scene {key} (chunk {chunk}): no frames")
    try:
        with Image.open(io.BytesIO(jpegs[0].numpy().tobytes())) as first:
            width, height = first.size
    except (OSError, UnidentifiedImageError, ValueError, AttributeError) as error:
        detail = "not a valid JPEG/PNG" if isinstance(error, UnidentifiedImageError) else str(error)
        raise ILRMError(f"scene {key} frame 0 (chunk {chunk}): cannot decode the image ({detail})") from None
    w2c = torch.eye(4, dtype=torch.float64).repeat(len(cameras), 1, 1)
    w2c[:, :3] = cameras[:, 6:].reshape(-1, 3, 4)
    finite = torch.isfinite(w2c).flatten(1).all(1)
    c2w = torch.full_like(w2c, float("nan"))
    if bool(finite.any()):
        c2w[finite] = torch.linalg.inv(w2c[finite])
    fx, fy, cx, cy = cameras[:, 0] * width, cameras[:, 1] * height, cameras[:, 2] * width, cameras[:, 3] * height
    K = intrinsics_matrix(fx, fy, cx, cy)
    return ChunkScene(key, [Path(chunk)] * len(jpegs), c2w, K, [(height, width)] * len(jpegs), jpegs=jpegs)


# ------------------------------------------------------------------------------------------------
# Scene folders and frame loading
# ------------------------------------------------------------------------------------------------


def find_scene_dirs(root: Path, split: str | None = None) -> list[Path]:
    """Scene folders (with a transforms.json) under `root/<split>/` (or `root/` when it has no
    such split folder), sorted by name. `root` itself may be a single scene."""
    root = Path(root)
    if not root.exists():
        raise ILRMError(f"{root}: data folder not found")
    if (root / "transforms.json").is_file():
        return [root]
    base = root / split if split is not None and (root / split).is_dir() else root
    scenes = sorted(p.parent for p in base.glob("*/transforms.json"))
    if not scenes:
        raise ILRMError(f"{base}: no scene folders with a transforms.json found")
    return scenes


def _to_opencv_pixels(K: Tensor) -> np.ndarray:
    """Our K (pixel centers at +0.5) -> OpenCV's (pixel centers at integers)."""
    K = K.double().numpy().copy()
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


def undistort_image(image: Image.Image, K: Tensor, coefficients: Tensor) -> tuple[Image.Image, Tensor]:
    """Remove OpenCV radial-tangential distortion (k1, k2, p1, p2, k3). The output keeps the size;
    its pinhole intrinsics are chosen so that every output pixel sees image content (no black
    border). Returns the undistorted image and its exact intrinsics."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv comes with nerfstudio
        raise ILRMError("undistorting needs OpenCV (pip install opencv-python), or set distortion='ignore'") from None
    size = (image.width, image.height)
    K_cv = _to_opencv_pixels(K)
    dist = coefficients.double().numpy()
    new_K, _ = cv2.getOptimalNewCameraMatrix(K_cv, dist, size, 0.0, size)
    pixels = cv2.undistort(np.asarray(image), K_cv, dist, None, new_K)
    new_K = torch.from_numpy(new_K).to(K.dtype)
    new_K[0, 2] += 0.5
    new_K[1, 2] += 0.5
    return Image.fromarray(pixels), new_K


def load_view(scene: Scene, index: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Image `index` of `scene` resized to cover (height, width) and center cropped.

    Returns the image [3, height, width] in [0, 1] and its intrinsics [3, 3], adjusted exactly
    (focal lengths and principal point)."""
    pixels, K = load_view_uint8(scene, index, height, width)
    return pixels.float() / 255.0, K


def read_undistorted(scene: Scene, index: int) -> tuple[Image.Image, Tensor]:
    """Frame `index` as stored, lens distortion removed, with its exact pinhole intrinsics."""
    image = scene.read_image(index)
    stored_h, stored_w = scene.image_sizes[index]
    # Intrinsics refer to the stored size; a downscaled copy (images_4 ...) rescales them. Anything
    # but a uniform rescale (up to one pixel of rounding) means the file does not fit its camera.
    scale_x, scale_y = image.width / stored_w, image.height / stored_h
    if abs(scale_x - scale_y) > 1.0 / min(image.width, image.height) + 1e-9:
        raise ILRMError(
            f"{scene.describe(index)}: image is {image.width}x{image.height} but its camera is for "
            f"{stored_w}x{stored_h} (width x height): not a uniform rescale"
        )
    K = scene.K[index].clone()
    if (image.height, image.width) != (stored_h, stored_w):
        K[0] *= scale_x
        K[1] *= scale_y
    if scene.distortion is not None and bool(scene.distortion[index].abs().max() > 0):
        image, K = undistort_image(image, K, scene.distortion[index])
    return image, K


def working_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) of a frame scaled so that its longest side is at most `max_side`
    (0: unchanged), aspect ratio kept."""
    if max_side <= 0 or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def load_working_view(scene: Scene, index: int, max_side: int) -> tuple[Tensor, Tensor]:
    """Frame `index` undistorted and resized (whole frame, aspect kept) so that its longest side
    is at most `max_side`: uint8 [H, W, 3] and its intrinsics [3, 3], scaled exactly per axis."""
    image, K = read_undistorted(scene, index)
    height, width = working_size(image.height, image.width, max_side)
    if (height, width) != (image.height, image.width):
        K = K.clone()
        K[0] *= width / image.width
        K[1] *= height / image.height
        image = image.resize((width, height), Image.LANCZOS, reducing_gap=3.0)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return pixels, K.float()


def load_view_uint8(scene: Scene, index: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """`load_view` with the image as uint8 [3, height, width] (compact for caches)."""
    image, K = read_undistorted(scene, index)
    K, (resized_h, resized_w), (top, left) = resize_and_crop_intrinsics(K, (image.height, image.width), (height, width))
    if (resized_h, resized_w) != (image.height, image.width):
        # reducing_gap: large reductions (full-resolution DL3DV) first box-reduce, exactly tracked.
        image = image.resize((resized_w, resized_h), Image.LANCZOS, reducing_gap=3.0)
    image = image.crop((left, top, left + width, top + height))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels, K.float()
