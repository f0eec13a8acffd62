"""`ilrm-eval`: evaluate a trained run on held-out scenes and write per-scene and mean PSNR / SSIM /
LPIPS as JSON, following the protocol shared by pixelSplat, MVSplat, DepthSplat and iLRM:
PSNR on [0, 1]-clipped images, SSIM with an 11x11 Gaussian window, LPIPS-VGG on [0, 1] inputs,
averaged over the targets of a scene, then over scenes.

    ilrm-eval --load-config outputs/x/ilrm/RUN/config.yml \
        [--data DATA] [--index index.json] [--output results.json] [--render-dir DIR] \
        [--protocol sequence|wide] [--context-views N] [--split test] [--num-scenes N]
    ilrm-eval --published re10k_2view.ckpt --data RE10K_ROOT --index evaluation_index_re10k.json
    ilrm-eval --published ilrm_undistort_dl3dv.pt --data DL3DV_SCENES --protocol wide

With `--published` the authors' checkpoint (docs/published.md) is evaluated directly, with that
model's protocol (input size, number of context views, white background, their pose scale);
`--image-size H W` and `--context-views N` change it (e.g. to fit a CPU).

The views come from an evaluation index (`{scene: {"context": [...], "target": [...]}}`, null
entries skipped), from the deterministic held-out protocol of the run's data manager, or (with
`--protocol wide`) from the wide-coverage protocol: every 8th frame a target, contexts by k-means
over camera position and direction. LPIPS is omitted, with a warning, when the VGG weights cannot
be loaded (offline). Bad data ends with one line naming the scene and the problem (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import torch

from ilrm_nerfstudio.core.errors import ILRMError

METRICS = ("psnr", "ssim", "lpips")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._#-]+", "_", name) or "scene"


def _save_renders(outputs: dict, batch: dict, render_dir: Path) -> None:
    from PIL import Image

    for b, scene in enumerate(batch["scene"]):
        folder = render_dir / _safe_name(scene)
        folder.mkdir(parents=True, exist_ok=True)
        for t, index in enumerate(batch["target_indices"][b].tolist()):
            for suffix, image in (("", outputs["rgb"][b, t]), ("_gt", batch["target_images"][b, t].permute(1, 2, 0))):
                pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
                Image.fromarray(pixels).save(folder / f"frame_{index:05d}{suffix}.png")


def _lpips_available(model) -> bool:
    """Load LPIPS-VGG for the model's metrics; when its weights are unavailable (offline) LPIPS is
    left out of the metrics (load_perceptual logs why) instead of failing the evaluation."""
    from ilrm_nerfstudio.metrics.image import load_perceptual

    perceptual = load_perceptual(required=False)
    if perceptual is None:
        model.perceptual = lambda: None  # this evaluation only: do not retry per batch
        return False
    model._perceptual[0] = perceptual.to(model.device)
    return True


@torch.no_grad()
def evaluate_pipeline(pipeline, render_dir: Path | None = None, num_workers: int | None = None, progress: bool = True) -> tuple[list[dict], dict]:
    """Per-scene metrics and their mean (and standard deviation) over every held-out scene."""
    datamanager, model = pipeline.datamanager, pipeline.model
    pipeline.eval()
    per_scene: list[dict] = []
    total, start = len(datamanager.eval_dataset), time.perf_counter()
    for batch in datamanager.eval_scene_batches(num_workers):
        outputs = model(batch)
        rows = model.scene_metrics(outputs, batch)
        for b, row in enumerate(rows):
            row["context"] = batch["context_indices"][b].tolist()
            row["target"] = batch["target_indices"][b].tolist()
        per_scene += rows
        if render_dir is not None:
            _save_renders(outputs, batch, render_dir)
        if progress and (len(per_scene) == total or len(per_scene) % 50 < len(rows)):
            print(f"  {len(per_scene)}/{total} scenes ({time.perf_counter() - start:.0f} s)", flush=True)
    if not per_scene:
        raise ILRMError("no scene was evaluated")
    names = [k for k, v in per_scene[0].items() if isinstance(v, float)]
    summary: dict[str, float] = {"num_scenes": float(len(per_scene))}
    for name in names:
        values = torch.tensor([row[name] for row in per_scene], dtype=torch.float64)
        summary[name] = float(values.mean())
        summary[f"{name}_std"] = float(values.std()) if len(values) > 1 else 0.0
    return per_scene, summary


def evaluate(
    load_config: Path,
    data: Path | None = None,
    index: Path | None = None,
    output: Path | None = None,
    render_dir: Path | None = None,
    protocol: str | None = None,
    context_views: int | None = None,
    split: str | None = None,
    num_scenes: int | None = None,
    num_workers: int | None = None,
    source: str | None = None,
) -> dict:
    """Run the evaluation and write the JSON (to `output`, default `<run>/eval_results.json`)."""
    from nerfstudio.utils.eval_utils import eval_setup

    load_config = Path(load_config)
    if not load_config.is_file():
        raise ILRMError(f"{load_config}: run config not found (pass the config.yml that ns-train wrote)")

    def update(config):
        dm = config.pipeline.datamanager
        if data is not None:
            dm.data = Path(data)
        if index is not None:
            dm.eval_index = Path(index)
        if protocol is not None:
            dm.eval_protocol = protocol
        if context_views is not None:
            dm.eval_context_views = context_views
        if split is not None:
            dm.eval_split = split
        if source is not None:
            dm.source = source
        dm.num_eval_scenes = num_scenes
        return config

    try:
        config, pipeline, checkpoint, step = eval_setup(load_config, test_mode="test", update_config_callback=update)
    except SystemExit as error:  # the pipeline turns bad data into SystemExit("ilrm: ...")
        if isinstance(error.code, str):
            raise ILRMError(error.code.removeprefix("ilrm: ")) from None
        raise
    dm = pipeline.datamanager
    lpips_ok = _lpips_available(pipeline.model)
    per_scene, summary = evaluate_pipeline(pipeline, render_dir, num_workers)
    cfg = dm.config
    results = {
        "experiment_name": config.experiment_name,
        "method_name": config.method_name,
        "checkpoint": str(checkpoint),
        "step": step,
        "data": str(cfg.data),
        "source": dm.source,
        "split": cfg.eval_split,
        "index": None if cfg.eval_index is None else str(cfg.eval_index),
        "protocol": "index" if cfg.eval_index is not None else cfg.eval_protocol,
        "image_size": [cfg.image_height, cfg.image_width],
        "metrics_protocol": "PSNR on [0,1]-clipped images; SSIM win 11 Gaussian (sigma 1.5) data_range 1; LPIPS-VGG normalize=True; mean over targets, then scenes",
        "results": summary,
        "lpips": "computed" if lpips_ok else "omitted: the VGG16 weights could not be loaded (see the warning)",
        "missing_scenes": dm.missing_eval_scenes,
        "skipped_scenes": dm.skipped_eval_scenes,
        "per_scene": per_scene,
    }
    output = Path(output) if output is not None else load_config.parent / "eval_results.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, allow_nan=True))
    shown = ", ".join(f"{k} {summary[k]:.4f}" for k in METRICS if k in summary and math.isfinite(summary[k]))
    print(f"evaluated {len(per_scene)} scenes: {shown}; wrote {output}", flush=True)
    return results


def published_pipeline_config(
    published: Path,
    data: Path | None,
    index: Path | None = None,
    protocol: str | None = None,
    context_views: int | None = None,
    split: str | None = None,
    num_scenes: int | None = None,
    num_workers: int | None = None,
    source: str | None = None,
    image_size: tuple[int, int] | None = None,
):
    """An evaluation pipeline config around a published network, with its protocol's defaults."""
    from ilrm_nerfstudio.nerfstudio.ilrm_datamanager import ILRMDataManagerConfig
    from ilrm_nerfstudio.nerfstudio.ilrm_model import ILRMModelConfig
    from ilrm_nerfstudio.nerfstudio.ilrm_pipeline import ILRMPipelineConfig
    from ilrm_nerfstudio.core.published import protocol_for, published_network_config, read_published, _views_from_name

    kind, state = read_published(published)
    network = published_network_config(kind, state, published)
    del state
    model_protocol = protocol_for(kind, _views_from_name(Path(published)) if kind == "dl3dv" else None, network.patch_size * network.viewpoint_factor)
    height, width = image_size or model_protocol.image_size
    views = context_views or model_protocol.num_views
    datamanager = ILRMDataManagerConfig(
        data=None if data is None else Path(data),
        source=source or "auto",
        image_height=height,
        image_width=width,
        num_context_views=views,
        eval_context_views=views,
        eval_split=split or "test",
        eval_index=None if index is None else Path(index),
        eval_protocol=protocol or ("wide" if model_protocol.view_selection == "kmeans" else "sequence"),
        wide_target_interval=model_protocol.target_interval or 8,
        num_eval_scenes=num_scenes,
        eval_num_workers=num_workers or 0,
        scenes_per_batch=1,
    )
    model = ILRMModelConfig(
        network=network,
        init_from=Path(published),
        sh_degree=network.sh_degree,
        pose_scale="max_abs_coordinate",
        background_color=model_protocol.background_name,
        lpips_weight=0.0,
        viewer_scene="none",
    )
    return ILRMPipelineConfig(datamanager=datamanager, model=model), model_protocol


def evaluate_published(
    published: Path,
    data: Path | None,
    index: Path | None = None,
    output: Path | None = None,
    render_dir: Path | None = None,
    protocol: str | None = None,
    context_views: int | None = None,
    split: str | None = None,
    num_scenes: int | None = None,
    num_workers: int | None = None,
    source: str | None = None,
    image_size: tuple[int, int] | None = None,
    device: str | None = None,
) -> dict:
    """Evaluate a published checkpoint directly (no run); JSON to `output` (default
    `<checkpoint stem>_eval_results.json` next to the checkpoint)."""
    published = Path(published)
    if data is None:
        raise ILRMError("--published needs --data (RE10K torch chunks or DL3DV scenes)")
    config, model_protocol = published_pipeline_config(published, data, index, protocol, context_views, split, num_scenes, num_workers, source, image_size)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        pipeline = config.setup(device=device, test_mode="test")
    except SystemExit as error:  # the pipeline turns bad data into SystemExit("ilrm: ...")
        if isinstance(error.code, str):
            raise ILRMError(error.code.removeprefix("ilrm: ")) from None
        raise
    dm = pipeline.datamanager
    lpips_ok = _lpips_available(pipeline.model)
    per_scene, summary = evaluate_pipeline(pipeline, render_dir, num_workers)
    cfg = dm.config
    results = {
        "published": str(published),
        "model": model_protocol.name,
        "model_protocol": {
            "image_size": list(model_protocol.image_size), "num_views": model_protocol.num_views,
            "near": model_protocol.near, "far": model_protocol.far, "background": model_protocol.background_name,
            "pose_scale": model_protocol.pose_scale,
        },  # fmt: skip
        "data": str(cfg.data),
        "source": dm.source,
        "split": cfg.eval_split,
        "index": None if cfg.eval_index is None else str(cfg.eval_index),
        "protocol": "index" if cfg.eval_index is not None else cfg.eval_protocol,
        "image_size": [cfg.image_height, cfg.image_width],
        "context_views": cfg.eval_context_views,
        "metrics_protocol": "PSNR on [0,1]-clipped images; SSIM win 11 Gaussian (sigma 1.5) data_range 1; LPIPS-VGG normalize=True; mean over targets, then scenes",
        "results": summary,
        "lpips": "computed" if lpips_ok else "omitted: the VGG16 weights could not be loaded (see the warning)",
        "missing_scenes": dm.missing_eval_scenes,
        "skipped_scenes": dm.skipped_eval_scenes,
        "per_scene": per_scene,
    }
    output = Path(output) if output is not None else published.parent / f"{published.stem}_eval_results.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, allow_nan=True))
    shown = ", ".join(f"{k} {summary[k]:.4f}" for k in METRICS if k in summary and math.isfinite(summary[k]))
    print(f"evaluated {len(per_scene)} scenes with the published {model_protocol.name} model: {shown}; wrote {output}", flush=True)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ilrm-eval", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--load-config", type=Path, help="config.yml of a trained run")
    which.add_argument("--published", type=Path, help="a published iLRM checkpoint (re10k_2view.ckpt, ilrm_undistort_dl3dv*.pt; docs/published.md)")
    parser.add_argument("--data", type=Path, help="data to evaluate on (default: the run's --data)")
    parser.add_argument("--index", type=Path, help="evaluation index JSON {scene: {context: [...], target: [...]}}")
    parser.add_argument("--output", type=Path, help="results JSON (default: <run>/eval_results.json)")
    parser.add_argument("--render-dir", type=Path, help="also write each rendered target (and its ground truth) as PNG here")
    parser.add_argument("--protocol", choices=("sequence", "wide"), help="held-out views without an index (default: the run's)")
    parser.add_argument("--context-views", type=int, help="context views per scene (wide protocol: e.g. 16 or 32)")
    parser.add_argument("--split", help="split folder of held-out scenes (default: the run's eval split, 'test')")
    parser.add_argument("--num-scenes", type=int, help="evaluate the first N scenes only")
    parser.add_argument("--num-workers", type=int, help="background loader processes (default: the run's eval_num_workers)")
    parser.add_argument("--source", choices=("auto", "chunks", "nerfstudio-scenes", "opencv-scenes", "single-scene"), help="override source detection")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="--published: input size (default: the model's, 256 256 / 544 960)")
    parser.add_argument("--device", help="--published: cpu or cuda (default: cuda when available)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.load_config is not None and (args.image_size is not None or args.device is not None):
        parser.error("--image-size and --device go with --published (a run evaluates at its own size)")
    try:
        if args.published is not None:
            evaluate_published(
                args.published, args.data, args.index, args.output, args.render_dir, args.protocol,
                args.context_views, args.split, args.num_scenes, args.num_workers, args.source,
                None if args.image_size is None else tuple(args.image_size), args.device,
            )  # fmt: skip
        else:
            evaluate(
                args.load_config, args.data, args.index, args.output, args.render_dir, args.protocol,
                args.context_views, args.split, args.num_scenes, args.num_workers, args.source,
            )  # fmt: skip
    except ILRMError as error:
        print(f"ilrm-eval: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ilrm-eval: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
