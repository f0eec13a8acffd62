"""End to end with the real CLIs (subprocesses, CPU) on small generated scenes:

    ns-train ilrm-small -> ns-train ilrm-finetune -> ns-render (camera-path, interpolate, spiral)
    -> ns-export gaussian-splat -> ns-eval, and ns-viewer checked in headless Chromium;

and the tools on the `ilrm` run itself (the held-out scene its checkpoint holds). Independent
commands run in parallel to save time."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ilrm_nerfstudio.data.synthetic import generate_dataset
from tests.test_training import TINY

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FINETUNE_STEPS = 30  # 3 published steps (Ours_3), then 27 splatfacto steps
PUBLISHED_STEPS = 3
HELD_OUT = ["nerfstudio-data", "--eval-mode", "interval", "--eval-interval", "4"]  # 12 frames: 3 held out


def run_parallel(
    commands: dict[str, list], logs: Path, max_parallel: int = 6, timeout: float = 1200
) -> dict[str, subprocess.CompletedProcess]:
    """Run commands at once (at most `max_parallel`), output to files under `logs`."""
    import time

    logs.mkdir(parents=True, exist_ok=True)
    pending, running, results = list(commands.items()), {}, {}
    deadline = time.time() + timeout
    while pending or running:
        while pending and len(running) < max_parallel:
            name, cmd = pending.pop(0)
            out, err = open(logs / f"{name}.out", "w"), open(logs / f"{name}.err", "w")
            running[name] = (
                subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, text=True, env=ENV),
                out,
                err,
            )
        for name, (process, out, err) in list(running.items()):
            if process.poll() is None and time.time() < deadline:
                continue
            if process.poll() is None:
                process.kill()
                process.wait()
            out.close()
            err.close()
            del running[name]
            text = lambda f: Path(f.name).read_text()  # noqa: E731
            results[name] = subprocess.CompletedProcess(process.args, process.returncode, text(out), text(err))
        time.sleep(0.5)
    return results


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{' '.join(result.args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def camera_path(scene: Path, run: Path, output: Path, frames: int = 6) -> Path:
    """A camera path (the viewer's JSON format) through the first frames of `scene`, expressed in
    the run's frame (dataparser_transforms.json of a per-scene run, held_scene.json of an ilrm run)."""
    meta = json.loads((scene / "transforms.json").read_text())
    transform, scale = np.eye(4), 1.0
    for name in ("dataparser_transforms.json", "held_scene.json"):  # per-scene run / ilrm run
        if not (run / name).is_file():
            continue
        dataparser = json.loads((run / name).read_text())
        transform[:3] = np.asarray(dataparser["transform"])
        scale = dataparser["scale"]
    path = []
    for frame in meta["frames"][:frames]:
        c2w = transform @ np.asarray(frame["transform_matrix"])
        c2w[:3, 3] *= scale
        fov = math.degrees(2 * math.atan(meta["h"] / 2 / meta["fl_y"]))
        path.append({"camera_to_world": c2w.reshape(-1).tolist(), "fov": fov, "aspect": meta["w"] / meta["h"]})
    output.write_text(
        json.dumps(
            {
                "camera_type": "perspective",
                "render_height": meta["h"],
                "render_width": meta["w"],
                "seconds": 1.0,
                "camera_path": path,
            }
        )
    )
    return output


def video_frames(path: Path) -> np.ndarray:
    """Decode a video with ffmpeg -> uint8 [frames, H, W, 3]."""
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    stream = json.loads(probe.stdout)["streams"][0]
    w, h = stream["width"], stream["height"]
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, h, w, 3)


# -- the runs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tools")


@pytest.fixture(scope="module")
def dataset(workdir) -> Path:
    root = workdir / "synthetic"
    generate_dataset(
        root, num_scenes=6, seed=3, height=32, width=32, frames_per_scene=12, test_fraction=0.34, workers=1
    )
    return root


@pytest.fixture(scope="module")
def ilrm_run(dataset, workdir) -> tuple[Path, subprocess.CompletedProcess]:
    result = check(
        subprocess.run(
            [
                BIN / "ns-train",
                "ilrm-small",
                "--data",
                dataset,
                "--machine.device-type",
                "cpu",
                "--vis",
                "tensorboard",
                "--output-dir",
                workdir / "runs",
                "--experiment-name",
                "tools",
                "--timestamp",
                "ilrm",
                *TINY,
                "--max-num-iterations",
                "4",
                "--steps-per-save",
                "2",
                "--pipeline.model.viewer-scene",
                "1",
                "--pipeline.datamanager.num-workers",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env=ENV,
        )
    )
    return workdir / "runs" / "tools" / "ilrm-small" / "ilrm", result


@pytest.fixture(scope="module")
def scene(dataset) -> Path:
    return sorted((dataset / "test").iterdir())[0]


@pytest.fixture(scope="module")
def finetune_run(ilrm_run, scene, workdir) -> tuple[Path, subprocess.CompletedProcess]:
    result = check(
        subprocess.run(
            [
                BIN / "ns-train",
                "ilrm-finetune",
                "--data",
                scene,
                "--machine.device-type",
                "cpu",
                "--vis",
                "tensorboard",
                "--output-dir",
                workdir / "runs",
                "--experiment-name",
                "tools",
                "--timestamp",
                "finetune",
                "--pipeline.model.ilrm-run",
                ilrm_run[0],
                "--max-num-iterations",
                str(FINETUNE_STEPS),
                "--pipeline.model.published-steps",
                str(PUBLISHED_STEPS),
                "--pipeline.datamanager.num-input-views",
                "4",
                *HELD_OUT,
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env=ENV,
        )
    )
    return workdir / "runs" / "tools" / "ilrm-finetune" / "finetune", result


@pytest.fixture(scope="module")
def tools(finetune_run, ilrm_run, scene, dataset, workdir) -> dict:
    """Every tool on both runs, at once: ns-render (3 modes), ns-export, ns-eval on the per-scene
    run; ns-render camera-path, ns-export on the ilrm run; ns-viewer + headless Chromium on both
    (when chromium is installed)."""
    out = workdir / "tools"
    finetune, ilrm = finetune_run[0] / "config.yml", ilrm_run[0] / "config.yml"
    (out / "finetune").mkdir(parents=True)
    (out / "ilrm").mkdir()
    paths = {
        "finetune": camera_path(scene, finetune_run[0], out / "finetune" / "camera_path.json"),
        "ilrm": camera_path(
            sorted((dataset / "test").iterdir())[1], ilrm_run[0], out / "ilrm" / "camera_path.json"
        ),  # viewer-scene 1
    }
    commands = {}
    if shutil.which("chromium") is not None:  # long, mostly waiting: first
        script = ROOT / "scripts" / "viewer_screenshot.py"
        for name, config in (("finetune", finetune), ("ilrm", ilrm)):
            commands[f"viewer-{name}"] = [
                sys.executable,
                script,
                "--load-config",
                config,
                "--output",
                out / "viewer" / f"{name}.png",
                "--wait",
                "400",
                "--settle",
                "3",
            ]
    f, i = out / "finetune", out / "ilrm"
    commands |= {
        "finetune-camera-path": [
            BIN / "ns-render",
            "camera-path",
            "--load-config",
            finetune,
            "--camera-path-filename",
            paths["finetune"],
            "--output-path",
            f / "camera_path.mp4",
        ],
        "finetune-interpolate": [
            BIN / "ns-render",
            "interpolate",
            "--load-config",
            finetune,
            "--interpolation-steps",
            "3",
            "--output-path",
            f / "interpolate.mp4",
        ],
        "finetune-spiral": [
            BIN / "ns-render",
            "spiral",
            "--load-config",
            finetune,
            "--seconds",
            "0.25",
            "--output-path",
            f / "spiral.mp4",
        ],
        "finetune-export": [
            BIN / "ns-export",
            "gaussian-splat",
            "--load-config",
            finetune,
            "--output-dir",
            f / "export",
        ],
        "finetune-eval": [
            BIN / "ns-eval",
            "--load-config",
            finetune,
            "--output-path",
            f / "eval.json",
            "--render-output-path",
            f / "eval_renders",
        ],
        "ilrm-camera-path": [
            BIN / "ns-render",
            "camera-path",
            "--load-config",
            ilrm,
            "--camera-path-filename",
            paths["ilrm"],
            "--output-path",
            i / "camera_path.mp4",
        ],
        "ilrm-export": [BIN / "ns-export", "gaussian-splat", "--load-config", ilrm, "--output-dir", i / "export"],
    }
    return {"dir": out, "results": run_parallel(commands, out / "logs"), "camera_path": paths}


# -- the per-scene run -----------------------------------------------------------------------------


def test_finetune_shows_both_stages_and_checkpoints_only_the_gaussians(finetune_run):
    run, result = finetune_run
    for line in (
        "network start: 4 input views at 32x32",
        "start: 1,024 Gaussians (network",
        "held-out PSNR (start, 3 views)",
        f"held-out PSNR (after {PUBLISHED_STEPS} published steps, 3 views)",
        f"held-out PSNR (after {FINETUNE_STEPS} steps, 3 views)",
        "held_out.png (held-out frames: ground truth | render)",
    ):
        assert line in result.stdout, result.stdout[-3000:]
    assert (run / "held_out.png").is_file()
    (checkpoint,) = (run / "nerfstudio_models").glob("*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # torch >= 2.6 default
    assert state["step"] == FINETUNE_STEPS - 1
    assert {k for k in state["pipeline"] if "gauss_params" in k} == {
        f"_model.gauss_params.{k}" for k in ("means", "scales", "quats", "features_dc", "features_rest", "opacities")
    }
    assert not any("network" in k for k in state["pipeline"])
    means = state["pipeline"]["_model.gauss_params.means"]
    assert means.shape[1] == 3 and len(means) > 0.5 * 4 * 16 * 16  # densified / pruned from the 1,024 predicted


def test_ns_render_modes_write_videos(tools):
    out = tools["dir"] / "finetune"
    for name, frames in (("camera-path", 6), ("interpolate", None), ("spiral", 6)):
        check(tools["results"][f"finetune-{name}"])
        video = video_frames(out / f"{name.replace('-', '_')}.mp4")
        assert video.shape[1:] == (32, 32, 3) and (frames is None or len(video) == frames), (name, video.shape)
        assert video.std() > 1.0  # not a blank video


def checkpoint_model(run: Path):
    """The model of a run rebuilt from its checkpoint alone (its Gaussians; no data, no network,
    and quicker than eval_setup, which imports every nerfstudio method)."""
    from nerfstudio.data.scene_box import SceneBox

    from ilrm_nerfstudio.nerfstudio.ilrm_model import GaussianSceneModelConfig

    (checkpoint,) = (run / "nerfstudio_models").glob("*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["pipeline"]
    gaussians = {k[len("_model.") :]: v for k, v in state.items() if k.startswith("_model.gauss_params.")}
    model = GaussianSceneModelConfig().setup(
        scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1
    )
    model.load_state_dict(gaussians, strict=False)
    return model.eval()


def ply_round_trip(run: Path, ply: Path, path_json: Path, sh_degree: int) -> None:
    """Read the PLY with plyfile, rebuild the Gaussians, render them with our renderer and compare
    with the model's own render of the checkpoint."""
    from nerfstudio.cameras.camera_paths import get_path_from_json
    from plyfile import PlyData

    from ilrm_nerfstudio.data.ply import load_ply, ply_properties
    from ilrm_nerfstudio.render.rendering import render

    vertex = PlyData.read(str(ply))["vertex"]
    assert [p.name for p in vertex.properties] == ply_properties(sh_degree)  # INRIA names and order
    assert all(p.val_dtype in ("f4", "float32") for p in vertex.properties)
    model = checkpoint_model(run)
    gaussians = load_ply(ply)
    assert len(gaussians) == len(model.means) and len(gaussians) > 0
    cameras = get_path_from_json(json.loads(path_json.read_text()))
    for i in (0, len(cameras) - 1):
        camera = cameras[i : i + 1]
        ours = model.get_outputs_for_camera(camera)["rgb"]
        c2w, K = model.opencv_cameras(camera)
        theirs = (
            render(gaussians, c2w, K, int(camera.width), int(camera.height), model.background_color, backend="torch")
            .rgb[0]
            .clamp(0, 1)
        )
        assert float(ours.std()) > 0.005
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_ns_export_writes_an_inria_ply_that_round_trips(tools, finetune_run):
    check(tools["results"]["finetune-export"])
    ply_round_trip(
        finetune_run[0],
        tools["dir"] / "finetune" / "export" / "splat.ply",
        tools["camera_path"]["finetune"],
        sh_degree=3,  # splatfacto's default degree, which the network start is raised to
    )


def test_ns_eval_scores_the_held_out_views(tools):
    check(tools["results"]["finetune-eval"])
    results = json.loads((tools["dir"] / "finetune" / "eval.json").read_text())["results"]
    assert results["psnr"] == results["psnr"] and 0 < results["psnr"] < 60 and 0 < results["ssim"] <= 1
    assert len(list((tools["dir"] / "finetune" / "eval_renders").glob("*.png"))) == 3  # the 3 held-out views


# -- the multi-scene ilrm run ------------------------------------------------------------------


def test_ilrm_checkpoint_holds_the_chosen_scene(ilrm_run, dataset):
    run, result = ilrm_run
    held = sorted((dataset / "test").iterdir())[1].name
    assert f"checkpoint holds held-out scene {held} (512 Gaussians)" in result.stdout
    (checkpoint,) = (run / "nerfstudio_models").glob("*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["pipeline"]["_model.gauss_params.means"].shape == (512, 3)


def test_tools_on_the_ilrm_run(tools, ilrm_run):
    for name in ("camera-path", "export"):
        check(tools["results"][f"ilrm-{name}"])
    video = video_frames(tools["dir"] / "ilrm" / "camera_path.mp4")
    assert len(video) == 6 and video.std() > 1.0
    ply_round_trip(
        ilrm_run[0], tools["dir"] / "ilrm" / "export" / "splat.ply", tools["camera_path"]["ilrm"], sh_degree=0
    )


# -- ns-viewer in headless Chromium ----------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not installed (the Makefile's setup installs it: apt-get install chromium)",
)
def test_ns_viewer_renders_in_a_browser(tools):
    """Both runs: the viewer page shows a non-empty render, and a new one after the camera is
    dragged (screenshots in the tools folder: viewer/<run>.png and <run>_moved.png)."""
    for name in ("finetune", "ilrm"):
        result = tools["results"][f"viewer-{name}"]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert result.returncode == 0 and report["ok"], (name, report, result.stderr[-2000:])
        assert report["first"]["resolution"][0] >= 256 and report["moved"]["resolution"][0] >= 256
        shots = tools["dir"] / "viewer"
        assert (shots / f"{name}.png").is_file() and (shots / f"{name}_moved.png").is_file()
