#!/usr/bin/env bash
# The protocol's overhead in instructions (deterministic, unlike wall-clock
# medians): callgrind counts the instructions of N full links, of the per-link
# setup, and of N floors (the primitive operations of a link), each minus its
# N=0 baseline. Needs valgrind (Debian: apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-50}"
cargo build --release --example link_cost -q
bin=target/release/examples/link_cost
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
floor=$(( $(count floor "$N") - $(count floor 0) ))
peer=$(( $(count peer "$N") - $(count peer 0) ))
link=$(( $(count link "$N") - $(count link 0) ))
setup=$(( $(count setup "$N") - $(count setup 0) ))
python3 - "$N" "$floor" "$link" "$setup" "$peer" <<'PY'
import sys
n, floor, link, setup, peer = map(int, sys.argv[1:])
print(f"per link: floor {floor / n:,.0f} instructions, full_link {(link - setup) / n:,.0f} "
      f"(+ setup {setup / n:,.0f} not counted)")
print(f"full_link / floor (instructions) = {(link - setup) / floor:.4f}")
print(f"peer floor {peer / n:,.0f} instructions; full_link / peer_floor = {(link - setup) / peer:.4f}, "
      f"floor / peer_floor = {floor / peer:.4f}")
PY
