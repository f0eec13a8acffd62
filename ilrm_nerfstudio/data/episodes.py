"""Samples for training across scenes: a torch Dataset of episodes (a scene entry, its views fixed
or sampled) whose items are context views (the network's input) and target views (the loss's) at
the training size, cameras normalized to the average context camera. The multi-scene data
manager (nerfstudio/ilrm_datamanager.py) builds it; loader processes get a pickled copy."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ilrm_nerfstudio.core.cameras import normalize_poses
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.data.samplers import (
    flip_horizontal,
    gap_range,
    holdout_episodes,
    holdout_frames,
    kmeans_views,
    sample_bounded,
    sample_multiview,
    wide_coverage_views,
)
from ilrm_nerfstudio.data.scene import Scene, load_view_uint8
from ilrm_nerfstudio.data.sources import ChunkCache, SceneEntry


@dataclass
class Episode:
    """A scene entry and, when fixed (index files, single-scene hold-out), its views (None: sampled)."""

    entry: int
    name: str
    context: list[int] | None = None
    target: list[int] | None = None


def find_episode(episodes: list[Episode], which: str) -> int:
    """Index of the episode named by `which` (the model's viewer_scene): an index ("0", "3") or a
    scene name."""
    if not episodes:
        raise ILRMError("no evaluation scenes to hold (the data manager has none in this mode)")
    which = str(which).strip()
    if which.lstrip("-").isdigit():
        index = int(which)
        if not -len(episodes) <= index < len(episodes):
            raise ILRMError(
                f"viewer_scene {index}: there are {len(episodes)} evaluation scenes (0..{len(episodes) - 1})"
            )
        return index % len(episodes)
    for i, episode in enumerate(episodes):
        if episode.name == which:
            return i
    raise ILRMError(
        f"viewer_scene {which!r} is not an evaluation scene (e.g. {', '.join(e.name for e in episodes[:5])})"
    )


def single_scene_episodes(scene: Scene, interval: int, num_context: int, num_target: int, wide: bool) -> list:
    """A single capture's evaluation episodes: every `interval`-th frame held out, contexts among
    the others (wide: one episode, contexts by k-means; else groups of `num_target` targets)."""
    train_frames, held_out = holdout_frames(len(scene), interval)
    if wide:
        pairs = [(kmeans_views(scene.c2w, num_context, train_frames), held_out)]
    else:
        pairs = holdout_episodes(train_frames, held_out, num_context, num_target)
    return [
        Episode(0, f"{scene.name}#{k:03d}" if len(pairs) > 1 else scene.name, c, t) for k, (c, t) in enumerate(pairs)
    ]


class ContextTargetDataset(Dataset):
    """Items: keys `(episode, step, seed, num_context)` from `StepBatchSampler` (training) or
    episode numbers (evaluation) -> views at the configured size, cameras normalized to the
    average context camera. `config`: the data manager's (sizes, view sampling, caches); `log`:
    where a skipped training sample is reported."""

    def __init__(self, entries: list, config, deterministic: bool, episodes=None, log=print):
        self.entries = [e if isinstance(e, SceneEntry) else SceneEntry(e.name, e.name, scene=e) for e in entries]
        self.config, self.deterministic, self.log = config, deterministic, log
        self.episodes = episodes if episodes is not None else [Episode(i, e.name) for i, e in enumerate(self.entries)]
        self.chunks = ChunkCache(config.chunk_cache_size)
        self._frames: OrderedDict = OrderedDict()

    def __getstate__(self):  # a loader process starts with empty caches
        state = self.__dict__.copy()
        state["_frames"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self.episodes)

    def resolve(self, entry_index: int) -> Scene:
        entry = self.entries[entry_index]
        if entry.scene is not None:
            return entry.scene
        return self.chunks.scene(entry.name, entry.chunk)  # cameras checked by chunk_example_to_scene

    def episode_scene(self, index: int) -> Scene:
        return self.resolve(self.episodes[index].entry)

    def load_frame(self, entry_index: int, scene: Scene, frame: int) -> tuple[Tensor, Tensor]:
        key = (entry_index, frame)
        if key in self._frames:
            self._frames.move_to_end(key)
            return self._frames[key]
        value = load_view_uint8(scene, frame, self.config.image_height, self.config.image_width)
        if self.config.cache_frames > 0:
            self._frames[key] = value
            while len(self._frames) > self.config.cache_frames:
                self._frames.popitem(last=False)
        return value

    def choose_views(
        self, scene: Scene, episode: Episode, generator: torch.Generator | None, step: int, num_context: int
    ) -> tuple[list[int], list[int]]:
        cfg = self.config
        if episode.context is not None:
            for i in episode.context + episode.target:
                if not 0 <= i < len(scene):
                    raise ILRMError(
                        f"scene {scene.name}: the view list asks for frame {i}, but the scene has {len(scene)} frames"
                    )
            return list(episode.context), list(episode.target)
        if generator is None:  # evaluation
            num_context, num_target = cfg.eval_views()
            if cfg.eval_protocol == "wide":
                return wide_coverage_views(scene.c2w, num_context, cfg.wide_target_interval)
            return sample_bounded(len(scene), num_context, num_target, cfg.min_frame_gap, cfg.max_frame_gap, None)
        gaps = (cfg.min_frame_gap, cfg.max_frame_gap, cfg.warmup_steps)
        low, high = gap_range(step, *gaps, cfg.initial_min_frame_gap, cfg.initial_max_frame_gap)
        if cfg.view_sampler == "multiview":
            return sample_multiview(scene.c2w, num_context, cfg.num_target_views, low, high, generator)
        return sample_bounded(len(scene), num_context, cfg.num_target_views, low, high, generator)

    def sample(
        self, episode: Episode, generator: torch.Generator | None, step: int = 0, num_context: int | None = None
    ) -> dict:
        cfg = self.config
        num_context = num_context or cfg.num_context_views
        name = self.entries[episode.entry].name
        try:
            scene = self.resolve(episode.entry)
            context, targets = self.choose_views(scene, episode, generator, step, num_context)
            views = [self.load_frame(episode.entry, scene, i) for i in context + targets]
        except ILRMError as error:
            message = str(error)
            raise ILRMError(message if name in message else f"scene {name}: {message}") from None
        except Exception as error:  # anything else reading this scene's files (a decoder, OpenCV): name it
            raise ILRMError(f"scene {name}: cannot load a sample ({type(error).__name__}: {error})") from None
        images = torch.stack([image for image, _ in views]).float() / 255.0
        K = torch.stack([k for _, k in views])
        context_c2w, target_c2w, _ = normalize_poses(scene.c2w[context].double(), scene.c2w[targets].double())
        V = len(context)
        flip = generator is not None and cfg.flip_probability > 0
        if flip and float(torch.rand((), generator=generator)) < cfg.flip_probability:
            images, c2w, K = flip_horizontal(images, torch.cat([context_c2w, target_c2w]), K)
            context_c2w, target_c2w = c2w[:V], c2w[V:]
        return {  # images [V or T, 3, H, W], c2w [V or T, 4, 4], K [V or T, 3, 3]
            "scene": episode.name,
            "context_indices": torch.tensor([scene.frame_id(i) for i in context]),
            "target_indices": torch.tensor([scene.frame_id(i) for i in targets]),
            "context_images": images[:V],
            "context_c2w": context_c2w.float(),
            "context_K": K[:V].float(),
            "target_images": images[V:],
            "target_c2w": target_c2w.float(),
            "target_K": K[V:].float(),
        }

    def __getitem__(self, key) -> dict:
        if self.deterministic:
            return self.sample(self.episodes[int(key)], None)
        if isinstance(key, int):  # plain index (e.g. a default sampler): step 0, fresh seed
            key = (key, 0, int(torch.randint(0, 2**62, (1,))), self.config.num_context_views)
        episode_index, step, seed, num_context = key
        generator = torch.Generator().manual_seed(int(seed))
        skipped, last = 0, ""
        for _ in range(max(1, self.config.max_sample_attempts)):
            try:
                item = self.sample(self.episodes[episode_index], generator, step, num_context)
                item["num_skipped"] = skipped
                return item
            except ILRMError as error:
                # Training: the sample is skipped (one line naming scene and frame), another drawn.
                skipped, last = skipped + 1, str(error)
                self.log(f"skipping a training sample: {error}")
                episode_index = int(torch.randint(0, len(self.episodes), (1,), generator=generator))
        raise ILRMError(f"{skipped} training samples in a row could not be loaded (last: {last}); check the data")
