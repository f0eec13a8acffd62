"""Scene loading, view sampling, camera normalization and exact intrinsics after resize/crop."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ilrm_nerfstudio.core.cameras import average_camera, normalize_poses, resize_and_crop_intrinsics
from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.data.samplers import sample_bounded
from ilrm_nerfstudio.data.scene import load_nerfstudio_scene, load_view
from tests.test_network import random_c2w


def write_scene(root, num_frames=6, size=(30, 40), corrupt=None, pose_override=None):
    """A nerfstudio scene folder with random images (H, W = size)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    frames = []
    c2w = random_c2w(num_frames, torch.Generator().manual_seed(0))
    for i in range(num_frames):
        name = f"images/frame_{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / name)
        pose = c2w[i].tolist() if pose_override is None or i != 0 else pose_override
        frames.append({"file_path": name, "transform_matrix": pose})
    if corrupt is not None:
        (root / frames[corrupt]["file_path"]).write_bytes(b"not a png")
    meta = {
        "camera_model": "OPENCV",
        "fl_x": 35.0,
        "fl_y": 36.0,
        "cx": 21.5,
        "cy": 14.0,
        "w": size[1],
        "h": size[0],
        "frames": frames,
    }
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def project(K, points):  # camera-space points [N, 3] -> pixels [N, 2]
    uvw = points @ K.T
    return uvw[:, :2] / uvw[:, 2:]


@pytest.mark.parametrize("in_hw, out_hw", [((360, 640), (256, 256)), ((30, 40), (32, 32)), ((64, 48), (32, 48))])
def test_resize_and_crop_intrinsics_are_exact(in_hw, out_hw):
    K = torch.tensor([[300.0, 0, 310.0], [0, 290.0, 170.0], [0, 0, 1]], dtype=torch.float64)
    new_K, (rh, rw), (top, left) = resize_and_crop_intrinsics(K, in_hw, out_hw)
    assert rh >= out_hw[0] and rw >= out_hw[1]
    points = torch.randn(50, 3, dtype=torch.float64) + torch.tensor([0, 0, 5.0], dtype=torch.float64)
    original = project(K, points)
    # the image-plane map of resize + crop: scale each axis by the resized/original size, shift
    expected = original * torch.tensor([rw / in_hw[1], rh / in_hw[0]], dtype=torch.float64) - torch.tensor(
        [left, top], dtype=torch.float64
    )
    torch.testing.assert_close(project(new_K, points), expected)


def test_load_view_resizes_crops_and_rescales(tmp_path):
    scene = load_nerfstudio_scene(write_scene(tmp_path / "s", size=(30, 40)))
    image, K = load_view(scene, 1, 16, 16)
    assert image.shape == (3, 16, 16) and 0 <= image.min() and image.max() <= 1
    # resized to 16 x 21 (covering 16 x 16), cropped 2 columns from the left
    assert torch.allclose(K[0, 0], torch.tensor(35.0 * 21 / 40)) and torch.allclose(
        K[1, 1], torch.tensor(36.0 * 16 / 30)
    )
    assert torch.allclose(K[0, 2], torch.tensor(21.5 * 21 / 40 - 2)) and torch.allclose(
        K[1, 2], torch.tensor(14.0 * 16 / 30)
    )


def test_opengl_poses_become_opencv(tmp_path):
    scene = load_nerfstudio_scene(write_scene(tmp_path / "s"))
    meta = json.loads((tmp_path / "s" / "transforms.json").read_text())
    gl = torch.tensor(meta["frames"][2]["transform_matrix"])
    # OpenCV looks along +z, OpenGL along -z: forward axes are opposite, positions equal
    torch.testing.assert_close(scene.c2w[2, :3, 2].float(), -gl[:3, 2])
    torch.testing.assert_close(scene.c2w[2, :3, 3].float(), gl[:3, 3])


@pytest.mark.parametrize(
    "problem, kwargs, message",
    [
        ("nan pose", {"pose_override": [[float("nan")] * 4] * 4}, "NaN or infinite"),
        ("not rigid", {"pose_override": [[2.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}, "not a rigid"),
    ],
)
def test_bad_poses_are_named(tmp_path, problem, kwargs, message):
    write_scene(tmp_path / "s", **kwargs)
    with pytest.raises(ILRMError, match=message) as error:
        load_nerfstudio_scene(tmp_path / "s")
    assert "transforms.json" in str(error.value) and "frame 0" in str(error.value)


def test_missing_and_corrupt_images_are_named(tmp_path):
    root = write_scene(tmp_path / "s", corrupt=3)
    scene = load_nerfstudio_scene(root)
    with pytest.raises(ILRMError, match=r"frame 3 \(.*frame_00003.png\): not an image"):
        load_view(scene, 3, 16, 16)
    (root / "images" / "frame_00004.png").unlink()
    with pytest.raises(ILRMError, match=r"frame 4: image file .*frame_00004.png not found"):
        load_nerfstudio_scene(root)
    with pytest.raises(ILRMError, match="not found"):
        load_nerfstudio_scene(tmp_path / "nowhere")


def test_sample_bounded_targets_between_contexts_and_disjoint():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        context, targets = sample_bounded(24, 2, 3, 4, 10, generator)
        assert len(context) == 2 and len(targets) == 3
        assert not set(context) & set(targets)
        assert all(context[0] < t < context[-1] for t in targets)
        assert 4 <= context[-1] - context[0] <= 10
    assert sample_bounded(24, 3, 2, 4, 10, None) == sample_bounded(24, 3, 2, 4, 10, None)
    with pytest.raises(ILRMError, match="5 frames, but 3 context \\+ 3 target views are needed"):
        sample_bounded(5, 3, 3, 2, 4, generator)


def test_normalize_poses_centers_and_scales():
    c2w = random_c2w(5, torch.Generator().manual_seed(4)).double()
    context, others, scale = normalize_poses(c2w[:3], c2w[3:])
    torch.testing.assert_close(average_camera(context), torch.eye(4, dtype=torch.float64), atol=1e-9, rtol=0)
    assert abs(context[:, :3, 3].norm(dim=-1).max().item() - 1.0) < 1e-9
    # relative geometry is preserved up to the scale
    rel_before = torch.linalg.inv(c2w[0]) @ c2w[4]
    rel_after = torch.linalg.inv(context[0]) @ others[1]
    torch.testing.assert_close(rel_after[:3, :3], rel_before[:3, :3])
    torch.testing.assert_close(rel_after[:3, 3], rel_before[:3, 3] * scale)
