"""Data manager of the per-scene stage (`ilrm-finetune`): one scene through any nerfstudio
dataparser (default: `nerfstudio-data`, i.e. ns-process-data output, every 8th frame held out;
`colmap` and the others as subcommands), whole images rather than rays.

- Working size: every frame is undistorted and resized on load so that its longest side is
  `image_size` (default 512 px on the CPU, the full size on CUDA); intrinsics follow exactly. No
  `images_N` folder is needed.
- Input views: the training frames chosen by `view_selection` (k-means over camera position and
  direction by default) that feed the network (`network_views`, resized and cropped to the
  network's multiple with the frame's aspect ratio) and that the published finetune epochs
  optimize on.
- Refinement epochs optimize on every training frame, `views_per_step` at a time
  (`epoch_batches`).
- Held-out views: the frames of the dataparser's eval split that are not training frames
  (`--eval-mode all` has none); ns-eval scores them, and says so in one line when there are none.
- Bad input (capture_check.py): a transforms.json is checked before nerfstudio-data reads it, and
  what any dataparser returns after; unusable frames are dropped with a warning each, too few
  usable ones (or nerfstudio's own errors) are one line naming the data. Every tool on a run
  (ns-eval, ns-render, ns-viewer) repeats the same checks, so it sees the same frames; ns-export
  and ns-render camera-path (inference mode) open no image and go on without a damaged capture.

It is a `VanillaDataManager` subclass because nerfstudio's tools check for that type
(`ns-render spiral`, `ns-render dataset`, the viewer's `train_dataset`); its ray samplers and
loader processes are not used. The cached images are pinhole (distortion removed).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.base_datamanager import DataManager, VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.pixel_samplers import PixelSamplerConfig
from nerfstudio.data.utils.dataloaders import RandIndicesEvalDataloader
from PIL import Image
from torch import Tensor

from ilrm_nerfstudio.core.cameras import opengl_to_opencv, to_homogeneous
from ilrm_nerfstudio.core.errors import ILRMError, brief, one_line
from ilrm_nerfstudio.data.images import to_rgb8
from ilrm_nerfstudio.data.samplers import kmeans_views
from ilrm_nerfstudio.data.scene import Scene, load_view, load_working_view
from ilrm_nerfstudio.nerfstudio.capture_check import (
    CheckedCapture,
    check_outputs,
    check_parser_options,
    check_transforms,
    reading_checked,
)
from ilrm_nerfstudio.nerfstudio.console import log_line
from ilrm_nerfstudio.nerfstudio.dataparser_scene import scene_from_dataparser_outputs

CPU_IMAGE_SIZE = 512  # default longest image side on the CPU


def held_out_every_8th() -> NerfstudioDataParserConfig:
    return NerfstudioDataParserConfig(eval_mode="interval", eval_interval=8)


@dataclass
class ILRMSceneDataManagerConfig(VanillaDataManagerConfig):
    _target: type = field(default_factory=lambda: ILRMSceneDataManager)
    dataparser: AnnotatedDataParserUnion = field(default_factory=held_out_every_8th)
    """How the scene is read: `nerfstudio-data` (transforms.json, ns-process-data output), `colmap`, ..."""
    image_size: int | None = None
    """Longest image side (pixels) the frames are resized to on load, whole frame and aspect kept,
    intrinsics scaled exactly. None: 512 on the CPU, the full size on CUDA; 0: the full size."""
    view_selection: Literal["all", "every-kth", "kmeans"] = "kmeans"
    """Input views (the network's, and the published finetune epochs') among the training frames:
    every one, every `view_stride`-th, or `num_input_views` chosen by k-means over camera position
    and viewing direction."""
    num_input_views: int | None = None
    """Number of input views for view_selection="kmeans" (None: 8, or the published model's)."""
    view_stride: int = 2
    """k for view_selection="every-kth" (frames 0, k, 2k, ... of the training split)."""
    views_per_step: int = 1
    """Refinement epochs: training frames per optimizer step (0: all of them in one step)."""
    seed: int = 0
    # Inherited ray-sampling options that this data manager does not use: hidden from --help.
    train_num_rays_per_batch: tyro.conf.Suppress[int] = 1024
    train_num_images_to_sample_from: tyro.conf.Suppress[int] = -1
    train_num_times_to_repeat_images: tyro.conf.Suppress[int] = -1
    eval_num_rays_per_batch: tyro.conf.Suppress[int] = 1024
    eval_num_images_to_sample_from: tyro.conf.Suppress[int] = -1
    eval_num_times_to_repeat_images: tyro.conf.Suppress[int] = -1
    eval_image_indices: tyro.conf.Suppress[tuple[int, ...] | None] = (0,)
    camera_res_scale_factor: tyro.conf.Suppress[float] = 1.0
    patch_size: tyro.conf.Suppress[int] = 1
    pixel_sampler: tyro.conf.Suppress[PixelSamplerConfig] = field(default_factory=PixelSamplerConfig)
    masks_on_gpu: tyro.conf.Suppress[bool] = False
    images_on_gpu: tyro.conf.Suppress[bool] = False


class CaptureDataset(InputDataset):
    """nerfstudio's dataset of one split, its images decoded as the stage decodes them (any Pillow
    mode -> 8-bit RGB, upright; data/images.py): what the viewer and `ns-render dataset` show."""

    def get_numpy_image(self, image_idx: int) -> np.ndarray:
        path = self._dataparser_outputs.image_filenames[image_idx]
        try:
            with Image.open(path) as image:
                rgb = to_rgb8(image)
        except (OSError, ValueError, SyntaxError) as error:
            raise ILRMError(f"{path}: cannot read the image ({error})") from None
        if self.scale_factor != 1.0:
            size = (int(rgb.width * self.scale_factor), int(rgb.height * self.scale_factor))
            rgb = rgb.resize(size, resample=Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def warn(message: str) -> None:
    log_line(message, style="yellow", prefix="[ilrm-finetune] warning: ")


def check_options(config: ILRMSceneDataManagerConfig) -> None:
    """Impossible option values are errors, never replaced."""
    option = "--pipeline.datamanager."
    if config.num_input_views is not None and config.num_input_views < 1:
        raise ILRMError(f"{option}num-input-views must be >= 1 (or unset), got {config.num_input_views}")
    if config.view_stride < 1:
        raise ILRMError(f"{option}view-stride must be >= 1, got {config.view_stride}")
    if config.views_per_step < 0:
        raise ILRMError(
            f"{option}views-per-step must be >= 0 (0: every training frame in one step), got {config.views_per_step}"
        )
    if config.image_size is not None and config.image_size < 0:
        raise ILRMError(f"{option}image-size must be >= 0 (0: full size), got {config.image_size}")
    check_parser_options(config.dataparser)


class ILRMSceneDataManager(VanillaDataManager):
    config: ILRMSceneDataManagerConfig

    def __init__(
        self,
        config: ILRMSceneDataManagerConfig,
        device="cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ):
        self.default_input_views = 8  # a published network's protocol may ask for more
        check_options(config)
        data = Path(config.data if config.data is not None else config.dataparser.data)
        if not data.exists():
            if test_mode != "inference":
                raise ILRMError(f"{data}: data folder not found")
            # ns-export / ns-render camera-path need only the checkpoint: work without the data.
            self._init_without_data(config, device, test_mode, world_size, local_rank)
            return
        if test_mode != "inference":
            self._init_from_dataparser(config, data, device, test_mode, world_size, local_rank)
            return
        try:  # the frames are not needed here: a damaged capture is no reason to stop
            self._init_from_dataparser(config, data, device, test_mode, world_size, local_rank)
        except ILRMError as error:
            warn(f"{one_line(error)}; going on without the capture's frames (this command does not need them)")
            self._init_without_data(config, device, test_mode, world_size, local_rank)

    def _init_from_dataparser(self, config, data: Path, device, test_mode, world_size, local_rank) -> None:
        """VanillaDataManager's construction, with the capture checked before the dataparser reads
        it (nerfstudio-data) and what it returns checked after (every dataparser); images are
        opened (decoded fully) unless in inference mode, where nerfstudio does not open them."""
        self.config, self.device, self.test_mode = config, device, test_mode
        self.world_size, self.local_rank, self.sampler = world_size, local_rank, None
        self.test_split = "test" if test_mode in ("test", "inference") else "val"
        self.dataparser_config = config.dataparser
        config.dataparser.data = data
        open_images = test_mode != "inference"
        self.dropped_frames = 0

        def warn_and_count(message: str) -> None:
            self.dropped_frames += message.endswith("frame dropped")
            warn(message)

        checked = None
        if isinstance(config.dataparser, NerfstudioDataParserConfig):
            checked = check_transforms(config.dataparser, data, warn_and_count, open_images)
            config.dataparser.load_3D_points = self._has_point_cloud(checked)
        self.dataparser = config.dataparser.setup()
        if test_mode == "inference":
            self.dataparser.downscale_factor = 1  # as nerfstudio: avoid opening images
        elif checked is not None:
            self.dataparser.downscale_factor = checked.downscale_factor  # the images checked
        self.includes_time = self.dataparser.includes_time
        recheck_images = open_images and checked is None  # nerfstudio-data's were checked before
        train = self._parse(data, "train", checked)
        train = check_outputs(train, data, "train", warn_and_count, recheck_images, training=True)
        held = self._parse(data, self.test_split, checked)
        held = check_outputs(held, data, self.test_split, warn_and_count, recheck_images, training=False)
        self.train_dataparser_outputs = train
        self.train_dataset = CaptureDataset(train, scale_factor=config.camera_res_scale_factor)
        self.eval_dataset = CaptureDataset(held, scale_factor=config.camera_res_scale_factor)
        self.exclude_batch_keys_from_device = list(self.train_dataset.exclude_batch_keys_from_device)
        if test_mode == "val" and not self.held_out_indices:
            warn(f"{self.no_held_out_frames()}. Training goes on; no held-out PSNR is reported")
        DataManager.__init__(self)
        if not self.eval_dataset and test_mode != "inference":
            self.setup_eval()  # nerfstudio skips it for an empty split; ns-render spiral needs it

    def _parse(self, data: Path, split: str, checked: CheckedCapture | None):
        """The dataparser's outputs of a split; its own exceptions become one line naming the data.
        SfM points that it cannot load (e.g. an empty COLMAP points3D) only cost the points."""

        def parse():
            with reading_checked(checked) if checked is not None else contextlib.nullcontext():
                return self.dataparser.get_dataparser_outputs(split=split)

        try:
            return parse()
        except ILRMError:
            raise
        except Exception as error:  # nerfstudio's parsers assert / raise on bad input
            failure = error
        parser_config = self.dataparser.config
        if getattr(parser_config, "load_3D_points", False):
            parser_config.load_3D_points = False
            try:
                outputs = parse()
            except Exception:
                parser_config.load_3D_points = True
            else:
                warn(f"{data}: nerfstudio could not load the SfM points ({brief(failure)}); starting without them")
                return outputs
        raise ILRMError(
            f"{data}: nerfstudio's dataparser ({type(self.dataparser).__name__}) could not read the {split} split "
            f"({brief(failure)}); check the capture, or read it with another dataparser subcommand "
            "(nerfstudio-data, colmap)"
        )

    @staticmethod
    def _has_point_cloud(checked: CheckedCapture) -> bool:
        """Have nerfstudio-data load the SfM points only when transforms.json names an existing
        file (asking for them otherwise only makes nerfstudio prompt or warn)."""
        ply = checked.meta.get("ply_file_path")
        return isinstance(ply, str) and bool(ply) and (checked.transforms.parent / ply).is_file()

    def _init_without_data(self, config, device, test_mode, world_size, local_rank) -> None:
        from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
        from nerfstudio.data.scene_box import SceneBox

        self.config, self.device, self.test_mode = config, device, test_mode
        self.world_size, self.local_rank, self.sampler = world_size, local_rank, None
        self.test_split = "test"
        self.dataparser_config = config.dataparser
        self.includes_time = False
        empty = Cameras(
            camera_to_worlds=torch.zeros(0, 3, 4),
            fx=torch.zeros(0, 1),
            fy=torch.zeros(0, 1),
            cx=torch.zeros(0, 1),
            cy=torch.zeros(0, 1),
            width=torch.zeros(0, 1, dtype=torch.long),
            height=torch.zeros(0, 1, dtype=torch.long),
        )
        self.train_dataparser_outputs = DataparserOutputs(
            image_filenames=[], cameras=empty, scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
        )
        self.train_dataset = CaptureDataset(self.train_dataparser_outputs)
        self.eval_dataset = CaptureDataset(self.train_dataparser_outputs)
        self.exclude_batch_keys_from_device = list(self.train_dataset.exclude_batch_keys_from_device)
        DataManager.__init__(self)

    # -- held-out frames -------------------------------------------------------------------------

    @cached_property
    def held_out_indices(self) -> list[int]:
        """Frames of the eval split that are not training frames (`--eval-mode all` has none):
        the only ones whose scores are held-out scores."""
        training = {str(path) for path in self.train_dataset.image_filenames}
        return [i for i, path in enumerate(self.eval_dataset.image_filenames) if str(path) not in training]

    def no_held_out_frames(self) -> str:
        """Why there is nothing to score, for messages."""
        data = self.config.data
        if len(self.eval_dataset) == 0:
            why = f"the dataparser's {self.test_split} split is empty"
            if getattr(self, "dropped_frames", 0):
                why += f"; {self.dropped_frames} damaged frame(s) dropped, see the warnings above"
        else:
            why = f"every frame of the dataparser's {self.test_split} split is also a training frame (--eval-mode all?)"
        return (
            f"{data}: no held-out frames ({why}); to score a run, hold frames out, e.g. nerfstudio-data "
            "--eval-mode interval"
        )

    # -- which views ----------------------------------------------------------------------------

    @property
    def image_size(self) -> int:
        """The working size's longest side (0: full size)."""
        if self.config.image_size is not None:
            return self.config.image_size
        return 0 if torch.device(self.device).type == "cuda" else CPU_IMAGE_SIZE

    def ask_for_input_views(self, count: int) -> int:
        """A network that needs at least `count` views (a published model's protocol) raises the
        default number of input views; returns the default now in force."""
        if "input_indices" in self.__dict__:
            raise RuntimeError("ask_for_input_views: the input views are already chosen")
        self.default_input_views = max(count, self.default_input_views)
        return self.default_input_views

    @cached_property
    def input_indices(self) -> list[int]:
        """Indices into the training dataset of the input views (sorted)."""
        n = len(self.train_dataset)
        cfg = self.config
        if n == 0:
            raise ILRMError(f"{self.config.data}: the dataparser's training split is empty")
        if cfg.view_selection == "all":
            return list(range(n))
        if cfg.view_selection == "every-kth":
            return list(range(0, n, cfg.view_stride))
        c2w = opengl_to_opencv(to_homogeneous(self.train_dataset.cameras.camera_to_worlds.double()))
        count = cfg.num_input_views if cfg.num_input_views is not None else self.default_input_views
        return kmeans_views(c2w, min(count, n), list(range(n)))

    # -- images --------------------------------------------------------------------------------

    def _scene(self, dataset: InputDataset) -> tuple[Scene, dict[str, int]]:
        """The split as a Scene (our conventions) and the position of each image file in it."""
        outputs = dataset._dataparser_outputs
        scene = scene_from_dataparser_outputs(outputs, Path(str(self.config.data)).name)
        return scene, {str(path): i for i, path in enumerate(scene.image_paths)}

    def _load_views(self, dataset: InputDataset, indices: list[int]) -> tuple[Cameras, list[dict]]:
        """Frames at the working size, undistorted (uint8 [H, W, 3] on the CPU), and their pinhole
        cameras (on the device)."""
        if not indices:
            return dataset.cameras[torch.zeros(0, dtype=torch.long)], []
        scene, position = self._scene(dataset)
        images, Ks = [], []
        for index in indices:
            image, K = load_working_view(scene, position[str(dataset.image_filenames[index])], self.image_size)
            images.append(image)
            Ks.append(K)
        source = dataset.cameras[torch.tensor(indices, dtype=torch.long)]
        K = torch.stack(Ks)
        cameras = Cameras(
            camera_to_worlds=source.camera_to_worlds.clone(),
            fx=K[:, 0, 0:1],
            fy=K[:, 1, 1:2],
            cx=K[:, 0, 2:3],
            cy=K[:, 1, 2:3],
            width=torch.tensor([[image.shape[1]] for image in images]),
            height=torch.tensor([[image.shape[0]] for image in images]),
            distortion_params=None,
            camera_type=CameraType.PERSPECTIVE,
            times=source.times,
            metadata=source.metadata,
        )
        return cameras.to(self.device), [{"image": image, "image_idx": index} for image, index in zip(images, indices)]

    @cached_property
    def train_views(self) -> tuple[Cameras, list[dict]]:
        """Every training frame at the working size."""
        n = len(self.train_dataset)
        if n == 0:
            raise ILRMError(f"{self.config.data}: the dataparser's training split is empty")
        cameras, items = self._load_views(self.train_dataset, list(range(n)))
        sizes = sorted({(int(item["image"].shape[1]), int(item["image"].shape[0])) for item in items})
        log_line(f"loaded {n} training frames at {', '.join(f'{w}x{h}' for w, h in sizes)}")
        return cameras, items

    @property
    def input_views(self) -> tuple[Cameras, list[dict]]:
        cameras, items = self.train_views
        chosen = self.input_indices
        return cameras[torch.tensor(chosen, device=cameras.device)], [items[i] for i in chosen]

    @cached_property
    def eval_views(self) -> tuple[Cameras, list[dict]]:
        """Every held-out frame at the working size (none: see `held_out_indices`)."""
        return self._load_views(self.eval_dataset, self.held_out_indices)

    def network_views(self, height: int, width: int, indices: list[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Training frames (default: the input views) at the network's resolution (resized to
        cover, center cropped, intrinsics adjusted exactly, distortion removed): images
        [V, 3, H, W], OpenCV c2w [V, 4, 4] in the dataparser's frame, K [V, 3, 3]."""
        scene, position = self._scene(self.train_dataset)
        outputs = self.train_dataparser_outputs
        indices = self.input_indices if indices is None else indices
        images, Ks = [], []
        for index in indices:
            image, K = load_view(scene, position[str(outputs.image_filenames[index])], height, width)
            images.append(image)
            Ks.append(K)
        c2w = opengl_to_opencv(to_homogeneous(outputs.cameras.camera_to_worlds[indices].double()))
        return torch.stack(images), c2w, torch.stack(Ks)

    def training_c2w(self) -> Tensor:
        """OpenCV camera-to-world [N, 4, 4] of every training frame (dataparser frame)."""
        return opengl_to_opencv(to_homogeneous(self.train_dataset.cameras.camera_to_worlds.double()))

    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the first training frame as stored (before the working size)."""
        cameras = self.train_dataset.cameras
        return int(cameras.height.reshape(-1)[0]), int(cameras.width.reshape(-1)[0])

    def point_cloud(self) -> tuple[Tensor, Tensor] | None:
        """The dataparser's SfM points (xyz [P, 3] in the dataparser's frame, rgb [P, 3] in [0, 1])
        when the data has them."""
        metadata = self.train_dataparser_outputs.metadata
        if "points3D_xyz" not in metadata:
            return None
        xyz, rgb = metadata["points3D_xyz"].float(), metadata["points3D_rgb"].float() / 255.0
        finite = torch.isfinite(xyz).all(-1)
        if not bool(finite.all()):  # a damaged point file: NaN Gaussians would follow
            warn(f"{self.config.data}: {int((~finite).sum())} SfM points with NaN or infinite coordinates ignored")
            xyz, rgb = xyz[finite], rgb[finite]
        return xyz, rgb

    # -- batches -------------------------------------------------------------------------------

    def epoch_batches(self, epoch: int, views: Literal["input", "all"], per_step: int) -> list[tuple[Cameras, dict]]:
        """One epoch over the input views or every training frame: a shuffled order (seeded by
        the epoch) cut into batches of `per_step` frames of one size (0: all in one batch)."""
        cameras, items = self.train_views
        chosen = list(self.input_indices) if views == "input" else list(range(len(items)))
        random.Random(self.config.seed * 1_000_003 + epoch).shuffle(chosen)
        by_size: dict[tuple, list[int]] = {}
        for i in chosen:
            by_size.setdefault(tuple(items[i]["image"].shape), []).append(i)
        batches = []
        for group in by_size.values():
            size = len(group) if per_step <= 0 else per_step
            for start in range(0, len(group), size):
                part = sorted(group[start : start + size])
                batch = {
                    "image": torch.stack([items[i]["image"] for i in part]).to(self.device),
                    "indices": torch.tensor(part),
                }
                batches.append((cameras[torch.tensor(part, device=cameras.device)], batch))
        return batches

    # -- nerfstudio hooks ----------------------------------------------------------------------

    def setup_train(self):
        """Nothing to set up: frames are loaded on first use."""

    def setup_eval(self):
        # `ns-render spiral` starts from eval_dataloader.get_camera(0).
        # An empty eval split: a training frame is as good a start.
        dataset = self.eval_dataset if len(self.eval_dataset) else self.train_dataset
        self.eval_dataloader = RandIndicesEvalDataloader(input_dataset=dataset, device=self.device)

    @property
    def fixed_indices_eval_dataloader(self) -> list[tuple[Cameras, dict]]:
        """Every held-out view as (camera [1], {"image": [H, W, 3]}), for ns-eval."""
        cameras, items = self.eval_views
        if not items:  # nerfstudio's average over no images is an IndexError
            raise ILRMError(f"nothing to evaluate: {self.no_held_out_frames()}")
        return [(cameras[i : i + 1], items[i]) for i in range(len(items))]

    def next_train(self, step: int) -> tuple[Cameras, dict]:
        """All input views in one batch (the published finetune step)."""
        self.train_count += 1
        return self.epoch_batches(step, "input", 0)[0]

    def next_eval(self, step: int) -> tuple[Cameras, dict]:
        return self.next_eval_image(step)

    def next_eval_image(self, step: int) -> tuple[Cameras, dict]:
        cameras, items = self.eval_views
        if not items:
            raise ILRMError(f"nothing to evaluate: {self.no_held_out_frames()}")
        i = self.eval_count % len(items)
        self.eval_count += 1
        return cameras[i : i + 1], items[i]

    def get_train_rays_per_batch(self) -> int:
        cameras, items = self.train_views
        height, width = items[0]["image"].shape[:2]
        k = self.config.views_per_step
        return height * width * (len(items) if k <= 0 else k)

    def get_eval_rays_per_batch(self) -> int:
        cameras, items = self.eval_views
        return int(items[0]["image"].shape[0] * items[0]["image"].shape[1]) if items else 0
