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

Every reader checks each camera with `validate.py` (numbers, matrix shape, finiteness, rigidity,
focal lengths and image sizes > 0, cameras not all at one position) and raises ILRMError naming
the file and the frame; every frame is decoded by `images.decode_rgb8` (`Scene.read_image`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ilrm_nerfstudio.core.cameras import intrinsics_matrix, opengl_to_opencv, resize_and_crop_intrinsics
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.data.images import decode_rgb8, file_problem, upright_size
from ilrm_nerfstudio.data.validate import (
    K4_PROBLEM,
    camera_model_problem,
    fits_camera_problem,
    intrinsics_problem,
    number_problem,
    pose_problem,
    read_json,
    spread_problem,
)

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
        """Frame `index` as an 8-bit RGB image, upright, decoded by `images.decode_rgb8`: EXIF
        orientation applied, 16-bit gray scaled (not clipped), palette and CMYK converted, and
        alpha (RGBA, LA, PA) composited on white, the models' default background. The one decoder
        of every frame: network inputs, targets and metrics see the same pixels. A missing,
        empty, truncated or non-image file raises ILRMError naming the scene, frame and file."""
        return decode_rgb8(self.image_paths[index], self.describe(index))

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
        """As `Scene.read_image`, from the frame's bytes."""
        return decode_rgb8(_image_bytes(self.jpegs[index], self.describe(index)), self.describe(index))

    def subset(self, indices: list[int]) -> ChunkScene:
        scene = Scene.subset(self, indices)
        scene.jpegs = [self.jpegs[i] for i in indices]
        return scene


def _image_bytes(value: object, where: str) -> bytes:
    """A chunk frame (a uint8 tensor of the encoded file, as pixelSplat writes them) -> bytes."""
    if isinstance(value, Tensor) and value.dtype == torch.uint8:
        return value.contiguous().numpy().tobytes()
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    kind = f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
    raise ILRMError(f"{where}: an image must be the encoded file as a uint8 tensor, got {kind}")


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
# JSON scenes: the frame checks shared by transforms.json and opencv_cameras.json
# ------------------------------------------------------------------------------------------------

NERFSTUDIO_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
OPENCV_KEYS = ("fx", "fy", "cx", "cy", "w", "h")
_DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3")  # OpenCV order
_MISSING = object()


@dataclass
class _Frame:
    """One checked frame of a JSON scene."""

    index: int  # position in the file's frame list
    image: Path
    pose: np.ndarray  # [4, 4] as stored (transforms.json: OpenGL c2w; opencv_cameras.json: w2c)
    intrinsics: list[float]  # fx, fy, cx, cy in pixels
    size: tuple[int, int]  # (height, width)
    distortion: list[float]  # OpenCV k1, k2, p1, p2, k3


def _parse_frame(
    raw: object, i: int, meta: dict, base: Path, pose_key: str, keys: tuple[str, ...], shared: bool
) -> tuple[_Frame | None, str | None]:
    """Frame `i` of a JSON scene checked for types, shape, finiteness, sign and rigidity: (frame,
    None), or (None, "frame i (file): problem"). `shared`: top-level values apply to every frame
    (nerfstudio's transforms.json, where they also win over per-frame ones)."""
    if not isinstance(raw, dict):
        return None, f"frame {i}: must be an object with 'file_path' and '{pose_key}', got {type(raw).__name__}"
    file_path = raw.get("file_path")
    label = f"frame {i} ({file_path})" if isinstance(file_path, str) else f"frame {i}"
    if not isinstance(file_path, str) or not file_path.strip():
        return None, f"{label}: 'file_path' must be the image's path, got {file_path!r}"
    if pose_key not in raw:
        return None, f"{label}: missing '{pose_key}'"
    pose, problem = pose_problem(raw[pose_key])
    if problem is not None:
        return None, f"{label}: {pose_key} {problem}"

    def value(key: str, default: object = _MISSING) -> object:
        return meta[key] if shared and key in meta else raw.get(key, default)

    values = [value(key) for key in keys]
    missing = [key for key, v in zip(keys, values) if v is _MISSING]
    if missing:
        where = " (neither in the frame nor at the top level)" if shared else ""
        return None, f"{label}: missing camera intrinsic(s) {', '.join(missing)}{where}"
    problem = intrinsics_problem(*values, names=keys)
    if problem is not None:
        return None, f"{label}: {problem}"
    distortion = [0.0] * 5
    if shared:  # transforms.json may hold OpenCV distortion (k4 belongs to fisheye cameras)
        coefficients = {key: value(key, 0.0) for key in (*_DISTORTION_KEYS, "k4")}
        for key, coefficient in coefficients.items():
            problem = number_problem(coefficient)
            if problem is not None:
                return None, f"{label}: distortion coefficient {key} {problem}"
        if abs(float(coefficients["k4"])) > 1e-12:
            return None, f"{label}: {K4_PROBLEM}"
        distortion = [float(coefficients[key]) for key in _DISTORTION_KEYS]
    full = np.eye(4)
    full[:3] = pose[:3]
    fx, fy, cx, cy, w, h = (float(v) for v in values)
    return _Frame(i, base / file_path, full, [fx, fy, cx, cy], (int(h), int(w)), distortion), None


def _read_meta(path: Path) -> dict:
    """The top level of a JSON scene file: an object with a non-empty 'frames' list."""
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise ILRMError(f"{path}: must be a JSON object with a 'frames' list, got a {type(meta).__name__}")
    if not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise ILRMError(f"{path}: no 'frames' (a non-empty list of frames)")
    return meta


def _read_frames(
    path: Path,
    meta: dict,
    pose_key: str,
    keys: tuple[str, ...],
    shared: bool,
    image_folder: str | None,
    target_hw: tuple[int, int] | None,
    on_bad_frame: Callable[[str], None] | None,
) -> list[_Frame]:
    """The checked frames of a scene file (`_read_meta`), with their image files (after
    `choose_image_folder`) checked to exist. A bad frame raises ILRMError naming the file and the
    frame, or, with `on_bad_frame`, is reported to it and left out."""
    raw_frames = meta["frames"]

    def bad(problem: str) -> None:
        if on_bad_frame is None:
            raise ILRMError(f"{path}: {problem}")
        on_bad_frame(f"{path}: {problem}; the frame is left out")

    frames = []
    for i, raw in enumerate(raw_frames):
        frame, problem = _parse_frame(raw, i, meta, path.parent, pose_key, keys, shared)
        if problem is None:
            frames.append(frame)
        else:
            bad(problem)
    chosen = choose_image_folder([f.image for f in frames], [f.size for f in frames], image_folder, target_hw, path)
    kept = []
    for frame, image in zip(frames, chosen):
        problem = file_problem(image)
        if problem is None:
            kept.append(dataclasses.replace(frame, image=image))
        else:
            bad(f"frame {frame.index}: {problem}")
    if not kept:
        raise ILRMError(f"{path}: none of its {len(raw_frames)} frames can be used (see the lines above)")
    return kept


def _json_scene(name: str, path: Path, frames: list[_Frame], c2w: Tensor, distortion: Tensor | None) -> Scene:
    """A Scene of checked frames; frame numbers stay those of the file when some were left out."""
    if len(frames) >= 2:  # a single frame is left to the callers' frame counts
        problem = spread_problem(c2w[:, :3, 3].numpy())
        if problem is not None:
            raise ILRMError(f"{path}: {problem}")
    fx, fy, cx, cy = torch.tensor([f.intrinsics for f in frames], dtype=torch.float64).unbind(-1)
    ids = [f.index for f in frames]
    return Scene(
        name,
        [f.image for f in frames],
        c2w,
        intrinsics_matrix(fx, fy, cx, cy),
        [f.size for f in frames],
        distortion,
        frame_ids=None if ids == list(range(len(ids))) else ids,
    )


# ------------------------------------------------------------------------------------------------
# nerfstudio transforms.json
# ------------------------------------------------------------------------------------------------


def resolve_transforms(scene_dir: Path) -> Path:
    """The transforms.json of a scene folder: `<dir>/transforms.json` or DL3DV's
    `<dir>/nerfstudio/transforms.json`; `scene_dir` may also be the json file itself."""
    scene_dir = Path(scene_dir)
    if scene_dir.suffix == ".json" and scene_dir.is_file():
        return scene_dir
    for candidate in (scene_dir / "transforms.json", scene_dir / "nerfstudio" / "transforms.json"):
        if candidate.is_file():
            return candidate
        if candidate.is_dir():
            raise ILRMError(f"{candidate}: is a folder, not the scene's transforms.json file")
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
    on_bad_frame: Callable[[str], None] | None = None,
) -> Scene:
    """Read a nerfstudio scene (see `resolve_transforms`). Every frame is checked (`_parse_frame`:
    numbers, pose shape, finiteness and rigidity, intrinsics > 0, image file present) and the
    cameras must not all sit at one position; image contents are read later, lazily. A problem
    raises ILRMError naming the file and the frame; with `on_bad_frame`, a bad frame is reported
    to it and left out instead.

    `image_folder`: see `choose_image_folder`. `distortion`: "undistort" (frames are undistorted
    when read) or "ignore" (treat the cameras as pinholes, as the peer projects do)."""
    scene_dir = Path(scene_dir)
    path = resolve_transforms(scene_dir)
    meta = _read_meta(path)
    problem = camera_model_problem(meta.get("camera_model", "OPENCV"))
    if problem is not None:
        raise ILRMError(f"{path}: {problem}")
    frames = _read_frames(path, meta, "transform_matrix", NERFSTUDIO_KEYS, True, image_folder, target_hw, on_bad_frame)
    c2w = opengl_to_opencv(torch.from_numpy(np.stack([f.pose for f in frames])))
    dist = torch.tensor([f.distortion for f in frames], dtype=torch.float32)
    dist = dist if distortion == "undistort" and bool(dist.abs().max() > 0) else None
    if name is None:
        name = scene_dir.name if scene_dir.suffix != ".json" else scene_dir.parent.name
    return _json_scene(name, path, frames, c2w, dist)


# ------------------------------------------------------------------------------------------------
# opencv_cameras.json (Long-LRM / iLRM wide)
# ------------------------------------------------------------------------------------------------


def load_opencv_scene(
    path: Path,
    image_folder: str | None = None,
    target_hw: tuple[int, int] | None = None,
    name: str | None = None,
    on_bad_frame: Callable[[str], None] | None = None,
) -> Scene:
    """Read `{scene_name, frames: [{file_path, w2c (4x4), h, w, fx, fy, cx, cy}]}` (OpenCV, pixel
    units). `path` is the json file or its folder; relative file paths are relative to the json.
    Checked as `load_nerfstudio_scene` checks its frames."""
    path = Path(path)
    if path.is_dir():
        path = path / "opencv_cameras.json"
    meta = _read_meta(path)
    frames = _read_frames(path, meta, "w2c", OPENCV_KEYS, False, image_folder, target_hw, on_bad_frame)
    c2w = torch.linalg.inv(torch.from_numpy(np.stack([f.pose for f in frames])))  # rigid: invertible
    name = name or str(meta.get("scene_name") or path.parent.name)
    return _json_scene(name, path, frames, c2w, None)


# ------------------------------------------------------------------------------------------------
# pixelSplat-style chunk examples
# ------------------------------------------------------------------------------------------------


def chunk_example_to_scene(example: dict, chunk: Path) -> ChunkScene:
    """One chunk example {key, url, timestamps, images (JPEG bytes), cameras [N, 18]} -> scene.

    cameras = [fx/W, fy/H, cx/W, cy/H, 0, 0, w2c (3x4, row-major, OpenCV)]. The normalized
    intrinsics are turned into pixels with the (upright) size of the first frame, read from its
    header; frames of another size get them rescaled when read. Every camera is checked
    (intrinsics finite, focal lengths > 0, w2c a rigid transform) and the cameras must not all sit
    at one position: ILRMError naming the scene, the frame and the chunk file."""
    key = str(example.get("key", "?")) if isinstance(example, dict) else "?"
    where = f"scene {key} (chunk {chunk})"
    try:
        cameras = torch.as_tensor(example["cameras"]).double()
        jpegs = list(example["images"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ILRMError(f"{where}: malformed example, needs 'cameras' [N, 18] and 'images' ({error!r})") from None
    if cameras.ndim != 2 or cameras.shape[1] != 18 or len(cameras) != len(jpegs):
        raise ILRMError(
            f"{where}: cameras must be [N, 18] with one row per image, got {tuple(cameras.shape)} for "
            f"{len(jpegs)} images"
        )
    if not jpegs:
        raise ILRMError(f"{where}: no frames")
    first = f"scene {key} frame 0 (chunk {chunk})"
    height, width = upright_size(_image_bytes(jpegs[0], first), first)
    w2c = np.tile(np.eye(4), (len(cameras), 1, 1))
    for i, row in enumerate(cameras.tolist()):
        label = f"scene {key} frame {i} (chunk {chunk})"
        problem = intrinsics_problem(row[0] * width, row[1] * height, row[2] * width, row[3] * height, width, height)
        if problem is not None:
            raise ILRMError(f"{label}: camera intrinsics: {problem}")
        matrix, problem = pose_problem(np.reshape(row[6:], (3, 4)))
        if problem is not None:
            raise ILRMError(f"{label}: camera matrix (w2c) {problem}")
        w2c[i, :3] = matrix
    c2w = torch.linalg.inv(torch.from_numpy(w2c))  # rigid: invertible
    if len(c2w) >= 2:
        problem = spread_problem(c2w[:, :3, 3].numpy())
        if problem is not None:
            raise ILRMError(f"{where}: {problem}")
    K = intrinsics_matrix(cameras[:, 0] * width, cameras[:, 1] * height, cameras[:, 2] * width, cameras[:, 3] * height)
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
    image = scene.read_image(index)  # upright
    stored_h, stored_w = scene.image_sizes[index]
    # Intrinsics refer to the stored size; a downscaled copy (images_4 ...) rescales them. Anything
    # but a uniform rescale (up to one pixel of rounding) means the file does not fit its camera.
    problem = fits_camera_problem((image.height, image.width), (stored_h, stored_w))
    if problem is not None:
        raise ILRMError(f"{scene.describe(index)}: {problem}")
    K = scene.K[index].clone()
    if (image.height, image.width) != (stored_h, stored_w):
        K[0] *= image.width / stored_w
        K[1] *= image.height / stored_h
    if scene.distortion is not None and bool(scene.distortion[index].abs().max() > 0):
        try:
            image, K = undistort_image(image, K, scene.distortion[index])
        except ILRMError:
            raise
        except Exception as error:  # OpenCV on coefficients it cannot invert
            raise ILRMError(f"{scene.describe(index)}: cannot undistort the frame ({error})") from None
        if not bool(torch.isfinite(K).all()) or min(float(K[0, 0]), float(K[1, 1])) <= 0:
            raise ILRMError(
                f"{scene.describe(index)}: its distortion coefficients {scene.distortion[index].tolist()} give no "
                "usable pinhole camera; check them, or set distortion='ignore'"
            )
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
