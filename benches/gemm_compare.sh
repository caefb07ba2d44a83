#!/usr/bin/env bash
# GEMM comparison for the CPU forward pass (see docs/gemm.md): faer 0.24 vs gemm 0.19 vs ndarray 0.16
# (matrixmultiply) vs system OpenBLAS, 1 and 2 threads, SmolLM2-135M shapes. Prints markdown tables.
#
# The lowbit crate gets no new dependency: this script writes a throwaway cargo project under
# ${TMPDIR:-/tmp}/lowbit-gemm-compare (reused between runs, so a rerun only rebuilds what changed),
# copies benches/gemm_compare/main.rs into it, builds it twice with --release (once as is, once with
# gemm's `x86-v4` feature for its AVX-512 kernels, shown as an extra column) and runs it.
#
# Usage: bash benches/gemm_compare.sh [--rounds N] [--threads 1,2] [--quick]
#   (arguments are passed to the benchmark; default 3 rounds, threads 1,2)
# Env: GEMM_COMPARE_NO_V4=1 skips the x86-v4 build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
src="$here/gemm_compare/main.rs"

# OpenBLAS from Debian (openblas-src's `system` feature links it through pkg-config / -lopenblas).
if ! { dpkg-query -W -f='${Status}' libopenblas-dev 2>/dev/null | grep -q "ok installed"; }; then
    echo "gemm_compare: libopenblas-dev is missing; installing it with apt-get (needs root)" >&2
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libopenblas-dev >&2
fi

proj="${TMPDIR:-/tmp}/lowbit-gemm-compare"
mkdir -p "$proj/src"
cat > "$proj/Cargo.toml" <<'EOF'
[package]
name = "gemm-compare"
version = "0.0.0"
edition = "2021"
publish = false

[[bin]]
name = "gemm-compare"
path = "src/main.rs"

[features]
default = ["compare"]
compare = []
gemm-v4 = ["gemm/x86-v4"]

[dependencies]
faer = "0.24"
gemm = "0.19"
ndarray = { version = "0.16", features = ["matrixmultiply-threading"] }
cblas-sys = "0.1"
openblas-src = { version = "0.10", default-features = false, features = ["cblas", "system", "rustls"] }
# (`rustls` only because openblas-build, a build-dependency, refuses to compile without a TLS
# feature; with `system` nothing is downloaded.)
rayon = "1.10"

[profile.release]
codegen-units = 16

[workspace]
EOF
cp "$src" "$proj/src/main.rs"
# Same versions of the shared crates (faer, gemm, ndarray, matrixmultiply, rayon) as lowbit's lock.
if [ ! -f "$proj/Cargo.lock" ] && [ -f "$root/Cargo.lock" ]; then
    cp "$root/Cargo.lock" "$proj/Cargo.lock"
fi

export CARGO_TARGET_DIR="$proj/target"
echo "gemm_compare: building in $proj" >&2
(cd "$proj" && cargo build --release -q)
cp "$CARGO_TARGET_DIR/release/gemm-compare" "$proj/gemm-compare"
v4=""
if [ "${GEMM_COMPARE_NO_V4:-0}" != 1 ]; then
    if (cd "$proj" && cargo build --release -q --features gemm-v4); then
        cp "$CARGO_TARGET_DIR/release/gemm-compare" "$proj/gemm-compare-v4"
        v4="$proj/gemm-compare-v4"
    else
        echo "gemm_compare: the x86-v4 build of gemm failed; skipping that column" >&2
    fi
fi

echo "gemm_compare: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs; $(uptime)" >&2
for c in faer gemm ndarray matrixmultiply private-gemm-x86; do
    v=$(cd "$proj" && cargo tree -q -i "$c" --depth 0 2>/dev/null | head -1 || true)
    [ -n "$v" ] && echo "gemm_compare: using $v" >&2
done
echo "gemm_compare: OpenBLAS package $(dpkg-query -W -f='${Version}' libopenblas0-pthread 2>/dev/null || echo '?')" >&2
GEMM_V4_EXE="$v4" "$proj/gemm-compare" "$@"
echo "gemm_compare: after the run: $(uptime)" >&2
