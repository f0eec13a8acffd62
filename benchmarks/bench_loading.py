"""Data loading throughput: training samples per second through the iLRM data manager for
RE10K-style torch chunks (JPEG frames decoded lazily) and for nerfstudio PNG scene folders,
in the training process (0 workers) and in background loader processes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_loading.py [--workers 0 2] [--batches 20]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_loading.py --quick   # ~10 s: checks the script

A sample = 2 context + 4 target frames decoded, resized (LANCZOS) to cover 256 x 256 and center
cropped, cameras normalized; 4 samples per batch; the decoded-frame cache is off so every frame is
decoded. The data are written to a temporary folder first (360 x 640 frames, as RE10K's).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ilrm_nerfstudio.nerfstudio.ilrm_datamanager import ILRMDataManagerConfig  # noqa: E402

_BASE: dict = {}


def frame(rng: np.random.Generator, height: int, width: int, t: int) -> np.ndarray:
    """A photo-like frame (smooth shapes plus sensor noise) so JPEG/PNG sizes are realistic; frames
    of a sequence are shifted copies of one base image (cheap to make)."""
    if (height, width) not in _BASE:
        ys, xs = np.mgrid[0:height, 0 : 2 * width].astype(np.float32)
        base = np.stack(
            [
                128 + 100 * np.sin(xs / 37.0) * np.cos(ys / 23.0),
                128 + 90 * np.sin((xs + ys) / 51.0),
                128 + 80 * np.cos(xs / 17.0 - ys / 29.0),
            ],
            -1,
        )
        _BASE[(height, width)] = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    shift = (5 * t) % width
    return np.ascontiguousarray(_BASE[(height, width)][:, shift : shift + width])


def camera_rows(num_frames: int) -> tuple[torch.Tensor, np.ndarray]:
    """Cameras moving forward along z: chunk rows [N, 18] and OpenCV c2w [N, 4, 4]."""
    c2w = np.tile(np.eye(4), (num_frames, 1, 1))
    c2w[:, 2, 3] = np.linspace(0, 2, num_frames)
    c2w[:, 0, 3] = 0.3 * np.sin(np.linspace(0, 3, num_frames))
    rows = torch.zeros(num_frames, 18)
    rows[:, :4] = torch.tensor([0.86, 1.53, 0.5, 0.5])  # RE10K-like fx/W, fy/H, cx/W, cy/H
    rows[:, 6:] = torch.from_numpy(np.linalg.inv(c2w)[:, :3].reshape(num_frames, 12))
    return rows, c2w


def write_chunks(root: Path, chunks: int, scenes_per_chunk: int, frames: int, size: tuple[int, int]) -> float:
    rng = np.random.default_rng(0)
    stage = root / "train"
    stage.mkdir(parents=True)
    index, total = {}, 0
    for c in range(chunks):
        examples = []
        for s in range(scenes_per_chunk):
            key = f"{c:03d}{s:013x}"
            images = []
            for t in range(frames):
                buffer = io.BytesIO()
                Image.fromarray(frame(rng, *size, t + 7 * s)).save(buffer, format="JPEG", quality=90)
                images.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
                total += len(buffer.getvalue())
            rows, _ = camera_rows(frames)
            examples.append(
                {"key": key, "url": "", "timestamps": torch.arange(frames), "images": images, "cameras": rows}
            )
            index[key] = f"{c:06d}.torch"
        torch.save(examples, stage / f"{c:06d}.torch")
    (stage / "index.json").write_text(json.dumps(index))
    (root / "test").mkdir()  # an eval split is required for training: the first chunk
    (root / "test" / "000000.torch").write_bytes((stage / "000000.torch").read_bytes())
    (root / "test" / "index.json").write_text(json.dumps({k: v for k, v in index.items() if v == "000000.torch"}))
    return total / (chunks * scenes_per_chunk * frames)


def write_png_scenes(root: Path, scenes: int, frames: int, size: tuple[int, int]) -> float:
    rng = np.random.default_rng(1)
    total = 0
    for split, count in (("train", scenes), ("test", 1)):
        for s in range(count):
            folder = root / split / f"scene_{s:03d}"
            (folder / "images").mkdir(parents=True)
            _, c2w = camera_rows(frames)
            records = []
            for t in range(frames):
                path = folder / "images" / f"frame_{t:05d}.png"
                Image.fromarray(frame(rng, *size, t + 7 * s)).save(path)
                total += path.stat().st_size
                records.append(
                    {
                        "file_path": f"images/{path.name}",
                        "transform_matrix": (c2w[t] @ np.diag([1, -1, -1, 1])).tolist(),
                    }
                )
            h, w = size
            meta = {
                "camera_model": "OPENCV",
                "fl_x": 0.86 * w,
                "fl_y": 1.53 * h,
                "cx": w / 2,
                "cy": h / 2,
                "w": w,
                "h": h,
                "frames": records,
            }
            (folder / "transforms.json").write_text(json.dumps(meta))
    return total / (scenes * frames)


def measure(data: Path, workers: int, batches: int, size: int) -> float:
    config = ILRMDataManagerConfig(
        data=data,
        image_height=size,
        image_width=size,
        num_context_views=2,
        num_target_views=4,
        scenes_per_batch=4,
        min_frame_gap=20,
        max_frame_gap=40,
        num_workers=workers,
        cache_frames=0,
        eval_num_workers=0,
    )
    dm = config.setup(device="cpu", test_mode="val")
    warmup = max(2, workers)  # let every worker start and read its first chunk
    for step in range(warmup):
        dm.next_train(step)
    start = time.perf_counter()
    for step in range(warmup, warmup + batches):
        dm.next_train(step)
    rate = batches * config.scenes_per_batch / (time.perf_counter() - start)
    del dm
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--scenes-per-chunk", type=int, default=8)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="one small chunk, 64 px, 3 batches: checks the script")
    args = parser.parse_args()
    if args.quick:  # smaller defaults; options given still win
        parser.set_defaults(workers=[0, 1], batches=3, size=64, chunks=1, scenes_per_chunk=4)
        args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        jpeg = write_chunks(tmp / "chunks", args.chunks, args.scenes_per_chunk, args.frames, (360, 640))
        png = write_png_scenes(tmp / "scenes", args.chunks * args.scenes_per_chunk // 2, args.frames // 2, (360, 640))
        chunk_mb = (tmp / "chunks" / "train" / "000000.torch").stat().st_size / 2**20
        print(
            f"wrote the data in {time.perf_counter() - start:.0f} s: {args.chunks} chunks of {chunk_mb:.1f} "
            f"MB (JPEG {jpeg / 1024:.0f} KB/frame), PNG scenes ({png / 1024:.0f} KB/frame); frames 360x640 "
            f"-> {args.size}x{args.size}"
        )
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(
            f"torch {torch.__version__}, {os.cpu_count()} CPUs (load average {load:.1f}), {torch.get_num_threads()} "
            f"intra-op threads, {args.batches} batches of 4 samples x 6 frames"
        )
        print(f"Command: `{' '.join(['python', 'benchmarks/bench_loading.py', *sys.argv[1:]])}`")
        rows = []
        for name, data in (("torch chunks (JPEG)", tmp / "chunks"), ("nerfstudio scenes (PNG)", tmp / "scenes")):
            for workers in args.workers:
                rate = measure(data, workers, args.batches, args.size)
                print(f"[bench] {name}, {workers} workers: {rate:.1f} samples/s", file=sys.stderr, flush=True)
                rows.append(f"| {name} | {workers} | {rate:.1f} | {6 * rate:.0f} |")
        # the table at the end, in one piece (the data manager prints a line at every setup)
        print("\n| source | workers | samples/s | frames/s |\n|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
