//! Runs the benches' `floor` (the primitive operations of one full link) or
//! `full_link` (one complete link through the public API) N times, so an
//! instruction counter can compare them without timing noise:
//!
//! ```text
//! scripts/instruction_ratio.sh        # valgrind --tool=callgrind, prints the ratio
//! cargo run --release --example link_cost -- link 100
//! ```
//!
//! Modes: `floor N`, `peer N` (the peers' common floor), `link N`, and
//! `setup N` (only the per-link setup that
//! `link` also performs: cloning the fresh account and identity), so that
//! `(link - setup) / floor` is the protocol's overhead in instructions.

#[path = "../benches/common/mod.rs"]
mod common;

use std::hint::black_box;

use common::{floor, floor_inputs, full_link, link_fixture, peer_floor};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .ok_or("usage: link_cost floor|peer|link|setup N")?;
    let n: u32 = args.next().ok_or("missing N")?.parse()?;
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    match mode.as_str() {
        "floor" => {
            let inputs = floor_inputs(&mut rng);
            for _ in 0..n {
                floor(&inputs, &mut rng);
            }
        }
        "peer" => {
            let inputs = floor_inputs(&mut rng);
            for _ in 0..n {
                peer_floor(&inputs, &mut rng);
            }
        }
        "link" => {
            let f = link_fixture();
            for _ in 0..n {
                let mut account = f.account.clone();
                full_link(&mut account, f.identity.clone(), &f, &mut rng);
            }
        }
        "setup" => {
            let f = link_fixture();
            for _ in 0..n {
                black_box((f.account.clone(), f.identity.clone()));
            }
        }
        other => return Err(format!("unknown mode {other:?}").into()),
    }
    Ok(())
}
