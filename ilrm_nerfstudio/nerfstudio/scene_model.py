"""One scene's Gaussians as a nerfstudio model.

`GaussianSceneModel` holds the Gaussians in `gauss_params` (Splatfacto's layout: means, log
scales, wxyz quaternions, SH DC, SH rest, logit opacities) and renders nerfstudio `Cameras` with
them. It is a `SplatfactoModel` subclass only because nerfstudio's viewer, ns-render and ns-export
check for that type; Splatfacto's construction, options and rendering are not used (our `render()`:
gsplat on CUDA, our rasterizer on the CPU). The feed-forward model (ilrm_model.py) and the
per-scene model (finetune_model.py) build on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
from ilrm_nerfstudio.core.sh import SH_C0
from ilrm_nerfstudio.render.rendering import render

GAUSSIAN_FIELDS = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")


@dataclass
class GaussianSceneModelConfig(ModelConfig):
    """One scene's Gaussians, rendered by gsplat (CUDA) or our PyTorch rasterizer (CPU). Not a
    SplatfactoModelConfig: none of Splatfacto's options apply (the model only subclasses
    SplatfactoModel because ns-export and the viewer check for that type)."""

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
        """Impossible options -> ILRMError naming the option (called when the model is built)."""
        if isinstance(self.sh_degree, bool) or self.sh_degree not in (0, 1, 2, 3):
            raise ILRMError(f"--pipeline.model.sh-degree {self.sh_degree}: must be 0, 1, 2 or 3")


class GaussianSceneModel(SplatfactoModel):
    """A SplatfactoModel whose Gaussians are set from outside (`set_scene_gaussians`)."""

    config: GaussianSceneModelConfig

    def populate_modules(self):
        self.config.check()
        self.gauss_params = nn.ParameterDict()
        self.set_scene_gaussians(None)
        self.crop_box = None
        # A buffer: it moves with the model, so no render copies it to the device (not saved in
        # checkpoints; the viewer's set_background replaces it).
        self.register_buffer("background_color", self._fixed_background(), persistent=False)
        self.step = 0

    # -- the scene ------------------------------------------------------------------------------

    def set_scene_gaussians(self, gaussians: Gaussians | None, trainable: bool = False) -> None:
        """Store one scene's Gaussians (unbatched) in Splatfacto's parameter layout."""
        K = (self.config.sh_degree + 1) ** 2
        if gaussians is None:
            gaussians = Gaussians(
                torch.zeros(0, 3), torch.ones(0, 3), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, K, 3)
            )
        if gaussians.sh.shape[1] != K:
            raise ValueError(
                f"Gaussians with {gaussians.sh.shape[1]} SH coefficients for a model of "
                f"sh_degree {self.config.sh_degree}"
            )
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
        return self.background_color.to(self.device)  # a no-op: the buffer is there (unless replaced)

    # -- rendering ---------------------------------------------------------------------------------

    def render_views(
        self, gaussians: Gaussians, c2w: Tensor, K: Tensor, height: int, width: int, background: Tensor | None = None
    ) -> dict[str, Tensor]:
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
        # image sizes: read before the move (free on the host, a device sync on the device)
        widths, heights = camera.width.reshape(-1), camera.height.reshape(-1)
        if bool((widths != widths[0]).any() or (heights != heights[0]).any()):
            raise ValueError("render_camera_batch: all cameras must have the same image size")
        height, width = int(heights[0]), int(widths[0])
        c2w, K = self.opencv_cameras(camera.to(self.device))
        return self.render_views(self.visible_gaussians(), c2w, K, height, width, background)

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
