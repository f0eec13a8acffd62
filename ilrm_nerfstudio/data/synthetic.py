"""Procedural multi-view data set with exact poses: the plugin's default, download-free data.

Each scene is a small analytic 3D world (a furnished room, or a cluster of objects on a ground
plane under a sky gradient) that is ray-traced in numpy, so every image is *exactly* consistent
with its written camera pose and intrinsics: no Gaussian renderer, no estimated poses.

Layout written by `generate_dataset` (nerfstudio format, one folder per scene)::

    <output>/manifest.json                      scene names per split + generation arguments
    <output>/{train,test}/<scene>/transforms.json
    <output>/{train,test}/<scene>/images/frame_00000.png ...

Conventions: world is z-up; cameras are OpenCV c2w [4, 4] (x right, y down, z forward)
internally and OpenGL c2w (y up, z back) in `transforms.json`, as nerfstudio expects. Depth maps
returned by `render_view` are z-depth (distance along the optical axis), `inf` where a ray hits
the sky. Pure numpy + pillow: importing this module does not import torch or nerfstudio.

Command line: ``python -m ilrm_nerfstudio.data.synthetic --output DIR`` (also ``ilrm-generate-data``).
"""

from __future__ import annotations

import argparse
import colorsys
import ctypes
import functools
import json
import multiprocessing as mp
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ilrm_nerfstudio.core.errors import ILRMError

GENERATOR_NAME = "ilrm_nerfstudio.synthetic"  # recorded in manifests: unchanged by the move to data/
GENERATOR_VERSION = 1
# OpenCV <-> OpenGL camera axes: flip y and z (its own inverse). Exact in floating point.
_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
_EPS = 1e-6  # minimum ray parameter for a hit (avoids self-intersection of shadow rays)



# --------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------


@dataclass
class Texture:
    """A solid (3D) texture: a scalar pattern m(p) in [0, 1] mixing two colors.

    Solid textures need no surface parametrization, so every primitive can use every kind.
    `scale` is the feature size in world units (square side, stripe width, noise cell, ...).
    """

    kind: str  # "checker" | "stripes" | "noise" | "gradient" | "rings" | "solid"
    color_a: np.ndarray  # [3] rgb in [0, 1]
    color_b: np.ndarray  # [3]
    scale: float
    direction: np.ndarray  # [3] unit vector (stripes, gradient, ring axis)
    offset: np.ndarray  # [3] random shift so pattern edges never coincide with faces
    lattice: np.ndarray  # [L, L, L] value-noise lattice in [0, 1]


@dataclass
class Scene:
    """Everything needed to ray-trace one scene and to place its cameras.

    Objects are stored as arrays per primitive type (vectorized tracing loops over primitives,
    never over pixels). `material` entries index `materials`.
    """

    kind: str  # "room" | "objects"
    materials: list[Texture]
    light_dir: np.ndarray  # [3] unit vector towards the key light (casts shadows)
    ambient: float
    fill_dir: np.ndarray  # [3] unit vector towards a weaker fill light (no shadows), so faces
    # turned away from the key light still show shading variation
    fov_deg: float  # horizontal field of view
    sphere_center: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # [S, 3]
    sphere_radius: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [S]
    sphere_material: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # [S]
    box_center: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # [B, 3]
    box_half: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # [B, 3] half sizes
    box_yaw: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [B] rotation about z
    box_material: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # [B]
    box_shadow: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # [B] casts shadow
    cyl_center: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [C, 2] axis x, y
    cyl_radius: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [C]
    cyl_z: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [C, 2] bottom, top
    cyl_material: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # [C]
    # Room interior (kind "room"): box [lo, hi]; wall materials for faces x-, x+, y-, y+, z-, z+.
    room_lo: np.ndarray | None = None  # [3]
    room_hi: np.ndarray | None = None  # [3]
    room_material: np.ndarray | None = None  # [6]
    # Ground plane z = 0 and sky (kind "objects").
    ground_material: int = -1
    ground_radius: float = 40.0
    sky_horizon: np.ndarray = field(default_factory=lambda: np.ones(3))  # [3]
    sky_zenith: np.ndarray = field(default_factory=lambda: np.ones(3))  # [3]
    # Camera trajectory parameters (see `camera_poses`).
    trajectory: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Random scene construction
# --------------------------------------------------------------------------------------------


def _random_color(rng: np.random.Generator, sat: tuple[float, float] = (0.15, 0.9),
                  val: tuple[float, float] = (0.3, 0.95), hue: float | None = None) -> np.ndarray:
    h = rng.uniform() if hue is None else hue % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)))


def _random_texture(rng: np.random.Generator, scale_range: tuple[float, float],
                    kinds: tuple[str, ...] = ("checker", "stripes", "noise", "gradient", "rings")
                    ) -> Texture:
    kind = str(rng.choice(kinds))
    hue = rng.uniform()
    color_a = _random_color(rng, hue=hue)
    # Second color: either a strong hue shift or the same hue with another brightness; redrawn
    # until it differs clearly from the first, so every texture has visible contrast.
    for _ in range(20):
        if rng.uniform() < 0.5:
            color_b = _random_color(rng, hue=hue + rng.uniform(0.25, 0.75))
        else:
            color_b = _random_color(rng, hue=hue, val=(0.1, 0.4) if color_a.max() > 0.6 else (0.7, 1.0))
        if np.linalg.norm(color_a - color_b) > 0.35:
            break
    direction = rng.normal(size=3)
    return Texture(kind=kind, color_a=color_a, color_b=color_b,
                   scale=float(rng.uniform(*scale_range)),
                   direction=direction / np.linalg.norm(direction),
                   offset=rng.uniform(0.0, 16.0, size=3),
                   lattice=rng.uniform(size=(8, 8, 8)))


def _light(rng: np.random.Generator) -> np.ndarray:
    elevation, azimuth = np.deg2rad(rng.uniform(35, 70)), rng.uniform(0, 2 * np.pi)
    return np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                     np.sin(elevation)])


class _ObjectBuilder:
    """Collects primitives. Objects stand on z = 0 (floor or ground); some spheres float or sit
    on a box. Footprints (x, y, radius) keep objects apart and away from camera paths."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self.spheres: list[tuple] = []
        self.boxes: list[tuple] = []
        self.cyls: list[tuple] = []
        self.footprints: list[tuple[float, float, float]] = []  # (x, y, radius) on the floor

    def add_material(self, texture: Texture) -> int:
        self.scene.materials.append(texture)
        return len(self.scene.materials) - 1

    def free(self, x: float, y: float, radius: float, gap: float) -> bool:
        return all(np.hypot(x - fx, y - fy) >= radius + fr + gap for fx, fy, fr in self.footprints)

    def add_random(self, rng: np.random.Generator, x: float, y: float, size: float,
                   tex_scale: tuple[float, float]) -> float:
        """Adds a random object standing at (x, y); returns its footprint radius."""
        mat = self.add_material(_random_texture(rng, tex_scale))
        shape = rng.choice(["sphere", "box", "cylinder"], p=[0.3, 0.4, 0.3])
        if shape == "sphere":
            radius = size
            lift = rng.uniform(0, 0.6) if rng.uniform() < 0.25 else 0.0  # some float
            self.spheres.append(((x, y, radius + lift), radius, mat))
            footprint = radius
        elif shape == "box":
            half = np.array([size * rng.uniform(0.6, 1.2), size * rng.uniform(0.6, 1.2),
                             size * rng.uniform(0.5, 1.6)])
            self.boxes.append(((x, y, half[2]), half, rng.uniform(0, np.pi), mat, True))
            footprint = float(np.hypot(half[0], half[1]))
            if rng.uniform() < 0.35:  # a small object on top: stacked content, depth edges
                small = size * rng.uniform(0.3, 0.5)
                top_mat = self.add_material(_random_texture(rng, tex_scale))
                self.spheres.append(((x, y, 2 * half[2] + small), small, top_mat))
        else:
            radius = size * rng.uniform(0.5, 1.0)
            height = size * rng.uniform(1.0, 4.0)
            self.cyls.append(((x, y), radius, (0.0, height), mat))
            footprint = radius
        self.footprints.append((x, y, footprint))
        return footprint

    def finish(self) -> None:
        s = self.scene
        if self.spheres:
            s.sphere_center = np.array([c for c, _, _ in self.spheres], float)
            s.sphere_radius = np.array([r for _, r, _ in self.spheres], float)
            s.sphere_material = np.array([m for _, _, m in self.spheres], int)
        if self.boxes:
            s.box_center = np.array([b[0] for b in self.boxes], float)
            s.box_half = np.array([b[1] for b in self.boxes], float)
            s.box_yaw = np.array([b[2] for b in self.boxes], float)
            s.box_material = np.array([b[3] for b in self.boxes], int)
            s.box_shadow = np.array([b[4] for b in self.boxes], bool)
        if self.cyls:
            s.cyl_center = np.array([c for c, _, _, _ in self.cyls], float)
            s.cyl_radius = np.array([r for _, r, _, _ in self.cyls], float)
            s.cyl_z = np.array([z for _, _, z, _ in self.cyls], float)
            s.cyl_material = np.array([m for _, _, _, m in self.cyls], int)


def _walk_positions(traj: dict, s: np.ndarray) -> np.ndarray:
    """Camera centers [N, 3] of a walk-through at path parameters s [N] in [0, 1]."""
    start, end = np.asarray(traj["start"]), np.asarray(traj["end"])
    along = end - start
    side = np.array([-along[1], along[0], 0.0]) / max(np.linalg.norm(along[:2]), 1e-9)
    sway = traj["sway"] * np.sin(np.pi * s)  # smooth sideways bow, zero at both ends
    bob = traj["bob"] * np.sin(2 * np.pi * s)  # gentle height change
    return start + s[:, None] * along + sway[:, None] * side + bob[:, None] * np.array([0, 0, 1.0])


def _make_room(rng: np.random.Generator, scene: Scene) -> None:
    size = np.array([rng.uniform(5.0, 9.0), rng.uniform(4.0, 7.0), rng.uniform(2.5, 3.4)])
    scene.room_lo = np.array([-size[0] / 2, -size[1] / 2, 0.0])
    scene.room_hi = np.array([size[0] / 2, size[1] / 2, size[2]])
    b = _ObjectBuilder(scene)
    floor = b.add_material(_random_texture(rng, (0.25, 0.7), ("checker", "stripes", "noise", "rings")))
    ceiling = b.add_material(_random_texture(rng, (0.4, 1.0), ("noise", "gradient", "checker")))
    wall = b.add_material(_random_texture(rng, (0.25, 0.8)))
    walls = [wall] * 4
    if rng.uniform() < 0.6:  # an accent wall
        walls[int(rng.integers(4))] = b.add_material(_random_texture(rng, (0.2, 0.6)))
    scene.room_material = np.array(walls + [floor, ceiling], int)

    # Walk-through: start anywhere (0.8 m from walls), look roughly across the room, move a bit
    # forward, sideways or diagonally; yaw and pitch drift gently (RE10K-like).
    margin = 0.8
    lo, hi = scene.room_lo[:2] + margin, scene.room_hi[:2] - margin
    start = rng.uniform(lo, hi)
    yaw0 = np.arctan2(-start[1], -start[0]) + np.deg2rad(rng.uniform(-40, 40))
    if np.linalg.norm(start) < 0.5:
        yaw0 = rng.uniform(0, 2 * np.pi)
    motion = yaw0 + np.deg2rad(rng.choice([0.0, 0.0, 45.0, -45.0, 90.0, -90.0]) + rng.uniform(-15, 15))
    length = rng.uniform(0.6, 1.8)
    # If a wall cuts the walk short, walk the other way or towards the room center: the views
    # need a real baseline (>= 0.5 m).
    to_center = -start / max(np.linalg.norm(start), 1e-9)
    heading = np.array([np.cos(motion), np.sin(motion)])
    ends = [np.clip(start + length * direction, lo, hi) for direction in (heading, -heading, to_center)]
    moved = [np.linalg.norm(e - start) for e in ends]
    end = next((e for e, m in zip(ends, moved) if m >= 0.5), ends[int(np.argmax(moved))])
    height = rng.uniform(1.2, 1.7)
    scene.trajectory = dict(
        kind="walk",
        start=[float(start[0]), float(start[1]), height],
        end=[float(end[0]), float(end[1]), height + rng.uniform(-0.1, 0.1)],
        sway=float(rng.uniform(-0.25, 0.25)), bob=float(rng.uniform(0.0, 0.05)),
        yaw0=float(yaw0), yaw_delta=float(np.deg2rad(rng.uniform(-25, 25))),
        yaw_wobble=float(np.deg2rad(rng.uniform(0, 4))),
        pitch0=float(np.deg2rad(rng.uniform(-20, 0))), pitch_delta=float(np.deg2rad(rng.uniform(-6, 6))),
    )
    path = _walk_positions(scene.trajectory, np.linspace(0, 1, 65))[:, :2]  # [65, 2]

    def clear_of_path(x: float, y: float, radius: float) -> bool:
        return np.min(np.hypot(path[:, 0] - x, path[:, 1] - y)) > radius + 0.45

    # Objects: most in the viewing cone (content in every frame), a few anywhere.
    count = int(rng.integers(4, 8))
    for i in range(count):
        for _ in range(30):  # rejection sampling; gives up silently after 30 tries
            obj_size = rng.uniform(0.2, 0.55)
            if i < count - 2:
                angle = yaw0 + np.deg2rad(rng.uniform(-35, 35))
                x, y = start + rng.uniform(1.3, 4.5) * np.array([np.cos(angle), np.sin(angle)])
            else:
                x, y = rng.uniform(scene.room_lo[:2] + 0.3, scene.room_hi[:2] - 0.3)
            reach = obj_size * 1.6  # upper bound of any footprint radius of this size
            inside = (scene.room_lo[0] + reach < x < scene.room_hi[0] - reach
                      and scene.room_lo[1] + reach < y < scene.room_hi[1] - reach)
            if inside and clear_of_path(x, y, reach) and b.free(x, y, reach, 0.1):
                b.add_random(rng, x, y, obj_size, (0.08, 0.25))
                break
    # Flat panels on walls ("pictures", "windows"): texture detail at long range.
    for _ in range(int(rng.integers(1, 4))):
        axis, side = int(rng.integers(2)), int(rng.integers(2))
        other = 1 - axis
        half = np.array([0.0, 0.0, rng.uniform(0.3, 0.7)])
        half[axis], half[other] = 0.02, rng.uniform(0.3, 0.9)
        center = np.zeros(3)
        center[axis] = (scene.room_lo if side == 0 else scene.room_hi)[axis] + (0.02 if side == 0 else -0.02)
        span = (scene.room_hi[other] - scene.room_lo[other]) / 2 - half[other] - 0.1
        center[other] = rng.uniform(-span, span) if span > 0 else 0.0
        center[2] = rng.uniform(half[2] + 0.5, scene.room_hi[2] - half[2] - 0.2)
        mat = b.add_material(_random_texture(rng, (0.06, 0.2)))
        b.boxes.append((tuple(center), half, 0.0, mat, False))  # flat on a wall: no shadow
    b.finish()


def _make_objects(rng: np.random.Generator, scene: Scene) -> None:
    b = _ObjectBuilder(scene)
    scene.ground_material = b.add_material(
        _random_texture(rng, (0.25, 0.7), ("checker", "stripes", "noise", "rings", "checker")))
    hue = rng.uniform()
    scene.sky_horizon = _random_color(rng, sat=(0.05, 0.4), val=(0.75, 1.0), hue=hue)
    scene.sky_zenith = _random_color(rng, sat=(0.3, 0.8), val=(0.45, 0.85), hue=hue + rng.uniform(-0.1, 0.1))
    cluster = rng.uniform(0.4, 1.0)
    extent = 0.0  # how far the cluster reaches from the z axis, to keep cameras outside
    for _ in range(int(rng.integers(4, 8))):
        for _ in range(30):
            obj_size = rng.uniform(0.2, 0.55)
            radius, angle = cluster * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
            x, y = radius * np.cos(angle), radius * np.sin(angle)
            if b.free(x, y, obj_size * 1.6, 0.05):
                extent = max(extent, radius + b.add_random(rng, x, y, obj_size, (0.06, 0.2)))
                break
    # Distant landmarks outside the orbit: far textured content instead of only sky.
    for _ in range(int(rng.integers(1, 4))):
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(8.0, 14.0)
        x, y = dist * np.cos(angle), dist * np.sin(angle)
        if b.free(x, y, 1.5, 0.5):
            b.add_random(rng, x, y, rng.uniform(0.8, 1.5), (0.25, 0.6))
    b.finish()
    scene.trajectory = dict(
        kind="orbit",
        radius=float(max(rng.uniform(2.2, 3.3), extent + 0.8)),
        angle0=float(rng.uniform(0, 2 * np.pi)),
        angle_span=float(np.deg2rad(rng.uniform(40, 110)) * rng.choice([-1, 1])),
        height0=float(rng.uniform(0.7, 2.0)), height_delta=float(rng.uniform(-0.4, 0.4)),
        target=[float(v) for v in rng.uniform(-0.2, 0.2, size=2)] + [float(rng.uniform(0.2, 0.6))],
        target_drift=[float(v) for v in rng.uniform(-0.2, 0.2, size=3)],
    )


def make_scene(rng: np.random.Generator, kind: str | None = None) -> Scene:
    """A random scene; `kind` "room" or "objects" (default: either, with equal chance)."""
    if kind is None:
        kind = "room" if rng.uniform() < 0.5 else "objects"
    if kind not in ("room", "objects"):
        raise ValueError(f"unknown scene kind {kind!r}")
    light = _light(rng)
    fill = np.array([-light[0], -light[1], 0.5 * light[2]])
    scene = Scene(kind=kind, materials=[], light_dir=light, ambient=float(rng.uniform(0.3, 0.45)),
                  fill_dir=fill / np.linalg.norm(fill), fov_deg=float(rng.uniform(50, 70)))
    (_make_room if kind == "room" else _make_objects)(rng, scene)
    return scene


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of scene `index` of a data set made with `seed`.

    Derived from (seed, index) only, so results do not depend on worker count or order.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def scene_for_index(seed: int, index: int) -> Scene:
    """Rebuilds exactly the scene that `generate_dataset(seed=seed)` wrote as scene `index`."""
    return make_scene(scene_rng(seed, index))


# --------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------


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
        position = _walk_positions(traj, s)
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


# --------------------------------------------------------------------------------------------
# Ray tracing. Vectors are stored component-first: points and directions are [3, M] (or [3]
# when shared by all rays), so every operation is an elementwise op on contiguous [M] rows;
# numpy reductions over a trailing axis of size 3 are several times slower.
# --------------------------------------------------------------------------------------------


def _col(v: np.ndarray) -> np.ndarray:
    """A shared vector [3] as a column [3, 1]; per-ray [3, M] arrays unchanged."""
    return v[:, None] if v.ndim == 1 else v


def _sphere_t(o: np.ndarray, d: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    """Nearest positive hit parameter [M] (inf on miss). Origins are outside every sphere."""
    ox, oy, oz = o[0] - center[0], o[1] - center[1], o[2] - center[2]
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    half_b = ox * d[0] + oy * d[1] + oz * d[2]
    c = ox * ox + oy * oy + oz * oz - radius * radius
    disc = half_b * half_b - a * c
    with np.errstate(invalid="ignore"):
        t = (-half_b - np.sqrt(disc)) / a
    return np.where((disc > 0) & (t > _EPS), t, np.inf)


def _sphere_candidates(o, d, center, radius, limit) -> np.ndarray:
    """Indices of rays that may hit anything inside a bounding sphere before parameter
    `limit` [M] (culling: exact tests then run on few rays)."""
    ox, oy, oz = o[0] - center[0], o[1] - center[1], o[2] - center[2]
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    half_b = ox * d[0] + oy * d[1] + oz * d[2]
    c = ox * ox + oy * oy + oz * oz - radius * radius
    disc = half_b * half_b - a * c
    with np.errstate(invalid="ignore"):
        root = np.sqrt(disc)
        ok = (disc > 0) & (-half_b + root > 0) & ((-half_b - root) < limit * a)
    return np.nonzero(ok)[0]


def _box_frame(o, d, center, yaw):
    """Ray origins and directions in the box frame (translated, rotated by -yaw about z)."""
    cs, sn = np.cos(yaw), np.sin(yaw)
    ox, oy = o[0] - center[0], o[1] - center[1]
    o_l = (cs * ox + sn * oy, -sn * ox + cs * oy, o[2] - center[2])
    d_l = (cs * d[0] + sn * d[1], -sn * d[0] + cs * d[1], d[2])
    return o_l, d_l


def _slab(o_k, d_k, lo_k, hi_k):
    """Entry and exit parameters [M] of the slab lo_k <= x_k <= hi_k along one axis."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d_k
        t1, t2 = (lo_k - o_k) * inv, (hi_k - o_k) * inv
    return np.fmin(t1, t2), np.fmax(t1, t2)


def _box_hit(o, d, center, half, yaw, full=True):
    """Box hit (rays start outside): t [M] (inf on miss), world normal [3, M], local point
    [3, M] (texture coordinates, snapped onto the face); only t when not `full`."""
    o_l, d_l = _box_frame(o, d, center, yaw)
    entry, exits = zip(*(_slab(o_l[k], d_l[k], -half[k], half[k]) for k in range(3)))
    near = np.maximum(np.maximum(entry[0], entry[1]), entry[2])
    far = np.minimum(np.minimum(exits[0], exits[1]), exits[2])
    t = np.where((near <= far) & (near > _EPS), near, np.inf)
    if not full:
        return t, None, None
    axis = np.argmax(np.stack(entry), axis=0)  # [M] the slab entered last holds the hit face
    normal_l = np.zeros((3, len(t)))
    local = np.empty((3, len(t)))
    for k in range(3):
        on_k = axis == k
        sign = np.where(d_l[k] > 0, -1.0, 1.0)
        normal_l[k] = np.where(on_k, sign, 0.0)
        local[k] = np.where(on_k, sign * half[k], o_l[k] + t * d_l[k])
    cs, sn = np.cos(yaw), np.sin(yaw)
    normal = np.stack([cs * normal_l[0] - sn * normal_l[1], sn * normal_l[0] + cs * normal_l[1],
                       normal_l[2]])
    return t, normal, local


def _cylinder_hit(o, d, center_xy, radius, z_range, full=True):
    """Vertical capped cylinder hit: t [M], normal [3, M], local point [3, M] (only t when
    not `full`)."""
    ox, oy, oz = o[0] - center_xy[0], o[1] - center_xy[1], o[2]
    dx, dy, dz = d[0], d[1], d[2]
    a = dx * dx + dy * dy
    half_b = ox * dx + oy * dy
    c = ox * ox + oy * oy - radius * radius
    disc = half_b * half_b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-half_b - np.sqrt(disc)) / a
        z_side = oz + t_side * dz
        side_ok = (disc > 0) & (t_side > _EPS) & (z_side >= z_range[0]) & (z_side <= z_range[1])
        # Caps: the top is seen from above (dz < 0), the bottom from below (dz > 0).
        z_cap = np.where(dz < 0, z_range[1], z_range[0])
        t_cap = (z_cap - oz) / dz
        cx, cy = ox + t_cap * dx, oy + t_cap * dy
        cap_ok = (t_cap > _EPS) & (cx * cx + cy * cy <= radius * radius)
    t_side = np.where(side_ok, t_side, np.inf)
    t_cap = np.where(cap_ok, t_cap, np.inf)
    on_cap = t_cap < t_side
    t = np.fmin(t_side, t_cap)
    if not full:
        return t, None, None
    local = np.stack(np.broadcast_arrays(ox + t * dx, oy + t * dy, np.where(on_cap, z_cap, oz + t * dz)))
    normal = np.stack([np.where(on_cap, 0.0, local[0] / radius), np.where(on_cap, 0.0, local[1] / radius),
                       np.where(on_cap, -np.sign(dz), 0.0)])
    return t, normal, local


def _bounds(scene: Scene):
    """Bounding spheres (center [3], radius) of all objects, with a hit function for each:
    hit(o, d, full) -> (t [M], normal [3, M], local [3, M]), and whether it casts shadows."""
    items = []
    for c, r, m in zip(scene.sphere_center, scene.sphere_radius, scene.sphere_material):
        def hit(o, d, full=True, c=c, r=r):
            t = _sphere_t(o, d, c, r)
            if not full:
                return t, None, None
            local = _col(o) + t * _col(d) - c[:, None]  # [3, M]
            return t, local / r, local
        items.append((c, r, hit, m, True))
    for c, h, yaw, m, shadow in zip(scene.box_center, scene.box_half, scene.box_yaw,
                                    scene.box_material, scene.box_shadow):
        hit = functools.partial(_box_hit, center=c, half=h, yaw=yaw)
        items.append((c, float(np.linalg.norm(h)), hit, m, bool(shadow)))
    for c, r, z, m in zip(scene.cyl_center, scene.cyl_radius, scene.cyl_z, scene.cyl_material):
        hit = functools.partial(_cylinder_hit, center_xy=c, radius=r, z_range=z)
        center = np.array([c[0], c[1], (z[0] + z[1]) / 2])
        items.append((center, float(np.hypot(r, (z[1] - z[0]) / 2)), hit, m, True))
    return items


class _Hits:
    """Closest-hit record for M rays."""

    def __init__(self, m: int):
        self.t = np.full(m, np.inf)  # [M] ray parameter (= z-depth for primary rays)
        self.normal = np.zeros((3, m))  # [3, M] unit world normal
        self.local = np.zeros((3, m))  # [3, M] texture coordinates (object frame)
        self.material = np.full(m, -1)  # [M] material index, -1 = sky


@dataclass
class _Camera:
    """Primary rays on pixel grids: blocks (offset, xs [C], ys [R]) of pixel coordinates;
    ray offset + r * C + c goes through (xs[c], ys[r]). Lets objects be culled in screen space."""

    origin: np.ndarray  # [3]
    rotation: np.ndarray  # [3, 3] camera-to-world (OpenCV)
    K: np.ndarray  # [3, 3]
    blocks: list[tuple[int, np.ndarray, np.ndarray]] | None  # None: rays not on a grid

    def candidates(self, center: np.ndarray, radius: float) -> np.ndarray | None:
        """Indices of rays whose pixel lies in the screen rectangle bounding a sphere's image
        (a superset of the rays that hit it), or None when the sphere reaches behind the
        image plane (then every ray is a candidate)."""
        x, y, z = self.rotation.T @ (center - self.origin)  # sphere center in camera space
        if z + radius <= 0:
            return np.zeros(0, np.int64)
        if z - radius <= 1e-6 or self.blocks is None:
            return None
        bounds = []
        for u, f, c in ((x, self.K[0, 0], self.K[0, 2]), (y, self.K[1, 1], self.K[1, 2])):
            # Tangents from the camera to the circle (u, z) with this radius in the u-z plane.
            angle, half = np.arctan2(u, z), np.arcsin(radius / np.hypot(u, z))
            bounds.append((c + f * np.tan(angle - half), c + f * np.tan(angle + half)))
        (x_lo, x_hi), (y_lo, y_hi) = bounds
        out = []
        for offset, xs, ys in self.blocks:
            cols = np.arange(np.searchsorted(xs, x_lo), np.searchsorted(xs, x_hi, side="right"))
            rows = np.arange(np.searchsorted(ys, y_lo), np.searchsorted(ys, y_hi, side="right"))
            out.append((offset + rows[:, None] * len(xs) + cols).reshape(-1))
        return np.concatenate(out)


def _trace(scene: Scene, camera: _Camera, d: np.ndarray) -> _Hits:
    """Closest hit of primary rays origin + t d, d [3, M] (ordered as camera.blocks)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # misses carry inf / nan, masked out
        return _trace_impl(scene, camera, d)


def _trace_impl(scene: Scene, camera: _Camera, d: np.ndarray) -> _Hits:
    o = camera.origin
    m = d.shape[1]
    hits = _Hits(m)
    if scene.room_lo is not None:
        # Inside the room every ray leaves through exactly one face: the smallest exit parameter.
        exits = np.stack([_slab(o[k], d[k], scene.room_lo[k], scene.room_hi[k])[1] for k in range(3)])
        axis = exits.argmin(0)  # [M]
        cols = np.arange(m)
        hits.t = exits[axis, cols]
        positive = d[axis, cols] > 0
        hits.normal[axis, cols] = np.where(positive, -1.0, 1.0)
        hits.material = scene.room_material[2 * axis + positive]
        hits.local = o[:, None] + hits.t * d
        hits.local[axis, cols] = np.where(positive, scene.room_hi[axis], scene.room_lo[axis])
    if scene.ground_material >= 0:
        t = -o[2] / d[2]
        x, y = o[0] + t * d[0], o[1] + t * d[1]
        idx = np.nonzero((d[2] < 0) & (x * x + y * y < scene.ground_radius**2) & (t < hits.t))[0]
        hits.t[idx] = t[idx]
        hits.normal[:, idx] = np.array([[0.0], [0.0], [1.0]])
        hits.local[:, idx] = np.stack([x[idx], y[idx], np.zeros(len(idx))])
        hits.material[idx] = scene.ground_material
    for center, radius, hit, material, _ in _bounds(scene):
        idx = camera.candidates(center, radius)
        if idx is None:
            idx = _sphere_candidates(o, d, center, radius, hits.t)
        if not len(idx):
            continue
        t, normal, local = hit(o, d[:, idx])
        closer = t < hits.t[idx]
        idx = idx[closer]
        hits.t[idx] = t[closer]
        hits.normal[:, idx], hits.local[:, idx] = normal[:, closer], local[:, closer]
        hits.material[idx] = material
    return hits


def _occluded(scene: Scene, points: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Whether rays from points [3, M] along one direction [3] hit an object [M] (shadows;
    room walls and ground cast none: the light is assumed to shine in)."""
    # Culling in light space: coordinates (u, v) across the light and w along it; a point can
    # only be shadowed by a bounding sphere whose (u, v) disk covers it and that is not behind.
    e1 = np.cross(direction, [0.0, 0.0, 1.0] if abs(direction[2]) < 0.9 else [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(direction, e1)
    u, v, w = e1 @ points, e2 @ points, direction @ points  # [M] each
    blocked = np.zeros(points.shape[1], bool)
    for center, radius, hit, _, casts_shadow in _bounds(scene):
        if not casts_shadow:
            continue
        du, dv = u - e1 @ center, v - e2 @ center
        idx = np.nonzero((du * du + dv * dv < radius * radius) & (w < direction @ center + radius))[0]
        if len(idx):
            with np.errstate(divide="ignore", invalid="ignore"):
                blocked[idx] |= np.isfinite(hit(points[:, idx], direction, full=False)[0])
    return blocked


# --------------------------------------------------------------------------------------------
# Shading
# --------------------------------------------------------------------------------------------


def _dot3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product [M] of [3, M] arrays (faster than .sum(0))."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _value_noise(lattice: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Smooth periodic value noise [M] in [0, 1] at lattice coordinates q [3, M]."""
    n = lattice.shape[0]
    base = np.floor(q)
    f = q - base
    f = f * f * (3 - 2 * f)  # smoothstep: continuous derivative across cells
    i = base.astype(np.int64) % n  # [3, M] lower corner
    j = (i + 1) % n  # [3, M] upper corner
    flat = lattice.reshape(-1)  # 1-D gathers are much faster than 3-index fancy indexing
    out = 0.0
    for ix, wx in ((i[0] * (n * n), 1 - f[0]), (j[0] * (n * n), f[0])):
        for iy, wy in ((ix + i[1] * n, 1 - f[1]), (ix + j[1] * n, f[1])):
            out = out + wx * wy * ((1 - f[2]) * flat[iy + i[2]] + f[2] * flat[iy + j[2]])
    return out


def _texture_mix(tex: Texture, p: np.ndarray) -> np.ndarray:
    """Pattern value m [M] in [0, 1] at texture coordinates p [3, M]."""
    q = p / tex.scale + tex.offset[:, None]  # [3, M]
    if tex.kind == "checker":
        cells = np.floor(q).astype(np.int64)
        return ((cells[0] + cells[1] + cells[2]) & 1).astype(float)
    if tex.kind == "stripes":
        return (np.floor(tex.direction @ q) % 2).astype(float)
    if tex.kind == "noise":  # two octaves of value noise, contrast-stretched
        n = 0.65 * _value_noise(tex.lattice, q) + 0.35 * _value_noise(tex.lattice, 2.1 * q + 3.3)
        return np.clip((n - 0.5) * 2.2 + 0.5, 0, 1)
    if tex.kind == "gradient":  # broad sinusoidal ramp (period ~10 features) with noise on top
        ramp = 0.5 + 0.5 * np.sin(tex.direction @ q * 0.6)
        return np.clip(0.7 * ramp + 0.6 * (_value_noise(tex.lattice, q) - 0.5) + 0.15, 0, 1)
    if tex.kind == "rings":  # wood-like rings around an axis, perturbed by noise
        radial = q - np.outer(tex.direction, tex.direction @ q)
        r = np.sqrt(_dot3(radial, radial)) + 0.6 * _value_noise(tex.lattice, q)
        return 0.5 + 0.5 * np.sin(2 * np.pi * r / 1.5)
    return np.zeros(p.shape[1])  # "solid"


def _shade(scene: Scene, hits: _Hits, o: np.ndarray, d: np.ndarray, focal: float) -> np.ndarray:
    """View-independent color [3, M]: texture * (ambient + lambert * shadow); sky gradient."""
    rgb = np.zeros((3, d.shape[1]))
    sky = np.nonzero(hits.material < 0)[0]
    if len(sky):
        ds = d[:, sky]
        elevation = ds[2] / np.sqrt(_dot3(ds, ds))
        w = np.sqrt(np.clip(elevation, 0, 1))
        rgb[:, sky] = np.outer(scene.sky_horizon, 1 - w) + np.outer(scene.sky_zenith, w)
    idx = np.nonzero(hits.material >= 0)[0]
    if not len(idx):
        return rgb
    if len(idx) == d.shape[1]:  # every ray hit something (rooms): use views, not copies
        normal, di, t = hits.normal, d, hits.t
    else:
        normal, di, t = hits.normal[:, idx], d[:, idx], hits.t[idx]  # [3, K], [3, K], [K]
    # Texture anti-aliasing: fade patterns to their mean where a pixel covers much more than a
    # pattern feature (grazing angles, far surfaces). Pixel footprint on the surface [K]:
    cos_incidence = np.abs(_dot3(normal, di)) / np.sqrt(_dot3(di, di))
    footprint = t / focal / np.maximum(cos_incidence, 0.1)
    base = np.zeros((3, len(idx)))
    materials = hits.material[idx]
    for m in np.nonzero(np.bincount(materials, minlength=len(scene.materials)))[0]:
        sel = np.nonzero(materials == m)[0]
        tex = scene.materials[m]
        mix = _texture_mix(tex, hits.local[:, idx[sel]])
        fade = np.clip((footprint[sel] / tex.scale - 0.35) / 0.65, 0, 1)
        mix = (1 - fade) * mix + fade * 0.5
        base[:, sel] = tex.color_a[:, None] + (tex.color_b - tex.color_a)[:, None] * mix
    lambert = np.clip(scene.light_dir @ normal, 0, None)  # [K]
    if (lambert > 0).any():
        # Shadow rays from all hit points (cheaper than gathering the lit ones), lifted off
        # the surface so they do not hit it again.
        points = o[:, None] + t * di + 1e-4 * normal  # [3, K]
        lambert[_occluded(scene, points, scene.light_dir)] = 0.0
    # Hemisphere ambient (brighter for upward faces) + key light + fill light.
    fill = np.clip(scene.fill_dir @ normal, 0, None)
    light = scene.ambient * (0.8 + 0.2 * normal[2]) + (1 - scene.ambient) * lambert + 0.3 * fill
    rgb[:, idx] = base * light
    return rgb


def _render(scene: Scene, c2w: np.ndarray, K: np.ndarray, height: int, width: int,
            supersample: int, with_depth: bool) -> tuple[np.ndarray, np.ndarray | None]:
    c2w, K = np.asarray(c2w, float), np.asarray(K, float)
    origin, rotation = c2w[:3, 3], c2w[:3, :3]
    # ss x ss stratified samples per pixel (pixel (x, y) spans [x, x + 1) x [y, y + 1)).
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(width)[:, None] + offsets).reshape(-1)  # [W * ss]
    ys = (np.arange(height)[:, None] + offsets).reshape(-1)  # [H * ss]
    blocks = [(0, xs, ys)]
    if with_depth:  # pixel centers as extra rays: depth is not averaged across edges
        blocks.append((len(xs) * len(ys), np.arange(width) + 0.5, np.arange(height) + 0.5))
    px, py = [], []
    for _, bx, by in blocks:
        grid_y, grid_x = np.meshgrid(by, bx, indexing="ij")  # [R, C] row-major ray order
        px.append(grid_x.reshape(-1))
        py.append(grid_y.reshape(-1))
    cam_x = (np.concatenate(px) - K[0, 2]) / K[0, 0]  # [M]
    cam_y = (np.concatenate(py) - K[1, 2]) / K[1, 1]  # [M]
    # Directions with camera-space z = 1, so the hit parameter t is the z-depth.
    d = rotation[:, :1] * cam_x + rotation[:, 1:2] * cam_y + rotation[:, 2:3]  # [3, M]
    hits = _trace(scene, _Camera(origin, rotation, K, blocks), d)
    color = _shade(scene, hits, origin, d, float(K[0, 0]))  # [3, M]
    n_ss = height * width * supersample * supersample
    samples = color[:, :n_ss].reshape(3, height, supersample, width, supersample)
    # Box filter as a sum of strided views (much faster than .mean over axes (2, 4)).
    rgb = sum(samples[:, :, a, :, b] for a in range(supersample) for b in range(supersample))
    rgb = np.clip(rgb.transpose(1, 2, 0) / supersample**2, 0.0, 1.0)  # [H, W, 3]
    depth = hits.t[n_ss:].reshape(height, width) if with_depth else None
    return rgb, depth


def render_view(scene: Scene, c2w_opencv: np.ndarray, K: np.ndarray, height: int, width: int,
                supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Ray-traces one view.

    c2w_opencv [4, 4] (or [3, 4]), K [3, 3] pixel units -> rgb [H, W, 3] float in [0, 1]
    (average of supersample^2 samples per pixel) and depth [H, W]: z-depth at pixel centers,
    inf where the ray hits the sky. The PNGs of `generate_dataset` are round(255 * rgb).
    """
    rgb, depth = _render(scene, c2w_opencv, K, height, width, supersample, with_depth=True)
    return rgb, depth


def depth_at(scene: Scene, c2w_opencv: np.ndarray, K: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Exact z-depth [P] of the rays through continuous pixel positions points [P, 2] (x, y;
    the center of pixel (i, j) is (j + 0.5, i + 0.5)); inf for sky. For exact geometry checks."""
    c2w, K, points = np.asarray(c2w_opencv, float), np.asarray(K, float), np.asarray(points, float)
    rotation = c2w[:3, :3]
    cam_x, cam_y = (points[:, 0] - K[0, 2]) / K[0, 0], (points[:, 1] - K[1, 2]) / K[1, 1]
    d = rotation[:, :1] * cam_x + rotation[:, 1:2] * cam_y + rotation[:, 2:3]  # [3, P]
    return _trace(scene, _Camera(c2w[:3, 3], rotation, K, None), d).t


# --------------------------------------------------------------------------------------------
# Data set writing
# --------------------------------------------------------------------------------------------

SUPERSAMPLE = 2  # 2 x 2 samples per pixel: enough against jaggies at 64 x 64, 4x the rays


def _json_dump(obj, path: Path) -> None:
    # Fixed formatting: equal inputs give byte-identical files (floats use exact repr).
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_scene(job: tuple) -> dict:
    """Worker: renders and writes one scene. job = (seed, index, name, scene_dir, H, W, frames)."""
    seed, index, name, scene_dir, height, width, num_frames = job
    scene = scene_for_index(seed, index)
    K = intrinsics(scene, height, width)
    poses = camera_poses(scene, num_frames)  # [N, 4, 4] OpenCV
    (scene_dir / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i, c2w in enumerate(poses):
        rgb, _ = _render(scene, c2w, K, height, width, SUPERSAMPLE, with_depth=False)
        file_path = f"images/frame_{i:05d}.png"
        Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(scene_dir / file_path, format="PNG")
        frames.append({"file_path": file_path, "transform_matrix": (c2w @ _CV_TO_GL).tolist()})
    transforms = {
        "camera_model": "OPENCV",
        "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
        "w": width, "h": height, "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "frames": frames,
    }
    _json_dump(transforms, scene_dir / "transforms.json")
    return {"name": name, "index": index, "kind": scene.kind}


def _worker_init() -> None:
    """Pool initializer: keep freed numpy temporaries in the heap. By default glibc maps every
    block above 128 KiB (a [3, 16384] float64 array is 384 KiB) freshly from the OS and unmaps it
    on free; the page faults cost ~20% of the render time. Only worker processes are tuned."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: mmap only blocks above 64 MiB
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MiB of free heap
    except (OSError, AttributeError):  # not glibc: run untuned
        pass


def split_indices(num_scenes: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic disjoint (train, test) scene indices covering range(num_scenes).

    At least one test scene when test_fraction > 0 and num_scenes >= 2; at least one train scene.
    """
    num_test = int(round(test_fraction * num_scenes))
    if test_fraction > 0 and num_scenes >= 2:
        num_test = min(max(num_test, 1), num_scenes - 1)
    num_test = min(num_test, num_scenes - 1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, num_scenes, 0x5E1]))
    test = sorted(int(i) for i in rng.choice(num_scenes, size=num_test, replace=False))
    test_set = set(test)
    return [i for i in range(num_scenes) if i not in test_set], test


def _validate(num_scenes, seed, height, width, frames_per_scene, test_fraction, workers) -> None:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    for name, value, low in [("num_scenes", num_scenes, 1), ("seed", seed, 0), ("height", height, 8),
                             ("width", width, 8), ("frames_per_scene", frames_per_scene, 2),
                             ("workers", workers, 1)]:
        if not is_int(value) or value < low:
            raise ILRMError(f"{name} must be an integer >= {low}, got {value!r}")
    if height > 4096 or width > 4096:
        raise ILRMError(f"height and width must be <= 4096, got {height} x {width}")
    if not isinstance(test_fraction, (int, float)) or not 0.0 <= test_fraction < 1.0:
        raise ILRMError(f"test_fraction must be in [0, 1), got {test_fraction!r}")


def _read_manifest(output: Path) -> dict | None:
    try:
        manifest = json.loads((output / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR_NAME else None


def _files_present(output: Path, manifest: dict) -> bool:
    """Whether every scene of a finished data set still has its transforms and last frame."""
    last = f"frame_{manifest['args']['frames_per_scene'] - 1:05d}.png"
    return all((output / split / name / "transforms.json").is_file()
               and (output / split / name / "images" / last).is_file()
               for split in ("train", "test") for name in manifest.get(split, []))


def generate_dataset(output: Path, num_scenes: int = 300, seed: int = 0, height: int = 64,
                     width: int = 64, frames_per_scene: int = 24, test_fraction: float = 0.1,
                     workers: int = 2, overwrite: bool = False, progress: bool = False) -> dict:
    """Generates the synthetic data set under `output` (see module docstring for the layout).

    Same arguments -> byte-identical files, whatever `workers` is. If `output` already holds a
    complete data set made with the same arguments nothing is written (`skipped` is True). An
    existing non-empty directory that is not such a data set is an error; a data set made with
    other arguments is replaced only with `overwrite=True` (only train/, test/ and
    manifest.json are removed). Raises `ILRMError` with a readable message on bad input.

    Returns a summary dict: output, skipped, train, test (scene names), num_frames, seconds.
    """
    _validate(num_scenes, seed, height, width, frames_per_scene, test_fraction, workers)
    output = Path(output)
    args = dict(num_scenes=int(num_scenes), seed=int(seed), height=int(height), width=int(width),
                frames_per_scene=int(frames_per_scene), test_fraction=float(test_fraction))
    start_time = time.perf_counter()
    train_idx, test_idx = split_indices(num_scenes, test_fraction, seed)
    names = [f"scene_{i:05d}" for i in range(num_scenes)]
    summary = dict(output=str(output), skipped=False, train=[names[i] for i in train_idx],
                   test=[names[i] for i in test_idx], num_frames=num_scenes * frames_per_scene)

    if output.exists() and not output.is_dir():
        raise ILRMError(f"output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        manifest = _read_manifest(output)
        if manifest is None:
            raise ILRMError(
                f"output directory {output} is not empty and holds no data set made by this "
                "generator (no valid manifest.json); choose a new or empty directory. "
                "Nothing was deleted.")
        if manifest.get("args") == args and manifest.get("complete") and _files_present(output, manifest):
            summary.update(skipped=True, seconds=time.perf_counter() - start_time)
            return summary
        if manifest.get("args") != args:
            if not overwrite:
                raise ILRMError(
                    f"{output} holds a data set generated with other arguments "
                    f"({manifest.get('args')}); use another output directory or pass "
                    "overwrite=True / --overwrite to replace it.")
            for sub in ("train", "test"):
                shutil.rmtree(output / sub, ignore_errors=True)
        # Same arguments but incomplete (interrupted run, deleted files): rewritten in place.

    output.mkdir(parents=True, exist_ok=True)
    manifest = dict(generator=GENERATOR_NAME, version=GENERATOR_VERSION, args=args, complete=False,
                    train=summary["train"], test=summary["test"], scenes=[])
    _json_dump(manifest, output / "manifest.json")  # marks the directory as ours first

    test_set = set(test_idx)
    jobs = [(seed, i, names[i], output / ("test" if i in test_set else "train") / names[i],
             height, width, frames_per_scene) for i in range(num_scenes)]
    for sub in ("train", "test"):
        (output / sub).mkdir(exist_ok=True)
    report_every = max(1, num_scenes // 10)
    infos = []
    if progress:
        print(f"Generating {num_scenes} scenes x {frames_per_scene} frames at {height}x{width} "
              f"(h x w) into {output} (seed {seed}, {workers} workers)", flush=True)

    def note(done: int) -> None:
        if progress and (done % report_every == 0 or done == num_scenes):
            elapsed = time.perf_counter() - start_time
            print(f"  [{done:>{len(str(num_scenes))}}/{num_scenes}] {100 * done // num_scenes:3d}%  "
                  f"{elapsed:6.1f} s", flush=True)

    if workers == 1 or num_scenes == 1:
        for job in jobs:
            infos.append(_write_scene(job))
            note(len(infos))
    else:
        # fork where available: workers need no re-import and callers' scripts need no
        # `if __name__ == "__main__"` guard (spawn re-runs the main module in every worker). The
        # workers only run numpy, so forking a process that holds torch threads is harmless.
        # Results do not depend on which worker renders which scene.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(min(workers, num_scenes), initializer=_worker_init) as pool:
            for info in pool.imap_unordered(_write_scene, jobs):
                infos.append(info)
                note(len(infos))

    infos.sort(key=lambda info: info["index"])
    manifest.update(complete=True, scenes=[
        dict(name=i["name"], index=i["index"], kind=i["kind"],
             split="test" if i["index"] in test_set else "train") for i in infos])
    _json_dump(manifest, output / "manifest.json")
    summary["seconds"] = time.perf_counter() - start_time
    summary["kinds"] = {k: sum(i["kind"] == k for i in infos) for k in ("room", "objects")}
    return summary


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ilrm-generate-data", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate the procedural multi-view data set (nerfstudio format, exact poses). "
                    "Re-running with the same arguments reuses an existing data set.")
    parser.add_argument("--output", type=Path, required=True, help="directory to write")
    parser.add_argument("--num-scenes", type=int, default=300, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> identical files")
    parser.add_argument("--height", type=int, default=64, help="image height in pixels")
    parser.add_argument("--width", type=int, default=64, help="image width in pixels")
    parser.add_argument("--frames-per-scene", type=int, default=24, help="views per scene")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of test scenes")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a data set previously generated here with other arguments")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    ns = parser.parse_args(argv)
    try:
        summary = generate_dataset(ns.output, num_scenes=ns.num_scenes, seed=ns.seed,
                                   height=ns.height, width=ns.width,
                                   frames_per_scene=ns.frames_per_scene,
                                   test_fraction=ns.test_fraction, workers=ns.workers,
                                   overwrite=ns.overwrite, progress=not ns.quiet)
    except ILRMError as error:
        print(f"ilrm-generate-data: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"ilrm-generate-data: error: cannot write {ns.output}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ilrm-generate-data: interrupted; re-run the same command to finish", file=sys.stderr)
        return 130
    if summary["skipped"]:
        print(f"{ns.output} already holds this data set ({len(summary['train'])} train, "
              f"{len(summary['test'])} test scenes); nothing to do.")
    else:
        kinds = summary["kinds"]
        print(f"Wrote {len(summary['train']) + len(summary['test'])} scenes "
              f"({len(summary['train'])} train, {len(summary['test'])} test; "
              f"{kinds['room']} rooms, {kinds['objects']} object scenes), "
              f"{summary['num_frames']} frames in {summary['seconds']:.1f} s to {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
