//! # devicelink-web
//!
//! The devicelink companion in WebAssembly: the browser tab that shows a
//! rotating QR code and becomes a linked device when a phone scans it.
//!
//! A thin shell over the sans-IO core, the way `devicelink-relay` is one:
//! the core's [`Companion`](devicelink::Companion) pairs,
//! its [`LinkedSession`](devicelink::LinkedSession) holds the link, and the
//! relay's frames come from [`devicelink_relay::frame`]. The shell decides
//! no rule; it owns no clock and no RNG: every call takes `nowMs` from the
//! page (`Date.now()`), and keys come from the browser's CSPRNG
//! (`crypto.getRandomValues`, through getrandom's `js` feature).
//!
//! - [`WebCompanion`]: the JS class the page uses (`docs/RELAY.md` §6).
//! - [`shell::BrowserCompanion`]: the same in plain Rust, tested natively.
//!
//! The page itself (`www/`: HTML, CSS, JS and the wasm-bindgen output in
//! `www/pkg/`) is embedded in and served by `devicelink-relay` at `/`.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod bindings;
pub mod shell;

pub use bindings::{WebCompanion, WebDevice, WebNotice};

#[cfg(feature = "bench")]
pub mod bench;

/// Runs `n` full links, both ends, in this build (the `bench` feature);
/// the caller times it (`performance.now()`).
#[cfg(feature = "bench")]
#[wasm_bindgen::prelude::wasm_bindgen(js_name = benchFullLink)]
pub fn bench_full_link(seed: u32, n: u32) -> Result<u32, wasm_bindgen::JsError> {
    let mut f = bench::LinkFixture::new(u64::from(seed))
        .map_err(|e| wasm_bindgen::JsError::new(&e.to_string()))?;
    f.links(n)
        .map_err(|e| wasm_bindgen::JsError::new(&e.to_string()))
}
