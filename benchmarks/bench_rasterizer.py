"""Benchmark of the pure-PyTorch rasterizer (`render(..., backend="torch")`) on CPU.

    python benchmarks/bench_rasterizer.py            # headline case + size/count sweep
    python benchmarks/bench_rasterizer.py --quick    # headline case only, < 30 s

Prints a markdown table: forward time (no autograd), forward+backward time (a loss over rgb and
depth, gradients to all Gaussian parameters), the CPU time of that forward+backward (user+system,
all threads; useful when other processes compete for the cores), the peak extra memory of the
forward+backward, and the number of (pixel, Gaussian) pairs the rasterizer visits / draws.

Scenes imitate a feed-forward model's output: one camera (fov ~53 deg) and N Gaussians with
random means in its frustum (depth 2..6, 5% past the image borders), random rotations,
anisotropic scales and opacities in [0.1, 0.9], SH degree 0. At 128 x 128 with 32k Gaussians the
projected standard deviations are 0.7..2 px before anisotropy (gsplat's 3-sigma radii: 6 px on
average, 3..18 px), the size one Gaussian per cell of 8 views' 64 x 64 grids has. Other sizes
render the same kind of scene: sigma scales with the image size and with 1 / sqrt(N), so the
number of layers per pixel stays about the same.

Each case of the sweep runs in a fresh subprocess so that its peak memory (ru_maxrss minus the
resident size before rendering, after a small warm-up) is its own; --quick runs its one case in
process and stops repeating after a few seconds. `--threads N` sets torch's CPU threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

HEADLINE = (128, 32768)
SWEEP = [(size, n) for size in (64, 128, 256) for n in (8192, 32768, 131072)]


def make_scene(n: int, size: int, seed: int = 0):
    import torch

    from ilrm_nerfstudio.gaussians import Gaussians

    gen = torch.Generator().manual_seed(seed)
    f = float(size)
    z = 2.0 + 4.0 * torch.rand(n, generator=gen)
    u = (torch.rand(n, generator=gen) * 1.1 - 0.05) * size
    v = (torch.rand(n, generator=gen) * 1.1 - 0.05) * size
    means = torch.stack([(u - size / 2) / f * z, (v - size / 2) / f * z, z], dim=-1)
    sigma_px = (0.7 + 1.3 * torch.rand(n, generator=gen)) * (size / 128) * (32768 / n) ** 0.5
    scales = (sigma_px * z / f)[:, None] * torch.exp(0.3 * torch.randn(n, 3, generator=gen))
    gaussians = Gaussians(
        means=means,
        scales=scales,
        quats=torch.randn(n, 4, generator=gen),
        opacities=0.1 + 0.8 * torch.rand(n, generator=gen),
        sh=0.5 * torch.randn(n, 1, 3, generator=gen),
    )
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])[None]
    return gaussians, torch.eye(4)[None], K


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_case(size: int, n: int, reps: int, budget_s: float = float("inf")) -> dict:
    """Time one configuration (in a subprocess, except for --quick) and return its figures.
    Stops repeating after `budget_s` seconds (at least one timed run)."""
    import torch

    import ilrm_nerfstudio.rendering as rendering

    gaussians, c2w, K = make_scene(n, size)
    params = gaussians.map(lambda t: t.clone().requires_grad_(True))
    weights = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(1))
    pairs = {}
    enumerate_pairs = rendering._enumerate_pairs

    def counting(*args):  # record how many candidate pairs the rasterizer visits
        pix, gauss = enumerate_pairs(*args)
        pairs["visited"] = len(pix)
        return pix, gauss

    rendering._enumerate_pairs = counting

    def loss(out):
        return (out.rgb * weights).sum() + out.depth.mean()

    # warm-up (thread pool, autograd, allocator) on a small scene
    small, small_c2w, small_K = make_scene(4096, 64)
    small = small.map(lambda t: t.requires_grad_(True))
    rendering.render(small, small_c2w, small_K, 64, 64, backend="torch").rgb.sum().backward()
    base = rss_bytes()
    out = rendering.render(params, c2w, K, size, size, backend="torch")
    node = out.alpha.grad_fn  # find the compositing step to count the pairs it kept
    while node is not None and "Composite" not in type(node).__name__:
        node = node.next_functions[0][0]
    pairs["drawn"] = len(node.saved_tensors[6]) if node is not None else 0
    del node
    loss(out).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    del out

    fwd, fwd_bwd, cpu = [], [], []
    start = time.perf_counter()
    for _ in range(reps):
        if fwd and time.perf_counter() - start > budget_s:
            break
        t0 = time.perf_counter()
        with torch.no_grad():
            rendering.render(params, c2w, K, size, size, backend="torch")
        fwd.append(time.perf_counter() - t0)
        for p in (params.means, params.scales, params.quats, params.opacities, params.sh):
            p.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        loss(rendering.render(params, c2w, K, size, size, backend="torch")).backward()
        fwd_bwd.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "size": size, "n": n, "fwd": min(fwd), "fwd_bwd": min(fwd_bwd), "cpu": min(cpu),
        "peak_mb": peak / 2**20, "visited": pairs["visited"], "drawn": pairs["drawn"],
        "threads": torch.get_num_threads(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="headline case only (< 30 s)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per case (min is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--case", nargs=2, type=int, metavar=("SIZE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(args.case[0], args.case[1], args.reps or 3)))
        return

    cases = [HEADLINE] if args.quick else [HEADLINE] + [c for c in SWEEP if c != HEADLINE]
    reps = args.reps or (3 if args.quick else 5)
    rows = []
    for size, n in cases:
        if args.quick:  # one case: run it here, skipping a subprocess start; keep it < 30 s
            rows.append(run_case(size, n, reps, budget_s=4.0))
            continue
        cmd = [sys.executable, __file__, "--case", str(size), str(n), "--reps", str(reps)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"case {size}x{size}, {n} Gaussians failed:\n{result.stderr}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))

    command = "python benchmarks/bench_rasterizer.py" + (" --quick" if args.quick else "")
    if args.reps:
        command += f" --reps {args.reps}"
    if args.threads:
        command += f" --threads {args.threads}"
    runs = f"min of up to {reps} runs" if args.quick else f"min of {reps} runs"
    print(f"Command: `{command}` (torch CPU, {rows[0]['threads']} threads, {runs})\n")
    print("| image | Gaussians | forward (s) | forward+backward (s) | fwd+bwd CPU time (s) | peak memory (MB) | pairs visited | pairs drawn |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']}x{r['size']} | {r['n'] // 1024}k | {r['fwd']:.3f} | {r['fwd_bwd']:.3f} | {r['cpu']:.2f} "
            f"| {r['peak_mb']:.0f} | {r['visited'] / 1e6:.2f}M | {r['drawn'] / 1e6:.2f}M |"
        )


if __name__ == "__main__":
    main()
