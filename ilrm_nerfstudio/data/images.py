"""Decoding a frame: whatever Pillow opens -> 8-bit RGB, the same way for the network's input, the
training targets and the metrics.

- EXIF orientation is applied (a phone photo stored sideways is shown upright).
- 16-bit and 32-bit grayscale (`I;16*`, `I`) are scaled from their full range, float (`F`) from
  [0, 1]; `convert("RGB")` would clip them to white.
- Alpha (RGBA, LA, PA, palette transparency) is composited on `background`, so that a frame looks
  the same to the network and to the loss.
- CMYK, YCbCr, LAB, HSV and palette images go through Pillow's conversion to RGB.

`decode_rgb8` (a file or its bytes -> RGB, every failure an ILRMError) is what the readers call;
`upright_size` reads only the header.
"""

from __future__ import annotations

import contextlib
import io
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ilrm_nerfstudio.core.errors import ILRMError

# Photo files as cameras and phones save them (.heic: iPhones; read through pillow-heif by ilrm-process).
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".heic", ".heif"}

WHITE = (1.0, 1.0, 1.0)
HIGH_DEPTH_GRAY = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}
SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
ImageSource = Path | str | bytes


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (image.mode == "P" and "transparency" in image.info)


def to_rgb8(image: Image.Image, background: tuple[float, float, float] = WHITE) -> Image.Image:
    """An opened image (any mode) -> an 8-bit RGB image of the same size, upright."""
    image = ImageOps.exif_transpose(image)
    if image.mode in HIGH_DEPTH_GRAY:
        values = np.asarray(image, dtype=np.float64) / HIGH_DEPTH_GRAY[image.mode]
        gray = np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1), "RGB")
    if has_alpha(image):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64) / 255.0
        alpha = rgba[..., 3:]
        rgb = rgba[..., :3] * alpha + np.asarray(background, dtype=np.float64) * (1.0 - alpha)
        return Image.fromarray(np.round(rgb * 255.0).astype(np.uint8), "RGB")
    return image.convert("RGB")


FIX = "replace the file or remove its frame"


def file_problem(path: Path) -> str | None:
    """Why there is no image file to read at `path` (None: there is one); no decoding."""
    path = Path(path)
    try:
        info = path.stat()  # one call: scene folders list thousands of frames
    except (OSError, ValueError):
        return f"image file {path} not found"
    if stat.S_ISDIR(info.st_mode):
        return f"{path} is a folder, not an image file"
    if info.st_size == 0:
        return f"image file {path} is empty (0 bytes); {FIX}"
    return None


@contextlib.contextmanager
def _opened(source: ImageSource, where: str) -> Iterator[Image.Image]:
    """`Image.open` of a file or of a file's bytes; every way it can fail -> ILRMError '`where`: ...'."""
    if isinstance(source, bytes):
        if not source:
            raise ILRMError(f"{where}: the image is empty (0 bytes); {FIX}")
        file = io.BytesIO(source)
    else:
        file = Path(source)
        problem = file_problem(file)
        if problem is not None:
            raise ILRMError(f"{where}: {problem}")
    try:
        with Image.open(file) as image:
            yield image
    except UnidentifiedImageError:
        raise ILRMError(f"{where}: not an image Pillow can read (damaged, or another kind of file); {FIX}") from None
    except ILRMError:
        raise
    except PermissionError as error:
        raise ILRMError(f"{where}: cannot read the file ({error.strerror})") from None
    except Exception as error:  # a damaged file: OSError (truncated), SyntaxError, ValueError, EOFError ...
        detail = " ".join(str(error).split()) or type(error).__name__
        raise ILRMError(f"{where}: cannot decode the image ({detail}); {FIX}") from None


def decode_rgb8(source: ImageSource, where: str, background: tuple[float, float, float] = WHITE) -> Image.Image:
    """Open and fully decode an image file (a path, or the file's bytes) with `to_rgb8`: 8-bit
    RGB, upright, alpha composited on `background`. A missing, empty, truncated or non-image
    file -> ILRMError whose message starts with `where` (name the file and the frame there)."""
    with _opened(source, where) as image:
        return to_rgb8(image, background)


def upright_size(source: ImageSource, where: str) -> tuple[int, int]:
    """(height, width) of an image as `decode_rgb8` returns it (EXIF orientation applied), from
    its header only."""
    with _opened(source, where) as image:
        width, height = image.size
        if image.getexif().get(ExifTags.Base.Orientation, 1) in SIDEWAYS:
            width, height = height, width
        return height, width
