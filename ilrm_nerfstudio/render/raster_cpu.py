"""Numba kernels of the CPU rasterizer behind `render(..., backend="torch")`.

gsplat 1.4's tile rasterizer, rewritten for a CPU with SIMD (see docs/rasterizer.md):

* `bin_gaussians`: every projected Gaussian (sorted front to back) is listed in the 8 x 8 pixel
  blocks (BLOCK divides gsplat's 16 px tile) that both its gsplat tile range and the bounding box
  of its ellipse power <= log(255 opacity) touch (outside that ellipse alpha < 1/255). A
  counting sort by block keeps every list front to back; the parameters are packed per entry.
* `rasterize_fwd`: parallel over blocks. A block's 64 pixels are the SIMD lanes: for each entry
  of its list, front to back, all 64 pixels are updated branch-free with gsplat's rules
  (alpha = min(0.999, o exp(-power)); skip power < 0 or alpha < 1/255; a pixel stops before the
  Gaussian that would bring T to <= 1e-4) until every pixel has stopped. Each pixel records its
  final T and the end of its walk.
* `rasterize_bwd`: parallel over blocks, the same lanes, back to front from the last drawn entry:
  T before each Gaussian is recovered as T / (1 - alpha) (gsplat's backward), the gradients are
  summed over the block's pixels into the entry (each entry belongs to one block: no races).
  `reduce_entries` sums a Gaussian's entries, in parallel over Gaussians.

exp(-power) is a polynomial (relative error < 1e-6 in float32), so that the lane loops vectorize;
the kernels are generic in the float type (float32 in rendering, float64 for gradcheck): all
constants come in an array of that type (`constants`).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

ALPHA_MAX = 0.999
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
TILE_SIZE = 16
RADIUS_MAX = 2**31 - 1  # gsplat's int32 radii: CUDA's float -> int32 conversion saturates here

BLOCK = 8  # pixel block side: 64 SIMD lanes; must divide TILE_SIZE
LANES = BLOCK * BLOCK
N_FEATURES = 4  # rgb + depth
# packed entry layout: mean x, mean y, conic a, b, c, opacity, log(255 opacity) + slack, 4 features
_P = 7
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # lets LLVM vectorize the lane loops and sums


def constants(dtype) -> np.ndarray:
    """Kernel constants in the kernels' float type (keeps float32 arithmetic in float32)."""
    e = math.exp(-0.35)
    c = [0.5, 1.0, ALPHA_MAX, ALPHA_MIN, T_MIN, 0.125, 0.35]
    c += [e * (-1.0) ** k / math.factorial(k) for k in range(8)]  # e^-0.35 exp(-r), Taylor in r
    c += [16.0, 0.0]
    return np.array(c, dtype=dtype)


@nb.njit(inline="always", fastmath=FASTMATH)
def _exp_neg(p, C):
    """exp(-p) for 0 <= p <= 16 as (e^-0.35 exp(-r))^8, r = p / 8 - 0.35 (|error| < 1e-7 p <= 6)."""
    r = p * C[5] - C[6]
    q = C[7] + r * (C[8] + r * (C[9] + r * (C[10] + r * (C[11] + r * (C[12] + r * (C[13] + r * C[14]))))))
    q = q * q
    q = q * q
    return q * q


@nb.njit(inline="always")
def _tile_range(mx, my, r, tile_w, tile_h):
    """gsplat's isect_tiles, in float32 as gsplat: the 16 px tiles [tx0, tx1) x [ty0, ty1) that the
    radius box of a Gaussian at pixel (mx, my) with radius r > 0 touches (floor / ceil of the
    tile-unit box, clamped to the image's tiles)."""
    ts = np.float32(TILE_SIZE)
    tr = np.float32(r) / ts
    fx, fy = np.float32(mx) / ts, np.float32(my) / ts
    tx0 = min(max(0, int(math.floor(fx - tr))), tile_w)
    tx1 = min(max(0, int(math.ceil(fx + tr))), tile_w)
    ty0 = min(max(0, int(math.floor(fy - tr))), tile_h)
    ty1 = min(max(0, int(math.ceil(fy + tr))), tile_h)
    return tx0, tx1, ty0, ty1


@nb.njit(cache=True)
def tile_ranges(means2d, radii, width, height):
    """[C, N, 4] int64: the tiles (tx0, tx1, ty0, ty1) each projected Gaussian is drawn in (what
    gsplat's isect_tiles lists; empty where the radius is 0)."""
    C, N = radii.shape
    tile_w = (width + TILE_SIZE - 1) // TILE_SIZE
    tile_h = (height + TILE_SIZE - 1) // TILE_SIZE
    out = np.zeros((C, N, 4), np.int64)
    for c in range(C):
        for g in range(N):
            if radii[c, g] > 0:
                tx0, tx1, ty0, ty1 = _tile_range(means2d[c, g, 0], means2d[c, g, 1], radii[c, g], tile_w, tile_h)
                out[c, g, 0], out[c, g, 1], out[c, g, 2], out[c, g, 3] = tx0, tx1, ty0, ty1
    return out


@nb.njit(parallel=True, cache=True)
def _ranges(means2d, cov2d, opac, radii, order, width, height):
    """Per drawn Gaussian order[i]: the block range [bx0, bx1) x [by0, by1) it is listed in, and
    its count."""
    S = order.shape[0]
    tile_w = (width + TILE_SIZE - 1) // TILE_SIZE
    tile_h = (height + TILE_SIZE - 1) // TILE_SIZE
    ranges = np.zeros((S, 4), np.int64)
    counts = np.zeros(S, np.int64)
    for i in nb.prange(S):
        g = order[i]
        r = radii[g]
        o = opac[g]
        if r <= 0 or o < ALPHA_MIN:
            continue
        mx = means2d[g, 0]
        my = means2d[g, 1]
        # pixels of gsplat's tiles
        tx0, tx1, ty0, ty1 = _tile_range(mx, my, r, tile_w, tile_h)
        tx0, tx1 = tx0 * TILE_SIZE, min(tx1 * TILE_SIZE, width)
        ty0, ty1 = ty0 * TILE_SIZE, min(ty1 * TILE_SIZE, height)
        # pixels whose center can have alpha >= 1/255 (slack for rounding; exact tests per pair)
        thresh = math.log(max(255.0 * o, 1.0))
        ex = math.sqrt(2.0 * thresh * cov2d[g, 0]) * 1.0001 + 0.02
        ey = math.sqrt(2.0 * thresh * cov2d[g, 2]) * 1.0001 + 0.02
        x0 = max(tx0, int(math.ceil(mx - ex - 0.5)))
        x1 = min(tx1, int(math.floor(mx + ex - 0.5)) + 1)
        y0 = max(ty0, int(math.ceil(my - ey - 0.5)))
        y1 = min(ty1, int(math.floor(my + ey - 0.5)) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        bx0, bx1 = x0 // BLOCK, (x1 - 1) // BLOCK + 1
        by0, by1 = y0 // BLOCK, (y1 - 1) // BLOCK + 1
        ranges[i, 0], ranges[i, 1], ranges[i, 2], ranges[i, 3] = bx0, bx1, by0, by1
        counts[i] = (bx1 - bx0) * (by1 - by0)
    return ranges, counts


@nb.njit(cache=True)
def _assign(ranges, g_start, nbx, n_blocks):
    """Counting sort of the (Gaussian, block) entries by block, stable in Gaussian order."""
    S = ranges.shape[0]
    hist = np.zeros(n_blocks + 1, np.int64)
    for g in range(S):
        for by in range(ranges[g, 2], ranges[g, 3]):
            for bx in range(ranges[g, 0], ranges[g, 1]):
                hist[by * nbx + bx + 1] += 1
    starts = np.cumsum(hist)
    fill = starts[:-1].copy()
    slot = np.empty(g_start[-1], np.int64)  # entry index of each (Gaussian, k-th block)
    for g in range(S):
        k = g_start[g]
        for by in range(ranges[g, 2], ranges[g, 3]):
            for bx in range(ranges[g, 0], ranges[g, 1]):
                b = by * nbx + bx
                slot[k] = fill[b]
                fill[b] += 1
                k += 1
    return starts, slot


@nb.njit(parallel=True, cache=True)
def _pack(means2d, conics, opac, feats, order, g_start, slot, dtype_like):
    S = order.shape[0]
    E = slot.shape[0]
    ids = np.empty(E, np.int32)
    packed = np.empty((E, _P + N_FEATURES), dtype_like.dtype)
    for i in nb.prange(S):
        g = order[i]
        k0, k1 = g_start[i], g_start[i + 1]
        if k1 == k0:
            continue
        thresh = math.log(max(255.0 * opac[g], 1.0)) + 1e-3  # no pair with a larger power reaches 1/255
        for k in range(k0, k1):
            j = slot[k]
            ids[j] = i
            packed[j, 0] = means2d[g, 0]
            packed[j, 1] = means2d[g, 1]
            packed[j, 2] = conics[g, 0]
            packed[j, 3] = conics[g, 1]
            packed[j, 4] = conics[g, 2]
            packed[j, 5] = opac[g]
            packed[j, 6] = thresh
            for d in range(N_FEATURES):
                packed[j, _P + d] = feats[g, d]
    return ids, packed


def bin_gaussians(means2d, conics, cov2d, opac, radii, feats, order, width, height):
    """Bins Gaussians order[0], order[1], ... (front to back) of one camera ([N, ...] inputs).
    -> starts [n_blocks + 1], ids [E] int32 (into order), packed [E, 11], g_start [S + 1], slot [E]."""
    nbx = (width + BLOCK - 1) // BLOCK
    n_blocks = nbx * ((height + BLOCK - 1) // BLOCK)
    ranges, counts = _ranges(means2d, cov2d, opac, radii, order, width, height)
    g_start = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=g_start[1:])
    starts, slot = _assign(ranges, g_start, nbx, n_blocks)
    ids, packed = _pack(means2d, conics, opac, feats, order, g_start, slot, means2d[:0, 0])
    return starts, ids, packed, g_start, slot


@nb.njit(parallel=True, cache=True, fastmath=FASTMATH)
def rasterize_fwd(starts, packed, width, height, C):
    """-> accumulated features [H*W, 4], final T [H*W], walk end [H*W] (entry index)."""
    nbx = (width + BLOCK - 1) // BLOCK
    n_blocks = nbx * ((height + BLOCK - 1) // BLOCK)
    dt = packed.dtype
    out = np.zeros((height * width, N_FEATURES), dt)
    t_final = np.ones(height * width, dt)
    end = np.zeros(height * width, np.int64)
    half, one, amax, amin, tmin, pmax, zero = C[0], C[1], C[2], C[3], C[4], C[15], C[16]
    for blk in nb.prange(n_blocks):
        s, e = starts[blk], starts[blk + 1]
        y0, x0 = (blk // nbx) * BLOCK, (blk % nbx) * BLOCK
        # lane state, one array (lets LLVM prove the rows do not alias):
        # pixel x, pixel y, T, live, walk end (relative), 4 accumulated features
        st = np.empty((9, LANES), dt)
        cast = np.empty(1, dt)
        for lane in range(LANES):
            st[0, lane] = zero + (x0 + lane % BLOCK) + half
            st[1, lane] = zero + (y0 + lane // BLOCK) + half
            st[2, lane] = one
            st[3, lane] = one if (y0 + lane // BLOCK < height and x0 + lane % BLOCK < width) else zero
            for k in range(4, 9):
                st[k, lane] = zero
        for j in range(s, e):
            mx, my, a, b, c = packed[j, 0], packed[j, 1], packed[j, 2], packed[j, 3], packed[j, 4]
            o, th = packed[j, 5], packed[j, 6]
            f0, f1, f2, f3 = packed[j, 7], packed[j, 8], packed[j, 9], packed[j, 10]
            cast[0] = j + 1 - s
            jj = cast[0]
            n_live = zero
            for lane in range(LANES):
                dx = mx - st[0, lane]
                dy = my - st[1, lane]
                power = half * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = min(amax, o * _exp_neg(min(max(power, zero), pmax), C))
                t = st[2, lane]
                nt = t * (one - alpha)
                ok = (power >= zero) & (power <= th) & (alpha >= amin) & (st[3, lane] > zero)
                draw = ok & (nt > tmin)
                w = alpha * t if draw else zero
                st[5, lane] += w * f0
                st[6, lane] += w * f1
                st[7, lane] += w * f2
                st[8, lane] += w * f3
                st[2, lane] = nt if draw else t
                st[4, lane] = jj if draw else st[4, lane]
                live = zero if (ok & (nt <= tmin)) else st[3, lane]  # stopped: nothing more drawn
                st[3, lane] = live
                n_live += live
            if n_live == zero:
                break
        for lane in range(LANES):
            py, px = y0 + lane // BLOCK, x0 + lane % BLOCK
            if py < height and px < width:
                pix = py * width + px
                for d in range(N_FEATURES):
                    out[pix, d] = st[5 + d, lane]
                t_final[pix] = st[2, lane]
                end[pix] = s + int(st[4, lane])
    return out, t_final, end


@nb.njit(parallel=True, cache=True, fastmath=FASTMATH)
def rasterize_bwd(starts, packed, t_final, end, v_out, v_alpha, width, height, C):
    """Gradients per list entry [E, 10]: mean x, mean y, conic a, b, c, opacity, 4 features."""
    nbx = (width + BLOCK - 1) // BLOCK
    n_blocks = nbx * ((height + BLOCK - 1) // BLOCK)
    dt = packed.dtype
    grads = np.zeros((packed.shape[0], 6 + N_FEATURES), dt)
    half, one, amax, amin, pmax, zero = C[0], C[1], C[2], C[3], C[15], C[16]
    for blk in nb.prange(n_blocks):
        s = starts[blk]
        y0, x0 = (blk // nbx) * BLOCK, (blk % nbx) * BLOCK
        # pixel x, pixel y, T, walk end (relative), v_alpha T_final, v_out (4), light behind (4)
        st = np.zeros((13, LANES), dt)
        cast = np.empty(1, dt)
        last = 0
        for lane in range(LANES):
            py, px = y0 + lane // BLOCK, x0 + lane % BLOCK
            st[0, lane] = zero + px + half
            st[1, lane] = zero + py + half
            if py < height and px < width:
                pix = py * width + px
                T = t_final[pix]
                st[2, lane] = T
                st[3, lane] = zero + (end[pix] - s)
                st[4, lane] = v_alpha[pix] * T  # d(1 - T_final) / d a_i = T_final / (1 - a_i)
                for d in range(N_FEATURES):
                    st[5 + d, lane] = v_out[pix, d]
                last = max(last, end[pix])
        for j in range(last - 1, s - 1, -1):
            mx, my, a, b, c = packed[j, 0], packed[j, 1], packed[j, 2], packed[j, 3], packed[j, 4]
            o, th = packed[j, 5], packed[j, 6]
            f0, f1, f2, f3 = packed[j, 7], packed[j, 8], packed[j, 9], packed[j, 10]
            cast[0] = j - s
            jr = cast[0]
            g_mx = g_my = g_a = g_b = g_c = g_o = g_f0 = g_f1 = g_f2 = g_f3 = zero
            for lane in range(LANES):
                dx = mx - st[0, lane]
                dy = my - st[1, lane]
                power = half * (a * dx * dx + c * dy * dy) + b * dx * dy
                ex = _exp_neg(min(max(power, zero), pmax), C)
                raw = o * ex
                alpha = min(amax, raw)
                ok = (power >= zero) & (power <= th) & (alpha >= amin) & (jr < st[3, lane])
                ra = one / (one - alpha)
                t = st[2, lane] * ra  # transmittance in front of this Gaussian
                w = alpha * t if ok else zero
                v0, v1, v2, v3 = st[5, lane], st[6, lane], st[7, lane], st[8, lane]
                v_a = st[4, lane] * ra + (
                    v0 * (f0 * t - st[9, lane] * ra)
                    + v1 * (f1 * t - st[10, lane] * ra)
                    + v2 * (f2 * t - st[11, lane] * ra)
                    + v3 * (f3 * t - st[12, lane] * ra)
                )
                g_f0 += w * v0
                g_f1 += w * v1
                g_f2 += w * v2
                g_f3 += w * v3
                st[9, lane] += w * f0
                st[10, lane] += w * f1
                st[11, lane] += w * f2
                st[12, lane] += w * f3
                st[2, lane] = t if ok else st[2, lane]
                v_p = -v_a * alpha if (ok & (raw < amax)) else zero  # no gradient through the clamp
                g_o += v_a * ex if (ok & (raw < amax)) else zero  # d alpha / d o = exp(-power)
                g_mx += v_p * (a * dx + b * dy)
                g_my += v_p * (b * dx + c * dy)
                g_a += v_p * dx * dx
                g_b += v_p * dx * dy
                g_c += v_p * dy * dy
            grads[j, 0] = g_mx
            grads[j, 1] = g_my
            grads[j, 2] = half * g_a
            grads[j, 3] = g_b
            grads[j, 4] = half * g_c
            grads[j, 5] = g_o
            grads[j, 6] = g_f0
            grads[j, 7] = g_f1
            grads[j, 8] = g_f2
            grads[j, 9] = g_f3
    return grads


@nb.njit(parallel=True, cache=True)
def reduce_entries(grads, g_start, slot):
    """Per-Gaussian sums [S, K] of the per-entry gradients [E, K] (float64 accumulation)."""
    S = g_start.shape[0] - 1
    K = grads.shape[1]
    out = np.zeros((S, K), grads.dtype)
    for g in nb.prange(S):
        for k in range(K):
            acc = 0.0
            for q in range(g_start[g], g_start[g + 1]):
                acc += grads[slot[q], k]
            out[g, k] = acc
    return out


@nb.njit(cache=True)
def count_pairs(starts, packed, end, width, height):
    """(lane pairs, drawn pairs) of a forward pass, for benchmarks: lane pairs = 64 pixels x the
    entries of each block (what the forward evaluates unless a whole block stops early)."""
    nbx = (width + BLOCK - 1) // BLOCK
    n_blocks = nbx * ((height + BLOCK - 1) // BLOCK)
    evaluated = 0
    drawn = 0
    for blk in range(n_blocks):
        s = starts[blk]
        y0, x0 = (blk // nbx) * BLOCK, (blk % nbx) * BLOCK
        evaluated += (starts[blk + 1] - s) * LANES
        for py in range(y0, min(y0 + BLOCK, height)):
            for px in range(x0, min(x0 + BLOCK, width)):
                stop = end[py * width + px]
                for j in range(s, stop):
                    dx = packed[j, 0] - (px + 0.5)
                    dy = packed[j, 1] - (py + 0.5)
                    power = 0.5 * (packed[j, 2] * dx * dx + packed[j, 4] * dy * dy) + packed[j, 3] * dx * dy
                    if power < 0.0 or power > packed[j, 6]:
                        continue
                    if min(ALPHA_MAX, packed[j, 5] * math.exp(-power)) >= ALPHA_MIN:
                        drawn += 1
    return evaluated, drawn


# ------------------------------------------------------------------------------------------------
# Projection (EWA, gsplat's fully_fused_projection, pinhole, classic) and its backward
# ------------------------------------------------------------------------------------------------


# 3 x 3 matrices are row-major 9-tuples here (no heap allocation inside the parallel loops).
# Inputs are read as np.float64: numba's float() keeps a float32 a float32, and the 2D covariance of
# a flat Gaussian seen edge-on loses digits to cancellation (det = a c - b^2).


@nb.njit(cache=True)
def _mm(A, B):
    return (
        A[0] * B[0] + A[1] * B[3] + A[2] * B[6],
        A[0] * B[1] + A[1] * B[4] + A[2] * B[7],
        A[0] * B[2] + A[1] * B[5] + A[2] * B[8],
        A[3] * B[0] + A[4] * B[3] + A[5] * B[6],
        A[3] * B[1] + A[4] * B[4] + A[5] * B[7],
        A[3] * B[2] + A[4] * B[5] + A[5] * B[8],
        A[6] * B[0] + A[7] * B[3] + A[8] * B[6],
        A[6] * B[1] + A[7] * B[4] + A[8] * B[7],
        A[6] * B[2] + A[7] * B[5] + A[8] * B[8],
    )


@nb.njit(cache=True)
def _tr(A):
    return (A[0], A[3], A[6], A[1], A[4], A[7], A[2], A[5], A[8])


@nb.njit(cache=True)
def _rotmat(q0, q1, q2, q3):
    """Rotation of the normalized wxyz quaternion, the normalized quaternion and |q|."""
    n = math.sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3)
    w, x, y, z = q0 / n, q1 / n, q2 / n, q3 / n
    R = (
        1 - 2 * (y * y + z * z),
        2 * (x * y - w * z),
        2 * (x * z + w * y),
        2 * (x * y + w * z),
        1 - 2 * (x * x + z * z),
        2 * (y * z - w * x),
        2 * (x * z - w * y),
        2 * (y * z + w * x),
        1 - 2 * (x * x + y * y),
    )
    return R, w, x, y, z, n


@nb.njit(cache=True)
def _world_cov(quats, scales, g):
    q0, q1, q2, q3 = np.float64(quats[g, 0]), np.float64(quats[g, 1]), np.float64(quats[g, 2]), np.float64(quats[g, 3])
    R, w, x, y, z, n = _rotmat(q0, q1, q2, q3)
    s0, s1, s2 = np.float64(scales[g, 0]), np.float64(scales[g, 1]), np.float64(scales[g, 2])
    M = (R[0] * s0, R[1] * s1, R[2] * s2, R[3] * s0, R[4] * s1, R[5] * s2, R[6] * s0, R[7] * s1, R[8] * s2)
    return M, _mm(M, _tr(M)), R, w, x, y, z, n


@nb.njit(cache=True)
def _camera(w2c, Ks, c):
    R = (
        np.float64(w2c[c, 0, 0]),
        np.float64(w2c[c, 0, 1]),
        np.float64(w2c[c, 0, 2]),
        np.float64(w2c[c, 1, 0]),
        np.float64(w2c[c, 1, 1]),
        np.float64(w2c[c, 1, 2]),
        np.float64(w2c[c, 2, 0]),
        np.float64(w2c[c, 2, 1]),
        np.float64(w2c[c, 2, 2]),
    )
    t = (np.float64(w2c[c, 0, 3]), np.float64(w2c[c, 1, 3]), np.float64(w2c[c, 2, 3]))
    return R, t, np.float64(Ks[c, 0, 0]), np.float64(Ks[c, 1, 1]), np.float64(Ks[c, 0, 2]), np.float64(Ks[c, 1, 2])


@nb.njit(cache=True)
def _jacobian(x, y, z, fx, fy, cx, cy, width, height, margin):
    """gsplat's persp_proj Jacobian: J = [[j00, 0, j02], [0, j11, j12]] with x/z, y/z clamped."""
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + margin * tan_fovx
    lim_x_neg = cx / fx + margin * tan_fovx
    lim_y_pos = (height - cy) / fy + margin * tan_fovy
    lim_y_neg = cy / fy + margin * tan_fovy
    rz = 1.0 / z
    u, v = x * rz, y * rz
    in_x = (u <= lim_x_pos) and (u >= -lim_x_neg)
    in_y = (v <= lim_y_pos) and (v >= -lim_y_neg)
    tx = z * min(lim_x_pos, max(-lim_x_neg, u))
    ty = z * min(lim_y_pos, max(-lim_y_neg, v))
    return fx * rz, -fx * tx * rz * rz, fy * rz, -fy * ty * rz * rz, tx, ty, in_x, in_y


@nb.njit(parallel=True, cache=True)
def project_fwd(means, quats, scales, w2c, Ks, width, height, near, far, eps2d, margin):
    """-> means2d [C, N, 2], conics [C, N, 3], depths [C, N], cov2d [C, N, 3], radii [C, N] int32
    (all zero where culled: outside [near, far], det <= 0 or the radius box off the image)."""
    C, N = w2c.shape[0], means.shape[0]
    dt = means.dtype
    means2d = np.zeros((C, N, 2), dt)
    conics = np.zeros((C, N, 3), dt)
    depths = np.zeros((C, N), dt)
    cov2d = np.zeros((C, N, 3), dt)
    radii = np.zeros((C, N), np.int32)
    for g in nb.prange(N):
        _, S3, _, _, _, _, _, _ = _world_cov(quats, scales, g)
        m0, m1, m2 = np.float64(means[g, 0]), np.float64(means[g, 1]), np.float64(means[g, 2])
        for c in range(C):
            R, t, fx, fy, cx, cy = _camera(w2c, Ks, c)
            x = R[0] * m0 + R[1] * m1 + R[2] * m2 + t[0]
            y = R[3] * m0 + R[4] * m1 + R[5] * m2 + t[1]
            z = R[6] * m0 + R[7] * m1 + R[8] * m2 + t[2]
            if z < near or z > far:
                continue
            j00, j02, j11, j12, _, _, _, _ = _jacobian(x, y, z, fx, fy, cx, cy, width, height, margin)
            Sc = _mm(_mm(R, S3), _tr(R))  # camera-space covariance
            a = j00 * j00 * Sc[0] + 2 * j00 * j02 * Sc[2] + j02 * j02 * Sc[8] + eps2d
            b = j00 * j11 * Sc[1] + j00 * j12 * Sc[2] + j02 * j11 * Sc[7] + j02 * j12 * Sc[8]
            cc = j11 * j11 * Sc[4] + 2 * j11 * j12 * Sc[5] + j12 * j12 * Sc[8] + eps2d
            det = a * cc - b * b
            if not det > 0.0:
                continue
            mx, my = fx * x / z + cx, fy * y / z + cy
            half_trace = 0.5 * (a + cc)
            v1 = half_trace + math.sqrt(max(half_trace * half_trace - det, 0.01))
            radius = math.ceil(3.0 * math.sqrt(v1))
            if radius <= 0 or mx + radius <= 0 or mx - radius >= width or my + radius <= 0 or my - radius >= height:
                continue
            radii[c, g] = int(min(radius, RADIUS_MAX))
            means2d[c, g, 0], means2d[c, g, 1] = mx, my
            conics[c, g, 0], conics[c, g, 1], conics[c, g, 2] = cc / det, -b / det, a / det
            cov2d[c, g, 0], cov2d[c, g, 1], cov2d[c, g, 2] = a, b, cc
            depths[c, g] = z
    return means2d, conics, depths, cov2d, radii


@nb.njit(parallel=True, cache=True)
def project_bwd(
    means, quats, scales, w2c, Ks, width, height, margin, radii, conics, v_means2d, v_conics, v_depths, want_cam
):
    """Gradients of means [N, 3], quats [N, 4], scales [N, 3] and, when want_cam, per entry of
    the world-to-camera rotation (9) and translation (3) [C, N, 12] (to be summed over N)."""
    C, N = w2c.shape[0], means.shape[0]
    v_means = np.zeros((N, 3), np.float64)
    v_quats = np.zeros((N, 4), np.float64)
    v_scales = np.zeros((N, 3), np.float64)
    v_cam = np.zeros((C, N if want_cam else 0, 12), np.float64)
    for g in nb.prange(N):
        M, S3, Rq, w, x_, y_, z_, qn = _world_cov(quats, scales, g)
        m0, m1, m2 = np.float64(means[g, 0]), np.float64(means[g, 1]), np.float64(means[g, 2])
        v_S3 = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        for c in range(C):
            if radii[c, g] <= 0:
                continue
            R, t, fx, fy, cx, cy = _camera(w2c, Ks, c)
            x = R[0] * m0 + R[1] * m1 + R[2] * m2 + t[0]
            y = R[3] * m0 + R[4] * m1 + R[5] * m2 + t[1]
            z = R[6] * m0 + R[7] * m1 + R[8] * m2 + t[2]
            j00, j02, j11, j12, tx, ty, in_x, in_y = _jacobian(x, y, z, fx, fy, cx, cy, width, height, margin)
            # conic = inverse(cov): v_cov = -conic G conic, G the symmetric gradient of the conic
            ia, ib, ic = np.float64(conics[c, g, 0]), np.float64(conics[c, g, 1]), np.float64(conics[c, g, 2])
            g00, g01, g11 = (
                np.float64(v_conics[c, g, 0]),
                0.5 * np.float64(v_conics[c, g, 1]),
                np.float64(v_conics[c, g, 2]),
            )
            h00, h01, h10, h11 = g00 * ia + g01 * ib, g00 * ib + g01 * ic, g01 * ia + g11 * ib, g01 * ib + g11 * ic
            V00 = -(ia * h00 + ib * h10)
            V01 = -(ia * h01 + ib * h11)
            V11 = -(ib * h01 + ic * h11)
            Sc = _mm(_mm(R, S3), _tr(R))
            # cov = J Sc J^T: v_J = 2 V J Sc, v_Sc = J^T V J
            JS0 = (j00 * Sc[0] + j02 * Sc[6], j00 * Sc[1] + j02 * Sc[7], j00 * Sc[2] + j02 * Sc[8])
            JS1 = (j11 * Sc[3] + j12 * Sc[6], j11 * Sc[4] + j12 * Sc[7], j11 * Sc[5] + j12 * Sc[8])
            vJ00 = 2 * (V00 * JS0[0] + V01 * JS1[0])
            vJ02 = 2 * (V00 * JS0[2] + V01 * JS1[2])
            vJ11 = 2 * (V01 * JS0[1] + V11 * JS1[1])
            vJ12 = 2 * (V01 * JS0[2] + V11 * JS1[2])
            J0 = (j00, 0.0, j02)
            J1 = (0.0, j11, j12)
            v_Sc = (
                V00 * J0[0] * J0[0] + 2 * V01 * J0[0] * J1[0] + V11 * J1[0] * J1[0],
                V00 * J0[0] * J0[1] + V01 * (J0[0] * J1[1] + J1[0] * J0[1]) + V11 * J1[0] * J1[1],
                V00 * J0[0] * J0[2] + V01 * (J0[0] * J1[2] + J1[0] * J0[2]) + V11 * J1[0] * J1[2],
                V00 * J0[1] * J0[0] + V01 * (J0[1] * J1[0] + J1[1] * J0[0]) + V11 * J1[1] * J1[0],
                V00 * J0[1] * J0[1] + 2 * V01 * J0[1] * J1[1] + V11 * J1[1] * J1[1],
                V00 * J0[1] * J0[2] + V01 * (J0[1] * J1[2] + J1[1] * J0[2]) + V11 * J1[1] * J1[2],
                V00 * J0[2] * J0[0] + V01 * (J0[2] * J1[0] + J1[2] * J0[0]) + V11 * J1[2] * J1[0],
                V00 * J0[2] * J0[1] + V01 * (J0[2] * J1[1] + J1[2] * J0[1]) + V11 * J1[2] * J1[1],
                V00 * J0[2] * J0[2] + 2 * V01 * J0[2] * J1[2] + V11 * J1[2] * J1[2],
            )
            d = _mm(_mm(_tr(R), v_Sc), R)
            v_S3 = (
                v_S3[0] + d[0],
                v_S3[1] + d[1],
                v_S3[2] + d[2],
                v_S3[3] + d[3],
                v_S3[4] + d[4],
                v_S3[5] + d[5],
                v_S3[6] + d[6],
                v_S3[7] + d[7],
                v_S3[8] + d[8],
            )
            rz = 1.0 / z
            rz2, rz3 = rz * rz, rz * rz * rz
            vu, vv = np.float64(v_means2d[c, g, 0]), np.float64(v_means2d[c, g, 1])
            vx = fx * rz * vu
            vy = fy * rz * vv
            vz = -(fx * x * vu + fy * y * vv) * rz2 + np.float64(v_depths[c, g])
            # gsplat's persp_proj_vjp (the Jacobian with its clamped x/z, y/z)
            if in_x:
                vx += -fx * rz2 * vJ02
            else:
                vz += -fx * rz3 * vJ02 * tx
            if in_y:
                vy += -fy * rz2 * vJ12
            else:
                vz += -fy * rz3 * vJ12 * ty
            vz += -fx * rz2 * vJ00 - fy * rz2 * vJ11 + 2.0 * fx * tx * rz3 * vJ02 + 2.0 * fy * ty * rz3 * vJ12
            v_means[g, 0] += R[0] * vx + R[3] * vy + R[6] * vz
            v_means[g, 1] += R[1] * vx + R[4] * vy + R[7] * vz
            v_means[g, 2] += R[2] * vx + R[5] * vy + R[8] * vz
            if want_cam:
                A = _mm(_mm(v_Sc, R), S3)
                vmc = (vx, vy, vz)
                mm = (m0, m1, m2)
                for i in range(3):
                    for k in range(3):
                        v_cam[c, g, 3 * i + k] = 2.0 * A[3 * i + k] + vmc[i] * mm[k]
                    v_cam[c, g, 9 + i] = vmc[i]
        # S3 = M M^T, M = Rq diag(s): v_M = 2 v_S3 M
        v_M = _mm(v_S3, M)
        # the gradient of Rq, laid out as the 3x3 matrix
        A = (
            2 * v_M[0] * scales[g, 0], 2 * v_M[1] * scales[g, 1], 2 * v_M[2] * scales[g, 2],
            2 * v_M[3] * scales[g, 0], 2 * v_M[4] * scales[g, 1], 2 * v_M[5] * scales[g, 2],
            2 * v_M[6] * scales[g, 0], 2 * v_M[7] * scales[g, 1], 2 * v_M[8] * scales[g, 2],
        )  # fmt: skip
        for k in range(3):
            v_scales[g, k] = 2 * (v_M[k] * Rq[k] + v_M[3 + k] * Rq[3 + k] + v_M[6 + k] * Rq[6 + k])
        w, x, y, z = w, x_, y_, z_
        vw = 2 * (-z * A[1] + y * A[2] + z * A[3] - x * A[5] - y * A[6] + x * A[7])
        vx = 2 * (y * A[1] + z * A[2] + y * A[3] - 2 * x * A[4] - w * A[5] + z * A[6] + w * A[7] - 2 * x * A[8])
        vy = 2 * (-2 * y * A[0] + x * A[1] + w * A[2] + x * A[3] + z * A[5] - w * A[6] + z * A[7] - 2 * y * A[8])
        vz = 2 * (-2 * z * A[0] - w * A[1] + x * A[2] + w * A[3] - 2 * z * A[4] + y * A[5] + x * A[6] + y * A[7])
        dot = w * vw + x * vx + y * vy + z * vz  # through the normalization q / |q|
        v_quats[g, 0] = (vw - w * dot) / qn
        v_quats[g, 1] = (vx - x * dot) / qn
        v_quats[g, 2] = (vy - y * dot) / qn
        v_quats[g, 3] = (vz - z * dot) / qn
    return v_means, v_quats, v_scales, v_cam
