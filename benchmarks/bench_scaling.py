"""Benchmark 2: forward time and peak memory against the number of views and the resolution.

iLRM (V, H, F) and (V, F, F) against the full-attention, pixel-aligned baseline in the style of
GS-LRM (`ilrm_nerfstudio.core.baseline_network.FullAttentionLRM`): same width, same number of blocks,
same tokenizer and head, measured side by side in one run (ratios are what to read on a shared
machine). Inference forward (no_grad), batch 1.

    python benchmarks/bench_scaling.py                      # CPU: width 768, 1 update layer, fp32
    python benchmarks/bench_scaling.py --device cuda        # GPU: base model (12 layers), bf16
    python benchmarks/bench_scaling.py --quick              # seconds, for the tests

Also home of the helpers the other benchmark scripts import (timing, peak memory, FLOP counting,
tables). Peak memory is the peak of PyTorch tensor allocations during the call, above what existed
before it (model and inputs): `torch.cuda.max_memory_allocated` on CUDA; on CPU the same quantity
from the PyTorch profiler's allocation trace ("Total Allocated").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # silence the profiler's start/stop lines

import torch  # noqa: E402

from ilrm_nerfstudio.core.baseline_network import FullAttentionLRM
from ilrm_nerfstudio.core.cameras import intrinsics_matrix
from ilrm_nerfstudio.core.network import ILRM, ILRMNetworkConfig

# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help=(
            "torch CPU threads; 1 by default: on a shared machine, 2 threads stall for up to a second at thread "
            "barriers whenever a neighbour holds a core"
        ),
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--output-dir", type=Path, default=None, help="also write the table there as markdown")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available on this machine")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(args.device)


def describe_machine(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"CPU {cpu} ({os.cpu_count()} cores), torch {torch.__version__}, {threads} threads"


def command_line() -> str:
    return "python " + " ".join(
        [os.path.relpath(sys.argv[0]) if os.path.exists(sys.argv[0]) else sys.argv[0], *sys.argv[1:]]
    )


def report(
    args: argparse.Namespace, device: torch.device, title: str, sections: list[tuple[str, str]], notes: list[str] = ()
) -> None:
    """Print (and with --output-dir also save) the command, the machine and the tables."""
    lines = [
        f"## {title}",
        "",
        f"command: `{command_line()}`",
        f"machine: {describe_machine(device, args.threads)}",
        "",
    ]
    for heading, table in sections:
        lines += [f"### {heading}", "", table, ""] if heading else [table, ""]
    lines += [f"- {note}" for note in notes]
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / f"{Path(sys.argv[0]).stem}.md").write_text(text)


def markdown_table(columns: list[str], rows: list[list]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def scene_inputs(B: int, V: int, H: int, W: int, device: torch.device, seed: int = 0):
    """Random images and V cameras on a ring around the origin, looking at it (OpenCV)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, V, 3, H, W, generator=g)
    angles = torch.linspace(0, 2 * math.pi, V + 1)[:V]
    centers = torch.stack([2 * torch.sin(angles), torch.full_like(angles, -0.5), -2 * torch.cos(angles)], -1)
    forward = torch.nn.functional.normalize(-centers, dim=-1)
    right = torch.nn.functional.normalize(
        torch.cross(torch.tensor([0.0, 1.0, 0.0]).expand_as(forward), forward, dim=-1), dim=-1
    )
    down = torch.cross(forward, right, dim=-1)
    c2w = torch.eye(4).repeat(V, 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, down, forward, centers
    f = torch.full((B, V), 1.0 * W)
    K = intrinsics_matrix(f, f, torch.full((B, V), W / 2), torch.full((B, V), H / 2))
    return images.to(device), c2w.expand(B, V, 4, 4).contiguous().to(device), K.to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1, budget_s: float = 20.0
) -> float:
    """Median wall time of fn() in seconds, after warm-up; fewer repeats when a call is slow."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeats:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if sum(times) > budget_s:
            break
    return statistics.median(times)


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int = 3,
    warmup: int = 1,
    budget_s: float = 120.0,
) -> dict[str, float]:
    """Median wall time of each fn, measured round-robin (fn1, fn2, ..., fn1, fn2, ...) so that a
    change in the machine's background load hits every candidate alike. Stops after the first
    complete round that brings the total past `budget_s`."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
        if sum(map(sum, times.values())) > budget_s:
            break
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of PyTorch tensor allocations during fn(), above those existing before it."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [
        e["args"]["Total Allocated"]
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0
    ]
    return max([0, *totals])


@contextlib.contextmanager
def track_attention_flops():
    """Within the block, the FLOPs of every F.scaled_dot_product_attention call accumulate in the
    yielded list's first element (4 x queries x keys x channels per batch and head: QK^T and AV)."""
    original = torch.nn.functional.scaled_dot_product_attention
    total = [0]

    def counted(q, k, v, *args, **kwargs):
        total[0] += 4 * math.prod(q.shape[:-1]) * k.shape[-2] * q.shape[-1]
        return original(q, k, v, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = counted
    try:
        yield total
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def count_flops(model: torch.nn.Module, *inputs: torch.Tensor, backward: bool = False) -> dict[str, int]:
    """FLOPs (2 per multiply-add) of model(*inputs), counted by torch's FlopCounterMode on a meta
    copy (nothing computed; exact for matmuls and attention). Returns {"total", "attention"}; with
    `backward`, the total includes the backward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        meta = type(model)(dataclasses.replace(model.config, compile=False))
    if hasattr(meta, "check_inputs"):
        meta.check_inputs = lambda *args: None  # its isfinite() check needs real values
    meta_inputs = [t.to("meta") for t in inputs]
    with FlopCounterMode(display=False) as counter, track_attention_flops() as attention:
        out = meta(*meta_inputs)
        if backward:
            sum(t.float().sum() for t in vars(out).values()).backward()
    return {"total": counter.get_total_flops(), "attention": attention[0]}


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


def mb(nbytes: float) -> float:
    return nbytes / 2**20


# ---------------------------------------------------------------------------------------------
# Benchmark 2
# ---------------------------------------------------------------------------------------------


def model_configs(
    width: int, heads: int, layers: int, patch: int, backend: str
) -> dict[str, tuple[type, ILRMNetworkConfig]]:
    common = dict(patch_size=patch, width=width, num_heads=heads, num_layers=layers, attention_backend=backend)
    return {
        "iLRM (V,H,F)": (ILRM, ILRMNetworkConfig(viewpoint_factor=2, **common)),
        "iLRM (V,F,F)": (ILRM, ILRMNetworkConfig(viewpoint_factor=1, **common)),
        "full attention": (FullAttentionLRM, ILRMNetworkConfig(**common)),
    }


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=None, help="default: width / 64")
    parser.add_argument(
        "--layers",
        type=int,
        default=None,
        help="update layers (baseline: twice as many blocks); default 1 on CPU, 12 on CUDA",
    )
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--views", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument(
        "--views-resolution",
        type=int,
        default=None,
        help="square resolution of the views sweep; default 128 on CPU, 256 on CUDA",
    )
    parser.add_argument(
        "--resolutions", type=int, nargs="+", default=None, help="default 64 128 256 512 (CUDA: 128 256 512 1024)"
    )
    parser.add_argument("--resolution-views", type=int, default=4, help="views of the resolution sweep")
    parser.add_argument("--attention-backend", default="auto", choices=["auto", "flash", "efficient", "cudnn", "math"])
    parser.add_argument("--fp32", action="store_true", help="on CUDA: no bf16 autocast")
    parser.add_argument(
        "--max-gflop", type=float, default=None, help="skip points above this forward cost (default 4000 on CPU)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds per point")
    parser.add_argument(
        "--budget-s", type=float, default=float("inf"), help="stop a point's rounds once its timings exceed this"
    )
    args = parser.parse_args()
    device = setup(args)
    cuda = device.type == "cuda"
    if args.quick:
        args.width, args.heads, args.layers, args.views = 64, 2, 1, [2, 4]
        args.views_resolution, args.resolutions, args.resolution_views, args.repeats = 32, [32, 64], 2, 1
    heads = args.heads or max(1, args.width // 64)
    layers = args.layers or (12 if cuda else 1)
    views_resolution = args.views_resolution or (256 if cuda else 128)
    resolutions = args.resolutions or ([128, 256, 512, 1024] if cuda else [64, 128, 256, 512])
    max_gflop = args.max_gflop or (float("inf") if cuda else 4000.0)
    bf16 = cuda and not args.fp32
    models = {
        name: cls(cfg).to(device).eval()
        for name, (cls, cfg) in model_configs(
            args.width, heads, layers, args.patch_size, args.attention_backend
        ).items()
    }

    def measure(V: int, R: int) -> list[list]:
        images, c2w, K = scene_inputs(1, V, R, R, device, args.seed)
        forwards, flops, memory, slow = {}, {}, {}, False
        for name, model in models.items():
            flops[name] = count_flops(model, images, c2w, K)["total"]
            if flops[name] / 1e9 > max_gflop:
                continue

            def forward(model=model):
                with torch.no_grad(), autocast(device, bf16):
                    model(images, c2w, K)

            start = time.perf_counter()
            memory[name] = peak_memory(forward, device)  # also a first warm-up
            slow = slow or time.perf_counter() - start > 5.0
            forwards[name] = forward
        seconds = time_interleaved(
            forwards, device, repeats=args.repeats, warmup=0 if slow else 1, budget_s=args.budget_s
        )  # side by side
        rows, reference = [], None
        for name, model in models.items():
            row = [V, f"{R}x{R}", name, model.num_gaussians(V, R, R), flops[name] / 1e9]
            if name not in seconds:
                rows.append(row + [f"skipped (> {max_gflop:.0f} GFLOP)", "", "", ""])
                continue
            reference = reference or (seconds[name], memory[name])
            rows.append(
                row + [seconds[name] * 1e3, seconds[name] / reference[0], mb(memory[name]), memory[name] / reference[1]]
            )
            print(
                f"  V={V} {R}x{R} {name}: {seconds[name] * 1e3:.1f} ms, {mb(memory[name]):.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
        return rows

    columns = [
        "views",
        "resolution",
        "model",
        "Gaussians",
        "GFLOP",
        "time (ms)",
        "time / (V,H,F)",
        "peak memory (MiB)",
        "memory / (V,H,F)",
    ]
    view_rows = [row for V in args.views for row in measure(V, views_resolution)]
    resolution_rows = [row for R in resolutions for row in measure(args.resolution_views, R)]
    report(
        args,
        device,
        "Benchmark 2: forward cost against views and resolution",
        [
            (f"Views sweep at {views_resolution}x{views_resolution}", markdown_table(columns, view_rows)),
            (f"Resolution sweep with {args.resolution_views} views", markdown_table(columns, resolution_rows)),
        ],
        [
            f"width {args.width}, {heads} heads, {layers} update layer(s) = {2 * layers} blocks for every model, "
            f"patch {args.patch_size}, batch 1, inference (no_grad), {'bf16 autocast' if bf16 else 'fp32'}, SDPA "
            f"backend {args.attention_backend}",
            "GFLOP: forward, counted by torch FlopCounterMode (matmuls and attention, 2 FLOP per multiply-add)",
            "peak memory: peak PyTorch tensor allocations during the forward above model + inputs",
            "GPU rows: not measured here unless the machine line above names a CUDA device",
        ],
    )


if __name__ == "__main__":
    main()
