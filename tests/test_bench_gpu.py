"""benchmarks/bench_gpu.py (the GPU check) runs end to end at toy sizes on the CPU, every section
succeeds there, and its 2-process command is one that ns-train's CLI accepts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def section_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the markdown table under the #### heading starting with `heading`."""
    block = text.split(f"#### {heading}", 1)[1].split("####", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    assert lines[1].startswith("|---"), block
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> str:
    output = tmp_path_factory.mktemp("bench_gpu")
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_gpu.py", "--device", "cpu", "--quick", "--output-dir", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (output / "bench_gpu.md").read_text()
    assert text in result.stdout  # what it prints is what it saves
    return text


def test_quick_cpu_run_has_every_section_and_no_failure(quick_report):
    assert "command: `python benchmarks/bench_gpu.py --device cpu --quick" in quick_report
    assert "failed" not in quick_report, quick_report
    for heading in ("A.", "B.", "C.", "D.", "E.", "F."):
        assert f"#### {heading}" in quick_report


def test_rasterizer_self_comparison_is_exact_on_the_cpu(quick_report):
    """Without CUDA section A compares our rasterizer with itself: images and every gradient agree
    exactly, so the comparison code is exercised and cannot report a spurious difference."""
    rows = section_rows(quick_report, "A.")
    assert len(rows) == 2
    for row in rows:
        assert "torch (CPU) vs torch (CPU)" in row[2]
        assert [float(v) for v in row[3:6]] == [0.0, 0.0, 0.0]
        assert all(re.fullmatch(r"0\.00e\+00 \(0\.0e\+00\)", v) for v in row[6:11]), row
        assert float(row[11]) > 0 and float(row[12]) > 0


def test_trainer_latency_minibatch_and_large_sections_measure(quick_report):
    steps = section_rows(quick_report, "B.")
    assert len(steps) == 4 and all(float(row[2]) > 0 and float(row[3]) > 0 for row in steps)
    latency = section_rows(quick_report, "C.")
    assert [row[0] for row in latency] == ["(2,F,F)", "(4,H,F)", "(8,H,F)"]
    assert [float(row[4]) for row in latency] == [0.025, 0.027, 0.028]  # the paper's figures
    for row in latency:
        assert float(row[5]) == pytest.approx(float(row[3]) / float(row[4]), rel=0.02)
    groups = section_rows(quick_report, "D.")
    assert [row[0] for row in groups] == ["full (G=1)", "half (G=2)", "quarter (G=4)"]
    assert [float(row[4]) for row in groups] == [1.0, 0.75, 0.62] and float(groups[0][3]) == 1.0
    (large,) = section_rows(quick_report, "E.")
    assert float(large[3]) > 0 and float(large[5]) > 0
    (ddp,) = section_rows(quick_report, "F.")
    assert ddp[1].startswith("skipped in --quick")  # tests/test_ddp.py runs 2 processes


@pytest.mark.parametrize("device, method", [("cpu", "ilrm-small"), ("cuda", "ilrm")])
def test_ddp_section_command_is_accepted_by_the_ns_train_cli(device, method, tmp_path, monkeypatch):
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_gpu

    ctx = SimpleNamespace(
        quick=device == "cpu",
        cuda=device == "cuda",
        device=torch.device(device),
        resolution=32 if device == "cpu" else 256,
        net=dict(width=32, num_heads=2, num_layers=1) if device == "cpu" else {},
        dataset=lambda: tmp_path / "data",
    )
    command = bench_gpu.ddp_command(ctx, tmp_path / "out", steps=2)
    assert command[:4] == [sys.executable, "-m", "ilrm_nerfstudio.tools.train", method]
    config = tyro.cli(AnnotatedBaseConfigUnion, args=command[3:])
    assert config.method_name == method and config.machine.num_devices == 2 and config.machine.device_type == device
    assert config.max_num_iterations == 2 and config.pipeline.model.lpips_weight == 0
