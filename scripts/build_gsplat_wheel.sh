#!/usr/bin/env bash
# gsplat 1.4.0 with its CUDA kernels compiled for sm_90 (H100 / H200), as a cp312 wheel, built
# on this machine against the GPU machine's torch (2.11.0+cu130) with the local nvcc (13.x, the
# CUDA major version torch was built with). Called by `bash scripts/device_wheels.sh
# --prebuilt-gsplat`; the result is cached: BUILD_DIR/dist/gsplat-1.4.0-cp312-*.whl.
#
# Slow on a small machine: about 25 nvcc/c++ jobs of 1-5 minutes each (run niced, MAX_JOBS=2 by
# default). gsplat's sdist lacks its glm headers (a git submodule); its pure-Python wheel holds
# them, so both are downloaded and the headers copied in.
set -euo pipefail
BUILD=${1:-.device_build}
mkdir -p "$BUILD"
BUILD=$(cd "$BUILD" && pwd)
if ls "$BUILD"/dist/gsplat-1.4.0-cp312-*.whl >/dev/null 2>&1; then
    echo "build_gsplat_wheel: cached $(ls "$BUILD"/dist/gsplat-1.4.0-cp312-*.whl)"
    exit 0
fi
PY312=${SIM_PYTHON:-}
for candidate in $PY312 python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then PY312=$candidate; break; fi
done
[ -n "$PY312" ] || { echo "build_gsplat_wheel: no Python 3.12 found; set SIM_PYTHON" >&2; exit 1; }
command -v nvcc >/dev/null || { echo "build_gsplat_wheel: no nvcc on the PATH" >&2; exit 1; }

# torch finds the CUDA headers through CUDA_HOME (see scripts/gpu_check.sh)
if [ -z "${CUDA_HOME:-}" ]; then
    for home in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" /usr/local/cuda; do
        if [ -f "$home/include/cuda_runtime.h" ]; then export CUDA_HOME=$home; break; fi
    done
fi

if [ ! -x "$BUILD/venv/bin/python" ]; then
    "$PY312" -m venv "$BUILD/venv"
    "$BUILD/venv/bin/python" -m pip install -q torch==2.11.0 numpy==2.5.2 "setuptools<82" wheel ninja
fi
torch_cuda=$("$BUILD/venv/bin/python" -c 'import torch; print(torch.version.cuda)')
nvcc_cuda=$(nvcc --version | grep -o 'release [0-9.]*' | cut -d' ' -f2)
if [ "${torch_cuda%%.*}" != "${nvcc_cuda%%.*}" ]; then
    echo "build_gsplat_wheel: torch is built with CUDA $torch_cuda, nvcc is $nvcc_cuda: the major versions must match" >&2
    exit 1
fi

SRC=$BUILD/src
rm -rf "$SRC"
mkdir -p "$SRC"
"$BUILD/venv/bin/python" -m pip download -q --no-deps --no-binary=:all: gsplat==1.4.0 -d "$SRC"
"$BUILD/venv/bin/python" -m pip download -q --no-deps --only-binary=:all: gsplat==1.4.0 -d "$SRC"
tar -xzf "$SRC"/gsplat-1.4.0.tar.gz -C "$SRC"
(cd "$SRC" && "$BUILD/venv/bin/python" -m zipfile -e gsplat-1.4.0-py3-none-any.whl pure)
cp -r "$SRC"/pure/gsplat/cuda/csrc/third_party "$SRC"/gsplat-1.4.0/gsplat/cuda/csrc/

start=$(date +%s)
(
    cd "$SRC/gsplat-1.4.0"
    MAX_JOBS=${MAX_JOBS:-2} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
        nice -n 19 "$BUILD/venv/bin/python" -m pip wheel -q --no-build-isolation --no-deps -w "$BUILD/dist" .
)
wheel=$(ls "$BUILD"/dist/gsplat-1.4.0-cp312-*.whl)
# It must load against torch 2.11.0 (no GPU needed to load it).
(cd "$BUILD" && rm -rf check && "$BUILD/venv/bin/python" -m pip install -q --no-deps --no-index --target check "$wheel" &&
    PYTHONPATH=$BUILD/check "$BUILD/venv/bin/python" -c 'import gsplat.csrc')
echo "build_gsplat_wheel: $wheel, $(du -h "$wheel" | cut -f1), built in $(($(date +%s) - start)) s, loads against torch 2.11.0"
