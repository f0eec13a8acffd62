"""From a folder of real photos (or a video) to an exported PLY, as a user does it on a CPU machine
without internet or root: `ilrm-process` (pycolmap + nerfstudio's converter) -> `ns-train
ilrm-finetune` (one step) -> `ns-export gaussian-splat`.

The photos are the shipped snowmiku subset (504 x 378, every 3rd frame of the capture), copied
*without* their poses into a folder whose name has a space and non-ASCII letters, one of them
stored sideways with an EXIF orientation tag and one as HEIC (as iPhones save them); the poses
recovered are compared with the shipped ones after a similarity alignment. Also: a video made from
the same photos, photos of two sizes, and the one-line failures."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.bench_poses import known_poses, pose_errors
from tests.test_tools import BIN, ENV, check

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT / "ilrm_nerfstudio" / "captures" / "snowmiku"
PHOTOS = 12  # the first 12 shipped photos: a smooth arc of the capture
SIDEWAYS, HEIC = 3, 7  # indices of the photo stored sideways (EXIF orientation 6) and of the HEIC one
MAX_CENTRE_ERROR = 0.015  # of the camera spread, mean over the cameras (measured: 1.0 to 1.1%)
MAX_VIDEO_CENTRE_ERROR = 0.025  # the same photos as H.264 frames (measured: 1.4 to 1.5%)


def ilrm_process(*args, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
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


def shipped_names() -> list[str]:
    return sorted(p.name for p in (CAPTURE / "images").glob("*.jpg"))


def originals(dataset: Path, names: list[str]) -> dict[str, str]:
    """Dataset image name -> shipped name: the i-th photo (sorted) becomes frame_{i+1:05d}."""
    return {p.name: names[int(p.stem.split("_")[1]) - 1] for p in (dataset / "images").iterdir()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("process")


@pytest.fixture(scope="module")
def photos(workdir) -> tuple[Path, list[str]]:
    """12 shipped photos without poses, as a phone user may have them."""
    import pillow_heif

    folder = workdir / "Urlaubsfotos März" / "My Photos"
    folder.mkdir(parents=True)
    names = shipped_names()[:PHOTOS]
    for i, name in enumerate(names):
        image = Image.open(CAPTURE / "images" / name)
        if i == SIDEWAYS:  # the pixels turned 90 degrees counterclockwise; tag 6: "turn 90 degrees clockwise"
            exif = Image.Exif()
            exif[0x0112] = 6
            image.transpose(Image.Transpose.ROTATE_90).save(folder / name, quality=95, exif=exif)
        elif i == HEIC:
            pillow_heif.from_pillow(image).save(folder / name.replace(".jpg", ".heic"), quality=95)
        else:
            (folder / name).write_bytes((CAPTURE / "images" / name).read_bytes())
    return folder, names


@pytest.fixture(scope="module")
def scene(photos, workdir) -> tuple[Path, subprocess.CompletedProcess]:
    folder, _ = photos
    # PATH holds the virtual environment only: no colmap or ffmpeg program is needed
    return workdir / "Mein Ergebnis", ilrm_process(folder, workdir / "Mein Ergebnis", env={**ENV, "PATH": str(BIN)})


def test_photos_get_the_shipped_poses_back(scene, photos):
    dataset, result = scene
    registered, total, line = summary_line(result)
    print(line)
    assert total == PHOTOS and registered >= PHOTOS - 1, line
    assert "exhaustive matching" in line and re.search(r"(incremental|global) mapping", line), line
    meta = json.loads((dataset / "transforms.json").read_text())
    assert len(meta["frames"]) == registered
    errors = pose_errors(dataset, originals(dataset, photos[1]), known_poses(CAPTURE))
    print(f"after a similarity alignment: {errors}")
    assert errors["centre_mean"] < MAX_CENTRE_ERROR and errors["rotation_mean"] < 2.0, errors
    # one camera for photos of one size: intrinsics near the shipped ones (fl 409.6 px at 504 x 378)
    shipped = json.loads((CAPTURE / "transforms.json").read_text())
    assert (meta["w"], meta["h"]) == (504, 378) and abs(meta["fl_x"] / shipped["fl_x"] - 1) < 0.05, meta
    # the point cloud nerfstudio's converter writes, and the halved copies the dataparser picks from
    assert meta["ply_file_path"] == "sparse_pc.ply" and (dataset / "sparse_pc.ply").is_file()
    for factor in (2, 4, 8):
        with Image.open(next((dataset / f"images_{factor}").iterdir())) as small:
            assert small.size == (504 // factor, 378 // factor)


def test_a_sideways_photo_is_stored_upright_and_heic_is_read(scene, photos):
    dataset, result = scene
    check(result)
    with Image.open(dataset / "images" / f"frame_{SIDEWAYS + 1:05d}.jpg") as stored:
        assert stored.size == (504, 378) and stored.getexif().get(0x0112, 1) == 1
        original = np.asarray(Image.open(CAPTURE / "images" / photos[1][SIDEWAYS]), dtype=float)
        assert np.abs(np.asarray(stored, dtype=float) - original).mean() < 4  # the same pixels, upright
    assert (dataset / "images" / f"frame_{HEIC + 1:05d}.jpg").is_file()
    names = {Path(f["file_path"]).name for f in json.loads((dataset / "transforms.json").read_text())["frames"]}
    assert f"frame_{SIDEWAYS + 1:05d}.jpg" in names and f"frame_{HEIC + 1:05d}.jpg" in names


def test_finetune_and_export_on_the_recovered_poses(scene, workdir):
    """The user's next two commands, as the docs give them (random start: no ilrm run needed)."""
    from plyfile import PlyData

    dataset, result = scene
    check(result)
    runs = workdir / "runs"
    common = dict(capture_output=True, text=True, timeout=900, env=ENV)
    check(
        subprocess.run(
            [BIN / "ns-train", "ilrm-finetune", "--data", dataset, "--pipeline.model.random-init", "True"]
            + ["--max-num-iterations", "1", "--vis", "tensorboard", "--machine.device-type", "cpu"]
            + ["--output-dir", runs, "--timestamp", "process"],
            **common,
        )
    )
    (config,) = runs.glob("*/ilrm-finetune/process/config.yml")
    check(
        subprocess.run(
            [BIN / "ns-export", "gaussian-splat", "--load-config", config, "--output-dir", workdir / "export"], **common
        )
    )
    vertex = PlyData.read(str(workdir / "export" / "splat.ply"))["vertex"]
    means = np.stack([vertex[k] for k in ("x", "y", "z")], -1)
    assert len(means) > 1000 and np.isfinite(means).all(), f"{len(means)} Gaussians"


def test_a_video_gets_poses(workdir):
    """A clip of the first 11 shipped photos at 4 fps (H.264, written with PyAV): every frame
    extracted. (The link from the 11th photo to the 12th is weak: 25 matches between the photos,
    fewer after video compression.)"""
    import av

    names = shipped_names()[:11]
    clip = workdir / "my clip.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=4, options={"crf": "12"})
        stream.width, stream.height, stream.pix_fmt = 504, 378, "yuv420p"
        for name in names:
            frame = av.VideoFrame.from_image(Image.open(CAPTURE / "images" / name).convert("RGB"))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    registered, total, line = summary_line(ilrm_process(clip, workdir / "video scene"))
    print(line)
    assert "video frames" in line and "sequential matching" in line, line
    assert total == 11 and registered >= 10, line
    errors = pose_errors(workdir / "video scene", originals(workdir / "video scene", names), known_poses(CAPTURE))
    print(f"video, after a similarity alignment: {errors}")
    assert errors["centre_mean"] < MAX_VIDEO_CENTRE_ERROR, errors


def test_photos_of_two_sizes_get_their_own_intrinsics(workdir):
    """Every other photo at 3/4 size (a second phone): two cameras, per-frame intrinsics that
    match each image."""
    folder = workdir / "two sizes"
    folder.mkdir()
    for i, name in enumerate(shipped_names()[:10]):
        with Image.open(CAPTURE / "images" / name) as image:
            (image.resize((378, 284), Image.LANCZOS) if i % 2 else image).save(folder / name, quality=95)
    registered, total, line = summary_line(ilrm_process(folder, workdir / "two sizes scene", "--min-frames", "6"))
    print(line)
    assert total == 10 and registered >= 8, line
    frames = json.loads((workdir / "two sizes scene" / "transforms.json").read_text())["frames"]
    sizes = set()
    for frame in frames:
        with Image.open(workdir / "two sizes scene" / frame["file_path"]) as image:
            assert (frame["w"], frame["h"]) == image.size, frame
            sizes.add(image.size)
            assert 0.45 < frame["fl_x"] / image.size[0] < 0.95, frame  # 409.6 / 504 = 0.81 for both phones
    assert sizes == {(504, 378), (378, 284)}


def test_too_few_registered_photos_is_an_error(photos, workdir):
    line = one_line_error(ilrm_process(photos[0], workdir / "too few", "--min-frames", "13"))
    assert "too few poses" in line and "of 12 photos" in line and "--min-frames" in line, line


def test_unrelated_photos_fail_in_one_line(workdir):
    folder = workdir / "noise"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(
            folder / f"noise_{i}.png"
        )
    line = one_line_error(ilrm_process(folder, workdir / "noise scene"))
    print(line)
    assert f"mapper made no model of {folder}" in line and "no two of the 3 images share enough" in line, line
    assert re.search(r"colmap/mapping_(incremental|global)\.log", line), line


def test_views_too_far_apart_fail_in_one_line(workdir):
    """Every 5th shipped photo: 15 capture frames apart, 28 to 118 degrees between neighbouring
    camera orientations."""
    folder = workdir / "far apart"
    folder.mkdir()
    for name in shipped_names()[::5]:
        (folder / name).write_bytes((CAPTURE / "images" / name).read_bytes())
    line = one_line_error(ilrm_process(folder, workdir / "far apart scene"))
    print(line)
    assert "mapper made no model" in line and "no pair is good enough to start a model from" in line, line
    assert "neighbouring views too far apart" in line


def test_too_few_photos_fail_in_one_line(workdir):
    folder = workdir / "two photos"
    folder.mkdir()
    for name in shipped_names()[:2]:
        (folder / name).write_bytes((CAPTURE / "images" / name).read_bytes())
    line = one_line_error(ilrm_process(folder, workdir / "two photos scene"))
    assert "2 photos" in line and "at least 3" in line, line
    assert not (workdir / "two photos scene").exists()  # nothing written


def test_an_output_that_is_a_file_or_holds_other_things_is_refused(photos, workdir):
    a_file = workdir / "scene.txt"
    a_file.write_text("not a folder")
    line = one_line_error(ilrm_process(photos[0], a_file))
    assert str(a_file) in line and "is a file" in line, line
    other = workdir / "my documents"
    other.mkdir()
    (other / "letter.txt").write_text("keep me")
    line = one_line_error(ilrm_process(photos[0], other))
    assert "holds other things (letter.txt)" in line, line
    assert (other / "letter.txt").read_text() == "keep me"


def test_photos_inside_the_output_folder_are_refused(workdir):
    """The images folders of OUTPUT_DIR are rewritten: `ilrm-process my_scene/images my_scene`
    would delete the photos."""
    photos = workdir / "guard" / "images"
    photos.mkdir(parents=True)
    for name in shipped_names()[:3]:
        (photos / name).write_bytes((CAPTURE / "images" / name).read_bytes())
    line = one_line_error(ilrm_process(photos, photos.parent))
    assert str(photos) in line and "inside" in line, line
    assert len(list(photos.iterdir())) == 3  # the photos are untouched


def test_finetune_on_photos_without_poses_says_to_run_ilrm_process(photos):
    from ilrm_nerfstudio.core.errors import ILRMError
    from tests.test_finetune import scene_datamanager

    with pytest.raises(ILRMError, match="photos without camera poses: run `ilrm-process") as error:
        scene_datamanager(photos[0])
    assert str(photos[0]) in str(error.value)


def test_the_largest_of_several_colmap_models_becomes_sparse_0(tmp_path):
    """COLMAP writes one model per connected group of photos; sparse/0 is the one converted."""
    from nerfstudio.data.utils.colmap_parsing_utils import Image as ColmapImage
    from nerfstudio.data.utils.colmap_parsing_utils import read_images_binary, write_images_binary

    from ilrm_nerfstudio.tools.process import largest_model_first

    for model, count in (("0", 3), ("1", 9), ("2", 5)):
        (tmp_path / model).mkdir()
        images = {
            i: ColmapImage(
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
