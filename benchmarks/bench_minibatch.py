"""Benchmark 3: one training iteration with full, half and quarter cross-attention.

Paper Table 8 (8 views, batch 16, GPU): time 1 : 0.75 : 0.62, memory 1 : 0.76 : 0.62. Here one
iteration = network forward, a loss on every Gaussian field, backward, AdamW step (rendering is
left out: it costs the same for every grouping and would only dilute the ratios). The groupings
are measured side by side in one run, under two attention kernels: "math" materializes every
attention matrix (as a plain attention implementation does) and "auto" lets PyTorch pick its fused
kernel (flash attention on CUDA, the fused CPU kernel here), which never stores them.

    python benchmarks/bench_minibatch.py                  # CPU: 8 views 256x256, width 768, 1 layer, fp32
    python benchmarks/bench_minibatch.py --device cuda    # GPU: base model (12 layers), bf16
    python benchmarks/bench_minibatch.py --quick
"""

from __future__ import annotations

import torch
from bench_scaling import (
    autocast,
    base_parser,
    count_flops,
    markdown_table,
    mb,
    peak_memory,
    report,
    scene_inputs,
    setup,
    time_interleaved,
)

from ilrm_nerfstudio.core.network import ILRM, ILRMNetworkConfig

PAPER = {1: ("1.51 s", "62.5 GB"), 2: ("1.13 s (0.75)", "47.4 GB (0.76)"), 4: ("0.94 s (0.62)", "39.0 GB (0.62)")}
NAMES = {1: "full", 2: "half", 4: "quarter"}


def training_iteration(model, optimizer, images, c2w, K, device, bf16: bool):
    def iteration():
        with autocast(device, bf16):
            g = model(images, c2w, K)
        loss = sum(t.float().square().mean() for t in (g.means, g.scales, g.quats, g.sh)) + g.opacities.float().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return iteration


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--layers", type=int, default=None, help="default 1 on CPU, 12 on CUDA")
    parser.add_argument("--split", default="strided", choices=["strided", "spatial"])
    parser.add_argument("--backends", nargs="+", default=["math", "auto"])
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on every update layer")
    parser.add_argument("--fp32", action="store_true", help="on CUDA: no bf16 autocast")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = setup(args)
    cuda = device.type == "cuda"
    if args.quick:
        args.views, args.resolution, args.width, args.layers, args.repeats = 2, 64, 64, 1, 1
    layers = args.layers or (12 if cuda else 1)
    bf16 = cuda and not args.fp32
    images, c2w, K = scene_inputs(args.batch, args.views, args.resolution, args.resolution, device, args.seed)

    rows = []
    for backend in args.backends:
        iterations, memory, flops = {}, {}, {}
        for groups in (1, 2, 4):
            cfg = ILRMNetworkConfig(
                width=args.width,
                num_heads=max(1, args.width // 64),
                num_layers=layers,
                cross_attention_groups=groups,
                cross_attention_split=args.split,
                attention_backend=backend,
                gradient_checkpointing=args.checkpointing,
            )
            torch.manual_seed(args.seed)
            model = ILRM(cfg).to(device).train()
            iterations[groups] = training_iteration(
                model, torch.optim.AdamW(model.parameters(), lr=1e-4), images, c2w, K, device, bf16
            )
            iterations[groups]()  # creates the optimizer state, so that it is not counted as activation memory
            memory[groups] = peak_memory(iterations[groups], device)
            flops[groups] = count_flops(model, images, c2w, K, backward=True)["total"]
            print(f"  {backend} G={groups}: {mb(memory[groups]):.0f} MiB", flush=True)
        seconds = time_interleaved(
            iterations, device, repeats=args.repeats, warmup=0, budget_s=600.0
        )  # side by side, round-robin
        for groups in (1, 2, 4):
            rows.append(
                [
                    backend,
                    f"{NAMES[groups]} (G={groups})",
                    flops[groups] / 1e12,
                    flops[groups] / flops[1],
                    seconds[groups],
                    seconds[groups] / seconds[1],
                    mb(memory[groups]),
                    memory[groups] / memory[1],
                    *PAPER[groups],
                ]
            )
        print(f"  {backend}: " + ", ".join(f"G={g} {t:.2f} s" for g, t in seconds.items()), flush=True)
        del iterations

    columns = [
        "SDPA kernel",
        "cross-attention",
        "TFLOP (fwd+bwd)",
        "FLOP ratio",
        "time (s)",
        "time ratio",
        "peak memory (MiB)",
        "memory ratio",
        "paper time",
        "paper memory",
    ]
    report(
        args,
        device,
        "Benchmark 3: one training iteration, full vs half vs quarter cross-attention",
        [("", markdown_table(columns, rows))],
        [
            f"{args.views} views {args.resolution}x{args.resolution}, batch {args.batch}, (V,H,F) with "
            f"uplifting, width {args.width}, {layers} update layers, split {args.split} with rotation, "
            f"{'bf16 autocast' if bf16 else 'fp32'}, gradient checkpointing {'on' if args.checkpointing else 'off'}",
            "iteration = forward + loss on the Gaussians + backward + AdamW step; no rendering",
            "peak memory: peak PyTorch tensor allocations during the iteration above model, optimizer state and inputs",
            "TFLOP: forward + backward, counted by FlopCounterMode on the meta device",
            "paper: Table 8, 8 views, batch 16, base model on a GPU, including rendering",
            "GPU rows: not measured here unless the machine line above names a CUDA device",
        ],
    )


if __name__ == "__main__":
    main()
