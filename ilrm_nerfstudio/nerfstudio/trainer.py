"""nerfstudio's Trainer with checkpoints that survive interruptions (core/checkpoints.py: written
to `<name>.partial` and renamed into place; resuming with `--load-dir` and our loader,
`use_run_folder`, take the newest one that reads back), and its config with checks."""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from ilrm_nerfstudio.core.checkpoints import (
    CHECKPOINT_NAME,
    PARTIAL_SUFFIX,
    checkpoint_name,
    checkpoint_problem,
    newest_good_checkpoint,
    write_checkpoint,
)
from ilrm_nerfstudio.core.errors import ILRMError, brief, install_excepthook
from ilrm_nerfstudio.nerfstudio.console import log_line
from ilrm_nerfstudio.nerfstudio.ilrm_pipeline import ILRMPipelineConfig

warn = functools.partial(log_line, style="yellow")  # a torn checkpoint skipped


class ILRMTrainer(Trainer):
    """nerfstudio's Trainer; only saving (atomic) and resuming (the newest good checkpoint) differ."""

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint, written atomically; older ones (save_only_latest_checkpoint) and
        partial files of a killed process are deleted once it is in place."""
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
        """nerfstudio's resume, the checkpoint checked first: --load-dir takes the newest good one; a
        named one that cannot be read, or that does not fit this model, is one line."""
        config = self.config
        if config.load_dir is not None and config.load_step is None:
            log_line("Loading latest Nerfstudio checkpoint from load_dir...")
            path = newest_good_checkpoint(Path(config.load_dir), "--load-dir", log=warn)
        elif config.load_dir is not None:
            path = Path(config.load_dir) / checkpoint_name(config.load_step)
            if (problem := checkpoint_problem(path)) is not None:
                raise ILRMError(
                    f"--load-step {config.load_step}: {path} {problem}; leave out --load-step to resume from "
                    "the newest good checkpoint"
                )
        elif config.load_checkpoint is not None:
            path = Path(config.load_checkpoint)
            if (problem := checkpoint_problem(path)) is not None:
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
        except (RuntimeError, KeyError, ValueError) as error:
            if isinstance(error, ILRMError):
                raise
            raise ILRMError(
                f"{path}: this checkpoint does not fit the model being trained ({brief(error)}); resume with "
                "the method and network options of the run that wrote it"
            ) from None
        self._start_step = state["step"] + 1
        log_line(f"Done loading Nerfstudio checkpoint from {path}")


# Paths a run reads (at any level of its config), stored absolute in config.yml.
INPUT_PATH_FIELDS = ("data", "eval_index", "train_index", "init_from", "ilrm_run", "load_dir", "load_checkpoint")


@dataclass
class ILRMTrainerConfig(TrainerConfig):
    """nerfstudio's trainer config with `ILRMTrainer`, checks of the machine and step options, one
    line for bad input (our methods' setup installs `install_excepthook`), absolute paths in
    config.yml, and `use_run_folder` for our tools that load a run."""

    _target: type = field(default_factory=lambda: ILRMTrainer)
    prompt: tyro.conf.Suppress[str | None] = None  # no model of ours reads a text prompt

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
        install_excepthook()
        self.check()
        return super().setup(**kwargs)

    def save_config(self) -> None:
        """ns-train writes config.yml before it launches training: checked first, paths absolute."""
        install_excepthook()  # ns-train's main process, running one of our methods
        self.check()
        self.output_dir = Path(os.path.abspath(self.output_dir))
        pipeline = self.pipeline
        for owner in (self, pipeline.datamanager, getattr(pipeline.datamanager, "dataparser", None), pipeline.model):
            for name in INPUT_PATH_FIELDS:
                value = getattr(owner, name, None)
                if isinstance(value, (str, os.PathLike)) and str(value):
                    setattr(owner, name, Path(os.path.abspath(value)))
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

    def use_run_folder(self, run_dir: Path) -> None:
        """This config was read from `run_dir`/config.yml: the run folder is `run_dir` wherever it is
        now (its checkpoints, logs, held_scene.json), and the checkpoint to load is its newest good
        one. Our tools call it (eval_setup's update_config_callback); nerfstudio's do not."""
        self.__dict__["_run_dir"] = Path(os.path.abspath(run_dir))
        checkpoint = newest_good_checkpoint(self.get_checkpoint_dir(), log=warn)
        self.load_step = int(CHECKPOINT_NAME.match(checkpoint.name).group(1))  # type: ignore[union-attr]

    def __setstate__(self, state: dict) -> None:  # a config.yml older than a field: its default
        for f in dataclasses.fields(self):
            if f.name not in state and f.default is not dataclasses.MISSING:
                state[f.name] = f.default
            elif f.name not in state and f.default_factory is not dataclasses.MISSING:
                state[f.name] = f.default_factory()
        self.__dict__.update(state)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_run_dir"}  # not part of the config
