"""Damaged input to the readers of training across scenes and of evaluation (transforms.json,
opencv_cameras.json, torch chunks, index and list files, image files): every kind is an ILRMError
naming the file (and frame) and the problem; training skips a bad scene or sample with one line and
counts it, also inside DataLoader workers; evaluation stops with one line. Frames decode to 8-bit
RGB the same way for every mode (16-bit gray, alpha on white, EXIF orientation)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.data.samplers import load_index
from ilrm_nerfstudio.data.scene import chunk_example_to_scene, load_nerfstudio_scene, load_opencv_scene, load_view
from ilrm_nerfstudio.data.sources import ChunkCache, chunk_entries, find_scenes, read_chunk_index
from ilrm_nerfstudio.nerfstudio.ilrm_datamanager import ILRMDataManagerConfig
from tests.test_sources import GL, chunk_scene_specs, frame_images, ground_truth, write_chunks, write_opencv_cameras

H, W, N = 16, 16, 6  # every sample below uses all 6 frames (2 contexts 5 frames apart, 4 targets)


def write_scene(scene_dir: Path, num_frames: int = N, seed: int = 0) -> Path:
    """A nerfstudio scene: global intrinsics, OpenGL c2w per frame, 16x16 PNGs."""
    (scene_dir / "images").mkdir(parents=True, exist_ok=True)
    c2w, K = ground_truth(num_frames, H, W, seed)
    frames = []
    for i, image in enumerate(frame_images(num_frames, H, W, seed)):
        name = f"images/frame_{i + 1:05d}.png"
        Image.fromarray(image).save(scene_dir / name)
        frames.append({"file_path": name, "transform_matrix": (c2w[i] @ GL).tolist()})
    meta = {"camera_model": "OPENCV", "fl_x": 14.0, "fl_y": 15.0, "cx": 8.0, "cy": 8.0, "w": W, "h": H}
    (scene_dir / "transforms.json").write_text(json.dumps({**meta, "frames": frames}))
    return scene_dir


def edit_json(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def pose(meta: dict, i: int) -> np.ndarray:
    return np.asarray(meta["frames"][i]["transform_matrix"])


def set_pose(meta: dict, i: int, matrix) -> None:
    meta["frames"][i]["transform_matrix"] = np.asarray(matrix).tolist()


def per_frame_focal(meta: dict, bad_frame: int, value) -> None:
    fl_x = meta.pop("fl_x")
    for i, frame in enumerate(meta["frames"]):
        frame["fl_x"] = value if i == bad_frame else fl_x


def set_pose_entry(meta: dict, i: int, row: int, column: int, value) -> None:
    meta["frames"][i]["transform_matrix"][row][column] = value


def set_frame(meta: dict, i: int, value) -> None:
    meta["frames"][i] = value


def without_focal(meta: dict, i: int) -> None:
    per_frame_focal(meta, i, None)
    del meta["frames"][i]["fl_x"]


def same_position(meta: dict) -> None:
    for i in range(len(meta["frames"])):
        moved = pose(meta, i)
        moved[:3, 3] = [1.0, 2.0, 3.0]
        set_pose(meta, i, moved)


# (id, change of transforms.json, frame named in the message or None, the problem)
TRANSFORMS_DAMAGE = [
    ("focal-string", lambda m: m.update(fl_x="fifty"), 0, "fl_x must be a number, got 'fifty'"),
    ("focal-string-frame-2", lambda m: per_frame_focal(m, 2, "fifty"), 2, "fl_x must be a number, got 'fifty'"),
    ("focal-numeric-string", lambda m: m.update(fl_y="50"), 0, "fl_y must be a number, got '50'"),
    ("focal-null", lambda m: m.update(fl_x=None), 0, "fl_x must be a number, got None"),
    ("width-bool", lambda m: m.update(w=True), 0, "w must be a number, got True"),
    ("focal-infinite", lambda m: m.update(fl_y=float("inf")), 0, "fl_y must be finite"),
    ("focal-negative", lambda m: m.update(fl_x=-14.0), 0, "fl_x must be > 0, got -14.0"),
    ("focal-zero", lambda m: m.update(fl_y=0), 0, "fl_y must be > 0, got 0"),
    ("width-zero", lambda m: m.update(w=0), 0, "w must be > 0, got 0"),
    ("height-fraction", lambda m: m.update(h=16.5), 0, "must be whole pixels"),
    ("height-missing", lambda m: m.pop("h"), 0, r"missing camera intrinsic\(s\) h"),
    ("focal-missing-frame-3", lambda m: without_focal(m, 3), 3, "fl_x"),
    ("pose-null", lambda m: m["frames"][1].update(transform_matrix=None), 1, "matrix of numbers, got None"),
    ("pose-ragged", lambda m: m["frames"][2]["transform_matrix"][1].pop(), 2, "matrix of numbers"),
    ("pose-strings", lambda m: set_pose_entry(m, 1, 0, 3, "0.5"), 1, "matrix of numbers"),
    ("pose-3x3", lambda m: set_pose(m, 2, pose(m, 2)[:3, :3]), 2, r"got shape \(3, 3\)"),
    ("pose-nan-frame-2", lambda m: set_pose(m, 2, pose(m, 2) * np.nan), 2, "NaN or infinite"),
    ("pose-inf-frame-4", lambda m: set_pose_entry(m, 4, 0, 3, float("inf")), 4, "infinite"),
    ("pose-scaled", lambda m: set_pose(m, 3, pose(m, 3) @ np.diag([2.0, 2.0, 2.0, 1.0])), 3, "not a rigid transform"),
    ("pose-reflected", lambda m: set_pose(m, 1, pose(m, 1) @ np.diag([-1.0, 1, 1, 1])), 1, "a reflection"),
    ("pose-bottom-row", lambda m: set_pose_entry(m, 2, 3, 2, 1.0), 2, "end with the row"),
    ("pose-missing", lambda m: m["frames"][1].pop("transform_matrix"), 1, "missing 'transform_matrix'"),
    ("file-path-missing", lambda m: m["frames"][2].pop("file_path"), 2, "'file_path' must be the image's path"),
    ("file-path-number", lambda m: m["frames"][1].update(file_path=7), 1, "'file_path' must be the image's path"),
    ("frame-not-object", lambda m: set_frame(m, 3, 7), 3, "must be an object"),
    ("distortion-string", lambda m: m.update(k1="small"), 0, "distortion coefficient k1 must be a number"),
    ("distortion-k4", lambda m: m.update(k4=0.1), 0, "k4 is not supported"),
    ("one-position", same_position, None, "every camera at the same position"),
    ("frames-empty", lambda m: m.update(frames=[]), None, "no 'frames'"),
    ("frames-not-list", lambda m: m.update(frames={"a": 1}), None, "no 'frames'"),
    ("fisheye", lambda m: m.update(camera_model="OPENCV_FISHEYE"), None, "camera_model 'OPENCV_FISHEYE' is not"),
]


@pytest.mark.parametrize(
    "change, frame, problem", [d[1:] for d in TRANSFORMS_DAMAGE], ids=[d[0] for d in TRANSFORMS_DAMAGE]
)
def test_damaged_transforms_json_names_file_frame_and_problem(tmp_path, change, frame, problem):
    scene = write_scene(tmp_path / "s")
    edit_json(scene / "transforms.json", change)
    with pytest.raises(ILRMError, match=problem) as error:
        load_nerfstudio_scene(scene)
    message = str(error.value)
    assert message.startswith(str(scene / "transforms.json")) and "\n" not in message
    if frame is not None:
        assert f"frame {frame} " in message or f"frame {frame}:" in message
        assert all(f"frame {i} " not in message for i in range(N) if i != frame)  # the bad frame, not frame 0


FOLDER = "a folder"  # the file is replaced by a folder of that name

# (id, file of the scene folder, what it becomes (bytes, FOLDER, or None: removed), the problem)
FILE_DAMAGE = [
    ("json-invalid", "transforms.json", b'{"frames": [}', "not valid JSON"),
    ("json-empty", "transforms.json", b"", "not valid JSON"),
    ("json-not-utf8", "transforms.json", '{"x": "café"}'.encode("latin-1"), "not UTF-8"),
    ("json-list", "transforms.json", b"[1, 2]", "must be a JSON object"),
    ("json-folder", "transforms.json", FOLDER, "is a folder"),
    ("image-missing", "images/frame_00003.png", None, "frame 2: image file.*not found"),
    ("image-folder", "images/frame_00002.png", FOLDER, "frame 1: .* is a folder, not an image file"),
    ("image-empty", "images/frame_00004.png", b"", "frame 3: .*empty"),
]


@pytest.mark.parametrize("name, data, problem", [d[1:] for d in FILE_DAMAGE], ids=[d[0] for d in FILE_DAMAGE])
def test_damaged_scene_files_are_named(tmp_path, name, data, problem):
    scene = write_scene(tmp_path / "s")
    path = scene / name
    path.unlink()
    if data is FOLDER:
        path.mkdir()
    elif data is not None:
        path.write_bytes(data)
    with pytest.raises(ILRMError, match=problem) as error:
        load_nerfstudio_scene(scene)
    assert path.name in str(error.value) and str(scene) in str(error.value)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# (id, damage of frame 2's image, the problem); the scene loads, reading the frame fails
IMAGE_DAMAGE = [
    ("truncated-png", truncate, "cannot decode the image"),
    ("text-as-png", lambda p: p.write_text("not an image"), "not an image Pillow can read"),
    ("random-bytes", lambda p: p.write_bytes(bytes(range(256)) * 4), "not an image Pillow can read"),
    ("other-aspect", lambda p: Image.fromarray(frame_images(1, 16, 24)[0]).save(p), "not a uniform rescale"),
    ("zero-size", lambda p: p.write_bytes(zero_size_png()), "cannot decode|not an image"),
]


def zero_size_png() -> bytes:
    """A PNG header that claims a 0 x 0 image."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = bytes(8)  # IHDR width and height
    return bytes(data)


@pytest.mark.parametrize("damage, problem", [d[1:] for d in IMAGE_DAMAGE], ids=[d[0] for d in IMAGE_DAMAGE])
def test_damaged_images_are_named_with_scene_frame_and_file(tmp_path, damage, problem):
    scene_dir = write_scene(tmp_path / "s")
    damage(scene_dir / "images" / "frame_00003.png")
    scene = load_nerfstudio_scene(scene_dir)
    load_view(scene, 1, 8, 8)  # the others still read
    with pytest.raises(ILRMError, match=problem) as error:
        load_view(scene, 2, 8, 8)
    assert str(error.value).startswith(f"scene s frame 2 ({scene_dir / 'images' / 'frame_00003.png'})")


def test_a_jpeg_named_png_reads_correctly(tmp_path):
    scene_dir = write_scene(tmp_path / "s")
    path = scene_dir / "images" / "frame_00002.png"
    Image.open(path).convert("RGB").save(path, format="JPEG")
    with Image.open(path) as jpeg:
        assert jpeg.format == "JPEG"
        pixels = np.asarray(jpeg.convert("RGB"))
    image = load_nerfstudio_scene(scene_dir).read_image(1)
    assert image.size == (W, H) and np.array_equal(np.asarray(image), pixels)


def write_opencv_scene(scene_dir: Path) -> Path:
    c2w, K = ground_truth(N, H, W)
    return write_opencv_cameras(scene_dir, c2w, K, frame_images(N, H, W))


OPENCV_DAMAGE = [
    ("w2c-singular", lambda m: m["frames"][2].update(w2c=np.zeros((4, 4)).tolist()), 2, "w2c is not a rigid transform"),
    ("w2c-ragged", lambda m: m["frames"][1]["w2c"][2].pop(), 1, "w2c must be a 4x4 or 3x4 matrix of numbers"),
    ("fx-string", lambda m: m["frames"][3].update(fx="fifty"), 3, "fx must be a number, got 'fifty'"),
    ("fy-missing", lambda m: m["frames"][4].pop("fy"), 4, r"missing camera intrinsic\(s\) fy"),
    ("h-zero", lambda m: m["frames"][1].update(h=0), 1, "h must be > 0"),
    ("no-frames", lambda m: m.clear(), None, "no 'frames'"),
]


@pytest.mark.parametrize("change, frame, problem", [d[1:] for d in OPENCV_DAMAGE], ids=[d[0] for d in OPENCV_DAMAGE])
def test_damaged_opencv_cameras_json_names_file_frame_and_problem(tmp_path, change, frame, problem):
    scene = write_opencv_scene(tmp_path / "s")
    edit_json(scene / "opencv_cameras.json", change)
    with pytest.raises(ILRMError, match=problem) as error:
        load_opencv_scene(scene)
    assert str(error.value).startswith(str(scene / "opencv_cameras.json"))
    if frame is not None:
        assert f"frame {frame} " in str(error.value)


def test_bad_frames_can_be_left_out_with_a_warning(tmp_path):
    """For a caller that prefers fewer frames (one capture): bad frames are reported and dropped;
    messages keep the file's frame numbers."""
    scene_dir = write_scene(tmp_path / "s")
    edit_json(scene_dir / "transforms.json", lambda m: set_pose(m, 2, pose(m, 2) * np.nan))
    (scene_dir / "images" / "frame_00005.png").unlink()
    warnings = []
    scene = load_nerfstudio_scene(scene_dir, on_bad_frame=warnings.append)
    assert len(scene) == N - 2 and scene.frame_ids == [0, 1, 3, 5]
    assert "frame 2 (images/frame_00003.png): transform_matrix holds NaN" in warnings[0]
    assert "frame 4: image file" in warnings[1] and all("left out" in w for w in warnings)
    truncate(scene_dir / "images" / "frame_00004.png")
    with pytest.raises(ILRMError, match=r"scene s frame 3 \(.*frame_00004.png\): cannot decode"):
        scene.read_image(2)


# ------------------------------------------------------------------------------------------------
# Torch chunks, index and list files
# ------------------------------------------------------------------------------------------------


def chunk_example(tmp_path: Path, num_frames: int = N) -> tuple[dict, Path]:
    chunk = write_chunks(tmp_path / "chunks", chunk_scene_specs(1, num_frames, 16, 24)) / "000000.torch"
    (example,) = torch.load(chunk, weights_only=True)
    return example, chunk


def set_camera(example: dict, frame: int, columns, value) -> None:
    example["cameras"] = example["cameras"].clone()
    example["cameras"][frame, columns] = value


def set_image(example: dict, frame: int, value) -> None:
    example["images"][frame] = value


def chunk_one_position(example: dict) -> None:
    example["cameras"] = example["cameras"].clone()
    example["cameras"][:, 6:] = torch.tensor([1.0, 0, 0, 0.5, 0, 1, 0, 0, 0, 0, 1, 0])


CHUNK_DAMAGE = [
    ("w2c-singular", lambda e: set_camera(e, 2, slice(6, 18), 0.0), 2, r"camera matrix \(w2c\) is not a rigid"),
    ("w2c-scaled", lambda e: set_camera(e, 3, slice(6, 9), e["cameras"][3, 6:9] * 3), 3, "not a rigid transform"),
    ("w2c-nan", lambda e: set_camera(e, 4, 10, float("nan")), 4, "NaN or infinite"),
    ("focal-nan", lambda e: set_camera(e, 1, 0, float("nan")), 1, "fx must be finite"),
    ("focal-negative", lambda e: set_camera(e, 3, 1, -0.9), 3, "fy must be > 0"),
    ("focal-zero", lambda e: set_camera(e, 0, 0, 0.0), 0, "fx must be > 0"),
    ("one-position", chunk_one_position, None, "every camera at the same position"),
    ("cameras-17-columns", lambda e: e.update(cameras=e["cameras"][:, :17]), None, r"\[N, 18\]"),
    ("images-fewer", lambda e: e.update(images=e["images"][:-1]), None, "one row per image"),
    ("cameras-missing", lambda e: e.pop("cameras"), None, "malformed example"),
    ("cameras-strings", lambda e: e.update(cameras=[["x"] * 18] * N), None, "malformed example"),
    ("frame-0-empty", lambda e: set_image(e, 0, torch.zeros(0, dtype=torch.uint8)), 0, "empty"),
    ("frame-0-not-jpeg", lambda e: set_image(e, 0, torch.arange(200, dtype=torch.uint8)), 0, "not an image"),
    ("frame-0-float", lambda e: set_image(e, 0, e["images"][0].float()), 0, "uint8 tensor"),
]


@pytest.mark.parametrize("change, frame, problem", [d[1:] for d in CHUNK_DAMAGE], ids=[d[0] for d in CHUNK_DAMAGE])
def test_damaged_chunk_examples_name_scene_frame_chunk_and_problem(tmp_path, change, frame, problem):
    example, chunk = chunk_example(tmp_path)
    change(example)
    with pytest.raises(ILRMError, match=problem) as error:
        chunk_example_to_scene(example, chunk)
    message = str(error.value)
    assert message.startswith(f"scene {example.get('key')}") and f"(chunk {chunk})" in message
    if frame is not None:
        assert f"frame {frame} (chunk" in message


def test_a_chunk_frame_that_fails_to_decode_names_it(tmp_path):
    example, chunk = chunk_example(tmp_path)
    example["images"][3] = example["images"][3][:100]  # truncated JPEG
    scene = chunk_example_to_scene(example, chunk)
    with pytest.raises(ILRMError, match=rf"scene {example['key']} frame 3 \(chunk {chunk}\): cannot decode"):
        scene.read_image(3)


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"PK\x03\x04 half a torch file", "cannot read the torch chunk"),
        (b"", "cannot read the torch chunk"),
        (None, "must hold a list of examples"),
    ],
    ids=["truncated", "empty", "a-dict"],
)
def test_damaged_chunk_files_are_named(tmp_path, data, problem):
    stage = write_chunks(tmp_path / "c" / "train", chunk_scene_specs(2, N, 16, 24))
    chunk = stage / "000000.torch"
    if data is None:
        torch.save({"not": "a list"}, chunk)
    else:
        chunk.write_bytes(data)
    (entry, _) = chunk_entries(tmp_path / "c", "train")
    with pytest.raises(ILRMError, match=problem) as error:
        ChunkCache().scene(entry.name, entry.chunk)
    assert str(chunk) in str(error.value)


@pytest.mark.parametrize(
    "data, problem",
    [
        ('{"a": "café"}'.encode("latin-1"), "not UTF-8"),
        (b'{"a": ', "not valid JSON"),
        (b'["000000.torch"]', "must map scene keys to chunk file names"),
        (b'{"a": 3}', "scene 'a' must map to a chunk file name, got 3"),
    ],
    ids=["not-utf8", "invalid", "a-list", "a-number"],
)
def test_damaged_chunk_index_is_named(tmp_path, data, problem):
    stage = write_chunks(tmp_path / "c" / "train", chunk_scene_specs(1, N, 16, 24))
    (stage / "index.json").write_bytes(data)
    with pytest.raises(ILRMError, match=problem) as error:
        read_chunk_index(stage)
    assert str(stage / "index.json") in str(error.value)


@pytest.mark.parametrize(
    "data, problem",
    [
        ('{"a": {"context": [0, 5], "target": [2], "note": "é"}}'.encode("latin-1"), "not UTF-8"),
        (b'{"a": {"context": [0, true], "target": [2]}}', "entry 'a' needs integer lists"),
        (b'{"a": {"context": [0, 5], "target": ["2"]}}', "entry 'a' needs integer lists"),
        (b'{"a": {"context": [0, 5], "target": [2.5]}}', "entry 'a' needs integer lists"),
        (b'{"a": [0, 5]}', "entry 'a' needs integer lists"),
        (b"[]", "maps scene keys"),
    ],
    ids=["not-utf8", "bool", "string", "fraction", "list-entry", "a-list"],
)
def test_damaged_evaluation_index_is_named(tmp_path, data, problem):
    path = tmp_path / "index.json"
    path.write_bytes(data)
    with pytest.raises(ILRMError, match=problem) as error:
        load_index(path)
    assert str(path) in str(error.value)


def test_scene_list_that_is_not_utf8_is_named(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes("scène/opencv_cameras.json\n".encode("latin-1"))
    with pytest.raises(ILRMError, match=rf"{listing}: not UTF-8"):
        find_scenes(listing, "train", "opencv-scenes")


# ------------------------------------------------------------------------------------------------
# Decoding: every mode to the right 8-bit RGB values, upright
# ------------------------------------------------------------------------------------------------


def scene_with_frame(tmp_path: Path, image: Image.Image, name: str = "frame_00001.png", **save) -> Path:
    """A 6-frame scene whose frame 0 is `image` (saved as `name`), its camera sized for it."""
    scene_dir = write_scene(tmp_path / "s")
    (scene_dir / "images" / "frame_00001.png").unlink()
    image.save(scene_dir / "images" / name, **save)
    width, height = image.size

    def change(meta):
        meta["frames"][0]["file_path"] = f"images/{name}"
        for frame in meta["frames"]:
            frame.update(w=width, h=height) if frame is meta["frames"][0] else frame.update(w=W, h=H)
        del meta["w"], meta["h"]

    edit_json(scene_dir / "transforms.json", change)
    return scene_dir


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.repeat(np.array([0, 25700, 32768, 65535], dtype=np.uint16), 4)[None].repeat(16, 0)  # 16 x 16
    scene = load_nerfstudio_scene(scene_with_frame(tmp_path, Image.fromarray(values)))  # a 16-bit PNG
    pixels = np.asarray(scene.read_image(0))
    assert pixels.dtype == np.uint8 and pixels.shape == (16, 16, 3)
    assert pixels[0, ::4].tolist() == [[0, 0, 0], [100, 100, 100], [128, 128, 128], [255, 255, 255]]
    assert Image.open(scene.image_paths[0]).mode.startswith("I")  # it really was 16-bit


def test_rgba_is_composited_on_white_for_inputs_and_targets_alike(tmp_path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:, :4] = [255, 0, 0, 128]  # half-transparent red
    rgba[:, 4:8] = [0, 0, 255, 0]  # fully transparent
    rgba[:, 8:] = [10, 200, 30, 255]  # opaque
    scene = load_nerfstudio_scene(scene_with_frame(tmp_path, Image.fromarray(rgba, "RGBA")))
    pixels = np.asarray(scene.read_image(0))
    assert pixels[0, 0].tolist() == [255, 127, 127]  # 255 a + 255 (1 - a), 0 a + 255 (1 - a), a = 128/255
    assert pixels[0, 5].tolist() == [255, 255, 255] and pixels[0, 9].tolist() == [10, 200, 30]
    view, _ = load_view(scene, 0, 16, 16)  # what the network and the loss both get
    assert (view * 255).round().byte().permute(1, 2, 0).numpy().tolist() == pixels.tolist()


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.new("LA", (16, 16), (0, 0)), [255, 255, 255]),  # transparent gray: white
        (lambda: Image.new("LA", (16, 16), (40, 255)), [40, 40, 40]),
        (lambda: Image.new("CMYK", (16, 16), (0, 255, 255, 0)), [255, 0, 0]),
        (lambda: Image.new("RGB", (16, 16), (12, 34, 56)).quantize(4), [12, 34, 56]),  # palette
        (lambda: Image.new("L", (16, 16), 77), [77, 77, 77]),
        (lambda: Image.new("1", (16, 16), 1), [255, 255, 255]),
    ],
    ids=["LA-transparent", "LA-opaque", "CMYK", "palette", "L", "bilevel"],
)
def test_other_modes_decode_to_8_bit_rgb(tmp_path, make, expected):
    image = make()
    name = "frame_00001.tif" if image.mode == "CMYK" else "frame_00001.png"
    scene = load_nerfstudio_scene(scene_with_frame(tmp_path, image, name))
    pixels = np.asarray(scene.read_image(0))
    assert pixels.shape == (16, 16, 3) and pixels[3, 3].tolist() == expected


def exif_rotated_jpeg(raw: np.ndarray) -> bytes:
    """JPEG of `raw` (stored sideways) with EXIF orientation 6: shown rotated 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(raw).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    raw = np.zeros((8, 16, 3), dtype=np.uint8)  # stored 16 wide, 8 high
    raw[:, :8] = 255  # left half white: upright (rotated clockwise), the top half is white
    data = exif_rotated_jpeg(raw)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # the pixels as stored

    scene_dir = scene_with_frame(tmp_path, Image.new("RGB", (8, 16)), "frame_00001.jpg")  # camera: 8 x 16 upright
    (scene_dir / "images" / "frame_00001.jpg").write_bytes(data)
    scene = load_nerfstudio_scene(scene_dir)
    upright = np.asarray(scene.read_image(0))
    assert upright.shape == (16, 8, 3)
    assert np.array_equal(upright, np.rot90(stored, k=-1))  # rotated, not resampled
    assert upright[:6].min() > 200 and upright[10:].max() < 50  # top white, bottom black
    image, _ = load_view(scene, 0, 16, 8)  # fits its upright camera
    assert image.shape == (3, 16, 8)

    # A camera for the stored (sideways) size does not fit the upright image.
    edit_json(scene_dir / "transforms.json", lambda m: m["frames"][0].update(w=16, h=8))
    with pytest.raises(ILRMError, match="image is 8x16 but its camera is for 16x8"):
        load_view(load_nerfstudio_scene(scene_dir), 0, 8, 8)

    # In a chunk, the first frame's header gives the upright size the intrinsics are scaled with.
    example, chunk = chunk_example(tmp_path / "c")
    example["images"] = [torch.frombuffer(bytearray(data), dtype=torch.uint8)] * len(example["images"])
    scene = chunk_example_to_scene(example, chunk)
    assert scene.image_sizes[0] == (16, 8) and np.array_equal(np.asarray(scene.read_image(0)), upright)


# ------------------------------------------------------------------------------------------------
# Training across scenes skips and counts; evaluation stops with one line
# ------------------------------------------------------------------------------------------------


def config_for(data: Path, **overrides) -> ILRMDataManagerConfig:
    settings = dict(
        data=data,
        image_height=8,
        image_width=8,
        num_context_views=2,
        num_target_views=4,
        min_frame_gap=5,
        max_frame_gap=5,
        scenes_per_batch=2,
        num_workers=0,
        cache_frames=0,
    )
    return ILRMDataManagerConfig(**{**settings, **overrides})


@pytest.fixture
def damaged_folder(tmp_path) -> Path:
    """train/: good1, good2, bad_json ("fl_x": "fifty", skipped when loading), bad_image (frame 2
    truncated, skipped when sampled); test/: one good scene."""
    root = tmp_path / "scenes"
    for seed, name in enumerate(("good1", "good2", "bad_json", "bad_image")):
        write_scene(root / "train" / name, seed=seed)
    write_scene(root / "test" / "held", seed=9)
    edit_json(root / "train" / "bad_json" / "transforms.json", lambda m: m.update(fl_x="fifty"))
    truncate(root / "train" / "bad_image" / "images" / "frame_00003.png")
    return root


@pytest.mark.parametrize("num_workers", [0, 1])
def test_training_skips_and_counts_bad_scenes_and_samples(damaged_folder, capfd, num_workers):
    dm = config_for(damaged_folder, num_workers=num_workers).setup(device="cpu", test_mode="val")
    assert len(dm.skipped_scenes) == 1 and "bad_json" in dm.skipped_scenes[0]
    assert "fl_x must be a number, got 'fifty'" in dm.skipped_scenes[0]
    for step in range(4):  # 8 samples from 3 scenes, visited in turn: bad_image is drawn
        batch = dm.next_train(step)
        assert set(batch["scene"]) <= {"good1", "good2"} and torch.isfinite(batch["target_images"]).all()
    assert dm.skipped_samples >= 2
    out = capfd.readouterr().out
    assert "skipping scene bad_json: " in out and "transforms.json: frame 0" in out
    skipped = [line for line in out.splitlines() if line.startswith("skipping a training sample")]
    assert skipped and all("scene bad_image frame 2 (" in line and "frame_00003.png" in line for line in skipped)
    assert all("cannot decode the image" in line for line in skipped) and "Traceback" not in out


def zero_camera_in_chunk(chunk: Path, key: str, frame: int) -> None:
    examples = torch.load(chunk, weights_only=True)
    for example in examples:
        if example["key"] == key:
            example["cameras"][frame, 6:] = 0.0  # a singular camera matrix
    torch.save(examples, chunk)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_training_on_chunks_skips_a_singular_camera_inside_loader_workers(tmp_path, capfd, num_workers):
    specs = chunk_scene_specs(4, N, 16, 24)
    stage = write_chunks(tmp_path / "c" / "train", specs, scenes_per_chunk=4)
    write_chunks(tmp_path / "c" / "test", specs[:1])
    zero_camera_in_chunk(stage / "000000.torch", specs[1]["key"], 3)
    dm = config_for(tmp_path / "c", num_workers=num_workers).setup(device="cpu", test_mode="val")
    for step in range(4):
        batch = dm.next_train(step)
        assert specs[1]["key"] not in batch["scene"]
    assert dm.skipped_samples >= 1
    out = capfd.readouterr().out
    assert f"skipping a training sample: scene {specs[1]['key']} frame 3 (chunk {stage / '000000.torch'})" in out
    assert "not a rigid transform" in out and "Traceback" not in out


def test_training_stops_with_one_line_when_every_scene_is_bad(tmp_path):
    root = tmp_path / "scenes"
    for name in ("a", "b"):
        write_scene(root / "train" / name)
        edit_json(root / "train" / name / "transforms.json", lambda m: m.update(w=0))
    write_scene(root / "test" / "held")
    with pytest.raises(ILRMError, match="no scene in split 'train' could be loaded") as error:
        config_for(root).setup(device="cpu", test_mode="val")
    assert "\n" not in str(error.value)


def test_training_on_chunks_stops_with_one_line_when_every_sample_fails(tmp_path):
    specs = chunk_scene_specs(2, N, 16, 24)
    stage = write_chunks(tmp_path / "c" / "train", specs)
    write_chunks(tmp_path / "c" / "test", chunk_scene_specs(1, N, 16, 24))
    for spec in specs:
        zero_camera_in_chunk(stage / "000000.torch", spec["key"], 0)
    dm = config_for(tmp_path / "c", num_workers=1, max_sample_attempts=3).setup(device="cpu", test_mode="val")
    with pytest.raises(ILRMError, match="3 training samples in a row could not be loaded") as error:
        dm.next_train(0)
    assert "Traceback" not in str(error.value) and "\n" not in str(error.value)
    assert "frame 0 (chunk" in str(error.value)


@pytest.mark.parametrize("eval_num_workers", [0, 1])
def test_evaluation_stops_with_one_line_naming_scene_and_file(damaged_folder, eval_num_workers):
    # A held-out scene whose transforms.json is damaged: evaluation does not start.
    held = damaged_folder / "test" / "held"
    shutil.copy(damaged_folder / "train" / "bad_json" / "transforms.json", held / "transforms.json")
    with pytest.raises(ILRMError, match=rf"scene held: {held / 'transforms.json'}: frame 0 .*fl_x must be a number"):
        config_for(damaged_folder).setup(device="cpu", test_mode="test")
    # One whose frame does not decode: no silent skip, the evaluation stops naming it.
    write_scene(held, seed=9)
    truncate(held / "images" / "frame_00004.png")
    dm = config_for(damaged_folder, eval_num_workers=eval_num_workers).setup(device="cpu", test_mode="test")
    with pytest.raises(ILRMError, match=r"evaluation: scene held frame 3 \(.*frame_00004.png\): cannot decode") as e:
        list(dm.eval_scene_batches())
    assert "Traceback" not in str(e.value) and "\n" not in str(e.value)


def test_ns_train_skips_bad_scenes_and_ilrm_eval_stops_on_one(tmp_path, capsys):
    """The real commands: ns-train (loader processes) over a folder with a damaged scene and a scene
    whose frames do not decode trains and says what it skipped; ilrm-eval on a held-out scene with
    a damaged frame exits 2 with one line naming it."""
    from ilrm_nerfstudio.tools.eval import main as ilrm_eval
    from tests.test_training import ns_train

    root = tmp_path / "scenes"
    for seed, name in enumerate(("g1", "g2", "g3", "g4", "bad_json", "bad_image")):
        write_scene(root / "train" / name, num_frames=8, seed=seed)
    write_scene(root / "test" / "held", num_frames=8, seed=9)
    edit_json(root / "train" / "bad_json" / "transforms.json", lambda m: m["frames"][1].update(transform_matrix=None))
    for path in (root / "train" / "bad_image" / "images").iterdir():
        truncate(path)
    result = ns_train(root, tmp_path / "runs", "--max-num-iterations", "2", "--pipeline.datamanager.num-workers", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "skipping scene bad_json: " in result.stdout and "frame 1 (images/frame_00002.png)" in result.stdout
    assert "training data: 5 scene(s)" in result.stdout and "Traceback" not in result.stderr

    truncate(root / "test" / "held" / "images" / "frame_00001.png")  # a context view
    run = tmp_path / "runs" / "test" / "ilrm-small" / "run"
    code = ilrm_eval(["--load-config", str(run / "config.yml"), "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert "scene held frame 0 (" in line and "frame_00001.png): cannot decode the image" in line


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("eval_context_views", 0, "--pipeline.datamanager.eval-context-views 0: must be a whole number, at least 1"),
        ("eval_target_views", -1, "--pipeline.datamanager.eval-target-views -1: must be a whole number, at least 1"),
        ("num_eval_scenes", -1, "--pipeline.datamanager.num-eval-scenes -1: must be a whole number, at least 0"),
        ("image_height", 0, "--pipeline.datamanager.image-height 0: must be a whole number, at least 1"),
        ("holdout_interval", 1, "--pipeline.datamanager.holdout-interval 1: must be a whole number, at least 2"),
        ("num_workers", -2, "--pipeline.datamanager.num-workers -2: must be a whole number, at least 0"),
        ("scenes_per_batch", True, "--pipeline.datamanager.scenes-per-batch True: must be a whole number"),
        ("min_context_views", 0, "1 <= min_context_views <= max_context_views (got 0, 2)"),
    ],
)
def test_impossible_data_options_are_errors_not_replaced(damaged_folder, option, value, message):
    extra = {"view_sampler": "multiview"} if option == "min_context_views" else {}
    with pytest.raises(ILRMError) as error:
        config_for(damaged_folder, **{option: value}, **extra).setup(device="cpu", test_mode="test")
    assert message in str(error.value)
