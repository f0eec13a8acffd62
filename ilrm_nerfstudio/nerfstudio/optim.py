"""Optimizer and schedule as the paper trains: AdamW with weight decay on matrices only, linear
warm-up then cosine decay. Learning rates stay Python floats (numpy floats in optimizer state
break checkpoint loading under torch >= 2.6)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from nerfstudio.engine.optimizers import OptimizerConfig
from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig
from torch.optim import lr_scheduler


@dataclass
class AdamWMatricesConfig(OptimizerConfig):
    _target: type = torch.optim.AdamW
    lr: float = 4e-4
    eps: float = 1e-8
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    """Applied to weight matrices (>= 2-D) only; norms and other vectors get none."""
    max_norm: float | None = 1.0

    def setup(self, params) -> torch.optim.Optimizer:
        params = list(params)
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.lr, betas=tuple(self.betas), eps=self.eps)


@dataclass
class WarmupCosineSchedulerConfig(SchedulerConfig):
    _target: type = field(default_factory=lambda: WarmupCosineScheduler)
    warmup_steps: int = 1000
    max_steps: int = 100_000
    final_factor: float = 0.0
    """Learning rate at max_steps, as a fraction of the peak."""


class WarmupCosineScheduler(Scheduler):
    config: WarmupCosineSchedulerConfig

    def get_scheduler(self, optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        warmup, total, final = self.config.warmup_steps, self.config.max_steps, self.config.final_factor

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


@dataclass
class FinetuneSchedulerConfig(SchedulerConfig):
    """The per-scene stage's rates: the published finetune's constant `published_lr` for the first
    `published_steps` (network start; 0 otherwise), then the optimizer's own lr, decaying
    exponentially to `lr_final` at `max_steps` (None: constant), as splatfacto's means."""

    _target: type = field(default_factory=lambda: FinetuneScheduler)
    published_steps: int = 0
    published_lr: float = 1e-3
    lr_final: float | None = None
    max_steps: int = 30_000


class FinetuneScheduler(Scheduler):
    config: FinetuneSchedulerConfig

    def get_scheduler(self, optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        c = self.config

        def factor(step: int) -> float:
            if step < c.published_steps:
                return c.published_lr / lr_init
            if c.lr_final is None:
                return 1.0
            t = min(1.0, (step - c.published_steps) / max(1, c.max_steps - c.published_steps))
            return math.exp(t * math.log(c.lr_final / lr_init))

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
