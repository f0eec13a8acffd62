"""The per-scene stage on a real capture, old against new: held-out PSNR against wall time.

For each budget of `--minutes`, the stage of an older revision (OLD, `--old-rev`, default fe704c0:
the last one before the per-scene stage became a splatfacto subclass) and the stage of this tree
(NEW) each train once, one after the other, with the command a user types:

    ns-train ilrm-finetune --data D --output-dir O --timestamp T \\
        --pipeline.model.refine-minutes M --vis tensorboard [--pipeline.datamanager.image-size S]

then `ns-eval --load-config O/.../T/config.yml` scores the held-out photos (every 8th photo; the
same protocol for both, each side's own ns-eval). OLD runs from a git worktree of its revision
(`worktree.py`; PYTHONPATH points at it, so the same entry points import its `ilrm_nerfstudio`),
NEW from the working tree. Wall time is the whole `ns-train` process (start, data loading,
training, saving), measured after a warm-up that compiles each tree's CPU rasterizer kernels once
(numba caches them per source tree; a fresh worktree would otherwise pay the compilation inside
the timed run).

    python benchmarks/bench_real_capture.py                     # 4 min; the full capture if present
    python benchmarks/bench_real_capture.py --minutes 4 8 --data path/to/capture
    python benchmarks/bench_real_capture.py --quick             # shipped subset, 0.1 min, 128 px

The default capture is `../shared/captures/snowmiku` beside the clone when it exists (the 97 phone
photos of noname0310/snowmiku2023plush-splat, MIT, at 1008 x 756), else the 33-photo subset shipped
in the package (`ilrm_nerfstudio/captures/snowmiku`). Prints a markdown table (stage, budget, wall
seconds, held-out PSNR / SSIM / LPIPS when its weights are present, Gaussians in the last
checkpoint) and the command that made it; writes the rows as JSON (`--output`). Exit status 1 when
a run failed (its row says where; the log is kept with `--keep`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import worktree

ROOT = Path(__file__).resolve().parents[1]
SHARED_CAPTURE = ROOT.parent / "shared" / "captures" / "snowmiku"
SHIPPED_CAPTURE = ROOT / "ilrm_nerfstudio" / "captures" / "snowmiku"
OLD_REVISION = "fe704c0"  # the last revision before the per-scene stage was restructured

# Compiles the tree's rasterizer kernels (numba's cache lives beside the source) with a small
# forward and backward; argv[1] is the tree, put first on the path as PYTHONPATH does for ns-train.
WARM_UP = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
try:
    from ilrm_nerfstudio.core.gaussians import Gaussians
    from ilrm_nerfstudio.render.rendering import render
except ModuleNotFoundError:
    from ilrm_nerfstudio.gaussians import Gaussians
    from ilrm_nerfstudio.rendering import render
n = 256
g = Gaussians(means=torch.randn(n, 3) * 0.3 + torch.tensor([0.0, 0.0, 3.0]), scales=torch.full((n, 3), 0.05),
              quats=torch.randn(n, 4), opacities=torch.full((n,), 0.5), sh=torch.rand(n, 16, 3))
g = g.map(lambda t: t.requires_grad_(True))
K = torch.tensor([[[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]]])
render(g, torch.eye(4)[None], K, 32, 32, backend="torch").rgb.sum().backward()
"""


def tool(name: str) -> str:
    """A nerfstudio command of this interpreter's environment (the venv), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        sys.exit(f"{name} not found beside {sys.executable} or on PATH: install the package (make setup)")
    return found


def gaussian_count(run: Path) -> int | None:
    """Gaussians in the run's last checkpoint (the `*.means` tensor of the pipeline's state)."""
    import torch

    checkpoints = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))
    if not checkpoints:
        return None
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False).get("pipeline", {})
    sizes = [v.shape[0] for k, v in state.items() if k.endswith(".means") and v.ndim == 2 and v.shape[-1] == 3]
    return sizes[0] if sizes else None


def run_side(side: dict, data: Path, minutes: float, workdir: Path, extra: list[str]) -> dict:
    """One `ns-train` of `side` (its env and options) and its `ns-eval`; returns the row."""
    name = f"{side['name']}_{minutes:g}min"
    output = workdir / name
    train = [tool("ns-train"), "ilrm-finetune", "--data", str(data), "--output-dir", str(output)]
    train += ["--timestamp", name, "--pipeline.model.refine-minutes", f"{minutes:g}", "--vis", "tensorboard"]
    train += extra + side["args"]
    row = {
        "stage": side["label"],
        "minutes": minutes,
        "command": shlex.join(["ns-train", *train[1:]]).replace(str(workdir), "<workdir>"),
    }
    log = workdir / f"{name}.log"
    print(f"[bench] {side['label']}, {minutes:g} min: ns-train ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        trained = subprocess.run(train, cwd=workdir, env=side["env"], stdout=out, stderr=subprocess.STDOUT)
    row["wall_s"] = time.perf_counter() - start
    configs = sorted(output.glob(f"**/{name}/config.yml"))
    if trained.returncode != 0 or not configs:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        row["failed"] = f"ns-train exit status {trained.returncode}: {tail[0][:160] if tail else 'no output'}"
        return row
    metrics = workdir / f"{name}.json"
    evaluate = [tool("ns-eval"), "--load-config", str(configs[0]), "--output-path", str(metrics)]
    with log.open("a") as out:
        evaluated = subprocess.run(evaluate, cwd=workdir, env=side["env"], stdout=out, stderr=subprocess.STDOUT)
    if evaluated.returncode != 0 or not metrics.is_file():
        row["failed"] = f"ns-eval exit status {evaluated.returncode} (log: {log})"
        return row
    results = json.loads(metrics.read_text())["results"]
    row.update({k: results[k] for k in ("psnr", "ssim", "lpips") if k in results})
    row["gaussians"] = gaussian_count(configs[0].parent)
    print(
        f"[bench] {side['label']}, {minutes:g} min: {row['wall_s']:.0f} s, held-out PSNR {row['psnr']:.2f} dB",
        file=sys.stderr,
        flush=True,
    )
    return row


def warm_up(tree: Path, env: dict) -> None:
    done = subprocess.run([sys.executable, "-c", WARM_UP, str(tree)], env=env, capture_output=True, text=True)
    if done.returncode != 0:  # not fatal: the timed run then includes the compilation
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        print(f"note: warm-up in {tree} failed ({last}); its time includes compiling kernels", file=sys.stderr)


def markdown(rows: list[dict]) -> str:
    lpips = any("lpips" in r for r in rows)
    lines = [
        "| stage | budget (min) | wall (s) | held-out PSNR (dB) | SSIM |"
        + (" LPIPS |" if lpips else "")
        + " Gaussians |",
        "| --- | ---: | ---: | ---: | ---: |" + (" ---: |" if lpips else "") + " ---: |",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['stage']} | {r['minutes']:g} | {r['wall_s']:.0f} | failed: {r['failed']} | |")
            continue
        cells = [r["stage"], f"{r['minutes']:g}", f"{r['wall_s']:.0f}", f"{r['psnr']:.2f}", f"{r['ssim']:.3f}"]
        cells += [f"{r['lpips']:.3f}" if "lpips" in r else "-"] if lpips else []
        cells += [f"{r['gaussians']:,}" if r.get("gaussians") is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = SHARED_CAPTURE if SHARED_CAPTURE.is_dir() else SHIPPED_CAPTURE
    parser.add_argument("--data", type=Path, default=None, help=f"the capture (default: {default_data})")
    parser.add_argument("--minutes", type=float, nargs="+", default=None, help="refinement budgets (default: 4)")
    parser.add_argument("--old-rev", default=OLD_REVISION, help="git revision of the OLD stage ('' = NEW only)")
    parser.add_argument("--old-args", default="", help="extra ns-train options for OLD (one string)")
    parser.add_argument("--new-args", default="", help="extra ns-train options for NEW (one string)")
    parser.add_argument("--image-size", type=int, default=None, help="--pipeline.datamanager.image-size for both")
    parser.add_argument("--quick", action="store_true", help="shipped subset, 0.1 min, 128 px: checks the script")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "real_capture.json")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs and logs in this folder")
    args = parser.parse_args()
    data = args.data or (SHIPPED_CAPTURE if args.quick else default_data)
    budgets = args.minutes or ([0.1] if args.quick else [4.0])
    image_size = args.image_size or (128 if args.quick else None)
    extra = ["--pipeline.datamanager.image-size", str(image_size)] if image_size else []
    if not (data / "transforms.json").is_file():
        sys.exit(f"{data}: no transforms.json (--data takes a capture in nerfstudio's layout)")
    data = data.resolve()

    load_start = os.getloadavg()[0]
    rows = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            workdir = args.keep.resolve()
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_real_capture_")))
        sides = []
        if args.old_rev:
            tree = stack.enter_context(worktree.checkout(args.old_rev))
            old_label = f"OLD ({worktree.short_revision(args.old_rev)})"
            sides.append({"name": "old", "label": old_label, "tree": tree, "args": shlex.split(args.old_args)})
        sides.append({"name": "new", "label": "NEW (this tree)", "tree": ROOT, "args": shlex.split(args.new_args)})
        for side in sides:
            side["env"] = worktree.python_env(side["tree"])
            warm_up(side["tree"], side["env"])
        for minutes in budgets:
            for side in sides:  # one at a time: they would share the cores
                rows.append(run_side(side, data, minutes, workdir, extra))

    command = shlex.join(["python", "benchmarks/bench_real_capture.py", *sys.argv[1:]])
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(
        f"\nCommand: `{command}`\n\nCapture {data.name} ({data}), every 8th photo held out; "
        f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={threads}, "
        f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.\n"
    )
    print(markdown(rows))
    print("\nEach run:\n")
    for r in rows:
        print(f"- {r['stage']}: `{r['command']}`")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"command": command, "data": str(data), "rows": rows}, indent=2))
    if any("failed" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
