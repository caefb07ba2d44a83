#!/usr/bin/env bash
# The one GPU check: build, GPU correctness tests, kernel benchmark. Budget: ~8 minutes on an H100.
#
#   scripts/gpu-check.sh            on a GPU machine: build (cargo build --release + the test/bench
#                                   executables) or use a prebuilt bundle, run tests/cuda.rs with
#                                   LOWBIT_REQUIRE_GPU=1, then the kernel benchmark
#                                   (4096x4096 and 11008x4096, batch 1/8/64, every layout).
#   scripts/gpu-check.sh --bundle   on a dev machine: build the test and bench executables and copy
#                                   them into target/gpu-bundle/ (~3 MB). A GPU machine without a Rust
#                                   toolchain or network runs the bundle (carry target/gpu-bundle).
#   scripts/gpu-check.sh --quick    benchmark 4096x4096 only.
#
# Writes tests.log, bench.log and kernels.json to $OUT (default target/gpu-check). Exit status is
# non-zero when a test fails or a kernel's max relative error vs the CPU reference is >= 5e-3.
#
# Libraries: cudarc (cuda-12090 bindings, dynamic loading) looks for libcuda.so.1, libnvrtc.so(.12),
# libcublas.so(.12), libcublasLt.so(.12). On a CUDA 13 machine only *.so.13 may exist, so this script
# links whatever libnvrtc / libcublas / libcublasLt it finds (toolkit, ldconfig, pip wheels) into a
# shim directory under their unversioned names and puts it first on LD_LIBRARY_PATH (the symbols the
# runner uses exist unchanged in 12.x and 13.x).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE=$ROOT/target/gpu-bundle
MODE=run
QUICK=""
for a in "$@"; do
    case "$a" in
        --bundle) MODE=bundle ;;
        --quick) QUICK=--quick ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

# Build the test + bench executables and print their paths (cargo's JSON messages).
build_executables() {
    (cd "$ROOT" && cargo build --release) >&2 || return 1
    (cd "$ROOT" && cargo test --release --test cuda --no-run --message-format=json 2>/dev/null;
     cd "$ROOT" && cargo bench --bench kernels --no-run --message-format=json 2>/dev/null) |
        grep -o '"executable":"[^"]*"' | sed 's/"executable":"//; s/"$//'
}

if [[ $MODE == bundle ]]; then
    set -e
    mkdir -p "$BUNDLE"
    mapfile -t exes < <(build_executables)
    for e in "${exes[@]}"; do
        case "$(basename "$e")" in
            cuda-*) cp "$e" "$BUNDLE/cuda-tests" ;;
            kernels-*) cp "$e" "$BUNDLE/kernels-bench" ;;
        esac
    done
    [[ -x $BUNDLE/cuda-tests && -x $BUNDLE/kernels-bench ]] || { echo "bundle incomplete" >&2; exit 1; }
    du -sh "$BUNDLE"
    echo "bundle ready: run scripts/gpu-check.sh on the GPU machine with target/gpu-bundle carried"
    exit 0
fi

OUT=${OUT:-$ROOT/target/gpu-check}
mkdir -p "$OUT"
T0=$SECONDS
echo "== gpu-check start $(date -u +%FT%TZ)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv,noheader

# ---- libraries
SHIM=$(mktemp -d)
trap 'rm -rf "$SHIM"' EXIT
LIBDIRS=()
for d in ${LD_LIBRARY_PATH:+${LD_LIBRARY_PATH//:/ }} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         /usr/lib/x86_64-linux-gnu /usr/lib64 "${LOWBIT_CUDA_DIR:-$HOME/.cache/lowbit-cuda}/py/nvidia/cuda_nvrtc/lib"; do
    [[ -d $d ]] && LIBDIRS+=("$d")
done
if command -v python3 >/dev/null; then
    while IFS= read -r d; do [[ -d $d ]] && LIBDIRS+=("$d"); done < <(python3 - <<'PY' 2>/dev/null
import glob, sys
seen = set()
for s in sys.path:
    for p in glob.glob(s + "/nvidia/*/lib") + glob.glob(s + "/nvidia/cu1*/lib"):
        if p not in seen:
            seen.add(p); print(p)
PY
)
fi
find_lib() {  # newest-looking match of NAME.so* across LIBDIRS, plus ldconfig
    local name=$1 d f
    for d in "${LIBDIRS[@]}"; do
        for f in "$d/$name.so" "$d/$name.so.13" "$d/$name.so.12"; do
            [[ -e $f ]] && { echo "$f"; return 0; }
        done
    done
    ldconfig -p 2>/dev/null | awk -v n="$name.so" '$1 ~ "^"n {print $NF; exit}'
}
for lib in libnvrtc libcublas libcublasLt; do
    p=$(find_lib $lib)
    if [[ -n $p ]]; then
        ln -sf "$p" "$SHIM/$lib.so"
        LIBDIRS+=("$(dirname "$p")")
        echo "   $lib -> $p"
    else
        echo "   $lib: NOT FOUND"
    fi
done
LDP=$SHIM
for d in "${LIBDIRS[@]}"; do LDP+=":$d"; done
export LD_LIBRARY_PATH=$LDP${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# ---- executables
TESTS=""; BENCH=""
if command -v cargo >/dev/null && [[ -z ${LOWBIT_USE_BUNDLE:-} ]]; then
    echo "== cargo build --release"
    mapfile -t exes < <(build_executables)
    for e in "${exes[@]}"; do
        case "$(basename "$e")" in
            cuda-*) TESTS=$e ;;
            kernels-*) BENCH=$e ;;
        esac
    done
fi
if [[ -z $TESTS || -z $BENCH ]]; then
    if [[ -x $BUNDLE/cuda-tests && -x $BUNDLE/kernels-bench ]]; then
        echo "== using prebuilt bundle $BUNDLE"
        TESTS=$BUNDLE/cuda-tests; BENCH=$BUNDLE/kernels-bench
    else
        echo "no cargo and no target/gpu-bundle: run scripts/gpu-check.sh --bundle on a dev machine first" >&2
        exit 1
    fi
fi
echo "   build/setup took $((SECONDS - T0)) s"

# ---- tests
status=0
echo "== GPU tests (tests/cuda.rs)"
LOWBIT_REQUIRE_GPU=1 LOWBIT_REQUIRE_NVRTC=1 timeout 240 "$TESTS" --test-threads 1 --nocapture >"$OUT/tests.log" 2>&1 || status=1
grep -E '^(FAIL|test |test result)|SKIP|panicked' "$OUT/tests.log" | tail -n 25
grep -c '^ok ' "$OUT/tests.log" | sed 's/^/   correctness cases ok: /'
echo "   tests took $((SECONDS - T0)) s so far"

# ---- benchmark
echo "== kernel benchmark"
LOWBIT_REQUIRE_GPU=1 OUT="$OUT" timeout 300 "$BENCH" $QUICK --json "$OUT/kernels.json" 2>&1 | tee "$OUT/bench.log" | tail -n 100
[[ ${PIPESTATUS[0]} == 0 ]] || status=1

echo "== gpu-check done in $((SECONDS - T0)) s, status $status (logs in $OUT)"
exit $status
