"""The package layout: pure parts without nerfstudio, and runs written by the earlier (flat) layout
still load."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

LEGACY = Path(__file__).parent / "data" / "legacy_runs"
BIN = Path(sys.executable).parent
PURE = [
    "ilrm_nerfstudio.core",
    "ilrm_nerfstudio.core.network",
    "ilrm_nerfstudio.core.baseline_network",
    "ilrm_nerfstudio.core.published",
    "ilrm_nerfstudio.core.frames",
    "ilrm_nerfstudio.render",
    "ilrm_nerfstudio.render.rendering",
    "ilrm_nerfstudio.data.scene",
    "ilrm_nerfstudio.data.sources",
    "ilrm_nerfstudio.data.samplers",
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


def test_configs_of_earlier_runs_load():
    """config.yml of runs made before the restructure names classes by their old module paths."""
    code = (
        "import yaml, sys\n"
        "config = yaml.load(open(sys.argv[1]).read(), Loader=yaml.Loader)\n"
        "print(type(config.pipeline).__module__, type(config.pipeline.model).__name__, "
        "config.pipeline.model._target.__name__)"
    )
    runs = LEGACY / "runs" / "legacy"
    found = {}
    for run in (runs / "ilrm-small" / "ilrm", runs / "ilrm-finetune" / "finetune"):
        out = subprocess.run(
            [sys.executable, "-c", code, str(run / "config.yml")], capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
        found[run.parent.name] = out.stdout.split()
    assert found["ilrm-small"] == ["ilrm_nerfstudio.nerfstudio.ilrm_pipeline", "ILRMModelConfig", "ILRMModel"]
    assert found["ilrm-finetune"] == [
        "ilrm_nerfstudio.nerfstudio.finetune_pipeline",
        "ILRMFinetuneModelConfig",
        "ILRMFinetuneModel",
    ]


def test_an_earlier_ilrm_run_starts_the_per_scene_stage_and_exports(tmp_path):
    """--pipeline.model.ilrm-run takes an earlier run; ns-export reads an earlier per-scene run."""
    from ilrm_nerfstudio.nerfstudio.run_network import load_trained_network

    shutil.copytree(LEGACY, tmp_path, dirs_exist_ok=True)
    trained = load_trained_network(tmp_path / "runs" / "legacy" / "ilrm-small" / "ilrm")
    assert trained.resolution == (32, 32) and sum(p.numel() for p in trained.network.parameters()) > 0
    config = tmp_path / "runs" / "legacy" / "ilrm-finetune" / "finetune" / "config.yml"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [BIN / "ns-export", "gaussian-splat", "--load-config", config, "--output-dir", tmp_path / "export"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    ply = tmp_path / "export" / "splat.ply"
    state = torch.load(next((config.parent / "nerfstudio_models").glob("*.ckpt")), weights_only=True)
    count = len(state["pipeline"]["_model.gauss_params.means"])
    header = ply.read_bytes()[:400].decode("ascii", "replace")
    assert f"element vertex {count}" in header
