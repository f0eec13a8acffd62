"""Every benchmark script runs in its quick mode, so that none rots between the runs that fill the docs.

Each script runs as a subprocess, as a user starts it (its own interpreter, its own path setup),
with `--quick` and outputs in a temporary folder; the test checks the exit status and the table the
script prints (its header row and the rows the quick mode must produce). Scripts already run in
quick mode by another test file are listed in COVERED_ELSEWHERE, and a test checks that every
script in benchmarks/ is in one of the two lists.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

# Run by another test file in quick mode (in process there, which saves an interpreter start).
COVERED_ELSEWHERE = {
    # its CPU dry run (`--device cpu --quick`) and the report files it writes are tested there
    "bench_gpu.py": "test_bench_gpu.py",
    "bench_attention_flops.py": "test_scalability.py",
    "bench_scaling.py": "test_scalability.py",
    "bench_minibatch.py": "test_scalability.py",
    "bench_throughput.py": "test_scalability.py",
}


def run_script(name: str, *args: str, cwd: Path, timeout: int = 300) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    command = [sys.executable, str(BENCHMARKS / name), *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{name} exit status {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def table_rows(out: str, header: str) -> list[list[str]]:
    """The cells of the rows of the markdown table whose header row starts with `header`."""
    lines = out.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    assert start is not None, f"no table with header {header!r} in:\n{out}"
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            if rows:
                break
            continue  # a log line between the header and the first row
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def bench_worktrees() -> list[str]:
    listing = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if "ilrm_bench_worktree_" in line]


def test_every_benchmark_script_is_run_in_quick_mode():
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if '__name__ == "__main__"' in p.read_text()}
    tested = set(re.findall(r'run_script\(\s*"(\w+\.py)"', Path(__file__).read_text()))
    assert scripts - tested - set(COVERED_ELSEWHERE) == set(), "benchmark scripts no test runs"
    for script, test_file in COVERED_ELSEWHERE.items():
        assert script in (ROOT / "tests" / test_file).read_text(), f"{test_file} does not run {script}"
    assert "worktree.py" not in scripts  # a helper of the scripts, no benchmark


def test_bench_rasterizer_times_the_baseline_from_its_worktree(tmp_path):
    before = bench_worktrees()
    out = run_script("bench_rasterizer.py", "--quick", "--reps", "2", cwd=tmp_path)
    assert "old = 0ee6342" in out
    (row,) = table_rows(out, "| image | views | Gaussians | SH | old fwd (s) |")
    assert row[:4] == ["128x128", "1", "32k", "0"]
    assert float(row[4]) > 0 and re.fullmatch(r"\*\*[\d.]+x\*\*", row[6])  # the old renderer ran
    assert bench_worktrees() == before  # its worktree is gone


def test_bench_loading(tmp_path):
    out = run_script("bench_loading.py", "--quick", cwd=tmp_path)
    rows = table_rows(out, "| source | workers | samples/s | frames/s |")
    assert [(r[0], r[1]) for r in rows] == [
        ("torch chunks (JPEG)", "0"),
        ("torch chunks (JPEG)", "1"),
        ("nerfstudio scenes (PNG)", "0"),
        ("nerfstudio scenes (PNG)", "1"),
    ]
    assert all(float(r[2]) > 0 for r in rows)


def test_bench_poses(tmp_path):
    out = run_script("bench_poses.py", "--quick", cwd=tmp_path)
    (row,) = table_rows(out, "| photos | path | matching | registered |")
    assert row[0] == "16" and "failed" not in " ".join(row)
    registered = int(row[3].split(" of ")[0])
    assert registered >= 8  # of 16 photos of the shipped subset


def test_bench_published_forward(tmp_path):
    out = run_script("bench_published_forward.py", "--quick", cwd=tmp_path)
    (row,) = table_rows(out, "| layout | (V, viewpoint, image) | input |")
    assert row[:5] == ["re10k", "(2, F, F)", "64x64", "8,192", "171.3M"]  # the published size
    assert float(row[5]) > 0


def test_count_syncs(tmp_path):
    out = run_script("count_syncs.py", "--quick", cwd=tmp_path)
    # the README's claim: no synchronizing call of ours in a training step or a render
    assert re.search(r"^total: 0 per training step, 0 per render \(cpu\)$", out, re.MULTILINE), out[-2000:]


def test_quality_ablation_trains_and_evaluates(tmp_path):
    from ilrm_nerfstudio.data.synthetic import generate_dataset

    data = tmp_path / "synthetic"
    generate_dataset(data, num_scenes=4, seed=3, height=32, width=32, frames_per_scene=8, test_fraction=0.25, workers=1)
    args = ["--quick", "--data", str(data), "--output-dir", str(tmp_path / "out"), "--variants", "full"]
    out = run_script("quality_ablation.py", *args, cwd=tmp_path)
    (row,) = table_rows(out, "| variant | held-out PSNR |")
    assert row[0].startswith("full") and float(row[1]) > 0, row


def test_bench_real_capture_old_and_new_side_by_side(tmp_path):
    """The per-scene stage of fe704c0 (from its worktree) and of this tree, 0.1 min each, 128 px."""
    output = tmp_path / "real_capture.json"
    out = run_script("bench_real_capture.py", "--quick", "--output", str(output), cwd=tmp_path, timeout=600)
    rows = table_rows(out, "| stage | budget (min) | wall (s) | held-out PSNR (dB) |")
    assert [r[0] for r in rows] == ["OLD (fe704c0)", "NEW (this tree)"]
    assert all(r[1] == "0.1" and float(r[3]) > 5 for r in rows), rows
    assert "Command: `python benchmarks/bench_real_capture.py --quick" in out
    saved = json.loads(output.read_text())["rows"]
    assert all(r["gaussians"] > 0 and "--pipeline.datamanager.image-size 128" in r["command"] for r in saved)


def test_bench_training_ssim(tmp_path):
    out = run_script("bench_training_ssim.py", "--quick", cwd=tmp_path)
    (row,) = table_rows(out, "| size (HxW) | banded matrices (s) | numba blur (s) |")
    assert row[0] == "96x128" and float(row[1]) > 0 and float(row[2]) > 0
    value_diff, grad_diff = (float(x) for x in row[4].split(","))
    assert value_diff < 1e-6 and grad_diff < 1e-6  # the two paths compute the same SSIM
