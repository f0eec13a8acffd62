"""The trained network of the per-scene stage's start (`--pipeline.model.ilrm-run`): an `ns-train
ilrm` / `ilrm-small` run (its config.yml and newest readable checkpoint) or a published iLRM
checkpoint; what it predicts for a scene is in core/prediction.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import yaml
from torch import Tensor

from ilrm_nerfstudio.core.errors import ILRMError, brief
from ilrm_nerfstudio.core.network import ILRM
from ilrm_nerfstudio.core.prediction import TrainedNetwork
from ilrm_nerfstudio.nerfstudio.console import log_line


def find_run_files(path: Path) -> tuple[Path, list[Path]]:
    """An ilrm run given as its folder, its config.yml or one of its checkpoints -> (config.yml,
    checkpoints to try in order): the named one, or every step-*.ckpt, newest first."""
    path = Path(path)
    if not path.exists():
        raise ILRMError(f"{path}: ilrm run not found (give its folder, config.yml or a .ckpt)")
    if path.is_dir():
        config, checkpoint = path / "config.yml", None
    elif path.suffix == ".ckpt":
        config, checkpoint = path.parent.parent / "config.yml", path
    else:
        config, checkpoint = path, None
    if not config.is_file():
        raise ILRMError(f"{config}: not found; --pipeline.model.ilrm-run needs an ns-train ilrm / ilrm-small run")
    if checkpoint is not None:
        return config, [checkpoint]
    folder = config.parent / "nerfstudio_models"
    checkpoints = sorted((p for p in folder.glob("step-*.ckpt") if p.is_file()), reverse=True)
    if not checkpoints:
        raise ILRMError(f"{folder}: no checkpoint (step-*.ckpt) in this run; train it first, or name another run")
    return config, checkpoints


def load_network(path: Path, device: torch.device | str = "cpu") -> TrainedNetwork:
    """`--pipeline.model.ilrm-run`: an ilrm / ilrm-small run, or a published iLRM checkpoint
    (`re10k_2view.ckpt`, `ilrm_undistort_dl3dv*.pt`) with that model's protocol."""
    path = Path(path)
    if not path.exists():
        raise ILRMError(
            f"{path}: ilrm run not found (give its folder, config.yml or a .ckpt, or a published iLRM checkpoint)"
        )
    if path.is_dir() or path.suffix in (".yml", ".yaml") or (path.parent.parent / "config.yml").is_file():
        return load_trained_network(path, device)  # an ns-train run: folder, config.yml or one of its checkpoints
    from ilrm_nerfstudio.core.published import load_published_network

    try:
        network = load_published_network(path, device)
    except ILRMError:
        raise
    except Exception as error:  # a torn or foreign file that got past the format checks: name it
        raise ILRMError(f"{path}: cannot load this as a published iLRM checkpoint ({brief(error)})") from None
    protocol = network.published_protocol
    return TrainedNetwork(
        network, tuple(protocol.image_size), protocol.sh_degree, path, True, protocol.num_views, published=True
    )


def _read_run_config(config_path: Path):
    """The run's config.yml (nerfstudio writes it with yaml.dump of its dataclasses)."""
    try:
        config = yaml.load(config_path.read_text(encoding="utf-8"), Loader=yaml.Loader)
    except yaml.constructor.ConstructorError as error:  # classes this installation lacks
        raise ILRMError(
            f"{config_path}: not a readable ns-train config.yml ({error.problem}); a run of an earlier version "
            "(0.1) or of a method that is not installed here"
        ) from None
    except Exception as error:  # not UTF-8, not YAML
        raise ILRMError(f"{config_path}: not a readable ns-train config.yml ({brief(error)})") from None
    model_config = getattr(getattr(config, "pipeline", None), "model", None)
    if model_config is None or not dataclasses.is_dataclass(getattr(model_config, "network", None)):
        raise ILRMError(
            f"{config_path}: not an ilrm run (method {getattr(config, 'method_name', '?')!r} has no network); "
            "--pipeline.model.ilrm-run needs an ns-train ilrm / ilrm-small run"
        )
    return config, model_config


def _read_weights(checkpoint: Path) -> dict[str, Tensor]:
    """The network's weights in an ns-train checkpoint (ILRMError naming the file otherwise)."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["pipeline"]
        weights = {key.split("network.", 1)[1]: value for key, value in state.items() if "_model.network." in key}
    except Exception as error:  # torn or foreign file: name it
        raise ILRMError(
            f"{checkpoint}: cannot read this checkpoint, truncated or not an ns-train checkpoint? ({brief(error)})"
        ) from None
    if not weights:
        raise ILRMError(f"{checkpoint}: holds no network weights (not a checkpoint of an ilrm run)")
    return weights


def load_trained_network(path: Path, device: torch.device | str = "cpu") -> TrainedNetwork:
    """The network of an `ilrm` run with its trained weights (frozen, eval mode). Without a named
    checkpoint, the newest readable one (a torn newest one is skipped with a warning)."""
    config_path, checkpoints = find_run_files(path)
    config, model_config = _read_run_config(config_path)
    data = config.pipeline.datamanager
    try:
        network = ILRM(
            dataclasses.replace(
                model_config.network, sh_degree=model_config.sh_degree, compile=False, gradient_checkpointing=False
            )
        )
        resolution = (int(data.image_height), int(data.image_width))
    except Exception as error:
        if isinstance(error, ILRMError):
            raise
        raise ILRMError(f"{config_path}: its network options do not make an iLRM network ({brief(error)})") from None
    for index, checkpoint in enumerate(checkpoints):
        try:
            weights = _read_weights(checkpoint)
            break
        except ILRMError as error:
            if index + 1 == len(checkpoints):
                raise
            message = f"{error}; trying the previous checkpoint {checkpoints[index + 1].name}"
            log_line(message, style="yellow", prefix="[ilrm-finetune] warning: ")
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:  # missing / unexpected keys or other shapes: another network
        raise ILRMError(
            f"{checkpoint}: its weights do not fit the network that {config_path} describes ({brief(error)})"
        ) from None
    network.requires_grad_(False).eval()
    bf16, views = bool(getattr(model_config, "bf16", True)), int(getattr(data, "num_context_views", 2))
    return TrainedNetwork(network.to(device), resolution, int(model_config.sh_degree), checkpoint, bf16, views)
