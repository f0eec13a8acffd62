"""The package layout: pure parts without nerfstudio, imports in one direction, and runs written by
the earlier (flat) layout refused in one line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LEGACY = Path(__file__).parent / "data" / "legacy_runs"
PURE = [
    "ilrm_nerfstudio.core",
    "ilrm_nerfstudio.core.network",
    "ilrm_nerfstudio.core.baseline_network",
    "ilrm_nerfstudio.core.published",
    "ilrm_nerfstudio.core.frames",
    "ilrm_nerfstudio.core.checkpoints",
    "ilrm_nerfstudio.core.prediction",
    "ilrm_nerfstudio.render",
    "ilrm_nerfstudio.render.rendering",
    "ilrm_nerfstudio.data.scene",
    "ilrm_nerfstudio.data.sources",
    "ilrm_nerfstudio.data.samplers",
    "ilrm_nerfstudio.data.episodes",
    "ilrm_nerfstudio.data.points",
    "ilrm_nerfstudio.data.synthetic",
    "ilrm_nerfstudio.metrics",
]


def test_pure_parts_import_without_nerfstudio():
    code = f"import sys\nimport {', '.join(PURE)}\nprint([m for m in sys.modules if m.split('.')[0] == 'nerfstudio'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"nerfstudio modules imported by the pure parts: {out.stdout}"


UPWARD_IMPORT = re.compile(
    r"^\s*(?:from|import) ((?:nerfstudio|ilrm_nerfstudio\.nerfstudio|ilrm_nerfstudio\.tools)\b[\w.]*)", re.M
)


def test_glue_imports_only_downwards():
    """No module outside nerfstudio/ and tools/ names the glue (one direction of dependence)."""
    package = Path(__file__).parents[1] / "ilrm_nerfstudio"
    for sub in ("core", "render", "data", "metrics"):
        for path in (package / sub).rglob("*.py"):
            found = UPWARD_IMPORT.findall(path.read_text())
            assert not found, f"{path.relative_to(package)} imports {found}"


def test_an_earlier_flat_layout_run_is_refused_in_one_line(tmp_path):
    """Runs of 0.1 name classes by module paths that no longer exist (no import hook maps them):
    the per-scene stage's --pipeline.model.ilrm-run names the file and the missing module."""
    from ilrm_nerfstudio.core.errors import ILRMError
    from ilrm_nerfstudio.nerfstudio.run_network import load_trained_network

    shutil.copytree(LEGACY, tmp_path, dirs_exist_ok=True)
    run = tmp_path / "runs" / "legacy" / "ilrm-small" / "ilrm"
    with pytest.raises(ILRMError) as caught:
        load_trained_network(run)
    message = str(caught.value)
    assert message.startswith(f"{run / 'config.yml'}: not a readable ns-train config.yml")
    assert "cannot find module 'ilrm_nerfstudio.ilrm_" in message and "earlier version (0.1)" in message
    assert "\n" not in message
