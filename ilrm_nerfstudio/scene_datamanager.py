"""Data manager of the per-scene stage (`ilrm-finetune`): one scene through any nerfstudio
dataparser (default: `nerfstudio-data`, i.e. ns-process-data output; `colmap` and the others as
subcommands), full images rather than rays.

- Input views: the frames of the dataparser's train split chosen by `view_selection` ("all",
  "every-kth" with `view_stride`, or "kmeans" over camera position and direction with
  `num_input_views`). They feed the network (resized/cropped to its resolution, `network_views`)
  and are the only images the finetune optimizes on (at the dataparser's resolution).
- Held-out views: the dataparser's eval split; ns-eval scores them.

It is a `VanillaDataManager` subclass because nerfstudio's tools check for that type
(`ns-render spiral`, `ns-render dataset`, the viewer's `train_dataset`); its ray samplers and
loader processes are not used. Lens distortion is removed from the cached images (as nerfstudio's
FullImageDatamanager does) and the cameras of the cached images become pinholes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal, Type

import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.utils.dataloaders import RandIndicesEvalDataloader
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from .cameras import opengl_to_opencv, to_homogeneous
from .samplers import kmeans_views
from .scenes import Scene, SceneError, load_view
from .sources import scene_from_dataparser_outputs


@dataclass
class ILRMSceneDataManagerConfig(VanillaDataManagerConfig):
    _target: Type = field(default_factory=lambda: ILRMSceneDataManager)
    dataparser: AnnotatedDataParserUnion = field(default_factory=NerfstudioDataParserConfig)
    """How the scene is read: `nerfstudio-data` (transforms.json, ns-process-data output), `colmap`, ..."""
    view_selection: Literal["all", "every-kth", "kmeans"] = "kmeans"
    """Input views among the training frames: every one, every `view_stride`-th, or
    `num_input_views` chosen by k-means over camera position and viewing direction."""
    num_input_views: int = 8
    """Number of input views for view_selection="kmeans"."""
    view_stride: int = 2
    """k for view_selection="every-kth" (frames 0, k, 2k, ... of the training split)."""
    views_per_step: int = 0
    """Views rendered per training step: 0 = every input view, so that one step is one epoch (the
    published recipe); k > 0: k random input views per step."""
    seed: int = 0


class ILRMSceneDataManager(VanillaDataManager):
    config: ILRMSceneDataManagerConfig

    def __init__(self, config: ILRMSceneDataManagerConfig, device="cpu", test_mode: Literal["test", "val", "inference"] = "val", world_size: int = 1, local_rank: int = 0, **kwargs):
        if config.num_input_views < 1 or config.view_stride < 1 or config.views_per_step < 0:
            raise SceneError("num_input_views and view_stride must be >= 1, views_per_step >= 0")
        data = config.data if config.data is not None else config.dataparser.data
        if not Path(data).exists():
            if test_mode != "inference":
                raise SceneError(f"{data}: data folder not found")
            # ns-export / ns-render camera-path need only the checkpoint: work without the data.
            self._init_without_data(config, device, test_mode, world_size, local_rank)
            return
        super().__init__(config, device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank, **kwargs)

    def _init_without_data(self, config, device, test_mode, world_size, local_rank) -> None:
        from nerfstudio.data.datamanagers.base_datamanager import DataManager
        from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
        from nerfstudio.data.scene_box import SceneBox

        self.config, self.device, self.test_mode = config, device, test_mode
        self.world_size, self.local_rank, self.sampler = world_size, local_rank, None
        self.test_split = "test"
        self.dataparser_config = config.dataparser
        self.includes_time = False
        empty = Cameras(camera_to_worlds=torch.zeros(0, 3, 4), fx=torch.zeros(0, 1), fy=torch.zeros(0, 1), cx=torch.zeros(0, 1), cy=torch.zeros(0, 1), width=torch.zeros(0, 1, dtype=torch.long), height=torch.zeros(0, 1, dtype=torch.long))
        self.train_dataparser_outputs = DataparserOutputs(image_filenames=[], cameras=empty, scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])))
        self.train_dataset = InputDataset(self.train_dataparser_outputs)
        self.eval_dataset = InputDataset(self.train_dataparser_outputs)
        self.exclude_batch_keys_from_device = list(self.train_dataset.exclude_batch_keys_from_device)
        DataManager.__init__(self)

    # -- which views ----------------------------------------------------------------------------

    @cached_property
    def input_indices(self) -> list[int]:
        """Indices into the training dataset of the input views (sorted)."""
        n = len(self.train_dataset)
        cfg = self.config
        if n == 0:
            raise SceneError(f"{self.config.data}: the dataparser's training split is empty")
        if cfg.view_selection == "all":
            return list(range(n))
        if cfg.view_selection == "every-kth":
            return list(range(0, n, cfg.view_stride))
        c2w = opengl_to_opencv(to_homogeneous(self.train_dataset.cameras.camera_to_worlds.double()))
        return kmeans_views(c2w, cfg.num_input_views, list(range(n)))

    # -- images --------------------------------------------------------------------------------

    def _load_views(self, dataset: InputDataset, indices: list[int]) -> tuple[Cameras, list[dict]]:
        """Images (float [H, W, C] on the device, undistorted) and their pinhole cameras."""
        from nerfstudio.data.datamanagers.full_images_datamanager import _undistort_image

        cameras = dataset.cameras[torch.tensor(indices, dtype=torch.long)]
        cameras = Cameras(
            camera_to_worlds=cameras.camera_to_worlds.clone(),
            fx=cameras.fx.clone(), fy=cameras.fy.clone(), cx=cameras.cx.clone(), cy=cameras.cy.clone(),
            width=cameras.width.clone(), height=cameras.height.clone(),
            distortion_params=None, camera_type=CameraType.PERSPECTIVE,
            times=cameras.times, metadata=cameras.metadata,
        )  # fmt: skip
        items = []
        for j, index in enumerate(indices):
            data = dataset.get_data(index, image_type="float32")
            camera = dataset.cameras[index].reshape(())
            if camera.camera_type.item() != CameraType.PERSPECTIVE.value:
                raise SceneError(f"{dataset.image_filenames[index]}: only perspective cameras are supported")
            if camera.distortion_params is not None and bool(torch.any(camera.distortion_params != 0)):
                K = camera.get_intrinsics_matrices().numpy()
                K, image, _ = _undistort_image(camera, camera.distortion_params.numpy(), data, data["image"].numpy(), K)
                data["image"] = torch.from_numpy(image)
                cameras.fx[j], cameras.fy[j], cameras.cx[j], cameras.cy[j] = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
                cameras.height[j], cameras.width[j] = image.shape[0], image.shape[1]
            data["image"] = data["image"].to(self.device)
            items.append(data)
        return cameras.to(self.device), items

    @cached_property
    def input_views(self) -> tuple[Cameras, list[dict]]:
        CONSOLE.print(f"loading {len(self.input_indices)} input views", soft_wrap=True, markup=False, highlight=False)
        return self._load_views(self.train_dataset, self.input_indices)

    @cached_property
    def eval_views(self) -> tuple[Cameras, list[dict]]:
        return self._load_views(self.eval_dataset, list(range(len(self.eval_dataset))))

    def network_views(self, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
        """The input views at the network's resolution (resized to cover, center cropped, intrinsics
        adjusted exactly, distortion removed): images [V, 3, H, W], OpenCV c2w [V, 4, 4] in the
        dataparser's frame, K [V, 3, 3]."""
        outputs = self.train_dataparser_outputs
        scene: Scene = scene_from_dataparser_outputs(outputs, Path(str(self.config.data)).name)
        position = {str(path): i for i, path in enumerate(scene.image_paths)}
        images, Ks = [], []
        for index in self.input_indices:
            image, K = load_view(scene, position[str(outputs.image_filenames[index])], height, width)
            images.append(image)
            Ks.append(K)
        c2w = opengl_to_opencv(to_homogeneous(outputs.cameras.camera_to_worlds[self.input_indices].double()))
        return torch.stack(images), c2w, torch.stack(Ks)

    # -- nerfstudio hooks ----------------------------------------------------------------------

    def setup_train(self):
        """Nothing to set up: input views are loaded on first use."""

    def setup_eval(self):
        # `ns-render spiral` starts from eval_dataloader.get_camera(0).
        self.eval_dataloader = RandIndicesEvalDataloader(input_dataset=self.eval_dataset, device=self.device)

    @property
    def fixed_indices_eval_dataloader(self) -> list[tuple[Cameras, dict]]:
        """Every held-out view as (camera [1], {"image": [H, W, C]}), for ns-eval."""
        cameras, items = self.eval_views
        return [(cameras[i : i + 1], items[i]) for i in range(len(items))]

    def next_train(self, step: int) -> tuple[Cameras, dict]:
        self.train_count += 1
        cameras, items = self.input_views
        count = len(items)
        k = self.config.views_per_step
        if k <= 0 or k >= count:
            chosen = list(range(count))
        else:
            chosen = sorted(random.Random(self.config.seed * 1_000_003 + step).sample(range(count), k))
        images = [items[i]["image"] for i in chosen]
        if len({tuple(image.shape) for image in images}) > 1:
            raise SceneError("the input views have different image sizes; use --pipeline.datamanager.views-per-step 1")
        batch = {"image": torch.stack(images), "indices": torch.tensor(chosen)}
        return cameras[torch.tensor(chosen, device=cameras.device)], batch

    def next_eval(self, step: int) -> tuple[Cameras, dict]:
        return self.next_eval_image(step)

    def next_eval_image(self, step: int) -> tuple[Cameras, dict]:
        cameras, items = self.eval_views
        if not items:
            raise SceneError("the dataparser's evaluation split is empty")
        i = self.eval_count % len(items)
        self.eval_count += 1
        return cameras[i : i + 1], items[i]

    def get_train_rays_per_batch(self) -> int:
        cameras = self.train_dataset.cameras
        pixels = int(cameras.width.reshape(-1)[0]) * int(cameras.height.reshape(-1)[0])
        k = self.config.views_per_step
        return pixels * (len(self.input_indices) if k <= 0 else k)

    def get_eval_rays_per_batch(self) -> int:
        cameras = self.eval_dataset.cameras
        return int(cameras.width.reshape(-1)[0]) * int(cameras.height.reshape(-1)[0]) if len(cameras) else 0
