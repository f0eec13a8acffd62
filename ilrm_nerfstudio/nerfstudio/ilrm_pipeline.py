"""The pipeline: hands whole batches (context + target views) to the model.

nerfstudio's VanillaPipeline passes a ray bundle to `model(...)` and never the batch; here the
batch itself is the model's input, and evaluation runs over held-out scenes.

Several processes (nerfstudio's launcher, `ns-train ... --machine.num-devices N`, or `ilrm-train`
on CPUs): the model is wrapped in PyTorch DistributedDataParallel (NCCL on CUDA with the rank's
device, gloo on the CPU without `device_ids`). Every rank draws from its own shard of the training
scenes with its own seed (the data manager). Only rank 0 writes: checkpoints and logs (nerfstudio),
the held-out scene of the checkpoint (`held_scene.py`), renders and metric files (here). The
evaluation over every held-out scene is split across the ranks and gathered (each rank gets the
same summary); with an output folder, rank 0 evaluates and writes everything and the other ranks
receive its summary. Checkpoints are the same whatever the number of processes (no DDP "module."
in the keys), so a run resumes (`--load-dir`) with any number of processes and every single-process
tool (ns-eval, ns-export, ilrm-finetune) reads them.
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

from ilrm_nerfstudio.nerfstudio.ilrm_datamanager import ILRMDataManagerConfig
from ilrm_nerfstudio.nerfstudio.ilrm_model import ILRMModelConfig
from ilrm_nerfstudio.core.errors import ILRMError


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
        except ILRMError as error:  # bad input: a clear message, not a traceback
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
            from ilrm_nerfstudio.nerfstudio.viewer_scene import attach_viewer_views

            attach_viewer_views(self)
        self._object_group = None  # for gathering Python objects (evaluation results)
        if world_size > 1:
            self.wrap_ddp(device)

    def wrap_ddp(self, device: str) -> None:
        """DistributedDataParallel for this rank: the model's own device on CUDA (NCCL), no
        `device_ids` on the CPU (gloo; DDP refuses them for CPU modules). Rank 0's parameters
        are broadcast to every rank here."""
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("world_size > 1 needs an initialized torch.distributed process group (nerfstudio's launch or ilrm-train)")
        torch_device = torch.device(device)
        if torch_device.type == "cuda":
            index = torch_device.index if torch_device.index is not None else torch.cuda.current_device()
            torch.cuda.set_device(index)  # NCCL collectives (barrier, all_gather_object) use the current device
            self._model = typing.cast(Model, DDP(self._model, device_ids=[index], output_device=index, find_unused_parameters=True))
        else:
            self._model = typing.cast(Model, DDP(self._model, find_unused_parameters=True))
        # Evaluation results are Python objects: gather them over gloo, whatever the backend (NCCL
        # would need them on the right GPU). Every rank creates the group, in the same order.
        self._object_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        dist.barrier(group=self._object_group)

    def distributed(self) -> tuple[int, int]:
        """(rank, world size) of this training process; (0, 1) outside distributed training."""
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def state_dict(self, *args, **kwargs):
        """As nn.Module's, without DDP's "module." level: checkpoints do not depend on the number
        of processes (nerfstudio's loader accepts both forms)."""
        state = super().state_dict(*args, **kwargs)
        if not isinstance(self._model, DDP):
            return state
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        ddp_prefix = f"{prefix}_model.module."
        renamed = type(state)((f"{prefix}_model.{key[len(ddp_prefix):]}" if key.startswith(ddp_prefix) else key, value) for key, value in state.items())
        if hasattr(state, "_metadata"):
            renamed._metadata = state._metadata  # type: ignore[attr-defined]
        return renamed

    def check_config(self) -> None:
        data, net = self.config.datamanager, self.config.model.network
        multiple = net.patch_size * net.viewpoint_factor
        if data.image_height % multiple or data.image_width % multiple:
            raise ILRMError(
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
        scenes. With `output_path`, also writes the renders and per-scene metrics there.

        In distributed training every rank calls this (nerfstudio's Trainer does): the batches of
        held-out scenes are dealt out round-robin, evaluated in parallel and gathered, so every
        rank returns the same summary. With `output_path`, rank 0 evaluates and writes everything
        and sends its summary to the others (renders and files are written by rank 0 only)."""
        rank, world = self.distributed()
        if world > 1 and output_path is not None:
            summary = [self._evaluate_and_summarize(None, output_path, get_std) if rank == 0 else None]
            dist.broadcast_object_list(summary, src=0, group=self._object_group)
            return summary[0]
        return self._evaluate_and_summarize((rank, world) if world > 1 else None, output_path, get_std)

    def _evaluate_and_summarize(self, shard: tuple[int, int] | None, output_path: Path | None, get_std: bool) -> dict[str, float]:
        per_scene = self._evaluate_scenes(shard, output_path)
        if shard is not None:  # gather every rank's scenes, back in the order of the batches
            gathered: list = [None] * shard[1]
            dist.all_gather_object(gathered, per_scene, group=self._object_group)
            per_scene = [scene for _, scene in sorted((item for part in gathered for item in part), key=lambda item: item[0])]
        else:
            per_scene = [scene for _, scene in per_scene]
        if not per_scene:
            raise SystemExit("ilrm: no held-out scenes to evaluate")
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

    def _evaluate_scenes(self, shard: tuple[int, int] | None, output_path: Path | None) -> list[tuple[tuple[int, int], dict]]:
        """[((batch index, index in batch), per-scene metrics)] for every batch of held-out scenes,
        or for this rank's share of them (`shard` = (rank, world size))."""
        datamanager = self.datamanager
        all_batches = datamanager.eval_batches
        mine = list(range(len(all_batches))) if shard is None else list(range(shard[0], len(all_batches), shard[1]))
        self.eval()
        per_scene: list[tuple[tuple[int, int], dict]] = []
        try:
            # eval_scene_batches() walks datamanager.eval_batches (with its loader workers): hand it
            # this rank's share for the duration of the loop.
            datamanager.eval_batches = [all_batches[i] for i in mine]
            for i, batch in zip(mine, datamanager.eval_scene_batches()):
                outputs = self.model(batch)
                per_scene += [((i, j), scene) for j, scene in enumerate(self.model.scene_metrics(outputs, batch))]
                if output_path is not None:
                    self.save_renders(outputs, batch, output_path)
        except ILRMError as error:  # bad held-out data: name the scene and the problem, no traceback
            raise SystemExit(f"ilrm: {error}") from None
        finally:
            datamanager.eval_batches = all_batches
            self.train()
        return per_scene

    @staticmethod
    def save_renders(outputs: dict, batch: dict, output_path: Path) -> None:
        output_path.mkdir(parents=True, exist_ok=True)
        for b, scene in enumerate(batch["scene"]):
            for t, index in enumerate(batch["target_indices"][b].tolist()):
                pred = outputs["rgb"][b, t].permute(2, 0, 1).cpu()
                gt = batch["target_images"][b, t].cpu()
                vutils.save_image(torch.cat([gt, pred], dim=2), output_path / f"{scene}_frame{index:05d}.png")
