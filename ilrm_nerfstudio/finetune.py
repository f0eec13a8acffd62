"""The per-scene stage (`ns-train ilrm-finetune`, the paper's "Ours_10").

1. Feed-forward: the network of an `ilrm` / `ilrm-small` run (`--pipeline.model.ilrm-run`: its
   folder, config.yml or a .ckpt) predicts Gaussians from the scene's input views (chosen by the
   data manager, resized/cropped to the network's resolution, cameras normalized as in training)
   in one pass; they are mapped back into the dataparser's frame.
2. Finetune (optional): those Gaussians are optimized directly on the input views, network
   frozen and not even kept: Adam (eps 1e-15), lr 6e-4 for means and 1e-3 for the rest, constant,
   MSE, no densification. ONE TRAINING STEP = ONE EPOCH: it renders every input view and takes
   one Adam step on their mean loss, as the published code's "10 iterations, each rendering all
   input views". `--max-num-iterations E` is the number of epochs (default 10 = Ours_10; 0 keeps
   the feed-forward Gaussians). `--pipeline.datamanager.views-per-step k` renders k random views
   per step instead.

The checkpoint holds only the Gaussians (Splatfacto's layout), so ns-viewer, ns-render, ns-export
and ns-eval work from it without the network. `--pipeline.model.init random` starts the same
optimizer from random Gaussians instead (a baseline), and there are options for SSIM / LPIPS loss
terms and a simple densification (off by default).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
import yaml
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

from .cameras import normalize_poses
from .frames import normalized_to_world
from .gaussians import Gaussians
from .ilrm_model import GAUSSIAN_FIELDS, GaussianSceneModel, GaussianSceneModelConfig
from .metrics import PerceptualWeightsError, image_metrics, load_perceptual, psnr, ssim
from .network import ILRM, SH_C0
from .scene_datamanager import ILRMSceneDataManagerConfig
from .scenes import SceneError

MEANS_LR = 6e-4
OTHER_LR = 1e-3


def log_line(message: str, style: str | None = None) -> None:
    CONSOLE.print(f"[ilrm-finetune] {message}", style=style, soft_wrap=True, markup=False, highlight=False)


# ------------------------------------------------------------------------------------------------
# The trained network of an ilrm run
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainedNetwork:
    network: ILRM
    resolution: tuple[int, int]  # (height, width) the run trained at
    sh_degree: int
    checkpoint: Path
    bf16: bool = True


def find_run_files(path: Path) -> tuple[Path, Path]:
    """An ilrm run given as its folder, its config.yml or one of its checkpoints -> (config.yml,
    checkpoint); the latest checkpoint unless one is named."""
    path = Path(path)
    if not path.exists():
        raise SceneError(f"{path}: ilrm run not found (give its folder, config.yml or a .ckpt)")
    if path.is_dir():
        config, checkpoint = path / "config.yml", None
    elif path.suffix == ".ckpt":
        config, checkpoint = path.parent.parent / "config.yml", path
    else:
        config, checkpoint = path, None
    if not config.is_file():
        raise SceneError(f"{config}: not found; --pipeline.model.ilrm-run needs an ns-train ilrm / ilrm-small run")
    if checkpoint is None:
        checkpoints = sorted((config.parent / "nerfstudio_models").glob("step-*.ckpt"))
        if not checkpoints:
            raise SceneError(f"{config.parent / 'nerfstudio_models'}: no checkpoint (step-*.ckpt) in this run")
        checkpoint = checkpoints[-1]
    return config, checkpoint


def load_trained_network(path: Path, device: torch.device | str = "cpu") -> TrainedNetwork:
    """The network of an `ilrm` run with its trained weights (frozen, eval mode)."""
    config_path, checkpoint = find_run_files(path)
    config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    model_config = getattr(getattr(config, "pipeline", None), "model", None)
    if model_config is None or not hasattr(model_config, "network"):
        raise SceneError(f"{config_path}: not an ilrm run (method {getattr(config, 'method_name', '?')!r} has no network)")
    network_config = dataclasses.replace(model_config.network, sh_degree=model_config.sh_degree, compile=False, gradient_checkpointing=False)
    network = ILRM(network_config)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["pipeline"]
    weights = {key.split("network.", 1)[1]: value for key, value in state.items() if "_model.network." in key}
    if not weights:
        raise SceneError(f"{checkpoint}: holds no network weights")
    network.load_state_dict(weights)
    network.requires_grad_(False)
    network.eval()
    data = config.pipeline.datamanager
    return TrainedNetwork(
        network.to(device), (int(data.image_height), int(data.image_width)), int(model_config.sh_degree), checkpoint, bool(getattr(model_config, "bf16", True))
    )


@torch.no_grad()
def predict_gaussians(trained: TrainedNetwork, images: Tensor, c2w: Tensor, K: Tensor) -> Gaussians:
    """Input views (images [V, 3, H, W] at the network's resolution, OpenCV c2w [V, 4, 4] and K
    [V, 3, 3] in the scene's frame) -> Gaussians in the scene's frame (one forward pass)."""
    device = next(trained.network.parameters()).device
    normalized, _, _ = normalize_poses(c2w.double())
    use_bf16 = trained.bf16 and device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
        g = trained.network(images[None].to(device), normalized[None].float().to(device), K[None].float().to(device))
    g = g.map(lambda t: t[0].float())
    return normalized_to_world(g, c2w.to(device))


def with_sh_degree(g: Gaussians, degree: int) -> Gaussians:
    """Pad (zeros) or truncate the SH coefficients to `degree`."""
    K = (degree + 1) ** 2
    sh = g.sh[:, :K]
    if sh.shape[1] < K:
        sh = torch.cat([sh, sh.new_zeros(len(g), K - sh.shape[1], 3)], dim=1)
    return dataclasses.replace(g, sh=sh)


def nearest_neighbor_distance(points: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """Mean distance of every point to its k nearest other points."""
    out = []
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start : start + chunk], points)
        out.append(d.topk(min(k + 1, len(points)), largest=False).values[:, 1:].mean(-1))
    return torch.cat(out)


def random_gaussians(count: int, camera_c2w: Tensor, sh_degree: int, extent: float = 10.0, seed: int = 0) -> Gaussians:
    """The usual random start of 3D Gaussian splatting: `count` Gaussians uniform in a cube of side
    `extent` x (camera spread) around the cameras' centroid, random colors, opacity 0.1, random
    rotations, scales = mean distance to the 3 nearest neighbors."""
    generator = torch.Generator().manual_seed(seed)
    centers = camera_c2w[:, :3, 3].float().cpu()
    center = centers.mean(0)
    spread = float((centers - center).norm(dim=-1).max().clamp_min(0.1))
    means = center + (torch.rand(count, 3, generator=generator) - 0.5) * extent * spread
    scales = nearest_neighbor_distance(means).clamp_min(1e-6)[:, None].expand(-1, 3).clone()
    sh = torch.zeros(count, (sh_degree + 1) ** 2, 3)
    sh[:, 0] = (torch.rand(count, 3, generator=generator) - 0.5) / SH_C0
    return Gaussians(
        means=means,
        scales=scales,
        quats=F.normalize(torch.randn(count, 4, generator=generator), dim=-1),
        opacities=torch.full((count,), 0.1),
        sh=sh,
    )


def finetune_optimizers(model: GaussianSceneModel) -> dict[str, torch.optim.Optimizer]:
    """The published per-scene optimizer: one Adam (eps 1e-15) per Gaussian field, lr 6e-4 for
    the means and 1e-3 for the rest, constant (what the `ilrm-finetune` method config sets up)."""
    return {
        name: torch.optim.Adam([model.gauss_params[name]], lr=MEANS_LR if name == "means" else OTHER_LR, eps=1e-15)
        for name in GAUSSIAN_FIELDS
    }


def optimize_scene(model: GaussianSceneModel, c2w: Tensor, K: Tensor, images: Tensor, epochs: int, on_epoch=None) -> None:
    """The finetune loop outside nerfstudio's trainer (benchmarks, tests): `epochs` Adam steps,
    each on the MSE of every input view (c2w [V, 4, 4] OpenCV, K [V, 3, 3], images [V, H, W, 3]).
    Same computation as `ns-train ilrm-finetune` with its defaults. `on_epoch(epoch)` is called
    after each step."""
    for param in model.gauss_params.values():
        param.requires_grad_(True)
    optimizers = finetune_optimizers(model)
    height, width = images.shape[1:3]
    model.train()
    for epoch in range(1, epochs + 1):
        for optimizer in optimizers.values():
            optimizer.zero_grad()
        out = model.render_views(model.scene_gaussians(), c2w, K, height, width)
        F.mse_loss(out["rgb"], images).backward()
        for optimizer in optimizers.values():
            optimizer.step()
        if on_epoch is not None:
            on_epoch(epoch)


# ------------------------------------------------------------------------------------------------
# The model: Gaussians as parameters
# ------------------------------------------------------------------------------------------------


@dataclass
class ILRMFinetuneModelConfig(GaussianSceneModelConfig):
    _target: Type = field(default_factory=lambda: ILRMFinetuneModel)
    ilrm_run: Optional[Path] = None
    """The trained network: an `ns-train ilrm` / `ilrm-small` run folder, its config.yml or a
    checkpoint (.ckpt). Only read at the start; the result does not depend on it afterwards."""
    init: Literal["network", "random"] = "network"
    """Start from the network's prediction, or from random Gaussians (the from-scratch baseline)."""
    network_resolution: Optional[Tuple[int, int]] = None
    """(height, width) the input views are resized/cropped to for the network; default: the run's
    training resolution. Must be divisible by patch_size x viewpoint_factor."""
    bf16: bool = True
    """bf16 autocast for the network on CUDA."""
    ssim_weight: float = 0.0
    """Loss = MSE + ssim_weight * (1 - SSIM) + lpips_weight * LPIPS (the published recipe: MSE only)."""
    lpips_weight: float = 0.0
    """LPIPS-VGG term (needs the VGG16 weights; see README)."""
    random_init_count: int = 0
    """init=random: number of Gaussians (0: as many as the network would predict, which needs
    --pipeline.model.ilrm-run; else 50,000)."""
    random_init_extent: float = 10.0
    """init=random: side of the cube the means are drawn in, in units of the camera spread."""
    seed: int = 0
    densify: bool = False
    """Adaptive density control during finetuning (off in the published recipe): every
    densify_every steps, the densify_fraction of Gaussians with the largest mean-position gradients
    are cloned (small ones) or split in two (large ones), and those with opacity below
    prune_opacity are removed."""
    densify_every: int = 5
    densify_fraction: float = 0.05
    densify_stop_fraction: float = 0.7
    """No densification after this fraction of the steps."""
    prune_opacity: float = 0.005
    report_held_out: bool = True
    """Print the PSNR of the held-out views after the feed-forward pass and after finetuning."""


class ILRMFinetuneModel(GaussianSceneModel):
    config: ILRMFinetuneModelConfig

    def populate_modules(self):
        super().populate_modules()
        self._perceptual = [None]  # not a submodule: no VGG in checkpoints
        self.last_metrics: dict[str, float] = {}
        self._grad_sum: Tensor | None = None
        self._grad_count: Tensor | None = None

    # -- the start: feed-forward prediction or random ------------------------------------------

    def initialize_gaussians(self, datamanager) -> None:
        """Predict (or draw) the scene's starting Gaussians; makes them trainable parameters."""
        cfg = self.config
        count = len(datamanager.input_indices)
        trained = None
        if cfg.ilrm_run is not None:
            trained = load_trained_network(cfg.ilrm_run, self.device)
            trained.bf16 = cfg.bf16
        if cfg.init == "network":
            if trained is None:
                raise SceneError("--pipeline.model.ilrm-run is needed (an ns-train ilrm / ilrm-small run), or --pipeline.model.init random")
            height, width = cfg.network_resolution or trained.resolution
            multiple = trained.network.config.patch_size * trained.network.config.viewpoint_factor
            if height % multiple or width % multiple:
                raise SceneError(f"network_resolution {height}x{width} must be divisible by patch_size x viewpoint_factor = {multiple}")
            log_line(f"1/2 feed-forward: {count} input views at {height}x{width} through the network of {trained.checkpoint}")
            images, c2w, K = datamanager.network_views(height, width)
            start = time.perf_counter()
            gaussians = predict_gaussians(trained, images, c2w, K)
            if gaussians.means.is_cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            if trained.sh_degree != cfg.sh_degree:
                log_line(f"the network predicts SH degree {trained.sh_degree}; the model keeps degree {cfg.sh_degree} (padded/truncated)")
            gaussians = with_sh_degree(gaussians, cfg.sh_degree)
            log_line(f"    {len(gaussians):,} Gaussians in {seconds:.2f} s")
        else:
            number = cfg.random_init_count
            if number <= 0:
                if trained is not None:
                    height, width = cfg.network_resolution or trained.resolution
                    number = trained.network.num_gaussians(count, height, width)
                else:
                    number = 50_000
            cameras, _ = datamanager.input_views
            c2w = cameras.camera_to_worlds.cpu()
            gaussians = random_gaussians(number, c2w, cfg.sh_degree, cfg.random_init_extent, cfg.seed)
            log_line(f"1/2 random start: {number:,} random Gaussians (no network)")
        del trained
        self.set_scene_gaussians(gaussians.map(lambda t: t.to(self.device)), trainable=True)
        if cfg.report_held_out:
            self.report("start", datamanager)

    @torch.no_grad()
    def held_out_psnr(self, datamanager) -> float | None:
        cameras, items = datamanager.eval_views
        if not items:
            return None
        was_training = self.training
        self.eval()
        values = []
        for i, item in enumerate(items):
            out = self.render_cameras(cameras[i : i + 1])
            gt = self.ground_truth(item["image"], out["background"])
            values.append(float(psnr(out["rgb"].permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None])))
        self.train(was_training)
        return sum(values) / len(values)

    def report(self, when: str, datamanager) -> None:
        value = self.held_out_psnr(datamanager)
        if value is not None:
            label = "feed-forward" if when == "start" and self.config.init == "network" else ("random start" if when == "start" else when)
            log_line(f"    held-out PSNR ({label}, {len(datamanager.eval_views[1])} views): {value:.2f} dB")

    # -- nerfstudio hooks ----------------------------------------------------------------------

    def get_param_groups(self):
        return {name: [self.gauss_params[name]] for name in GAUSSIAN_FIELDS}

    def get_training_callbacks(self, training_callback_attributes):
        from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

        callbacks = super().get_training_callbacks(training_callback_attributes)
        trainer = training_callback_attributes.trainer
        pipeline = training_callback_attributes.pipeline
        optimizers = training_callback_attributes.optimizers
        if trainer is None:
            return callbacks
        total = trainer.config.max_num_iterations
        start = trainer._start_step
        views = len(pipeline.datamanager.input_indices) if pipeline is not None else 0
        per_step = pipeline.datamanager.config.views_per_step if pipeline is not None else 0
        if total > 0:
            unit = "epochs" if per_step <= 0 or per_step >= views else f"steps of {per_step} views"
            log_line(f"2/2 finetune: {total} {unit} over {views} input views (Adam, lr {MEANS_LR:g} means, {OTHER_LR:g} others; network frozen)")

        def after_step(step: int) -> None:
            done = step - start + 1
            if self.config.densify and optimizers is not None:
                self.densify_step(step - start, total, optimizers)
            loss, value = self.last_metrics.get("loss"), self.last_metrics.get("psnr")
            if loss is not None:
                log_line(f"    {done}/{total}: loss {loss:.5f}, input-view PSNR {value:.2f} dB, {len(self.means):,} Gaussians")
            if done == total and self.config.report_held_out and pipeline is not None:
                self.report(f"after {total} {'epochs' if per_step <= 0 else 'steps'}", pipeline.datamanager)

        callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after_step))
        return callbacks

    # -- forward, loss, metrics ------------------------------------------------------------------

    def get_outputs(self, inputs: Cameras) -> dict:  # type: ignore[override]
        if self.training:  # a step: every camera of the batch at once
            out = self.render_camera_batch(inputs)
            out["background"] = self._get_background_color()
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
        if self._perceptual[0] is None:
            self._perceptual[0] = load_perceptual(required=True, device=self.device)
        return self._perceptual[0]

    def get_metrics_dict(self, outputs, batch) -> dict:
        pred, gt = self._pred_gt(outputs, batch)
        return {"psnr": psnr(pred.detach(), gt).mean(), "num_gaussians": float(len(self.means))}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict:
        pred, gt = self._pred_gt(outputs, batch)
        losses = {"mse_loss": F.mse_loss(pred, gt)}
        if self.config.ssim_weight > 0:
            losses["ssim_loss"] = self.config.ssim_weight * (1.0 - ssim(pred, gt).mean())
        if self.config.lpips_weight > 0:
            losses["lpips_loss"] = self.config.lpips_weight * self.perceptual()(pred, gt).mean()
        if self.training:
            self.last_metrics = {
                "loss": float(sum(v.detach() for v in losses.values())),
                "psnr": float(metrics_dict["psnr"]) if metrics_dict else float(psnr(pred.detach(), gt).mean()),
            }
        return losses

    @torch.no_grad()
    def get_image_metrics_and_images(self, outputs: dict, batch: dict):
        pred, gt = self._pred_gt(outputs, batch)
        values = image_metrics(pred, gt, with_lpips=True)
        metrics = {name: float(v.mean()) for name, v in values.items()}
        image = torch.cat([gt[0], pred[0]], dim=2).permute(1, 2, 0)  # ground truth | render
        return metrics, {"img": image}

    # -- densification (optional) --------------------------------------------------------------

    def densify_step(self, step: int, total: int, optimizers) -> None:
        """Accumulate mean-position gradient norms; every densify_every steps, clone / split the
        Gaussians with the largest ones and prune transparent ones."""
        cfg = self.config
        grad = self.means.grad
        if grad is None:
            return
        norm = grad.detach().norm(dim=-1)
        if self._grad_sum is None or len(self._grad_sum) != len(norm):
            self._grad_sum, self._grad_count = torch.zeros_like(norm), torch.zeros_like(norm)
        self._grad_sum += norm
        self._grad_count += (norm > 0).float()
        done = step + 1
        if done % cfg.densify_every or done > cfg.densify_stop_fraction * total:
            return
        with torch.no_grad():
            average = self._grad_sum / self._grad_count.clamp_min(1)
            n = len(average)
            chosen = torch.zeros(n, dtype=torch.bool, device=average.device)
            top = max(1, int(cfg.densify_fraction * n))
            chosen[average.topk(top).indices] = True
            chosen &= self._grad_count > 0
            scales = torch.exp(self.scales).amax(-1)
            extent = (self.means - self.means.mean(0)).norm(dim=-1).median()
            large = scales > 0.01 * extent
            clone, split = chosen & ~large, chosen & large
            params = {name: self.gauss_params[name].detach() for name in GAUSSIAN_FIELDS}
            new = {name: [value[clone]] for name, value in params.items()}
            if bool(split.any()):  # two Gaussians sampled inside each large one, 1.6x smaller
                for _ in range(2):
                    from .rendering import quat_to_rotmat

                    R = quat_to_rotmat(params["quats"][split])
                    offset = (R @ (torch.randn_like(params["means"][split]) * torch.exp(params["scales"][split]))[..., None])[..., 0]
                    for name, value in params.items():
                        piece = value[split]
                        if name == "means":
                            piece = piece + offset
                        elif name == "scales":
                            piece = piece - math.log(1.6)
                        new[name].append(piece)
            keep = ~split & (torch.sigmoid(params["opacities"][:, 0]) >= cfg.prune_opacity)
            additions = {name: torch.cat(parts) for name, parts in new.items()}
            replace_gaussians(self, optimizers, keep, additions)
            self._grad_sum = self._grad_count = None
        log_line(f"    densify: +{int(clone.sum())} cloned, {int(split.sum())} split in 2, {int((~keep).sum()) - int(split.sum())} pruned -> {len(self.means):,}")


def replace_gaussians(model: GaussianSceneModel, optimizers, keep: Tensor, additions: dict[str, Tensor]) -> None:
    """Keep rows `keep` of every Gaussian parameter and append `additions`; the Adam state follows
    (kept rows keep their moments, new rows start at zero)."""
    for name in GAUSSIAN_FIELDS:
        old = model.gauss_params[name]
        added = additions[name]
        param = nn.Parameter(torch.cat([old.detach()[keep], added]), requires_grad=True)
        optimizer = optimizers.optimizers[name]
        state = optimizer.state.pop(old, {})
        for key, value in list(state.items()):
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == old.shape[0]:
                state[key] = torch.cat([value[keep], value.new_zeros((len(added),) + value.shape[1:])])
        optimizer.param_groups[0]["params"] = [param]
        optimizer.state[param] = state
        optimizers.parameters[name] = [param]
        model.gauss_params[name] = param


# ------------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------------


@dataclass
class ILRMFinetunePipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: ILRMFinetunePipeline)
    datamanager: ILRMSceneDataManagerConfig = field(default_factory=ILRMSceneDataManagerConfig)
    model: ILRMFinetuneModelConfig = field(default_factory=ILRMFinetuneModelConfig)


class ILRMFinetunePipeline(VanillaPipeline):
    """VanillaPipeline (cameras in, renders out) that starts training from the prediction."""

    config: ILRMFinetunePipelineConfig

    def __init__(self, config: ILRMFinetunePipelineConfig, device: str, test_mode: Literal["test", "val", "inference"] = "val", world_size: int = 1, local_rank: int = 0, grad_scaler=None):
        try:
            super().__init__(config, device, test_mode=test_mode, world_size=world_size, local_rank=local_rank, grad_scaler=grad_scaler)
            if test_mode == "val":  # training: the starting Gaussians (a resumed run loads its own after)
                if config.model.lpips_weight > 0:
                    self.model.perceptual()  # fail now, not at the first step, when VGG is missing
                self.model.initialize_gaussians(self.datamanager)
        except (SceneError, PerceptualWeightsError) as error:
            raise SystemExit(f"ilrm-finetune: {error}") from None
