"""The pipeline: hands whole batches (context + target views) to the model, and evaluates over
held-out scenes. With several processes (`--machine.num-devices N`; `ilrm-train` on CPUs) the model
is wrapped in DistributedDataParallel, each rank trains on its own shard of scenes, rank 0 alone
writes, and the evaluation is split across the ranks and gathered (docs/scalability.md).
Checkpoints have no DDP "module." level: every tool reads them, a run resumes with any number of
processes."""

from __future__ import annotations

import json
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.models.base_model import Model
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.misc import step_check
from torch.nn.parallel import DistributedDataParallel as DDP

from ilrm_nerfstudio.core.errors import ILRMError, install_excepthook
from ilrm_nerfstudio.data.episodes import find_episode
from ilrm_nerfstudio.metrics.scenes import save_renders, summarize
from ilrm_nerfstudio.nerfstudio.console import log_line
from ilrm_nerfstudio.nerfstudio.ilrm_datamanager import ILRMDataManagerConfig
from ilrm_nerfstudio.nerfstudio.ilrm_model import ILRMModelConfig
from ilrm_nerfstudio.nerfstudio.viewer_scene import hold_eval_scene


@dataclass
class ILRMPipelineConfig(VanillaPipelineConfig):
    _target: type = field(default_factory=lambda: ILRMPipeline)
    datamanager: ILRMDataManagerConfig = field(default_factory=ILRMDataManagerConfig)
    model: ILRMModelConfig = field(default_factory=ILRMModelConfig)


class ILRMPipeline(VanillaPipeline):
    config: ILRMPipelineConfig

    def __init__(self, config: ILRMPipelineConfig, device: str, test_mode="val", world_size=1, local_rank=0, **kwargs):
        install_excepthook()  # ns-eval / ns-export / ns-render / ns-viewer on one of our runs
        config.model.check()  # first: the image size check divides by the network's sizes
        config.model.network.check_image_size(config.datamanager.image_height, config.datamanager.image_width)
        super().__init__(config, device, test_mode, 1, local_rank, **kwargs)  # our DDP below (world_size 1 here)
        self.world_size = world_size
        which = str(config.model.viewer_scene)
        if test_mode == "val" and which.strip().lower() != "none":  # training: a scene to hold must exist
            try:
                find_episode(self.datamanager.eval_dataset.episodes, which)
            except ILRMError as error:
                raise ILRMError(
                    f"--pipeline.model.viewer-scene {which}: {error}; give the index or name of a held-out scene, "
                    "or none"
                ) from None
        if test_mode == "test":  # ns-viewer: the views of the scene the checkpoint holds
            self.datamanager.show_scene_in_viewer(which)
        self._object_group = None  # for gathering Python objects (evaluation results)
        if world_size > 1:
            self.wrap_ddp(device)

    def wrap_ddp(self, device: str) -> None:
        """DDP for this rank: NCCL with the model's GPU, or gloo without `device_ids` on the CPU."""
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("world_size > 1 needs an initialized torch.distributed process group")
        # Every trainable parameter gets a gradient at every step (nerfstudio's device marker and the
        # held scene's Gaussians are not trainable): no find_unused_parameters and its extra traversal.
        self._model.device_indicator_param.requires_grad_(False)
        torch_device = torch.device(device)
        if torch_device.type == "cuda":
            index = torch_device.index if torch_device.index is not None else torch.cuda.current_device()
            torch.cuda.set_device(index)  # NCCL collectives use the current device
            self._model = typing.cast(Model, DDP(self._model, device_ids=[index], output_device=index))
        else:
            self._model = typing.cast(Model, DDP(self._model))
        # Evaluation results are Python objects: gathered over gloo whatever the backend.
        self._object_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        dist.barrier(group=self._object_group)

    def get_training_callbacks(self, training_callback_attributes):
        """nerfstudio's, and: after each iteration that ends in a checkpoint (every steps_per_save
        and the last), the held-out scene chosen by --pipeline.model.viewer-scene is reconstructed
        into the model, so that the checkpoint holds it (viewer_scene.py)."""
        callbacks = super().get_training_callbacks(training_callback_attributes)
        trainer, which = training_callback_attributes.trainer, str(self.model.config.viewer_scene)
        if trainer is None or which.strip().lower() == "none":
            return callbacks

        def hold_scene(step: int) -> None:
            last = getattr(trainer, "_start_step", 0) + trainer.config.max_num_iterations - 1
            if step == last or step_check(step, trainer.config.steps_per_save):
                hold_eval_scene(self.model, self.datamanager, which, Path(trainer.base_dir))

        return [*callbacks, TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], hold_scene)]

    def state_dict(self, *args, **kwargs):
        """nn.Module's, without DDP's "module." level (nerfstudio's loader accepts both)."""
        state = super().state_dict(*args, **kwargs)
        renamed = type(state)((key.replace("_model.module.", "_model.", 1), value) for key, value in state.items())
        renamed._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]
        return renamed

    def get_train_loss_dict(self, step: int):
        batch = self.datamanager.next_train(step)
        outputs = self._model(batch)  # through DDP when distributed
        metrics = self.model.get_metrics_dict(outputs, batch)
        return outputs, self.model.get_loss_dict(outputs, batch, metrics), metrics

    @torch.no_grad()
    def get_eval_loss_dict(self, step: int):
        self.eval()
        batch = self.datamanager.next_eval(step)
        outputs = self.model(batch)
        metrics = self.model.get_metrics_dict(outputs, batch)
        losses = self.model.get_loss_dict(outputs, batch, metrics)
        self.train()
        return outputs, losses, metrics

    @torch.no_grad()
    def get_eval_image_metrics_and_images(self, step: int):
        self.eval()
        batch = self.datamanager.next_eval_image(step)
        metrics, images = self.model.get_image_metrics_and_images(self.model(batch), batch)
        metrics["num_rays"] = batch["target_images"][0].numel() // 3
        self.train()
        return metrics, images

    @torch.no_grad()
    def get_average_eval_image_metrics(self, step=None, output_path: Path | None = None, get_std: bool = False):
        """Metrics over every held-out scene (averaged over a scene's targets, then over scenes);
        with `output_path`, renders and per-scene metrics are written there. Distributed: the
        batches are dealt out round-robin and gathered (every rank returns the same summary); with
        `output_path`, rank 0 evaluates and writes everything and sends its summary."""
        world = dist.get_world_size() if self.world_size > 1 and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        if world > 1 and output_path is not None:
            summary = [self._summary(self.evaluate_scenes(output_path), output_path, get_std) if rank == 0 else None]
            dist.broadcast_object_list(summary, src=0, group=self._object_group)
            return summary[0]
        per_scene = self.evaluate_scenes(output_path, (rank, world) if world > 1 else None)
        if world > 1:  # every rank's scenes, back in the order of the batches
            gathered: list = [None] * world
            dist.all_gather_object(gathered, per_scene, group=self._object_group)
            per_scene = sorted((item for part in gathered for item in part), key=lambda item: item[0])
        return self._summary(per_scene, output_path, get_std)

    @staticmethod
    def _summary(per_scene: list, output_path: Path | None, get_std: bool) -> dict[str, float]:
        rows = [row for _, row in per_scene]
        summary = summarize(rows, get_std)
        if output_path is not None:
            (output_path / "per_scene_metrics.json").write_text(json.dumps(rows, indent=2))
        log_line(f"evaluated {len(rows)} held-out scenes: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))
        return summary

    @torch.no_grad()
    def evaluate_scenes(
        self,
        render_dir: Path | None = None,
        shard: tuple[int, int] | None = None,
        num_workers: int | None = None,
        progress: bool = False,
    ) -> list[tuple[tuple[int, int], dict]]:
        """[((batch index, index in batch), row)] for every batch of held-out scenes, or for this
        rank's share (`shard` = (rank, world size)). A row: the scene's metrics
        (`ILRMModel.scene_metrics`) and its context and target frames; with `render_dir`, renders
        and ground truth are written there. ns-eval and ilrm-eval both use it."""
        self.datamanager.check_eval_scenes()
        all_batches = self.datamanager.eval_batches
        mine = range(len(all_batches)) if shard is None else range(shard[0], len(all_batches), shard[1])
        total, start = sum(len(all_batches[i]) for i in mine), time.perf_counter()
        self.eval()
        per_scene: list[tuple[tuple[int, int], dict]] = []
        try:
            for i, batch in zip(mine, self.datamanager.eval_scene_batches(num_workers, [all_batches[i] for i in mine])):
                outputs = self.model(batch)
                for j, row in enumerate(self.model.scene_metrics(outputs, batch)):
                    row["context"] = batch["context_indices"][j].tolist()
                    row["target"] = batch["target_indices"][j].tolist()
                    per_scene.append(((i, j), row))
                if render_dir is not None:
                    save_renders(outputs, batch, render_dir)
                if progress and (len(per_scene) == total or len(per_scene) % 50 < len(batch["scene"])):
                    print(f"  {len(per_scene)}/{total} scenes ({time.perf_counter() - start:.0f} s)", flush=True)
        finally:
            self.train()
        return per_scene
