"""LPIPS with the VGG trunk (metric and training loss): a thin wrapper around ``lpips.LPIPS(net="vgg")``.

lpips ships its own linear layers; the VGG16 trunk is torchvision's ImageNet checkpoint, read from
the torch hub cache. When that file is missing it is downloaded once (with a timeout); when that
fails (offline), :func:`load_perceptual` raises (or warns) with how to get it.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings

import torch
from torch import Tensor, nn

from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.core.precision import no_autocast

__all__ = ["VGG16_URL", "PerceptualLoss", "clear_perceptual_cache", "load_perceptual", "vgg16_weights_path"]

logger = logging.getLogger(__name__)

# torchvision.models.VGG16_Weights.IMAGENET1K_V1.url, the file lpips's trunk loads.
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
_FETCH = "python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\""
_WITHOUT = "or train without LPIPS: --pipeline.model.lpips-weight 0"


def vgg16_weights_path() -> str:
    """Where torchvision looks for the VGG16 weights: ``torch.hub.get_dir()/checkpoints/<file>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(VGG16_URL))


class PerceptualLoss(nn.Module):
    """LPIPS-VGG distance of images [B, 3, H, W] in [0, 1] -> Tensor[B], differentiable w.r.t. the
    images. The network is frozen, stays in eval mode and runs in float32 with autocast off."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # eval mode always: lpips's linear layers have dropout

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"lpips: expected two images [B, 3, H, W] of one shape, got {tuple(pred.shape)} "
                f"and {tuple(target.shape)}"
            )
        with no_autocast(pred.device):
            return self.network(pred.float(), target.float(), normalize=True).flatten()


DOWNLOAD_TIMEOUT_S = 20.0  # an offline machine fails at once; a black-holed network waits this long


def _download(path: str) -> str | None:
    """Fetch the VGG16 weights into the hub cache; None on success, else why it failed."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(VGG16_URL, path, progress=False)
        return None
    except Exception as error:  # offline, proxy, disk full: the message says what to do
        return " ".join(f"{type(error).__name__}: {error}".split())[:200]
    finally:
        socket.setdefaulttimeout(previous)


def _build() -> PerceptualLoss:
    path = vgg16_weights_path()
    failure = _download(path) if not os.path.isfile(path) else None
    if not os.path.isfile(path):
        raise ILRMError(
            f"LPIPS needs torchvision's ImageNet VGG16 weights, and {path} is missing (torch hub looks in "
            f"torch.hub.get_dir()/checkpoints = {os.path.dirname(path)}; TORCH_HOME moves it); downloading it "
            f"failed ({failure}). Download {VGG16_URL} to that path, or fetch it once with internet access: "
            f"{_FETCH}; {_WITHOUT}"
        )
    try:
        import lpips
    except ImportError as error:
        raise ILRMError(f"LPIPS needs the lpips package ({error}): pip install lpips; {_WITHOUT}") from error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision deprecates the `pretrained=True` lpips passes
            network = lpips.LPIPS(net="vgg", verbose=False)
    except Exception as error:  # a truncated download, or not a VGG16 state dict
        reason = " ".join(str(error).split())  # one line (load_state_dict lists the keys on several)
        reason = reason if len(reason) <= 300 else reason[:300] + "..."
        raise ILRMError(
            f"LPIPS could not load the VGG16 weights {path} ({type(error).__name__}: {reason}); delete it, "
            f"then download {VGG16_URL} to that path or fetch it with internet access: {_FETCH}; {_WITHOUT}"
        ) from error
    return PerceptualLoss(network)


# One module (or the error that building it raised) per device, shared by all callers.
_cache: dict[torch.device, PerceptualLoss | ILRMError] = {}
_warned = False


def _as_device(device: str | torch.device | None) -> torch.device:
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def load_perceptual(required: bool, device: str | torch.device | None = None) -> PerceptualLoss | None:
    """The shared :class:`PerceptualLoss` on `device` (default CPU), built on first use.

    When it cannot be built (VGG16 weights missing offline, lpips not installed), ``required=True``
    raises the :class:`ILRMError`; ``required=False`` logs it once per process and returns None.
    The failure is remembered: no further attempt on that device.
    """
    global _warned
    device = _as_device(device)
    entry = _cache.get(device)
    if entry is None or (isinstance(entry, PerceptualLoss) and entry.device != device):  # new, or moved by a caller
        try:
            entry = _build().to(device)
        except ILRMError as error:
            entry = error
        _cache[device] = entry
    if isinstance(entry, ILRMError):
        if required:
            raise entry
        if not _warned:
            _warned = True
            logger.warning("LPIPS is left out of the metrics: %s", entry)
        return None
    return entry


def clear_perceptual_cache() -> None:
    """Forget the shared modules and failures (and the warning already given)."""
    global _warned
    _cache.clear()
    _warned = False
