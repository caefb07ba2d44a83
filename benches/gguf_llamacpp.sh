#!/usr/bin/env bash
# llama.cpp's side of docs/results-gguf.md: llama-quantize's files (with and without an imatrix
# from 32 x 512 tokens of Tiny Shakespeare) at Q4_0, Q4_K_M, Q3_K_M, Q2_K from the SmolLM2 Q4_1
# GGUF (--allow-requantize: its f32 dequantization is the float model lowbit quantizes), and
# llama-perplexity (wiki.test.raw, ctx 512, 16 chunks) on those and on lowbit's files.
#
#   LLAMA=/path/to/llama.cpp SRC=SmolLM2-135M-Instruct.Q4_1.gguf bash benches/gguf_llamacpp.sh [lowbit.gguf ...]
#
# SCORE=0 writes llama-quantize's files (without imatrix; an imatrix changes no size) and reports
# their sizes only: on a busy 2-core machine each llama-perplexity run takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
LLAMA=${LLAMA:?set LLAMA to a llama.cpp build directory}
SRC=${SRC:?set SRC to SmolLM2-135M-Instruct.Q4_1.gguf}
WORK=${LOWBIT_BENCH_DIR:-$HOME/.cache/lowbit-bench/gguf}/llamacpp
T=${THREADS:-2}
mkdir -p "$WORK"
TEXT="$SHARED/data/wikitext2/wiki.test.raw"
ppl() { "$LLAMA/llama-perplexity" -m "$1" -f "$TEXT" -c 512 --chunks 16 -t "$T" 2>&1 | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'; }
params=$("${PY:-python3}" -c "import gguf,sys,numpy as np; r=gguf.GGUFReader(sys.argv[1]); print(sum(int(np.prod(t.shape)) for t in r.tensors))" "$SRC") || { echo "counting parameters needs numpy + gguf in \$PY" >&2; exit 2; }
row() {
    local p="-"
    [ "${SCORE:-1}" = 1 ] && p=$(ppl "$3")
    echo "| $1 | $2 | $(stat -c %s "$3") | $(python3 -c "print('%.3f' % (8*$(stat -c %s "$3")/$params))") | $p |"
}
echo "| file | imatrix | bytes | bits/weight (whole file) | llama-perplexity |"
echo "|------|---------|------:|-------------------------:|-----------------:|"
for f in "$@"; do row "lowbit $(basename "$f")" - "$f"; done
row "source Q4_1 (= the f32 model)" - "$SRC"
[ "${SCORE:-1}" = 1 ] && [ ! -f "$WORK/imatrix.dat" ] && "$LLAMA/llama-imatrix" -m "$SRC" -f "$SHARED/data/tinyshakespeare/input.txt" -c 512 --chunks 32 -t "$T" -o "$WORK/imatrix.dat" >/dev/null 2>&1
for q in Q4_0 Q4_K_M Q3_K_M Q2_K; do
    "$LLAMA/llama-quantize" --allow-requantize "$SRC" "$WORK/llama-$q.gguf" "$q" "$T" >/dev/null 2>&1
    row "llama-quantize $q" no "$WORK/llama-$q.gguf"
    [ "${SCORE:-1}" = 1 ] || continue
    "$LLAMA/llama-quantize" --allow-requantize --imatrix "$WORK/imatrix.dat" "$SRC" "$WORK/llama-$q-imat.gguf" "$q" "$T" >/dev/null 2>&1
    row "llama-quantize $q" yes "$WORK/llama-$q-imat.gguf"
done
