"""Method registrations for nerfstudio (entry point group `nerfstudio.method_configs`).

- `ilrm`: the paper's base model, (2, H, F) at 256 x 256, trained across scenes.
- `ilrm-small`: a narrow, shallow network at 64 x 64 that trains on a CPU in minutes
  (the demo and the tests use it).
- `ilrm-finetune`: the per-scene stage: splatfacto on one scene, started from the Gaussians the
  network of an ilrm run predicts (or the scene's points); its first 10 steps are the published
  finetune (the paper's "Ours_10", `--max-num-iterations 10`).
"""

from __future__ import annotations

import torch
from nerfstudio.configs.base_config import LoggingConfig, MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from ilrm_nerfstudio.core.network import ILRMNetworkConfig
from ilrm_nerfstudio.nerfstudio.finetune_pipeline import ILRMFinetunePipelineConfig, ILRMFinetuneTrainerConfig
from ilrm_nerfstudio.nerfstudio.ilrm_datamanager import ILRMDataManagerConfig
from ilrm_nerfstudio.nerfstudio.ilrm_model import ILRMModelConfig
from ilrm_nerfstudio.nerfstudio.ilrm_pipeline import ILRMPipelineConfig
from ilrm_nerfstudio.nerfstudio.optim import AdamWMatricesConfig, FinetuneSchedulerConfig, WarmupCosineSchedulerConfig
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


def finetune_trainer_config() -> TrainerConfig:
    """The per-scene stage (finetune_model.py): splatfacto's optimizers and rates (Adam, eps 1e-15),
    the published finetune's rates for its first steps, -1 iterations = the time budget."""

    def adam(lr: float, published_lr: float, lr_final: float | None = None) -> dict:
        scheduler = FinetuneSchedulerConfig(published_lr=published_lr, lr_final=lr_final)
        return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}

    return ILRMFinetuneTrainerConfig(
        method_name="ilrm-finetune",
        max_num_iterations=-1,
        steps_per_save=2000,
        steps_per_eval_batch=0,
        steps_per_eval_image=0,  # the held-out PSNR is reported by the pipeline (no held-out frames: none)
        steps_per_eval_all_images=0,
        save_only_latest_checkpoint=True,
        mixed_precision=False,
        pipeline=ILRMFinetunePipelineConfig(),
        optimizers={
            "means": adam(1.6e-4, 6e-4, lr_final=1.6e-6),
            "features_dc": adam(0.0025, 1e-3),
            "features_rest": adam(0.0025 / 20, 1e-3),
            "opacities": adam(0.05, 1e-3),
            "scales": adam(0.005, 1e-3),
            "quats": adam(0.001, 1e-3),
            "camera_opt": adam(1e-4, 0.0, lr_final=5e-7),
            "bilateral_grid": adam(2e-3, 0.0, lr_final=1e-4),
        },
        vis="tensorboard",
        viewer=ViewerConfig(quit_on_train_completion=True),
        logging=LoggingConfig(steps_per_log=10),
        machine=default_machine(),
    )


ilrm_finetune_method = MethodSpecification(
    config=finetune_trainer_config(),
    description=(
        "iLRM per-scene stage: splatfacto started from an ilrm run's Gaussians (or the scene's points); the first "
        "10 steps are the published finetune (Ours_10); -1 iterations = as many as fit refine-minutes."
    ),
)
