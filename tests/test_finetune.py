"""The per-scene stage in process (fast): frames, network loading, view selection, the finetune
recipe (the nerfstudio trainer runs the published finetune exactly), refinement and densification, the
scene an ilrm checkpoint holds. The real CLIs are run in tests/test_tools.py."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml
from gsplat.utils import normalized_quat_to_rotmat

from ilrm_nerfstudio.core.cameras import intrinsics_matrix, normalize_poses
from ilrm_nerfstudio.core.frames import normalized_to_world, quat_multiply, rotmat_to_quat, transform_gaussians
from ilrm_nerfstudio.core.gaussians import Gaussians
from ilrm_nerfstudio.data.synthetic import generate_dataset
from ilrm_nerfstudio.render.rendering import render

torch.set_num_threads(1)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    return normalized_quat_to_rotmat(torch.nn.functional.normalize(quats, dim=-1))


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    q = torch.nn.functional.normalize(torch.randn(4, generator=generator, dtype=torch.float64), dim=0)
    return quat_to_rotmat(q)


def look_at_cameras(count: int, radius: float = 3.0) -> torch.Tensor:
    """OpenCV c2w [count, 4, 4] on an arc, looking at the origin."""
    cams = []
    for i in range(count):
        angle = -0.4 + 0.8 * i / max(1, count - 1)
        position = torch.tensor([radius * math.sin(angle), -0.3, -radius * math.cos(angle)], dtype=torch.float64)
        forward = torch.nn.functional.normalize(-position, dim=0)
        right = torch.nn.functional.normalize(
            torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), forward), dim=0
        )
        down = torch.linalg.cross(forward, right)
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, position
        cams.append(c2w)
    return torch.stack(cams)


def random_gaussians(n: int, sh_degree: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=(torch.rand(n, 3, generator=g) - 0.5) * 1.5,
        scales=0.03 + 0.08 * torch.rand(n, 3, generator=g),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        opacities=0.3 + 0.6 * torch.rand(n, generator=g),
        sh=0.5 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g),
    )


def test_rotmat_to_quat_round_trip():
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        R = random_rotation(generator)
        q = rotmat_to_quat(R)
        torch.testing.assert_close(quat_to_rotmat(q), R, atol=1e-10, rtol=0)
    # Product of quaternions = product of rotations.
    a, b = rotmat_to_quat(random_rotation(generator)), rotmat_to_quat(random_rotation(generator))
    torch.testing.assert_close(
        quat_to_rotmat(quat_multiply(a, b)), quat_to_rotmat(a) @ quat_to_rotmat(b), atol=1e-10, rtol=0
    )


@pytest.mark.parametrize("sh_degree", [0, 2])
def test_similarity_transform_of_gaussians_matches_moved_cameras(sh_degree):
    """Rendering transformed Gaussians from transformed cameras gives the same images (means,
    scales, rotations and the view-dependent SH bands all move correctly)."""
    generator = torch.Generator().manual_seed(2)
    g = random_gaussians(300, sh_degree)
    c2w = look_at_cameras(3)
    K = intrinsics_matrix(*(torch.tensor([40.0, 40.0, 24.0, 20.0]).expand(3, 4).unbind(-1)))
    R, t, s = random_rotation(generator), torch.tensor([0.4, -1.0, 2.0], dtype=torch.float64), 2.5
    S = torch.eye(4, dtype=torch.float64)
    S[:3, :3], S[:3, 3] = R, t
    moved_c2w = S @ c2w
    moved_c2w[:, :3, 3] = s * (R @ c2w[:, :3, 3].T).T + t
    moved = transform_gaussians(g, R.float(), t.float(), s)
    a = render(g, c2w.float(), K, 48, 40, torch.ones(3), backend="torch").rgb
    b = render(moved, moved_c2w.float(), K, 48, 40, torch.ones(3), backend="torch").rgb
    assert float((a - 1).abs().mean()) > 0.05  # something is drawn
    torch.testing.assert_close(b, a, atol=2e-4, rtol=0)


def test_normalized_to_world_undoes_the_pose_normalization():
    """Gaussians in the normalized frame of some context cameras, mapped to the world frame,
    render from the world cameras exactly as they did from the normalized cameras."""
    generator = torch.Generator().manual_seed(3)
    R = random_rotation(generator)
    world = look_at_cameras(4, radius=7.0)
    world[:, :3, :] = torch.einsum("ij,njk->nik", R, world[:, :3, :])
    world[:, :3, 3] += torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64)
    normalized, _, _ = normalize_poses(world)
    g = random_gaussians(200, 1)
    g = dataclasses.replace(
        g, means=g.means + normalized[:, :3, 3].mean(0).float() + 2.0 * normalized[0, :3, 2].float()
    )
    K = intrinsics_matrix(*(torch.tensor([40.0, 40.0, 24.0, 20.0]).expand(4, 4).unbind(-1)))
    a = render(g, normalized.float(), K, 48, 40, torch.ones(3), backend="torch").rgb
    b = render(normalized_to_world(g, world), world.float(), K, 48, 40, torch.ones(3), backend="torch").rgb
    assert float((a - 1).abs().mean()) > 0.01
    torch.testing.assert_close(b, a, atol=2e-4, rtol=0)


# -- with a (tiny, untrained) network ------------------------------------------------------------


def tiny_trainer_config(tmp_path: Path):
    from ilrm_nerfstudio.nerfstudio.method_configs import ilrm_small_method

    config = dataclasses.replace(ilrm_small_method.config)
    config.pipeline = dataclasses.replace(config.pipeline)
    config.pipeline.datamanager = dataclasses.replace(config.pipeline.datamanager, image_height=32, image_width=32)
    config.pipeline.model = dataclasses.replace(
        config.pipeline.model,
        network=dataclasses.replace(config.pipeline.model.network, width=32, num_heads=2, num_layers=1),
    )
    return config


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    """A run folder as ns-train writes it (config.yml, nerfstudio_models/step-*.ckpt) holding a
    freshly initialized tiny network."""
    from ilrm_nerfstudio.core.network import ILRM

    run = tmp_path_factory.mktemp("run")
    config = tiny_trainer_config(run)
    (run / "config.yml").write_text(yaml.dump(config), "utf8")
    torch.manual_seed(0)
    network = ILRM(dataclasses.replace(config.pipeline.model.network, sh_degree=0))
    state = {f"_model.network.{k}": v for k, v in network.state_dict().items()}
    state["_model.gauss_params.means"] = torch.zeros(0, 3)
    (run / "nerfstudio_models").mkdir()
    torch.save({"step": 7, "pipeline": state}, run / "nerfstudio_models" / "step-000000007.ckpt")
    return run


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_dataset(root, num_scenes=2, seed=5, height=32, width=32, frames_per_scene=12, test_fraction=0.5, workers=1)
    return next((root / "test").iterdir())


def test_load_trained_network_from_run_folder_config_or_checkpoint(fake_run):
    from ilrm_nerfstudio.nerfstudio.run_network import load_trained_network

    saved = torch.load(fake_run / "nerfstudio_models" / "step-000000007.ckpt", weights_only=True)["pipeline"]
    for path in (fake_run, fake_run / "config.yml", fake_run / "nerfstudio_models" / "step-000000007.ckpt"):
        trained = load_trained_network(path)
        assert trained.resolution == (32, 32) and trained.sh_degree == 0
        for name, value in trained.network.state_dict().items():
            torch.testing.assert_close(value, saved[f"_model.network.{name}"])
        assert not any(p.requires_grad for p in trained.network.parameters())


def test_missing_run_is_a_clear_error(tmp_path):
    from ilrm_nerfstudio.core.errors import ILRMError
    from ilrm_nerfstudio.nerfstudio.run_network import load_trained_network

    with pytest.raises(ILRMError, match="ilrm run not found"):
        load_trained_network(tmp_path / "nowhere")
    (tmp_path / "config.yml").write_text("{}")
    with pytest.raises(ILRMError, match="no checkpoint"):
        load_trained_network(tmp_path)


def test_prediction_does_not_depend_on_the_world_frame(fake_run):
    """The network sees normalized cameras; predicting in two world frames that differ by a
    similarity gives Gaussians that differ by the same similarity."""
    from ilrm_nerfstudio.nerfstudio.run_network import load_trained_network, predict_gaussians

    trained = load_trained_network(fake_run)
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(3, 3, 32, 32, generator=generator)
    c2w = look_at_cameras(3)
    K = intrinsics_matrix(*(torch.tensor([30.0, 30.0, 16.0, 16.0]).expand(3, 4).unbind(-1)))
    R, t, s = random_rotation(generator), torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64), 0.3
    moved = c2w.clone()
    moved[:, :3, :3] = R @ c2w[:, :3, :3]
    moved[:, :3, 3] = s * (R @ c2w[:, :3, 3].T).T + t
    a = predict_gaussians(trained, images, c2w, K)
    b = predict_gaussians(trained, images, moved, K)
    expected = transform_gaussians(a, R.float(), t.float(), s)
    torch.testing.assert_close(b.means, expected.means, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.scales, expected.scales, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(quat_to_rotmat(b.quats), quat_to_rotmat(expected.quats), atol=1e-4, rtol=0)


def scene_datamanager(scene: Path, **options):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from ilrm_nerfstudio.nerfstudio.finetune_datamanager import ILRMSceneDataManagerConfig

    dataparser = NerfstudioDataParserConfig(eval_mode="interval", eval_interval=4)
    return ILRMSceneDataManagerConfig(data=scene, dataparser=dataparser, **options).setup(device="cpu", test_mode="val")


def test_input_view_selection(scene_dir):
    all_views = scene_datamanager(scene_dir, view_selection="all")
    n = len(all_views.train_dataset)
    assert n == 9 and len(all_views.eval_dataset) == 3  # 12 frames, every 4th held out
    assert all_views.input_indices == list(range(n))
    assert scene_datamanager(scene_dir, view_selection="every-kth", view_stride=3).input_indices == [0, 3, 6]
    chosen = scene_datamanager(scene_dir, view_selection="kmeans", num_input_views=4).input_indices
    assert len(chosen) == 4 == len(set(chosen)) and chosen == sorted(chosen)
    images, c2w, K = all_views.network_views(32, 32)
    assert images.shape == (n, 3, 32, 32) and c2w.shape == (n, 4, 4) and K.shape == (n, 3, 3)
    cameras, items = all_views.input_views
    assert len(cameras) == n and items[0]["image"].shape == (32, 32, 3) and items[0]["image"].dtype == torch.uint8
    # The network's views are the training images (no crop needed at the same size).
    torch.testing.assert_close(images[0].permute(1, 2, 0), items[0]["image"].float() / 255, atol=1 / 255, rtol=0)
    # A published step: every input view at once.
    step_cameras, batch = all_views.next_train(0)
    assert len(step_cameras) == n and batch["image"].shape == (n, 32, 32, 3)


def test_refinement_epochs_cover_every_frame_in_batches(scene_dir):
    dm = scene_datamanager(scene_dir, view_selection="kmeans", num_input_views=3)
    for per_step, expected in ((1, 9), (2, 5), (0, 1)):
        batches = dm.epoch_batches(3, "all", per_step)
        assert len(batches) == expected
        seen = torch.cat([batch["indices"] for _, batch in batches]).tolist()
        assert sorted(seen) == list(range(9))  # every training frame once
        for cameras, batch in batches:
            torch.testing.assert_close(cameras.camera_to_worlds, dm.train_views[0].camera_to_worlds[batch["indices"]])
    orders = [torch.cat([b["indices"] for _, b in dm.epoch_batches(e, "all", 1)]).tolist() for e in (0, 1)]
    assert orders[0] != orders[1]  # shuffled per epoch
    inputs = dm.epoch_batches(0, "input", 0)
    assert len(inputs) == 1 and inputs[0][1]["indices"].tolist() == dm.input_indices


def test_working_size_keeps_aspect_and_scales_intrinsics_exactly(tmp_path):
    """Frames are resized on load (no images_N folder): a 64x48 capture at image_size 32 becomes
    32x24 with intrinsics halved, and a point projects to the same relative place."""
    from ilrm_nerfstudio.nerfstudio.run_network import network_input_size

    root = tmp_path / "data"
    generate_dataset(root, num_scenes=1, seed=3, height=48, width=64, frames_per_scene=8, test_fraction=0.0, workers=1)
    scene = next((root / "train").iterdir())
    full = scene_datamanager(scene, view_selection="all", image_size=0)
    small = scene_datamanager(scene, view_selection="all", image_size=32)
    (cf, items_full), (cs, items_small) = full.train_views, small.train_views
    assert items_full[0]["image"].shape == (48, 64, 3) and items_small[0]["image"].shape == (24, 32, 3)
    torch.testing.assert_close(cs.fx, cf.fx / 2)
    torch.testing.assert_close(cs.cx, cf.cx / 2)
    torch.testing.assert_close(cs.cy, cf.cy / 2)
    # The content agrees: the downsized frame equals the full frame box-averaged.
    box = torch.nn.functional.avg_pool2d(items_full[0]["image"].permute(2, 0, 1)[None].float(), 2)[0].permute(1, 2, 0)
    assert float((box - items_small[0]["image"].float()).abs().mean()) < 4.0
    # On the CPU the default is 512 px (nothing to do here), on CUDA the full size.
    assert full.image_size == 0 and scene_datamanager(scene, view_selection="all").image_size == 512
    # The network's input keeps the frame's aspect ratio (portrait too), at the training size.
    assert network_input_size((1920, 1080), (64, 64), 8) == (64, 32)
    assert network_input_size((384, 512), (256, 256), 16) == (192, 256)


def finetune_model(datamanager, **options):
    from ilrm_nerfstudio.nerfstudio.finetune_model import ILRMFinetuneModelConfig

    config = ILRMFinetuneModelConfig(report_held_out=False, **options)
    return config.setup(scene_box=datamanager.train_dataset.scene_box, num_train_data=len(datamanager.train_dataset))


def test_feed_forward_start_lands_in_the_dataparser_frame(scene_dir, fake_run):
    """The predicted Gaussians render, from the dataparser's cameras of the input views, what the
    network's own render from its normalized cameras shows."""
    from ilrm_nerfstudio.nerfstudio.run_network import load_trained_network

    dm = scene_datamanager(scene_dir, view_selection="kmeans", num_input_views=3)
    model = finetune_model(dm, ilrm_run=fake_run, network_group_size=3)  # one pass over the 3 views
    model.initialize_gaussians(dm)
    assert len(model.means) == 3 * 16 * 16 and model.means.requires_grad
    trained = load_trained_network(fake_run)
    images, c2w, K = dm.network_views(32, 32)
    normalized, _, _ = normalize_poses(c2w)
    with torch.no_grad():
        g = trained.network(images[None], normalized[None].float(), K[None])
        expected = render(
            g.map(lambda t: t[0]), normalized.float(), K, 32, 32, torch.ones(3), backend="torch"
        ).rgb.clamp(0, 1)
        cameras, _ = dm.input_views
        ours = model.render_camera_batch(cameras)["rgb"]
    torch.testing.assert_close(ours, expected, atol=2e-3, rtol=0)


def finetune_trainer(scene_dir, tmp_path, epochs: int, **model_options):
    from ilrm_nerfstudio.nerfstudio.method_configs import finetune_trainer_config

    config = finetune_trainer_config(epochs=epochs)
    config.pipeline.datamanager.data = scene_dir
    config.pipeline.datamanager.dataparser.eval_interval = 4
    config.pipeline.model.report_held_out = False
    for name, value in model_options.items():
        setattr(config.pipeline.model, name, value)
    config.machine.device_type = "cpu"
    config.output_dir = tmp_path
    config.logging.local_writer.enable = False
    config.set_timestamp()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def test_network_start_in_groups_of_nearby_views(scene_dir, fake_run):
    """network_group_size 2: each input view goes in with its nearest frame and keeps its own
    Gaussians, exactly those of predicting that pair alone."""
    from ilrm_nerfstudio.nerfstudio.run_network import load_trained_network, predict_gaussians, view_groups

    dm = scene_datamanager(scene_dir, view_selection="kmeans", num_input_views=3)
    c2w = dm.training_c2w()
    groups = view_groups(c2w, dm.input_indices, 2)
    assert [g[0] for g in groups] == dm.input_indices and all(len(set(g)) == 2 for g in groups)
    distances = (c2w[:, :3, 3] - c2w[groups[0][0], :3, 3]).norm(dim=-1)
    distances[groups[0][0]] = float("inf")
    assert int(distances.argmin()) == groups[0][1]  # the nearest frame (all face the same way here)
    model = finetune_model(dm, ilrm_run=fake_run, network_group_size=2)
    model.initialize_gaussians(dm)
    assert len(model.means) == 3 * 16 * 16
    pair = predict_gaussians(load_trained_network(fake_run), *dm.network_views(32, 32, groups[1]))
    torch.testing.assert_close(model.means[16 * 16 : 2 * 16 * 16].detach(), pair.means[: 16 * 16], atol=1e-4, rtol=1e-4)


def test_nerfstudio_trainer_runs_the_published_recipe(scene_dir, tmp_path, fake_run):
    """After a network start, the first epochs of `ns-train ilrm-finetune` (its Trainer, in
    process) are the published finetune: one Adam step (eps 1e-15, lr 6e-4 means, 1e-3 others) per
    epoch on the MSE of all input views."""
    trainer = finetune_trainer(scene_dir, tmp_path, epochs=3, ilrm_run=fake_run)
    pipeline = trainer.pipeline
    start = {k: v.detach().clone() for k, v in pipeline.model.gauss_params.items()}
    assert pipeline.model.plan.paper_epochs == 3 and pipeline.model.plan.epochs == 3
    assert all(o.defaults["eps"] == 1e-15 for o in trainer.optimizers.optimizers.values())
    trainer.train()
    checkpoint = sorted((trainer.checkpoint_dir).glob("*.ckpt"))[-1]
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 2 and set(state["pipeline"]) >= {f"_model.gauss_params.{k}" for k in start}
    assert not any("network" in k for k in state["pipeline"])  # only the Gaussians

    # The same three steps written out plainly.
    reference = finetune_model(pipeline.datamanager)
    for name, value in start.items():
        reference.gauss_params[name] = torch.nn.Parameter(value.clone())
    optimizers = {
        n: torch.optim.Adam([p], lr=6e-4 if n == "means" else 1e-3, eps=1e-15)
        for n, p in reference.gauss_params.items()
    }
    cameras, items = pipeline.datamanager.input_views
    c2w, K = reference.opencv_cameras(cameras)
    target = torch.stack([i["image"] for i in items]).float() / 255
    reference.train()
    for _ in range(3):
        for optimizer in optimizers.values():
            optimizer.zero_grad()
        out = reference.render_views(reference.scene_gaussians(), c2w, K, 32, 32)
        torch.nn.functional.mse_loss(out["rgb"], target).backward()
        for optimizer in optimizers.values():
            optimizer.step()
    for name in start:
        torch.testing.assert_close(
            pipeline.model.gauss_params[name].detach(), reference.gauss_params[name].detach(), atol=1e-5, rtol=1e-4
        )
        if name != "features_rest":
            assert not torch.equal(start[name], reference.gauss_params[name].detach())


def test_refinement_densifies_and_keeps_the_optimizer_consistent(scene_dir, tmp_path):
    """A points start: every epoch is a refinement epoch (one Adam step per frame), gsplat's
    strategy grows and prunes, and nerfstudio's optimizers follow the new parameters."""
    trainer = finetune_trainer(
        scene_dir,
        tmp_path,
        epochs=3,
        init="random",
        random_init_count=300,
        densify_every=3,
        densify_grad=1e-6,
        densify_start=0.0,
        densify_stop=0.9,
    )
    model = trainer.pipeline.model
    assert model.plan.paper_epochs == 0 and model.plan.steps_per_epoch == 9
    before = len(model.means)
    trainer.train()
    assert len(model.means) != before
    for name, param in model.gauss_params.items():
        optimizer = trainer.optimizers.optimizers[name]
        assert optimizer.param_groups[0]["params"][0] is param and trainer.optimizers.parameters[name][0] is param
        assert optimizer.state[param]["exp_avg"].shape == param.shape
    # The means' learning rate decayed (3DGS schedule), times the scene extent.
    lr = trainer.optimizers.optimizers["means"].param_groups[0]["lr"]
    assert 1.6e-4 * model.scene_extent * 0.01 <= lr < 1.6e-4 * model.scene_extent


def test_the_first_refinement_step_keeps_the_opacities(scene_dir, tmp_path):
    """gsplat's strategy resets every opacity at steps divisible by reset_every, step 0 included:
    the refinement must not start by making the scene transparent."""
    trainer = finetune_trainer(scene_dir, tmp_path, epochs=2, init="random", random_init_count=300)
    model, dm = trainer.pipeline.model, trainer.pipeline.datamanager
    model.train()
    cameras, batch = dm.epoch_batches(0, "all", 1)[0]
    sum(model.get_loss_dict(model(cameras), batch).values()).backward()
    before = model.opacities.detach().clone()
    model.after_optimizer_step(0, 0)
    torch.testing.assert_close(model.opacities.detach(), before)


def test_auto_budget_fits_the_time(scene_dir, tmp_path, monkeypatch):
    """-1 epochs: the refinement epochs come from a timed probe and the time budget; an epoch that
    would overrun the budget renders fewer frames."""
    trainer = finetune_trainer(
        scene_dir, tmp_path, epochs=-1, init="random", random_init_count=200, refine_minutes=0.05
    )
    model = trainer.pipeline.model
    epochs = trainer.config.max_num_iterations
    assert epochs >= 1 and model.time_budget == pytest.approx(3.0)
    assert epochs * 9 * model.seconds_per_view <= 3.0 * 1.5 + 9 * model.seconds_per_view
    model.refine_started = __import__("time").perf_counter() - 2.99  # almost out of time
    assert model.frames_this_epoch(0, 9) == 1


def test_ilrm_checkpoint_holds_an_eval_scene_in_the_viewer_frame(tmp_path):
    """hold_eval_scene: the Gaussians stored for the single-scene tools, rendered from the scene's
    cameras moved into the viewer frame (held_scene.json), equal the network's renders of the
    targets (normalized cameras); the viewer's dataset has the same cameras."""
    import json

    from ilrm_nerfstudio.nerfstudio.ilrm_model import ILRMModel
    from ilrm_nerfstudio.nerfstudio.viewer_scene import episode_scene, hold_eval_scene, to_viewer_frame

    root = tmp_path / "data"
    generate_dataset(
        root, num_scenes=3, seed=2, height=32, width=32, frames_per_scene=12, test_fraction=0.34, workers=1
    )
    config = tiny_trainer_config(tmp_path).pipeline
    config.datamanager.data = root
    config.datamanager.num_workers = 0
    config.model.viewer_scene = "0"
    pipeline = config.setup(device="cpu", test_mode="test")
    model: ILRMModel = pipeline.model
    hold_eval_scene(model, pipeline.datamanager, "0", run_dir=tmp_path / "run")
    assert len(model.means) == 2 * 16 * 16
    record = json.loads((tmp_path / "run" / "held_scene.json").read_text())
    batch = pipeline.datamanager.eval_batch([0])
    assert record["scene"] == batch["scene"][0]
    with torch.no_grad():
        expected = model(batch)["rgb"][0]  # [T, H, W, 3]
    scene = episode_scene(pipeline.datamanager, 0)
    targets = batch["target_indices"][0].tolist()
    c2w = to_viewer_frame(scene.c2w[targets], torch.tensor(record["transform"]), record["scale"])
    with torch.no_grad():
        ours = model.render_views(model.scene_gaussians(), c2w.float(), batch["target_K"][0], 32, 32)["rgb"]
    torch.testing.assert_close(ours, expected, atol=2e-3, rtol=0)
    positions = c2w[:, :3, 3]
    assert float(positions.abs().max()) <= 1.0 + 1e-6  # the viewer frame: cameras inside [-1, 1]
    # The viewer's training dataset (test mode): that scene's frames, cameras in the same frame.
    views = pipeline.datamanager.train_dataset
    assert len(views) == 12 and views[0]["image"].shape == (32, 32, 3)
    viewer_c2w = views.cameras.camera_to_worlds[targets]
    torch.testing.assert_close(viewer_c2w[:, :, 3], c2w[:, :3, 3].float(), atol=1e-5, rtol=0)


def test_bad_finetune_setups_are_clear_errors(scene_dir, tmp_path):
    from ilrm_nerfstudio.core.errors import ILRMError
    from ilrm_nerfstudio.nerfstudio.finetune_pipeline import ILRMFinetunePipelineConfig

    config = ILRMFinetunePipelineConfig()
    config.datamanager.data = scene_dir
    config.model.init = "network"
    with pytest.raises(ILRMError, match="--pipeline.model.ilrm-run is needed"):
        config.setup(device="cpu", test_mode="val")
    config.model.ilrm_run = tmp_path / "missing_run"
    with pytest.raises(ILRMError, match="missing_run: ilrm run not found"):
        config.setup(device="cpu", test_mode="val")
    config.datamanager.data = tmp_path / "nowhere"
    with pytest.raises(ILRMError, match="nowhere: data folder not found"):
        config.setup(device="cpu", test_mode="val")


def test_optional_loss_terms(scene_dir):
    dm = scene_datamanager(scene_dir, view_selection="every-kth", view_stride=4)
    model = finetune_model(dm, init="random", random_init_count=200, ssim_weight=0.2)
    model.initialize_gaussians(dm)
    cameras, items = dm.input_views
    batch = {"image": torch.stack([i["image"] for i in items])}
    losses = model.get_loss_dict(model.get_outputs(cameras), batch)
    assert set(losses) == {"l1_loss", "ssim_loss"} and 0 < float(losses["ssim_loss"]) <= 0.4
    assert set(model.get_loss_dict(model.get_outputs(cameras), batch, published=True)) == {"mse_loss"}


def test_inference_mode_needs_no_data(tmp_path):
    """ns-export and ns-render camera-path load a per-scene run from its checkpoint alone, even
    when the scene's folder is gone."""
    from ilrm_nerfstudio.nerfstudio.finetune_pipeline import ILRMFinetunePipelineConfig

    config = ILRMFinetunePipelineConfig()
    config.datamanager.data = tmp_path / "moved_away"
    pipeline = config.setup(device="cpu", test_mode="inference")
    assert len(pipeline.datamanager.train_dataset) == 0 and len(pipeline.model.means) == 0
    state = {
        "_model.gauss_params.means": torch.zeros(5, 3),
        "_model.gauss_params.scales": torch.zeros(5, 3),
        "_model.gauss_params.quats": torch.ones(5, 4),
        "_model.gauss_params.features_dc": torch.zeros(5, 3),
        "_model.gauss_params.features_rest": torch.zeros(5, 0, 3),
        "_model.gauss_params.opacities": torch.zeros(5, 1),
    }
    pipeline.load_pipeline(state | {"_model.device_indicator_param": torch.empty(0)}, step=0)
    assert len(pipeline.model.means) == 5


def test_a_published_checkpoint_starts_the_per_scene_stage(scene_dir, tmp_path):
    """--pipeline.model.ilrm-run takes the authors' files too: their protocol (views in pairs for
    the 2-view RE10K model, their pose normalization), Gaussians in the dataparser's frame."""
    from ilrm_nerfstudio.core.published import published_normalize_poses
    from ilrm_nerfstudio.nerfstudio.run_network import load_network, predict_gaussians
    from tests.test_published import RE10K, SMALL, random_state, their_shapes, write_re10k

    path = write_re10k(tmp_path / "re10k_2view.ckpt", random_state(their_shapes(RE10K, **SMALL), seed=3))
    trained = load_network(path)
    assert trained.published and trained.context_views == 2 and trained.resolution == (256, 256)
    dm = scene_datamanager(scene_dir, view_selection="kmeans")
    model = finetune_model(dm, ilrm_run=path, network_resolution=(32, 32))
    model.initialize_gaussians(dm)
    assert len(dm.input_indices) == 8 == len(model.means) // (32 * 32)  # 8 anchors, each its own pixels
    # The first anchor's Gaussians: its pair through the published normalization, mapped back.
    from ilrm_nerfstudio.nerfstudio.run_network import view_groups

    pair = view_groups(dm.training_c2w(), dm.input_indices, 2)[0]
    images, c2w, K = dm.network_views(32, 32, pair)
    _, _, scale = published_normalize_poses(c2w)
    assert scale != pytest.approx(normalize_poses(c2w)[2])  # not our rule: theirs
    mapped = predict_gaussians(trained, images, c2w, K)
    torch.testing.assert_close(model.means[: 32 * 32].detach(), mapped.means[: 32 * 32], atol=1e-4, rtol=1e-4)


def test_help_lists_only_options_the_method_uses():
    """`ns-train ilrm-finetune --help`: none of the Splatfacto or ray-sampling options that the
    per-scene stage inherited but ignores."""
    import subprocess
    import sys

    ns_train = Path(sys.executable).parent / "ns-train"
    result = subprocess.run(
        [ns_train, "ilrm-finetune", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for ignored in (
        "use-bilateral-grid",
        "cull-alpha-thresh",
        "resolution-schedule",
        "num-random",
        "densify-grad-thresh",
        "ssim-lambda",
        "train-num-rays-per-batch",
        "pixel-sampler",
        "enable-collider",
        "eval-num-rays-per-chunk",
        "--prompt",
    ):
        assert ignored not in result.stdout, ignored
    for ours in (
        "pipeline.model.refine-minutes",
        "pipeline.model.init",
        "pipeline.datamanager.image-size",
        "pipeline.model.paper-epochs",
    ):
        assert ours in result.stdout, ours
