"""The per-scene stage on a real capture: held-out PSNR / SSIM / LPIPS against time.

Every run is `ns-train ilrm-finetune` in process (its config, Trainer and callbacks, as the CLI
builds them), on the capture's every-8th-frame held-out split, at the default working size:

- feed-forward: the network of `--ilrm-run` (0 epochs),
- Ours_10: the same, then the 10 published finetune epochs,
- default: the default command (no network: a start at the SfM / triangulated points, then the
  auto budget of `--minutes` of refinement), with the held-out PSNR after every epoch,
- random start: the same budget from random Gaussians,
- network + default (with `--ilrm-run` and `--network-refinement`): feed-forward, Ours_10, then
  the same refinement budget.

    python benchmarks/bench_real_capture.py --data ../shared/captures/snowmiku \
        [--ilrm-run demo_output/runs/demo/ilrm-small/steps500] [--minutes 8]

Prints a markdown table (and the per-epoch curve of the default run) and writes a JSON file.
Times exclude the held-out evaluations; LPIPS appears only when the VGG weights are available.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation  # noqa: E402

from ilrm_nerfstudio.metrics import image_metrics  # noqa: E402
from ilrm_nerfstudio.nerfstudio.method_configs import finetune_trainer_config  # noqa: E402


def held_out_metrics(model, datamanager) -> dict:
    pairs = model.held_out_renders(datamanager)
    values: dict[str, list[float]] = {}
    for render, truth in pairs:
        metrics = image_metrics(render.permute(2, 0, 1)[None], truth.permute(2, 0, 1)[None], with_lpips=True)
        for name, value in metrics.items():
            values.setdefault(name, []).append(float(value))
    return {name: sum(v) / len(v) for name, v in values.items()}


def run(name: str, data: Path, workdir: Path, epochs: int, curve: bool = False, **model_options) -> dict:
    config = finetune_trainer_config(epochs=epochs)
    config.pipeline.datamanager.data = data
    config.pipeline.model.report_held_out = False
    for key, value in model_options.items():
        setattr(config.pipeline.model, key, value)
    config.machine.device_type = "cpu"
    config.output_dir = workdir
    config.experiment_name = name.replace(" ", "_")
    config.logging.local_writer.enable = False
    config.set_timestamp()
    start = time.perf_counter()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    model, datamanager = trainer.pipeline.model, trainer.pipeline.datamanager
    points: list[dict] = []
    excluded = [0.0]  # seconds spent on held-out evaluations

    def measure(step: int | None) -> None:
        before = time.perf_counter()
        training_seconds = before - start - excluded[0]
        metrics = held_out_metrics(model, datamanager)
        excluded[0] += time.perf_counter() - before
        points.append(
            {
                "epoch": 0 if step is None else step + 1,
                "seconds": training_seconds,
                "gaussians": len(model.means),
                **metrics,
            }
        )

    if curve:
        measure(None)
        trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], measure))
    trainer.train()
    seconds = time.perf_counter() - start - excluded[0]
    final = held_out_metrics(model, datamanager)
    result = {
        "name": name,
        "epochs": trainer.config.max_num_iterations,
        "seconds": seconds,
        "gaussians": len(model.means),
        **final,
        "curve": points,
    }
    print(f"[bench] {name}: {result['epochs']} epochs, {seconds:.0f} s, PSNR {final['psnr']:.2f} dB", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/captures/snowmiku"))
    parser.add_argument(
        "--ilrm-run",
        type=Path,
        default=None,
        help="an ilrm / ilrm-small run (or a published file) for the network rows",
    )
    parser.add_argument("--minutes", type=float, default=8.0, help="refinement budget of the default and random rows")
    parser.add_argument(
        "--network-refinement", action="store_true", help="also the network start with the default budget"
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/real_capture.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.ilrm_run is not None:
            rows.append(run("feed-forward", args.data, workdir, 0, ilrm_run=args.ilrm_run))
            rows.append(run("Ours_10", args.data, workdir, 10, ilrm_run=args.ilrm_run))
        rows.append(run("default (points start)", args.data, workdir, -1, curve=True, refine_minutes=args.minutes))
        rows.append(
            run("random start, same budget", args.data, workdir, -1, init="random", refine_minutes=args.minutes)
        )
        if args.ilrm_run is not None and args.network_refinement:
            rows.append(
                run(
                    "network start, same budget",
                    args.data,
                    workdir,
                    -1,
                    ilrm_run=args.ilrm_run,
                    refine_minutes=args.minutes,
                )
            )
    command = "python benchmarks/bench_real_capture.py " + " ".join(sys.argv[1:])
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    lpips = all("lpips" in r for r in rows)
    print(
        f"\n`{command}` ({platform.processor() or platform.machine()}, {threads} threads, held-out: every 8th frame)\n"
    )
    print("| run | epochs | Gaussians | seconds | PSNR | SSIM |" + (" LPIPS |" if lpips else ""))
    print("| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if lpips else ""))
    for r in rows:
        print(
            f"| {r['name']} | {r['epochs']} | {r['gaussians']:,} | {r['seconds']:.0f} | "
            f"{r['psnr']:.2f} | {r['ssim']:.3f} |" + (f" {r['lpips']:.3f} |" if lpips else "")
        )
    curve = next(r["curve"] for r in rows if r["name"].startswith("default"))
    print("\nDefault run, held-out PSNR after each epoch:\n")
    print("| epoch | seconds | Gaussians | PSNR |\n| ---: | ---: | ---: | ---: |")
    for p in curve:
        print(f"| {p['epoch']} | {p['seconds']:.0f} | {p['gaussians']:,} | {p['psnr']:.2f} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"command": command, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
