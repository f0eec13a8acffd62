"""The per-scene stage's pipeline and trainer: nerfstudio's, with the hooks the stage needs.

- `ILRMFinetunePipeline.__init__` (training): the starting Gaussians (network, points, random).
- `get_train_loss_dict`: a published step renders every input view; any other is nerfstudio's.
- `ILRMFinetuneTrainer.setup_optimizers`: with `--max-num-iterations -1` (the default), the step
  count that fits `--pipeline.model.refine-minutes`, from timed probe steps, is decided here,
  before the optimizers' schedules and the training loop are made.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision.utils as vutils
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig

from ilrm_nerfstudio.core.errors import ILRMError, install_excepthook
from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.core.prediction import network_input_size, predict_gaussians, view_groups, with_sh_degree
from ilrm_nerfstudio.data.points import points_to_gaussians, triangulate_points
from ilrm_nerfstudio.metrics import psnr
from ilrm_nerfstudio.nerfstudio.console import log_line
from ilrm_nerfstudio.nerfstudio.finetune_datamanager import ILRMSceneDataManagerConfig
from ilrm_nerfstudio.nerfstudio.finetune_model import ILRMFinetuneModelConfig, check_options
from ilrm_nerfstudio.nerfstudio.run_network import load_network
from ilrm_nerfstudio.nerfstudio.trainer import ILRMTrainer, ILRMTrainerConfig

log = functools.partial(log_line, prefix="[ilrm-finetune] ")


@dataclass
class ILRMFinetunePipelineConfig(VanillaPipelineConfig):
    _target: type = field(default_factory=lambda: ILRMFinetunePipeline)
    datamanager: ILRMSceneDataManagerConfig = field(default_factory=ILRMSceneDataManagerConfig)
    model: ILRMFinetuneModelConfig = field(default_factory=ILRMFinetuneModelConfig)


class ILRMFinetunePipeline(VanillaPipeline):
    config: ILRMFinetunePipelineConfig

    def __init__(self, config: ILRMFinetunePipelineConfig, device: str, test_mode="val", **kwargs):
        install_excepthook()  # one line for bad input, while this method runs
        check_options(config.model, torch.device(device))
        super().__init__(config, device, test_mode=test_mode, **kwargs)
        if test_mode == "val":  # training: the start (a resumed run then loads its own Gaussians)
            self.start()

    # -- the start -------------------------------------------------------------------------------

    def start(self) -> None:
        cfg, dm = self.model.config, self.datamanager
        kind = ("network" if cfg.ilrm_run is not None else "points") if cfg.init == "auto" else cfg.init
        started = time.perf_counter()
        if cfg.random_init:
            kind = "random"
            xyz = torch.rand(cfg.num_random, 3, generator=torch.Generator().manual_seed(cfg.seed)) - 0.5
            g = points_to_gaussians(xyz * cfg.random_scale, torch.rand(cfg.num_random, 3), cfg.sh_degree)
        elif kind == "network":
            g = self.network_start()
            self.model.published = cfg.published_steps
        else:
            points = dm.point_cloud()
            if points is None or len(points[0]) == 0:
                images = [data["image"][..., :3].cpu().numpy() for data in dm.cached_train]
                K = dm.train_dataset.cameras.get_intrinsics_matrices()
                points = triangulate_points(images, dm.training_c2w(), K, seed=cfg.seed)
                kind = f"points triangulated from {len(images)} training frames"
            if len(points[0]) < 100:
                raise ILRMError(
                    f"{dm.data}: found only {len(points[0])} 3D points to start from; use "
                    "--pipeline.model.random-init True"
                )
            g = points_to_gaussians(points[0], points[1], cfg.sh_degree)
        log(f"start: {len(g):,} Gaussians ({kind}, {time.perf_counter() - started:.1f} s)")
        self.model.set_scene_gaussians(g.map(lambda t: t.to(self.device)), trainable=True)
        self.model.fit_to_run(self.model.published + 1)  # until the trainer says how long the run is
        self.report("start")

    def network_start(self) -> Gaussians:
        cfg, dm = self.model.config, self.datamanager
        if cfg.ilrm_run is None:
            raise ILRMError(
                "--pipeline.model.ilrm-run is needed for init network (an ns-train ilrm run, or a "
                "published iLRM checkpoint), or use --pipeline.model.init points"
            )
        trained = load_network(cfg.ilrm_run, self.device)
        trained.bf16 = cfg.bf16
        if trained.published:  # the authors' protocol: their input size and number of views
            height, width = cfg.network_resolution or trained.resolution
            dm.ask_for_input_views(trained.context_views)
        else:
            frame_hw = tuple(dm.cached_train[0]["image"].shape[:2])
            multiple = trained.network.config.size_multiple
            height, width = cfg.network_resolution or network_input_size(frame_hw, trained.resolution, multiple)
        trained.network.config.check_image_size(height, width, "network_resolution")
        anchors = dm.input_indices
        group = cfg.network_group_size or (trained.context_views if trained.published else len(anchors))
        log(f"network start: {len(anchors)} input views at {width}x{height}, {group} per pass, {trained.checkpoint}")
        if group >= len(anchors):
            g = predict_gaussians(trained, *dm.network_views(height, width))
        else:  # groups of nearby views, each anchor keeps its own Gaussians
            parts = []
            for members in view_groups(dm.training_c2w(), anchors, group):
                predicted = predict_gaussians(trained, *dm.network_views(height, width, members))
                parts.append(predicted.map(lambda t, n=len(predicted) // len(members): t[:n]))
            g = Gaussians.cat(parts)
        return with_sh_degree(g, cfg.sh_degree)

    # -- training --------------------------------------------------------------------------------

    def get_train_loss_dict(self, step: int):
        if not self.model.is_published_step(step):
            return super().get_train_loss_dict(step)
        views = self.datamanager.input_views()  # the published step: every input view, mean MSE
        losses, metrics = {"mse_loss": 0.0}, {"psnr": 0.0}
        for camera, data in views:
            outputs = self._model(camera)
            losses["mse_loss"] = losses["mse_loss"] + self.model.get_loss_dict(outputs, data)["mse_loss"] / len(views)
            metrics["psnr"] += self.model.get_metrics_dict(outputs, data)["psnr"] / len(views)
        return outputs, losses, metrics

    def get_training_callbacks(self, attributes):
        callbacks = super().get_training_callbacks(attributes)
        trainer = attributes.trainer
        steps = trainer.config.max_num_iterations if trainer is not None else 0
        self.model.fit_to_run(steps)
        run_dir = Path(trainer.base_dir) if trainer is not None else None
        picture = run_dir / "held_out.png" if run_dir is not None else None
        if steps == 0 and run_dir is not None:
            self.report("feed-forward result", picture)
        budget = getattr(trainer, "budget_seconds", None)
        started = time.perf_counter()

        def report(step: int) -> None:
            if step + 1 == self.model.published and step + 1 < steps:
                self.report(f"after {step + 1} published steps")
            if step + 1 == steps:
                self.report(f"after {steps} steps", picture)
            elif budget is not None and time.perf_counter() - started > budget:
                # The planned steps overran the time budget: stop as nerfstudio's trainer stops.
                log(f"time budget of {budget / 60:g} min reached after {step + 1:,} of {steps:,} steps: stopping")
                self.report(f"after {step + 1} steps", picture)
                trainer.shutdown()

        return callbacks + [TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], report)]

    def report(self, label: str, picture: Path | None = None) -> None:
        """Held-out PSNR to the log; `picture`: ground truth | render of up to 4 held-out views."""
        if not self.model.config.report_held_out or len(self.datamanager.eval_dataset) == 0:
            return
        pairs = self.model.held_out_renders(self.datamanager)
        value = sum(float(psnr(r.permute(2, 0, 1)[None], g.permute(2, 0, 1)[None])) for r, g in pairs) / len(pairs)
        log(f"held-out PSNR ({label}, {len(pairs)} views): {value:.2f} dB, {self.model.num_points:,} Gaussians")
        if picture is not None:
            chosen = [pairs[round(i * (len(pairs) - 1) / 3)] for i in range(min(4, len(pairs)))]
            size = chosen[0][0].shape[:2]
            tiles = [resized(image, size) for render, truth in chosen for image in (truth, render)]
            picture.parent.mkdir(parents=True, exist_ok=True)
            vutils.save_image(torch.stack(tiles), picture, nrow=2, padding=2, pad_value=1.0)
            log(f"wrote {picture} (held-out frames: ground truth | render)")

    @torch.no_grad()
    def seconds_per_step(self) -> tuple[float, float]:
        """Timed probe steps: (seconds of a published step, mean seconds of a later step over the
        resolution schedule, each level timed on 4 training frames after an untimed one)."""
        model, cfg = self.model, self.model.config
        share = min(cfg.resolution_schedule / 30_000, 1.0 / max(1, cfg.num_downscales + 1))
        mean = 0.0
        model.train()
        for level in range(cfg.num_downscales + 1):
            model.probe_downscale = 2 ** (cfg.num_downscales - level)
            seconds = []
            for i in range(5):
                camera, data = self.datamanager.next_train(i)
                started = time.perf_counter()
                with torch.enable_grad():
                    outputs = model.get_outputs(camera)
                    loss = sum(model.get_loss_dict(outputs, data).values())
                    loss.backward()
                seconds.append(time.perf_counter() - started)
            weight = share if level < cfg.num_downscales else 1 - cfg.num_downscales * share
            mean += weight * sum(seconds[1:]) / len(seconds[1:])
        model.probe_downscale = 0
        model.zero_grad(set_to_none=True)
        published = 0.0
        if model.published:
            started = time.perf_counter()
            with torch.enable_grad():
                sum(self.get_train_loss_dict(0)[1].values()).backward()
            published = time.perf_counter() - started
            model.zero_grad(set_to_none=True)
        return published, mean


def resized(image: torch.Tensor, size) -> torch.Tensor:
    image = image.permute(2, 0, 1)[None].float().cpu()
    return torch.nn.functional.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False)[0].clamp(0, 1)


@dataclass
class ILRMFinetuneTrainerConfig(ILRMTrainerConfig):
    _target: type = field(default_factory=lambda: ILRMFinetuneTrainer)


class ILRMFinetuneTrainer(ILRMTrainer):
    # Densification makes later steps slower than the probe's, the more the longer the run (snowmiku
    # at 512 px: 1,268 steps took 1.0x the probe's time per step); steps that still overrun the
    # budget are cut.
    GROWTH = 1.2
    budget_seconds: float | None = None

    def setup_optimizers(self):
        config, pipeline = self.config, self.pipeline
        if config.max_num_iterations < -1:
            raise ILRMError(
                f"--max-num-iterations must be >= 0 (steps) or -1 (the time budget), got {config.max_num_iterations}"
            )
        if config.max_num_iterations == -1:
            minutes = pipeline.model.config.refine_minutes
            published, per_step = pipeline.seconds_per_step()
            count = pipeline.model.published
            steps = count + max(1, int((minutes * 60 - count * published) / (per_step * self.GROWTH)))
            log(f"time budget: {steps:,} steps in about {minutes:g} min ({per_step:.3f} s per step probed)")
            config.max_num_iterations = steps
            self.budget_seconds = minutes * 60
        for group in config.optimizers.values():
            if group["scheduler"] is not None:
                group["scheduler"].max_steps = config.max_num_iterations
                group["scheduler"].published_steps = pipeline.model.published
        return super().setup_optimizers()
