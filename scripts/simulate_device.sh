#!/usr/bin/env bash
# Simulate the bare GPU machine on this CPU and run the device kit there end to end:
#
#   bash scripts/device_wheels.sh && bash scripts/simulate_device.sh
#
# 1. A Python 3.12 virtual environment (.device_sim/venv, ignored by git; made once, reused while
#    its package list below is unchanged) with torch 2.11.0, numpy 2.5.2 and the other packages of
#    the device image that the check needs, and nothing else: every package in it must appear in
#    scripts/device_image_packages.txt (the image's list), or the simulation stops.
# 2. A copy of what travels to the device (tracked and untracked-not-ignored files, plus .whl/)
#    in .device_sim/tree, checked against the 64 MiB limit: the kit sees no file that would not
#    travel, and no package of this checkout's .venv.
# 3. scripts/gpu_check.sh in that copy with the device forced to CPU (GPU_CHECK_DEVICE=cpu): it
#    installs the carried wheels with --no-index --no-deps, CUDA steps skip with their reason,
#    every import must resolve and every CPU dry run must pass.
#
# Exits 0 only when the kit ran end to end with no failed step. Its report: .device_sim/out/.
# Set SIM_PYTHON to another Python 3.12 interpreter, SIM_FRESH=1 to rebuild the environment.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
start=$(date +%s)
SIM=$REPO/.device_sim
VENV=$SIM/venv
TREE=$SIM/tree
OUT_DIR=$SIM/out

if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "simulate_device: no .whl/ here: run bash scripts/device_wheels.sh first" >&2
    exit 1
fi
find_python() {
    local candidate
    for candidate in "${SIM_PYTHON:-}" python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null &&
            { command -v "$candidate"; return; }
    done
    echo "simulate_device: no Python 3.12 found (the device's version); set SIM_PYTHON" >&2
    exit 1
}

# What the device image holds and the check imports (versions recorded for the image where known;
# the others as pip resolves them today). setuptools and wheel: pip builds this package there.
IMAGE_PACKAGES=(
    torch==2.11.0 numpy==2.5.2 torchvision==0.26.0 torchmetrics==1.9.0 jaxtyping==0.3.11 triton==3.6.0
    "setuptools<82" wheel matplotlib opencv-python-headless pillow scipy numba tensorboard rich requests
    pytest pyyaml imageio tqdm simplejson protobuf packaging typing-extensions
    python-dateutil==2.9.0.post0  # later releases need tzdata, which the image does not list
)
stamp=$(printf '%s\n' "${IMAGE_PACKAGES[@]}" | sha1sum | cut -c1-12)
if [ "${SIM_FRESH:-0}" = 1 ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "simulate_device: making $VENV (torch and its CUDA libraries: a few GB, a minute or two)"
    rm -rf "$VENV"
    "$(find_python)" -m venv "$VENV"
    # (this machine's pip.conf names local index folders that may be absent: pip warns per package)
    "$VENV/bin/python" -m pip install -q --upgrade pip 2> >(grep -v '^WARNING: Location' >&2)
    "$VENV/bin/python" -m pip install -q "${IMAGE_PACKAGES[@]}" 2> >(grep -v '^WARNING: Location' >&2)
    echo "$stamp" >"$VENV/.stamp"
fi
env_seconds=$(($(date +%s) - start))

# Nothing in the environment that the device image lacks.
image_list=$(grep -v '^#' scripts/device_image_packages.txt | tr 'A-Z_.' 'a-z--')
extra=$("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | cut -d= -f1 | tr 'A-Z_.' 'a-z--' |
    grep -vxF -f <(echo "$image_list") || true)
if [ -n "$extra" ]; then
    echo "simulate_device: $VENV holds packages the device image lacks: $(echo $extra)" >&2
    exit 1
fi

# What travels: the files the device tool sends, and the carried .whl/.
rm -rf "$TREE" "$OUT_DIR" "$SIM/site" "$SIM/torch_extensions"
mkdir -p "$TREE" "$OUT_DIR"
{ git ls-files -co --exclude-standard -z; find .whl -name '*.whl' -print0; } | tar --null -cf - -T - 2>/dev/null |
    tar -xf - -C "$TREE"
travel_mib=$(du -sb "$TREE" | awk '{printf "%.1f", $1 / 2^20}')
if awk -v s="$travel_mib" 'BEGIN { exit !(s > 64) }'; then
    echo "simulate_device: $travel_mib MiB would travel, over the device's 64 MiB" >&2
    exit 1
fi
echo "simulate_device: environment ready in $env_seconds s; $travel_mib MiB travel; running the kit"

kit_start=$(date +%s)
set +e
(
    cd "$TREE"
    env -u PYTHONPATH -u VIRTUAL_ENV PIP_CONFIG_FILE=/dev/null OUT="$OUT_DIR" PYTHON="$VENV/bin/python" \
        GPU_CHECK_DEVICE=cpu GPU_CHECK_SITE="$SIM/site" TORCH_EXTENSIONS_DIR="$SIM/torch_extensions" \
        bash scripts/gpu_check.sh
)
kit_rc=$?
set -e
echo
echo "simulate_device: kit exit $kit_rc after $(($(date +%s) - kit_start)) s; $(($(date +%s) - start)) s in all; report in $OUT_DIR/gpu_check.md"
exit $kit_rc
