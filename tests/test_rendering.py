"""The renderer: the torch rasterizer against an independent float64 brute-force reference
(values and gradients), gsplat's conventions on hand-made scenes, and bad input.

The reference below is written from the math alone (no helper of the renderer is used): for every
camera it projects all Gaussians (EWA, gsplat's 1.3x fov clamp, 0.3 px^2 blur, 3-sigma radius,
16 px tile ranges), evaluates every pixel against every Gaussian densely in float64, and composites
front to back in a Python loop over depth-sorted Gaussians with gsplat 1.4.0's rules (alpha clamp
0.999, skip alpha < 1/255 or power < 0, stop before T <= 1e-4).
"""

from __future__ import annotations

import math

import pytest
import torch

from ilrm_nerfstudio.core.cameras import rigid_inverse
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.core.sh import sh_to_rgb
from ilrm_nerfstudio.render.rendering import RenderOutput, _Rasterize, check_gsplat, render


@pytest.fixture(autouse=True)
def one_thread():
    """These scenes are small: one thread is as fast, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# Independent reference
# ------------------------------------------------------------------------------------------------

# Real SH constants in the original 3D Gaussian Splatting form (a different but equivalent way of
# writing the basis than the renderer's), so the two are checked against each other.
C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = [1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396]
C3 = [
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
]


def ref_sh_color(sh: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """sh [N, K, 3], unit directions d [N, 3] -> max(0, 0.5 + SH) [N, 3]."""
    x, y, z = d[:, 0:1], d[:, 1:2], d[:, 2:3]
    K = sh.shape[1]
    out = C0 * sh[:, 0]
    if K > 1:
        out = out - C1 * y * sh[:, 1] + C1 * z * sh[:, 2] - C1 * x * sh[:, 3]
    if K > 4:
        xx, yy, zz = x * x, y * y, z * z
        out = (
            out
            + C2[0] * x * y * sh[:, 4]
            + C2[1] * y * z * sh[:, 5]
            + C2[2] * (2 * zz - xx - yy) * sh[:, 6]
            + C2[3] * x * z * sh[:, 7]
            + C2[4] * (xx - yy) * sh[:, 8]
        )
    if K > 9:
        out = (
            out
            + C3[0] * y * (3 * xx - yy) * sh[:, 9]
            + C3[1] * x * y * z * sh[:, 10]
            + C3[2] * y * (4 * zz - xx - yy) * sh[:, 11]
            + C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
            + C3[4] * x * (4 * zz - xx - yy) * sh[:, 13]
            + C3[5] * z * (xx - yy) * sh[:, 14]
            + C3[6] * x * (xx - 3 * yy) * sh[:, 15]
        )
    return torch.clamp(out + 0.5, min=0.0)


def ref_rotation(q: torch.Tensor) -> torch.Tensor:
    """wxyz quaternions [N, 4] -> [N, 3, 3], via the Hamilton product q v q*."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, v = q[:, :1], q[:, 1:]
    cols = []
    for e in torch.eye(3, dtype=q.dtype):
        e = e.expand_as(v)
        # rotate e: e + 2 w (v x e) + 2 v x (v x e)
        t = 2 * torch.cross(v, e, dim=-1)
        cols.append(e + w * t + torch.cross(v, t, dim=-1))
    return torch.stack(cols, dim=-1)


def ref_render(g: Gaussians, c2w, K, W, H, background=None, near=0.01, far=1e10, stats=None):
    """Dense float64 reference. Returns rgb [C, H, W, 3], alpha [C, H, W, 1], depth [C, H, W, 1]."""
    means, scales, quats, opac, sh = (t.double() for t in (g.means, g.scales, g.quats, g.opacities, g.sh))
    c2w, K = c2w.double(), K.double()
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    pcx, pcy = (xs + 0.5).reshape(-1, 1), (ys + 0.5).reshape(-1, 1)  # [HW, 1] pixel centers
    tile_x, tile_y = (xs // 16).reshape(-1, 1), (ys // 16).reshape(-1, 1)
    Rq = ref_rotation(quats)
    cov_world = Rq @ torch.diag_embed(scales**2) @ Rq.transpose(1, 2)
    rgbs, alphas, depths = [], [], []
    for c in range(c2w.shape[0]):
        w2c = torch.linalg.inv(c2w[c])
        R, t = w2c[:3, :3], w2c[:3, 3]
        p = means @ R.T + t
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        in_range = (z >= near) & (z <= far)
        z = torch.where(in_range, z, torch.ones_like(z))  # keep culled ones finite
        fx, fy, cx, cy = K[c, 0, 0], K[c, 1, 1], K[c, 0, 2], K[c, 1, 2]
        # the Jacobian uses x/z, y/z clamped to the image plus 30% of the half fov on each side
        u = torch.clamp(x / z, -(cx / fx + 0.3 * W / (2 * fx)), (W - cx) / fx + 0.3 * W / (2 * fx))
        v = torch.clamp(y / z, -(cy / fy + 0.3 * H / (2 * fy)), (H - cy) / fy + 0.3 * H / (2 * fy))
        zero = torch.zeros_like(z)
        J = torch.stack([torch.stack([fx / z, zero, -fx * u / z], -1), torch.stack([zero, fy / z, -fy * v / z], -1)], 1)
        cov = J @ R @ cov_world @ R.T @ J.transpose(1, 2) + 0.3 * torch.eye(2, dtype=torch.float64)
        det = torch.linalg.det(cov)
        conic = torch.linalg.inv(torch.where((det > 0)[:, None, None], cov, torch.eye(2, dtype=torch.float64)))
        mx, my = fx * x / z + cx, fy * y / z + cy
        half_tr = 0.5 * (cov[:, 0, 0] + cov[:, 1, 1])
        radius = torch.ceil(3 * torch.sqrt(half_tr + torch.sqrt(torch.clamp(half_tr**2 - det, min=0.01)))).detach()
        visible = in_range & (det > 0) & (mx + radius > 0) & (mx - radius < W) & (my + radius > 0) & (my - radius < H)
        # gsplat draws a Gaussian only in the 16 px tiles overlapping its radius box
        tx0 = torch.clamp(torch.floor((mx - radius) / 16), min=0).detach()
        tx1 = torch.ceil((mx + radius) / 16).detach()
        ty0 = torch.clamp(torch.floor((my - radius) / 16), min=0).detach()
        ty1 = torch.ceil((my + radius) / 16).detach()
        in_tiles = (tile_x >= tx0) & (tile_x < tx1) & (tile_y >= ty0) & (tile_y < ty1)  # [HW, N]
        dirs = means - c2w[c, :3, 3]
        color = ref_sh_color(sh, dirs / dirs.norm(dim=-1, keepdim=True))  # [N, 3]
        dx, dy = mx - pcx, my - pcy  # [HW, N]
        power = 0.5 * (conic[:, 0, 0] * dx**2 + conic[:, 1, 1] * dy**2) + conic[:, 0, 1] * dx * dy
        alpha = torch.clamp(opac * torch.exp(-power), max=0.999)
        drawn = visible & in_tiles & (power >= 0) & (alpha >= 1 / 255)
        T = torch.ones(H * W, dtype=torch.float64)
        done = torch.zeros(H * W, dtype=torch.bool)
        out = torch.zeros(H * W, 4, dtype=torch.float64)
        order = torch.argsort(z.detach(), stable=True)  # front to back
        feature = torch.cat([color, z[:, None]], dim=-1)[order]  # [N, 4] rgb + depth
        # unbind once: indexing column n in the loop would make the backward pass quadratic
        for a_n, drawn_n, f_n in zip(alpha[:, order].unbind(1), drawn[:, order].unbind(1), feature.unbind(0)):
            use = drawn_n & ~done
            next_T = T * (1 - a_n)
            stop = use & (next_T <= 1e-4)
            done = done | stop
            use = use & ~stop
            w = torch.where(use, a_n * T, torch.zeros_like(T))
            out = out + w[:, None] * f_n
            T = torch.where(use, next_T, T)
        if stats is not None:
            stats["stopped_pixels"] = stats.get("stopped_pixels", 0) + int(done.sum())
            stats["tile_clipped"] = stats.get("tile_clipped", 0) + int(
                (visible & ~in_tiles & (power >= 0) & (alpha >= 1 / 255)).sum()
            )
            stats["clamped"] = stats.get("clamped", 0) + int((drawn & (opac * torch.exp(-power) > 0.999)).sum())
        a = 1 - T
        rgb = out[:, :3]
        if background is not None:
            rgb = rgb + (1 - a)[:, None] * background.double()
        rgbs.append(rgb.reshape(H, W, 3))
        alphas.append(a.reshape(H, W, 1))
        depths.append((out[:, 3] / a.clamp(min=1e-10)).reshape(H, W, 1))
    return torch.stack(rgbs), torch.stack(alphas), torch.stack(depths)


# ------------------------------------------------------------------------------------------------
# Scenes
# ------------------------------------------------------------------------------------------------


def look_at(eye, target=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """OpenCV c2w [4, 4] at `eye` looking at `target` (y down, roughly world -y up)."""
    eye, target = torch.tensor(eye, dtype=torch.float32), torch.tensor(target, dtype=torch.float32)
    forward = torch.nn.functional.normalize(target - eye, dim=0)
    right = torch.nn.functional.normalize(torch.cross(forward, torch.tensor([0.0, -1.0, 0.0]), dim=0), dim=0)
    down = torch.cross(forward, right, dim=0)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def intrinsics(fx, fy, cx, cy) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def random_scene(n: int, seed: int, sh_degree: int = 0, opacity=(0.05, 0.99)) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    return Gaussians(
        means=(u(n, 3) * 2 - 1) * torch.tensor([1.2, 0.9, 1.0]),
        scales=torch.exp(math.log(0.03) + u(n, 3) * math.log(0.3 / 0.03)),
        quats=torch.randn(n, 4, generator=gen),
        opacities=opacity[0] + (opacity[1] - opacity[0]) * u(n),
        sh=torch.randn(n, (sh_degree + 1) ** 2, 3, generator=gen) * 0.5,
    )


W, H = 32, 24  # non-square, H not a multiple of the 16 px tile
CAMS = torch.stack([look_at((0.3, -0.4, -3.5)), look_at((-2.0, 0.2, -2.6))])
KS = torch.stack([intrinsics(30.0, 29.0, 16.3, 11.6), intrinsics(27.0, 27.5, 15.2, 12.9)])


def with_grad(g: Gaussians) -> Gaussians:
    return g.map(lambda t: t.detach().clone().requires_grad_(True))


def loss_of(rgb, alpha, depth, seed=0):
    """A generic scalar of all outputs, so every output's gradient path is exercised."""
    gen = torch.Generator().manual_seed(seed)
    wr, wa, wd = (torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device) for t in (rgb, alpha, depth))
    return (rgb.double() * wr).sum() + (alpha.double() * wa).sum() + 0.1 * (depth.double() * wd).sum()


def compare_to_reference(g: Gaussians, c2w=CAMS, K=KS, width=W, height=H, background=None, grad_tol=2e-3):
    ours_in, ref_in = with_grad(g), with_grad(g.map(lambda t: t.double()))
    out = render(ours_in, c2w, K, width, height, background=background, backend="torch")
    stats = {}
    rgb, alpha, depth = ref_render(ref_in, c2w, K, width, height, background=background, stats=stats)
    assert out.rgb.shape == (c2w.shape[0], height, width, 3) and out.rgb.dtype == torch.float32
    torch.testing.assert_close(out.rgb.double(), rgb, atol=2e-5, rtol=0)
    torch.testing.assert_close(out.alpha.double(), alpha, atol=2e-5, rtol=0)
    torch.testing.assert_close(out.depth.double(), depth, atol=2e-5 * float(depth.detach().abs().max()), rtol=0)
    loss_of(out.rgb, out.alpha, out.depth).backward()
    loss_of(rgb, alpha, depth).backward()
    for name in ("means", "scales", "quats", "opacities", "sh"):
        ours, ref = getattr(ours_in, name).grad, getattr(ref_in, name).grad
        assert ours is not None, name
        scale = float(ref.abs().max()) + 1e-12
        err = float((ours.double() - ref).abs().max())
        assert err <= grad_tol * scale, f"grad {name}: max error {err:.3g} vs max |grad| {scale:.3g}"
    return stats


# ------------------------------------------------------------------------------------------------
# Against the reference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,n", [(0, 20), (1, 80), (2, 200)])
def test_random_scenes_match_reference(seed, n):
    compare_to_reference(random_scene(n, seed))


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_sh_view_dependence_matches_reference(degree):
    g = random_scene(60, 10 + degree, sh_degree=degree)
    compare_to_reference(g)
    # the two cameras see different colors of the same Gaussian: view dependence is real
    one = Gaussians(
        means=torch.zeros(1, 3),
        scales=torch.full((1, 3), 0.3),
        quats=torch.tensor([[1.0, 0, 0, 0]]),
        opacities=torch.tensor([0.9]),
        sh=g.sh[:1],
    )
    out = render(one, CAMS, KS, W, H)
    center = [out.rgb[c, int(KS[c, 1, 2]), int(KS[c, 0, 2])] for c in range(2)]
    assert (center[0] - center[1]).abs().max() > 1e-3


def test_opaque_stack_hits_transmittance_stop_and_alpha_clamp():
    """Dense, nearly opaque Gaussians: gsplat's T <= 1e-4 stop and 0.999 clamp both matter."""
    g = random_scene(120, 5, opacity=(0.9, 1.0))
    g.scales = g.scales * 2
    g.opacities[:8] = 1.0  # large and fully opaque: alpha is clamped near their centers
    g.scales[:8] = 1.0
    stats = compare_to_reference(g)
    assert stats["stopped_pixels"] > 100 and stats["clamped"] > 5  # both rules were exercised


def test_background_and_fov_clamp_and_culling_match_reference():
    g = random_scene(60, 7)
    # Gaussians far outside the view frustum but big enough to reach the image: the Jacobian's
    # x/z clamp decides their footprint; plus ones behind camera 0 and beyond the image.
    extra = Gaussians(
        means=torch.tensor([[2.6, 0.0, -2.0], [-2.4, 0.5, -2.2], [0.0, 2.0, -2.5], [0.3, -0.4, -4.5], [9.0, 0.0, 0.0]]),
        scales=torch.tensor([[0.8, 0.6, 0.7], [0.5, 0.9, 0.6], [0.7, 0.7, 0.7], [0.3, 0.3, 0.3], [0.1, 0.1, 0.1]]),
        quats=torch.randn(5, 4, generator=torch.Generator().manual_seed(3)),
        opacities=torch.full((5,), 0.8),
        sh=torch.randn(5, 1, 3, generator=torch.Generator().manual_seed(4)),
    )
    compare_to_reference(Gaussians.cat([g, extra]), background=torch.tensor([0.2, 0.5, 0.9]))


@pytest.mark.parametrize("box_end", [47.9, 39.5])
def test_tile_clipping_matches_gsplat(box_end):
    """gsplat draws a Gaussian only in the 16 px tiles that its radius box touches, even where
    alpha would still exceed 1/255 beyond them; so must we. A large Gaussian (sigma ~10 px)
    whose radius box ends at `box_end`: 47.9 -> clipped at x = 48; 39.5 -> drawn up to x = 47,
    so pixel 40 is drawn (an 8 px tile would clip it)."""
    f, z, width = 50.0, 10.0, 64
    sigma2 = 106.6  # 2D variance incl. the 0.3 blur; isotropic on the optical axis
    s = math.sqrt(sigma2 - 0.3) * z / f
    # gsplat: radius = ceil(3 sqrt(b + sqrt(max(0.01, b^2 - det)))) with b^2 - det = 0 here. The
    # variance is chosen so that the 0.01 clamp matters: 31 with it, 32 with e.g. 0.1.
    radius = math.ceil(3 * math.sqrt(sigma2 + math.sqrt(0.01)))
    assert radius == 31 and math.ceil(3 * math.sqrt(sigma2 + math.sqrt(0.1))) == 32
    cx = box_end - radius
    g = Gaussians(
        means=torch.tensor([[0.0, 0.0, z]]),
        scales=torch.full((1, 3), s),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        opacities=torch.tensor([0.95]),
        sh=torch.zeros(1, 1, 3),
    )
    K = intrinsics(f, f, cx, 8.5)[None]  # the center lies on row 8's pixel centers
    alpha = render(g, torch.eye(4)[None], K, width, 16).alpha[0, 8, :, 0]
    unclipped = lambda x: 0.95 * math.exp(-0.5 * (x + 0.5 - cx) ** 2 / sigma2)  # noqa: E731
    if box_end == 47.9:
        assert unclipped(48) > 1 / 255 and alpha[47] > 1 / 255
        assert torch.all(alpha[48:] == 0)
    else:
        assert unclipped(42) > 1 / 255 > unclipped(43)
        torch.testing.assert_close(alpha[40], torch.tensor(unclipped(40), dtype=torch.float32), atol=1e-6, rtol=0)
        assert torch.all(alpha[43:] == 0)
    compare_to_reference(g, torch.eye(4)[None], K, width, 16)


def posed(c2w: torch.Tensor, twist: torch.Tensor) -> torch.Tensor:
    """c2w [C, 4, 4] moved by twist [C, 6]: rotation exp([w]x) R, translation t + v (a camera
    optimizer's parametrization: every value of it is a rigid pose)."""
    w, v = twist[:, :3], twist[:, 3:]
    zero = torch.zeros_like(w[:, 0])
    skew = torch.stack([zero, -w[:, 2], w[:, 1], w[:, 2], zero, -w[:, 0], -w[:, 1], w[:, 0], zero], -1)
    rotation = torch.linalg.matrix_exp(skew.reshape(-1, 3, 3)) @ c2w[:, :3, :3]
    top = torch.cat([rotation, (c2w[:, :3, 3] + v)[..., None]], dim=-1)
    return torch.cat([top, c2w[:, 3:]], dim=1)


def test_camera_pose_gradient_matches_reference():
    """Gradients also flow to the camera poses (through world-to-camera and the camera center of
    the SH). Compared along rigid motions of the cameras: the renderer inverts poses as rigid
    transforms, the reference with a general matrix inverse; the two agree on rigid poses."""
    g = random_scene(80, 9, sh_degree=1)
    ours_twist, ref_twist = (
        torch.zeros(2, 6, dtype=dtype, requires_grad=True) for dtype in (torch.float32, torch.float64)
    )
    out = render(g, posed(CAMS, ours_twist), KS, W, H)
    loss_of(out.rgb, out.alpha, out.depth).backward()
    loss_of(*ref_render(g.map(lambda t: t.double()), posed(CAMS.double(), ref_twist), KS, W, H)).backward()
    scale = float(ref_twist.grad.abs().max())
    assert scale > 0 and float((ours_twist.grad.double() - ref_twist.grad).abs().max()) <= 2e-3 * scale


def test_rasterize_backward_gradcheck():
    """The hand-written backward of the compositing kernels against finite differences (float64)."""
    gen = torch.Generator().manual_seed(0)
    S, width, height = 12, 8, 6
    means2d = (torch.rand(S, 2, generator=gen, dtype=torch.float64) * torch.tensor([width, height])).requires_grad_()
    A = torch.randn(S, 2, 2, generator=gen, dtype=torch.float64)
    cov = A @ A.transpose(1, 2) * 2 + torch.eye(2, dtype=torch.float64)
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1).requires_grad_()
    cov2d = torch.stack([cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]], -1)
    opac = (0.3 + 0.69 * torch.rand(S, generator=gen, dtype=torch.float64)).requires_grad_()
    feats = torch.rand(S, 4, generator=gen, dtype=torch.float64).requires_grad_()
    radii = torch.full((1, S), 64, dtype=torch.int32)  # every Gaussian in every tile; feature 3 (depth) orders them
    fn = lambda m, c, o, f: _Rasterize.apply(m[None], c[None], o, f[None], cov2d[None], radii, width, height)  # noqa: E731
    out, alpha = fn(means2d, conics, opac, feats)
    assert float(alpha.detach().min()) > 0.3 and out.shape == (1, width * height, 4)  # the Gaussians overlap everywhere
    assert torch.autograd.gradcheck(fn, (means2d, conics, opac, feats), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Behaviour on hand-made scenes
# ------------------------------------------------------------------------------------------------


def single(mean, color=(0.8, 0.2, 0.1), scale=0.05, opacity=0.9) -> Gaussians:
    return Gaussians(
        means=torch.tensor([mean], dtype=torch.float32),
        scales=torch.full((1, 3), scale),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        opacities=torch.tensor([opacity]),
        sh=((torch.tensor([color]) - 0.5) / C0)[:, None, :],
    )


def test_single_gaussian_lands_on_projected_pixel():
    fx, fy, cx, cy, s = 40.0, 42.0, 20.0, 15.0, 0.05
    x, y, z = 0.31, -0.2, 2.0
    out = render(single((x, y, z), scale=s), torch.eye(4)[None], intrinsics(fx, fy, cx, cy)[None], 40, 30)
    u, v = fx * x / z + cx, fy * y / z + cy  # (26.2, 10.8): inside pixel (26, 10), nearest center
    peak = int(out.alpha[0, ..., 0].flatten().argmax())
    px, py = peak % 40, peak // 40
    assert (px, py) == (26, 10)
    # premultiplied color / alpha is the Gaussian's color wherever it is drawn; depth is its z
    torch.testing.assert_close(
        out.rgb[0, py, px] / out.alpha[0, py, px], torch.tensor([0.8, 0.2, 0.1]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(out.depth[0, py, px], torch.tensor([z]), atol=1e-5, rtol=0)
    # the EWA footprint: cov2d = s^2 J J^T + 0.3 I, J = [[fx/z, 0, -fx x/z^2], [0, fy/z, -fy y/z^2]]
    J = torch.tensor([[fx / z, 0, -fx * x / z**2], [0, fy / z, -fy * y / z**2]], dtype=torch.float64)
    cov = s**2 * J @ J.T + 0.3 * torch.eye(2, dtype=torch.float64)
    d = torch.tensor([u - (px + 0.5), v - (py + 0.5)], dtype=torch.float64)
    expected = 0.9 * math.exp(-0.5 * float(d @ torch.linalg.inv(cov) @ d))
    assert abs(float(out.alpha[0, py, px, 0]) - expected) < 1e-5


def test_behind_camera_is_invisible():
    out = render(single((0.0, 0.0, -2.0), scale=0.5), torch.eye(4)[None], intrinsics(30, 30, 16, 12)[None], 32, 24)
    assert torch.all(out.alpha == 0) and torch.all(out.rgb == 0) and torch.all(out.depth == 0)
    # also in front of the camera but closer than the near plane
    out = render(single((0.0, 0.0, 0.005)), torch.eye(4)[None], intrinsics(30, 30, 16, 12)[None], 32, 24)
    assert torch.all(out.alpha == 0)


def test_front_to_back_occlusion():
    red, blue = single((0.0, 0.0, 2.0), (1.0, 0.0, 0.0), 0.3, 0.99), single((0.0, 0.0, 4.0), (0.0, 0.0, 1.0), 0.6, 0.9)
    K, c2w = intrinsics(30, 30, 16.5, 12.5)[None], torch.eye(4)[None]  # centers land on pixel (16, 12)
    for order in ([red, blue], [blue, red]):  # the input order must not matter, only depth
        out = render(Gaussians.cat(order), c2w, K, 32, 24)
        center = out.rgb[0, 12, 16]
        torch.testing.assert_close(center, torch.tensor([0.99, 0.0, 0.01 * 0.9]), atol=1e-5, rtol=0)
        assert 2.0 <= float(out.depth[0, 12, 16]) < 2.05
    # seen from behind (camera at z = 6 looking back), blue is in front
    back = look_at((0.0, 0.0, 6.0), (0.0, 0.0, 0.0))[None]
    out = render(Gaussians.cat([red, blue]), back, K, 32, 24)
    torch.testing.assert_close(out.rgb[0, 12, 16], torch.tensor([0.1 * 0.99, 0.0, 0.9]), atol=1e-5, rtol=0)


def test_background_compositing():
    g = single((0.0, 0.0, 2.0), (1.0, 0.0, 0.0), 0.1, 0.5)
    K, c2w = intrinsics(30, 30, 16, 12)[None], torch.eye(4)[None]
    bg = torch.tensor([0.0, 1.0, 0.5])
    plain, with_bg = render(g, c2w, K, 32, 24), render(g, c2w, K, 32, 24, background=bg)
    torch.testing.assert_close(with_bg.rgb, plain.rgb + (1 - plain.alpha) * bg)
    torch.testing.assert_close(with_bg.rgb[0, 0, 0], bg)  # a corner the Gaussian does not reach
    torch.testing.assert_close(with_bg.alpha, plain.alpha)


def test_several_cameras_equal_separate_renders():
    g = random_scene(100, 3)
    both = render(g, CAMS, KS, W, H)
    for c in range(2):
        one = render(g, CAMS[c : c + 1], KS[c : c + 1], W, H)
        for name in ("rgb", "alpha", "depth"):
            torch.testing.assert_close(getattr(both, name)[c], getattr(one, name)[0], atol=1e-6, rtol=0)


def test_camera_that_sees_nothing():
    g = random_scene(50, 6)
    away = look_at((0.0, 0.0, -3.5), (0.0, 0.0, -10.0))  # looking away from the scene
    bg = torch.tensor([0.4, 0.4, 0.4])
    out = render(g, torch.stack([CAMS[0], away]), KS, W, H, background=bg)
    assert out.alpha[0].max() > 0.5 and torch.all(out.alpha[1] == 0)
    torch.testing.assert_close(out.rgb[1], bg.expand(H, W, 3))
    alone = render(g, CAMS[:1], KS[:1], W, H, background=bg)
    torch.testing.assert_close(out.rgb[0], alone.rgb[0])


@pytest.mark.parametrize("size", [(1, 1), (17, 33), (40, 16)])
def test_odd_image_sizes(size):
    height, width = size
    K = intrinsics(width * 0.9, width * 0.9, width / 2, height / 2)[None]
    out = render(random_scene(50, 4), look_at((0.0, 0.0, -3.5))[None], K, width, height)
    assert out.rgb.shape == (1, height, width, 3) and out.alpha.shape == out.depth.shape == (1, height, width, 1)
    if size != (1, 1):
        compare_to_reference(random_scene(50, 4), look_at((0.0, 0.0, -3.5))[None], K, width, height)


def test_zero_gaussians_and_all_culled():
    bg = torch.tensor([0.1, 0.2, 0.3])
    empty = with_grad(random_scene(0, 0))
    out = render(empty, CAMS, KS, W, H, background=bg)
    assert isinstance(out, RenderOutput)
    torch.testing.assert_close(out.rgb, bg.expand(2, H, W, 3))
    assert torch.all(out.alpha == 0) and torch.all(out.depth == 0)
    culled = with_grad(single((0.0, 0.0, -2.0)))
    out = render(culled, torch.eye(4)[None], KS[:1], W, H, background=bg)
    torch.testing.assert_close(out.rgb, bg.expand(1, H, W, 3))
    out.rgb.sum().backward()  # still differentiable (zero gradients) so training steps don't break
    assert torch.all(culled.means.grad == 0)


def test_sh_to_rgb_degree_zero_and_clamp():
    sh = torch.tensor([[[1.0, -3.0, 0.0]]])
    rgb = sh_to_rgb(sh, torch.tensor([[0.0, 0.0, 1.0]]))
    torch.testing.assert_close(rgb, torch.tensor([[0.5 + C0, 0.0, 0.5]]))


def test_bf16_inputs_and_autocast_render_in_fp32():
    g = random_scene(40, 2).map(lambda t: t.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = render(g, CAMS, KS, W, H)
    assert out.rgb.dtype == torch.float32 and torch.isfinite(out.rgb).all()


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda g, c, k: (g, c[:, :3], k), "c2w must be \\[C, 4, 4\\]"),
        (lambda g, c, k: (g, c, k[:, :2]), "K must be \\[C, 3, 3\\]"),
        (lambda g, c, k: (g, c, k[:1]), "same number of cameras"),
        (lambda g, c, k: (g.map(lambda t: t), c[0], k), "c2w must be"),
        (
            lambda g, c, k: (Gaussians(g.means, g.scales[:-1], g.quats, g.opacities, g.sh), c, k),
            "gaussians.scales must be \\[10, 3\\]",
        ),
        (lambda g, c, k: (Gaussians(g.means, g.scales, g.quats[:, :3], g.opacities, g.sh), c, k), "gaussians.quats"),
        (
            lambda g, c, k: (Gaussians(g.means, g.scales, g.quats, g.opacities[:, None], g.sh), c, k),
            "gaussians.opacities",
        ),
        (lambda g, c, k: (Gaussians(g.means, g.scales, g.quats, g.opacities, g.sh[:, :, :2]), c, k), "gaussians.sh"),
        (lambda g, c, k: (Gaussians(g.means, g.scales, g.quats, g.opacities, torch.zeros(10, 5, 3)), c, k), "K=5"),
        (
            lambda g, c, k: (Gaussians(g.means.T, g.scales, g.quats, g.opacities, g.sh), c, k),
            "gaussians.means must be \\[N, 3\\]",
        ),
    ],
)
def test_bad_shapes_raise(change, message):
    g, c2w, K = change(random_scene(10, 0), CAMS, KS)
    with pytest.raises(ValueError, match=message):
        render(g, c2w, K, W, H)


def test_nan_and_other_bad_values_raise():
    g = random_scene(10, 0)
    g.means[3, 1] = float("nan")
    with pytest.raises(ValueError, match="gaussians.means contains NaN"):
        render(g, CAMS, KS, W, H)
    bad_K = KS.clone()
    bad_K[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="K contains NaN or Inf"):
        render(random_scene(10, 0), CAMS, bad_K, W, H)
    zero_quat = random_scene(10, 0)
    zero_quat.quats[2] = 0.0
    with pytest.raises(ValueError, match="all-zero quaternions"):
        render(zero_quat, CAMS, KS, W, H)
    with pytest.raises(ValueError, match="width must be a positive int"):
        render(random_scene(10, 0), CAMS, KS, 0, H)
    with pytest.raises(ValueError, match="background must be"):
        render(random_scene(10, 0), CAMS, KS, W, H, background=torch.ones(4))
    with pytest.raises(ValueError, match="backend must be one of"):
        render(random_scene(10, 0), CAMS, KS, W, H, backend="cuda")
    with pytest.raises(ValueError, match="near_plane"):
        render(random_scene(10, 0), CAMS, KS, W, H, near_plane=0.0)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        render(random_scene(10, 0), CAMS, KS, W, H, backend="gsplat")


def test_poses_must_be_rigid_and_are_inverted_as_rigid():
    scaled = CAMS.clone()
    scaled[1, :3, :3] *= 1.1
    with pytest.raises(ValueError, match=r"c2w\[1\] is not a rigid camera pose"):
        render(random_scene(10, 0), scaled, KS, W, H)
    torch.testing.assert_close(rigid_inverse(CAMS), torch.linalg.inv(CAMS), atol=1e-6, rtol=0)


def test_value_checks_are_for_host_tensors_or_on_request():
    """check_values=None checks CPU tensors (free there; a device sync on CUDA); False reads
    no values at all (what the CUDA path does by default)."""
    bad = random_scene(10, 0)
    bad.quats[2] = 0.0
    with pytest.raises(ValueError, match="all-zero quaternions"):
        render(bad, CAMS, KS, W, H, check_values=True)
    out = render(random_scene(10, 0), CAMS * 1.1, KS, W, H, check_values=False)  # not rigid, not checked
    assert out.rgb.shape == (2, H, W, 3)


# ------------------------------------------------------------------------------------------------
# gsplat's kernels: checked once
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_gsplat_check(monkeypatch):
    """check_gsplat's memory emptied for the test (restored after), with a count of the checks."""
    from ilrm_nerfstudio.render import rendering

    monkeypatch.setattr(rendering, "_gsplat_problem", [])
    calls = []
    find = rendering._find_gsplat_problem

    def counted():
        calls.append(1)
        return find()

    monkeypatch.setattr(rendering, "_find_gsplat_problem", counted)
    return calls


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_gsplat_check_runs_once_and_fails_in_one_line(fresh_gsplat_check):
    messages = []
    for _ in range(3):
        with pytest.raises(ILRMError) as error:
            check_gsplat()
        messages.append(str(error.value))
    assert len(fresh_gsplat_check) == 1  # checked once, then answered from memory
    assert len(set(messages)) == 1 and "\n" not in messages[0]
    assert "no CUDA device" in messages[0] and "backend='torch'" in messages[0]


def test_gsplat_without_nvcc_is_named(tmp_path):
    """gsplat 1.4.0 builds its kernels with nvcc on first use; without nvcc (and without a build
    that ships them) the cause is said, not "'NoneType' object has no attribute"."""
    import importlib.util
    import os
    import shutil
    import subprocess
    import sys

    pytest.importorskip("gsplat")
    if importlib.util.find_spec("gsplat.csrc") is not None:
        pytest.skip("this gsplat ships compiled kernels: nothing to build")
    path = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and shutil.which("nvcc", path=d) is None
    )
    code = "from ilrm_nerfstudio.render.rendering import gsplat_kernels_problem; print(gsplat_kernels_problem())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": path}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no nvcc on the PATH" in result.stdout.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------------
# gsplat backend (CUDA only)
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: gsplat's rasterizer only runs CUDA kernels (even its 'pure torch' "
    "variant calls them), and no CUDA device is available here",
)
@pytest.mark.parametrize("sh_degree", [0, 3])
def test_gsplat_backend_matches_torch_backend(sh_degree):
    pytest.importorskip("gsplat")
    g = random_scene(300, 21, sh_degree=sh_degree).map(lambda t: t.cuda())
    c2w, K, bg = CAMS.cuda(), KS.cuda(), torch.tensor([0.3, 0.6, 0.1], device="cuda")
    a_in, b_in = with_grad(g), with_grad(g)
    a = render(a_in, c2w, K, W, H, background=bg, backend="gsplat")
    b = render(b_in, c2w, K, W, H, background=bg, backend="torch")
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-4, rtol=1e-4)
    # the densification meta: the same Gaussians seen, at the same pixels, the same radii (float32
    # on the GPU, float64 inside ours: a radius may round up differently at an integer)
    seen = b.radii > 0
    assert torch.equal(a.radii > 0, seen)
    assert (a.radii[seen] - b.radii[seen]).abs().max() <= 1 and (a.radii[seen] != b.radii[seen]).float().mean() < 0.01
    torch.testing.assert_close(a.means2d[seen], b.means2d[seen], atol=1e-3, rtol=1e-5)
    loss_of(a.rgb, a.alpha, a.depth).backward()
    loss_of(b.rgb, b.alpha, b.depth).backward()
    for name in ("means", "scales", "quats", "opacities", "sh"):
        ga, gb = getattr(a_in, name).grad, getattr(b_in, name).grad
        assert float((ga - gb).abs().max()) <= 1e-2 * (float(gb.abs().max()) + 1e-12), name


# ------------------------------------------------------------------------------------------------
# What densification reads (gsplat's meta: means2d, radii, width, height, n_cameras)
# ------------------------------------------------------------------------------------------------


def test_densification_info_matches_gsplat_meta():
    g = Gaussians.cat([random_scene(60, 3), single((0.0, 0.0, -8.0))])  # the last is behind both cameras
    params = with_grad(g)
    out = render(params, CAMS, KS, W, H)
    N = len(g)
    assert out.means2d.shape == (2, N, 2) and out.radii.shape == (2, N) and out.radii.dtype == torch.int32
    assert torch.all(out.radii[:, -1] == 0) and torch.all(out.means2d[:, -1] == 0)
    # the means are gsplat's pixel coordinates (pinhole, pixel centers at +0.5)
    w2c = torch.linalg.inv(CAMS)
    cam = torch.einsum("cij,nj->cni", w2c[:, :3, :3], g.means) + w2c[:, None, :3, 3]
    uv = torch.einsum("cij,cnj->cni", KS, cam)[..., :2] / cam[..., 2:]
    seen = out.radii > 0
    assert seen.sum() > 60
    torch.testing.assert_close(out.means2d[seen], uv[seen], atol=1e-4, rtol=1e-5)
    out.means2d.retain_grad()  # what gsplat's strategies do before backward
    loss_of(out.rgb, out.alpha, out.depth).backward()
    grad = out.means2d.grad
    assert (
        grad.shape == (2, N, 2) and torch.all(grad[~seen] == 0) and (grad[seen].abs().sum(-1) > 0).float().mean() > 0.9
    )
    info = out.info
    assert (info["width"], info["height"], info["n_cameras"]) == (W, H, 2) and info["means2d"] is out.means2d
    try:
        from gsplat.strategy import DefaultStrategy
    except Exception:  # gsplat is a dependency, but its import may fail without CUDA pieces
        return
    strategy = DefaultStrategy(refine_start_iter=10**6)  # only accumulate the statistics
    state = strategy.initialize_state()
    opt = {k: torch.optim.Adam([getattr(params, k)]) for k in ("means", "scales", "quats", "opacities")}
    strategy.step_post_backward(
        dict(means=params.means, scales=params.scales, quats=params.quats, opacities=params.opacities),
        opt,
        state,
        step=0,
        info=info,
        packed=False,
    )
    assert torch.all(state["count"] == seen.sum(0)) and torch.all(state["grad2d"][seen.any(0)] > 0)
