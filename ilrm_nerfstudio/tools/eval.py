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

import contextlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro
import yaml

from ilrm_nerfstudio.core.errors import ILRMError, exit_on_error, one_line

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
    from ilrm_nerfstudio.metrics.scenes import summarize

    per_scene = [row for _, row in pipeline.evaluate_scenes(render_dir, num_workers=num_workers, progress=progress)]
    return per_scene, summarize(per_scene, with_std=True)


@contextlib.contextmanager
def nerfstudio_exits_as_errors():
    """nerfstudio's own checks print a reason and sys.exit(message): keep the message, as one line."""
    try:
        yield
    except SystemExit as error:
        if isinstance(error.code, str):
            raise ILRMError(error.code.removeprefix("ilrm: ")) from None
        raise


def evaluate_and_write(pipeline, header: dict, output: Path, render_dir, num_workers, what: str) -> dict:
    """Evaluate every held-out scene of `pipeline` and write `header` + the data, the protocol,
    the summary and the per-scene rows as JSON to `output`."""
    dm = pipeline.datamanager
    lpips_ok = _lpips_available(pipeline.model)
    per_scene, summary = evaluate_pipeline(pipeline, render_dir, num_workers)
    cfg = dm.config
    results = {
        **header,
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
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, allow_nan=True))
    shown = ", ".join(f"{k} {summary[k]:.4f}" for k in METRICS if k in summary and math.isfinite(summary[k]))
    print(f"evaluated {len(per_scene)} scenes{what}: {shown}; wrote {output}", flush=True)
    return results


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

    load_config = run_config_path(Path(load_config))

    def update(config):  # our loader: the run folder is where config.yml is now; then our options
        if hasattr(config, "use_run_folder"):
            config.use_run_folder(load_config.parent)
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

    with nerfstudio_exits_as_errors():
        try:
            config, pipeline, checkpoint, step = eval_setup(
                load_config, test_mode="test", update_config_callback=update
            )
        except yaml.YAMLError as error:
            raise ILRMError(f"{load_config}: not a readable run config ({one_line(error)})") from None
    header = {
        "experiment_name": config.experiment_name,
        "method_name": config.method_name,
        "checkpoint": str(checkpoint),
        "step": step,
    }
    output = Path(output) if output is not None else load_config.parent / "eval_results.json"
    return evaluate_and_write(pipeline, header, output, render_dir, num_workers, "")


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
        network.size_multiple,
    )
    height, width = image_size if image_size is not None else model_protocol.image_size
    if image_size is not None:
        network.check_image_size(height, width, what="--image-size")
    views = context_views if context_views is not None else model_protocol.num_views
    datamanager = ILRMDataManagerConfig(
        data=None if data is None else Path(data),
        source="auto" if source is None else source,
        image_height=height,
        image_width=width,
        num_context_views=views,
        eval_context_views=views,
        eval_split=split or "test",
        eval_index=None if index is None else Path(index),
        eval_protocol=protocol or ("wide" if model_protocol.view_selection == "kmeans" else "sequence"),
        wide_target_interval=model_protocol.target_interval or 8,
        num_eval_scenes=num_scenes,
        eval_num_workers=0 if num_workers is None else num_workers,
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
    if not published.is_file():
        problem = "is a folder, not a checkpoint file" if published.is_dir() else "checkpoint file not found"
        raise ILRMError(f"--published {published}: {problem} (see docs/published.md)")
    config, model_protocol = published_pipeline_config(
        published, data, index, protocol, context_views, split, num_scenes, num_workers, source, image_size
    )
    device = check_device(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    with nerfstudio_exits_as_errors():
        pipeline = config.setup(device=device, test_mode="test")
    header = {
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
        "context_views": pipeline.datamanager.config.eval_context_views,
    }
    output = Path(output) if output is not None else published.parent / f"{published.stem}_eval_results.json"
    return evaluate_and_write(
        pipeline, header, output, render_dir, num_workers, f" with the published {model_protocol.name} model"
    )


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


def run_config_path(path: Path) -> Path:
    """--load-config: a run's config.yml (or the run folder holding it), readable as text."""
    if path.is_dir() and (path / "config.yml").is_file():
        path = path / "config.yml"
    if not path.is_file():
        problem = "is a folder without a config.yml" if path.is_dir() else "run config not found"
        raise ILRMError(f"{path}: {problem} (pass the config.yml that ns-train wrote in the run folder)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ILRMError(f"{path}: cannot read this run config (not UTF-8 text: a binary file?)") from None
    except OSError as error:
        raise ILRMError(f"{path}: cannot read this run config ({error.strerror or error})") from None
    if not text.lstrip().startswith("!!python/object:"):
        raise ILRMError(f"{path}: not a run config written by ns-train (empty, or another YAML file)")
    return path


def check_device(device: str) -> str:
    """--device: cpu, cuda[:N] or mps, and present on this machine."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ILRMError(f"--device {device}: not a device (cpu, cuda, cuda:N or mps)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ILRMError(f"--device {device}: no CUDA GPU; use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ILRMError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ILRMError(f"--device {device}: no Apple MPS device; use --device cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ILRMError(f"--device {device}: not a device (cpu, cuda, cuda:N or mps)")
    return device


def _writable_place(path: Path) -> bool:
    """The nearest existing folder at or above `path` is a folder (so `path` can be created)."""
    for parent in (path, *path.parents):
        if parent.exists():
            return parent.is_dir()
    return True


def check_arguments(config: EvalConfig) -> None:
    """Impossible values are errors (one line, exit code 2), never replaced by another value."""
    if (config.load_config is None) == (config.published is None):
        raise ILRMError("give one of --load-config RUN/config.yml or --published CHECKPOINT")
    if config.load_config is not None and (config.image_size is not None or config.device is not None):
        raise ILRMError("--image-size and --device go with --published (a run evaluates at its own size)")
    for name, value, low, meaning in (
        ("context-views", config.context_views, 1, "at least 1"),
        ("num-scenes", config.num_scenes, 1, "at least 1 (leave it out for every scene)"),
        ("num-workers", config.num_workers, 0, "0 (load in this process) or more"),
    ):
        if value is not None and value < low:
            raise ILRMError(f"--{name} {value}: must be {meaning}")
    if config.image_size is not None and min(config.image_size) < 1:
        raise ILRMError(
            f"--image-size {config.image_size[0]} {config.image_size[1]}: height and width must be positive"
        )
    if config.index is not None and (config.context_views is not None or config.protocol is not None):
        raise ILRMError(
            "--index names the context and target views of every scene: leave out --context-views and --protocol"
        )
    if config.data is not None and not config.data.exists():
        raise ILRMError(f"--data {config.data}: data folder not found")
    if config.index is not None and not config.index.is_file():
        problem = "is a folder, not an index JSON file" if config.index.is_dir() else "index file not found"
        raise ILRMError(f"--index {config.index}: {problem}")
    if config.render_dir is not None and (
        (config.render_dir.exists() and not config.render_dir.is_dir()) or not _writable_place(config.render_dir)
    ):
        raise ILRMError(f"--render-dir {config.render_dir}: a file is in the way; give a folder (created if missing)")
    if config.output is not None and (config.output.is_dir() or not _writable_place(config.output.parent)):
        raise ILRMError(f"--output {config.output}: cannot write a file there; give a .json file path")
    if config.split is not None and not config.split.strip():
        raise ILRMError("--split is empty: give the held-out split folder's name (e.g. test)")


def run(config: EvalConfig) -> None:
    """Evaluate what `config` names; bad input raises ILRMError."""
    check_arguments(config)
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


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    """`ilrm-eval`; returns the exit code (0, 2 for bad input, 130 when interrupted)."""
    run(tyro.cli(EvalConfig, prog="ilrm-eval", args=argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
