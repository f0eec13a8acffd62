"""Host-device synchronizations in one training step of `ns-train ilrm` and in one render.

A CUDA program runs fast when the host queues kernels ahead of the GPU; every operation that
needs a value back on the host (`bool(t)`, `.item()`, `.tolist()`, `.cpu()`, `torch.nonzero`,
`torch.linalg.inv`'s error check) or copies pageable host memory to the device (`torch.tensor(...,
device=cuda)`, `cpu_tensor.to(cuda)`) stalls that queue. This script counts them where they are
issued, so it also runs on a CPU (where they cost nothing but are the same calls):

* a TorchDispatchMode records every ATen op that synchronizes on CUDA (`_local_scalar_dense`,
  which `bool()`, `int()`, `float()` and `.item()` go through; `nonzero`; `_linalg_check_errors`)
  and every tensor built from Python data (`lift_fresh`: a host-to-device copy on CUDA);
* `Tensor.tolist`, `.numpy`, `.cpu` and `.to(<device>)` of a host tensor that is not a parameter
  or buffer of the model (those move with it) are wrapped for the duration of the count.

Each event is attributed to the innermost frame of this package that issued it. Events inside the
CPU rasterizer (`raster_cpu.py` and the autograd functions of `rendering.py`, which stand in for
gsplat's CUDA kernels on this machine) are listed apart and not counted: on CUDA, gsplat runs
there. So are, on the CPU, the value checks that run for host tensors only (`render`'s
`_check_values`, `ILRM.check_values`). With `--device cuda` the run also sets
`torch.cuda.set_sync_debug_mode("warn")` and reports how many synchronizing calls PyTorch itself flagged.

    python benchmarks/count_syncs.py                 # CPU: one ilrm-small training step, one render
    python benchmarks/count_syncs.py --device cuda
    python benchmarks/count_syncs.py --sites         # also list where every event comes from
    python benchmarks/count_syncs.py --quick         # the same (the run is at test size already)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PACKAGE = os.sep + "ilrm_nerfstudio" + os.sep
# The CPU rasterizer: what gsplat's kernels do on CUDA (not part of the count).
RASTERIZER = ("raster_cpu.py", "rendering.py:_Project.", "rendering.py:_Rasterize.", "rendering.py:wrapper")

# Value checks that run on host tensors only (free there; skipped for CUDA tensors).
HOST_ONLY = ("rendering.py:_check_values:", "network.py:ILRM.check_values:")

SYNC_OPS = {
    "aten._local_scalar_dense": "bool()/int()/float()/.item()",
    "aten.nonzero": "nonzero (output size)",
    "aten._linalg_check_errors": "linalg error check",
    "aten.lift_fresh": "torch.tensor(data): host-to-device copy",
}


def site() -> str:
    """The innermost frame of this package on the stack, 'file.py:Class.function:line', marked
    '[rasterizer]' when the CPU rasterizer is anywhere on the way."""
    frames = []
    for frame, line in traceback.walk_stack(None):
        path = frame.f_code.co_filename
        if PACKAGE in path:
            qualname = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
            frames.append(f"{Path(path).name}:{qualname}:{line}")
    if not frames:
        return "outside the package"
    if any(r in f for f in frames for r in RASTERIZER):
        return frames[0] + " [rasterizer]"
    return frames[0] + (" [host-only check]" if frames[0].startswith(HOST_ONLY) else "")


class SyncCounter(TorchDispatchMode):
    """Counts synchronizing ATen ops and wrapped tensor methods, by (kind, site)."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        super().__init__()
        self.device = device
        # the module's parameters and buffers move with it: not copied per call
        self.resident = {id(t) for t in (*module.parameters(), *module.buffers())}
        self.events: Counter[tuple[str, str]] = Counter()
        self._patches: list[tuple[str, object]] = []

    def record(self, kind: str) -> None:
        self.events[(kind, site())] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in SYNC_OPS:
            self.record(SYNC_OPS[name])
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        counter = self

        def wrap(method_name: str, kind: str, when=lambda t, *a, **k: True):
            original = getattr(torch.Tensor, method_name)

            def wrapped(t, *args, **kwargs):
                if when(t, *args, **kwargs):
                    counter.record(kind)
                return original(t, *args, **kwargs)

            self._patches.append((method_name, original))
            setattr(torch.Tensor, method_name, wrapped)

        def host_to_device(t, *args, **kwargs):
            device = kwargs.get("device", args[0] if args and isinstance(args[0], (str, torch.device)) else None)
            return (
                device is not None
                and t.device.type == "cpu"
                and id(t) not in counter.resident
                and t.is_leaf
                and not t.requires_grad
            )

        wrap("tolist", ".tolist(): device-to-host copy")
        wrap("numpy", ".numpy(): device-to-host copy")
        wrap("cpu", ".cpu(): device-to-host copy")
        wrap("to", "host tensor .to(device): host-to-device copy", host_to_device)
        return super().__enter__()

    def __exit__(self, *exc):
        for method_name, original in self._patches:
            setattr(torch.Tensor, method_name, original)
        self._patches.clear()
        return super().__exit__(*exc)

    def split(self) -> tuple[Counter, Counter, Counter]:
        """(counted events, events of the CPU rasterizer, host-only value checks)."""
        counted, rasterizer, host_only = Counter(), Counter(), Counter()
        for (kind, where), n in self.events.items():
            if where.endswith("[rasterizer]"):
                rasterizer[(kind, where)] += n
            elif where.endswith("[host-only check]") and self.device.type == "cpu":
                host_only[(kind, where)] += n
            else:
                counted[(kind, where)] += n
        return counted, rasterizer, host_only


@contextlib.contextmanager
def cuda_sync_warnings(device: torch.device):
    """PyTorch's own count on CUDA: set_sync_debug_mode('warn') warns at every synchronizing call."""
    if device.type != "cuda":
        yield None
        return
    caught: list = []
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        torch.cuda.set_sync_debug_mode("default")


def tiny_pipeline(data: Path, device: str):
    """An ilrm-small pipeline on a tiny synthetic dataset (the tests' sizes)."""
    from ilrm_nerfstudio.nerfstudio.method_configs import ilrm_small_method

    config = ilrm_small_method.config
    dm, net = config.pipeline.datamanager, config.pipeline.model.network
    config.pipeline.datamanager.data = data
    dm.image_height = dm.image_width = 32
    dm.scenes_per_batch = 2
    dm.num_workers = 0
    net.width, net.num_layers, net.num_heads = 32, 1, 2
    config.pipeline.model.lpips_weight = 0.0  # no VGG weights needed
    config.pipeline.model.viewer_scene = "none"
    pipeline = config.pipeline.setup(device=device, test_mode="val")
    pipeline.datamanager.setup_train()
    return pipeline


def report(title: str, counter: SyncCounter, flagged, sites: bool) -> int:
    counted, rasterizer, host_only = counter.split()
    total = sum(counted.values())
    print(
        f"\n{title}: {total} synchronizing calls"
        + (f" (CUDA sync debug mode flagged {len(flagged)})" if flagged is not None else "")
    )
    by_kind = Counter()
    for (kind, _), n in counted.items():
        by_kind[kind] += n
    for kind, n in by_kind.most_common():
        print(f"  {n:4d}  {kind}")
    if sites:
        for (kind, where), n in sorted(counted.items(), key=lambda item: -item[1]):
            print(f"        {n:4d}  {where}  [{kind}]")
    if rasterizer:
        print(f"  (not counted: {sum(rasterizer.values())} in the CPU rasterizer, which is gsplat on CUDA)")
    if host_only:
        print(f"  (not counted: {sum(host_only.values())} host reads of value checks that skip CUDA tensors)")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sites", action="store_true", help="list every call site")
    # The counts need no size: the run is already at test size (~10 s). Accepted for the suite's
    # uniform `--quick` run of every benchmark.
    parser.add_argument("--quick", action="store_true", help="the same run (already at test size)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    from ilrm_nerfstudio.data.synthetic import generate_dataset

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "synthetic"
        generate_dataset(
            data, num_scenes=4, seed=3, height=32, width=32, frames_per_scene=8, test_fraction=0.25, workers=1
        )
        pipeline = tiny_pipeline(data, args.device)
        model = pipeline.model
        pipeline.train()
        for step in range(2):  # the second step is the one counted (first-call setup excluded)
            batch = pipeline.datamanager.next_train(step)
            counter = SyncCounter(model, device)
            with cuda_sync_warnings(device) as flagged, counter:
                outputs = pipeline._model(batch)
                metrics = model.get_metrics_dict(outputs, batch)
                loss = sum(model.get_loss_dict(outputs, batch, metrics).values())
                loss.backward()
        step_total = report("one training step (forward, loss, backward)", counter, flagged, args.sites)

        gaussians = outputs["gaussians"].map(lambda t: t[0].detach())
        c2w, K = batch["target_c2w"][0], batch["target_K"][0]
        for _ in range(2):
            counter = SyncCounter(model, device)
            with cuda_sync_warnings(device) as flagged, counter:
                model.render_views(gaussians, c2w, K, 32, 32)
        render_total = report("one render of a scene's targets (model.render_views)", counter, flagged, args.sites)
    print(f"\ntotal: {step_total} per training step, {render_total} per render ({device.type})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
