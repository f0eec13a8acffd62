"""The checks every reader makes before anything else sees a value: files, JSON, numbers, matrices,
cameras and poses. Each failure is an `ILRMError` whose message names where the value came from
(`where`: a file, a frame of a file) and what is wrong with it, in one line.

The per-frame checks return a problem (a string) instead of raising, so that a reader can drop a
bad frame with a warning and go on when enough frames remain (the per-scene stage), or skip the
whole scene (training across scenes).
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.data.images import file_problem, to_rgb8

RIGID_TOLERANCE = 1e-3  # |R R^T - I| above this: not a rotation

# transforms.json camera models that are perspective cameras with OpenCV's distortion (k1 k2 p1 p2
# k3), as nerfstudio's dataparser reads them; both readers (data/scene.py, the per-scene check) use
# these rules. k4 belongs to fisheye cameras: a perspective camera with k4 would be undistorted wrong.
PERSPECTIVE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
K4_PROBLEM = "distortion coefficient k4 is not supported for perspective cameras (OpenCV's are k1 k2 p1 p2 k3)"


def camera_model_problem(model: object) -> str | None:
    if model in PERSPECTIVE_MODELS:
        return None
    return (
        f"camera_model {model!r} is not supported (perspective cameras only: {', '.join(PERSPECTIVE_MODELS)}); "
        "undistort fisheye or 360 images first, e.g. with COLMAP's image_undistorter"
    )


def read_json(path: Path) -> object:
    """A JSON file's contents; unreadable, non-UTF-8 or invalid JSON -> ILRMError naming the file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ILRMError(f"{path}: not found") from None
    except UnicodeDecodeError as error:
        raise ILRMError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8 JSON") from None
    except OSError as error:
        raise ILRMError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ILRMError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None


def number_problem(value: object, positive: bool = False) -> str | None:
    """Why `value` is not a usable number (None: it is)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"must be a number, got {value!r}"
    if not math.isfinite(float(value)):
        return f"must be finite, got {value!r}"
    if positive and float(value) <= 0:
        return f"must be > 0, got {value!r}"
    return None


def as_number(value: object, what: str, where: str, positive: bool = False) -> float:
    problem = number_problem(value, positive)
    if problem is not None:
        raise ILRMError(f"{where}: {what} {problem}")
    return float(value)


def matrix_problem(
    value: object, shapes: tuple[tuple[int, int], ...] = ((4, 4), (3, 4))
) -> tuple[np.ndarray | None, str | None]:
    """(matrix, None) for a finite numeric matrix of one of `shapes`, else (None, why). Strings,
    null and bool entries are not numbers (numpy would turn "1.0" into 1.0)."""
    try:
        matrix = np.asarray(value)
    except (TypeError, ValueError):  # ragged rows
        matrix = None
    if matrix is None or matrix.dtype.kind not in "iuf":
        return None, f"must be a {' or '.join(f'{r}x{c}' for r, c in shapes)} matrix of numbers, got {_short(value)}"
    matrix = matrix.astype(np.float64)
    if matrix.shape not in shapes:
        return None, f"must be a {' or '.join(f'{r}x{c}' for r, c in shapes)} matrix, got shape {matrix.shape}"
    if not np.isfinite(matrix).all():
        return None, "holds NaN or infinite values"
    return matrix, None


def rigid_problem(matrix: np.ndarray) -> str | None:
    """Why the 3x4 / 4x4 pose `matrix` is not a rigid transform (None: it is)."""
    rotation = matrix[:3, :3]
    error = float(np.abs(rotation @ rotation.T - np.eye(3)).max())
    if error > RIGID_TOLERANCE:
        return f"is not a rigid transform (rotation part not orthonormal: |R R^T - I| = {error:.3g})"
    if np.linalg.det(rotation) < 0:
        return "is not a rigid transform (a reflection: det R < 0)"
    if matrix.shape == (4, 4) and np.abs(matrix[3] - np.array([0.0, 0.0, 0.0, 1.0])).max() > 1e-6:
        return f"must end with the row [0, 0, 0, 1], got {matrix[3].tolist()}"
    return None


def pose_problem(value: object) -> tuple[np.ndarray | None, str | None]:
    """A camera pose from a file: (matrix, None), or (None, why) when it is not a finite rigid
    3x4 / 4x4 transform."""
    matrix, problem = matrix_problem(value)
    if problem is None:
        problem = rigid_problem(matrix)
    return (matrix, None) if problem is None else (None, problem)


def intrinsics_problem(
    fx: object,
    fy: object,
    cx: object,
    cy: object,
    width: object,
    height: object,
    names: tuple[str, ...] = ("fx", "fy", "cx", "cy", "width", "height"),
) -> str | None:
    """Why these pinhole intrinsics (pixels) cannot be used (None: they can). `names`: what the
    file calls them (e.g. nerfstudio's fl_x, fl_y, cx, cy, w, h), for the message."""
    values = (fx, fy, cx, cy, width, height)
    for name, value, positive in zip(names, values, (True, True, False, False, True, True)):
        problem = number_problem(value, positive)
        if problem is not None:
            return f"{name} {problem}"
    if float(width) != int(float(width)) or float(height) != int(float(height)):
        return f"image size {width}x{height} must be whole pixels"
    return None


def spread_problem(centers: np.ndarray, minimum: int = 2) -> str | None:
    """Why camera centers [N, 3] cannot make a scene (too few, or all at one position)."""
    if len(centers) < minimum:
        return f"has {len(centers)} usable frame(s); at least {minimum} are needed"
    extent = float(np.abs(centers - centers.mean(0)).max()) if len(centers) else 0.0
    scale = max(1.0, float(np.abs(centers).max()))
    if extent <= 1e-6 * scale:
        return "has every camera at the same position: poses that do not move cannot make a 3D scene"
    return None


def image_problem(path: Path, camera_hw: tuple[int, int] | None = None) -> str | None:
    """Open and decode the image at `path` completely (as training will); why it cannot be used,
    or None. With `camera_hw`, the upright image must have the camera's aspect ratio (a
    downscaled copy is fine)."""
    path = Path(path)
    missing = file_problem(path)
    if missing is not None:
        return missing
    try:
        with Image.open(path) as image:
            width, height = to_rgb8(image).size  # decoded and converted as training will
    except UnidentifiedImageError:
        return f"{path}: not an image Pillow can read"
    except (OSError, ValueError, SyntaxError) as error:
        return f"{path}: cannot decode the image ({_short(error)})"
    if camera_hw is not None:
        size_problem = fits_camera_problem((height, width), camera_hw)
        if size_problem is not None:
            return f"{path}: {size_problem}"
    return None


def fits_camera_problem(image_hw: tuple[int, int], camera_hw: tuple[int, int]) -> str | None:
    """An image fits a camera when it is the camera's size or a uniform rescale of it (up to a pixel
    of rounding)."""
    (height, width), (camera_h, camera_w) = image_hw, camera_hw
    scale_x, scale_y = width / camera_w, height / camera_h
    if abs(scale_x - scale_y) > 1.0 / min(width, height) + 1e-9:
        return (
            f"image is {width}x{height} but its camera is for {camera_w}x{camera_h} (width x height): "
            "not a uniform rescale"
        )
    return None


def _short(value: object, limit: int = 80) -> str:
    text = " ".join(str(value).split()) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
