"""Ray tracing: ray/primitive intersections, the closest hit of primary rays, shadow rays.

Vectors are stored component-first: points and directions are [3, M] (or [3] when shared by all
rays), so every operation is an elementwise op on contiguous [M] rows; numpy reductions over a
trailing axis of size 3 are several times slower.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .scene import Scene

_EPS = 1e-6  # minimum ray parameter for a hit (avoids self-intersection of shadow rays)


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
    normal = np.stack([cs * normal_l[0] - sn * normal_l[1], sn * normal_l[0] + cs * normal_l[1], normal_l[2]])
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
    normal = np.stack(
        [
            np.where(on_cap, 0.0, local[0] / radius),
            np.where(on_cap, 0.0, local[1] / radius),
            np.where(on_cap, -np.sign(dz), 0.0),
        ]
    )
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
    for c, h, yaw, m, shadow in zip(
        scene.box_center, scene.box_half, scene.box_yaw, scene.box_material, scene.box_shadow
    ):
        hit = functools.partial(_box_hit, center=c, half=h, yaw=yaw)
        items.append((c, float(np.linalg.norm(h)), hit, m, bool(shadow)))
    for c, r, z, m in zip(scene.cyl_center, scene.cyl_radius, scene.cyl_z, scene.cyl_material):
        hit = functools.partial(_cylinder_hit, center_xy=c, radius=r, z_range=z)
        center = np.array([c[0], c[1], (z[0] + z[1]) / 2])
        items.append((center, float(np.hypot(r, (z[1] - z[0]) / 2)), hit, m, True))
    return items


class Hits:
    """Closest-hit record for M rays."""

    def __init__(self, m: int):
        self.t = np.full(m, np.inf)  # [M] ray parameter (= z-depth for primary rays)
        self.normal = np.zeros((3, m))  # [3, M] unit world normal
        self.local = np.zeros((3, m))  # [3, M] texture coordinates (object frame)
        self.material = np.full(m, -1)  # [M] material index, -1 = sky


@dataclass
class RayCamera:
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


def trace(scene: Scene, camera: RayCamera, d: np.ndarray) -> Hits:
    """Closest hit of primary rays origin + t d, d [3, M] (ordered as camera.blocks)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # misses carry inf / nan, masked out
        return _trace_impl(scene, camera, d)


def _trace_impl(scene: Scene, camera: RayCamera, d: np.ndarray) -> Hits:
    o = camera.origin
    m = d.shape[1]
    hits = Hits(m)
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


def occluded(scene: Scene, points: np.ndarray, direction: np.ndarray) -> np.ndarray:
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
