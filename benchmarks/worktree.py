"""An older git revision checked out in a tree of its own, for the benchmarks that run it beside
the working tree (bench_rasterizer, bench_poses, bench_real_capture).

A revision's files cannot be imported one by one into the current package: they import modules of
their own revision, which later revisions moved. A `git worktree` holds the whole revision; a child
process with that tree first on its path (`python_env`) imports `ilrm_nerfstudio` from there. The
installed package is an editable install whose finder comes after the path entries, so the
worktree's copy wins; but a module the old revision lacks is still found in the working tree by
that finder, so callers check where what they time came from. Needs the revision in the clone's
history (a full `git clone` has it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """A detached worktree of `revision` in a temporary folder, removed on exit (SystemExit with one
    line when git cannot check it out)."""
    folder = Path(tempfile.mkdtemp(prefix="ilrm_bench_worktree_"))
    tree = folder / revision.replace("/", "_")
    added = _git("worktree", "add", "--detach", "--quiet", str(tree), revision)
    if added.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        message = (added.stderr.strip().splitlines() or ["git failed"])[-1]
        raise SystemExit(f"cannot check out revision {revision!r} into a git worktree: {message}")
    try:
        yield tree
    finally:
        _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(folder, ignore_errors=True)
        _git("worktree", "prune")


def python_env(tree: Path, env: dict | None = None) -> dict:
    """Environment for a child process that imports `ilrm_nerfstudio` (and its entry points, e.g.
    `ns-train`) from `tree`."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    return env


def short_revision(revision: str) -> str:
    """`revision` as a short hash (the name itself if git does not know it)."""
    parsed = _git("rev-parse", "--short", f"{revision}^{{commit}}")
    return parsed.stdout.strip() if parsed.returncode == 0 else revision
