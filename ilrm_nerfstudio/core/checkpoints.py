"""nerfstudio's checkpoint files (`step-N.ckpt`, a dict with "step" and "pipeline") written so that
an interruption cannot tear one, and the newest one that reads back. nerfstudio writes in place
and loads the newest whatever its state; the trainer (nerfstudio/trainer.py) and our tools that
load a run use these instead."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ilrm_nerfstudio.core.errors import ILRMError, brief

CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.ckpt$")
PARTIAL_SUFFIX = ".partial"  # a checkpoint being written; never matches step-*.ckpt


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}.ckpt"


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be loaded as a nerfstudio checkpoint, or None when it reads back (read
    memory-mapped: the zip directory and the pickled structure, not the tensors)."""
    path = Path(path)
    if not path.exists():
        return "not found"
    if not path.is_file():
        return "is not a file"
    try:
        if path.stat().st_size == 0:
            return "is empty (0 bytes: an interrupted write?)"
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to read it is the answer
        return f"cannot be read, truncated or damaged ({brief(error)})"
    if not isinstance(state, dict) or not {"step", "pipeline"} <= set(state):
        return "is not a nerfstudio checkpoint (no 'step' and 'pipeline' entries)"
    return None


def newest_good_checkpoint(folder: Path, what: str = "", log=print) -> Path:
    """The newest step-N.ckpt of `folder` that reads back; a damaged newer one is skipped with a
    warning (to `log`) naming both. No folder, no checkpoint or none readable: ILRMError (prefixed
    by `what`)."""
    folder = Path(folder)
    prefix = f"{what} {folder}" if what else str(folder)
    if not folder.is_dir():
        problem = "is a file, not a checkpoint folder" if folder.exists() else "checkpoint folder not found"
        raise ILRMError(
            f"{prefix}: {problem} (a run keeps its checkpoints in <run>/nerfstudio_models/; give the run that "
            "wrote it, or train until it saves one: --steps-per-save)"
        )
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name)))
    if not found and (folder / "nerfstudio_models").is_dir():  # the run folder instead of its checkpoints'
        raise ILRMError(f"{prefix}: no checkpoint (step-*.ckpt) here; give {folder / 'nerfstudio_models'}")
    if not found:
        raise ILRMError(
            f"{prefix}: no checkpoint (step-*.ckpt) in this folder; the run saved none yet (train it longer or with "
            "a smaller --steps-per-save), or give the folder that holds them"
        )
    damaged: list[tuple[Path, str]] = []
    for _, path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            if damaged:
                log(
                    f"ilrm: warning: {damaged[0][0]} {damaged[0][1]}; loading the newest good checkpoint, {path}, "
                    "instead"
                )
            return path
        damaged.append((path, problem))
    more = f" (and the {len(damaged) - 1} older ones)" if len(damaged) > 1 else ""
    raise ILRMError(
        f"{prefix}: no readable checkpoint: {damaged[0][0].name} {damaged[0][1]}{more}; restore it from a copy or "
        "train the run again"
    )


def write_checkpoint(state: dict, path: Path) -> None:
    """torch.save to `path` atomically (to `<path>.partial`, fsync, rename). On failure the partial
    file is removed and every checkpoint is as it was."""
    path = Path(path)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        torch.save(state, partial)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, path)
    except BaseException as error:  # KeyboardInterrupt too: never leave a partial file behind
        partial.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise ILRMError(
                f"{path}: cannot write this checkpoint ({brief(error)}); the previous checkpoints are "
                "intact: free disk space or choose another --output-dir, then resume with --load-dir"
            ) from None
        raise
