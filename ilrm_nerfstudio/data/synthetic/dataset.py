"""Writing a data set: scenes rendered to PNGs and transforms.json in nerfstudio format, a
manifest, the scene-level train/test split and the checks on arguments and output directory."""

from __future__ import annotations

import ctypes
import json
import multiprocessing as mp
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ilrm_nerfstudio.core.errors import ILRMError

from .cameras import camera_poses, intrinsics
from .render import render_samples
from .scene import scene_for_index

GENERATOR_NAME = "ilrm_nerfstudio.synthetic"  # recorded in manifests: unchanged by the move to data/
GENERATOR_VERSION = 1
# OpenCV <-> OpenGL camera axes: flip y and z (its own inverse). Exact in floating point.
_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
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
        rgb, _ = render_samples(scene, c2w, K, height, width, SUPERSAMPLE, with_depth=False)
        file_path = f"images/frame_{i:05d}.png"
        Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(scene_dir / file_path, format="PNG")
        frames.append({"file_path": file_path, "transform_matrix": (c2w @ _CV_TO_GL).tolist()})
    transforms = {
        "camera_model": "OPENCV",
        "fl_x": float(K[0, 0]),
        "fl_y": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
        "w": width,
        "h": height,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
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

    for name, value, low in [
        ("num_scenes", num_scenes, 1),
        ("seed", seed, 0),
        ("height", height, 8),
        ("width", width, 8),
        ("frames_per_scene", frames_per_scene, 2),
        ("workers", workers, 1),
    ]:
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
    return all(
        (output / split / name / "transforms.json").is_file() and (output / split / name / "images" / last).is_file()
        for split in ("train", "test")
        for name in manifest.get(split, [])
    )


def generate_dataset(
    output: Path,
    num_scenes: int = 300,
    seed: int = 0,
    height: int = 64,
    width: int = 64,
    frames_per_scene: int = 24,
    test_fraction: float = 0.1,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
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
    args = dict(
        num_scenes=int(num_scenes),
        seed=int(seed),
        height=int(height),
        width=int(width),
        frames_per_scene=int(frames_per_scene),
        test_fraction=float(test_fraction),
    )
    start_time = time.perf_counter()
    train_idx, test_idx = split_indices(num_scenes, test_fraction, seed)
    names = [f"scene_{i:05d}" for i in range(num_scenes)]
    summary = dict(
        output=str(output),
        skipped=False,
        train=[names[i] for i in train_idx],
        test=[names[i] for i in test_idx],
        num_frames=num_scenes * frames_per_scene,
    )

    if output.exists() and not output.is_dir():
        raise ILRMError(f"output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        manifest = _read_manifest(output)
        if manifest is None:
            raise ILRMError(
                f"output directory {output} is not empty and holds no data set made by this "
                "generator (no valid manifest.json); choose a new or empty directory. "
                "Nothing was deleted."
            )
        if manifest.get("args") == args and manifest.get("complete") and _files_present(output, manifest):
            summary.update(skipped=True, seconds=time.perf_counter() - start_time)
            return summary
        if manifest.get("args") != args:
            if not overwrite:
                raise ILRMError(
                    f"{output} holds a data set generated with other arguments "
                    f"({manifest.get('args')}); use another output directory or pass "
                    "overwrite=True / --overwrite to replace it."
                )
            for sub in ("train", "test"):
                shutil.rmtree(output / sub, ignore_errors=True)
        # Same arguments but incomplete (interrupted run, deleted files): rewritten in place.

    output.mkdir(parents=True, exist_ok=True)
    manifest = dict(
        generator=GENERATOR_NAME,
        version=GENERATOR_VERSION,
        args=args,
        complete=False,
        train=summary["train"],
        test=summary["test"],
        scenes=[],
    )
    _json_dump(manifest, output / "manifest.json")  # marks the directory as ours first

    test_set = set(test_idx)
    jobs = [
        (seed, i, names[i], output / ("test" if i in test_set else "train") / names[i], height, width, frames_per_scene)
        for i in range(num_scenes)
    ]
    for sub in ("train", "test"):
        (output / sub).mkdir(exist_ok=True)
    report_every = max(1, num_scenes // 10)
    infos = []
    if progress:
        print(
            f"Generating {num_scenes} scenes x {frames_per_scene} frames at {height}x{width} "
            f"(h x w) into {output} (seed {seed}, {workers} workers)",
            flush=True,
        )

    def note(done: int) -> None:
        if progress and (done % report_every == 0 or done == num_scenes):
            elapsed = time.perf_counter() - start_time
            print(
                f"  [{done:>{len(str(num_scenes))}}/{num_scenes}] {100 * done // num_scenes:3d}%  {elapsed:6.1f} s",
                flush=True,
            )

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
    manifest.update(
        complete=True,
        scenes=[
            dict(name=i["name"], index=i["index"], kind=i["kind"], split="test" if i["index"] in test_set else "train")
            for i in infos
        ],
    )
    _json_dump(manifest, output / "manifest.json")
    summary["seconds"] = time.perf_counter() - start_time
    summary["kinds"] = {k: sum(i["kind"] == k for i in infos) for k in ("room", "objects")}
    return summary
