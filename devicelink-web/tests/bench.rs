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

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn full_link_time() {
    let mut f = LinkFixture::new(7).unwrap();
    // Warm-up: the browser first runs the module on its baseline compiler
    // and tiers up to the optimising one while it runs.
    assert_eq!(f.links(WARM_UP).unwrap(), 1, "warm-up");
    let mut per_link_us = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let t0 = clock::ms();
        assert_eq!(f.links(PER_BATCH).unwrap(), 1);
        per_link_us.push((clock::ms() - t0) * 1e3 / f64::from(PER_BATCH));
    }
    per_link_us.sort_by(f64::total_cmp);
    let tables = if cfg!(feature = "precomputed-tables") {
        "with"
    } else {
        "without"
    };
    clock::print(&format!(
        "full_link {} ({tables} precomputed tables): median {:.1} us, min {:.1} us per link ({BATCHES} batches of {PER_BATCH})",
        clock::TARGET,
        per_link_us[BATCHES / 2],
        per_link_us[0],
    ));
}
