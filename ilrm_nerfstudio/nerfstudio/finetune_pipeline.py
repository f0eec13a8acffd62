"""The per-scene stage's pipeline: one trainer iteration = one epoch (see finetune_model.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig

from ilrm_nerfstudio.nerfstudio.finetune_datamanager import ILRMSceneDataManagerConfig
from ilrm_nerfstudio.nerfstudio.finetune_model import ILRMFinetuneModelConfig

# ------------------------------------------------------------------------------------------------
# The pipeline: one trainer iteration = one epoch
# ------------------------------------------------------------------------------------------------


@dataclass
class ILRMFinetunePipelineConfig(VanillaPipelineConfig):
    _target: type = field(default_factory=lambda: ILRMFinetunePipeline)
    datamanager: ILRMSceneDataManagerConfig = field(default_factory=ILRMSceneDataManagerConfig)
    model: ILRMFinetuneModelConfig = field(default_factory=ILRMFinetuneModelConfig)


class ILRMFinetunePipeline(VanillaPipeline):
    """Cameras in, renders out; starts from the predicted (or placed) Gaussians, and runs one
    epoch per trainer iteration: the trainer takes the optimizer step of the epoch's last batch,
    the pipeline those of the batches before it."""

    config: ILRMFinetunePipelineConfig

    def __init__(
        self,
        config: ILRMFinetunePipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler=None,
    ):
        super().__init__(
            config, device, test_mode=test_mode, world_size=world_size, local_rank=local_rank, grad_scaler=grad_scaler
        )
        if test_mode == "val":  # training: the starting Gaussians (a resumed run loads its own after)
            if config.model.lpips_weight > 0:
                self.model.perceptual()  # fail now, not at the first step, when VGG is missing
            self.model.initialize_gaussians(self.datamanager)

    def _batch_loss(self, epoch: int, batch_index: int, cameras: Cameras, batch: dict):
        model = self.model
        published = model.plan.is_paper(epoch)
        model.set_learning_rates(epoch, batch_index)
        outputs = model(cameras)
        metrics = model.get_metrics_dict(outputs, batch)
        losses = model.get_loss_dict(outputs, batch, metrics, published=published)
        return outputs, losses, metrics

    def get_train_loss_dict(self, step: int):
        model, plan = self.model, self.model.plan
        if plan is None:  # outside nerfstudio's trainer (no callbacks ran): published steps only
            return super().get_train_loss_dict(step)
        if plan.is_paper(step):
            batches = self.datamanager.epoch_batches(step, "input", 0)
        else:
            batches = self.datamanager.epoch_batches(step, "all", self.datamanager.config.views_per_step)
            frames = sum(len(batch["image"]) for _, batch in batches)
            affordable = model.frames_this_epoch(step, frames)
            while len(batches) > 1 and sum(len(batch["image"]) for _, batch in batches) > affordable:
                batches.pop()  # the order is shuffled: a random subset
        start = time.perf_counter()
        optimizers = model.optimizers
        for index, (cameras, batch) in enumerate(batches[:-1]):
            _, losses, _ = self._batch_loss(step, index, cameras, batch)
            sum(losses.values()).backward()
            optimizers.optimizer_step_all()
            model.after_optimizer_step(step, index)
            optimizers.zero_grad_all()
        last = len(batches) - 1
        outputs, losses, metrics = self._batch_loss(step, last, *batches[last])
        self._last_batch = (step, last)
        model.measure_epoch(sum(len(batch["image"]) for _, batch in batches), time.perf_counter() - start)
        return outputs, losses, metrics

    def get_training_callbacks(self, training_callback_attributes):
        from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

        callbacks = super().get_training_callbacks(training_callback_attributes)

        def after_last_batch(step: int) -> None:  # the trainer stepped the optimizers of the last batch
            if getattr(self, "_last_batch", None) is not None:
                self.model.after_optimizer_step(*self._last_batch)
                self._last_batch = None

        # First, so that the model's epoch report sees the densified Gaussians.
        return [TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after_last_batch)] + callbacks
