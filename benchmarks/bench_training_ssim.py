"""The SSIM of the per-scene loss on a CPU: its window sums as banded-matrix products (the path used
off the CPU) against the numba blur (metrics/blur_cpu.py), forward + backward, measured
side by side in one run at each image size.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_training_ssim.py [--sizes 384x512 768x1024] [--reps 7]
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_training_ssim.py --quick   # a few seconds: checks the script

Prints a markdown table (size, seconds per forward + backward of each path, the ratio, the largest
difference between the two values and gradients) and the command that made it.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ilrm_nerfstudio.metrics.image import training_ssim  # noqa: E402


def seconds(fn, pred: torch.Tensor, target: torch.Tensor, reps: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Best forward + backward time of `fn` over `reps` (after one untimed call), its value and gradient."""
    times = []
    for _ in range(reps + 1):
        pred.grad = None
        started = time.perf_counter()
        value = fn(pred, target).sum()
        value.backward()
        times.append(time.perf_counter() - started)
    return min(times[1:]), value.detach(), pred.grad.clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["384x512", "768x1024"], help="HxW of the images")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one small size, 2 repetitions")
    args = parser.parse_args()
    sizes, reps = (["96x128"], 2) if args.quick else (args.sizes, args.reps)
    generator = torch.Generator().manual_seed(0)
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}\n")
    print("| size (HxW) | banded matrices (s) | numba blur (s) | ratio | max difference (value, gradient) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for size in sizes:
        height, width = (int(n) for n in size.split("x"))
        target = torch.rand(1, 3, height, width, generator=generator)
        pred = (target + 0.1 * torch.randn(1, 3, height, width, generator=generator)).clamp(0, 1).requires_grad_(True)
        band, band_value, band_grad = seconds(functools.partial(training_ssim, banded=True), pred, target, reps)
        blur, blur_value, blur_grad = seconds(functools.partial(training_ssim, banded=False), pred, target, reps)
        value_diff = float((band_value - blur_value).abs())
        grad_diff = float((band_grad - blur_grad).abs().max())
        print(f"| {size} | {band:.4f} | {blur:.4f} | {band / blur:.1f}x | {value_diff:.1e}, {grad_diff:.1e} |")
    print(f"\nCommand: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`".rstrip())


if __name__ == "__main__":
    main()
