#!/usr/bin/env bash
# The GPU check, one command from the repository root on a bare GPU machine (no network; Python
# 3.12 with torch and numpy, nothing of nerfstudio): `bash scripts/gpu_check.sh`, prepared here by
# `bash scripts/device_wheels.sh` (the wheels in .whl/, carried with the tree).
#
# Installs the carried wheels and this package into a target folder, then in order of value:
# versions; gsplat's kernels (a carried prebuilt build, else one JIT build in the background while
# C and E run); the CUDA tests; bench_gpu.py's sections A, C, E, B, D. Every step has its own
# deadline and the whole kit ends within GPU_CHECK_BUDGET_S (470 s; the device allows 8 minutes).
# A step that fails leaves one line with its cause in the report and the next step runs. Each
# step writes its result to $OUT as soon as it ends: gpu_check.md (the report), bench_gpu.md
# (bench_gpu.py's tables), tests.log and gpu_check.log (everything printed).
#
# Environment: OUT (default ./gpu_check_out), PYTHON (python3), GPU_CHECK_DEVICE (cuda; cpu runs
# the CPU dry runs, as scripts/simulate_device.sh does), GPU_CHECK_SITE (/tmp/gpu_check_site),
# GPU_CHECK_BUDGET_S, GPU_CHECK_STEPS (default "install versions kernels tests A C E B D"),
# GPU_CHECK_LIMITS ("C=90 B=200": per-step deadlines in seconds, overriding the defaults below).
# Exit status 0 when every step worked or was skipped with its reason, 1 when one failed.
set -u
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
KIT_START=$(date +%s)
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}
OUT=${OUT:-$REPO/gpu_check_out}
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
STEPS=" ${GPU_CHECK_STEPS:-install versions kernels tests A C E B D} "
mkdir -p "$OUT"
REPORT=$OUT/gpu_check.md
LOG=$OUT/gpu_check.log
: >"$REPORT"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 PYTHONNOUSERSITE=1
export PYTHONPATH=$REPO:$SITE  # the working tree's code first; the carried packages beside it
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/gpu_check_torch_extensions}  # gsplat's JIT build, shared by every step
export MAX_JOBS=${MAX_JOBS:-$(($(nproc) > 2 ? $(nproc) - 2 : 1))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# torch finds the CUDA headers through CUDA_HOME, else at `which nvcc`/..: where nvcc is a wrapper
# script in /usr/local/bin (as on this workplace's machines) that is /usr/local, without
# cuda_runtime.h, and every gsplat build fails. The first folder that holds the headers wins.
if [ -z "${CUDA_HOME:-}" ]; then
    nvcc_path=$(command -v nvcc || true)
    for home in ${nvcc_path:+"$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")"} /usr/local/cuda; do
        if [ -f "$home/include/cuda_runtime.h" ]; then export CUDA_HOME=$home; break; fi
    done
fi

# Per-step deadlines (seconds) on the GPU; the CPU dry runs (--quick) get the same.
declare -A LIMIT=([install]=90 [versions]=30 [prebuilt]=30 [jit]=330 [render]=60 [tests]=100
    [A]=60 [C]=60 [E]=60 [B]=150 [D]=100)
for pair in ${GPU_CHECK_LIMITS:-}; do LIMIT[${pair%%=*}]=${pair#*=}; done
declare -A TITLE=([A]="A. gsplat vs our CPU rasterizer" [C]="C. forward latency (Table 1)"
    [E]="E. 32 views at 544x960" [B]="B. one ns-train ilrm step" [D]="D. mini-batch cross-attention (Table 8)")
declare -A BENCH_KEY=([A]=rasterizer [B]=step [C]=latency [D]=minibatch [E]=large)
FAILED=0

report() { echo "$*" >>"$REPORT"; echo "[gpu_check] $*"; }
wanted() { [[ $STEPS == *" $1 "* ]]; }
seconds_left() { echo $((KIT_START + BUDGET_S - $(date +%s))); }

# step NAME LIMIT_KEY COMMAND...: runs COMMAND under min(its deadline, what the kit has left),
# streams its output, and reports one line: ok, or the cause of the failure. The exit status of
# COMMAND is kept in STEP_RC (99 = did not apply: reported as skipped, not as a failure). With
# STEP_NOTE set the ok line also quotes the last line printed; with STEP_SAVE=FILE the output is
# also saved there. Shell functions run through `bash -c` (exported with export -f).
step() {
    local name=$1 limit=${LIMIT[$2]} left capture start took
    shift 2
    left=$(($(seconds_left) - 12))
    if ((left < 5)); then
        report "- $name: not run: the kit's ${BUDGET_S} s deadline is reached"
        STEP_RC=124
        FAILED=1
        return
    fi
    ((limit > left)) && limit=$left
    capture=$(mktemp)
    start=$(date +%s)
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$capture"
    STEP_RC=${PIPESTATUS[0]}
    [ -n "${STEP_SAVE:-}" ] && cat "$capture" >"$STEP_SAVE"
    took=$(($(date +%s) - start))
    local last
    last=$(grep -v '^\s*$' "$capture" | tail -1 | cut -c1-240)
    rm -f "$capture"
    STEP_SAVE=
    case $STEP_RC in
        0) report "- $name: ok ($took s)${STEP_NOTE:+: $last}" ;;
        99) report "- $name: skipped: $last" ;;
        124 | 137) report "- $name: failed: killed at its ${limit} s deadline"; FAILED=1 ;;
        *) report "- $name: failed (exit $STEP_RC, $took s): $last"; FAILED=1 ;;
    esac
    STEP_NOTE=
}

report "# GPU check ($(date -u '+%Y-%m-%d %H:%M UTC'), device $DEVICE, deadline ${BUDGET_S} s)"
report ""

# -- install: the carried wheels and this package, into one target folder -------------------------
install() {
    local wheels=(.whl/*.whl)
    if [ ! -e "${wheels[0]}" ]; then
        echo "no .whl/ here (bash scripts/device_wheels.sh prepares it): using the packages already importable"
        return 99
    fi
    rm -rf "$SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}" || return 1
    # This package too (its entry points: nerfstudio's method registry); the code itself runs from
    # the working tree, which comes first on PYTHONPATH.
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
        --target "$SITE/.self" . || return 1
    cp -r "$SITE"/.self/*.dist-info "$SITE"/ && rm -rf "$SITE/.self"
    echo "${#wheels[@]} wheels and ilrm-nerfstudio installed into $SITE"
}
export PY SITE DEVICE
export -f install
if wanted install; then STEP_NOTE=1 step "install" install bash -c install; fi

# -- versions -------------------------------------------------------------------------------------
versions() {
    local smi nvcc_version
    smi=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
    nvcc_version=$(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' | head -1)
    echo "- GPU: ${smi:-none (nvidia-smi not found or no GPU)}; nvcc: ${nvcc_version:-not on the PATH}"
    "$PY" - "$DEVICE" <<'EOF'
import importlib.metadata as metadata
import platform
import sys

import numpy
import torch

def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"

print(f"- Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), numpy {numpy.__version__}, "
      f"gsplat {version('gsplat')}, nerfstudio {version('nerfstudio')}, ilrm-nerfstudio {version('ilrm-nerfstudio')}")
if torch.cuda.is_available():
    major, minor = torch.cuda.get_device_capability()
    print(f"- torch sees {torch.cuda.device_count()} CUDA device(s): {torch.cuda.get_device_name()}, sm_{major}{minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}, flash attention {torch.backends.cuda.is_flash_attention_available()}")
    print(f"ARCH {major}.{minor}")
else:
    print("- torch sees no CUDA device")
    sys.exit(1 if sys.argv[1] == "cuda" else 0)
EOF
}
export -f versions
if wanted versions; then
    versions_out=$(mktemp)
    STEP_SAVE=$versions_out step "versions" versions bash -c versions
    grep '^- ' "$versions_out" >>"$REPORT"
    arch=$(sed -n 's/^ARCH //p' "$versions_out")
    rm -f "$versions_out"
    # Every later process must JIT-build or load gsplat with the same architecture flags, or ninja
    # sees new compile commands and builds again.
    [ -n "$arch" ] && export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
fi
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    report "- no CUDA device: the CUDA steps below fail; GPU_CHECK_DEVICE=cpu runs the CPU dry runs"
    FAILED=1
fi
BENCH_FLAGS=(--device "$DEVICE")
[ "$DEVICE" = cpu ] && BENCH_FLAGS+=(--quick)

# -- bench_gpu.py sections, one process each (a sticky CUDA error ends only its own section) ------
bench() {
    local key=$1
    wanted "$key" || return 0
    local limit=${LIMIT[$key]}
    step "${TITLE[$key]}" "$key" "$PY" benchmarks/bench_gpu.py "${BENCH_FLAGS[@]}" --only "${BENCH_KEY[$key]}" \
        --section-deadline-s "$limit" --output-dir "$OUT"
    BENCH_DONE+=" $key "
}
BENCH_DONE=" "

# -- gsplat's kernels: checked once; a failure is one line and gsplat stays off afterwards --------
JIT_PID=
KERNELS=unknown
if wanted kernels; then
    STEP_NOTE=1 step "gsplat kernels, prebuilt" prebuilt "$PY" scripts/gsplat_kernels.py prebuilt
    if [ "$STEP_RC" = 0 ]; then
        KERNELS=ready
    elif [ "$DEVICE" = cuda ]; then
        # One JIT build in the background while C and E (no gsplat) run.
        report "- gsplat kernels: JIT build started (MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-all})"
        JIT_LOG=$OUT/gsplat_build.log
        left=$(($(seconds_left) - 12))
        jit_limit=${LIMIT[jit]}
        ((jit_limit > left)) && jit_limit=$left
        JIT_RC=$(mktemp)
        (timeout -k 10 "$jit_limit" "$PY" scripts/gsplat_kernels.py build >"$JIT_LOG" 2>&1; echo $? >"$JIT_RC") &
        JIT_PID=$!
        for key in C E; do bench "$key"; done
        wait "$JIT_PID"
        rc=$(cat "$JIT_RC" 2>/dev/null || echo 1)
        line=$(grep -v '^\s*$' "$JIT_LOG" | tail -1 | cut -c1-240)
        case $rc in
            0) report "- $line"; KERNELS=ready ;;
            124 | 137) report "- gsplat kernels: failed: the JIT build was killed at its ${jit_limit} s deadline"; FAILED=1 ;;
            *) report "- ${line:-gsplat kernels: failed (exit $rc)}"; FAILED=1 ;;
        esac
    else
        report "- gsplat kernels: no JIT build (no CUDA device); gsplat's CUDA steps skip"
        KERNELS=none
    fi
    if [ "$KERNELS" = ready ]; then
        STEP_NOTE=1 step "gsplat test render" render "$PY" scripts/gsplat_kernels.py render
        [ "$STEP_RC" = 0 ] || [ "$STEP_RC" = 99 ] || KERNELS=failed
    elif [ "$DEVICE" = cuda ]; then
        KERNELS=failed
    fi
    if [ "$KERNELS" = failed ]; then
        # gsplat 1.4.0 retries a failed build at every call while nvcc is on the PATH; without it,
        # gsplat disables its kernels and render() raises one line instead.
        PATH=$(tr ':' '\n' <<<"$PATH" | while read -r dir; do [ -x "$dir/nvcc" ] || echo "$dir"; done | paste -sd:)
        export PATH
        report "- gsplat is off for the remaining steps (nvcc taken off their PATH): no rebuild per call"
    fi
fi

# -- the CUDA tests (they skip with their reason where there is no CUDA device) --------------------
if wanted tests; then
    # The CUDA tests and gsplat's parity tests; CI runs the rest of the suite.
    tests=(tests/test_cuda.py)
    grep -q '^def test_gsplat_backend_matches_torch_backend' tests/test_rendering.py &&
        tests+=(tests/test_rendering.py::test_gsplat_backend_matches_torch_backend)
    for extra in tests/test_gsplat*.py; do [ -e "$extra" ] && tests+=("$extra"); done
    STEP_SAVE=$OUT/tests.log step "tests (${tests[*]})" tests "$PY" -m pytest -q -rsfE -p no:cacheprovider "${tests[@]}"
    grep -E '^(FAILED|ERROR|SKIPPED)|[0-9]+ (passed|failed|skipped|error)' "$OUT/tests.log" | cut -c1-240 |
        sed 's/^/  - /' >>"$REPORT"
fi

for key in A C E B D; do
    [[ $BENCH_DONE == *" $key "* ]] || bench "$key"
done

report ""
report "kit: $(($(date +%s) - KIT_START)) s in all (deadline ${BUDGET_S} s); $([ $FAILED = 0 ] && echo 'every step worked or was skipped with its reason' || echo 'some step failed (lines above)')"
exit $FAILED
