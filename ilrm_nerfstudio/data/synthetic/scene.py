"""Scene description and random scene building.

A `Scene` is a small analytic 3D world: a furnished room (`kind` "room") or a cluster of objects
on a ground plane under a sky gradient ("objects"), with solid `Texture`s, two lights and the
parameters of its camera trajectory (turned into poses by `cameras.camera_poses`).
`make_scene` draws one at random; `scene_for_index` rebuilds exactly scene `index` of a data set,
from (seed, index) alone.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from .cameras import walk_positions


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


def _random_color(
    rng: np.random.Generator,
    sat: tuple[float, float] = (0.15, 0.9),
    val: tuple[float, float] = (0.3, 0.95),
    hue: float | None = None,
) -> np.ndarray:
    h = rng.uniform() if hue is None else hue % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)))


def _random_texture(
    rng: np.random.Generator,
    scale_range: tuple[float, float],
    kinds: tuple[str, ...] = ("checker", "stripes", "noise", "gradient", "rings"),
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
    return Texture(
        kind=kind,
        color_a=color_a,
        color_b=color_b,
        scale=float(rng.uniform(*scale_range)),
        direction=direction / np.linalg.norm(direction),
        offset=rng.uniform(0.0, 16.0, size=3),
        lattice=rng.uniform(size=(8, 8, 8)),
    )


def _light(rng: np.random.Generator) -> np.ndarray:
    elevation, azimuth = np.deg2rad(rng.uniform(35, 70)), rng.uniform(0, 2 * np.pi)
    return np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])


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

    def add_random(
        self, rng: np.random.Generator, x: float, y: float, size: float, tex_scale: tuple[float, float]
    ) -> float:
        """Adds a random object standing at (x, y); returns its footprint radius."""
        mat = self.add_material(_random_texture(rng, tex_scale))
        shape = rng.choice(["sphere", "box", "cylinder"], p=[0.3, 0.4, 0.3])
        if shape == "sphere":
            radius = size
            lift = rng.uniform(0, 0.6) if rng.uniform() < 0.25 else 0.0  # some float
            self.spheres.append(((x, y, radius + lift), radius, mat))
            footprint = radius
        elif shape == "box":
            half = np.array([size * rng.uniform(0.6, 1.2), size * rng.uniform(0.6, 1.2), size * rng.uniform(0.5, 1.6)])
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
        sway=float(rng.uniform(-0.25, 0.25)),
        bob=float(rng.uniform(0.0, 0.05)),
        yaw0=float(yaw0),
        yaw_delta=float(np.deg2rad(rng.uniform(-25, 25))),
        yaw_wobble=float(np.deg2rad(rng.uniform(0, 4))),
        pitch0=float(np.deg2rad(rng.uniform(-20, 0))),
        pitch_delta=float(np.deg2rad(rng.uniform(-6, 6))),
    )
    path = walk_positions(scene.trajectory, np.linspace(0, 1, 65))[:, :2]  # [65, 2]

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
            inside = (
                scene.room_lo[0] + reach < x < scene.room_hi[0] - reach
                and scene.room_lo[1] + reach < y < scene.room_hi[1] - reach
            )
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
        _random_texture(rng, (0.25, 0.7), ("checker", "stripes", "noise", "rings", "checker"))
    )
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
        height0=float(rng.uniform(0.7, 2.0)),
        height_delta=float(rng.uniform(-0.4, 0.4)),
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
    scene = Scene(
        kind=kind,
        materials=[],
        light_dir=light,
        ambient=float(rng.uniform(0.3, 0.45)),
        fill_dir=fill / np.linalg.norm(fill),
        fov_deg=float(rng.uniform(50, 70)),
    )
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
