"""The feed-forward model (`ns-train ilrm`): the iLRM network runs on a batch's context views and
renders its targets; its checkpoints also hold one held-out scene for the single-scene tools
(viewer_scene.py)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.core.network import ILRM, ILRMNetworkConfig
from ilrm_nerfstudio.core.published import load_published_network
from ilrm_nerfstudio.metrics import load_perceptual, psnr, ssim
from ilrm_nerfstudio.metrics.baselines import mean_color_baseline, nearest_view_baseline
from ilrm_nerfstudio.nerfstudio.console import log_line
from ilrm_nerfstudio.nerfstudio.scene_model import GaussianSceneModel, GaussianSceneModelConfig


@dataclass
class ILRMModelConfig(GaussianSceneModelConfig):
    _target: type = field(default_factory=lambda: ILRMModel)
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
        check_network(self.network)


def check_network(network: ILRMNetworkConfig) -> None:
    """--pipeline.model.network.*: sizes positive, near < far, then the network's own checks."""
    prefix = "--pipeline.model.network."
    for name in ("patch_size", "width", "num_heads", "num_layers", "viewpoint_factor"):
        value = getattr(network, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ILRMError(f"{prefix}{name.replace('_', '-')} {value}: must be a whole number, at least 1")
    if network.uplift is not None and network.uplift < 1:
        raise ILRMError(f"{prefix}uplift {network.uplift}: must be at least 1 (or None: automatic)")
    if not (math.isfinite(network.mlp_ratio) and network.mlp_ratio > 0):
        raise ILRMError(f"{prefix}mlp-ratio {network.mlp_ratio}: must be positive")
    if not (math.isfinite(network.near) and math.isfinite(network.far) and 0 < network.near < network.far):
        raise ILRMError(f"{prefix}near {network.near}, far {network.far}: need 0 < near < far")
    try:
        network.validate()
    except ValueError as error:  # the network's own checks name the field (core/network.py)
        raise ILRMError(f"{prefix}*: {error}") from None


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
