#!/usr/bin/env bash
# Quantization-time benchmark: each method's wall time as a ratio of one FP forward pass over the
# same calibration tokens (measured inside the same run, statistics excluded), and peak RSS.
#   bash benches/quantize.sh MODEL_DIR [SAMPLES] [METHOD_ARGS...]
# e.g. bash benches/quantize.sh smollm2-bf16 128            (AWQ W4g128, GPTQ W4g128, VPTQ v4k256)
#      bash benches/quantize.sh smollm2-bf16 32 "--method awq --bits 4"
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: benches/quantize.sh MODEL_DIR [SAMPLES] [METHOD_ARGS...]}
SAMPLES=${2:-128}
shift $(( $# < 2 ? $# : 2 ))
CALIB=../shared/data/ptb/ptb.valid.txt
CONFIGS=("$@")
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=("--method rtn --bits 4" "--method awq --bits 4" "--method gptq --bits 4" "--method vptq --vector-len 4 --centroids 256")
cargo build --release -q
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
MODEL_MB=$(du -sm "$MODEL"/*.safetensors | awk '{s+=$1} END {print s}')
CALIB_MB=$(python3 -c "print(round($SAMPLES*512*$(python3 -c "import json;print(json.load(open('$MODEL/config.json'))['hidden_size'])")*4/2**20))")
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u '+%F %H:%M UTC'); load at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model: $MODEL ($MODEL_MB MiB of safetensors); calibration: $SAMPLES x 512 tokens ($CALIB_MB MiB of hidden states)"
printf "%-52s %10s %12s %7s %10s %10s\n" config "wall s" "FP fwd s" ratio "peak MiB" "goal MiB"
for cfg in "${CONFIGS[@]}"; do
    # shellcheck disable=SC2086
    J=$(./target/release/lowbit quantize --model "$MODEL" --out "$OUT/q" --force --group-size 128 $cfg \
        --calib "$CALIB" --calib-samples "$SAMPLES" --calib-seqlen 512 --json)
    python3 - "$cfg" "$J" "$MODEL_MB" "$CALIB_MB" <<'PY'
import json, sys
cfg, j, model_mb, calib_mb = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
# RTN runs no calibration forward: no ratio.
ratio = f"{j['seconds']/j['forward_seconds']:>7.2f}" if j['forward_seconds'] > 0 else f"{'—':>7}"
print(f"{cfg:<52} {j['seconds']:>10.1f} {j['forward_seconds']:>12.1f} {ratio} "
      f"{j['peak_rss_bytes']/2**20:>10.0f} {1.3*model_mb+calib_mb:>10.0f}")
PY
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
