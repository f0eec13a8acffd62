"""Tests for ilrm_nerfstudio.metrics: PSNR, SSIM (vs skimage) and LPIPS-VGG (vs the lpips package).

The LPIPS tests never touch the network: the torch hub directory is redirected to a temporary
folder and ``torch.hub.download_url_to_file`` is replaced by a function that raises. The "weights
present" path uses a randomly initialized torchvision VGG16 state_dict written into that folder as
``checkpoints/vgg16-397923af.pth``.
"""

from __future__ import annotations

import logging
import math
import os
import urllib.error
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from ilrm_nerfstudio import metrics as M
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.metrics import perceptual as P

skimage_metrics = pytest.importorskip("skimage.metrics")


# ------------------------------------------------------------------------------------------------
# PSNR
# ------------------------------------------------------------------------------------------------


def test_psnr_hand_computed():
    target = torch.full((2, 3, 4, 5), 0.5)
    pred = target.clone()
    pred[0] = 0.0  # error 0.5 everywhere -> mse 0.25
    pred[1, :, :2] = 0.6  # error 0.1 on 2 of 4 rows -> mse 0.005
    out = M.psnr(pred, target)
    assert out.shape == (2,)
    expected = torch.tensor([-10 * math.log10(0.25), -10 * math.log10(0.005)])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_psnr_clips_to_unit_range():
    target = torch.full((1, 3, 4, 4), 0.5)
    pred = torch.full((1, 3, 4, 4), 1.7)  # clipped to 1 -> error 0.5
    torch.testing.assert_close(M.psnr(pred, target), torch.tensor([-10 * math.log10(0.25)]))
    assert torch.isinf(M.psnr(target, target)).all()  # as the peers' -10 * log10(mse)


# ------------------------------------------------------------------------------------------------
# SSIM
# ------------------------------------------------------------------------------------------------


def _skimage_ssim(pred: torch.Tensor, target: torch.Tensor, **kw) -> np.ndarray:
    return np.array(
        [
            skimage_metrics.structural_similarity(
                t.numpy(),
                p.numpy(),
                win_size=kw.get("win_size", 11),
                gaussian_weights=True,
                sigma=kw.get("sigma", 1.5),
                use_sample_covariance=kw.get("use_sample_covariance", True),
                data_range=1.0,
                channel_axis=0,
            )
            for p, t in zip(pred, target)
        ]
    )


def _structured(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Smooth gradients, stripes, a checkerboard and a disk: edges and flat regions."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    imgs = []
    for _ in range(b):
        f = torch.rand(3, generator=g) * 10 + 2
        ch0 = 0.5 + 0.5 * torch.sin(f[0] * xx + f[1] * yy)
        ch1 = ((torch.arange(h)[:, None] // 4 + torch.arange(w)[None] // 4) % 2).float()
        r = torch.rand(1, generator=g).item() * 0.3 + 0.2
        ch2 = (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < r * r).float() * 0.8 + 0.1 * xx
        imgs.append(torch.stack([ch0, ch1, ch2]))
    return torch.stack(imgs).double()


@pytest.mark.parametrize(
    "hw,use_sample_covariance",
    [((32, 48), True), ((64, 64), True), ((48, 33), True), ((11, 20), True), ((32, 48), False), ((64, 64), False)],
)
def test_ssim_matches_skimage(hw, use_sample_covariance):
    h, w = hw
    g = torch.Generator().manual_seed(h * 100 + w)
    # Random images, and structured images with structured + random degradations.
    rand_t = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64)
    rand_p = (rand_t + 0.3 * torch.randn(2, 3, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    str_t = _structured(2, h, w, seed=1)
    str_p = (
        0.8 * str_t.roll(2, dims=-1) + 0.1 + 0.05 * torch.randn(str_t.shape, generator=g, dtype=torch.float64)
    ).clamp(0, 1)
    for pred, target in [(rand_p, rand_t), (str_p, str_t), (str_t, _structured(2, h, w, seed=2))]:
        ref = _skimage_ssim(pred, target, use_sample_covariance=use_sample_covariance)
        ours64 = M.ssim(pred, target, use_sample_covariance=use_sample_covariance)
        assert ours64.dtype == torch.float64 and ours64.shape == (2,)
        np.testing.assert_allclose(ours64.numpy(), ref, rtol=0, atol=1e-10)
        ours32 = M.ssim(pred.float(), target.float(), use_sample_covariance=use_sample_covariance)
        assert ours32.dtype == torch.float32
        np.testing.assert_allclose(ours32.double().numpy(), ref, rtol=0, atol=1e-5)
        # The peers feed float32 arrays to skimage.
        ref32 = _skimage_ssim(pred.float(), target.float(), use_sample_covariance=use_sample_covariance)
        np.testing.assert_allclose(ours32.double().numpy(), ref32, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sigma,win_size", [(1.5, 7), (2.0, 11), (1.0, 11)])
def test_ssim_matches_skimage_other_windows(sigma, win_size):
    """Filter radius != crop: exercises the scipy-"reflect" border padding."""
    g = torch.Generator().manual_seed(7)
    target = torch.rand(2, 3, 24, 31, generator=g, dtype=torch.float64)
    pred = (target + 0.2 * torch.randn(target.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ref = _skimage_ssim(pred, target, sigma=sigma, win_size=win_size)
    ours = M.ssim(pred, target, sigma=sigma, win_size=win_size)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-10)


def test_ssim_identity_and_noise_monotonic():
    target = _structured(2, 40, 56, seed=3).float()
    torch.testing.assert_close(M.ssim(target, target), torch.ones(2), rtol=0, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(target.shape, generator=g)
    values = [M.ssim((target + s * noise).clamp(0, 1), target) for s in (0.01, 0.05, 0.1, 0.3)]
    for a, b in zip(values, values[1:]):
        assert (a > b).all()
    assert (values[0] < 1).all()


def test_ssim_gradients():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 16, 20, generator=g)
    pred = torch.rand(2, 3, 16, 20, generator=g).requires_grad_(True)
    (1 - M.ssim(pred, target)).mean().backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # Exact gradient check in float64 (small image, with the padded code path too).
    p = torch.rand(1, 1, 11, 12, generator=g, dtype=torch.float64).requires_grad_(True)
    t = torch.rand(1, 1, 11, 12, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: M.ssim(x, t), (p,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x: M.ssim(x, t, win_size=7), (p,), fast_mode=True)


def test_ssim_low_precision_and_autocast():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 32, 32, generator=g)
    pred = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    ref = M.ssim(pred, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = M.ssim(pred, target)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, ref)
    bf = M.ssim(pred.bfloat16(), target.bfloat16())
    assert bf.dtype == torch.float32 and torch.allclose(bf, ref, atol=2e-2)


def test_ssim_input_validation():
    with pytest.raises(ValueError):
        M.ssim(torch.rand(1, 3, 8, 20), torch.rand(1, 3, 8, 20))  # smaller than the window
    with pytest.raises(ValueError):
        M.ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError):
        M.ssim(torch.rand(3, 16, 16), torch.rand(3, 16, 16))


# ------------------------------------------------------------------------------------------------
# LPIPS (never touches the network)
# ------------------------------------------------------------------------------------------------


def _blocked_download(calls):
    def no_download(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network disabled in tests")

    return no_download


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """Empty torch hub dir + a download function that records its calls and raises."""
    hub = tmp_path / "hub"
    calls = []
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _blocked_download(calls))
    P.clear_perceptual_cache()
    yield hub, calls
    P.clear_perceptual_cache()


def _write_random_vgg16(path) -> dict:
    """A randomly initialized (untrained) torchvision VGG16 state_dict, saved like the real file
    (legacy non-zip serialization, as torchvision's 2017 vgg16-397923af.pth). Returns a few
    entries for comparison."""
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):  # skip torchvision's slow init of the 120M classifier weights
        model = torchvision.models.vgg16()
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                m.bias.copy_(0.01 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.zero_()
                m.bias.zero_()
    state = model.state_dict()
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return {k: state[k].clone() for k in ("features.0.weight", "features.28.bias")}


@pytest.fixture(scope="module")
def cached_env(tmp_path_factory):
    """Hub cache holding random VGG16 weights, downloads blocked, and the shared CPU module built."""
    hub = tmp_path_factory.mktemp("hub_cached")
    (hub / "checkpoints").mkdir()
    path = hub / "checkpoints" / os.path.basename(P.VGG16_URL)
    entries = _write_random_vgg16(path)
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.hub, "_hub_dir", str(hub))
        mp.setattr(torch.hub, "download_url_to_file", _blocked_download(calls))
        P.clear_perceptual_cache()
        loss_fn = M.load_perceptual(required=True)
        yield SimpleNamespace(hub=hub, path=path, calls=calls, loss_fn=loss_fn, entries=entries)
        P.clear_perceptual_cache()


def test_package_api():
    from ilrm_nerfstudio.metrics import (  # noqa: F401
        image_metrics,
        load_perceptual,
        mean_color_baseline,
        nearest_view_baseline,
        psnr,
        ssim,
        training_ssim,
    )

    assert load_perceptual is P.load_perceptual
    assert not hasattr(M, "PerceptualWeightsError") and not hasattr(P, "PerceptualWeightsError")


def test_vgg16_url_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    assert torchvision.models.VGG16_Weights.IMAGENET1K_V1.url == P.VGG16_URL


def _check_helpful_message(msg: str, hub) -> None:
    expected = os.path.join(str(hub), "checkpoints", "vgg16-397923af.pth")
    assert P.vgg16_weights_path() == expected
    assert expected in msg
    assert P.VGG16_URL in msg and "torchvision.models.vgg16(weights='IMAGENET1K_V1')" in msg
    assert "--pipeline.model.lpips-weight 0" in msg
    assert "\n" not in msg  # printed as one line by the CLIs


def test_perceptual_missing_weights_raises_helpful_error(offline_hub):
    hub, calls = offline_hub
    with pytest.raises(ILRMError) as info:
        M.load_perceptual(required=True)
    msg = str(info.value)
    _check_helpful_message(msg, hub)
    assert "is missing" in msg and "torch.hub.get_dir()" in msg
    assert calls == [P.VGG16_URL]  # one download attempt, which failed (offline)
    assert "downloading it failed (URLError" in msg


def test_perceptual_bad_cache_file(offline_hub):
    hub, calls = offline_hub
    (hub / "checkpoints").mkdir(parents=True)
    path = hub / "checkpoints" / os.path.basename(P.VGG16_URL)
    path.write_bytes(b"truncated download")
    with pytest.raises(ILRMError, match="delete it") as info:
        M.load_perceptual(required=True)
    _check_helpful_message(str(info.value), hub)
    P.clear_perceptual_cache()
    torch.save({"features.0.weight": torch.zeros(1)}, path)  # not a VGG16 state_dict
    with pytest.raises(ILRMError, match="could not load the VGG16 weights") as info:
        M.load_perceptual(required=True)
    _check_helpful_message(str(info.value), hub)
    assert calls == []


def test_perceptual_optional_returns_none_and_warns_once(offline_hub, caplog):
    hub, calls = offline_hub
    x = torch.rand(2, 3, 32, 32)
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        assert M.load_perceptual(required=False) is None
        assert M.load_perceptual(required=False, device="cpu") is None
        metrics = M.image_metrics(x, x.flip(-1))
    assert set(metrics) == {"psnr", "ssim"}
    assert calls == [P.VGG16_URL]  # one failed download, remembered: no retry per call
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "--pipeline.model.lpips-weight 0" in warnings[0].getMessage()
    with pytest.raises(ILRMError, match="lpips-weight 0"):
        M.load_perceptual(required=True)
    # The failure is remembered (no rebuild per call) until the cache is cleared.
    (hub / "checkpoints").mkdir(parents=True, exist_ok=True)  # the download attempt made it
    (hub / "checkpoints" / os.path.basename(P.VGG16_URL)).write_bytes(b"")
    assert M.load_perceptual(required=False) is None


def test_perceptual_loss_from_cached_weights(cached_env):
    loss_fn = cached_env.loss_fn
    assert cached_env.calls == []  # weights present: no download attempted
    assert P.vgg16_weights_path() == str(cached_env.path)
    assert M.load_perceptual(required=True) is M.load_perceptual(required=False, device="cpu")  # one per device

    net = loss_fn.network
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    trunk = dict(net.net.named_parameters())
    for name, key in [("slice1.0.weight", "features.0.weight"), ("slice5.28.bias", "features.28.bias")]:
        torch.testing.assert_close(trunk[name], cached_env.entries[key], rtol=0, atol=0)
    loss_fn.train()
    assert not net.training  # stays in eval mode (dropout off)

    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 32, 40, generator=g)  # small: VGG16 on CPU
    other = torch.rand(2, 3, 32, 40, generator=g)
    same = loss_fn(target, target)
    assert same.shape == (2,) and same.abs().max() < 1e-6
    diff = loss_fn(other, target)
    assert (diff > 1e-4).all()

    pred = other.clone().requires_grad_(True)
    loss_fn(pred, target).mean().backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())

    # fp32 under autocast and for low-precision inputs.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss_fn(other, target)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, diff)
    assert loss_fn(other.bfloat16(), target.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError):
        loss_fn(other[:, :1], target[:, :1])

    # Evaluation metrics with an explicit module and with the shared one.
    metrics = M.image_metrics(other, target, loss_fn)
    assert set(metrics) == {"psnr", "ssim", "lpips"}
    assert all(v.shape == (2,) for v in metrics.values())
    torch.testing.assert_close(metrics["lpips"], diff)
    torch.testing.assert_close(M.image_metrics(other, target)["lpips"], diff)
    assert cached_env.calls == []


def test_perceptual_matches_lpips_package(cached_env):
    """Our module gives lpips.LPIPS(net='vgg')'s values (built natively from the same cache)."""
    import warnings

    lpips = pytest.importorskip("lpips")
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 2, 3, 32, 40, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native = lpips.LPIPS(net="vgg", verbose=False)
    assert cached_env.calls == []
    with torch.no_grad():
        expected = native(2 * a - 1, 2 * b - 1).flatten()  # lpips's own input range [-1, 1]
        ours = cached_env.loss_fn(a, b)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


def test_training_ssim_is_pytorch_msssim_and_differentiable():
    """The refinement loss's SSIM (banded-matrix window sums) equals pytorch_msssim's (3DGS's
    training SSIM), on natural-looking and on random images, and has gradients."""
    from pytorch_msssim import ssim as reference

    from ilrm_nerfstudio.metrics import training_ssim

    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 40, 52, generator=generator)
    b = (a + 0.1 * torch.randn(2, 3, 40, 52, generator=generator)).clamp(0, 1)
    for x, y in ((a, b), (a, torch.rand(2, 3, 40, 52, generator=generator))):
        torch.testing.assert_close(
            training_ssim(x, y), reference(x, y, data_range=1.0, size_average=False), atol=2e-5, rtol=0
        )
    x, r = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    training_ssim(x, b).sum().backward()
    reference(r, b, data_range=1.0, size_average=False).sum().backward()
    assert bool(x.grad.abs().sum() > 0)
    torch.testing.assert_close(x.grad, r.grad, atol=1e-6, rtol=1e-3)


def test_cpu_window_sums_and_their_backward_are_exact():
    """The CPU blur (numba) against the banded-matrix products, and its backward by gradcheck."""
    from ilrm_nerfstudio.metrics.blur_cpu import ValidBlur
    from ilrm_nerfstudio.metrics.image import _gaussian_band, _gaussian_kernel1d

    x = torch.rand(2, 5, 23, 31, dtype=torch.float64, requires_grad=True)
    kernel = _gaussian_kernel1d(1.5, 5, torch.float64, x.device)
    rows, cols = (_gaussian_band(n, 1.5, 5, torch.float64, x.device) for n in (23, 31))
    torch.testing.assert_close(ValidBlur.apply(x, kernel), rows.T @ (x @ cols))
    assert torch.autograd.gradcheck(lambda t: ValidBlur.apply(t, kernel), (x,))
