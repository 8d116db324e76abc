//! Linking by typed code beside its own floor, in one criterion run:
//!
//! ```text
//! cargo bench --bench code
//! python3 scripts/bench_ratio.py          # prints full_link_by_code / code_floor
//! ```
//!
//! `primitives/code_floor` performs exactly the primitive operations of one
//! link by code (both sides, code shown to slot active), with the same
//! crates and input sizes, and nothing else: SPAKE2 on both sides
//! (`spake2`), the subgroup check of each received SPAKE2 point, the key
//! schedule and the confirmation key on both sides, three MACs made and
//! three checked, two AEAD seals and two opens, the account's list
//! signature and its verification, the device's Confirm signature and its
//! verification, and the SHA-256 digests the protocol names.
//! `link/full_link_by_code / primitives/code_floor` is the protocol's
//! overhead (target ≤ 1.10).

#[path = "common/code.rs"]
mod code_common;
mod common;

use code_common::{code_floor, full_link_by_code};
use common::*;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn code(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let inp = floor_inputs(&mut rng);
    let f = link_fixture();
    {
        let mut g = c.benchmark_group("primitives");
        g.bench_function("code_floor", |b| b.iter(|| code_floor(&inp, &mut rng)));
        g.finish();
    }
    let mut g = c.benchmark_group("link");
    g.bench_function("full_link_by_code", |b| {
        b.iter_batched(
            || (f.account.clone(), f.identity.clone()),
            |(mut account, identity)| full_link_by_code(&mut account, identity, &f, &mut rng),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

#[allow(missing_docs)]
mod groups {
    use super::*;
    criterion_group!(benches, code);
}
criterion_main!(groups::benches);
