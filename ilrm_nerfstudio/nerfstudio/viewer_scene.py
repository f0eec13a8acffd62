"""The one scene an `ilrm` checkpoint holds, for the single-scene tools (ns-viewer, ns-render,
ns-export): the network's reconstruction of the held-out scene `--pipeline.model.viewer-scene`,
stored in the model's `gauss_params` by a training callback before each checkpoint
(`ILRMPipeline.get_training_callbacks`), in the scene's own frame oriented and scaled as
nerfstudio's dataparser does by default (average camera up = +z, cameras centered and inside
[-1, 1]); `<run>/held_scene.json` records that similarity: x_viewer = scale * (R x_file + t). In
test mode the data manager's training dataset becomes that scene's frames (`SceneViewsDataset`),
for the viewer's camera frusta and `ns-render interpolate --pose-source train`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from nerfstudio.cameras.camera_utils import auto_orient_and_center_poses
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.utils import comms

from ilrm_nerfstudio.core.cameras import opencv_to_opengl
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.core.frames import normalized_to_world, to_viewer_frame, transform_gaussians
from ilrm_nerfstudio.data.episodes import find_episode
from ilrm_nerfstudio.data.scene import Scene
from ilrm_nerfstudio.nerfstudio.console import log_line

Tensor = torch.Tensor


def viewer_transform(scene: Scene) -> tuple[Tensor, float]:
    """(transform [3, 4], scale) from the scene's frame to its viewer frame, as nerfstudio's
    dataparser computes it by default (orientation "up", centered on the poses, scaled into [-1, 1])."""
    c2w_gl = opencv_to_opengl(scene.c2w.float())  # nerfstudio's helper works in float32
    poses, transform = auto_orient_and_center_poses(c2w_gl, method="up", center_method="poses")
    largest = float(poses[:, :3, 3].abs().max())
    return transform.double(), 1.0 / largest if largest > 1e-8 else 1.0


@torch.no_grad()
def hold_eval_scene(model, datamanager, which: str, run_dir: Path | None = None) -> None:
    """Store the network's reconstruction of evaluation scene `which` in `model`, in the scene's
    viewer frame, and record that frame in `run_dir/held_scene.json`. Rank 0 only (the others
    write no checkpoint)."""
    if not comms.is_main_process():
        return
    dataset = datamanager.eval_dataset
    try:
        index = find_episode(dataset.episodes, which)
    except ILRMError as error:
        log_line(f"ilrm: the checkpoint holds no scene for the single-scene tools: {error}", style="yellow")
        return
    batch, scene = datamanager.eval_batch([index]), dataset.episode_scene(index)
    was_training = model.training
    model.eval()
    try:
        gaussians = model.reconstruct(batch["context_images"], batch["context_c2w"], batch["context_K"])
    finally:
        model.train(was_training)
    ids = batch["context_indices"][0].tolist()
    context = ids if scene.frame_ids is None else [scene.frame_ids.index(f) for f in ids]
    device = gaussians.means.device
    gaussians = normalized_to_world(gaussians.map(lambda t: t[0].float()), scene.c2w[context].to(device))
    transform, scale = viewer_transform(scene)
    R, t = transform[:, :3].float().to(device), transform[:, 3].float().to(device)
    gaussians = transform_gaussians(gaussians.map(lambda t_: t_.float()), R, scale * t, scale)
    model.set_scene_gaussians(gaussians)
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        record = {
            "scene": batch["scene"][0],
            "transform": transform.tolist(),
            "scale": scale,
            "note": "x_viewer = scale * (transform[:, :3] @ x + transform[:, 3]), x in the scene's own (file) frame",
        }
        (Path(run_dir) / "held_scene.json").write_text(json.dumps(record, indent=2))
    log_line(
        f"checkpoint holds held-out scene {batch['scene'][0]} ({len(gaussians)} Gaussians) for ns-viewer / "
        "ns-render / ns-export",
        style="cyan",
    )


class SceneViewsDataset(InputDataset):
    """Every frame of a `Scene` as a nerfstudio InputDataset, cameras in the viewer frame (images
    read through the scene, so chunk scenes with in-memory JPEGs work too)."""

    def __init__(self, scene: Scene):
        self.scene = scene
        transform, scale = viewer_transform(scene)
        c2w = to_viewer_frame(opencv_to_opengl(scene.c2w.double()), transform, scale).float()[:, :3, :4]
        K, sizes = scene.K.float(), torch.tensor(scene.image_sizes)
        cameras = Cameras(
            camera_to_worlds=c2w,
            fx=K[:, 0, 0:1],
            fy=K[:, 1, 1:2],
            cx=K[:, 0, 2:3],
            cy=K[:, 1, 2:3],
            height=sizes[:, 0:1],
            width=sizes[:, 1:2],
            camera_type=CameraType.PERSPECTIVE,
        )
        box = SceneBox(aabb=torch.tensor([[-2.0] * 3, [2.0] * 3]))  # cameras are inside [-1, 1]
        super().__init__(DataparserOutputs(image_filenames=list(scene.image_paths), cameras=cameras, scene_box=box))

    def get_numpy_image(self, image_idx: int) -> np.ndarray:
        image = self.scene.read_image(image_idx)
        height, width = self.scene.image_sizes[image_idx]
        if (image.height, image.width) != (height, width):  # a downscaled copy: match the camera
            image = image.resize((width, height))
        return np.asarray(image, dtype=np.uint8)
