#!/usr/bin/env bash
# Builds the browser companion's assets, devicelink-web/www/pkg/ (the .wasm
# and its wasm-bindgen JS glue), from source. The relay embeds them
# (include_bytes!), so they are committed: a fresh `cargo run -p
# devicelink-relay` serves the page without the wasm toolchain. CI runs
# this into a temporary directory and fails if the bytes differ from the
# committed ones (scripts/web_test.sh).
#
# Reproducible: the same rustc, clang and wasm-bindgen-cli give the same
# bytes on any machine and in any checkout directory (every path that could
# reach the binary is remapped; wasm-bindgen drops the name and producers
# sections). BUILD-INFO records the toolchain and the digests.
#
#   scripts/build_web.sh [OUT_DIR]      # default devicelink-web/www/pkg
#
# Needs: rustup target wasm32-unknown-unknown, clang and llvm-ar (ring's C
# parts), wasm-bindgen-cli at the lockfile's wasm-bindgen version.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd -P)"
out="${1:-devicelink-web/www/pkg}"

want="$(sed -n '/^name = "wasm-bindgen"$/{n;s/^version = "\(.*\)"$/\1/p;}' Cargo.lock)"
have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" || true
if [ "$have" != "$want" ]; then
  echo "build_web: need wasm-bindgen-cli $want (the lockfile's wasm-bindgen), found '${have:-none}':" >&2
  echo "  cargo install wasm-bindgen-cli --version $want" >&2
  exit 1
fi

cargo_home="$(cd "${CARGO_HOME:-$HOME/.cargo}" && pwd -P)"
rustup_home="$(cd "${RUSTUP_HOME:-$HOME/.rustup}" 2>/dev/null && pwd -P || echo /nonexistent-rustup)"
remap="--remap-path-prefix=$root=/devicelink --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$rustup_home=/rustup"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$remap"
export CC_wasm32_unknown_unknown="${CC_wasm32_unknown_unknown:-clang}"
export AR_wasm32_unknown_unknown="${AR_wasm32_unknown_unknown:-llvm-ar}"
export CFLAGS_wasm32_unknown_unknown="-ffile-prefix-map=$root=/devicelink -ffile-prefix-map=$cargo_home=/cargo"
export SOURCE_DATE_EPOCH=0

# Its own target directory: these flags differ from the test builds'.
cargo build --locked -q -p devicelink-web --target wasm32-unknown-unknown \
  --profile web --target-dir target/wasm-page
mkdir -p "$out"
wasm-bindgen --target web --no-typescript --remove-name-section --remove-producers-section \
  --out-dir "$out" target/wasm-page/wasm32-unknown-unknown/web/devicelink_web.wasm

{
  echo "# Built by scripts/build_web.sh; CI rebuilds and compares."
  rustc --version
  "$CC_wasm32_unknown_unknown" --version | head -1
  wasm-bindgen --version
  (cd "$out" && sha256sum devicelink_web_bg.wasm devicelink_web.js)
} > "$out/BUILD-INFO"
wasm_bytes=$(wc -c < "$out/devicelink_web_bg.wasm")
gz_bytes=$(gzip -9 -n -c "$out/devicelink_web_bg.wasm" | wc -c)
echo "build_web: $out/devicelink_web_bg.wasm $wasm_bytes bytes, $gz_bytes gzipped (gzip -9)"
