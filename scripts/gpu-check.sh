#!/usr/bin/env bash
# The one GPU check, for a machine with only an NVIDIA driver (no Rust, no network, no toolkit).
# Budget: under 8 minutes on an H100/H200.
#
#   scripts/gpu-bundle.sh                     on a dev machine, first: builds target/gpu-bundle/
#   scripts/gpu-check.sh [--quick]            on the GPU machine, in the repository root, with
#                                             target/gpu-bundle carried along
#   scripts/gpu-check.sh --check-bundle       only check that the bundle exists, is complete and
#                                             was built from exactly this tree (no GPU needed)
#
# Steps, failing fast (a step that cannot start stops the script with a non-zero status; there is
# no "SKIP"):
#   1. driver and library versions (nvidia-smi, libcuda, libcublas found for the baseline);
#   2. the bundle: SOURCE_HASH must equal scripts/source-hash.sh of this tree, else "stale";
#   3. `lowbit verify` on every carried stories260K checkpoint (every packed layer of every layout,
#      batch 1, 8 and 40) with the prebuilt kernel images (no NVRTC);
#   4. `kernels --check`: the synthetic correctness suite (ragged shapes, act-order, short groups,
#      VQ residual/outliers; batch 1, 3, 8, 13, 40), with the tiled kernels and again with the
#      direct ones (LOWBIT_KERNELS=direct);
#   5. `kernels`: the benchmark (rotating set >= 4x L2, back-to-back launches, copy ceiling, cuBLAS
#      fp16 baseline, results re-checked after timing, one verdict per goal);
#   6. a summary table.
# Logs and kernels.json go to $OUT (default target/gpu-check). Exit status 0 only when every verify
# and every correctness case passed; the goals are reported (met, or the kernel and its fraction).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE=${LOWBIT_BUNDLE:-$ROOT/target/gpu-bundle}
MODE=run
QUICK=""
for a in "$@"; do
    case "$a" in
        --check-bundle) MODE=check ;;
        --quick) QUICK=--quick ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done
T0=$SECONDS
fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }

# ---- the bundle: complete and built from this tree
check_bundle() {
    [[ -d $BUNDLE ]] || fail "no bundle at $BUNDLE (build it with scripts/gpu-bundle.sh on a dev machine and carry it)"
    local missing=()
    for f in bin/lowbit bin/kernels kernels/MANIFEST SOURCE_HASH; do
        [[ -s $BUNDLE/$f ]] || missing+=("$f")
    done
    [[ -x $BUNDLE/bin/lowbit && -x $BUNDLE/bin/kernels ]] || missing+=("executable bin/*")
    ls "$BUNDLE"/kernels/*.sm_90.cubin >/dev/null 2>&1 || missing+=("kernels/*.sm_90.cubin")
    ls -d "$BUNDLE"/checkpoints/*/ >/dev/null 2>&1 || missing+=("checkpoints/*")
    (( ${#missing[@]} == 0 )) || fail "bundle $BUNDLE is incomplete: missing ${missing[*]} (rebuild with scripts/gpu-bundle.sh)"
    local want have
    want=$(tr -d '[:space:]' < "$BUNDLE/SOURCE_HASH")
    have=$("$ROOT/scripts/source-hash.sh" "$ROOT") || fail "cannot hash the sources of $ROOT"
    [[ $want == "$have" ]] || fail "stale bundle: built from sources ${want:0:16}..., this tree is ${have:0:16}... (rebuild with scripts/gpu-bundle.sh)"
    echo "   bundle ok: $BUNDLE, source hash ${have:0:16}..."
    sed 's/^/   /' "$BUNDLE/BUILD_INFO" 2>/dev/null
}

if [[ $MODE == check ]]; then
    check_bundle
    exit 0
fi

OUT=${OUT:-$ROOT/target/gpu-check}
mkdir -p "$OUT"
echo "== gpu-check start $(date -u +%FT%TZ)"

# ---- 1. versions (driver first; then the libraries the binaries will load)
echo "== driver and libraries"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.memory --format=csv,noheader | sed 's/^/   /'
else
    echo "   nvidia-smi not found"
fi
# cudarc loads libcuda.so.1, libcublas.so(.12) and libcublasLt.so(.12). cuBLAS only serves the
# baseline; on a CUDA 13 machine only *.so.13 may exist, so whatever is found is linked into a shim
# directory under the names cudarc looks for (the symbols used exist unchanged in 12.x and 13.x).
SHIM=$(mktemp -d)
WORK=$(mktemp -d)
trap 'rm -rf "$SHIM" "$WORK"' EXIT
LIBDIRS=()
for d in ${LD_LIBRARY_PATH:+${LD_LIBRARY_PATH//:/ }} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         /usr/lib/x86_64-linux-gnu /usr/lib64; do
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
find_lib() {
    local name=$1 d f
    for d in "${LIBDIRS[@]}"; do
        for f in "$d/$name.so" "$d/$name.so.12" "$d/$name.so.13"; do
            [[ -e $f ]] && { echo "$f"; return 0; }
        done
    done
    ldconfig -p 2>/dev/null | awk -v n="$name.so" '$1 ~ "^"n {print $NF; exit}'
}
for lib in libcublas libcublasLt; do
    p=$(find_lib $lib)
    if [[ -n $p ]]; then
        ln -sf "$p" "$SHIM/$lib.so"; ln -sf "$p" "$SHIM/$lib.so.12"
        LIBDIRS+=("$(dirname "$p")")
        echo "   $lib -> $p"
    else
        echo "   $lib: not found (the cuBLAS baseline and the speedup goal will read NOT MEASURED)"
    fi
done
LDP=$SHIM
for d in "${LIBDIRS[@]}"; do LDP+=":$d"; done
export LD_LIBRARY_PATH=$LDP${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# ---- 2. bundle
echo "== bundle"
check_bundle
# Kernel images: the cubins, plus the PTX unpacked for GPUs other than sm_80 / sm_90.
cp "$BUNDLE"/kernels/MANIFEST "$BUNDLE"/kernels/*.cubin "$WORK/"
for z in "$BUNDLE"/kernels/*.ptx.gz; do [[ -e $z ]] && gzip -dc "$z" > "$WORK/$(basename "$z" .gz)"; done
export LOWBIT_KERNEL_DIR=$WORK
LOWBIT=$BUNDLE/bin/lowbit
KERNELS=$BUNDLE/bin/kernels
"$KERNELS" --versions 2>&1 | sed 's/^/   /'
[[ ${PIPESTATUS[0]} == 0 ]] || fail "the benchmark binary cannot start (see above)"
echo "   setup took $((SECONDS - T0)) s"

# ---- 3. lowbit verify on every checkpoint
echo "== lowbit verify (every packed layer, batch 1,8,40)"
declare -A VERIFY
status=0
for ck in "$BUNDLE"/checkpoints/*/; do
    name=$(basename "$ck")
    log=$OUT/verify-$name.log
    timeout 120 "$LOWBIT" verify --model "$ck" --batch 1,8,40 >"$log" 2>&1
    rc=$?
    rows=$(grep -cE ' (ok|FAIL)$' "$log")
    bad=$(grep -cE ' FAIL$' "$log")
    case $rc in
        0) VERIFY[$name]="ok ($rows results)" ;;
        1) VERIFY[$name]="MISMATCH ($bad of $rows results)"; status=1 ;;
        *) tail -n 5 "$log" | sed 's/^/   /'
           fail "lowbit verify could not run on $name (exit $rc; log $log)" ;;
    esac
    printf '   %-22s %s\n' "$name" "${VERIFY[$name]}"
done
echo "   took $((SECONDS - T0)) s so far"

# ---- 4. correctness suite, tiled kernels then the direct ones
declare -A CHECK
for path in tiled direct; do
    echo "== kernels --check (synthetic coverage layers, $path kernels)"
    LOWBIT_KERNELS=$path timeout 240 "$KERNELS" --check >"$OUT/check-$path.log" 2>&1
    rc=$?
    grep -E '^FAIL' "$OUT/check-$path.log" | head -n 20 | sed 's/^/   /'
    CHECK[$path]=$(grep -E '^correctness:' "$OUT/check-$path.log" | tail -n 1)
    case $rc in
        0) ;;
        1) status=1 ;;
        *) tail -n 5 "$OUT/check-$path.log" | sed 's/^/   /'; fail "kernels --check ($path) could not run (exit $rc)" ;;
    esac
    echo "   ${CHECK[$path]:-no result line}; took $((SECONDS - T0)) s so far"
done

# ---- 5. benchmark
echo "== kernels (benchmark)"
timeout 330 "$KERNELS" $QUICK --json "$OUT/kernels.json" >"$OUT/bench.log" 2>&1
rc=$?
sed -n '/^layout /,/^== goals/p' "$OUT/bench.log" | sed '$d'
case $rc in
    0) ;;
    1) status=1 ;;
    *) tail -n 5 "$OUT/bench.log" | sed 's/^/   /'; fail "the benchmark could not run (exit $rc)" ;;
esac

# ---- 6. summary
echo "== summary ($((SECONDS - T0)) s)"
grep -E '^(device|device-to-device)' "$OUT/bench.log" | sed 's/^/   /'
for name in "${!VERIFY[@]}"; do printf '   verify %-22s %s\n' "$name" "${VERIFY[$name]}"; done | sort
echo "   check  tiled:  ${CHECK[tiled]:-?}"
echo "   check  direct: ${CHECK[direct]:-?}"
grep -E 'results outside' "$OUT/bench.log" | sed 's/^/   bench  /'
sed -n '/^== goals/,$p' "$OUT/bench.log" | grep -vE '^(kernel image|wrote)' | sed 's/^/   /'
echo "== gpu-check done: status $status (logs in $OUT)"
exit $status
