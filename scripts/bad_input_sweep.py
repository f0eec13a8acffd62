"""Damaged input, as a careless user makes it, through the real commands: what each kind gets.

    .venv/bin/python scripts/bad_input_sweep.py [--workdir DIR] [--only NAME ...] [--list]

Every case builds a damaged copy of a tiny generated data set, scene or run in a scratch folder,
runs the command a user would run (ns-train ilrm-small / ilrm-finetune, ns-eval, ns-export,
ilrm-eval) on the CPU and sorts the outcome:

- "one-line error": non-zero exit, no traceback, the last line of stderr starts with "ilrm:";
- "warned result": exit 0, and a warning line names the damage (the run skipped or dropped it);
- "result": exit 0 with no warning (right for input that is only unusual, e.g. a 16-bit PNG);
- "nerfstudio's error": a traceback raised in nerfstudio's code with none of ours on the way (right
  where nerfstudio's own loading runs before any of ours: its tools on a damaged checkpoint);
- "TRACEBACK" / "other failure": what must not happen.

It prints a markdown table (kind, command, outcome, the line the user sees). It takes about 10
minutes on 2 cores (one command per case, ~10 s each); the tests (tests/test_bad_input_*.py) check
the same kinds in detail. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
TINY = (  # as tests/test_training.py: a network that trains on a CPU in seconds
    "--pipeline.datamanager.image-height 32 --pipeline.datamanager.image-width 32 "
    "--pipeline.datamanager.scenes-per-batch 2 --pipeline.datamanager.num-workers 0 "
    "--pipeline.model.network.width 32 --pipeline.model.network.num-layers 1 --pipeline.model.network.num-heads 2"
).split()
COMMON = "--machine.device-type cpu --vis tensorboard --viewer.quit-on-train-completion True".split()
FAST_FINETUNE = "--pipeline.model.random-init True --pipeline.model.num-random 200".split()


ERROR, WARNED, RESULT, NERFSTUDIO = "one-line error", "warned result", "result", "nerfstudio's error"
SKIPPED = (WARNED,)  # training across scenes: the bad scene is skipped, the run goes on
FINE = (RESULT, WARNED)  # unusual but valid input: a correct result
# an image is read when a sample draws it: one bad frame is skipped if drawn, unseen otherwise
LAZY = (WARNED, RESULT)


@dataclass
class Case:
    name: str  # the kind of damage
    group: str  # "training", "finetune", "tools"
    build: Callable[[Path, Base], tuple[list, Path]]  # (command, cwd) in a fresh folder
    expect: tuple[str, ...] = (ERROR,)  # the outcomes that are right for this kind


class Base:
    """The undamaged inputs, made once in `root` with paths relative to it (as a user's runs are):
    a multi-scene data set, one of its scenes, an ilrm-small run and a finetune run."""

    def __init__(self, root: Path):
        from ilrm_nerfstudio.data.synthetic import generate_dataset

        self.root = root
        generate_dataset(
            root / "dataset",
            num_scenes=4,
            seed=5,
            height=32,
            width=32,
            frames_per_scene=10,
            test_fraction=0.5,
            workers=1,
        )
        self.scene = sorted((root / "dataset" / "test").iterdir())[0].relative_to(root)
        self._runs: dict[str, Path] = {}

    def run_dir(self, kind: str) -> Path:
        """The run folder (relative to root) of an "ilrm" or a "finetune" run, trained on first use."""
        if kind not in self._runs:
            if kind == "ilrm":  # 3 steps, a checkpoint after each of the last two
                options = "--max-num-iterations 3 --steps-per-save 1 --save-only-latest-checkpoint False"
                command = [BIN / "ns-train", "ilrm-small", "--data", "dataset", *TINY, *options.split()]
            else:
                options = ["--data", self.scene, *FAST_FINETUNE, "--max-num-iterations", "2"]
                command = [BIN / "ns-train", "ilrm-finetune", *options]
            run(
                [*command, *COMMON, "--output-dir", "runs", "--experiment-name", "base", "--timestamp", kind],
                self.root,
                check=True,
            )
            self._runs[kind] = Path("runs") / "base" / ("ilrm-small" if kind == "ilrm" else "ilrm-finetune") / kind
        return self._runs[kind]


def run(command: list, cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise SystemExit(f"base input failed: {' '.join(map(str, command))}\n{result.stderr[-3000:]}")
    return result


# -- damage -------------------------------------------------------------------------------------


def copy_dataset(base: Base, where: Path) -> Path:
    target = where / "dataset"
    shutil.copytree(base.root / "dataset", target)
    return target


def first_train_scene(dataset: Path) -> Path:
    return sorted((dataset / "train").iterdir())[0]


def copy_scene(base: Base, where: Path) -> Path:
    target = where / "scene"
    shutil.copytree(base.root / base.scene, target)
    return target


def edit_transforms(scene: Path, change: Callable[[dict], None]) -> None:
    path = scene / "transforms.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def set_frame(index: int, key: str, value) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        meta["frames"][index][key] = value

    return change


def set_global(key: str, value) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        meta[key] = value
        for frame in meta["frames"]:
            frame.pop(key, None)

    return change


def frame_image(scene: Path, index: int) -> Path:
    meta = json.loads((scene / "transforms.json").read_text())
    return scene / meta["frames"][index]["file_path"]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def rewrite_image(path: Path, convert: Callable[[Image.Image], Image.Image]) -> None:
    with Image.open(path) as image:
        converted = convert(image.convert("RGB"))
    converted.save(path)


def to_gray16(image: Image.Image) -> Image.Image:
    gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return Image.fromarray(gray)


def to_rgba(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[: alpha.shape[0] // 2] = 128
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def scene_damage(change: Callable[[Path], None]) -> Callable[[Path, Base], tuple[list, Path]]:
    """A training data set with one damaged training scene: ns-train ilrm-small on it."""

    def build(where: Path, base: Base) -> tuple[list, Path]:
        dataset = copy_dataset(base, where)
        change(first_train_scene(dataset))
        options = "--max-num-iterations 1 --pipeline.model.viewer-scene none".split()
        command = [
            BIN / "ns-train",
            "ilrm-small",
            "--data",
            dataset,
            *COMMON,
            *TINY,
            "--output-dir",
            where / "runs",
            *options,
        ]
        return command, where

    return build


def capture_damage(change: Callable[[Path], None], extra: tuple = ()) -> Callable[[Path, Base], tuple[list, Path]]:
    """One damaged capture: ns-train ilrm-finetune on it."""

    def build(where: Path, base: Base) -> tuple[list, Path]:
        scene = copy_scene(base, where)
        change(scene)
        command = [
            BIN / "ns-train",
            "ilrm-finetune",
            "--data",
            scene,
            *COMMON,
            *FAST_FINETUNE,
            "--output-dir",
            where / "runs",
        ]
        command += ["--max-num-iterations", "1", *extra]
        return command, where

    return build


def all_frames(change: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(scene: Path) -> None:
        meta = json.loads((scene / "transforms.json").read_text())
        for frame in meta["frames"]:
            change(scene / frame["file_path"])

    return apply


def keep_frames(count: int) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        meta["frames"] = meta["frames"][:count]

    return change


def same_position(meta: dict) -> None:
    for frame in meta["frames"]:
        frame["transform_matrix"][0][3] = frame["transform_matrix"][1][3] = frame["transform_matrix"][2][3] = 0.0


def resize_frame(index: int, size: tuple[int, int]) -> Callable[[Path], None]:
    def change(scene: Path) -> None:
        path = frame_image(scene, index)
        with Image.open(path) as image:
            image.convert("RGB").resize(size).save(path)

    return change


def exif_rotated(path: Path) -> None:
    """Stored sideways with EXIF orientation 6 (as phones do); upright it is the original."""
    with Image.open(path) as image:
        rotated = image.convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(path.with_suffix(".jpg"), exif=exif.tobytes(), quality=95)
    path.unlink()


def jpg_paths(meta: dict) -> None:
    for frame in meta["frames"]:
        frame["file_path"] = str(Path(frame["file_path"]).with_suffix(".jpg"))


def run_damage(damage: Callable[[Path, Path], None], tool: str, kind: str = "finetune", cwd: str = ".") -> Callable:
    """A copy of the base folder (data + runs), a run in it damaged by damage(where, run_dir), then
    a nerfstudio tool or ilrm-eval on that run, from `cwd` (relative to the copy)."""

    def build(where: Path, base: Base) -> tuple[list, Path]:
        run_dir = base.run_dir(kind)
        shutil.copytree(base.root, where, dirs_exist_ok=True)
        damage(where, where / run_dir)
        config = (where / run_dir / "config.yml").resolve()
        if tool.startswith("ns-"):  # nerfstudio's tools read the run config.yml names (output_dir): the damaged copy
            text = config.read_text()
            old, new = (f"output_dir: {yaml_path(root / 'runs')}" for root in (base.root, where))
            assert old in text, f"{config}: no {old!r}"
            config.write_text(text.replace(old, new))
        commands = {
            "ns-eval": [BIN / "ns-eval", "--load-config", config, "--output-path", where / "eval.json"],
            "ns-export": [
                BIN / "ns-export",
                "gaussian-splat",
                "--load-config",
                config,
                "--output-dir",
                where / "export",
            ],
            "ilrm-eval": [BIN / "ilrm-eval", "--load-config", config, "--output", where / "eval.json"],
        }
        (where / cwd).mkdir(exist_ok=True)
        return commands[tool], where / cwd

    return build


def yaml_path(path: Path) -> str:
    """An absolute path as config.yml stores it (PyYAML's dump of a PosixPath)."""
    return "!!python/object/apply:pathlib.PosixPath\n" + "".join(f"- {part}\n" for part in path.resolve().parts)


def newest_checkpoint(run_dir: Path) -> Path:
    return sorted((run_dir / "nerfstudio_models").glob("*.ckpt"))[-1]


def truncate_newest_checkpoint(where: Path, run_dir: Path) -> None:
    truncate(newest_checkpoint(run_dir))


def empty_checkpoints(where: Path, run_dir: Path) -> None:
    for path in (run_dir / "nerfstudio_models").glob("*"):
        path.unlink()


def held_out_frame_torn_after_training(where: Path, base: Base) -> tuple[list, Path]:
    """A per-scene run trained here, then one of its held-out frames truncated, then ns-eval (the
    run's config.yml names its data by absolute path: the damage must be to that data)."""
    scene = copy_scene(base, where)
    options = ["--data", scene, *FAST_FINETUNE, "--max-num-iterations", "1", "--timestamp", "run"]
    run([BIN / "ns-train", "ilrm-finetune", *options, *COMMON, "--output-dir", where / "runs"], where, check=True)
    truncate(frame_image(scene, 8))  # frames 0 and 8 are held out (every 8th)
    config = where / "runs" / "scene" / "ilrm-finetune" / "run" / "config.yml"
    return [BIN / "ns-eval", "--load-config", config, "--output-path", where / "eval.json"], where


def ilrm_eval_args(*args: str) -> Callable:
    def build(where: Path, base: Base) -> tuple[list, Path]:
        command, cwd = run_damage(lambda w, r: None, "ilrm-eval", "ilrm")(where, base)
        return [*command, *args], cwd

    return build


def truncated_ilrm_run(where: Path, base: Base) -> tuple[list, Path]:
    """--pipeline.model.ilrm-run names a run whose checkpoint is torn."""
    shutil.copytree(base.root / base.run_dir("ilrm"), where / "ilrm_run")
    for path in (where / "ilrm_run" / "nerfstudio_models").glob("*.ckpt"):
        truncate(path)
    extra = ("--pipeline.model.ilrm-run", where / "ilrm_run", "--pipeline.model.random-init", "False")
    return capture_damage(lambda s: None, extra)(where, base)


def frame_text(scene: Path, index: int, text: bytes) -> None:
    frame_image(scene, index).write_bytes(text)


def write_text(text: str) -> Callable[[Path], None]:
    return lambda scene: (scene / "transforms.json").write_text(text)


def not_utf8(scene: Path) -> None:
    path = scene / "transforms.json"
    path.write_bytes(path.read_bytes().replace(b'"frames"', b'"fr\xe9mes"'))


def transforms(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda scene: edit_transforms(scene, change)


def image_of(index: int, change: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda scene: change(frame_image(scene, index))


def exif_capture(scene: Path) -> None:
    all_frames(exif_rotated)(scene)
    edit_transforms(scene, jpg_paths)


def data_is_a_file(scene: Path) -> None:
    shutil.rmtree(scene)
    scene.write_text("not a folder")


NAN_POSE = [[float("nan")] * 4] * 3 + [[0, 0, 0, 1]]
INF_POSE = [[float("inf"), 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
SCALED_POSE = [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]
RAGGED = [[1, 0, 0], [0, 1]]

# The same damage to one scene among good ones (training across scenes) and to one capture (the
# per-scene stage): (kind, damage, right outcome in training, right outcome in the per-scene stage).
SCENE_DAMAGE = [
    ('focal length is a string ("fl_x": "fifty")', transforms(set_global("fl_x", "fifty")), SKIPPED, (ERROR,)),
    ("negative focal length", transforms(set_global("fl_x", -40.0)), SKIPPED, (ERROR,)),
    (
        "ragged transform_matrix in frame 1",
        transforms(set_frame(1, "transform_matrix", RAGGED)),
        SKIPPED,
        (ERROR, WARNED),
    ),
    ("NaN in frame 2's pose", transforms(set_frame(2, "transform_matrix", NAN_POSE)), SKIPPED, (ERROR, WARNED)),
    ("Inf in frame 2's pose", transforms(set_frame(2, "transform_matrix", INF_POSE)), SKIPPED, (ERROR, WARNED)),
    (
        "pose with a scale (not rigid)",
        transforms(set_frame(1, "transform_matrix", SCALED_POSE)),
        SKIPPED,
        (ERROR, WARNED),
    ),
    ("transforms.json not UTF-8", not_utf8, SKIPPED, (ERROR,)),
    ("transforms.json invalid JSON", write_text('{"frames": ['), SKIPPED, (ERROR,)),
    ("transforms.json is a list", write_text("[]"), SKIPPED, (ERROR,)),
    ("truncated image", image_of(2, truncate), LAZY, (ERROR, WARNED)),
    ("empty image file", image_of(5, lambda path: path.write_bytes(b"")), LAZY, (ERROR, WARNED)),
    ("text file named .png", image_of(1, lambda path: path.write_bytes(b"not an image")), LAZY, (ERROR, WARNED)),
    ("first frame missing", image_of(0, Path.unlink), LAZY, (ERROR, WARNED)),
    ("another frame missing", image_of(4, Path.unlink), LAZY, (ERROR, WARNED)),
    ("one frame only", transforms(keep_frames(1)), SKIPPED, (ERROR,)),
    ("all cameras at one position", transforms(same_position), SKIPPED, (ERROR,)),
    ("one frame resized to another aspect ratio", resize_frame(3, (40, 24)), LAZY, (ERROR, WARNED)),
    ("16-bit grayscale PNGs", all_frames(lambda path: rewrite_image(path, to_gray16)), FINE, FINE),
    ("RGBA PNGs", all_frames(lambda path: rewrite_image(path, to_rgba)), FINE, FINE),
    ("EXIF-rotated JPEGs (orientation 6)", exif_capture, FINE, FINE),
]

CASES = [Case(kind, "training", scene_damage(damage), expect) for kind, damage, expect, _ in SCENE_DAMAGE]
CASES += [Case(kind, "finetune", capture_damage(damage), expect) for kind, damage, _, expect in SCENE_DAMAGE]
CASES += [
    Case("data folder is a file", "finetune", capture_damage(data_is_a_file)),
    Case("truncated --pipeline.model.ilrm-run checkpoint", "finetune", truncated_ilrm_run),
    Case(
        "--machine.device-type cuda without a GPU",
        "finetune",
        capture_damage(lambda s: None, ("--machine.device-type", "cuda")),
    ),
    Case(
        "--pipeline.model.published-steps -1",
        "finetune",
        capture_damage(lambda s: None, ("--pipeline.model.published-steps", "-1")),
    ),
    Case(
        "held-out frame truncated after training (ns-eval)",
        "tools",
        held_out_frame_torn_after_training,
        (ERROR, WARNED),
    ),
    # nerfstudio's eval_setup loads the checkpoint itself, before any code of ours runs
    Case("empty nerfstudio_models/ (ns-export)", "tools", run_damage(empty_checkpoints, "ns-export"), (NERFSTUDIO,)),
    Case(
        "torn newest checkpoint beside a good one (ns-export)",
        "tools",
        run_damage(truncate_newest_checkpoint, "ns-export", "ilrm"),
        (NERFSTUDIO,),
    ),
    Case(
        "torn newest checkpoint beside a good one (ilrm-eval)",
        "tools",
        run_damage(truncate_newest_checkpoint, "ilrm-eval", "ilrm"),
        (WARNED,),
    ),
    Case(
        "run evaluated from another working directory (ilrm-eval)",
        "tools",
        run_damage(lambda w, r: None, "ilrm-eval", "ilrm", cwd="elsewhere"),
        FINE,
    ),
    Case("ilrm-eval --context-views 0", "tools", ilrm_eval_args("--context-views", "0")),
    Case("ilrm-eval --num-scenes -1", "tools", ilrm_eval_args("--num-scenes", "-1")),
]


PYTHON_WARNING = re.compile(r"\b\w*Warning: ")
WARNING_WORDS = ("warning:", "skipping", "skipped", "dropping", "dropped", "left out", "instead")


def classify(result: subprocess.CompletedProcess) -> tuple[str, str]:
    err = result.stderr.strip().splitlines()
    out = result.stdout.strip().splitlines()
    if "Traceback (most recent call last)" in result.stderr or "Traceback (most recent call last)" in result.stdout:
        last = next((line for line in reversed(err) if line.strip()), "")
        ours = re.search(r'File "[^"]*/ilrm_nerfstudio/', result.stderr + result.stdout)
        return ("TRACEBACK" if ours else NERFSTUDIO), last
    if result.returncode != 0:
        last = next((line for line in reversed(err) if line.strip()), "")
        return ("one-line error" if last.startswith("ilrm") else "other failure"), last
    # not torch's FutureWarnings, nor the note that LPIPS is left out offline
    ours = [line for line in out + err if not PYTHON_WARNING.search(line) and "LPIPS" not in line]
    warnings = [line for line in ours if any(word in line.lower() for word in WARNING_WORDS)]
    return ("warned result", warnings[0]) if warnings else ("result", "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--only", nargs="*", default=None, help="run only cases whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the kinds and exit")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or any(o in c.name for o in args.only)]
    if args.list:
        for case in cases:
            print(f"{case.group}: {case.name}")
        return 0
    root = Path(args.workdir or tempfile.mkdtemp(prefix="ilrm_sweep_"))
    root.mkdir(parents=True, exist_ok=True)
    base = Base(root / "base")
    rows = []
    for i, case in enumerate(cases):
        where = root / f"case_{i:02d}"
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir()
        command, cwd = case.build(where, base)
        outcome, line = classify(run(command, cwd))
        rows.append((case, command, outcome, line))
        print(f"[{i + 1}/{len(cases)}] {case.group}: {case.name}: {outcome}", file=sys.stderr, flush=True)
    print(f"Command: `python scripts/bad_input_sweep.py` ({len(rows)} kinds)\n")
    print("| group | kind of damage | command | outcome | right? | what the user sees |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case, command, outcome, line in rows:
        tool = Path(str(command[0])).name + (
            f" {command[1]}" if Path(str(command[0])).name in ("ns-train", "ns-export") else ""
        )
        shown = line.replace("|", "\\|")[:300]
        right = "yes" if outcome in case.expect else f"NO (expected {' or '.join(case.expect)})"
        print(f"| {case.group} | {case.name} | {tool} | {outcome} | {right} | {shown} |")
    bad = [r for r in rows if r[2] not in r[0].expect]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} kinds get what they should; {len(bad)} do not.")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
