"""`ilrm-process`: a folder of photos or a video -> a posed nerfstudio dataset, on a CPU machine
without internet, display or root, and without a `colmap` program: COLMAP's own Python bindings
(`pycolmap`, installed into the virtual environment by `make setup`) recover the cameras, and
nerfstudio's converter (`colmap_utils.colmap_to_json`) writes the dataset.

    ilrm-process my_photos/ my_scene/        # a folder of photos (jpg, png, tif, heic)
    ilrm-process my_clip.mp4 my_scene/       # a video

1. Images: each photo is copied to `images/frame_00001.jpg`, ... (sorted by path, nerfstudio's
   names), upright: a photo stored sideways with an EXIF orientation tag is turned and re-saved
   (its EXIF focal length kept), a .heic is converted to JPEG (pillow-heif). A video's frames are
   decoded with PyAV, about `--num-frames-target` of them evenly spaced. Halved copies go to
   `images_2`, `images_4`, ... (Pillow; no ffmpeg program needed).
2. SIFT on the CPU, on images scaled to at most `--max-image-size` (1024) pixels, at most
   `--max-num-features` per image. Photos of one size from one camera (EXIF make, model, focal
   length) share one set of intrinsics (COLMAP's OPENCV model, nerfstudio's default); photos of
   another size or camera get their own.
3. Matching without a vocabulary tree (it would be a download): every pair for up to
   `--exhaustive-up-to` photos (any order), neighbours in file-name order for more photos and for
   videos (`--matching`).
4. Mapping (`--mapper auto`): incremental, and global (GLOMAP, part of COLMAP) as well when
   incremental leaves out more than 10% of the images, the model with more images kept; the
   largest of the models COLMAP makes becomes `colmap/sparse/0`.
5. nerfstudio's `colmap_to_json` writes `transforms.json` (per-frame intrinsics when there are
   several cameras) with the sparse points as `sparse_pc.ply` (`ply_file_path`), which every
   nerfstudio dataparser and `ns-train ilrm-finetune` read unchanged.

It says in one line how many photos got a pose, which were dropped and what usually helps. Bad
input and failures end with one line on stderr (`ilrm-process: error: ...`) and exit status 1.
COLMAP's own output of each step is kept in `OUTPUT_DIR/colmap/<step>.log` (`--verbose` shows it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ilrm_nerfstudio.core.errors import ILRMError, brief
from ilrm_nerfstudio.data.images import PHOTO_SUFFIXES

COPIED_AS_IS = {".jpg", ".jpeg", ".png"}  # upright photos in these formats are copied byte for byte
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
MIN_KEYPOINTS = 100  # fewer SIFT features than this: the image is featureless for COLMAP
MIN_PAIR_MATCHES = 15  # COLMAP's default min_num_inliers for a verified image pair
MAX_IMAGE_ID = 2147483647  # COLMAP's pair_id = image_id1 * MAX_IMAGE_ID + image_id2
AUTO_GLOBAL_ABOVE = 0.1  # --mapper auto: global mapping too when incremental leaves out more than this
OUTPUT_ENTRIES = {"images", "colmap", "transforms.json", "sparse_pc.ply"}  # what a run writes, besides images_N

OVERLAP_HINT = (
    "each part of the scene should be in 3 or more photos taken a small step apart (about 60-80% "
    "overlap), sharp and evenly lit"
)


class ProcessError(ILRMError):
    """A failure of ilrm-process, explained in one line (printed without a traceback, exit 1, as
    `ilrm-process: error: ...`)."""


@dataclass
class ProcessConfig:
    """Poses for a folder of photos or a video with COLMAP's Python bindings (CPU, offline), as a
    nerfstudio dataset that `ns-train ilrm-finetune --data OUTPUT_DIR` reads."""

    data: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="PHOTOS_OR_VIDEO")]]
    """A folder of photos (jpg, png, tif, heic; sub-folders included) or a video file."""
    output_dir: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="OUTPUT_DIR")]]
    """Where the dataset goes (transforms.json, images/, images_2/, ..., colmap/): a new or empty
    folder, or the output of an earlier ilrm-process run (rewritten)."""
    matching: Literal["auto", "sequential", "exhaustive"] = "auto"
    """Feature matching. auto: sequential for a video and for more than --exhaustive-up-to photos
    (neighbours in file-name order), exhaustive (every pair, any order) otherwise."""
    exhaustive_up_to: int = 40
    """auto matching: photo sets up to this size are matched exhaustively."""
    mapper: Literal["auto", "global", "incremental"] = "auto"
    """COLMAP's mapper: incremental (one camera at a time), global (GLOMAP: all cameras at once), or
    auto: incremental, and global as well when incremental leaves out more than 10% of the images
    (the model with more images is kept)."""
    max_image_size: int = 1024
    """Longest side, in pixels, SIFT works at (larger images are scaled down for that only; the
    poses and intrinsics are for the full-size images). SIFT's first octave is at twice this size
    (COLMAP's default); 1024 keeps 30 photos of 3072 x 2048 px well within 2 minutes on 2 cores, and
    not doubling a larger size instead was faster but placed the cameras wrongly in some runs
    (docs/own_capture.md)."""
    max_num_features: int = 4096
    """SIFT features per image (matching time grows with its square)."""
    num_downscales: int = 3
    """Halved copies of the images in the dataset (images_2, images_4, ...)."""
    num_frames_target: int = 120
    """Video: about this many frames are extracted, evenly spaced."""
    min_frames: int = 8
    """Fewer registered photos than this is an error (ilrm-finetune uses 8 input views)."""
    verbose: bool = False
    """Print COLMAP's own output as it runs (otherwise it goes to OUTPUT_DIR/colmap/<step>.log)."""


@dataclass
class Result:
    """What a run produced (also returned by `process` for scripts, benchmarks and tests)."""

    output_dir: Path
    kind: Literal["images", "video"]
    matching: str
    mapper: str
    total: int
    registered: list[str]
    """Original names (photos, relative to the folder) or frame names (video) that have a pose."""
    dropped: list[str]
    models: int
    """Number of separate models COLMAP made (the largest is used)."""
    cameras: int
    """Number of separate intrinsics (one per image size and camera)."""
    step_seconds: dict[str, float]
    """COLMAP's steps: extraction, matching, mapping."""
    seconds: float
    frame_names: dict[str, str] = field(default_factory=dict)
    """Dataset image name (frame_00001.jpg) -> original photo name."""

    @property
    def colmap_seconds(self) -> float:
        return sum(self.step_seconds.values())

    def summary(self) -> str:
        unit = "photos" if self.kind == "images" else "video frames"
        what = (
            f"COLMAP registered {len(self.registered)} of {self.total} {unit} ({self.matching} matching, "
            f"{self.mapper} mapping, {self.colmap_seconds:.0f} s)"
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
        other = "; --mapper global may register more" if self.mapper == "incremental" else ""
        return (
            f"dropped photos usually overlap too little with the others or are blurred: add photos between them or "
            f"remove them ({OVERLAP_HINT}){other}"
        )


def short_list(names: list[str], limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------


def list_photos(folder: Path) -> list[Path]:
    """The photos in `folder` and its sub-folders, sorted by path (hidden files left out)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in PHOTO_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def downscale_folders(config: ProcessConfig) -> list[str]:
    return [f"images_{2**i}" for i in range(1, config.num_downscales + 1)]


def check_paths(config: ProcessConfig) -> Literal["images", "video"]:
    data, output = config.data.resolve(), config.output_dir.resolve()
    if not data.exists():
        raise ProcessError(f"{config.data}: not found (give a folder of photos or a video file)")
    if output.is_file():
        raise ProcessError(f"{config.output_dir}: is a file; give a folder for the dataset (new, or an earlier output)")
    if output.is_dir():
        ours = OUTPUT_ENTRIES | set(downscale_folders(config)) | {p.name for p in output.glob("images_*")}
        foreign = sorted(p.name for p in output.iterdir() if p.name not in ours)
        if foreign:
            raise ProcessError(
                f"{config.output_dir}: holds other things ({short_list(foreign, 4)}), and ilrm-process rewrites its "
                f"images folders: give a new or empty folder, or the output of an earlier ilrm-process run"
            )
    if data.is_file():
        if data.suffix.lower() not in VIDEO_SUFFIXES:
            raise ProcessError(
                f"{config.data}: not a folder of photos nor a video ({', '.join(sorted(VIDEO_SUFFIXES))})"
            )
        return "video"
    # The images folders of OUTPUT_DIR are emptied first: the photos must not live there.
    for name in ["images", *downscale_folders(config)]:
        images = output / name
        if data == output or data == images or images in data.parents:
            raise ProcessError(
                f"{config.data}: the photos are inside {config.output_dir}, whose images folders are rewritten; "
                f"choose another output folder"
            )
    return "images"


def clear_output(config: ProcessConfig) -> None:
    """Remove what an earlier run wrote (check_paths made sure there is nothing else)."""
    output = config.output_dir
    output.mkdir(parents=True, exist_ok=True)
    for path in output.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (output / "colmap").mkdir()


# ------------------------------------------------------------------------------------------------
# Images: upright copies, halved copies, video frames
# ------------------------------------------------------------------------------------------------


def camera_key(image, size: tuple[int, int]) -> tuple:
    """What decides whether two photos share intrinsics: the upright size and the EXIF camera
    (make, model, focal length); a zoomed shot or a second phone gets its own camera."""
    from PIL import ExifTags

    exif = image.getexif()
    details = exif.get_ifd(ExifTags.IFD.Exif)
    focal = details.get(ExifTags.Base.FocalLengthIn35mmFilm) or details.get(ExifTags.Base.FocalLength)
    return (
        size,
        str(exif.get(ExifTags.Base.Make, "")).strip(),
        str(exif.get(ExifTags.Base.Model, "")).strip(),
        float(focal) if focal else None,
    )


def write_downscales(image, output_dir: Path, name: str, num_downscales: int) -> None:
    from PIL import Image

    width, height = image.size
    for i in range(1, num_downscales + 1):
        factor = 2**i
        # nerfstudio scales the intrinsics of images_N by 1/N and rounds the size down: so do we
        small = image.resize((max(1, width // factor), max(1, height // factor)), Image.LANCZOS, reducing_gap=3.0)
        small.save(output_dir / f"images_{factor}" / name, quality=95)


def write_photo(source: Path, output_dir: Path, number: int, num_downscales: int) -> tuple[str, tuple]:
    """Photo -> OUTPUT_DIR/images/frame_NNNNN.<ext> upright, plus its halved copies. Returns the
    dataset name and the camera key."""
    from PIL import ExifTags, Image, ImageOps

    try:
        with Image.open(source) as image:
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            if orientation in (1, None) and source.suffix.lower() in COPIED_AS_IS:
                name = f"frame_{number:05d}{source.suffix.lower()}"
                shutil.copyfile(source, output_dir / "images" / name)
                key = camera_key(image, image.size)
                upright = image.convert("RGB")
            else:  # turned upright (the orientation tag dropped, the other EXIF fields kept), as JPEG
                name = f"frame_{number:05d}.jpg"
                upright = ImageOps.exif_transpose(image)
                exif = upright.getexif()
                key = camera_key(upright, upright.size)
                upright = upright.convert("RGB")
                try:
                    upright.save(output_dir / "images" / name, quality=95, exif=exif)
                except ValueError:  # EXIF over JPEG's 64 KB (a large maker note): without it
                    upright.save(output_dir / "images" / name, quality=95)
    except (OSError, ValueError, SyntaxError) as error:  # Pillow's ways of saying "not an image I can read"
        raise ProcessError(f"{source}: not a readable photo ({brief(error)}); remove it or convert it") from None
    write_downscales(upright, output_dir, name, num_downscales)
    return name, key


def write_photos(photos: list[Path], config: ProcessConfig) -> tuple[list[str], list[tuple]]:
    """All photos, decoded and written in parallel (Pillow releases the GIL)."""
    try:
        from pillow_heif import register_heif_opener

        register_heif_opener()
    except ImportError:
        if any(p.suffix.lower() in (".heic", ".heif") for p in photos):
            raise ProcessError(
                "pillow-heif is not installed, which reads .heic photos: run `make setup` (or pip install pillow-heif)"
            ) from None
    for folder in ["images", *downscale_folders(config)]:
        (config.output_dir / folder).mkdir(exist_ok=True)
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        written = list(
            pool.map(
                write_photo,
                photos,
                [config.output_dir] * len(photos),
                range(1, len(photos) + 1),
                [config.num_downscales] * len(photos),
            )
        )
    return [name for name, _ in written], [key for _, key in written]


def write_video_frames(config: ProcessConfig) -> list[str]:
    """About --num-frames-target evenly spaced frames of the video (PyAV), upright."""
    import av

    for folder in ["images", *downscale_folders(config)]:
        (config.output_dir / folder).mkdir(exist_ok=True)
    try:
        with av.open(str(config.data)) as container:
            if not container.streams.video:
                raise ProcessError(f"{config.data}: holds no video stream")
            stream = container.streams.video[0]
            count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            step = max(1, count // max(1, config.num_frames_target))
            container.seek(0)
            stream.thread_type = "AUTO"
            names = []
            for index, frame in enumerate(container.decode(stream)):
                if index % step:
                    continue
                image = frame.to_image()
                if frame.rotation:  # a phone's portrait video: stored sideways with a display rotation
                    image = image.rotate(frame.rotation, expand=True)
                name = f"frame_{len(names) + 1:05d}.jpg"
                image.save(config.output_dir / "images" / name, quality=95)
                write_downscales(image, config.output_dir, name, config.num_downscales)
                names.append(name)
    except av.error.FFmpegError as error:
        raise ProcessError(f"{config.data}: not a readable video ({brief(error)})") from None
    if not names:
        raise ProcessError(f"{config.data}: no frames could be decoded")
    return names


# ------------------------------------------------------------------------------------------------
# COLMAP (pycolmap)
# ------------------------------------------------------------------------------------------------


def import_pycolmap():
    try:
        import pycolmap
    except ImportError as error:
        raise ProcessError(
            f"pycolmap (COLMAP's Python bindings) cannot be imported ({brief(error)}): run `make setup`, or "
            f"`pip install pycolmap` in this environment"
        ) from None
    return pycolmap


@contextlib.contextmanager
def logged_to(log: Path, verbose: bool) -> Iterator[None]:
    """COLMAP's C++ output (its log lines on stderr, a few on stdout) into `log`, unless verbose."""
    if verbose:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log, "ab") as file:
            os.dup2(file.fileno(), 1)
            os.dup2(file.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


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
        connected.update(divmod(pair_id, MAX_IMAGE_ID))
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
    that is converted). Returns how many models there are."""
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


def reconstruct(
    config: ProcessConfig, names: list[str], keys: list[tuple], matching: str, step_seconds: dict[str, float]
) -> tuple[int, str]:
    """SIFT, matching and mapping into OUTPUT_DIR/colmap (database.db, sparse/0 = the largest
    model). Returns the number of models and the mapper used."""
    pycolmap = import_pycolmap()
    colmap_dir = config.output_dir / "colmap"
    images = config.output_dir / "images"
    database = colmap_dir / "database.db"

    def step(name: str, run) -> None:
        log = colmap_dir / f"{name}.log"
        start = time.time()
        try:
            with logged_to(log, config.verbose):
                run()
        except (RuntimeError, ValueError) as error:  # pycolmap's failed checks
            if name.startswith("mapping"):
                raise ProcessError(
                    f"COLMAP's mapper made no model of {config.data} ({brief(error)}): "
                    f"{database_diagnosis(database)}; log: {log}"
                ) from None
            raise ProcessError(f"COLMAP {name} failed on {config.data} ({brief(error)}); log: {log}") from None
        finally:
            step_seconds[name] = time.time() - start

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "OPENCV"  # nerfstudio's default for perspective photos

    def extract() -> None:
        groups: dict[tuple, list[str]] = {}
        for name, key in zip(names, keys):
            groups.setdefault(key, []).append(name)
        for group in groups.values():  # one call per camera: SINGLE gives the group one set of intrinsics
            extraction = pycolmap.FeatureExtractionOptions()
            extraction.num_threads = -1  # every core
            extraction.max_image_size = config.max_image_size
            extraction.sift.max_num_features = config.max_num_features
            pycolmap.extract_features(
                database,
                images,
                image_names=group,
                camera_mode=pycolmap.CameraMode.SINGLE,
                reader_options=reader,
                extraction_options=extraction,
                device=pycolmap.Device.cpu,
            )

    step("extraction", extract)

    matching_options = pycolmap.FeatureMatchingOptions()
    matching_options.num_threads = -1
    if matching == "exhaustive":
        step("matching", lambda: pycolmap.match_exhaustive(database, matching_options, device=pycolmap.Device.cpu))
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = 10  # each image with its 10 successors in file-name order
        # (COLMAP 4 pairs only the 1st, 2nd, 4th, 8th, ... successors when quadratic: too few for
        # photos a larger step apart; measured in docs/own_capture.md)
        pairing.quadratic_overlap = False
        step(
            "matching",
            lambda: pycolmap.match_sequential(database, matching_options, pairing, device=pycolmap.Device.cpu),
        )

    sparse = colmap_dir / "sparse"

    def mapping(mapper: str) -> int:
        """One mapper into colmap/sparse; the number of images in its largest model."""
        shutil.rmtree(sparse, ignore_errors=True)
        sparse.mkdir()
        if mapper == "global":
            options = pycolmap.GlobalPipelineOptions()
            options.num_threads = -1
            run = pycolmap.global_mapping
        else:
            options = pycolmap.IncrementalPipelineOptions()
            options.num_threads = -1
            run = pycolmap.incremental_mapping
        models: dict = {}
        step(f"mapping_{mapper}", lambda: models.update(run(database, images, sparse, options)))
        return max((model.num_reg_images() for model in models.values()), default=0)

    if config.mapper != "auto":
        used = config.mapper
        mapping(used)
    else:
        # Incremental mapping placed the cameras more accurately in every measurement here, global
        # mapping registered more photos where incremental left many out: incremental first, and
        # global too when incremental leaves out more than AUTO_GLOBAL_ABOVE of the images.
        used = "incremental"
        registered = mapping(used)
        if registered < (1 - AUTO_GLOBAL_ABOVE) * len(names):
            sparse.rename(colmap_dir / "sparse_incremental")
            if mapping("global") > registered:
                used = "global"
                shutil.rmtree(colmap_dir / "sparse_incremental")
            else:
                shutil.rmtree(sparse)
                (colmap_dir / "sparse_incremental").rename(sparse)
    models = largest_model_first(sparse)
    if models == 0:
        raise ProcessError(
            f"COLMAP's mapper made no model of {config.data}: {database_diagnosis(database)}; "
            f"log: {colmap_dir / f'mapping_{used}.log'}"
        )
    return models, used


def write_transforms(config: ProcessConfig) -> list[str]:
    """nerfstudio's converter: transforms.json and sparse_pc.ply from colmap/sparse/0. Returns the
    registered image names."""
    from nerfstudio.process_data.colmap_utils import colmap_to_json

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the cameras when there are several
        colmap_to_json(recon_dir=config.output_dir / "colmap" / "sparse" / "0", output_dir=config.output_dir)
    frames = json.loads((config.output_dir / "transforms.json").read_text())["frames"]
    return [Path(frame["file_path"]).name for frame in frames]


# ------------------------------------------------------------------------------------------------
# The whole path
# ------------------------------------------------------------------------------------------------


def process(config: ProcessConfig) -> Result:
    """Run the whole path; raises ProcessError with a one-line reason."""
    start = time.time()
    kind = check_paths(config)
    import_pycolmap()  # before anything is written
    if kind == "images":
        photos = list_photos(config.data)
        if len(photos) < 3:
            raise ProcessError(
                f"{config.data}: {len(photos)} photos ({', '.join(sorted(PHOTO_SUFFIXES))}) found; COLMAP needs at "
                f"least 3, and ilrm-finetune {config.min_frames} or more"
            )
        matching = (
            config.matching
            if config.matching != "auto"
            else ("exhaustive" if len(photos) <= config.exhaustive_up_to else "sequential")
        )
        print(
            f"ilrm-process: {len(photos)} photos in {config.data}, {matching} matching, {config.mapper} mapper, "
            f"CPU SIFT at up to {config.max_image_size} px",
            flush=True,
        )
        clear_output(config)
        names, keys = write_photos(photos, config)
        originals = dict(zip(names, (p.relative_to(config.data).as_posix() for p in photos)))
    else:
        matching = config.matching if config.matching != "auto" else "sequential"
        print(
            f"ilrm-process: video {config.data}, about {config.num_frames_target} frames, {matching} matching, "
            f"{config.mapper} mapper, CPU SIFT at up to {config.max_image_size} px",
            flush=True,
        )
        clear_output(config)
        names = write_video_frames(config)
        keys = [()] * len(names)
        originals = {name: name for name in names}
    step_seconds: dict[str, float] = {}
    models, mapper = reconstruct(config, names, keys, matching, step_seconds)
    got = set(write_transforms(config))
    result = Result(
        output_dir=config.output_dir,
        kind=kind,
        matching=matching,
        mapper=mapper,
        total=len(names),
        registered=[originals[n] for n in names if n in got],
        dropped=[originals[n] for n in names if n not in got],
        models=models,
        cameras=len(set(keys)),
        step_seconds=step_seconds,
        seconds=time.time() - start,
        frame_names=originals,
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
