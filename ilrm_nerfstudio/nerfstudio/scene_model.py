"""One scene's Gaussians as a nerfstudio model: the scene an `ilrm` checkpoint holds
(viewer_scene.py), rendered for ns-viewer, ns-render and ns-export.

A `SplatfactoModel` subclass because those tools check for that type; it keeps Splatfacto's
parameter layout (`gauss_params`: means, log scales, wxyz quaternions, SH DC, SH rest, logit
opacities) and renders through our `render()` (gsplat on CUDA, our rasterizer on the CPU).
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


class GaussianSceneModel(SplatfactoModel):
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

    # features_dc always holds SH coefficients (Splatfacto stores color logits when sh_degree = 0).
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
