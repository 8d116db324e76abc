//! Arbitrary bytes as a relay store's `AccountFacts` (the core directory's
//! per-account state, as SQLite and PostgreSQL keep it).
//!
//! Properties:
//! - `AccountFacts::from_bytes` is total, and what it accepts re-encodes to
//!   the exact input bytes;
//! - accepted facts load into a directory, which gives them back unchanged,
//!   and the directory then decides (a list, a heartbeat, a sweep) without
//!   panicking; an expired account lists no device.
#![no_main]

use devicelink::relay::AccountFacts;
use devicelink::{Directory, Policy, Timestamp};
use devicelink_fuzz::{fixture, now};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(facts) = AccountFacts::from_bytes(data) else {
        return;
    };
    assert_eq!(facts.to_bytes(), data, "facts re-encode differently");
    assert!(!facts.expired() || facts.devices().next().is_none());
    let mut d = Directory::new(&Policy::default());
    d.load_facts(&facts).expect("facts load");
    assert_eq!(d.facts(&facts.account()).as_ref(), Some(&facts));
    let f = fixture();
    let _ = d.apply_device_list(f.session.device_list(), now());
    let _ = d.sweep(Timestamp::MAX);
    assert!(d.facts(&facts.account()).is_some());
});
