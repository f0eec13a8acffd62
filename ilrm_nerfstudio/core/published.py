"""The authors' published iLRM checkpoints, loaded exactly into this package's network.

Two file layouts exist (Hugging Face `Gynjn/iLRM`; docs/published.md has the details):

- "re10k": `re10k_2view.ckpt`, a PyTorch Lightning checkpoint of the public `main` branch. The
  network sits in `state_dict` under `encoder.scaler.`; (2, F, F): full-resolution viewpoint
  tokens, no uplifting, viewpoint rays (o x d, d), image pixels (2 rgb - 1, o x d, d), 14 head
  channels per pixel (distance 3, sh 3, scale 3, rotation 4, opacity 1).
- "dl3dv": `ilrm_undistort_dl3dv.pt` / `ilrm_undistort_dl3dv_16view.pt`, `{"model": state_dict}`
  of the `wide` branch's `IterativeLRM`; viewpoint factor 2 with token uplifting (k = 2, queries
  interleaved), viewpoint rays (o, d, o x d), image pixels (o, d, o x d, 2 rgb - 1), 16 head
  channels per pixel (offset 2, distance 3, sh 3, scale 3, rotation 4, opacity 1).

Both use the published Gaussian parametrization (distance = sigmoid(mean of 3 channels) * 500
along the pixel's ray, scale = exp(min(raw - 6.9, -1.2)), opacity = sigmoid(raw - 2), normalized
quaternion, SH degree 0). Every difference from this package's own network is a network option
(`ILRMNetworkConfig`); the weights map through the one table `KEY_TABLE`.

    net = load_published_network("re10k_2view.ckpt")      # ILRM, eval mode, frozen
    protocol = published_protocol(net)                      # how the authors use it
    gaussians = net(images, c2w, K)                         # [B, V, 3, H, W] in [0, 1], OpenCV c2w, pixel K

Inputs are expected in the frame the authors' data loaders produce: poses relative to the average
input camera, translations scaled by 1 / (largest |coordinate| of the input camera positions)
(`published_normalize_poses`).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ilrm_nerfstudio.core.cameras import normalize_poses
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.core.network import ILRM, ILRMNetworkConfig

RE10K, DL3DV = "re10k", "dl3dv"
RE10K_PREFIX = "encoder.scaler."  # where the Lightning module keeps the network

EXPECTED = (
    "a published iLRM checkpoint: the RE10K Lightning file (re10k_2view.ckpt, 'state_dict' with "
    "'encoder.scaler.*' keys) or a DL3DV file (ilrm_undistort_dl3dv*.pt, {'model': IterativeLRM state_dict})"
)

# ---------------------------------------------------------------------------------------------
# The key table: one row per tensor, (our name, name in the RE10K file, name in the DL3DV file).
# {i} is our update layer i; in their files it is two blocks, the read (cross-attention) block
# {r} = 2i and the self-attention block {s} = 2i + 1. "qkv.weight[n/3]" is the n-th third of the
# rows of their fused self-attention projection (q, then k, then v). RE10K names are relative to
# `encoder.scaler.`. Everything else (channel orders, uplift layout, head order) is a network
# option set by `published_network_config`, not a weight transform.
# ---------------------------------------------------------------------------------------------

KEY_TABLE: tuple[tuple[str, str, str], ...] = (
    ("viewpoint_tokenizer.0.weight", "input_tokenizer.weight", "viewpoint_tokenizer.1.weight"),
    ("viewpoint_tokenizer.1.weight", "input_layernorm.weight", "viewpoint_tokenizer.2.weight"),
    ("image_tokenizer.0.weight", "support_tokenizer.weight", "image_tokenizer.1.weight"),
    ("image_tokenizer.1.weight", "support_layernorm.weight", "image_tokenizer.2.weight"),
    # read block: LN -> cross-attention -> residual, LN -> MLP -> residual
    ("layers.{i}.cross.norm_attn.weight", "processor.blocks.{r}.read_cross.norm.weight", "="),
    ("layers.{i}.cross.attn.to_q.weight", "processor.blocks.{r}.read_cross.q.weight", "="),
    ("layers.{i}.cross.attn.to_k.weight", "processor.blocks.{r}.read_cross.k.weight", "="),
    ("layers.{i}.cross.attn.to_v.weight", "processor.blocks.{r}.read_cross.v.weight", "="),
    ("layers.{i}.cross.attn.to_out.weight", "processor.blocks.{r}.read_cross.proj.weight", "="),
    ("layers.{i}.cross.attn.q_norm.weight", "processor.blocks.{r}.read_cross.q_norm.weight", "="),
    ("layers.{i}.cross.attn.k_norm.weight", "processor.blocks.{r}.read_cross.k_norm.weight", "="),
    ("layers.{i}.cross.norm_mlp.weight", "processor.blocks.{r}.read_ff.norm.weight", "="),
    ("layers.{i}.cross.mlp.0.weight", "processor.blocks.{r}.read_ff.fc1.weight", "="),
    ("layers.{i}.cross.mlp.2.weight", "processor.blocks.{r}.read_ff.fc2.weight", "="),
    # self block
    ("layers.{i}.self_attn.norm_attn.weight", "processor.blocks.{s}.attn.norm.weight", "="),
    ("layers.{i}.self_attn.attn.to_q.weight", "processor.blocks.{s}.attn.qkv.weight[0/3]", "="),
    ("layers.{i}.self_attn.attn.to_k.weight", "processor.blocks.{s}.attn.qkv.weight[1/3]", "="),
    ("layers.{i}.self_attn.attn.to_v.weight", "processor.blocks.{s}.attn.qkv.weight[2/3]", "="),
    ("layers.{i}.self_attn.attn.to_out.weight", "processor.blocks.{s}.attn.proj.weight", "="),
    ("layers.{i}.self_attn.attn.q_norm.weight", "processor.blocks.{s}.attn.q_norm.weight", "="),
    ("layers.{i}.self_attn.attn.k_norm.weight", "processor.blocks.{s}.attn.k_norm.weight", "="),
    ("layers.{i}.self_attn.norm_mlp.weight", "processor.blocks.{s}.mlp.norm.weight", "="),
    ("layers.{i}.self_attn.mlp.0.weight", "processor.blocks.{s}.mlp.fc1.weight", "="),
    ("layers.{i}.self_attn.mlp.2.weight", "processor.blocks.{s}.mlp.fc2.weight", "="),
    # Gaussian head: LN -> Linear(d, p^2 c)
    ("head_norm.weight", "token_decoder.0.weight", "viewpoint_token_decoder.0.weight"),
    ("head.weight", "token_decoder.1.weight", "viewpoint_token_decoder.1.weight"),
)

_SLICE = re.compile(r"^(?P<name>.+)\[(?P<part>\d+)/(?P<parts>\d+)\]$")


def key_pairs(kind: str, num_layers: int) -> list[tuple[str, str, int, int]]:
    """The table expanded for `num_layers` update layers: (our key, their key, part, parts);
    their tensor's rows are cut into `parts` equal pieces and piece `part` is ours (0, 1: whole)."""
    column = 1 if kind == RE10K else 2
    rows = []
    for row in KEY_TABLE:
        ours, theirs = row[0], row[column] if row[column] != "=" else row[1]
        for i in range(num_layers) if "{i}" in ours else [None]:
            names = {"i": i, "r": None if i is None else 2 * i, "s": None if i is None else 2 * i + 1}
            our_key, their_key = ours.format(**names), theirs.format(**names)
            part, parts = 0, 1
            if match := _SLICE.match(their_key):
                their_key, part, parts = match["name"], int(match["part"]), int(match["parts"])
            rows.append((our_key, their_key, part, parts))
    return rows


# ---------------------------------------------------------------------------------------------
# How the authors use each model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedProtocol:
    """How a published model is meant to be used (the authors' data loaders and renderer)."""

    name: str
    """"re10k" or "dl3dv"."""
    image_size: tuple[int, int]
    """Network input (H, W). RE10K: 256 x 256 (360 x 640 frames resized to cover, center-cropped).
    DL3DV: 544 x 960: their loader asks for 540 x 960 and rounds each side to a multiple of
    patch x viewpoint factor = 16 (stretching the 540 x 960 frames by 544/540 vertically)."""
    num_views: int
    """Input views: 2 (RE10K), 32 (DL3DV), 16 for the `_16view` file."""
    near: float
    far: float
    """Render planes of their rasterizer call (RE10K 500, DL3DV 1e6)."""
    background: tuple[float, float, float]
    """White."""
    sh_degree: int
    patch_multiple: int
    """Image sides must be multiples of this (patch size x viewpoint factor)."""
    view_selection: str
    """"index": contexts and targets from an evaluation index (RE10K, 2 contexts); "kmeans": every
    `target_interval`-th frame a target, inputs by k-means over the other cameras (DL3DV)."""
    target_interval: int | None
    pose_scale: str = "max_abs_coordinate"
    """Poses relative to the average input camera; translations times 1 / max |coordinate| of the
    input camera positions (not 1 / max distance)."""

    @property
    def background_name(self) -> str:
        return "white" if self.background == (1.0, 1.0, 1.0) else "black"


def protocol_for(kind: str, num_views: int | None = None, patch_multiple: int | None = None) -> PublishedProtocol:
    if kind == RE10K:
        return PublishedProtocol(
            RE10K, (256, 256), 2, 0.01, 500.0, (1.0, 1.0, 1.0), 0, patch_multiple or 8, "index", None
        )
    if kind == DL3DV:
        return PublishedProtocol(
            DL3DV, (544, 960), num_views or 32, 0.01, 1e6, (1.0, 1.0, 1.0), 0, patch_multiple or 16, "kmeans", 8
        )
    raise ValueError(f"unknown published model {kind!r} (re10k or dl3dv)")


def _views_from_name(path: Path) -> int | None:
    match = re.search(r"(\d+)[-_]?views?", path.name, re.IGNORECASE)
    return int(match.group(1)) if match else None


def published_protocol(path_or_network) -> PublishedProtocol:
    """The protocol of a published file (path) or of a network from `load_published_network`."""
    if isinstance(path_or_network, ILRM):
        protocol = getattr(path_or_network, "published_protocol", None)
        if protocol is None:
            raise ILRMError("this network was not loaded from a published iLRM checkpoint (use load_published_network)")
        return protocol
    path = Path(path_or_network)
    kind, state = read_published(path)
    config = published_network_config(kind, state, path)
    return protocol_for(kind, _views_from_name(path) if kind == DL3DV else None, config.size_multiple)


def published_normalize_poses(
    context_c2w: Tensor, other_c2w: Tensor | None = None
) -> tuple[Tensor, Tensor | None, float]:
    """The authors' pose normalization: cameras relative to the average input camera (mean
    position, mean forward, mean down orthogonalized), translations scaled by 1 / the largest
    absolute coordinate of the input camera positions. c2w [N, 4, 4] OpenCV -> (context, other,
    scale)."""
    return normalize_poses(context_c2w, other_c2w, largest="coordinate")


# ---------------------------------------------------------------------------------------------
# Reading and checking a file
# ---------------------------------------------------------------------------------------------


def _trust_pickles(trusted: bool | None) -> bool:
    if trusted is not None:
        return trusted
    return os.environ.get("ILRM_TRUST_CHECKPOINTS", "").lower() in ("1", "true", "yes")


def _torch_load(path: Path, trusted: bool | None) -> object:
    if not path.exists():
        raise ILRMError(f"{path}: file not found (expected {EXPECTED})")
    if not path.is_file():
        raise ILRMError(f"{path}: not a file (expected {EXPECTED})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        unsafe = isinstance(error, pickle.UnpicklingError) and "weights only load failed" in str(error).lower()
        if not unsafe:  # truncated, corrupt, not a torch file
            raise ILRMError(
                f"{path}: not a readable PyTorch file, truncated or corrupt? ({first}); expected {EXPECTED}"
            ) from None
        if not _trust_pickles(trusted):
            raise ILRMError(
                f"{path}: holds Python objects beyond tensors and plain containers, which are only unpickled from "
                f"trusted files; if you trust it, set ILRM_TRUST_CHECKPOINTS=1 ({first})"
            ) from None
    try:  # trusted: full unpickling
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ILRMError(
            f"{path}: not a readable PyTorch file ({type(error).__name__}: {error}); expected {EXPECTED}"
        ) from None


def detect_format(obj: object, path: Path) -> tuple[str, dict[str, Tensor]]:
    """(kind, the network's state dict with their key names, RE10K prefix removed)."""
    if isinstance(obj, dict):
        state = obj.get("state_dict")
        if isinstance(state, dict) and any(str(k).startswith(RE10K_PREFIX) for k in state):
            n = len(RE10K_PREFIX)
            return RE10K, {k[n:]: v for k, v in state.items() if k.startswith(RE10K_PREFIX)}
        model = obj.get("model")
        if isinstance(model, dict) and "viewpoint_token_decoder.1.weight" in model:
            return DL3DV, dict(model)
        if "pipeline" in obj and "step" in obj:
            raise ILRMError(
                f"{path}: an ns-train checkpoint (step {obj.get('step')}), not a published iLRM file; pass a run "
                f"with --pipeline.model.ilrm-run / ilrm-eval --load-config, or {EXPECTED}"
            )
        keys = ", ".join(map(str, list(obj)[:6]))
        raise ILRMError(f"{path}: not {EXPECTED}; its top-level keys are: {keys or 'none'}")
    raise ILRMError(f"{path}: not {EXPECTED}; it holds a {type(obj).__name__}")


def read_published(path: str | Path, trusted: bool | None = None) -> tuple[str, dict[str, Tensor]]:
    """Load a published file: (kind, state dict with their key names). ILRMError otherwise."""
    path = Path(path)
    kind, state = detect_format(_torch_load(path, trusted), path)
    for key, value in state.items():  # a damaged or hand-edited file: name the entry
        if not isinstance(value, Tensor):
            raise ILRMError(f"{path}: entry {key!r} of the {kind} weights is a {type(value).__name__}, not a tensor")
    return kind, state


def is_published_checkpoint(path: str | Path) -> bool:
    """True when `path` is one of the published layouts with every key and shape in place (reads
    the file; no network is built)."""
    try:
        kind, state = read_published(path)
        config = published_network_config(kind, state, path)
        with torch.device("meta"):
            network = ILRM(config)
        map_state_dict(kind, state, network, path)
    except (ILRMError, ValueError):
        return False
    return True


def _shape(state: dict[str, Tensor], key: str, path: Path, kind: str) -> tuple[int, ...]:
    if key not in state:
        raise ILRMError(f"{path}: {kind} checkpoint without '{key}' (expected {EXPECTED})")
    return tuple(state[key].shape)


def published_network_config(kind: str, state: dict[str, Tensor], path: Path | str = "checkpoint") -> ILRMNetworkConfig:
    """The network options that reproduce a published model, with its sizes read from the file."""
    path = Path(path)
    tokenizer = "input_tokenizer.weight" if kind == RE10K else "viewpoint_tokenizer.1.weight"
    width, viewpoint_in = _shape(state, tokenizer, path, kind)
    viewpoint_channels = 6 if kind == RE10K else 9
    patch = round((viewpoint_in / viewpoint_channels) ** 0.5)
    head_dim = _shape(state, "processor.blocks.0.read_cross.q_norm.weight", path, kind)[0]
    hidden = _shape(state, "processor.blocks.0.read_ff.fc1.weight", path, kind)[0]
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"processor\.blocks\.(\d+)\.", k))}
    if (
        patch * patch * viewpoint_channels != viewpoint_in
        or not head_dim
        or width % head_dim
        or not blocks
        or len(blocks) % 2
        or max(blocks) + 1 != len(blocks)
    ):
        raise ILRMError(
            f"{path}: {kind} checkpoint with an unexpected architecture (tokenizer {width}x{viewpoint_in}, "
            f"{len(blocks)} blocks, head dim {head_dim})"
        )
    common = dict(
        patch_size=patch,
        width=width,
        num_heads=width // head_dim,
        num_layers=len(blocks) // 2,
        mlp_ratio=hidden / width,
        gaussian_param="published",
        color_skip=False,
        cross_attention_groups=1,
        iterative_refinement=True,
        resolution_decoupling=True,
    )
    if kind == RE10K:
        return ILRMNetworkConfig(
            **common,
            viewpoint_factor=1,
            uplift=1,
            sh_degree=0,
            pixel_offset=False,
            viewpoint_features=("moment", "direction"),
            image_features=("rgb", "moment", "direction"),
            head_channel_order=("distance", "sh", "scale", "rotation", "opacity"),
        )
    head_out = _shape(state, "viewpoint_token_decoder.1.weight", path, kind)[0]
    sh_coefficients = (head_out // patch**2 - (2 + 3 + 3 + 4 + 1)) // 3
    sh_degree = round(sh_coefficients**0.5) - 1
    uplift = _shape(state, "processor.blocks.0.read_cross.q.weight", path, kind)[0] // width
    return ILRMNetworkConfig(
        **common,
        viewpoint_factor=2,
        uplift=uplift,
        uplift_layout="interleaved",
        sh_degree=max(sh_degree, 0),
        pixel_offset=True,
        viewpoint_features=("origin", "direction", "moment"),
        image_features=("origin", "direction", "moment", "rgb"),
        head_channel_order=("offset", "distance", "sh", "scale", "rotation", "opacity"),
    )


def map_state_dict(
    kind: str, state: dict[str, Tensor], network: ILRM, path: Path | str = "checkpoint"
) -> dict[str, Tensor]:
    """Their state dict -> ours through `KEY_TABLE`; every key and shape must match exactly."""
    path = Path(path)
    ours = network.state_dict()
    mapped, used = {}, set()
    for our_key, their_key, part, parts in key_pairs(kind, network.config.num_layers):
        if their_key not in state:
            raise ILRMError(f"{path}: {kind} checkpoint without '{their_key}' (truncated or a different model?)")
        tensor = state[their_key]
        if parts > 1:
            tensor = tensor.chunk(parts, dim=0)[part]
        if tuple(tensor.shape) != tuple(ours[our_key].shape):
            raise ILRMError(
                f"{path}: '{their_key}' has shape {list(state[their_key].shape)}, expected one giving "
                f"{list(ours[our_key].shape)} for {our_key}"
            )
        mapped[our_key] = tensor
        used.add(their_key)
    unexpected = sorted(set(state) - used)
    if unexpected:
        raise ILRMError(
            f"{path}: {kind} checkpoint with {len(unexpected)} unexpected network key(s), e.g. "
            f"'{unexpected[0]}' (a different model?)"
        )
    missing = sorted(set(ours) - set(mapped))
    if missing:  # the table must cover our whole network
        raise ILRMError(
            f"{path}: no published weights for {missing[0]} (network options that the published models lack?)"
        )
    return mapped


def load_published_network(path: str | Path, device: str | torch.device = "cpu", trusted: bool | None = None) -> ILRM:
    """A published iLRM checkpoint as this package's `ILRM`: eval mode, parameters frozen, the
    file's protocol in `.published_protocol`. Anything else raises ILRMError naming the file.
    `trusted` (or ILRM_TRUST_CHECKPOINTS=1) allows files that need full unpickling."""
    path = Path(path)
    kind, state = read_published(path, trusted)
    config = published_network_config(kind, state, path)
    network = ILRM(config)
    network.load_state_dict({k: v.float() for k, v in map_state_dict(kind, state, network, path).items()}, strict=True)
    network.eval().requires_grad_(False).to(device)
    network.published_protocol = protocol_for(
        kind, _views_from_name(path) if kind == DL3DV else None, config.size_multiple
    )
    network.published_path = str(path)
    return network
