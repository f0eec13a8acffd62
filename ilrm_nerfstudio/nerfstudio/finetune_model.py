"""The per-scene stage (`ns-train ilrm-finetune`): one scene's Gaussians, optimized directly.

ONE TRAINING ITERATION = ONE EPOCH, so `--max-num-iterations E` counts epochs:

1. Start. `init="auto"`: the network of an `ilrm` run (`--pipeline.model.ilrm-run`) predicts
   the Gaussians from the input views in one pass (mapped back into the dataparser's frame); with
   no network, the scene's SfM points (a `ply_file_path` in transforms.json) or, without those,
   points triangulated from the training frames start one Gaussian each; `init="random"` draws
   random Gaussians (the from-scratch baseline).
2. Published epochs (network start only, the first `paper_epochs`, default 10 = the paper's
   "Ours_10"): each renders every input view and takes ONE Adam step on their mean MSE, Adam
   (eps 1e-15), lr 6e-4 for means and 1e-3 for the rest, constant, no densification.
   `--max-num-iterations 10` therefore is exactly Ours_10 (and 0 keeps the feed-forward result).
3. Refinement epochs (all later ones, and every epoch of a point or random start): 3D Gaussian
   splatting's recipe on every training frame, `views_per_step` frames per Adam step: loss
   0.8 L1 + 0.2 (1 - SSIM), 3DGS learning rates (means decaying exponentially to 1/100),
   densification and pruning by gsplat's `DefaultStrategy`.
   With `--max-num-iterations` left at -1 (auto), the refinement gets a time budget
   (`refine_minutes`, default 8): the number of epochs comes from a timed probe render, at most
   `refine_views` frames in all, and an epoch that would overrun the budget renders a random
   subset of the frames. An explicit `--max-num-iterations E` runs exactly E full epochs.

The checkpoint holds only the Gaussians (Splatfacto's layout), so ns-viewer, ns-render, ns-export
and ns-eval work from it without the network. Held-out PSNR is printed at the start, after the
published epochs and at the end, and `held_out.png` (ground truth | render of held-out frames) is
written to the run folder.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from ilrm_nerfstudio.core.cameras import opengl_to_opencv, to_homogeneous
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.data.points import points_to_gaussians, random_gaussians, triangulate_points
from ilrm_nerfstudio.metrics import image_metrics, load_perceptual, psnr, training_ssim
from ilrm_nerfstudio.nerfstudio.console import log_line
from ilrm_nerfstudio.nerfstudio.run_network import (
    load_network,
    network_input_size,
    predict_gaussians,
    view_groups,
    with_sh_degree,
)
from ilrm_nerfstudio.nerfstudio.scene_model import GAUSSIAN_FIELDS, GaussianSceneModel, GaussianSceneModelConfig

# The published finetune ("Ours_10").
MEANS_LR = 6e-4
OTHER_LR = 1e-3
# 3D Gaussian splatting's learning rates (means: times the scene extent, decaying to 1/100).
REFINE_LR = {
    "means": 1.6e-4,
    "scales": 5e-3,
    "quats": 1e-3,
    "features_dc": 2.5e-3,
    "features_rest": 2.5e-3 / 20,
    "opacities": 5e-2,
}
REFINE_MEANS_FINAL = 0.01


log = functools.partial(log_line, prefix="[ilrm-finetune] ")


@torch.no_grad()
def held_out_baselines(datamanager) -> dict[str, float]:
    """Mean held-out PSNR of copying the nearest training frame (camera center) and of the mean
    training color: the floor a reconstruction must clear."""
    eval_cameras, eval_items = datamanager.eval_views
    train_cameras, train_items = datamanager.train_views
    if not eval_items or len({tuple(item["image"].shape) for item in eval_items + train_items}) > 1:
        return {}
    train_centers = train_cameras.camera_to_worlds[:, :3, 3].cpu()
    mean_color = torch.stack([item["image"].float().mean((0, 1)) for item in train_items]).mean(0) / 255.0
    nearest, flat = [], []
    for camera, item in zip(eval_cameras.camera_to_worlds.cpu(), eval_items):
        truth = item["image"].float().permute(2, 0, 1)[None] / 255.0
        copy = (
            train_items[int((train_centers - camera[:3, 3]).norm(dim=-1).argmin())]["image"]
            .float()
            .permute(2, 0, 1)[None]
            / 255.0
        )
        nearest.append(float(psnr(copy, truth)))
        flat.append(float(psnr(mean_color[None, :, None, None].expand_as(truth), truth)))
    return {"nearest training frame": sum(nearest) / len(nearest), "mean color": sum(flat) / len(flat)}


# ------------------------------------------------------------------------------------------------
# The plan of a run: which epochs are published ones, how many Adam steps the refinement takes
# ------------------------------------------------------------------------------------------------


@dataclass
class EpochPlan:
    epochs: int  # all epochs of the run
    paper_epochs: int  # the first ones follow the published recipe
    steps_per_epoch: int  # Adam steps of one refinement epoch

    def is_paper(self, epoch: int) -> bool:
        return epoch < self.paper_epochs

    @property
    def refine_steps(self) -> int:
        return max(0, self.epochs - self.paper_epochs) * self.steps_per_epoch

    def refine_step(self, epoch: int, batch: int) -> int:
        """Index of an Adam step among the refinement steps (resume-safe: from the epoch)."""
        return (epoch - self.paper_epochs) * self.steps_per_epoch + batch


# ------------------------------------------------------------------------------------------------
# The model: Gaussians as parameters
# ------------------------------------------------------------------------------------------------


@dataclass
class ILRMFinetuneModelConfig(GaussianSceneModelConfig):
    _target: type = field(default_factory=lambda: ILRMFinetuneModel)
    ilrm_run: Path | None = None
    """The trained network: an `ns-train ilrm` / `ilrm-small` run folder, its config.yml or a
    checkpoint (.ckpt), or a published iLRM checkpoint (`re10k_2view.ckpt`,
    `ilrm_undistort_dl3dv*.pt`; then that model's input size, views and pose normalization). Only
    read at the start; the result does not depend on it afterwards."""
    init: Literal["auto", "network", "points", "random"] = "auto"
    """Starting Gaussians: "network" (the prediction of --pipeline.model.ilrm-run), "points" (the
    scene's SfM points, else points triangulated from the training frames), "random" (the
    from-scratch baseline); "auto": network when ilrm-run is given, else points."""
    network_resolution: tuple[int, int] | None = None
    """(height, width) of the network's input; default: the frame's aspect ratio at the longest
    side of the run's training resolution, rounded to patch_size x viewpoint_factor."""
    bf16: bool = True
    """bf16 autocast for the network on CUDA."""
    network_group_size: int = 0
    """Views per forward pass; fewer than the input views: each input view is predicted with its
    nearest frames and keeps its own Gaussians. 0: one pass for an ilrm run, the published
    model's view count for a published file (RE10K: pairs)."""
    paper_epochs: int = 10
    """Network start: the first epochs follow the published finetune (Ours_10)."""
    refine_minutes: float = 8.0
    """Auto budget (--max-num-iterations -1): minutes for the refinement epochs."""
    refine_views: int = 30_000
    """Auto budget: at most this many frames rendered in the refinement (3DGS's 30k steps)."""
    ssim_weight: float = 0.2
    """Refinement loss = (1 - ssim_weight) L1 + ssim_weight (1 - SSIM) + lpips_weight LPIPS."""
    lpips_weight: float = 0.0
    """LPIPS-VGG term of the refinement loss (needs the VGG16 weights; see README)."""
    densify: bool = True
    """Refinement: gsplat's DefaultStrategy (clone / split where screen-space gradients are large,
    prune transparent and huge Gaussians) from densify_start to densify_stop of the steps."""
    densify_grad: float = 0.0002
    """Screen-space gradient above which a Gaussian is cloned or split (gsplat's grow_grad2d)."""
    densify_every: int = 100
    """Adam steps between two densifications."""
    densify_start: float = 0.05
    densify_stop: float = 0.6
    """Fractions of the refinement steps where densification starts and stops."""
    max_gaussians: int = 400_000
    """No more growth once this many Gaussians exist (bounds time per step on a CPU)."""
    random_init_count: int = 50_000
    """init=random: number of Gaussians."""
    random_init_extent: float = 4.0
    """init=random: side of the cube the means are drawn in, in units of the camera spread."""
    seed: int = 0
    report_held_out: bool = True
    """Print the held-out PSNR at the start, after the published epochs and at the end, and write
    held_out.png into the run folder."""


def check_options(cfg: ILRMFinetuneModelConfig) -> None:
    """Impossible option values are errors at setup, never replaced (NaN fails every rule)."""

    def need(ok: bool, name: str, rule: str, value: object) -> None:
        if not ok:
            raise ILRMError(f"--pipeline.model.{name} must be {rule}, got {value!r}")

    need(0 <= cfg.sh_degree <= 3, "sh-degree", "in 0..3", cfg.sh_degree)
    need(cfg.paper_epochs >= 0, "paper-epochs", ">= 0", cfg.paper_epochs)
    need(0 < cfg.refine_minutes < math.inf, "refine-minutes", "> 0 (the auto budget's minutes)", cfg.refine_minutes)
    need(cfg.refine_views >= 1, "refine-views", ">= 1 (frames rendered under the auto budget)", cfg.refine_views)
    need(0 <= cfg.ssim_weight <= 1, "ssim-weight", "in [0, 1]", cfg.ssim_weight)
    need(0 <= cfg.lpips_weight < math.inf, "lpips-weight", ">= 0", cfg.lpips_weight)
    need(0 < cfg.densify_grad < math.inf, "densify-grad", "> 0", cfg.densify_grad)
    need(cfg.densify_every >= 1, "densify-every", ">= 1 (Adam steps)", cfg.densify_every)
    need(0 <= cfg.densify_start <= 1, "densify-start", "a fraction in [0, 1]", cfg.densify_start)
    need(0 <= cfg.densify_stop <= 1, "densify-stop", "a fraction in [0, 1]", cfg.densify_stop)
    need(
        cfg.densify_start <= cfg.densify_stop,
        "densify-start",
        f"<= --pipeline.model.densify-stop ({cfg.densify_stop})",
        cfg.densify_start,
    )
    need(cfg.max_gaussians >= 1, "max-gaussians", ">= 1", cfg.max_gaussians)
    need(cfg.random_init_count >= 1, "random-init-count", ">= 1", cfg.random_init_count)
    need(0 < cfg.random_init_extent < math.inf, "random-init-extent", "> 0", cfg.random_init_extent)
    need(cfg.network_group_size >= 0, "network-group-size", ">= 0 (0: automatic)", cfg.network_group_size)
    if cfg.network_resolution is not None:
        need(
            len(cfg.network_resolution) == 2 and min(cfg.network_resolution) >= 1,
            "network-resolution",
            "two sizes >= 1 (height width)",
            cfg.network_resolution,
        )


class ILRMFinetuneModel(GaussianSceneModel):
    config: ILRMFinetuneModelConfig

    def populate_modules(self):
        check_options(self.config)
        super().populate_modules()
        self.started_from = "network"
        self.plan: EpochPlan | None = None
        self.optimizers = None  # nerfstudio's Optimizers, set when training starts
        self.strategy = None
        self.strategy_state = None
        self.scene_extent = 1.0
        self.last_info: dict | None = None  # the last training render's gsplat-style meta
        self.last_metrics: dict[str, float] = {}
        self.epoch_sums: dict[str, float] = {}
        self.time_budget: float | None = None  # seconds for the refinement (auto budget only)
        self.seconds_per_view = 0.0
        self.refine_started: float | None = None
        self.history: list[dict] = []  # per epoch: seconds, loss, Gaussians, held-out PSNR (when measured)

    # -- the start --------------------------------------------------------------------------------

    def start_kind(self) -> str:
        init = self.config.init
        return ("network" if self.config.ilrm_run is not None else "points") if init == "auto" else init

    def initialize_gaussians(self, datamanager) -> None:
        """Predict, place or draw the scene's starting Gaussians; they become trainable parameters."""
        cfg = self.config
        kind = self.started_from = self.start_kind()
        cameras, _ = datamanager.train_views
        c2w = opengl_to_opencv(to_homogeneous(cameras.camera_to_worlds.double().cpu()))
        centers = c2w[:, :3, 3]
        self.scene_extent = 1.1 * float((centers - centers.mean(0)).norm(dim=-1).max().clamp_min(1e-3))
        start = time.perf_counter()
        if kind == "network":
            gaussians = self._network_start(datamanager)
        elif kind == "points":
            points = datamanager.point_cloud()
            source = "SfM points of the data"
            if points is None or len(points[0]) == 0:
                _, items = datamanager.train_views
                K = cameras.get_intrinsics_matrices().cpu()
                points = triangulate_points([item["image"].numpy() for item in items], c2w, K, seed=cfg.seed)
                source = f"points triangulated from {len(items)} training frames (SIFT, known poses)"
            if len(points[0]) < 100:
                raise ILRMError(
                    f"{datamanager.config.data}: found only {len(points[0])} 3D points to start from; use "
                    f"--pipeline.model.init random"
                )
            gaussians = points_to_gaussians(points[0], points[1], cfg.sh_degree)
            log(f"start: {len(gaussians):,} Gaussians at {source} ({time.perf_counter() - start:.1f} s)")
        elif kind == "random":
            gaussians = random_gaussians(cfg.random_init_count, c2w, cfg.sh_degree, cfg.random_init_extent, cfg.seed)
            log(f"start: {len(gaussians):,} random Gaussians")
        else:
            raise ILRMError(f"unknown init {kind!r}")
        self.set_scene_gaussians(gaussians.map(lambda t: t.to(self.device)), trainable=True)
        if cfg.report_held_out:
            baselines = held_out_baselines(datamanager)
            if baselines:
                log(
                    "    held-out PSNR of trivial baselines: "
                    + ", ".join(f"{k} {v:.2f} dB" for k, v in baselines.items())
                )
            self.report("feed-forward" if kind == "network" else f"{kind} start", datamanager)

    def _network_start(self, datamanager) -> Gaussians:
        cfg = self.config
        if cfg.ilrm_run is None:
            raise ILRMError(
                "--pipeline.model.ilrm-run is needed (an ns-train ilrm / ilrm-small run), or "
                "--pipeline.model.init points / random"
            )
        trained = load_network(cfg.ilrm_run, self.device)
        trained.bf16 = cfg.bf16
        multiple = trained.network.config.size_multiple
        _, items = datamanager.train_views
        frame_hw = tuple(items[0]["image"].shape[:2])
        if trained.published:  # the authors' protocol: their input size and number of views
            height, width = cfg.network_resolution or trained.resolution
            views = datamanager.ask_for_input_views(trained.context_views)
            if (
                torch.device(self.device).type == "cpu"
                and trained.network.num_gaussians(views, height, width) > 300_000
            ):
                log(
                    "    a full-size published model is slow on a CPU: fewer views or a lower size help, e.g. "
                    "--pipeline.datamanager.num-input-views 8 --pipeline.model.network-resolution 272 480"
                )
        else:
            height, width = cfg.network_resolution or network_input_size(frame_hw, trained.resolution, multiple)
        trained.network.config.check_image_size(height, width, "network_resolution")
        anchors = datamanager.input_indices
        # Published models: their protocol's view count (RE10K: pairs). Our runs: one pass, which
        # measured better than nearest-frame pairs (docs/per_scene.md).
        group = cfg.network_group_size or (trained.context_views if trained.published else len(anchors))
        start = time.perf_counter()
        if group >= len(anchors):  # one pass over all input views
            log(f"start: {len(anchors)} input views at {width}x{height} through the network of {trained.checkpoint}")
            gaussians = predict_gaussians(trained, *datamanager.network_views(height, width))
        else:  # as the network trained: groups of `group` nearby views, each anchor's own Gaussians kept
            log(
                f"start: {len(anchors)} input views at {width}x{height}, each with its {group - 1} nearest frame(s) "
                f"(the network trained on {trained.context_views} views), through the network of {trained.checkpoint}"
            )
            parts = []
            for members in view_groups(datamanager.training_c2w(), anchors, group):
                predicted = predict_gaussians(trained, *datamanager.network_views(height, width, members))
                per_view = len(predicted) // len(members)
                parts.append(predicted.map(lambda t: t[:per_view]))
            gaussians = Gaussians.cat(parts)
        if gaussians.means.is_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if trained.sh_degree != cfg.sh_degree:
            log(
                f"the network predicts SH degree {trained.sh_degree}; the model keeps degree "
                f"{cfg.sh_degree} (padded/truncated)"
            )
        log(f"    {len(gaussians):,} Gaussians in {seconds:.2f} s")
        return with_sh_degree(gaussians, cfg.sh_degree)

    # -- held-out views ----------------------------------------------------------------------------

    @torch.no_grad()
    def held_out_renders(self, datamanager) -> list[tuple[Tensor, Tensor]]:
        """(render, ground truth) [H, W, 3] of every held-out view."""
        cameras, items = datamanager.eval_views
        was_training = self.training
        self.eval()
        pairs = []
        for i, item in enumerate(items):
            out = self.render_cameras(cameras[i : i + 1])
            pairs.append((out["rgb"], self.ground_truth(item["image"], out["background"])))
        self.train(was_training)
        return pairs

    def held_out_psnr(self, datamanager) -> float | None:
        pairs = self.held_out_renders(datamanager)
        if not pairs:
            return None
        return sum(float(psnr(r.permute(2, 0, 1)[None], g.permute(2, 0, 1)[None])) for r, g in pairs) / len(pairs)

    def report(self, label: str, datamanager) -> float | None:
        value = self.held_out_psnr(datamanager)
        if value is not None:
            log(f"    held-out PSNR ({label}, {len(datamanager.eval_views[1])} views): {value:.2f} dB")
        return value

    def save_held_out_picture(self, datamanager, path: Path, count: int = 4) -> Path | None:
        """Ground truth | render of up to `count` held-out views, one row each."""
        import torchvision.utils as vutils

        pairs = self.held_out_renders(datamanager)
        if not pairs:
            return None
        chosen = [pairs[round(i * (len(pairs) - 1) / max(1, count - 1))] for i in range(min(count, len(pairs)))]
        size = chosen[0][0].shape[:2]
        tiles = []
        for render, truth in chosen:
            for image in (truth, render):
                image = image.permute(2, 0, 1)[None].float().cpu()
                tiles.append(F.interpolate(image, size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        vutils.save_image(torch.stack(tiles), path, nrow=2, padding=2, pad_value=1.0)
        return path

    def _write_picture(self, datamanager, run_dir: Path) -> None:
        picture = self.save_held_out_picture(datamanager, run_dir / "held_out.png")
        if picture is not None:
            log(f"wrote {picture} (held-out frames: ground truth | render)")

    # -- the plan and the optimizer ---------------------------------------------------------------

    def make_plan(self, epochs: int, datamanager) -> EpochPlan:
        frames = len(datamanager.train_views[1])
        per_step = datamanager.config.views_per_step
        steps = 1 if per_step <= 0 else math.ceil(frames / per_step)
        paper = min(self.config.paper_epochs, epochs) if self.started_from == "network" else 0
        return EpochPlan(epochs, paper, steps)

    def auto_epochs(self, datamanager) -> int:
        """Published epochs (network start) + refinement epochs that fit `refine_minutes`, from
        the time of a probe step (rendering and backward of views_per_step frames). The estimate
        may be optimistic (densification adds Gaussians): `frames_this_epoch` trims epochs that
        would overrun."""
        cameras, items = datamanager.train_views
        frames, per_step = len(items), max(1, datamanager.config.views_per_step)
        batch = datamanager.epoch_batches(0, "all", per_step)[0]
        self.train()
        seconds = []
        for _ in range(3):  # the first call may compile the kernels
            start = time.perf_counter()
            outputs = self(batch[0])
            sum(self.get_loss_dict(outputs, batch[1]).values()).backward()
            seconds.append(time.perf_counter() - start)
        for param in self.gauss_params.values():
            param.grad = None
        self.epoch_sums = {}  # the probe is not part of the first epoch
        self.seconds_per_view = min(seconds[1:]) / len(batch[1]["image"])
        views = min(self.config.refine_views, self.config.refine_minutes * 60.0 / self.seconds_per_view)
        refine = max(1, round(views / frames))
        log(
            f"auto budget: {refine} refinement epochs ({refine * frames:,} frames at ~{self.seconds_per_view:.2f} s "
            f"each, {self.config.refine_minutes:g} min)"
        )
        self.time_budget = self.config.refine_minutes * 60.0
        paper = self.config.paper_epochs if self.started_from == "network" else 0
        return paper + refine

    def frames_this_epoch(self, epoch: int, frames: int) -> int:
        """Under the auto budget: how many frames the refinement epoch `epoch` can afford."""
        if self.time_budget is None or self.plan.is_paper(epoch):
            return frames
        if self.refine_started is None:
            self.refine_started = time.perf_counter()
        left = self.time_budget - (time.perf_counter() - self.refine_started)
        epochs_left = max(1, self.plan.epochs - epoch)  # a resumed run may go past the plan
        affordable = int(left / (epochs_left * self.seconds_per_view))
        return max(1, min(frames, affordable))

    def measure_epoch(self, views: int, seconds: float) -> None:
        """Keep the seconds-per-frame estimate of the auto budget up to date."""
        if self.time_budget is not None and views > 0:
            self.seconds_per_view = 0.5 * self.seconds_per_view + 0.5 * seconds / views

    def start_training(self, plan: EpochPlan, optimizers) -> None:
        """Keep the plan and nerfstudio's optimizers; set up densification for the refinement."""
        from gsplat.strategy import DefaultStrategy

        cfg = self.config
        self.plan, self.optimizers = plan, optimizers
        # The published epochs use the optimizers' configured rates (--optimizers.NAME.optimizer.lr).
        self.paper_lr = {name: float(o.defaults["lr"]) for name, o in optimizers.optimizers.items()}
        total = plan.refine_steps
        self.strategy = DefaultStrategy(
            prune_opa=0.005,
            grow_grad2d=cfg.densify_grad,
            refine_start_iter=int(cfg.densify_start * total),
            refine_stop_iter=int(cfg.densify_stop * total) if cfg.densify else 0,
            refine_every=max(10, min(cfg.densify_every, total // 15)),  # short runs densify too
            reset_every=1 << 30,  # no opacity reset: too few steps on a CPU budget to recover
        )
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_extent)

    def set_learning_rates(self, epoch: int, batch: int) -> None:
        plan = self.plan
        if plan.is_paper(epoch):
            rates = self.paper_lr
        else:
            progress = min(1.0, plan.refine_step(epoch, batch) / max(1, plan.refine_steps))
            rates = dict(REFINE_LR)
            rates["means"] = REFINE_LR["means"] * self.scene_extent * REFINE_MEANS_FINAL**progress
        for name, optimizer in self.optimizers.optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] = float(rates[name])

    def after_optimizer_step(self, epoch: int, batch: int) -> None:
        """Densify / prune after a refinement step (gsplat's strategy edits parameters and Adam
        state together)."""
        if self.plan is None or self.plan.is_paper(epoch) or not self.config.densify or self.last_info is None:
            return
        # 1-based: gsplat resets every opacity at steps divisible by reset_every, step 0 included.
        step = self.plan.refine_step(epoch, batch) + 1
        if len(self.means) >= self.config.max_gaussians:
            self.strategy.refine_stop_iter = min(self.strategy.refine_stop_iter, step)
        self.strategy.step_post_backward(
            self.gauss_params, self.optimizers.optimizers, self.strategy_state, step, self.last_info, packed=False
        )
        for name in GAUSSIAN_FIELDS:  # nerfstudio's view of the parameters follows
            self.optimizers.parameters[name] = [self.gauss_params[name]]
        self.last_info = None

    # -- nerfstudio hooks ----------------------------------------------------------------------

    def get_param_groups(self):
        return {name: [self.gauss_params[name]] for name in GAUSSIAN_FIELDS}

    def get_training_callbacks(self, training_callback_attributes):
        from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

        callbacks = super().get_training_callbacks(training_callback_attributes)
        trainer = training_callback_attributes.trainer
        pipeline = training_callback_attributes.pipeline
        if trainer is None or pipeline is None:
            return callbacks
        datamanager = pipeline.datamanager
        if trainer.config.max_num_iterations < -1:
            raise ILRMError(
                f"--max-num-iterations must be >= 0 (epochs) or -1 (the auto budget), got "
                f"{trainer.config.max_num_iterations}"
            )
        if trainer.config.max_num_iterations == -1:  # auto: the default budget
            trainer.config.max_num_iterations = self.auto_epochs(datamanager)
        plan = self.make_plan(trainer.config.max_num_iterations, datamanager)
        self.start_training(plan, training_callback_attributes.optimizers)
        if plan.epochs == 0:  # the start is the result
            trainer.config.logging.local_writer.enable = False  # nerfstudio's writer fails on 0 steps
            if self.config.report_held_out:
                self._write_picture(datamanager, Path(trainer.base_dir))
            return callbacks
        frames = len(datamanager.train_views[1])
        if plan.paper_epochs:
            log(
                f"epochs 1-{plan.paper_epochs}: published finetune on {len(datamanager.input_indices)} input views "
                f"(one Adam step each, MSE)"
            )
        if plan.epochs > plan.paper_epochs:
            log(
                f"epochs {plan.paper_epochs + 1}-{plan.epochs}: refinement on {frames} training "
                f"frames, {plan.steps_per_epoch} Adam steps per epoch, L1 + SSIM, densification "
                f"{'on' if self.config.densify else 'off'}"
            )
        clock = {"start": time.perf_counter(), "epochs": 0}

        def after_epoch(step: int) -> None:
            epoch = step + 1
            elapsed = time.perf_counter() - clock["start"]
            clock["epochs"] += 1
            done = clock["epochs"]
            remaining = (plan.epochs - epoch) * elapsed / max(1, done)
            count = max(1, self.epoch_sums.pop("count", 1))
            means = {name: value / count for name, value in self.epoch_sums.items()}
            self.epoch_sums = {}
            entry = {"epoch": epoch, "seconds": elapsed, "gaussians": len(self.means), **means}
            if self.config.report_held_out and (epoch == plan.paper_epochs or epoch == plan.epochs):
                entry["held_out_psnr"] = self.report(f"after {epoch} epochs", datamanager)
            self.history.append(entry)
            loss = entry.get("loss", float("nan"))
            log(
                f"epoch {epoch}/{plan.epochs}  loss {loss:.4f}  training-frame PSNR "
                f"{entry.get('psnr', float('nan')):.2f} dB  {len(self.means):,} Gaussians  {elapsed / 60:.1f} min, "
                f"ETA {remaining / 60:.1f} min"
            )
            if epoch == plan.epochs and self.config.report_held_out:
                self._write_picture(datamanager, Path(trainer.base_dir))

        callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after_epoch))
        return callbacks

    # -- forward, loss, metrics ------------------------------------------------------------------

    def get_outputs(self, inputs: Cameras) -> dict:  # type: ignore[override]
        if self.training:  # a step: every camera of the batch at once
            out = self.render_camera_batch(inputs)
            out["background"] = self._get_background_color()
            self.last_info = out.pop("info", None)
            return out
        return self.render_cameras(inputs)

    def ground_truth(self, image: Tensor, background: Tensor) -> Tensor:
        """Images [..., H, W, 3 or 4] (uint8 or float) -> float RGB composited on the background."""
        image = image.to(self.device)
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        if image.shape[-1] == 4:
            bg = background if background.dim() == 1 else background[..., :3]
            image = image[..., :3] * image[..., 3:] + (1.0 - image[..., 3:]) * bg
        return image

    def _pred_gt(self, outputs: dict, batch: dict) -> tuple[Tensor, Tensor]:
        """Renders and ground truth as [C, 3, H, W]."""
        pred = outputs["rgb"]
        gt = self.ground_truth(batch["image"], outputs["background"])
        if pred.dim() == 3:
            pred, gt = pred[None], gt[None]
        return pred.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2)

    def perceptual(self):
        """LPIPS-VGG for the refinement loss (shared, not a submodule: not in checkpoints)."""
        return load_perceptual(required=True, device=self.device)

    def get_metrics_dict(self, outputs, batch) -> dict:
        pred, gt = self._pred_gt(outputs, batch)
        return {"psnr": psnr(pred.detach(), gt).mean(), "num_gaussians": float(len(self.means))}

    def get_loss_dict(self, outputs, batch, metrics_dict=None, published: bool = False) -> dict:
        """published: the Ours_10 loss (MSE); else the refinement loss (L1 + SSIM [+ LPIPS])."""
        pred, gt = self._pred_gt(outputs, batch)
        cfg = self.config
        if published:
            losses = {"mse_loss": F.mse_loss(pred, gt)}
        else:
            losses = {"l1_loss": (1.0 - cfg.ssim_weight) * (pred - gt).abs().mean()}
            if cfg.ssim_weight > 0:
                losses["ssim_loss"] = cfg.ssim_weight * (1.0 - training_ssim(pred, gt).mean())
            if cfg.lpips_weight > 0:
                losses["lpips_loss"] = cfg.lpips_weight * self.perceptual()(pred, gt).mean()
        if self.training:
            self.last_metrics = {
                "loss": float(sum(v.detach() for v in losses.values())),
                "psnr": float(metrics_dict["psnr"]) if metrics_dict else float(psnr(pred.detach(), gt).mean()),
            }
            for name, value in self.last_metrics.items():  # the epoch's means, for the progress line
                self.epoch_sums[name] = self.epoch_sums.get(name, 0.0) + value
            self.epoch_sums["count"] = self.epoch_sums.get("count", 0) + 1
        return losses

    @torch.no_grad()
    def get_image_metrics_and_images(self, outputs: dict, batch: dict):
        pred, gt = self._pred_gt(outputs, batch)
        values = image_metrics(pred, gt, with_lpips=True)
        metrics = {name: float(v.mean()) for name, v in values.items()}
        image = torch.cat([gt[0], pred[0]], dim=2).permute(1, 2, 0)  # ground truth | render
        return metrics, {"img": image}
