#!/usr/bin/env bash
# The language bindings (devicelink-ffi, UniFFI), built from source and
# tested, run by .ci/run. Installs what it needs and never skips: a tool it
# cannot install is a failure.
#
#   1. Python: a wheel built with maturin (the crate's own uniffi-bindgen
#      generates the module), installed into a fresh venv, pytest
#      (devicelink-ffi/python/tests) against a real devicelink-relay;
#   2. Kotlin on the JVM: the generated Kotlin compiled with kotlinc (npm's
#      kotlin-compiler, which ships kotlinx-coroutines) with JNA (Debian's
#      libjna-java), devicelink-ffi/kotlin/LinkTest.kt run against a real
#      relay;
#   3. Swift: generated (no Swift toolchain here; docs/BINDINGS.md says how
#      to build it).
#
# Its last line is
#   bindings: python P passed, kotlin K passed, node N passed, browser B passed, swift generated
# (the npm package, issue 18 part 3, is not built yet: node and browser
# count 0, and say so above the line).
#
#   scripts/test_bindings.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd -P)"
export CARGO_TERM_COLOR=never
target="${CARGO_TARGET_DIR:-$root/target}"
work="$target/bindings"
mkdir -p "$work"

step() { printf '\n=== bindings: %s\n' "$*"; }

step "install: python venv with maturin and pytest, kotlin-compiler (npm), JNA (apt)"
if [ ! -x "$work/venv/bin/maturin" ] || [ ! -x "$work/venv/bin/pytest" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q "maturin>=1.9,<2" "pytest>=8"
fi
if [ ! -f /usr/share/java/jna.jar ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjna-java >/dev/null
fi
kotlin="$work/kotlin-compiler"
if [ ! -x "$kotlin/bin/kotlinc" ]; then
  rm -rf "$kotlin" "$work/kotlin-pack"
  mkdir -p "$work/kotlin-pack"
  (cd "$work/kotlin-pack" && npm pack --silent kotlin-compiler@2 >/dev/null)
  tar xzf "$work"/kotlin-pack/kotlin-compiler-*.tgz -C "$work/kotlin-pack"
  mv "$work/kotlin-pack/package" "$kotlin"
  chmod +x "$kotlin"/bin/*
fi
"$work/venv/bin/maturin" --version
"$kotlin/bin/kotlinc" -version 2>&1 | tail -1
java -version 2>&1 | head -1

step "docs: every python and kotlin block in docs/BINDINGS.md is the tests' own code"
python3 - <<'PY'
import re, sys
doc = open("docs/BINDINGS.md").read()
sources = {
    "python": open("devicelink-ffi/python/tests/test_devicelink.py").read(),
    "kotlin": open("devicelink-ffi/kotlin/LinkTest.kt").read(),
}
blocks = re.findall(r"```(python|kotlin)\n(.*?)```", doc, re.S)
missing = [lang for lang, code in blocks if code not in sources[lang]]
if missing or len(blocks) < 4:
    sys.exit(f"docs/BINDINGS.md: {len(missing)} of {len(blocks)} blocks are not the tests' code")
print(f"{len(blocks)} blocks, each verbatim in its test")
PY

step "build: the relay binary, the FFI library and its uniffi-bindgen"
cargo build -q -p devicelink-relay --bin devicelink-relay
cargo build -q -p devicelink-ffi --features bindgen --lib --bin uniffi-bindgen
relay_bin="$target/debug/devicelink-relay"
lib="$target/debug/libdevicelink_ffi.so"
bindgen="$target/debug/uniffi-bindgen"

# A relay on a free loopback port, for the Kotlin test (pytest starts its
# own); stopped on exit.
relay_pid=""
cleanup() { [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null || true; }
trap cleanup EXIT

step "kotlin: generated, compiled (kotlinc)"
rm -rf "$work/kotlin-src" "$work/kotlin-test.jar"
"$bindgen" generate --no-format --library "$lib" --language kotlin --out-dir "$work/kotlin-src" >/dev/null
cp_jars="/usr/share/java/jna.jar:$kotlin/lib/kotlinx-coroutines-core-jvm.jar"
"$kotlin/bin/kotlinc" -nowarn -cp "$cp_jars" \
  "$work"/kotlin-src/uniffi/devicelink/devicelink.kt devicelink-ffi/kotlin/LinkTest.kt \
  -d "$work/kotlin-test.jar" 2>&1 | grep -v '^warning' || true
test -f "$work/kotlin-test.jar"

step "python: the wheel (maturin), pytest (one test links a Kotlin companion to a Python phone)"
rm -rf "$work/wheels"
"$work/venv/bin/maturin" build -q -m devicelink-ffi/Cargo.toml --out "$work/wheels" 2>&1 | tail -1
"$work/venv/bin/pip" install -q --force-reinstall "$work"/wheels/devicelink-*.whl
python_log="$work/pytest.log"
# The cross-language test runs the Kotlin companion as a child process.
kotlin_device="java -Djna.library.path=$(dirname "$lib") -cp $work/kotlin-test.jar:$cp_jars:$kotlin/lib/kotlin-stdlib.jar LinkTestKt"
(cd devicelink-ffi/python && DEVICELINK_RELAY_BIN="$relay_bin" DEVICELINK_KOTLIN_DEVICE="$kotlin_device" \
  "$work/venv/bin/pytest" -q -p no:cacheprovider tests) | tee "$python_log"
python_passed="$(sed -n 's/^\([0-9][0-9]*\) passed.*/\1/p' "$python_log" | tail -1)"
if grep -Eq '[0-9]+ (failed|error)' "$python_log" || [ -z "$python_passed" ]; then
  echo "bindings: python tests failed" >&2
  exit 1
fi

step "kotlin: run on the JVM against a relay"
"$relay_bin" --listen 127.0.0.1:0 --memory >"$work/relay.out" 2>/dev/null &
relay_pid=$!
base=""
for _ in $(seq 100); do
  base="$(grep -o 'ws://127\.0\.0\.1:[0-9]*' "$work/relay.out" | head -1 || true)"
  [ -n "$base" ] && break
  sleep 0.1
done
test -n "$base"
kotlin_log="$work/kotlin.log"
timeout 300 java -Djna.library.path="$(dirname "$lib")" \
  -cp "$work/kotlin-test.jar:$cp_jars:$kotlin/lib/kotlin-stdlib.jar" LinkTestKt "$base" | tee "$kotlin_log"
kotlin_passed="$(sed -n 's/^kotlin: \([0-9][0-9]*\) passed$/\1/p' "$kotlin_log")"
test -n "$kotlin_passed"

step "swift: generated (built on macOS or with a Swift toolchain: docs/BINDINGS.md)"
rm -rf "$work/swift"
"$bindgen" generate --no-format --library "$lib" --language swift --out-dir "$work/swift" >/dev/null
for f in devicelink.swift devicelinkFFI.h devicelinkFFI.modulemap; do
  test -s "$work/swift/$f" || { echo "bindings: swift: $f missing" >&2; exit 1; }
done
ls "$work/swift"

echo
echo "bindings: the npm package (wasm-bindgen, TypeScript) is not built yet: node and browser count 0"
echo "bindings: python $python_passed passed, kotlin $kotlin_passed passed, node 0 passed, browser 0 passed, swift generated"
