"""The demo, in two parts, both with the real nerfstudio commands on the CPU:

1. Feed-forward: generate the embedded data set, train `ilrm-small` with `ns-train`, reconstruct
   held-out scenes and report PSNR against two trivial baselines.
2. A real capture: `ns-train ilrm-finetune` on the shipped subset of the snowmiku photos (33 real
   phone photos with COLMAP poses, every 8th frame held out), then `ns-export gaussian-splat`.

    ilrm-demo [--workdir demo_output] [--steps N] [--capture-minutes M]

Writes <workdir>/held_out_scene.png (contexts | targets | renders), held_out_scene.ply (the
Gaussians, INRIA layout), metrics.json, and for the capture real_capture.png (held-out frames:
ground truth | render) and real_capture.ply. Re-running reuses the data and the finished runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.utils as vutils
import tyro

from ilrm_nerfstudio.core.errors import exit_on_error
from ilrm_nerfstudio.data.ply import save_ply
from ilrm_nerfstudio.data.synthetic import generate_dataset

DEFAULT_STEPS = 500
CAPTURE = Path(__file__).parents[1] / "captures" / "snowmiku"  # MIT license, see its README
DEFAULT_CAPTURE_MINUTES = 4.0


def tool(name: str) -> str:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def reconstruct_capture(workdir: Path, minutes: float) -> dict:
    """ns-train ilrm-finetune on the shipped real capture (points start, time budget), then
    ns-export gaussian-splat; the held-out PSNR it printed and its picture."""
    run = workdir / "runs" / "capture" / "ilrm-finetune" / "demo"
    log = workdir / "real_capture.log"
    if not list((run / "nerfstudio_models").glob("*.ckpt")):
        command = [
            tool("ns-train"),
            "ilrm-finetune",
            "--data",
            str(CAPTURE),
            "--machine.device-type",
            "cpu",
            "--vis",
            "tensorboard",
            "--output-dir",
            str(workdir / "runs"),
            "--experiment-name",
            "capture",
            "--timestamp",
            "demo",
            "--pipeline.model.refine-minutes",
            str(minutes),
        ]
        print("[demo] " + " ".join(command), flush=True)
        with open(log, "w") as out:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in process.stdout:
                out.write(line)
                if line.startswith("[ilrm-finetune]"):
                    print(line.rstrip(), flush=True)
        if process.wait() != 0:
            raise SystemExit(f"[demo] ns-train ilrm-finetune failed; see {log}")
    else:
        print(f"[demo] reusing the finished capture run in {run}")
    export = subprocess.run(
        [
            tool("ns-export"),
            "gaussian-splat",
            "--load-config",
            str(run / "config.yml"),
            "--output-dir",
            str(workdir / "export"),
        ],
        capture_output=True,
        text=True,
    )
    if export.returncode != 0:
        raise SystemExit(f"[demo] ns-export failed:\n{export.stdout[-2000:]}{export.stderr[-2000:]}")
    shutil.copy(workdir / "export" / "splat.ply", workdir / "real_capture.ply")
    shutil.copy(run / "held_out.png", workdir / "real_capture.png")
    lines = [line for line in log.read_text().splitlines() if "held-out PSNR" in line]
    result = {"log": str(log), "held_out": lines}
    print(f"\n[demo] real capture ({CAPTURE.name}, {len(list((CAPTURE / 'images').glob('*.jpg')))} photos):")
    for line in lines:
        print("    " + line.split("]", 1)[1].strip())
    print(
        f"[demo] wrote {workdir / 'real_capture.png'} (held-out frames: ground truth | render) and "
        f"{workdir / 'real_capture.ply'}"
    )
    return result


def train(data: Path, workdir: Path, steps: int, extra: list[str]) -> Path:
    """Run ns-train ilrm-small (skipped if this workdir already holds a run of `steps` steps)."""
    run = workdir / "runs" / "demo" / "ilrm-small" / f"steps{steps}"
    if list((run / "nerfstudio_models").glob("*.ckpt")):
        print(f"[demo] reusing the finished training run in {run}")
        return run
    ns_train = tool("ns-train")
    command = [
        ns_train,
        "ilrm-small",
        "--data",
        str(data),
        "--machine.device-type",
        "cpu",
        "--vis",
        "tensorboard",
        "--output-dir",
        str(workdir / "runs"),
        "--experiment-name",
        "demo",
        "--timestamp",
        f"steps{steps}",
        "--max-num-iterations",
        str(steps),
        "--logging.steps-per-log",
        "50",
        *extra,
    ]
    print("[demo] " + " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        raise SystemExit("[demo] ns-train failed; see its output above")
    return run


@torch.no_grad()
def reconstruct(run: Path, workdir: Path) -> dict:
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(run / "config.yml", test_mode="test")
    model, datamanager = pipeline.model, pipeline.datamanager

    # One held-out scene in detail: its Gaussians and a picture.
    batch = datamanager.eval_batch([0])
    start = time.perf_counter()
    outputs = model(batch)
    seconds = time.perf_counter() - start
    gaussians = outputs["gaussians"].map(lambda t: t[0])
    ply = save_ply(gaussians, workdir / "held_out_scene.ply")
    rows = [batch["context_images"][0], batch["target_images"][0], outputs["rgb"][0].permute(0, 3, 1, 2)]
    columns = max(len(r) for r in rows)
    grid = torch.cat([torch.cat([r, torch.ones(columns - len(r), *r.shape[1:])]) for r in rows])
    vutils.save_image(grid, workdir / "held_out_scene.png", nrow=columns, padding=2, pad_value=1.0)
    scene = model.scene_metrics(outputs, batch)[0]

    # Every held-out scene: the number that says whether training worked.
    summary = pipeline.get_average_eval_image_metrics(output_path=workdir / "renders")
    result = {
        "held_out_scene": scene,
        "held_out_mean": summary,
        "num_gaussians": len(gaussians),
        "reconstruct_seconds": seconds,
    }
    (workdir / "metrics.json").write_text(json.dumps(result, indent=2))
    print(f"\n[demo] held-out scene {scene['scene']}: {len(gaussians)} Gaussians in {seconds:.2f} s")
    print(f"[demo] wrote {ply}, {workdir / 'held_out_scene.png'} (rows: contexts, targets, renders)")
    print(f"\n[demo] PSNR over {int(summary['num_scenes'])} held-out scenes (dB):")
    print(f"    iLRM-small               {summary['psnr']:6.2f}")
    print(f"    copy nearest context     {summary['baseline_nearest_view_psnr']:6.2f}")
    print(f"    mean context color       {summary['baseline_mean_color_psnr']:6.2f}")
    margin = summary["psnr"] - max(summary["baseline_nearest_view_psnr"], summary["baseline_mean_color_psnr"])
    print(f"    margin over the better baseline: {margin:+.2f} dB")
    return result


@dataclass
class DemoConfig:
    """The demo on the CPU: train ilrm-small on the generated data set and reconstruct held-out
    scenes, then ilrm-finetune on a real capture. Options it does not know go to ns-train
    ilrm-small."""

    workdir: Path = Path("demo_output")
    """Where the runs, pictures, PLY files and metrics.json go."""
    data: Path = Path("data/synthetic")
    """Where the generated data set goes (reused when it is already there)."""
    num_scenes: int = 300
    """Scenes in the generated data set."""
    steps: int = DEFAULT_STEPS
    """Training iterations."""
    capture_minutes: float = DEFAULT_CAPTURE_MINUTES
    """Refinement budget of the real capture."""


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args, extra = tyro.cli(DemoConfig, prog="ilrm-demo", args=argv, return_unknown_args=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"[demo] 1/4 generating {args.num_scenes} scenes in {args.data}", flush=True)
    generate_dataset(args.data, num_scenes=args.num_scenes, progress=True)
    print("[demo] 2/4 training ilrm-small on the CPU", flush=True)
    run = train(args.data, args.workdir, args.steps, extra)
    print("[demo] 3/4 reconstructing held-out scenes", flush=True)
    reconstruct(run, args.workdir)
    print(
        f"\n[demo] 4/4 a real capture: ilrm-finetune on {CAPTURE} ({args.capture_minutes:g} min refinement)", flush=True
    )
    reconstruct_capture(args.workdir, args.capture_minutes)
    print(f"\n[demo] done in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
