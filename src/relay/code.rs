//! The relay's side of linking by typed code: issuing handles, routing a
//! code session's messages, and counting failures.
//!
//! - [`CodeRendezvous`] issues each companion a random, unused 20-bit
//!   [`CodeHandle`], keeps its published CodeOffer, hands it to **one**
//!   primary that joins with the handle the user typed, and routes the
//!   session's messages (CodeHello, CodeConfirm, then Request, Grant or
//!   Refusal, Confirm) by token id between exactly those two clients. It
//!   never sees the code.
//! - [`CodeAttempts`] counts failed attempts of whoever **joins**: per
//!   joining client, per network source and per account (when the relay
//!   authenticated it), and locks a key out with exponential backoff once
//!   it has used its free failures. Times are inputs; nothing reads a
//!   clock.
//!
//! A join fails (and counts) when the handle names no code that can be
//! joined now: never issued, not published yet, already joined, expired.
//! All of these are answered with the same [`CodeRelayError::NoSuchCode`],
//! so a scanner learns nothing from which one it met and is slowed by the
//! lockout. An attempt fails when an endpoint reports `WrongCode`
//! ([`CodeRendezvous::report_wrong_code`]), when the joiner sends no
//! CodeHello within [`CodeRelayConfig::hello_window`], or when a joined
//! session ends without the companion's Request. Failures count against
//! the joiner only, never against the handle: whoever joins a victim's
//! handle cannot lock the victim out. Each failure spends the victim's
//! code ([`CodeSpent`]: its companion is told, and publishes a new code
//! under the same handle). A code is valid until exactly
//! `opened_at + code_lifetime`. A relay that lies can skip all of this;
//! what it cannot skip is that each endpoint gives one guess per code
//! (`docs/PROTOCOL.md` §13).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::budget::{Budget, BudgetScope, Held, SourceKey};
use super::ClientId;
use crate::code::{
    is_code_message, offer_parts, token_id, CodeHandle, CodeHeader, CodeMessageKind,
};
use crate::handshake::{MessageHeader, MessageKind};
use crate::keys::AccountId;
use crate::offer::TokenId;
use crate::persist::PersistError;
use crate::policy::Policy;
use crate::time::Timestamp;

/// How failures turn into lockouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockoutPolicy {
    /// Failures a key may have before the first lockout. Default 3.
    pub free_failures: u32,
    /// The first lockout; each further failure doubles it. Default 60 s.
    #[serde(with = "millis")]
    pub first_lockout: Duration,
    /// The longest lockout. Default 24 hours.
    #[serde(with = "millis")]
    pub max_lockout: Duration,
    /// How long a key must stay quiet, **per failure it has**, after its
    /// lockout ends (after its last failure, if that locked nothing) before
    /// it starts again from zero ([`LockoutPolicy::quiet_period`]; never
    /// less than `max_lockout` per failure). Default 24 hours: a key with
    /// one failure is forgotten a day after it, one with 15 fifteen days
    /// after its last lockout.
    #[serde(with = "millis")]
    pub forget_after: Duration,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy {
            free_failures: 3,
            first_lockout: Duration::from_secs(60),
            max_lockout: Duration::from_secs(86_400),
            forget_after: Duration::from_secs(86_400),
        }
    }
}

impl LockoutPolicy {
    /// The lockout after the `n`-th consecutive failure (zero while free).
    pub fn lockout_after(&self, n: u32) -> Duration {
        if n <= self.free_failures {
            return Duration::ZERO;
        }
        let doublings = (n - self.free_failures - 1).min(63);
        let factor = 1u64 << doublings;
        let ms = crate::time::duration_millis(self.first_lockout).saturating_mul(factor);
        Duration::from_millis(ms).min(self.max_lockout)
    }

    /// How long a key with `failures` failures must stay quiet after its
    /// lockout ends before they are forgotten: `failures ×
    /// max(forget_after, max_lockout)`, saturating.
    ///
    /// Why per failure, and at least `max_lockout` each: a key that keeps
    /// failing as soon as each lockout ends fails at least once per
    /// `max_lockout` (no lockout is longer), so in any quiet period of
    /// `k × max_lockout` it would have failed at least `k` times. Waiting
    /// to be forgotten, to fail `k` times again from zero, therefore never
    /// gives more failures than not waiting: [`max_failures_in`] is the
    /// attacker's best over every schedule. A fixed quiet period would not
    /// be: with 24 hours from the lockout's end, a key that fails 11 times
    /// and waits gets 3,421 failures in 365 days, not 378.
    ///
    /// [`max_failures_in`]: LockoutPolicy::max_failures_in
    pub fn quiet_period(&self, failures: u32) -> Duration {
        let each = crate::time::duration_millis(self.forget_after.max(self.max_lockout));
        Duration::from_millis(each.saturating_mul(u64::from(failures)))
    }

    /// The most failures one key can accumulate in `span` starting from
    /// zero, failing as soon as each lockout ends: the attacker's best
    /// (pausing to be forgotten does not beat it, see
    /// [`LockoutPolicy::quiet_period`]).
    pub fn max_failures_in(&self, span: Duration) -> u64 {
        let end = crate::time::duration_millis(span);
        let (mut t, mut n) = (0u64, 0u64);
        while t < end {
            n += 1;
            let lock = crate::time::duration_millis(
                self.lockout_after(u32::try_from(n).unwrap_or(u32::MAX)),
            );
            // A zero lock: the next failure is at the same instant.
            t = t.saturating_add(lock);
            if n > 1_000_000 {
                break;
            }
        }
        n
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(crate::time::duration_millis(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// What failures are counted against: always the side that **joins** a
/// code session, never the handle it joins (whoever joins a victim's
/// handle must not lock the victim out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AttemptKey {
    /// The client (connection, or identified client) that joined.
    Client(ClientId),
    /// The network source it joined from (an address, an IPv6 prefix).
    Source(SourceKey),
    /// The account of the primary that joined (only when the relay
    /// authenticated it; an unauthenticated claim would let anyone lock an
    /// account out).
    Account(AccountId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Failures {
    count: u32,
    last: Timestamp,
    locked_until: Timestamp,
}

impl Failures {
    /// When the key's failures stop counting: its quiet period
    /// ([`LockoutPolicy::quiet_period`]) past the end of its lockout
    /// (`locked_until` is `last` when nothing was locked). Counted from the
    /// lockout's end, so waiting a lockout out never forgets (with the
    /// defaults, forgetting at `last + 24 h` ended the 24-hour lockout and
    /// the count together: 2,265 failures in 365 days for a key failing as
    /// soon as allowed), and per failure, so pausing does not pay either.
    fn forget_at(&self, p: &LockoutPolicy) -> Timestamp {
        self.locked_until.saturating_add(p.quiet_period(self.count))
    }
}

/// Failed attempts per key, with exponential lockouts. Sweeps in time
/// proportional to what it forgets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeAttempts {
    policy: LockoutPolicy,
    #[serde(with = "as_seq")]
    entries: BTreeMap<AttemptKey, Failures>,
    by_forget: BTreeSet<(Timestamp, AttemptKey)>,
}

mod as_seq {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub(super) fn serialize<S: Serializer, K: Serialize, V: Serialize>(
        m: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub(super) fn deserialize<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

impl CodeAttempts {
    /// No failures yet.
    pub fn new(policy: LockoutPolicy) -> Self {
        CodeAttempts {
            policy,
            entries: BTreeMap::new(),
            by_forget: BTreeSet::new(),
        }
    }

    /// The lockout policy.
    pub fn policy(&self) -> &LockoutPolicy {
        &self.policy
    }

    fn live(&self, key: &AttemptKey, now: Timestamp) -> Option<&Failures> {
        self.entries
            .get(key)
            .filter(|f| now < f.forget_at(&self.policy))
    }

    /// Consecutive failures of `key` that still count at `now`.
    pub fn failures(&self, key: &AttemptKey, now: Timestamp) -> u32 {
        self.live(key, now).map_or(0, |f| f.count)
    }

    /// Until when `key` is locked out, if it is at `now`.
    pub fn locked_until(&self, key: &AttemptKey, now: Timestamp) -> Option<Timestamp> {
        self.live(key, now)
            .map(|f| f.locked_until)
            .filter(|u| now < *u)
    }

    /// Refuses a locked-out key ([`CodeRelayError::LockedOut`]).
    pub fn check(&self, key: &AttemptKey, now: Timestamp) -> Result<(), CodeRelayError> {
        match self.locked_until(key, now) {
            Some(until) => Err(CodeRelayError::LockedOut { key: *key, until }),
            None => Ok(()),
        }
    }

    /// Records a failure of `key` at `now`; returns the lockout's end if
    /// this failure locks the key out.
    pub fn record_failure(&mut self, key: AttemptKey, now: Timestamp) -> Option<Timestamp> {
        let count = self.failures(&key, now).saturating_add(1);
        if let Some(old) = self.entries.get(&key) {
            self.by_forget.remove(&(old.forget_at(&self.policy), key));
        }
        let lock = self.policy.lockout_after(count);
        let f = Failures {
            count,
            last: now,
            locked_until: now.saturating_add(lock),
        };
        self.by_forget.insert((f.forget_at(&self.policy), key));
        self.entries.insert(key, f);
        (!lock.is_zero()).then_some(f.locked_until)
    }

    /// Forgets the keys whose failures no longer count at `now`.
    pub fn sweep(&mut self, now: Timestamp) -> usize {
        let mut n = 0;
        while let Some(&(at, key)) = self.by_forget.first() {
            if at > now {
                break;
            }
            self.by_forget.pop_first();
            self.entries.remove(&key);
            n += 1;
        }
        n
    }

    fn consistent(&self) -> bool {
        self.entries.len() == self.by_forget.len()
            && self.by_forget.iter().all(|(at, k)| {
                self.entries
                    .get(k)
                    .is_some_and(|f| f.forget_at(&self.policy) == *at)
            })
    }
}

/// Why the rendezvous refused. A refused join counts as a failure of the
/// joiner (that is its point); every other refusal changes nothing (the
/// clock's high water still moves to `now`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeRelayError {
    /// A join whose handle names no code that can be joined now: never
    /// issued, not published yet, already joined once, or expired. One
    /// answer for all of them, so that scanning learns nothing.
    #[error("no such code")]
    NoSuchCode,
    /// A publish under a handle that was never issued (or was swept).
    #[error("unknown code handle")]
    UnknownHandle,
    /// No session has this token id.
    #[error("unknown code session")]
    UnknownToken,
    /// The code's lifetime ended (at exactly `opened_at + code_lifetime`).
    #[error("the code expired")]
    Expired,
    /// A message from a client that is not part of this code session.
    #[error("message from a client that is not part of this code session")]
    WrongClient,
    /// The handle already carries a code.
    #[error("a code is already published under this handle")]
    AlreadyPublished,
    /// Too many failures: try again at `until`.
    #[error("locked out after failed attempts ({key:?}) until {until}")]
    LockedOut {
        /// What is locked out.
        key: AttemptKey,
        /// When the lockout ends.
        until: Timestamp,
    },
    /// Opening a session over the sessions' [`Budget`]: the client's, its
    /// source's, the relay's, or the relay's reserve.
    #[error("code session quota exceeded ({scope:?}, limit {limit})")]
    QuotaExceeded {
        /// Which part of the budget.
        scope: BudgetScope,
        /// Its limit.
        limit: u64,
    },
    /// No free handle (the relay holds as many sessions as it can).
    #[error("no free code handle")]
    Full,
    /// A CodeOffer whose token does not derive from its content, or whose
    /// handle is not the publisher's.
    #[error("bad code offer")]
    BadOffer,
    /// A message that cannot be routed here (bad header, wrong size, a kind
    /// the code flow does not use, or the wrong step).
    #[error("unroutable code-session message: {0}")]
    Unroutable(String),
}

impl CodeRelayError {
    /// Whether the same call may succeed later (a lockout ends, a quota
    /// frees up).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CodeRelayError::LockedOut { .. }
                | CodeRelayError::QuotaExceeded { .. }
                | CodeRelayError::Full
        )
    }
}

/// The rendezvous's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRelayConfig {
    /// A code session's lifetime from `open` ([`Policy::code_lifetime`]).
    #[serde(with = "millis")]
    pub code_lifetime: Duration,
    /// How long a linked session stays routable (Grant, Confirm) after its
    /// Request: the larger of 5 minutes and approval + confirmation.
    #[serde(with = "millis")]
    pub session_window: Duration,
    /// How long the joiner has for its CodeHello after it joined: 30 s
    /// (the phone sends it as soon as the user typed the code, before any
    /// prompt). A joiner that stays silent spends the code and counts a
    /// failure, so taking codes off the relay without guessing costs the
    /// same as guessing.
    #[serde(with = "millis")]
    pub hello_window: Duration,
    /// Open sessions per companion client (4), per source (32) and in all
    /// (a quarter of the 2²⁰ handles, so a random free handle is found in a
    /// few draws; its last quarter kept for sources in good standing).
    pub sessions: Budget,
    /// Failures and lockouts.
    pub lockout: LockoutPolicy,
}

impl CodeRelayConfig {
    /// The limits for hosts using `policy`.
    pub fn from_policy(policy: &Policy) -> Self {
        CodeRelayConfig {
            code_lifetime: policy.code_lifetime(),
            session_window: Duration::from_secs(300)
                .max(policy.approval_timeout() + policy.confirmation_timeout()),
            hello_window: Duration::from_secs(30),
            sessions: Budget::new(4, 32, u64::from(CodeHandle::LIMIT / 4)),
            lockout: LockoutPolicy::default(),
        }
    }
}

/// Who joined a code session, as the relay knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Joiner {
    client: ClientId,
    source: SourceKey,
    account: Option<AccountId>,
}

impl Joiner {
    fn keys(&self) -> impl Iterator<Item = AttemptKey> {
        [
            Some(AttemptKey::Client(self.client)),
            Some(AttemptKey::Source(self.source)),
            self.account.map(AttemptKey::Account),
        ]
        .into_iter()
        .flatten()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum SessionState {
    /// Issued; no code published yet (or the last one was spent).
    Opened,
    /// A code is published and may be joined once.
    Published {
        token: TokenId,
        #[serde(with = "crate::encoding::b64_vec")]
        offer: Vec<u8>,
    },
    /// Joined; the joiner's CodeHello is due by `hello_by`.
    Joined {
        token: TokenId,
        joiner: Joiner,
        hello_by: Timestamp,
    },
    /// The joiner's CodeHello went to the companion; its CodeConfirm and
    /// Request (or a report of `WrongCode`) are next.
    Answered { token: TokenId, joiner: Joiner },
    /// The companion's Request passed: the attempt succeeded.
    Linked {
        token: TokenId,
        primary: ClientId,
        at: Timestamp,
    },
}

impl SessionState {
    fn token(&self) -> Option<TokenId> {
        match self {
            SessionState::Opened => None,
            SessionState::Published { token, .. }
            | SessionState::Joined { token, .. }
            | SessionState::Answered { token, .. }
            | SessionState::Linked { token, .. } => Some(*token),
        }
    }

    fn joiner(&self) -> Option<Joiner> {
        match self {
            SessionState::Joined { joiner, .. } | SessionState::Answered { joiner, .. } => {
                Some(*joiner)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CodeSession {
    companion: ClientId,
    source: SourceKey,
    expires_at: Timestamp,
    state: SessionState,
}

/// Where [`CodeRendezvous::route`] sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeRouted {
    /// The session's token id.
    pub token_id: TokenId,
    /// The client to forward the message to.
    pub forward_to: ClientId,
    /// The companion's Request passed: the attempt succeeded.
    pub linked: bool,
}

/// A code that failed without its companion knowing: the joiner reported
/// `WrongCode`, or stayed silent past the hello window. The companion's
/// host tells it (the relay's `CodeSpent` frame) so that it shows a new code
/// under the same handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeSpent {
    /// The companion that showed the code.
    pub companion: ClientId,
    /// The spent code's token id.
    pub token_id: TokenId,
}

/// What [`CodeRendezvous::report_wrong_code`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongCodeReported {
    /// The companion to tell, when the joiner reported (a companion that
    /// reported knows).
    pub spent: Option<CodeSpent>,
    /// Until when the joiner is locked out, if this failure locked it.
    pub locked_until: Option<Timestamp>,
}

/// Issues handles and routes code sessions (sans-IO; times are inputs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeRendezvous {
    config: CodeRelayConfig,
    sessions: BTreeMap<CodeHandle, CodeSession>,
    tokens: BTreeMap<TokenId, CodeHandle>,
    /// When each session next needs the sweep: its end, or its joiner's
    /// hello deadline.
    by_keep: BTreeSet<(Timestamp, CodeHandle)>,
    #[serde(with = "as_seq")]
    per_client: BTreeMap<ClientId, u64>,
    #[serde(with = "as_seq")]
    per_source: BTreeMap<SourceKey, u64>,
    attempts: CodeAttempts,
    high_water: Timestamp,
}

impl CodeRendezvous {
    /// An empty rendezvous.
    pub fn new(config: CodeRelayConfig) -> Self {
        CodeRendezvous {
            config,
            sessions: BTreeMap::new(),
            tokens: BTreeMap::new(),
            by_keep: BTreeSet::new(),
            per_client: BTreeMap::new(),
            per_source: BTreeMap::new(),
            attempts: CodeAttempts::new(config.lockout),
            high_water: Timestamp::EPOCH,
        }
    }

    /// The failure counts.
    pub fn attempts(&self) -> &CodeAttempts {
        &self.attempts
    }

    /// Sessions held (swept ones excluded).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Sessions opened from `source` and held now.
    pub fn source_sessions(&self, source: &SourceKey) -> u64 {
        self.per_source.get(source).copied().unwrap_or(0)
    }

    fn clock(&mut self, now: Timestamp) -> Timestamp {
        self.high_water = self.high_water.max(now);
        self.high_water
    }

    /// When the sweep next has to look at `s`.
    fn keep_until(&self, s: &CodeSession) -> Timestamp {
        match s.state {
            SessionState::Linked { at, .. } => s
                .expires_at
                .max(at.saturating_add(self.config.session_window)),
            SessionState::Joined { hello_by, .. } => hello_by.min(s.expires_at),
            _ => s.expires_at,
        }
    }

    fn set_state(&mut self, handle: CodeHandle, state: SessionState) {
        let Some(s) = self.sessions.get(&handle) else {
            return;
        };
        let old_keep = self.keep_until(s);
        if let Some(t) = s.state.token() {
            self.tokens.remove(&t);
        }
        if let Some(t) = state.token() {
            self.tokens.insert(t, handle);
        }
        if let Some(s) = self.sessions.get_mut(&handle) {
            s.state = state;
        }
        if let Some(s) = self.sessions.get(&handle) {
            let new_keep = self.keep_until(s);
            if new_keep != old_keep {
                self.by_keep.remove(&(old_keep, handle));
                self.by_keep.insert((new_keep, handle));
            }
        }
    }

    fn held(&self, client: &ClientId, source: &SourceKey) -> Held {
        Held {
            client: self.per_client.get(client).copied().unwrap_or(0),
            source: self.per_source.get(source).copied().unwrap_or(0),
            total: u64::try_from(self.sessions.len()).unwrap_or(u64::MAX),
        }
    }

    /// Issues a fresh handle to the companion `client` (from `source`),
    /// valid until the returned instant (exclusive). Refuses a client,
    /// source or relay over the sessions' budget
    /// ([`CodeRelayError::QuotaExceeded`]). Draws 4 bytes per try.
    pub fn open<R: RngCore + CryptoRng>(
        &mut self,
        client: ClientId,
        source: SourceKey,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<(CodeHandle, Timestamp), CodeRelayError> {
        let now = self.clock(now);
        self.config
            .sessions
            .check(self.held(&client, &source))
            .map_err(|e| CodeRelayError::QuotaExceeded {
                scope: e.scope,
                limit: e.limit,
            })?;
        let handle = (0..64)
            .map(|_| CodeHandle::random(rng))
            .find(|h| !self.sessions.contains_key(h))
            .ok_or(CodeRelayError::Full)?;
        let expires_at = now.saturating_add(self.config.code_lifetime);
        self.sessions.insert(
            handle,
            CodeSession {
                companion: client,
                source,
                expires_at,
                state: SessionState::Opened,
            },
        );
        self.by_keep.insert((expires_at, handle));
        *self.per_client.entry(client).or_default() += 1;
        *self.per_source.entry(source).or_default() += 1;
        Ok((handle, expires_at))
    }

    /// The companion publishes its CodeOffer under its handle (again after a
    /// spent code, with a new code).
    pub fn publish(
        &mut self,
        client: ClientId,
        offer: &[u8],
        now: Timestamp,
    ) -> Result<TokenId, CodeRelayError> {
        let now = self.clock(now);
        let header =
            CodeHeader::parse(offer).map_err(|e| CodeRelayError::Unroutable(e.to_string()))?;
        if header.kind != CodeMessageKind::CodeOffer {
            return Err(CodeRelayError::Unroutable("not a code offer".into()));
        }
        let (h, m_c) = offer_parts(offer).ok_or(CodeRelayError::BadOffer)?;
        let handle = CodeHandle::new(h).ok_or(CodeRelayError::BadOffer)?;
        let s = self
            .sessions
            .get(&handle)
            .ok_or(CodeRelayError::UnknownHandle)?;
        if s.companion != client {
            return Err(CodeRelayError::WrongClient);
        }
        if now >= s.expires_at {
            return Err(CodeRelayError::Expired);
        }
        if s.state != SessionState::Opened {
            return Err(CodeRelayError::AlreadyPublished);
        }
        if token_id(handle, &m_c) != header.token_id || self.tokens.contains_key(&header.token_id) {
            return Err(CodeRelayError::BadOffer);
        }
        self.set_state(
            handle,
            SessionState::Published {
                token: header.token_id,
                offer: offer.to_vec(),
            },
        );
        Ok(header.token_id)
    }

    /// Whether a primary (`primary`, from `source`, of `account` if the
    /// relay authenticated it) may join now: not locked out, in this order,
    /// as a client, a source, an account.
    ///
    /// # Errors
    /// [`CodeRelayError::LockedOut`].
    pub fn check_joiner(
        &self,
        primary: ClientId,
        source: SourceKey,
        account: Option<AccountId>,
        now: Timestamp,
    ) -> Result<(), CodeRelayError> {
        let now = now.max(self.high_water);
        let joiner = Joiner {
            client: primary,
            source,
            account,
        };
        joiner
            .keys()
            .try_for_each(|key| self.attempts.check(&key, now))
    }

    /// A primary joins the session of the `handle` the user typed and gets
    /// the CodeOffer; its CodeHello is due within the hello window. Once per
    /// published code. A handle that names no code that can be joined now
    /// counts a failure for the joiner (client, source, account) and is
    /// [`CodeRelayError::NoSuchCode`], whatever the reason.
    pub fn join(
        &mut self,
        handle: CodeHandle,
        primary: ClientId,
        source: SourceKey,
        account: Option<AccountId>,
        now: Timestamp,
    ) -> Result<Vec<u8>, CodeRelayError> {
        let now = self.clock(now);
        self.check_joiner(primary, source, account, now)?;
        let joiner = Joiner {
            client: primary,
            source,
            account,
        };
        let published = self.sessions.get(&handle).and_then(|s| match &s.state {
            SessionState::Published { token, offer } if now < s.expires_at => {
                Some((*token, offer.clone()))
            }
            _ => None,
        });
        let Some((token, offer)) = published else {
            self.count_failure(joiner, now);
            return Err(CodeRelayError::NoSuchCode);
        };
        let hello_by = now.saturating_add(self.config.hello_window);
        self.set_state(
            handle,
            SessionState::Joined {
                token,
                joiner,
                hello_by,
            },
        );
        Ok(offer)
    }

    fn session_of(&self, token: &TokenId) -> Result<(CodeHandle, &CodeSession), CodeRelayError> {
        let handle = *self.tokens.get(token).ok_or(CodeRelayError::UnknownToken)?;
        let s = self
            .sessions
            .get(&handle)
            .ok_or(CodeRelayError::UnknownToken)?;
        Ok((handle, s))
    }

    /// Routes one message of a code session from `from`. Sizes and headers
    /// are checked before anything is looked up. The CodeHello goes from the
    /// joined primary, before the expiry and the hello deadline; the
    /// CodeConfirm from the companion once it was answered; the companion's
    /// Request makes the session linked (the attempt succeeded); Grant,
    /// Refusal and Confirm go while linked.
    pub fn route(
        &mut self,
        from: ClientId,
        message: &[u8],
        now: Timestamp,
    ) -> Result<CodeRouted, CodeRelayError> {
        let now = self.clock(now);
        let unroutable =
            |e: crate::handshake::HandshakeError| CodeRelayError::Unroutable(e.to_string());
        let wrong_step = || CodeRelayError::Unroutable("not expected at this step".into());
        if is_code_message(message) {
            let h = CodeHeader::parse(message).map_err(unroutable)?;
            let (handle, s) = self.session_of(&h.token_id)?;
            let companion = s.companion;
            let routed = |to| CodeRouted {
                token_id: h.token_id,
                forward_to: to,
                linked: false,
            };
            return match (h.kind, s.state.clone()) {
                (
                    CodeMessageKind::CodeHello,
                    SessionState::Joined {
                        joiner, hello_by, ..
                    },
                ) => {
                    if from != joiner.client {
                        return Err(CodeRelayError::WrongClient);
                    }
                    if now >= s.expires_at || now >= hello_by {
                        return Err(CodeRelayError::Expired);
                    }
                    self.set_state(
                        handle,
                        SessionState::Answered {
                            token: h.token_id,
                            joiner,
                        },
                    );
                    Ok(routed(companion))
                }
                (CodeMessageKind::CodeConfirm, SessionState::Answered { joiner, .. }) => {
                    if from != companion {
                        return Err(CodeRelayError::WrongClient);
                    }
                    Ok(routed(joiner.client))
                }
                _ => Err(wrong_step()),
            };
        }
        let h = MessageHeader::parse(message).map_err(unroutable)?;
        h.check_size(message).map_err(unroutable)?;
        let (handle, s) = self.session_of(&h.token_id)?;
        let companion = s.companion;
        let keep = self.keep_until(s);
        match (h.kind, s.state.clone()) {
            (MessageKind::Request, SessionState::Answered { joiner, .. }) => {
                if from != companion {
                    return Err(CodeRelayError::WrongClient);
                }
                self.set_state(
                    handle,
                    SessionState::Linked {
                        token: h.token_id,
                        primary: joiner.client,
                        at: now,
                    },
                );
                Ok(CodeRouted {
                    token_id: h.token_id,
                    forward_to: joiner.client,
                    linked: true,
                })
            }
            (kind, SessionState::Linked { primary, .. }) if now < keep => {
                let (sender, to) = match kind {
                    MessageKind::Grant | MessageKind::Refusal => (primary, companion),
                    MessageKind::Confirm => (companion, primary),
                    _ => return Err(wrong_step()),
                };
                if from != sender {
                    return Err(CodeRelayError::WrongClient);
                }
                Ok(CodeRouted {
                    token_id: h.token_id,
                    forward_to: to,
                    linked: false,
                })
            }
            _ => Err(wrong_step()),
        }
    }

    /// An endpoint's host reports the `WrongCode` its core returned for the
    /// joined session `token`: one failure for the joiner (its client, its
    /// source, its account), never for the handle. The handle may carry a
    /// new code afterwards; when the joiner reported, the companion is to
    /// be told its code is spent ([`WrongCodeReported::spent`]).
    pub fn report_wrong_code(
        &mut self,
        token: &TokenId,
        from: ClientId,
        now: Timestamp,
    ) -> Result<WrongCodeReported, CodeRelayError> {
        let now = self.clock(now);
        let (handle, s) = self.session_of(token)?;
        let Some(joiner) = s.state.joiner() else {
            return Err(CodeRelayError::Unroutable("no attempt in progress".into()));
        };
        if from != s.companion && from != joiner.client {
            return Err(CodeRelayError::WrongClient);
        }
        let spent = (from == joiner.client).then_some(CodeSpent {
            companion: s.companion,
            token_id: *token,
        });
        self.count_failure(joiner, now);
        self.set_state(handle, SessionState::Opened);
        Ok(WrongCodeReported {
            spent,
            locked_until: self
                .attempts
                .locked_until(&AttemptKey::Client(joiner.client), now),
        })
    }

    fn count_failure(&mut self, joiner: Joiner, now: Timestamp) {
        for key in joiner.keys() {
            self.attempts.record_failure(key, now);
        }
    }

    /// When the next session ends or its joiner's hello is due (for the
    /// host's timer).
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.by_keep.first().map(|(at, _)| *at)
    }

    /// Removes sessions that ended by `now` (a joined session that never
    /// linked counts as a failure of its joiner), spends the codes whose
    /// joiner sent no CodeHello in time (a failure of the joiner; the
    /// session is open for a new code) and forgets old failures. Returns
    /// the companions to tell that their code was spent. Time proportional
    /// to what ended.
    pub fn sweep(&mut self, now: Timestamp) -> Vec<CodeSpent> {
        let now = self.clock(now);
        let mut spent = Vec::new();
        while let Some(&(at, handle)) = self.by_keep.first() {
            if at > now {
                break;
            }
            self.by_keep.pop_first();
            let Some(s) = self.sessions.get(&handle) else {
                continue;
            };
            if let SessionState::Joined { token, joiner, .. } = s.state {
                if at < s.expires_at {
                    // The hello deadline, before the session's end.
                    let companion = s.companion;
                    self.count_failure(joiner, at);
                    self.set_state(handle, SessionState::Opened);
                    spent.push(CodeSpent {
                        companion,
                        token_id: token,
                    });
                    continue;
                }
            }
            if let Some(s) = self.sessions.remove(&handle) {
                if let Some(t) = s.state.token() {
                    self.tokens.remove(&t);
                }
                if let Some(joiner) = s.state.joiner() {
                    self.count_failure(joiner, at);
                }
                decrement(&mut self.per_client, &s.companion);
                decrement(&mut self.per_source, &s.source);
            }
        }
        self.attempts.sweep(now);
        spent
    }

    /// Forgets every session the companion `client` opened: it is gone for
    /// good (a connection that never identified), so nobody can finish them.
    /// Its sessions stop counting against its source. Returns how many.
    /// Time proportional to the sessions held.
    pub fn abandon(&mut self, client: ClientId) -> usize {
        let handles: Vec<CodeHandle> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.companion == client)
            .map(|(h, _)| *h)
            .collect();
        for h in &handles {
            if let Some(s) = self.sessions.get(h) {
                let keep = self.keep_until(s);
                self.by_keep.remove(&(keep, *h));
            }
            if let Some(s) = self.sessions.remove(h) {
                if let Some(t) = s.state.token() {
                    self.tokens.remove(&t);
                }
                decrement(&mut self.per_client, &s.companion);
                decrement(&mut self.per_source, &s.source);
            }
        }
        handles.len()
    }

    /// Saves the rendezvous (versioned JSON; no secrets).
    pub fn save(&self) -> Result<Vec<u8>, PersistError> {
        crate::persist::save("code rendezvous", self)
    }

    /// Restores a rendezvous saved by [`CodeRendezvous::save`], checking its
    /// indices.
    pub fn restore(bytes: &[u8]) -> Result<Self, PersistError> {
        let r: CodeRendezvous = crate::persist::restore("code rendezvous", bytes)?;
        let tokens_ok = r.tokens.len()
            == r.sessions
                .values()
                .filter(|s| s.state.token().is_some())
                .count()
            && r.tokens
                .iter()
                .all(|(t, h)| r.sessions.get(h).and_then(|s| s.state.token()) == Some(*t));
        let keep_ok = r.by_keep.len() == r.sessions.len()
            && r.by_keep
                .iter()
                .all(|(at, h)| r.sessions.get(h).is_some_and(|s| r.keep_until(s) == *at));
        let mut clients: BTreeMap<ClientId, u64> = BTreeMap::new();
        let mut sources: BTreeMap<SourceKey, u64> = BTreeMap::new();
        for s in r.sessions.values() {
            *clients.entry(s.companion).or_default() += 1;
            *sources.entry(s.source).or_default() += 1;
        }
        if !tokens_ok
            || !keep_ok
            || clients != r.per_client
            || sources != r.per_source
            || !r.attempts.consistent()
        {
            return Err(PersistError::Inconsistent("code rendezvous"));
        }
        Ok(r)
    }
}

fn decrement<K: Ord>(map: &mut BTreeMap<K, u64>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn key() -> AttemptKey {
        AttemptKey::Client(ClientId::from_bytes([7; 16]))
    }

    fn t0() -> Timestamp {
        Timestamp::from_unix_millis(1_700_000_000_000)
    }

    /// An attacker on one key for `span`, sweeping as a relay does: it
    /// fails as soon as each lockout ends, except that with `pause_at =
    /// Some(k)`, after its `k`-th failure in a row it waits until the key
    /// is forgotten and starts again from zero. How many failures it gets
    /// in.
    fn attacker_failures(policy: LockoutPolicy, span: Duration, pause_at: Option<u32>) -> u64 {
        let end = t0().saturating_add(span);
        let mut attempts = CodeAttempts::new(policy);
        let (mut now, mut n) = (t0(), 0u64);
        while now < end {
            attempts.sweep(now);
            assert_eq!(attempts.check(&key(), now), Ok(()), "failure {}", n + 1);
            let until = attempts.record_failure(key(), now);
            n += 1;
            if let Some(until) = until {
                let before = until.saturating_sub(Duration::from_millis(1));
                assert!(attempts.check(&key(), before).is_err());
                now = until;
            }
            let count = attempts.failures(&key(), now);
            if pause_at.is_some_and(|k| count >= k) {
                let forgotten = now.saturating_add(policy.quiet_period(count));
                let before = forgotten.saturating_sub(Duration::from_millis(1));
                assert_eq!(attempts.failures(&key(), before), count);
                assert_eq!(attempts.failures(&key(), forgotten), 0);
                now = forgotten;
            }
        }
        n
    }

    #[test]
    fn a_year_of_guessing_is_what_max_failures_in_says() {
        let policy = LockoutPolicy::default();
        // docs/PROTOCOL.md §13.8's figure: 378 in 365 days (forgetting at
        // the 24-hour lockout's end gave 2,265).
        let year = DAY * 365;
        assert_eq!(
            attacker_failures(policy, year, None),
            policy.max_failures_in(year)
        );
        assert_eq!(policy.max_failures_in(year), 378);
        for days in [1, 2, 3, 30, 366] {
            let span = DAY * days;
            assert_eq!(
                attacker_failures(policy, span, None),
                policy.max_failures_in(span),
                "{days} days"
            );
        }
    }

    #[test]
    fn waiting_to_be_forgotten_never_beats_max_failures_in() {
        // A fixed 24-hour quiet period after the lockout's end gave a key
        // that fails 11 times and waits 3,421 failures in 365 days.
        let policy = LockoutPolicy::default();
        for days in [1, 2, 3, 4, 13, 14, 15, 16, 30, 365] {
            let span = DAY * days;
            let best = policy.max_failures_in(span);
            for k in 1..=30 {
                let got = attacker_failures(policy, span, Some(k));
                assert!(
                    got <= best,
                    "{days} days, pausing after {k}: {got} > {best}"
                );
            }
        }
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_period_past_the_lockout() {
        let policy = LockoutPolicy::default();
        assert_eq!(policy.quiet_period(1), DAY);
        assert_eq!(policy.quiet_period(4), DAY * 4);
        assert_eq!(
            policy.quiet_period(u32::MAX),
            Duration::from_millis(u64::from(u32::MAX) * 86_400_000)
        );
        let mut attempts = CodeAttempts::new(policy);
        // One mistyped code: forgotten a day later.
        assert_eq!(attempts.record_failure(key(), t0()), None);
        let day = t0().saturating_add(DAY);
        assert_eq!(attempts.failures(&key(), day.saturating_sub_millis(1)), 1);
        assert_eq!(attempts.sweep(day), 1);
        assert_eq!(attempts.failures(&key(), day), 0);
        // The 4th failure: locked for 60 s; forgotten 4 days after that.
        for _ in 0..3 {
            assert_eq!(attempts.record_failure(key(), day), None);
        }
        let until = attempts.record_failure(key(), day);
        assert_eq!(until, Some(day.saturating_add(Duration::from_secs(60))));
        let forget = day.saturating_add(Duration::from_secs(60) + DAY * 4);
        let just_before = forget.saturating_sub_millis(1);
        assert_eq!(attempts.sweep(just_before), 0);
        assert_eq!(attempts.failures(&key(), just_before), 4);
        assert_eq!(attempts.failures(&key(), forget), 0);
        assert_eq!(attempts.sweep(forget), 1);
        assert!(attempts.consistent());
        // The 24-hour cap: waiting it out does not forget the count.
        let mut t = forget;
        for _ in 0..15 {
            t = attempts.record_failure(key(), t).unwrap_or(t);
        }
        assert_eq!(attempts.sweep(t), 0);
        assert_eq!(attempts.failures(&key(), t), 15);
        assert_eq!(
            attempts.record_failure(key(), t),
            Some(t.saturating_add(policy.max_lockout)),
            "the 16th failure after waiting out the cap is locked 24 h, not free"
        );
        assert!(attempts.consistent());
    }
}
