"""The pipeline: hands whole batches (context + target views) to the model.

nerfstudio's VanillaPipeline passes a ray bundle to `model(...)` and never the batch; here the
batch itself is the model's input, and evaluation runs over held-out scenes.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Type

import torch
import torch.distributed as dist
import torchvision.utils as vutils
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.models.base_model import Model
from nerfstudio.pipelines.base_pipeline import Pipeline, VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch.nn.parallel import DistributedDataParallel as DDP

from .ilrm_datamanager import ILRMDataManagerConfig
from .ilrm_model import ILRMModelConfig
from .scenes import SceneError


@dataclass
class ILRMPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: ILRMPipeline)
    datamanager: ILRMDataManagerConfig = field(default_factory=ILRMDataManagerConfig)
    model: ILRMModelConfig = field(default_factory=ILRMModelConfig)


class ILRMPipeline(VanillaPipeline):
    config: ILRMPipelineConfig

    def __init__(
        self,
        config: ILRMPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler=None,
    ):
        Pipeline.__init__(self)
        self.config, self.test_mode, self.world_size = config, test_mode, world_size
        try:
            self.check_config()
            self.datamanager = config.datamanager.setup(
                device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank
            )
        except SceneError as error:  # bad input: a clear message, not a traceback
            raise SystemExit(f"ilrm: {error}") from None
        self.datamanager.to(device)
        self._model = config.model.setup(
            scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])),
            num_train_data=len(self.datamanager.train_dataset),
            metadata={},
            device=device,
            grad_scaler=grad_scaler,
        )
        self.model.to(device)
        if test_mode == "test":  # ns-viewer: the views of the scene the checkpoint holds (held_scene.py)
            from .held_scene import attach_viewer_views

            attach_viewer_views(self)
        if world_size > 1:
            self._model = typing.cast(Model, DDP(self._model, device_ids=[local_rank], find_unused_parameters=True))
            dist.barrier(device_ids=[local_rank])

    def check_config(self) -> None:
        data, net = self.config.datamanager, self.config.model.network
        multiple = net.patch_size * net.viewpoint_factor
        if data.image_height % multiple or data.image_width % multiple:
            raise SceneError(
                f"image size {data.image_height}x{data.image_width} must be divisible by patch_size x "
                f"viewpoint_factor = {net.patch_size} x {net.viewpoint_factor} = {multiple}"
            )

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
        outputs = self.model(batch)
        metrics, images = self.model.get_image_metrics_and_images(outputs, batch)
        metrics["num_rays"] = batch["target_images"][0].numel() // 3
        self.train()
        return metrics, images

    @torch.no_grad()
    def get_average_eval_image_metrics(self, step=None, output_path: Path | None = None, get_std: bool = False):
        """Metrics over every held-out scene: averaged over the targets of a scene, then over
        scenes. With `output_path`, also writes the renders and per-scene metrics there."""
        self.eval()
        per_scene = []
        try:
            for batch in self.datamanager.eval_scene_batches():
                outputs = self.model(batch)
                per_scene += self.model.scene_metrics(outputs, batch)
                if output_path is not None:
                    self.save_renders(outputs, batch, output_path)
        except SceneError as error:  # bad held-out data: name the scene and the problem, no traceback
            raise SystemExit(f"ilrm: {error}") from None
        self.train()
        names = [k for k in per_scene[0] if k != "scene"]
        summary: dict[str, float] = {"num_scenes": float(len(per_scene))}
        for name in names:
            values = torch.tensor([scene[name] for scene in per_scene])
            summary[name] = float(values.mean())
            if get_std:
                summary[f"{name}_std"] = float(values.std()) if len(values) > 1 else 0.0
        if output_path is not None:
            (output_path / "per_scene_metrics.json").write_text(json.dumps(per_scene, indent=2))
        CONSOLE.print(f"evaluated {len(per_scene)} held-out scenes: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))
        return summary

    @staticmethod
    def save_renders(outputs: dict, batch: dict, output_path: Path) -> None:
        output_path.mkdir(parents=True, exist_ok=True)
        for b, scene in enumerate(batch["scene"]):
            for t, index in enumerate(batch["target_indices"][b].tolist()):
                pred = outputs["rgb"][b, t].permute(2, 0, 1).cpu()
                gt = batch["target_images"][b, t].cpu()
                vutils.save_image(torch.cat([gt, pred], dim=2), output_path / f"{scene}_frame{index:05d}.png")
