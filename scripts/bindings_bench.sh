#!/usr/bin/env bash
# The bindings' overhead, measured in one run: N whole links in process
# (phone and companion, every output carried by hand, no relay) in Rust
# through the core's host API, in Python through the wheel, and in Kotlin on
# the JVM through the generated bindings; all release builds, three rounds
# alternating the languages. Prints each round and, last,
#   bindings bench: a link in Rust R µs, Python P µs (p×), Kotlin K µs (k×)
# with the medians of the rounds. Installs what scripts/test_bindings.sh
# installs (run that first, or let this run it).
#
#   scripts/bindings_bench.sh [N]      # N links a round, 300 by default
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd -P)"
export CARGO_TERM_COLOR=never
n="${1:-300}"
target="${CARGO_TARGET_DIR:-$root/target}"
work="$target/bindings"
kotlin="$work/kotlin-compiler"
if [ ! -x "$work/venv/bin/maturin" ] || [ ! -x "$kotlin/bin/kotlinc" ]; then
  scripts/test_bindings.sh
fi

cargo build -q --release -p devicelink-ffi --features bindgen --lib --bin uniffi-bindgen --example link_bench
lib="$target/release/libdevicelink_ffi.so"
"$work/venv/bin/maturin" build -q --release -m devicelink-ffi/Cargo.toml --out "$work/wheels-release" 2>&1 | tail -1
"$work/venv/bin/pip" install -q --force-reinstall "$work"/wheels-release/devicelink-*.whl
rm -rf "$work/kotlin-src-release"
"$target/release/uniffi-bindgen" generate --no-format --library "$lib" --language kotlin \
  --out-dir "$work/kotlin-src-release" >/dev/null
cp_jars="/usr/share/java/jna.jar:$kotlin/lib/kotlinx-coroutines-core-jvm.jar"
"$kotlin/bin/kotlinc" -nowarn -cp "$cp_jars" \
  "$work"/kotlin-src-release/uniffi/devicelink/devicelink.kt devicelink-ffi/kotlin/LinkTest.kt \
  -d "$work/kotlin-bench.jar" 2>&1 | grep -v '^warning' || true
test -f "$work/kotlin-bench.jar"

results="$work/bench.txt"
: >"$results"
for round in 1 2 3; do
  "$target/release/examples/link_bench" "$n" | tee -a "$results"
  (cd devicelink-ffi/python && "$work/venv/bin/python" bench.py "$n") | tee -a "$results"
  java -Djna.library.path="$(dirname "$lib")" \
    -cp "$work/kotlin-bench.jar:$cp_jars:$kotlin/lib/kotlin-stdlib.jar" LinkTestKt bench "$n" \
    | tee -a "$results"
done

python3 - "$results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\w+): (\d+) links in ([\d.]+) ms", line)
    if m:
        runs.setdefault(m.group(1), []).append(float(m.group(3)) * 1000 / int(m.group(2)))
rounds = len(runs["rust"])
ratios = {lang: statistics.median(runs[lang][i] / runs["rust"][i] for i in range(rounds)) for lang in ("python", "kotlin")}
us = {lang: statistics.median(v) for lang, v in runs.items()}
print(f"bindings bench: a link in Rust {us['rust']:.0f} µs, Python {us['python']:.0f} µs "
      f"({ratios['python']:.2f}×), Kotlin {us['kotlin']:.0f} µs ({ratios['kotlin']:.2f}×)")
PY
