"""Data sources: what `--data` points at, turned into a list of scene entries.

1. "chunks": pixelSplat-style torch chunks (RE10K, ACID): `<root>/<split>/*.torch` and
   `<root>/<split>/index.json` (scene key -> chunk file). Entries are built from index.json
   alone; a chunk is read only when one of its scenes is sampled, and each process keeps at most
   `chunk_cache_size` chunks in memory (`ChunkCache`).
2. "nerfstudio-scenes": a folder of nerfstudio scenes (`<scene>/transforms.json`, DL3DV's
   `<scene>/nerfstudio/transforms.json`, one level of grouping folders allowed), optionally split
   into `<root>/train`, `<root>/test`.
3. "opencv-scenes": a folder of Long-LRM / iLRM-wide scenes (`<scene>/opencv_cameras.json`), or a
   .txt file listing such json files / scene folders.
4. "single-scene": one capture (`ns-process-data` output, a COLMAP folder, a single
   transforms.json or opencv_cameras.json scene). Poses are read by nerfstudio's dataparsers with
   auto-orientation, centering and scaling disabled; every `holdout_interval`-th frame is held out
   for evaluation, and contexts/targets for training are sampled among the other frames.

`detect_source` picks one of these from the folder layout ("auto").
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ilrm_nerfstudio.core.errors import ILRMError
from ilrm_nerfstudio.data.scene import (
    Scene,
    chunk_example_to_scene,
    load_nerfstudio_scene,
    load_opencv_scene,
)
from ilrm_nerfstudio.data.validate import read_json

SourceKind = Literal["auto", "chunks", "nerfstudio-scenes", "opencv-scenes", "single-scene"]
SOURCES = ("chunks", "nerfstudio-scenes", "opencv-scenes", "single-scene")
COLMAP_MODEL_DIRS = ("colmap/sparse/0", "sparse/0", "sparse", "colmap/sparse")


@dataclass
class LoadOptions:
    """How scene folders are read (see `load_nerfstudio_scene`)."""

    image_folder: str | None = "auto"
    target_hw: tuple[int, int] | None = None
    distortion: str = "undistort"
    holdout_interval: int = 8


@dataclass
class SceneEntry:
    """A scene the data manager can sample from: either loaded (`scene`) or a chunk scene read on
    demand (`chunk`). `group` is the unit of sharding and of locality (the chunk file)."""

    name: str
    group: str
    scene: Scene | None = None
    chunk: Path | None = None


# ------------------------------------------------------------------------------------------------
# Detection
# ------------------------------------------------------------------------------------------------


def colmap_model_dir(root: Path) -> Path | None:
    for sub in COLMAP_MODEL_DIRS:
        d = root / sub
        if (d / "cameras.txt").is_file() or (d / "cameras.bin").is_file():
            return d
    return None


def is_single_scene(root: Path) -> bool:
    root = Path(root)
    if root.is_file():
        return root.suffix == ".json"
    return (
        (root / "transforms.json").is_file()
        or (root / "nerfstudio" / "transforms.json").is_file()
        or (root / "opencv_cameras.json").is_file()
        or colmap_model_dir(root) is not None
    )


def _chunk_dir(root: Path, split: str) -> Path | None:
    for d in (root / split, root):
        if d.is_dir() and ((d / "index.json").is_file() or any(d.glob("*.torch"))):
            return d
    return None


def detect_source(root: Path, split: str = "train") -> str:
    """The kind of data at `root` (see the module docstring)."""
    root = Path(root)
    if not root.exists():
        raise ILRMError(f"{root}: data folder not found")
    if root.is_file() and root.suffix == ".txt":
        return "opencv-scenes"
    if is_single_scene(root):
        return "single-scene"
    for d in (root / split, root, *sorted(p for p in root.iterdir() if p.is_dir())[:4]):
        if d.is_dir() and ((d / "index.json").is_file() or any(d.glob("*.torch"))):
            return "chunks"
    base = root / split if (root / split).is_dir() else root
    if any(base.glob("*/opencv_cameras.json")) or any(base.glob("*/*/opencv_cameras.json")):
        return "opencv-scenes"
    if (
        any(base.glob("*/transforms.json"))
        or any(base.glob("*/nerfstudio/transforms.json"))
        or any(base.glob("*/*/transforms.json"))
    ):
        return "nerfstudio-scenes"
    raise ILRMError(
        f"{root}: cannot tell what data this is. Expected one of: torch chunks (<root>/{split}/*.torch + index.json), "
        "scene folders (<scene>/transforms.json, <scene>/nerfstudio/transforms.json or <scene>/opencv_cameras.json), "
        "or a single scene (transforms.json or a COLMAP model in sparse/0 or colmap/sparse/0)"
    )


def has_split(root: Path, source: str, split: str) -> bool:
    """Whether `root` has a separate folder for `split` (else every split uses all scenes)."""
    root = Path(root)
    if source == "single-scene" or root.is_file():
        return False
    return (root / split).is_dir()


# ------------------------------------------------------------------------------------------------
# Chunks
# ------------------------------------------------------------------------------------------------


def read_chunk_index(stage_dir: Path) -> dict[str, Path]:
    """`index.json` of a chunk folder: scene key -> chunk file (checked to exist)."""
    path = Path(stage_dir) / "index.json"
    if not path.is_file():
        raise ILRMError(
            f"{path}: not found. A chunk folder needs the index.json that maps scene keys to chunk files; "
            f"build it with: ilrm-data index {stage_dir}"
        )
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ILRMError(f"{path}: must map scene keys to chunk file names, got a {type(raw).__name__}")
    index, missing = {}, set()
    for key, name in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise ILRMError(
                f"{path}: scene {key!r} must map to a chunk file name, got {name!r}; rebuild it with: "
                f"ilrm-data index {stage_dir}"
            )
        chunk = Path(stage_dir) / Path(name).name
        if not chunk.is_file():
            missing.add(chunk.name)
            continue
        index[str(key)] = chunk
    if missing:
        print(
            f"warning: {path}: {len(missing)} chunk file(s) listed but not found (e.g. "
            f"{sorted(missing)[0]}); their scenes are left out",
            file=sys.stderr,
        )
    return index


def build_chunk_index(stage_dir: Path) -> Path:
    """Write `<stage_dir>/index.json` by reading every chunk once (one at a time)."""
    stage_dir = Path(stage_dir)
    index = {}
    for chunk in sorted(stage_dir.glob("*.torch")):
        for j, example in enumerate(load_chunk(chunk)):
            if not isinstance(example, dict) or "key" not in example:
                raise ILRMError(f"{chunk}: example {j} is not a dict with a 'key' (not a pixelSplat chunk)")
            index[str(example["key"])] = chunk.name
    path = stage_dir / "index.json"
    path.write_text(json.dumps(index, indent=1))
    return path


def load_chunk(chunk: Path) -> list[dict]:
    try:
        examples = torch.load(chunk, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or truncated file: name it
        raise ILRMError(f"{chunk}: cannot read the torch chunk ({type(error).__name__}: {error})") from None
    if not isinstance(examples, list):
        raise ILRMError(f"{chunk}: a chunk must hold a list of examples, found {type(examples).__name__}")
    return examples


class ChunkCache:
    """Per-process LRU of decoded chunk files (key -> example, replaced by its checked scene when
    first used). Never pickled: a loader process starts with an empty cache."""

    def __init__(self, size: int = 2):
        self.size = max(1, size)
        self.chunks: OrderedDict[Path, dict[str, dict | Scene]] = OrderedDict()  # an example, or its scene
        self.loads = 0

    def __getstate__(self):
        return {"size": self.size, "chunks": OrderedDict(), "loads": 0}

    def examples(self, chunk: Path) -> dict[str, dict | Scene]:
        if chunk in self.chunks:
            self.chunks.move_to_end(chunk)
            return self.chunks[chunk]
        while len(self.chunks) >= self.size:
            self.chunks.popitem(last=False)
        examples = {str(e.get("key")): e for e in load_chunk(chunk) if isinstance(e, dict)}
        self.chunks[chunk] = examples
        self.loads += 1
        return examples

    def scene(self, key: str, chunk: Path) -> Scene:
        examples = self.examples(chunk)
        if key not in examples:
            raise ILRMError(f"scene {key}: not in its chunk {chunk} (index.json is out of date)")
        if not isinstance(examples[key], Scene):  # checked once while its chunk stays in memory
            examples[key] = chunk_example_to_scene(examples[key], chunk)
        return examples[key]


def chunk_entries(root: Path, split: str) -> list[SceneEntry]:
    stage = _chunk_dir(Path(root), split)
    if stage is None:
        raise ILRMError(f"{Path(root) / split}: no torch chunks (*.torch with index.json) found")
    index = read_chunk_index(stage)
    if not index:
        raise ILRMError(f"{stage / 'index.json'}: lists no scene whose chunk file exists")
    # Sorted by chunk, then key: sequential passes touch every chunk once.
    return [
        SceneEntry(key, chunk.name, chunk=chunk)
        for key, chunk in sorted(index.items(), key=lambda kv: (kv[1].name, kv[0]))
    ]


# ------------------------------------------------------------------------------------------------
# Folders of scenes
# ------------------------------------------------------------------------------------------------


def find_scenes(root: Path, split: str, kind: str) -> list[tuple[str, Path]]:
    """(name, path) of the scenes of a folder, sorted. nerfstudio scenes: `<s>/transforms.json`,
    `<s>/nerfstudio/transforms.json` (DL3DV benchmark) or `<group>/<s>/transforms.json` (DL3DV
    subsets such as 1K/, 2K/). opencv scenes: `<s>/opencv_cameras.json` (or one level deeper), or
    a .txt list of json files / folders. Names are folder names, or relative paths joined with
    '__' when folder names repeat."""
    root = Path(root)
    if root.is_file() and root.suffix == ".txt":
        found = []
        try:
            text = root.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise ILRMError(
                f"{root}: not UTF-8 text (byte {error.start}); a scene list has one path per line"
            ) from None
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                path = Path(line) if Path(line).is_absolute() else root.parent / line
                found.append(path.parent if path.suffix == ".json" else path)
        base = root.parent
    else:
        base = root / split if (root / split).is_dir() else root
        if kind == "opencv-scenes":
            files = list(base.glob("*/opencv_cameras.json")) + list(base.glob("*/*/opencv_cameras.json"))
            found = [f.parent for f in files]
        else:
            files = [
                f
                for pattern in ("*/transforms.json", "*/*/transforms.json", "*/*/nerfstudio/transforms.json")
                for f in base.glob(pattern)
            ]
            found = [f.parent.parent if f.parent.name == "nerfstudio" else f.parent for f in files]
    found = sorted(set(found))
    if not found:
        what = "opencv_cameras.json" if kind == "opencv-scenes" else "transforms.json"
        raise ILRMError(f"{base}: no scene folders with a {what} found")
    names = [p.name for p in found]
    if len(set(names)) < len(names):
        names = ["__".join(p.relative_to(base).parts) if p.is_relative_to(base) else str(p) for p in found]
    return sorted(zip(names, found))


def load_folder_scene(path: Path, kind: str, options: LoadOptions, name: str | None = None) -> Scene:
    if kind == "opencv-scenes":
        return load_opencv_scene(path, options.image_folder, options.target_hw, name=name)
    return load_nerfstudio_scene(path, options.image_folder, options.target_hw, options.distortion, name=name)


def folder_entries(
    root: Path, split: str, kind: str, options: LoadOptions, strict: bool, log=print
) -> tuple[list[SceneEntry], list[str]]:
    """Load the scenes of a folder. A scene that fails to load is skipped with one logged line
    (strict=False, training) or raises ILRMError naming it (strict=True, evaluation)."""
    entries, problems = [], []
    for name, path in find_scenes(root, split, kind):
        try:
            scene = load_folder_scene(path, kind, options, name=name)
        except ILRMError as error:
            if strict:
                raise ILRMError(f"scene {name}: {error}") from None
            problems.append(f"scene {name}: {error}")
            log(f"skipping scene {name}: {error}")
            continue
        entries.append(SceneEntry(name, name, scene=scene))
    return entries, problems
