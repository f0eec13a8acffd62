"""The feed-forward model (`ns-train ilrm`): the iLRM network runs on a batch's context views and
renders its targets (training across scenes). Its checkpoints also hold the reconstruction of one
held-out scene (`viewer_scene`), so that ns-export, ns-render and ns-viewer work on an `ilrm` run
(see viewer_scene.py).
"""

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

    def check(self) -> None:
        """Impossible options -> ILRMError naming the option (at setup, before any data is read;
        whether `viewer_scene` names an evaluation scene is checked by the pipeline, which has them)."""
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
    """The network's options (--pipeline.model.network.*): sizes positive, near < far, then the
    network's own consistency checks (width divisible by heads, feature names, ...)."""
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
INIT_FROM_KEEPS = (
    "gradient_checkpointing",
    "attention_backend",
    "compile",
    "cross_attention_groups",
    "cross_attention_split",
    "cross_attention_rotation",
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
        log_line(
            f"init_from {path}: published {published.published_protocol.name} network"
            + (f"; network options taken from the file: {', '.join(replaced)}" if replaced else ""),
        )
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
        outputs = {
            key: torch.stack([o[key] for o in per_scene])
            for key, value in per_scene[0].items()
            if isinstance(value, Tensor)
        }
        outputs["gaussians"] = gaussians
        return outputs

    # -- losses and metrics ----------------------------------------------------------------------

    def perceptual(self):
        """LPIPS-VGG (shared, built on first use; not a submodule, so not in checkpoints); None when
        the loss does not use it and it cannot load (tried once, see metrics/perceptual.py)."""
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
        baselines = {
            "baseline_mean_color_psnr": mean_color_baseline(batch["context_images"], T),
            "baseline_nearest_view_psnr": nearest_view_baseline(
                batch["context_images"], batch["context_c2w"], batch["target_c2w"]
            ),
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
