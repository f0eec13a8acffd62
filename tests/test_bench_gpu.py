"""The GPU check without a GPU: benchmarks/bench_gpu.py's CPU dry runs (section A against gsplat's
own PyTorch reference, every other section at toy sizes, the deadline inside a section) and
scripts/gpu_check.sh's handling of a step that fails (one line, and the next step still runs)."""

from __future__ import annotations

import os
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


def bench(output: Path, *args: str) -> str:
    """Run bench_gpu.py on the CPU at toy sizes; the table it saved, checked against what it printed."""
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_gpu.py", "--device", "cpu", "--quick", "--output-dir", str(output), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (output / "bench_gpu.md").read_text()
    for block in text.split("#### ")[1:]:
        assert block.split("\n- command")[0] in result.stdout  # what it prints is what it saves
    return text


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> str:
    return bench(tmp_path_factory.mktemp("bench_gpu"))


def test_rasterizer_section_matches_gsplats_reference_on_the_cpu(tmp_path):
    """Without CUDA, section A renders with gsplat 1.4.0's PyTorch reference (projection, SH, tile
    lists) composited by its kernel's rules and with our CPU rasterizer: two implementations agree
    on images, alpha and every gradient to float32 rounding (not exactly: they are not one code)."""
    pytest.importorskip("gsplat")
    rows = section_rows(bench(tmp_path, "--only", "rasterizer"), "A.")
    assert len(rows) == 2
    for row in rows:
        assert row[2].startswith("gsplat's PyTorch reference vs ours")
        rgb_max, rgb_mean, alpha_max = (float(v) for v in row[3:6])
        assert 0 < rgb_max < 1e-4 and rgb_mean < 1e-5 and alpha_max < 1e-4, row
        relative = [float(cell.split("(")[1].rstrip(")")) for cell in row[6:11]]
        assert all(r < 1e-4 for r in relative), row
        assert float(row[11]) > 0 and float(row[12]) > 0


def test_a_section_stops_at_its_deadline_and_keeps_its_table(tmp_path):
    """The deadline is enforced inside the section (an alarm), not only before it starts."""
    (row,) = section_rows(bench(tmp_path, "--only", "latency", "--section-deadline-s", "0.5"), "C.")
    assert row[0] == "stopped: the section's 0.5 s deadline passed (rows above are complete)"


def test_quick_cpu_run_has_every_section_and_no_failure(quick_report):
    assert "command: `python benchmarks/bench_gpu.py --device cpu --quick" in quick_report
    assert "failed" not in quick_report and "stopped" not in quick_report, quick_report
    for heading in ("A.", "B.", "C.", "D.", "E.", "F."):
        assert f"#### {heading}" in quick_report


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


def test_gpu_check_reports_a_failed_step_in_one_line_and_goes_on(tmp_path):
    """scripts/gpu_check.sh with the CPU dry runs: section C gets a 1 s deadline (too short even to
    import), so it is killed and reported in one line; E still runs and writes its table; the kit
    exits 1 because a step failed."""
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_STEPS": "C E",
        "GPU_CHECK_LIMITS": "C=1",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "gpu_check.md").read_text().splitlines()
    assert "- C. forward latency (Table 1): failed: killed at its 1 s deadline" in report
    assert any(line.startswith("- E. 32 views at 544x960: ok (") for line in report), report
    assert report[-1].endswith("some step failed (lines above)")
    assert float(section_rows((tmp_path / "bench_gpu.md").read_text(), "E.")[0][3]) > 0
    assert "#### C." not in (tmp_path / "bench_gpu.md").read_text()


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
