//! Model-based property test of the account registry.
//!
//! Random sequences of operations (start a link, re-pair a device with the
//! key it already has, approve, confirm, revoke, advance or rewind the clock,
//! heartbeat, save/restore, companion activity) run against a real
//! [`Account`], with real handshakes, and against a small reference model
//! written here from the rules in the crate docs. After every step the
//! invariants are checked: the slot limit (distinct device keys), index
//! allocation, terminal states, the exact primary-offline boundary, refused
//! operations changing nothing, the signed device list naming exactly the
//! devices holding a slot, the registry's clock never running backwards, and
//! agreement with the model.
//!
//! Protocol v2 rules modelled here: every scan runs under a link intent; the
//! limit is checked at the Request (an authenticated Refusal) and again at
//! the grant; a device re-pairing with its own key does not count twice, is
//! granted beside its old index (the list names the key twice), and the old
//! index is logged out as `Replaced` only when the new one is confirmed.
//!
//! `PROPTEST_CASES` sets the number of cases (default 1000) and
//! `PROPTEST_RNG_SEED` the generator seed (default fixed, so runs repeat).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use devicelink::handshake::{MessageHeader, MessageKind, PrimaryState, HEADER_LEN};
use devicelink::{
    Account, Companion, DeviceIdentity, DeviceIndex, DeviceKey, DeviceLabel, DeviceState,
    HandshakeError, LogoutReason, Policy, PrimaryHandshake, RefusalReason, RegistryError,
    Timestamp,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const T0: u64 = 1_700_000_000_000;
const SECOND: u64 = 1_000;
const DAY: u64 = 86_400_000;
const OFFLINE: u64 = 14 * DAY;
const CONFIRM_TIMEOUT: u64 = 60 * SECOND;
const IDLE: u64 = 7 * DAY;
/// Most `StartLink` operations per sequence (each is a real key exchange).
const MAX_LINKS: usize = 8;

fn ts(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

fn add(t: Timestamp, ms: u64) -> Timestamp {
    t.saturating_add(Duration::from_millis(ms))
}

fn sub(t: Timestamp, ms: u64) -> Timestamp {
    t.saturating_sub(Duration::from_millis(ms))
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// A new companion shows an offer; the primary opens a link intent and
    /// scans it (Hello, Request).
    StartLink,
    /// StartLink, Approve and Confirm of that pairing at the same instant.
    LinkNow,
    /// Like StartLink, but the companion is a device the account already
    /// had (picked like `Approve` picks), re-pairing with its own key.
    RePair(usize),
    /// RePair, Approve and Confirm at the same instant.
    RePairNow(usize),
    /// The user approves one of the scanned pairings: `Account::grant`.
    Approve(usize),
    /// One of the granted pairings confirms: companion `receive_grant`, then
    /// `Account::confirm`.
    Confirm(usize),
    /// `Account::revoke` of an index (possibly unknown).
    Revoke(u32),
    /// The clock moves on; with `poll`, the host settles at the new time.
    Advance { ms: u64, poll: bool },
    /// `Account::heartbeat`.
    Heartbeat,
    /// The clock goes back.
    ClockBackwards(u64),
    /// `Account::save` then `Account::restore`.
    SaveRestore,
    /// `Account::companion_seen` of an index (possibly unknown).
    CompanionSeen(u32),
}

fn advance_ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        10 => 0..5 * SECOND,
        2 => Just(CONFIRM_TIMEOUT),
        2 => Just(CONFIRM_TIMEOUT - 1),
        1 => Just(1u64),
        2 => 0..3 * DAY,
        1 => Just(IDLE),
        1 => Just(IDLE - 1),
        3 => Just(OFFLINE),
        3 => Just(OFFLINE - 1),
        1 => Just(OFFLINE + 1),
        1 => 0..40 * DAY,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::StartLink),
        3 => Just(Op::LinkNow),
        2 => any::<usize>().prop_map(Op::RePair),
        2 => any::<usize>().prop_map(Op::RePairNow),
        4 => any::<usize>().prop_map(Op::Approve),
        6 => any::<usize>().prop_map(Op::Confirm),
        2 => (0u32..12).prop_map(Op::Revoke),
        5 => (advance_ms(), any::<bool>()).prop_map(|(ms, poll)| Op::Advance { ms, poll }),
        2 => Just(Op::Heartbeat),
        1 => prop_oneof![0..5 * SECOND, Just(OFFLINE), 0..20 * DAY].prop_map(Op::ClockBackwards),
        1 => Just(Op::SaveRestore),
        2 => (0u32..12).prop_map(Op::CompanionSeen),
    ]
}

/// Keeps at most [`MAX_LINKS`] `StartLink`s; later ones become heartbeats.
fn cap_links(ops: Vec<Op>) -> Vec<Op> {
    let mut links = 0;
    ops.into_iter()
        .map(|op| match op {
            Op::StartLink | Op::LinkNow | Op::RePair(_) | Op::RePairNow(_)
                if links >= MAX_LINKS =>
            {
                Op::Heartbeat
            }
            op @ (Op::StartLink | Op::LinkNow | Op::RePair(_) | Op::RePairNow(_)) => {
                links += 1;
                op
            }
            other => other,
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    max_companions: u32,
    idle: bool,
    ops: Vec<Op>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        any::<u64>(),
        prop_oneof![3 => Just(4u32), 1 => Just(2u32)],
        any::<bool>(),
        prop::collection::vec(op(), 1..=100).prop_map(cap_links),
    )
        .prop_map(|(seed, max_companions, idle, ops)| Scenario {
            seed,
            max_companions,
            idle,
            ops,
        })
}

/// Mostly the newest of `len` items, sometimes any of them.
fn pick(k: usize, len: usize) -> usize {
    if k.is_multiple_of(4) {
        (k / 4) % len
    } else {
        len - 1
    }
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct MDevice {
    /// Which device key (an identity number of the harness).
    key: usize,
    state: DeviceState,
    last_seen: Timestamp,
}

/// The registry's rules, written out: map index → (key, stored state, last
/// seen), the newest primary activity, the next index, and the clock (the
/// largest `now` any mutating call has seen: every mutating call acts at it).
#[derive(Debug, Clone)]
struct Model {
    max: u32,
    idle: Option<u64>,
    last_activity: Timestamp,
    next_index: u32,
    clock: Timestamp,
    devices: BTreeMap<u32, MDevice>,
}

impl Model {
    fn primary_deadline(&self) -> Timestamp {
        add(self.last_activity, OFFLINE)
    }

    /// When and why a device still holding a slot is logged out by time
    /// alone: the earliest of its deadlines, ties going to the primary's
    /// deadline, then the confirmation timeout, then the idle rule.
    fn expiry(&self, d: &MDevice) -> Option<(Timestamp, LogoutReason)> {
        let mut candidates = vec![(self.primary_deadline(), LogoutReason::PrimaryOffline)];
        match d.state {
            DeviceState::LoggedOut { .. } => return None,
            DeviceState::Pending { deadline, .. } => {
                candidates.push((deadline, LogoutReason::ConfirmationTimedOut))
            }
            DeviceState::Active { .. } => {}
        }
        if let Some(idle) = self.idle {
            candidates.push((add(d.last_seen, idle), LogoutReason::CompanionIdle));
        }
        let mut best = candidates[0];
        for c in &candidates[1..] {
            if c.0 < best.0 {
                best = *c;
            }
        }
        Some(best)
    }

    fn state_at(&self, index: u32, t: Timestamp) -> Option<DeviceState> {
        let d = self.devices.get(&index)?;
        Some(match self.expiry(d) {
            Some((at, reason)) if t >= at => DeviceState::LoggedOut { reason, at },
            _ => d.state,
        })
    }

    /// Distinct device keys holding a slot at `now`.
    fn taken(&self, now: Timestamp) -> u32 {
        self.taken_except(now, None)
    }

    /// Distinct device keys holding a slot at `now`, other than `except`.
    fn taken_except(&self, now: Timestamp, except: Option<usize>) -> u32 {
        let keys: BTreeSet<usize> = self
            .devices
            .iter()
            .filter(|(i, d)| {
                Some(d.key) != except && self.state_at(**i, now).is_some_and(|s| s.holds_slot())
            })
            .map(|(_, d)| d.key)
            .collect();
        u32::try_from(keys.len()).unwrap()
    }

    /// Records a change at `now`: the clock only moves forward.
    fn tick(&mut self, now: Timestamp) -> Timestamp {
        self.clock = self.clock.max(now);
        self.clock
    }

    /// The time a call at `now` acts at: never before the clock.
    fn effective(&self, now: Timestamp) -> Timestamp {
        self.clock.max(now)
    }

    /// What every call does first: settle at its effective time, recording
    /// that time only if something expired (a refused call changes nothing).
    fn settle_at(&mut self, now: Timestamp) -> Timestamp {
        let now = self.effective(now);
        if self.settle(now) {
            self.tick(now);
        }
        now
    }

    /// `Account::poll`: settle, and record the time.
    fn poll(&mut self, now: Timestamp) -> Timestamp {
        let now = self.settle_at(now);
        self.tick(now)
    }

    fn next_deadline(&self) -> Option<Timestamp> {
        self.devices
            .values()
            .filter_map(|d| self.expiry(d).map(|(at, _)| at))
            .min()
    }

    /// Settles every expiry at `now`; whether anything expired.
    fn settle(&mut self, now: Timestamp) -> bool {
        let updates: Vec<(u32, DeviceState)> = self
            .devices
            .iter()
            .filter(|(_, d)| d.state.holds_slot())
            .filter_map(|(i, _)| match self.state_at(*i, now) {
                Some(s @ DeviceState::LoggedOut { .. }) => Some((*i, s)),
                _ => None,
            })
            .collect();
        let changed = !updates.is_empty();
        for (i, s) in updates {
            self.devices.get_mut(&i).unwrap().state = s;
        }
        changed
    }

    fn activity(&mut self, now: Timestamp) {
        self.last_activity = self.last_activity.max(now);
    }

    /// Opening the link intent and scanning always work here (the intent is
    /// fresh) and only move the clock: a scan signs nothing, so it is not
    /// primary activity, and the limit waits for the device's key.
    fn scan(&mut self, now: Timestamp) {
        self.tick(now);
    }

    /// `Account::receive_request` from the device with `key`: refused (with
    /// a Refusal for the companion) when every slot is taken by other keys.
    fn request(&mut self, now: Timestamp, key: usize) -> Result<(), RegistryError> {
        let now = self.settle_at(now);
        if self.taken_except(now, Some(key)) >= self.max {
            // The refusal is recorded.
            self.tick(now);
            return Err(RegistryError::Refused {
                reason: RefusalReason::DeviceLimitReached { limit: self.max },
                refusal: Vec::new(),
            });
        }
        Ok(())
    }

    fn grant(&mut self, now: Timestamp, key: usize) -> Result<u32, RegistryError> {
        let now = self.settle_at(now);
        if self.taken_except(now, Some(key)) >= self.max {
            return Err(RegistryError::DeviceLimitReached { limit: self.max });
        }
        let index = self.next_index;
        self.next_index += 1;
        self.devices.insert(
            index,
            MDevice {
                key,
                state: DeviceState::Pending {
                    since: now,
                    deadline: add(now, CONFIRM_TIMEOUT),
                },
                last_seen: now,
            },
        );
        self.activity(now);
        self.tick(now);
        Ok(index)
    }

    /// A genuine confirmation of `index`'s pending slot. It proves the key:
    /// every other record of the same key still holding a slot is replaced.
    fn confirm(&mut self, index: u32, now: Timestamp) -> Result<(), RegistryError> {
        let now = self.settle_at(now);
        let d = self.devices.get_mut(&index).unwrap();
        match d.state {
            DeviceState::Pending { .. } => {
                self.clock = self.clock.max(now);
                let d = self.devices.get_mut(&index).unwrap();
                d.state = DeviceState::Active { since: now };
                d.last_seen = d.last_seen.max(now);
                let key = d.key;
                for (i, other) in self.devices.iter_mut() {
                    if *i != index && other.key == key && other.state.holds_slot() {
                        other.state = DeviceState::LoggedOut {
                            reason: LogoutReason::Replaced,
                            at: now,
                        };
                    }
                }
                Ok(())
            }
            DeviceState::LoggedOut {
                reason: LogoutReason::ConfirmationTimedOut,
                ..
            } => Err(RegistryError::ConfirmationTimedOut),
            DeviceState::LoggedOut { reason, .. } => Err(RegistryError::AlreadyLoggedOut {
                index: DeviceIndex(index),
                reason,
            }),
            DeviceState::Active { .. } => Err(HandshakeError::AlreadyLinked.into()),
        }
    }

    /// A forged confirmation: refused, by the state or by the signature.
    fn confirm_forged(&mut self, index: u32, now: Timestamp) -> RegistryError {
        let mut shadow = self.clone();
        match shadow.confirm(index, now) {
            Ok(()) => HandshakeError::BadSignature {
                what: "confirmation",
            }
            .into(),
            Err(e) => e,
        }
    }

    fn stored_or_unknown(&mut self, index: u32, now: Timestamp) -> Result<(), RegistryError> {
        self.settle_at(now);
        match self.devices.get(&index).map(|d| d.state) {
            None => Err(RegistryError::UnknownDevice(DeviceIndex(index))),
            Some(DeviceState::LoggedOut { reason, .. }) => Err(RegistryError::AlreadyLoggedOut {
                index: DeviceIndex(index),
                reason,
            }),
            Some(_) => Ok(()),
        }
    }

    fn revoke(&mut self, index: u32, now: Timestamp) -> Result<(), RegistryError> {
        self.stored_or_unknown(index, now)?;
        let now = self.tick(now);
        self.devices.get_mut(&index).unwrap().state = DeviceState::LoggedOut {
            reason: LogoutReason::Revoked,
            at: now,
        };
        self.activity(now);
        Ok(())
    }

    fn companion_seen(&mut self, index: u32, now: Timestamp) -> Result<(), RegistryError> {
        self.stored_or_unknown(index, now)?;
        let now = self.tick(now);
        let d = self.devices.get_mut(&index).unwrap();
        d.last_seen = d.last_seen.max(now);
        Ok(())
    }

    /// A heartbeat is signed at the last activity, which is the clock.
    fn heartbeat(&mut self, now: Timestamp) -> Timestamp {
        let now = self.poll(now);
        self.activity(now);
        self.last_activity
    }
}

// ---------------------------------------------------------------------------
// The system under test, with its real handshakes
// ---------------------------------------------------------------------------

/// Scanned; the primary holds the Request; waiting for the user's approval.
struct Scanned {
    companion: Companion,
    primary: PrimaryHandshake,
    /// The companion's identity (an index into `Harness::identities`).
    key: usize,
}

/// Granted: the Grant and, if the companion was still waiting, the Confirm it
/// sent at once.
struct Granted {
    companion: Companion,
    primary: PrimaryHandshake,
    index: u32,
    grant: Vec<u8>,
    confirm: Option<Vec<u8>>,
    /// The primary handshake verified a Confirm: any later one is a replay.
    confirmed: bool,
}

struct Harness {
    rng: ChaCha20Rng,
    policy: Policy,
    account: Account,
    model: Model,
    now: Timestamp,
    scanned: Vec<Scanned>,
    granted: Vec<Granted>,
    /// Every index the account ever assigned.
    issued: BTreeSet<u32>,
    /// Logouts the account settled (stored): permanent, whatever happens.
    settled: BTreeMap<u32, DeviceState>,
    /// Logouts seen through `device_state` at `now` without being settled:
    /// they stay while the clock does not go back.
    observed: BTreeMap<u32, DeviceState>,
    labels: u32,
    /// Every device identity a companion used, by key number.
    identities: Vec<DeviceIdentity>,
    /// The newest device list version seen (versions never go back).
    list_version: u64,
}

/// A registry error with the Refusal's random bytes left out, to compare
/// with the model's.
fn norm<T>(r: Result<T, RegistryError>) -> Result<T, RegistryError> {
    r.map_err(|e| match e {
        RegistryError::Refused { reason, .. } => RegistryError::Refused {
            reason,
            refusal: Vec::new(),
        },
        e => e,
    })
}

impl Harness {
    fn new(s: &Scenario) -> Self {
        let mut builder = Policy::builder().max_companions(s.max_companions);
        if s.idle {
            builder = builder.companion_idle_limit(Some(Duration::from_millis(IDLE)));
        }
        let policy = builder.build().unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(s.seed);
        let now = ts(T0);
        let account = Account::generate(policy.clone(), &mut rng, now);
        Harness {
            rng,
            policy,
            account,
            model: Model {
                max: s.max_companions,
                idle: s.idle.then_some(IDLE),
                last_activity: now,
                next_index: 1,
                clock: now,
                devices: BTreeMap::new(),
            },
            now,
            scanned: Vec::new(),
            granted: Vec::new(),
            issued: BTreeSet::new(),
            settled: BTreeMap::new(),
            observed: BTreeMap::new(),
            labels: 0,
            identities: Vec::new(),
            list_version: 0,
        }
    }

    fn indices(&self) -> std::ops::Range<u32> {
        1..self.account.next_index().0.max(self.model.next_index) + 1
    }

    /// Everything observable about device states: every index (and one past
    /// the end) at `now`, plus the slot count.
    fn observable(&self) -> (Vec<Option<DeviceState>>, u32) {
        let states = self
            .indices()
            .map(|i| self.account.device_state(DeviceIndex(i), self.now))
            .collect();
        (states, self.account.companion_count(self.now))
    }

    /// Runs a fallible operation: the outcome must match the model's, and a
    /// refusal must change nothing observable.
    fn check_outcome<T: std::fmt::Debug, U: std::fmt::Debug>(
        &self,
        what: &str,
        before: (Vec<Option<DeviceState>>, u32),
        actual: &Result<T, RegistryError>,
        expected: &Result<U, RegistryError>,
    ) {
        match (actual, expected) {
            (Ok(_), Ok(_)) => {}
            (Err(a), Err(e)) => {
                assert_eq!(a, e, "{what}: wrong error");
                assert_eq!(
                    self.observable(),
                    before,
                    "{what}: refused but changed state"
                );
            }
            _ => panic!("{what}: account gave {actual:?}, model expected {expected:?}"),
        }
    }

    /// A companion with identity `key` shows an offer; the primary opens a
    /// link intent, scans it, and handles the Request.
    fn start_link(&mut self, key: usize) {
        self.labels += 1;
        let identity = self.identities[key].clone();
        let label = DeviceLabel::new(format!("companion {}", self.labels)).unwrap();
        let mut companion = Companion::new(identity, label, &self.policy, &mut self.rng, self.now);
        let text = companion.offer().unwrap().to_text();
        let before = self.observable();
        self.account.open_link_intent(self.now);
        let (mut primary, hello) = self.account.scan(&text, &mut self.rng, self.now).unwrap();
        self.model.scan(self.now);
        assert_eq!(self.observable(), before, "a scan changed an answer");
        let request = companion
            .receive_hello(&hello, &mut self.rng, self.now)
            .unwrap();
        let actual = self
            .account
            .receive_request(&mut primary, &request, &mut self.rng, self.now);
        let expected = self.model.request(self.now, key);
        if let Err(RegistryError::Refused { reason, refusal }) = &actual {
            // The companion is told why, authenticated.
            assert_eq!(
                companion.receive_grant(refusal, self.now),
                Err(HandshakeError::Refused(*reason))
            );
            assert_eq!(primary.state(), PrimaryState::Refused { reason: *reason });
        }
        let actual = norm(actual);
        self.check_outcome("request", before, &actual, &expected);
        if let Ok(asking) = actual {
            assert!(asking.check_code.is_some(), "a QR link has a check code");
            assert_eq!(companion.check_code(), None, "not before the Grant");
            assert_eq!(asking.device, self.identities[key].device_key());
            self.scanned.push(Scanned {
                companion,
                primary,
                key,
            });
        }
    }

    /// `start`, then Approve and Confirm of that pairing at the same instant.
    fn link_now(&mut self, start: &Op) {
        let scanned = self.scanned.len();
        self.step(start);
        if self.scanned.len() > scanned {
            self.check_invariants();
            let granted = self.granted.len();
            self.step(&Op::Approve(1));
            if self.granted.len() > granted {
                self.check_invariants();
                self.step(&Op::Confirm(1));
            }
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::RePair(k) => {
                if self.model.devices.is_empty() {
                    return;
                }
                let n = pick(k, self.model.devices.len());
                let key = self.model.devices.values().nth(n).unwrap().key;
                self.start_link(key);
            }
            Op::RePairNow(k) => self.link_now(&Op::RePair(k)),
            Op::LinkNow => self.link_now(&Op::StartLink),
            Op::StartLink => {
                self.identities
                    .push(DeviceIdentity::generate(&mut self.rng));
                self.start_link(self.identities.len() - 1);
            }
            Op::Approve(k) => {
                if self.scanned.is_empty() {
                    return;
                }
                let k = pick(k, self.scanned.len());
                let before = self.observable();
                let actual =
                    self.account
                        .grant(&mut self.scanned[k].primary, &mut self.rng, self.now);
                let expected = self.model.grant(self.now, self.scanned[k].key);
                self.check_outcome("grant", before, &actual, &expected);
                let (Ok(grant), Ok(index)) = (actual, expected) else {
                    assert_eq!(
                        self.scanned[k].primary.state(),
                        PrimaryState::RequestReceived
                    );
                    return;
                };
                assert_eq!(
                    self.scanned[k].primary.state(),
                    PrimaryState::GrantSent {
                        index: DeviceIndex(index)
                    }
                );
                assert!(
                    self.issued.iter().all(|i| *i < index),
                    "index {index} not above every earlier index {:?}",
                    self.issued
                );
                assert!(self.issued.insert(index));
                let Scanned {
                    companion, primary, ..
                } = self.scanned.swap_remove(k);
                // The companion answers at once if it is still waiting.
                let confirm = accept(companion.clone(), &grant, self.now);
                self.granted.push(Granted {
                    companion,
                    primary,
                    index,
                    grant,
                    confirm,
                    confirmed: false,
                });
            }
            Op::Confirm(k) => {
                if self.granted.is_empty() {
                    return;
                }
                let k = pick(k, self.granted.len());
                let now = self.now;
                let before = self.observable();
                let g = &mut self.granted[k];
                // The companion receives the Grant now; if it gave up waiting,
                // the Confirm it sent in time (if any) arrives late instead.
                let fresh = accept(g.companion.clone(), &g.grant, now);
                if let (Some(fresh), Some(early)) = (&fresh, &g.confirm) {
                    assert_eq!(fresh, early, "the Confirm is deterministic");
                }
                let genuine = fresh.or_else(|| g.confirm.clone());
                let index = g.index;
                let (confirm, forged) = match genuine {
                    Some(confirm) => (confirm, false),
                    None => {
                        // No genuine Confirm exists: forge one (right header,
                        // bad signature).
                        let mut forged = g.grant[..HEADER_LEN].to_vec();
                        forged[1] = 5;
                        let header = MessageHeader::parse(&forged).unwrap();
                        assert_eq!(header.kind, MessageKind::Confirm);
                        forged.extend_from_slice(&[0u8; 64]);
                        (forged, true)
                    }
                };
                let actual = self.account.confirm(&mut g.primary, &confirm, now);
                let expected: Result<(), RegistryError> = if g.confirmed {
                    // A replay to a completed handshake.
                    self.model.settle_at(now);
                    Err(HandshakeError::AlreadyLinked.into())
                } else if forged {
                    let e = self.model.confirm_forged(index, now);
                    self.model.settle_at(now);
                    Err(e)
                } else {
                    self.model.confirm(index, now)
                };
                if let Ok(link) = &actual {
                    assert_eq!(link.certificate.index(), DeviceIndex(index));
                    g.confirmed = true;
                }
                self.check_outcome("confirm", before, &actual, &expected);
            }
            Op::Revoke(i) => {
                let index = 1 + i % self.model.next_index;
                let before = self.observable();
                let actual = self.account.revoke(DeviceIndex(index), self.now);
                let expected = self.model.revoke(index, self.now);
                self.check_outcome("revoke", before, &actual, &expected);
            }
            Op::CompanionSeen(i) => {
                let index = 1 + i % self.model.next_index;
                let before = self.observable();
                let actual = self.account.companion_seen(DeviceIndex(index), self.now);
                let expected = self.model.companion_seen(index, self.now);
                self.check_outcome("companion_seen", before, &actual, &expected);
            }
            Op::Advance { ms, poll } => {
                self.now = add(self.now, ms);
                if poll {
                    let before = self.observable();
                    self.account.poll(self.now);
                    self.model.poll(self.now);
                    assert_eq!(self.observable(), before, "poll changed an answer");
                }
            }
            Op::Heartbeat => {
                let hb = self.account.heartbeat(self.now);
                let at = self.model.heartbeat(self.now);
                assert_eq!(hb.at(), at);
                assert_eq!(hb.account(), self.account.account_id());
            }
            Op::ClockBackwards(ms) => {
                self.now = sub(self.now, ms);
                // Unsettled observations may legitimately change once the
                // account learns of activity at an earlier time.
                self.observed.clear();
            }
            Op::SaveRestore => {
                let saved = self.account.save().unwrap();
                let restored = Account::restore(&saved).unwrap();
                assert_eq!(restored.save().unwrap(), saved, "save is stable");
                let before = self.observable();
                self.account = restored;
                assert_eq!(self.observable(), before, "restore changed an answer");
            }
        }
    }

    /// Instants at which the model and the account must agree: now, and
    /// every deadline of the model, with the millisecond before each.
    fn probes(&self) -> Vec<Timestamp> {
        let mut t = vec![
            self.now,
            sub(self.now, 1),
            self.model.primary_deadline(),
            sub(self.model.primary_deadline(), 1),
            Timestamp::MAX,
        ];
        for d in self.model.devices.values() {
            if let Some((at, _)) = self.model.expiry(d) {
                t.push(at);
                t.push(sub(at, 1));
            }
            if let DeviceState::Pending { deadline, .. } = d.state {
                t.push(deadline);
                t.push(sub(deadline, 1));
            }
            if let Some(idle) = self.model.idle {
                t.push(add(d.last_seen, idle));
                t.push(sub(add(d.last_seen, idle), 1));
            }
        }
        t
    }

    fn check_invariants(&mut self) {
        let now = self.now;
        let a = &self.account;
        let m = &self.model;

        // The slot limit, counted two ways: distinct device keys (a device
        // re-pairing with its own key holds one slot under two indices).
        let count = a.companion_count(now);
        assert!(
            count <= m.max,
            "{count} companions hold a slot, limit {}",
            m.max
        );
        let holding: BTreeSet<DeviceKey> = self
            .indices()
            .filter(|i| {
                a.device_state(DeviceIndex(*i), now)
                    .is_some_and(|s| s.holds_slot())
            })
            .map(|i| a.device(DeviceIndex(i)).unwrap().device)
            .collect();
        assert_eq!(u32::try_from(holding.len()).unwrap(), count);
        assert_eq!(count, m.taken(now));

        // Every record carries the key the model gave it.
        for r in a.devices() {
            let key = m.devices[&r.index.0].key;
            assert_eq!(
                r.device,
                self.identities[key].device_key(),
                "key of {}",
                r.index
            );
        }

        // The signed device list names exactly the records holding a slot
        // (stored states), so a pending re-pair names its key twice; its
        // version never goes back; distinct keys stay within the limit.
        let list = a.device_list();
        let listed: Vec<(u32, DeviceKey)> = list
            .devices()
            .iter()
            .map(|e| (e.index.0, e.device))
            .collect();
        let live: Vec<(u32, DeviceKey)> = a
            .devices()
            .filter(|r| r.state.holds_slot())
            .map(|r| (r.index.0, r.device))
            .collect();
        assert_eq!(listed, live, "device list v{}", list.version());
        let live_keys: BTreeSet<DeviceKey> = live.iter().map(|(_, k)| *k).collect();
        assert_eq!(list.distinct_devices(), live_keys.len());
        assert!(list.distinct_devices() <= m.max as usize);
        assert_eq!(list.account(), a.account_id());
        assert!(list.version() >= self.list_version);
        self.list_version = list.version();

        // The clock: the latest time a call recorded a change at.
        assert_eq!(a.clock(), m.clock);
        assert!(a.last_primary_activity() <= a.clock());

        // Indices: 1, 2, 3, … in order, none skipped or reused.
        assert_eq!(a.next_index(), DeviceIndex(m.next_index));
        let listed: Vec<u32> = a.devices().map(|r| r.index.0).collect();
        let expected: Vec<u32> = (1..m.next_index).collect();
        assert_eq!(listed, expected);
        assert_eq!(self.issued.iter().copied().collect::<Vec<_>>(), expected);
        assert!(a.device(DeviceIndex(0)).is_none());
        assert!(a.device(DeviceIndex(m.next_index)).is_none());

        // Primary activity and deadlines.
        assert_eq!(a.last_primary_activity(), m.last_activity);
        assert_eq!(a.primary_deadline(), m.primary_deadline());
        assert_eq!(a.next_deadline(), m.next_deadline());

        // Agreement with the model at every interesting instant.
        for t in self.probes() {
            for i in self.indices() {
                assert_eq!(
                    a.device_state(DeviceIndex(i), t),
                    m.state_at(i, t),
                    "device {i} at {t} (now {now})"
                );
            }
            assert_eq!(a.companion_count(t), m.taken(t), "count at {t}");
        }

        // The primary-offline boundary is exact for every companion still
        // holding a slot whose other deadlines come later.
        let deadline = m.primary_deadline();
        for (i, d) in &m.devices {
            let Some((at, reason)) = m.expiry(d) else {
                continue;
            };
            if reason == LogoutReason::PrimaryOffline {
                assert_eq!(at, deadline);
                assert_eq!(
                    a.device_state(DeviceIndex(*i), deadline),
                    Some(DeviceState::LoggedOut {
                        reason: LogoutReason::PrimaryOffline,
                        at: deadline
                    })
                );
                let before = a.device_state(DeviceIndex(*i), sub(deadline, 1)).unwrap();
                assert!(before.holds_slot(), "device {i} out before {deadline}");
            }
        }

        // Stored states agree with the model's; settled logouts are forever.
        for r in a.devices() {
            assert_eq!(
                r.state, m.devices[&r.index.0].state,
                "stored state of {}",
                r.index
            );
            if let DeviceState::LoggedOut { .. } = r.state {
                if let Some(old) = self.settled.insert(r.index.0, r.state) {
                    assert_eq!(old, r.state, "settled logout of {} changed", r.index);
                }
            }
        }
        for (i, s) in &self.settled {
            assert_eq!(a.device(DeviceIndex(*i)).unwrap().state, *s);
            for t in [Timestamp::EPOCH, now, Timestamp::MAX] {
                assert_eq!(a.device_state(DeviceIndex(*i), t), Some(*s));
            }
        }
        // Observed logouts stay while the clock only moves forward.
        for (i, s) in &self.observed {
            assert_eq!(
                a.device_state(DeviceIndex(*i), now),
                Some(*s),
                "observed logout of #{i} undone"
            );
        }
        for i in self.indices() {
            if let Some(s @ DeviceState::LoggedOut { .. }) = a.device_state(DeviceIndex(i), now) {
                self.observed.entry(i).or_insert(s);
            }
        }
    }
}

fn run(s: &Scenario) -> Model {
    let mut h = Harness::new(s);
    h.check_invariants();
    for (n, op) in s.ops.iter().enumerate() {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            h.step(op);
            h.check_invariants();
        }));
        if let Err(e) = result {
            eprintln!("failed at step {n}: {op:?} (now {})", h.now);
            std::panic::resume_unwind(e);
        }
    }
    let mut st = STATS.lock().unwrap();
    st[0] += 1;
    st[1] += s.ops.len() as u64;
    for r in h.model.devices.values() {
        match r.state {
            DeviceState::Active { .. } => st[2] += 1,
            DeviceState::Pending { .. } => st[3] += 1,
            DeviceState::LoggedOut {
                reason: LogoutReason::PrimaryOffline,
                ..
            } => st[4] += 1,
            DeviceState::LoggedOut {
                reason: LogoutReason::ConfirmationTimedOut,
                ..
            } => st[5] += 1,
            DeviceState::LoggedOut {
                reason: LogoutReason::CompanionIdle,
                ..
            } => st[6] += 1,
            DeviceState::LoggedOut {
                reason: LogoutReason::Replaced,
                ..
            } => st[8] += 1,
            DeviceState::LoggedOut { .. } => st[7] += 1,
        }
    }
    if st[0].is_multiple_of(500) {
        eprintln!(
            "cases {} ops {} active {} pending {} offline {} cto {} idle {} revoked {} replaced {}",
            st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7], st[8]
        );
    }
    drop(st);
    h.model
}
static STATS: std::sync::Mutex<[u64; 9]> = std::sync::Mutex::new([0; 9]);

fn config() -> Config {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    Config {
        cases: env("PROPTEST_CASES").map_or(1000, |c| u32::try_from(c).unwrap_or(u32::MAX)),
        rng_seed: RngSeed::Fixed(env("PROPTEST_RNG_SEED").unwrap_or(0x0DE7_1CE5)),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn registry_matches_the_model(s in scenario()) {
        run(&s);
    }
}

/// The operations the generator leans on, spelled out once: link to the
/// limit, let the primary go silent to exactly 14 days minus 1 ms and then
/// 14 days, rewind, heartbeat, and link again; then fill the account and
/// re-pair a listed device twice (once confirmed: its old index is
/// replaced; once never confirmed: its old index stays).
#[test]
fn scripted_sequence_matches_the_model() {
    use Op::*;
    let mut ops = Vec::new();
    for _ in 0..5 {
        ops.extend([StartLink, Approve(0), Confirm(0)]);
    }
    ops.extend([
        Revoke(1),
        StartLink,
        Approve(0),
        Advance {
            ms: CONFIRM_TIMEOUT - 1,
            poll: false,
        },
        Advance { ms: 1, poll: true },
        Confirm(usize::MAX),
        Advance {
            ms: OFFLINE - 1 - CONFIRM_TIMEOUT,
            poll: false,
        },
        Advance { ms: 1, poll: false },
        ClockBackwards(5),
        Heartbeat,
        Advance { ms: 5, poll: false },
        Advance {
            ms: OFFLINE,
            poll: true,
        },
        ClockBackwards(OFFLINE),
        Heartbeat,
        SaveRestore,
        Revoke(2),
        CompanionSeen(3),
        StartLink,
        Approve(0),
        Confirm(0),
        // Catch up with the registry's clock (rewound above), so that the
        // confirmation timeout below really passes.
        Advance {
            ms: OFFLINE + 1,
            poll: true,
        },
        LinkNow,
        LinkNow,
        LinkNow,
        LinkNow,
        RePair(1),
        Approve(1),
        Confirm(1),
        RePair(1),
        Approve(1),
        Advance {
            ms: CONFIRM_TIMEOUT,
            poll: true,
        },
        Confirm(1),
        RePairNow(1),
        StartLink,
    ]);
    for (max_companions, idle) in [(4, false), (2, true)] {
        let model = run(&Scenario {
            seed: 7,
            max_companions,
            idle,
            ops: ops.clone(),
        });
        let reasons: Vec<LogoutReason> = model
            .devices
            .values()
            .filter_map(|d| match d.state {
                DeviceState::LoggedOut { reason, .. } => Some(reason),
                _ => None,
            })
            .collect();
        assert_eq!(
            reasons
                .iter()
                .filter(|r| **r == LogoutReason::Replaced)
                .count(),
            2,
            "limit {max_companions}: {reasons:?}"
        );
        assert!(reasons.contains(&LogoutReason::ConfirmationTimedOut));
        // The last re-pair is active; every older index of its key is out.
        let (newest, last) = model.devices.iter().next_back().unwrap();
        assert!(matches!(last.state, DeviceState::Active { .. }));
        let older: Vec<LogoutReason> = model
            .devices
            .iter()
            .filter(|(i, d)| *i != newest && d.key == last.key)
            .map(|(_, d)| match d.state {
                DeviceState::LoggedOut { reason, .. } => reason,
                other => panic!("older index of the re-paired key is {other:?}"),
            })
            .collect();
        assert_eq!(
            older,
            vec![
                LogoutReason::Replaced,
                LogoutReason::Replaced,
                LogoutReason::ConfirmationTimedOut
            ]
        );
    }
}

/// The companion's user agrees as soon as a Grant verifies: the Confirm.
fn accept(mut companion: Companion, grant: &[u8], now: Timestamp) -> Option<Vec<u8>> {
    companion.receive_grant(grant, now).ok()?;
    companion.consent(now).ok()
}
