#!/usr/bin/env bash
# The size-budget headline on SmolLM2-135M: lowbit's --target-bpw plan against each single method
# at the same whole-model size, scored on two texts (WikiText-2 test and PTB test: ppl and KLD vs
# the float model), plus the plans in llama-perplexity's convention next to llama.cpp's types.
# Writes docs/results-budget.md (tables, commands, machine, date).
#
#   bash benches/budget.sh                  # everything (hours on 2 cores)
#   PHASE=singles bash benches/budget.sh    # only the single-method rows; PHASE=plans, PHASE=report
#
# Every finished row is kept under $LOWBIT_BENCH_DIR/budget (a rerun skips it; remove the
# directory to start over). MODEL: the f32 SmolLM2 checkpoint benches/headline.sh imports.
#
# Budgets: BUDGETS entries "LIN/TABLE" name a single setting: every linear at LIN (bits:group)
# and the tied embedding table at TABLE (rtn, bits:group). Its whole-model bpw is the budget the
# plan gets, so the plan and the single methods have the same size (within the plan's rounding).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
WORK=${LOWBIT_BENCH_DIR:-$HOME/.cache/lowbit-bench}
MODEL=${MODEL:-$WORK/smollm2-f32}
BUDGETS=${BUDGETS:-2:64/4:32 3:128/4:32 3:32/4:32 4:64/4:32}
# Extra plans at a budget of their own (whole-model bpw), for the llama.cpp comparison.
EXTRA_BPW=${EXTRA_BPW:-5.1}
SINGLE=${SINGLE:-rtn awq gptq}
# Methods of the plans: gptq, and awq+gptq (the same sensitivity pass; written with AWQ's
# transform in front of GPTQ).
PLAN_METHODS=${PLAN_METHODS:-gptq awq+gptq}
WINDOWS=${WINDOWS:-4}
CTX=${CTX:-2048}
SAMPLES=${SAMPLES:-32}
PHASE=${PHASE:-all}
NICE=${NICE:-nice -n 10}
# Extra --target-bpw flags, e.g. PLAN_ARGS="--plan-bits 2,3,4,5,6".
PLAN_ARGS=${PLAN_ARGS:-}
CALIB=(--calib calib/general.toml --data-dir "$SHARED/data" --calib-samples "$SAMPLES" --calib-seqlen 512)
TEXTS=("$SHARED/data/wikitext2/wikitext2-test.hf-joined.txt" "$SHARED/data/ptb/ptb.test.txt")
WIKI_RAW=$SHARED/data/wikitext2/wiki.test.raw
OUT=$WORK/budget
mkdir -p "$OUT"
if [ -z "${LOWBIT:-}" ]; then
    cargo build --release -q
    LOWBIT=./target/release/lowbit
fi
REV=$(git describe --always --dirty 2>/dev/null || echo "?")
MACHINE="$(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"

# score DIR: writes DIR.score ("ppl kld" per text, then the llama.cpp-convention ppl) once.
score() {
    [ -s "$1.score" ] && return
    local s=""
    for t in "${TEXTS[@]}"; do
        s="$s $($NICE $LOWBIT eval --model "$1" --reference "$MODEL" --text "$t" --ctx "$CTX" --max-windows "$WINDOWS" --json 2>/dev/null |
            python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.4f %.5f" % (d["ppl"], d["kld"]))')"
    done
    s="$s $($NICE $LOWBIT eval --model "$1" --text "$WIKI_RAW" --ctx 512 --convention llamacpp --max-windows 16 --json 2>/dev/null |
        python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])')"
    echo "$s" > "$1.score"
}
# quant NAME ARGS...: one quantize run (kept when done), then its score.
quant() {
    local d=$OUT/$1; shift
    # Another run of this script (a second stream) holds the row: leave it to that one.
    [ -s "$d.json" ] || mkdir "$d.lock" 2>/dev/null || { echo "$(basename "$d"): running elsewhere" >&2; return 0; }
    if [ ! -s "$d.json" ]; then
        echo "$(date -u +%H:%M) quantize $(basename "$d")" >&2
        $NICE $LOWBIT quantize --model "$MODEL" --out "$d" "${CALIB[@]}" --force --json "$@" > "$d.json.tmp"
        mv "$d.json.tmp" "$d.json"
    fi
    score "$d"
    rmdir "$d.lock" 2>/dev/null || true
}
bpw_of() { python3 -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["model_bpw"])' "$1"; }
plan_name() { if [ "$1" = gptq ]; then echo plan; else echo "plan-$1"; fi; }
tag() { echo "w${1%%/*}-t${1##*/}" | tr ':' 'g'; }

if [ "$PHASE" = all ] || [ "$PHASE" = singles ]; then
    for bud in $BUDGETS; do
        lin=${bud%%/*}; tab=${bud##*/}
        for m in $SINGLE; do
            quant "$m-$(tag "$bud")" --method "$m" --bits "${lin%%:*}" --group-size "${lin##*:}" --override "embed_tokens=rtn:$tab"
        done
    done
fi
if [ "$PHASE" = all ] || [ "$PHASE" = plans ]; then
    targets=""
    for bud in $BUDGETS; do
        lin=${bud%%/*}; tab=${bud##*/}
        t=$($LOWBIT quantize --model "$MODEL" --out "$OUT/probe" --method rtn --bits "${lin%%:*}" --group-size "${lin##*:}" \
            --override "embed_tokens=rtn:$tab" --dry-run --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_bpw"])')
        targets="$targets $(tag "$bud")=$t"
    done
    for x in $EXTRA_BPW; do targets="$targets bpw$x=$x"; done
    for pm in $PLAN_METHODS; do
        for nt in $targets; do
            # shellcheck disable=SC2086
            quant "$(plan_name "$pm")-${nt%%=*}" --method "$pm" --target-bpw "${nt##*=}" --sensitivity-cache "$OUT/sensitivity.json" $PLAN_ARGS
        done
    done
fi
[ "$PHASE" = all ] || [ "$PHASE" = report ] || exit 0

FP=$(for t in "${TEXTS[@]}"; do $NICE $LOWBIT eval --model "$MODEL" --text "$t" --ctx "$CTX" --max-windows "$WINDOWS" --json 2>/dev/null |
    python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["ppl"])'; done | tr '\n' ' ')
FP_RAW=$($NICE $LOWBIT eval --model "$MODEL" --text "$WIKI_RAW" --ctx 512 --convention llamacpp --max-windows 16 --json 2>/dev/null |
    python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["ppl"])')
row() { # name label
    local d=$OUT/$1
    [ -s "$d.score" ] || return 0
    # shellcheck disable=SC2046
    set -- "$2" "$(bpw_of "$d.json")" $(cat "$d.score")
    echo "| $1 | $2 | $3 | $4 | $5 | $6 | $7 |"
}
{
    echo "# Size budgets on SmolLM2-135M-Instruct: --target-bpw against single methods"
    echo
    echo "Generated by \`bash benches/budget.sh\` on $MACHINE, lowbit $REV, $(date -u +%Y-%m-%d)."
    echo "Calibration for every row: \`${CALIB[*]}\` (PTB valid 2 : TinyStories 1 : Tiny Shakespeare 1),"
    echo "never an eval text. Eval: ctx $CTX, the first $WINDOWS windows of WikiText-2 test (HF rows joined)"
    echo "and of PTB test; KLD = KL(P_FP ‖ P_quantized) per scored token, vs the f32 model. FP ppl: WikiText-2"
    echo "${FP% * }, PTB ${FP#* }. bpw = whole-model bits per weight: all stored bytes × 8 / all 134.5 M"
    echo "parameters, the tied embedding table (28.3 M) included. Each budget is the size of a single"
    echo "setting: every linear at LIN, the embedding table at rtn TABLE; the plan gets the same size."
    echo "The last column is llama-perplexity's convention (ctx 512, first 16 chunks of wiki.test.raw;"
    echo "FP $FP_RAW), the one llama.cpp's numbers below use."
    echo
    for bud in $BUDGETS; do
        t=$(tag "$bud")
        echo "## Budget: linears ${bud%%/*}, table ${bud##*/} ($(bpw_of "$OUT/rtn-$t.json" 2>/dev/null || echo '?') bpw)"
        echo
        echo "| model | bpw | wiki ppl | wiki KLD | ptb ppl | ptb KLD | wiki.test.raw ppl (llama.cpp conv.) |"
        echo "|---|---|---|---|---|---|---|"
        for m in rtn awq gptq awq+gptq; do
            [ -s "$OUT/$m-$t.score" ] && row "$m-$t" "$m, every linear ${bud%%/*}"
        done
        row "plan-$t" "**plan** (\`--method gptq --target-bpw\`)"
        row "plan-awq+gptq-$t" "**plan** (\`--method awq+gptq --target-bpw\`)"
        echo
    done
    for x in $EXTRA_BPW; do
        echo "## Plan at $x bpw, next to llama.cpp"
        echo
        echo "| model | bpw | wiki ppl | wiki KLD | ptb ppl | ptb KLD | wiki.test.raw ppl (llama.cpp conv.) |"
        echo "|---|---|---|---|---|---|---|"
        row "plan-bpw$x" "**plan** (\`--method gptq --target-bpw $x\`)"
        row "plan-awq+gptq-bpw$x" "**plan** (\`--method awq+gptq --target-bpw $x\`)"
        echo
    done
    echo "llama.cpp's types on the same model and protocol (ctx 512, 16 chunks of wiki.test.raw, F32 29.25;"
    echo "the GGUF issue's measurements with imatrix): Q4_0 32.78, IQ4_XS 33.06 (≈ 4.5–5.4 bpw), Q2_K 35.77,"
    echo "IQ3_XXS 35.52 (≈ 5.1 bpw; SmolLM2's 576-wide rows fall back to larger types, hence the size)."
    echo
    echo "Commands: \`lowbit quantize --model \$MODEL --method gptq --target-bpw B --sensitivity-cache sensitivity.json ${CALIB[*]} $PLAN_ARGS\`;"
    echo "the single settings \`--method M --bits b --group-size g --override 'embed_tokens=rtn:B:G'\` with the same calibration;"
    echo "\`lowbit eval --model DIR --reference \$MODEL --text TEXT --ctx $CTX --max-windows $WINDOWS\` and"
    echo "\`lowbit eval --model DIR --text wiki.test.raw --ctx 512 --convention llamacpp --max-windows 16\`."
} | sed "s#$WORK#\$LOWBIT_BENCH_DIR#g; s#$HOME#~#g" > docs/results-budget.md
echo "wrote docs/results-budget.md"
