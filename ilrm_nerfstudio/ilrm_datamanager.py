"""Data manager: batches of scenes, each with context views (the network's input) and target
views (what the loss compares renders with), cameras normalized per sample."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Type

import torch
from nerfstudio.data.datamanagers.base_datamanager import DataManager, DataManagerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from .cameras import normalize_poses
from .scenes import Scene, SceneError, find_scene_dirs, load_nerfstudio_scene, load_view


def sample_views(
    num_frames: int, num_context: int, num_target: int, min_gap: int, max_gap: int, generator: torch.Generator | None
) -> tuple[list[int], list[int]]:
    """Pick context and target frame indices from a window of consecutive frames.

    The first and last frame of the window are contexts (plus evenly spaced extra contexts), the
    targets lie inside the window and are never contexts. With `generator=None` the choice is
    deterministic (evaluation): the widest allowed window, centered in the sequence.
    """
    needed = num_context + num_target
    if num_frames < needed:
        raise SceneError(f"{num_frames} frames, but {num_context} context + {num_target} target views are needed")
    low = max(min(min_gap, num_frames - 1), needed - 1)
    high = max(min(max_gap, num_frames - 1), low)
    if generator is None:
        gap, start = high, (num_frames - 1 - high) // 2
    else:
        gap = int(torch.randint(low, high + 1, (1,), generator=generator))
        start = int(torch.randint(0, num_frames - gap, (1,), generator=generator))
    window = list(range(start, start + gap + 1))
    context = sorted({window[round(i * gap / max(num_context - 1, 1))] for i in range(num_context)})
    candidates = [i for i in window if i not in context]
    if len(context) < num_context or len(candidates) < num_target:  # tiny windows: fall back to spread frames
        raise SceneError(f"cannot fit {num_context} contexts and {num_target} targets in a window of {gap + 1} frames")
    if generator is None:
        targets = [candidates[round(i * (len(candidates) - 1) / max(num_target - 1, 1))] for i in range(num_target)]
        targets = sorted(set(targets)) if len(set(targets)) == num_target else candidates[:num_target]
    else:
        targets = sorted(candidates[i] for i in torch.randperm(len(candidates), generator=generator)[:num_target])
    return context, targets


class ContextTargetDataset(Dataset):
    """Item i: scene i with sampled context/target views, images at the configured size and
    cameras normalized to the average context camera."""

    def __init__(self, scenes: list[Scene], config: "ILRMDataManagerConfig", deterministic: bool):
        self.scenes, self.config, self.deterministic = scenes, config, deterministic
        self.load_view = functools.lru_cache(maxsize=config.cache_frames)(self._load_view)

    def __len__(self) -> int:
        return len(self.scenes)

    def _load_view(self, scene_index: int, frame: int) -> tuple[Tensor, Tensor]:
        return load_view(self.scenes[scene_index], frame, self.config.image_height, self.config.image_width)

    def sample(self, index: int, generator: torch.Generator | None) -> dict:
        cfg, scene = self.config, self.scenes[index]
        context, targets = sample_views(
            len(scene), cfg.num_context_views, cfg.num_target_views, cfg.min_frame_gap, cfg.max_frame_gap, generator
        )
        views = [self.load_view(index, i) for i in context + targets]
        images = torch.stack([image for image, _ in views])
        K = torch.stack([k for _, k in views])
        context_c2w, target_c2w, _ = normalize_poses(scene.c2w[context].double(), scene.c2w[targets].double())
        V = len(context)
        return {
            "scene": scene.name,
            "context_indices": torch.tensor(context),
            "target_indices": torch.tensor(targets),
            "context_images": images[:V],  # [V, 3, H, W]
            "context_c2w": context_c2w.float(),  # [V, 4, 4]
            "context_K": K[:V],  # [V, 3, 3]
            "target_images": images[V:],  # [T, 3, H, W]
            "target_c2w": target_c2w.float(),
            "target_K": K[V:],
        }

    def __getitem__(self, index: int) -> dict:
        if self.deterministic:
            return self.sample(index, None)
        # Training: a bad scene is skipped (one line naming it) and another one drawn instead.
        for _ in range(10):
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
            try:
                return self.sample(index, generator)
            except SceneError as error:
                CONSOLE.print(f"[yellow]skipping a sample of scene {self.scenes[index].name}: {error}")
                index = int(torch.randint(0, len(self.scenes), (1,)))
        raise SceneError("10 samples in a row failed to load; see the messages above")


@dataclass
class ILRMDataManagerConfig(DataManagerConfig):
    _target: Type = field(default_factory=lambda: ILRMDataManager)
    image_height: int = 256
    image_width: int = 256
    num_context_views: int = 2
    num_target_views: int = 4
    scenes_per_batch: int = 4
    min_frame_gap: int = 4
    """Smallest number of frames between the first and last context view."""
    max_frame_gap: int = 16
    train_split: str = "train"
    eval_split: str = "test"
    num_eval_scenes: int | None = None
    """Evaluate on the first N held-out scenes only (None: all)."""
    num_workers: int = 0
    """Background loader processes (0: load in the training process)."""
    cache_frames: int = 4096
    """Decoded frames kept in memory per loader process."""


class ILRMDataManager(DataManager):
    config: ILRMDataManagerConfig

    def __init__(
        self,
        config: ILRMDataManagerConfig,
        device: torch.device | str = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ):
        self.config, self.device, self.test_mode = config, device, test_mode
        self.world_size, self.local_rank = world_size, local_rank
        if config.num_context_views < 1 or config.num_target_views < 1:
            raise SceneError("num_context_views and num_target_views must be at least 1")
        train_scenes, eval_scenes = [], []
        if test_mode != "inference":
            train_scenes = self.load_scenes(config.train_split)[local_rank::world_size]
            eval_scenes = self.load_scenes(config.eval_split)[: config.num_eval_scenes]
        self.train_dataset = ContextTargetDataset(train_scenes, config, deterministic=False)
        self.eval_dataset = ContextTargetDataset(eval_scenes, config, deterministic=True)
        super().__init__()

    def load_scenes(self, split: str) -> list[Scene]:
        if self.config.data is None:
            raise SceneError("no data given: pass --data <folder of scenes>")
        needed = self.config.num_context_views + self.config.num_target_views
        scenes = []
        for scene_dir in find_scene_dirs(self.config.data, split):
            scene = load_nerfstudio_scene(scene_dir)
            if len(scene) < needed:
                CONSOLE.print(f"[yellow]skipping scene {scene_dir}: {len(scene)} frames, {needed} needed")
                continue
            scenes.append(scene)
        if not scenes:
            raise SceneError(f"{self.config.data}: no scene in split '{split}' has the {needed} frames a sample needs")
        return scenes

    def setup_train(self):
        sampler = RandomSampler(self.train_dataset, replacement=True, num_samples=2**62)
        self.train_loader = DataLoader(
            self.train_dataset,
            batch_size=self.config.scenes_per_batch,
            sampler=sampler,
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
        )
        self.train_iterator = iter(self.train_loader)

    def setup_eval(self):
        pass

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def next_train(self, step: int) -> dict:
        self.train_count += 1
        return self.to_device(next(self.train_iterator))

    def eval_batch(self, indices: list[int]) -> dict:
        samples = [self.eval_dataset[i] for i in indices]
        return self.to_device(torch.utils.data.default_collate(samples))

    def next_eval(self, step: int) -> dict:
        """A batch of held-out scenes (deterministic views), cycling through the split."""
        n = len(self.eval_dataset)
        start = (self.eval_count * self.config.scenes_per_batch) % n
        self.eval_count += 1
        return self.eval_batch([(start + i) % n for i in range(min(self.config.scenes_per_batch, n))])

    def next_eval_image(self, step: int) -> dict:
        """One held-out scene."""
        index = self.eval_count % len(self.eval_dataset)
        self.eval_count += 1
        return self.eval_batch([index])

    def eval_scene_batches(self):
        """Every held-out scene once, in batches."""
        n, size = len(self.eval_dataset), self.config.scenes_per_batch
        for start in range(0, n, size):
            yield self.eval_batch(list(range(start, min(start + size, n))))

    def get_train_rays_per_batch(self) -> int:
        cfg = self.config
        return cfg.scenes_per_batch * cfg.num_target_views * cfg.image_height * cfg.image_width

    def get_eval_rays_per_batch(self) -> int:
        return self.get_train_rays_per_batch()

    def get_datapath(self) -> Path:
        return self.config.data

    def get_param_groups(self):
        return {}
