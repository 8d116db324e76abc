#!/usr/bin/env bash
# The relay's load and memory figures (BENCHMARKS.md, "Relay"; docs/RELAY.md
# §3.7), in one session: builds the four examples with --release, then runs
# each measurement with the machine's load average beside it. Everything
# listens on 127.0.0.1; every run is bounded in count and time (~6 minutes
# in all on the project's 2-core VM).
#
#   scripts/relay_bench.sh [quick]      # quick: fewer pairings, no 100,000 registrations
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${1:-}
N=30000; F=16000; P=8000; L=2048; R=100000
if [ "$quick" = quick ]; then N=8000; F=4000; P=2000; L=512; R=0; fi

cargo build --release -q -p devicelink-relay \
  --example relay_load --example relay_replay --example relay_memory --example store_bench
bin=${CARGO_TARGET_DIR:-target}/release/examples

run() { echo; echo "\$ $*"; echo "# uptime: $(uptime)"; "$@"; }

# 1. Full pairings, real crypto on both ends (clients in this process).
run "$bin/relay_load" --concurrency 1,64,512 --links $L
run "$bin/relay_load" --concurrency 1,64,512 --links $L --sqlite
run "$bin/relay_load" --concurrency 512 --links $L --child          # CPU split
run "$bin/relay_load" --arrivals 500 --links $((L * 2))             # open loop, half the capacity

# 2. Relay-only: pre-built pairings replayed by thin clients.
run "$bin/relay_replay" --floor --concurrency 256
run "$bin/relay_replay" --pairings $N --concurrency 256 --reuse --child
run "$bin/relay_replay" --pairings $N --concurrency 256 --reuse --child --sqlite
run "$bin/relay_replay" --pairings $N --concurrency 256 --reuse
run "$bin/relay_replay" --pairings $N --concurrency 256 --reuse --sqlite
run "$bin/relay_replay" --pairings $N --concurrency 256 --reuse --pin
run "$bin/relay_replay" --pairings $N --concurrency 256 --reuse --pin --sqlite
run "$bin/relay_replay" --pairings $F --concurrency 256 --child
run "$bin/relay_replay" --pairings $F --concurrency 256 --child --sqlite
run "$bin/relay_replay" --pairings $F --concurrency 256 --reuse --lists --child
run "$bin/relay_replay" --pairings $F --concurrency 256 --reuse --lists --child --sqlite
run "$bin/store_bench" --threads 64 --tokens 20000

# 3. HTTP long-poll.
run "$bin/relay_replay" --pairings $P --concurrency 256 --transport poll --child
run "$bin/relay_replay" --pairings $P --concurrency 256 --transport poll --child --sqlite
run "$bin/relay_replay" --pairings $P --concurrency 256 --transport poll-reqwest --child
run "$bin/relay_load" --concurrency 64 --links $L --transport poll --child

# 4. Memory.
run "$bin/relay_memory" --offers 10000 --ws-read-buffer 131072,4096,512 --registrations $R
run "$bin/relay_memory" --offers 10000 --registrations 0 --sqlite
echo; echo "# uptime: $(uptime)"
