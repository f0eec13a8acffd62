"""Benchmark 5 (needs a CUDA device): inference latency of the base model and gsplat vs our
PyTorch rasterizer.

A. (8, H, F) at 256x256 (131,072 Gaussians): latency of the base model's forward under bf16
   autocast with each SDPA kernel, with quarter cross-attention, with torch.compile, and in fp32
   for reference. Paper: 0.028 s on an RTX 4090 (Table 1).
B. The same Gaussians rendered by gsplat (`backend="gsplat"`) and by our PyTorch rasterizer
   (`backend="torch"`): agreement (max / mean absolute difference, PSNR of one against the other)
   and time, for a random Gaussian cloud and for the network's prediction.

Without CUDA the script prints the tables with every row marked "not measured" and exits 0.

    python benchmarks/bench_gpu.py --device cuda [--no-compile] [--quick]
"""

from __future__ import annotations

import math

import torch
from bench_scaling import base_parser, markdown_table, mb, peak_memory, report, scene_inputs, setup, time_call

from ilrm_nerfstudio.gaussians import Gaussians
from ilrm_nerfstudio.network import ILRM, ILRMNetworkConfig
from ilrm_nerfstudio.rendering import render

LATENCY_COLUMNS = ["variant", "Gaussians", "latency (ms)", "peak memory (MiB)"]
AGREEMENT_COLUMNS = ["Gaussians", "image", "max abs diff", "mean abs diff", "PSNR torch vs gsplat (dB)",
                     "alpha max diff", "gsplat (ms)", "torch (ms)"]  # fmt: skip


def latency_rows(device: torch.device, V: int, R: int, compile_too: bool, repeats: int, small: bool) -> list[list]:
    images, c2w, K = scene_inputs(1, V, R, R, device)
    base = dict(width=64, num_heads=1, num_layers=1) if small else {}
    variants = [
        ("bf16, SDPA auto", dict(), True),
        ("bf16, flash attention", dict(attention_backend="flash"), True),
        ("bf16, memory-efficient attention", dict(attention_backend="efficient"), True),
        ("bf16, cuDNN attention", dict(attention_backend="cudnn"), True),
        ("bf16, math attention", dict(attention_backend="math"), True),
        ("bf16, flash, quarter cross-attention", dict(attention_backend="flash", cross_attention_groups=4), True),
        ("fp32 (TF32), SDPA auto", dict(), False),
    ]
    if compile_too:
        variants.append(("bf16, flash, torch.compile", dict(attention_backend="flash", compile=True), True))
    rows = []
    for name, overrides, bf16 in variants:
        model = ILRM(ILRMNetworkConfig(**base, **overrides)).to(device).eval()

        def forward():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                return model(images, c2w, K)

        try:
            forward()  # warm-up (and compilation)
            memory = peak_memory(forward, device)
            seconds = time_call(forward, device, repeats=repeats, warmup=2)
            rows.append([name, model.num_gaussians(V, R, R), seconds * 1e3, mb(memory)])
        except RuntimeError as error:  # e.g. a kernel this GPU / dtype does not support
            rows.append([name, model.num_gaussians(V, R, R), f"failed: {str(error).splitlines()[0][:80]}", ""])
        del model
    return rows


def random_cloud(n: int, device: torch.device, seed: int = 0) -> Gaussians:
    """n Gaussians in a 2 x 2 x 2 box around the origin, seen by the ring cameras of scene_inputs."""
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    return Gaussians(
        means=(torch.rand(n, 3, generator=g) * 2 - 1),
        scales=torch.exp(torch.empty(n, 3).uniform_(math.log(0.005), math.log(0.05), generator=g)),
        quats=q,
        opacities=torch.empty(n).uniform_(0.05, 0.95, generator=g),
        sh=torch.randn(n, 1, 3, generator=g) * 0.5,
    ).map(lambda t: t.to(device))


def agreement_rows(device: torch.device, V: int, R: int, n_cloud: int, small: bool) -> list[list]:
    images, c2w, K = scene_inputs(1, max(V, 2), R, R, device)
    base = dict(width=64, num_heads=1, num_layers=1) if small else {}
    model = ILRM(ILRMNetworkConfig(**base)).to(device).eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        predicted = model(images, c2w, K).map(lambda t: t[0].float())
    rows = []
    for label, gaussians in (("random cloud", random_cloud(n_cloud, device)), ("network prediction (untrained)", predicted)):
        background = torch.ones(3, device=device)
        outputs = {}
        times = {}
        for backend in ("gsplat", "torch"):
            with torch.no_grad():
                outputs[backend] = render(gaussians, c2w[0, :2], K[0, :2], R, R, background, backend=backend)
                times[backend] = time_call(lambda: render(gaussians, c2w[0, :2], K[0, :2], R, R, background, backend=backend), device, repeats=5)
        diff = (outputs["gsplat"].rgb - outputs["torch"].rgb).abs()
        mse = diff.square().mean().clamp_min(1e-12)
        rows.append([
            f"{label}: {len(gaussians)}", f"2 x {R}x{R}", diff.max().item(), diff.mean().item(), (-10 * torch.log10(mse)).item(),
            (outputs["gsplat"].alpha - outputs["torch"].alpha).abs().max().item(), times["gsplat"] * 1e3, times["torch"] * 1e3,
        ])  # fmt: skip
    return rows


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--cloud", type=int, default=50_000, help="Gaussians in the random cloud")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    cuda = args.device == "cuda" and torch.cuda.is_available()
    device = setup(args) if cuda else torch.device("cpu")
    V, R, small = args.views, args.resolution, False
    if args.quick:
        V, R, args.cloud, args.repeats, small = 2, 64, 2000, 3, True

    if cuda:
        latency = latency_rows(device, V, R, not args.no_compile, args.repeats, small)
        agreement = agreement_rows(device, V, R, args.cloud, small)
        notes = [f"latency: median of {args.repeats} forwards after warm-up, batch 1, no_grad; peak memory above model + inputs"]
    else:
        why = "not measured: no CUDA device on this machine" if args.device == "cpu" or not torch.cuda.is_available() else ""
        latency = [["(all variants)", V * (R // 2) ** 2, why, ""]]
        agreement = [["(both Gaussian sets)", f"2 x {R}x{R}", why, "", "", "", "", ""]]
        notes = ["run with --device cuda on a machine with a GPU; nothing here was measured"]
    report(
        args,
        device,
        "Benchmark 5: GPU inference latency and gsplat agreement",
        [
            (f"A. Base model ({V},H,F) at {R}x{R}, forward latency", markdown_table(LATENCY_COLUMNS, latency)),
            ("B. gsplat vs our PyTorch rasterizer on the same Gaussians", markdown_table(AGREEMENT_COLUMNS, agreement)),
        ],
        notes,
    )


if __name__ == "__main__":
    main()
