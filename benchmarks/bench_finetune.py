"""Per-scene stage (paper "Ours_10") on held-out generated scenes.

For each scene of the data set's test split, the same code as `ns-train ilrm-finetune` (data
manager, feed-forward prediction, finetune optimizer; `optimize_scene` is checked against the
nerfstudio trainer in tests/test_finetune.py) measures the PSNR / SSIM of the held-out views
(every 8th frame; the input views are chosen by k-means among the others):

- feed-forward only (one pass of the network of an `ilrm` / `ilrm-small` run),
- after 1, 3 and 10 epochs of finetuning (one epoch = one Adam step on all input views),
- the same optimizer started from random Gaussians (as many as the network predicts) for the same
  numbers of steps, and for longer (`--scratch-epochs`) on the first `--scratch-scenes` scenes:
  how many steps and seconds from scratch need to reach the feed-forward and the Ours_10 PSNR.

    python benchmarks/bench_finetune.py --ilrm-run RUN_DIR [--data data/synthetic] [--num-scenes 10]

Writes a JSON file and prints a markdown table; `--figure` writes a picture of one held-out view
(ground truth, feed-forward, Ours_10, random start after 10 epochs and after --scratch-epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig  # noqa: E402

from ilrm_nerfstudio.finetune import ILRMFinetuneModelConfig, optimize_scene  # noqa: E402
from ilrm_nerfstudio.metrics import psnr, ssim  # noqa: E402
from ilrm_nerfstudio.scene_datamanager import ILRMSceneDataManagerConfig  # noqa: E402

REPORT_EPOCHS = (1, 3, 10)


def quiet(function, *args, **kwargs):
    """Run with nerfstudio's console output suppressed."""
    from nerfstudio.utils.rich_utils import CONSOLE

    quiet_before = CONSOLE.quiet
    CONSOLE.quiet = True
    try:
        return function(*args, **kwargs)
    finally:
        CONSOLE.quiet = quiet_before


@torch.no_grad()
def held_out(model, datamanager) -> dict:
    """Mean PSNR / SSIM over the held-out views, and the renders."""
    cameras, items = datamanager.eval_views
    model.eval()
    values, renders = {"psnr": [], "ssim": []}, []
    for i, item in enumerate(items):
        out = model.render_cameras(cameras[i : i + 1])
        pred = out["rgb"].permute(2, 0, 1)[None]
        gt = model.ground_truth(item["image"], out["background"]).permute(2, 0, 1)[None]
        values["psnr"].append(float(psnr(pred, gt)))
        values["ssim"].append(float(ssim(pred, gt)))
        renders.append(pred[0])
    model.train()
    return {name: sum(v) / len(v) for name, v in values.items()} | {"renders": renders}


def run_scene(scene: Path, args) -> dict:
    dataparser = NerfstudioDataParserConfig(eval_mode="interval", eval_interval=args.eval_interval)
    dm_config = ILRMSceneDataManagerConfig(data=scene, dataparser=dataparser, num_input_views=args.input_views)
    datamanager = quiet(dm_config.setup, device="cpu", test_mode="val")
    cameras, items = quiet(lambda: datamanager.input_views)
    images = torch.stack([item["image"][..., :3] for item in items])
    result = {"scene": scene.name, "input_views": len(items), "held_out_views": len(datamanager.eval_views[1])}
    setup = dict(scene_box=datamanager.train_dataset.scene_box, num_train_data=len(datamanager.train_dataset))

    # Feed-forward, then the finetune.
    model = ILRMFinetuneModelConfig(ilrm_run=args.ilrm_run, report_held_out=False).setup(**setup)
    c2w, K = model.opencv_cameras(cameras)
    start = time.perf_counter()
    quiet(model.initialize_gaussians, datamanager)
    result["num_gaussians"] = len(model.means)
    result["feed_forward_seconds"] = time.perf_counter() - start  # includes loading the network
    first = held_out(model, datamanager)
    result["feed_forward"] = {"psnr": first["psnr"], "ssim": first["ssim"]}
    pictures = {"gt": [model.ground_truth(item["image"], model.background_color.to(model.device)).permute(2, 0, 1) for item in datamanager.eval_views[1]], "feed_forward": first["renders"]}
    result["finetune"] = {}
    clock = {"seconds": 0.0, "last": time.perf_counter()}

    def record(into: dict, picture: str | None = None, keep: tuple = REPORT_EPOCHS):
        def on_epoch(epoch: int) -> None:
            clock["seconds"] += time.perf_counter() - clock["last"]
            if epoch in keep:
                metrics = held_out(model_ref[0], datamanager)
                into[str(epoch)] = {"psnr": metrics["psnr"], "ssim": metrics["ssim"], "seconds": clock["seconds"]}
                if picture is not None and epoch == max(keep):
                    pictures[picture] = metrics["renders"]
            clock["last"] = time.perf_counter()

        return on_epoch

    model_ref = [model]
    clock["last"] = time.perf_counter()
    optimize_scene(model, c2w, K, images, max(REPORT_EPOCHS), on_epoch=record(result["finetune"], "ours_10"))

    # The same optimizer from random Gaussians (as many as predicted).
    random_model = ILRMFinetuneModelConfig(init="random", random_init_count=result["num_gaussians"], seed=args.seed, report_held_out=False).setup(**setup)
    quiet(random_model.initialize_gaussians, datamanager)
    model_ref[0] = random_model
    result["random_start"] = {"0": {k: v for k, v in held_out(random_model, datamanager).items() if k != "renders"}}
    epochs = max(REPORT_EPOCHS) if not args.long_run else args.scratch_epochs
    keep = tuple(sorted(set(REPORT_EPOCHS) | ({e for e in args.scratch_checkpoints if e <= epochs} if args.long_run else set())))
    clock.update(seconds=0.0, last=time.perf_counter())
    optimize_scene(random_model, c2w, K, images, epochs, on_epoch=record(result["random_start"], None, keep))
    if args.long_run:
        pictures["random_long"] = held_out(random_model, datamanager)["renders"]
    result["_pictures"] = pictures
    return result


def reach(curve: dict, target: float) -> dict | None:
    """First recorded epoch of a random-start curve at or above `target` PSNR."""
    for epoch in sorted((int(e) for e in curve if e != "0")):
        if curve[str(epoch)]["psnr"] >= target:
            return {"epoch": epoch, "seconds": curve[str(epoch)]["seconds"]}
    return None


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(results: list[dict]) -> dict:
    summary = {"feed_forward": mean([r["feed_forward"]["psnr"] for r in results])}
    for e in REPORT_EPOCHS:
        summary[f"ours_{e}"] = mean([r["finetune"][str(e)]["psnr"] for r in results])
        summary[f"ours_{e}_seconds"] = mean([r["finetune"][str(e)]["seconds"] for r in results])
        summary[f"random_{e}"] = mean([r["random_start"][str(e)]["psnr"] for r in results])
    summary["feed_forward_ssim"] = mean([r["feed_forward"]["ssim"] for r in results])
    summary["ours_10_ssim"] = mean([r["finetune"]["10"]["ssim"] for r in results])
    summary["random_10_ssim"] = mean([r["random_start"]["10"]["ssim"] for r in results])
    return summary


def save_figure(pictures: dict, path: Path, view: int = 0, zoom: int = 3) -> None:
    import torch.nn.functional as F
    import torchvision.utils as vutils

    columns = [pictures[k][view] for k in ("gt", "feed_forward", "ours_10", "random_long") if pictures.get(k) is not None]
    grid = vutils.make_grid([c.clamp(0, 1).cpu() for c in columns], nrow=len(columns), padding=2, pad_value=1.0)
    grid = F.interpolate(grid[None], scale_factor=zoom, mode="nearest")[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    vutils.save_image(grid, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ilrm-run", type=Path, required=True, help="an ns-train ilrm / ilrm-small run (folder, config.yml or .ckpt)")
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-scenes", type=int, default=10)
    parser.add_argument("--input-views", type=int, default=8)
    parser.add_argument("--eval-interval", type=int, default=8)
    parser.add_argument("--scratch-scenes", type=int, default=3, help="scenes that also get the long from-scratch run")
    parser.add_argument("--scratch-epochs", type=int, default=1000)
    parser.add_argument("--scratch-checkpoints", type=int, nargs="+", default=[30, 100, 300, 1000, 3000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/finetune.json"))
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    scenes = sorted(p for p in (args.data / args.split).iterdir() if (p / "transforms.json").is_file())[: args.num_scenes]
    results = []
    for i, scene in enumerate(scenes):
        args.long_run = i < args.scratch_scenes
        result = run_scene(scene, args)
        pictures = result.pop("_pictures")
        if i == 0 and args.figure is not None:
            save_figure(pictures, args.figure)
        results.append(result)
        ff, ours = result["feed_forward"]["psnr"], result["finetune"]["10"]["psnr"]
        line = f"[{i + 1}/{len(scenes)}] {scene.name}: feed-forward {ff:.2f}, Ours_1/3/10 " + "/".join(f"{result['finetune'][str(e)]['psnr']:.2f}" for e in REPORT_EPOCHS)
        line += ", random 1/3/10 " + "/".join(f"{result['random_start'][str(e)]['psnr']:.2f}" for e in REPORT_EPOCHS)
        if args.long_run:
            curve = result["random_start"]
            last = max(int(e) for e in curve)
            result["scratch_reaches_feed_forward"] = reach(curve, ff)
            result["scratch_reaches_ours_10"] = reach(curve, ours)
            line += f", random {last}: {curve[str(last)]['psnr']:.2f} ({curve[str(last)]['seconds']:.0f} s)"
        print(line, flush=True)

    summary = summarize(results)
    long = [r for r in results if "scratch_reaches_ours_10" in r]
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "summary": summary,
        "scenes": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))

    print(f"\n{len(results)} held-out scenes, {args.input_views} input views, PSNR (dB) on held-out views:\n")
    print("| start | 0 epochs | 1 | 3 | 10 |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| network (iLRM) | {summary['feed_forward']:.2f} | " + " | ".join(f"{summary[f'ours_{e}']:.2f}" for e in REPORT_EPOCHS) + " |")
    random0 = mean([r["random_start"]["0"]["psnr"] for r in results])
    print(f"| random | {random0:.2f} | " + " | ".join(f"{summary[f'random_{e}']:.2f}" for e in REPORT_EPOCHS) + " |")
    print(f"\nfinetune time (s, CPU, this machine): " + ", ".join(f"{e} epochs {summary[f'ours_{e}_seconds']:.2f}" for e in REPORT_EPOCHS))
    for r in long:
        def fmt(hit):
            return "not within the run" if hit is None else f"epoch {hit['epoch']} ({hit['seconds']:.0f} s)"

        ours_seconds = r["finetune"]["10"]["seconds"]
        print(f"{r['scene']}: from scratch reaches feed-forward PSNR at {fmt(r['scratch_reaches_feed_forward'])}, Ours_10 PSNR ({ours_seconds:.1f} s) at {fmt(r['scratch_reaches_ours_10'])}")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
