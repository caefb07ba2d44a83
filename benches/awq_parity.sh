#!/usr/bin/env bash
# AWQ on the #22 protocol (docs/awq.md): SmolLM2 f32, PTB valid calibration, W3/W4 g128, WikiText-2
# ctx 2048 (first 4 windows; with WINDOWS16=1 also 16 windows with KLD against the float model).
# Prints ppl, and the search time as a ratio of the calibration forward measured in the same run.
#   bash benches/awq_parity.sh SMOLLM2_F32_DIR [SAMPLES] [SEED]
# Rows: lowbit's default, AutoAWQ's choices (--awq-symmetric-clip --propagate-fp --awq-range min-max),
# and the default with --awq-range min-max. About 3 min per row on 2 idle cores at 4 x 512.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: benches/awq_parity.sh SMOLLM2_F32_DIR [SAMPLES] [SEED]}
SAMPLES=${2:-4}
SEED=${3:-0}
D=../shared/data
cargo build --release -q
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u '+%F %H:%M UTC'); load at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo "calibration: $SAMPLES x 512 tokens of PTB valid, seed $SEED"
printf "%-28s %4s %10s %10s %8s %14s\n" setting bits "ppl (4w)" "ppl (16w)" "KLD 16w" "search/fwd"
for row in "default|" "autoawq-choices|--awq-symmetric-clip --propagate-fp --awq-range min-max" "default, min-max range|--awq-range min-max"; do
    name=${row%%|*}; flags=${row#*|}
    for bits in 3 4; do
        # shellcheck disable=SC2086
        Q=$(./target/release/lowbit quantize --model "$MODEL" --out "$OUT/q" --force --method awq --bits $bits --group-size 128 \
            --calib $D/ptb/ptb.valid.txt --calib-samples "$SAMPLES" --calib-seqlen 512 --seed "$SEED" --json $flags 2>/dev/null)
        E4=$(./target/release/lowbit eval --model "$OUT/q" --text $D/wikitext2/wikitext2-test.hf-joined.txt --ctx 2048 --max-windows 4 --json 2>/dev/null)
        E16='{}'
        if [ -n "${WINDOWS16:-}" ]; then
            E16=$(./target/release/lowbit eval --model "$OUT/q" --text $D/wikitext2/wikitext2-test.hf-joined.txt --ctx 2048 --max-windows 16 \
                --reference "$MODEL" --json 2>/dev/null)
        fi
        python3 - "$name" "$bits" "$Q" "$E4" "$E16" <<'PY'
import json, sys
name, bits, q, e4, e16 = sys.argv[1], sys.argv[2], *map(json.loads, sys.argv[3:])
p16 = "%.4f" % e16["ppl"] if "ppl" in e16 else "-"
k16 = "%.4f" % e16["kld"] if e16.get("kld") is not None else "-"
print("%-28s %4s %10.4f %10s %8s %14.2f" % (name, bits, e4["ppl"], p16, k16, q["search_seconds"] / q["forward_seconds"]))
PY
    done
done
echo "load at end $(cut -d' ' -f1-3 /proc/loadavg)"
