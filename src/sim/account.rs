//! One account's simulation: the real registry (and, in full-crypto mode, the
//! real companions, primary handshakes and linked sessions), driven by the
//! account's behaviour RNG on a virtual clock.
//!
//! Time advances from one interesting instant to the next: a queue of
//! scheduled actions (ordered by time, then by scheduling order) and the
//! registry's own [`Account::next_deadline`], which is settled (polled at the
//! deadline itself) before any action at or after it. So every logout is
//! logged at its exact deadline and the account's log is in time order.
//!
//! Both modes make the same behaviour draws in the same order and keep cryptographic
//! randomness on a separate RNG, so for one seed they produce the same event
//! log. In full-crypto mode the simulator also cross-checks the state machines
//! against each other and against the lifecycle-only shortcuts: the offer
//! display against the policy's rotation schedule, the scan against
//! [`Account::companion_count`], and every linked session's lease against the
//! registry's [`Account::primary_deadline`]. A disagreement ends the run with
//! [`SimError::Diverged`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::certificate::{DeviceIndex, PrimaryHeartbeat, SignedDeviceList};
use crate::handshake::{
    Companion, CompanionEvent, DeviceLabel, FailureReason, HandshakeError, PrimaryHandshake,
    RefusalReason,
};
use crate::keys::{DeviceIdentity, DeviceKey};
use crate::offer::TokenId;
use crate::registry::{Account, RegistryError, RegistryEvent};
use crate::session::{LinkedSession, LogoutReason, SessionStatus};
use crate::time::Timestamp;

use super::behaviour::{
    below, between, chance, weighted, DAY_MS, DECLINE_BP, FREE_SLOT_BP, HEARTBEAT_MARGIN_MS,
    LINK_BP, LINK_FULL_BP, MAX_ATTEMPTS, NEVER_SCANNED_BP, NO_CONFIRM_BP, QUIET_BP,
    QUIET_MEDIUM_BP, QUIET_SHORT_BP, RACE_BP, RELOAD_BP, REPAIR_BP, REPLACE_BP, RETRY_BP,
    REVOKE_BP, SCAN_ROTATION_WEIGHTS, SEEN_DAILY_BP, SEEN_OCCASIONAL_BP, USAGE_DAILY_BP,
    USAGE_OCCASIONAL_BP,
};
use super::event::{EventCounts, Refusal, SimEvent, What};
use super::{Shared, SimError, SimMode};

/// What one chunk of accounts produced, in account order.
#[derive(Debug, Default)]
pub(crate) struct ChunkOut {
    pub(crate) events: Vec<SimEvent>,
    /// The events' canonical lines.
    pub(crate) text: String,
    pub(crate) counts: EventCounts,
}

impl ChunkOut {
    fn emit(&mut self, event: SimEvent) {
        event.write_canonical(&mut self.text);
        self.counts.add(event.kind());
        self.events.push(event);
    }
}

/// A scheduled action. Derives `Ord` only so it can sit in the queue; the
/// queue orders by (time, scheduling sequence), which is unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    /// The start of day `n`: draw the day's behaviour.
    Day(u32),
    /// A companion starts showing an offer (`None`: a new companion).
    LinkStart {
        device: Option<u32>,
        attempt: u32,
        replace: bool,
    },
    /// The offer display of a flow reaches its deadline.
    Tick(usize),
    /// The primary scans a flow's offer.
    Scan(usize),
    /// A flow's grant reaches its companion, which confirms.
    Confirm(usize),
    /// The user revokes the oldest companion to make room for this one.
    FreeSlot(u32),
    /// The primary revokes a companion.
    Revoke(u32),
    /// A companion is used.
    Seen(u32),
    /// The primary's daily heartbeat decision.
    HeartbeatCheck,
    /// The primary goes quiet for this many milliseconds.
    QuietStart(u64),
    /// The primary comes back.
    QuietEnd,
}

/// Where a simulated companion stands in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    None,
    Pending(DeviceIndex),
    Active(DeviceIndex),
}

/// A companion device of the account (a browser, a desktop app). It keeps its
/// identity key across re-pairs.
struct Device {
    key: DeviceKey,
    /// Its secret identity (full-crypto mode only).
    identity: Option<DeviceIdentity>,
    /// Chance per day that it is used.
    seen_bp: u32,
    link: Link,
    /// Its linked session (full-crypto mode), while it believes it is linked.
    session: Option<LinkedSession>,
    /// The registry logged it out for a reason the session learns from the
    /// next device list (which names the reason).
    expect_logout: Option<LogoutReason>,
    /// A re-pair is pending: its old index, still active until the new
    /// index is confirmed (then it is replaced).
    replacing: Option<DeviceIndex>,
    /// Logged out for primary inactivity; not re-paired since.
    offline_logout: bool,
    /// A pairing flow is running for it.
    pairing: bool,
}

/// Why an offer display changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DisplayEvent {
    Rotated(u32),
    Ended,
}

/// One pairing attempt: an offer on screen, then (maybe) a scan, a grant and
/// a confirmation.
struct Flow {
    device: u32,
    attempt: u32,
    replace: bool,
    shown_at: Timestamp,
    /// The rotation on screen (the policy's schedule; in full-crypto mode
    /// checked against the real display).
    rotation: u32,
    showing: bool,
    done: bool,
    /// The real companion (full-crypto mode).
    companion: Option<Box<Companion>>,
    /// The primary's half of the handshake, once granted (full-crypto mode).
    primary: Option<Box<PrimaryHandshake>>,
    /// The grant to deliver (full-crypto mode).
    grant: Vec<u8>,
    index: Option<DeviceIndex>,
}

fn plus(t: Timestamp, ms: u64) -> Timestamp {
    t.saturating_add_millis(ms)
}

fn diverged(account: u64, at: Timestamp, what: &'static str) -> SimError {
    SimError::Diverged { account, at, what }
}

fn step(account: u64, at: Timestamp, step: &'static str, e: impl std::fmt::Display) -> SimError {
    SimError::Step {
        account,
        at,
        step,
        detail: e.to_string(),
    }
}

/// One account being simulated.
pub(crate) struct AccountSim<'a> {
    shared: &'a Shared,
    number: u64,
    /// Behaviour draws (identical in both modes).
    rng: ChaCha20Rng,
    /// Key generation and nonces (full-crypto mode).
    keys: ChaCha20Rng,
    account: Account,
    devices: Vec<Device>,
    flows: Vec<Flow>,
    queue: BinaryHeap<Reverse<(Timestamp, u64, Action)>>,
    seq: u64,
    quiet_until: Option<Timestamp>,
    /// The newest heartbeat, for sessions that link after it (full-crypto).
    last_heartbeat: Option<Vec<u8>>,
    tokens: u64,
}

impl<'a> AccountSim<'a> {
    pub(crate) fn new(shared: &'a Shared, number: u64) -> Self {
        let mut rng = ChaCha20Rng::from_seed(shared.behaviour_key);
        rng.set_stream(number);
        let mut keys = ChaCha20Rng::from_seed(shared.crypto_key);
        keys.set_stream(number);
        let policy = shared.policy.clone();
        let account = match &shared.shared_account_key {
            Some(key) => Account::new(key.clone(), policy, shared.start),
            None => Account::generate(policy, &mut keys, shared.start),
        };
        AccountSim {
            shared,
            number,
            rng,
            keys,
            account,
            devices: Vec::new(),
            flows: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            quiet_until: None,
            last_heartbeat: None,
            tokens: 0,
        }
    }

    fn full(&self) -> bool {
        self.shared.mode == SimMode::FullCrypto
    }

    /// Runs the account from the start to the end of the simulated period.
    pub(crate) fn run(mut self, out: &mut ChunkOut) -> Result<(), SimError> {
        if self.shared.days == 0 {
            return Ok(());
        }
        self.push(self.shared.start, Action::Day(0));
        while let Some(Reverse((t, _, action))) = self.queue.pop() {
            if t >= self.shared.end {
                break;
            }
            self.settle(t, out)?;
            self.handle(t, action, out)?;
        }
        let last = self.shared.end.saturating_sub_millis(1);
        self.settle(last, out)
    }

    fn push(&mut self, at: Timestamp, action: Action) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, action)));
    }

    fn emit(&self, out: &mut ChunkOut, at: Timestamp, what: What) {
        out.emit(SimEvent {
            account: self.number,
            at,
            what,
        });
    }

    fn diverged(&self, at: Timestamp, what: &'static str) -> SimError {
        diverged(self.number, at, what)
    }

    fn quiet(&self, t: Timestamp) -> bool {
        self.quiet_until.is_some_and(|u| t < u)
    }

    fn count(&self, t: Timestamp) -> u32 {
        self.account.companion_count(t)
    }

    fn random_in_day(&mut self, day_start: Timestamp) -> Timestamp {
        plus(day_start, below(&mut self.rng, DAY_MS))
    }

    /// End (exclusive) of rotation `k` of an offer shown at `shown`.
    fn end_of(&self, shown: Timestamp, k: u32) -> Timestamp {
        plus(
            shown,
            self.shared
                .first_ms
                .saturating_add(self.shared.rotated_ms.saturating_mul(u64::from(k))),
        )
    }

    fn label(&self, device: u32) -> Result<DeviceLabel, SimError> {
        let labels = &self.shared.labels;
        let i = usize::try_from(device).unwrap_or(0) % labels.len().max(1);
        labels
            .get(i)
            .cloned()
            .ok_or_else(|| self.diverged(self.shared.start, "no device labels"))
    }

    fn device(&self, c: u32, at: Timestamp) -> Result<&Device, SimError> {
        usize::try_from(c)
            .ok()
            .and_then(|i| self.devices.get(i))
            .ok_or_else(|| self.diverged(at, "unknown companion"))
    }

    fn device_mut(&mut self, c: u32, at: Timestamp) -> Result<&mut Device, SimError> {
        let number = self.number;
        usize::try_from(c)
            .ok()
            .and_then(|i| self.devices.get_mut(i))
            .ok_or_else(|| diverged(number, at, "unknown companion"))
    }

    fn flow_mut(&mut self, f: usize, at: Timestamp) -> Result<&mut Flow, SimError> {
        let number = self.number;
        self.flows
            .get_mut(f)
            .ok_or_else(|| diverged(number, at, "unknown flow"))
    }

    /// The companion holding `index` (pending or active, or an old index a
    /// pending re-pair will replace).
    fn holder(&self, index: DeviceIndex, at: Timestamp) -> Result<u32, SimError> {
        self.devices
            .iter()
            .position(|d| {
                matches!(d.link, Link::Pending(i) | Link::Active(i) if i == index)
                    || d.replacing == Some(index)
            })
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| self.diverged(at, "registry event for a device the simulator lost"))
    }

    // ---- the registry's clock ------------------------------------------------

    /// Polls the registry at each of its deadlines up to `t`, in order.
    fn settle(&mut self, t: Timestamp, out: &mut ChunkOut) -> Result<(), SimError> {
        while let Some(d) = self.account.next_deadline() {
            if d > t {
                break;
            }
            self.account.poll(d);
            if self.account.next_deadline().is_some_and(|n| n <= d) {
                return Err(self.diverged(d, "registry deadline did not advance"));
            }
            self.drain(None, out)?;
            self.sync_sessions(d)?;
        }
        Ok(())
    }

    /// Turns the registry's new events into log events; `granting` is the
    /// companion a grant in this batch belongs to.
    fn drain(&mut self, granting: Option<u32>, out: &mut ChunkOut) -> Result<(), SimError> {
        for event in self.account.take_events() {
            match event {
                RegistryEvent::Granted { index, at, .. } => {
                    let c = granting
                        .ok_or_else(|| self.diverged(at, "grant without a granting companion"))?;
                    let dev = self.device_mut(c, at)?;
                    if let Link::Active(old) = dev.link {
                        // A re-pair: the old record stays until the confirm.
                        dev.replacing = Some(old);
                    }
                    dev.link = Link::Pending(index);
                    self.emit(
                        out,
                        at,
                        What::Granted {
                            companion: c,
                            index,
                        },
                    );
                }
                RegistryEvent::Linked { index, at } => {
                    let c = self.holder(index, at)?;
                    self.device_mut(c, at)?.link = Link::Active(index);
                    self.emit(
                        out,
                        at,
                        What::Linked {
                            companion: c,
                            index,
                        },
                    );
                }
                RegistryEvent::LoggedOut { index, reason, at } => {
                    let c = self.holder(index, at)?;
                    let number = self.number;
                    let dev = self.device_mut(c, at)?;
                    if dev.replacing == Some(index) {
                        // The old record of a re-pairing device.
                        dev.replacing = None;
                    } else if let (Link::Pending(_), Some(old)) = (dev.link, dev.replacing) {
                        // The re-pair's pending index ended: the old one
                        // still holds the slot.
                        dev.link = Link::Active(old);
                        dev.replacing = None;
                    } else {
                        dev.link = Link::None;
                    }
                    dev.offline_logout = reason == LogoutReason::PrimaryOffline;
                    if reason == LogoutReason::Replaced {
                        // The old session is superseded by the re-pair's.
                        dev.session = None;
                    } else if reason == LogoutReason::PrimaryOffline {
                        // The session's own lease must end at the same instant.
                        if let Some(mut s) = dev.session.take() {
                            let before = at.saturating_sub_millis(1);
                            let agrees = s.expires_at() == at
                                && s.is_linked(before)
                                && s.poll(at)
                                    == (SessionStatus::LoggedOut {
                                        reason: LogoutReason::PrimaryOffline,
                                    });
                            if !agrees {
                                return Err(diverged(
                                    number,
                                    at,
                                    "a session's lease ended at another instant than the registry's",
                                ));
                            }
                        }
                    } else if dev.session.as_ref().is_some_and(|s| s.index() == index) {
                        dev.expect_logout = Some(reason);
                    }
                    self.emit(
                        out,
                        at,
                        What::LoggedOut {
                            companion: c,
                            index,
                            reason,
                        },
                    );
                }
                RegistryEvent::Refused { .. } | RegistryEvent::DeviceListUpdated { .. } => {}
            }
        }
        Ok(())
    }

    /// Delivers the current signed device list to every session holding an
    /// older one (full-crypto mode), and checks what each makes of it.
    fn sync_sessions(&mut self, now: Timestamp) -> Result<(), SimError> {
        let version = self.account.device_list_version();
        let stale = |d: &Device| {
            d.session
                .as_ref()
                .is_some_and(|s| s.device_list().version() < version)
        };
        if !self.devices.iter().any(stale) {
            return Ok(());
        }
        // Over the wire: the bytes every companion receives, decoded (and
        // the signature verified) as a receiving host does.
        let number = self.number;
        let list = SignedDeviceList::from_bytes(&self.account.device_list().to_bytes())
            .map_err(|e| step(number, now, "decode the device list", e))?;
        let deadline = self.account.primary_deadline();
        for dev in &mut self.devices {
            let Some(s) = dev.session.as_mut() else {
                continue;
            };
            if s.device_list().version() >= version {
                continue;
            }
            let status = s
                .accept_device_list(&list, now)
                .map_err(|e| step(number, now, "session accepts the device list", e))?
                .status;
            if let Some(reason) = dev.expect_logout {
                if status != (SessionStatus::LoggedOut { reason }) {
                    return Err(diverged(
                        number,
                        now,
                        "a logged-out device's session still reads as linked",
                    ));
                }
                dev.session = None;
                dev.expect_logout = None;
            } else if matches!(status, SessionStatus::LoggedOut { .. })
                || s.expires_at() != deadline
            {
                return Err(diverged(
                    number,
                    now,
                    "a session's lease differs from the registry's",
                ));
            }
        }
        Ok(())
    }

    /// Records primary activity: in full-crypto mode a signed heartbeat,
    /// delivered to every session; in lifecycle-only mode the same registry
    /// rule without the signature.
    fn heartbeat(&mut self, t: Timestamp, out: &mut ChunkOut) -> Result<(), SimError> {
        if !self.full() {
            // Lifecycle-only: the same registry rule without the signature.
            self.account.record_primary_activity(t);
            self.drain(None, out)?;
            self.emit(out, t, What::Heartbeat);
            return Ok(());
        }
        let heartbeat = self.account.heartbeat(t);
        self.drain(None, out)?;
        self.emit(out, t, What::Heartbeat);
        let bytes = heartbeat.to_bytes();
        let deadline = self.account.primary_deadline();
        let number = self.number;
        let received = PrimaryHeartbeat::from_bytes(&bytes)
            .map_err(|e| step(number, t, "decode the heartbeat", e))?;
        for s in self.devices.iter_mut().filter_map(|d| d.session.as_mut()) {
            let status = s
                .accept_heartbeat(&received, t)
                .map_err(|e| step(number, t, "session accepts the heartbeat", e))?;
            if matches!(status, SessionStatus::LoggedOut { .. }) || s.expires_at() != deadline {
                return Err(diverged(
                    number,
                    t,
                    "a session's lease differs from the registry's after a heartbeat",
                ));
            }
        }
        self.last_heartbeat = Some(bytes);
        Ok(())
    }

    // ---- actions ---------------------------------------------------------------

    fn handle(&mut self, t: Timestamp, action: Action, out: &mut ChunkOut) -> Result<(), SimError> {
        match action {
            Action::Day(d) => self.day(t, d),
            Action::LinkStart {
                device,
                attempt,
                replace,
            } => self.link_start(t, device, attempt, replace, out),
            Action::Tick(f) => self.advance_display(t, f, out).map(|_| ()),
            Action::Scan(f) => self.scan(t, f, out),
            Action::Confirm(f) => self.confirm(t, f, out),
            Action::FreeSlot(c) => self.free_slot(t, c, out),
            Action::Revoke(c) => match self.device(c, t)?.link {
                Link::Active(index) if !self.quiet(t) => self.revoke(t, index, out),
                _ => Ok(()),
            },
            Action::Seen(c) => match self.device(c, t)?.link {
                Link::Active(index) => {
                    self.account
                        .companion_seen(index, t)
                        .map_err(|e| step(self.number, t, "companion_seen", e))?;
                    self.drain(None, out)
                }
                _ => Ok(()),
            },
            Action::HeartbeatCheck => {
                let last = self.account.last_primary_activity();
                let threshold = self.shared.offline_ms.saturating_sub(HEARTBEAT_MARGIN_MS);
                let age = t.as_unix_millis().saturating_sub(last.as_unix_millis());
                if !self.quiet(t) && self.count(t) > 0 && age >= threshold {
                    self.heartbeat(t, out)?;
                }
                Ok(())
            }
            Action::QuietStart(len) => self.quiet_start(t, len, out),
            Action::QuietEnd => self.quiet_end(t, out),
        }
    }

    fn day(&mut self, t: Timestamp, d: u32) -> Result<(), SimError> {
        let next = d.saturating_add(1);
        if next < self.shared.days {
            let at = plus(self.shared.start, u64::from(next).saturating_mul(DAY_MS));
            self.push(at, Action::Day(next));
        }
        if d == 0 {
            for _ in 0..1 + below(&mut self.rng, 3) {
                let at = plus(t, below(&mut self.rng, DAY_MS / 2));
                self.schedule_link(at, None, false);
            }
        }
        let count = self.count(t);
        if !self.quiet(t) {
            if chance(&mut self.rng, QUIET_BP) {
                let len = self.quiet_len();
                let at = self.random_in_day(t);
                self.push(at, Action::QuietStart(len));
            }
            let limit = self.shared.policy.max_companions();
            let p = if count < limit { LINK_BP } else { LINK_FULL_BP };
            if chance(&mut self.rng, p) {
                let at = self.random_in_day(t);
                self.schedule_link(at, None, false);
            }
        }
        // The daily heartbeat decision, on days when it can fall due.
        let due = plus(
            self.account.last_primary_activity(),
            self.shared.offline_ms.saturating_sub(HEARTBEAT_MARGIN_MS),
        );
        if count > 0 && due < plus(t, DAY_MS) {
            let at = self.random_in_day(t);
            self.push(at, Action::HeartbeatCheck);
        }
        for i in 0..self.devices.len() {
            let Some(dev) = self.devices.get(i) else {
                continue;
            };
            if !matches!(dev.link, Link::Active(_)) {
                continue;
            }
            let seen_bp = dev.seen_bp;
            let c = u32::try_from(i).unwrap_or(u32::MAX);
            if chance(&mut self.rng, REVOKE_BP) {
                let at = self.random_in_day(t);
                self.push(at, Action::Revoke(c));
            }
            if chance(&mut self.rng, REPLACE_BP) {
                let at = self.random_in_day(t);
                self.schedule_link(at, Some(c), true);
            }
            if seen_bp > 0 && chance(&mut self.rng, seen_bp) {
                let at = self.random_in_day(t);
                self.push(at, Action::Seen(c));
            }
        }
        Ok(())
    }

    fn quiet_len(&mut self) -> u64 {
        let limit = self.shared.offline_ms;
        let r = below(&mut self.rng, u64::from(super::behaviour::BASIS));
        let (lo, hi) = if r < u64::from(QUIET_SHORT_BP) {
            (7, 43)
        } else if r < u64::from(QUIET_SHORT_BP + QUIET_MEDIUM_BP) {
            (43, 97)
        } else {
            (101, 180)
        };
        let pct = |p: u64| u64::try_from(u128::from(limit) * u128::from(p) / 100).unwrap_or(limit);
        between(&mut self.rng, pct(lo), pct(hi)).max(1)
    }

    fn new_device(&mut self, at: Timestamp) -> Result<u32, SimError> {
        let c = u32::try_from(self.devices.len())
            .map_err(|_| self.diverged(at, "too many companions"))?;
        let r = below(&mut self.rng, u64::from(super::behaviour::BASIS));
        let seen_bp = if r < u64::from(USAGE_DAILY_BP) {
            SEEN_DAILY_BP
        } else if r < u64::from(USAGE_DAILY_BP + USAGE_OCCASIONAL_BP) {
            SEEN_OCCASIONAL_BP
        } else {
            0
        };
        let (key, identity) = if self.full() {
            let identity = DeviceIdentity::generate(&mut self.keys);
            (identity.device_key(), Some(identity))
        } else {
            // Lifecycle-only: a distinct placeholder key, never verified.
            let mut bytes = [0x5a_u8; 32];
            for (dst, src) in bytes.iter_mut().zip(c.to_le_bytes()) {
                *dst = src;
            }
            (DeviceKey::from_bytes(bytes), None)
        };
        self.devices.push(Device {
            key,
            identity,
            seen_bp,
            link: Link::None,
            session: None,
            expect_logout: None,
            replacing: None,
            offline_logout: false,
            pairing: false,
        });
        Ok(c)
    }

    /// A real companion showing a fresh offer at `t` (full-crypto mode).
    fn companion(&mut self, c: u32, t: Timestamp) -> Result<Option<Box<Companion>>, SimError> {
        if !self.full() {
            return Ok(None);
        }
        let identity = self
            .device(c, t)?
            .identity
            .clone()
            .ok_or_else(|| self.diverged(t, "companion without an identity"))?;
        let label = self.label(c)?;
        Ok(Some(Box::new(Companion::new(
            identity,
            label,
            &self.shared.policy,
            &mut self.keys,
            t,
        ))))
    }

    fn link_start(
        &mut self,
        t: Timestamp,
        device: Option<u32>,
        attempt: u32,
        replace: bool,
        out: &mut ChunkOut,
    ) -> Result<(), SimError> {
        let c = match device {
            None => self.new_device(t)?,
            Some(c) => {
                let dev = self.device(c, t)?;
                let eligible = if replace {
                    matches!(dev.link, Link::Active(_))
                } else {
                    dev.link == Link::None
                };
                if dev.pairing || !eligible {
                    return Ok(());
                }
                c
            }
        };
        // When (if ever) the primary scans: rotation k, uniform within it.
        let scan_at = if chance(&mut self.rng, NEVER_SCANNED_BP) {
            None
        } else {
            let rotations = usize::try_from(self.shared.max_rotations).unwrap_or(usize::MAX);
            let k = weighted(
                &mut self.rng,
                &SCAN_ROTATION_WEIGHTS,
                rotations.saturating_add(1),
            );
            let k = u32::try_from(k).unwrap_or(0);
            let (start, lifetime) = if k == 0 {
                (t, self.shared.first_ms)
            } else {
                (self.end_of(t, k - 1), self.shared.rotated_ms)
            };
            Some(plus(start, below(&mut self.rng, lifetime)))
        };
        let companion = self.companion(c, t)?;
        let f = self.flows.len();
        self.flows.push(Flow {
            device: c,
            attempt,
            replace,
            shown_at: t,
            rotation: 0,
            showing: true,
            done: false,
            companion,
            primary: None,
            grant: Vec::new(),
            index: None,
        });
        self.device_mut(c, t)?.pairing = true;
        self.emit(
            out,
            t,
            What::OfferShown {
                companion: c,
                attempt,
            },
        );
        let deadline = self.end_of(t, 0);
        self.push(deadline, Action::Tick(f));
        if let Some(at) = scan_at {
            self.push(at, Action::Scan(f));
        }
        Ok(())
    }

    /// Polls a flow's display: the policy's schedule, and in full-crypto mode
    /// the real companion, which must agree.
    fn poll_display(&mut self, t: Timestamp, f: usize) -> Result<Option<DisplayEvent>, SimError> {
        let number = self.number;
        let (shown, rotation, showing) = {
            let flow = self.flow_mut(f, t)?;
            (flow.shown_at, flow.rotation, flow.showing)
        };
        if !showing {
            return Ok(None);
        }
        let max = self.shared.max_rotations;
        let scheduled = if t < self.end_of(shown, rotation) {
            None
        } else {
            let mut k = rotation;
            while k < max && self.end_of(shown, k) <= t {
                k += 1;
            }
            if self.end_of(shown, k) <= t {
                Some(DisplayEvent::Ended)
            } else {
                Some(DisplayEvent::Rotated(k))
            }
        };
        let Self { flows, keys, .. } = self;
        let flow = flows
            .get_mut(f)
            .ok_or_else(|| diverged(number, t, "unknown flow"))?;
        if let Some(companion) = flow.companion.as_mut() {
            let real = match companion.poll(keys, t) {
                None => None,
                Some(CompanionEvent::OfferRotated { rotation, .. }) => {
                    Some(DisplayEvent::Rotated(rotation))
                }
                Some(CompanionEvent::Failed(FailureReason::OfferEnded(_))) => {
                    Some(DisplayEvent::Ended)
                }
                Some(CompanionEvent::Failed(_)) => {
                    return Err(diverged(number, t, "offer display failed otherwise"))
                }
            };
            if real != scheduled {
                return Err(diverged(
                    number,
                    t,
                    "the offer display left the policy's rotation schedule",
                ));
            }
        }
        match scheduled {
            Some(DisplayEvent::Rotated(k)) => flow.rotation = k,
            Some(DisplayEvent::Ended) => flow.showing = false,
            None => {}
        }
        Ok(scheduled)
    }

    /// Advances a flow's display to `t`, logging what changed; false once the
    /// display is no longer showing.
    fn advance_display(
        &mut self,
        t: Timestamp,
        f: usize,
        out: &mut ChunkOut,
    ) -> Result<bool, SimError> {
        let event = self.poll_display(t, f)?;
        let (c, shown, attempt, replace, showing) = {
            let flow = self.flow_mut(f, t)?;
            (
                flow.device,
                flow.shown_at,
                flow.attempt,
                flow.replace,
                flow.showing,
            )
        };
        match event {
            Some(DisplayEvent::Rotated(rotation)) => {
                self.emit(
                    out,
                    t,
                    What::OfferRotated {
                        companion: c,
                        rotation,
                    },
                );
                let next = self.end_of(shown, rotation);
                self.push(next, Action::Tick(f));
            }
            Some(DisplayEvent::Ended) => {
                self.emit(out, t, What::OfferTimedOut { companion: c });
                self.finish(f, t)?;
                if attempt < MAX_ATTEMPTS && chance(&mut self.rng, RELOAD_BP) {
                    let at = plus(t, between(&mut self.rng, 5_000, 60_000));
                    self.push(
                        at,
                        Action::LinkStart {
                            device: Some(c),
                            attempt: attempt + 1,
                            replace,
                        },
                    );
                }
            }
            None => {}
        }
        Ok(showing)
    }

    /// Ends a flow: drops its state machines; its companion may pair again.
    fn finish(&mut self, f: usize, t: Timestamp) -> Result<(), SimError> {
        let flow = self.flow_mut(f, t)?;
        flow.showing = false;
        flow.done = true;
        flow.companion = None;
        flow.primary = None;
        flow.grant = Vec::new();
        let c = flow.device;
        self.device_mut(c, t)?.pairing = false;
        Ok(())
    }

    fn scan(&mut self, t: Timestamp, f: usize, out: &mut ChunkOut) -> Result<(), SimError> {
        if !self.flow_mut(f, t)?.showing || !self.advance_display(t, f, out)? {
            return Ok(());
        }
        if self.quiet(t) {
            // The phone is away: nobody scans; the display runs its course.
            return Ok(());
        }
        let number = self.number;
        let (c, rotation, replace) = {
            let flow = self.flow_mut(f, t)?;
            flow.showing = false;
            (flow.device, flow.rotation, flow.replace)
        };
        self.emit(
            out,
            t,
            What::Scanned {
                companion: c,
                rotation,
            },
        );
        let limit = self.shared.policy.max_companions();
        let count = self.count(t);
        // A device re-pairing with its own key keeps its slot.
        let own = u32::from(matches!(
            self.device(c, t)?.link,
            Link::Active(_) | Link::Pending(_)
        ));
        let full = count.saturating_sub(own) >= limit;

        // Full crypto: the real scan from the "Link a device" screen; a full
        // account refuses once the companion's key is known.
        let mut started = None;
        if self.full() {
            let text = self
                .flow_mut(f, t)?
                .companion
                .as_ref()
                .and_then(|c| c.offer())
                .map(|o| o.to_text())
                .ok_or_else(|| diverged(number, t, "no offer on screen at the scan"))?;
            self.account.open_link_intent(t);
            let (mut handshake, hello) = self
                .account
                .scan(&text, &mut self.keys, t)
                .map_err(|e| step(number, t, "scan", e))?;
            let companion = self
                .flows
                .get_mut(f)
                .and_then(|flow| flow.companion.as_mut())
                .ok_or_else(|| diverged(number, t, "no companion at the scan"))?;
            let request = companion
                .receive_hello(&hello, &mut self.keys, t)
                .map_err(|e| step(number, t, "receive_hello", e))?;
            match (
                full,
                self.account
                    .receive_request(&mut handshake, &request, &mut self.keys, t),
            ) {
                (true, Err(RegistryError::Refused { refusal, .. })) => {
                    self.deliver_refusal(f, &refusal, t)?;
                }
                (false, Ok(_)) => started = Some(handshake),
                (true, Ok(_)) => {
                    return Err(diverged(number, t, "request accepted without a free slot"))
                }
                (_, Err(e)) => return Err(step(number, t, "receive_request", e)),
            }
            self.drain(None, out)?;
        }

        if full {
            self.emit(
                out,
                t,
                What::Refused {
                    companion: c,
                    reason: Refusal::DeviceLimitReached,
                },
            );
            self.finish(f, t)?;
            if chance(&mut self.rng, FREE_SLOT_BP) {
                let at = plus(t, between(&mut self.rng, 30_000, 180_000));
                self.push(at, Action::FreeSlot(c));
            }
            return Ok(());
        }

        let race = count + 1 == limit && !replace && chance(&mut self.rng, RACE_BP);
        let decline = !race && chance(&mut self.rng, DECLINE_BP);

        // Full crypto: the phone shows who asks.
        let mut primary = started;

        if decline {
            if let Some(mut handshake) = primary {
                let refusal = self
                    .account
                    .refuse(&mut handshake, RefusalReason::Declined, &mut self.keys, t)
                    .map_err(|e| step(number, t, "refuse", e))?;
                self.deliver_refusal(f, &refusal, t)?;
                self.drain(None, out)?;
            }
            self.emit(
                out,
                t,
                What::Refused {
                    companion: c,
                    reason: Refusal::Declined,
                },
            );
            return self.finish(f, t);
        }

        if race {
            return self.race(t, f, primary, out);
        }
        let grant = self
            .try_grant(t, c, primary.as_mut(), out)?
            .map_err(|e| step(number, t, "grant", e))?;
        self.granted(t, f, primary, grant)
    }

    /// The refusal reaches the flow's companion, which must fail with it.
    fn deliver_refusal(&mut self, f: usize, refusal: &[u8], t: Timestamp) -> Result<(), SimError> {
        let number = self.number;
        if let Some(companion) = self.flow_mut(f, t)?.companion.as_mut() {
            match companion.receive_grant(refusal, t) {
                Err(HandshakeError::Refused(_)) => {}
                _ => {
                    return Err(diverged(
                        number,
                        t,
                        "a companion did not fail on its refusal",
                    ))
                }
            }
        }
        Ok(())
    }

    /// Grants companion `c` a slot: the real grant (full crypto) or the
    /// registry's lifecycle-only admission. The outer error is the
    /// simulator's; the inner one the registry's refusal.
    fn try_grant(
        &mut self,
        t: Timestamp,
        c: u32,
        primary: Option<&mut PrimaryHandshake>,
        out: &mut ChunkOut,
    ) -> Result<Result<Vec<u8>, RegistryError>, SimError> {
        let result = match primary {
            Some(handshake) => self.account.grant(handshake, &mut self.keys, t),
            None if self.full() => return Err(self.diverged(t, "grant without a handshake")),
            None => {
                let key = self.device(c, t)?.key;
                let label = self.label(c)?;
                self.tokens += 1;
                let mut token = [0u8; 16];
                for (dst, src) in token.iter_mut().zip(self.tokens.to_le_bytes()) {
                    *dst = src;
                }
                self.account
                    .admit_without_handshake(key, label, TokenId::from_bytes(token), t)
                    .map(|_| Vec::new())
            }
        };
        let granting = result.as_ref().ok().map(|_| c);
        self.drain(granting, out)?;
        if result.is_ok() {
            self.sync_sessions(t)?;
        }
        Ok(result)
    }

    /// After a grant: the companion confirms shortly, or the grant is lost.
    fn granted(
        &mut self,
        t: Timestamp,
        f: usize,
        primary: Option<PrimaryHandshake>,
        grant: Vec<u8>,
    ) -> Result<(), SimError> {
        let c = self.flow_mut(f, t)?.device;
        let index = match self.device(c, t)?.link {
            Link::Pending(index) => index,
            _ => return Err(self.diverged(t, "granted companion holds no pending slot")),
        };
        {
            let flow = self.flow_mut(f, t)?;
            flow.showing = false;
            flow.primary = primary.map(Box::new);
            flow.grant = grant;
            flow.index = Some(index);
        }
        if chance(&mut self.rng, NO_CONFIRM_BP) {
            // The grant never arrives: the pending slot will time out.
            self.finish(f, t)?;
            if chance(&mut self.rng, RETRY_BP) {
                let at = plus(t, between(&mut self.rng, 300_000, 1_800_000));
                self.schedule_link(at, Some(c), false);
            }
        } else {
            let at = plus(t, between(&mut self.rng, 200, 3_000));
            self.push(at, Action::Confirm(f));
        }
        Ok(())
    }

    /// Two companions scanned while one slot is free: both handshakes are
    /// under way; the first grant takes the slot, the second is refused.
    fn race(
        &mut self,
        t: Timestamp,
        f: usize,
        primary_a: Option<PrimaryHandshake>,
        out: &mut ChunkOut,
    ) -> Result<(), SimError> {
        let number = self.number;
        let a = self.flow_mut(f, t)?.device;
        let b = self.new_device(t)?;
        self.emit(
            out,
            t,
            What::RaceStarted {
                companion: a,
                rival: b,
            },
        );
        let a_wins = chance(&mut self.rng, 5_000);

        // The rival's offer, scanned at once (full crypto).
        let mut companion_b = self.companion(b, t)?;
        let mut primary_b = None;
        if let Some(companion) = companion_b.as_mut() {
            let text = companion
                .offer()
                .map(|o| o.to_text())
                .ok_or_else(|| diverged(number, t, "rival shows no offer"))?;
            self.account.open_link_intent(t);
            let (mut handshake, hello) = self
                .account
                .scan(&text, &mut self.keys, t)
                .map_err(|e| step(number, t, "rival scan", e))?;
            let request = companion
                .receive_hello(&hello, &mut self.keys, t)
                .map_err(|e| step(number, t, "rival receive_hello", e))?;
            handshake
                .receive_request(&request, t)
                .map_err(|e| step(number, t, "rival receive_request", e))?;
            primary_b = Some(handshake);
            self.drain(None, out)?;
        }
        let fb = self.flows.len();
        self.flows.push(Flow {
            device: b,
            attempt: 1,
            replace: false,
            shown_at: t,
            rotation: 0,
            showing: false,
            done: false,
            companion: companion_b,
            primary: None,
            grant: Vec::new(),
            index: None,
        });
        self.device_mut(b, t)?.pairing = true;

        let (winner, loser, mut primary_w, primary_l) = if a_wins {
            (f, fb, primary_a, primary_b)
        } else {
            (fb, f, primary_b, primary_a)
        };
        let (cw, cl) = (
            self.flow_mut(winner, t)?.device,
            self.flow_mut(loser, t)?.device,
        );
        let grant = self
            .try_grant(t, cw, primary_w.as_mut(), out)?
            .map_err(|e| step(number, t, "race winner's grant", e))?;
        let mut primary_l = primary_l;
        match self.try_grant(t, cl, primary_l.as_mut(), out)? {
            Err(RegistryError::DeviceLimitReached { limit }) => {
                if let Some(mut handshake) = primary_l {
                    let refusal = self
                        .account
                        .refuse(
                            &mut handshake,
                            RefusalReason::DeviceLimitReached { limit },
                            &mut self.keys,
                            t,
                        )
                        .map_err(|e| step(number, t, "refuse the race loser", e))?;
                    self.deliver_refusal(loser, &refusal, t)?;
                    self.drain(None, out)?;
                }
            }
            Ok(_) => {
                return Err(diverged(
                    number,
                    t,
                    "both racers were granted the last slot",
                ))
            }
            Err(e) => return Err(step(number, t, "race loser's grant", e)),
        }
        self.emit(out, t, What::RaceLost { companion: cl });
        self.finish(loser, t)?;
        self.granted(t, winner, primary_w, grant)
    }

    fn confirm(&mut self, t: Timestamp, f: usize, out: &mut ChunkOut) -> Result<(), SimError> {
        let number = self.number;
        let (c, index, done) = {
            let flow = self.flow_mut(f, t)?;
            (flow.device, flow.index, flow.done)
        };
        if done {
            return Ok(());
        }
        let index = index.ok_or_else(|| diverged(number, t, "confirm before a grant"))?;
        let mut session = None;
        if self.full() {
            let (companion, primary, grant) = {
                let flow = self.flow_mut(f, t)?;
                (
                    flow.companion.take(),
                    flow.primary.take(),
                    std::mem::take(&mut flow.grant),
                )
            };
            let (Some(mut companion), Some(mut primary)) = (companion, primary) else {
                return Err(diverged(number, t, "confirm without its handshakes"));
            };
            companion
                .receive_grant(&grant, t)
                .map_err(|e| step(number, t, "receive_grant", e))?;
            let confirm = companion
                .consent(t)
                .map_err(|e| step(number, t, "consent", e))?;
            let link = self
                .account
                .confirm(&mut primary, &confirm, t)
                .map_err(|e| step(number, t, "confirm", e))?;
            if link.certificate.index() != index {
                return Err(diverged(number, t, "confirmed another index"));
            }
            let s = companion
                .into_session()
                .map_err(|_| diverged(number, t, "companion not linked after its grant"))?;
            session = Some(s);
        } else {
            self.account
                .confirm_without_handshake(index, t)
                .map_err(|e| step(number, t, "confirm", e))?;
        }
        self.drain(None, out)?;
        if let Some(mut s) = session {
            if s.index() != index {
                return Err(diverged(number, t, "session holds another index"));
            }
            // Activity signed while the grant was in flight reaches it too.
            if let Some(bytes) = &self.last_heartbeat {
                let heartbeat = PrimaryHeartbeat::from_bytes(bytes)
                    .map_err(|e| step(number, t, "decode the heartbeat", e))?;
                s.accept_heartbeat(&heartbeat, t)
                    .map_err(|e| step(number, t, "new session accepts the heartbeat", e))?;
            }
            let dev = self.device_mut(c, t)?;
            dev.session = Some(s);
            dev.expect_logout = None;
            self.sync_sessions(t)?;
            let deadline = self.account.primary_deadline();
            let agrees = self
                .device(c, t)?
                .session
                .as_ref()
                .is_some_and(|s| s.expires_at() == deadline && s.is_linked(t));
            if !agrees {
                return Err(diverged(
                    number,
                    t,
                    "a new session's lease differs from the registry's",
                ));
            }
        }
        self.finish(f, t)
    }

    fn revoke(
        &mut self,
        t: Timestamp,
        index: DeviceIndex,
        out: &mut ChunkOut,
    ) -> Result<(), SimError> {
        self.account
            .revoke(index, t)
            .map_err(|e| step(self.number, t, "revoke", e))?;
        self.drain(None, out)?;
        self.sync_sessions(t)
    }

    fn free_slot(&mut self, t: Timestamp, c: u32, out: &mut ChunkOut) -> Result<(), SimError> {
        if self.quiet(t) {
            return Ok(());
        }
        let me = usize::try_from(c).unwrap_or(usize::MAX);
        // A companion that still holds a slot (a re-pair) gives up its own
        // record; otherwise the user removes the oldest other companion.
        let own = self.devices.get(me).and_then(|d| match d.link {
            Link::Active(index) => Some(index),
            _ => None,
        });
        let oldest = self
            .devices
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .filter_map(|(_, d)| match d.link {
                Link::Active(index) => Some(index),
                _ => None,
            })
            .min();
        if let Some(index) = own.or(oldest) {
            self.revoke(t, index, out)?;
            let at = plus(t, between(&mut self.rng, 10_000, 60_000));
            self.schedule_link(at, Some(c), false);
        }
        Ok(())
    }

    /// Schedules a first link attempt of companion `device` (a new one when
    /// `None`) at `at`.
    fn schedule_link(&mut self, at: Timestamp, device: Option<u32>, replace: bool) {
        self.push(
            at,
            Action::LinkStart {
                device,
                attempt: 1,
                replace,
            },
        );
    }

    fn quiet_start(&mut self, t: Timestamp, len: u64, out: &mut ChunkOut) -> Result<(), SimError> {
        if self.quiet(t) {
            return Ok(());
        }
        let until = plus(t, len);
        let lapse = plus(self.account.last_primary_activity(), self.shared.offline_ms);
        if self.count(t) > 0 && lapse <= until {
            // The phone's last use before the spell.
            self.heartbeat(t, out)?;
        }
        self.quiet_until = Some(until);
        self.emit(out, t, What::PrimaryQuiet { until });
        self.push(until, Action::QuietEnd);
        Ok(())
    }

    fn quiet_end(&mut self, t: Timestamp, out: &mut ChunkOut) -> Result<(), SimError> {
        self.quiet_until = None;
        self.emit(out, t, What::PrimaryBack);
        let lapse = plus(self.account.last_primary_activity(), self.shared.offline_ms);
        if self.count(t) > 0 && lapse < plus(t, HEARTBEAT_MARGIN_MS) {
            self.heartbeat(t, out)?;
        }
        for i in 0..self.devices.len() {
            let Some(dev) = self.devices.get_mut(i) else {
                continue;
            };
            if dev.link != Link::None || dev.pairing || !dev.offline_logout {
                continue;
            }
            dev.offline_logout = false;
            if chance(&mut self.rng, REPAIR_BP) {
                let at = plus(t, below(&mut self.rng, 3 * DAY_MS));
                let c = u32::try_from(i).unwrap_or(u32::MAX);
                self.schedule_link(at, Some(c), false);
            }
        }
        Ok(())
    }
}
