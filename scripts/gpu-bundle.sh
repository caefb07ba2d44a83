#!/usr/bin/env bash
# Builds the GPU bundle on a dev machine (no GPU needed): everything scripts/gpu-check.sh needs on a
# machine that has only an NVIDIA driver (no Rust, no network, no CUDA toolkit).
#
#   scripts/gpu-bundle.sh            -> target/gpu-bundle/ (git-ignored; 47 MiB, under the 64 MiB
#                                       a device run may carry; about 9 minutes on 2 cores)
#
# Contents:
#   bin/lowbit, bin/kernels      the release CLI and the kernel benchmark (benches/kernels.rs), stripped
#   kernels/<variant>.sm_80.cubin, .sm_90.cubin
#                                every kernel variant, compiled here: NVRTC 12.9 -> PTX, ptxas 12.9 ->
#                                cubin (CUDA 12.9 cubins load on any r525+ driver; no NVRTC and no
#                                compile time on the GPU machine), with -Werror-style checks
#   kernels/<variant>.compute_80.ptx.gz
#                                the PTX, for GPUs other than sm_80/sm_90 (gpu-check unpacks it; the
#                                driver JIT-compiles it)
#   kernels/MANIFEST             the kernel-sources hash the binaries check before loading any image
#   checkpoints/<name>/          small stories260K checkpoints of every layout (lowbit affine /
#                                halfint / shift / 8-bit / act-order g_idx, AutoAWQ, GPTQ v1 3- and
#                                4-bit act-order, VQ with residual, normalisation and outlier columns
#                                mixed with lowbit layers)
#   SOURCE_HASH                  scripts/source-hash.sh of the tree the bundle was built from;
#                                gpu-check.sh refuses to run when the tree differs (stale bundle)
#   BUILD_INFO                   when, from which commit, with which toolchains
#
# The CUDA compilers come from scripts/ci-kernels.sh --install-only (PyPI wheels in
# ${LOWBIT_CUDA_DIR:-~/.cache/lowbit-cuda}). Written to a temporary directory and renamed at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${LOWBIT_BUNDLE:-$ROOT/target/gpu-bundle}
CUDA_DIR=${LOWBIT_CUDA_DIR:-$HOME/.cache/lowbit-cuda}
PTXAS=$CUDA_DIR/py/nvidia/cuda_nvcc/bin/ptxas
MODEL=$ROOT/../shared/models/stories260K
CALIB=$ROOT/../shared/data/tinyshakespeare/input.txt
MAX_MIB=60
[[ ${1:-} == -h || ${1:-} == --help ]] && { sed -n '2,30p' "$0"; exit 0; }
[[ $# == 0 ]] || { echo "unknown argument: $1" >&2; exit 2; }
[[ -d $MODEL && -f $CALIB ]] || { echo "need $MODEL and $CALIB" >&2; exit 2; }

T0=$SECONDS
HASH0=$("$ROOT/scripts/source-hash.sh" "$ROOT")
TMP="$DEST.partial"
rm -rf "$TMP"
mkdir -p "$TMP/bin" "$TMP/kernels" "$TMP/checkpoints"
trap 'rm -rf "$TMP" "$TMP.ptx"' EXIT

echo "== cargo build --release (lowbit + benches/kernels.rs)"
(cd "$ROOT" && cargo build --release --bin lowbit)
BENCH=$(cd "$ROOT" && cargo bench --bench kernels --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*kernels-[^"]*"' | sed 's/"executable":"//; s/"$//' | tail -n 1)
[[ -x $BENCH ]] || { echo "could not build the kernels bench" >&2; exit 1; }
cp "$ROOT/target/release/lowbit" "$TMP/bin/lowbit"
cp "$BENCH" "$TMP/bin/kernels"
strip "$TMP/bin/lowbit" "$TMP/bin/kernels" 2>/dev/null || true

echo "== CUDA compilers"
"$ROOT/scripts/ci-kernels.sh" --install-only
[[ -x $PTXAS ]] || { echo "ptxas missing at $PTXAS" >&2; exit 1; }
echo "   $("$PTXAS" --version | tail -n 2 | head -n 1)"

echo "== NVRTC 12.9 -> PTX (every variant, compute_80 and compute_90)"
LOWBIT_CUDA_DIR=$CUDA_DIR "$TMP/bin/kernels" --emit-ptx "$TMP.ptx"
cp "$TMP.ptx/MANIFEST" "$TMP/kernels/MANIFEST"

echo "== ptxas 12.9 -> cubins (sm_80, sm_90; warnings are errors)"
ptx_one() {
    local ptx=$1 out=$2 sm=$3
    "$PTXAS" -arch="sm_$sm" -O3 --warning-as-error "$ptx" -o "$out/$(basename "$ptx" ".compute_$sm.ptx").sm_$sm.cubin"
}
export -f ptx_one
export PTXAS
ls "$TMP.ptx"/*.compute_80.ptx "$TMP.ptx"/*.compute_90.ptx | sed -E 's/.*compute_([0-9]+)\.ptx$/& \1/' |
    xargs -P "$(nproc)" -n 2 bash -c 'ptx_one "$0" "'"$TMP/kernels"'" "$1"'
for p in "$TMP.ptx"/*.compute_80.ptx; do gzip -9c "$p" > "$TMP/kernels/$(basename "$p").gz"; done
n80=$(ls "$TMP/kernels"/*.sm_80.cubin | wc -l); n90=$(ls "$TMP/kernels"/*.sm_90.cubin | wc -l)
nv=$(ls "$TMP.ptx"/*.compute_80.ptx | wc -l)
[[ $n80 == "$nv" && $n90 == "$nv" ]] || { echo "expected $nv cubins per arch, got $n80 / $n90" >&2; exit 1; }
echo "   $nv variants x 2 archs"

echo "== stories260K checkpoints of every layout"
mk() {  # name, quantize arguments...
    local name=$1; shift
    "$TMP/bin/lowbit" quantize --model "$MODEL" --out "$TMP/checkpoints/$name" --calib "$CALIB" \
        --calib-samples 8 --calib-seqlen 64 "$@" >/dev/null 2>"$TMP/quantize.log" ||
        { cat "$TMP/quantize.log" >&2; echo "quantize $name failed" >&2; exit 1; }
    rm -f "$TMP/checkpoints/$name"/tokenizer*.json
    echo "   $name: $*"
}
mk lowbit-affine-b4   --method rtn --bits 4 --group-size 32
mk lowbit-gptq-b3-act --method gptq --bits 3 --group-size 16 --act-order
mk lowbit-halfint-b2  --method statsq --bits 2 --group-size 32
mk lowbit-shift-b3    --method shift --bits 3 --group-size 32
mk lowbit-affine-b8   --method rtn --bits 8 --group-size 64
mk awq-b4             --method awq --bits 4 --group-size 32 --format awq
mk gptq-b4-act        --method gptq --bits 4 --group-size 32 --format gptq --act-order --sym
mk gptq-b3            --method rtn --bits 3 --group-size 32 --format gptq --sym
mk vq-v8-res-outl     --method vptq --vector-len 8 --centroids 128 --res-centroids 16 --vq-normalize \
                      --outlier-pct 3 --override 'gate_proj|up_proj=rtn:4:32'
mk vq-v4              --method vptq --vector-len 4 --centroids 64
rm -f "$TMP/quantize.log"

HASH1=$("$ROOT/scripts/source-hash.sh" "$ROOT")
[[ $HASH0 == "$HASH1" ]] || { echo "sources changed during the build; run again" >&2; exit 1; }
echo "$HASH0" > "$TMP/SOURCE_HASH"
{
    echo "built $(date -u +%FT%TZ) on $(uname -m)"
    echo "commit $(cd "$ROOT" && git rev-parse HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "$(rustc --version)"
    echo "ptxas $("$PTXAS" --version | tail -n 2 | head -n 1)"
    echo "nvrtc 12.9 (nvidia-cuda-nvrtc-cu12 wheel)"
} > "$TMP/BUILD_INFO"

mib=$(du -sm "$TMP" | cut -f1)
(( mib <= MAX_MIB )) || { echo "bundle is $mib MiB (> $MAX_MIB MiB; a device run carries at most 64 MiB)" >&2; exit 1; }
rm -rf "$DEST"
mv "$TMP" "$DEST"
trap 'rm -rf "$TMP.ptx"' EXIT
echo "== bundle ready: $DEST ($mib MiB, source hash ${HASH0:0:16}..., $((SECONDS - T0)) s)"
echo "   on the GPU machine: scripts/gpu-check.sh   (carry ${DEST#"$ROOT"/})"
