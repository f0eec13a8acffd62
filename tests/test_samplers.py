"""View samplers (bounded with gap warm-up, multiview with farthest-point contexts, evaluation
index, wide-coverage k-means, single-scene hold-out), flip augmentation with reflected cameras,
the step-aware batch sampler and sharding across ranks."""

from __future__ import annotations

import json

import pytest
import torch

from ilrm_nerfstudio.core.cameras import pixel_centers, rays_through
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.data.episodes import ContextTargetDataset
from ilrm_nerfstudio.data.samplers import (
    StepBatchSampler,
    StepRef,
    farthest_point_sampling,
    flip_horizontal,
    gap_range,
    holdout_episodes,
    holdout_frames,
    kmeans_views,
    load_index,
    sample_bounded,
    sample_multiview,
    shard_indices,
    wide_coverage_views,
)
from ilrm_nerfstudio.nerfstudio.ilrm_datamanager import ILRMDataManagerConfig
from tests.test_sources import ground_truth, write_chunk_dataset


def test_gap_range_warms_up_linearly():
    assert gap_range(0, 20, 40, warmup_steps=100, initial_min_gap=4, initial_max_gap=8) == (4, 8)
    assert gap_range(50, 20, 40, warmup_steps=100, initial_min_gap=4, initial_max_gap=8) == (12, 24)
    assert gap_range(100, 20, 40, warmup_steps=100, initial_min_gap=4, initial_max_gap=8) == (20, 40)
    assert gap_range(10**6, 20, 40, warmup_steps=100, initial_min_gap=4, initial_max_gap=8) == (20, 40)
    assert gap_range(0, 20, 40) == (20, 40)  # no warm-up
    with pytest.raises(ILRMError, match="larger than max_frame_gap"):
        gap_range(0, 10, 5)


def test_bounded_targets_lie_between_contexts_and_gap_follows_the_warmup():
    generator = torch.Generator().manual_seed(0)
    for step, (low, high) in ((0, (3, 5)), (1000, (10, 20))):
        lo, hi = gap_range(step, 10, 20, 1000, 3, 5)
        assert (lo, hi) == (low, high)
        gaps = set()
        for _ in range(300):
            context, targets = sample_bounded(40, 2, 2, lo, hi, generator)
            gaps.add(context[-1] - context[0])
            assert all(context[0] < t < context[-1] for t in targets) and not set(context) & set(targets)
        assert gaps == set(range(low, high + 1))
    assert sample_bounded(40, 3, 2, 10, 20, None) == sample_bounded(40, 3, 2, 10, 20, None)


def test_evaluation_targets_are_evenly_spread_inside_the_window():
    """Deterministic (evaluation) targets sit at 1/3 and 2/3 of the window, not next to a context."""
    assert sample_bounded(24, 2, 2, 4, 12, None) == ([5, 17], [9, 13])
    assert sample_bounded(24, 2, 1, 4, 8, None) == ([7, 15], [11])
    context, targets = sample_bounded(24, 2, 7, 8, 8, None)  # as many targets as frames inside
    assert targets == list(range(context[0] + 1, context[1]))


def test_farthest_point_sampling_spreads_out():
    points = torch.tensor([[0.0, 0, 0], [1, 0, 0], [10, 0, 0], [5, 0, 0], [0.5, 0, 0]])
    assert farthest_point_sampling(points, 2, selected=[0]) == [2, 3]
    assert farthest_point_sampling(points, 5, selected=[0, 2]) == [3, 1, 4]


def test_multiview_contexts_are_window_ends_plus_farthest_cameras():
    c2w = torch.eye(4, dtype=torch.float64).repeat(30, 1, 1)
    positions = torch.zeros(30)
    positions[10:21] = torch.tensor([0, 0.1, 0.2, 0.3, 3.0, 3.1, 3.2, 3.3, 3.4, 3.5, 6.0], dtype=torch.float64)
    c2w[:, 0, 3] = positions
    context, targets = sample_multiview(c2w, 3, 2, 10, 10, None)  # deterministic: frames 9..19, centered
    assert context == [9, 14, 19] or context == [9, 13, 19]
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        context, targets = sample_multiview(c2w, 4, 3, 6, 12, generator)
        assert len(context) == 4 and len(targets) == 3 and not set(context) & set(targets)
        assert all(context[0] < t < context[-1] for t in targets)
        first, last = context[0], context[-1]
        centers = c2w[first : last + 1, :3, 3]
        expected = farthest_point_sampling(centers, 2, selected=[0, last - first])
        assert sorted(context[1:-1]) == sorted(first + i for i in expected)


def test_batch_sampler_draws_context_counts_per_batch_and_reads_the_step(tmp_path):
    step = StepRef()
    sampler = StepBatchSampler(["a"] * 3 + ["b"] * 3, batch_size=4, step_ref=step, min_context=2, max_context=5)
    iterator = iter(sampler)
    counts = set()
    for s in range(40):
        step.step = s
        batch = next(iterator)
        assert len(batch) == 4 and len({key[3] for key in batch}) == 1  # one context count per batch
        assert all(key[1] == s for key in batch)
        counts.add(batch[0][3])
    assert counts == {2, 3, 4, 5}


def test_multiview_batches_through_the_dataset(tmp_path):
    root = write_chunk_dataset(tmp_path / "c", num_train=3, num_test=1, num_frames=12)
    config = ILRMDataManagerConfig(
        data=root,
        image_height=16,
        image_width=16,
        num_target_views=2,
        view_sampler="multiview",
        min_context_views=2,
        max_context_views=4,
        min_frame_gap=6,
        max_frame_gap=10,
        scenes_per_batch=2,
        num_workers=0,
    )
    dm = config.setup(device="cpu", test_mode="val")
    seen = set()
    for step in range(12):
        batch = dm.next_train(step)
        V = batch["context_images"].shape[1]
        assert batch["context_c2w"].shape[:2] == (2, V) and 2 <= V <= 4
        seen.add(V)
    assert len(seen) >= 2


def test_worker_streams_deal_disjoint_chunk_groups():
    groups = [f"chunk{g}" for g in range(6) for _ in range(3)]
    sampler = StepBatchSampler(groups, batch_size=3, step_ref=StepRef(), num_workers=2)
    iterator = iter(sampler)
    per_worker = {0: set(), 1: set()}
    for b in range(6):  # one epoch: 18 items in 6 batches, batch b goes to worker b % 2
        batch = next(iterator)
        per_worker[b % 2] |= {groups[key[0]] for key in batch}
    assert not per_worker[0] & per_worker[1]  # no chunk is read by both workers
    assert per_worker[0] | per_worker[1] == set(groups)


def test_index_loading_skips_nulls_and_names_bad_entries(tmp_path):
    path = tmp_path / "index.json"
    path.write_text(
        json.dumps({"a": {"context": [0, 9], "target": [3, 5, 7]}, "b": None, "c": {"context": [1, 4], "target": [2]}})
    )
    assert load_index(path) == {"a": ([0, 9], [3, 5, 7]), "c": ([1, 4], [2])}
    path.write_text(json.dumps({"a": {"context": [0, 9]}}))
    with pytest.raises(ILRMError, match="entry 'a' needs integer lists"):
        load_index(path)
    with pytest.raises(ILRMError, match="evaluation index not found"):
        load_index(tmp_path / "nope.json")


def test_index_sampler_for_training_and_evaluation(tmp_path):
    root = write_chunk_dataset(tmp_path / "c", num_train=3, num_test=3, num_frames=10)
    from ilrm_nerfstudio.data.sources import chunk_entries

    train_keys = [e.name for e in chunk_entries(root, "train")]
    test_keys = [e.name for e in chunk_entries(root, "test")]
    train_index = tmp_path / "train_index.json"
    train_index.write_text(json.dumps({train_keys[0]: {"context": [1, 8], "target": [4, 5]}, train_keys[1]: None}))
    eval_index = tmp_path / "eval_index.json"
    eval_index.write_text(
        json.dumps(
            {
                test_keys[2]: {"context": [0, 6], "target": [2, 3, 4]},
                test_keys[0]: None,
                "not-there": {"context": [0, 1], "target": [2]},
            }
        )
    )
    config = ILRMDataManagerConfig(
        data=root,
        image_height=16,
        image_width=16,
        num_target_views=2,
        view_sampler="index",
        train_index=train_index,
        eval_index=eval_index,
        scenes_per_batch=2,
        num_workers=0,
    )
    dm = config.setup(device="cpu", test_mode="val")
    batch = dm.next_train(0)
    assert batch["scene"] == [train_keys[0]] * 2 and batch["context_indices"].tolist() == [[1, 8]] * 2
    assert batch["target_indices"].tolist() == [[4, 5]] * 2
    (eval_batch,) = list(dm.eval_scene_batches())
    assert eval_batch["scene"] == [test_keys[2]] and eval_batch["target_indices"].tolist() == [[2, 3, 4]]
    assert dm.missing_eval_scenes == ["not-there"]


def test_wide_protocol_targets_every_8th_frame_and_kmeans_contexts():
    c2w, _ = ground_truth(40, 24, 32, seed=2)
    c2w = torch.from_numpy(c2w)
    context, targets = wide_coverage_views(c2w, 6, 8)
    assert targets == [0, 8, 16, 24, 32]
    assert len(context) == 6 and not set(context) & set(targets) and context == sorted(context)
    assert kmeans_views(c2w, 6, [i for i in range(40) if i % 8]) == context  # deterministic
    # two far-apart clusters of cameras: k = 2 takes one from each
    far = c2w.clone()
    far[20:, :3, 3] += 50.0
    picks = kmeans_views(far, 2, list(range(40)))
    assert picks[0] < 20 <= picks[1]
    with pytest.raises(ILRMError, match="leaves 7 frames for 8 context views"):
        wide_coverage_views(c2w[:9], 8, 8)


def test_single_scene_holdout_episodes():
    train, held_out = holdout_frames(30, 8)
    assert held_out == [0, 8, 16, 24] and len(train) == 26
    episodes = holdout_episodes(train, held_out, 2, 2)
    assert [t for _, t in episodes] == [[0, 8], [16, 24]]
    for context, targets in episodes:
        assert len(context) == 2 and not set(context) & set(held_out)
    assert episodes[1][0] == [15, 25]  # the nearest training frames around the targets


def project(c2w: torch.Tensor, K: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    w2c = torch.linalg.inv(c2w)
    camera = points @ w2c[:3, :3].T + w2c[:3, 3]
    uvw = camera @ K.T
    return uvw[:, :2] / uvw[:, 2:]


def test_flip_reflects_cameras_consistently_with_the_mirrored_images():
    c2w, K = ground_truth(3, 24, 32, seed=4)
    c2w, K = torch.from_numpy(c2w), torch.from_numpy(K)
    images = torch.rand(3, 3, 24, 32)
    flipped, c2w_f, K_f = flip_horizontal(images, c2w, K)
    torch.testing.assert_close(flipped[..., 0], images[..., -1])
    assert torch.allclose(torch.det(c2w_f[:, :3, :3]), torch.ones(3, dtype=torch.float64))  # still rotations
    points = torch.rand(50, 3, dtype=torch.float64) - 0.5
    reflected = points * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    for i in range(3):
        u = project(c2w[i], K[i], points)
        u_f = project(c2w_f[i], K_f[i], reflected)
        torch.testing.assert_close(u_f[:, 0], 32 - u[:, 0])  # mirrored column
        torch.testing.assert_close(u_f[:, 1], u[:, 1])
    # rays through mirrored pixel centers of the flipped cameras are the reflected rays
    o, d = rays_through(c2w[:1].float(), K[:1].float(), pixel_centers(24, 32)[None])
    o_f, d_f = rays_through(c2w_f[:1].float(), K_f[:1].float(), pixel_centers(24, 32)[None])
    mirror = torch.tensor([-1.0, 1.0, 1.0])
    torch.testing.assert_close(d_f[0].flip(1), d[0] * mirror, atol=1e-5, rtol=0)
    torch.testing.assert_close(o_f[0, 0, 0], o[0, 0, 0] * mirror)


def test_flip_augmentation_in_the_dataset(tmp_path):
    root = write_chunk_dataset(tmp_path / "c", num_train=1, num_test=1, num_frames=8)
    common = dict(
        data=root, image_height=16, image_width=16, num_target_views=2, min_frame_gap=4, max_frame_gap=4, cache_frames=0
    )
    from ilrm_nerfstudio.data.sources import chunk_entries

    entries = chunk_entries(root, "train")
    plain = ContextTargetDataset(entries, ILRMDataManagerConfig(**common), deterministic=False)
    flips = ContextTargetDataset(entries, ILRMDataManagerConfig(**common, flip_probability=1.0), deterministic=False)
    a, b = plain[(0, 0, 123, 2)], flips[(0, 0, 123, 2)]
    assert a["context_indices"].tolist() == b["context_indices"].tolist()
    torch.testing.assert_close(b["context_images"], a["context_images"].flip(-1))
    torch.testing.assert_close(b["context_K"][:, 0, 2], 16 - a["context_K"][:, 0, 2])
    reflect = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(b["target_c2w"], reflect @ a["target_c2w"] @ reflect)


def test_two_ranks_get_disjoint_shards_that_cover_the_set(tmp_path):
    groups = ["c0", "c0", "c1", "c2", "c2", "c2", "c3"]
    shards = [shard_indices(groups, rank, 2) for rank in range(2)]
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(7))
    assert not {groups[i] for i in shards[0]} & {groups[i] for i in shards[1]}  # whole chunks per rank
    few = shard_indices(["only"] * 5, 1, 2)  # fewer chunks than ranks: single scenes are dealt
    assert few == [1, 3]
    assert shard_indices(["capture"], 1, 2) == [0]  # one scene (a single capture): every rank uses it

    root = write_chunk_dataset(tmp_path / "c", num_train=7, num_test=1, num_frames=8)
    config = ILRMDataManagerConfig(
        data=root, image_height=16, image_width=16, num_target_views=2, min_frame_gap=3, max_frame_gap=5, num_workers=0
    )
    names = []
    for rank in range(2):
        dm = config.setup(device="cpu", test_mode="val", world_size=2, local_rank=rank)
        names.append({ep.name for ep in dm.train_dataset.episodes})
        batch = dm.next_train(0)
        assert set(batch["scene"]) <= names[-1]
    assert names[0] and names[1] and not names[0] & names[1]
    assert len(names[0] | names[1]) == 7


def test_bad_sampler_configuration_is_explained(tmp_path):
    root = write_chunk_dataset(tmp_path / "c", num_train=1, num_test=1, num_frames=8)
    with pytest.raises(ILRMError, match="view_sampler='index' needs"):
        ILRMDataManagerConfig(data=root, view_sampler="index").setup(device="cpu")
    with pytest.raises(ILRMError, match="min_context_views <= max_context_views"):
        ILRMDataManagerConfig(data=root, view_sampler="multiview", min_context_views=4, max_context_views=2).setup(
            device="cpu"
        )


def test_evaluation_can_use_fewer_targets_than_training(tmp_path):
    root = write_chunk_dataset(tmp_path / "c", num_train=2, num_test=2, num_frames=12)
    config = ILRMDataManagerConfig(
        data=root,
        image_height=16,
        image_width=16,
        num_target_views=4,
        eval_target_views=2,
        min_frame_gap=6,
        max_frame_gap=9,
        scenes_per_batch=2,
        num_workers=0,
    )
    dm = config.setup(device="cpu", test_mode="val")
    assert dm.next_train(0)["target_images"].shape[1] == 4
    batch = next(iter(dm.eval_scene_batches()))
    assert batch["target_images"].shape[:2] == (2, 2)
    assert batch["target_indices"][0].tolist() == [4, 7]  # at 1/3 and 2/3 of the 9-frame gap (contexts 1 and 10)
