"""Benchmark of the CPU rasterizer (`render(..., backend="torch")`) against an older revision.

    python benchmarks/bench_rasterizer.py --quick    # headline case, old vs new, < 1 min
    python benchmarks/bench_rasterizer.py            # + size/count sweep and per-scene sizes

The old implementation is loaded at run time from git (`git show REV:ilrm_nerfstudio/render/rendering.py`
into a temporary module; `--baseline REV`, default 0ee6342, the pure-PyTorch sparse-pair
rasterizer), so both run side by side in the same process on the same scene, alternating
repetitions: on a shared machine only ratios from one run mean much.

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
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

BASELINE = "0ee6342"
# (width, height, Gaussians, views, SH degree)
HEADLINE = (128, 128, 32768, 1, 0)
SWEEP = [(s, s, n, 1, 0) for s in (64, 128, 256) for n in (8192, 32768, 131072)]
PER_SCENE = [(512, 384, 100_000, 4, 3), (512, 384, 500_000, 4, 3)]
OLD_MAX_PIXELS = 256 * 256 * 4  # larger cases skip the old implementation unless --old-all


def make_scene(n: int, width: int, height: int | None = None, views: int = 1, sh_degree: int = 0, seed: int = 0):
    import torch

    from ilrm_nerfstudio.core.gaussians import Gaussians

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


def load_old(rev: str):
    """The renderer module of git revision `rev`, imported from a temporary file (None if git fails)."""
    source, error = None, None
    for file in ("ilrm_nerfstudio/render/rendering.py", "ilrm_nerfstudio/rendering.py"):  # 0.2 layout, then 0.1
        try:
            command = ["git", "-C", str(REPO), "show", f"{rev}:{file}"]
            source = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            break
        except (OSError, subprocess.CalledProcessError) as failure:
            error = failure
    if source is None:
        print(f"note: cannot load the old renderer from git ({error}); new implementation only", file=sys.stderr)
        return None
    path = Path(tempfile.mkdtemp()) / f"rendering_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"rendering_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


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


def run_case(case, reps: int, baseline: str | None, budget_s: float = float("inf")) -> dict:
    import torch

    import ilrm_nerfstudio.render.rendering as new

    width, height, n, views, sh_degree = case
    old = load_old(baseline) if baseline else None
    gaussians, c2w, K = make_scene(n, width, height, views, sh_degree)
    params = gaussians.map(lambda t: t.clone().requires_grad_(True))
    weights = torch.rand(views, height, width, 3, generator=torch.Generator().manual_seed(1))

    def loss(out):
        return (out.rgb * weights).sum() + out.depth.mean()

    impls = {"new": new} if old is None else {"new": new, "old": old}
    # warm-up (numba's cached kernels, thread pools, autograd, allocator) on a small scene
    small, small_c2w, small_K = make_scene(4096, 64)
    small = small.map(lambda t: t.requires_grad_(True))
    for module in impls.values():
        module.render(small, small_c2w, small_K, 64, 64, backend="torch").rgb.sum().backward()
    lane, drawn = count_pairs(new, gaussians, c2w, K, width, height)

    times = {name: {"fwd": [], "fwd_bwd": [], "cpu": []} for name in impls}
    start = time.perf_counter()
    for rep in range(reps):
        if rep and time.perf_counter() - start > budget_s:
            break
        for name, module in impls.items():  # alternate: both see the same load
            t0 = time.perf_counter()
            with torch.no_grad():
                module.render(params, c2w, K, width, height, backend="torch")
            times[name]["fwd"].append(time.perf_counter() - t0)
            for p in (params.means, params.scales, params.quats, params.opacities, params.sh):
                p.grad = None
            t0, c0 = time.perf_counter(), time.process_time()
            loss(module.render(params, c2w, K, width, height, backend="torch")).backward()
            times[name]["fwd_bwd"].append(time.perf_counter() - t0)
            times[name]["cpu"].append(time.process_time() - c0)
    result = {
        "case": list(case),
        "lane": lane,
        "drawn": drawn,
        "threads": torch.get_num_threads(),
        "reps": len(times["new"]["fwd"]),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    for name, t in times.items():
        result[name] = {k: min(v) for k, v in t.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="headline case only")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per case (min is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (the kernels use as many)")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the old renderer ('' = none)")
    parser.add_argument("--old-all", action="store_true", help="also time the old renderer on the large cases")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.case:
        case, baseline = json.loads(args.case)
        print(json.dumps(run_case(tuple(case), args.reps or 3, baseline)))
        return

    cases = [HEADLINE] if args.quick else [HEADLINE] + [c for c in SWEEP if c != HEADLINE] + PER_SCENE
    reps = args.reps or 5
    rows = []
    for case in cases:
        width, height, _, views, _ = case
        baseline = args.baseline if (args.old_all or width * height * views <= OLD_MAX_PIXELS) else ""
        if args.quick:  # one case: run it here, skipping a subprocess start
            rows.append(run_case(case, reps, baseline, budget_s=30.0))
            continue
        cmd = [sys.executable, __file__, "--case", json.dumps([case, baseline]), "--reps", str(reps if baseline else 3)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"case {case} failed:\n{result.stderr}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))

    command = "python benchmarks/bench_rasterizer.py" + (" --quick" if args.quick else "")
    for flag, value in (("--reps", args.reps), ("--threads", args.threads)):
        command += f" {flag} {value}" if value else ""
    command += f" --baseline {args.baseline}" if args.baseline != BASELINE else ""
    command += " --old-all" if args.old_all else ""
    load = os.getloadavg()[0]
    print(
        f"Command: `{command}` ({rows[0]['threads']} threads, min of up to {reps} alternating runs, "
        f"old = {args.baseline or 'none'}, load average {load:.1f})\n"
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
