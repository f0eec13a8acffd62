#!/usr/bin/env bash
# Prepare the device kit: write .whl/ (ignored by git), the cp312 manylinux wheels of everything
# the GPU check imports that the lent GPU machine lacks. That machine (Python 3.12, torch
# 2.11.0+cu130, numpy 2.5.2; package list in scripts/device_image_packages.txt) has no network, so
# these travel with the working tree (64 MiB in all, repository included) and scripts/gpu_check.sh
# installs them there with `pip install --no-index --no-deps --target`.
#
#   bash scripts/device_wheels.sh                   # about 10 s: pure-Python gsplat (kernels JIT-built there, ~3 min)
#   bash scripts/device_wheels.sh --prebuilt-gsplat # also gsplat 1.4.0 with its kernels compiled here for sm_90
#                                                   # (torch 2.11.0+cu130, nvcc 13.x; about an hour on 2 cores,
#                                                   # cached in .device_build/), so the check skips the JIT build
#
# The versions are those the test suite runs with (make setup), pinned so that the device runs
# the code that was tested here.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PYTHON=${PYTHON:-python3}
WHEELS=.whl
BUILD=.device_build
PREBUILT=0
for arg in "$@"; do
    case $arg in
        --prebuilt-gsplat) PREBUILT=1 ;;
        *) echo "device_wheels.sh: unknown option $arg (known: --prebuilt-gsplat)" >&2; exit 2 ;;
    esac
done

# Not on the GPU machine and imported by the check (ilrm_nerfstudio, nerfstudio's trainer, the
# tests): nerfstudio and what its import chain reaches, plus our own dependencies.
PACKAGES=(
    nerfstudio==1.1.5
    gsplat==1.4.0
    tyro==1.0.17 docstring_parser==0.18.0 typeguard==4.6.1
    viser==0.2.7 websockets==17.4 msgspec==0.23.0
    nerfacc==0.5.2 fpsample==0.3.3
    pathos==0.3.5 dill==0.4.1 multiprocess==0.70.19 ppft==1.7.8
    pyquaternion==0.9.9 pytorch-msssim==1.0.0 rawpy==0.28.0 splines==0.3.0 tensorly==0.10.0
    defusedxml==0.7.1 PySocks==1.7.1 appdirs==1.4.4
    plyfile==1.1.3 lpips==0.1.4
)

rm -rf "$WHEELS"
mkdir -p "$WHEELS"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$WHEELS" "${PACKAGES[@]}"

if [ "$PREBUILT" = 1 ]; then
    bash scripts/build_gsplat_wheel.sh "$BUILD"
    rm -f "$WHEELS"/gsplat-*.whl
    cp "$BUILD"/dist/gsplat-1.4.0-cp312-*.whl "$WHEELS"/
fi

count=$(ls "$WHEELS"/*.whl | wc -l)
wheels_mib=$(du -sb "$WHEELS" | awk '{printf "%.1f", $1 / 2^20}')
tree_mib=$(git ls-files -z | du -cb --files0-from=- | tail -1 | awk '{printf "%.1f", $1 / 2^20}')
echo "device_wheels: $count wheels, $wheels_mib MiB in $WHEELS/; tracked files $tree_mib MiB (both travel; limit 64 MiB)"
awk -v a="$wheels_mib" -v b="$tree_mib" 'BEGIN { exit (a + b > 60) }' || {
    echo "device_wheels: over 60 MiB together: the device tool refuses trees over 64 MiB" >&2
    exit 1
}
