"""Benchmark 4: achieved FLOP/s of the network forward as a fraction of the hardware limit.

The limit is the machine's dense matmul throughput (square n x n matmuls in the forward's dtype),
measured in the same run and interleaved with the forwards: every round times the matmul, then
one forward of every network. On a shared machine the *best* time of each over the rounds is the
estimate of what the hardware does when the neighbours are quiet, so both sides of the ratio are
best-of-rounds. The network's FLOPs are counted by FlopCounterMode on the meta device (matmuls and
attention); forwards are no_grad, batch 1. A profiler pass splits the forward's time into
matmuls, attention kernels and everything else.

    python benchmarks/bench_throughput.py                   # CPU fp32, base width and depth, 2 views 256x256
    python benchmarks/bench_throughput.py --threads 2
    python benchmarks/bench_throughput.py --device cuda     # bf16 autocast, 8 views
    python benchmarks/bench_throughput.py --quick
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch
from bench_scaling import autocast, base_parser, count_flops, markdown_table, report, scene_inputs, setup, synchronize

from ilrm_nerfstudio.core.baseline_network import FullAttentionLRM
from ilrm_nerfstudio.core.network import ILRM, ILRMNetworkConfig


def matmul_seconds(a: torch.Tensor, b: torch.Tensor, device: torch.device, repeats: int = 3) -> float:
    """Best time of a @ b over a few calls."""
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def time_breakdown(fn, device: torch.device) -> dict[str, float]:
    """Share of the profiled self time of fn() spent in matmuls, attention and the rest."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
    shares: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        name = event.key.lower()
        if "attention" in name or "flash" in name or "softmax" in name:
            shares["attention"] += us
        elif any(k in name for k in ("aten::mm", "aten::addmm", "aten::bmm", "gemm", "matmul", "cutlass", "sm90_xmma")):
            shares["matmul"] += us
        else:
            shares["other"] += us
    total = sum(shares.values()) or 1.0
    return {k: shares[k] / total for k in ("matmul", "attention", "other")}


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=None, help="default 2 on CPU, 8 on CUDA")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--matmul-size", type=int, default=None, help="default 2048 on CPU, 8192 on CUDA")
    parser.add_argument("--fp32", action="store_true", help="on CUDA: fp32 (TF32) instead of bf16 autocast")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()
    device = setup(args)
    cuda = device.type == "cuda"
    bf16 = cuda and not args.fp32
    dtype = torch.bfloat16 if bf16 else torch.float32
    V = args.views or (8 if cuda else 2)
    R = args.resolution
    n = args.matmul_size or (8192 if cuda else 2048)
    network = dict(width=768, num_heads=12, num_layers=12)
    if args.quick:
        V, R, n, args.repeats = 2, 64, 256, 1
        network = dict(width=64, num_heads=1, num_layers=1)

    models = {
        "iLRM (V,H,F) base": ILRM(ILRMNetworkConfig(**network)),
        "iLRM (V,H,F), quarter cross-attention": ILRM(ILRMNetworkConfig(cross_attention_groups=4, **network)),
        "full attention (GS-LRM style)": FullAttentionLRM(ILRMNetworkConfig(**network)),
    }
    images, c2w, K = scene_inputs(1, V, R, R, device, args.seed)
    forwards, flops = {}, {}
    for name, model in models.items():
        model = model.to(device).eval()
        flops[name] = count_flops(model, images, c2w, K)["total"]

        def forward(model=model):
            with torch.no_grad(), autocast(device, bf16):
                model(images, c2w, K)

        forward()  # warm-up
        forwards[name] = forward
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = {name: float("inf") for name in forwards}
    best_matmul = float("inf")
    for round_ in range(args.repeats):  # interleaved: matmul, then every network
        best_matmul = min(best_matmul, matmul_seconds(a, b, device))
        for name, forward in forwards.items():
            synchronize(device)
            start = time.perf_counter()
            forward()
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
        print(
            f"  round {round_ + 1}: matmul {2 * n**3 / best_matmul / 1e9:.1f} GFLOP/s, "
            + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in best.items()),
            flush=True,
        )
    peak = 2 * n**3 / best_matmul
    rows = []
    for name, forward in forwards.items():
        shares = time_breakdown(forward, device)
        achieved = flops[name] / best[name]
        rows.append(
            [
                name,
                flops[name] / 1e9,
                best[name] * 1e3,
                achieved / 1e9,
                peak / 1e9,
                achieved / peak,
                shares["matmul"],
                shares["attention"],
                shares["other"],
            ]
        )
    columns = [
        "network",
        "GFLOP",
        "best forward (ms)",
        "achieved GFLOP/s",
        f"matmul GFLOP/s (n={n}, best)",
        "fraction of matmul",
        "time in matmuls",
        "time in attention",
        "time elsewhere",
    ]
    report(
        args,
        device,
        "Benchmark 4: achieved FLOP/s of the forward against the dense matmul limit",
        [("", markdown_table(columns, rows))],
        [
            f"{V} views {R}x{R}, batch 1, width {network['width']}, {network['num_layers']} update layers "
            f"(baseline: {2 * network['num_layers']} blocks), {'bf16 autocast' if bf16 else 'fp32'}, no_grad, "
            f"{args.threads} CPU thread(s)",
            f"best of {args.repeats} interleaved rounds for both the forwards and the matmul",
            "GFLOP counted by FlopCounterMode (matmuls and attention only); elementwise work is "
            "not counted but takes time",
            "time shares: profiler self time of matmul ops, attention kernels (and softmax) and the rest",
            "GPU rows: not measured here unless the machine line above names a CUDA device",
        ],
    )


if __name__ == "__main__":
    main()
