#!/usr/bin/env bash
# The browser companion's checks (devicelink-web), run by .ci/run. Installs
# what it needs and never skips: a tool it cannot install is a failure.
#
#   1. the page's assets rebuilt from source and compared with the
#      committed ones (devicelink-web/www/pkg, scripts/build_web.sh);
#   2. clippy on devicelink-web with its test features, natively and for
#      wasm32 (its e2e and bench targets are outside --workspace's reach);
#   3. wasm-bindgen-test in headless Chromium: a whole link inside the
#      browser (tests/browser.rs);
#   4. the end-to-end test: the relay binary serving the page, headless
#      Chromium over chromedriver, the phone example (tests/e2e.rs).
#
#   scripts/web_test.sh                 # all of it
#   scripts/web_test.sh --screenshots   # the same, and rewrite docs/screenshots/*.png
#
# Needs root (or the tools already present) for apt-get: clang, llvm,
# chromium, chromium-driver.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

screenshots=""
[ "${1:-}" = "--screenshots" ] && screenshots="docs/screenshots"

step() { printf '\n=== web: %s\n' "$*"; }

step "install: clang, llvm-ar, chromium, chromedriver, the wasm32 target, wasm-bindgen-cli"
missing=()
command -v clang >/dev/null || missing+=(clang)
command -v llvm-ar >/dev/null || missing+=(llvm)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
rustup target list --installed | grep -qx wasm32-unknown-unknown \
  || rustup target add wasm32-unknown-unknown
want="$(sed -n '/^name = "wasm-bindgen"$/{n;s/^version = "\(.*\)"$/\1/p;}' Cargo.lock)"
have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" || true
if [ "$have" != "$want" ]; then
  cargo install -q wasm-bindgen-cli --version "$want"
fi
chromium --version 2>/dev/null | tail -1
chromedriver --version
wasm-bindgen --version

export CC_wasm32_unknown_unknown=clang AR_wasm32_unknown_unknown=llvm-ar
export CHROMEDRIVER="$(command -v chromedriver)"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
export WASM_BINDGEN_TEST_TIMEOUT=120

step "page assets: rebuilt from source, compared with the committed ones"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
scripts/build_web.sh "$tmp/pkg"
if ! diff -r devicelink-web/www/pkg "$tmp/pkg"; then
  echo >&2
  echo "web: devicelink-web/www/pkg is not what the sources build (above: committed vs rebuilt)." >&2
  echo "web: run scripts/build_web.sh and commit devicelink-web/www/pkg." >&2
  exit 1
fi
echo "the committed page assets are what the sources build"

step "clippy: devicelink-web with its test features (native, then wasm32)"
cargo clippy -q -p devicelink-web --all-targets --features e2e,bench -- -D warnings
cargo clippy -q -p devicelink-web --all-targets --features bench \
  --target wasm32-unknown-unknown --target-dir target/wasm -- -D warnings

step "wasm-bindgen-test: a whole link inside headless Chromium"
(cd devicelink-web && cargo test --target wasm32-unknown-unknown --target-dir ../target/wasm --test browser)

step "end to end: relay binary + page in headless Chromium + phone example"
DEVICELINK_SCREENSHOTS="$screenshots" \
  timeout 600 cargo test -q -p devicelink-web --features e2e --test e2e -- --nocapture

step "done"
