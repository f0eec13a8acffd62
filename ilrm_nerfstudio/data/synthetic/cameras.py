"""Cameras of a scene: poses along its trajectory (walk-through or orbit) and intrinsics.

Poses are OpenCV camera-to-world [4, 4] (x right, y down, z forward) in a z-up world.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .scene import Scene


def walk_positions(traj: dict, s: np.ndarray) -> np.ndarray:
    """Camera centers [N, 3] of a walk-through at path parameters s [N] in [0, 1]."""
    start, end = np.asarray(traj["start"]), np.asarray(traj["end"])
    along = end - start
    side = np.array([-along[1], along[0], 0.0]) / max(np.linalg.norm(along[:2]), 1e-9)
    sway = traj["sway"] * np.sin(np.pi * s)  # smooth sideways bow, zero at both ends
    bob = traj["bob"] * np.sin(2 * np.pi * s)  # gentle height change
    return start + s[:, None] * along + sway[:, None] * side + bob[:, None] * np.array([0, 0, 1.0])


def look_at(position: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """OpenCV c2w [N, 4, 4] from camera centers [N, 3] and viewing directions [N, 3] (z-up
    world, no roll)."""
    forward = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(forward, right)  # right x down = forward (right-handed)
    c2w = np.tile(np.eye(4), (len(position), 1, 1))
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, down, forward, position
    return c2w


def camera_poses(scene: Scene, num_frames: int) -> np.ndarray:
    """OpenCV c2w [num_frames, 4, 4] sampled uniformly along the scene's trajectory."""
    traj = scene.trajectory
    s = np.linspace(0.0, 1.0, num_frames)  # [N]
    if traj["kind"] == "walk":
        position = walk_positions(traj, s)
        yaw = traj["yaw0"] + traj["yaw_delta"] * s + traj["yaw_wobble"] * np.sin(3 * np.pi * s)
        pitch = traj["pitch0"] + traj["pitch_delta"] * s
        forward = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], -1)
    else:
        angle = traj["angle0"] + traj["angle_span"] * s
        height = traj["height0"] + traj["height_delta"] * np.sin(np.pi * s)
        position = np.stack([traj["radius"] * np.cos(angle), traj["radius"] * np.sin(angle), height], -1)
        target = np.asarray(traj["target"]) + s[:, None] * np.asarray(traj["target_drift"])
        forward = target - position
    return look_at(position, forward)


def intrinsics(scene: Scene, height: int, width: int) -> np.ndarray:
    """Pixel-unit K [3, 3]: square pixels, centered principal point, the scene's horizontal FOV."""
    focal = 0.5 * width / np.tan(np.deg2rad(scene.fov_deg) / 2)
    return np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
