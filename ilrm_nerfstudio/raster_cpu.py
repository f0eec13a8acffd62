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


@nb.njit(parallel=True, cache=True)
def _ranges(means2d, cov2d, opac, radii, width, height):
    """Per Gaussian: the block range [bx0, bx1) x [by0, by1) it is listed in, and its count."""
    S = means2d.shape[0]
    tile_w = (width + TILE_SIZE - 1) // TILE_SIZE
    tile_h = (height + TILE_SIZE - 1) // TILE_SIZE
    ranges = np.zeros((S, 4), np.int64)
    counts = np.zeros(S, np.int64)
    ts = np.float32(TILE_SIZE)
    for g in nb.prange(S):
        r = radii[g]
        o = opac[g]
        if r <= 0 or o < ALPHA_MIN:
            continue
        mx = means2d[g, 0]
        my = means2d[g, 1]
        # gsplat's isect_tiles, in float32 as gsplat: tiles [floor(t - r), ceil(t + r))
        tr = np.float32(r) / ts
        fx, fy = np.float32(mx) / ts, np.float32(my) / ts
        tx0 = min(max(0, int(math.floor(fx - tr))), tile_w) * TILE_SIZE
        tx1 = min(min(max(0, int(math.ceil(fx + tr))), tile_w) * TILE_SIZE, width)
        ty0 = min(max(0, int(math.floor(fy - tr))), tile_h) * TILE_SIZE
        ty1 = min(min(max(0, int(math.ceil(fy + tr))), tile_h) * TILE_SIZE, height)
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
        ranges[g, 0], ranges[g, 1], ranges[g, 2], ranges[g, 3] = bx0, bx1, by0, by1
        counts[g] = (bx1 - bx0) * (by1 - by0)
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
def _pack(means2d, conics, opac, feats, g_start, slot, dtype_like):
    S = means2d.shape[0]
    E = slot.shape[0]
    ids = np.empty(E, np.int32)
    packed = np.empty((E, _P + N_FEATURES), dtype_like.dtype)
    for g in nb.prange(S):
        k0, k1 = g_start[g], g_start[g + 1]
        if k1 == k0:
            continue
        thresh = math.log(max(255.0 * opac[g], 1.0)) + 1e-3  # no pair with a larger power reaches 1/255
        for k in range(k0, k1):
            j = slot[k]
            ids[j] = g
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


def bin_gaussians(means2d, conics, cov2d, opac, radii, feats, width, height):
    """-> starts [n_blocks + 1], ids [E] int32, packed [E, 11], g_start [S + 1], slot [E]."""
    nbx = (width + BLOCK - 1) // BLOCK
    n_blocks = nbx * ((height + BLOCK - 1) // BLOCK)
    ranges, counts = _ranges(means2d, cov2d, opac, radii, width, height)
    g_start = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=g_start[1:])
    starts, slot = _assign(ranges, g_start, nbx, n_blocks)
    ids, packed = _pack(means2d, conics, opac, feats, g_start, slot, means2d[:0, 0])
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
        for l in range(LANES):
            st[0, l] = zero + (x0 + l % BLOCK) + half
            st[1, l] = zero + (y0 + l // BLOCK) + half
            st[2, l] = one
            st[3, l] = one if (y0 + l // BLOCK < height and x0 + l % BLOCK < width) else zero
            for k in range(4, 9):
                st[k, l] = zero
        for j in range(s, e):
            mx, my, a, b, c = packed[j, 0], packed[j, 1], packed[j, 2], packed[j, 3], packed[j, 4]
            o, th = packed[j, 5], packed[j, 6]
            f0, f1, f2, f3 = packed[j, 7], packed[j, 8], packed[j, 9], packed[j, 10]
            cast[0] = j + 1 - s
            jj = cast[0]
            n_live = zero
            for l in range(LANES):
                dx = mx - st[0, l]
                dy = my - st[1, l]
                power = half * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = min(amax, o * _exp_neg(min(max(power, zero), pmax), C))
                t = st[2, l]
                nt = t * (one - alpha)
                ok = (power >= zero) & (power <= th) & (alpha >= amin) & (st[3, l] > zero)
                draw = ok & (nt > tmin)
                w = alpha * t if draw else zero
                st[5, l] += w * f0
                st[6, l] += w * f1
                st[7, l] += w * f2
                st[8, l] += w * f3
                st[2, l] = nt if draw else t
                st[4, l] = jj if draw else st[4, l]
                live = zero if (ok & (nt <= tmin)) else st[3, l]  # stopped: nothing more drawn
                st[3, l] = live
                n_live += live
            if n_live == zero:
                break
        for l in range(LANES):
            py, px = y0 + l // BLOCK, x0 + l % BLOCK
            if py < height and px < width:
                pix = py * width + px
                for d in range(N_FEATURES):
                    out[pix, d] = st[5 + d, l]
                t_final[pix] = st[2, l]
                end[pix] = s + int(st[4, l])
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
        for l in range(LANES):
            py, px = y0 + l // BLOCK, x0 + l % BLOCK
            st[0, l] = zero + px + half
            st[1, l] = zero + py + half
            if py < height and px < width:
                pix = py * width + px
                T = t_final[pix]
                st[2, l] = T
                st[3, l] = zero + (end[pix] - s)
                st[4, l] = v_alpha[pix] * T  # d(1 - T_final) / d a_i = T_final / (1 - a_i)
                for d in range(N_FEATURES):
                    st[5 + d, l] = v_out[pix, d]
                last = max(last, end[pix])
        for j in range(last - 1, s - 1, -1):
            mx, my, a, b, c = packed[j, 0], packed[j, 1], packed[j, 2], packed[j, 3], packed[j, 4]
            o, th = packed[j, 5], packed[j, 6]
            f0, f1, f2, f3 = packed[j, 7], packed[j, 8], packed[j, 9], packed[j, 10]
            cast[0] = j - s
            jr = cast[0]
            g_mx = g_my = g_a = g_b = g_c = g_o = g_f0 = g_f1 = g_f2 = g_f3 = zero
            for l in range(LANES):
                dx = mx - st[0, l]
                dy = my - st[1, l]
                power = half * (a * dx * dx + c * dy * dy) + b * dx * dy
                ex = _exp_neg(min(max(power, zero), pmax), C)
                raw = o * ex
                alpha = min(amax, raw)
                ok = (power >= zero) & (power <= th) & (alpha >= amin) & (jr < st[3, l])
                ra = one / (one - alpha)
                t = st[2, l] * ra  # transmittance in front of this Gaussian
                w = alpha * t if ok else zero
                v0, v1, v2, v3 = st[5, l], st[6, l], st[7, l], st[8, l]
                v_a = st[4, l] * ra + (
                    v0 * (f0 * t - st[9, l] * ra) + v1 * (f1 * t - st[10, l] * ra)
                    + v2 * (f2 * t - st[11, l] * ra) + v3 * (f3 * t - st[12, l] * ra)
                )  # fmt: skip
                g_f0 += w * v0
                g_f1 += w * v1
                g_f2 += w * v2
                g_f3 += w * v3
                st[9, l] += w * f0
                st[10, l] += w * f1
                st[11, l] += w * f2
                st[12, l] += w * f3
                st[2, l] = t if ok else st[2, l]
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
