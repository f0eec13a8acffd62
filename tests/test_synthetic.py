"""Tests of the procedural data set (ilrm_nerfstudio.data.synthetic): layout, determinism, exact
poses (checked from the written files), nerfstudio loading, content and error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ilrm_nerfstudio.data import synthetic as syn
from ilrm_nerfstudio.tools import generate_data

NUM_SCENES, FRAMES, SIZE = 8, 8, 32
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
REPO = Path(__file__).resolve().parents[1]


def _generate(root: Path, **kwargs) -> dict:
    args = dict(
        num_scenes=NUM_SCENES, seed=0, height=SIZE, width=SIZE, frames_per_scene=FRAMES, test_fraction=0.25, workers=2
    )
    args.update(kwargs)
    return syn.generate_dataset(root, **args)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "data"
    _generate(root)
    return root


def _scene_dirs(root: Path) -> list[Path]:
    manifest = json.loads((root / "manifest.json").read_text())
    return [root / s["split"] / s["name"] for s in manifest["scenes"]]


def _load_scene(scene_dir: Path):
    """Poses, intrinsics and images exactly as stored: OpenCV c2w [N, 4, 4], K [3, 3],
    images [N, H, W, 3] in [0, 1]."""
    meta = json.loads((scene_dir / "transforms.json").read_text())
    c2w = np.array([f["transform_matrix"] for f in meta["frames"]]) @ GL_TO_CV
    K = np.array([[meta["fl_x"], 0, meta["cx"]], [0, meta["fl_y"], meta["cy"]], [0, 0, 1.0]])
    images = np.stack([np.asarray(Image.open(scene_dir / f["file_path"]), float) / 255 for f in meta["frames"]])
    return c2w, K, images, meta


def _scene_of(root: Path, scene_dir: Path) -> syn.Scene:
    manifest = json.loads((root / "manifest.json").read_text())
    index = next(s["index"] for s in manifest["scenes"] if s["name"] == scene_dir.name)
    return syn.scene_for_index(manifest["args"]["seed"], index)


def _unproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray):
    """Pixel centers with finite depth -> world points [P, 3] and their pixels (rows, cols)."""
    rows, cols = np.nonzero(np.isfinite(depth))
    z = depth[rows, cols]
    cam = np.stack([(cols + 0.5 - K[0, 2]) / K[0, 0] * z, (rows + 0.5 - K[1, 2]) / K[1, 1] * z, z], -1)
    return cam @ c2w[:3, :3].T + c2w[:3, 3], rows, cols


def _project(points: np.ndarray, K: np.ndarray, c2w: np.ndarray):
    """World points [P, 3] -> continuous pixel positions [P, 2] (x, y) and z-depth [P]."""
    w2c = np.linalg.inv(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    xy = cam[:, :2] / cam[:, 2:] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    return xy, cam[:, 2]


# ------------------------------------------------------------------------------------- layout


def test_layout_manifest_and_transforms(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["generator"] == syn.GENERATOR_NAME and manifest["complete"] is True
    assert manifest["args"] == dict(
        num_scenes=NUM_SCENES, seed=0, height=SIZE, width=SIZE, frames_per_scene=FRAMES, test_fraction=0.25
    )
    train, test = manifest["train"], manifest["test"]
    assert len(train) == 6 and len(test) == 2
    assert not set(train) & set(test)
    assert sorted(train + test) == [f"scene_{i:05d}" for i in range(NUM_SCENES)]
    assert sorted(p.name for p in (dataset / "train").iterdir()) == sorted(train)
    assert sorted(p.name for p in (dataset / "test").iterdir()) == sorted(test)
    for scene_dir in _scene_dirs(dataset):
        meta = json.loads((scene_dir / "transforms.json").read_text())
        assert meta["camera_model"] == "OPENCV"
        assert (meta["w"], meta["h"]) == (SIZE, SIZE)
        assert meta["k1"] == meta["k2"] == meta["p1"] == meta["p2"] == 0
        assert (meta["cx"], meta["cy"]) == (SIZE / 2, SIZE / 2)
        fov = np.rad2deg(2 * np.arctan(SIZE / 2 / meta["fl_x"]))
        assert 50 <= fov <= 70 and meta["fl_x"] == meta["fl_y"]
        names = [f"frame_{i:05d}.png" for i in range(FRAMES)]
        assert [f["file_path"] for f in meta["frames"]] == [f"images/{name}" for name in names]
        assert sorted(p.name for p in (scene_dir / "images").iterdir()) == names
        for frame in meta["frames"]:
            c2w = np.array(frame["transform_matrix"])
            assert c2w.shape == (4, 4) and np.array_equal(c2w[3], [0, 0, 0, 1])
            np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-12)
            assert np.linalg.det(c2w[:3, :3]) > 0
            with Image.open(scene_dir / frame["file_path"]) as image:
                assert image.size == (SIZE, SIZE) and image.mode == "RGB"


def test_split_is_deterministic_disjoint_and_covering():
    for n, fraction in [(1, 0.1), (2, 0.1), (8, 0.25), (300, 0.1), (50, 0.0), (7, 0.9)]:
        train, test = syn.split_indices(n, fraction, seed=3)
        assert (train, test) == syn.split_indices(n, fraction, seed=3)
        assert not set(train) & set(test) and sorted(train + test) == list(range(n))
        assert len(train) >= 1
        if fraction > 0 and n >= 2:
            assert len(test) >= 1
    assert syn.split_indices(300, 0.1, 0)[1] != syn.split_indices(300, 0.1, 1)[1]
    assert len(syn.split_indices(300, 0.1, 0)[1]) == 30


# -------------------------------------------------------------------------------- determinism


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_for_any_worker_count(dataset, tmp_path):
    _generate(tmp_path / "again", workers=1)
    assert _all_files(dataset) == _all_files(tmp_path / "again")


def test_different_seed_gives_different_data(dataset, tmp_path):
    _generate(tmp_path / "other", seed=1, num_scenes=2)
    ours = (dataset / "train" / "scene_00000" / "images" / "frame_00000.png").read_bytes()
    other_root = tmp_path / "other"
    other_dir = next(d for d in _scene_dirs(other_root) if d.name == "scene_00000")
    assert (other_dir / "images" / "frame_00000.png").read_bytes() != ours


# -------------------------------------------------------------------------- exact poses, views


def test_stored_files_reproduce_the_ray_traced_images(dataset):
    # Re-rendering with the pose and intrinsics read back from transforms.json gives the stored
    # PNG bit for bit: the written pose is exactly the one the image was made with.
    for scene_dir in _scene_dirs(dataset)[:4]:
        c2w, K, images, _ = _load_scene(scene_dir)
        scene = _scene_of(dataset, scene_dir)
        for i in (0, FRAMES - 1):
            rgb, _ = syn.render_view(scene, c2w[i], K, SIZE, SIZE)
            assert np.array_equal(np.round(rgb * 255), np.round(images[i] * 255))


def test_multiview_geometry_is_consistent(dataset):
    """Depth of frame 0 unprojected with the stored pose and reprojected into other frames lands
    on the same surface: exactly where visible (depth_at along the reprojected pixel), and
    the nearest-pixel depth map of the other frame agrees within a small tolerance."""
    for scene_dir in _scene_dirs(dataset):
        c2w, K, images, _ = _load_scene(scene_dir)
        scene = _scene_of(dataset, scene_dir)
        _, depth0 = syn.render_view(scene, c2w[0], K, SIZE, SIZE)
        points, rows, cols = _unproject(depth0, K, c2w[0])
        for j, min_overlap in ((1, 0.7), (FRAMES - 1, 0.25)):
            xy, z = _project(points, K, c2w[j])
            inside = (z > 0) & np.all((xy >= 0) & (xy < SIZE), axis=1)
            # Views overlap strongly; the first and last frame still share content.
            assert inside.mean() > min_overlap, (scene_dir.name, j, inside.mean())
            xy, z = xy[inside], z[inside]
            # Exact: the ray of frame j through the reprojected point hits the same 3D point,
            # unless something closer occludes it; it never passes behind it.
            exact = syn.depth_at(scene, c2w[j], K, xy)
            assert np.all(exact <= z * (1 + 1e-7) + 1e-9)
            visible = np.abs(exact - z) <= 1e-7 * z
            assert visible.mean() > 0.6, (scene_dir.name, j, visible.mean())
            # From the depth maps alone: nearest pixel of frame j's depth map.
            _, depth_j = syn.render_view(scene, c2w[j], K, SIZE, SIZE)
            px = np.floor(xy).astype(int)
            sampled = depth_j[px[:, 1], px[:, 0]]
            relative = np.abs(sampled - z) / z
            assert np.median(relative[visible]) < 0.05
            # Colors agree too (view-independent shading): stored PNGs, bilinear-free check.
            color_0 = images[0][rows[inside], cols[inside]][visible]
            color_j = images[j][px[visible, 1], px[visible, 0]]
            assert np.median(np.abs(color_0 - color_j)) < 0.08


def test_depth_is_exact_geometry_and_varies(dataset):
    for scene_dir in _scene_dirs(dataset):
        c2w, K, _, _ = _load_scene(scene_dir)
        scene = _scene_of(dataset, scene_dir)
        for i in (0, FRAMES // 2):
            _, depth = syn.render_view(scene, c2w[i], K, SIZE, SIZE)
            finite = depth[np.isfinite(depth)]
            assert finite.size > 0.5 * depth.size and finite.min() > 0.3
            assert np.percentile(finite, 95) / np.percentile(finite, 5) > 1.25  # near and far
            points, _, _ = _unproject(depth, K, c2w[i])
            if scene.kind == "room":  # everything seen lies inside the room, no sky
                assert np.isfinite(depth).all()
                assert np.all(points >= scene.room_lo - 1e-6) and np.all(points <= scene.room_hi + 1e-6)
            else:  # nothing below the ground plane
                assert points[:, 2].min() > -1e-6


def test_renderer_depth_matches_depth_at():
    scene = syn.make_scene(np.random.default_rng(5), kind="objects")
    K = syn.intrinsics(scene, 16, 24)
    c2w = syn.camera_poses(scene, 3)[1]
    _, depth = syn.render_view(scene, c2w, K, 16, 24)
    rows, cols = np.mgrid[0:16, 0:24]
    exact = syn.depth_at(scene, c2w, K, np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], 1))
    np.testing.assert_array_equal(depth.ravel(), exact)


def _inside_any_object(scene: syn.Scene, p: np.ndarray, margin: float) -> bool:
    if np.any(np.linalg.norm(scene.sphere_center - p, axis=1) < scene.sphere_radius + margin):
        return True
    for c, h, yaw in zip(scene.box_center, scene.box_half, scene.box_yaw):
        cs, sn = np.cos(yaw), np.sin(yaw)
        local = np.array([[cs, sn, 0], [-sn, cs, 0], [0, 0, 1]]) @ (p - c)
        if np.all(np.abs(local) < h + margin):
            return True
    for c, r, z in zip(scene.cyl_center, scene.cyl_radius, scene.cyl_z):
        if np.hypot(*(p[:2] - c)) < r + margin and z[0] - margin < p[2] < z[1] + margin:
            return True
    return False


def test_cameras_stay_in_free_space_and_look_at_content():
    kinds = set()
    for index in range(40):
        scene = syn.scene_for_index(7, index)
        kinds.add(scene.kind)
        poses = syn.camera_poses(scene, 24)
        assert scene.trajectory["kind"] == ("walk" if scene.kind == "room" else "orbit")
        for c2w in poses:
            assert not _inside_any_object(scene, c2w[:3, 3], margin=0.2)
            if scene.kind == "room":
                assert np.all(c2w[:3, 3] > scene.room_lo + 0.5) and np.all(c2w[:3, 3] < scene.room_hi - 0.5)
            else:
                assert c2w[2, 3] > 0.3
        # Smooth trajectories: consecutive frames move and turn only a little.
        steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
        turns = np.degrees(np.arccos(np.clip((poses[1:, :3, 2] * poses[:-1, :3, 2]).sum(-1), -1, 1)))
        assert steps.max() < 0.35 and turns.max() < 6
    assert kinds == {"room", "objects"}


def test_textures_carry_detail(dataset):
    energies = []
    for scene_dir in _scene_dirs(dataset):
        _, _, images, _ = _load_scene(scene_dir)
        gray = images.mean(-1)  # [N, H, W]
        energy = np.abs(np.diff(gray, axis=1)).mean() + np.abs(np.diff(gray, axis=2)).mean()
        energies.append(energy)
        assert energy > 0.015, (scene_dir.name, energy)
        assert images.std() > 0.05
    assert np.mean(energies) > 0.03


# ---------------------------------------------------------------------------------- nerfstudio


def test_nerfstudio_dataparser_loads_exact_poses(dataset):
    pytest.importorskip("nerfstudio")
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    scene_dir = _scene_dirs(dataset)[0]
    meta = json.loads((scene_dir / "transforms.json").read_text())
    written = np.array([f["transform_matrix"] for f in meta["frames"]])[:, :3]  # [N, 3, 4] OpenGL
    config = NerfstudioDataParserConfig(
        data=scene_dir, orientation_method="none", center_method="none", auto_scale_poses=False, eval_mode="all"
    )
    outputs = config.setup().get_dataparser_outputs(split="train")
    cameras = outputs.cameras
    assert len(outputs.image_filenames) == FRAMES
    assert [Path(p).name for p in outputs.image_filenames] == [f"frame_{i:05d}.png" for i in range(FRAMES)]
    np.testing.assert_allclose(cameras.camera_to_worlds.numpy(), written, atol=1e-6)
    np.testing.assert_allclose(cameras.fx.numpy().ravel(), meta["fl_x"], rtol=1e-6)
    np.testing.assert_allclose(cameras.cy.numpy().ravel(), meta["cy"], rtol=1e-6)
    assert int(cameras.width[0]) == SIZE and int(cameras.height[0]) == SIZE
    # Default settings (auto orientation, centering, scaling, 90/10 frame split) also load.
    defaults = NerfstudioDataParserConfig(data=scene_dir).setup()
    train, val = defaults.get_dataparser_outputs("train"), defaults.get_dataparser_outputs("val")
    assert len(train.image_filenames) + len(val.image_filenames) == FRAMES
    assert np.isfinite(train.cameras.camera_to_worlds.numpy()).all()


# ----------------------------------------------------------------------------- errors and CLI


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_scenes=0), "num_scenes"),
        (dict(height=4), "height"),
        (dict(width=7), "width"),
        (dict(frames_per_scene=1), "frames_per_scene"),
        (dict(test_fraction=1.0), "test_fraction"),
        (dict(test_fraction=-0.1), "test_fraction"),
        (dict(workers=0), "workers"),
        (dict(seed=-1), "seed"),
        (dict(num_scenes=2.5), "num_scenes"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(syn.ILRMError, match=message):
        _generate(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_foreign_nonempty_directory_is_refused_and_kept(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(syn.ILRMError, match="not empty"):
        _generate(tmp_path, num_scenes=2)
    assert (tmp_path / "mine.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_existing_dataset_is_reused_or_needs_overwrite(tmp_path):
    small = dict(num_scenes=2, frames_per_scene=2, height=16, width=16)
    first = _generate(tmp_path / "d", **small)
    assert not first["skipped"]
    stamp = (tmp_path / "d" / "manifest.json").stat().st_mtime_ns
    assert _generate(tmp_path / "d", workers=1, **small)["skipped"]  # workers do not matter
    assert (tmp_path / "d" / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(syn.ILRMError, match="other arguments"):
        _generate(tmp_path / "d", **{**small, "num_scenes": 3})
    replaced = _generate(tmp_path / "d", overwrite=True, **{**small, "num_scenes": 3})
    assert not replaced["skipped"] and len(replaced["train"]) + len(replaced["test"]) == 3
    assert len(_scene_dirs(tmp_path / "d")) == 3


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert generate_data.main(["--output", str(tmp_path / "x"), "--num-scenes", "0"]) == 2
    err = capsys.readouterr().err
    assert "num_scenes must be an integer >= 1" in err and "Traceback" not in err
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("keep me")
    assert generate_data.main(["--output", str(tmp_path / "user"), "--num-scenes", "1", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "user" / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit) as exited:  # tyro: usage message for non-numbers
        generate_data.main(["--output", str(tmp_path / "x"), "--num-scenes", "many"])
    assert exited.value.code == 2


def test_python_m_entry_point_generates_and_reruns(tmp_path):
    command = [
        sys.executable,
        "-m",
        "ilrm_nerfstudio.tools.generate_data",
        "--output",
        str(tmp_path / "cli"),
        "--num-scenes",
        "3",
        "--frames-per-scene",
        "2",
        "--height",
        "16",
        "--width",
        "16",
    ]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "Wrote 3 scenes" in first.stdout and "[3/3] 100%" in first.stdout
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_package_does_not_import_torch_nerfstudio_or_tyro():
    code = (
        "import sys, ilrm_nerfstudio.data.synthetic; "
        "print(any(m.split('.')[0] in ('torch', 'nerfstudio', 'tyro') for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
