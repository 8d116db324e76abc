//! Runs the code bench's `code_floor` (the primitive operations of one link
//! by code) or `full_link_by_code` (one complete link by code through the
//! public API) N times, so an instruction counter can compare them without
//! timing noise:
//!
//! ```text
//! scripts/code_instruction_ratio.sh       # valgrind --tool=callgrind, prints the ratio
//! cargo run --release --example code_cost -- link 100
//! ```
//!
//! Modes: `floor N`, `link N`, and `setup N` (only the per-link setup that
//! `link` also performs), so that `(link - setup) / floor` is the overhead.

#[path = "../benches/common/code.rs"]
mod code_common;
#[path = "../benches/common/mod.rs"]
mod common;

use std::hint::black_box;

use code_common::{code_floor, full_link_by_code};
use common::{floor_inputs, link_fixture};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or("usage: code_cost floor|link|setup N")?;
    let n: u32 = args.next().ok_or("missing N")?.parse()?;
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    match mode.as_str() {
        "floor" => {
            let inputs = floor_inputs(&mut rng);
            for _ in 0..n {
                code_floor(&inputs, &mut rng);
            }
        }
        "link" => {
            let f = link_fixture();
            for _ in 0..n {
                let mut account = f.account.clone();
                full_link_by_code(&mut account, f.identity.clone(), &f, &mut rng);
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
