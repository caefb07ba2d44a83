#!/usr/bin/env bash
# Prints one SHA-256 over the sources a GPU bundle is built from: every file under src/, kernels/
# and benches/ (editor leftovers *.tmp / *~ excluded), Cargo.toml, Cargo.lock and the bundle script.
# scripts/gpu-bundle.sh records it in the bundle; scripts/gpu-check.sh recomputes it on the GPU
# machine and refuses a bundle built from other sources. Needs only find, sort and sha256sum.
#
#   scripts/source-hash.sh [ROOT]      (default: the checkout this script belongs to)
set -euo pipefail
ROOT=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
cd "$ROOT"
{
    find src kernels benches -type f ! -name '*.tmp' ! -name '*~' -print
    printf '%s\n' Cargo.toml Cargo.lock scripts/gpu-bundle.sh
} | LC_ALL=C sort | while IFS= read -r f; do
    [[ -f $f ]] || { echo "source-hash: $ROOT/$f missing" >&2; exit 1; }
    printf '%s  %s\n' "$(sha256sum < "$f" | cut -d' ' -f1)" "$f"
done | sha256sum | cut -d' ' -f1
