"""Method registrations for nerfstudio (entry point group `nerfstudio.method_configs`).

- `ilrm`: the paper's base model, (2, H, F) at 256 x 256, trained across scenes.
- `ilrm-small`: a narrow, shallow network at 64 x 64 that trains on a CPU in minutes
  (the demo and the tests use it).
- `ilrm-finetune`: the per-scene stage: one scene, Gaussians predicted by the network of an ilrm
  run (or placed at the scene's points), the published finetune epochs (the paper's "Ours_10",
  `--max-num-iterations 10`), then 3DGS-style refinement (the default budget).
"""

from __future__ import annotations

import torch
from nerfstudio.configs.base_config import LoggingConfig, MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from ilrm_nerfstudio.core.network import ILRMNetworkConfig
from ilrm_nerfstudio.nerfstudio.finetune_model import MEANS_LR, OTHER_LR
from ilrm_nerfstudio.nerfstudio.finetune_pipeline import ILRMFinetunePipelineConfig
from ilrm_nerfstudio.nerfstudio.ilrm_datamanager import ILRMDataManagerConfig
from ilrm_nerfstudio.nerfstudio.ilrm_model import ILRMModelConfig
from ilrm_nerfstudio.nerfstudio.ilrm_pipeline import ILRMPipelineConfig
from ilrm_nerfstudio.nerfstudio.optim import AdamWMatricesConfig, WarmupCosineSchedulerConfig
from ilrm_nerfstudio.nerfstudio.scene_model import GAUSSIAN_FIELDS
from ilrm_nerfstudio.nerfstudio.trainer import ILRMTrainerConfig


def default_machine() -> MachineConfig:
    """CUDA where there is a GPU, else the CPU (nerfstudio's default, cuda, fails without a GPU)."""
    return MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu")


def ilrm_trainer_config(
    method_name: str,
    datamanager: ILRMDataManagerConfig,
    model: ILRMModelConfig,
    max_steps: int,
    lr: float,
    warmup_steps: int,
    steps_per_eval: int,
) -> TrainerConfig:
    return ILRMTrainerConfig(
        method_name=method_name,
        max_num_iterations=max_steps,
        steps_per_save=steps_per_eval,
        steps_per_eval_batch=steps_per_eval,
        steps_per_eval_image=steps_per_eval,
        steps_per_eval_all_images=10 * steps_per_eval,
        save_only_latest_checkpoint=True,
        mixed_precision=False,  # the model autocasts its network to bf16 on CUDA itself
        pipeline=ILRMPipelineConfig(datamanager=datamanager, model=model),
        optimizers={
            "network": {
                "optimizer": AdamWMatricesConfig(lr=lr),
                "scheduler": WarmupCosineSchedulerConfig(warmup_steps=warmup_steps, max_steps=max_steps),
            }
        },
        vis="tensorboard",
        viewer=ViewerConfig(quit_on_train_completion=True),
        logging=LoggingConfig(steps_per_log=10),
        machine=default_machine(),
    )


ilrm_method = MethodSpecification(
    config=ilrm_trainer_config(
        "ilrm",
        ILRMDataManagerConfig(
            image_height=256, image_width=256, num_context_views=2, num_target_views=4, scenes_per_batch=8
        ),
        ILRMModelConfig(network=ILRMNetworkConfig(viewpoint_factor=2, gradient_checkpointing=True)),
        max_steps=100_000,
        lr=4e-4,
        warmup_steps=1000,
        steps_per_eval=1000,
    ),
    description="iLRM feed-forward 3D Gaussian reconstruction (base model, trained across scenes).",
)

ilrm_small_method = MethodSpecification(
    config=ilrm_trainer_config(
        "ilrm-small",
        ILRMDataManagerConfig(
            image_height=64,
            image_width=64,
            num_context_views=2,
            num_target_views=4,
            eval_target_views=2,
            scenes_per_batch=4,
            min_frame_gap=4,
            max_frame_gap=12,
        ),
        ILRMModelConfig(
            network=ILRMNetworkConfig(
                patch_size=4, width=128, num_heads=4, num_layers=4, viewpoint_factor=2, color_skip=True
            ),
            lpips_weight=0.0,
        ),
        max_steps=2000,
        lr=1e-3,
        warmup_steps=100,
        steps_per_eval=500,
    ),
    description="iLRM small: 64x64, width 128, 4 layers; trains on a CPU in minutes.",
)


def finetune_trainer_config(epochs: int = -1) -> TrainerConfig:
    """The per-scene stage (see finetune.py). One iteration is one epoch; -1: the default budget
    (the published epochs after a network start, then refinement epochs worth `refine_views`
    frames). The learning rates below are the published finetune's; the model sets each step's."""

    def adam(lr: float) -> dict:
        return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": None}

    return ILRMTrainerConfig(
        method_name="ilrm-finetune",
        max_num_iterations=epochs,
        steps_per_save=1000,
        steps_per_eval_batch=0,
        steps_per_eval_image=0,
        steps_per_eval_all_images=0,
        save_only_latest_checkpoint=True,
        mixed_precision=False,
        pipeline=ILRMFinetunePipelineConfig(),
        optimizers={name: adam(MEANS_LR if name == "means" else OTHER_LR) for name in GAUSSIAN_FIELDS},
        vis="tensorboard",
        viewer=ViewerConfig(quit_on_train_completion=True),
        logging=LoggingConfig(steps_per_log=1),
        machine=default_machine(),
    )


ilrm_finetune_method = MethodSpecification(
    config=finetune_trainer_config(),
    description=(
        "iLRM per-scene stage: Gaussians from an ilrm run's network (or the scene's points), the published 10 "
        "finetune epochs (Ours_10), then 3DGS-style refinement; one iteration = one epoch, -1 = the default budget."
    ),
)
