"""Bad input on the single-scene path (`ns-train ilrm-finetune --data CAPTURE` and nerfstudio's tools
on its runs): damaged copies of a small generated capture (12 frames, 32x32, every 4th frame held
out in process). nerfstudio's dataparser reads the capture; what it cannot read is one ILRMError
line naming the file (and, for transforms.json, the frame and the value); what it returns is checked
once, unusable frames dropped with one warning line each and the rest used. A few kinds go through
the real CLIs (return code, one line on stderr, no traceback)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.data.synthetic import generate_dataset
from tests.test_finetune import finetune_pipeline, finetune_trainer, scene_datamanager, tiny_trainer_config

torch.set_num_threads(1)
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, num_scenes=1, seed=5, height=32, width=32, frames_per_scene=12, test_fraction=0.0, workers=1)
    return next((root / "train").iterdir())


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    """An ilrm run folder (config.yml, nerfstudio_models/step-7.ckpt) with a tiny untrained network."""
    import dataclasses

    from ilrm_nerfstudio.core.network import ILRM

    run = tmp_path_factory.mktemp("run")
    config = tiny_trainer_config(run)
    (run / "config.yml").write_text(yaml.dump(config), "utf8")
    network = ILRM(dataclasses.replace(config.pipeline.model.network, sh_degree=0))
    (run / "nerfstudio_models").mkdir()
    state = {f"_model.network.{k}": v for k, v in network.state_dict().items()}
    torch.save({"step": 7, "pipeline": state}, run / "nerfstudio_models" / "step-000000007.ckpt")
    return run


def damaged(capture: Path, tmp_path: Path, edit=None, files=None, name: str = "capture") -> Path:
    """A copy of the capture; `edit(meta)` changes its transforms.json, `files(folder)` its files."""
    copy = tmp_path / name
    shutil.copytree(capture, copy)
    if edit is not None:
        meta = json.loads((copy / "transforms.json").read_text())
        edit(meta)
        (copy / "transforms.json").write_text(json.dumps(meta))
    if files is not None:
        files(copy)
    return copy


def frame_names(dataset) -> list[str]:
    return [Path(p).name for p in dataset.image_filenames]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def image(folder: Path, index: int) -> Path:
    return folder / "images" / f"frame_{index:05d}.png"


# ------------------------------------------------------------------------------------------------
# transforms.json as a whole: one line naming the file
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{ not json", "not valid JSON"),
        (b"", r"not valid JSON \(Expecting value at line 1, column 1\)"),
        (b'{"frames": "\xff\xfe"}', "not UTF-8"),
        (b"[1, 2]", "must be a JSON object with a 'frames' list"),
        (b'{"frames": []}', "no 'frames'"),
        (None, "is a folder, not the scene's transforms.json file"),
    ],
)
def test_an_unreadable_transforms_json_is_one_line(capture, tmp_path, content, message):
    def write(folder: Path) -> None:
        (folder / "transforms.json").unlink()
        if content is None:
            (folder / "transforms.json").mkdir()
        else:
            (folder / "transforms.json").write_bytes(content)

    folder = damaged(capture, tmp_path, files=write)
    with pytest.raises(ILRMError, match=message) as error:
        scene_datamanager(folder)
    assert str(error.value).startswith(f"{folder / 'transforms.json'}: ")


def test_a_folder_without_transforms_json_says_which_dataparser_to_use(capture, tmp_path):
    folder = damaged(capture, tmp_path, files=lambda f: (f / "transforms.json").unlink())
    with pytest.raises(ILRMError, match=r"transforms.json: not found; .*colmap"):
        scene_datamanager(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(fl_x="fifty"), "fl_x must be a number, got 'fifty'"),
        (lambda m: m.update(fl_x=-30.0), "fl_x must be > 0, got -30.0"),  # never reaches the model
        (lambda m: m.update(fl_y=math.nan), "fl_y must be a number|fl_y must be finite"),
        (lambda m: m.update(h=None), "h must be a number, got None"),
        (lambda m: m.update(k1="a"), "distortion coefficient k1 must be a number"),
        (lambda m: m.update(camera_model="OPENCV_FISHEYE"), "camera_model 'OPENCV_FISHEYE' is not supported"),
        (lambda m: m.update(camera_model="FOO"), "camera_model 'FOO' is not supported"),
        (lambda m: m.update(k4=0.1), "k4 is not supported for perspective cameras"),
        (lambda m: m.update(frames={"a": 1}), "no 'frames'"),
        # what the package's reader does not read: nerfstudio's own error, in one line naming the data
        (lambda m: m.update(applied_transform=[[1, 0], [0, 1]]), "nerfstudio's dataparser .* could not read it"),
    ],
)
def test_a_bad_value_for_every_frame_is_one_line(capture, tmp_path, edit, message):
    folder = damaged(capture, tmp_path, edit)
    with pytest.raises(ILRMError, match=message) as error:
        scene_datamanager(folder)
    assert str(error.value).startswith(f"{folder}") and "\n" not in str(error.value)


def test_intrinsics_missing_everywhere_is_one_line(capture, tmp_path):
    folder = damaged(capture, tmp_path, lambda m: m.pop("w"))
    with pytest.raises(ILRMError, match=r"transforms.json: frame 0 \(images/frame_00000.png\): missing camera"):
        scene_datamanager(folder)


# ------------------------------------------------------------------------------------------------
# One bad frame: dropped with a warning naming it (the file's frame number), the rest is used
# ------------------------------------------------------------------------------------------------


def per_frame_focal(meta: dict, frame: int, value) -> None:
    focal = meta.pop("fl_x")
    for f in meta["frames"]:
        f["fl_x"] = focal
    meta["frames"][frame]["fl_x"] = value


def set_pose(frame: int, value):
    return lambda m: m["frames"][frame].update(transform_matrix=value)


def scaled_pose(meta: dict) -> None:
    pose = np.asarray(meta["frames"][4]["transform_matrix"])
    pose[:3, :3] *= 2.0
    meta["frames"][4]["transform_matrix"] = pose.tolist()


def inf_in_frame_2(meta: dict) -> None:
    meta["frames"][2]["transform_matrix"][0][3] = math.inf


@pytest.mark.parametrize(
    "frame, edit, files, problem",
    [
        (4, scaled_pose, None, "camera pose is not a rigid transform"),
        (6, lambda m: per_frame_focal(m, 6, -3.0), None, "fx must be > 0, got -3.0"),
        (0, None, lambda f: image(f, 0).unlink(), "frame_00000.png not found"),  # the first frame
        (5, None, lambda f: image(f, 5).unlink(), "frame_00005.png not found"),
        (4, None, lambda f: truncate(image(f, 4)), "cannot decode the image (image file is truncated)"),
        (3, None, lambda f: image(f, 3).write_bytes(b""), "is empty (0 bytes)"),
        (7, None, lambda f: (image(f, 7).unlink(), image(f, 7).mkdir()), "is a folder, not an image file"),
        (1, None, lambda f: Image.new("RGB", (48, 32)).save(image(f, 1)), "not a uniform rescale"),
    ],
)
def test_an_unusable_frame_is_dropped_with_a_warning(capture, tmp_path, capsys, frame, edit, files, problem):
    folder = damaged(capture, tmp_path, edit, files)
    dm = scene_datamanager(folder)
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "warning:" in line]
    assert len(warnings) == 1, out
    assert f"frame_{frame:05d}.png" in warnings[0] and problem in warnings[0], warnings[0]
    assert warnings[0].startswith(f"[ilrm-finetune] warning: {folder}: ") and warnings[0].endswith("frame dropped")
    names = frame_names(dm.train_dataset) + frame_names(dm.eval_dataset)
    assert len(names) == 11 and f"frame_{frame:05d}.png" not in names
    assert len(dm.cached_train) == len(dm.train_dataset)  # the rest loads
    assert bool(torch.isfinite(dm.train_dataset.cameras.fx).all())


@pytest.mark.parametrize(
    "frame, edit, problem",
    [
        (2, inf_in_frame_2, "transform_matrix holds NaN or infinite values"),
        (3, set_pose(3, [[1, 0, 0], [0, 1, 0, 0]]), "transform_matrix must be a 4x4 or 3x4 matrix"),
        (5, set_pose(5, None), "transform_matrix must be a"),
        (6, lambda m: per_frame_focal(m, 6, "x"), "fl_x must be a number"),
        (1, lambda m: m["frames"].__setitem__(1, "frame"), "must be an object with 'file_path'"),
        (2, lambda m: m["frames"][2].pop("file_path"), "'file_path' must be the image's path, got None"),
        (2, lambda m: m["frames"][2].update(file_path=5), "'file_path' must be the image's path, got 5"),
    ],
)
def test_a_frame_nerfstudio_cannot_read_is_one_line_naming_it(capture, tmp_path, frame, edit, problem):
    """nerfstudio's parser stops on these (or, for an infinite pose, its centering spreads it to
    every frame): one line naming the file, the frame and the value."""
    folder = damaged(capture, tmp_path, edit)
    with pytest.raises(ILRMError, match=rf"frame {frame}\b.*{problem}") as error:
        scene_datamanager(folder)
    assert str(error.value).startswith(f"{folder / 'transforms.json'}: ") and "\n" not in str(error.value)


def test_dropping_a_frame_moves_no_other_between_the_splits(capture, tmp_path):
    """The split is made over every frame the file lists: a damaged training frame leaves the
    held-out frames as they were (a held-out score stays a held-out score)."""
    good = scene_datamanager(capture)
    dm = scene_datamanager(damaged(capture, tmp_path, files=lambda f: image(f, 5).unlink()))
    assert frame_names(dm.eval_dataset) == frame_names(good.eval_dataset) == [f"frame_{i:05d}.png" for i in (0, 4, 8)]
    assert frame_names(dm.train_dataset) == [n for n in frame_names(good.train_dataset) if n != "frame_00005.png"]


def test_images_in_any_mode_are_usable(capture, tmp_path):
    """A 16-bit gray frame, a palette frame and a JPEG saved as .png are frames like any other."""

    def rewrite(folder: Path) -> None:
        gray = np.asarray(Image.open(image(folder, 1)).convert("L"), dtype=np.uint16) * 257
        Image.fromarray(gray).save(image(folder, 1))
        Image.open(image(folder, 2)).convert("P").save(image(folder, 2))
        Image.open(image(folder, 3)).convert("RGB").save(image(folder, 3), format="JPEG")

    dm = scene_datamanager(damaged(capture, tmp_path, files=rewrite))
    assert len(dm.train_dataset) == 9
    gray = dm.cached_train[0]["image"].float()  # frame 1: not clipped to white
    assert 20 < float(gray.mean()) < 235 and torch.equal(gray[..., 0], gray[..., 1])
    assert dm.train_dataset[0]["image"].shape == (32, 32, 3)  # nerfstudio's dataset: the viewer, ns-render


def test_masks_and_depths_are_ignored_with_a_note(capture, tmp_path, capsys):
    folder = damaged(capture, tmp_path, lambda m: [f.update(mask_path="masks/missing.png") for f in m["frames"]])
    dm = scene_datamanager(folder)
    assert "mask_path / depth_file_path are not used" in capsys.readouterr().out
    assert dm.train_dataset._dataparser_outputs.mask_filenames is None and len(dm.train_dataset) == 9


# ------------------------------------------------------------------------------------------------
# Too few usable frames: one line
# ------------------------------------------------------------------------------------------------


def same_position(meta: dict) -> None:
    for frame in meta["frames"]:
        frame["transform_matrix"] = meta["frames"][0]["transform_matrix"]


@pytest.mark.parametrize(
    "edit, files, message",
    [
        (lambda m: m.update(frames=m["frames"][:1]), None, "transforms.json: 1 frame: at least 2 training frames"),
        (lambda m: m.update(frames=m["frames"][:2]), None, "the dataparser's training split (1 frames) has 1 usable"),
        (same_position, None, "has every camera at the same position"),
        (None, lambda f: [p.unlink() for p in (f / "images").iterdir()], "frame_00000.png not found"),
        (None, lambda f: [truncate(image(f, i)) for i in range(1, 12)], "has 0 usable frame(s); at least 2 are"),
    ],
)
def test_too_few_usable_frames_is_one_line(capture, tmp_path, capsys, edit, files, message):
    folder = damaged(capture, tmp_path, edit, files)
    with pytest.raises(ILRMError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        scene_datamanager(folder)
    assert str(error.value).startswith(f"{folder}") and "\n" not in str(error.value)
    assert "warning:" not in capsys.readouterr().out  # the error says it all


def test_three_frames_are_enough(capture, tmp_path):
    dm = scene_datamanager(damaged(capture, tmp_path, lambda m: m.update(frames=m["frames"][:3])))
    assert len(dm.train_dataset) == 2 and len(dm.eval_dataset) == 1


# ------------------------------------------------------------------------------------------------
# Mixed image sizes: trained and scored at each frame's own size
# ------------------------------------------------------------------------------------------------


def test_frames_of_different_sizes_train_and_evaluate(capture, tmp_path):
    def sizes(meta: dict) -> None:
        for key in ("w", "h", "cx", "cy"):
            meta.pop(key)
        for i, frame in enumerate(meta["frames"]):
            width = 48 if i % 2 else 32
            frame.update(w=width, h=32, cx=width / 2, cy=16.0)

    def resize(folder: Path) -> None:
        for i in range(1, 12, 2):
            Image.open(image(folder, i)).resize((48, 32)).save(image(folder, i))
        Image.open(image(folder, 2)).resize((64, 64)).save(image(folder, 2))  # stored at 2x its camera: fine

    folder = damaged(capture, tmp_path, sizes, resize)
    trainer = finetune_trainer(folder, tmp_path / "runs", 12, random_init=True, num_random=200)
    trainer.train()
    dm, model = trainer.pipeline.datamanager, trainer.pipeline.model
    # Each frame at its camera's size (the 64x64 file is resized to its 32x32 camera).
    assert {tuple(item["image"].shape) for item in dm.cached_train} == {(32, 32, 3), (32, 48, 3)}
    assert all(torch.isfinite(render).all() for render, _ in model.held_out_renders(dm))
    metrics = trainer.pipeline.get_average_eval_image_metrics()
    assert math.isfinite(metrics["psnr"])


# ------------------------------------------------------------------------------------------------
# Other dataparsers (colmap): nerfstudio's errors in one line, frames checked after parsing
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colmap_capture(tmp_path_factory) -> Path:
    from tests.test_sources import frame_images, ground_truth, write_colmap

    c2w, K = ground_truth(8, 24, 32, seed=11)
    return write_colmap(tmp_path_factory.mktemp("colmap") / "capture", c2w, K, frame_images(8, 24, 32))


def colmap_datamanager(data: Path):
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

    from ilrm_nerfstudio.nerfstudio.finetune_datamanager import ILRMSceneDataManagerConfig

    parser = ColmapDataParserConfig(
        eval_mode="interval", eval_interval=4, downscale_factor=1, colmap_path=Path("sparse/0")
    )
    return ILRMSceneDataManagerConfig(data=data, dataparser=parser).setup(device="cpu", test_mode="val")


def test_colmap_frames_are_checked_after_parsing(colmap_capture, tmp_path, capsys):
    dm = colmap_datamanager(colmap_capture)
    assert len(dm.train_dataset) == 6 and "SfM points" in capsys.readouterr().out  # an empty points3D.txt

    folder = tmp_path / "damaged"
    shutil.copytree(colmap_capture, folder)
    truncate(folder / "images" / "frame_00003.png")
    cameras = (folder / "sparse/0/cameras.txt").read_text().splitlines()
    fields = cameras[6].split()  # camera 6 (frame_00006.png): a negative focal length
    fields[4] = f"-{fields[4]}"
    cameras[6] = " ".join(fields)
    (folder / "sparse/0/cameras.txt").write_text("\n".join(cameras) + "\n")
    dm = colmap_datamanager(folder)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "frame dropped" in line]
    assert len(warnings) == 2
    assert "frame_00003.png: cannot decode the image" in warnings[0]
    assert "frame_00006.png" in warnings[1] and "fx must be > 0" in warnings[1]
    assert len(dm.train_dataset) == 4 and len(dm.cached_train) == 4


def test_nerfstudio_errors_while_parsing_name_the_data_folder(colmap_capture, tmp_path):
    folder = tmp_path / "garbage"
    shutil.copytree(colmap_capture, folder)
    (folder / "sparse/0/cameras.txt").write_text("1 PINHOLE x y\n")
    with pytest.raises(ILRMError, match=rf"{folder}: nerfstudio's dataparser \(ColmapDataParser\) could not read"):
        colmap_datamanager(folder)


# ------------------------------------------------------------------------------------------------
# No held-out frames; the tools that need no frames
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [dict(eval_mode="all"), dict(eval_mode="fraction", train_split_fraction=1.0)])
def test_no_held_out_frames_is_said_in_training_and_in_ns_eval(capture, capsys, options):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from ilrm_nerfstudio.nerfstudio.finetune_datamanager import ILRMSceneDataManagerConfig

    config = ILRMSceneDataManagerConfig(data=capture, dataparser=NerfstudioDataParserConfig(**options))
    dm = config.setup(device="cpu", test_mode="val")
    assert "no held-out frames" in capsys.readouterr().out and len(dm.eval_dataset) == 0  # nothing called held out
    test = config.setup(device="cpu", test_mode="test")  # what ns-eval builds
    with pytest.raises(ILRMError, match=f"nothing to evaluate: {capture}: no held-out frames"):
        test.fixed_indices_eval_dataloader
    assert test.eval_dataloader.get_camera(0)[0] is not None  # ns-render spiral's start camera


def test_inference_mode_goes_on_without_a_damaged_capture(capture, tmp_path, capsys):
    """ns-export / ns-render camera-path need only the checkpoint."""
    from ilrm_nerfstudio.nerfstudio.finetune_pipeline import ILRMFinetunePipelineConfig

    folder = damaged(capture, tmp_path, files=lambda f: (f / "transforms.json").write_text("{"))
    config = ILRMFinetunePipelineConfig()
    config.datamanager.data = folder
    pipeline = config.setup(device="cpu", test_mode="inference")
    assert len(pipeline.datamanager.train_dataset) == 0
    assert "not valid JSON" in capsys.readouterr().out
    # A capture whose images are gone: inference mode does not open them.
    folder = damaged(capture, tmp_path, files=lambda f: shutil.rmtree(f / "images"), name="no_images")
    config.datamanager.data = folder
    assert len(config.setup(device="cpu", test_mode="inference").datamanager.train_dataset) == 10


# ------------------------------------------------------------------------------------------------
# Options that cannot work: errors at setup
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value",
    [
        ("published_steps", -1),
        ("refine_minutes", 0.0),
        ("refine_minutes", math.nan),
        ("ssim_lambda", 1.5),
        ("densify_grad_thresh", 0.0),
        ("refine_every", 0),
        ("resolution_schedule", 0),
        ("max_gaussians", 0),
        ("network_resolution", (0, 32)),
        ("network_group_size", -1),
        ("sh_degree", 5),
    ],
)
def test_impossible_model_options_are_errors_at_setup(capture, option, value):
    with pytest.raises(ILRMError, match=f"--pipeline.model.{option.replace('_', '-')} must be"):
        finetune_pipeline(capture, **{option: value})


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_input_views=0), "num-input-views must be >= 1"),
        (dict(image_size=-1), "image-size must be >= 0"),
    ],
)
def test_impossible_datamanager_options_are_errors_at_setup(capture, options, message):
    with pytest.raises(ILRMError, match=message):
        scene_datamanager(capture, **options)


def test_impossible_dataparser_options_are_errors(capture):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from ilrm_nerfstudio.nerfstudio.finetune_datamanager import ILRMSceneDataManagerConfig

    for options, message in (
        (dict(eval_mode="interval", eval_interval=0), "--eval-interval must be >= 1"),
        (dict(eval_mode="fraction", train_split_fraction=1.5), "--train-split-fraction must be in"),
        (dict(eval_mode="filename"), "could not read it .*train/eval in its name"),
        (dict(scale_factor=0.0), "--scale-factor must be > 0"),
    ):
        config = ILRMSceneDataManagerConfig(data=capture, dataparser=NerfstudioDataParserConfig(**options))
        with pytest.raises(ILRMError, match=message):
            config.setup(device="cpu", test_mode="val")


def test_max_num_iterations_below_minus_one_is_an_error(capture, tmp_path):
    with pytest.raises(ILRMError, match="max-num-iterations must be >= 0"):
        finetune_trainer(capture, tmp_path, -5, random_init=True, num_random=100)


# ------------------------------------------------------------------------------------------------
# --pipeline.model.ilrm-run: torn, foreign or empty -> one line naming the path
# ------------------------------------------------------------------------------------------------


def copy_run(fake_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    return run


def test_a_torn_or_foreign_checkpoint_is_one_line(fake_run, tmp_path):
    from ilrm_nerfstudio.nerfstudio.run_network import load_network

    run = copy_run(fake_run, tmp_path)
    checkpoint = run / "nerfstudio_models" / "step-000000007.ckpt"
    truncate(checkpoint)
    with pytest.raises(ILRMError, match=rf"{checkpoint}: cannot read this checkpoint, truncated"):
        load_network(checkpoint)
    torch.save([1, 2, 3], checkpoint)  # a torch file, but not ns-train's
    with pytest.raises(ILRMError, match=rf"{checkpoint}: cannot read this checkpoint"):
        load_network(run)
    torch.save({"step": 1, "pipeline": {"_model.gauss_params.means": torch.zeros(1, 3)}}, checkpoint)
    with pytest.raises(ILRMError, match=rf"{checkpoint}: holds no network weights"):
        load_network(run)
    torch.save({"step": 1, "pipeline": {"_model.network.nothing": torch.zeros(1)}}, checkpoint)
    with pytest.raises(ILRMError, match=rf"{checkpoint}: its weights do not fit the network"):
        load_network(run)
    shutil.rmtree(run / "nerfstudio_models")
    (run / "nerfstudio_models").mkdir()
    with pytest.raises(ILRMError, match=rf"{run / 'nerfstudio_models'}: no checkpoint"):
        load_network(run)


def test_a_torn_newest_checkpoint_falls_back_to_the_previous_one(fake_run, tmp_path, capsys):
    from ilrm_nerfstudio.nerfstudio.run_network import load_network

    run = copy_run(fake_run, tmp_path)
    newest = run / "nerfstudio_models" / "step-000000009.ckpt"
    newest.write_bytes((run / "nerfstudio_models" / "step-000000007.ckpt").read_bytes()[:1000])
    trained = load_network(run)
    assert trained.checkpoint.name == "step-000000007.ckpt"
    out = capsys.readouterr().out
    assert f"{newest}: cannot read this checkpoint" in out and "trying the previous checkpoint" in out


@pytest.mark.parametrize(
    "content, message",
    [
        (b"!!python/object:nerfstudio.engine.trainer.TrainerConfig\nmethod_name: ilrm\npipeline: [", "not a readable"),
        (b"\xff\xfe\x00garbage", "not a readable ns-train config.yml"),
        (b"", "not an ilrm run"),
        (yaml.dump({"method_name": "splatfacto", "pipeline": {"model": {}}}).encode(), "not an ilrm run"),
    ],
)
def test_a_torn_or_foreign_run_config_is_one_line(fake_run, tmp_path, content, message):
    from ilrm_nerfstudio.nerfstudio.run_network import load_network

    run = copy_run(fake_run, tmp_path)
    (run / "config.yml").write_bytes(content)
    with pytest.raises(ILRMError, match=message) as error:
        load_network(run / "config.yml")
    assert str(error.value).startswith(f"{run / 'config.yml'}: ")


def test_a_torn_published_checkpoint_is_one_line(tmp_path):
    from ilrm_nerfstudio.nerfstudio.run_network import load_network
    from tests.test_published import RE10K, SMALL, random_state, their_shapes, write_re10k

    state = random_state(their_shapes(RE10K, **SMALL), seed=3)
    path = write_re10k(tmp_path / "re10k_2view.ckpt", state)
    truncate(path)
    with pytest.raises(ILRMError, match=rf"{path}: not a readable PyTorch file"):
        load_network(path)
    state[next(iter(state))] = [1.0, 2.0]  # a value that is not a tensor
    path = write_re10k(tmp_path / "odd.ckpt", state)
    with pytest.raises(ILRMError, match=rf"{path}: "):
        load_network(path)


# ------------------------------------------------------------------------------------------------
# The real CLIs
# ------------------------------------------------------------------------------------------------

FAST = ("--machine.device-type", "cpu", "--vis", "tensorboard", "--max-num-iterations", "1")
RANDOM_START = ("--pipeline.model.random-init", "True", "--pipeline.model.num-random", "200")


def ns(command: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / command, *map(str, args)], capture_output=True, text=True, timeout=600, env=ENV, cwd=Path.cwd()
    )


def ns_train(data: Path, output: Path, *args) -> subprocess.CompletedProcess:
    return ns(
        "ns-train", "ilrm-finetune", "--data", data, "--output-dir", output, "--experiment-name", "e",
        "--timestamp", "t", *FAST, *args,
    )  # fmt: skip


def test_cli_an_invalid_transforms_json_is_one_line(capture, tmp_path):
    folder = damaged(capture, tmp_path, files=lambda f: (f / "transforms.json").write_text('{"frames": [1,'))
    result = ns_train(folder, tmp_path / "runs", *RANDOM_START)
    assert result.returncode != 0
    assert f"ilrm: {folder / 'transforms.json'}: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_a_torn_ilrm_run_checkpoint_is_one_line(capture, fake_run, tmp_path):
    run = copy_run(fake_run, tmp_path)
    checkpoint = run / "nerfstudio_models" / "step-000000007.ckpt"
    truncate(checkpoint)
    result = ns_train(capture, tmp_path / "runs", "--pipeline.model.ilrm-run", checkpoint)
    assert result.returncode != 0
    assert f"ilrm: {checkpoint}: cannot read this checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_dropped_frames_then_ns_eval_and_ns_export_on_damaged_held_out_frames(capture, tmp_path):
    """ns-train drops frame 5 (its image is gone) with a warning and trains on the rest; the run's
    config keeps the user's --data. Later a held-out image is truncated: ns-eval warns naming it
    and scores the other one; with both held-out images damaged ns-eval says there is nothing to
    score, in one line; ns-export still exports (it needs no frames)."""
    folder = damaged(capture, tmp_path, files=lambda f: image(f, 5).unlink())
    result = ns_train(folder, tmp_path / "runs", *RANDOM_START)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"{folder}: train frame" in result.stdout and "frame_00005.png not found; frame dropped" in result.stdout
    run = tmp_path / "runs" / "e" / "ilrm-finetune" / "t"
    assert yaml.load((run / "config.yml").read_text(), Loader=yaml.Loader).pipeline.datamanager.data == folder

    truncate(image(folder, 8))
    result = ns("ns-eval", "--load-config", run / "config.yml", "--output-path", tmp_path / "eval.json")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "frame_00008.png" in result.stdout and "image file is truncated" in result.stdout
    assert math.isfinite(json.loads((tmp_path / "eval.json").read_text())["results"]["psnr"])

    truncate(image(folder, 0))
    result = ns("ns-eval", "--load-config", run / "config.yml", "--output-path", tmp_path / "eval.json")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"ilrm: nothing to evaluate: {folder}: no held-out frames" in result.stderr

    result = ns("ns-export", "gaussian-splat", "--load-config", run / "config.yml", "--output-dir", tmp_path / "ply")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "ply" / "splat.ply").is_file()
