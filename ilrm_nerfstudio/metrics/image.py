"""Image metrics (PSNR, SSIM, LPIPS) and the LPIPS-VGG perceptual loss (pure PyTorch).

Evaluation protocol shared by pixelSplat / MVSplat / DepthSplat / iLRM, reproduced here:

- PSNR on images clipped to [0, 1]: ``-10 * log10(mean((pred - target)**2))`` per image.
- SSIM = ``skimage.metrics.structural_similarity(gt, pred, win_size=11, gaussian_weights=True,
  data_range=1.0, channel_axis=0)``. The peers leave ``use_sample_covariance`` at skimage's default
  (True), so the (weighted) variances are multiplied by ``NP / (NP - 1)`` with ``NP = 11**2`` even
  though the window is Gaussian. :func:`ssim` defaults to exactly that; pass
  ``use_sample_covariance=False`` for the Wang et al. 2004 definition.
- LPIPS with the VGG trunk (``lpips.LPIPS(net="vgg")``), inputs in [0, 1] (``normalize=True``).
- Scores are per image (``Tensor[B]``); average over the targets of a scene, then over scenes.

SSIM details (skimage >= 0.19): the Gaussian filter is ``scipy.ndimage.gaussian_filter`` with
``sigma=1.5, truncate=3.5`` (radius ``int(3.5 * 1.5 + 0.5) = 5``: 11 taps, normalized to sum 1),
``mode="reflect"`` (half-sample symmetric), applied per channel; the SSIM map is then cropped by
``(win_size - 1) // 2 = 5`` pixels on every side and averaged, then averaged over channels. With
the default parameters the crop equals the filter radius, so border handling never reaches the
averaged region and a "valid" convolution is exact; other ``sigma`` / ``win_size`` combinations
use an explicit symmetric padding so the result still matches skimage.

Perceptual loss and the VGG weights
-----------------------------------
``lpips`` 0.1.4 builds its trunk with ``torchvision.models.vgg16(pretrained=True)`` (the legacy
keyword, mapped by torchvision to ``weights=VGG16_Weights.IMAGENET1K_V1``), which calls
``torch.hub.load_state_dict_from_url("https://download.pytorch.org/models/vgg16-397923af.pth")``:
the file is read from ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth`` when it exists (no
hash check, no network) and downloaded there otherwise (hash-checked). Only lpips's small
linear-layer weights (``lpips/weights/v0.1/vgg.pth``) ship inside the pip package.

:class:`PerceptualLoss` builds the module structure of ``lpips.LPIPS(net="vgg", pnet_rand=True,
pretrained=False)`` on the meta device (no download, no random init of the 138M-parameter VGG16
of which lpips keeps 15M), then fills it with a strict ``load_state_dict``: the VGG16 ``features``
weights from that same hub-cache file (downloaded through ``torch.hub`` only when missing), lpips's
packaged linear layers and its input-scaling constants. The result is the same module, with the
same values, as ``lpips.LPIPS(net="vgg")`` (checked in the tests), but construction takes well
under a second and a failure surfaces as one :class:`RuntimeError` that says what failed, where
the file is expected and how to proceed (``--pipeline.model.lpips-weight 0``).

Keeping the VGG out of checkpoints: :class:`PerceptualLoss` holds the lpips network outside
``nn.Module``'s registry (no parameters, buffers or submodules are registered), so it contributes
nothing to ``state_dict()`` / ``parameters()`` / optimizers / DDP even when it is an attribute of
the nerfstudio model, yet ``.to()`` / ``.cuda()`` still move it (``_apply`` is forwarded) and
``.train()`` never takes it out of eval mode. Loading ignores any stale ``<prefix>.*`` entries an
older checkpoint may hold under its name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "VGG16_URL",
    "VGG16_FILENAME",
    "PerceptualLoss",
    "PerceptualWeightsError",
    "clear_perceptual_cache",
    "image_metrics",
    "load_perceptual",
    "lpips_metric",
    "psnr",
    "ssim",
    "vgg16_cache_path",
]

logger = logging.getLogger(__name__)

# torchvision.models.VGG16_Weights.IMAGENET1K_V1.url (checked in the tests).
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILENAME = os.path.basename(VGG16_URL)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _check_images(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.dim() != 4:
        raise ValueError(f"{name}: expected images [B, C, H, W], got shape {tuple(pred.shape)}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (fp16, bf16, ints, fp32) is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _no_autocast(device: torch.device):
    """Disable autocast for `device` (metrics and SSIM are computed in fp32/fp64)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # device type without autocast support
        return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# PSNR
# --------------------------------------------------------------------------------------------


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of images [B, C, H, W] clipped to [0, 1] -> Tensor[B].

    Identical images give ``inf`` (as in the peers' ``-10 * mse.log10()``).
    """
    _check_images(pred, target, "psnr")
    dtype = _compute_dtype(pred)
    with _no_autocast(pred.device):
        p = pred.to(dtype).clamp(0.0, 1.0)
        t = target.to(dtype).clamp(0.0, 1.0)
        mse = (p - t).square().flatten(1).mean(dim=1)
        return -10.0 * torch.log10(mse)


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------


def _gaussian_kernel1d(sigma: float, radius: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """scipy.ndimage's 1-D Gaussian kernel (computed in float64, normalized to sum 1)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * x * x / (sigma * sigma))
    return (k / k.sum()).to(dtype=dtype, device=device)


def _reflect_indices(n: int, pad: int, device: torch.device) -> Tensor:
    """Indices of scipy.ndimage mode="reflect" (d c b a | a b c d | d c b a) padding by `pad`."""
    idx = torch.arange(-pad, n + pad, device=device)
    idx = torch.remainder(idx, 2 * n)
    return torch.where(idx >= n, 2 * n - 1 - idx, idx)


def ssim(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    use_sample_covariance: bool = True,
    k1: float = 0.01,
    k2: float = 0.03,
    clip: bool = False,
) -> Tensor:
    """Per-image SSIM of images [B, C, H, W] -> Tensor[B] (mean over pixels and channels).

    Equals ``skimage.metrics.structural_similarity(target[b], pred[b], win_size=win_size,
    gaussian_weights=True, sigma=sigma, use_sample_covariance=use_sample_covariance,
    data_range=data_range, channel_axis=0)`` for every b. The defaults are the peers' evaluation
    protocol. Differentiable (usable as a loss), batched, any device; computed in float32 (float64
    for float64 inputs) with autocast disabled. ``clip=True`` clamps both images to [0, 1] first.
    """
    _check_images(pred, target, "ssim")
    if win_size % 2 != 1:
        raise ValueError(f"ssim: win_size must be odd, got {win_size}")
    if sigma <= 0:
        raise ValueError(f"ssim: sigma must be positive, got {sigma}")
    B, C, H, W = pred.shape
    if min(H, W) < win_size:
        raise ValueError(f"ssim: images {H}x{W} are smaller than win_size={win_size}")

    dtype = _compute_dtype(pred)
    device = pred.device
    radius = int(3.5 * sigma + 0.5)  # skimage: truncate=3.5 (11 taps for sigma=1.5)
    crop = (win_size - 1) // 2  # skimage crops this many pixels on each border before averaging
    pad = max(radius - crop, 0)  # symmetric padding needed so that the cropped region is exact
    start = crop + pad - radius  # offset of the first kept pixel in the "valid" filter output

    with _no_autocast(device):
        x = pred.to(dtype)
        y = target.to(dtype)
        if clip:
            x, y = x.clamp(0.0, 1.0), y.clamp(0.0, 1.0)
        stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
        if pad > 0:
            stack = stack.index_select(2, _reflect_indices(H, pad, device))
            stack = stack.index_select(3, _reflect_indices(W, pad, device))
        k = _gaussian_kernel1d(sigma, radius, dtype, device)
        n = stack.shape[1]
        stack = F.conv2d(stack, k.view(1, 1, -1, 1).expand(n, 1, -1, 1), groups=n)
        stack = F.conv2d(stack, k.view(1, 1, 1, -1).expand(n, 1, 1, -1), groups=n)
        h_out, w_out = H - 2 * crop, W - 2 * crop
        stack = stack[:, :, start : start + h_out, start : start + w_out]
        ux, uy, uxx, uyy, uxy = stack.split(C, dim=1)

        npix = win_size * win_size
        cov_norm = npix / (npix - 1.0) if use_sample_covariance else 1.0
        vx = cov_norm * (uxx - ux * ux)
        vy = cov_norm * (uyy - uy * uy)
        vxy = cov_norm * (uxy - ux * uy)
        c1 = (k1 * data_range) ** 2
        c2 = (k2 * data_range) ** 2
        num = (2.0 * ux * uy + c1) * (2.0 * vxy + c2)
        den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
        return (num / den).flatten(1).mean(dim=1)


# --------------------------------------------------------------------------------------------
# LPIPS (VGG) perceptual loss
# --------------------------------------------------------------------------------------------


class PerceptualWeightsError(RuntimeError):
    """The LPIPS-VGG perceptual network could not be built (usually: VGG16 weights missing offline)."""


def vgg16_cache_path() -> str:
    """Where torchvision / torch.hub keep the ImageNet VGG16 weights: <hub dir>/checkpoints/<file>."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILENAME)


def _weights_error(what: str) -> PerceptualWeightsError:
    path = vgg16_cache_path()
    return PerceptualWeightsError(
        "Could not set up the LPIPS (VGG) perceptual network: "
        f"{what}\n"
        "  The lpips package (net='vgg') needs torchvision's ImageNet VGG16 weights, which torchvision "
        "fetches from the internet into the torch hub cache (torch.hub.get_dir()/checkpoints; "
        "TORCH_HOME moves it). Expected file:\n"
        f"    {path}\n"
        "  (lpips's own linear-layer weights ship inside the pip package; only this file comes from the internet.)\n"
        "  To fix it, either run once with internet access, e.g.\n"
        "    python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\"\n"
        f"  or download {VGG16_URL} on another machine and copy it to the path above.\n"
        "  To train without the perceptual term instead, set the loss weight to 0 (config option "
        "lpips_weight): --pipeline.model.lpips-weight 0"
    )


def _load_vgg16_state_dict(allow_download: bool) -> Dict[str, Tensor]:
    """The torchvision VGG16 ImageNet state_dict from the hub cache (downloading it if allowed).

    Reads through ``torch.hub.load_state_dict_from_url`` exactly like torchvision does (so every
    file torchvision accepts is accepted, including the legacy pre-zip serialization of the real
    2017 file), but with ``weights_only=True``; it only downloads when the file is absent.
    """
    path = vgg16_cache_path()
    cached = os.path.isfile(path)
    if not cached and not allow_download:
        raise _weights_error(
            "the VGG16 weights are not in the torch hub cache and downloading is disabled "
            "(allow_download=False)."
        )
    try:
        return torch.hub.load_state_dict_from_url(
            VGG16_URL,
            model_dir=os.path.dirname(path),
            map_location="cpu",
            progress=True,
            check_hash=True,  # applies to downloads only, as in torchvision
            weights_only=True,
        )
    except Exception as err:
        if cached:  # truncated / corrupt file
            raise _weights_error(
                f"reading the cached VGG16 weights {path} failed ({type(err).__name__}: {err}); "
                "delete the file and fetch it again."
            ) from err
        # offline: URLError / OSError; bad download: RuntimeError (hash mismatch)
        raise _weights_error(
            f"the VGG16 weights are not in the torch hub cache and downloading {VGG16_URL} failed "
            f"({type(err).__name__}: {err})."
        ) from err


# Convolutions of torchvision's VGG16 (configuration "D") `features`, used by the LPIPS trunk.
_VGG16_CONV_KEYS = [
    f"features.{i}.{kind}"
    for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    for kind in ("weight", "bias")
]


def _build_lpips_vgg(allow_download: bool) -> nn.Module:
    """lpips.LPIPS(net="vgg") with the trunk weights loaded from the hub cache; frozen, eval mode."""
    try:
        import lpips  # imports torchvision
    except ImportError as err:
        raise PerceptualWeightsError(
            f"the 'lpips' package cannot be imported ({err}); install it with `pip install lpips`, "
            "or train without the perceptual term: --pipeline.model.lpips-weight 0"
        ) from err

    # Resolve the weights first: fail fast when offline, before building anything.
    vgg_sd = _load_vgg16_state_dict(allow_download)
    missing = [k for k in _VGG16_CONV_KEYS if k not in vgg_sd] if isinstance(vgg_sd, dict) else ["all"]
    if missing:
        raise _weights_error(
            f"{vgg16_cache_path()} is not a torchvision VGG16 state_dict (missing {missing[:4]}...); "
            "delete the file and fetch it again."
        )
    # lpips's calibrated linear layers, shipped in the pip package (what LPIPS(pretrained=True) reads).
    lin_path = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
    try:
        lin_sd = torch.load(lin_path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PerceptualWeightsError(
            f"the lpips package's own weights {lin_path} cannot be read ({type(err).__name__}: {err}); "
            "reinstall lpips (`pip install --force-reinstall lpips`), or train without the perceptual "
            "term: --pipeline.model.lpips-weight 0"
        ) from err

    # Build the module structure on the meta device (no allocation, no random init of torchvision's
    # 138M-parameter VGG16 of which lpips keeps only the 15M-parameter `features`), then materialize
    # it and fill *every* entry with a strict load: nothing is left uninitialized.
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", UserWarning)  # lpips passes torchvision's legacy `pretrained=`
        model = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
    model = model.to_empty(device="cpu")
    scaling = type(model.scaling_layer)().state_dict()  # lpips's input-normalization constants

    full = {}
    for name, tensor in model.state_dict().items():
        parts = name.split(".")
        if parts[0] == "scaling_layer":
            src = scaling.get(parts[1])
        elif parts[0] == "net" and len(parts) == 4 and parts[1].startswith("slice"):
            # The trunk keeps torchvision's `features` indices as child names:
            # net.slice{1..5}.{i}.{weight,bias} <- features.{i}.{weight,bias}.
            key = f"features.{parts[2]}.{parts[3]}"
            src = vgg_sd.get(key)
            if src is None or tuple(src.shape) != tuple(tensor.shape):
                raise _weights_error(
                    f"{vgg16_cache_path()} is not a torchvision VGG16 state_dict (entry {key!r} is "
                    f"{'missing' if src is None else 'of shape ' + str(tuple(src.shape))}, expected "
                    f"{tuple(tensor.shape)}); delete the file and fetch it again."
                )
        elif parts[0].startswith("lin") and parts[0][3:].isdigit():  # lin0..lin4.model.1.weight
            src = lin_sd.get(name)
        elif parts[0] == "lins" and len(parts) > 2:  # lins.k.* is the same module as lin{k}.*
            src = lin_sd.get(".".join([f"lin{parts[1]}"] + parts[2:]))
        else:
            src = None
        if src is None:
            raise PerceptualWeightsError(
                f"unexpected lpips entry {name!r}: this lpips version ({getattr(lpips, '__version__', '?')}) "
                "is not supported; use lpips 0.1.x, or train without the perceptual term: "
                "--pipeline.model.lpips-weight 0"
            )
        full[name] = src
    model.load_state_dict(full, strict=True)
    del vgg_sd, full

    model.requires_grad_(False)
    model.eval()
    return model


class PerceptualLoss(nn.Module):
    """LPIPS with the VGG trunk (``lpips.LPIPS(net="vgg")``), frozen and in eval mode.

    ``forward(pred, target)`` takes images [B, 3, H, W] in [0, 1] and returns the per-image
    distance Tensor[B] (differentiable w.r.t. the inputs; the caller reduces, e.g. ``.mean()``).
    Construction raises :class:`PerceptualWeightsError` (a ``RuntimeError``) with instructions when
    the VGG16 weights cannot be loaded.

    The lpips network is *not* registered as a submodule: this module has no parameters, buffers or
    children, so it adds nothing to ``state_dict()`` (no 60 MB of VGG in every checkpoint) nor to
    ``parameters()``; ``.to()/.cuda()/.float()`` are forwarded to it, ``.train()`` leaves it in
    eval mode. Access it through :attr:`network`.

    Args:
        allow_download: fetch the VGG16 weights through torch.hub when they are not cached.
        force_fp32: run the network in float32 with autocast disabled (inputs are cast).
    """

    def __init__(self, allow_download: bool = True, force_fp32: bool = True) -> None:
        super().__init__()
        self.force_fp32 = force_fp32
        # A plain list hides the module from nn.Module's registry (see the class docstring).
        self._holder = [_build_lpips_vgg(allow_download)]

    @property
    def network(self) -> nn.Module:
        """The underlying ``lpips.LPIPS`` module."""
        return self._holder[0]

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def _apply(self, fn, *args, **kwargs):  # forwards .to()/.cuda()/.half() to the hidden network
        super()._apply(fn, *args, **kwargs)
        self._holder[0] = self._holder[0]._apply(fn)
        self._holder[0].requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.network.eval()  # dropout in lpips's linear layers must stay off
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # Nothing is stored; silently ignore entries an older checkpoint may hold under `prefix`.
        return

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_images(pred, target, "PerceptualLoss")
        if pred.shape[1] != 3:
            raise ValueError(f"PerceptualLoss: expected 3 channels, got {pred.shape[1]}")
        net = self.network
        if self.force_fp32:
            dtype = next(net.parameters()).dtype
            with _no_autocast(pred.device):
                out = net(pred.to(dtype), target.to(dtype), normalize=True)
        else:
            out = net(pred, target, normalize=True)
        return out.reshape(out.shape[0])

    def extra_repr(self) -> str:
        return f"lpips vgg (not in state_dict), force_fp32={self.force_fp32}"


_warned_unavailable = False
# Lazily built process-wide instance for lpips_metric(); holds a PerceptualLoss or the error.
_shared: Optional[Union[PerceptualLoss, RuntimeError]] = None


def _warn_unavailable(err: Exception) -> None:
    global _warned_unavailable
    if not _warned_unavailable:
        _warned_unavailable = True
        logger.warning("LPIPS is unavailable and will be omitted from the metrics.\n%s", err)


def load_perceptual(
    required: bool = True,
    *,
    allow_download: bool = True,
    device: Optional[Union[str, torch.device]] = None,
) -> Optional[PerceptualLoss]:
    """Build a :class:`PerceptualLoss`, or handle failure.

    ``required=True`` (training with ``lpips_weight > 0``): failures raise
    :class:`PerceptualWeightsError` (a ``RuntimeError``) explaining what is missing.
    ``required=False`` (evaluation): failures log one warning per process and return ``None``; the
    caller then omits the LPIPS metric. A failure is remembered for :func:`lpips_metric`, which then
    does not try again.
    """
    global _shared
    try:
        module = PerceptualLoss(allow_download=allow_download)
    except RuntimeError as err:
        if _shared is None:
            _shared = err  # lpips_metric() will not retry (nor re-attempt a download) either
        if required:
            raise
        _warn_unavailable(err)
        return None
    if device is not None:
        module = module.to(device)
    return module


def clear_perceptual_cache() -> None:
    """Forget the shared LPIPS instance (or cached failure) used by :func:`lpips_metric`."""
    global _shared, _warned_unavailable
    _shared = None
    _warned_unavailable = False


def lpips_metric(
    pred: Tensor,
    target: Tensor,
    model: Optional[PerceptualLoss] = None,
    *,
    required: bool = False,
) -> Optional[Tensor]:
    """Per-image LPIPS-VGG (inputs [B, 3, H, W] in [0, 1]) -> Tensor[B], computed without grad.

    Uses `model` when given (e.g. the training loss module, to avoid a second VGG), else a lazily
    built shared instance (built once per process; a failure is remembered, not retried). When the
    network is unavailable: ``required=False`` returns ``None`` (one warning per process),
    ``required=True`` raises the :class:`PerceptualWeightsError`.
    """
    global _shared
    if model is None:
        if _shared is None:
            try:
                _shared = PerceptualLoss()
            except RuntimeError as err:
                _shared = err
        if isinstance(_shared, RuntimeError):
            if required:
                raise _shared
            _warn_unavailable(_shared)
            return None
        model = _shared
    if model.device != pred.device:
        model.to(pred.device)
    with torch.no_grad():
        return model(pred, target)


def image_metrics(
    pred: Tensor,
    target: Tensor,
    perceptual: Optional[PerceptualLoss] = None,
    *,
    with_lpips: bool = True,
    clip: bool = True,
) -> Dict[str, Tensor]:
    """Evaluation metrics of images [B, 3, H, W]: {"psnr", "ssim"[, "lpips"]} each Tensor[B].

    ``clip`` clamps both images to [0, 1] first (PSNR always clips; the peers' SSIM/LPIPS see the
    renderer output as is, which for a clamped renderer is the same). "lpips" is present when
    ``with_lpips`` and the network is available (`perceptual`, else the shared instance of
    :func:`lpips_metric`); otherwise it is omitted after one logged warning.
    """
    with torch.no_grad():
        if clip:
            pred, target = pred.clamp(0.0, 1.0), target.clamp(0.0, 1.0)
        out = {"psnr": psnr(pred, target), "ssim": ssim(pred, target)}
        if with_lpips:
            value = lpips_metric(pred, target, perceptual)
            if value is not None:
                out["lpips"] = value
    return out


def _gaussian_band(n: int, sigma: float, radius: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[n, n - 2 radius]: column j is the normalized Gaussian window centered on row j + radius
    (a "valid" 1-D convolution as a matrix product)."""
    kernel = _gaussian_kernel1d(sigma, radius, dtype, device)
    band = torch.zeros(n, n - 2 * radius, dtype=dtype, device=device)
    columns = torch.arange(n - 2 * radius, device=device)
    for k in range(2 * radius + 1):
        band[columns + k, columns] = kernel[k]
    return band


def training_ssim(pred: Tensor, target: Tensor, sigma: float = 1.5, radius: int = 5) -> Tensor:
    """SSIM as 3D Gaussian splatting trains with it (Gaussian window 11, sigma 1.5, valid region,
    data range 1; the same value as pytorch_msssim.ssim), per image [B]. The window sums are
    products with banded matrices: on a CPU several times faster than convolutions, and
    differentiable. Evaluation uses `ssim` (skimage's protocol)."""
    _check_images(pred, target, "training_ssim")
    height, width = pred.shape[-2:]
    rows = _gaussian_band(height, sigma, radius, pred.dtype, pred.device)
    cols = _gaussian_band(width, sigma, radius, pred.dtype, pred.device)

    def blur(x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, C, H - 2r, W - 2r]
        return rows.T @ (x @ cols)

    c1, c2 = 0.01**2, 0.03**2
    mu_p, mu_t = blur(pred), blur(target)
    var_p = blur(pred * pred) - mu_p * mu_p
    var_t = blur(target * target) - mu_t * mu_t
    cov = blur(pred * target) - mu_p * mu_t
    value = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p * mu_p + mu_t * mu_t + c1) * (var_p + var_t + c2))
    return value.mean(dim=(1, 2, 3))
