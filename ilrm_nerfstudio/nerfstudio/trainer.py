"""Checkpoints that survive interruptions: nerfstudio's Trainer with atomic writes and a loader
that skips a torn checkpoint.

nerfstudio writes `nerfstudio_models/step-N.ckpt` in place, so a run stopped during a save (Ctrl-C,
a killed job, a full disk) leaves a truncated newest checkpoint, and every loader (resuming with
`--load-dir`, ns-eval, ns-export, ns-render, ns-viewer, ilrm-eval) takes the newest one and stops
with "PytorchStreamReader failed reading zip archive", naming no file. Here:

- `write_checkpoint` writes `step-N.ckpt.partial` beside the final name and renames it into place
  (`os.replace`, atomic on one file system): `step-N.ckpt` is either absent or complete.
- `newest_good_checkpoint` picks the newest checkpoint that reads back (skipping a damaged newer
  one with a warning naming both files); no folder, no checkpoint or no readable one is one line
  naming the folder and what to do.

`ILRMTrainer` uses both (resuming). nerfstudio's `eval_setup` does not go through the trainer;
`ILRMTrainerConfig` (below) chooses its checkpoint with `newest_good_checkpoint` and checks the
machine and step options before anything runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from ilrm_nerfstudio.core.errors import ILRMError, brief
from ilrm_nerfstudio.nerfstudio.console import log_line
from ilrm_nerfstudio.nerfstudio.ilrm_pipeline import ILRMPipelineConfig

CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.ckpt$")
PARTIAL_SUFFIX = ".partial"  # a checkpoint being written; never matches step-*.ckpt


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}.ckpt"


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be loaded as a nerfstudio checkpoint, or None when it reads back.

    The file is opened memory-mapped (the zip directory and the pickled structure are read, the
    tensors are not), which finds a truncated or empty file for the cost of a directory listing."""
    path = Path(path)
    if not path.exists():
        return "not found"
    if not path.is_file():
        return "is not a file"
    try:
        if path.stat().st_size == 0:
            return "is empty (0 bytes: an interrupted write?)"
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to read it is the answer
        return f"cannot be read, truncated or damaged ({brief(error)})"
    if not isinstance(state, dict) or not {"step", "pipeline"} <= set(state):
        return "is not a nerfstudio checkpoint (no 'step' and 'pipeline' entries)"
    return None


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the step-N.ckpt files in `folder`, oldest first."""
    found = []
    for path in Path(folder).iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def newest_good_checkpoint(folder: Path, what: str = "") -> Path:
    """The newest step-N.ckpt of `folder` that reads back. A damaged newer one is skipped with a
    warning naming both files; no folder, no checkpoint or none readable raises ILRMError (`what`,
    e.g. "--load-dir", prefixes the message)."""
    folder = Path(folder)
    prefix = f"{what} {folder}" if what else str(folder)
    if not folder.is_dir():
        problem = "is a file, not a checkpoint folder" if folder.exists() else "checkpoint folder not found"
        raise ILRMError(
            f"{prefix}: {problem} (a run keeps its checkpoints in <run>/nerfstudio_models/; give the run that "
            "wrote it, or train until it saves one: --steps-per-save)"
        )
    checkpoints = list_checkpoints(folder)
    if not checkpoints and (folder / "nerfstudio_models").is_dir():  # the run folder instead of its checkpoints'
        raise ILRMError(f"{prefix}: no checkpoint (step-*.ckpt) here; give {folder / 'nerfstudio_models'}")
    if not checkpoints:
        raise ILRMError(
            f"{prefix}: no checkpoint (step-*.ckpt) in this folder; the run saved none yet (train it longer or with "
            "a smaller --steps-per-save), or give the folder that holds them"
        )
    damaged: list[tuple[Path, str]] = []
    for _, path in reversed(checkpoints):
        problem = checkpoint_problem(path)
        if problem is None:
            if damaged:
                newest, why = damaged[0]
                log_line(
                    f"ilrm: warning: {newest} {why}; loading the newest good checkpoint, {path}, instead",
                    style="yellow",
                )
            return path
        damaged.append((path, problem))
    newest, why = damaged[0]
    more = f" (and the {len(damaged) - 1} older ones)" if len(damaged) > 1 else ""
    raise ILRMError(
        f"{prefix}: no readable checkpoint: {newest.name} {why}{more}; restore it from a copy or train the run again"
    )


def write_checkpoint(state: dict, path: Path) -> None:
    """torch.save to `path` atomically: the data goes to `<path>.partial`, reaches the disk
    (fsync), then is renamed to `path`. If the write fails or is interrupted, the partial file is
    removed and `path` (and every other checkpoint) is as it was."""
    path = Path(path)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        torch.save(state, partial)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, path)
    except BaseException as error:  # KeyboardInterrupt too: never leave a partial file behind
        partial.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise ILRMError(
                f"{path}: cannot write this checkpoint ({brief(error)}); the previous checkpoints are "
                "intact: free disk space or choose another --output-dir, then resume with --load-dir"
            ) from None
        raise


class ILRMTrainer(Trainer):
    """nerfstudio's Trainer with atomic checkpoint writes and a loader that skips torn ones.

    Only `save_checkpoint` and `_load_checkpoint` are replaced; setup, the training loop and the
    end of training are nerfstudio's (inherited)."""

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """As nerfstudio's (same content, same name), written atomically; then, with
        save_only_latest_checkpoint, every other checkpoint (and any partial file left by a killed
        process) is deleted, only once the new one is in place."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / checkpoint_name(step)
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),  # type: ignore[union-attr]
            "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        write_checkpoint(state, path)
        for stale in self.checkpoint_dir.glob(f"*.ckpt{PARTIAL_SUFFIX}"):
            stale.unlink(missing_ok=True)
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != path:
                    old.unlink()

    def _load_checkpoint(self) -> None:
        """nerfstudio's resume (--load-dir [--load-step] or --load-checkpoint), with the checkpoint
        checked first: --load-dir takes the newest good one; a named one that cannot be read, or
        one that does not fit this model, is one line."""
        config = self.config
        if config.load_dir is not None:
            folder = Path(config.load_dir)
            if config.load_step is None:
                log_line("Loading latest Nerfstudio checkpoint from load_dir...")
                path = newest_good_checkpoint(folder, "--load-dir")
            else:
                path = folder / checkpoint_name(config.load_step)
                problem = checkpoint_problem(path)
                if problem is not None:
                    raise ILRMError(
                        f"--load-step {config.load_step}: {path} {problem}; leave out --load-step to resume from "
                        "the newest good checkpoint"
                    )
        elif config.load_checkpoint is not None:
            path = Path(config.load_checkpoint)
            problem = checkpoint_problem(path)
            if problem is not None:
                raise ILRMError(f"--load-checkpoint {path} {problem}; give a step-*.ckpt that an ns-train run wrote")
        else:
            CONSOLE.print("No Nerfstudio checkpoint to load, so training from scratch.")
            return
        self._resume_from(path)

    def _resume_from(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu")
        except Exception as error:  # noqa: BLE001 - damaged after the check (bit rot inside a tensor)
            raise ILRMError(f"{path}: cannot read this checkpoint ({brief(error)})") from None
        try:
            self.pipeline.load_pipeline(state["pipeline"], state["step"])
            self.optimizers.load_optimizers(state["optimizers"])
            if "schedulers" in state and self.config.load_scheduler:
                self.optimizers.load_schedulers(state["schedulers"])
            self.grad_scaler.load_state_dict(state["scalers"])
        except ILRMError:
            raise
        except (RuntimeError, KeyError, ValueError) as error:
            raise ILRMError(
                f"{path}: this checkpoint does not fit the model being trained ({brief(error)}); resume with "
                "the method and network options of the run that wrote it"
            ) from None
        self._start_step = state["step"] + 1
        log_line(f"Done loading Nerfstudio checkpoint from {path}")


# Paths a run reads (at any level of its config): stored absolute in config.yml by ns-train, and
# resolved against the folder the run was trained from when an older config.yml stores them relative.
INPUT_PATH_FIELDS = ("data", "eval_index", "train_index", "init_from", "ilrm_run", "load_dir", "load_checkpoint")


@dataclass
class ILRMTrainerConfig(TrainerConfig):
    """nerfstudio's trainer config, without the text prompt that no model of ours reads, and with:

    - `ILRMTrainer` (trainer.py): atomic checkpoint writes; resuming skips a torn checkpoint;
    - checks of the machine and step options before anything runs (one line each);
    - a run that works from any working directory and after its folder is moved: ns-train stores
      absolute paths in config.yml; a loaded run finds its checkpoints (and relative paths of an
      older config.yml) from the folder holding its config.yml (`use_run_folder`).
    """

    _target: type = field(default_factory=lambda: ILRMTrainer)
    prompt: tyro.conf.Suppress[str | None] = None

    # -- checks ----------------------------------------------------------------------------------

    def check(self) -> None:
        """Impossible machine or step options -> ILRMError (before nerfstudio's "Found no NVIDIA
        driver" traceback, or its launcher's CUDA assertion in every spawned process)."""
        machine = self.machine
        device = machine.device_type
        if device == "cuda" and not torch.cuda.is_available():
            raise ILRMError("--machine.device-type cuda: no CUDA GPU; use --machine.device-type cpu")
        if device == "mps" and not torch.backends.mps.is_available():
            raise ILRMError("--machine.device-type mps: no Apple MPS device; use --machine.device-type cpu")
        for name in ("num_devices", "num_machines"):
            if not isinstance(getattr(machine, name), int) or getattr(machine, name) < 1:
                raise ILRMError(f"--machine.{name.replace('_', '-')} {getattr(machine, name)}: must be at least 1")
        if not 0 <= machine.machine_rank < machine.num_machines:
            raise ILRMError(
                f"--machine.machine-rank {machine.machine_rank}: must be in 0..{machine.num_machines - 1} "
                f"(--machine.num-machines {machine.num_machines})"
            )
        if device == "cuda" and machine.num_devices > torch.cuda.device_count():
            raise ILRMError(
                f"--machine.num-devices {machine.num_devices}: this machine has {torch.cuda.device_count()} CUDA "
                "GPU(s); use at most that many"
            )
        steps = {
            "steps-per-save": self.steps_per_save,
            "steps-per-eval-batch": self.steps_per_eval_batch,
            "steps-per-eval-image": self.steps_per_eval_image,
            "steps-per-eval-all-images": self.steps_per_eval_all_images,
            "logging.steps-per-log": self.logging.steps_per_log,
        }
        for name, value in steps.items():
            if value < 0:
                raise ILRMError(f"--{name} {value}: must be 0 (never) or a positive number of steps")
        if isinstance(self.pipeline, ILRMPipelineConfig) and self.max_num_iterations < 1:
            raise ILRMError(f"--max-num-iterations {self.max_num_iterations}: must be at least 1")
        for group, count in self.gradient_accumulation_steps.items():
            if count < 1:
                raise ILRMError(f"--gradient-accumulation-steps {group} {count}: must be at least 1")
        if self.load_dir is not None and not Path(self.load_dir).is_dir():
            raise ILRMError(
                f"--load-dir {self.load_dir}: checkpoint folder not found (give a run's nerfstudio_models/ folder)"
            )
        if self.load_checkpoint is not None and not Path(self.load_checkpoint).is_file():
            raise ILRMError(f"--load-checkpoint {self.load_checkpoint}: checkpoint file not found")

    def setup(self, **kwargs):  # the trainer, as nerfstudio's train_loop builds it in every process
        self.check()
        return super().setup(**kwargs)

    # -- the run folder --------------------------------------------------------------------------

    def _input_paths(self):
        """(object, field name, path) for every input path of this config that is set."""
        pipeline = self.pipeline
        datamanager = pipeline.datamanager
        for owner in (self, datamanager, getattr(datamanager, "dataparser", None), pipeline.model):
            for name in INPUT_PATH_FIELDS:
                value = getattr(owner, name, None) if owner is not None else None
                if isinstance(value, (str, os.PathLike)) and str(value):
                    yield owner, name, Path(value)

    def save_config(self) -> None:
        """ns-train writes config.yml (before it launches training): checked first, with absolute
        paths, so that the run's data is found from any working directory."""
        self.check()
        self.output_dir = Path(os.path.abspath(self.output_dir))
        for owner, name, path in self._input_paths():
            if not path.is_absolute():
                setattr(owner, name, Path(os.path.abspath(path)))
        try:
            super().save_config()
        except OSError as error:
            raise ILRMError(
                f"{self.get_base_dir()}: cannot create the run folder ({error.strerror or error}); choose another "
                "--output-dir"
            ) from None

    def get_base_dir(self) -> Path:
        run_dir = self.__dict__.get("_run_dir")
        return run_dir if run_dir is not None else super().get_base_dir()

    def training_folder(self, run_dir: Path) -> Path | None:
        """The working directory ns-train ran in, when config.yml stores a relative output_dir and
        the run folder is still where that put it (<cwd>/<output_dir>/<experiment>/<method>/<time>)."""
        output_dir = Path(self.output_dir)
        if output_dir.is_absolute():
            return None
        tail = (*output_dir.parts, str(self.experiment_name), str(self.method_name), str(self.timestamp))
        if ".." in tail or run_dir.parts[-len(tail) :] != tail:
            return None
        return Path(*run_dir.parts[: -len(tail)])

    def use_run_folder(self, run_dir: Path) -> None:
        """This config was read from `run_dir`/config.yml: the run folder is `run_dir`, wherever it
        is now and whatever the working directory (its checkpoints, logs and held_scene.json are
        there); input paths an older config.yml stores relative are resolved against the folder it
        was trained from; and the checkpoint to load is the newest good one (a torn newer one is
        skipped with a warning; none is one line naming the folder)."""
        run_dir = Path(os.path.abspath(run_dir))
        if self.__dict__.get("_run_dir") == run_dir:
            return  # already done (eval_setup's load, then ilrm-eval)
        self.__dict__["_run_dir"] = run_dir
        trained_from = self.training_folder(run_dir)
        for owner, name, path in self._input_paths():
            if not path.is_absolute() and trained_from is not None and (trained_from / path).exists():
                setattr(owner, name, trained_from / path)
        checkpoint = newest_good_checkpoint(self.get_checkpoint_dir())
        self.load_step = int(CHECKPOINT_NAME.match(checkpoint.name).group(1))  # type: ignore[union-attr]

    # nerfstudio's tools (ns-eval, ns-export, ns-render, ns-viewer; ilrm-eval too) load a run with
    # `eval_utils.eval_setup(config_path)`: `yaml.load(config_path.read_text())`, then
    # `config.load_dir = config.get_checkpoint_dir()` and the highest step-N in that folder,
    # whatever state that file is in, and the text never says where it came from. PyYAML builds
    # this object with `__setstate__`: when the code that asked PyYAML for it is eval_setup, its
    # `config_path` argument is the config.yml being read, so the run folder is known exactly, and
    # `use_run_folder` fixes the folder (get_base_dir) and the step (load_step: eval_setup then
    # loads that checkpoint, not the highest one) before eval_setup goes on. Any other load (pickle
    # for spawned ranks, deepcopy, `--pipeline.model.ilrm-run`) restores the fields only.

    def __setstate__(self, state: dict) -> None:
        for f in dataclasses.fields(self):  # a field newer than the config.yml: its default
            if f.name not in state and f.default is not dataclasses.MISSING:
                state[f.name] = f.default
            elif f.name not in state and f.default_factory is not dataclasses.MISSING:
                state[f.name] = f.default_factory()
        self.__dict__.update(state)
        config_path = _config_path_of_eval_setup()
        if config_path is not None:
            self.use_run_folder(Path(config_path).parent)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_run_dir", None)  # where it was loaded from is not part of the config
        return state


def _config_path_of_eval_setup() -> Path | None:
    """The `config_path` of nerfstudio's eval_setup when it is the caller (past PyYAML's own
    frames) of the `__setstate__` running now; None for any other caller."""
    try:
        frame = sys._getframe(2)  # the caller of __setstate__
    except ValueError:  # called from the top of the stack: not from eval_setup
        return None
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "yaml":
        frame = frame.f_back
    if frame is None or frame.f_code.co_name != "eval_setup":
        return None
    if frame.f_globals.get("__name__") != "nerfstudio.utils.eval_utils":
        return None
    path = frame.f_locals.get("config_path")
    return Path(path) if isinstance(path, (str, os.PathLike)) else None
