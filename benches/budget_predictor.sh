#!/usr/bin/env bash
# Does --target-bpw's predicted loss rank plans the way the measured KL divergence does?
# One sensitivity pass on stories260K (cached), then plans at a sweep of budgets and every uniform
# GPTQ setting of the candidate list; each is written, scored against the float model on two texts
# (TinyStories valid, WikiText-2 test; KLD per token), and compared with its predicted loss
# (Spearman rank correlation, and Pearson on log-log). Prints a Markdown table for docs/budget.md.
#
#   bash benches/budget_predictor.sh            # a few minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
MODEL=${MODEL:-$SHARED/models/stories260K}
WORK=${WORK:-$(mktemp -d)}
TARGETS=${TARGETS:-5.6 5.9 6.2 6.5 6.8 7.1 7.4 7.8 8.5}
if [ -z "${LOWBIT:-}" ]; then
    cargo build --release -q
    LOWBIT=./target/release/lowbit
fi
CALIB=(--calib "$SHARED/data/ptb/ptb.valid.txt" --calib "$SHARED/data/tinyshakespeare/input.txt" --calib-samples 32 --calib-seqlen 256)
TEXTS=("$SHARED/data/tinystories/TinyStories-valid.partial.txt" "$SHARED/data/wikitext2/wiki.test.raw")
ROWS=$WORK/rows.tsv
: > "$ROWS"
kld() {
    for t in "${TEXTS[@]}"; do
        $LOWBIT eval --model "$1" --reference "$MODEL" --text "$t" --ctx 256 --max-windows 40 --json 2>/dev/null |
            python3 -c 'import json,sys; print("%.6f" % json.load(sys.stdin)["kld"])'
    done | tr '\n' ' '
}
for t in $TARGETS; do
    d=$WORK/plan-$t
    $LOWBIT quantize --model "$MODEL" --out "$d" --method gptq --target-bpw "$t" --sensitivity-cache "$WORK/sens.json" "${CALIB[@]}" --json 2>/dev/null > "$d.json"
    python3 - "$d.json" "plan $t" "$(kld "$d")" >> "$ROWS" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("\t".join([sys.argv[2], "%.4f" % d["model_bpw"], "%.6f" % d["plan"]["predicted_loss"], sys.argv[3]]))
PY
done
# Uniform settings: predicted loss from the last plan's table of uniform plans.
python3 - "$d.json" > "$WORK/uniform.tsv" <<'PY'
import json, sys
for u in json.load(open(sys.argv[1]))["plan"]["uniform"]:
    print(u["bits"], u["group_size"], "%.4f" % u["model_bpw"], "%.6f" % u["predicted_loss"])
PY
while read -r b g bpw pred; do
    d=$WORK/uni-$b-$g
    $LOWBIT quantize --model "$MODEL" --out "$d" --method gptq --bits "$b" --group-size "$g" "${CALIB[@]}" --json 2>/dev/null > "$d.json"
    printf 'gptq w%s g%s\t%s\t%s\t%s\n' "$b" "$g" "$bpw" "$pred" "$(kld "$d")" >> "$ROWS"
done < "$WORK/uniform.tsv"
python3 - "$ROWS" <<'PY'
import math, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
print("| model | bpw | predicted loss | KLD TinyStories | KLD WikiText-2 |")
print("|---|---|---|---|---|")
for name, bpw, pred, k in rows:
    a, b = k.split()
    print(f"| {name} | {bpw} | {pred} | {a} | {b} |")
def rank(v):
    o = sorted(range(len(v)), key=lambda i: v[i]); r = [0.0] * len(v)
    for p, i in enumerate(o): r[i] = p
    return r
def pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sx = math.sqrt(sum((a - mx) ** 2 for a in x)); sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / (sx * sy)
pred = [float(r[2]) for r in rows]
for j, name in enumerate(["TinyStories", "WikiText-2"]):
    k = [float(r[3].split()[j]) for r in rows]
    print(f"\n{name}: Spearman {pearson(rank(pred), rank(k)):.3f}, Pearson of log-log {pearson([math.log(p) for p in pred], [math.log(x) for x in k]):.3f} over {len(rows)} models")
PY
