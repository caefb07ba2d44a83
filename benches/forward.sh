#!/usr/bin/env bash
# Forward-pass benchmark: SmolLM2-135M f32 at ctx 2048, lowbit vs transformers+torch fp32 in the
# same run, at 1 and 2 threads, interleaved (lowbit 1, torch 1, lowbit 2, torch 2 per round).
#   bash benches/forward.sh [MODEL_DIR] [WINDOWS] [ROUNDS]
# MODEL_DIR: an f32 import of SmolLM2 (docs/results-quantize.md shows how; default /work/smollm2-f32
# or ./smollm2-f32); WINDOWS: windows of 2048 tokens per measurement (default 2); ROUNDS: repeats,
# the best of each is kept (default 1).
# Prints per thread count: wall tokens/s, tokens per CPU-second (process CPU time, all threads:
# the steady figure when other jobs share the cores), and lowbit/torch ratios of both.
# torch comes from $PYTHON (default /work/venv-tf/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-$( [ -d /work/smollm2-f32 ] && echo /work/smollm2-f32 || echo smollm2-f32 )}
WINDOWS=${2:-2}
ROUNDS=${3:-1}
TEXT=../shared/data/wikitext2/wikitext2-test.hf-joined.txt
PYTHON=${PYTHON:-$( [ -x /work/venv-tf/bin/python ] && echo /work/venv-tf/bin/python || echo python3 )}
cargo build --release -q
HAVE_TORCH=1
"$PYTHON" -c 'import torch, transformers' 2>/dev/null || HAVE_TORCH=0
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u '+%F %H:%M UTC'); load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model: $MODEL, ctx 2048, $WINDOWS windows per measurement, $ROUNDS round(s)"
declare -A LW LC TW TC
for r in $(seq "$ROUNDS"); do
    for th in 1 2; do
        J=$(./target/release/lowbit --threads "$th" eval --model "$MODEL" --text "$TEXT" --ctx 2048 --max-windows "$WINDOWS" --json)
        read -r w c p rss < <(echo "$J" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["tokens_per_s"], d["windows"]*d["ctx"]/d["cpu_seconds"], d["ppl"], d["peak_rss_bytes"]//2**20)')
        echo "round $r  lowbit  $th thread(s): $(printf '%7.1f' "$w") tokens/s  $(printf '%7.1f' "$c") tokens/CPU-s  ppl $(printf '%.4f' "$p")  peak RSS ${rss} MiB  (load $(cut -d' ' -f1 /proc/loadavg))"
        LW[$th]=$(python3 -c "print(max($w, ${LW[$th]:-0}))"); LC[$th]=$(python3 -c "print(max($c, ${LC[$th]:-0}))")
        if [ "$HAVE_TORCH" = 1 ]; then
            T=$(TORCH_THREADS=$th OMP_NUM_THREADS=$th "$PYTHON" benches/transformers_ppl.py "$MODEL" "$TEXT" 2048 "$WINDOWS" | grep '^ppl')
            w=$(echo "$T" | awk '{print $6}'); c=$(echo "$T" | awk '{print $8}')
            echo "round $r  torch   $th thread(s): $(printf '%7.1f' "$w") tokens/s  $(printf '%7.1f' "$c") tokens/CPU-s  $(echo "$T" | awk '{print "ppl", $2}')  (load $(cut -d' ' -f1 /proc/loadavg))"
            TW[$th]=$(python3 -c "print(max($w, ${TW[$th]:-0}))"); TC[$th]=$(python3 -c "print(max($c, ${TC[$th]:-0}))")
        fi
    done
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| threads | lowbit tokens/s | torch tokens/s | ratio (wall) | lowbit tokens/CPU-s | torch tokens/CPU-s | ratio (CPU) |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for th in 1 2; do
    if [ "$HAVE_TORCH" = 1 ]; then
        python3 -c "lw,tw,lc,tc=${LW[$th]},${TW[$th]},${LC[$th]},${TC[$th]}; print(f'| $th | {lw:.1f} | {tw:.1f} | {lw/tw:.2f}x | {lc:.1f} | {tc:.1f} | {lc/tc:.2f}x |')"
    else
        python3 -c "lw,lc=${LW[$th]},${LC[$th]}; print(f'| $th | {lw:.1f} | — | — | {lc:.1f} | — | — |')"
    fi
done
python3 -c "print(f'lowbit 2-thread / 1-thread: {${LW[2]}/${LW[1]}:.2f}x wall')"
