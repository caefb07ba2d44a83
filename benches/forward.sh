#!/usr/bin/env bash
# Forward-pass benchmark: SmolLM2-135M at ctx 2048 on this machine, lowbit vs transformers+torch fp32.
#   bash benches/forward.sh [MODEL_DIR] [WINDOWS]
# MODEL_DIR: an f32 import of SmolLM2 (see README); WINDOWS: windows of 2048 tokens (default 4).
# Prints tokens/s and peak RSS of both and the speed ratio. torch comes from $PYTHON (a Python with
# torch + transformers); without it only lowbit's numbers are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-smollm2-f32}
WINDOWS=${2:-4}
TEXT=../shared/data/wikitext2/wikitext2-test.hf-joined.txt
PYTHON=${PYTHON:-python3}
cargo build --release -q
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
L=$(./target/release/lowbit eval --model "$MODEL" --text "$TEXT" --ctx 2048 --max-windows "$WINDOWS" --json)
LT=$(echo "$L" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["tokens_per_s"], 1))')
LR=$(echo "$L" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["peak_rss_bytes"]/2**20))')
LP=$(echo "$L" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["ppl"], 4))')
echo "lowbit        ${LT} tokens/s   peak RSS ${LR} MiB   ppl ${LP}"
if "$PYTHON" -c 'import torch, transformers' 2>/dev/null; then
    T=$(/usr/bin/time -f '%M' "$PYTHON" benches/transformers_ppl.py "$MODEL" "$TEXT" 2048 "$WINDOWS" 2>/tmp/lowbit-bench-time | grep '^ppl')
    TT=$(echo "$T" | awk '{print $6}')
    TR=$(( $(tail -n1 /tmp/lowbit-bench-time) / 1024 ))
    echo "transformers  ${TT} tokens/s   peak RSS ${TR} MiB   $T"
    python3 -c "print(f'speed ratio lowbit/torch: {$LT/$TT:.2f}x')"
else
    echo "transformers: not measured (set PYTHON to a Python with torch and transformers)"
fi
