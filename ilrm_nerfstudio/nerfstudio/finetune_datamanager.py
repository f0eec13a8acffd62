"""Data of the per-scene stage: nerfstudio's `FullImageDatamanager` (splatfacto's), with three hooks.

- The dataparser's outputs are checked once (capture_check.py): unusable frames are dropped with a
  warning each while enough remain, else one line naming the data; nerfstudio's own errors while
  parsing become one line naming the file and, for transforms.json, the first problem in it.
- Working size: frames are resized on load (nerfstudio's dataset `scale_factor`) so that the
  longest side is `image_size` (512 on the CPU, full size on CUDA); no `images_N` folder needed.
- Input views: the training frames chosen by k-means over camera position and direction that the
  network sees and the published finetune steps optimize on (`input_views`, `network_views`).
Images are decoded from any Pillow mode (16-bit, palette, gray) into 8-bit RGB (`CaptureDataset`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.base_datamanager import DataManager, VanillaDataManager
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.utils.dataloaders import RandIndicesEvalDataloader
from PIL import Image
from torch import Tensor

from ilrm_nerfstudio.core.cameras import opengl_to_opencv, resize_and_crop_intrinsics, to_homogeneous
from ilrm_nerfstudio.core.errors import ILRMError, brief, one_line
from ilrm_nerfstudio.data.images import to_rgb8
from ilrm_nerfstudio.data.samplers import kmeans_views
from ilrm_nerfstudio.nerfstudio.capture_check import check_outputs, check_parser_options, explain_parse_failure
from ilrm_nerfstudio.nerfstudio.console import log_line

CPU_IMAGE_SIZE = 512  # default longest image side on the CPU


def held_out_every_8th() -> NerfstudioDataParserConfig:
    return NerfstudioDataParserConfig(eval_mode="interval", eval_interval=8)


def warn(message: str) -> None:
    log_line(message, style="yellow", prefix="[ilrm-finetune] warning: ")


class CaptureDataset(InputDataset):
    """nerfstudio's dataset of one split, any Pillow image mode decoded to upright 8-bit RGB."""

    def get_numpy_image(self, image_idx: int) -> np.ndarray:
        path = self._dataparser_outputs.image_filenames[image_idx]
        try:
            with Image.open(path) as image:
                rgb = to_rgb8(image)
        except (OSError, ValueError, SyntaxError) as error:
            raise ILRMError(f"{path}: cannot read the image ({error})") from None
        # The camera's size at the working scale (an image stored at another uniform scale too).
        camera = self._dataparser_outputs.cameras[image_idx]
        size = (int(camera.width * self.scale_factor), int(camera.height * self.scale_factor))
        if rgb.size != size:
            rgb = rgb.resize(size, resample=Image.Resampling.BILINEAR)
        return np.array(rgb, dtype=np.uint8)


@dataclass
class ILRMSceneDataManagerConfig(FullImageDatamanagerConfig):
    _target: type = field(default_factory=lambda: ILRMSceneDataManager)
    dataparser: AnnotatedDataParserUnion = field(default_factory=held_out_every_8th)
    """How the scene is read: `nerfstudio-data` (transforms.json; every 8th frame held out), `colmap`, ..."""
    image_size: int | None = None
    """Longest image side (pixels) frames are resized to on load (never enlarged), intrinsics scaled
    with them. None: 512 on the CPU, the full size on CUDA; 0: the full size."""
    num_input_views: int | None = None
    """Input views of the network start (k-means over camera position and viewing direction among
    the training frames). None: 8, or the published model's own count."""
    cache_images: Literal["cpu", "gpu"] = "gpu"
    """"gpu": on the training device (the CPU when training on the CPU)."""
    cache_images_type: Literal["uint8", "float32"] = "uint8"


class SpiralCompatible(VanillaDataManager):
    """nerfstudio 1.1.5's `ns-render spiral` accepts only VanillaDataManager instances (it starts
    from `eval_dataloader.get_camera(0)`): this base makes ours one without its ray samplers."""

    def __init__(self, *args, **kwargs):
        DataManager.__init__(self)  # what FullImageDatamanager's __init__ asks its base for

    @cached_property
    def eval_dataloader(self) -> RandIndicesEvalDataloader:
        dataset = self.eval_dataset if len(self.eval_dataset) else self.train_dataset
        return RandIndicesEvalDataloader(input_dataset=dataset, device=self.device)


class ILRMSceneDataManager(FullImageDatamanager[CaptureDataset], SpiralCompatible):
    config: ILRMSceneDataManagerConfig

    def __init__(self, config: ILRMSceneDataManagerConfig, device="cpu", test_mode="val", **kwargs):
        option = "--pipeline.datamanager."
        if config.num_input_views is not None and config.num_input_views < 1:
            raise ILRMError(f"{option}num-input-views must be >= 1 (or unset), got {config.num_input_views}")
        if config.image_size is not None and config.image_size < 0:
            raise ILRMError(f"{option}image-size must be >= 0 (0: full size), got {config.image_size}")
        check_parser_options(config.dataparser)
        self.data = Path(config.data if config.data is not None else config.dataparser.data)
        if isinstance(config.dataparser, NerfstudioDataParserConfig) and config.dataparser.downscale_factor is None:
            config.dataparser.downscale_factor = 1  # we resize ourselves: no images_N folders, no image opened
        self.default_input_views = 8
        self.device = device  # the working size needs it before nerfstudio's __init__ sets it
        try:
            if not self.data.exists():
                raise ILRMError(f"{self.data}: data folder not found")
            try:
                super().__init__(config, device, test_mode, **kwargs)
            except Exception as error:  # SfM points it cannot load (an empty points3D) only cost the points
                if not getattr(config.dataparser, "load_3D_points", False) or isinstance(error, ILRMError):
                    raise
                config.dataparser.load_3D_points = False
                super().__init__(config, device, test_mode, **kwargs)
                warn(f"{self.data}: nerfstudio could not load the SfM points ({brief(error)}); starting without them")
        except Exception as error:  # noqa: BLE001 - nerfstudio's parsers assert / raise on bad input
            message = (
                one_line(error) if isinstance(error, ILRMError) else explain_parse_failure(config, self.data, error)
            )
            if test_mode != "inference":
                raise ILRMError(message) from None
            # ns-export / ns-render camera-path need only the checkpoint: go on without the frames.
            warn(f"{message}; going on without the capture's frames (this command does not need them)")
            self._without_frames(config, device, test_mode)

    def _without_frames(self, config, device, test_mode) -> None:
        from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
        from nerfstudio.data.scene_box import SceneBox

        self.config, self.device, self.test_mode, self.includes_time = config, device, test_mode, False
        empty = DataparserOutputs(
            [], cameras_with_no_frames(), scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3]))
        )
        self.train_dataparser_outputs = empty
        self.train_dataset = self.eval_dataset = CaptureDataset(empty)
        self.exclude_batch_keys_from_device = list(self.train_dataset.exclude_batch_keys_from_device)
        DataManager.__init__(self)

    # -- the one check, and the working size ----------------------------------------------------

    def create_train_dataset(self) -> CaptureDataset:
        outputs = check_outputs(self.train_dataparser_outputs, self.data, "train", warn, self.opens_images, True)
        self.train_dataparser_outputs = outputs
        return CaptureDataset(outputs, scale_factor=self.working_scale(outputs))

    def create_eval_dataset(self) -> CaptureDataset:
        outputs = self.dataparser.get_dataparser_outputs(split=self.test_split)
        outputs = check_outputs(outputs, self.data, self.test_split, warn, self.opens_images, False)
        training = {str(path) for path in self.train_dataparser_outputs.image_filenames}
        held = [i for i, path in enumerate(outputs.image_filenames) if str(path) not in training]
        if len(held) < len(outputs.image_filenames):  # --eval-mode all: those are no held-out frames
            from ilrm_nerfstudio.nerfstudio.capture_check import subset_outputs

            outputs = subset_outputs(outputs, held)
        if not held and self.test_mode == "val":
            warn(f"{self.no_held_out_frames()}. Training goes on; no held-out PSNR is reported")
        return CaptureDataset(outputs, scale_factor=self.working_scale(self.train_dataparser_outputs))

    @property
    def opens_images(self) -> bool:
        return self.test_mode != "inference"  # as nerfstudio: inference opens no image

    def working_scale(self, outputs) -> float:
        size = self.config.image_size
        if size is None:
            size = 0 if torch.device(self.device).type == "cuda" else CPU_IMAGE_SIZE
        cameras = outputs.cameras
        longest = int(torch.maximum(cameras.width, cameras.height).max()) if len(cameras) else 0
        return 1.0 if size == 0 or longest <= size else size / longest

    def no_held_out_frames(self) -> str:
        return (
            f"{self.data}: no held-out frames (the dataparser's {self.test_split} split has none that is not a "
            "training frame); to score a run, hold frames out, e.g. nerfstudio-data --eval-mode interval"
        )

    @property
    def fixed_indices_eval_dataloader(self):
        if len(self.eval_dataset) == 0:  # nerfstudio's average over no images is an IndexError
            raise ILRMError(f"nothing to evaluate: {self.no_held_out_frames()}")
        return super().fixed_indices_eval_dataloader

    # -- the network's input views ----------------------------------------------------------------

    def ask_for_input_views(self, count: int) -> int:
        """A published network's protocol may need more input views than the default 8."""
        self.default_input_views = max(count, self.default_input_views)
        return self.default_input_views

    @cached_property
    def input_indices(self) -> list[int]:
        """Indices into the training dataset of the input views (sorted)."""
        n = len(self.train_dataset)
        count = self.config.num_input_views or self.default_input_views
        return kmeans_views(self.training_c2w(), min(count, n), list(range(n)))

    def training_c2w(self) -> Tensor:
        """OpenCV camera-to-world [N, 4, 4] of every training frame (dataparser frame)."""
        return opengl_to_opencv(to_homogeneous(self.train_dataset.cameras.camera_to_worlds.double()))

    def input_views(self) -> list[tuple]:
        """(camera [1], data) of every input view at the working size, undistorted."""
        cameras = self.train_dataset.cameras.to(self.device)
        views = []
        for i in self.input_indices:
            data = dict(self.cached_train[i], image=self.cached_train[i]["image"].to(self.device))
            views.append((cameras[i : i + 1], data))
        return views

    def network_views(self, height: int, width: int, indices: list[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Training frames (default: the input views) at the network's resolution, resized to cover
        and center cropped, intrinsics adjusted: images [V, 3, H, W] in [0, 1], OpenCV c2w [V, 4, 4]
        in the dataparser's frame, K [V, 3, 3]."""
        indices = self.input_indices if indices is None else indices
        images, Ks = [], []
        for i in indices:
            image = self.cached_train[i]["image"].cpu().float().permute(2, 0, 1)[None, :3] / 255.0
            K = self.train_dataset.cameras[i].get_intrinsics_matrices().double()
            K, size, (top, left) = resize_and_crop_intrinsics(K, image.shape[-2:], (height, width))
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
            images.append(image[0, :, top : top + height, left : left + width].clamp(0, 1))
            Ks.append(K)
        return torch.stack(images), self.training_c2w()[indices], torch.stack(Ks)

    def point_cloud(self) -> tuple[Tensor, Tensor] | None:
        """The dataparser's finite SfM points (xyz [P, 3], rgb [P, 3] in [0, 1]), if any."""
        metadata = self.train_dataparser_outputs.metadata
        if "points3D_xyz" not in metadata:
            return None
        xyz, rgb = metadata["points3D_xyz"].float(), metadata["points3D_rgb"].float() / 255.0
        finite = torch.isfinite(xyz).all(-1)
        return xyz[finite], rgb[finite]


def cameras_with_no_frames():
    from nerfstudio.cameras.cameras import Cameras

    zeros = torch.zeros(0, 1)
    return Cameras(torch.zeros(0, 3, 4), zeros, zeros, zeros, zeros, zeros.long(), zeros.long())
