//! Helpers shared by the review-findings tests: a fixed clock, seeded
//! RNGs, and a whole link through the public API.

#![allow(dead_code)]

use devicelink::{
    Account, Companion, DeviceIdentity, DeviceLabel, LinkedSession, PrimaryHandshake, Timestamp,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub const T0: u64 = 1_700_000_000_000;
pub const SECOND: u64 = 1_000;
pub const DAY: u64 = 86_400_000;

pub fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(T0 + ms)
}

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub struct Pairing {
    pub companion: Companion,
    pub primary: PrimaryHandshake,
}

/// Link intent, scan, Hello, Request (up to the user's approval).
pub fn start(account: &mut Account, name: &str, rng: &mut ChaCha20Rng, now: Timestamp) -> Pairing {
    let policy = account.policy().clone();
    let identity = DeviceIdentity::generate(rng);
    let mut companion =
        Companion::new(identity, DeviceLabel::new(name).unwrap(), &policy, rng, now);
    let text = companion.offer().unwrap().to_text();
    account.open_link_intent(now);
    let (mut primary, hello) = account.scan(&text, rng, now).unwrap();
    let request = companion.receive_hello(&hello, rng, now).unwrap();
    account
        .receive_request(&mut primary, &request, rng, now)
        .unwrap();
    Pairing { companion, primary }
}

/// Grant, the companion's user's consent, and the Confirm; returns the
/// companion's session.
pub fn link(
    account: &mut Account,
    name: &str,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
) -> LinkedSession {
    let mut p = start(account, name, rng, now);
    let grant = account.grant(&mut p.primary, rng, now).unwrap();
    p.companion.receive_grant(&grant, now).unwrap();
    let confirm = p.companion.consent(now).unwrap();
    account.confirm(&mut p.primary, &confirm, now).unwrap();
    p.companion.into_session().unwrap()
}
