"""Scalability features: mini-batch cross-attention (grouping, pairing rotation), the ablation
variants of paper Table 7, the full-attention baseline, attention backends, and quick runs of the
benchmark scripts. Tiny widths throughout; docs/scalability.md has the measurements."""

import os
import runpy
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ilrm_nerfstudio.core.baseline_network import FullAttentionLRM
from ilrm_nerfstudio.core.cameras import pixel_rays
from ilrm_nerfstudio.core.network import ILRM, ILRMNetworkConfig, TokenGroups, UpdateLayer
from tests.test_network import random_inputs, tiny_config

ROOT = Path(__file__).resolve().parents[1]


# -- grouping ---------------------------------------------------------------------------------


def token_rows_cols(indices: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return indices // w, indices % w


@pytest.mark.parametrize("split", ["spatial", "strided"])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("h, w", [(4, 6), (8, 4)])
def test_groups_cover_every_token_exactly_once(split, groups, h, w):
    tg = TokenGroups(groups, split)
    idx = tg.indices(h, w)  # [G, h*w/G]
    assert idx.shape == (groups, h * w // groups)
    assert torch.equal(idx.flatten().sort().values, torch.arange(h * w))
    x = torch.randn(2, 3, h * w, 5)
    grouped = tg.to_group_order(x, h, w)
    torch.testing.assert_close(grouped, x[:, :, idx.flatten()])  # group order = the subsets, one after another
    torch.testing.assert_close(tg.to_grid_order(grouped, h, w), x)


def test_group_layouts_are_the_documented_ones():
    # 4 x 4 grid, G = 4 (2 x 2 subsets): spatial blocks and strided lattices
    spatial = TokenGroups(4, "spatial").indices(4, 4)
    assert spatial[0].tolist() == [0, 1, 4, 5] and spatial[1].tolist() == [2, 3, 6, 7]
    assert spatial[3].tolist() == [10, 11, 14, 15]
    strided = TokenGroups(4, "strided").indices(4, 4)
    assert strided[0].tolist() == [0, 2, 8, 10] and strided[1].tolist() == [1, 3, 9, 11]
    assert strided[3].tolist() == [5, 7, 13, 15]
    # G = 2 splits the rows: top / bottom half, even / odd rows
    assert TokenGroups(2, "spatial").indices(4, 2)[0].tolist() == [0, 1, 2, 3]
    assert TokenGroups(2, "strided").indices(4, 2)[0].tolist() == [0, 1, 4, 5]


@pytest.mark.parametrize("groups", [2, 4])
def test_spatial_subsets_cover_the_same_image_region(groups):
    """Viewpoint grid h x w, image grid 2h x 2w (viewpoint factor 2): the image tokens under the
    viewpoint tokens of spatial subset g are exactly the image tokens of spatial subset g."""
    h, w = 4, 6
    tg = TokenGroups(groups, "spatial")
    viewpoint, image = tg.indices(h, w), tg.indices(2 * h, 2 * w)
    for g in range(groups):
        r, c = token_rows_cols(viewpoint[g], w)
        under = {
            (2 * rr + i) * 2 * w + 2 * cc + j for rr, cc in zip(r.tolist(), c.tolist()) for i in (0, 1) for j in (0, 1)
        }
        assert under == set(image[g].tolist())


def test_strided_subsets_hold_one_image_token_under_each_viewpoint_token():
    h, w = 4, 6
    tg = TokenGroups(4, "strided")
    viewpoint, image = tg.indices(h, w), tg.indices(2 * h, 2 * w)
    for g in range(4):
        for k in range(4):
            image_set = set(image[k].tolist())
            for t in viewpoint[g].tolist():
                r, c = divmod(t, w)
                under = {(2 * r + i) * 2 * w + 2 * c + j for i in (0, 1) for j in (0, 1)}
                assert len(under & image_set) == 1


# -- pairing and rotation ---------------------------------------------------------------------


@pytest.mark.parametrize("groups", [2, 4])
def test_rotation_covers_every_image_subset_across_layers(groups):
    net = ILRM(tiny_config(num_layers=2 * groups + 1, cross_attention_groups=groups))
    pairings = [layer.pairing() for layer in net.layers]
    for pairing in pairings:  # each layer: a bijection between viewpoint and image subsets
        assert sorted(pairing) == list(range(groups))
    for start in range(len(pairings) - groups + 1):  # any G consecutive layers: all image subsets
        for g in range(groups):
            assert {pairings[start + i][g] for i in range(groups)} == set(range(groups))
    assert pairings[0] == list(range(groups))  # the first layer keeps the aligned pairing


def test_without_rotation_the_pairing_is_fixed():
    net = ILRM(tiny_config(num_layers=3, cross_attention_groups=4, cross_attention_rotation=False))
    assert all(layer.pairing() == [0, 1, 2, 3] for layer in net.layers)


@pytest.mark.parametrize("split", ["spatial", "strided"])
@pytest.mark.parametrize("shift", [0, 1, 3])
def test_grouped_layer_matches_explicit_per_subset_attention(split, shift):
    """The reshape/roll implementation equals a loop over subsets with index lists."""
    torch.manual_seed(0)
    cfg = tiny_config(cross_attention_groups=4, cross_attention_split=split)
    layer = UpdateLayer(cfg, shift=shift).eval()
    B, V, h, w, d = 2, 3, 4, 6, cfg.width
    viewpoint, image = torch.randn(B, V, h * w, d), torch.randn(B, V, 4 * h * w, d)
    tg = TokenGroups(4, split)
    out = tg.to_grid_order(layer(tg.to_group_order(viewpoint, h, w), tg.to_group_order(image, 2 * h, 2 * w)), h, w)

    v_idx, i_idx = tg.indices(h, w), tg.indices(2 * h, 2 * w)
    crossed = torch.empty_like(viewpoint)
    with torch.no_grad():
        for g, k in enumerate(layer.pairing()):
            crossed[:, :, v_idx[g]] = layer.cross(
                viewpoint[:, :, v_idx[g]].flatten(0, 1), image[:, :, i_idx[k]].flatten(0, 1)
            ).unflatten(0, (B, V))
        expected = layer.self_attn(crossed.reshape(B, V * h * w, d)).reshape(B, V, h * w, d)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_one_group_equals_the_full_cross_attention_path():
    torch.manual_seed(1)
    net = ILRM(tiny_config(cross_attention_groups=1)).eval()
    grouped = ILRM(tiny_config(cross_attention_groups=4, cross_attention_rotation=False)).eval()
    grouped.load_state_dict(net.state_dict())  # same parameters: grouping adds none
    images, c2w, K = random_inputs(B=1, V=2, H=32, W=32)
    with torch.no_grad():
        full, quarter = net(images, c2w, K), grouped(images, c2w, K)
    assert full.means.shape == quarter.means.shape
    assert not torch.allclose(full.means, quarter.means)  # it does change what tokens see


def test_cross_attention_scores_shrink_by_the_number_of_groups(monkeypatch):
    original, flops = torch.nn.functional.scaled_dot_product_attention, {}

    def counted(q, k, v, *args, **kwargs):
        flops[groups] = flops.get(groups, 0) + q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]
        return original(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    images, c2w, K = random_inputs(B=1, V=2, H=32, W=32)
    for groups in (1, 2, 4):
        net = ILRM(tiny_config(num_layers=1, cross_attention_groups=groups, attention_backend="math"))  # counted as bmm
        with FlopCounterMode(display=False) as counter:
            net(images, c2w, K)
        flops[groups, "total"] = counter.get_total_flops()
    self_attention = (2 * 16) ** 2 * 32  # all 2 x 16 viewpoint tokens attend to each other
    cross = [flops[g] - self_attention for g in (1, 2, 4)]
    assert cross[0] == 2 * 16 * 2 * 64 * 32  # per view: 16 tokens x 2 (uplift) queries x 64 image tokens
    assert cross[0] == 2 * cross[1] == 4 * cross[2]
    # the score matrices shrink; nothing else changes
    assert flops[1, "total"] - flops[4, "total"] == 4 * (cross[0] - cross[2])


# -- every variant runs forward and backward --------------------------------------------------

VARIANTS = {
    "half-strided": dict(cross_attention_groups=2),
    "quarter-strided": dict(cross_attention_groups=4),
    "quarter-spatial": dict(cross_attention_groups=4, cross_attention_split="spatial"),
    "quarter-no-rotation": dict(cross_attention_groups=4, cross_attention_rotation=False),
    "quarter-full-res": dict(cross_attention_groups=4, viewpoint_factor=1),
    "quarter-checkpointed": dict(cross_attention_groups=4, gradient_checkpointing=True),
    "no-iterative-refinement": dict(iterative_refinement=False, num_layers=3),
    "no-resolution-decoupling": dict(resolution_decoupling=False, cross_attention_groups=4),
    "no-token-uplifting": dict(uplift=1),
    "math-attention": dict(attention_backend="math"),
    "flash-attention": dict(attention_backend="flash", gradient_checkpointing=True),
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_variant_forward_and_backward(overrides):
    net = ILRM(tiny_config(**overrides)).train()
    images, c2w, K = random_inputs(B=2, V=2, H=32, W=32)
    g = net(images, c2w, K)
    assert g.means.shape == (2, net.num_gaussians(2, 32, 32), 3)
    loss = sum(t.square().mean() for t in (g.means, g.scales, g.quats, g.sh)) + g.opacities.mean()
    loss.backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_views_stay_exchangeable_with_groups():
    net = ILRM(tiny_config(cross_attention_groups=4)).eval()
    images, c2w, K = random_inputs(B=1, V=3, H=32, W=32)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        g, g_perm = net(images, c2w, K), net(images[:, perm], c2w[:, perm], K[:, perm])
    torch.testing.assert_close(
        g_perm.means.reshape(1, 3, -1, 3), g.means.reshape(1, 3, -1, 3)[:, perm], atol=1e-4, rtol=1e-4
    )


def test_ablation_structure():
    net = ILRM(tiny_config(num_layers=4, iterative_refinement=False))
    assert [layer.reads_images for layer in net.layers] == [True, False, False, False]
    captured = {}
    net = ILRM(tiny_config(resolution_decoupling=False))
    net.layers[0].register_forward_pre_hook(lambda m, args: captured.update(viewpoint=args[0], image=args[1]))
    net(*random_inputs(B=1, V=2, H=32, W=48))
    assert (
        captured["image"].shape == captured["viewpoint"].shape == (1, 2, 4 * 6, 32)
    )  # image tokens at viewpoint resolution
    assert net.config.uplift_factor == 1  # nothing finer to uplift towards


@pytest.mark.parametrize(
    "overrides, expected_millions",
    [({}, 185), ({"iterative_refinement": False}, 172), ({"resolution_decoupling": False}, 171), ({"uplift": 1}, 171)],
)
def test_ablations_keep_the_parameter_budget(overrides, expected_millions):
    with torch.device("meta"):
        net = ILRM(ILRMNetworkConfig(**overrides))
        baseline = FullAttentionLRM(ILRMNetworkConfig())
    count = sum(p.numel() for p in net.parameters())
    assert abs(count / 1e6 - expected_millions) / expected_millions < 0.015, count
    assert abs(sum(p.numel() for p in baseline.parameters()) / 1e6 - 171) < 2.5


def test_groups_need_a_divisible_token_grid():
    net = ILRM(tiny_config(cross_attention_groups=4))  # p = 4, f = 2: token grid = image / 8
    with pytest.raises(
        ValueError, match=r"3x4 viewpoint-token grid of 24x32 images cannot be split .* divisible by 16x16"
    ):
        net(*random_inputs(B=1, V=2, H=24, W=32))
    with pytest.raises(ValueError, match="cross_attention_groups must be 1, 2 or 4"):
        ILRM(tiny_config(cross_attention_groups=3))


@pytest.mark.parametrize("model", [ILRM, FullAttentionLRM])
def test_rays_and_gaussians_stay_fp32_under_bf16_autocast(model):
    """bf16 autocast (CPU here, CUDA in training) must not touch rays or the decoded Gaussians:
    the means lie on the fp32 rays as tightly as without autocast."""
    net = model(tiny_config(pixel_offset=False)).eval()
    images, c2w, K = random_inputs(B=1, V=2, H=16, W=16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        g = net(images, c2w, K)
    assert all(t.dtype == torch.float32 for t in (g.means, g.scales, g.quats, g.opacities, g.sh))
    f = net.config.viewpoint_factor
    from ilrm_nerfstudio.core.cameras import scale_intrinsics

    origins, directions = pixel_rays(c2w[0], scale_intrinsics(K[0], 1 / f), 16 // f, 16 // f)
    offsets = g.means[0].reshape(origins.shape) - origins
    torch.testing.assert_close(torch.cross(offsets, directions, dim=-1), torch.zeros_like(offsets), atol=1e-4, rtol=0)


# -- full-attention baseline ------------------------------------------------------------------


def test_full_attention_baseline_is_pixel_aligned_and_trains():
    cfg = tiny_config(pixel_offset=False)
    net = FullAttentionLRM(cfg).train()
    images, c2w, K = random_inputs(B=1, V=2, H=16, W=24)
    g = net(images, c2w, K)
    assert len(net.blocks) == 2 * cfg.num_layers
    assert g.means.shape == (1, net.num_gaussians(2, 16, 24), 3) == (1, 2 * 16 * 24, 3)
    origins, directions = pixel_rays(c2w[0], K[0], 16, 24)  # one Gaussian on every pixel's ray
    offsets = g.means[0].reshape(2, 16, 24, 3) - origins
    torch.testing.assert_close(torch.cross(offsets, directions, dim=-1), torch.zeros_like(offsets), atol=1e-4, rtol=0)
    (g.means.square().mean() + g.sh.square().mean()).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_baseline_attends_across_views_in_one_sequence():
    """Changing view 1's pixels changes view 0's Gaussians (one joint self-attention)."""
    net = FullAttentionLRM(tiny_config()).eval()
    images, c2w, K = random_inputs(B=1, V=2, H=16, W=16)
    with torch.no_grad():
        before = net(images, c2w, K).means[0, : 16 * 16]
        images[0, 1] = 1 - images[0, 1]
        after = net(images, c2w, K).means[0, : 16 * 16]
    assert not torch.allclose(before, after)


# -- the benchmark scripts run in quick mode --------------------------------------------------


@pytest.mark.parametrize(
    "script, extra",
    [
        ("bench_attention_flops.py", []),
        ("bench_scaling.py", []),
        ("bench_minibatch.py", []),
        ("bench_throughput.py", []),
        ("bench_gpu.py", []),
        ("quality_ablation.py", ["--dry-run"]),  # a real run trains with ns-train: minutes (see the docs)
    ],
)
def test_benchmark_script_quick_mode(script, extra, tmp_path, monkeypatch, capsys):
    """Run in this process (saves an interpreter and a torch import per script)."""
    threads = torch.get_num_threads()
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "argv", [script, "--quick", "--output-dir", str(tmp_path), *extra])
    monkeypatch.chdir(tmp_path)
    try:
        runpy.run_path(str(ROOT / "benchmarks" / script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "command:" in out and "|---" in out  # prints its command and a table
    if "--dry-run" not in extra:
        assert (tmp_path / script.replace(".py", ".md")).is_file()


@pytest.mark.skipif(
    not os.environ.get("ILRM_SLOW_TESTS"), reason="torch.compile takes ~80 s on this CPU; set ILRM_SLOW_TESTS=1"
)
def test_compiled_layers_run_and_keep_parameter_names():
    net = ILRM(tiny_config(compile=True, cross_attention_groups=4, gradient_checkpointing=True)).train()
    reference = ILRM(tiny_config(cross_attention_groups=4))
    assert list(net.state_dict()) == list(reference.state_dict())
    net(*random_inputs(B=1, V=2, H=32, W=32)).means.sum().backward()
