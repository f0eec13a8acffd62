"""Damaged runs and impossible options: checkpoints (torn, missing, an interrupted save), run
folders moved or used from another working directory (ilrm-eval's loader; nerfstudio's tools as
for any method), a CUDA machine option without a GPU, and ilrm-eval's and the feed-forward
method's arguments.

One tiny real run is trained once (`ns-train ilrm-small`, 3 steps, a checkpoint at steps 1 and 2,
relative --data and --output-dir); every test damages its own copy."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from ilrm_nerfstudio.core.checkpoints import checkpoint_problem, newest_good_checkpoint, write_checkpoint
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.data.synthetic import generate_dataset
from ilrm_nerfstudio.nerfstudio.trainer import ILRMTrainer
from ilrm_nerfstudio.tools.eval import main as ilrm_eval
from tests.test_training import TINY

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEP_1, STEP_2 = "step-000000001.ckpt", "step-000000002.ckpt"


def run_tool(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, env=ENV, cwd=cwd)


def one_line_error(result: subprocess.CompletedProcess, *parts: str) -> None:
    """Non-zero exit, no traceback, and a line of stderr that holds every part."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("ilrm: ")]
    assert any(all(p in line for p in parts) for line in lines), (parts, result.stderr[-3000:])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_runs")


@pytest.fixture(scope="module")
def run(workdir) -> Path:
    """ns-train in `workdir` with relative paths: runs/bad/ilrm-small/run, checkpoints of steps 1, 2."""
    generate_dataset(
        workdir / "synthetic", num_scenes=4, seed=3, height=32, width=32, frames_per_scene=8, test_fraction=0.25,
        workers=1,
    )  # fmt: skip
    result = run_tool(
        BIN / "ns-train", "ilrm-small", "--data", "synthetic", "--machine.device-type", "cpu", "--vis", "tensorboard",
        "--output-dir", "runs", "--experiment-name", "bad", "--timestamp", "run", *TINY,
        "--pipeline.datamanager.num-workers", "0", "--max-num-iterations", "3", "--steps-per-save", "1",
        "--save-only-latest-checkpoint", "False",
        cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = workdir / "runs" / "bad" / "ilrm-small" / "run"
    assert sorted(p.name for p in (run / "nerfstudio_models").iterdir()) == [STEP_1, STEP_2]
    return run


def copy_run(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


def truncate(path: Path, size: int = 1000) -> None:
    path.write_bytes(path.read_bytes()[:size])


def evaluate(config: Path, tmp_path: Path, capsys, *extra: str) -> tuple[int, dict | None, str, str]:
    output = tmp_path / "results.json"
    code = ilrm_eval(["--load-config", str(config), "--output", str(output), *extra])
    out, err = capsys.readouterr()
    return code, json.loads(output.read_text()) if code == 0 else None, out, err


# -- checkpoints: written atomically ---------------------------------------------------------------


def test_config_names_our_trainer_and_stores_absolute_paths(run, workdir):
    text = (run / "config.yml").read_text()
    assert "_target: !!python/name:ilrm_nerfstudio.nerfstudio.trainer.ILRMTrainer" in text
    config = yaml.load(text, Loader=yaml.Loader)
    assert Path(config.output_dir) == workdir / "runs"
    assert Path(config.data) == Path(config.pipeline.datamanager.data) == workdir / "synthetic"
    assert not list((run / "nerfstudio_models").glob("*.partial"))


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.arange(4.0))


def fake_trainer(folder: Path, latest_only: bool = True):
    """What ILRMTrainer.save_checkpoint / _load_checkpoint read of a trainer."""
    return SimpleNamespace(
        checkpoint_dir=folder,
        pipeline=_Model(),
        optimizers=SimpleNamespace(optimizers={}, schedulers={}),
        grad_scaler=SimpleNamespace(state_dict=lambda: {}),
        config=SimpleNamespace(save_only_latest_checkpoint=latest_only),
    )


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_an_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, failure):
    trainer = fake_trainer(tmp_path / "nerfstudio_models")
    ILRMTrainer.save_checkpoint(trainer, 1)  # type: ignore[arg-type]
    previous = tmp_path / "nerfstudio_models" / STEP_1
    before = previous.read_bytes()
    real_save = torch.save

    def save_then_fail(obj, path, *args, **kwargs):  # half of the file written, then the interruption
        real_save(obj, path, *args, **kwargs)
        truncate(Path(path), len(Path(path).read_bytes()) // 2)
        raise failure(28, "No space left on device") if failure is OSError else failure()

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(ILRMError if failure is OSError else KeyboardInterrupt) as caught:
        ILRMTrainer.save_checkpoint(trainer, 2)  # type: ignore[arg-type]
    if failure is OSError:
        assert f"{STEP_2}: cannot write this checkpoint" in str(caught.value) and "intact" in str(caught.value)
    assert sorted(p.name for p in previous.parent.iterdir()) == [STEP_1]  # no partial file, no step-2
    assert previous.read_bytes() == before
    assert checkpoint_problem(previous) is None
    monkeypatch.setattr(torch, "save", real_save)
    ILRMTrainer.save_checkpoint(trainer, 2)  # type: ignore[arg-type]
    assert sorted(p.name for p in previous.parent.iterdir()) == [STEP_2]  # the old one deleted after


def test_a_partial_file_left_by_a_killed_save_is_ignored_then_removed(tmp_path, capsys):
    folder = tmp_path / "nerfstudio_models"
    trainer = fake_trainer(folder, latest_only=False)
    ILRMTrainer.save_checkpoint(trainer, 1)  # type: ignore[arg-type]
    (folder / f"{STEP_2}.partial").write_bytes(b"PK\x03\x04 torn")  # the process was killed mid-write
    assert newest_good_checkpoint(folder) == folder / STEP_1
    assert "warning" not in capsys.readouterr().out  # a partial file is not a checkpoint
    write_checkpoint({"step": 3, "pipeline": {}}, folder / "step-000000003.ckpt")
    ILRMTrainer.save_checkpoint(trainer, 4)  # type: ignore[arg-type]
    assert sorted(p.name for p in folder.iterdir()) == [STEP_1, "step-000000003.ckpt", "step-000000004.ckpt"]


# -- checkpoints: loading skips a torn one ---------------------------------------------------------


def test_ilrm_eval_uses_the_older_checkpoint_when_the_newest_is_torn(run, tmp_path, capsys):
    damaged = copy_run(run, tmp_path / "run")
    truncate(damaged / "nerfstudio_models" / STEP_2)
    code, results, out, err = evaluate(damaged / "config.yml", tmp_path, capsys)
    assert code == 0, err
    assert results["checkpoint"] == str(damaged / "nerfstudio_models" / STEP_1) and results["step"] == 1
    warning = next(line for line in out.splitlines() if "ilrm: warning" in line)
    assert (
        f"{STEP_2} cannot be read, truncated or damaged" in warning
        and str(damaged / "nerfstudio_models" / STEP_1) in warning
    )


def test_ns_export_and_ns_eval_on_the_run_where_it_was_trained(run, tmp_path):
    """nerfstudio's own tools load our run as they load any method's: ns-export from another
    working directory (config.yml stores absolute paths); a run whose data is gone ends in one
    line from ns-eval (our pipeline's setup installs the one-line hook)."""
    (tmp_path / "elsewhere").mkdir()
    result = run_tool(
        BIN / "ns-export", "gaussian-splat", "--load-config", run / "config.yml", "--output-dir", "export",
        cwd=tmp_path / "elsewhere",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "elsewhere" / "export" / "splat.ply").stat().st_size > 0
    no_data = copy_run(run, run.parent / "no_data")
    config = yaml.load((no_data / "config.yml").read_text(), Loader=yaml.Loader)
    config.data = config.pipeline.datamanager.data = tmp_path / "gone"
    config.timestamp = "no_data"
    (no_data / "config.yml").write_text(yaml.dump(config))
    result = run_tool(BIN / "ns-eval", "--load-config", no_data / "config.yml", cwd=tmp_path)
    one_line_error(result, f"{tmp_path / 'gone'}: data folder not found")


@pytest.mark.parametrize("damage", ["all torn", "empty files", "no folder", "folder is a file", "empty folder"])
def test_ilrm_eval_without_a_good_checkpoint_is_one_line(run, tmp_path, capsys, damage):
    damaged = copy_run(run, tmp_path / "run")
    models = damaged / "nerfstudio_models"
    expected = {
        "all torn": f"{models}: no readable checkpoint: {STEP_2} cannot be read, truncated or damaged",
        "empty files": f"{models}: no readable checkpoint: {STEP_2} is empty",
        "no folder": f"{models}: checkpoint folder not found",
        "folder is a file": f"{models}: is a file, not a checkpoint folder",
        "empty folder": f"{models}: no checkpoint (step-*.ckpt) in this folder",
    }[damage]
    for checkpoint in list(models.iterdir()):
        if damage == "all torn":
            truncate(checkpoint, 300)
        elif damage == "empty files":
            checkpoint.write_bytes(b"")
        else:
            checkpoint.unlink()
    if damage in ("no folder", "folder is a file"):
        models.rmdir()
    if damage == "folder is a file":
        models.write_text("not a folder")
    code, _, _, err = evaluate(damaged / "config.yml", tmp_path, capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_a_checkpoint_that_is_not_a_nerfstudio_one_is_skipped(run, tmp_path, capsys):
    damaged = copy_run(run, tmp_path / "run")
    torch.save({"weights": torch.zeros(2)}, damaged / "nerfstudio_models" / STEP_2)
    code, results, out, err = evaluate(damaged / "config.yml", tmp_path, capsys)
    assert code == 0, err
    assert results["step"] == 1 and "is not a nerfstudio checkpoint" in out


def test_resume_takes_the_newest_good_checkpoint(run, tmp_path, capsys):
    """ns-train --load-dir (ILRMTrainer._load_checkpoint): the torn newest is skipped with a warning;
    none readable, a torn --load-step or a checkpoint of another model is one line."""
    damaged = copy_run(run, tmp_path / "run") / "nerfstudio_models"
    truncate(damaged / STEP_2)
    loaded = {}
    trainer = SimpleNamespace(
        config=SimpleNamespace(load_dir=damaged, load_step=None, load_checkpoint=None, load_scheduler=True),
        pipeline=SimpleNamespace(load_pipeline=lambda state, step: loaded.update(step=step)),
        optimizers=SimpleNamespace(load_optimizers=lambda state: None, load_schedulers=lambda state: None),
        grad_scaler=SimpleNamespace(load_state_dict=lambda state: None),
    )
    trainer._resume_from = lambda path: ILRMTrainer._resume_from(trainer, path)  # type: ignore[arg-type]
    ILRMTrainer._load_checkpoint(trainer)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert loaded == {"step": 1} and trainer._start_step == 2
    assert f"Done loading Nerfstudio checkpoint from {damaged / STEP_1}" in out and f"{STEP_2} cannot be read" in out

    trainer.config.load_step = 2
    with pytest.raises(ILRMError, match=r"--load-step 2: .*step-000000002.ckpt cannot be read.*leave out --load-step"):
        ILRMTrainer._load_checkpoint(trainer)  # type: ignore[arg-type]

    def wrong_model(state, step):
        raise RuntimeError('Error(s) in loading state_dict for ILRMPipeline:\n\tMissing key(s): "_model.x"')

    trainer.config.load_step, trainer.pipeline.load_pipeline = None, wrong_model
    with pytest.raises(ILRMError, match=r"step-000000001.ckpt: this checkpoint does not fit the model being trained"):
        ILRMTrainer._load_checkpoint(trainer)  # type: ignore[arg-type]

    truncate(damaged / STEP_1)
    with pytest.raises(ILRMError, match=r"--load-dir .*nerfstudio_models: no readable checkpoint"):
        ILRMTrainer._load_checkpoint(trainer)  # type: ignore[arg-type]

    trainer.config.load_dir = damaged.parent  # the run folder, not its nerfstudio_models/
    with pytest.raises(
        ILRMError, match=r"--load-dir .*run: no checkpoint \(step-\*.ckpt\) here; give .*nerfstudio_models"
    ):
        ILRMTrainer._load_checkpoint(trainer)  # type: ignore[arg-type]


# -- run folders ------------------------------------------------------------------------------------


def test_a_moved_run_is_evaluated_from_another_working_directory(run, tmp_path, capsys, monkeypatch):
    """ilrm-eval's loader: the run folder is where config.yml is now (moved, renamed, given
    relative to another working directory), and its newest good checkpoint is loaded."""
    moved = copy_run(run, tmp_path / "somewhere" / "my_run")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    code, results, _, err = evaluate(Path("../somewhere/my_run"), tmp_path, capsys)  # the run folder itself
    assert code == 0, err
    assert results["checkpoint"] == str(moved / "nerfstudio_models" / STEP_2) and results["results"]["num_scenes"] == 1
    truncate(moved / "nerfstudio_models" / STEP_2)
    code, results, out, err = evaluate(Path("../somewhere/my_run/config.yml"), tmp_path, capsys)
    assert code == 0, err
    assert results["checkpoint"] == str(moved / "nerfstudio_models" / STEP_1)
    assert f"{moved / 'nerfstudio_models' / STEP_2} cannot be read" in " ".join(out.split())


def test_the_run_folder_in_process_eval_setup(run, tmp_path, monkeypatch):
    """nerfstudio's eval_setup on a moved run: with our loader's callback (use_run_folder, as
    ilrm-eval passes it) the run folder is the one holding config.yml; without it, the config is
    left as nerfstudio reads it (the folder it was trained in)."""
    from nerfstudio.utils.eval_utils import eval_setup

    def use_run_folder(config):
        config.use_run_folder(Path("moved"))
        return config

    moved = copy_run(run, tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    config, _, checkpoint, step = eval_setup(
        Path("moved/config.yml"), test_mode="inference", update_config_callback=use_run_folder
    )
    assert config.get_base_dir() == moved and checkpoint == moved / "nerfstudio_models" / STEP_2 and step == 2
    assert "_run_dir" not in yaml.dump(config)  # where it was loaded from is not saved with it
    config, _, checkpoint, _ = eval_setup(Path("moved/config.yml"), test_mode="inference")
    assert config.get_base_dir() == run and checkpoint == run / "nerfstudio_models" / STEP_2


# -- options ----------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path):
    result = run_tool(
        BIN / "ns-train", "ilrm-small", "--data", tmp_path, "--machine.device-type", "cuda", "--output-dir",
        tmp_path / "runs", cwd=tmp_path,
    )  # fmt: skip
    one_line_error(result, "--machine.device-type cuda: no CUDA GPU; use --machine.device-type cpu")
    assert not (tmp_path / "runs").exists()  # stopped before writing a run folder


def tiny_config(data: Path, output: Path):
    from ilrm_nerfstudio.nerfstudio.method_configs import ilrm_small_method

    config = copy.deepcopy(ilrm_small_method.config)
    dm, net = config.pipeline.datamanager, config.pipeline.model.network
    dm.data, dm.image_height, dm.image_width, dm.num_workers, dm.scenes_per_batch = data, 32, 32, 0, 2
    net.width, net.num_layers, net.num_heads = 32, 1, 2
    config.output_dir, config.machine.device_type = output, "cpu"
    return config


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("machine.device_type", "mps", "--machine.device-type mps: no Apple MPS device; use --machine.device-type cpu"),
        ("machine.num_devices", 0, "--machine.num-devices 0: must be at least 1"),
        ("machine.machine_rank", 1, "--machine.machine-rank 1: must be in 0..0"),
        ("steps_per_save", -1, "--steps-per-save -1: must be 0 (never) or a positive number of steps"),
        ("max_num_iterations", 0, "--max-num-iterations 0: must be at least 1"),
        ("load_dir", Path("nowhere/nerfstudio_models"), "--load-dir nowhere/nerfstudio_models: checkpoint folder"),
    ],
)
def test_impossible_trainer_options_are_one_line(run, tmp_path, option, value, message):
    if option == "machine.device_type" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    config = tiny_config(run.parents[3] / "synthetic", tmp_path)
    owner, _, name = option.rpartition(".")
    setattr(config.machine if owner else config, name, value)
    with pytest.raises(ILRMError) as caught:
        config.save_config()
    assert message in str(caught.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_an_output_dir_that_is_a_file_is_one_line(run, tmp_path):
    (tmp_path / "outputs").write_text("a file")
    config = tiny_config(run.parents[3] / "synthetic", tmp_path / "outputs")
    with pytest.raises(ILRMError, match=r"outputs/.*: cannot create the run folder .*; choose another --output-dir"):
        config.save_config()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("lpips_weight", -0.5, "--pipeline.model.lpips-weight -0.5: must be 0 (MSE only) or a positive number"),
        ("lpips_weight", float("nan"), "--pipeline.model.lpips-weight nan"),
        ("sh_degree", 4, "--pipeline.model.sh-degree 4: must be 0, 1, 2 or 3"),
        ("viewer_scene", "7", "--pipeline.model.viewer-scene 7: viewer_scene 7: there are 1 evaluation scenes"),
        ("viewer_scene", "-1", "--pipeline.model.viewer-scene -1: an index is 0 or more"),
        ("viewer_scene", "no_such_scene", "'no_such_scene' is not an evaluation scene (e.g. scene_00001)"),
        ("viewer_scene", " ", "--pipeline.model.viewer-scene is empty"),
        ("init_from", Path("missing.ckpt"), "--pipeline.model.init-from missing.ckpt: checkpoint file not found"),
        ("network.patch_size", 0, "--pipeline.model.network.patch-size 0: must be a whole number, at least 1"),
        ("network.num_heads", 3, "width 32 must be divisible by num_heads 3"),
        ("network.near", 0.0, "--pipeline.model.network.near 0.0, far 100.0: need 0 < near < far"),
    ],
)
def test_impossible_model_options_are_errors_at_setup(run, tmp_path, option, value, message):
    config = tiny_config(run.parents[3] / "synthetic", tmp_path)
    owner, _, name = option.rpartition(".")
    setattr(config.pipeline.model.network if owner else config.pipeline.model, name, value)
    with pytest.raises(ILRMError) as caught:
        config.pipeline.setup(device="cpu", test_mode="val")
    assert message in str(caught.value)


def test_evaluation_with_no_held_out_scenes_is_one_line(run, tmp_path):
    """An ilrm run whose evaluation is set to no scenes (here num_eval_scenes 0 in its config)."""
    from ilrm_nerfstudio.nerfstudio.ilrm_pipeline import ILRMPipeline

    config = tiny_config(run.parents[3] / "synthetic", tmp_path)
    config.pipeline.datamanager.num_eval_scenes = 0
    pipeline = config.pipeline.setup(device="cpu", test_mode="test")
    assert isinstance(pipeline, ILRMPipeline)
    with pytest.raises(ILRMError, match=r"synthetic: no held-out scenes to evaluate \(split 'test', num_eval_scenes 0"):
        pipeline.get_average_eval_image_metrics(output_path=tmp_path, get_std=True)


# -- ilrm-eval's arguments ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def published(workdir) -> Path:
    from tests.test_published import RE10K, SMALL, random_state, their_shapes, write_re10k

    return write_re10k(workdir / "re10k_2view.ckpt", random_state(their_shapes(RE10K, **SMALL), seed=1))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--context-views", "0"], "--context-views 0: must be at least 1"),
        (["--context-views", "-2"], "--context-views -2: must be at least 1"),
        (["--num-scenes", "0"], "--num-scenes 0: must be at least 1"),
        (["--num-scenes", "-1"], "--num-scenes -1: must be at least 1"),
        (["--num-workers", "-1"], "--num-workers -1: must be 0"),
        (["--data", "{tmp}/nowhere"], "nowhere: data folder not found"),
        (["--index", "{tmp}/missing.json"], "missing.json: index file not found"),
        (["--index", "{tmp}"], ": is a folder, not an index JSON file"),
        (["--index", "{tmp}/index.json", "--context-views", "3"], "--index names the context and target views"),
        (["--render-dir", "{tmp}/a_file"], "a_file: a file is in the way"),
        (["--render-dir", "{tmp}/a_file/renders"], "renders: a file is in the way"),
        (["--output", "{tmp}"], "cannot write a file there"),
        (["--image-size", "32", "32"], "--image-size and --device go with --published"),
        (["--split", " "], "--split is empty"),
    ],
)
def test_ilrm_eval_bad_arguments_are_one_line(run, tmp_path, capsys, args, message):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "index.json").write_text("{}")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = ilrm_eval(["--load-config", str(run / "config.yml"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("ilrm: ") and len(err.strip().splitlines()) == 1, err
    assert not (run / "eval_results.json").exists()


@pytest.mark.parametrize(
    "config, message",
    [
        ("missing/config.yml", "config.yml: run config not found"),
        ("empty.yml", "empty.yml: not a run config written by ns-train"),
        ("other.yml", "other.yml: not a run config written by ns-train"),
        ("binary.yml", "binary.yml: cannot read this run config (not UTF-8 text"),
        ("folder", "folder: is a folder without a config.yml"),
    ],
)
def test_ilrm_eval_bad_run_config_is_one_line(tmp_path, capsys, config, message):
    (tmp_path / "empty.yml").write_text("")
    (tmp_path / "other.yml").write_text("a: 1\n")
    (tmp_path / "binary.yml").write_bytes(b"\xff\xfe\x00!!python")
    (tmp_path / "folder").mkdir()
    code = ilrm_eval(["--load-config", str(tmp_path / config)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image-size", "34", "34"], "--image-size 34x34 must be divisible by patch_size x viewpoint_factor"),
        (["--image-size", "0", "32"], "--image-size 0 32: height and width must be positive"),
        (["--context-views", "0"], "--context-views 0: must be at least 1"),
        (["--device", "tpu"], "--device tpu: not a device"),
        (["--published", "{tmp}"], "is a folder, not a checkpoint file"),
    ]
    + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "--device cuda: no CUDA GPU; use --device cpu")]),
)
def test_ilrm_eval_published_bad_arguments_are_one_line(run, published, tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    published_args = [] if "--published" in args else ["--published", str(published)]
    code = ilrm_eval([*published_args, "--data", str(run.parents[3] / "synthetic"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
