"""`ilrm-process`: a folder of photos or a video -> a posed nerfstudio dataset, on a headless CPU
machine without internet.

    ilrm-process my_photos/ my_scene/        # a folder of photos
    ilrm-process my_clip.mp4 my_scene/       # a video

It runs nerfstudio's own processing (`ns-process-data images` / `video`, i.e.
`ImagesToNerfstudioDataset` / `VideoToNerfstudioDataset`) with settings that work there:

- CPU SIFT (`gpu=False`): COLMAP's GPU SIFT needs an OpenGL context and aborts without a display;
  Qt is told to run offscreen (`QT_QPA_PLATFORM=offscreen`).
- No vocabulary tree (nerfstudio's default downloads one): sequential matching for a video and for
  more than `--exhaustive-up-to` photos (they are taken in file-name order), exhaustive matching
  for smaller sets (any order).
- At most `--max-num-features` SIFT features per image (the CPU matcher's time grows with the
  square), extracted from images scaled to at most `--max-image-size` pixels (COLMAP's
  `SiftExtraction.max_image_size`; the keypoints stay in full-size pixel coordinates and the dataset
  keeps the full-size images plus `--num-downscales` halved copies, of which the `nerfstudio-data`
  dataparser picks one of at most 1600 pixels by itself).

Then it checks the result and says in one line how many photos COLMAP registered, which it
dropped and what usually helps. When COLMAP splits the photos into several models, the largest one
becomes `colmap/sparse/0` (the one nerfstudio converts). Fewer than `--min-frames` registered
photos, a missing COLMAP or a failed COLMAP step end with one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ilrm_nerfstudio.core.errors import ILRMError

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
MIN_KEYPOINTS = 100  # fewer SIFT features than this: the image is featureless for COLMAP
MIN_PAIR_MATCHES = 15  # COLMAP's default min_num_inliers for a verified image pair

OVERLAP_HINT = (
    "each part of the scene should be in 3 or more photos taken a small step apart (about 60-80% "
    "overlap), sharp and evenly lit"
)


class ProcessError(ILRMError):
    """A failure of ilrm-process, explained in one line (printed without a traceback, exit 1, as
    `ilrm-process: error: ...`)."""


@dataclass
class ProcessConfig:
    """Poses for a folder of photos or a video with COLMAP (CPU, offline), as a nerfstudio dataset
    that `ns-train ilrm-finetune --data OUTPUT_DIR` reads."""

    data: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="PHOTOS_OR_VIDEO")]]
    """A folder of photos (jpg, png, tif) or a video file."""
    output_dir: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="OUTPUT_DIR")]]
    """Where the dataset goes (transforms.json, images/, images_2/, ..., colmap/)."""
    matching: Literal["auto", "sequential", "exhaustive"] = "auto"
    """COLMAP feature matching. auto: sequential for a video and for more than --exhaustive-up-to
    photos (neighbours in file-name order), exhaustive (every pair) otherwise."""
    exhaustive_up_to: int = 60
    """auto matching: photo sets up to this size are matched exhaustively."""
    max_image_size: int = 1600
    """Longest side, in pixels, COLMAP extracts SIFT features at (larger photos are scaled down for
    that only; 0: COLMAP's own default, 3200)."""
    max_num_features: int = 4096
    """SIFT features per image (COLMAP's default is 8192; CPU matching time grows with its square)."""
    num_downscales: int = 3
    """Halved copies of the images in the dataset (images_2, images_4, ...)."""
    num_frames_target: int = 120
    """Video: about this many frames are extracted, evenly spaced."""
    min_frames: int = 8
    """Fewer registered photos than this is an error (ilrm-finetune uses 8 input views)."""
    colmap_cmd: str = "colmap"
    """How to call COLMAP."""
    verbose: bool = False
    """Print COLMAP's own output as it runs."""


@dataclass
class Result:
    """What a run produced (also returned by `process` for scripts and tests)."""

    output_dir: Path
    kind: Literal["images", "video"]
    matching: str
    total: int
    registered: list[str]
    """Original names (photos) or frame names (video) that have a pose."""
    dropped: list[str]
    models: int
    """Number of separate models COLMAP made (the largest is used)."""
    colmap_seconds: float
    seconds: float

    def summary(self) -> str:
        unit = "photos" if self.kind == "images" else "video frames"
        what = (
            f"COLMAP registered {len(self.registered)} of {self.total} {unit} ({self.matching} matching, "
            f"{self.colmap_seconds:.0f} s)"
        )
        if not self.dropped:
            return f"{what}; dataset in {self.output_dir}"
        split = (
            f"; COLMAP split them into {self.models} separate models, the largest is used" if self.models > 1 else ""
        )
        return f"{what}; dropped: {short_list(self.dropped)}{split}; {self.hint()}; dataset in {self.output_dir}"

    def hint(self) -> str:
        if self.kind == "video":
            return (
                f"dropped frames are usually blurred or fast pans: move slower, or extract fewer frames "
                f"(--num-frames-target, now {len(self.registered) + len(self.dropped)})"
            )
        if self.matching == "sequential":
            return (
                "sequential matching only pairs neighbours in file-name order: if the photos are not "
                "in capture order, try --matching exhaustive; otherwise add photos between the dropped "
                "ones or remove blurred ones"
            )
        return (
            f"dropped photos usually overlap too little with the others or are blurred: add photos between them or "
            f"remove them ({OVERLAP_HINT})"
        )


def short_list(names: list[str], limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def list_photos(folder: Path) -> list[Path]:
    """The photos nerfstudio copies, in its order (sorted, recursive)."""
    from nerfstudio.process_data.process_data_utils import list_images

    return list_images(folder)


def same_dimensions(photos: list[Path]) -> bool:
    """Whether every photo has the same size (nerfstudio's fast copy assumes so)."""
    from PIL import Image

    sizes = set()
    for photo in photos:
        try:
            with Image.open(photo) as image:
                sizes.add(image.size)
        except Exception:  # RAW files and the like: nerfstudio converts them itself
            return True
    return len(sizes) <= 1


def colmap_binary(colmap_cmd: str) -> None:
    """One-line error when COLMAP cannot run."""
    name = shlex.split(colmap_cmd)[0] if colmap_cmd.strip() else "colmap"
    if shutil.which(name) is None:
        raise ProcessError(
            f"COLMAP not found ('{name}' is not on PATH): run `make setup` (installs it with apt as root) or "
            f"`sudo apt-get install colmap`, or pass --colmap-cmd /path/to/colmap"
        )
    out = subprocess.run(f"{colmap_cmd} -h", shell=True, capture_output=True, text=True, env=colmap_env())
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ProcessError(
            f"COLMAP does not start ('{colmap_cmd} -h' exited with {out.returncode}: {last[0]}): reinstall it "
            f"(`sudo apt-get install --reinstall colmap`)"
        )


def colmap_env() -> dict:
    return {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}


def database_diagnosis(database: Path) -> str:
    """Why COLMAP's mapper made no model, from its database: features, verified pairs."""
    try:
        db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            names = dict(db.execute("SELECT image_id, name FROM images"))
            keypoints = dict(db.execute("SELECT image_id, rows FROM keypoints"))
            pairs = db.execute(
                "SELECT pair_id FROM two_view_geometries WHERE rows >= ?", (MIN_PAIR_MATCHES,)
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as error:
        return f"its database {database} could not be read ({error})"
    featureless = [names[i] for i in names if keypoints.get(i, 0) < MIN_KEYPOINTS]
    connected = set()
    for (pair_id,) in pairs:
        second = pair_id % 2147483647
        connected.update(((pair_id - second) // 2147483647, second))
    if len(featureless) == len(names):
        return (
            f"COLMAP found (almost) no features in any of the {len(names)} images (textureless, dark or tiny): "
            f"photograph a textured, well-lit scene"
        )
    if len(connected) < 2:
        return (
            f"no two of the {len(names)} images share enough matching features ({MIN_PAIR_MATCHES}): they do not show "
            f"the same scene from nearby viewpoints; {OVERLAP_HINT}"
        )
    which = (
        f"all {len(names)} images match some other one"
        if len(connected) >= len(names)
        else f"{len(connected)} of the {len(names)} images match some other one"
    )
    return (
        f"{which}, but no pair is good enough to start a model from (neighbouring views too far apart, or too "
        f"little parallax): {OVERLAP_HINT}"
    )


def largest_model_first(sparse: Path) -> int:
    """Rename COLMAP's models so that the one with most registered images is sparse/0 (the one
    nerfstudio converts). Returns how many models there are."""
    from nerfstudio.data.utils.colmap_parsing_utils import read_images_binary

    models = (
        sorted(p for p in sparse.iterdir() if p.is_dir() and (p / "images.bin").is_file()) if sparse.is_dir() else []
    )
    if len(models) > 1:
        sizes = {p: len(read_images_binary(p / "images.bin")) for p in models}
        best = max(models, key=lambda p: sizes[p])
        if best.name != "0":
            swap = sparse / "_swap"
            (sparse / "0").rename(swap)
            best.rename(sparse / "0")
            swap.rename(best)
    return len(models)


@contextmanager
def colmap_steps(config: ProcessConfig, colmap_dir: Path, stats: dict) -> Iterator[None]:
    """Run the COLMAP commands nerfstudio's `run_colmap` issues through our own runner: SIFT at
    --max-image-size, headless, each step's output in colmap/<step>.log, one-line errors, and the
    largest model first after the mapper."""
    from nerfstudio.process_data import colmap_utils

    original = colmap_utils.run_command

    def run(cmd: str, verbose: bool = False) -> str | None:
        words = cmd.split()
        step = words[1] if len(words) > 1 and not words[1].startswith("-") else "colmap"
        if step == "feature_extractor":
            cmd += f" --SiftExtraction.max_num_features {config.max_num_features}"
            if config.max_image_size > 0:
                cmd += f" --SiftExtraction.max_image_size {config.max_image_size}"
        start = time.time()
        if config.verbose:
            out = subprocess.run(cmd, shell=True, env=colmap_env(), stdout=None, stderr=subprocess.PIPE, text=True)
            text = out.stderr or ""
            sys.stderr.write(text)
        else:
            out = subprocess.run(cmd, shell=True, env=colmap_env(), capture_output=True, text=True)
            text = (out.stdout or "") + (out.stderr or "")
        stats["colmap_seconds"] = stats.get("colmap_seconds", 0.0) + time.time() - start
        log = colmap_dir / f"{step}.log"
        if words[1:] != ["-h"]:  # the version query
            log.write_text(f"$ {cmd}\n{text}\n# exit status {out.returncode} after {time.time() - start:.1f} s\n")
        if out.returncode != 0:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            errors = [line for line in lines if "error" in line.lower() or "check failed" in line.lower()]
            detail = (errors or lines or [f"exit status {out.returncode}"])[-1]
            if step == "mapper":
                raise ProcessError(
                    f"COLMAP's mapper made no model of {config.data} ({detail}): "
                    f"{database_diagnosis(colmap_dir / 'database.db')}; log: {log}"
                )
            raise ProcessError(f"COLMAP {step} failed on {config.data} ({detail}); log: {log}")
        if step == "mapper":
            stats["models"] = largest_model_first(colmap_dir / "sparse")
            if stats["models"] == 0:
                raise ProcessError(
                    f"COLMAP's mapper made no model of {config.data}: "
                    f"{database_diagnosis(colmap_dir / 'database.db')}; log: {log}"
                )
        return text

    colmap_utils.run_command = run
    try:
        yield
    finally:
        colmap_utils.run_command = original


def check_paths(config: ProcessConfig) -> Literal["images", "video"]:
    data, output = config.data.resolve(), config.output_dir.resolve()
    if not data.exists():
        raise ProcessError(f"{config.data}: not found (give a folder of photos or a video file)")
    for path, given in ((data, config.data), (output, config.output_dir)):
        if re.search(
            r"[\s'\"$`&;|()<>*?]", str(path)
        ):  # nerfstudio runs COLMAP and ffmpeg through an unquoted shell line
            raise ProcessError(
                f"{given}: the path {path} has spaces or shell characters, which nerfstudio's processing does "
                f"not quote; rename or move it"
            )
    if data.is_file():
        if data.suffix.lower() not in VIDEO_SUFFIXES:
            raise ProcessError(
                f"{config.data}: not a folder of photos nor a video ({', '.join(sorted(VIDEO_SUFFIXES))})"
            )
        return "video"
    # nerfstudio empties OUTPUT_DIR/images* before copying: the photos must not live there.
    for i in range(config.num_downscales + 1):
        images = output / ("images" if i == 0 else f"images_{2**i}")
        if data == output or data == images or images in data.parents:
            raise ProcessError(
                f"{config.data}: the photos are inside {config.output_dir}, whose images folders are rewritten; "
                f"choose another output folder"
            )
    return "images"


def registered_frames(output_dir: Path) -> list[str]:
    transforms = output_dir / "transforms.json"
    if not transforms.is_file():
        raise ProcessError(
            f"{transforms}: not written (nerfstudio found no COLMAP model in {output_dir / 'colmap' / 'sparse' / '0'})"
        )
    return [Path(frame["file_path"]).name for frame in json.loads(transforms.read_text())["frames"]]


def frame_number(name: str) -> int:
    match = re.search(r"(\d+)\.[^.]+$", name)
    return int(match.group(1)) if match else -1


def process(config: ProcessConfig) -> Result:
    """Run the whole path; raises ProcessError with a one-line reason."""
    start = time.time()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    kind = check_paths(config)
    colmap_binary(config.colmap_cmd)
    if shutil.which("ffmpeg") is None:
        raise ProcessError(
            "ffmpeg not found (not on PATH; nerfstudio copies and scales the images with it): run `make setup` or "
            "`sudo apt-get install ffmpeg`"
        )
    common = dict(
        output_dir=config.output_dir,
        gpu=False,
        num_downscales=config.num_downscales,
        colmap_cmd=config.colmap_cmd,
        verbose=config.verbose,
    )
    if kind == "images":
        from nerfstudio.process_data.images_to_nerfstudio_dataset import ImagesToNerfstudioDataset

        photos = list_photos(config.data)
        if len(photos) < 3:
            raise ProcessError(
                f"{config.data}: {len(photos)} photos (jpg, png, tif) found; COLMAP needs at least 3, and "
                f"ilrm-finetune {config.min_frames} or more"
            )
        names = [p.relative_to(config.data).as_posix() for p in photos]
        matching = (
            config.matching
            if config.matching != "auto"
            else ("exhaustive" if len(photos) <= config.exhaustive_up_to else "sequential")
        )
        print(
            f"ilrm-process: {len(photos)} photos in {config.data}, {matching} matching, CPU SIFT at up to "
            f"{config.max_image_size or 3200} px",
            flush=True,
        )
        converter = ImagesToNerfstudioDataset(
            data=config.data, matching_method=matching, same_dimensions=same_dimensions(photos), **common
        )
    else:
        from nerfstudio.process_data.video_to_nerfstudio_dataset import VideoToNerfstudioDataset

        names = None
        matching = config.matching if config.matching != "auto" else "sequential"
        print(
            f"ilrm-process: video {config.data}, about {config.num_frames_target} frames, {matching} matching, CPU "
            f"SIFT at up to {config.max_image_size or 3200} px",
            flush=True,
        )
        converter = VideoToNerfstudioDataset(
            data=config.data, matching_method=matching, num_frames_target=config.num_frames_target, **common
        )
    stats: dict = {}
    colmap_dir = converter.absolute_colmap_path
    colmap_dir.mkdir(parents=True, exist_ok=True)
    for stale in (colmap_dir / "sparse", config.output_dir / "transforms.json"):  # from an earlier run
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    try:
        with colmap_steps(config, colmap_dir, stats):
            converter.main()
    except SystemExit as error:  # nerfstudio's own checks print their reason and exit
        raise ProcessError(
            f"nerfstudio's processing of {config.data} stopped (exit status {error.code}); its message is above"
        ) from None
    registered = registered_frames(config.output_dir)
    if kind == "images":
        assert names is not None
        by_number = {i + 1: name for i, name in enumerate(names)}  # nerfstudio renames photo i to frame_{i+1:05d}
        got = {frame_number(f) for f in registered}
        total = len(names)
        registered_names = [by_number[n] for n in sorted(got) if n in by_number]
        dropped = [by_number[n] for n in sorted(by_number) if n not in got]
    else:
        frames = sorted(p.name for p in converter.image_dir.iterdir() if p.is_file())
        total = len(frames)
        registered_names = sorted(registered)
        dropped = [f for f in frames if f not in set(registered)]
    result = Result(
        config.output_dir,
        kind,
        matching,
        total,
        registered_names,
        dropped,
        stats.get("models", 1),
        stats.get("colmap_seconds", 0.0),
        time.time() - start,
    )
    if len(result.registered) < config.min_frames:
        raise ProcessError(
            f"too few poses: {result.summary()}; ilrm-finetune needs at least {config.min_frames} (--min-frames)"
        )
    return result


def main() -> None:
    config = tyro.cli(ProcessConfig)
    try:
        result = process(config)
    except ProcessError as error:
        print(f"ilrm-process: error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"ilrm-process: {result.summary()} ({result.seconds:.0f} s in all)", flush=True)
    print(f"ilrm-process: next: ns-train ilrm-finetune --data {result.output_dir} ...", flush=True)


if __name__ == "__main__":
    main()
