"""`ilrm-generate-data`: write the procedural multi-view data set (`ilrm_nerfstudio.data.synthetic`,
nerfstudio format, exact poses), the plugin's default download-free data.

    ilrm-generate-data --output data/synthetic                   # 300 scenes x 24 frames, 64x64
    ilrm-generate-data --output data/synthetic --num-scenes 50 --seed 1 --height 128 --width 128

Re-running a command whose data set is complete writes nothing; after an interrupted run the same
command finishes it. A non-empty output directory that is not such a data set is refused (nothing
is deleted); one made with other arguments is replaced only with --overwrite. Bad arguments end
with one line on stderr and exit code 2; a failure to write, exit code 1; an interrupt, 130.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from ilrm_nerfstudio.core.errors import exit_on_error
from ilrm_nerfstudio.data.synthetic import generate_dataset

PROG = "ilrm-generate-data"


@dataclass
class GenerateDataConfig:
    """Generate the procedural multi-view data set (nerfstudio format, exact poses). Re-running
    with the same arguments reuses an existing data set."""

    output: Path
    """Directory to write."""
    num_scenes: int = 300
    """Number of scenes."""
    seed: int = 0
    """Same seed -> identical files."""
    height: int = 64
    """Image height in pixels."""
    width: int = 64
    """Image width in pixels."""
    frames_per_scene: int = 24
    """Views per scene."""
    test_fraction: float = 0.1
    """Share of test scenes."""
    workers: int = 2
    """Parallel processes."""
    overwrite: bool = False
    """Replace a data set previously generated here with other arguments."""
    quiet: bool = False
    """No progress lines."""


def run(config: GenerateDataConfig) -> dict:
    """Generate what `config` names and print a one-line summary; bad input raises ILRMError."""
    summary = generate_dataset(
        config.output,
        num_scenes=config.num_scenes,
        seed=config.seed,
        height=config.height,
        width=config.width,
        frames_per_scene=config.frames_per_scene,
        test_fraction=config.test_fraction,
        workers=config.workers,
        overwrite=config.overwrite,
        progress=not config.quiet,
    )
    train, test = len(summary["train"]), len(summary["test"])
    if summary["skipped"]:
        print(f"{config.output} already holds this data set ({train} train, {test} test scenes); nothing to do.")
    else:
        kinds = summary["kinds"]
        print(
            f"Wrote {train + test} scenes ({train} train, {test} test; "
            f"{kinds['room']} rooms, {kinds['objects']} object scenes), "
            f"{summary['num_frames']} frames in {summary['seconds']:.1f} s to {config.output}"
        )
    return summary


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    """`ilrm-generate-data`; returns the exit code (0; 2 for bad input, 1 when the output cannot be
    written, 130 when interrupted). Unparsable arguments exit (code 2) with a usage message."""
    config = tyro.cli(GenerateDataConfig, prog=PROG, args=argv, config=(tyro.conf.FlagCreatePairsOff,))
    try:
        run(config)
    except OSError as error:
        print(f"{PROG}: error: cannot write {config.output}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; re-run the same command to finish", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
