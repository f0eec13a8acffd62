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
"failed: ..." row and the other sections still run. `--device cpu --quick` runs the same code at
toy sizes on the CPU (the test suite does, so that the script cannot rot); the CPU has no gsplat,
so section A then compares our rasterizer with itself and F runs with 2 gloo processes.
The output is markdown that can be pasted into docs/scalability.md as is.

    python benchmarks/bench_gpu.py --device cuda [--output-dir bench_out] [--compile]
    python benchmarks/bench_gpu.py --device cpu --quick
"""

from __future__ import annotations

import copy
import gc
import math
import os
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
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


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


def render_with_grads(gaussians: Gaussians, c2w, K, R: int, weights: tuple, backend: str, device: torch.device):
    """Images and the gradients of every field of a fixed random linear loss on rgb and alpha;
    the time of a second call (the first may build gsplat's CUDA kernels)."""
    for _ in range(2):
        params = gaussians.map(lambda t: t.detach().to(device).clone().requires_grad_(True))
        synchronize(device)
        start = time.perf_counter()
        out = render(params, c2w.to(device), K.to(device), R, R, torch.ones(3, device=device), backend=backend)
        loss = (out.rgb * weights[0].to(device)).sum() + (out.alpha * weights[1].to(device)).sum()
        loss.backward()
        synchronize(device)
        seconds = time.perf_counter() - start
    grads = {name: getattr(params, name).grad.detach().cpu() for name in FIELDS}
    return out.rgb.detach().cpu(), out.alpha.detach().cpu(), grads, seconds


def section_rasterizer(ctx: Context) -> list[list]:
    R, cameras = ctx.resolution, 2
    images, c2w, K = scene_inputs(1, cameras, R, R, torch.device("cpu"))
    model = ILRM(ILRMNetworkConfig(**ctx.net)).to(ctx.device).eval()
    with torch.no_grad(), ctx.autocast():
        predicted = model(images.to(ctx.device), c2w.to(ctx.device), K.to(ctx.device)).map(lambda t: t[0].float().cpu())
    del model
    g = torch.Generator().manual_seed(1)
    weights = (torch.rand(cameras, R, R, 3, generator=g), torch.rand(cameras, R, R, 1, generator=g))
    reference = ("gsplat", ctx.device) if ctx.cuda else ("torch", torch.device("cpu"))
    label = "gsplat (CUDA) vs torch (CPU)" if ctx.cuda else "torch (CPU) vs torch (CPU): no gsplat here, code path only"
    rows = []
    for name, gaussians in (("random cloud", random_cloud(ctx.cloud)), ("untrained network's prediction", predicted)):
        rgb_a, alpha_a, grads_a, t_a = render_with_grads(
            gaussians, c2w[0], K[0], R, weights, reference[0], reference[1]
        )
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
    return rows


RASTERIZER_COLUMNS = [
    "Gaussians",
    "cameras",
    "compared",
    "rgb max abs diff",
    "rgb mean abs diff",
    "alpha max abs diff",
    *(f"grad {f}: max abs diff (relative)" for f in FIELDS),
    "reference fwd+bwd (ms)",
    "torch CPU fwd+bwd (ms)",
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


def section_trainer_step(ctx: Context) -> list[list]:
    variants = [
        ("bf16 + flash + checkpointing (ilrm's defaults)", True, "flash", True),
        ("bf16 + flash, no checkpointing", True, "flash", False),
        ("fp32 + math attention + checkpointing", False, "math", True),
        ("fp32 + math attention, no checkpointing (all off)", False, "math", False),
    ]
    rows = []
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
            seconds = time_call(one_step, ctx.device, repeats=ctx.train_steps, warmup=0, budget_s=60)
            rows.append([name, batch, seconds, mb(above), gib(total)])
        except Exception as error:  # noqa: BLE001  one variant failing (e.g. out of memory) leaves the others
            rows.append([name, "", failure(error), "", ""])
        finally:
            trainer = one_step = None  # release the model, optimizer and loaders before the next variant
            free(ctx.device)
    return rows


TRAINER_COLUMNS = [
    "ns-train ilrm step",
    "scenes per batch",
    "time (s)",
    "peak memory above model + optimizer (MiB)",
    "peak allocated (GiB)",
]


# -- C. forward latency ------------------------------------------------------------------------


def section_latency(ctx: Context) -> list[list]:
    R = ctx.resolution
    settings = [(2, 1, "(2,F,F)"), (4, 2, "(4,H,F)"), (8, 2, "(8,H,F)")]
    rows = []
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
                seconds = time_call(forward, ctx.device, repeats=ctx.repeats, warmup=2, budget_s=30)
                paper = PAPER_LATENCY[(V, f)]
                rows.append([name, label, model.num_gaussians(V, R, R), seconds, paper, seconds / paper, mb(above)])
            except Exception as error:  # noqa: BLE001
                rows.append([name, label, "", failure(error), PAPER_LATENCY[(V, f)], "", ""])
            finally:
                model = forward = None
                free(ctx.device)
    return rows


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


def section_minibatch(ctx: Context) -> list[list]:
    """One iteration = forward (bf16, SDPA auto = flash), render every input view (gsplat on CUDA),
    MSE, backward, AdamW step; full / half / quarter cross-attention side by side."""
    V, R = 8, ctx.resolution
    if ctx.quick:
        V = 2
    last_error = "failed"
    for batch in ctx.minibatch:
        models, iterations, memory = {}, {}, {}
        try:
            images, c2w, K = scene_inputs(batch, V, R, R, ctx.device)
            target = images.permute(0, 1, 3, 4, 2)  # [B, V, H, W, 3]
            background = torch.ones(3, device=ctx.device)
            for groups in (1, 2, 4):
                torch.manual_seed(0)
                model = (
                    ILRM(ILRMNetworkConfig(viewpoint_factor=2, cross_attention_groups=groups, **ctx.net))
                    .to(ctx.device)
                    .train()
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
                models[groups], iterations[groups] = model, iteration
            seconds = time_interleaved(iterations, ctx.device, repeats=2 if ctx.quick else 3, warmup=0, budget_s=90)
            rows = []
            for groups in (1, 2, 4):
                t_ratio, m_ratio = seconds[groups] / seconds[1], memory[groups] / max(memory[1], 1)
                paper_t, paper_m = PAPER_MINIBATCH[groups]
                rows.append(
                    [
                        f"{GROUP_NAMES[groups]} (G={groups})",
                        batch,
                        seconds[groups],
                        t_ratio,
                        paper_t,
                        mb(memory[groups]) / 1024,
                        m_ratio,
                        paper_m,
                    ]
                )
            return rows
        except torch.OutOfMemoryError as error:  # try the next smaller batch
            last_error = f"{failure(error)} (batch {batch})"  # a string: the traceback would hold the activations
        finally:
            models = iterations = model = optimizer = None
            free(ctx.device)
    return [["(all)", ctx.minibatch[-1], last_error, "", "", "", "", ""]]


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


def section_large(ctx: Context) -> list[list]:
    V, H, W = ctx.large
    model = ILRM(ILRMNetworkConfig(viewpoint_factor=2, attention_backend="flash", **ctx.net)).to(ctx.device).eval()
    images, c2w, K = scene_inputs(1, V, H, W, ctx.device)

    def forward():
        with torch.no_grad(), ctx.autocast():
            return model(images, c2w, K)

    forward()
    above, total = measure_peak(forward, ctx.device)
    seconds = time_call(forward, ctx.device, repeats=3 if ctx.quick else 5, warmup=1, budget_s=60)
    return [
        [
            f"({V},H,F)",
            f"{H}x{W}",
            model.num_gaussians(V, H, W),
            seconds,
            "" if ctx.quick else 0.53,
            mb(above) / 1024,
            gib(total),
        ]
    ]


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


def section_ddp(ctx: Context) -> list[list]:
    devices = torch.cuda.device_count() if ctx.cuda else 2
    backend = "NCCL" if ctx.cuda else "gloo"
    name = f"ilrm-train, 2 processes ({backend})"
    if ctx.cuda and devices < 2:
        return [[name, f"skipped: {devices} CUDA device(s) here", "", "", ""]]
    steps = 2 if ctx.quick else 5
    output = ctx.scratch / "ddp"
    command = ddp_command(ctx, output, steps)
    if ctx.quick and not ctx.cuda and not ctx.args.ddp:
        # Three Python processes that import nerfstudio take a minute on a small CPU; tests/test_ddp.py
        # trains 2 gloo processes through ilrm-train already. --ddp runs it here too.
        return [[name, "skipped in --quick on the CPU (--ddp runs it; tests/test_ddp.py covers it)", "", steps, ""]]
    env = {**os.environ, "OMP_NUM_THREADS": "1" if ctx.quick else os.environ.get("OMP_NUM_THREADS", "4")}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    checkpoints = sorted(p.name for p in (output / "ddp").glob("*/run/nerfstudio_models/*.ckpt"))
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        return [[name, f"failed (exit {result.returncode}): {tail[:160]}".replace("|", "/"), seconds, steps, ""]]
    return [[name, "ok", seconds, steps, ", ".join(checkpoints) or "none"]]


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


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=[key for key, *_ in SECTIONS], help="sections to leave out"
    )
    parser.add_argument(
        "--compile", action="store_true", help="C: also the (8,H,F) forward under torch.compile (adds a minute or two)"
    )
    parser.add_argument(
        "--ddp", action="store_true", help="F: also run the 2-process training in --quick on the CPU (a minute here)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="sections that would start after this many seconds are skipped"
    )
    args = parser.parse_args()
    device = setup(args)
    ctx = Context(args, device)
    start = time.perf_counter()
    lines = [
        "### Benchmark 5: the GPU check" + (" (--quick: toy sizes, checks the code path only)" if args.quick else ""),
        "",
        f"command: `{command_line()}`",
        f"machine: {describe_machine(device, args.threads)}",
        "",
    ]
    timings = []
    for key, title, columns, function in SECTIONS:
        elapsed = time.perf_counter() - start
        if key in args.skip:
            rows = [["skipped (--skip)", *[""] * (len(columns) - 1)]]
        elif elapsed > args.budget_s:
            rows = [
                [f"skipped: {elapsed:.0f} s spent, over --budget-s {args.budget_s:.0f}", *[""] * (len(columns) - 1)]
            ]
        else:
            print(f"[bench_gpu] {title} ...", file=sys.stderr, flush=True)
            section_start = time.perf_counter()
            try:
                rows = function(ctx)
            except Exception as error:  # noqa: BLE001  a failed section is a row; the others still run
                traceback.print_exc()
                rows = [[failure(error), *[""] * (len(columns) - 1)]]
            free(device)
            timings.append(f"{key} {time.perf_counter() - section_start:.0f} s")
        lines += [f"#### {title}", "", markdown_table(columns, rows), ""]
    notes = [
        f"total {time.perf_counter() - start:.0f} s ({', '.join(timings)})",
        "A: loss = fixed random weights . (rgb, alpha) of 2 ring cameras; relative = max abs diff / max abs "
        "gradient of the torch backend",
        "B: Trainer.train_iteration of the registered method (data loading included), LPIPS off (its VGG weights need "
        "the internet), median of the steps after a warm-up step",
        "C, E: base model (width 768, 12 update layers, patch 8), no_grad, median after warm-up; D: the same network "
        "with rendering of every input view and MSE, AdamW",
        "peak memory: torch.cuda.max_memory_allocated during the call (above: minus what was allocated before it)",
    ]
    if not device.type == "cuda":
        notes.append("CPU run: no GPU figure here; run with --device cuda on a machine with a GPU")
    lines += [f"- {note}" for note in notes]
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "bench_gpu.md").write_text(text)


if __name__ == "__main__":
    main()
