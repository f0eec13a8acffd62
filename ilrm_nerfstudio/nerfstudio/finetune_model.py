"""The per-scene stage (`ns-train ilrm-finetune`): splatfacto on one scene, started from iLRM.

One training iteration is one Adam step, as in splatfacto. The start (`--pipeline.model.init`):
the Gaussians a trained network predicts from the input views, or the scene's points; with a
network start the first `published_steps` (10: the paper's "Ours_10") each render every input view
for one Adam step on their mean MSE at the published rates, without densification. Then
splatfacto's recipe, its step-valued options scaled to the run's length (`fit_to_run`).

Only module construction (no LPIPS download, our start) and rendering differ from splatfacto:
renders go through our `render()` (gsplat on CUDA, our rasterizer on the CPU, the same `info` for
gsplat's strategy). The checkpoint is splatfacto's, so every nerfstudio tool works on it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from gsplat.strategy import DefaultStrategy
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.model_components.lib_bilagrid import BilateralGrid
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig
from nerfstudio.utils.colors import get_color
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio

from ilrm_nerfstudio.core.cameras import opengl_to_opencv, to_homogeneous
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.metrics import image_metrics, training_ssim
from ilrm_nerfstudio.nerfstudio.ilrm_model import SplatfactoGaussians
from ilrm_nerfstudio.render.rendering import render

SPLATFACTO_STEPS = 30_000  # the run length splatfacto's step-valued options are meant for


@dataclass
class ILRMFinetuneModelConfig(SplatfactoModelConfig):
    _target: type = field(default_factory=lambda: ILRMFinetuneModel)
    ilrm_run: Path | None = None
    """The trained network: an `ns-train ilrm` / `ilrm-small` run folder, its config.yml or a
    checkpoint, or a published iLRM checkpoint (`re10k_2view.ckpt`, `ilrm_undistort_dl3dv*.pt`).
    Only read at the start."""
    init: Literal["auto", "network", "points"] = "auto"
    """Starting Gaussians: "network" (the prediction of --pipeline.model.ilrm-run), "points" (the
    scene's SfM points, else points triangulated from the training frames); "auto": network when
    ilrm-run is given, else points. --pipeline.model.random-init True starts from random ones."""
    network_resolution: tuple[int, int] | None = None
    """(height, width) of the network's input; default: the frame's aspect ratio at the longest
    side of the run's training resolution, rounded to the network's size multiple."""
    bf16: bool = True
    """bf16 autocast for the network on CUDA."""
    network_group_size: int = 0
    """Views per forward pass; fewer than the input views: each input view is predicted with its
    nearest frames and keeps its own Gaussians. 0: one pass (a published file: its own count)."""
    published_steps: int = 10
    """Network start: the first steps are the published finetune (Ours_10)."""
    refine_minutes: float = 8.0
    """--max-num-iterations -1 (the default): as many steps as fit this many minutes, decided by
    timed probe steps before training starts."""
    max_gaussians: int = 400_000
    """Densification stops growing once this many Gaussians exist (bounds a CPU step's time)."""
    render_backend: Literal["auto", "gsplat", "torch"] = "auto"
    """"auto": gsplat on CUDA, our rasterizer on the CPU."""
    report_held_out: bool = True
    """Print the held-out PSNR at the start, after the published steps and at the end, and write
    held_out.png (ground truth | render) into the run folder."""
    seed: int = 0
    # splatfacto's defaults that cannot work here: absgrad needs gsplat's CUDA kernels, and its
    # densify threshold is for absgrad (0.0002 is 3D Gaussian splatting's for plain gradients).
    use_absgrad: bool = False
    densify_grad_thresh: float = 0.0002
    sh_degree: int = 3
    # splatfacto prunes below 0.1 opacity, with opacity resets over 30,000 steps; in a few thousand
    # that removes Gaussians still growing in (measured on snowmiku: 0.5 dB lower at equal steps).
    cull_alpha_thresh: float = 0.005


def check_options(cfg: ILRMFinetuneModelConfig, device: torch.device) -> None:
    """Impossible option values, and options that cannot work on this device, are one line."""

    def need(ok: bool, name: str, rule: str, value: object) -> None:
        if not ok:
            raise ILRMError(f"--pipeline.model.{name} must be {rule}, got {value!r}")

    need(0 <= cfg.sh_degree <= 3, "sh-degree", "in 0..3", cfg.sh_degree)
    need(cfg.published_steps >= 0, "published-steps", ">= 0", cfg.published_steps)
    need(0 < cfg.refine_minutes < math.inf, "refine-minutes", "> 0 (the auto budget's minutes)", cfg.refine_minutes)
    need(0 <= cfg.ssim_lambda <= 1, "ssim-lambda", "in [0, 1]", cfg.ssim_lambda)
    need(0 < cfg.densify_grad_thresh < math.inf, "densify-grad-thresh", "> 0", cfg.densify_grad_thresh)
    for name in ("refine_every", "resolution_schedule", "sh_degree_interval", "reset_alpha_every", "max_gaussians"):
        need(getattr(cfg, name) >= 1, name.replace("_", "-"), ">= 1", getattr(cfg, name))
    need(cfg.num_downscales >= 0, "num-downscales", ">= 0", cfg.num_downscales)
    need(cfg.network_group_size >= 0, "network-group-size", ">= 0 (0: automatic)", cfg.network_group_size)
    if cfg.network_resolution is not None:
        ok = len(cfg.network_resolution) == 2 and min(cfg.network_resolution) >= 1
        need(ok, "network-resolution", "two sizes >= 1 (height width)", cfg.network_resolution)
    if cfg.random_init and (cfg.init != "auto" or cfg.ilrm_run is not None):
        raise ILRMError(
            "--pipeline.model.random-init True starts from random Gaussians: leave out --pipeline.model.init and "
            "--pipeline.model.ilrm-run, or random-init"
        )
    gsplat = cfg.render_backend == "gsplat" or (cfg.render_backend == "auto" and device.type == "cuda")
    if not gsplat and cfg.use_absgrad:
        raise ILRMError("--pipeline.model.use-absgrad needs gsplat's CUDA kernels; the CPU rasterizer has none")
    if not gsplat and cfg.rasterize_mode != "classic":
        raise ILRMError(f"--pipeline.model.rasterize-mode {cfg.rasterize_mode} needs gsplat (CUDA); the CPU is classic")


class ILRMFinetuneModel(SplatfactoGaussians, SplatfactoModel):
    config: ILRMFinetuneModelConfig

    def populate_modules(self):
        """splatfacto's modules without its start (the pipeline sets ours) and without LPIPS
        (its weights would be downloaded here; ns-eval loads ours when it scores)."""
        self.gauss_params = nn.ParameterDict()
        self.set_scene_gaussians(None, trainable=True)
        self.camera_optimizer = self.config.camera_optimizer.setup(num_cameras=self.num_train_data, device="cpu")
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        # splatfacto's loss calls self.ssim: pytorch_msssim's SSIM, several times faster on a CPU
        # (metrics/image.py, blur_cpu.py).
        # Images under the 11-pixel window (a tiny capture at 1/4 size) have no SSIM term.
        self.ssim = lambda a, b: training_ssim(a, b).mean() if min(a.shape[-2:]) >= 11 else a.new_ones(())
        self.step = 0
        self.optimizers: dict = {}  # nerfstudio's, set by splatfacto's step callback
        self.crop_box = None
        background = self.config.background_color
        self.background_color = (
            torch.tensor([0.1490, 0.1647, 0.2157]) if background == "random" else get_color(background)
        )
        if self.config.use_bilateral_grid:
            self.bil_grids = BilateralGrid(self.num_train_data, *self.config.grid_shape)
        self.published = 0  # published steps of this run (network start only)
        self.probe_downscale = 0
        self.fit_to_run(SPLATFACTO_STEPS)

    # -- the schedule ------------------------------------------------------------------------------

    def fit_to_run(self, steps: int) -> None:
        """splatfacto's step-valued options scaled to a run of `steps` (they are for 30,000)."""
        c = self.config
        self.fit = min(1.0, max(1, steps - self.published) / SPLATFACTO_STEPS)
        start = self.published + int(c.warmup_length * self.fit)
        self.strategy = DefaultStrategy(
            prune_opa=c.cull_alpha_thresh,
            grow_grad2d=c.densify_grad_thresh,
            grow_scale3d=c.densify_size_thresh,
            grow_scale2d=c.split_screen_size,
            prune_scale3d=c.cull_scale_thresh,
            prune_scale2d=c.cull_screen_size,
            refine_scale2d_stop_iter=self.published + int(c.stop_screen_size_at * self.fit),
            refine_start_iter=start,
            refine_stop_iter=max(start, self.published + int(c.stop_split_at * self.fit)),
            reset_every=c.reset_alpha_every * c.refine_every,
            refine_every=c.refine_every,
            pause_refine_after_reset=self.num_train_data + c.refine_every,
            absgrad=c.use_absgrad,
            revised_opacity=False,
        )
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)

    def is_published_step(self, step: int) -> bool:
        return step < self.published

    def _get_downscale_factor(self) -> int:
        if not self.training or self.is_published_step(self.step):  # the published steps: full size
            return 1
        if self.probe_downscale:  # the time budget's probe steps
            return self.probe_downscale
        level = (self.step - self.published) // max(1, int(self.config.resolution_schedule * self.fit))
        return 2 ** max(self.config.num_downscales - level, 0)

    def sh_degree_now(self) -> int:
        if not self.training or self.is_published_step(self.step) or self.probe_downscale:
            return self.config.sh_degree
        return min(self.step // max(1, int(self.config.sh_degree_interval * self.fit)), self.config.sh_degree)

    def step_post_backward(self, step):
        if self.is_published_step(step):
            return  # the published finetune does not densify
        # splatfacto's call, 1-based: gsplat resets every opacity at steps divisible by reset_every,
        # step 0 included, which would clamp the start's opacities before training begins.
        self.strategy.step_post_backward(
            self.gauss_params, self.optimizers, self.strategy_state, step + 1, self.info, packed=False
        )
        if self.num_points >= self.config.max_gaussians:
            self.strategy.refine_stop_iter = min(self.strategy.refine_stop_iter, step)

    # -- rendering and losses ----------------------------------------------------------------------

    def get_outputs(self, camera: Cameras) -> dict:  # type: ignore[override]
        c = self.config
        c2w = self.camera_optimizer.apply_to_camera(camera) if self.training else camera.camera_to_worlds
        g = self.scene_gaussians()
        if self.crop_box is not None and not self.training:
            g = g.map(lambda t: t[self.crop_box.within(g.means).squeeze(-1)])
        g = dataclasses.replace(g, sh=g.sh[:, : (self.sh_degree_now() + 1) ** 2])
        d = self._get_downscale_factor()  # splatfacto's resolution schedule (its camera rescale, without the edit)
        K = camera.get_intrinsics_matrices().reshape(-1, 3, 3).to(self.device)
        K = torch.cat([K[:, :2] / d, K[:, 2:]], dim=1)
        W, H = int(camera.width.reshape(-1)[0]) // d, int(camera.height.reshape(-1)[0]) // d
        background = self._get_background_color()
        c2w = opengl_to_opencv(to_homogeneous(c2w.reshape(-1, 3, 4).to(self.device)))
        out = render(g, c2w, K, W, H, background, backend=c.render_backend, rasterize_mode=c.rasterize_mode)
        if self.training and out.means2d is not None and out.means2d.requires_grad:
            self.info = {**out.info, "gaussian_ids": None}
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )
        rgb, alpha = out.rgb.clamp(0, 1), out.alpha
        if c.use_bilateral_grid and self.training and camera.metadata and "cam_idx" in camera.metadata:
            rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], H, W)
        depth = torch.where(alpha > 0, out.depth, out.depth.detach().max())
        return {
            "rgb": rgb[0],
            "depth": depth[0],
            "accumulation": alpha[0],
            "background": background if self.training else background.expand(H, W, 3),
        }

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict:
        if self.training and self.is_published_step(self.step):  # the published finetune's loss
            gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
            return {"mse_loss": F.mse_loss(outputs["rgb"], gt)}
        return super().get_loss_dict(outputs, batch, metrics_dict)

    @torch.no_grad()
    def get_image_metrics_and_images(self, outputs: dict, batch: dict):
        """splatfacto's metrics (PSNR, SSIM, LPIPS), with our LPIPS (no download here)."""
        gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        pred, truth = outputs["rgb"].permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None]
        metrics = {name: float(v.mean()) for name, v in image_metrics(pred, truth, with_lpips=True).items()}
        return metrics, {"img": torch.cat([gt, outputs["rgb"]], dim=1)}

    # -- held-out views, for the run's log ---------------------------------------------------------

    @torch.no_grad()
    def held_out_renders(self, datamanager) -> list[tuple[Tensor, Tensor]]:
        """(render, ground truth) [H, W, 3] of every held-out view."""
        was_training = self.training
        self.eval()
        pairs = []
        cameras = datamanager.eval_dataset.cameras.to(self.device)
        for i, data in enumerate(datamanager.cached_eval if len(datamanager.eval_dataset) else []):
            out = self.get_outputs_for_camera(cameras[i : i + 1])
            gt = self.composite_with_background(self.get_gt_img(data["image"]), out["background"])
            pairs.append((out["rgb"], gt))
        self.train(was_training)
        return pairs
