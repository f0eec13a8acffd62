"""Small-budget quality comparison: full vs quarter cross-attention, and the ablations of paper
Table 7, trained with nerfstudio on the same data for the same number of steps.

Every variant is `ns-train ilrm-small` (width 128, 4 update layers, patch 4, (2,H,F)) on the
generated data set at a reduced resolution, with the same seed (same scenes, same views, same
order), then `ns-eval` on the held-out scenes. The table reports held-out PSNR / SSIM and the
nearest-context-view baseline PSNR on the same targets. This is a sanity check of the switches at
a CPU budget, not a reproduction of the paper's numbers (Table 7: 29.24 baseline, 28.58 w/o
iterative refinement, 28.47 w/o resolution decoupling, 28.90 w/o token uplifting; Table 8: 30.39
full, 30.08 quarter cross-attention).

    python benchmarks/quality_ablation.py --data data/synthetic --steps 300
    python benchmarks/quality_ablation.py --quick          # 8 steps per variant: checks the pipeline
    python benchmarks/quality_ablation.py --dry-run        # print the commands only
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "full": ("full cross-attention (G=1)", {}),
    "quarter": ("quarter cross-attention (G=4, strided, rotation)", {"cross-attention-groups": "4"}),
    "quarter-spatial": (
        "quarter cross-attention (G=4, spatial, no rotation)",
        {"cross-attention-groups": "4", "cross-attention-split": "spatial", "cross-attention-rotation": "False"},
    ),
    "no-refinement": ("w/o iterative refinement", {"iterative-refinement": "False"}),
    "no-decoupling": ("w/o resolution decoupling", {"resolution-decoupling": "False"}),
    "no-uplifting": ("w/o token uplifting", {"uplift": "1"}),
}
DEFAULT_VARIANTS = ["full", "quarter", "no-refinement", "no-decoupling", "no-uplifting"]


def train_command(args: argparse.Namespace, variant: str) -> list[str]:
    overrides = [
        item for key, value in VARIANTS[variant][1].items() for item in (f"--pipeline.model.network.{key}", value)
    ]
    return [
        str(BIN / "ns-train"),
        "ilrm-small",
        "--data",
        str(args.data),
        "--machine.device-type",
        "cpu",
        "--machine.seed",
        str(args.seed),
        "--vis",
        "tensorboard",
        "--output-dir",
        str(args.output_dir / "runs"),
        "--experiment-name",
        "quality",
        "--timestamp",
        variant,
        "--max-num-iterations",
        str(args.steps),
        "--steps-per-save",
        str(args.steps),
        "--steps-per-eval-batch",
        "0",
        "--steps-per-eval-image",
        "0",
        "--steps-per-eval-all-images",
        "0",
        "--pipeline.datamanager.image-height",
        str(args.resolution),
        "--pipeline.datamanager.image-width",
        str(args.resolution),
        *overrides,
    ]


def eval_command(args: argparse.Namespace, variant: str) -> list[str]:
    run = args.output_dir / "runs" / "quality" / "ilrm-small" / variant
    return [
        str(BIN / "ns-eval"),
        "--load-config",
        str(run / "config.yml"),
        "--output-path",
        str(args.output_dir / f"{variant}.json"),
    ]


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    """Train and evaluate one variant; a finished one (its summary file exists) is reused."""
    summary = args.output_dir / f"{variant}.summary.json"
    if summary.is_file() and not args.fresh:
        return json.loads(summary.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    for command in (train_command(args, variant), eval_command(args, variant)):
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    results = json.loads((args.output_dir / f"{variant}.json").read_text())["results"]
    results = results | {"minutes": (time.perf_counter() - start) / 60}
    summary.write_text(json.dumps(results, indent=2))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "synthetic")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/quality_ablation"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--resolution", type=int, default=32, help="square image size (the data is resized)")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at the same time")
    parser.add_argument("--quick", action="store_true", help="8 steps per variant")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and an empty table")
    parser.add_argument(
        "--fresh", action="store_true", help="retrain variants that already have results in --output-dir"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps = 8
    args.output_dir = args.output_dir.resolve()

    print(f"command: python {' '.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])}")

    def shown(command: list[str]) -> str:  # as typed in the activated venv
        return shlex.join(command).replace(f"{BIN}/", "")

    for variant in args.variants:
        print(f"  {variant}: {shown(train_command(args, variant))} && {shown(eval_command(args, variant))}")
    results: dict[str, dict] = {}
    failed: dict[str, str] = {}
    if not args.dry_run:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run_variant, args, v): v for v in args.variants}
            for future in concurrent.futures.as_completed(futures):
                variant = futures[future]
                try:
                    results[variant] = future.result()
                except RuntimeError as error:  # one failed run must not lose the others
                    failed[variant] = str(error)
                    print(f"  FAILED {variant}: {error}", file=sys.stderr, flush=True)
                    continue
                print(
                    f"  done {variant}: PSNR {results[variant]['psnr']:.2f} ({results[variant]['minutes']:.1f} min)",
                    flush=True,
                )

    lines = [
        f"## Quality at a small budget: {args.steps} steps, {args.resolution}x{args.resolution}, "
        f"ilrm-small, seed {args.seed}",
        "",
        "| variant | held-out PSNR | SSIM | nearest-view PSNR | PSNR - full | minutes |",
        "|---|---|---|---|---|---|",
    ]
    full = results.get("full", {}).get("psnr")
    for variant in args.variants:
        name = VARIANTS[variant][0]
        if variant not in results:
            lines.append(f"| {name} | {'failed (see the log)' if variant in failed else 'not run'} | | | | |")
            continue
        r = results[variant]
        delta = f"{r['psnr'] - full:+.2f}" if full is not None else ""
        lines.append(
            f"| {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['baseline_nearest_view_psnr']:.2f} | "
            f"{delta} | {r['minutes']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.dry_run:
        (args.output_dir / "quality_ablation.md").write_text(text)
    if failed:
        sys.exit(f"{len(failed)} variant(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
