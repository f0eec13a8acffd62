"""The feed-forward model (`ns-train ilrm`): the iLRM network runs on a batch's context views and
renders its targets. Its base, `GaussianSceneModel`, is one scene's Gaussians as a nerfstudio
model: the held-out scene a checkpoint holds (viewer_scene.py), rendered for ns-viewer, ns-render
and ns-export. A `SplatfactoModel` subclass because those tools check for that type; it keeps
Splatfacto's parameter layout (`gauss_params`: means, log scales, wxyz quaternions, SH DC, SH
rest, logit opacities) and renders through our `render()` (gsplat on CUDA, our rasterizer on the
CPU)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import tyro
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.models.splatfacto import SplatfactoModel
from torch import Tensor, nn

from ilrm_nerfstudio.core.cameras import opengl_to_opencv, to_homogeneous
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.core.network import ILRM, ILRMNetworkConfig
from ilrm_nerfstudio.core.published import load_published_network
from ilrm_nerfstudio.core.sh import SH_C0
from ilrm_nerfstudio.metrics import load_perceptual, psnr, ssim
from ilrm_nerfstudio.metrics.baselines import mean_color_baseline, nearest_view_baseline
from ilrm_nerfstudio.nerfstudio.console import log_line
from ilrm_nerfstudio.render.rendering import render


@dataclass
class GaussianSceneModelConfig(ModelConfig):
    """Not a SplatfactoModelConfig: none of Splatfacto's training options apply here."""

    _target: type = field(default_factory=lambda: GaussianSceneModel)
    sh_degree: int = 0
    background_color: Literal["random", "black", "white"] = "white"
    render_backend: Literal["auto", "gsplat", "torch"] = "auto"
    """"auto": gsplat on CUDA, our PyTorch rasterizer on CPU."""
    # Options of nerfstudio's ray-based models that Gaussians do not use: hidden from --help.
    enable_collider: tyro.conf.Suppress[bool] = False
    collider_params: tyro.conf.Suppress[dict[str, float] | None] = None
    loss_coefficients: tyro.conf.Suppress[dict[str, float]] = field(default_factory=dict)
    eval_num_rays_per_chunk: tyro.conf.Suppress[int] = 1 << 30
    prompt: tyro.conf.Suppress[str | None] = None

    def check(self) -> None:
        if isinstance(self.sh_degree, bool) or self.sh_degree not in (0, 1, 2, 3):
            raise ILRMError(f"--pipeline.model.sh-degree {self.sh_degree}: must be 0, 1, 2 or 3")


class SplatfactoGaussians:
    """One scene's Gaussians as splatfacto's parameters (means, log scales, quaternions, SH
    coefficients, logit opacities), for both our models. features_dc always holds SH coefficients
    (splatfacto stores color logits at sh_degree 0): `colors` and `shs_0` say so to its exporters."""

    def set_scene_gaussians(self, gaussians: Gaussians | None, trainable: bool = False) -> None:
        """Store one scene's Gaussians (unbatched) in Splatfacto's parameter layout."""
        K = (self.config.sh_degree + 1) ** 2
        if gaussians is None:
            gaussians = Gaussians(
                torch.zeros(0, 3), torch.ones(0, 3), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, K, 3)
            )
        if gaussians.sh.shape[1] != K:
            raise ValueError(
                f"{gaussians.sh.shape[1]} SH coefficients for a model of sh_degree {self.config.sh_degree}"
            )
        device = self.gauss_params["means"].device if "means" in self.gauss_params else None
        g = gaussians.map(lambda t: t.detach().float().to(device))
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
        sh = torch.cat([self.features_dc[:, None], self.features_rest], dim=1)
        return Gaussians(self.means, torch.exp(self.scales), self.quats, torch.sigmoid(self.opacities[:, 0]), sh)

    @property
    def colors(self):
        return torch.clamp_min(0.5 + SH_C0 * self.features_dc, 0.0)

    @property
    def shs_0(self):
        return self.features_dc

    def load_state_dict(self, state_dict, **kwargs):  # type: ignore[override]
        # The stored scene may have any number of Gaussians: resize before loading (parameters of
        # the right shape are kept, so an optimizer holding them stays valid).
        for name, param in self.gauss_params.items():
            shape = state_dict.get(f"gauss_params.{name}", param).shape
            if param.shape != shape:
                self.gauss_params[name] = nn.Parameter(param.new_zeros(shape), requires_grad=param.requires_grad)
        return nn.Module.load_state_dict(self, state_dict, **kwargs)


class GaussianSceneModel(SplatfactoGaussians, SplatfactoModel):
    config: GaussianSceneModelConfig

    def populate_modules(self):
        self.config.check()
        self.gauss_params = nn.ParameterDict()
        self.set_scene_gaussians(None)
        self.crop_box = None
        # A buffer: it moves with the model (not saved; the viewer's set_background replaces it).
        background = torch.zeros(3) if self.config.background_color == "black" else torch.ones(3)
        self.register_buffer("background_color", background, persistent=False)
        self.step = 0

    def get_param_groups(self):
        return {}

    def get_training_callbacks(self, training_callback_attributes):
        return []  # no densification strategy

    def step_post_backward(self, step):
        pass

    def _get_background_color(self) -> Tensor:
        if self.config.background_color == "random" and self.training:
            return torch.rand(3, device=self.device)
        return self.background_color.to(self.device)  # a no-op: the buffer is there (unless replaced)

    def render_views(
        self, gaussians: Gaussians, c2w: Tensor, K: Tensor, height: int, width: int, background: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Render one scene's Gaussians into cameras c2w [C, 4, 4] (OpenCV), K [C, 3, 3]."""
        background = self._get_background_color() if background is None else background
        out = render(gaussians, c2w, K, width, height, background, backend=self.config.render_backend)
        return {"rgb": out.rgb.clamp(0, 1), "accumulation": out.alpha, "depth": out.depth}

    @staticmethod
    def opencv_cameras(camera: Cameras) -> tuple[Tensor, Tensor]:
        """nerfstudio Cameras (any batch shape) -> OpenCV c2w [C, 4, 4] and K [C, 3, 3]."""
        c2w = opengl_to_opencv(to_homogeneous(camera.camera_to_worlds.reshape(-1, 3, 4)))
        return c2w, camera.get_intrinsics_matrices().reshape(-1, 3, 3)

    def render_cameras(self, camera: Cameras) -> dict:
        """The first camera of `camera` -> [H, W, c] outputs (what the viewer and ns-render use)."""
        camera = camera.reshape(-1)[0:1]
        height, width = int(camera.height.reshape(-1)[0]), int(camera.width.reshape(-1)[0])
        gaussians = self.scene_gaussians()
        if self.crop_box is not None and not self.training:
            gaussians = gaussians.map(lambda t: t[self.crop_box.within(gaussians.means).squeeze()])
        background = self._get_background_color()
        c2w, K = self.opencv_cameras(camera.to(self.device))
        out = {key: value[0] for key, value in self.render_views(gaussians, c2w, K, height, width, background).items()}
        # As Splatfacto: a full background image outside training (ns-render dataset saves it).
        return {**out, "background": background if self.training else background.expand(height, width, 3)}

    def get_outputs(self, inputs: Cameras) -> dict:  # type: ignore[override]
        return self.render_cameras(inputs)

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> dict:
        self.set_crop(obb_box)
        return self.render_cameras(camera)


@dataclass
class ILRMModelConfig(GaussianSceneModelConfig):
    _target: type = field(default_factory=lambda: ILRMModel)
    network: ILRMNetworkConfig = field(default_factory=ILRMNetworkConfig)
    """The network; its sh_degree is set from this config's sh_degree."""
    lpips_weight: float = 0.5
    """Weight of the LPIPS-VGG term in the loss (0: MSE only, needs no VGG weights)."""
    bf16: bool = True
    """bf16 autocast for the network on CUDA (never on CPU, where bf16 matmuls are slow)."""
    viewer_scene: str = "0"
    """The held-out scene (index or name) that checkpoints hold for ns-viewer, ns-render and
    ns-export, reconstructed before each save (its frame in <run>/held_scene.json); none: no scene."""
    init_from: Path | None = None
    """Start from a published iLRM checkpoint (docs/published.md): its architecture replaces
    `network`'s except how it runs (INIT_FROM_KEEPS); read again whenever the model is built."""
    pose_scale: Literal["auto", "data", "max_abs_coordinate"] = "auto"
    """Context camera scale the network sees: data (farthest context camera at 1), max_abs_coordinate
    (the published models': largest |coordinate| = 1), auto (the latter with init_from)."""

    def check(self) -> None:
        """Impossible options -> ILRMError naming the option (at setup, before any data is read)."""
        super().check()
        weight = self.lpips_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ILRMError(f"--pipeline.model.lpips-weight {weight}: must be 0 (MSE only) or a positive number")
        which = str(self.viewer_scene).strip()
        if not which:
            raise ILRMError("--pipeline.model.viewer-scene is empty: give an evaluation scene's index or name, or none")
        if which.lstrip("-").isdigit() and int(which) < 0:
            raise ILRMError(f"--pipeline.model.viewer-scene {which}: an index is 0 or more (or give a scene name)")
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise ILRMError(f"--pipeline.model.init-from {self.init_from}: checkpoint file not found")
        self.network.check("--pipeline.model.network.")


# Network fields that `init_from` keeps from the run's config: how the network runs, not what it is.
INIT_FROM_KEEPS = ("gradient_checkpointing", "attention_backend", "compile") + tuple(
    f"cross_attention_{name}" for name in ("groups", "split", "rotation")
)


class ILRMModel(GaussianSceneModel):
    config: ILRMModelConfig

    def populate_modules(self):
        super().populate_modules()  # checks the config
        if self.config.init_from is not None:
            self.network = self._published_network(Path(self.config.init_from))
        else:
            network_config = dataclasses.replace(self.config.network, sh_degree=self.config.sh_degree)
            self.network = ILRM(network_config)

    def _published_network(self, path: Path) -> ILRM:
        """The published network at `path`, trainable, with this config's run-time fields."""
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
        log_line(
            f"init_from {path}: published {published.published_protocol.name} network"
            + (f"; network options taken from the file: {', '.join(replaced)}" if replaced else ""),
        )
        network = ILRM(config)
        network.load_state_dict(published.state_dict())
        network.published_protocol = published.published_protocol
        return network

    def rescale_poses(self, batch: dict) -> dict:
        """With the published convention, translations scaled per scene so that the largest
        |coordinate| of a context camera is 1 (origin and axes are the same in both)."""
        scale = self.config.pose_scale
        if scale == "data" or (scale == "auto" and self.config.init_from is None):
            return batch
        largest = batch["context_c2w"][..., :3, 3].abs().amax(dim=(1, 2))  # [B]
        scale = torch.where(largest > 1e-8, 1.0 / largest.clamp_min(1e-8), torch.ones_like(largest))
        batch = dict(batch)
        for key in ("context_c2w", "target_c2w"):
            c2w = batch[key].clone()
            c2w[..., :3, 3] *= scale[:, None, None]
            batch[key] = c2w
        return batch

    def get_param_groups(self):
        return {"network": list(self.network.parameters())}

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
        return {key: torch.stack([o[key] for o in per_scene]) for key in per_scene[0]} | {"gaussians": gaussians}

    def perceptual(self):
        """LPIPS-VGG (shared, not in checkpoints); None when the loss does not need it and it
        cannot load (tried once, metrics/perceptual.py)."""
        return load_perceptual(required=self.config.lpips_weight > 0, device=self.device)

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
        context = batch["context_images"]
        values["baseline_mean_color_psnr"] = psnr(mean_color_baseline(context, T).flatten(0, 1), gt)
        nearest = nearest_view_baseline(context, batch["context_c2w"], batch["target_c2w"])
        values["baseline_nearest_view_psnr"] = psnr(nearest.flatten(0, 1), gt)
        per_scene = {name: v.reshape(B, T).mean(1) for name, v in values.items()}
        return [{name: float(v[b]) for name, v in per_scene.items()} | {"scene": batch["scene"][b]} for b in range(B)]

    def get_image_metrics_and_images(self, outputs: dict, batch: dict):
        metrics = {k: v for k, v in self.scene_metrics(outputs, batch)[0].items() if k != "scene"}
        # Targets side by side: ground truth on top, render below.
        gt, pred, depth = batch["target_images"][0].permute(0, 2, 3, 1), outputs["rgb"][0], outputs["depth"][0]
        image = torch.cat([torch.cat(list(gt), dim=1), torch.cat(list(pred), dim=1)], dim=0)
        depth = torch.cat(list(depth / depth.amax().clamp_min(1e-6)), dim=1).expand(-1, -1, 3)
        return metrics, {"img": image, "depth": depth}
