#!/usr/bin/env bash
# Linking by typed code: its overhead over its own floor in instructions
# (deterministic, unlike wall-clock medians), as scripts/instruction_ratio.sh
# does for the QR link. Needs valgrind (Debian: apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-50}"
cargo build --release --example code_cost -q
bin=target/release/examples/code_cost
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
floor=$(( $(count floor "$N") - $(count floor 0) ))
link=$(( $(count link "$N") - $(count link 0) ))
setup=$(( $(count setup "$N") - $(count setup 0) ))
python3 - "$N" "$floor" "$link" "$setup" <<'PY'
import sys
n, floor, link, setup = map(int, sys.argv[1:])
print(f"per link by code: code_floor {floor / n:,.0f} instructions, "
      f"full_link_by_code {(link - setup) / n:,.0f} (+ setup {setup / n:,.0f} not counted)")
print(f"full_link_by_code / code_floor (instructions) = {(link - setup) / floor:.4f}")
PY
