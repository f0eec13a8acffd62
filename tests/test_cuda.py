"""The CUDA path: bf16 autocast, SDPA kernels and a training step through gsplat.

These run only where a CUDA GPU is present (CI has none; they skip with that reason). On a lent GPU
machine `bash scripts/gpu_check.sh` runs them (docs/scalability.md, section 3, records where and
when they last ran). The CPU tests cover the same code in fp32.
"""

import pytest
import torch

from ilrm_nerfstudio.core.network import ILRM
from ilrm_nerfstudio.render.rendering import render
from tests.test_network import random_inputs, tiny_config

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU; none is available here (bash scripts/gpu_check.sh runs these on a GPU machine)",
)


def cuda_inputs(**kwargs):
    return tuple(t.cuda() for t in random_inputs(**kwargs))


def test_fp32_cuda_matches_cpu():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = ILRM(tiny_config()).eval()
    images, c2w, K = random_inputs()
    with torch.no_grad():
        cpu = model(images, c2w, K)
        gpu = model.cuda()(images.cuda(), c2w.cuda(), K.cuda())
    for name in ("means", "scales", "quats", "opacities", "sh"):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), atol=1e-4, rtol=1e-4, msg=name)


def test_bf16_autocast_keeps_gaussians_fp32_and_close():
    torch.manual_seed(0)
    model = ILRM(tiny_config()).cuda()
    images, c2w, K = cuda_inputs()
    reference = model(images, c2w, K)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = model(images, c2w, K)
    for name in ("means", "scales", "quats", "opacities", "sh"):
        value = getattr(half, name)
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), name
    # bf16 has 8 mantissa bits: the tokens differ by ~1%, the decoded Gaussians by about as much.
    assert float((half.opacities - reference.opacities).abs().max()) < 0.05

    def distance(g):
        return (
            g.means - c2w[:, :, None, :3, 3].expand(-1, -1, g.means.shape[1] // c2w.shape[1], -1).flatten(1, 2)
        ).norm(dim=-1)

    assert float((distance(half) / distance(reference) - 1).abs().max()) < 0.1
    sum(t.float().sum() for t in (half.means, half.scales, half.opacities, half.sh)).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("backend", ["flash", "efficient", "math"])
def test_sdpa_backends_agree(backend):
    """Each named kernel really runs (sdpa_kernel raises if it cannot) and gives the same result."""
    torch.manual_seed(0)
    images, c2w, K = cuda_inputs()
    results = {}
    for name in ("math", backend):
        torch.manual_seed(0)
        model = ILRM(tiny_config(attention_backend=name)).cuda().eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            results[name] = model(images, c2w, K)
    torch.testing.assert_close(results[backend].means, results["math"].means, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(results[backend].opacities, results["math"].opacities, atol=2e-2, rtol=2e-2)


def test_training_steps_through_gsplat_lower_the_loss():
    """Network -> gsplat render of the context views -> MSE under bf16: gradients reach every
    parameter and a few AdamW steps on one batch lower the loss."""
    pytest.importorskip("gsplat")
    torch.manual_seed(0)
    model = ILRM(tiny_config()).cuda()
    _, c2w, K = cuda_inputs(B=1, V=2)
    # Smooth images: pixel noise cannot be fitted by 2x-coarser Gaussians in a few steps.
    images = torch.nn.functional.interpolate(torch.rand(2, 3, 2, 3), size=(32, 48), mode="bilinear")[None].cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            gaussians = model(images, c2w, K)
        out = render(gaussians.map(lambda t: t[0]), c2w[0], K[0], 48, 32, backend="auto")
        loss = torch.nn.functional.mse_loss(out.rgb, images[0].permute(0, 2, 3, 1))
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            for name, parameter in model.named_parameters():
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses  # CPU (torch backend, fp32): 0.065 -> 0.008
