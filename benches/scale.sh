#!/usr/bin/env bash
# Scale benchmark: random-weight bf16 checkpoints with the real shapes of Llama-3.2-1B and
# Llama-3.1-8B (benches/random_ckpt.py), layer count cut so a run takes minutes; every time is
# measured at two layer counts L1 < L2, so per-layer and fixed costs separate and the full model is
# projected: full = fixed + layers_full × per_layer.
#   bash benches/scale.sh [MODELS] [THREADS]
# MODELS: space-separated "name:L1:L2" (default "llama-3.2-1b:1:2 llama-3.1-8b:1:2"); THREADS: default 2.
# Measures per checkpoint: eval tokens/s (ctx 2048, 1 window of WikiText-2), quantize wall time of
# rtn/awq/gptq W4g128 on 32 × 512 PTB calibration tokens, peak RSS of each, against the memory goal
# 1.3 × one layer's bf16 weights + calibration hidden states (f32) + embedding/lm_head (bf16).
# Checkpoints go to scratch/scale (git-ignored; generated once, reused; delete to regenerate).
# Python with torch + safetensors: $PYTHON (default /work/venv-tf/bin/python if present).
# METHODS (env): quantization methods to time (default "rtn awq gptq"); APPEND=1 keeps earlier
# results in scratch/scale/results.jsonl (the table then uses the last row per model, method, layers).
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${1:-"llama-3.2-1b:1:2 llama-3.1-8b:1:2"}
THREADS=${2:-2}
PYTHON=${PYTHON:-$( [ -x /work/venv-tf/bin/python ] && echo /work/venv-tf/bin/python || echo python3 )}
TEXT=../shared/data/wikitext2/wikitext2-test.hf-joined.txt
CALIB=../shared/data/ptb/ptb.valid.txt
SAMPLES=32
SEQLEN=512
SCR=scratch/scale
mkdir -p "$SCR"
cargo build --release -q
LB=./target/release/lowbit
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u '+%F %H:%M UTC'); load at start: $(cut -d' ' -f1-3 /proc/loadavg); threads $THREADS"
RES=$SCR/results.jsonl
[ -n "${APPEND:-}" ] || : > "$RES"
for spec in $MODELS; do
    IFS=: read -r name l1 l2 <<< "$spec"
    for L in $(printf "%s\n" "$l1" "$l2" | sort -un); do
        dir=$SCR/$name-${L}l
        if [ ! -f "$dir/model.safetensors" ]; then
            info=$("$PYTHON" benches/random_ckpt.py "$name" "$dir" "$L")
            echo "$info" > "$dir/shape.json"
        fi
        info=$(cat "$dir/shape.json")
        ck_mb=$(du -sm "$dir/model.safetensors" | cut -f1)
        echo "== $name, $L layer(s): $ck_mb MiB of safetensors (load $(cut -d' ' -f1 /proc/loadavg))"
        E=$($LB --threads "$THREADS" eval --model "$dir" --text "$TEXT" --ctx 2048 --max-windows 1 --json 2>"$SCR/err.log") || { cat "$SCR/err.log"; exit 1; }
        echo "{\"model\":\"$name\",\"layers\":$L,\"what\":\"eval\",\"shape\":$info,\"ck_mb\":$ck_mb,\"r\":$E}" >> "$RES"
        J="$E" python3 -c 'import json,os; d=json.loads(os.environ["J"]); print("   eval      %8.1f s  %7.1f tokens/s  cpu %7.1f s  peak RSS %7.0f MiB" % (d["seconds"], d["tokens_per_s"], d["cpu_seconds"], d["peak_rss_bytes"]/2**20))'
        for m in ${METHODS:-rtn awq gptq}; do
            rm -rf "$SCR/q"
            Q=$(/usr/bin/time -f '%U %S' -o "$SCR/cpu" $LB --threads "$THREADS" quantize --model "$dir" --out "$SCR/q" --method "$m" --bits 4 --group-size 128 \
                --calib "$CALIB" --calib-samples "$SAMPLES" --calib-seqlen "$SEQLEN" --json 2>"$SCR/err.log") || { cat "$SCR/err.log"; exit 1; }
            cpu=$(awk '{print $1 + $2}' "$SCR/cpu")
            echo "{\"model\":\"$name\",\"layers\":$L,\"what\":\"$m\",\"shape\":$info,\"ck_mb\":$ck_mb,\"cpu\":$cpu,\"r\":$Q}" >> "$RES"
            J="$Q" python3 -c 'import json,os,sys; d=json.loads(os.environ["J"]); print("   %-8s  %8.1f s  cpu %7.1f s  FP forward %7.1f s  peak RSS %7.0f MiB" % (sys.argv[1], d["seconds"], float(sys.argv[2]), d["forward_seconds"], d["peak_rss_bytes"]/2**20))' "$m" "$cpu"
        done
        rm -rf "$SCR/q"
    done
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$RES" "$SAMPLES" "$SEQLEN" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
samples, seqlen = int(sys.argv[2]), int(sys.argv[3])
# CPU seconds (all threads): steady under load; wall seconds as measured, for reference.
cpu = lambda r: r["r"]["cpu_seconds"] if r["what"] == "eval" else r.get("cpu", float("nan"))
print()
print("CPU seconds (all threads) per run; per layer = difference between the two layer counts;")
print("fixed = the rest (embedding, lm_head, output); projected = fixed + full layers x per layer.")
print()
print("| model | what | wall s (L1 → L2 layers) | CPU s (L1 → L2) | per layer CPU s | fixed CPU s | projected full model, CPU s | peak RSS at L2 | RSS goal | meets |")
print("|---|---|---|---|---:|---:|---|---:|---:|---|")
for name in dict.fromkeys(r["model"] for r in rows):
    for what in ["eval", "rtn", "awq", "gptq"]:
        by_layers = {r["layers"]: r for r in rows if r["model"] == name and r["what"] == what}
        rs = [by_layers[k] for k in sorted(by_layers)]
        if not rs:
            continue
        a, b = rs[0], rs[-1]
        sh = b["shape"]
        d = {"llama-3.2-1b": 2048, "llama-3.1-8b": 4096}.get(name, 0)
        goal = 1.3 * sh["layer_bf16_bytes"] + samples * seqlen * d * 4 + sh["embed_lm_head_bytes"]
        rss = b["r"]["peak_rss_bytes"]
        full = sh["full_layers"]
        if len(rs) >= 2:
            per = (cpu(b) - cpu(a)) / (b["layers"] - a["layers"])
            fixed = cpu(a) - a["layers"] * per
            proj = fixed + full * per
            extra = f" = {b['r']['windows'] * b['r']['ctx'] / proj:.1f} tokens/CPU-s" if what == "eval" else f" ({proj/60:.0f} CPU-min)"
            cols = f"{per:.1f} | {fixed:.1f} | {proj:.0f}{extra} ({full} layers)"
        else:
            cols = "— | — | —"
        walls = " → ".join(f"{r['r']['seconds']:.1f}" for r in rs)
        cpus = " → ".join(f"{cpu(r):.1f}" for r in rs)
        layers = "/".join(str(r["layers"]) for r in rs)
        print(f"| {name} ({layers} layers) | {what} | {walls} | {cpus} | {cols} | {rss/2**20:.0f} MiB | {goal/2**20:.0f} MiB | {'yes' if rss <= goal else 'no'} |")
PY
