"""`ilrm-train`: ns-train, plus multi-process training on CPUs.

Same command line as `ns-train` (the same tyro CLI over every registered method, ours included).
The one difference: nerfstudio's launcher asserts CUDA in every spawned process
(`nerfstudio/scripts/train.py`, `_distributed_worker`), so `--machine.num-devices 2` fails on a
machine without GPUs. Here, for `--machine.device-type cpu` (or mps), each process runs the same
steps without those asserts: a gloo process group, nerfstudio's per-machine group, then
nerfstudio's own `train_loop` (seed + rank, `config.setup(local_rank, world_size)`,
`Trainer.setup`, `Trainer.train`). On CUDA nerfstudio's worker runs unchanged.

    ilrm-train ilrm-small --data data/synthetic --machine.device-type cpu --machine.num-devices 2
    # two machines (run on each, with its rank):
    ilrm-train ilrm-small --data data/synthetic --machine.device-type cpu --machine.num-devices 2 \\
        --machine.num-machines 2 --machine.machine-rank 0 --machine.dist-url tcp://10.0.0.1:29500

CPU threads: each process gets (cores / processes on this machine) torch threads unless
OMP_NUM_THREADS is set.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from nerfstudio.scripts import train as ns_train
from nerfstudio.utils import comms

_NERFSTUDIO_WORKER = ns_train._distributed_worker


def distributed_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_devices_per_machine: int,
    machine_rank: int,
    dist_url: str,
    config: Any,
    timeout: timedelta = ns_train.DEFAULT_TIMEOUT,
    device_type: str = "cuda",
) -> Any:
    """nerfstudio's `_distributed_worker` (same arguments), without its CUDA asserts off CUDA."""
    if device_type == "cuda":
        return _NERFSTUDIO_WORKER(
            local_rank,
            main_func,
            world_size,
            num_devices_per_machine,
            machine_rank,
            dist_url,
            config,
            timeout,
            device_type,
        )
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_devices_per_machine))
    global_rank = machine_rank * num_devices_per_machine + local_rank
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout
    )
    assert comms.LOCAL_PROCESS_GROUP is None
    for i in range(world_size // num_devices_per_machine):  # as nerfstudio: one group per machine
        group = dist.new_group(list(range(i * num_devices_per_machine, (i + 1) * num_devices_per_machine)))
        if i == machine_rank:
            comms.LOCAL_PROCESS_GROUP = group
    try:
        output = main_func(local_rank, world_size, config, global_rank)
        comms.synchronize()
    finally:
        dist.destroy_process_group()
        comms.LOCAL_PROCESS_GROUP = None
    return output


@contextlib.contextmanager
def cpu_capable_launcher() -> Iterator[None]:
    """Within the block, nerfstudio's `launch` spawns `distributed_worker` (picklable by name, so
    the spawned processes run it too)."""
    ns_train._distributed_worker = distributed_worker
    try:
        yield
    finally:
        ns_train._distributed_worker = _NERFSTUDIO_WORKER


def launch(*args, **kwargs) -> None:
    """nerfstudio's `launch` (same arguments), CPU-capable."""
    with cpu_capable_launcher():
        ns_train.launch(*args, **kwargs)


def main(config) -> None:
    """nerfstudio's `main` (set the timestamp, save config.yml, launch), CPU-capable."""
    with cpu_capable_launcher():
        ns_train.main(config)


def entrypoint() -> None:
    """`ilrm-train`: the ns-train command line."""
    import tyro
    from nerfstudio.configs.config_utils import convert_markup_to_ansi
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    tyro.extras.set_accent_color("bright_yellow")
    main(tyro.cli(AnnotatedBaseConfigUnion, description=convert_markup_to_ansi(ns_train.__doc__ or "")))


if __name__ == "__main__":
    entrypoint()
