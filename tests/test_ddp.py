"""Distributed training on the CPU, for real: 2 gloo processes spawned by `ilrm_nerfstudio.tools.
train.launch` (nerfstudio's launcher asserts CUDA in its workers), each running nerfstudio's own
`train_loop` (seed + rank, `config.setup(local_rank, world_size)`, `Trainer.setup`,
`Trainer.train`) on a tiny ilrm-small config; then the user's command, `ilrm-train` with 2
processes, resuming that run with `--load-dir`."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ilrm_nerfstudio.data.synthetic import generate_dataset
from tests.test_training import TINY

WORLD = 2
STEPS = 2  # steps 0 and 1; the only checkpoint is written after the last step (step 1)


# -- what every rank records (runs in the spawned processes) -------------------------------------


def network_state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.pipeline.model.network.state_dict().items()}


def instrumented_train_loop(local_rank: int, world_size: int, config, global_rank: int = 0) -> None:
    """nerfstudio's train_loop, unchanged, with recorders on the Trainer: this rank's shard, the
    network before training and after its first step, the local losses, what it saved with
    torch.save, the gathered evaluation summary. Written to <output_dir>/<timestamp>-rank<r>.pt."""
    from nerfstudio.engine.trainer import Trainer
    from nerfstudio.scripts import train as ns_train

    from ilrm_nerfstudio.nerfstudio.ilrm_pipeline import ILRMPipeline

    record: dict = {"losses": [], "saved": [], "eval_all": [], "evaluated": []}
    original_save = torch.save

    def recording_save(obj, path, *args, **kwargs):
        record["saved"].append(str(path))
        return original_save(obj, path, *args, **kwargs)

    torch.save = recording_save
    setup, train_iteration, after_train = Trainer.setup, Trainer.train_iteration, Trainer._after_train
    average, evaluate_scenes = ILRMPipeline.get_average_eval_image_metrics, ILRMPipeline.evaluate_scenes

    def setup_recorded(self, *args, **kwargs):
        setup(self, *args, **kwargs)
        record["rank"], record["world"] = torch.distributed.get_rank(), torch.distributed.get_world_size()
        record["ddp"] = type(self.pipeline._model).__name__
        record["find_unused_parameters"] = self.pipeline._model.find_unused_parameters
        record["shard"] = [episode.name for episode in self.pipeline.datamanager.train_dataset.episodes]
        record["start_step"] = self._start_step
        record["initial"] = network_state(self)

    def train_iteration_recorded(self, step):
        loss, loss_dict, metrics_dict = train_iteration(self, step)
        record["losses"].append(float(loss))
        if "after_first_step" not in record:
            record["after_first_step"] = network_state(self)
            record["trainable_without_grad"] = [
                name for name, p in self.pipeline.model.named_parameters() if p.requires_grad and p.grad is None
            ]
        return loss, loss_dict, metrics_dict

    def after_train_recorded(self):
        after_train(self)
        record["final"] = network_state(self)
        record["held_gaussians"] = len(self.pipeline.model.gauss_params["means"])
        original_save(record, Path(self.config.output_dir) / f"{self.config.timestamp}-rank{record['rank']}.pt")

    def average_recorded(self, *args, **kwargs):
        summary = average(self, *args, **kwargs)
        record["eval_all"].append(summary)
        return summary

    def evaluate_scenes_recorded(self, *args, **kwargs):
        per_scene = evaluate_scenes(self, *args, **kwargs)
        record["evaluated"].append([scene["scene"] for _, scene in per_scene])
        return per_scene

    Trainer.setup, Trainer.train_iteration, Trainer._after_train = (
        setup_recorded,
        train_iteration_recorded,
        after_train_recorded,
    )
    ILRMPipeline.get_average_eval_image_metrics = average_recorded
    ILRMPipeline.evaluate_scenes = evaluate_scenes_recorded
    ns_train.train_loop(local_rank, world_size, config, global_rank)


# -- the runs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp_data") / "synthetic"
    generate_dataset(root, num_scenes=8, seed=3, height=32, width=32, frames_per_scene=8, test_fraction=0.25, workers=1)
    return root


def tiny_config(data: Path, output: Path, timestamp: str, steps: int, load_dir: Path | None = None):
    from ilrm_nerfstudio.nerfstudio.method_configs import ilrm_small_method

    config = copy.deepcopy(ilrm_small_method.config)
    dm, net = config.pipeline.datamanager, config.pipeline.model.network
    dm.data, dm.image_height, dm.image_width, dm.num_workers = data, 32, 32, 0
    dm.scenes_per_batch = 1  # 2 held-out scenes = 2 evaluation batches: one per rank
    net.width, net.num_layers, net.num_heads = 32, 1, 2
    config.output_dir, config.experiment_name, config.timestamp = output, "ddp", timestamp
    config.max_num_iterations, config.steps_per_save = steps, 1000
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 1
    config.save_only_latest_checkpoint = False  # every checkpoint written stays, to be counted
    config.vis = "tensorboard"
    config.machine.device_type, config.machine.num_devices = "cpu", WORLD
    config.load_dir = load_dir
    return config


def run_distributed(config) -> list[dict]:
    from nerfstudio.scripts.train import train_loop  # noqa: F401  (what the launcher runs per rank)

    from ilrm_nerfstudio.tools.train import launch

    launch(main_func=instrumented_train_loop, num_devices_per_machine=WORLD, device_type="cpu", config=config)
    return [
        torch.load(Path(config.output_dir) / f"{config.timestamp}-rank{r}.pt", weights_only=False) for r in range(WORLD)
    ]


@pytest.fixture(scope="module")
def ddp_runs(dataset, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("OMP_NUM_THREADS", "1")  # inherited by the spawned ranks (2 cores, shared)
    output = tmp_path_factory.mktemp("ddp_runs")
    fresh = tiny_config(dataset, output, "fresh", STEPS)
    return {"fresh": run_distributed(fresh), "fresh_dir": fresh.get_checkpoint_dir()}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def assert_same_network(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_ddp_ranks_train_disjoint_shards_with_their_own_losses(ddp_runs):
    r0, r1 = ddp_runs["fresh"]
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, WORLD)
    assert r0["ddp"] == r1["ddp"] == "DistributedDataParallel"
    # every trainable parameter gets a gradient (nerfstudio's device marker is not trainable), so
    # DDP runs without find_unused_parameters and its extra pass over the graph at every step
    assert r0["find_unused_parameters"] is False and r0["trainable_without_grad"] == []
    assert r0["shard"] and r1["shard"] and not set(r0["shard"]) & set(r1["shard"])
    assert len(r0["shard"]) + len(r1["shard"]) == 6  # the 6 training scenes, all of them
    assert len(r0["losses"]) == len(r1["losses"]) == STEPS
    assert all(abs(a - b) > 1e-6 for a, b in zip(r0["losses"], r1["losses"])), (r0["losses"], r1["losses"])


def test_ddp_parameters_are_identical_across_ranks_after_each_step(ddp_runs):
    r0, r1 = ddp_runs["fresh"]
    assert_same_network(r0["initial"], r1["initial"])  # rank 0's initialization broadcast (seeds differ)
    assert_same_network(r0["after_first_step"], r1["after_first_step"])
    assert_same_network(r0["final"], r1["final"])
    moved = [name for name in r0["initial"] if not torch.equal(r0["initial"][name], r0["after_first_step"][name])]
    assert len(moved) > len(r0["initial"]) // 2  # the step really changed the network


def test_ddp_only_rank_0_writes_one_checkpoint_and_holds_the_scene(ddp_runs):
    r0, r1 = ddp_runs["fresh"]
    expected = ddp_runs["fresh_dir"] / f"step-{STEPS - 1:09d}.ckpt"
    assert sorted(ddp_runs["fresh_dir"].glob("*.ckpt")) == [expected]
    assert [p for p in r0["saved"] if ".ckpt" in p] == [f"{expected}.partial"]  # written there, then renamed
    assert r1["saved"] == []
    assert r0["held_gaussians"] > 0 and r1["held_gaussians"] == 0  # the held-out scene: rank 0 only
    assert (expected.parents[1] / "held_scene.json").is_file()
    state = torch.load(expected, map_location="cpu", weights_only=True)
    keys = list(state["pipeline"])
    assert not any(k.startswith("_model.module.") for k in keys)  # no DDP level: any tool reads it
    for name, value in r0["final"].items():
        torch.testing.assert_close(state["pipeline"][f"_model.network.{name}"], value, rtol=0, atol=0)


def test_ddp_full_evaluation_is_split_and_gathered(ddp_runs):
    r0, r1 = ddp_runs["fresh"]
    assert len(r0["eval_all"]) == len(r1["eval_all"]) == 1  # at step 1
    assert r0["eval_all"] == r1["eval_all"]
    assert r0["eval_all"][0]["num_scenes"] == 2.0 and 0 < r0["eval_all"][0]["psnr"] < 60
    (mine0,), (mine1,) = r0["evaluated"], r1["evaluated"]  # each rank evaluated one of the two scenes
    assert len(mine0) == len(mine1) == 1 and mine0 != mine1


def test_ilrm_train_cli_resumes_the_run_with_two_cpu_processes(ddp_runs, dataset, tmp_path):
    """The user command: ilrm-train (= ns-train's CLI) with --machine.num-devices 2 on the CPU,
    resuming the run above with --load-dir: both ranks load the checkpoint, rank 0 writes one."""
    command = [
        sys.executable,
        "-m",
        "ilrm_nerfstudio.tools.train",
        "ilrm-small",
        "--data",
        str(dataset),
        "--machine.device-type",
        "cpu",
        "--machine.num-devices",
        "2",
        "--vis",
        "tensorboard",
        "--output-dir",
        str(tmp_path),
        "--experiment-name",
        "cli",
        "--timestamp",
        "run",
        "--max-num-iterations",
        "1",
        "--load-dir",
        str(ddp_runs["fresh_dir"]),
        "--pipeline.datamanager.num-workers",
        "0",
        "--pipeline.datamanager.scenes-per-batch",
        "1",
        *TINY,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "rank 0/2" in out and "rank 1/2" in out  # both ranks built their data shard
    assert out.count("Done loading Nerfstudio checkpoint") == WORLD  # every rank resumes
    run = tmp_path / "cli" / "ilrm-small" / "run"
    (checkpoint,) = (run / "nerfstudio_models").glob("*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint.name == f"step-{STEPS:09d}.ckpt" and state["step"] == STEPS  # one step after step 1
    assert state["schedulers"]["network"]["last_epoch"] == STEPS + 1
    saved = torch.load(ddp_runs["fresh_dir"] / f"step-{STEPS - 1:09d}.ckpt", map_location="cpu", weights_only=True)[
        "pipeline"
    ]
    changed = [k for k in saved if k.startswith("_model.network.") and not torch.equal(saved[k], state["pipeline"][k])]
    assert changed  # the resumed step trained
    assert (run / "config.yml").is_file()
