"""The Gaussian window sums of the training SSIM on a CPU: a separable "valid" blur and its
adjoint (the backward) as numba loops, about 11 multiply-adds per pixel and pass where the
banded-matrix product does one per pixel and column (fwd + bwd 3-4.7x faster at 384 x 512:
benchmarks/bench_training_ssim.py)."""

from __future__ import annotations

import numba as nb
import numpy as np
import torch
from torch import Tensor


@nb.njit(parallel=True, cache=True)
def _valid_blur(x, k):  # [N, H, W] -> [N, H - t + 1, W - t + 1], t = len(k)
    n, h, w = x.shape
    t = k.shape[0]
    ho, wo = h - t + 1, w - t + 1
    rows = np.zeros((n, h, wo), dtype=x.dtype)
    for nh in nb.prange(n * h):  # along W
        b, i = nh // h, nh % h
        for q in range(t):
            for j in range(wo):
                rows[b, i, j] += k[q] * x[b, i, j + q]
    out = np.zeros((n, ho, wo), dtype=x.dtype)
    for nh in nb.prange(n * ho):  # along H
        b, i = nh // ho, nh % ho
        for q in range(t):
            for j in range(wo):
                out[b, i, j] += k[q] * rows[b, i + q, j]
    return out


@nb.njit(parallel=True, cache=True)
def _valid_blur_adjoint(g, k):  # [N, Ho, Wo] -> [N, Ho + t - 1, Wo + t - 1]
    n, ho, wo = g.shape
    t = k.shape[0]
    h, w = ho + t - 1, wo + t - 1
    rows = np.zeros((n, h, wo), dtype=g.dtype)
    for nh in nb.prange(n * h):  # each input row gathers the output rows it fed
        b, i = nh // h, nh % h
        for q in range(max(0, i - ho + 1), min(t, i + 1)):
            for j in range(wo):
                rows[b, i, j] += k[q] * g[b, i - q, j]
    out = np.zeros((n, h, w), dtype=g.dtype)
    for nh in nb.prange(n * h):
        b, i = nh // h, nh % h
        for q in range(t):
            for j in range(wo):
                out[b, i, j + q] += k[q] * rows[b, i, j]
    return out


class ValidBlur(torch.autograd.Function):
    """x [..., H, W] -> the window sums with the 1-D kernel `k` along both axes [..., H - t + 1, W - t + 1]."""

    @staticmethod
    def forward(ctx, x: Tensor, k: Tensor) -> Tensor:
        ctx.k = k.detach().to(x.dtype).numpy()
        y = _valid_blur(x.detach().reshape(-1, *x.shape[-2:]).contiguous().numpy(), ctx.k)
        return torch.from_numpy(y).reshape(*x.shape[:-2], *y.shape[-2:])

    @staticmethod
    def backward(ctx, grad: Tensor):
        g = _valid_blur_adjoint(grad.reshape(-1, *grad.shape[-2:]).contiguous().numpy(), ctx.k)
        return torch.from_numpy(g).reshape(*grad.shape[:-2], *g.shape[-2:]), None
