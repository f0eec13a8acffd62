"""Every data source, each with a fixture written here in its exact on-disk format (not by the
package's readers): torch chunks (RE10K/ACID), nerfstudio scene folders including DL3DV's layout,
opencv_cameras.json scenes, and single captures (COLMAP text/binary models, ns-process-data
transforms.json) read through nerfstudio's dataparsers. The same 3D points projected through the
cameras of every format agree to 1e-5 pixels. Bad input is skipped (training) or named (evaluation).
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.data.episodes import ContextTargetDataset
from ilrm_nerfstudio.data.scene import load_nerfstudio_scene, load_opencv_scene, load_view
from ilrm_nerfstudio.data.sources import (
    ChunkCache,
    LoadOptions,
    build_chunk_index,
    chunk_entries,
    detect_source,
    find_scenes,
)
from ilrm_nerfstudio.nerfstudio.dataparser_scene import load_single_scene
from ilrm_nerfstudio.nerfstudio.ilrm_datamanager import ILRMDataManagerConfig

GL = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> OpenGL camera axes

# ------------------------------------------------------------------------------------------------
# Ground truth and format writers (from the format descriptions, independent of the readers)
# ------------------------------------------------------------------------------------------------


def look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV c2w looking from position at target, world z up."""
    forward = target - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, position
    return c2w


def ground_truth(num_frames: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cameras on an arc around the origin: OpenCV c2w [N, 4, 4] and pixel K [N, 3, 3] (float64).
    The w2c and the normalized intrinsics are exactly representable in float32 (the chunk format
    stores float32), so every format can hold the same cameras."""
    rng = np.random.default_rng(seed)
    c2w, K = [], []
    for i in range(num_frames):
        angle = 0.35 * i / max(num_frames - 1, 1) + 0.1 * rng.standard_normal()
        position = np.array([2.5 * np.cos(angle), 2.5 * np.sin(angle), 0.4 + 0.1 * rng.standard_normal()])
        w2c = np.linalg.inv(look_at(position, 0.1 * rng.standard_normal(3)))
        w2c = w2c.astype(np.float32).astype(np.float64)
        c2w.append(np.linalg.inv(w2c))
        normalized = np.array([0.9, 1.2, 0.5 + 0.02 * rng.standard_normal(), 0.5 + 0.02 * rng.standard_normal()])
        fx, fy, cx, cy = normalized.astype(np.float32).astype(np.float64) * [width, height, width, height]
        K.append(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]))
    return np.stack(c2w), np.stack(K)


def frame_images(num_frames: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    images = []
    for i in range(num_frames):
        base = np.stack(
            [xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), np.full_like(xs, 20 * i % 255)], -1
        )
        images.append(np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8))
    return images


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_chunks(stage_dir: Path, scenes: list[dict], scenes_per_chunk: int = 2, write_index: bool = True) -> Path:
    """pixelSplat chunks: `NNNNNN.torch` lists of {key, url, timestamps int64 [N], images (uint8
    1-D JPEG byte tensors), cameras float32 [N, 18] = fx/W, fy/H, cx/W, cy/H, 0, 0, w2c 3x4
    row-major (OpenCV)}, plus index.json (key -> chunk file name)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    index = {}
    for c, start in enumerate(range(0, len(scenes), scenes_per_chunk)):
        examples = []
        for scene in scenes[start : start + scenes_per_chunk]:
            c2w, K, images = scene["c2w"], scene["K"], scene["images"]
            n, (h, w) = len(c2w), images[0].shape[:2]
            cameras = torch.zeros(n, 18, dtype=torch.float32)
            cameras[:, 0] = torch.from_numpy(K[:, 0, 0] / w)
            cameras[:, 1] = torch.from_numpy(K[:, 1, 1] / h)
            cameras[:, 2] = torch.from_numpy(K[:, 0, 2] / w)
            cameras[:, 3] = torch.from_numpy(K[:, 1, 2] / h)
            cameras[:, 6:] = torch.from_numpy(np.linalg.inv(c2w)[:, :3].reshape(n, 12))
            jpegs = [scene.get("raw", {}).get(i) or jpeg_bytes(image) for i, image in enumerate(images)]
            examples.append(
                {
                    "key": scene["key"],
                    "url": f"https://www.youtube.com/watch?v={scene['key']}",
                    "timestamps": torch.arange(n, dtype=torch.int64) * 33366,
                    "images": [torch.tensor(list(data), dtype=torch.uint8) for data in jpegs],
                    "cameras": cameras,
                }
            )
            index[scene["key"]] = f"{c:06d}.torch"
        torch.save(examples, stage_dir / f"{c:06d}.torch")
    if write_index:
        (stage_dir / "index.json").write_text(json.dumps(index))
    return stage_dir


def chunk_scene_specs(count: int, num_frames: int, height: int = 36, width: int = 64, seed: int = 0) -> list[dict]:
    specs = []
    for s in range(count):
        c2w, K = ground_truth(num_frames, height, width, seed + s)
        specs.append(
            {"key": f"{seed + s:016x}", "c2w": c2w, "K": K, "images": frame_images(num_frames, height, width, seed + s)}
        )
    return specs


def write_chunk_dataset(
    root: Path, num_train: int = 6, num_test: int = 3, num_frames: int = 10, height: int = 36, width: int = 64
) -> Path:
    write_chunks(root / "train", chunk_scene_specs(num_train, num_frames, height, width, seed=0))
    write_chunks(root / "test", chunk_scene_specs(num_test, num_frames, height, width, seed=100))
    return root


def write_transforms(
    scene_dir: Path,
    c2w: np.ndarray,
    K: np.ndarray,
    size: tuple[int, int],
    images: list[np.ndarray] | None,
    image_dir: str = "images",
    downscales: tuple[int, ...] = (),
    extra: dict | None = None,
    ext: str = "png",
) -> Path:
    """nerfstudio transforms.json: global fl_x, fl_y, cx, cy, w, h (full resolution), OpenGL c2w
    per frame, frames `images/frame_XXXXX.png`; DL3DV-style downscaled copies in images_N."""
    scene_dir.mkdir(parents=True, exist_ok=True)
    h, w = size
    frames = []
    per_frame = not all(np.array_equal(k, K[0]) for k in K)  # else global fl_x, fl_y, cx, cy
    for i in range(len(c2w)):
        name = f"frame_{i + 1:05d}.{ext}"
        frames.append({"file_path": f"{image_dir}/{name}", "transform_matrix": (c2w[i] @ GL).tolist()})
        if per_frame:
            frames[-1].update(
                fl_x=float(K[i, 0, 0]), fl_y=float(K[i, 1, 1]), cx=float(K[i, 0, 2]), cy=float(K[i, 1, 2])
            )
        if images is not None:
            (scene_dir / image_dir).mkdir(exist_ok=True)
            Image.fromarray(images[i]).save(scene_dir / image_dir / name)
        for factor in downscales:
            folder = scene_dir / f"{image_dir}_{factor}"
            folder.mkdir(exist_ok=True)
            Image.fromarray(frame_images(1, h // factor, w // factor, seed=i)[0]).save(folder / name)
    meta = {
        "w": w,
        "h": h,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "camera_model": "OPENCV",
        "frames": frames,
        **(extra or {}),
    }
    if not per_frame:
        meta.update(fl_x=float(K[0, 0, 0]), fl_y=float(K[0, 1, 1]), cx=float(K[0, 0, 2]), cy=float(K[0, 1, 2]))
    (scene_dir / "transforms.json").write_text(json.dumps(meta, indent=1))
    return scene_dir


def write_opencv_cameras(scene_dir: Path, c2w: np.ndarray, K: np.ndarray, images: list[np.ndarray]) -> Path:
    """Long-LRM opencv_cameras.json: {scene_name, frames: [{file_path, w2c 4x4, h, w, fx, fy, cx, cy}]}."""
    (scene_dir / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i, image in enumerate(images):
        name = f"images/{i:05d}.png"
        Image.fromarray(image).save(scene_dir / name)
        frames.append(
            {
                "file_path": name,
                "w2c": np.linalg.inv(c2w[i]).tolist(),
                "h": image.shape[0],
                "w": image.shape[1],
                "fx": K[i, 0, 0],
                "fy": K[i, 1, 1],
                "cx": K[i, 0, 2],
                "cy": K[i, 1, 2],
            }
        )
    (scene_dir / "opencv_cameras.json").write_text(json.dumps({"scene_name": scene_dir.name, "frames": frames}))
    return scene_dir


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a rotation matrix."""
    trace = np.trace(R)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        q = np.zeros(4)
        q[0] = (R[k, j] - R[j, k]) / s
        q[1 + i], q[1 + j], q[1 + k] = 0.25 * s, (R[j, i] + R[i, j]) / s, (R[k, i] + R[i, k]) / s
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def write_colmap(
    capture: Path,
    c2w: np.ndarray,
    K: np.ndarray,
    images: list[np.ndarray],
    binary: bool = False,
    model: str = "PINHOLE",
    distortion: tuple[float, ...] = (),
    sparse: str = "sparse/0",
) -> Path:
    """A COLMAP capture: images/ and a sparse model (cameras, images, points3D) in COLMAP's text or
    binary format. One camera per image; poses are world-to-camera (qvec w,x,y,z + tvec)."""
    (capture / "images").mkdir(parents=True, exist_ok=True)
    model_dir = capture / sparse
    model_dir.mkdir(parents=True, exist_ok=True)
    model_ids = {"PINHOLE": 1, "OPENCV": 4}
    cameras, poses = [], []
    for i, image in enumerate(images):
        name = f"frame_{i + 1:05d}.png"
        Image.fromarray(image).save(capture / "images" / name)
        h, w = image.shape[:2]
        params = [K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2], *distortion]
        cameras.append((i + 1, model, w, h, params))
        w2c = np.linalg.inv(c2w[i])
        poses.append((i + 1, rotation_to_quaternion(w2c[:3, :3]), w2c[:3, 3], i + 1, name))
    if binary:
        with open(model_dir / "cameras.bin", "wb") as f:
            f.write(struct.pack("<Q", len(cameras)))
            for cam_id, model_name, w, h, params in cameras:
                f.write(struct.pack("<iiQQ", cam_id, model_ids[model_name], w, h))
                f.write(struct.pack(f"<{len(params)}d", *params))
        with open(model_dir / "images.bin", "wb") as f:
            f.write(struct.pack("<Q", len(poses)))
            for image_id, q, t, cam_id, name in poses:
                f.write(struct.pack("<i4d3di", image_id, *q, *t, cam_id))
                f.write(name.encode() + b"\x00")
                f.write(struct.pack("<Q", 0))  # no 2D points
        (model_dir / "points3D.bin").write_bytes(struct.pack("<Q", 0))
    else:
        lines = [
            f"{cam_id} {model_name} {w} {h} " + " ".join(repr(float(p)) for p in params)
            for cam_id, model_name, w, h, params in cameras
        ]
        (model_dir / "cameras.txt").write_text("# Camera list\n" + "\n".join(lines) + "\n")
        lines = []
        for image_id, q, t, cam_id, name in poses:
            lines.append(f"{image_id} " + " ".join(repr(float(v)) for v in (*q, *t)) + f" {cam_id} {name}")
            lines.append("")  # its (empty) 2D point list
        (model_dir / "images.txt").write_text("# Image list\n" + "\n".join(lines) + "\n")
        (model_dir / "points3D.txt").write_text("# 3D point list\n")
    return capture


def project(c2w: np.ndarray, K: np.ndarray, points: np.ndarray) -> np.ndarray:
    """World points [P, 3] -> pixels [N, P, 2] through OpenCV cameras."""
    w2c = np.linalg.inv(c2w)
    camera = np.einsum("nij,pj->npi", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
    uvw = np.einsum("nij,npj->npi", K, camera)
    return uvw[..., :2] / uvw[..., 2:]


# ------------------------------------------------------------------------------------------------
# Camera conventions: every format, the same pixels
# ------------------------------------------------------------------------------------------------

H, W, N = 24, 40, 6


@pytest.fixture(scope="module")
def every_format(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("formats")
    c2w, K = ground_truth(N, H, W, seed=7)
    images = frame_images(N, H, W)
    options = LoadOptions(image_folder="images", target_hw=None)
    write_chunks(root / "chunks" / "test", [{"key": "scene0", "c2w": c2w, "K": K, "images": images}])
    scenes = {
        "chunk": ChunkCache().scene("scene0", chunk_entries(root / "chunks", "test")[0].chunk),
        "nerfstudio": load_nerfstudio_scene(write_transforms(root / "ns" / "s0", c2w, K, (H, W), images)),
        "opencv": load_opencv_scene(write_opencv_cameras(root / "ocv" / "s0", c2w, K, images)),
        "colmap-text": load_single_scene(write_colmap(root / "colmap_txt", c2w, K, images), options),
        "colmap-binary": load_single_scene(write_colmap(root / "colmap_bin", c2w, K, images, binary=True), options),
        "ns-process-data": load_single_scene(
            write_transforms(
                root / "capture",
                c2w,
                K,
                (H, W),
                images,
                extra={"applied_transform": [[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]]},
            ),
            options,
        ),
    }
    return {"c2w": c2w, "K": K, "scenes": scenes}


def test_every_format_projects_points_to_the_same_pixels(every_format):
    points = np.random.default_rng(1).uniform(-0.6, 0.6, (64, 3))
    expected = project(every_format["c2w"], every_format["K"], points)
    assert np.isfinite(expected).all() and (np.abs(expected).max() < 200)
    for name, scene in every_format["scenes"].items():
        assert len(scene) == N and scene.image_sizes[0] == (H, W), name
        got = project(scene.c2w.double().numpy(), scene.K.double().numpy(), points)
        error = np.abs(got - expected).max()
        assert error < 1e-5, f"{name}: {error} px"


def test_every_format_reads_the_same_frames_in_order(every_format):
    reference = every_format["scenes"]["nerfstudio"]
    for name, scene in every_format["scenes"].items():
        image, K = load_view(scene, 2, 16, 16)
        expected, _ = load_view(reference, 2, 16, 16)
        tolerance = 0.08 if name == "chunk" else 1e-6  # JPEG vs PNG
        assert (image - expected).abs().mean() < tolerance, name
        torch.testing.assert_close(K, load_view(reference, 2, 16, 16)[1], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# 1. torch chunks
# ------------------------------------------------------------------------------------------------


def test_chunk_source_reads_index_and_decodes_lazily(tmp_path):
    root = write_chunk_dataset(tmp_path / "re10k", num_train=7, num_test=2)
    assert detect_source(root) == "chunks"
    entries = chunk_entries(root, "train")
    assert len(entries) == 7 and len({e.group for e in entries}) == 4  # 2 scenes per chunk file
    assert all(e.scene is None for e in entries)  # nothing read yet
    cache = ChunkCache(size=2)
    for entry in entries:
        scene = cache.scene(entry.name, entry.chunk)
        assert len(scene) == 10 and scene.image_sizes[0] == (36, 64)
        assert len(cache.chunks) <= 2  # never more than the LRU holds
    assert cache.loads == 4  # entries are sorted by chunk: each file read once
    image = scene.read_image(3)
    assert image.size == (64, 36)


def test_chunk_index_missing_is_explained_and_can_be_built(tmp_path):
    stage = write_chunks(tmp_path / "acid" / "test", chunk_scene_specs(3, 6), write_index=False)
    with pytest.raises(ILRMError, match="index.json: not found.*ilrm-data index"):
        chunk_entries(tmp_path / "acid", "test")
    build_chunk_index(stage)
    assert len(chunk_entries(tmp_path / "acid", "test")) == 3


def test_datamanager_trains_from_chunks_with_workers(tmp_path):
    root = write_chunk_dataset(tmp_path / "re10k")
    config = ILRMDataManagerConfig(
        data=root,
        image_height=32,
        image_width=32,
        num_context_views=2,
        num_target_views=2,
        scenes_per_batch=3,
        min_frame_gap=3,
        max_frame_gap=6,
        num_workers=2,
    )
    dm = config.setup(device="cpu", test_mode="val")
    assert dm.source == "chunks" and len(dm.train_dataset) == 6 and len(dm.eval_dataset) == 3
    for step in range(4):
        batch = dm.next_train(step)
        assert batch["context_images"].shape == (3, 2, 3, 32, 32) and batch["target_images"].shape == (3, 2, 3, 32, 32)
        assert torch.isfinite(batch["context_c2w"]).all() and "num_skipped" not in batch
    assert dm.skipped_samples == 0
    eval_batches = list(dm.eval_scene_batches())
    assert sum(len(b["scene"]) for b in eval_batches) == 3


# ------------------------------------------------------------------------------------------------
# 2. folders of nerfstudio scenes, DL3DV layout
# ------------------------------------------------------------------------------------------------


def test_dl3dv_layout_picks_a_downscaled_folder_with_rescaled_intrinsics(tmp_path):
    full_h, full_w = 96, 160
    c2w, K = ground_truth(5, full_h, full_w, seed=3)
    root = tmp_path / "DL3DV-10K"
    write_transforms(
        root / "1K" / "aaaa", c2w, K, (full_h, full_w), None, downscales=(4, 8)
    )  # 960P download: no full-res images
    write_transforms(root / "bench" / "bbbb" / "nerfstudio", c2w, K, (full_h, full_w), None, downscales=(4, 8))
    assert detect_source(root) == "nerfstudio-scenes"
    names = [name for name, _ in find_scenes(root, "train", "nerfstudio-scenes")]
    assert names == ["aaaa", "bbbb"]

    # auto: images_8 (12 x 20) does not cover 16 x 16, images_4 (24 x 40) does
    scene = load_nerfstudio_scene(root / "1K" / "aaaa", image_folder="auto", target_hw=(16, 16))
    assert scene.image_paths[0].parent.name == "images_4"
    image, K_view = load_view(scene, 1, 16, 16)
    assert image.shape == (3, 16, 16)
    points = np.random.default_rng(0).uniform(-0.5, 0.5, (20, 3))
    full = project(c2w[1:2], K[1:2], points)[0]
    # images_4 is 40 x 24; covering 16 x 16 resizes to 27 x 16 (scale 2/3), then crops 5 columns
    expected = full / 4 * np.array([27 / 40, 16 / 24]) - np.array([5, 0])
    got = project(c2w[1:2], K_view.double().numpy()[None], points)[0]
    assert np.abs(got - expected).max() < 1e-4

    explicit = load_nerfstudio_scene(root / "bench" / "bbbb", image_folder="images_8")
    assert explicit.image_paths[0].parent.name == "images_8" and explicit.name == "bbbb"
    _, K8 = load_view(explicit, 0, 12, 20)  # exactly the stored size: K / 8
    torch.testing.assert_close(
        K8.double(),
        torch.from_numpy(K[0]) / torch.tensor([[8.0], [8.0], [1.0]], dtype=torch.float64),
        atol=1e-5,
        rtol=0,
    )


def test_scene_folders_skip_bad_scenes_in_training_and_name_them_in_evaluation(tmp_path, capsys):
    root = tmp_path / "scenes"
    for name in ("s1", "s2", "s3"):
        c2w, K = ground_truth(8, 24, 32, seed=len(name))
        write_transforms(root / "train" / name, c2w, K, (24, 32), frame_images(8, 24, 32))
        write_transforms(root / "test" / name, c2w, K, (24, 32), frame_images(8, 24, 32))
    (root / "train" / "s2" / "images" / "frame_00004.png").unlink()  # missing image file
    meta = json.loads((root / "test" / "s3" / "transforms.json").read_text())
    meta["frames"][5]["transform_matrix"][0][0] = float("nan")
    (root / "test" / "s3" / "transforms.json").write_text(json.dumps(meta))
    config = ILRMDataManagerConfig(
        data=root, image_height=16, image_width=16, num_target_views=2, min_frame_gap=3, max_frame_gap=5, num_workers=0
    )
    with pytest.raises(ILRMError, match=r"scene s3: .*frame 5.*finite"):
        config.setup(device="cpu", test_mode="val")
    (root / "test" / "s3" / "transforms.json").write_text(json.dumps({**meta, "frames": meta["frames"][:5]}))
    dm = config.setup(device="cpu", test_mode="val")
    out = capsys.readouterr().out
    assert len(dm.train_dataset) == 2 and dm.skipped_scenes and "s2" in dm.skipped_scenes[0]
    assert "skipping scene s2" in out and "frame_00004.png not found" in out


# ------------------------------------------------------------------------------------------------
# 3. opencv_cameras.json scenes
# ------------------------------------------------------------------------------------------------


def test_opencv_scene_folder_and_list_file(tmp_path):
    root = tmp_path / "wide"
    for s in range(3):
        c2w, K = ground_truth(9, 24, 32, seed=s)
        write_opencv_cameras(root / f"scene{s}", c2w, K, frame_images(9, 24, 32, seed=s))
    assert detect_source(root) == "opencv-scenes"
    assert [n for n, _ in find_scenes(root, "train", "opencv-scenes")] == ["scene0", "scene1", "scene2"]
    listing = tmp_path / "list.txt"
    listing.write_text("wide/scene2/opencv_cameras.json\n# a comment\nwide/scene0\n")
    assert detect_source(listing) == "opencv-scenes"
    config = ILRMDataManagerConfig(
        data=listing,
        image_height=16,
        image_width=16,
        num_target_views=2,
        num_workers=0,
        eval_protocol="wide",
        eval_context_views=3,
    )
    dm = config.setup(device="cpu", test_mode="test")
    (batch,) = list(dm.eval_scene_batches())[:1]
    assert batch["scene"] == ["scene0"] and batch["target_indices"][0].tolist() == [0, 8]
    assert batch["context_indices"].shape == (1, 3) and not set(batch["context_indices"][0].tolist()) & {0, 8}


# ------------------------------------------------------------------------------------------------
# 4. a single capture (ns-process-data / COLMAP) through nerfstudio's dataparsers
# ------------------------------------------------------------------------------------------------


def test_single_colmap_capture_holds_out_every_kth_frame(tmp_path):
    c2w, K = ground_truth(20, 24, 32, seed=5)
    capture = write_colmap(tmp_path / "my_capture", c2w, K, frame_images(20, 24, 32), sparse="colmap/sparse/0")
    assert detect_source(capture) == "single-scene"
    config = ILRMDataManagerConfig(
        data=capture,
        image_height=16,
        image_width=16,
        num_context_views=2,
        num_target_views=2,
        min_frame_gap=3,
        max_frame_gap=6,
        holdout_interval=5,
        num_workers=0,
    )
    dm = config.setup(device="cpu", test_mode="val")
    held_out = {0, 5, 10, 15}
    (train_entry,) = dm.train_dataset.entries
    assert len(train_entry.scene) == 16 and not held_out & set(train_entry.scene.frame_ids)
    for step in range(3):
        batch = dm.next_train(step)
        used = set(batch["context_indices"].flatten().tolist()) | set(batch["target_indices"].flatten().tolist())
        assert not used & held_out
    targets = [t for ep in dm.eval_dataset.episodes for t in ep.target]
    assert sorted(targets) == sorted(held_out)
    assert all(not set(ep.context) & held_out for ep in dm.eval_dataset.episodes)
    batch = next(iter(dm.eval_scene_batches()))
    assert batch["scene"][0] == "my_capture#000" and batch["target_indices"][0].tolist() == [0, 5]


def test_distorted_capture_is_undistorted_with_exact_intrinsics(tmp_path):
    """A radially distorted image of a known pattern: after undistortion, the pattern seen through
    the returned pinhole intrinsics matches (checks the half-pixel convention too)."""
    import cv2

    h, w = 60, 80
    K = np.array([[60.0, 0, 41.3], [0, 58.0, 29.1], [0, 0, 1]])
    dist = np.array([-0.12, 0.03, 0.001, -0.002, 0.0])

    def pattern(x, y):  # of normalized (pinhole) coordinates
        return 0.5 + 0.5 * np.sin(9 * x + 2) * np.cos(7 * y - 1)

    # distorted image: pixel center (u+0.5, v+0.5) -> undistorted normalized coordinates
    us, vs = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    K_cv = K.copy()
    K_cv[:2, 2] -= 0.5
    pts = np.stack([us - 0.5, vs - 0.5], -1).reshape(-1, 1, 2)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
    normalized = cv2.undistortPointsIter(pts, K_cv, dist, None, None, criteria).reshape(h, w, 2)
    image = (pattern(normalized[..., 0], normalized[..., 1]) * 255).round().astype(np.uint8)
    c2w, _ = ground_truth(3, h, w)
    capture = write_colmap(
        tmp_path / "cap",
        c2w,
        K[None].repeat(3, 0),
        [np.stack([image] * 3, -1)] * 3,
        model="OPENCV",
        distortion=tuple(dist[:4]),
    )
    scene = load_single_scene(capture, LoadOptions(image_folder="images"))
    assert scene.distortion is not None
    view, K_new = load_view(scene, 0, h, w)
    K_new = K_new.double().numpy()
    us, vs = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    expected = pattern((us - K_new[0, 2]) / K_new[0, 0], (vs - K_new[1, 2]) / K_new[1, 1])
    inner = (slice(4, -4), slice(4, -4))
    error = np.abs(view[0].numpy() - expected)[inner].mean()
    shifted = pattern((us - K_new[0, 2] - 0.5) / K_new[0, 0], (vs - K_new[1, 2]) / K_new[1, 1])
    assert error < 0.02 and np.abs(view[0].numpy() - shifted)[inner].mean() > 2 * error


def test_ns_process_data_layout_is_a_single_scene(tmp_path):
    c2w, K = ground_truth(12, 48, 64, seed=2)
    capture = write_transforms(tmp_path / "processed", c2w, K, (48, 64), frame_images(12, 48, 64), downscales=(2,))
    (capture / "colmap" / "sparse" / "0").mkdir(parents=True)  # ns-process-data also leaves the COLMAP model
    assert detect_source(capture) == "single-scene"
    scene = load_single_scene(capture, LoadOptions(image_folder="auto", target_hw=(16, 16)))
    assert scene.name == "processed" and len(scene) == 12
    assert scene.image_paths[0].parent.name == "images_2"  # 24 x 32 still covers 16 x 16


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_bad_chunk_samples_are_skipped_in_training_and_named_in_evaluation(tmp_path, capsys):
    specs = chunk_scene_specs(4, 10)
    specs[1]["raw"] = {4: b"\xff\xd8 not really a jpeg"}  # corrupt frame 4 (every sample uses all 10 frames)
    specs[2]["c2w"] = specs[2]["c2w"].copy()
    specs[2]["c2w"][6, 0, 0] = np.nan  # NaN pose in frame 6
    specs[3]["images"], specs[3]["c2w"], specs[3]["K"] = (
        specs[3]["images"][:3],
        specs[3]["c2w"][:3],
        specs[3]["K"][:3],
    )  # too short
    root = tmp_path / "bad"
    write_chunks(root / "train", specs)
    write_chunks(root / "test", specs)
    config = ILRMDataManagerConfig(
        data=root,
        image_height=16,
        image_width=16,
        num_target_views=8,
        min_frame_gap=9,
        max_frame_gap=9,
        scenes_per_batch=4,
        num_workers=0,
    )
    dm = config.setup(device="cpu", test_mode="val")
    for step in range(3):
        batch = dm.next_train(step)
        assert all(name == specs[0]["key"] for name in batch["scene"])  # only the good scene survives
    assert dm.skipped_samples >= 3
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipping a training sample")]
    assert len(lines) == dm.skipped_samples
    joined = "\n".join(lines)
    assert (
        f"scene {specs[1]['key']} frame 4" in joined
        or f"scene {specs[2]['key']} frame 6" in joined
        or specs[3]["key"] in joined
    )
    for i, problem in (
        (1, "frame 4.*not an image"),
        (2, "frame 6.*NaN or infinite"),
        (3, "3 frames, but 2 context \\+ 8 target"),
    ):
        with pytest.raises(ILRMError, match=f"scene {specs[i]['key']}.*{problem}"):
            dm.eval_dataset[i]


def test_mismatched_image_size_is_named(tmp_path):
    c2w, K = ground_truth(4, 24, 32)
    scene_dir = write_transforms(tmp_path / "s", c2w, K, (24, 32), frame_images(4, 24, 32))
    Image.fromarray(frame_images(1, 32, 24)[0]).save(scene_dir / "images" / "frame_00002.png")  # rotated
    scene = load_nerfstudio_scene(scene_dir)
    with pytest.raises(ILRMError, match=r"scene s frame 1 .*24x32 but its camera is for 32x24"):
        load_view(scene, 1, 16, 16)


def test_frame_cache_is_dropped_when_pickled(tmp_path):
    import pickle

    root = write_chunk_dataset(tmp_path / "c", num_train=2, num_test=1, num_frames=6)
    config = ILRMDataManagerConfig(
        data=root, image_height=16, image_width=16, num_target_views=2, min_frame_gap=3, max_frame_gap=5
    )
    dataset = ContextTargetDataset(chunk_entries(root, "test"), config, deterministic=True)
    dataset[0]
    assert dataset._frames and dataset.chunks.chunks
    copy = pickle.loads(pickle.dumps(dataset))
    assert not copy._frames and not copy.chunks.chunks
