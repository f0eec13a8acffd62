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

from ilrm_nerfstudio.core.cameras import intrinsics_matrix, normalize_poses, opengl_to_opencv, to_homogeneous
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
    from ilrm_nerfstudio.core.prediction import predict_gaussians
    from ilrm_nerfstudio.nerfstudio.run_network import load_trained_network

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


def test_input_views_and_the_networks_view_of_them(scene_dir):
    dm = scene_datamanager(scene_dir, num_input_views=4)
    assert len(dm.train_dataset) == 9 and len(dm.eval_dataset) == 3  # 12 frames, every 4th held out
    chosen = dm.input_indices
    assert len(chosen) == 4 == len(set(chosen)) and chosen == sorted(chosen)
    images, c2w, K = dm.network_views(32, 32)
    assert images.shape == (4, 3, 32, 32) and c2w.shape == (4, 4, 4) and K.shape == (4, 3, 3)
    views = dm.input_views()
    assert len(views) == 4 and views[0][1]["image"].shape == (32, 32, 3)
    # The network's views are the cached training images (no crop needed at the same size).
    torch.testing.assert_close(images[0].permute(1, 2, 0), views[0][1]["image"].float() / 255, atol=1 / 255, rtol=0)


def test_working_size_keeps_aspect_and_scales_intrinsics(tmp_path):
    """Frames are resized on load (no images_N folder): a 64x48 capture at image_size 32 becomes
    32x24 with intrinsics halved."""
    from ilrm_nerfstudio.core.prediction import network_input_size

    root = tmp_path / "data"
    generate_dataset(root, num_scenes=1, seed=3, height=48, width=64, frames_per_scene=8, test_fraction=0.0, workers=1)
    scene = next((root / "train").iterdir())
    full, small = scene_datamanager(scene, image_size=0), scene_datamanager(scene, image_size=32)
    assert full.cached_train[0]["image"].shape == (48, 64, 3) and small.cached_train[0]["image"].shape == (24, 32, 3)
    cf, cs = full.train_dataset.cameras, small.train_dataset.cameras
    torch.testing.assert_close(cs.fx, cf.fx / 2)
    torch.testing.assert_close(cs.cy, cf.cy / 2)
    box = torch.nn.functional.avg_pool2d(full.cached_train[0]["image"].permute(2, 0, 1)[None].float(), 2)[0]
    assert float((box.permute(1, 2, 0) - small.cached_train[0]["image"].float()).abs().mean()) < 4.0
    assert scene_datamanager(scene).working_scale(full.train_dataparser_outputs) == 1.0  # 512 px on the CPU
    # The network's input keeps the frame's aspect ratio (portrait too), at the training size.
    assert network_input_size((1920, 1080), (64, 64), 8) == (64, 32)
    assert network_input_size((384, 512), (256, 256), 16) == (192, 256)


def finetune_pipeline(scene: Path, **model_options):
    from ilrm_nerfstudio.nerfstudio.finetune_pipeline import ILRMFinetunePipelineConfig

    config = ILRMFinetunePipelineConfig()
    config.datamanager.data = scene
    config.datamanager.dataparser.eval_interval = 4
    config.model.report_held_out = False
    config.model.background_color = "white"
    for name, value in model_options.items():
        setattr(config.model if hasattr(config.model, name) else config.datamanager, name, value)
    return config.setup(device="cpu", test_mode="val")


def input_renders(model, views) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.stack([model.get_outputs_for_camera(camera)["rgb"] for camera, _ in views])


def test_feed_forward_start_lands_in_the_dataparser_frame(scene_dir, fake_run):
    """The predicted Gaussians render, from the dataparser's cameras of the input views, what the
    network's own render from its normalized cameras shows."""
    from ilrm_nerfstudio.nerfstudio.run_network import load_trained_network

    pipeline = finetune_pipeline(scene_dir, ilrm_run=fake_run, network_group_size=3, num_input_views=3, sh_degree=0)
    model, dm = pipeline.model, pipeline.datamanager
    assert len(model.means) == 3 * 16 * 16 and model.means.requires_grad and model.published == 10
    images, c2w, K = dm.network_views(32, 32)
    normalized, _, _ = normalize_poses(c2w)
    with torch.no_grad():
        g = load_trained_network(fake_run).network(images[None], normalized[None].float(), K[None])
        expected = render(g.map(lambda t: t[0]), normalized.float(), K, 32, 32, torch.ones(3), backend="torch").rgb
    torch.testing.assert_close(input_renders(model, dm.input_views()), expected.clamp(0, 1), atol=2e-3, rtol=0)


def test_network_start_in_groups_of_nearby_views(scene_dir, fake_run):
    """network_group_size 2: each input view goes in with its nearest frame and keeps its own
    Gaussians, exactly those of predicting that pair alone."""
    from ilrm_nerfstudio.core.prediction import predict_gaussians, view_groups
    from ilrm_nerfstudio.nerfstudio.run_network import load_trained_network

    pipeline = finetune_pipeline(scene_dir, ilrm_run=fake_run, network_group_size=2, num_input_views=3, sh_degree=0)
    dm, model = pipeline.datamanager, pipeline.model
    groups = view_groups(dm.training_c2w(), dm.input_indices, 2)
    assert [g[0] for g in groups] == dm.input_indices and all(len(set(g)) == 2 for g in groups)
    assert len(model.means) == 3 * 16 * 16
    pair = predict_gaussians(load_trained_network(fake_run), *dm.network_views(32, 32, groups[1]))
    torch.testing.assert_close(model.means[16 * 16 : 2 * 16 * 16].detach(), pair.means[: 16 * 16], atol=1e-4, rtol=1e-4)


def finetune_trainer(scene_dir, tmp_path, steps: int, **model_options):
    from ilrm_nerfstudio.nerfstudio.method_configs import finetune_trainer_config

    config = finetune_trainer_config()
    config.max_num_iterations = steps
    config.pipeline.datamanager.data = scene_dir
    config.pipeline.datamanager.dataparser.eval_interval = 4
    config.pipeline.model.report_held_out = False
    config.pipeline.model.background_color = "white"
    for name, value in model_options.items():
        setattr(config.pipeline.model, name, value)
    config.machine.device_type = "cpu"
    config.output_dir = tmp_path
    config.set_timestamp()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def test_ten_iterations_from_a_network_start_are_ours_10(scene_dir, tmp_path, fake_run):
    """`ns-train ilrm-finetune --max-num-iterations 10` after a network start (its Trainer, in
    process) is the published finetune: ten Adam steps (eps 1e-15, lr 6e-4 means, 1e-3 others),
    each on the MSE of all input views, no densification."""
    trainer = finetune_trainer(scene_dir, tmp_path, 10, ilrm_run=fake_run, sh_degree=0)
    pipeline = trainer.pipeline
    start = {k: v.detach().clone() for k, v in pipeline.model.gauss_params.items()}
    trainer.train()
    (checkpoint,) = trainer.checkpoint_dir.glob("*.ckpt")
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 9 and not any("network" in k for k in state["pipeline"])  # only the Gaussians

    # The same ten steps written out plainly.
    params = {name: torch.nn.Parameter(value.clone()) for name, value in start.items()}
    optimizers = [torch.optim.Adam([p], lr=6e-4 if n == "means" else 1e-3, eps=1e-15) for n, p in params.items()]
    views = pipeline.datamanager.input_views()
    c2w = opengl_to_opencv(to_homogeneous(torch.cat([camera.camera_to_worlds for camera, _ in views])))
    K = torch.cat([camera.get_intrinsics_matrices() for camera, _ in views])
    target = torch.stack([data["image"] for _, data in views]).float() / 255
    for _ in range(10):
        for optimizer in optimizers:
            optimizer.zero_grad()
        g = Gaussians(
            params["means"],
            params["scales"].exp(),
            params["quats"],
            params["opacities"][:, 0].sigmoid(),
            torch.cat([params["features_dc"][:, None], params["features_rest"]], 1),
        )
        out = render(g, c2w, K, 32, 32, torch.ones(3), backend="torch")
        torch.nn.functional.mse_loss(out.rgb.clamp(0, 1), target).backward()
        for optimizer in optimizers:
            optimizer.step()
    for name in start:
        torch.testing.assert_close(
            pipeline.model.gauss_params[name].detach(), params[name].detach(), atol=1e-5, rtol=1e-4
        )
        if name != "features_rest":
            assert not torch.equal(start[name], params[name].detach())


def test_splatfacto_steps_densify_and_keep_the_optimizer_consistent(scene_dir, tmp_path):
    """After a points or random start every step is splatfacto's: one frame, L1 + SSIM, gsplat's
    strategy grows and prunes, nerfstudio's optimizers follow the new parameters."""
    trainer = finetune_trainer(
        scene_dir,
        tmp_path,
        40,
        random_init=True,
        num_random=300,
        refine_every=5,
        densify_grad_thresh=1e-7,
        warmup_length=0,
    )
    model = trainer.pipeline.model
    assert model.published == 0 and model.strategy.refine_every == 5
    before = len(model.means)
    trainer.train()
    assert len(model.means) != before
    for name, param in model.gauss_params.items():
        optimizer = trainer.optimizers.optimizers[name]
        assert optimizer.param_groups[0]["params"][0] is param
        assert optimizer.state[param]["exp_avg"].shape == param.shape
    lr = trainer.optimizers.optimizers["means"].param_groups[0]["lr"]  # splatfacto's decay to 1.6e-6 at the end
    assert 1.59e-6 <= lr < 1.6e-5


def test_splatfacto_schedules_fit_the_run(scene_dir, tmp_path):
    """splatfacto's step-valued options are for 30,000 steps: a 3,000-step run scales them by 1/10."""
    pipeline = finetune_pipeline(scene_dir, random_init=True, num_random=200)
    model = pipeline.model
    model.fit_to_run(3000)
    assert model.strategy.refine_stop_iter == 1500 and model.strategy.refine_start_iter == 50
    model.train()
    model.step = 0
    assert model._get_downscale_factor() == 4 and model.sh_degree_now() == 0
    model.step = 350
    assert model._get_downscale_factor() == 2 and model.sh_degree_now() == 3
    model.step = 650
    assert model._get_downscale_factor() == 1
    model.eval()
    assert model._get_downscale_factor() == 1 and model.sh_degree_now() == 3


def test_the_time_budget_is_decided_before_training(scene_dir, tmp_path):
    """-1 iterations: the step count that fits refine-minutes, from timed probe steps, is set
    before the optimizers' schedules are made (the means' decay ends at the last step)."""
    trainer = finetune_trainer(scene_dir, tmp_path, -1, random_init=True, num_random=200, refine_minutes=0.05)
    steps = trainer.config.max_num_iterations
    assert steps >= 1
    assert trainer.config.optimizers["means"]["scheduler"].max_steps == steps


def test_steps_that_overrun_the_time_budget_are_cut(scene_dir, tmp_path, monkeypatch, capsys):
    """A plan that underestimates the step time (here: no room for growth and a tiny budget)
    stops through nerfstudio's trainer once the budget is spent, with its checkpoint written."""
    from ilrm_nerfstudio.nerfstudio.finetune_pipeline import ILRMFinetuneTrainer

    monkeypatch.setattr(ILRMFinetuneTrainer, "GROWTH", 0.05)
    trainer = finetune_trainer(scene_dir, tmp_path, -1, random_init=True, num_random=200, refine_minutes=0.01)
    planned = trainer.config.max_num_iterations
    trainer.train()
    assert trainer.step + 1 < planned
    assert "time budget of 0.01 min reached after" in capsys.readouterr().out
    assert list(tmp_path.rglob("step-*.ckpt"))


def test_bad_finetune_setups_are_clear_errors(scene_dir, tmp_path):
    from ilrm_nerfstudio.core.errors import ILRMError

    with pytest.raises(ILRMError, match="--pipeline.model.ilrm-run is needed"):
        finetune_pipeline(scene_dir, init="network")
    with pytest.raises(ILRMError, match="missing_run: ilrm run not found"):
        finetune_pipeline(scene_dir, init="network", ilrm_run=tmp_path / "missing_run")
    with pytest.raises(ILRMError, match="nowhere: data folder not found"):
        finetune_pipeline(tmp_path / "nowhere")
    with pytest.raises(ILRMError, match="use-absgrad needs gsplat's CUDA kernels"):
        finetune_pipeline(scene_dir, use_absgrad=True)
    with pytest.raises(ILRMError, match="rasterize-mode antialiased needs gsplat"):
        finetune_pipeline(scene_dir, rasterize_mode="antialiased")
    with pytest.raises(ILRMError, match="random-init True starts from random Gaussians"):
        finetune_pipeline(scene_dir, random_init=True, init="network", ilrm_run=tmp_path)


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
        "_model.gauss_params.features_rest": torch.zeros(5, 15, 3),
        "_model.gauss_params.opacities": torch.zeros(5, 1),
    }
    pipeline.load_pipeline(state | {"_model.device_indicator_param": torch.empty(0)}, step=0)
    assert len(pipeline.model.means) == 5


def test_a_published_checkpoint_starts_the_per_scene_stage(scene_dir, tmp_path):
    """--pipeline.model.ilrm-run takes the authors' files too: their protocol (views in pairs for
    the 2-view RE10K model, their pose normalization), Gaussians in the dataparser's frame."""
    from ilrm_nerfstudio.core.prediction import predict_gaussians, view_groups
    from ilrm_nerfstudio.core.published import published_normalize_poses
    from ilrm_nerfstudio.nerfstudio.run_network import load_network
    from tests.test_published import RE10K, SMALL, random_state, their_shapes, write_re10k

    path = write_re10k(tmp_path / "re10k_2view.ckpt", random_state(their_shapes(RE10K, **SMALL), seed=3))
    trained = load_network(path)
    assert trained.published and trained.context_views == 2 and trained.resolution == (256, 256)
    pipeline = finetune_pipeline(scene_dir, ilrm_run=path, network_resolution=(32, 32), sh_degree=0)
    dm, model = pipeline.datamanager, pipeline.model
    assert len(dm.input_indices) == 8 == len(model.means) // (32 * 32)  # 8 anchors, each its own pixels
    pair = view_groups(dm.training_c2w(), dm.input_indices, 2)[0]
    images, c2w, K = dm.network_views(32, 32, pair)
    _, _, scale = published_normalize_poses(c2w)
    assert scale != pytest.approx(normalize_poses(c2w)[2])  # not our rule: theirs
    mapped = predict_gaussians(trained, images, c2w, K)
    torch.testing.assert_close(model.means[: 32 * 32].detach(), mapped.means[: 32 * 32], atol=1e-4, rtol=1e-4)


def test_help_shows_splatfacto_options_and_ours():
    """`ns-train ilrm-finetune --help`: splatfacto's options (they work) and the stage's own, none
    of the ray-sampling options a full-image data manager does not have."""
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
    assert "train-num-rays-per-batch" not in result.stdout and "pixel-sampler" not in result.stdout
    for option in (
        "pipeline.model.resolution-schedule",
        "pipeline.model.ssim-lambda",
        "pipeline.model.use-scale-regularization",
        "pipeline.model.camera-optimizer",
        "pipeline.model.refine-minutes",
        "pipeline.model.published-steps",
        "pipeline.model.init",
        "pipeline.datamanager.image-size",
    ):
        assert option in result.stdout, option


def test_ilrm_checkpoint_holds_an_eval_scene_in_the_viewer_frame(tmp_path):
    """hold_eval_scene: the Gaussians stored for the single-scene tools, rendered from the scene's
    cameras moved into the viewer frame (held_scene.json), equal the network's renders of the
    targets (normalized cameras); the viewer's dataset has the same cameras."""
    import json

    from ilrm_nerfstudio.core.frames import to_viewer_frame
    from ilrm_nerfstudio.nerfstudio.ilrm_model import ILRMModel
    from ilrm_nerfstudio.nerfstudio.viewer_scene import hold_eval_scene

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
    scene = pipeline.datamanager.eval_dataset.episode_scene(0)
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
