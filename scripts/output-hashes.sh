#!/usr/bin/env bash
# Refactor check: quantize stories260K with every method and layout, print one line per output
# file: "<run> <sha256> <file>". Run it with the binary before and after a change and diff the two.
#   scripts/output-hashes.sh BIN [SHARED]   (BIN: a lowbit binary; SHARED: default ../shared)
set -euo pipefail
bin=$(realpath "$1"); shared=$(realpath "${2:-../shared}")
m=$shared/models/stories260K; calib=$shared/data/tinyshakespeare/input.txt
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
c=(--calib "$calib" --calib-samples 8 --calib-seqlen 128 --threads 2)
run() { # name, args...
  local name=$1; shift
  "$bin" quantize --model "$m" --out "$work/$name" "${c[@]}" "$@" >/dev/null 2>"$work/$name.log" \
    || { echo "$name FAILED: $(tail -1 "$work/$name.log")"; return; }
  if [ -d "$work/$name" ]; then
    (cd "$work/$name" && find . -type f | sort | xargs sha256sum | sed "s|^|$name |")
  else
    sha256sum "$work/$name" | sed "s|^|$name |;s|$work/||"
  fi
}
for meth in rtn awq statsq statsq-aware awq+statsq gptq+statsq shift shift-aware awq+shift gptq+shift gptq awq+gptq; do
  run "$meth-3" --method "$meth" --bits 3 --group-size 32
done
run vptq --method vptq --vector-len 4 --centroids 64
run vptq-res --method vptq --vector-len 4 --centroids 64 --res-centroids 16 --outlier-pct 2
run rtn-sym-8 --method rtn --bits 8 --sym --group-size 64
run awq-minmax --method awq --bits 4 --group-size 32 --awq-range min-max --awq-symmetric-clip --propagate-fp
run awq-layout --method awq --bits 4 --group-size 32 --format awq
run gptq-layout --method gptq --bits 4 --group-size 32 --format gptq --act-order
run gptq-static --method gptq --bits 3 --group-size 32 --format gptq --act-order --static-groups --true-sequential
run gptq-asym2 --method gptq --bits 2 --group-size 32 --format gptq
run gguf-q4k --format gguf --gguf-type q4_k
run gguf-q3k-gptq --method gptq --format gguf --gguf-type q3_k
run lowbit-q4_0 --method rtn --gguf-type q4_0
run override --method gptq --bits 3 --group-size 32 --override 'down_proj=rtn:8' --override 'layers\.0\.=awq:4:32' --skip 'layers\.4\.self_attn\.q_proj'
run target-bpw --method gptq --target-bpw 7 --plan-bits 2,3,4,8 --plan-groups 32
