"""Benchmark 1: attention cost of the four designs of paper Fig. 2, measured with a FLOP counter.

16 views at 256x256, patch 8 (T = 1024 image tokens per view at full resolution), 12 heads of 64
channels. Every design is run as the scaled-dot-product-attention calls it makes, on meta tensors
under torch's FlopCounterMode (nothing is computed, the counts are exact):

  (a) full attention over all image tokens of all views      q = k = v: N*T tokens
  (b) decoupled, viewpoint tokens at full resolution         N*T queries x N*T keys
  (c) decoupled, viewpoint tokens at half resolution         N*T/4 queries x N*T keys
  (d) two-stage (iLRM): per-view cross + global self         N x (T/4 x T) + (N*T/4)^2

Paper: 1 : 1 : 0.25 : 0.08. A second table counts whole networks (base width and depth, meta
device): the full-attention baseline against iLRM variants, attention and total FLOPs.

    python benchmarks/bench_attention_flops.py [--quick]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from bench_scaling import base_parser, count_flops, markdown_table, report, scene_inputs
from torch.utils.flop_counter import FlopCounterMode

from ilrm_nerfstudio.core.baseline_network import FullAttentionLRM
from ilrm_nerfstudio.core.network import ILRM, ILRMNetworkConfig


def attention_flops(calls: list[tuple[tuple[int, int, int], tuple[int, int, int]]], heads: int, head_dim: int) -> int:
    """FLOPs of SDPA calls given as ((batch, queries), (batch, keys)) token counts, on meta tensors."""
    total = 0
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        for (batch, queries), (_, keys) in calls:
            q = torch.empty(batch, heads, queries, head_dim)
            kv = torch.empty(batch, heads, keys, head_dim)
            F.scaled_dot_product_attention(q, kv, kv)
    total = counter.get_total_flops()
    return total


def designs(N: int, T: int) -> dict[str, list]:
    """SDPA calls of each design: N views, T image tokens per view at full resolution."""
    return {
        "(a) full attention over image tokens": [((1, N * T), (1, N * T))],
        "(b) decoupled, full-res viewpoint tokens": [((1, N * T), (1, N * T))],
        "(c) decoupled, half-res viewpoint tokens": [((1, N * T // 4), (1, N * T))],
        "(d) two-stage (iLRM)": [((N, T // 4), (N, T)), ((1, N * T // 4), (1, N * T // 4))],
    }


PAPER = [1.0, 1.0, 0.25, 0.08]


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--patch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.views, args.resolution = 4, 64
    N, R, p = args.views, args.resolution, args.patch_size
    T = (R // p) ** 2
    heads, head_dim = 12, 64

    rows, reference = [], None
    for (name, calls), paper in zip(designs(N, T).items(), PAPER):
        flops = attention_flops(calls, heads, head_dim)
        reference = reference or flops
        shape = " + ".join(f"{b} x ({q} x {k})" for (b, q), (_, k) in calls)
        rows.append([name, shape, flops / 1e9, flops / reference, paper])
    table1 = markdown_table(["design", "attention matrices", "GFLOP (one layer)", "relative", "paper Fig. 2"], rows)

    # Whole networks, base width and depth (quick: 1 layer), one scene.
    size = dict(num_layers=1) if args.quick else {}
    variants = {
        "full attention (GS-LRM style)": (FullAttentionLRM, ILRMNetworkConfig(**size)),
        "iLRM (N,F,F)": (ILRM, ILRMNetworkConfig(viewpoint_factor=1, **size)),
        "iLRM (N,H,F), no uplifting": (ILRM, ILRMNetworkConfig(uplift=1, **size)),
        "iLRM (N,H,F) (base)": (ILRM, ILRMNetworkConfig(**size)),
        "iLRM (N,H,F), half cross-attention (G=2)": (ILRM, ILRMNetworkConfig(cross_attention_groups=2, **size)),
        "iLRM (N,H,F), quarter cross-attention (G=4)": (ILRM, ILRMNetworkConfig(cross_attention_groups=4, **size)),
    }
    layers = variants["iLRM (N,H,F) (base)"][1].num_layers
    images, c2w, K = scene_inputs(1, N, R, R, torch.device("cpu"))
    rows2, reference = [], None
    for name, (cls, cfg) in variants.items():
        with torch.device("meta"):
            model = cls(cfg)
        flops = count_flops(model, images, c2w, K)
        reference = reference or flops
        rows2.append(
            [
                name,
                flops["attention"] / 1e12,
                flops["attention"] / reference["attention"],
                flops["total"] / 1e12,
                flops["total"] / reference["total"],
                flops["attention"] / flops["total"],
            ]
        )
    table2 = markdown_table(
        [
            "network (forward)",
            "attention TFLOP",
            "attention relative",
            "total TFLOP",
            "total relative",
            "attention share",
        ],
        rows2,
    )

    report(
        args,
        torch.device("cpu"),
        f"Benchmark 1: attention cost, {N} views, {R}x{R}, patch {p}",
        [
            ("The four designs of paper Fig. 2 (one attention layer)", table1),
            (f"Whole networks (width 768, {layers} update layers; baseline {2 * layers} blocks)", table2),
        ],
        [
            "FLOPs counted by torch.utils.flop_counter.FlopCounterMode on meta tensors: 4 x queries x keys x width "
            "per attention (QK^T and AV, 2 FLOP per multiply-add); no timing involved, so the machine does not matter",
            "Fig. 2 ignores token uplifting; the base model's uplifting (k = 2) doubles the cross-attention queries",
        ],
    )


if __name__ == "__main__":
    main()
