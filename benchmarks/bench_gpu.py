"""Benchmark 5: the GPU check, one script, at most 8 minutes on one H100 / H200.

A. gsplat vs our PyTorch rasterizer (on the CPU) on the same Gaussians: max abs difference of the
   images, the alpha and the gradients of every Gaussian field.
B. One `ns-train ilrm` step (nerfstudio's Trainer.train_iteration: data, forward, render, loss,
   backward, AdamW, schedule) of the base model at 256x256, batch 8: bf16 autocast, flash
   attention and gradient checkpointing on vs off (time, peak memory).
C. Forward latency of (2,F,F), (4,H,F), (8,H,F) at 256x256 (paper Table 1, RTX 4090: 0.025 /
   0.027 / 0.028 s).
D. One training iteration with full / half / quarter cross-attention at (8,H,F) 256x256, batch 16
   if it fits (paper Table 8: time 1 : 0.75 : 0.62, memory 1 : 0.76 : 0.62).
E. The (32,H,F) forward at 540x960 (run at 544x960, the next size the token grid divides; paper
   0.53 s on an H100) and its peak memory.
F. Two-process DDP training (`ilrm-train`, NCCL) when two CUDA devices are present.

Every section is guarded: a failure (out of memory, a kernel this GPU lacks) becomes a
"failed: ..." row and the other sections still run. Each section has its own deadline
(--section-deadline-s), enforced inside it by an alarm: the rows done by then stay and one row says
where it stopped. Each section prints its table and appends it to <output-dir>/bench_gpu.md as
soon as it ends (output dir: --output-dir, else $OUT, else ./gpu_check_out), so a crash later
loses nothing before it. `--only KEY` runs one section (scripts/gpu_check.sh runs each in its own
process, so that a sticky CUDA error ends only its own section).

`--device cpu --quick` runs the same code at toy sizes on the CPU (the test suite does, so that the
script cannot rot). Without CUDA there is no gsplat rasterizer, so section A then compares our CPU
rasterizer with gsplat's own PyTorch reference (gsplat/cuda/_torch_impl.py: projection, SH, tile
lists) composited by gsplat's kernel rules; F runs with 2 gloo processes.
The output is markdown that can be pasted into docs/scalability.md as is.

    python benchmarks/bench_gpu.py --device cuda [--output-dir bench_out] [--compile]
    python benchmarks/bench_gpu.py --device cpu --quick [--only rasterizer]
"""

from __future__ import annotations

import copy
import gc
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from bench_scaling import (
    base_parser,
    command_line,
    describe_machine,
    markdown_table,
    mb,
    scene_inputs,
    setup,
    synchronize,
    time_call,
    time_interleaved,
)

from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.core.network import ILRM, ILRMNetworkConfig
from ilrm_nerfstudio.render.rendering import render

REPO = Path(__file__).resolve().parents[1]
PAPER_LATENCY = {(2, 1): 0.025, (4, 2): 0.027, (8, 2): 0.028}  # (views, viewpoint factor) -> s, RTX 4090
PAPER_MINIBATCH = {1: (1.0, 1.0), 2: (0.75, 0.76), 4: (0.62, 0.62)}  # groups -> (time, memory) ratios
GROUP_NAMES = {1: "full", 2: "half", 4: "quarter"}
FIELDS = ("means", "scales", "quats", "opacities", "sh")


class Context:
    """Sizes (full or --quick), the device, a scratch folder and the generated data set."""

    def __init__(self, args, device: torch.device):
        self.args, self.device, self.quick = args, device, args.quick
        self.cuda = device.type == "cuda"
        self.scratch = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
        self._data: Path | None = None
        q = args.quick
        self.resolution = 32 if q else 256
        self.net = dict(width=32, num_heads=2, num_layers=1) if q else {}  # {} = the base model
        self.cloud = 500 if q else 50_000
        self.repeats = 2 if q else 20
        self.minibatch = [2] if q else [16, 8, 4]  # batch sizes to try, largest first
        self.large = (4, 32, 64) if q else (32, 544, 960)  # views, height, width
        self.train_steps = 1 if q else 3
        self.deadline = math.inf  # of the running section (time.perf_counter() seconds)

    def dataset(self) -> Path:
        """Generated scenes at the benchmark resolution (made once)."""
        if self._data is None:
            from ilrm_nerfstudio.data.synthetic import generate_dataset

            root = self.scratch / "synthetic"
            n = 4 if self.quick else 10
            generate_dataset(
                root,
                num_scenes=n,
                seed=0,
                height=self.resolution,
                width=self.resolution,
                frames_per_scene=8 if self.quick else 24,
                test_fraction=0.25 if self.quick else 0.2,
                workers=1 if self.quick else min(8, os.cpu_count() or 1),
            )
            self._data = root
        return self._data

    def seconds_left(self) -> float:
        return self.deadline - time.perf_counter()

    def autocast(self, bf16: bool = True):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and self.cuda)


def measure_peak(fn: Callable[[], object], device: torch.device) -> tuple[int, int | None]:
    """(peak bytes above what was allocated before, peak bytes in all) of fn(); on the CPU the
    first from the profiler (bench_scaling.peak_memory), the second unknown."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak - before, peak
    from bench_scaling import peak_memory

    return peak_memory(fn, device), None


def gib(nbytes: int | None) -> str | float:
    return "" if nbytes is None else nbytes / 2**30


def free(device: torch.device) -> None:
    """Release what the last section or variant left; never raises (after a sticky CUDA error every
    CUDA call fails, and the tables must still be written)."""
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.empty_cache()
        except Exception as error:  # noqa: BLE001
            print(f"[bench_gpu] could not free CUDA memory: {failure(error)}", file=sys.stderr, flush=True)


class SectionDeadline(BaseException):
    """Raised by the alarm when a section's deadline passes. A BaseException, so that the guards
    of single variants (`except Exception`) do not swallow it; `finally` blocks still free memory."""


def within(ctx: Context, seconds: float) -> float:
    """A timing budget that ends before the section's deadline."""
    return max(0.0, min(seconds, ctx.seconds_left() - 1.0))


# -- A. rasterizer agreement --------------------------------------------------------------------


def random_cloud(n: int, seed: int = 0) -> Gaussians:
    """n Gaussians in a 2 x 2 x 2 box around the origin (seen by the ring cameras of scene_inputs)."""
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.rand(n, 3, generator=g) * 2 - 1,
        scales=torch.exp(torch.empty(n, 3).uniform_(math.log(0.005), math.log(0.05), generator=g)),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        opacities=torch.empty(n).uniform_(0.05, 0.95, generator=g),
        sh=torch.randn(n, 1, 3, generator=g) * 0.5,
    )


def gsplat_reference_render(g: Gaussians, c2w, K, width: int, height: int, background):
    """gsplat 1.4.0's PyTorch reference code (gsplat/cuda/_torch_impl.py: covariances, projection,
    SH colours, tile intersection) composited front to back by the rules of its CUDA rasterizer
    (alpha = min(0.999, o exp(-power)); skip power < 0 or alpha < 1/255; a pixel stops before the
    Gaussian that would bring its transmittance to <= 1e-4). Everything is autograd, on any device:
    an independent reference for our CPU rasterizer where gsplat's kernels cannot run."""
    from gsplat.cuda._torch_impl import (
        _fully_fused_projection,
        _isect_offset_encode,
        _isect_tiles,
        _quat_scale_to_covar_preci,
        _spherical_harmonics,
    )

    from ilrm_nerfstudio.render.rendering import EPS2D, TILE_SIZE

    C, N = c2w.shape[0], len(g)
    covars, _ = _quat_scale_to_covar_preci(g.quats, g.scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        g.means, covars, torch.linalg.inv(c2w), K, width, height, eps2d=EPS2D
    )
    sh_degree = math.isqrt(g.sh.shape[1]) - 1
    dirs = g.means[None] - c2w[:, None, :3, 3]
    colors = torch.clamp_min(_spherical_harmonics(sh_degree, dirs, g.sh[None].expand(C, -1, -1, -1)) + 0.5, 0.0)
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    _, isect_ids, flatten_ids = _isect_tiles(means2d, radii, depths, TILE_SIZE, tiles_x, tiles_y)
    offsets = _isect_offset_encode(isect_ids, C, tiles_x, tiles_y).flatten().tolist() + [len(flatten_ids)]
    opacities = g.opacities.expand(C, -1)
    corner = torch.stack(torch.meshgrid(torch.arange(TILE_SIZE), torch.arange(TILE_SIZE), indexing="xy"), -1)
    corner = corner.reshape(-1, 2).to(means2d) + 0.5  # pixel centres of a tile, x then y
    images, alphas = [], []
    for c in range(C):
        rows_rgb, rows_alpha = [], []
        for ty in range(tiles_y):
            tiles_rgb, tiles_alpha = [], []
            for tx in range(tiles_x):
                tile = (c * tiles_y + ty) * tiles_x + tx
                ids = flatten_ids[offsets[tile] : offsets[tile + 1]] % N  # depth order
                delta = corner[:, None, :] + torch.tensor([tx, ty]).to(corner) * TILE_SIZE - means2d[c, ids][None]
                a, b, cc = conics[c, ids].unbind(-1)
                power = 0.5 * (a * delta[..., 0] ** 2 + cc * delta[..., 1] ** 2) + b * delta[..., 0] * delta[..., 1]
                alpha = torch.clamp_max(opacities[c, ids] * torch.exp(-power), 0.999)
                alpha = torch.where((power >= 0) & (alpha >= 1.0 / 255.0), alpha, torch.zeros_like(alpha))
                after = torch.cumprod(1.0 - alpha, dim=1)
                before = torch.cat([torch.ones_like(after[:, :1]), after[:, :-1]], dim=1)
                weights = alpha * before * (after > 1e-4).detach()
                tiles_rgb.append((weights[..., None] * colors[c, ids][None]).sum(1).reshape(TILE_SIZE, TILE_SIZE, 3))
                tiles_alpha.append(weights.sum(1).reshape(TILE_SIZE, TILE_SIZE, 1))
            rows_rgb.append(torch.cat(tiles_rgb, dim=1))
            rows_alpha.append(torch.cat(tiles_alpha, dim=1))
        images.append(torch.cat(rows_rgb, dim=0)[:height, :width])
        alphas.append(torch.cat(rows_alpha, dim=0)[:height, :width])
    rgb, alpha = torch.stack(images), torch.stack(alphas)
    return rgb + (1.0 - alpha) * background, alpha


def render_with_grads(gaussians: Gaussians, c2w, K, R: int, weights: tuple, backend: str, device: torch.device):
    """Images and the gradients of every field of a fixed random linear loss on rgb and alpha;
    the time of a second call (the first may build gsplat's CUDA kernels). backend "reference" is
    gsplat_reference_render."""
    for _ in range(2):
        params = gaussians.map(lambda t: t.detach().to(device).clone().requires_grad_(True))
        background = torch.ones(3, device=device)
        synchronize(device)
        start = time.perf_counter()
        if backend == "reference":
            rgb, alpha = gsplat_reference_render(params, c2w.to(device), K.to(device), R, R, background)
        else:
            out = render(params, c2w.to(device), K.to(device), R, R, background, backend=backend)
            rgb, alpha = out.rgb, out.alpha
        loss = (rgb * weights[0].to(device)).sum() + (alpha * weights[1].to(device)).sum()
        loss.backward()
        synchronize(device)
        seconds = time.perf_counter() - start
    grads = {name: getattr(params, name).grad.detach().cpu() for name in FIELDS}
    return rgb.detach().cpu(), alpha.detach().cpu(), grads, seconds


def section_rasterizer(ctx: Context, rows: list[list]) -> None:
    R, cameras = ctx.resolution, 2
    images, c2w, K = scene_inputs(1, cameras, R, R, torch.device("cpu"))
    model = ILRM(ILRMNetworkConfig(**ctx.net)).to(ctx.device).eval()
    with torch.no_grad(), ctx.autocast():
        predicted = model(images.to(ctx.device), c2w.to(ctx.device), K.to(ctx.device)).map(lambda t: t[0].float().cpu())
    del model
    g = torch.Generator().manual_seed(1)
    weights = (torch.rand(cameras, R, R, 3, generator=g), torch.rand(cameras, R, R, 1, generator=g))
    if ctx.cuda:
        reference, label = ("gsplat", ctx.device), "gsplat (CUDA) vs ours (CPU)"
    else:
        reference, label = ("reference", torch.device("cpu")), "gsplat's PyTorch reference vs ours (CPU): no CUDA here"
    for name, gaussians in (("random cloud", random_cloud(ctx.cloud)), ("untrained network's prediction", predicted)):
        rgb_a, alpha_a, grads_a, t_a = render_with_grads(gaussians, c2w[0], K[0], R, weights, *reference)
        rgb_b, alpha_b, grads_b, t_b = render_with_grads(
            gaussians, c2w[0], K[0], R, weights, "torch", torch.device("cpu")
        )
        grad_diffs = [
            f"{(grads_a[f] - grads_b[f]).abs().max().item():.2e} "
            f"({(grads_a[f] - grads_b[f]).abs().max().item() / max(grads_b[f].abs().max().item(), 1e-30):.1e})"
            for f in FIELDS
        ]
        rows.append(
            [
                f"{name}: {len(gaussians)}",
                f"{cameras} x {R}x{R}",
                label,
                (rgb_a - rgb_b).abs().max().item(),
                (rgb_a - rgb_b).abs().mean().item(),
                (alpha_a - alpha_b).abs().max().item(),
                *grad_diffs,
                t_a * 1e3,
                t_b * 1e3,
            ]
        )


RASTERIZER_COLUMNS = [
    "Gaussians",
    "cameras",
    "compared",
    "rgb max abs diff",
    "rgb mean abs diff",
    "alpha max abs diff",
    *(f"grad {f}: max abs diff (relative)" for f in FIELDS),
    "reference fwd+bwd (ms)",
    "ours (CPU) fwd+bwd (ms)",
]


# -- B. one ns-train step ------------------------------------------------------------------------


def trainer_config(ctx: Context, timestamp: str, bf16: bool, attention: str, checkpointing: bool):
    """The registered method's TrainerConfig (ilrm; ilrm-small at toy sizes with --quick), as
    ns-train builds it, with this variant's switches."""
    from ilrm_nerfstudio.nerfstudio.method_configs import ilrm_method, ilrm_small_method

    config = copy.deepcopy((ilrm_small_method if ctx.quick else ilrm_method).config)
    dm, model = config.pipeline.datamanager, config.pipeline.model
    dm.data, dm.image_height, dm.image_width = ctx.dataset(), ctx.resolution, ctx.resolution
    if ctx.quick:
        dm.scenes_per_batch, dm.num_workers = 2, 0
        for key, value in ctx.net.items():
            setattr(model.network, key, value)
    model.lpips_weight = 0.0  # the VGG weights need the internet; MSE only
    model.bf16, model.network.attention_backend, model.network.gradient_checkpointing = bf16, attention, checkpointing
    model.viewer_scene = "none"
    config.output_dir, config.experiment_name, config.timestamp = ctx.scratch / "runs", "bench", timestamp
    config.vis = "tensorboard"
    config.machine.device_type, config.machine.num_devices = ctx.device.type, 1
    return config


def section_trainer_step(ctx: Context, rows: list[list]) -> None:
    variants = [
        ("bf16 + flash + checkpointing (ilrm's defaults)", True, "flash", True),
        ("bf16 + flash, no checkpointing", True, "flash", False),
        ("fp32 + math attention + checkpointing", False, "math", True),
        ("fp32 + math attention, no checkpointing (all off)", False, "math", False),
    ]
    for i, (name, bf16, attention, checkpointing) in enumerate(variants):
        trainer = None
        try:
            config = trainer_config(ctx, f"step{i}", bf16, attention, checkpointing)
            trainer = config.setup(local_rank=0, world_size=1)
            trainer.setup()
            batch = config.pipeline.datamanager.scenes_per_batch
            trainer.train_iteration(0)  # warm-up: loaders, kernels, optimizer state
            step = [1]

            def one_step():
                trainer.train_iteration(step[0])
                step[0] += 1

            above, total = measure_peak(one_step, ctx.device)
            seconds = time_call(one_step, ctx.device, repeats=ctx.train_steps, warmup=0, budget_s=within(ctx, 60))
            rows.append([name, batch, seconds, mb(above), gib(total)])
        except Exception as error:  # noqa: BLE001  one variant failing (e.g. out of memory) leaves the others
            rows.append([name, "", failure(error), "", ""])
        finally:
            trainer = one_step = None  # release the model, optimizer and loaders before the next variant
            free(ctx.device)


TRAINER_COLUMNS = [
    "ns-train ilrm step",
    "scenes per batch",
    "time (s)",
    "peak memory above model + optimizer (MiB)",
    "peak allocated (GiB)",
]


# -- C. forward latency ------------------------------------------------------------------------


def section_latency(ctx: Context, rows: list[list]) -> None:
    R = ctx.resolution
    settings = [(2, 1, "(2,F,F)"), (4, 2, "(4,H,F)"), (8, 2, "(8,H,F)")]
    for V, f, name in settings:
        variants = [("bf16, flash", dict(attention_backend="flash"))]
        if ctx.args.compile and V == 8:
            variants.append(("bf16, flash, torch.compile", dict(attention_backend="flash", compile=True)))
        for label, overrides in variants:
            model = None
            try:
                model = ILRM(ILRMNetworkConfig(viewpoint_factor=f, **ctx.net, **overrides)).to(ctx.device).eval()
                images, c2w, K = scene_inputs(1, V, R, R, ctx.device)

                def forward():
                    with torch.no_grad(), ctx.autocast():
                        return model(images, c2w, K)

                forward()
                above, _ = measure_peak(forward, ctx.device)
                seconds = time_call(forward, ctx.device, repeats=ctx.repeats, warmup=2, budget_s=within(ctx, 30))
                paper = PAPER_LATENCY[(V, f)]
                rows.append([name, label, model.num_gaussians(V, R, R), seconds, paper, seconds / paper, mb(above)])
            except Exception as error:  # noqa: BLE001
                rows.append([name, label, "", failure(error), PAPER_LATENCY[(V, f)], "", ""])
            finally:
                model = forward = None
                free(ctx.device)


LATENCY_COLUMNS = [
    "setting",
    "variant",
    "Gaussians",
    "forward (s)",
    "paper (s, RTX 4090)",
    "ours / paper",
    "peak memory (MiB)",
]


# -- D. mini-batch cross-attention -------------------------------------------------------------


def section_minibatch(ctx: Context, rows: list[list]) -> None:
    """One iteration = forward (bf16, SDPA auto = flash), render every input view (gsplat on CUDA),
    MSE, backward, AdamW step; full / half / quarter cross-attention side by side. Out of memory at
    one batch size: the next smaller one, after everything of the failed try is released."""
    last_error = "failed"
    for batch in ctx.minibatch:
        try:
            rows += minibatch_rows(ctx, batch)
            return
        except torch.OutOfMemoryError as error:
            # Keep a string, not the error: its traceback holds the failed try's frames (models,
            # optimizer states, activations). Those frames are gone once this clause ends.
            last_error = f"{failure(error)} (batch {batch})"
        finally:
            free(ctx.device)
    rows.append(["(all)", ctx.minibatch[-1], last_error, "", "", "", "", ""])


def minibatch_rows(ctx: Context, batch: int) -> list[list]:
    """The three groupings at one batch size. Every model, optimizer and closure lives in this
    frame only, so a failed try releases them when it returns."""
    V, R = (2 if ctx.quick else 8), ctx.resolution
    images, c2w, K = scene_inputs(batch, V, R, R, ctx.device)
    target = images.permute(0, 1, 3, 4, 2)  # [B, V, H, W, 3]
    background = torch.ones(3, device=ctx.device)
    iterations, memory = {}, {}
    for groups in (1, 2, 4):
        torch.manual_seed(0)
        model = (
            ILRM(ILRMNetworkConfig(viewpoint_factor=2, cross_attention_groups=groups, **ctx.net)).to(ctx.device).train()
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def iteration(model=model, optimizer=optimizer):
            with ctx.autocast():
                gaussians = model(images, c2w, K)
            loss = sum(
                torch.nn.functional.mse_loss(
                    render(gaussians.map(lambda t: t[b]), c2w[b], K[b], R, R, background).rgb, target[b]
                )
                for b in range(batch)
            )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        iteration()  # optimizer state exists before memory is measured
        memory[groups] = measure_peak(iteration, ctx.device)[0]
        iterations[groups] = iteration
    seconds = time_interleaved(
        iterations, ctx.device, repeats=2 if ctx.quick else 3, warmup=0, budget_s=within(ctx, 90)
    )
    rows = []
    for groups in (1, 2, 4):
        paper_t, paper_m = PAPER_MINIBATCH[groups]
        rows.append(
            [
                f"{GROUP_NAMES[groups]} (G={groups})",
                batch,
                seconds[groups],
                seconds[groups] / seconds[1],
                paper_t,
                mb(memory[groups]) / 1024,
                memory[groups] / max(memory[1], 1),
                paper_m,
            ]
        )
    return rows


MINIBATCH_COLUMNS = [
    "cross-attention",
    "batch",
    "iteration (s)",
    "time ratio",
    "paper time ratio",
    "peak memory above model + optimizer (GiB)",
    "memory ratio",
    "paper memory ratio",
]


# -- E. the large forward ----------------------------------------------------------------------


def section_large(ctx: Context, rows: list[list]) -> None:
    V, H, W = ctx.large
    model = ILRM(ILRMNetworkConfig(viewpoint_factor=2, attention_backend="flash", **ctx.net)).to(ctx.device).eval()
    images, c2w, K = scene_inputs(1, V, H, W, ctx.device)

    def forward():
        with torch.no_grad(), ctx.autocast():
            return model(images, c2w, K)

    forward()
    above, total = measure_peak(forward, ctx.device)
    seconds = time_call(forward, ctx.device, repeats=3 if ctx.quick else 5, warmup=1, budget_s=within(ctx, 60))
    rows.append(
        [
            f"({V},H,F)",
            f"{H}x{W}",
            model.num_gaussians(V, H, W),
            seconds,
            "" if ctx.quick else 0.53,
            mb(above) / 1024,
            gib(total),
        ]
    )


LARGE_COLUMNS = [
    "setting",
    "resolution",
    "Gaussians",
    "forward (s)",
    "paper (s, H100)",
    "peak memory above model (GiB)",
    "peak allocated (GiB)",
]


# -- F. two-process DDP ------------------------------------------------------------------------


def ddp_command(ctx: Context, output: Path, steps: int) -> list[str]:
    """The user's command: ilrm-train (ns-train's CLI) with 2 processes on this device type."""
    command = [
        sys.executable,
        "-m",
        "ilrm_nerfstudio.tools.train",
        "ilrm-small" if ctx.quick else "ilrm",
        "--data",
        str(ctx.dataset()),
        "--machine.device-type",
        ctx.device.type,
        "--machine.num-devices",
        "2",
        "--vis",
        "tensorboard",
        "--output-dir",
        str(output),
        "--experiment-name",
        "ddp",
        "--timestamp",
        "run",
        "--max-num-iterations",
        str(steps),
        "--pipeline.model.lpips-weight",
        "0",
        "--pipeline.model.viewer-scene",
        "none",
        "--pipeline.datamanager.image-height",
        str(ctx.resolution),
        "--pipeline.datamanager.image-width",
        str(ctx.resolution),
    ]
    if ctx.quick:
        command += ["--pipeline.datamanager.num-workers", "0", "--pipeline.datamanager.scenes-per-batch", "1"]
        for key, value in ctx.net.items():
            command += [f"--pipeline.model.network.{key.replace('_', '-')}", str(value)]
    return command


def section_ddp(ctx: Context, rows: list[list]) -> None:
    devices = torch.cuda.device_count() if ctx.cuda else 2
    backend = "NCCL" if ctx.cuda else "gloo"
    name = f"ilrm-train, 2 processes ({backend})"
    if ctx.cuda and devices < 2:
        rows.append([name, f"skipped: {devices} CUDA device(s) here", "", "", ""])
        return
    steps = 2 if ctx.quick else 5
    output = ctx.scratch / "ddp"
    command = ddp_command(ctx, output, steps)
    if ctx.quick and not ctx.cuda and not ctx.args.ddp:
        # Three Python processes that import nerfstudio take a minute on a small CPU; tests/test_ddp.py
        # trains 2 gloo processes through ilrm-train already. --ddp runs it here too.
        rows.append([name, "skipped in --quick on the CPU (--ddp runs it; tests/test_ddp.py covers it)", "", steps, ""])
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1" if ctx.quick else os.environ.get("OMP_NUM_THREADS", "4")}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=within(ctx, 240), env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    checkpoints = sorted(p.name for p in (output / "ddp").glob("*/run/nerfstudio_models/*.ckpt"))
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        rows.append([name, f"failed (exit {result.returncode}): {tail[:160]}".replace("|", "/"), seconds, steps, ""])
    else:
        rows.append([name, "ok", seconds, steps, ", ".join(checkpoints) or "none"])


DDP_COLUMNS = ["run", "result", "wall time incl. start-up (s)", "steps", "checkpoints (rank 0)"]


# -- the report --------------------------------------------------------------------------------


def failure(error: BaseException | None) -> str:
    if error is None:
        return "failed"
    first = (str(error).strip().splitlines() or [""])[0]
    return f"failed: {type(error).__name__}: {first[:160]}".replace("|", "/")


SECTIONS = [
    ("rasterizer", "A. gsplat vs our PyTorch rasterizer on the same Gaussians", RASTERIZER_COLUMNS, section_rasterizer),
    ("step", "B. One ns-train ilrm step of the base model, 256x256", TRAINER_COLUMNS, section_trainer_step),
    ("latency", "C. Forward latency at 256x256, batch 1, bf16", LATENCY_COLUMNS, section_latency),
    (
        "minibatch",
        "D. Training iteration with full / half / quarter cross-attention, (8,H,F) 256x256",
        MINIBATCH_COLUMNS,
        section_minibatch,
    ),
    ("large", "E. The (32,H,F) forward at 540x960 (run at 544x960)", LARGE_COLUMNS, section_large),
    ("ddp", "F. Two-process DDP training", DDP_COLUMNS, section_ddp),
]
NOTES = {
    "rasterizer": "loss = fixed random weights . (rgb, alpha) of 2 ring cameras; relative = max abs diff / max abs "
    "gradient of ours",
    "step": "Trainer.train_iteration of the registered method (data loading included), LPIPS off (its VGG weights "
    "need the internet), median of the steps after a warm-up step",
    "latency": "base model (width 768, 12 update layers, patch 8), no_grad, median after warm-up",
    "minibatch": "the base network with rendering of every input view and MSE, AdamW",
    "large": "base model, no_grad, median after warm-up",
}
MEMORY_NOTE = "peak memory: torch.cuda.max_memory_allocated during the call (above: minus what was allocated before it)"


def run_section(ctx: Context, function, seconds: float) -> list[list]:
    """The section's rows; its deadline is enforced by SIGALRM inside it: the rows finished by then
    stay, and one more row says that it stopped there."""

    def expire(signum, frame):
        raise SectionDeadline()

    rows: list[list] = []
    ctx.deadline = time.perf_counter() + seconds
    alarm = math.isfinite(seconds) and hasattr(signal, "SIGALRM")
    if alarm:
        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        function(ctx, rows)
    except SectionDeadline:
        rows.append([f"stopped: the section's {seconds:g} s deadline passed (rows above are complete)"])
    except Exception as error:  # noqa: BLE001  a failed section is a row; the others still run
        traceback.print_exc()
        rows.append([failure(error)])
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        ctx.deadline = math.inf
        free(ctx.device)
    return rows


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    keys = [key for key, *_ in SECTIONS]
    parser.add_argument("--only", nargs="*", default=None, choices=keys, help="run only these sections")
    parser.add_argument("--skip", nargs="*", default=[], choices=keys, help="sections to leave out")
    parser.add_argument(
        "--compile", action="store_true", help="C: also the (8,H,F) forward under torch.compile (adds a minute or two)"
    )
    parser.add_argument(
        "--ddp", action="store_true", help="F: also run the 2-process training in --quick on the CPU (a minute here)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="sections that would start after this many seconds are skipped"
    )
    parser.add_argument(
        "--section-deadline-s",
        type=float,
        default=150.0,
        help="each section stops after this many seconds (its finished rows are kept)",
    )
    args = parser.parse_args()
    output_dir = args.output_dir or Path(os.environ.get("OUT") or "gpu_check_out")
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / "bench_gpu.md"
    device = setup(args)
    ctx = Context(args, device)
    start = time.perf_counter()
    header = [
        "### Benchmark 5: the GPU check" + (" (--quick: toy sizes, checks the code path only)" if args.quick else ""),
        "",
        f"machine: {describe_machine(device, args.threads)}",
        "" if device.type == "cuda" else "CPU run: no GPU figure here; run with --device cuda on a machine with a GPU",
        "",
    ]
    if args.only is None or not output.exists():  # a whole run starts the file; single sections add to it
        output.write_text("\n".join(header) + "\n")
        print("\n".join(header), flush=True)
    timings = []
    for key, title, columns, function in SECTIONS:
        if args.only is not None and key not in args.only:
            continue
        elapsed = time.perf_counter() - start
        took = ""
        if key in args.skip:
            rows = [["skipped (--skip)"]]
        elif elapsed > args.budget_s:
            rows = [[f"skipped: {elapsed:.0f} s spent, over --budget-s {args.budget_s:.0f}"]]
        else:
            print(f"[bench_gpu] {title} ...", file=sys.stderr, flush=True)
            section_start = time.perf_counter()
            seconds = min(args.section_deadline_s, args.budget_s - elapsed)
            rows = run_section(ctx, function, seconds)
            took = f"{time.perf_counter() - section_start:.0f} s"
            timings.append(f"{key} {took}")
        rows = [row + [""] * (len(columns) - len(row)) for row in rows]
        notes = [f"command: `{command_line()}`" + (f", {took}" if took else "")]
        notes += [NOTES[key]] if key in NOTES else []
        notes += [MEMORY_NOTE] if key in ("step", "latency", "minibatch", "large") and device.type == "cuda" else []
        text = "\n".join([f"#### {title}", "", markdown_table(columns, rows), "", *(f"- {n}" for n in notes), ""])
        print(text, flush=True)
        with output.open("a") as stream:  # written as soon as the section ends
            stream.write(text + "\n")
    if args.only is None:
        print(f"total {time.perf_counter() - start:.0f} s ({', '.join(timings)})")


if __name__ == "__main__":
    main()
