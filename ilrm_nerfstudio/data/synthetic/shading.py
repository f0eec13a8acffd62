"""Shading: solid textures and view-independent lighting (ambient, shadowed key light, fill)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .raytrace import occluded

if TYPE_CHECKING:
    from .raytrace import Hits
    from .scene import Scene, Texture


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


def shade(scene: Scene, hits: Hits, o: np.ndarray, d: np.ndarray, focal: float) -> np.ndarray:
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
        lambert[occluded(scene, points, scene.light_dir)] = 0.0
    # Hemisphere ambient (brighter for upward faces) + key light + fill light.
    fill = np.clip(scene.fill_dir @ normal, 0, None)
    light = scene.ambient * (0.8 + 0.2 * normal[2]) + (1 - scene.ambient) * lambert + 0.3 * fill
    rgb[:, idx] = base * light
    return rgb
