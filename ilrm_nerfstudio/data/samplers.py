"""View sampling: which frames of a scene are contexts (the network's input) and which are
targets (what renders are compared with), plus evaluation protocols and data sharding.

Everything here is pure: functions take frame counts / cameras and a `torch.Generator`
(`None` = deterministic evaluation choice) and return frame indices. The training step enters
only through `gap_range` (the linear warm-up of the frame gap), so a sampler is stateless given
the step and works the same in background loader processes.

- "bounded": two contexts `gap` frames apart, gap in [min, max] (warmed up over training steps),
  extra contexts evenly spaced inside the window, targets strictly between the outer contexts.
- "multiview": a random number of contexts in [min, max] per batch; the window's two ends are
  contexts and the extra ones are picked by farthest-point sampling on camera centers.
- "index": fixed views from an evaluation index `{key: {"context": [...], "target": [...]}}`
  (null entries skipped).
- "wide" evaluation protocol (DL3DV wide coverage): every k-th frame is a target; contexts are
  chosen among the other frames by k-means over camera position and viewing direction.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Sampler

from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.data.validate import read_json

# ------------------------------------------------------------------------------------------------
# Frame-gap warm-up
# ------------------------------------------------------------------------------------------------


def gap_range(
    step: int,
    min_gap: int,
    max_gap: int,
    warmup_steps: int = 0,
    initial_min_gap: int | None = None,
    initial_max_gap: int | None = None,
) -> tuple[int, int]:
    """The allowed [min, max] frame gap between the outer contexts at training `step`: linear
    from (initial_min_gap, initial_max_gap) at step 0 to (min_gap, max_gap) at `warmup_steps`."""
    if min_gap > max_gap:
        raise ILRMError(f"min_frame_gap {min_gap} is larger than max_frame_gap {max_gap}")
    start_min = min_gap if initial_min_gap is None else initial_min_gap
    start_max = max_gap if initial_max_gap is None else initial_max_gap
    fraction = 1.0 if warmup_steps <= 0 else min(max(step, 0) / warmup_steps, 1.0)
    low = round(start_min + fraction * (min_gap - start_min))
    high = round(start_max + fraction * (max_gap - start_max))
    return low, max(low, high)


# ------------------------------------------------------------------------------------------------
# Training samplers
# ------------------------------------------------------------------------------------------------


def _window(
    num_frames: int, needed: int, min_gap: int, max_gap: int, generator: torch.Generator | None
) -> tuple[int, int]:
    """(start, gap) of a window of gap + 1 consecutive frames holding `needed` distinct frames."""
    low = max(min(min_gap, num_frames - 1), needed - 1)
    high = max(min(max_gap, num_frames - 1), low)
    if generator is None:  # deterministic: the widest allowed window, centered in the sequence
        return (num_frames - 1 - high) // 2, high
    gap = int(torch.randint(low, high + 1, (1,), generator=generator))
    start = int(torch.randint(0, num_frames - gap, (1,), generator=generator))
    return start, gap


def _check_count(num_frames: int, num_context: int, num_target: int) -> None:
    if num_context < 1 or num_target < 1:
        raise ILRMError(f"need at least 1 context and 1 target view (got {num_context} and {num_target})")
    if num_frames < num_context + num_target:
        raise ILRMError(f"{num_frames} frames, but {num_context} context + {num_target} target views are needed")


def _pick_targets(candidates: list[int], num_target: int, generator: torch.Generator | None) -> list[int]:
    if len(candidates) < num_target:
        raise ILRMError(f"only {len(candidates)} frames left for {num_target} target views")
    if generator is None:  # evenly spread inside, at 1/(n+1), ..., n/(n+1) of the candidates:
        # never simply the neighbours of the contexts, which copying a context would predict well
        n = len(candidates)
        return [candidates[round((i + 1) * (n + 1) / (num_target + 1)) - 1] for i in range(num_target)]
    return sorted(candidates[i] for i in torch.randperm(len(candidates), generator=generator)[:num_target].tolist())


def sample_bounded(
    num_frames: int, num_context: int, num_target: int, min_gap: int, max_gap: int, generator: torch.Generator | None
) -> tuple[list[int], list[int]]:
    """Context and target frame indices from a window of consecutive frames.

    The first and last frame of the window are contexts (plus evenly spaced extra contexts); the
    targets lie inside the window and are never contexts. With `generator=None` the choice is
    deterministic (evaluation): the widest allowed window, centered in the sequence.
    """
    _check_count(num_frames, num_context, num_target)
    start, gap = _window(num_frames, num_context + num_target, min_gap, max_gap, generator)
    window = list(range(start, start + gap + 1))
    context = sorted({window[round(i * gap / max(num_context - 1, 1))] for i in range(num_context)})
    if len(context) < num_context:
        raise ILRMError(f"cannot fit {num_context} contexts and {num_target} targets in a window of {gap + 1} frames")
    candidates = [i for i in window if i not in context]  # strictly between the outer contexts
    return context, _pick_targets(candidates, num_target, generator)


def farthest_point_sampling(points: Tensor, count: int, selected: Sequence[int] = ()) -> list[int]:
    """Indices of `count` points [N, 3] chosen greedily, each the farthest from those chosen
    before (starting from `selected`, or from the point farthest from the centroid). Returns the
    new picks only, in order."""
    points = points.double()
    n = len(points)
    chosen = list(selected)
    if not chosen:
        chosen = [int((points - points.mean(0)).norm(dim=-1).argmax())]
        picks = list(chosen)
    else:
        picks = []
    distance = torch.full((n,), math.inf, dtype=torch.float64)
    for i in chosen:
        distance = torch.minimum(distance, (points - points[i]).norm(dim=-1))
    while len(picks) < count and len(chosen) < n:
        distance[chosen] = -1.0
        best = int(distance.argmax())
        picks.append(best)
        chosen.append(best)
        distance = torch.minimum(distance, (points - points[best]).norm(dim=-1))
    return picks[:count]


def sample_multiview(
    c2w: Tensor, num_context: int, num_target: int, min_gap: int, max_gap: int, generator: torch.Generator | None
) -> tuple[list[int], list[int]]:
    """Bounded window whose two end frames are contexts; the other `num_context - 2` contexts are
    the window frames farthest (on camera centers) from those already chosen; targets are drawn
    from the remaining frames strictly inside the window."""
    num_frames = len(c2w)
    _check_count(num_frames, num_context, num_target)
    if num_context < 2:
        return sample_bounded(num_frames, num_context, num_target, min_gap, max_gap, generator)
    start, gap = _window(num_frames, num_context + num_target, min_gap, max_gap, generator)
    first, last = start, start + gap
    inner = list(range(first + 1, last))
    centers = c2w[first : last + 1, :3, 3]
    extra = farthest_point_sampling(centers, num_context - 2, selected=[0, gap])
    context = sorted([first, last] + [first + i for i in extra])
    candidates = [i for i in inner if i not in context]
    return context, _pick_targets(candidates, num_target, generator)


# ------------------------------------------------------------------------------------------------
# Evaluation protocols
# ------------------------------------------------------------------------------------------------


def kmeans_views(c2w: Tensor, count: int, candidates: Sequence[int], iterations: int = 30) -> list[int]:
    """`count` frames among `candidates` covering the cameras: k-means (deterministic
    farthest-point initialization) over features [normalized camera position, viewing direction];
    each cluster contributes the candidate nearest its center. Sorted frame indices."""
    candidates = list(candidates)
    if count >= len(candidates):
        return sorted(candidates)
    c2w = c2w[candidates].double()
    positions = c2w[:, :3, 3]
    positions = (positions - positions.mean(0)) / positions.std(0, unbiased=False).norm().clamp_min(1e-9)
    features = torch.cat([positions, c2w[:, :3, 2]], dim=-1)  # OpenCV forward = +z column
    centers = features[farthest_point_sampling(features, count)]
    for _ in range(iterations):
        assignment = torch.cdist(features, centers).argmin(1)
        updated = centers.clone()
        for k in range(count):
            members = features[assignment == k]
            if len(members):
                updated[k] = members.mean(0)
        if torch.allclose(updated, centers):
            break
        centers = updated
    distances = torch.cdist(centers, features)
    picks: list[int] = []
    for k in range(count):  # nearest unused candidate per center
        for j in distances[k].argsort().tolist():
            if j not in picks:
                picks.append(j)
                break
    return sorted(candidates[j] for j in picks)


def wide_coverage_views(c2w: Tensor, num_context: int, target_interval: int = 8) -> tuple[list[int], list[int]]:
    """DL3DV wide-coverage protocol: frames 0, k, 2k, ... are targets; the contexts are chosen among
    the other frames by k-means over camera position and direction."""
    num_frames = len(c2w)
    targets = list(range(0, num_frames, target_interval))
    others = [i for i in range(num_frames) if i % target_interval]
    if len(others) < num_context or not targets:
        raise ILRMError(
            f"{num_frames} frames: the wide protocol (every {target_interval}th frame a target) leaves "
            f"{len(others)} frames for {num_context} context views"
        )
    return kmeans_views(c2w, num_context, others), targets


def holdout_frames(num_frames: int, interval: int) -> tuple[list[int], list[int]]:
    """Single-scene split: every `interval`-th frame (0, k, 2k, ...) is held out for evaluation
    (train frames, held-out frames)."""
    if interval < 2:
        raise ILRMError(f"holdout interval must be at least 2, got {interval}")
    held_out = list(range(0, num_frames, interval))
    return [i for i in range(num_frames) if i % interval], held_out


def holdout_episodes(
    train_frames: Sequence[int], held_out: Sequence[int], num_context: int, num_target: int
) -> list[tuple[list[int], list[int]]]:
    """Evaluation episodes of a single scene: consecutive groups of `num_target` held-out frames,
    each with the `num_context` training frames nearest around the group (the nearest before the
    first target, the nearest after the last, extra ones evenly spaced between)."""
    train_frames = sorted(train_frames)
    if len(train_frames) < num_context:
        raise ILRMError(f"{len(train_frames)} training frames, but {num_context} context views are needed")
    episodes = []
    for start in range(0, len(held_out), num_target):
        targets = sorted(held_out[start : start + num_target])
        before = [f for f in train_frames if f < targets[0]]
        after = [f for f in train_frames if f > targets[-1]]
        lo = train_frames.index(before[-1]) if before else 0
        hi = train_frames.index(after[0]) if after else len(train_frames) - 1
        while hi - lo + 1 < num_context:  # widen the bracket when too few frames lie inside
            lo, hi = (lo - 1, hi) if lo > 0 else (lo, hi + 1)
        span = train_frames[lo : hi + 1]
        context = sorted({span[round(i * (len(span) - 1) / max(num_context - 1, 1))] for i in range(num_context)})
        if len(context) < num_context:
            context = span[:num_context]
        episodes.append((context, targets))
    return episodes


# ------------------------------------------------------------------------------------------------
# Evaluation index files
# ------------------------------------------------------------------------------------------------


def _is_frame_number(value: object) -> bool:
    """An integer (1.0 from a float-writing tool too), never a bool or a string."""
    return not isinstance(value, bool) and isinstance(value, int | float) and float(value).is_integer()


def load_index(path: Path) -> dict[str, tuple[list[int], list[int]]]:
    """Read an evaluation index `{scene_key: null | {"context": [...], "target": [...]}}`; null
    entries are skipped. Raises ILRMError naming the key for malformed entries."""
    path = Path(path)
    if not path.exists():
        raise ILRMError(f"{path}: evaluation index not found")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ILRMError(f"{path}: an evaluation index maps scene keys to {{'context': [...], 'target': [...]}}")
    index = {}
    for key, entry in raw.items():
        if entry is None:
            continue
        views = [entry.get(name) if isinstance(entry, dict) else None for name in ("context", "target")]
        if not all(isinstance(v, list) and all(_is_frame_number(i) for i in v) for v in views):
            raise ILRMError(f"{path}: entry {key!r} needs integer lists 'context' and 'target', got {entry!r}")
        context, target = ([int(i) for i in v] for v in views)
        if not context or not target:
            raise ILRMError(f"{path}: entry {key!r} has no context or no target frames")
        index[str(key)] = (context, target)
    return index


# ------------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------------

_REFLECT_X = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64))


def flip_horizontal(images: Tensor, c2w: Tensor, K: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mirror images [..., 3, H, W] left-right together with their cameras: the world is reflected
    across the x = 0 plane (S = diag(-1, 1, 1)), each camera becomes S c2w S (still a rotation) and
    the principal point moves to W - cx. Projecting the reflected world with the new cameras gives
    exactly the mirrored pixel positions u' = W - u, so all views stay consistent."""
    width = images.shape[-1]
    reflect = _REFLECT_X.to(c2w)
    K = K.clone()
    K[..., 0, 2] = width - K[..., 0, 2]
    return images.flip(-1), reflect @ c2w @ reflect, K


# ------------------------------------------------------------------------------------------------
# Sharding across ranks and the step-aware batch sampler
# ------------------------------------------------------------------------------------------------


def shard_indices(groups: Sequence[str], rank: int, world_size: int) -> list[int]:
    """Indices of the items (one group label each, e.g. the chunk file of a scene) that rank
    `rank` of `world_size` owns. Whole groups are dealt out round-robin when there are at least
    `world_size` of them (no chunk is read by two ranks); otherwise single items are. The shards
    are disjoint and together cover every item. With fewer items than ranks (a single capture)
    every rank gets every item (the ranks still draw different views: their seeds differ)."""
    if world_size <= 1 or len(groups) < world_size:
        return list(range(len(groups)))
    if not 0 <= rank < world_size:
        raise ILRMError(f"rank {rank} is outside a world of size {world_size}")
    labels = sorted(set(groups))
    if len(labels) >= world_size:
        mine = set(labels[rank::world_size])
        return [i for i, g in enumerate(groups) if g in mine]
    return list(range(rank, len(groups), world_size))


@dataclass
class StepRef:
    """The current training step, shared by the data manager (writer) and the batch sampler
    (reader, which runs in the training process even when loading runs in workers)."""

    step: int = 0


class StepBatchSampler(Sampler):
    """Endless batches of sample keys `(item, step, seed, num_context)`.

    Items are visited epoch by epoch without replacement; items of the same group (a chunk file)
    are kept together so a loader process reads each chunk once per epoch, and with `num_workers`
    loader processes the groups are dealt to the workers (DataLoader hands batch b to worker
    b % num_workers). `step` is read from `step_ref` when a batch is drawn (for the gap warm-up);
    the number of context views is drawn once per batch in [min_context, max_context] so a batch
    stacks.
    """

    def __init__(
        self,
        groups: Sequence[str],
        batch_size: int,
        step_ref: StepRef,
        seed: int = 0,
        num_workers: int = 0,
        min_context: int = 2,
        max_context: int = 2,
        shuffle: bool = True,
    ):
        if not groups:
            raise ILRMError("no scenes to sample from")
        self.groups, self.batch_size, self.step_ref, self.seed = list(groups), batch_size, step_ref, seed
        self.num_streams = max(num_workers, 1)
        self.min_context, self.max_context, self.shuffle = min_context, max(max_context, min_context), shuffle

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62

    def _stream(self, stream: int, generator: torch.Generator) -> Iterator[int]:
        labels = sorted(set(self.groups))
        members: dict[str, list[int]] = {label: [] for label in labels}
        for i, g in enumerate(self.groups):
            members[g].append(i)
        epoch = 0
        while True:
            # The group order of an epoch is the same for every stream (its own seed), so the
            # streams deal disjoint groups; the order inside a group is per stream.
            order_generator = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            order = (
                torch.randperm(len(labels), generator=order_generator).tolist()
                if self.shuffle
                else list(range(len(labels)))
            )
            mine = order[stream :: self.num_streams] or order  # fewer groups than streams: share
            for g in mine:
                items = members[labels[g]]
                perm = torch.randperm(len(items), generator=generator).tolist() if self.shuffle else range(len(items))
                for j in perm:
                    yield items[j]
            epoch += 1

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        generator = torch.Generator().manual_seed(self.seed)
        streams = [self._stream(s, torch.Generator().manual_seed(self.seed + 1 + s)) for s in range(self.num_streams)]
        counter = 0
        while True:
            for stream in streams:
                num_context = int(torch.randint(self.min_context, self.max_context + 1, (1,), generator=generator))
                step = self.step_ref.step
                batch = []
                for _ in range(self.batch_size):
                    batch.append((next(stream), step, (self.seed * 1_000_003 + counter) % 2**62, num_context))
                    counter += 1
                yield batch
