"""Benchmark of the CPU rasterizer (`render(..., backend="torch")`) against an older revision.

    python benchmarks/bench_rasterizer.py --quick    # headline case, old vs new, < 1 min
    python benchmarks/bench_rasterizer.py            # + size/count sweep and per-scene sizes

The old implementation is the renderer of an older revision (`--baseline REV`, default 0ee6342,
the pure-PyTorch sparse-pair rasterizer), checked out at run time into a git worktree of its own
(removed afterwards; `worktree.py`). Each implementation runs in a worker process that imports
`ilrm_nerfstudio` from its own tree and builds the same scene (same seed); the parent has the two
workers take turns, one repetition each, so both see the same load: on a shared machine only
ratios from one run mean much.

Prints a markdown table: forward time (no autograd), forward+backward time (a loss over rgb and
depth, gradients to all Gaussian parameters), their old/new ratios, the pairs drawn (pixel,
Gaussian pairs in front of the transmittance stop, the same for both) and drawn pairs per second
of forward+backward; the new kernels' lane pairs (64 pixels of an 8 x 8 block x the Gaussians
listed in it) and the peak resident memory of the case's process.

Scenes imitate a feed-forward model's output: cameras (fov ~53 deg) and N Gaussians with random
means in the frustum (depth 2..6, 5% past the image borders), random rotations, anisotropic
scales and opacities in [0.1, 0.9], SH degree 0. At 128 x 128 with 32k Gaussians the projected
standard deviations are 0.7..2 px before anisotropy (gsplat's 3-sigma radii: 6 px on average),
the size one Gaussian per cell of 8 views' 64 x 64 grids has. Other sizes render the same kind of
scene: sigma scales with the image size and with 1 / sqrt(N), so the layers per pixel stay about
the same. Per-scene cases render several 512 x 384 views (cameras shifted sideways) with SH
degree 3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import worktree

REPO = Path(__file__).resolve().parents[1]
# The tree whose renderer this process imports: the working tree, or in the old side's worker
# (`--tree`) the baseline's worktree. First on the path, so that it wins over the installed package.
TREE = Path(sys.argv[sys.argv.index("--tree") + 1]) if "--tree" in sys.argv[:-1] else REPO
if str(TREE) not in sys.path:
    sys.path.insert(0, str(TREE))

BASELINE = "0ee6342"
# (width, height, Gaussians, views, SH degree)
HEADLINE = (128, 128, 32768, 1, 0)
SWEEP = [(s, s, n, 1, 0) for s in (64, 128, 256) for n in (8192, 32768, 131072)]
PER_SCENE = [(512, 384, 100_000, 4, 3), (512, 384, 500_000, 4, 3)]
OLD_MAX_PIXELS = 256 * 256 * 4  # larger cases skip the old implementation unless --old-all


def load_modules():
    """(rendering module, Gaussians class) of this process's tree, in either package layout."""
    # Chosen by the files of the tree: a module missing there would be found in the working tree
    # by the editable install's finder, which would time the new renderer twice.
    if (TREE / "ilrm_nerfstudio" / "render" / "rendering.py").is_file():  # 0.2 layout
        import ilrm_nerfstudio.render.rendering as rendering
        from ilrm_nerfstudio.core.gaussians import Gaussians
    else:  # 0.1 layout (the default baseline)
        import ilrm_nerfstudio.rendering as rendering
        from ilrm_nerfstudio.gaussians import Gaussians
    if not Path(rendering.__file__).resolve().is_relative_to(TREE.resolve()):
        sys.exit(f"imported {rendering.__file__}, not the renderer of {TREE}")
    return rendering, Gaussians


def make_scene(n: int, width: int, height: int | None = None, views: int = 1, sh_degree: int = 0, seed: int = 0):
    import torch

    Gaussians = load_modules()[1]
    height = height or width
    gen = torch.Generator().manual_seed(seed)
    f = float(width)
    z = 2.0 + 4.0 * torch.rand(n, generator=gen)
    u = (torch.rand(n, generator=gen) * 1.1 - 0.05) * width
    v = (torch.rand(n, generator=gen) * 1.1 - 0.05) * height
    means = torch.stack([(u - width / 2) / f * z, (v - height / 2) / f * z, z], dim=-1)
    area = width * height / 128**2
    sigma_px = (0.7 + 1.3 * torch.rand(n, generator=gen)) * (area * 32768 / n) ** 0.5
    scales = (sigma_px * z / f)[:, None] * torch.exp(0.3 * torch.randn(n, 3, generator=gen))
    K = (sh_degree + 1) ** 2
    sh = 0.5 * torch.randn(n, K, 3, generator=gen) * torch.cat([torch.ones(1), torch.full((K - 1,), 0.2)])[:, None]
    gaussians = Gaussians(
        means=means,
        scales=scales,
        quats=torch.randn(n, 4, generator=gen),
        opacities=0.1 + 0.8 * torch.rand(n, generator=gen),
        sh=sh,
    )
    Ks = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]]).expand(views, 3, 3).clone()
    c2w = torch.eye(4).expand(views, 4, 4).clone()
    c2w[:, 0, 3] = torch.linspace(-0.1, 0.1, views) if views > 1 else 0.0  # sideways: mostly shared content
    return gaussians, c2w, Ks


def count_pairs(rendering, gaussians, c2w, K, width, height) -> tuple[int, int]:
    """(lane pairs, drawn pairs) of the new kernels for this scene."""
    import torch

    from ilrm_nerfstudio.render import raster_cpu as raster_cpu

    totals = [0, 0]
    fwd = raster_cpu.rasterize_fwd

    def counting(starts, packed, w, h, consts):
        out = fwd(starts, packed, w, h, consts)
        lane, drawn = raster_cpu.count_pairs(starts, packed, out[2], w, h)
        totals[0] += lane
        totals[1] += drawn
        return out

    raster_cpu.rasterize_fwd = counting
    try:
        with torch.no_grad():
            rendering.render(gaussians, c2w, K, width, height, backend="torch")
    finally:
        raster_cpu.rasterize_fwd = fwd
    return totals[0], totals[1]


def worker(case, count: bool) -> None:
    """One implementation's side of a case: build the scene, warm up, then one timed repetition
    per line "rep" on stdin (a JSON line each on stdout); "stop" ends with the peak memory."""
    import torch

    rendering = load_modules()[0]
    width, height, n, views, sh_degree = case
    gaussians, c2w, K = make_scene(n, width, height, views, sh_degree)
    params = gaussians.map(lambda t: t.clone().requires_grad_(True))
    weights = torch.rand(views, height, width, 3, generator=torch.Generator().manual_seed(1))
    # warm-up (numba's kernels, thread pools, autograd, allocator) on a small scene
    small, small_c2w, small_K = make_scene(4096, 64)
    small = small.map(lambda t: t.requires_grad_(True))
    rendering.render(small, small_c2w, small_K, 64, 64, backend="torch").rgb.sum().backward()
    ready = {"threads": torch.get_num_threads()}
    if count:
        ready["lane"], ready["drawn"] = count_pairs(rendering, gaussians, c2w, K, width, height)
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        if line.strip() != "rep":
            break
        with torch.no_grad():
            t0 = time.perf_counter()
            rendering.render(params, c2w, K, width, height, backend="torch")
            fwd = time.perf_counter() - t0
        for p in (params.means, params.scales, params.quats, params.opacities, params.sh):
            p.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        out = rendering.render(params, c2w, K, width, height, backend="torch")
        ((out.rgb * weights).sum() + out.depth.mean()).backward()
        times = {"fwd": fwd, "fwd_bwd": time.perf_counter() - t0, "cpu": time.process_time() - c0}
        print(json.dumps(times), flush=True)
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


class Worker:
    """A worker process (this script with `--worker`) importing the renderer of `tree`."""

    def __init__(self, tree: Path, case, count: bool, threads: int | None):
        command = [sys.executable, __file__, "--worker", json.dumps(list(case)), "--tree", str(tree)]
        command += ["--count"] if count else []
        command += ["--threads", str(threads)] if threads else []
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.tree = tree
        self.ready = self.read()

    def read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            sys.exit(f"the worker for {self.tree} failed (exit status {self.process.returncode}; its error is above)")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def stop(self) -> dict:
        result = self.ask("stop")
        self.process.stdin.close()
        self.process.wait()
        return result


def run_case(case, reps: int, old_tree: Path | None, threads: int | None, budget_s: float = float("inf")) -> dict:
    """Time `case` with the new renderer (and the old one of `old_tree`), alternating repetitions."""
    workers = {"new": Worker(REPO, case, True, threads)}
    if old_tree is not None:  # started after the new one is ready: no overlap of their warm-ups
        workers["old"] = Worker(old_tree, case, False, threads)
    times = {name: {"fwd": [], "fwd_bwd": [], "cpu": []} for name in workers}
    start = time.perf_counter()
    for rep in range(reps):
        if rep and time.perf_counter() - start > budget_s:
            break
        for name, worker in workers.items():  # one at a time: the other waits on its stdin
            for key, value in worker.ask("rep").items():
                times[name][key].append(value)
    ends = {name: worker.stop() for name, worker in workers.items()}
    result = {
        "case": list(case),
        "lane": workers["new"].ready["lane"],
        "drawn": workers["new"].ready["drawn"],
        "threads": workers["new"].ready["threads"],
        "reps": len(times["new"]["fwd"]),
        "peak_mb": ends["new"]["peak_mb"],
    }
    for name, t in times.items():
        result[name] = {k: min(v) for k, v in t.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="headline case only, at most ~30 s of repetitions")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per case (min is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (the kernels use as many)")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the old renderer ('' = none)")
    parser.add_argument("--old-all", action="store_true", help="also time the old renderer on the large cases")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a case (JSON): run as one side's worker
    parser.add_argument("--tree", help=argparse.SUPPRESS)  # read at import (TREE)
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        worker(tuple(json.loads(args.worker)), args.count)
        return

    cases = [HEADLINE] if args.quick else [HEADLINE] + [c for c in SWEEP if c != HEADLINE] + PER_SCENE
    reps = args.reps or 5
    rows = []
    with contextlib.ExitStack() as stack:
        old_tree = stack.enter_context(worktree.checkout(args.baseline)) if args.baseline else None
        for case in cases:
            width, height, _, views, _ = case
            with_old = old_tree is not None and (args.old_all or width * height * views <= OLD_MAX_PIXELS)
            budget = 30.0 if args.quick else float("inf")
            rows.append(
                run_case(case, reps if with_old else min(reps, 3), old_tree if with_old else None, args.threads, budget)
            )

    command = "python benchmarks/bench_rasterizer.py" + (" --quick" if args.quick else "")
    for flag, value in (("--reps", args.reps), ("--threads", args.threads)):
        command += f" {flag} {value}" if value else ""
    command += f" --baseline {args.baseline}" if args.baseline != BASELINE else ""
    command += " --old-all" if args.old_all else ""
    load = os.getloadavg()[0]
    print(
        f"Command: `{command}` ({rows[0]['threads']} threads, min of up to {reps} alternating runs, "
        f"old = {worktree.short_revision(args.baseline) if args.baseline else 'none'}, load average {load:.1f})\n"
    )
    print(
        "| image | views | Gaussians | SH | old fwd (s) | new fwd (s) | fwd ratio | old fwd+bwd (s) | new "
        "fwd+bwd (s) | fwd+bwd ratio | new fwd+bwd CPU (s) | pairs drawn | drawn pairs/s (new fwd+bwd) | "
        "lane pairs | peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        width, height, n, views, sh = r["case"]
        new, old = r["new"], r.get("old")
        o = lambda key: f"{old[key]:.3f}" if old else "-"  # noqa: E731
        ratio = lambda key: f"**{old[key] / new[key]:.1f}x**" if old else "-"  # noqa: E731
        print(
            f"| {width}x{height} | {views} | {f'{n // 1024}k' if n % 1024 == 0 else f'{n / 1000:.0f}k'} "
            f"| {sh} | {o('fwd')} | {new['fwd']:.3f} | {ratio('fwd')} | {o('fwd_bwd')} | "
            f"{new['fwd_bwd']:.3f} | {ratio('fwd_bwd')} | {new['cpu']:.3f} | {r['drawn'] / 1e6:.2f}M | "
            f"{r['drawn'] / new['fwd_bwd'] / 1e6:.0f}M | {r['lane'] / 1e6:.1f}M | {r['peak_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
