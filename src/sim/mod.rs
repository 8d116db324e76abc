//! A deterministic lifecycle simulator, for test suites and benchmark runs.
//!
//! A seeded RNG and a virtual clock drive the crate's real state machines for
//! many accounts over many days: each account is an [`Account`](crate::Account) registry; its
//! companions show rotating offers ([`Companion`](crate::Companion),
//! [`Companion::poll`](crate::Companion::poll)), get scanned (or time out and
//! reload), link through the full handshake and then hold
//! [`LinkedSession`](crate::LinkedSession)s that follow the primary's signed
//! device lists and heartbeats. Along the way: revocations, primaries going
//! quiet (beyond the 14-day limit every companion is logged out with
//! `PrimaryOffline`, and re-pairs when the phone is back), heartbeats,
//! companions idling past the policy's idle limit, pending slots that never
//! confirm, re-pairs that replace a device's old record, refusals at the
//! device limit, and races for the last slot. [`behaviour`] lists every
//! probability.
//!
//! ```
//! use devicelink::sim::{run, EventKind, SimConfig, SimMode};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = SimConfig {
//!     accounts: 50,
//!     days: 30,
//!     seed: 7,
//!     mode: SimMode::LifecycleOnly,
//!     ..SimConfig::default()
//! };
//! let mut first = Vec::new();
//! let report = run(&config, |e| {
//!     if first.len() < 3 {
//!         first.push(e.to_string());
//!     }
//! })?;
//! assert!(report.counts.get(EventKind::Linked) > 0);
//! // Same configuration, same log: the digest is its fingerprint.
//! assert_eq!(run(&config, |_| {})?.digest, report.digest);
//! # Ok(())
//! # }
//! ```
//!
//! ## Modes
//!
//! - [`SimMode::FullCrypto`] (the default) runs the real key exchanges: per
//!   account an account key, per companion an identity key, X25519 offers,
//!   Hello, Request, Grant (a signed certificate and device list) and
//!   Confirm, and the sessions verify every device list and heartbeat. It
//!   also cross-checks the state machines: the offer display against the
//!   policy's rotation schedule, each scan against
//!   [`Account::companion_count`](crate::Account::companion_count), each session's lease against the
//!   registry's [`Account::primary_deadline`](crate::Account::primary_deadline); a disagreement is a
//!   [`SimError::Diverged`].
//! - [`SimMode::LifecycleOnly`] skips the cryptography, for very large runs,
//!   and still runs every lifecycle rule of the registry: grants go through
//!   the registry's lifecycle-only admission (the same limit, indices,
//!   pending slots, replacement and device-list versions as
//!   [`Account::grant`](crate::Account::grant)), offers follow the policy's rotation schedule, all
//!   accounts share one account key, and nothing is signed: heartbeats record
//!   the same primary activity without a signature, and no device list is
//!   ever signed.
//!
//! Both modes draw the same behaviour from the same seed (keys come from a
//! separate RNG), so **for one configuration both modes write the same event
//! log** — the lifecycle-only shortcut is checked against the real thing.
//! [`run`] refuses (with [`SimError::Setup`]) policies whose timeouts leave the
//! simulated behaviour no room (approval or confirmation under 10 s, offline
//! or idle limit under 2 days).
//!
//! ## Determinism
//!
//! The run starts at [`SIM_START`] and lasts `days` whole days. Account `n`
//! has its own behaviour RNG, ChaCha20 keyed with
//! `SHA-256("devicelink sim v1 behaviour" || seed as 8 little-endian bytes)`
//! on stream `n`, and its own key RNG, keyed with
//! `SHA-256("devicelink sim v1 keys" || seed)` on stream `n`; lifecycle-only
//! runs share the account key whose secret is
//! `SHA-256("devicelink sim v1 shared account key" || seed)`. Accounts are
//! simulated independently, in chunks of [`CHUNK_ACCOUNTS`] spread over
//! `threads` worker threads, and the results are combined in account order:
//! the event log, the counts and the digest do not depend on the number of
//! threads. The sink is called on the calling thread, in log order, after
//! each chunk completes; at most two chunks per worker are held at once, and
//! an account's state is dropped as soon as it has been simulated, so memory
//! stays flat however many accounts run.
//!
//! The log is in account order, and within an account in time order (events
//! at the same instant in the order they happened). Its canonical text form
//! is described at [`SimEvent::write_canonical`];
//! [`SimReport::digest`] is the SHA-256 of that text.

use std::sync::atomic::{AtomicBool, Ordering};

use ring::digest;

use crate::handshake::DeviceLabel;
use crate::keys::AccountKey;
use crate::policy::Policy;
use crate::time::{days, duration_millis, Timestamp};

mod account;
pub mod behaviour;
mod event;

pub use event::{day_clock, EventCounts, EventKind, Refusal, SimEvent, What};

use account::{AccountSim, ChunkOut};

/// When every simulation starts (2023-11-14T22:13:20Z).
pub const SIM_START: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

/// Accounts per chunk (the unit of work of a worker thread). It does not
/// change the output.
pub const CHUNK_ACCOUNTS: u64 = 256;

/// How much of the protocol a run executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SimMode {
    /// Real key exchanges, certificates, device lists and sessions.
    #[default]
    FullCrypto,
    /// Every lifecycle rule of the registry, without the cryptography.
    LifecycleOnly,
}

impl std::fmt::Display for SimMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SimMode::FullCrypto => "full-crypto",
            SimMode::LifecycleOnly => "lifecycle-only",
        })
    }
}

/// The policy simulations use by default: [`Policy::default`] with the
/// companion idle rule on (30 days).
pub fn sim_policy() -> Policy {
    Policy::builder()
        .companion_idle_limit(Some(days(30)))
        .build()
        .unwrap_or_default()
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Number of accounts (numbered from 0).
    pub accounts: u64,
    /// Simulated days.
    pub days: u32,
    /// The seed: same configuration, same log.
    pub seed: u64,
    /// Full cryptography or lifecycle only.
    pub mode: SimMode,
    /// The policy every account follows (default [`sim_policy`]).
    pub policy: Policy,
    /// Worker threads (0 counts as 1). Does not change the output.
    pub threads: usize,
}

impl Default for SimConfig {
    /// 1 000 accounts, 60 days, seed 1, full crypto, [`sim_policy`], 2 threads.
    fn default() -> Self {
        SimConfig {
            accounts: 1_000,
            days: 60,
            seed: 1,
            mode: SimMode::FullCrypto,
            policy: sim_policy(),
            threads: 2,
        }
    }
}

/// Why a simulation stopped. Any of these is a bug in the crate or the
/// simulator, reported with the account and the virtual time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// A state machine refused a step the simulator expected to succeed.
    #[error("account {account} at {at}: {step} failed: {detail}")]
    Step {
        /// The account.
        account: u64,
        /// When.
        at: Timestamp,
        /// The step.
        step: &'static str,
        /// The error.
        detail: String,
    },
    /// Two state machines (or a state machine and the lifecycle-only
    /// model) disagree.
    #[error("account {account} at {at}: state machines disagree: {what}")]
    Diverged {
        /// The account.
        account: u64,
        /// When.
        at: Timestamp,
        /// On what.
        what: &'static str,
    },
    /// The simulator could not be set up.
    #[error("simulator setup failed: {0}")]
    Setup(String),
    /// A worker thread could not start or stopped early.
    #[error("worker thread: {0}")]
    Thread(String),
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimReport {
    /// Accounts simulated.
    pub accounts: u64,
    /// Days simulated.
    pub days: u32,
    /// The seed.
    pub seed: u64,
    /// The mode.
    pub mode: SimMode,
    /// Events per kind.
    pub counts: EventCounts,
    /// SHA-256 of the event log's canonical text
    /// (see [`SimEvent::write_canonical`]).
    pub digest: [u8; 32],
}

impl SimReport {
    /// All events.
    pub fn events(&self) -> u64 {
        self.counts.total()
    }

    /// The digest in lower-case hex.
    pub fn digest_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.digest)
    }
}

/// What every account of a run shares (read-only).
pub(crate) struct Shared {
    mode: SimMode,
    policy: Policy,
    start: Timestamp,
    end: Timestamp,
    days: u32,
    accounts: u64,
    behaviour_key: [u8; 32],
    crypto_key: [u8; 32],
    shared_account_key: Option<AccountKey>,
    labels: Vec<DeviceLabel>,
    first_ms: u64,
    rotated_ms: u64,
    max_rotations: u32,
    offline_ms: u64,
}

fn derive(label: &[u8], seed: u64) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(label);
    ctx.update(&seed.to_le_bytes());
    let mut out = [0u8; 32];
    for (dst, src) in out.iter_mut().zip(ctx.finish().as_ref()) {
        *dst = *src;
    }
    out
}

/// Labels the simulated companions show, in turn.
const LABELS: [&str; 8] = [
    "Firefox on Linux",
    "Chrome on macOS",
    "Desktop app",
    "Tablet",
    "Work laptop",
    "Safari on iPad",
    "Edge on Windows",
    "Kitchen display",
];

impl Shared {
    fn new(config: &SimConfig) -> Result<Self, SimError> {
        let labels = LABELS
            .iter()
            .map(|l| DeviceLabel::new(*l))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SimError::Setup(e.to_string()))?;
        let shared_account_key = (config.mode == SimMode::LifecycleOnly).then(|| {
            AccountKey::from_secret_bytes(&derive(
                b"devicelink sim v1 shared account key",
                config.seed,
            ))
        });
        let policy = config.policy.clone();
        // The behaviour's fixed delays (a grant 0.2–3 s after the scan, a
        // confirmation within 3 s, daily primary use) assume a policy that
        // leaves them room; refuse others rather than fail mid-run.
        let at_least = |d: std::time::Duration, min_ms: u64, what: &str| {
            if crate::time::duration_millis(d) < min_ms {
                Err(SimError::Setup(format!(
                    "{what} must be at least {min_ms} ms for the simulated behaviour"
                )))
            } else {
                Ok(())
            }
        };
        at_least(policy.approval_timeout(), 10_000, "approval_timeout")?;
        at_least(
            policy.confirmation_timeout(),
            10_000,
            "confirmation_timeout",
        )?;
        at_least(
            policy.primary_offline_limit(),
            2 * 86_400_000,
            "primary_offline_limit",
        )?;
        if let Some(idle) = policy.companion_idle_limit() {
            at_least(idle, 2 * 86_400_000, "companion_idle_limit")?;
        }
        Ok(Shared {
            mode: config.mode,
            start: SIM_START,
            end: SIM_START.saturating_add(days(u64::from(config.days))),
            days: config.days,
            accounts: config.accounts,
            behaviour_key: derive(b"devicelink sim v1 behaviour", config.seed),
            crypto_key: derive(b"devicelink sim v1 keys", config.seed),
            shared_account_key,
            labels,
            first_ms: duration_millis(policy.first_offer_lifetime()),
            rotated_ms: duration_millis(policy.rotated_offer_lifetime()),
            max_rotations: policy.max_rotations(),
            offline_ms: duration_millis(policy.primary_offline_limit()),
            policy,
        })
    }

    fn chunks(&self) -> u64 {
        self.accounts.div_ceil(CHUNK_ACCOUNTS)
    }

    /// Simulates the accounts of chunk `c`, in order.
    fn simulate_chunk(&self, c: u64) -> Result<ChunkOut, SimError> {
        let first = c.saturating_mul(CHUNK_ACCOUNTS);
        let last = first.saturating_add(CHUNK_ACCOUNTS).min(self.accounts);
        let mut out = ChunkOut::default();
        for n in first..last {
            AccountSim::new(self, n).run(&mut out)?;
        }
        Ok(out)
    }
}

/// Folds chunks into the report, in order.
struct Collector<F> {
    sink: F,
    digest: digest::Context,
    counts: EventCounts,
}

impl<F: FnMut(&SimEvent)> Collector<F> {
    fn absorb(&mut self, chunk: ChunkOut) {
        self.digest.update(chunk.text.as_bytes());
        self.counts.merge(&chunk.counts);
        for event in &chunk.events {
            (self.sink)(event);
        }
    }
}

/// Runs a simulation: calls `sink` with every event, in log order, and
/// returns the counts and the log's digest.
pub fn run<F: FnMut(&SimEvent)>(config: &SimConfig, sink: F) -> Result<SimReport, SimError> {
    let shared = Shared::new(config)?;
    let mut collector = Collector {
        sink,
        digest: digest::Context::new(&digest::SHA256),
        counts: EventCounts::default(),
    };
    let chunks = shared.chunks();
    // More workers than chunks would only idle.
    let threads = config
        .threads
        .clamp(1, usize::try_from(chunks).unwrap_or(usize::MAX).max(1));
    if threads == 1 || chunks <= 1 {
        for c in 0..chunks {
            collector.absorb(shared.simulate_chunk(c)?);
        }
    } else {
        run_threads(&shared, threads, &mut collector)?;
    }
    let mut digest = [0u8; 32];
    for (dst, src) in digest.iter_mut().zip(collector.digest.finish().as_ref()) {
        *dst = *src;
    }
    Ok(SimReport {
        accounts: config.accounts,
        days: config.days,
        seed: config.seed,
        mode: config.mode,
        counts: collector.counts,
        digest,
    })
}

/// Worker `w` simulates chunks `w, w + threads, …` and hands each over on
/// its own channel (room for one finished chunk); the caller takes them in
/// chunk order, round robin.
fn run_threads<F: FnMut(&SimEvent)>(
    shared: &Shared,
    threads: usize,
    collector: &mut Collector<F>,
) -> Result<(), SimError> {
    let stop = AtomicBool::new(false);
    let chunks = shared.chunks();
    let stride = u64::try_from(threads).unwrap_or(u64::MAX);
    std::thread::scope(|scope| {
        let mut receivers = Vec::with_capacity(threads);
        for w in 0..stride {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<ChunkOut, SimError>>(1);
            let stop = &stop;
            std::thread::Builder::new()
                .name(format!("devicelink-sim-{w}"))
                .spawn_scoped(scope, move || {
                    let mut c = w;
                    while c < chunks && !stop.load(Ordering::Relaxed) {
                        let result = shared.simulate_chunk(c);
                        let failed = result.is_err();
                        if tx.send(result).is_err() || failed {
                            break;
                        }
                        c = c.saturating_add(stride);
                    }
                })
                .map_err(|e| {
                    stop.store(true, Ordering::Relaxed);
                    SimError::Thread(e.to_string())
                })?;
            receivers.push(rx);
        }
        for c in 0..chunks {
            let rx = usize::try_from(c % stride)
                .ok()
                .and_then(|w| receivers.get(w))
                .ok_or_else(|| SimError::Thread("no worker for a chunk".to_owned()))?;
            match rx.recv() {
                Ok(Ok(chunk)) => collector.absorb(chunk),
                Ok(Err(e)) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                Err(_) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(SimError::Thread("a worker stopped early".to_owned()));
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_covers_every_account_once() {
        let config = SimConfig {
            accounts: CHUNK_ACCOUNTS + 3,
            days: 0,
            ..SimConfig::default()
        };
        let shared = Shared::new(&config).unwrap();
        assert_eq!(shared.chunks(), 2);
    }
}
