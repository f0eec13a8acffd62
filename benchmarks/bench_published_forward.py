"""Forward time of the full-size published iLRM architectures (random weights) on this machine.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_published_forward.py [--repeats 2] [--warmup 1] [--device cpu] [--cases 0 1 2]

The networks are built exactly as `load_published_network` builds them from the authors' files
(24 blocks = 12 update layers, d = 768, 12 heads, p = 8; RE10K: (V, F, F) without uplifting;
DL3DV: (V, H, F) with uplifting k = 2), here from the key structure of those files with random
weights. fp32, no gradients; `--warmup` forwards (on a CPU the first forward is not slower), then
the median of `--repeats`. Prints a markdown
table (docs/published.md holds the measured one).
"""  # noqa: E501 (the command line above)

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ilrm_nerfstudio.core.network import ILRM  # noqa: E402
from ilrm_nerfstudio.core.published import DL3DV, RE10K, published_network_config  # noqa: E402
from tests.test_published import their_shapes  # noqa: E402  (the published key structure)

CASES = [  # (layout, views, H, W)
    (RE10K, 2, 256, 256),
    (DL3DV, 8, 256, 256),
    (DL3DV, 16, 256, 448),
]


def build(kind: str, device: str) -> ILRM:
    shapes = their_shapes(kind, d=768, head_dim=64, blocks=24, p=8)
    config = published_network_config(kind, {k: torch.empty(s, device="meta") for k, s in shapes.items()})
    torch.manual_seed(0)
    return ILRM(config).eval().requires_grad_(False).to(device)


def inputs(views: int, height: int, width: int, device: str):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(1, views, 3, height, width, generator=g)
    c2w = torch.eye(4).repeat(1, views, 1, 1)
    c2w[0, :, 0, 3] = torch.linspace(-1, 1, views)  # cameras on a line, looking along +z
    K = torch.tensor([[0.9 * width, 0, width / 2], [0, 0.9 * width, height / 2], [0, 0, 1.0]]).repeat(1, views, 1, 1)
    return images.to(device), c2w.to(device), K.to(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", type=int, nargs="*", help=f"indices into {CASES} (default: all)")
    parser.add_argument("--quick", action="store_true", help="RE10K at 64x64, one forward: checks the script")
    args = parser.parse_args(argv)
    if args.quick:  # full-size network, small input; options given still win
        parser.set_defaults(warmup=0, repeats=1)
        args = parser.parse_args(argv)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    rows = []
    cases = [(RE10K, 2, 64, 64)] if args.quick else [CASES[i] for i in (args.cases or range(len(CASES)))]
    for kind, views, height, width in cases:
        net = build(kind, args.device)
        x = inputs(views, height, width, args.device)
        times = []
        with torch.no_grad():
            for i in range(args.warmup + args.repeats):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out = net(*x)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                if i >= args.warmup:
                    times.append(time.perf_counter() - start)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        cfg = net.config
        arch = f"({views}, {'F' if cfg.viewpoint_factor == 1 else 'H'}, F)"
        rows.append(
            (kind, arch, f"{height}x{width}", f"{out.means.shape[1]:,}", f"{params:.1f}M", statistics.median(times))
        )
        print(f"{kind} {arch} {height}x{width}: {statistics.median(times):.2f} s", flush=True)
        del net, out
    print()
    cases = " --quick" if args.quick else ""
    cases += " --cases " + " ".join(map(str, args.cases)) if args.cases and not args.quick else ""
    print(
        f"`OMP_NUM_THREADS={threads} .venv/bin/python benchmarks/bench_published_forward.py --repeats {args.repeats} "
        f"--warmup {args.warmup} --device {args.device}{cases}`"
    )
    print(
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, fp32, no grad, median of {args.repeats} after {args.warmup} warm-up)"
    )
    print()
    print("| layout | (V, viewpoint, image) | input | Gaussians | parameters | forward (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, arch, size, gaussians, params, seconds in rows:
        print(f"| {kind} | {arch} | {size} | {gaussians} | {params} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
