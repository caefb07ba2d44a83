#!/usr/bin/env bash
# Compile check for the CUDA kernels (no GPU needed).
#
#   scripts/ci-kernels.sh            nvcc -cubin for every kernels/*.cu, sm_80 and sm_90, warnings are
#                                    errors, ptxas register/spill report
#   scripts/ci-kernels.sh --nvrtc    additionally compiles every kernel through NVRTC 12.9 via
#                                    `cargo test --release --test cuda nvrtc` (the test also runs as
#                                    part of a plain `cargo test` whenever the toolchain below exists)
#   scripts/ci-kernels.sh --install-only   only install the compilers (used by scripts/gpu-bundle.sh)
#
# The CUDA compilers come from PyPI wheels, installed once into ${LOWBIT_CUDA_DIR:-~/.cache/lowbit-cuda}
# with a single `pip install --no-deps --target`:
#   nvidia-cuda-nvrtc-cu12 + nvidia-cuda-runtime-cu12 (NVRTC 12.9 and its headers), nvidia-cuda-nvcc-cu12
#   (ptxas 12.9), and the full nvcc of CUDA 13 (nvidia-cuda-nvcc, -crt, nvidia-nvvm, nvidia-cuda-cccl,
#   nvidia-cuda-runtime; everything lands under nvidia/cu13/).
# Exit status is non-zero on any compile error or warning.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CUDA_DIR=${LOWBIT_CUDA_DIR:-$HOME/.cache/lowbit-cuda}
PY_DIR=$CUDA_DIR/py
NVCC=$PY_DIR/nvidia/cu13/bin/nvcc
NVRTC_LIB=$PY_DIR/nvidia/cuda_nvrtc/lib/libnvrtc.so.12
ARCHS=${LOWBIT_CUDA_ARCHS:-"80 90"}
RUN_NVRTC=0
INSTALL_ONLY=0
for a in "$@"; do
    case "$a" in
        --nvrtc) RUN_NVRTC=1 ;;
        --install-only) INSTALL_ONLY=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

WHEELS=(
    "nvidia-cuda-nvrtc-cu12==12.9.86"
    "nvidia-cuda-runtime-cu12==12.9.79"
    "nvidia-cuda-nvcc-cu12==12.9.86"
    "nvidia-cuda-nvcc==13.5.37"
    "nvidia-cuda-crt==13.5.37"
    "nvidia-nvvm==13.5.37"
    "nvidia-cuda-cccl==13.3.5.0.6"
    "nvidia-cuda-runtime==13.5.37"
)

if [[ ! -x "$NVCC" || ! -e "$NVRTC_LIB" ]]; then
    echo "== installing CUDA compilers from PyPI into $PY_DIR"
    PY=$(command -v python3 || command -v python)
    mkdir -p "$CUDA_DIR"
    rm -rf "$PY_DIR.tmp"
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$PY_DIR.tmp" "${WHEELS[@]}"
    rm -rf "$PY_DIR"
    mv "$PY_DIR.tmp" "$PY_DIR"
fi
[[ -x "$NVCC" ]] || { echo "nvcc missing at $NVCC" >&2; exit 1; }
echo "== $("$NVCC" --version | tail -n 2 | head -n 1)"
[[ $INSTALL_ONLY == 1 ]] && exit 0

LOG_DIR=$(mktemp -d)
trap 'rm -rf "$LOG_DIR"' EXIT
OUT_DIR=$LOG_DIR/cubin
mkdir -p "$OUT_DIR"

# One job per (file, arch); the two cores of a CI machine run them in parallel.
JOBS=()
for f in "$ROOT"/kernels/*.cu; do
    for a in $ARCHS; do JOBS+=("$f:$a"); done
done
compile_one() {
    local f=${1%%:*} a=${1##*:}
    local name
    name=$(basename "$f" .cu)
    local log=$LOG_DIR/$name.sm_$a.log
    local t0=$SECONDS
    if "$NVCC" -arch="sm_$a" -cubin -I"$ROOT/kernels" -std=c++17 -Werror all-warnings \
        -Xptxas -v -Xptxas --warning-as-error -o "$OUT_DIR/$name.sm_$a.cubin" "$f" >"$log" 2>&1; then
        echo "ok   $name sm_$a ($((SECONDS - t0)) s)"
    else
        echo "FAIL $name sm_$a"
        touch "$log.failed"
    fi
}
export -f compile_one
export NVCC ROOT LOG_DIR OUT_DIR
printf '%s\n' "${JOBS[@]}" | xargs -P "$(nproc)" -I{} bash -c 'compile_one "$@"' _ {}

status=0
for log in "$LOG_DIR"/*.log; do
    if [[ -e "$log.failed" ]] || grep -qiE '(^|[^a-z_])(warning|error)' "$log"; then
        echo "---- $(basename "$log")"
        grep -iE 'warning|error' "$log" | head -n 40
        status=1
    fi
done

# Register / spill report: one line per entry point and arch.
echo
printf '%-34s %-6s %5s %9s %9s %7s\n' kernel arch regs spill_st spill_ld smem
for log in "$LOG_DIR"/*.log; do
    awk '
        /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); fn = substr($0, RSTART + 1, RLENGTH - 2);
                                     match($0, /for '"'"'sm_[0-9a]+'"'"'/); arch = substr($0, RSTART + 5, RLENGTH - 6) }
        /spill stores/ { st = $5; ld = $9 }
        /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) { if ($i == "Used") r = $(i + 1); if ($i ~ /^smem/) s = $(i - 2) }
                                  printf "%-34s %-6s %5s %9s %9s %7s\n", fn, arch, r, st, ld, s }
    ' "$log"
done | sort -k1,1 -k2,2
spills=$(cat "$LOG_DIR"/*.log | grep -c 'bytes spill stores' || true)
nonzero=$(cat "$LOG_DIR"/*.log | grep 'bytes spill stores' | grep -vc '^ *0 bytes stack frame, 0 bytes spill stores' || true)
echo "== $spills entry points compiled, $nonzero with a stack frame or spills"

if [[ $RUN_NVRTC == 1 ]]; then
    echo "== NVRTC: cargo test --release --test cuda nvrtc"
    (cd "$ROOT" && LOWBIT_CUDA_DIR="$CUDA_DIR" LOWBIT_REQUIRE_NVRTC=1 \
        cargo test --release --test cuda nvrtc -- --nocapture) || status=1
fi

if [[ $status != 0 ]]; then
    echo "== kernel compile check FAILED"
else
    echo "== kernel compile check passed (zero warnings)"
fi
exit $status
