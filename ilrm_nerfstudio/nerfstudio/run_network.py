"""The trained network of the per-scene stage's start (`--pipeline.model.ilrm-run`): an `ns-train
ilrm` / `ilrm-small` run or a published iLRM checkpoint, and its forward pass over a scene's input
views (Gaussians mapped back into the scene's frame)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from ilrm_nerfstudio.core.cameras import normalize_poses
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.core.frames import normalized_to_world
from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.core.network import ILRM

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
    context_views: int = 2  # views per sample the run trained on
    published: bool = False  # the authors' weights: their pose normalization


def find_run_files(path: Path) -> tuple[Path, Path]:
    """An ilrm run given as its folder, its config.yml or one of its checkpoints -> (config.yml,
    checkpoint); the latest checkpoint unless one is named."""
    path = Path(path)
    if not path.exists():
        raise ILRMError(f"{path}: ilrm run not found (give its folder, config.yml or a .ckpt)")
    if path.is_dir():
        config, checkpoint = path / "config.yml", None
    elif path.suffix == ".ckpt":
        config, checkpoint = path.parent.parent / "config.yml", path
    else:
        config, checkpoint = path, None
    if not config.is_file():
        raise ILRMError(f"{config}: not found; --pipeline.model.ilrm-run needs an ns-train ilrm / ilrm-small run")
    if checkpoint is None:
        checkpoints = sorted((config.parent / "nerfstudio_models").glob("step-*.ckpt"))
        if not checkpoints:
            raise ILRMError(f"{config.parent / 'nerfstudio_models'}: no checkpoint (step-*.ckpt) in this run")
        checkpoint = checkpoints[-1]
    return config, checkpoint


def is_run_path(path: Path) -> bool:
    """An ns-train run (folder, config.yml or nerfstudio_models/*.ckpt) rather than a published file."""
    path = Path(path)
    return path.is_dir() or path.suffix in (".yml", ".yaml") or (path.parent.parent / "config.yml").is_file()


def load_network(path: Path, device: torch.device | str = "cpu") -> TrainedNetwork:
    """`--pipeline.model.ilrm-run`: an ilrm / ilrm-small run, or a published iLRM checkpoint
    (`re10k_2view.ckpt`, `ilrm_undistort_dl3dv*.pt`) with that model's protocol."""
    path = Path(path)
    if not path.exists():
        raise ILRMError(
            f"{path}: ilrm run not found (give its folder, config.yml or a .ckpt, or a published iLRM checkpoint)"
        )
    if is_run_path(path):
        return load_trained_network(path, device)
    from ilrm_nerfstudio.core.published import load_published_network

    network = load_published_network(path, device)
    protocol = network.published_protocol
    return TrainedNetwork(
        network, tuple(protocol.image_size), protocol.sh_degree, path, True, protocol.num_views, published=True
    )


def load_trained_network(path: Path, device: torch.device | str = "cpu") -> TrainedNetwork:
    """The network of an `ilrm` run with its trained weights (frozen, eval mode)."""
    config_path, checkpoint = find_run_files(path)
    config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    model_config = getattr(getattr(config, "pipeline", None), "model", None)
    if model_config is None or not hasattr(model_config, "network"):
        raise ILRMError(
            f"{config_path}: not an ilrm run (method {getattr(config, 'method_name', '?')!r} has no network)"
        )
    network_config = dataclasses.replace(
        model_config.network, sh_degree=model_config.sh_degree, compile=False, gradient_checkpointing=False
    )
    network = ILRM(network_config)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["pipeline"]
    except Exception as error:  # torn or foreign file: name it
        raise ILRMError(
            f"{checkpoint}: cannot read this checkpoint ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
        ) from None
    weights = {key.split("network.", 1)[1]: value for key, value in state.items() if "_model.network." in key}
    if not weights:
        raise ILRMError(f"{checkpoint}: holds no network weights")
    network.load_state_dict(weights)
    network.requires_grad_(False)
    network.eval()
    data = config.pipeline.datamanager
    return TrainedNetwork(
        network.to(device),
        (int(data.image_height), int(data.image_width)),
        int(model_config.sh_degree),
        checkpoint,
        bool(getattr(model_config, "bf16", True)),
        int(getattr(data, "num_context_views", 2)),
    )


def network_input_size(frame_hw: tuple[int, int], trained_hw: tuple[int, int], multiple: int) -> tuple[int, int]:
    """The network's input size for frames of `frame_hw`: the frame's aspect ratio, its longest
    side that of the training resolution, both sides rounded down to `multiple` (the crop that
    this needs is at most multiple - 1 pixels)."""
    (frame_h, frame_w), longest = frame_hw, max(trained_hw)
    scale = longest / max(frame_h, frame_w)
    height = max(multiple, int(frame_h * scale) // multiple * multiple)
    width = max(multiple, int(frame_w * scale) // multiple * multiple)
    return height, width


@torch.no_grad()
def predict_gaussians(trained: TrainedNetwork, images: Tensor, c2w: Tensor, K: Tensor) -> Gaussians:
    """Input views (images [V, 3, H, W] at the network's resolution, OpenCV c2w [V, 4, 4] and K
    [V, 3, 3] in the scene's frame) -> Gaussians in the scene's frame (one forward pass)."""
    device = next(trained.network.parameters()).device
    if trained.published:
        from ilrm_nerfstudio.core.published import published_normalize_poses

        normalized, _, scale = published_normalize_poses(c2w.double())
    else:
        normalized, _, scale = normalize_poses(c2w.double())
    use_bf16 = trained.bf16 and device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
        g = trained.network(images[None].to(device), normalized[None].float().to(device), K[None].float().to(device))
    g = g.map(lambda t: t[0].float())
    return normalized_to_world(g, c2w.to(device), scale)


def view_groups(c2w: Tensor, anchors: list[int], size: int) -> list[list[int]]:
    """For every anchor view, the anchor first and its size - 1 nearest other views (camera
    centers, among views facing within 45 degrees of it; the closest ones otherwise)."""
    centers = c2w[:, :3, 3].double()
    forward = F.normalize(c2w[:, :3, 2].double(), dim=-1)
    groups = []
    for anchor in anchors:
        distance = (centers - centers[anchor]).norm(dim=-1)
        distance[(forward @ forward[anchor]) < math.cos(math.pi / 4)] += 1e9
        distance[anchor] = float("inf")
        groups.append([anchor] + distance.argsort()[: size - 1].tolist())
    return groups


def with_sh_degree(g: Gaussians, degree: int) -> Gaussians:
    """Pad (zeros) or truncate the SH coefficients to `degree`."""
    K = (degree + 1) ** 2
    sh = g.sh[:, :K]
    if sh.shape[1] < K:
        sh = torch.cat([sh, sh.new_zeros(len(g), K - sh.shape[1], 3)], dim=1)
    return dataclasses.replace(g, sh=sh)
