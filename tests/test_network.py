"""The iLRM network: rays, tokens, Gaussian counts, parameter counts, gradients, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from ilrm_nerfstudio.core.cameras import intrinsics_matrix, opengl_to_opencv, pixel_rays, plucker
from ilrm_nerfstudio.core.network import ILRM, Attention, ILRMNetworkConfig, patchify, unpatchify


def random_c2w(n: int, generator: torch.Generator) -> torch.Tensor:
    """n random rigid camera-to-world matrices [n, 4, 4]."""
    q = F.normalize(torch.randn(n, 4, generator=generator), dim=-1)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(n, 3, 3)
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, :3], c2w[:, :3, 3] = R, torch.randn(n, 3, generator=generator)
    return c2w


def tiny_config(**overrides) -> ILRMNetworkConfig:
    base = dict(patch_size=4, width=32, num_heads=2, num_layers=2, viewpoint_factor=2)
    return ILRMNetworkConfig(**{**base, **overrides})


def random_inputs(B=2, V=3, H=32, W=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, V, 3, H, W, generator=g)
    c2w = random_c2w(B * V, g).reshape(B, V, 4, 4)
    f = torch.full((B, V), 40.0)
    K = intrinsics_matrix(f, f * 1.1, torch.full((B, V), W / 2 + 1.5), torch.full((B, V), H / 2 - 2.0))
    return images, c2w, K


def test_rays_match_nerfstudio_cameras():
    from nerfstudio.cameras.cameras import Cameras, CameraType

    g = torch.Generator().manual_seed(1)
    c2w_gl = random_c2w(3, g)
    H, W = 12, 20
    cams = Cameras(
        camera_to_worlds=c2w_gl[:, :3, :],
        fx=torch.tensor([[30.0], [25.0], [40.0]]),
        fy=torch.tensor([[31.0], [26.0], [38.0]]),
        cx=torch.tensor([[10.0], [9.5], [11.2]]),
        cy=torch.tensor([[6.0], [5.5], [7.3]]),
        width=W,
        height=H,
        camera_type=CameraType.PERSPECTIVE,
    )
    K = intrinsics_matrix(cams.fx[:, 0], cams.fy[:, 0], cams.cx[:, 0], cams.cy[:, 0])
    origins, directions = pixel_rays(opengl_to_opencv(c2w_gl), K, H, W)
    for i in range(3):
        bundle = cams.generate_rays(camera_indices=i)  # [H, W, ...], pixel centers at +0.5
        torch.testing.assert_close(origins[i], bundle.origins, atol=1e-5, rtol=0)
        torch.testing.assert_close(directions[i], bundle.directions, atol=1e-5, rtol=0)


def test_plucker_is_a_property_of_the_line():
    g = torch.Generator().manual_seed(2)
    o = torch.randn(100, 3, generator=g)
    d = F.normalize(torch.randn(100, 3, generator=g), dim=-1)
    t = torch.randn(100, 1, generator=g) * 5
    torch.testing.assert_close(plucker(o, d), plucker(o + t * d, d), atol=1e-5, rtol=0)
    assert not torch.allclose(plucker(o, d), plucker(o + torch.randn(3, generator=g), d))


def test_patchify_round_trip_and_layout():
    x = torch.randn(2, 3, 8, 12, 5)
    patches = patchify(x, 4)
    assert patches.shape == (2, 3, 6, 4 * 4 * 5)
    torch.testing.assert_close(unpatchify(patches, 4, 2, 3), x)
    # patch 1 is the second patch of the first row: rows 0..3, columns 4..7
    torch.testing.assert_close(patches[0, 0, 1].reshape(4, 4, 5), x[0, 0, 0:4, 4:8])


def test_uplifted_attention_matches_explicit_computation():
    torch.manual_seed(3)
    d, heads, k = 16, 2, 2
    attn = Attention(d, heads, uplift=k)
    queries, context = torch.randn(1, 3, d), torch.randn(1, 5, d)
    out = attn(queries, context)
    assert out.shape == (1, 3, d)

    hd = d // heads
    keys = attn.k_norm(attn.to_k(context).reshape(5, heads, hd))
    values = attn.to_v(context).reshape(5, heads, hd)
    for i in range(3):
        sub_queries = attn.to_q(queries[0, i]).reshape(k, d)  # token i -> k tokens of width d
        merged = []
        for sub in sub_queries:
            q = attn.q_norm(sub.reshape(heads, hd))
            weights = torch.softmax(torch.einsum("hc,thc->ht", q, keys) / math.sqrt(hd), dim=-1)
            merged.append(torch.einsum("ht,thc->hc", weights, values).reshape(d))
        expected = attn.to_out(torch.cat(merged))  # k outputs back to width k*d -> d
        torch.testing.assert_close(out[0, i], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("factor, uplift, expected_millions", [(1, None, 171), (2, None, 185), (2, 1, 171)])
def test_base_configuration_parameter_counts(factor, uplift, expected_millions):
    with torch.device("meta"):
        net = ILRM(ILRMNetworkConfig(viewpoint_factor=factor, uplift=uplift))
    count = sum(p.numel() for p in net.parameters())
    assert abs(count / 1e6 - expected_millions) / expected_millions < 0.015, count


@pytest.mark.parametrize("views, height, width, expected", [(8, 256, 256, 131_072), (6, 256, 448, 172_032)])
def test_gaussian_counts_of_the_paper(views, height, width, expected):
    # Base geometry (p = 8, half-resolution viewpoint grid), tiny width to stay fast.
    net = ILRM(ILRMNetworkConfig(width=16, num_heads=1, num_layers=1, viewpoint_factor=2))
    images, c2w, K = random_inputs(B=1, V=views, H=height, W=width)
    with torch.no_grad():
        gaussians = net(images, c2w, K)
    assert net.num_gaussians(views, height, width) == expected
    assert gaussians.means.shape == (1, expected, 3)
    assert gaussians.scales.shape == (1, expected, 3)
    assert gaussians.quats.shape == (1, expected, 4)
    assert gaussians.opacities.shape == (1, expected)
    assert gaussians.sh.shape == (1, expected, 1, 3)


def test_token_shapes():
    cfg = tiny_config(patch_size=4, viewpoint_factor=2)
    net = ILRM(cfg)
    images, c2w, K = random_inputs(B=2, V=3, H=32, W=48)
    captured = {}
    net.layers[0].register_forward_pre_hook(lambda m, args: captured.update(viewpoint=args[0], image=args[1]))
    net(images, c2w, K)
    # image tokens: (32/4) * (48/4) = 96 per view; viewpoint tokens: (16/4) * (24/4) = 24 per view
    assert captured["image"].shape == (2, 3, 96, 32)
    assert captured["viewpoint"].shape == (2, 3, 24, 32)


def test_gaussians_lie_on_their_viewpoint_rays_and_are_valid():
    cfg = tiny_config(pixel_offset=False, sh_degree=1)
    net = ILRM(cfg)
    images, c2w, K = random_inputs(B=1, V=2, H=32, W=32)
    with torch.no_grad():
        g = net(images, c2w, K)
    from ilrm_nerfstudio.core.cameras import scale_intrinsics

    origins, directions = pixel_rays(c2w[0], scale_intrinsics(K[0], 0.5), 16, 16)
    offsets = g.means[0].reshape(2, 16, 16, 3) - origins
    distance = (offsets * directions).sum(-1)
    assert (distance >= cfg.near * 0.999).all() and (distance <= cfg.far * 1.001).all()
    torch.testing.assert_close(torch.cross(offsets, directions, dim=-1), torch.zeros_like(offsets), atol=1e-4, rtol=0)
    assert (g.scales > 0).all() and (g.opacities > 0).all() and (g.opacities < 1).all()
    torch.testing.assert_close(g.quats.norm(dim=-1), torch.ones(1, 512))
    assert g.sh.shape == (1, 512, 4, 3)


def test_published_parametrization_constants():
    net = ILRM(tiny_config(gaussian_param="published"))
    images, c2w, K = random_inputs(B=1, V=2, H=16, W=16)
    with torch.no_grad():
        g = net(images, c2w, K)
    assert g.scales.max() <= math.exp(-1.2) + 1e-6
    distance = (g.means[0].reshape(2, 64, 3) - c2w[0, :, None, :3, 3]).norm(dim=-1)  # 8 x 8 grid per view
    assert (distance > 0).all() and (distance < 500).all()
    # raw outputs are ~0 at init: opacity ~ sigmoid(-2), distance ~ 250
    assert abs(g.opacities.mean().item() - torch.sigmoid(torch.tensor(-2.0)).item()) < 0.05
    assert abs(distance.mean().item() - 250) < 25


def test_views_are_exchangeable():
    """No positional embeddings: permuting the input views permutes the Gaussians."""
    net = ILRM(tiny_config()).eval()
    images, c2w, K = random_inputs(B=1, V=3, H=16, W=16)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        g = net(images, c2w, K)
        g_perm = net(images[:, perm], c2w[:, perm], K[:, perm])
    per_view = g.means.reshape(1, 3, -1, 3)
    torch.testing.assert_close(g_perm.means.reshape(1, 3, -1, 3), per_view[:, perm], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides", [{}, {"viewpoint_factor": 1}, {"image_ray_origins": True, "gradient_checkpointing": True}]
)
def test_gradients_reach_every_parameter(overrides):
    net = ILRM(tiny_config(**overrides)).train()
    images, c2w, K = random_inputs(B=1, V=2, H=16, W=16)
    g = net(images, c2w, K)
    loss = sum(t.square().mean() for t in (g.means, g.scales, g.quats, g.sh)) + g.opacities.mean()
    loss.backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_bad_inputs_have_clear_errors():
    net = ILRM(tiny_config(patch_size=4, viewpoint_factor=2))
    images, c2w, K = random_inputs(B=1, V=2, H=20, W=16)  # 20 is not a multiple of 4 x 2
    with pytest.raises(ValueError, match=r"20x16 must be divisible by patch_size x viewpoint_factor = 4 x 2 = 8"):
        net(images, c2w, K)
    images, c2w, K = random_inputs(B=1, V=2, H=16, W=16)
    with pytest.raises(ValueError, match="expected c2w"):
        net(images, c2w[:, :1], K)
    c2w[0, 1, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        net(images, c2w, K)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ILRM(tiny_config(width=30, num_heads=4))


def test_color_skip_starts_gaussians_at_their_pixel_colors():
    """With color_skip and a silent head, each Gaussian has the color of its viewpoint-grid pixel
    (the image area-averaged onto the grid); without it, every Gaussian is gray."""
    from ilrm_nerfstudio.core.sh import SH_C0

    images, c2w, K = random_inputs(B=1, V=2, H=32, W=32)
    expected = F.avg_pool2d(images[0], 2).permute(0, 2, 3, 1).reshape(-1, 3)  # [V * 16 * 16, 3]
    for skip in (True, False):
        model = ILRM(tiny_config(color_skip=skip))
        torch.nn.init.zeros_(model.head.weight)
        with torch.no_grad():
            colors = 0.5 + SH_C0 * model(images, c2w, K).sh[0, :, 0]
        torch.testing.assert_close(colors, expected if skip else torch.full_like(expected, 0.5))
