"""The nerfstudio models.

`GaussianSceneModel` holds one scene's Gaussians in `gauss_params` (Splatfacto's layout: means,
log scales, wxyz quaternions, SH DC, SH rest, logit opacities) and renders nerfstudio `Cameras`
with them. It is a `SplatfactoModel` subclass so that nerfstudio's viewer, ns-render and ns-export
recognise it; Splatfacto's CUDA-only construction (random points, torchmetrics AlexNet download)
and rendering are replaced (gsplat on CUDA, our PyTorch rasterizer on the CPU).

`ILRMModel` adds the iLRM network: it runs on a batch's context views and renders its targets
(training across scenes). Its checkpoints also hold the reconstruction of one held-out scene
(`viewer_scene`), refreshed before every checkpoint, so that ns-export, ns-render and ns-viewer
work on an `ilrm` run (see `held_scene.py`). The per-scene model (`ilrm-finetune`) is in
`finetune.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Literal, Optional, Type

import tyro

import torch
import torch.nn.functional as F
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.models.splatfacto import SplatfactoModel
from torch import Tensor, nn

from ilrm_nerfstudio.metrics.baselines import mean_color_baseline, nearest_view_baseline
from ilrm_nerfstudio.core.cameras import opengl_to_opencv, to_homogeneous
from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.metrics.image import load_perceptual, psnr, ssim
from ilrm_nerfstudio.core.network import ILRM, SH_C0, ILRMNetworkConfig
from ilrm_nerfstudio.render.rendering import render
from ilrm_nerfstudio.core.errors import ILRMError

GAUSSIAN_FIELDS = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")


@dataclass
class GaussianSceneModelConfig(ModelConfig):
    """One scene's Gaussians, rendered by gsplat (CUDA) or our PyTorch rasterizer (CPU). Not a
    SplatfactoModelConfig: none of Splatfacto's options apply (the model only subclasses
    SplatfactoModel because ns-export and the viewer check for that type)."""

    _target: Type = field(default_factory=lambda: GaussianSceneModel)
    sh_degree: int = 0
    background_color: Literal["random", "black", "white"] = "white"
    render_backend: Literal["auto", "gsplat", "torch"] = "auto"
    """"auto": gsplat on CUDA, our PyTorch rasterizer on CPU."""
    # Options of nerfstudio's ray-based models that Gaussians do not use: hidden from --help.
    enable_collider: tyro.conf.Suppress[bool] = False
    collider_params: tyro.conf.Suppress[Optional[Dict[str, float]]] = None
    loss_coefficients: tyro.conf.Suppress[Dict[str, float]] = field(default_factory=dict)
    eval_num_rays_per_chunk: tyro.conf.Suppress[int] = 1 << 30
    prompt: tyro.conf.Suppress[Optional[str]] = None


class GaussianSceneModel(SplatfactoModel):
    """A SplatfactoModel whose Gaussians are set from outside (`set_scene_gaussians`)."""

    config: GaussianSceneModelConfig

    def populate_modules(self):
        self.gauss_params = nn.ParameterDict()
        self.set_scene_gaussians(None)
        self.crop_box = None
        self.background_color = self._fixed_background()
        self.step = 0

    # -- the scene ------------------------------------------------------------------------------

    def set_scene_gaussians(self, gaussians: Gaussians | None, trainable: bool = False) -> None:
        """Store one scene's Gaussians (unbatched) in Splatfacto's parameter layout."""
        K = (self.config.sh_degree + 1) ** 2
        if gaussians is None:
            gaussians = Gaussians(torch.zeros(0, 3), torch.ones(0, 3), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, K, 3))
        if gaussians.sh.shape[1] != K:
            raise ValueError(f"Gaussians with {gaussians.sh.shape[1]} SH coefficients for a model of sh_degree {self.config.sh_degree}")
        device = self.gauss_params["means"].device if "means" in self.gauss_params else None
        g = gaussians.map(lambda t: t.detach().float().to(device) if device is not None else t.detach().float())
        params = {
            "means": g.means,
            "scales": torch.log(g.scales),
            "quats": F.normalize(g.quats, dim=-1) if len(g) else g.quats,
            "features_dc": g.sh[:, 0],
            "features_rest": g.sh[:, 1:],
            "opacities": torch.logit(g.opacities.clamp(1e-6, 1 - 1e-6))[:, None],
        }
        for name, value in params.items():
            self.gauss_params[name] = nn.Parameter(value.contiguous(), requires_grad=trainable)

    def scene_gaussians(self) -> Gaussians:
        return Gaussians(
            means=self.means,
            scales=torch.exp(self.scales),
            quats=self.quats,
            opacities=torch.sigmoid(self.opacities[:, 0]),
            sh=torch.cat([self.features_dc[:, None], self.features_rest], dim=1),
        )

    # features_dc always holds SH coefficients (Splatfacto stores color logits when sh_degree = 0).
    @property
    def colors(self):
        return torch.clamp_min(0.5 + SH_C0 * self.features_dc, 0.0)

    @property
    def shs_0(self):
        return self.features_dc

    def load_state_dict(self, state_dict, **kwargs):  # type: ignore[override]
        # The stored scene may have any number of Gaussians: resize before loading. Parameters of
        # the right shape are kept (an optimizer that holds them stays valid, e.g. when resuming).
        if "gauss_params.means" in state_dict:
            for name, param in self.gauss_params.items():
                shape = state_dict[f"gauss_params.{name}"].shape
                if param.shape != shape:
                    self.gauss_params[name] = nn.Parameter(param.new_zeros(shape), requires_grad=param.requires_grad)
        return nn.Module.load_state_dict(self, state_dict, **kwargs)

    # -- nerfstudio hooks --------------------------------------------------------------------------

    def get_param_groups(self):
        return {}

    def get_training_callbacks(self, training_callback_attributes):
        from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

        def remember_step(step: int) -> None:
            self.step = step

        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], remember_step)]

    def step_post_backward(self, step):  # no densification strategy
        pass

    def _fixed_background(self) -> Tensor:
        return torch.zeros(3) if self.config.background_color == "black" else torch.ones(3)

    def _get_background_color(self) -> Tensor:
        if self.config.background_color == "random" and self.training:
            return torch.rand(3, device=self.device)
        return self.background_color.to(self.device)

    # -- rendering ---------------------------------------------------------------------------------

    def render_views(self, gaussians: Gaussians, c2w: Tensor, K: Tensor, height: int, width: int, background: Tensor | None = None) -> dict[str, Tensor]:
        """Render one scene's Gaussians into cameras c2w [C, 4, 4] (OpenCV), K [C, 3, 3]."""
        background = self._get_background_color() if background is None else background
        out = render(gaussians, c2w, K, width, height, background, backend=self.config.render_backend)
        outputs = {"rgb": out.rgb.clamp(0, 1), "accumulation": out.alpha, "depth": out.depth}
        if self.training and out.means2d is not None and out.means2d.requires_grad:
            out.means2d.retain_grad()  # screen-space gradients for densification
            outputs["info"] = {**out.info, "gaussian_ids": None}  # gsplat strategies ask for it (unpacked: None)
        return outputs

    @staticmethod
    def opencv_cameras(camera: Cameras) -> tuple[Tensor, Tensor]:
        """nerfstudio Cameras (any batch shape) -> OpenCV c2w [C, 4, 4] and K [C, 3, 3]."""
        c2w = opengl_to_opencv(to_homogeneous(camera.camera_to_worlds.reshape(-1, 3, 4)))
        return c2w, camera.get_intrinsics_matrices().reshape(-1, 3, 3)

    def visible_gaussians(self) -> Gaussians:
        gaussians = self.scene_gaussians()
        if self.crop_box is not None and not self.training:
            gaussians = gaussians.map(lambda t: t[self.crop_box.within(gaussians.means).squeeze()])
        return gaussians

    def render_camera_batch(self, camera: Cameras, background: Tensor | None = None) -> dict[str, Tensor]:
        """Every camera of `camera` (all of one size) -> rgb [C, H, W, 3], accumulation, depth."""
        camera = camera.to(self.device)
        c2w, K = self.opencv_cameras(camera)
        widths, heights = camera.width.reshape(-1), camera.height.reshape(-1)
        if bool((widths != widths[0]).any() or (heights != heights[0]).any()):
            raise ValueError("render_camera_batch: all cameras must have the same image size")
        return self.render_views(self.visible_gaussians(), c2w, K, int(heights[0]), int(widths[0]), background)

    def render_cameras(self, camera: Cameras) -> dict:
        """The first camera of `camera` -> [H, W, c] outputs (what the viewer and ns-render use)."""
        background = self._get_background_color()
        out = self.render_camera_batch(camera.reshape(-1)[0:1], background)
        H, W = out["rgb"].shape[1:3]
        return {
            "rgb": out["rgb"][0],
            "accumulation": out["accumulation"][0],
            "depth": out["depth"][0],
            # As Splatfacto: a full background image outside training (ns-render dataset saves it).
            "background": background if self.training else background.expand(H, W, 3),
        }

    def get_outputs(self, inputs: Cameras) -> dict:  # type: ignore[override]
        return self.render_cameras(inputs)

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> dict:
        self.set_crop(obb_box)
        return self.render_cameras(camera)


@dataclass
class ILRMModelConfig(GaussianSceneModelConfig):
    _target: Type = field(default_factory=lambda: ILRMModel)
    network: ILRMNetworkConfig = field(default_factory=ILRMNetworkConfig)
    """The network; its sh_degree is set from this config's sh_degree."""
    sh_degree: int = 0
    lpips_weight: float = 0.5
    """Weight of the LPIPS-VGG term in the loss (0: MSE only, needs no VGG weights)."""
    background_color: Literal["random", "black", "white"] = "white"
    bf16: bool = True
    """bf16 autocast for the network on CUDA (never on CPU, where bf16 matmuls are slow)."""
    render_backend: Literal["auto", "gsplat", "torch"] = "auto"
    """"auto": gsplat on CUDA, our PyTorch rasterizer on CPU."""
    viewer_scene: str = "0"
    """The held-out scene whose reconstruction checkpoints hold (for ns-viewer, ns-render,
    ns-export on this run): an index into the evaluation scenes or a scene name. It is
    reconstructed before every checkpoint is written, in a frame oriented and scaled as nerfstudio's
    dataparser does (recorded in <run>/held_scene.json); "none" disables that."""
    init_from: Path | None = None
    """Start from a published iLRM checkpoint (re10k_2view.ckpt, ilrm_undistort_dl3dv*.pt; see
    docs/published.md). Its architecture replaces `network`'s, except for the fields of
    `INIT_FROM_KEEPS` (how it runs: checkpointing, attention kernel, compile, mini-batch
    cross-attention); `sh_degree` must match the file's (0). The file is read again whenever the
    model is built (also when a run made with it is loaded)."""
    pose_scale: Literal["auto", "data", "max_abs_coordinate"] = "auto"
    """Scale of the context cameras the network sees. "data": as the data manager normalizes them
    (farthest context camera at distance 1); "max_abs_coordinate": the published models'
    convention (largest |coordinate| of a context camera position = 1); "auto": the latter with
    `init_from`, else "data"."""


# Network fields that `init_from` keeps from the run's config: how the network runs, not what it is.
INIT_FROM_KEEPS = (
    "gradient_checkpointing", "attention_backend", "compile",
    "cross_attention_groups", "cross_attention_split", "cross_attention_rotation",
)  # fmt: skip


class ILRMModel(GaussianSceneModel):
    config: ILRMModelConfig

    def populate_modules(self):
        super().populate_modules()
        if self.config.init_from is not None:
            try:
                self.network = self._published_network(Path(self.config.init_from))
            except ILRMError as error:  # ns-train: one line, no traceback
                raise SystemExit(f"ilrm: {error}") from None
        else:
            network_config = dataclasses.replace(self.config.network, sh_degree=self.config.sh_degree)
            self.network = ILRM(network_config)
        # Not a submodule: the frozen VGG must not land in checkpoints.
        self._perceptual = [None]

    def _published_network(self, path: Path) -> ILRM:
        """The published network at `path`, trainable, with this config's run-time fields."""
        from ilrm_nerfstudio.core.published import load_published_network

        published = load_published_network(path)
        if published.config.sh_degree != self.config.sh_degree:
            raise ILRMError(
                f"{path}: the published model has sh_degree {published.config.sh_degree}, this model "
                f"{self.config.sh_degree}; set --pipeline.model.sh-degree {published.config.sh_degree}"
            )
        keeps = {name: getattr(self.config.network, name) for name in INIT_FROM_KEEPS}
        config = dataclasses.replace(published.config, **keeps)
        replaced = [
            f"{f.name} {getattr(self.config.network, f.name)!r} -> {getattr(config, f.name)!r}"
            for f in dataclasses.fields(config)
            if getattr(self.config.network, f.name) != getattr(config, f.name)
        ]
        from nerfstudio.utils.rich_utils import CONSOLE

        CONSOLE.print(
            f"init_from {path}: published {published.published_protocol.name} network"
            + (f"; network options taken from the file: {', '.join(replaced)}" if replaced else ""),
            soft_wrap=True, markup=False, highlight=False,
        )  # fmt: skip
        network = ILRM(config)
        network.load_state_dict(published.state_dict())
        network.published_protocol = published.published_protocol
        return network

    def uses_published_pose_scale(self) -> bool:
        if self.config.pose_scale == "auto":
            return self.config.init_from is not None
        return self.config.pose_scale == "max_abs_coordinate"

    def rescale_poses(self, batch: dict) -> dict:
        """The batch with translations scaled per scene so that the largest |coordinate| of its
        context camera positions is 1 (the published convention; the frame's origin and axes,
        the average context camera, are the same in both conventions)."""
        if not self.uses_published_pose_scale():
            return batch
        largest = batch["context_c2w"][..., :3, 3].abs().amax(dim=(1, 2))  # [B]
        scale = torch.where(largest > 1e-8, 1.0 / largest.clamp_min(1e-8), torch.ones_like(largest))
        batch = dict(batch)
        for key in ("context_c2w", "target_c2w"):
            c2w = batch[key].clone()
            c2w[..., :3, 3] *= scale[:, None, None]
            batch[key] = c2w
        return batch

    # -- nerfstudio hooks --------------------------------------------------------------------------

    def get_param_groups(self):
        return {"network": list(self.network.parameters())}

    def get_training_callbacks(self, training_callback_attributes):
        from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
        from nerfstudio.utils.misc import step_check

        callbacks = super().get_training_callbacks(training_callback_attributes)
        trainer, pipeline = training_callback_attributes.trainer, training_callback_attributes.pipeline
        if trainer is None or pipeline is None or self.config.viewer_scene.lower() == "none":
            return callbacks

        def hold_scene(step: int) -> None:
            # Checkpoints are written after this callback, at steps_per_save and after the last step.
            last = trainer._start_step + trainer.config.max_num_iterations - 1
            if step_check(step, trainer.config.steps_per_save) or step == last:
                from ilrm_nerfstudio.nerfstudio.viewer_scene import hold_eval_scene

                hold_eval_scene(self, pipeline.datamanager, self.config.viewer_scene, trainer.base_dir)

        callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], hold_scene))
        return callbacks

    # -- forward -----------------------------------------------------------------------------------

    def reconstruct(self, images: Tensor, c2w: Tensor, K: Tensor) -> Gaussians:
        """Context views [B, V, 3, H, W] with cameras -> batched Gaussians (fp32)."""
        use_bf16 = self.config.bf16 and images.is_cuda
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            return self.network(images, c2w, K)

    def get_outputs(self, inputs: dict | Cameras) -> dict:
        """A batch dict (feed-forward: contexts in, target renders out) or nerfstudio `Cameras`
        (render the stored scene, for the viewer and ns-render)."""
        if isinstance(inputs, Cameras):
            return self.render_cameras(inputs)
        batch = self.rescale_poses(inputs)
        gaussians = self.reconstruct(batch["context_images"], batch["context_c2w"], batch["context_K"])
        H, W = batch["target_images"].shape[-2:]
        per_scene = [
            self.render_views(gaussians.map(lambda t: t[b]), batch["target_c2w"][b], batch["target_K"][b], H, W)
            for b in range(len(batch["target_c2w"]))
        ]
        # [B, T, H, W, c]; per-render extras that are not images (e.g. "info") are left out
        outputs = {key: torch.stack([o[key] for o in per_scene]) for key, value in per_scene[0].items() if isinstance(value, Tensor)}
        outputs["gaussians"] = gaussians
        return outputs

    # -- losses and metrics ----------------------------------------------------------------------

    def perceptual(self):
        """LPIPS-VGG, loaded on first use; None when the loss does not use it and it cannot load."""
        if self._perceptual[0] is None:  # False: tried and failed (offline); do not retry every call
            module = load_perceptual(required=self.config.lpips_weight > 0)
            self._perceptual[0] = False if module is None else module.to(self.device)
        return None if self._perceptual[0] is False else self._perceptual[0]

    @staticmethod
    def _flat_targets(outputs: dict, batch: dict) -> tuple[Tensor, Tensor]:
        """Renders and ground truth as [B*T, 3, H, W]."""
        pred = outputs["rgb"].flatten(0, 1).permute(0, 3, 1, 2)
        return pred, batch["target_images"].flatten(0, 1)

    def get_metrics_dict(self, outputs, batch) -> dict:
        pred, gt = self._flat_targets(outputs, batch)
        return {"psnr": psnr(pred.detach(), gt).mean(), "num_gaussians": float(outputs["gaussians"].means.shape[1])}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict:
        pred, gt = self._flat_targets(outputs, batch)
        losses = {"mse_loss": F.mse_loss(pred, gt)}
        if self.config.lpips_weight > 0:
            losses["lpips_loss"] = self.config.lpips_weight * self.perceptual()(pred, gt).mean()
        return losses

    @torch.no_grad()
    def scene_metrics(self, outputs: dict, batch: dict) -> list[dict[str, float]]:
        """Per scene of the batch: PSNR, SSIM (and LPIPS when its weights load) averaged over the
        target views, and the PSNR of two trivial baselines on the same targets."""
        B, T = batch["target_images"].shape[:2]
        pred, gt = self._flat_targets(outputs, batch)
        values = {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
        perceptual = self.perceptual()
        if perceptual is not None:
            values["lpips"] = perceptual(pred, gt).reshape(-1)
        baselines = {
            "baseline_mean_color_psnr": mean_color_baseline(batch["context_images"], T),
            "baseline_nearest_view_psnr": nearest_view_baseline(batch["context_images"], batch["context_c2w"], batch["target_c2w"]),
        }
        for name, images in baselines.items():
            values[name] = psnr(images.flatten(0, 1), gt)
        per_scene = {name: v.reshape(B, T).mean(1) for name, v in values.items()}
        return [{name: float(v[b]) for name, v in per_scene.items()} | {"scene": batch["scene"][b]} for b in range(B)]

    def get_image_metrics_and_images(self, outputs: dict, batch: dict):
        metrics = self.scene_metrics(outputs, batch)[0]
        metrics.pop("scene")
        # Targets side by side: ground truth on top, render below.
        gt = batch["target_images"][0].permute(0, 2, 3, 1)  # [T, H, W, 3]
        pred = outputs["rgb"][0]
        image = torch.cat([torch.cat(list(gt), dim=1), torch.cat(list(pred), dim=1)], dim=0)
        depth = outputs["depth"][0]
        depth = torch.cat(list(depth / depth.amax().clamp_min(1e-6)), dim=1).expand(-1, -1, 3)
        return metrics, {"img": image, "depth": depth}
