#!/usr/bin/env bash
# The browser companion's figures for BENCHMARKS.md, from one run:
#   - the full link (both ends, real crypto) and the curve operations it
#     is made of, native (release) and in headless Chromium (the page's
#     wasm: the `web` profile, without the precomputed tables), alternated
#     three times so both see the same machine; and the wasm with tables;
#   - the page's .wasm size, raw and gzipped (gzip -9);
#   - page load to the first QR code on loopback (release relay).
# Run scripts/web_test.sh once first (it installs the tools).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export CC_wasm32_unknown_unknown=clang AR_wasm32_unknown_unknown=llvm-ar
export CHROMEDRIVER="$(command -v chromedriver)"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
export WASM_BINDGEN_TEST_TIMEOUT=300

figures() { grep -oE '(full_link|curve_ops) [^:]+: median [0-9.]+ us, min [0-9.]+ us' || true; }
native() {
  cargo test -q --release -p devicelink-web --features bench,precomputed-tables \
    --test bench -- --nocapture --test-threads 1 2>&1 | figures
}
wasm() {
  (cd devicelink-web && cargo test --target wasm32-unknown-unknown --target-dir ../target/wasm \
    --profile web --features "$1" --test bench -- --nocapture 2>&1 | figures)
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(rustc --version)"
# Build everything first, so the timed runs follow each other closely.
native >/dev/null
wasm bench >/dev/null
wasm bench,precomputed-tables >/dev/null
for round in 1 2 3; do
  echo "--- round $round"
  native
  wasm bench
done
echo "--- the wasm with the precomputed tables (not shipped)"
wasm bench,precomputed-tables

echo "--- the page's .wasm"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
scripts/build_web.sh "$tmp/pkg"
cmp "$tmp/pkg/devicelink_web_bg.wasm" devicelink-web/www/pkg/devicelink_web_bg.wasm \
  && echo "(the committed one)"

echo "--- page load to the first QR code (release relay, loopback)"
DEVICELINK_E2E_PROFILE=release cargo test -q -p devicelink-web --features e2e --test e2e \
  -- --nocapture 2>&1 | grep -E "page load|last load|logout shown"
