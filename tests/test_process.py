"""From a folder of real photos (or a video) to an exported PLY, as a user does it on a CPU machine
without internet: `ilrm-process` (nerfstudio's processing + COLMAP) -> `ns-train ilrm-finetune` (one epoch)
-> `ns-export gaussian-splat`.

The photos are frames of the shared snowmiku capture, downscaled, copied *without* their poses;
the poses COLMAP recovers are compared with the shared ones after a similarity alignment. Also:
a video made from the same frames, a partial model, and the one-line failures (unrelated photos,
no COLMAP)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.test_tools import BIN, ENV, check

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT.parent / "shared" / "captures" / "snowmiku"
SIZE = (504, 378)  # the capture's 1008 x 756 halved
FRAMES = np.round(np.linspace(0, 23, 16)).astype(int)  # 16 photos along the first, smooth arc of the capture
VIDEO_FRAMES = 24  # the same arc, every frame, as a 4 fps clip

pytestmark = pytest.mark.skipif(
    not (CAPTURE / "transforms.json").is_file(), reason=f"{CAPTURE}: the shared capture is not here"
)


def umeyama(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimizing |s R source + t - target|^2 (Umeyama 1991); points [N, 3]."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    xs, xt = source - mu_s, target - mu_t
    U, S, Vt = np.linalg.svd(xt.T @ xs / len(source))
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / xs.var(0).sum())
    return s, R, mu_t - s * R @ mu_s


def center_error(dataset: Path, originals: list[str]) -> tuple[np.ndarray, float]:
    """Per-camera distance between COLMAP's camera centers (after the best similarity) and the
    shared ones, and the camera spread (mean distance to the mean center) of the shared ones.
    `originals[i]` is the capture frame nerfstudio renamed frame_{i+1:05d}."""
    shared = {
        Path(f["file_path"]).name: np.asarray(f["transform_matrix"])
        for f in json.loads((CAPTURE / "transforms.json").read_text())["frames"]
    }
    ours, theirs = [], []
    for frame in json.loads((dataset / "transforms.json").read_text())["frames"]:
        number = int(re.search(r"(\d+)\.\w+$", frame["file_path"]).group(1))
        ours.append(np.asarray(frame["transform_matrix"])[:3, 3])
        theirs.append(shared[originals[number - 1]][:3, 3])
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    s, R, t = umeyama(ours, theirs)
    error = np.linalg.norm((s * (R @ ours.T)).T + t - theirs, axis=1)
    return error, float(np.linalg.norm(theirs - theirs.mean(0), axis=1).mean())


def ilrm_process(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ilrm-process"), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env or ENV
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The failure contract: exit status 1, no traceback, one `ilrm-process: error:` line last."""
    assert result.returncode == 1, (
        f"{result.args}: exit status {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ilrm-process: error: "), result.stderr[-2000:]
    return last


def summary_line(result: subprocess.CompletedProcess) -> tuple[int, int, str]:
    """(registered, total, line) from ilrm-process's result line."""
    check(result)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("ilrm-process: COLMAP registered")]
    registered, total = map(int, re.search(r"registered (\d+) of (\d+)", line).groups())
    return registered, total, line


@pytest.fixture(scope="module")
def colmap() -> str:
    """COLMAP on PATH; installed the way `make setup` does (apt, as root) when it is missing."""
    if shutil.which("colmap") is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["make", "-C", str(ROOT), "system-deps"], capture_output=True, timeout=900)
    if shutil.which("colmap") is None:
        pytest.skip(
            "colmap is not installed and cannot be here (not root, or no apt-get): `make setup` as root installs it"
        )
    return shutil.which("colmap")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("process")


def copy_photos(names: list[str], folder: Path) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True)
    for name in names:
        with Image.open(CAPTURE / "images" / name) as image:
            image.resize(SIZE, Image.LANCZOS).save(folder / name, quality=95)
    return names


@pytest.fixture(scope="module")
def capture_names() -> list[str]:
    return sorted(Path(f["file_path"]).name for f in json.loads((CAPTURE / "transforms.json").read_text())["frames"])


@pytest.fixture(scope="module")
def photos(capture_names, workdir) -> tuple[Path, list[str]]:
    """16 photos of the capture, downscaled, without poses."""
    return workdir / "my_photos", copy_photos([capture_names[i] for i in FRAMES], workdir / "my_photos")


@pytest.fixture(scope="module")
def scene(colmap, photos, workdir) -> tuple[Path, subprocess.CompletedProcess]:
    folder, _ = photos
    return workdir / "my_scene", ilrm_process(folder, workdir / "my_scene")


def test_photos_get_the_shared_poses_back(scene, photos):
    dataset, result = scene
    registered, total, line = summary_line(result)
    print(line)
    assert total == len(FRAMES) and registered >= len(FRAMES) - 2, line  # 16 of 16 in every run here
    assert "exhaustive matching" in line  # 16 photos: every pair is matched
    assert len(json.loads((dataset / "transforms.json").read_text())["frames"]) == registered
    error, spread = center_error(dataset, photos[1])
    print(
        f"camera centers after a similarity alignment: mean error {error.mean():.3f}, max {error.max():.3f}, camera "
        f"spread {spread:.3f} (shared units): {error.mean() / spread:.2%} of the spread"
    )
    assert error.mean() < 0.05 * spread and error.max() < 0.10 * spread
    logs = {p.name for p in (dataset / "colmap").glob("*.log")}
    assert {"feature_extractor.log", "exhaustive_matcher.log", "mapper.log"} <= logs
    assert "--SiftExtraction.use_gpu 0" in (dataset / "colmap" / "feature_extractor.log").read_text()


def test_finetune_and_export_on_the_recovered_poses(scene, workdir):
    """The user's next two commands, as the docs give them (random start: no ilrm run needed; one
    epoch, which is 14 Adam steps on these 14 training frames)."""
    from plyfile import PlyData

    dataset, result = scene
    check(result)
    runs = workdir / "runs"
    check(
        subprocess.run(
            [
                BIN / "ns-train",
                "ilrm-finetune",
                "--data",
                dataset,
                "--pipeline.model.init",
                "random",
                "--max-num-iterations",
                "1",
                "--vis",
                "tensorboard",
                "--machine.device-type",
                "cpu",
                "--output-dir",
                runs,
                "--timestamp",
                "process",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env=ENV,
        )
    )
    (config,) = runs.glob("*/ilrm-finetune/process/config.yml")
    check(
        subprocess.run(
            [BIN / "ns-export", "gaussian-splat", "--load-config", config, "--output-dir", workdir / "export"],
            capture_output=True,
            text=True,
            timeout=600,
            env=ENV,
        )
    )
    ply = workdir / "export" / "splat.ply"
    assert ply.is_file(), f"{ply}: ns-export wrote no PLY"
    vertex = PlyData.read(str(ply))["vertex"]
    means = np.stack([vertex[k] for k in ("x", "y", "z")], -1)
    assert len(means) > 1000 and np.isfinite(means).all(), f"{ply}: {len(means)} Gaussians"


def test_a_video_gets_poses_through_nerfstudios_video_path(colmap, capture_names, workdir):
    frames = copy_photos(capture_names[:VIDEO_FRAMES], workdir / "clip_frames")
    for i, name in enumerate(frames):
        (workdir / "clip_frames" / name).rename(workdir / "clip_frames" / f"{i:03d}.jpg")
    clip = workdir / "my_clip.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-framerate",
            "4",
            "-i",
            workdir / "clip_frames" / "%03d.jpg",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-crf",
            "18",
            clip,
        ],
        check=True,
    )
    result = ilrm_process(clip, workdir / "video_scene")
    registered, total, line = summary_line(result)
    print(line)
    assert "video frames" in line and "sequential matching" in line
    assert total == VIDEO_FRAMES and registered >= VIDEO_FRAMES - 2, (
        line
    )  # every frame extracted (fewer than --num-frames-target)
    error, spread = center_error(workdir / "video_scene", frames)
    print(f"video: camera centers after a similarity alignment: mean error {error.mean() / spread:.2%} of the spread")
    assert error.mean() < 0.05 * spread


@pytest.fixture(scope="module")
def partial_photos(capture_names, workdir) -> Path:
    """12 photos of the capture and 2 of noise: a partial model."""
    from PIL import Image

    folder = workdir / "partial"
    copy_photos([capture_names[i] for i in FRAMES[:12]], folder)
    for i, name in enumerate(("20240212_003930_noise.jpg", "zz_noise.jpg")):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)).save(
            folder / name
        )
    return folder


def test_a_partial_model_is_usable_and_names_the_dropped_photos(colmap, partial_photos, workdir):
    registered, total, line = summary_line(ilrm_process(partial_photos, workdir / "partial_scene"))
    print(line)
    assert (registered, total) == (12, 14), line
    assert "dropped: 20240212_003930_noise.jpg, zz_noise.jpg;" in line and "overlap" in line
    assert len(json.loads((workdir / "partial_scene" / "transforms.json").read_text())["frames"]) == 12


def test_too_few_registered_photos_is_an_error(colmap, partial_photos, workdir):
    line = one_line_error(ilrm_process(partial_photos, workdir / "too_few", "--min-frames", "13"))
    assert "too few poses" in line and "registered 12 of 14 photos" in line and "--min-frames" in line, line


def test_unrelated_photos_fail_in_one_line(colmap, workdir):
    from PIL import Image

    folder = workdir / "noise"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(
            folder / f"noise_{i}.png"
        )
    line = one_line_error(ilrm_process(folder, workdir / "noise_scene"))
    print(line)
    assert (
        f"mapper made no model of {folder}" in line and "no two of the 3 images share enough matching features" in line
    ), line
    assert "mapper.log" in line


def test_no_colmap_on_path_fails_in_one_line(photos, workdir):
    bin_dir = workdir / "bin_without_colmap"  # ffmpeg and the venv, no colmap
    bin_dir.mkdir()
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    line = one_line_error(ilrm_process(photos[0], workdir / "no_colmap", env={**ENV, "PATH": f"{bin_dir}:{BIN}"}))
    assert "COLMAP not found" in line and "make setup" in line and "apt-get install colmap" in line, line
    assert not (workdir / "no_colmap").exists()  # nothing written


def test_photos_inside_the_output_folder_are_refused(capture_names, workdir):
    """nerfstudio empties OUTPUT_DIR/images before copying: `ilrm-process my_scene/images my_scene`
    would delete the photos."""
    photos = workdir / "guard" / "images"
    copy_photos(capture_names[:3], photos)
    line = one_line_error(ilrm_process(photos, photos.parent))
    assert str(photos) in line and "inside" in line, line
    assert len(list(photos.iterdir())) == 3  # the photos are untouched


def test_the_largest_of_several_colmap_models_becomes_sparse_0(tmp_path):
    """COLMAP writes one model per connected group of photos; nerfstudio converts sparse/0 only."""
    from nerfstudio.data.utils.colmap_parsing_utils import Image, read_images_binary, write_images_binary

    from ilrm_nerfstudio.tools.process import largest_model_first

    for model, count in (("0", 3), ("1", 9), ("2", 5)):
        (tmp_path / model).mkdir()
        images = {
            i: Image(
                id=i,
                qvec=np.array([1.0, 0, 0, 0]),
                tvec=np.zeros(3),
                camera_id=1,
                name=f"{model}_{i}.jpg",
                xys=np.zeros((0, 2)),
                point3D_ids=np.zeros(0, dtype=int),
            )
            for i in range(1, count + 1)
        }
        write_images_binary(images, tmp_path / model / "images.bin")
    assert largest_model_first(tmp_path) == 3
    sizes = {model: len(read_images_binary(tmp_path / model / "images.bin")) for model in ("0", "1", "2")}
    assert sizes == {"0": 9, "1": 3, "2": 5}
    assert not (tmp_path / "_swap").exists()
