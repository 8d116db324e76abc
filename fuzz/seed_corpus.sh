#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ with seed inputs:
#   1. the committed seeds in fuzz/seeds/<target>/ (a handful each), and
#   2. the full generated set: the known-answer vectors of
#      tests/vectors/devicelink-v2.json plus saved states, signed structures
#      (chained, forked and stale device lists, heartbeats naming them) and an
#      exported audit log with its prefixes from the seeded fixture run
#      (examples/seed_corpus.rs; it fails if the fixture no longer reproduces
#      vector 0).
# Pass --seeds-only to skip step 2 (no build).
# Regenerate the committed seeds (after a protocol or format change) with
#   cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus -- --small fuzz/seeds
# Not used by the main crate's build or CI.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
targets=(offer_text handshake_messages persisted_state signed_structures audit_log code_messages)
for t in "${targets[@]}"; do
  mkdir -p "$here/corpus/$t"
  if [ -d "$here/seeds/$t" ]; then
    cp "$here/seeds/$t/"* "$here/corpus/$t/"
  fi
done
if [ "${1:-}" != "--seeds-only" ]; then
  cargo run --quiet --manifest-path "$here/Cargo.toml" --example seed_corpus -- "$here/corpus"
fi
for t in "${targets[@]}"; do
  echo "$t: $(ls "$here/corpus/$t" | wc -l) files"
done
