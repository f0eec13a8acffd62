"""The demo: generate the embedded data set, train `ilrm-small` with the real `ns-train` on the
CPU, reconstruct held-out scenes and report PSNR against two trivial baselines.

    ilrm-demo [--workdir demo_output] [--steps N]

Writes <workdir>/held_out_scene.png (contexts | targets | renders), held_out_scene.ply (the
Gaussians, INRIA layout) and metrics.json. Re-running reuses the data and a finished run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision.utils as vutils

from .export import save_ply
from .synthetic import generate_dataset

DEFAULT_STEPS = 500  # 9.5 min for the whole demo on 2 cores (docs/training.md)


def train(data: Path, workdir: Path, steps: int, extra: list[str]) -> Path:
    """Run ns-train ilrm-small (skipped if this workdir already holds a run of `steps` steps)."""
    run = workdir / "runs" / "demo" / "ilrm-small" / f"steps{steps}"
    if list((run / "nerfstudio_models").glob("*.ckpt")):
        print(f"[demo] reusing the finished training run in {run}")
        return run
    ns_train = shutil.which("ns-train", path=str(Path(sys.executable).parent)) or "ns-train"
    command = [
        ns_train, "ilrm-small", "--data", str(data), "--machine.device-type", "cpu", "--vis", "tensorboard",
        "--output-dir", str(workdir / "runs"), "--experiment-name", "demo", "--timestamp", f"steps{steps}",
        "--max-num-iterations", str(steps), "--logging.steps-per-log", "50", *extra,
    ]  # fmt: skip
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
    result = {"held_out_scene": scene, "held_out_mean": summary, "num_gaussians": len(gaussians), "reconstruct_seconds": seconds}
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("demo_output"))
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--num-scenes", type=int, default=300)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training iterations")
    args, extra = parser.parse_known_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"[demo] 1/3 generating {args.num_scenes} scenes in {args.data}", flush=True)
    generate_dataset(args.data, num_scenes=args.num_scenes, progress=True)
    print("[demo] 2/3 training ilrm-small on the CPU", flush=True)
    run = train(args.data, args.workdir, args.steps, extra)
    print("[demo] 3/3 reconstructing held-out scenes", flush=True)
    reconstruct(run, args.workdir)
    print(f"\n[demo] done in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
