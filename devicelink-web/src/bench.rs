//! One full link, both ends, for the figures in `BENCHMARKS.md`: the same
//! Rust runs natively and in the browser, so the two times are comparable.
//! Built only with the `bench` feature (the page's build leaves the
//! primary's side out).
//!
//! A link is what the core's `link/full_link` criterion bench times:
//! `Companion::new` → `Account::scan` → `receive_hello` →
//! `receive_request` → `Account::grant` → `receive_grant` →
//! `Account::confirm`, with a seeded ChaCha20 RNG, plus here the clone of an
//! empty account (so the four-device limit never bites) inside the timed
//! loop, on both targets.

use devicelink::{Account, Companion, DeviceIdentity, DeviceLabel, Policy, Timestamp};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Why a benchmarked link did not complete (it always should).
pub type BenchError = Box<dyn std::error::Error>;

/// An account and a device identity, made once; every link clones them.
pub struct LinkFixture {
    account: Account,
    identity: DeviceIdentity,
    label: DeviceLabel,
    policy: Policy,
    rng: ChaCha20Rng,
    now: Timestamp,
}

impl LinkFixture {
    /// A fixture seeded with `seed`.
    pub fn new(seed: u64) -> Result<Self, BenchError> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let now = Timestamp::from_unix_millis(1_700_000_000_000);
        let policy = Policy::default();
        Ok(LinkFixture {
            account: Account::generate(policy.clone(), &mut rng, now),
            identity: DeviceIdentity::generate(&mut rng),
            label: DeviceLabel::new("Chromium on Linux")?,
            policy,
            rng,
            now,
        })
    }

    /// Runs `n` full links; returns how many devices the last one's account
    /// holds (1), so the work cannot be optimised away.
    pub fn links(&mut self, n: u32) -> Result<u32, BenchError> {
        let mut count = 0;
        for _ in 0..n {
            count = self.link()?;
        }
        Ok(count)
    }

    fn link(&mut self) -> Result<u32, BenchError> {
        let t = self.now;
        let rng = &mut self.rng;
        let mut account = self.account.clone();
        let mut companion = Companion::new(
            self.identity.clone(),
            self.label.clone(),
            &self.policy,
            rng,
            t,
        );
        let text = companion.offer().ok_or("no offer")?.to_text();
        account.open_link_intent(t);
        let (mut primary, hello) = account.scan(&text, rng, t)?;
        let request = companion.receive_hello(&hello, rng, t)?;
        account.receive_request(&mut primary, &request, rng, t)?;
        let grant = account.grant(&mut primary, rng, t)?;
        companion.receive_grant(&grant, t)?;
        let confirm = companion.consent(t)?;
        account.confirm(&mut primary, &confirm, t)?;
        Ok(account.companion_count(t))
    }
}
