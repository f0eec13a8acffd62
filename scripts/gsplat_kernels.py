"""gsplat's CUDA kernels for the device kit (scripts/gpu_check.sh): each step prints one line.

    python scripts/gsplat_kernels.py prebuilt   # does a carried gsplat build with compiled kernels load? (never builds)
    python scripts/gsplat_kernels.py build      # CUDA only: load them, JIT-building gsplat's sources if needed (timed)
    python scripts/gsplat_kernels.py render     # CUDA only: a one-Gaussian render through them (render()'s own check)

Exit status: 0 works, 1 failed (the line names the cause), 99 does not apply here (no CUDA device,
or no prebuilt kernels carried). `prebuilt` imports `gsplat.csrc` directly, not `gsplat.cuda._backend`:
the latter starts a JIT build whenever nvcc is on the PATH, also on a machine without a GPU.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

NOT_HERE = 99  # exit status: the step does not apply on this machine (scripts/gpu_check.sh: skipped)


def first_line(error: BaseException) -> str:
    """The compiler's first error line when there is one (a failed build's message holds the whole
    ninja log), else the message's first line."""
    text = str(error).strip()
    lines = text.splitlines() or [""]
    errors = [line.strip() for line in lines if " error" in line or line.startswith("error")]
    return f"{type(error).__name__}: {(errors or lines)[0][:200]}"


def prebuilt() -> int:
    try:
        extension = importlib.import_module("gsplat.csrc")
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing == "gsplat.csrc":
            print("prebuilt gsplat kernels: not carried (the gsplat wheel holds CUDA sources only)")
            return NOT_HERE
        print(f"prebuilt gsplat kernels: cannot be imported: {first_line(error)}")
        return 1
    except Exception as error:  # noqa: BLE001  ABI mismatch, missing CUDA library, ...
        print(f"prebuilt gsplat kernels: carried but do not load: {first_line(error)}")
        return 1
    size = Path(extension.__file__).stat().st_size / 2**20
    print(f"prebuilt gsplat kernels: loaded ({Path(extension.__file__).name}, {size:.1f} MiB)")
    return 0


def build() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gsplat JIT build: not attempted (no CUDA device here)")
        return NOT_HERE
    from ilrm_nerfstudio.render.rendering import gsplat_kernels_problem

    jobs, arch = os.environ.get("MAX_JOBS", "(gsplat's 10)"), os.environ.get("TORCH_CUDA_ARCH_LIST", "(all)")
    start = time.perf_counter()
    try:
        problem = gsplat_kernels_problem()
    except Exception as error:  # noqa: BLE001
        problem = first_line(error)
    seconds = time.perf_counter() - start
    if problem is not None:
        print(f"gsplat kernels: failed after {seconds:.0f} s: {problem}")
        return 1
    from gsplat.cuda._backend import _C

    where = Path(_C.__file__)
    print(
        f"gsplat kernels: ready in {seconds:.0f} s (MAX_JOBS={jobs}, TORCH_CUDA_ARCH_LIST={arch}; "
        f"{where.name} {where.stat().st_size / 2**20:.1f} MiB in {where.parent})"
    )
    return 0


def render() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gsplat test render: not attempted (no CUDA device here)")
        return NOT_HERE
    from ilrm_nerfstudio.core.errors import ILRMError
    from ilrm_nerfstudio.render.rendering import check_gsplat

    start = time.perf_counter()
    try:
        check_gsplat()
    except ILRMError as error:
        print(f"gsplat test render: {error}")
        return 1
    print(f"gsplat test render: ok ({time.perf_counter() - start:.1f} s, {torch.cuda.get_device_name()})")
    return 0


STEPS = {"prebuilt": prebuilt, "build": build, "render": render}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in STEPS:
        sys.exit(f"usage: python scripts/gsplat_kernels.py {{{','.join(STEPS)}}}")
    sys.exit(STEPS[sys.argv[1]]())
