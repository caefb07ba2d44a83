#!/usr/bin/env bash
# GGUF export benchmark: SmolLM2-135M, lowbit's GGUF files at Q4_0, Q4_K, Q3_K, Q2_K with rtn, awq
# and gptq, scored by lowbit on the llama-perplexity protocol (wiki.test.raw, ctx 512, llamacpp
# convention, first 16 chunks); calibration 32 x 512 tokens of Tiny Shakespeare (seed 0). Prints one
# markdown row per file: type, method, whole-file bits per weight (file bytes / parameters), ppl.
#
#   MODEL=/work/smollm2-f32 bash benches/gguf.sh
#   TYPES="q4_k" METHODS="gptq" bash benches/gguf.sh      # one point
#
# MODEL is an HF checkpoint directory of SmolLM2-135M (see docs/results-gguf.md for how it was made).
# CHECK=1 also checks every file with llama.cpp's Python reader (benches/gguf_check.py; needs
# `pip install gguf numpy` in $PY's environment).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
MODEL=${MODEL:?set MODEL to the SmolLM2-135M checkpoint directory}
WORK=${LOWBIT_BENCH_DIR:-$HOME/.cache/lowbit-bench/gguf}
TYPES=${TYPES:-q4_0 q4_k q3_k q2_k}
METHODS=${METHODS:-rtn awq gptq}
EXTRA=${EXTRA:-}
mkdir -p "$WORK"
if [ -z "${LOWBIT:-}" ]; then
    cargo build --release -q
    LOWBIT=./target/release/lowbit
fi
TEXT="$SHARED/data/wikitext2/wiki.test.raw"
CALIB="$SHARED/data/tinyshakespeare/input.txt"
score() {
    "$LOWBIT" eval --model "$1" --tokenizer "$MODEL/tokenizer.json" --text "$TEXT" --ctx 512 --convention llamacpp \
        --max-windows 16 --json 2>/dev/null | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])'
}
echo "| type | method | file bytes | bits/weight (whole file) | ppl |"
echo "|------|--------|-----------:|-------------------------:|----:|"
for t in $TYPES; do
    for m in $METHODS; do
        out="$WORK/smollm2-$m-$t.gguf"
        calib=()
        [ "$m" != rtn ] && calib=(--calib "$CALIB" --calib-samples 32 --calib-seqlen 512 --seed 0)
        # shellcheck disable=SC2086
        s=$("$LOWBIT" quantize --model "$MODEL" --out "$out" --format gguf --gguf-type "$t" --method "$m" \
            "${calib[@]}" --force --json $EXTRA 2>/dev/null)
        bpw=$(echo "$s" | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["model_bpw"])')
        bytes=$(stat -c %s "$out")
        echo "| $t | $m | $bytes | $bpw | $(score "$out") |"
        if [ "${CHECK:-0}" = 1 ]; then
            "$LOWBIT" import-gguf "$out" --out "$WORK/imported" --force >/dev/null 2>&1
            "${PY:-python3}" benches/gguf_check.py "$out" "$WORK/imported" >&2
            rm -rf "$WORK/imported"
        fi
    done
done
