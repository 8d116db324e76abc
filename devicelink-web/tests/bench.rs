//! Prints the time of one full link (both ends, real crypto), natively or
//! in the browser: the same Rust on both targets (`devicelink_web::bench`).
//! It asserts only that the links complete; the times are figures for
//! `BENCHMARKS.md`, printed by `scripts/web_bench.sh`.

use devicelink_web::bench::LinkFixture;

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

#[cfg(target_arch = "wasm32")]
mod clock {
    use wasm_bindgen::prelude::wasm_bindgen;

    #[wasm_bindgen]
    extern "C" {
        #[wasm_bindgen(js_namespace = performance, js_name = now)]
        fn performance_now() -> f64;
    }

    pub fn ms() -> f64 {
        performance_now()
    }

    pub fn print(line: &str) {
        wasm_bindgen_test::console_log!("{}", line);
    }

    pub const TARGET: &str = "wasm32 (Chromium)";
}

#[cfg(not(target_arch = "wasm32"))]
mod clock {
    use std::sync::OnceLock;
    use std::time::Instant;

    pub fn ms() -> f64 {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
    }

    pub fn print(line: &str) {
        println!("{line}");
    }

    pub const TARGET: &str = "native";
}

const BATCHES: usize = 15;
const PER_BATCH: u32 = 40;
const WARM_UP: u32 = 200;

/// Median and minimum per-call microseconds of `f` over the batches, after
/// a warm-up (the browser first runs the module on its baseline compiler
/// and tiers up to the optimising one while it runs).
fn time(mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..WARM_UP {
        f();
    }
    let mut per_call_us = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let t0 = clock::ms();
        for _ in 0..PER_BATCH {
            f();
        }
        per_call_us.push((clock::ms() - t0) * 1e3 / f64::from(PER_BATCH));
    }
    per_call_us.sort_by(f64::total_cmp);
    (per_call_us[BATCHES / 2], per_call_us[0])
}

/// The curve operations of one link (the core's `primitives/floor` has
/// these and the hashes and AEAD): 2 X25519 key generations and 2
/// Diffie-Hellman, 2 Ed25519 signatures and 2 verifications.
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn curve_operations_time() {
    use ed25519_dalek::{Signer, SigningKey};
    use rand_chacha::rand_core::SeedableRng;
    use std::hint::black_box;
    use x25519_dalek::{PublicKey, StaticSecret};

    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let peer = PublicKey::from(&StaticSecret::random_from_rng(&mut rng));
    let signer = SigningKey::generate(&mut rng);
    let verifier = signer.verifying_key();
    let msg = [7u8; 200];
    let sig = signer.sign(&msg);
    let (median, min) = time(|| {
        for _ in 0..2 {
            let s = StaticSecret::random_from_rng(&mut rng);
            black_box(PublicKey::from(&s));
            black_box(s.diffie_hellman(&peer));
            black_box(signer.sign(black_box(&msg)));
            assert!(verifier.verify_strict(&msg, &sig).is_ok());
        }
    });
    clock::print(&format!(
        "curve_ops {} ({}): median {median:.1} us, min {min:.1} us (2 x25519 keygen + 2 dh + 2 sign + 2 verify)",
        clock::TARGET,
        tables()
    ));
}

fn tables() -> &'static str {
    if cfg!(feature = "precomputed-tables") {
        "with precomputed tables"
    } else {
        "without precomputed tables"
    }
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn full_link_time() {
    let mut f = LinkFixture::new(7).unwrap();
    let (median, min) = time(|| assert_eq!(f.links(1).unwrap(), 1));
    clock::print(&format!(
        "full_link {} ({}): median {median:.1} us, min {min:.1} us per link ({BATCHES} batches of {PER_BATCH})",
        clock::TARGET,
        tables(),
    ));
}
