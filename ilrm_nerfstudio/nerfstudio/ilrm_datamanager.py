"""Data manager: batches of scenes, each with context views (the network's input) and target
views (the loss's), cameras normalized per sample (data/episodes.py). `--data`: torch chunks
(RE10K, ACID), a folder of nerfstudio or opencv_cameras.json scenes, or a single capture
(data/sources.py); view sampling in data/samplers.py; frames loaded in background processes."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from nerfstudio.data.datamanagers.base_datamanager import DataManager, DataManagerConfig
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.utils import writer
from torch import Tensor
from torch.utils.data import DataLoader, default_collate

from ilrm_nerfstudio.core.errors import ILRMError, one_line
from ilrm_nerfstudio.data.episodes import ContextTargetDataset, Episode, find_episode, single_scene_episodes
from ilrm_nerfstudio.data.samplers import (
    StepBatchSampler,
    StepRef,
    gap_range,
    holdout_frames,
    load_index,
    shard_indices,
)
from ilrm_nerfstudio.data.sources import (
    LoadOptions,
    SceneEntry,
    SourceKind,
    chunk_entries,
    detect_source,
    folder_entries,
    has_split,
)
from ilrm_nerfstudio.nerfstudio.console import log_line
from ilrm_nerfstudio.nerfstudio.dataparser_scene import load_single_scene
from ilrm_nerfstudio.nerfstudio.viewer_scene import SceneViewsDataset

warn = functools.partial(log_line, style="yellow")  # bad input that is skipped


@dataclass
class ILRMDataManagerConfig(DataManagerConfig):
    _target: type = field(default_factory=lambda: ILRMDataManager)
    source: SourceKind = "auto"
    """What --data is: chunks (RE10K/ACID), nerfstudio-scenes (transforms.json scenes, DL3DV),
    opencv-scenes, single-scene (one ns-process-data / COLMAP capture), or auto (detected)."""
    image_height: int = 256
    image_width: int = 256
    num_context_views: int = 2
    num_target_views: int = 4
    scenes_per_batch: int = 4
    view_sampler: Literal["bounded", "multiview", "index"] = "bounded"
    """Training views: bounded (contexts a bounded frame gap apart, targets between), multiview
    (min..max_context_views contexts, extras by farthest-point sampling), index (train_index)."""
    min_frame_gap: int = 4
    """Smallest number of frames between the first and last context view."""
    max_frame_gap: int = 16
    warmup_steps: int = 0
    """Steps over which the frame gaps grow linearly from initial_*_frame_gap (None: the final ones)."""
    initial_min_frame_gap: int | None = None
    initial_max_frame_gap: int | None = None
    min_context_views: int | None = None
    """multiview sampler: context views per batch, from min to max (None: num_context_views)."""
    max_context_views: int | None = None
    train_index: Path | None = None
    """Index file {scene: {"context": [...], "target": [...]}} for view_sampler="index"."""
    flip_probability: float = 0.0
    """Probability of mirroring a training sample left-right (images and cameras)."""
    train_split: str = "train"
    eval_split: str = "test"
    eval_index: Path | None = None
    """Evaluate on the views of this index file (null entries skipped) instead of sampled ones."""
    eval_protocol: Literal["sequence", "wide"] = "sequence"
    """sequence: contexts max_frame_gap apart, targets between; wide: every wide_target_interval-th
    frame a target, contexts by k-means over camera position/direction."""
    eval_context_views: int | None = None
    """Context views in evaluation (None: num_context_views); e.g. 16 or 32 for the wide protocol."""
    eval_target_views: int | None = None
    """Target views per held-out scene in the "sequence" protocol (None: num_target_views)."""
    wide_target_interval: int = 8
    num_eval_scenes: int | None = None
    """Evaluate on the first N held-out scenes only (None: all)."""
    holdout_interval: int = 8
    """Single scene: every N-th frame (0, N, 2N, ...) is held out for evaluation."""
    image_folder: str = "auto"
    """images, a downscaled copy such as images_4, or auto (the smallest that covers the size)."""
    distortion: Literal["undistort", "ignore"] = "undistort"
    """Lens distortion in transforms.json / COLMAP: removed when reading frames, or ignored."""
    num_workers: int = 2
    """Background loader processes for training (0: load in the training process)."""
    eval_num_workers: int = 0
    """Background loader processes for evaluation."""
    cache_frames: int = 1024
    """Decoded frames (uint8, at the training size) kept in memory per loader process."""
    chunk_cache_size: int = 2
    """Torch chunks (~100 MB each for RE10K) kept in memory per loader process."""
    seed: int = 0
    max_sample_attempts: int = 10
    """Training: bad samples in a row (each skipped with a logged line) before giving up."""

    def eval_views(self) -> tuple[int, int]:
        """(context, target) views per held-out sample; the eval_* fields fall back to training's."""
        context = self.num_context_views if self.eval_context_views is None else self.eval_context_views
        return context, self.num_target_views if self.eval_target_views is None else self.eval_target_views


class ILRMDataManager(DataManager):
    config: ILRMDataManagerConfig

    def __init__(self, config: ILRMDataManagerConfig, device="cpu", test_mode="val", world_size=1, local_rank=0, **_):
        self.config, self.device, self.test_mode = config, device, test_mode
        if dist.is_available() and dist.is_initialized():  # the global rank, also across machines
            world_size, local_rank = dist.get_world_size(), dist.get_rank()
        self.world_size, self.local_rank = world_size, local_rank
        self.step_ref = StepRef()
        self.skipped_samples, self._last_skip_report = 0, None
        self.skipped_scenes: list[str] = []
        self.skipped_eval_scenes: list[str] = []
        self.missing_eval_scenes: list[str] = []
        self.check_config()
        self.source = "none"
        train, evaluation = ([], []), ([], [])
        if test_mode != "inference":
            if config.data is None:
                raise ILRMError("no data given: pass --data <folder>")
            self.source = detect_source(config.data, config.train_split) if config.source == "auto" else config.source
            if test_mode == "val":  # training; "test" (ns-eval, ilrm-eval) needs held-out data only
                train = self.load_train()
            evaluation = self.load_eval()
        self.train_dataset = ContextTargetDataset(train[0], config, False, episodes=train[1], log=warn)
        self.eval_dataset = ContextTargetDataset(evaluation[0], config, True, episodes=evaluation[1], log=warn)
        # What nerfstudio's pipeline hands the model: cameras are normalized per sample.
        self.train_dataset.scene_box, self.train_dataset.metadata = SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), {}
        super().__init__()

    def check_config(self) -> None:
        """Impossible settings are errors naming the option, never silently replaced."""
        cfg = self.config
        at_least = (  # (smallest value, options); None stays allowed where it means "the default"
            (1, "num_context_views num_target_views image_height image_width scenes_per_batch eval_context_views"),
            (1, "eval_target_views wide_target_interval chunk_cache_size max_sample_attempts"),
            (2, "holdout_interval"),
            (0, "num_workers eval_num_workers cache_frames num_eval_scenes"),  # 0 scenes: said when evaluating
        )
        for least, names in at_least:
            for name in names.split():
                value = getattr(cfg, name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                    option = f"--pipeline.datamanager.{name.replace('_', '-')}"
                    raise ILRMError(f"{option} {value!r}: must be a whole number, at least {least}")
        if cfg.view_sampler == "index" and cfg.train_index is None:
            raise ILRMError("view_sampler='index' needs --pipeline.datamanager.train-index <index.json>")
        low, high = self.context_range()
        if low < 1 or high < low:
            raise ILRMError(
                f"context views must satisfy 1 <= min_context_views <= max_context_views (got {low}, {high})"
            )
        if not 0.0 <= cfg.flip_probability <= 1.0:
            raise ILRMError(f"flip_probability must be in [0, 1], got {cfg.flip_probability}")
        gap_range(0, cfg.min_frame_gap, cfg.max_frame_gap)  # raises for min > max

    def context_range(self) -> tuple[int, int]:
        cfg = self.config
        if cfg.view_sampler != "multiview":
            return cfg.num_context_views, cfg.num_context_views
        low = cfg.num_context_views if cfg.min_context_views is None else cfg.min_context_views
        return low, cfg.num_context_views if cfg.max_context_views is None else cfg.max_context_views

    def rank_label(self) -> str:
        return f"rank {self.local_rank}/{self.world_size}: " if self.world_size > 1 else ""

    def entries(self, split: str, strict: bool) -> list[SceneEntry]:
        cfg = self.config
        options = LoadOptions(
            cfg.image_folder, (cfg.image_height, cfg.image_width), cfg.distortion, cfg.holdout_interval
        )
        if self.source == "chunks":
            return chunk_entries(cfg.data, split)
        if self.source in ("nerfstudio-scenes", "opencv-scenes"):
            entries, problems = folder_entries(cfg.data, split, self.source, options, strict, log=warn)
            self.skipped_scenes += problems
            if not entries:
                raise ILRMError(f"{cfg.data}: no scene in split '{split}' could be loaded")
            return entries
        if self.source == "single-scene":
            scene = load_single_scene(cfg.data, options)
            return [SceneEntry(scene.name, scene.name, scene=scene)]
        raise ILRMError(
            f"unknown data source {self.source!r} (one of auto, chunks, nerfstudio-scenes, opencv-scenes, single-scene)"
        )

    def drop_short(self, entries: list[SceneEntry], split: str, evaluation: bool) -> list[SceneEntry]:
        """Loaded scenes with fewer frames than a sample needs are skipped with one line each
        (chunk scenes are checked when sampled)."""
        needed = sum(self.config.eval_views()) if evaluation else self.context_range()[1] + self.config.num_target_views
        kept = []
        for entry in entries:
            if entry.scene is not None and len(entry.scene) < needed:
                warn(f"skipping scene {entry.name}: {len(entry.scene)} frames, {needed} needed")
                (self.skipped_eval_scenes if evaluation else self.skipped_scenes).append(entry.name)
            else:
                kept.append(entry)
        if not kept:
            raise ILRMError(f"{self.config.data}: no scene in split '{split}' has the {needed} frames a sample needs")
        return kept

    def index_episodes(self, entries: list[SceneEntry], path: Path, evaluation: bool) -> list[Episode]:
        index = load_index(path)
        by_name = {e.name: i for i, e in enumerate(entries)}
        episodes = [Episode(by_name[key], key, ctx, tgt) for key, (ctx, tgt) in index.items() if key in by_name]
        missing = [key for key in index if key not in by_name]
        if missing:
            warn(
                f"{path}: {len(missing)} of {len(index)} indexed scenes are not in the data (e.g. "
                f"{missing[0]}); they are left out"
            )
            if evaluation:
                self.missing_eval_scenes = missing
        if not episodes:
            raise ILRMError(f"{path}: none of its {len(index)} scenes is in {self.config.data}")
        episodes.sort(key=lambda ep: (entries[ep.entry].group, ep.name))  # chunk order: each chunk read once
        return episodes

    def load_train(self) -> tuple[list[SceneEntry], list[Episode]]:
        cfg = self.config
        entries = self.entries(cfg.train_split, strict=False)
        if self.source == "single-scene":
            scene = entries[0].scene
            train_frames, _ = holdout_frames(len(scene), cfg.holdout_interval)
            entries = [SceneEntry(scene.name, scene.name, scene=scene.subset(train_frames))]
        if cfg.view_sampler == "index":
            episodes = self.index_episodes(entries, cfg.train_index, evaluation=False)
        else:
            entries = self.drop_short(entries, cfg.train_split, False)
            episodes = [Episode(i, e.name) for i, e in enumerate(entries)]
        # Several processes: each rank draws from its own shard (whole chunks when possible).
        mine = shard_indices([entries[ep.entry].group for ep in episodes], self.local_rank, self.world_size)
        if not mine:
            raise ILRMError(
                f"{self.rank_label()}no training scenes in this rank's shard ({len(episodes)} scenes "
                f"for {self.world_size} ranks)"
            )
        episodes = [episodes[i] for i in mine]
        if self.skipped_scenes:
            warn(f"{self.rank_label()}{len(self.skipped_scenes)} training scene(s) skipped (see the lines above)")
        log_line(f"{self.rank_label()}training data: {len(episodes)} scene(s) from {cfg.data} ({self.source})")
        return entries, episodes

    def load_eval(self) -> tuple[list[SceneEntry], list[Episode]]:
        cfg = self.config
        if (
            self.source != "single-scene"
            and not has_split(cfg.data, self.source, cfg.eval_split)
            and has_split(cfg.data, self.source, cfg.train_split)
        ):
            raise ILRMError(
                f"{cfg.data}: no '{cfg.eval_split}' split folder next to '{cfg.train_split}' (set "
                f"--pipeline.datamanager.eval-split)"
            )
        entries = self.entries(cfg.eval_split, strict=True)
        if cfg.eval_index is not None:
            episodes = self.index_episodes(entries, cfg.eval_index, evaluation=True)
        elif self.source == "single-scene":
            wide = cfg.eval_protocol == "wide"
            episodes = single_scene_episodes(entries[0].scene, cfg.holdout_interval, *cfg.eval_views(), wide)
        else:
            if cfg.eval_protocol != "wide":
                entries = self.drop_short(entries, cfg.eval_split, True)
            episodes = [Episode(i, e.name) for i, e in enumerate(entries)]
        return entries, episodes[: cfg.num_eval_scenes]

    # -- training --------------------------------------------------------------------------------

    def setup_train(self):
        cfg = self.config
        low, high = self.context_range()
        groups = [self.train_dataset.entries[ep.entry].group for ep in self.train_dataset.episodes]
        seed = cfg.seed + 1009 * self.local_rank
        sampler = StepBatchSampler(groups, cfg.scenes_per_batch, self.step_ref, seed, cfg.num_workers, low, high)
        self.train_loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
            collate_fn=default_collate,
            pin_memory=self.pin_memory(),
        )
        self.train_iterator = iter(self.train_loader)

    def pin_memory(self) -> bool:
        """Batches for a GPU come in page-locked memory, so that their copies do not wait for it."""
        return torch.device(self.device).type == "cuda"

    def to_device(self, batch: dict) -> dict:
        queued = self.pin_memory()
        return {k: v.to(self.device, non_blocking=queued) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def next_train(self, step: int) -> dict:
        self.train_count += 1
        self.step_ref.step = step
        try:
            batch = next(self.train_iterator)
        except ILRMError as error:  # from a loader worker: its message without the worker's traceback
            raise ILRMError(one_line(error)) from None
        skipped = int(batch.pop("num_skipped").sum())
        self.skipped_samples += skipped
        if skipped and (self._last_skip_report is None or step - self._last_skip_report >= 100):
            self._last_skip_report = step  # the count, at most once per 100 steps
            self.report_skipped()
        if self.skipped_samples and step % 10 == 0:
            writer.put_scalar("Train Data/skipped samples", self.skipped_samples, step)
        return self.to_device(batch)

    def report_skipped(self, step: int | None = None) -> None:  # step: at the end of training
        final = step is not None
        if self.skipped_samples or final and self.skipped_scenes:
            what = f"{self.skipped_samples} training sample(s) skipped" + (" in this run" if final else " so far")
            scenes = f", {len(self.skipped_scenes)} scene(s) left out when loading" if self.skipped_scenes else ""
            warn(f"{self.rank_label()}data: {what}{scenes} (bad input, see the lines naming them)")

    def get_training_callbacks(self, training_callback_attributes):
        return [TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN], self.report_skipped)]

    # -- evaluation ------------------------------------------------------------------------------

    def setup_eval(self):
        """Batches of consecutive episodes with equal numbers of views, up to scenes_per_batch each."""
        cfg, self.eval_batches, previous = self.config, [], None
        for i, episode in enumerate(self.eval_dataset.episodes):
            if episode.context is not None:
                shape = len(episode.context), len(episode.target)
            else:  # wide: the number of targets depends on the scene
                shape = None if cfg.eval_protocol == "wide" else cfg.eval_views()
            batches = self.eval_batches
            if batches and shape is not None and shape == previous and len(batches[-1]) < cfg.scenes_per_batch:
                batches[-1].append(i)
            else:
                batches.append([i])
            previous = shape

    def check_eval_scenes(self) -> None:
        """Evaluation needs held-out scenes: none is one line naming the data and what to change."""
        if getattr(self, "eval_batches", None):  # set up only when there are held-out scenes
            return
        cfg, skipped = self.config, self.skipped_eval_scenes
        raise ILRMError(
            f"{cfg.data}: no held-out scenes to evaluate (split '{cfg.eval_split}'"
            + (f", {len(skipped)} skipped: see the lines above" if skipped else "")
            + (f", num_eval_scenes {cfg.num_eval_scenes}" if cfg.num_eval_scenes is not None else "")
            + "); give data with held-out scenes (a test split folder, or a single capture with "
            "--pipeline.datamanager.holdout-interval) or another --pipeline.datamanager.eval-split"
        )

    def eval_batch(self, indices: list[int]) -> dict:
        try:
            batch = default_collate([self.eval_dataset[i] for i in indices])
        except ILRMError as error:
            raise ILRMError(f"evaluation: {one_line(error)}") from None
        if self.pin_memory():
            batch = {k: v.pin_memory() if isinstance(v, Tensor) else v for k, v in batch.items()}
        return self.to_device(batch)

    def next_eval(self, step: int, batches: list[list[int]] | None = None) -> dict:
        """A batch of held-out scenes (deterministic views), cycling through them."""
        self.check_eval_scenes()
        self.eval_count += 1
        batches = self.eval_batches if batches is None else batches
        return self.eval_batch(batches[(self.eval_count - 1) % len(batches)])

    def next_eval_image(self, step: int) -> dict:
        """One held-out scene, cycling through them."""
        return self.next_eval(step, [[i] for i in range(len(self.eval_dataset))])

    def eval_scene_batches(self, num_workers: int | None = None, batches: list[list[int]] | None = None):
        """Every held-out episode once, in batches (loaded by `eval_num_workers` processes);
        `batches`: only these (a share of `eval_batches`, e.g. one rank's)."""
        workers = self.config.eval_num_workers if num_workers is None else num_workers
        batches = self.eval_batches if batches is None else batches
        if workers <= 0:
            yield from (self.eval_batch(batch) for batch in batches)
            return
        loader = DataLoader(
            self.eval_dataset,
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=default_collate,
            pin_memory=self.pin_memory(),
        )
        try:
            for batch in loader:
                yield self.to_device(batch)
        except ILRMError as error:
            raise ILRMError(f"evaluation: {one_line(error)}") from None

    def show_scene_in_viewer(self, which: str) -> None:
        """Test mode (ns-viewer, ns-render, ns-eval): the training dataset becomes the frames of the
        held-out scene a checkpoint holds (viewer_scene.py), for the viewer's cameras."""
        if str(which).strip().lower() == "none":
            return
        try:
            dataset = self.eval_dataset
            self.train_dataset = SceneViewsDataset(dataset.episode_scene(find_episode(dataset.episodes, which)))
        except ILRMError as error:
            warn(f"ilrm: no held scene views for the viewer: {error}")

    def get_train_rays_per_batch(self) -> int:
        cfg = self.config
        return cfg.scenes_per_batch * cfg.num_target_views * cfg.image_height * cfg.image_width

    def get_eval_rays_per_batch(self) -> int:
        return self.get_train_rays_per_batch()

    def get_datapath(self) -> Path:
        return self.config.data
