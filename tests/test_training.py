"""The real nerfstudio CLIs on CPU: ns-train (small config), checkpoint reload, --load-dir
resume, ns-eval, and clear errors for bad configurations."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ilrm_nerfstudio.data.synthetic import generate_dataset

BIN = Path(sys.executable).parent
TINY = [
    "--pipeline.datamanager.image-height",
    "32",
    "--pipeline.datamanager.image-width",
    "32",
    "--pipeline.datamanager.scenes-per-batch",
    "2",
    "--pipeline.model.network.width",
    "32",
    "--pipeline.model.network.num-layers",
    "1",
    "--pipeline.model.network.num-heads",
    "2",
]


def ns_train(data: Path, output: Path, *extra: str, timestamp: str = "run") -> subprocess.CompletedProcess:
    command = [
        str(BIN / "ns-train"),
        "ilrm-small",
        "--data",
        str(data),
        "--machine.device-type",
        "cpu",
        "--vis",
        "tensorboard",
        "--output-dir",
        str(output),
        "--experiment-name",
        "test",
        "--timestamp",
        timestamp,
        *TINY,
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_dataset(root, num_scenes=8, seed=3, height=32, width=32, frames_per_scene=8, test_fraction=0.25, workers=1)
    return root


@pytest.fixture(scope="module")
def trained_run(dataset, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("runs")
    result = ns_train(dataset, output, "--max-num-iterations", "4", "--steps-per-save", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output / "test" / "ilrm-small" / "run"


def checkpoint_of(run: Path) -> Path:
    (checkpoint,) = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))
    return checkpoint


def test_ns_train_writes_a_checkpoint_that_loads_with_weights_only(trained_run):
    checkpoint = checkpoint_of(trained_run)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # torch >= 2.6 default
    assert state["step"] == 3
    network_keys = [k for k in state["pipeline"] if k.startswith("_model.network.")]
    assert network_keys and not any("lpips" in k or "vgg" in k for k in state["pipeline"])
    assert (trained_run / "config.yml").is_file()


def test_checkpoint_reloads_into_the_pipeline_and_matches(trained_run):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, checkpoint, step = eval_setup(trained_run / "config.yml", test_mode="test")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["pipeline"]
    for name, value in pipeline.model.network.state_dict().items():
        torch.testing.assert_close(value, saved[f"_model.network.{name}"])
    metrics = pipeline.get_average_eval_image_metrics()
    assert metrics["num_scenes"] == 2 and 0 < metrics["psnr"] < 60


def test_load_dir_resumes_training(trained_run, dataset):
    output = trained_run.parents[2]
    result = ns_train(
        dataset,
        output,
        "--max-num-iterations",
        "2",
        "--load-dir",
        str(trained_run / "nerfstudio_models"),
        timestamp="resumed",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done loading Nerfstudio checkpoint" in result.stdout
    resumed = torch.load(checkpoint_of(output / "test" / "ilrm-small" / "resumed"), weights_only=True)
    assert resumed["step"] == 5  # steps 4 and 5 after the checkpoint of step 3
    assert resumed["schedulers"]["network"]["last_epoch"] == 6


def test_ns_eval_writes_metrics_json(trained_run, tmp_path):
    output = tmp_path / "eval.json"
    renders = tmp_path / "renders"
    result = subprocess.run(
        [
            str(BIN / "ns-eval"),
            "--load-config",
            str(trained_run / "config.yml"),
            "--output-path",
            str(output),
            "--render-output-path",
            str(renders),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(output.read_text())["results"]
    for key in ("psnr", "ssim", "baseline_mean_color_psnr", "baseline_nearest_view_psnr"):
        assert key in results and results[key] == results[key]  # present and not NaN
    per_scene = json.loads((renders / "per_scene_metrics.json").read_text())
    assert len(per_scene) == 2 and {"scene", "psnr", "ssim"} <= set(per_scene[0])
    assert (
        len(list(renders.glob("*/frame_?????.png"))) == len(list(renders.glob("*/frame_?????_gt.png"))) == 2 * 2
    )  # 2 scenes x 2 targets


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--pipeline.datamanager.image-height", "36"],
            "image size 36x32 must be divisible by patch_size x viewpoint_factor = 4 x 2 = 8",
        ),
        (
            ["--pipeline.datamanager.num-context-views", "5", "--pipeline.datamanager.num-target-views", "4"],
            "has the 9 frames a sample needs",
        ),
    ],
)
def test_bad_configuration_gives_a_clear_error(dataset, tmp_path, extra, message):
    result = ns_train(dataset, tmp_path, "--max-num-iterations", "1", *extra)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_folder_is_named(tmp_path):
    result = ns_train(tmp_path / "nowhere", tmp_path, "--max-num-iterations", "1")
    assert result.returncode != 0 and "nowhere: data folder not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_methods_default_to_the_cpu_without_a_gpu():
    """nerfstudio's default device, cuda, fails on a machine without a GPU; ours follow torch."""
    from ilrm_nerfstudio.nerfstudio.method_configs import ilrm_finetune_method, ilrm_method, ilrm_small_method

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    for method in (ilrm_method, ilrm_small_method, ilrm_finetune_method):
        assert method.config.machine.device_type == expected


def test_model_tries_the_vgg_weights_once_when_offline(monkeypatch, tmp_path):
    """Without the VGG weights (offline) evaluation omits LPIPS; it must not retry every batch."""
    from types import SimpleNamespace

    import ilrm_nerfstudio.nerfstudio.ilrm_model as ilrm_model
    from ilrm_nerfstudio.metrics import perceptual

    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise OSError("offline")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty_hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    perceptual.clear_perceptual_cache()
    model = SimpleNamespace(config=SimpleNamespace(lpips_weight=0.0), device="cpu")
    assert ilrm_model.ILRMModel.perceptual(model) is None
    assert ilrm_model.ILRMModel.perceptual(model) is None
    assert calls == [perceptual.VGG16_URL]  # one attempt, remembered
    perceptual.clear_perceptual_cache()
