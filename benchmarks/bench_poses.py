"""`ilrm-process` against known cameras: photos registered, seconds, camera-centre and rotation
error after a similarity alignment, for the global and the incremental mapper, and (`--old`) the
path it replaced (nerfstudio's ns-process-data driving the `colmap` program, from git) in the
same run.

A capture with known poses (nerfstudio layout: transforms.json + images/) is cut into evenly
spaced subsets; each subset's photos alone (no poses) go through `ilrm-process`, and the recovered
cameras are compared with the known ones:

- centre error: distance between the recovered camera centres, after the similarity (scale,
  rotation, translation; Umeyama 1991) that fits them best to the known ones, and the known
  centres, as a fraction of the camera spread (mean distance of the known centres to their mean);
- rotation error: angle between each recovered camera orientation (rotated by that similarity)
  and the known one, in degrees.

    python benchmarks/bench_poses.py                                   # 16 and 30 photos of snowmiku
    python benchmarks/bench_poses.py --quick                           # 16 of the shipped subset
    python benchmarks/bench_poses.py --counts 16 30 97 --old           # + all 97, + the old path
    python benchmarks/bench_poses.py --counts 30 --resize 3072 2048    # photos scaled up (a stand-in)

`--resize W H` scales (and centre-crops to the aspect of) every photo first: a stand-in for larger
photos when none with known poses are at hand; it says nothing about accuracy on such photos, only
about time. Prints a markdown table and the command that made it.

The default capture is `../shared/captures/snowmiku` beside the clone when it exists (the 97 phone
photos of noname0310/snowmiku2023plush-splat, MIT, 1008 x 756, with the poses of a COLMAP run),
else the 33-photo subset shipped in the package (`ilrm_nerfstudio/captures/snowmiku`, 504 x 378).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ilrm_nerfstudio.tools.process import ProcessConfig, ProcessError, process  # noqa: E402

OLD_REVISION = "69b3b84"  # the last revision whose ilrm-process drove the `colmap` program


def umeyama(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimizing |s R source + t - target|^2 (Umeyama 1991); points [N, 3]."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    xs, xt = source - mu_s, target - mu_t
    U, S, Vt = np.linalg.svd(xt.T @ xs / len(source))
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / xs.var(0).sum())
    return s, R, mu_t - s * R @ mu_s


def pose_errors(dataset: Path, originals: dict[str, str], known: dict[str, np.ndarray]) -> dict[str, float]:
    """Errors of the cameras in `dataset`/transforms.json against the `known` camera-to-world
    matrices (both nerfstudio / OpenGL). `originals` maps a dataset image name to its key in
    `known`. Returns centre errors (mean, max) as fractions of the known spread and rotation errors
    (mean, max) in degrees."""
    ours, theirs = [], []
    for frame in json.loads((dataset / "transforms.json").read_text())["frames"]:
        ours.append(np.asarray(frame["transform_matrix"], dtype=float))
        theirs.append(known[originals[Path(frame["file_path"]).name]])
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    s, R, t = umeyama(ours[:, :3, 3], theirs[:, :3, 3])
    centres = (s * (R @ ours[:, :3, 3].T)).T + t
    spread = np.linalg.norm(theirs[:, :3, 3] - theirs[:, :3, 3].mean(0), axis=1).mean()
    centre = np.linalg.norm(centres - theirs[:, :3, 3], axis=1) / spread
    relative = np.einsum("nji,jk,nkl->nil", theirs[:, :3, :3], R, ours[:, :3, :3])  # known^T R ours
    cos = np.clip((np.trace(relative, axis1=1, axis2=2) - 1) / 2, -1, 1)
    angle = np.degrees(np.arccos(cos))
    return {
        "centre_mean": float(centre.mean()),
        "centre_max": float(centre.max()),
        "rotation_mean": float(angle.mean()),
        "rotation_max": float(angle.max()),
    }


def known_poses(capture: Path) -> dict[str, np.ndarray]:
    frames = json.loads((capture / "transforms.json").read_text())["frames"]
    return {Path(f["file_path"]).name: np.asarray(f["transform_matrix"], dtype=float) for f in frames}


def copy_subset(capture: Path, names: list[str], folder: Path, resize: tuple[int, int] | None) -> None:
    from PIL import Image, ImageOps

    folder.mkdir(parents=True)
    for name in names:
        if resize is None:
            (folder / name).write_bytes((capture / "images" / name).read_bytes())
            continue
        with Image.open(capture / "images" / name) as image:
            ImageOps.fit(image, resize, Image.LANCZOS).save(folder / name, quality=95)


def load_old_process(revision: str, workdir: Path):
    """The old tools/process.py, from git, as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:ilrm_nerfstudio/tools/process.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = workdir / "old_process.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_process", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_new(photos: Path, output: Path, mapper: str, options: dict) -> tuple[dict, dict[str, str]]:
    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        result = process(ProcessConfig(photos, output, mapper=mapper, min_frames=1, **options))
    row = {
        "registered": len(result.registered),
        "seconds": time.time() - start,
        "steps": ", ".join(f"{k} {v:.0f}" for k, v in result.step_seconds.items()),
        "matching": result.matching,
        "used": result.mapper,
    }
    return row, result.frame_names


def run_old(old, photos: Path, output: Path, names: list[str]) -> tuple[dict, dict[str, str]]:
    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        result = old.process(old.ProcessConfig(photos, output, min_frames=1))
    originals = {f"frame_{i + 1:05d}.jpg": name for i, name in enumerate(names)}  # nerfstudio's renaming
    logs = {p.stem: p.read_text() for p in (output / "colmap").glob("*.log")}
    steps = []
    for step in ("feature_extractor", "exhaustive_matcher", "sequential_matcher", "mapper"):
        if step in logs and "after " in logs[step]:
            steps.append(f"{step.split('_')[0]} {float(logs[step].rsplit('after ', 1)[1].split()[0]):.0f}")
    row = {
        "registered": len(result.registered),
        "seconds": time.time() - start,
        "steps": ", ".join(steps),
        "matching": result.matching,
    }
    return row, originals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared, shipped = (
        ROOT.parent / "shared" / "captures" / "snowmiku",
        ROOT / "ilrm_nerfstudio" / "captures" / "snowmiku",
    )
    parser.add_argument("--capture", type=Path, default=shared if shared.is_dir() else shipped)
    parser.add_argument("--counts", type=int, nargs="+", default=[16, 30], help="subset sizes, evenly spaced")
    parser.add_argument("--mappers", nargs="+", default=["auto", "global", "incremental"])
    parser.add_argument("--old", action="store_true", help="also run the old path (needs the colmap program)")
    parser.add_argument("--old-revision", default=OLD_REVISION)
    parser.add_argument("--resize", type=int, nargs=2, metavar=("W", "H"), help="scale the photos first")
    parser.add_argument("--max-image-size", type=int, help="ilrm-process --max-image-size (default: its own)")
    parser.add_argument("--workdir", type=Path, help="keep the datasets here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="16 photos of the shipped subset, --mapper auto")
    args = parser.parse_args()
    if args.quick:  # smaller defaults; options given still win
        parser.set_defaults(capture=shipped, counts=[16], mappers=["auto"])
        args = parser.parse_args()

    load = os.getloadavg()[0]
    options = {"max_image_size": args.max_image_size} if args.max_image_size else {}
    known = known_poses(args.capture)
    everything = sorted(known)
    with tempfile.TemporaryDirectory(prefix="bench_poses_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        old = load_old_process(args.old_revision, workdir) if args.old else None
        rows = []
        for count in args.counts:
            count = min(count, len(everything))
            names = [everything[round(i)] for i in np.linspace(0, len(everything) - 1, count)]
            photos = workdir / f"photos_{count}"
            copy_subset(args.capture, names, photos, tuple(args.resize) if args.resize else None)
            runs = [(f"pycolmap, --mapper {mapper}", mapper) for mapper in args.mappers]
            runs += [(f"colmap program ({args.old_revision})", "old")] if old else []
            for label, mapper in runs:
                output = workdir / f"scene_{count}_{mapper}"
                try:
                    if mapper == "old":
                        row, originals = run_old(old, photos, output, names)
                    else:
                        row, originals = run_new(photos, output, mapper, options)
                    row.update(pose_errors(output, originals, known))
                except ProcessError as error:  # both paths' one-line failures
                    row = {"registered": 0, "failed": str(error)[:120]}
                rows.append({"photos": count, "path": label, **row})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    size = f"{args.resize[0]}x{args.resize[1]}" if args.resize else "as stored"
    print(f"\n$ python benchmarks/bench_poses.py {' '.join(sys.argv[1:])}")
    print(f"capture {args.capture.name}, photos {size}; {os.cpu_count()} cores; load average at the start: {load:.1f}")
    print(
        "\n| photos | path | matching | registered | seconds (steps) | centre error mean / max (of spread) "
        "| rotation error mean / max |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if "failed" in row:
            print(f"| {row['photos']} | {row['path']} | | 0 | failed: {row['failed']} | | |")
            continue
        used = f" (used: {row['used']})" if row.get("used") else ""
        print(
            f"| {row['photos']} | {row['path']}{used} | {row['matching']} | {row['registered']} of {row['photos']} "
            f"| {row['seconds']:.0f} ({row['steps']}) | {row['centre_mean']:.3%} / {row['centre_max']:.3%} "
            f"| {row['rotation_mean']:.2f} / {row['rotation_max']:.2f} deg |"
        )


if __name__ == "__main__":
    main()
