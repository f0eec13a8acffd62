"""`ilrm-train`: ns-train's command line, plus several training processes on CPUs.

nerfstudio's launcher asserts CUDA in every process it spawns, so `--machine.num-devices 2` fails
on a machine without GPUs. For `--machine.device-type cpu` (or mps) with more than one process,
`ilrm-train` does what ns-train's `main` does first (timestamp, print, config.yml), then spawns
its own workers: each joins a gloo process group, sets nerfstudio's per-machine group
(`comms.LOCAL_PROCESS_GROUP`) and runs nerfstudio's `train_loop`. Anything else is ns-train's
`main`, unchanged.

    ilrm-train ilrm-small --data data/synthetic --machine.device-type cpu --machine.num-devices 2
    # two machines (run on each, with its rank):
    ilrm-train ilrm-small --data data/synthetic --machine.device-type cpu --machine.num-devices 2 \\
        --machine.num-machines 2 --machine.machine-rank 0 --machine.dist-url tcp://10.0.0.1:29500

CPU threads: each process gets (cores / processes on this machine) torch threads unless
OMP_NUM_THREADS is set.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from nerfstudio.scripts import train as ns_train
from nerfstudio.utils import comms
from nerfstudio.utils.rich_utils import CONSOLE


def _cpu_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_devices_per_machine: int,
    machine_rank: int,
    dist_url: str,
    config: Any,
    timeout: timedelta,
) -> None:
    """One spawned CPU process: gloo, nerfstudio's per-machine group, then `main_func`."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_devices_per_machine))
    global_rank = machine_rank * num_devices_per_machine + local_rank
    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout)
    for i in range(world_size // num_devices_per_machine):  # as nerfstudio: one group per machine
        group = dist.new_group(list(range(i * num_devices_per_machine, (i + 1) * num_devices_per_machine)))
        if i == machine_rank:
            comms.LOCAL_PROCESS_GROUP = group
    try:
        main_func(local_rank, world_size, config, global_rank)
        comms.synchronize()
    finally:
        dist.destroy_process_group()
        comms.LOCAL_PROCESS_GROUP = None


def launch(
    main_func: Callable,
    num_devices_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    config: Any = None,
    timeout: timedelta = ns_train.DEFAULT_TIMEOUT,
    device_type: str = "cuda",
) -> None:
    """nerfstudio's `launch` (same arguments); on CPU / mps with several processes, our workers."""
    world_size = num_machines * num_devices_per_machine
    if device_type == "cuda" or world_size <= 1:
        ns_train.launch(
            main_func, num_devices_per_machine, num_machines, machine_rank, dist_url, config, timeout, device_type
        )
        return
    if dist_url == "auto":
        if num_machines > 1:
            raise ValueError("--machine.dist-url auto is for one machine; give tcp://HOST:PORT of machine 0")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            dist_url = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    args = (main_func, world_size, num_devices_per_machine, machine_rank, dist_url, config, timeout)
    context = mp.spawn(_cpu_worker, nprocs=num_devices_per_machine, join=False, args=args)
    try:
        context.join()
    except KeyboardInterrupt:
        for i, process in enumerate(context.processes):
            if process.is_alive():
                CONSOLE.log(f"Terminating process {i}...")
                process.terminate()
            process.join()


def main(config) -> None:
    """ns-train's `main`; on CPU / mps with several processes, its first steps, then our `launch`."""
    machine = config.machine
    if machine.device_type == "cuda" or machine.num_devices * machine.num_machines <= 1:
        ns_train.main(config)
        return
    if config.data:  # ns-train's aliases and --load-config, as its main
        config.pipeline.datamanager.data = config.data
    if config.prompt:
        config.pipeline.model.prompt = config.prompt
    if config.load_config:
        config = yaml.load(config.load_config.read_text(), Loader=yaml.Loader)
    config.set_timestamp()
    config.print_to_terminal()
    config.save_config()
    machine = config.machine
    launch(
        ns_train.train_loop,
        machine.num_devices,
        machine.num_machines,
        machine.machine_rank,
        machine.dist_url,
        config,
        device_type=machine.device_type,
    )


def entrypoint() -> None:
    """`ilrm-train`: the ns-train command line."""
    import tyro
    from nerfstudio.configs.config_utils import convert_markup_to_ansi
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    tyro.extras.set_accent_color("bright_yellow")
    main(tyro.cli(AnnotatedBaseConfigUnion, description=convert_markup_to_ansi(ns_train.__doc__ or "")))


if __name__ == "__main__":
    entrypoint()
