#!/usr/bin/env bash
# Short libFuzzer run of every cargo-fuzz target in fuzz/ (see fuzz/README.md), starting from the
# committed seed corpora and crash reproducers; fails if any target crashes, hangs (-timeout) or
# runs out of memory (-rss_limit_mb). The corpora are copied to a temp dir first, so the run
# leaves the tree clean (crash inputs, if any, land in the gitignored fuzz/artifacts/).
#
#   FUZZ_SECONDS   seconds per target (default 30)
#
# Needs cargo-fuzz (installed here if missing) and a nightly toolchain; without nightly it falls
# back to the stable toolchain with RUSTC_BOOTSTRAP=1, which accepts the -Z flags cargo-fuzz uses.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# anyhow captures a backtrace per error when RUST_BACKTRACE is set: errors are the common case
# in a fuzz run, so only panics get one.
export RUST_LIB_BACKTRACE=0
seconds=${FUZZ_SECONDS:-30}

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if cargo +nightly --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
else
    echo "ci-fuzz: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi

# Default cargo-fuzz build: optimized, debug assertions and overflow checks on, AddressSanitizer.
# 16 codegen units build much faster than cargo-fuzz's default of 1 for a short run.
"${fuzz[@]}" build --codegen-units 16

declare -A max_len=([safetensors_dir]=4096 [gguf]=8192 [config]=4096 [packed]=4096)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=()
for t in safetensors_dir gguf config packed; do
    mkdir -p "$tmp/$t"
    cp fuzz/corpus/"$t"/* "$tmp/$t"/
    dirs=("$tmp/$t")
    if [ -d fuzz/regressions/"$t" ]; then
        dirs+=(fuzz/regressions/"$t")
    fi
    echo "ci-fuzz: $t for ${seconds}s"
    if ! "${fuzz[@]}" run --codegen-units 16 "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -max_len="${max_len[$t]}" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 2>"$tmp/$t.log"; then
        tail -n 60 "$tmp/$t.log"
        failed+=("$t")
    else
        grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$tmp/$t.log" || true
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "ci-fuzz: FAILED: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
    exit 1
fi
echo "ci-fuzz: all targets ran ${seconds}s without a crash"
