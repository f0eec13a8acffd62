"""Our projection and tile intersection against gsplat 1.4.0's own PyTorch reference code
(`gsplat/cuda/_torch_impl.py`: `_fully_fused_projection`, `_isect_tiles`), without a GPU.

The CUDA kernels are what users run, and our CPU rasterizer must match them so that strategies and
metrics agree. The reference follows the kernels except in three places, where the kernels
(`fully_fused_projection_fwd.cu`, `isect_tiles.cu`) are what we match and these tests say so:

* near plane: the kernel culls z < near (z == near is drawn); the reference culls z <= near;
* radii beyond int32: the kernel's `(int32_t)radius` saturates at 2^31 - 1 (PTX's float -> int
  conversion clamps); the reference's `.int()` is undefined there (INT_MIN on x86);
* culled entries: the kernel leaves means2d, conics and depths unwritten (we write 0), the reference
  fills them in; only entries with radius > 0 are compared.

Random Gaussians cover the edge cases: behind the camera, between the camera and the near plane,
beyond the far plane, far outside the frustum (the Jacobian's 1.3 x fov clamp), tiny and huge
scales, flat ones, unnormalized quaternions, off-center principal points, non-square images whose
sides are not multiples of the 16 px tile.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ilrm_nerfstudio.core.cameras import rigid_inverse
from ilrm_nerfstudio.render import raster_cpu
from ilrm_nerfstudio.render.rendering import EPS2D, TILE_SIZE, _Project

reference = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat's PyTorch reference (gsplat 1.4)")

WIDTH, HEIGHT = 72, 40  # neither a multiple of 16
NEAR, FAR = 0.2, 40.0


def cameras() -> tuple[torch.Tensor, torch.Tensor]:
    """Three OpenCV cameras looking at the origin from different sides, K with off-center
    principal points and unequal focal lengths."""
    c2w = []
    for eye in ((0.3, -0.4, -4.0), (-3.0, 0.5, -2.0), (2.5, -1.0, 2.5)):
        eye = torch.tensor(eye)
        forward = -eye / eye.norm()
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), forward)
        right = right / right.norm()
        down = torch.linalg.cross(forward, right)
        pose = torch.eye(4)
        pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, eye
        c2w.append(pose)
    K = torch.tensor(
        [
            [[60.0, 0.0, 36.3], [0.0, 58.0, 19.6], [0.0, 0.0, 1.0]],
            [[45.0, 0.0, 30.2], [0.0, 47.5, 22.9], [0.0, 0.0, 1.0]],
            [[80.0, 0.0, 40.0], [0.0, 80.0, 18.0], [0.0, 0.0, 1.0]],
        ]
    )
    return torch.stack(c2w), K


def random_gaussians(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """means [n, 3], quats [n, 4], scales [n, 3] (float32) mixing ordinary and edge cases."""
    gen = torch.Generator().manual_seed(seed)
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    means = (u(n, 3) * 2 - 1) * 6.0  # many outside some frustum, behind some camera, near others
    log_scales = math.log(1e-6) + u(n, 3) * (math.log(30.0) - math.log(1e-6))  # 1e-6 .. 30
    scales = torch.exp(log_scales)
    flat = u(n) < 0.2  # flat splats: one axis tiny
    scales[flat, 0] = 1e-7
    quats = torch.randn(n, 4, generator=gen) * (0.1 + 3 * u(n, 1))  # not normalized
    return means, quats, scales


def edge_gaussians(c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hand-placed in camera 0's frame: just behind and in front of the near plane, just inside
    and beyond the far plane, far off to the side but large enough to reach the image, huge."""
    in_camera = torch.tensor(
        [
            [0.0, 0.0, NEAR * 0.999],  # between the camera and the near plane: culled
            [0.01, 0.0, NEAR * 1.001],  # just past it: projected far off-center
            [0.0, 0.0, -1.0],  # behind the camera
            [0.0, 0.0, FAR * 0.999],
            [0.0, 0.0, FAR * 1.001],  # beyond the far plane
            [30.0, 0.0, 3.0],  # x/z = 10: far outside the 1.3 x fov clamp
            [-12.0, 8.0, 2.0],
            [0.5, -0.3, 2.0],
            [0.0, 0.0, 5.0],
        ]
    )
    means = (c2w[0, :3, :3] @ in_camera.T).T + c2w[0, :3, 3]
    scales = torch.tensor(
        [[0.1] * 3, [0.1] * 3, [0.5] * 3, [0.2] * 3, [0.2] * 3, [20.0, 5.0, 1.0], [8.0] * 3, [1e-6] * 3, [300.0] * 3]
    )
    quats = torch.tensor([[1.0, 0.2, -0.3, 0.1]]).expand(len(means), 4).clone()
    return means, quats, scales


def ours(means, quats, scales, w2c, K, near=NEAR, far=FAR):
    """Our projection (the CPU rasterizer's, what render() uses): means2d, conics, depths, radii."""
    with torch.no_grad():
        means2d, conics, depths, _, radii = _Project.apply(means, quats, scales, w2c, K, WIDTH, HEIGHT, near, far)
    return means2d, conics, depths, radii


def gsplat_reference(means, quats, scales, w2c, K, near=NEAR, far=FAR):
    """gsplat's reference in float64 (our kernels compute in float64 from the float32 inputs)."""
    covars, _ = reference._quat_scale_to_covar_preci(quats.double(), scales.double(), compute_preci=False)
    radii, means2d, depths, conics, _ = reference._fully_fused_projection(
        means.double(), covars, w2c.double(), K.double(), WIDTH, HEIGHT, EPS2D, near, far
    )
    return means2d, conics, depths, radii


def scene(seed: int):
    c2w, K = cameras()
    means, quats, scales = random_gaussians(3000, seed)
    edge = edge_gaussians(c2w)
    means, quats, scales = (torch.cat([a, b]) for a, b in zip((means, quats, scales), edge))
    return means, quats, scales, rigid_inverse(c2w), K


@pytest.mark.parametrize("seed", [0, 1])
def test_projection_matches_gsplat_reference(seed):
    means, quats, scales, w2c, K = scene(seed)
    m_ours, c_ours, d_ours, r_ours = ours(means, quats, scales, w2c, K)
    m_ref, c_ref, d_ref, r_ref = gsplat_reference(means, quats, scales, w2c, K)
    seen = r_ours > 0
    # the same Gaussians culled (no depth sits exactly on a plane here) ...
    assert torch.equal(seen, r_ref > 0)
    assert 0.1 < seen.float().mean() < 0.9  # both kinds, plenty of each
    # ... with the same radii: ceil(3 sqrt(lambda_max)), also for huge and tiny Gaussians
    assert torch.equal(r_ours[seen], r_ref[seen])
    assert r_ours[seen].max() > 10 * max(WIDTH, HEIGHT) and (r_ours[seen] <= 2).any()  # huge and tiny seen
    torch.testing.assert_close(m_ours[seen].double(), m_ref[seen], rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(d_ours[seen].double(), d_ref[seen], rtol=1e-6, atol=0)
    torch.testing.assert_close(c_ours[seen].double(), c_ref[seen], rtol=1e-5, atol=1e-9)
    # culled entries: ours are 0 (the CUDA kernel leaves them unwritten)
    assert torch.all(m_ours[~seen] == 0) and torch.all(c_ours[~seen] == 0) and torch.all(d_ours[~seen] == 0)


def test_edge_cases_are_where_the_reference_says():
    """The hand-placed Gaussians of camera 0: which are drawn, and the clamped Jacobian."""
    c2w, K = cameras()
    means, quats, scales = edge_gaussians(c2w)
    w2c = rigid_inverse(c2w)
    _, _, _, r_ours = ours(means, quats, scales, w2c, K)
    _, _, _, r_ref = gsplat_reference(means, quats, scales, w2c, K)
    assert torch.equal(r_ours[0], r_ref[0].int())
    drawn = (r_ours[0] > 0).tolist()
    assert drawn[:5] == [False, True, False, True, False]  # near plane, behind, far plane
    assert drawn[5] and drawn[6]  # outside the frustum, large enough to reach the image


def test_near_plane_is_inclusive_as_the_cuda_kernel():
    """z == near: the CUDA kernel (`mean_c.z < near_plane` culls) draws it, the reference
    (`depths > near_plane` keeps) does not; we follow the kernel."""
    near = 0.5  # exactly representable: z is exactly the near plane
    means, quats, scales = (
        torch.tensor([[0.0, 0.0, near]]),
        torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        torch.full((1, 3), 0.01),
    )
    w2c, K = torch.eye(4)[None], cameras()[1][:1]
    assert int(ours(means, quats, scales, w2c, K, near=near)[3][0, 0]) > 0
    assert int(gsplat_reference(means, quats, scales, w2c, K, near=near)[3][0, 0]) == 0
    assert int(ours(means, quats, scales, w2c, K, near=near * 1.0001)[3][0, 0]) == 0


def test_radius_beyond_int32_saturates_as_the_cuda_kernel():
    """A Gaussian so large that its radius exceeds int32: the kernel's (int32_t) conversion
    saturates at 2^31 - 1 and the Gaussian still covers every tile."""
    means, quats, scales = (
        torch.tensor([[0.0, 0.0, 2.0]]),
        torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        torch.full((1, 3), 1e8),
    )
    w2c, K = torch.eye(4)[None], cameras()[1][:1]
    means2d, _, _, radii = ours(means, quats, scales, w2c, K)
    assert int(radii[0, 0]) == 2**31 - 1
    tiles = raster_cpu.tile_ranges(means2d.numpy(), radii.numpy(), WIDTH, HEIGHT)
    assert tiles[0, 0].tolist() == [0, math.ceil(WIDTH / TILE_SIZE), 0, math.ceil(HEIGHT / TILE_SIZE)]


def reference_intersections(means2d, radii, depths) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """gsplat's `_isect_tiles` on our projection: tiles per Gaussian [C, N] and the sorted
    (camera, tile, Gaussian) intersections, in gsplat's order (camera, tile, depth)."""
    C, N = radii.shape
    tile_w, tile_h = math.ceil(WIDTH / TILE_SIZE), math.ceil(HEIGHT / TILE_SIZE)
    per_gaussian, isect_ids, flatten_ids = reference._isect_tiles(means2d, radii, depths, TILE_SIZE, tile_w, tile_h)
    tile_bits = (tile_w * tile_h).bit_length()
    cameras_, tiles = (isect_ids >> 32 >> tile_bits).tolist(), ((isect_ids >> 32) & ((1 << tile_bits) - 1)).tolist()
    return per_gaussian, [(c, t, int(f) % N) for c, t, f in zip(cameras_, tiles, flatten_ids.tolist())]


def our_intersections(means2d, radii, depths) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Our tile ranges as the same list: per camera and tile, its Gaussians front to back (depth,
    then index: our stable sort, as gsplat's radix sort of the keys)."""
    C, N = radii.shape
    tile_w = math.ceil(WIDTH / TILE_SIZE)
    ranges = raster_cpu.tile_ranges(means2d.numpy(), radii.numpy(), WIDTH, HEIGHT)  # [C, N, 4]
    per_gaussian = (ranges[..., 1] - ranges[..., 0]) * (ranges[..., 3] - ranges[..., 2])
    entries = []
    for c in range(C):
        order = np.argsort(depths[c].numpy(), kind="stable")
        for g in order:
            tx0, tx1, ty0, ty1 = ranges[c, g]
            entries += [(c, ty * tile_w + tx, int(g)) for ty in range(ty0, ty1) for tx in range(tx0, tx1)]
    return per_gaussian, sorted(entries, key=lambda e: (e[0], e[1]))  # stable: depth order within a tile


def test_tile_intersections_match_gsplat_reference():
    means, quats, scales, w2c, K = scene(2)
    keep = slice(0, 400)  # gsplat's reference walks the tiles in Python: a few hundred Gaussians
    means2d, _, depths, radii = ours(means[keep], quats[keep], scales[keep], w2c, K)
    per_ref, isects_ref = reference_intersections(means2d, radii, depths)
    per_ours, isects_ours = our_intersections(means2d, radii, depths)
    assert np.array_equal(per_ours, per_ref.numpy())
    assert len(isects_ref) > 1000 and isects_ours == isects_ref
