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

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from ilrm_nerfstudio.core.errors import ILRMError, exit_on_error

METRICS = ("psnr", "ssim", "lpips")


def _lpips_available(model) -> bool:
    """Load LPIPS-VGG for the model's metrics; when its weights are unavailable (offline) LPIPS is
    left out of the metrics (load_perceptual logs why) instead of failing the evaluation."""
    from ilrm_nerfstudio.metrics import load_perceptual

    return load_perceptual(required=False, device=model.device) is not None


def evaluate_pipeline(
    pipeline, render_dir: Path | None = None, num_workers: int | None = None, progress: bool = True
) -> tuple[list[dict], dict]:
    """Per-scene rows and their mean (and standard deviation) over every held-out scene."""
    from ilrm_nerfstudio.nerfstudio.ilrm_pipeline import summarize

    per_scene = [row for _, row in pipeline.evaluate_scenes(render_dir, num_workers=num_workers, progress=progress)]
    return per_scene, summarize(per_scene, with_std=True)


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
        "metrics_protocol": (
            "PSNR on [0,1]-clipped images; SSIM win 11 Gaussian (sigma 1.5) data_range 1; LPIPS-VGG "
            "normalize=True; mean over targets, then scenes"
        ),
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
    from ilrm_nerfstudio.core.published import _views_from_name, protocol_for, published_network_config, read_published
    from ilrm_nerfstudio.nerfstudio.ilrm_datamanager import ILRMDataManagerConfig
    from ilrm_nerfstudio.nerfstudio.ilrm_model import ILRMModelConfig
    from ilrm_nerfstudio.nerfstudio.ilrm_pipeline import ILRMPipelineConfig

    kind, state = read_published(published)
    network = published_network_config(kind, state, published)
    del state
    model_protocol = protocol_for(
        kind,
        _views_from_name(Path(published)) if kind == "dl3dv" else None,
        network.patch_size * network.viewpoint_factor,
    )
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
    config, model_protocol = published_pipeline_config(
        published, data, index, protocol, context_views, split, num_scenes, num_workers, source, image_size
    )
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
            "image_size": list(model_protocol.image_size),
            "num_views": model_protocol.num_views,
            "near": model_protocol.near,
            "far": model_protocol.far,
            "background": model_protocol.background_name,
            "pose_scale": model_protocol.pose_scale,
        },
        "data": str(cfg.data),
        "source": dm.source,
        "split": cfg.eval_split,
        "index": None if cfg.eval_index is None else str(cfg.eval_index),
        "protocol": "index" if cfg.eval_index is not None else cfg.eval_protocol,
        "image_size": [cfg.image_height, cfg.image_width],
        "context_views": cfg.eval_context_views,
        "metrics_protocol": (
            "PSNR on [0,1]-clipped images; SSIM win 11 Gaussian (sigma 1.5) data_range 1; LPIPS-VGG "
            "normalize=True; mean over targets, then scenes"
        ),
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
    print(
        f"evaluated {len(per_scene)} scenes with the published {model_protocol.name} model: {shown}; wrote {output}",
        flush=True,
    )
    return results


@dataclass
class EvalConfig:
    """Evaluate a trained run (--load-config) or a published checkpoint (--published) on held-out
    scenes; per-scene and mean PSNR / SSIM / LPIPS as JSON."""

    load_config: Path | None = None
    """config.yml of a trained run (give this or --published)."""
    published: Path | None = None
    """A published iLRM checkpoint (re10k_2view.ckpt, ilrm_undistort_dl3dv*.pt; docs/published.md)."""
    data: Path | None = None
    """Data to evaluate on (default: the run's --data)."""
    index: Path | None = None
    """Evaluation index JSON {scene: {context: [...], target: [...]}}."""
    output: Path | None = None
    """Results JSON (default: <run>/eval_results.json)."""
    render_dir: Path | None = None
    """Also write each rendered target (and its ground truth) as PNG here."""
    protocol: Literal["sequence", "wide"] | None = None
    """Held-out views without an index (default: the run's)."""
    context_views: int | None = None
    """Context views per scene (wide protocol: e.g. 16 or 32)."""
    split: str | None = None
    """Split folder of held-out scenes (default: the run's eval split, 'test')."""
    num_scenes: int | None = None
    """Evaluate the first N scenes only."""
    num_workers: int | None = None
    """Background loader processes (default: the run's eval_num_workers)."""
    source: Literal["auto", "chunks", "nerfstudio-scenes", "opencv-scenes", "single-scene"] | None = None
    """Override source detection."""
    image_size: Annotated[tuple[int, int] | None, tyro.conf.arg(metavar="H W")] = None
    """--published: input size (default: the model's, 256 256 / 544 960)."""
    device: str | None = None
    """--published: cpu or cuda (default: cuda when available)."""


@exit_on_error
def run(config: EvalConfig) -> None:
    """Evaluate what `config` names; bad input raises ILRMError."""
    if (config.load_config is None) == (config.published is None):
        raise ILRMError("give one of --load-config RUN/config.yml or --published CHECKPOINT")
    if config.load_config is not None and (config.image_size is not None or config.device is not None):
        raise ILRMError("--image-size and --device go with --published (a run evaluates at its own size)")
    if config.published is not None:
        evaluate_published(
            config.published,
            config.data,
            config.index,
            config.output,
            config.render_dir,
            config.protocol,
            config.context_views,
            config.split,
            config.num_scenes,
            config.num_workers,
            config.source,
            config.image_size,
            config.device,
        )
    else:
        evaluate(
            config.load_config,
            config.data,
            config.index,
            config.output,
            config.render_dir,
            config.protocol,
            config.context_views,
            config.split,
            config.num_scenes,
            config.num_workers,
            config.source,
        )


def main(argv: list[str] | None = None) -> int:
    """`ilrm-eval`; returns the exit code (0, 2 for bad input, 130 when interrupted)."""
    config = tyro.cli(EvalConfig, prog="ilrm-eval", args=argv)
    try:
        run(config)
    except SystemExit as error:
        if not isinstance(error.__context__, ILRMError):
            raise
        return error.code  # exit_on_error printed the ILRMError as one line (code 2)
    except KeyboardInterrupt:
        print("ilrm-eval: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
