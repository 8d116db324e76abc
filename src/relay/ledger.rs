//! Exactly-once redemption of pairing tokens, in two phases.
//!
//! # Design
//!
//! A companion's host *registers* the token of each offer it shows; the relay
//! then routes the handshake by the 18-byte header of each message. A token
//! moves through three states:
//!
//! ```text
//!                register (client C, expiry clamped, quotas)
//!                               │
//!                               ▼
//!   ┌──────────────────────►  open  ───── now ≥ expires_at ──► (expired; swept)
//!   │                           │  ▲
//!   │      Hello of exact size, │  │ release(C, token, H): C refused Hello H
//!   │      proof hashes to id,  │  │
//!   │      now < expires_at     ▼  │
//!   │                        reserved { by: primary P, until }
//!   │                           │
//!   └── reservation lapsed ─────┤   (a new Hello may reserve again once
//!       (now ≥ until)           │    now ≥ until; the old one is replaced)
//!                               │
//!          Request from C       ▼
//!                        redeemed { primary: P, at }   (tombstone)
//!                               │
//!          Grant / Refusal → C, Confirm → P, until keep_until; then swept
//! ```
//!
//! - **Two-phase redemption.** A Hello only *reserves* its token; the token
//!   is *redeemed* when the companion's Request for it comes back through the
//!   relay. A relay cannot check a Hello's key or MAC (it has no key), so a
//!   Hello with a flipped bit passes the relay's checks; the companion refuses
//!   it and [`Ledger::release`]s the token, which is open again for the
//!   genuine Hello. A companion that never answers blocks the token only
//!   for [`LedgerConfig::reserve_window`]. A Hello for a reserved token gets
//!   the retryable [`LedgerError::TokenReserved`].
//! - **Exactly once.** Each decision (reserve, release, redeem) is one atomic
//!   conditional write in the [`TokenStore`]: of any number of racing Hellos
//!   at most one reserves, of any number of racing Requests at most one
//!   redeems.
//! - **Clients.** Every call names the [`ClientId`] it comes from (one per
//!   connection or per authenticated client). The registering client is the
//!   companion: only it may send the Request and release the token.
//!   Grant, Refusal and Confirm are routed only for a redeemed token. The
//!   answer of [`Ledger::route`], a [`Routed`], says where to forward.
//! - **Registration limits.** Registration is unauthenticated, so its expiry
//!   is clamped to `now + max_offer_lifetime` and every client may hold at
//!   most [`LedgerConfig::max_tokens_per_client`] open or reserved tokens;
//!   the store holds at most [`LedgerConfig::max_tokens`] entries
//!   (tombstones included).
//! - **Time never runs backwards.** The ledger keeps the highest `now` it
//!   was given and decides with `max(now, high water)`, so a clock stepped back
//!   cannot reopen an expired token or shorten a tombstone.
//! - **Tombstones.** A redeemed token stays until
//!   `keep_until = max(expires_at, redeemed_at + session_window)` and until
//!   then a registration of the same id is refused ([`LedgerError::DuplicateToken`],
//!   as for any id the store holds). That is enough: the honest companion
//!   shows the offer no longer than `max_offer_lifetime` and the registered
//!   expiry is clamped to the same bound, so after `expires_at` nobody can be
//!   scanning it; and after `redeemed_at + session_window` (at least the
//!   policy's approval and confirmation timeouts) both endpoints have left
//!   the states that accept a Hello or Request for this token. A later
//!   registration of the id can only carry replays, which the companion and
//!   primary state machines refuse; the Hello would go to the new registrant,
//!   who cannot answer it without the offer's private key.
//! - **Sizes first.** [`Ledger::route`] parses the header and checks the
//!   message's length for its kind ([`MessageHeader::check_size`]) before the
//!   proof is read or the store is touched.
//! - **Sweeps** delete what expired in time proportional to it (an index on
//!   `keep_until`), at most `limit` entries a call.
//! - **Persistence.** [`Ledger::save`] and [`Ledger::restore`] keep the
//!   in-memory store, the configuration and the clock's high water.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::budget::{Budget, BudgetScope, Held, SourceKey};
use crate::handshake::{MessageHeader, MessageKind};
use crate::offer::TokenId;
use crate::policy::Policy;
use crate::time::Timestamp;

/// Why the ledger refused. Every refusal leaves the ledger's tokens
/// unchanged (its time high-water mark still moves forward to `now`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The token was already redeemed: every attempt after the first gets this.
    #[error("token already redeemed")]
    TokenAlreadyRedeemed,
    /// Another Hello reserved the token and the companion has not answered
    /// yet. Retryable: the reservation ends with the companion's Request, its
    /// release, or at `until`.
    #[error("token reserved by another Hello until {until}")]
    TokenReserved {
        /// When the reservation lapses.
        until: Timestamp,
    },
    /// A Request or release for a token that no Hello reserved.
    #[error("token not reserved")]
    NotReserved,
    /// A release naming a Hello other than the one holding the reservation:
    /// the refused Hello's reservation lapsed and another Hello reserved the
    /// token since. The newer reservation stands.
    #[error("the token is reserved for another Hello")]
    ReservedForOtherHello,
    /// A Grant, Refusal or Confirm for a token that was not redeemed.
    #[error("token not redeemed")]
    NotRedeemed,
    /// The token was never registered (or was swept after expiring).
    #[error("unknown token")]
    UnknownToken,
    /// The token's lifetime ended before the attempt.
    #[error("token expired")]
    TokenExpired,
    /// The store already holds this token id (open, reserved or redeemed).
    #[error("token already registered")]
    DuplicateToken,
    /// A Request or release from a client other than the one that
    /// registered the token.
    #[error("message from a client that did not register the token")]
    WrongClient,
    /// A registration over the tokens' [`Budget`]: the client's, its
    /// source's, the store's, or the store's reserve.
    #[error("token quota exceeded ({scope:?}, limit {limit})")]
    QuotaExceeded {
        /// Which part of the budget.
        scope: BudgetScope,
        /// Its limit.
        limit: u64,
    },
    /// A message whose length is outside the range of its kind
    /// ([`MessageKind::size_range`]).
    #[error("{kind:?} message of {len} bytes has the wrong size")]
    WrongSize {
        /// The kind its header names.
        kind: MessageKind,
        /// Its length in bytes.
        len: usize,
    },
    /// A message that cannot be routed (bad header).
    #[error("unroutable message: {0}")]
    Unroutable(String),
    /// A Hello whose redemption proof does not match its token: whoever sent
    /// it never saw the QR code. The token is unchanged.
    #[error("bad redemption proof: the sender did not see the QR code")]
    BadRedemptionProof,
    /// The durable store failed (I/O, connection); the attempt had no effect.
    #[error("token store unavailable: {0}")]
    Store(String),
}

impl LedgerError {
    /// Whether the same call may succeed later: a reserved token, a quota
    /// (after a sweep or a redemption frees room) or a store failure.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LedgerError::TokenReserved { .. }
                | LedgerError::QuotaExceeded { .. }
                | LedgerError::Store(_)
        )
    }
}

/// Who sent a message or registered a token, as the relay knows it: one id
/// per connection or per authenticated client. Opaque 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(#[serde(with = "crate::encoding::b64_array")] [u8; 16]);

impl ClientId {
    /// An id from 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        ClientId(bytes)
    }

    /// The id's 16 bytes.
    pub const fn to_bytes(&self) -> [u8; 16] {
        self.0
    }
}

impl From<u64> for ClientId {
    /// A connection counter as an id (big-endian in the last 8 bytes).
    fn from(n: u64) -> Self {
        let mut b = [0u8; 16];
        b[8..].copy_from_slice(&n.to_be_bytes());
        ClientId(b)
    }
}

impl From<[u8; 16]> for ClientId {
    fn from(b: [u8; 16]) -> Self {
        ClientId(b)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({self})")
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// SHA-256 of a Hello's wire bytes: names the Hello a reservation was made
/// for, so a companion's [`Ledger::release`] releases only the reservation of
/// the Hello it refused, never a newer one (a late release after the first
/// reservation lapsed and the genuine Hello reserved again).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HelloDigest(#[serde(with = "crate::encoding::b64_array")] [u8; 32]);

impl HelloDigest {
    /// The digest of `hello`, a Hello's wire bytes as routed.
    pub fn of(hello: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, hello);
        let mut b = [0u8; 32];
        b.copy_from_slice(d.as_ref());
        HelloDigest(b)
    }

    /// A digest from its 32 bytes (as a Release frame carries it).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        HelloDigest(bytes)
    }

    /// The digest's 32 bytes.
    pub const fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
}

impl fmt::Debug for HelloDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HelloDigest(")?;
        self.0[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, "…)")
    }
}

/// The state of a token in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenState {
    /// Registered; a Hello with its proof may reserve it.
    Open,
    /// A Hello from `by` reserved it; the reservation lapses at `until`.
    Reserved {
        /// The primary's client.
        by: ClientId,
        /// When the reservation lapses.
        until: Timestamp,
        /// Which Hello made the reservation.
        hello: HelloDigest,
    },
    /// The companion's Request redeemed it (a tombstone until swept).
    Redeemed {
        /// The primary's client (whose Hello reserved the token).
        primary: ClientId,
        /// When.
        at: Timestamp,
    },
}

/// One token as the store holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The registering client (the companion).
    pub client: ClientId,
    /// The network source it registered from (counted against its budget
    /// until the entry is swept).
    pub source: SourceKey,
    /// The offer's end (exclusive), as clamped at registration.
    pub expires_at: Timestamp,
    /// When a sweep may delete the entry: `expires_at`, or later while
    /// reserved (`max(expires_at, until)`) or redeemed
    /// (`max(expires_at, redeemed_at + session_window)`).
    pub keep_until: Timestamp,
    /// Open, reserved or redeemed.
    pub state: TokenState,
}

impl TokenRecord {
    /// Whether a Hello may reserve this token at `now`: the rule every
    /// store applies (the memory store before it writes, the databases to
    /// name the refusal when their conditional write changed no row).
    ///
    /// # Errors
    /// [`LedgerError::TokenAlreadyRedeemed`], [`LedgerError::TokenExpired`],
    /// [`LedgerError::TokenReserved`] (another Hello's reservation holds).
    pub fn check_reserve(&self, now: Timestamp) -> Result<(), LedgerError> {
        match self.state {
            TokenState::Redeemed { .. } => Err(LedgerError::TokenAlreadyRedeemed),
            _ if now >= self.expires_at => Err(LedgerError::TokenExpired),
            TokenState::Reserved { until, .. } if now < until => {
                Err(LedgerError::TokenReserved { until })
            }
            TokenState::Open | TokenState::Reserved { .. } => Ok(()),
        }
    }

    /// Whether `client` may release this token's reservation by `hello`
    /// at `now`.
    ///
    /// # Errors
    /// [`LedgerError::UnknownToken`] (a dead entry),
    /// [`LedgerError::WrongClient`], [`LedgerError::TokenAlreadyRedeemed`],
    /// [`LedgerError::NotReserved`], [`LedgerError::ReservedForOtherHello`].
    pub fn check_release(
        &self,
        client: ClientId,
        hello: &HelloDigest,
        now: Timestamp,
    ) -> Result<(), LedgerError> {
        let redeemed = matches!(self.state, TokenState::Redeemed { .. });
        if !redeemed && now >= self.keep_until {
            return Err(LedgerError::UnknownToken);
        }
        if self.client != client {
            return Err(LedgerError::WrongClient);
        }
        match self.state {
            TokenState::Redeemed { .. } => Err(LedgerError::TokenAlreadyRedeemed),
            TokenState::Open => Err(LedgerError::NotReserved),
            TokenState::Reserved { hello: held, .. } if held != *hello => {
                Err(LedgerError::ReservedForOtherHello)
            }
            TokenState::Reserved { .. } => Ok(()),
        }
    }

    /// Whether `client` may redeem this token at `now`; the primary whose
    /// Hello reserved it if so.
    ///
    /// # Errors
    /// [`LedgerError::WrongClient`], [`LedgerError::TokenAlreadyRedeemed`],
    /// [`LedgerError::TokenExpired`], [`LedgerError::NotReserved`].
    pub fn check_redeem(&self, client: ClientId, now: Timestamp) -> Result<ClientId, LedgerError> {
        if self.client != client {
            return Err(LedgerError::WrongClient);
        }
        match self.state {
            TokenState::Redeemed { .. } => Err(LedgerError::TokenAlreadyRedeemed),
            _ if now >= self.keep_until => Err(LedgerError::TokenExpired),
            TokenState::Open => Err(LedgerError::NotReserved),
            TokenState::Reserved { by, .. } => Ok(by),
        }
    }
}

/// Where the ledger keeps tokens. The exactly-once guarantee rests on
/// [`TokenStore::reserve`] and [`TokenStore::redeem`] each being **one atomic
/// conditional write**.
///
/// # Contract
///
/// Every implementation (the in-memory one here, a SQLite or a PostgreSQL
/// store) keeps these rules. Times are the ledger's (never decreasing); the
/// store compares, it never reads a clock. An entry whose `keep_until ≤ now`
/// and that is not redeemed is *dead*: it is treated as expired whether or
/// not a sweep removed it yet. Each method either makes its whole change and
/// returns `Ok`, or changes nothing and returns an error; a failure of the
/// store itself is [`LedgerError::Store`] ("nothing happened"). A write that
/// returned `Ok` is durable before it returns.
///
/// The SQL below assumes
///
/// ```sql
/// CREATE TABLE tokens (
///   id BLOB PRIMARY KEY,          -- bytea in PostgreSQL
///   client BLOB NOT NULL,
///   source BLOB NOT NULL,         -- the registering source (SourceKey)
///   expires_at BIGINT NOT NULL,   -- Unix milliseconds
///   keep_until BIGINT NOT NULL,
///   state SMALLINT NOT NULL,      -- 0 open, 1 reserved, 2 redeemed
///   peer BLOB,                    -- reserving / redeeming primary
///   state_at BIGINT,              -- reserved until / redeemed at
///   hello BLOB                    -- the reserving Hello's digest (32 bytes)
/// );
/// CREATE INDEX tokens_keep ON tokens (keep_until);
/// CREATE INDEX tokens_client ON tokens (client);
/// CREATE TABLE clients (id BLOB PRIMARY KEY, live INTEGER NOT NULL);
/// CREATE TABLE sources (id BLOB PRIMARY KEY, live INTEGER NOT NULL);
/// CREATE TABLE totals (one INTEGER PRIMARY KEY CHECK (one = 1), n BIGINT NOT NULL);
/// ```
///
/// `clients.live` and `sources.live` count the rows of `tokens` (open,
/// reserved and redeemed tombstones alike: each holds the store until it is
/// swept) a client and a source registered, and `totals.n` all rows; they
/// change in the same transaction as the row they count (in SQLite `BEGIN
/// IMMEDIATE`, which serializes writers; in PostgreSQL the conditional
/// `UPDATE`s below lock the counter rows). The
/// statement marked *decision* is the one whose affected-row count decides;
/// when it changes no row, the store reads the row
/// (`SELECT client, expires_at, keep_until, state, peer, state_at FROM tokens WHERE id = $id`)
/// only to name the error, and rolls back.
pub trait TokenStore: Send + Sync {
    /// Inserts `token` in state *open*, owned by `client` from `source`,
    /// with `keep_until = expires_at`. Refuses, in this order: an id the
    /// store holds in any state ([`LedgerError::DuplicateToken`]); a
    /// registration `budget` refuses ([`Budget::check`] over the rows the
    /// client, the source and the store held before it:
    /// [`LedgerError::QuotaExceeded`] with its scope). The counters are
    /// raised in the same transaction as the insert, and the core's rule
    /// decides from the counts they held; a refusal rolls all of it back.
    ///
    /// ```sql
    /// INSERT INTO tokens (id, client, source, expires_at, keep_until, state)
    ///   VALUES ($id, $client, $source, $exp, $exp, 0) ON CONFLICT (id) DO NOTHING;
    /// -- no row: DuplicateToken
    /// INSERT INTO clients (id, live) VALUES ($client, 1)
    ///   ON CONFLICT (id) DO UPDATE SET live = live + 1 RETURNING live - 1;
    /// INSERT INTO sources (id, live) VALUES ($source, 1)
    ///   ON CONFLICT (id) DO UPDATE SET live = live + 1 RETURNING live - 1;
    /// UPDATE totals SET n = n + 1 RETURNING n - 1;
    /// -- decision: Budget::check(client, source, total); refused: roll back
    /// ```
    fn register(
        &self,
        token: TokenId,
        client: ClientId,
        source: SourceKey,
        expires_at: Timestamp,
        budget: Budget,
    ) -> Result<(), LedgerError>;

    /// Reserves `token` for the primary `by` until `until`: succeeds only if
    /// the token is open, or reserved with a lapsed reservation
    /// (`until ≤ now`), and `now < expires_at`. Of any number of concurrent
    /// calls for one token at most one succeeds. Sets
    /// `keep_until = max(expires_at, until)`. Returns the registering client
    /// (where the Hello goes). Errors, in this order: [`LedgerError::UnknownToken`],
    /// [`LedgerError::TokenAlreadyRedeemed`], [`LedgerError::TokenExpired`],
    /// [`LedgerError::TokenReserved`].
    ///
    /// ```sql
    /// -- decision
    /// UPDATE tokens SET state = 1, peer = $by, state_at = $until, hello = $hello,
    ///        keep_until = max(expires_at, $until)      -- greatest() in PostgreSQL
    ///  WHERE id = $id AND expires_at > $now
    ///    AND (state = 0 OR (state = 1 AND state_at <= $now))
    /// RETURNING client;
    /// ```
    fn reserve(
        &self,
        token: &TokenId,
        by: ClientId,
        hello: &HelloDigest,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<ClientId, LedgerError>;

    /// The companion `client` refused the Hello whose digest is `hello`: a
    /// token reserved (lapsed or not) for that Hello goes back to open, with
    /// `keep_until = expires_at`. Errors, in this order:
    /// [`LedgerError::UnknownToken`] (also for a dead entry),
    /// [`LedgerError::WrongClient`], [`LedgerError::TokenAlreadyRedeemed`],
    /// [`LedgerError::NotReserved`], [`LedgerError::ReservedForOtherHello`].
    ///
    /// ```sql
    /// -- decision
    /// UPDATE tokens SET state = 0, peer = NULL, state_at = NULL, hello = NULL,
    ///        keep_until = expires_at
    ///  WHERE id = $id AND client = $client AND state = 1 AND hello = $hello
    ///    AND keep_until > $now;
    /// ```
    fn release(
        &self,
        token: &TokenId,
        client: ClientId,
        hello: &HelloDigest,
        now: Timestamp,
    ) -> Result<(), LedgerError>;

    /// The companion's Request: a reserved, live (`now < keep_until`) token
    /// registered by `client` becomes redeemed, with
    /// `keep_until = max(keep_until, keep)`. Of any number of concurrent
    /// calls for one token at most one succeeds. Returns the primary that
    /// reserved it (where the Request goes). Errors, in this order:
    /// [`LedgerError::UnknownToken`], [`LedgerError::WrongClient`],
    /// [`LedgerError::TokenAlreadyRedeemed`], [`LedgerError::TokenExpired`]
    /// (a dead entry), [`LedgerError::NotReserved`].
    ///
    /// ```sql
    /// -- decision
    /// UPDATE tokens SET state = 2, state_at = $now, keep_until = max(keep_until, $keep)
    ///  WHERE id = $id AND client = $client AND state = 1 AND keep_until > $now
    /// RETURNING peer;
    /// ```
    fn redeem(
        &self,
        token: &TokenId,
        client: ClientId,
        now: Timestamp,
        keep: Timestamp,
    ) -> Result<ClientId, LedgerError>;

    /// The token's record, if the store holds it (dead or not). Read only.
    ///
    /// ```sql
    /// SELECT client, expires_at, keep_until, state, peer, state_at FROM tokens WHERE id = $id;
    /// ```
    fn get(&self, token: &TokenId) -> Result<Option<TokenRecord>, LedgerError>;

    /// Deletes up to `limit` entries with `keep_until ≤ now`, earliest first,
    /// in time proportional to their number (the index on `keep_until`), and
    /// returns how many.
    ///
    /// ```sql
    /// DELETE FROM tokens WHERE id IN
    ///   (SELECT id FROM tokens WHERE keep_until <= $now ORDER BY keep_until LIMIT $limit)
    /// RETURNING client, source;
    /// -- per returned row: UPDATE clients SET live = live - 1 WHERE id = $client;
    /// --                   UPDATE sources SET live = live - 1 WHERE id = $source;
    /// UPDATE totals SET n = n - $deleted;
    /// ```
    fn sweep(&self, now: Timestamp, limit: usize) -> Result<usize, LedgerError>;

    /// Deletes every entry `client` registered, whatever its state, and
    /// returns how many: the client can never send again (a connection's
    /// random id, gone with its connection), so its open tokens can never be
    /// redeemed, and its redeemed ones can no longer be answered. Swept early,
    /// they stop counting against the client's source and the store.
    ///
    /// ```sql
    /// DELETE FROM tokens WHERE client = $client RETURNING source;   -- the index on client
    /// -- per returned row: UPDATE sources SET live = live - 1 WHERE id = $source;
    /// DELETE FROM clients WHERE id = $client;
    /// UPDATE totals SET n = n - $deleted;
    /// ```
    fn abandon(&self, client: ClientId) -> Result<usize, LedgerError>;
}

#[derive(Debug, Default, Deserialize)]
struct MemoryInner {
    tokens: HashMap<TokenId, TokenRecord>,
    by_keep: BTreeSet<(Timestamp, TokenId)>,
    /// Each client's entries (for its count and [`TokenStore::abandon`]);
    /// no empty sets. Rebuilt from `tokens` on restore.
    #[serde(skip)]
    by_client: HashMap<ClientId, BTreeSet<TokenId>>,
    /// Entries per source; no zero counts. Rebuilt on restore.
    #[serde(skip)]
    by_source: HashMap<SourceKey, u64>,
}

/// Saves in key order, so that equal stores save to equal bytes.
impl Serialize for MemoryInner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Sorted<'a> {
            tokens: BTreeMap<&'a TokenId, &'a TokenRecord>,
            by_keep: &'a BTreeSet<(Timestamp, TokenId)>,
        }
        Sorted {
            tokens: self.tokens.iter().collect(),
            by_keep: &self.by_keep,
        }
        .serialize(s)
    }
}

impl MemoryInner {
    fn set_keep(&mut self, token: TokenId, old: Timestamp, new: Timestamp) {
        if old != new {
            self.by_keep.remove(&(old, token));
            self.by_keep.insert((new, token));
        }
    }

    fn count(&mut self, token: TokenId, r: &TokenRecord) {
        self.by_client.entry(r.client).or_default().insert(token);
        *self.by_source.entry(r.source).or_default() += 1;
    }

    fn uncount(&mut self, token: &TokenId, r: &TokenRecord) {
        if let Some(set) = self.by_client.get_mut(&r.client) {
            set.remove(token);
            if set.is_empty() {
                self.by_client.remove(&r.client);
            }
        }
        if let Some(n) = self.by_source.get_mut(&r.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_source.remove(&r.source);
            }
        }
    }

    /// Removes an entry and everything that counts it.
    fn remove(&mut self, token: &TokenId) -> Option<TokenRecord> {
        let r = self.tokens.remove(token)?;
        self.by_keep.remove(&(r.keep_until, *token));
        self.uncount(token, &r);
        Some(r)
    }

    fn held(&self, client: &ClientId, source: &SourceKey) -> Held {
        let len = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Held {
            client: len(self.by_client.get(client).map_or(0, BTreeSet::len)),
            source: self.by_source.get(source).copied().unwrap_or(0),
            total: len(self.tokens.len()),
        }
    }

    /// Checks the expiry index and each entry's keep time, and rebuilds
    /// the per-client and per-source counts from the entries.
    fn consistent(&mut self) -> Result<(), &'static str> {
        if self.by_keep.len() != self.tokens.len()
            || !self
                .by_keep
                .iter()
                .all(|(at, t)| self.tokens.get(t).is_some_and(|r| r.keep_until == *at))
        {
            return Err("ledger expiry index");
        }
        for r in self.tokens.values() {
            let keep_ok = match r.state {
                TokenState::Open => r.keep_until == r.expires_at,
                TokenState::Reserved { until, .. } => r.keep_until == r.expires_at.max(until),
                TokenState::Redeemed { .. } => r.keep_until >= r.expires_at,
            };
            if !keep_ok {
                return Err("ledger token keep_until");
            }
        }
        self.by_client.clear();
        self.by_source.clear();
        let all: Vec<(TokenId, TokenRecord)> = self.tokens.iter().map(|(t, r)| (*t, *r)).collect();
        for (t, r) in &all {
            self.count(*t, r);
        }
        Ok(())
    }
}

/// The in-memory [`TokenStore`]: a mutex over a map, an expiry index
/// (`BTreeSet<(keep_until, token)>`) and per-client counts.
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    inner: Mutex<MemoryInner>,
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // Every method checks before it writes and cannot panic while
        // writing, so a poisoned lock still guards a consistent state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of entries held (tombstones included).
    pub fn len(&self) -> usize {
        self.lock().tokens.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries `client` registered that the store still holds (open,
    /// reserved or redeemed).
    pub fn client_tokens(&self, client: &ClientId) -> u64 {
        let g = self.lock();
        g.held(client, &SourceKey::LOCAL).client
    }

    /// Entries registered from `source` that the store still holds.
    pub fn source_tokens(&self, source: &SourceKey) -> u64 {
        self.lock().by_source.get(source).copied().unwrap_or(0)
    }

    /// Serializes the store alone (versioned JSON, see [`crate::persist`]);
    /// [`Ledger::save`] also keeps the configuration and the clock.
    pub fn save(&self) -> Result<Vec<u8>, crate::persist::PersistError> {
        crate::persist::save("token store", &*self.lock())
    }

    /// Restores a store saved by [`MemoryTokenStore::save`], checking that
    /// the expiry index and the per-client counts match the tokens.
    pub fn restore(bytes: &[u8]) -> Result<Self, crate::persist::PersistError> {
        let inner: MemoryInner = crate::persist::restore("token store", bytes)?;
        Self::from_inner(inner)
    }

    fn from_inner(mut inner: MemoryInner) -> Result<Self, crate::persist::PersistError> {
        inner
            .consistent()
            .map_err(crate::persist::PersistError::Inconsistent)?;
        Ok(MemoryTokenStore {
            inner: Mutex::new(inner),
        })
    }
}

impl TokenStore for MemoryTokenStore {
    fn register(
        &self,
        token: TokenId,
        client: ClientId,
        source: SourceKey,
        expires_at: Timestamp,
        budget: Budget,
    ) -> Result<(), LedgerError> {
        let mut g = self.lock();
        if g.tokens.contains_key(&token) {
            return Err(LedgerError::DuplicateToken);
        }
        budget
            .check(g.held(&client, &source))
            .map_err(|e| LedgerError::QuotaExceeded {
                scope: e.scope,
                limit: e.limit,
            })?;
        let r = TokenRecord {
            client,
            source,
            expires_at,
            keep_until: expires_at,
            state: TokenState::Open,
        };
        g.tokens.insert(token, r);
        g.by_keep.insert((expires_at, token));
        g.count(token, &r);
        Ok(())
    }

    fn reserve(
        &self,
        token: &TokenId,
        by: ClientId,
        hello: &HelloDigest,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<ClientId, LedgerError> {
        let mut g = self.lock();
        let r = g.tokens.get_mut(token).ok_or(LedgerError::UnknownToken)?;
        r.check_reserve(now)?;
        let old = r.keep_until;
        r.state = TokenState::Reserved {
            by,
            until,
            hello: *hello,
        };
        r.keep_until = r.expires_at.max(until);
        let (new, client) = (r.keep_until, r.client);
        g.set_keep(*token, old, new);
        Ok(client)
    }

    fn release(
        &self,
        token: &TokenId,
        client: ClientId,
        hello: &HelloDigest,
        now: Timestamp,
    ) -> Result<(), LedgerError> {
        let mut g = self.lock();
        let r = g.tokens.get_mut(token).ok_or(LedgerError::UnknownToken)?;
        r.check_release(client, hello, now)?;
        let old = r.keep_until;
        r.state = TokenState::Open;
        r.keep_until = r.expires_at;
        let new = r.keep_until;
        g.set_keep(*token, old, new);
        Ok(())
    }

    fn redeem(
        &self,
        token: &TokenId,
        client: ClientId,
        now: Timestamp,
        keep: Timestamp,
    ) -> Result<ClientId, LedgerError> {
        let mut g = self.lock();
        let r = g.tokens.get_mut(token).ok_or(LedgerError::UnknownToken)?;
        let primary = r.check_redeem(client, now)?;
        let old = r.keep_until;
        r.state = TokenState::Redeemed { primary, at: now };
        r.keep_until = old.max(keep);
        let new = r.keep_until;
        g.set_keep(*token, old, new);
        Ok(primary)
    }

    fn get(&self, token: &TokenId) -> Result<Option<TokenRecord>, LedgerError> {
        Ok(self.lock().tokens.get(token).copied())
    }

    fn sweep(&self, now: Timestamp, limit: usize) -> Result<usize, LedgerError> {
        let mut g = self.lock();
        let mut n = 0;
        while n < limit {
            let Some(&(at, token)) = g.by_keep.first() else {
                break;
            };
            if at > now {
                break;
            }
            if g.remove(&token).is_none() {
                g.by_keep.pop_first();
            }
            n += 1;
        }
        Ok(n)
    }

    fn abandon(&self, client: ClientId) -> Result<usize, LedgerError> {
        let mut g = self.lock();
        let tokens = g.by_client.remove(&client).unwrap_or_default();
        for t in &tokens {
            g.remove(t);
        }
        Ok(tokens.len())
    }
}

/// How long a redeemed token stays routable for the rest of its handshake,
/// at least: 5 minutes, more than the default policy's approval (120 s) and
/// confirmation (60 s) timeouts together. [`LedgerConfig::from_policy`]
/// lengthens it for a policy whose timeouts add up to more.
pub const DEFAULT_SESSION_WINDOW: Duration = Duration::from_secs(300);

/// How long a Hello's reservation holds when the companion neither answers
/// nor releases: 30 s. No person acts between Hello and Request (the user
/// approves on the primary after the Request), so the companion answers
/// within a network round trip and one X25519; 30 s covers a slow network
/// or a throttled background tab with a wide margin, yet is half the first
/// offer's default lifetime (60 s), so a token held by a silent companion
/// is free again while its offer is still shown. The approval timeout
/// (120 s) would outlast the offer.
pub const DEFAULT_RESERVE_WINDOW: Duration = Duration::from_secs(30);

/// Entries (open, reserved or redeemed until swept) one client may hold: 8.
/// A companion shows one offer at a time and registers the next one on
/// rotation (a rotated offer lives 20 s, the first 60 s), and its one
/// redeemed token stays as a tombstone for the session window; 8 leaves
/// room for a re-pair and for a few tabs sharing one connection.
pub const DEFAULT_MAX_TOKENS_PER_CLIENT: u64 = 8;

/// Entries one network source may hold: 256. A redeemed token stays for
/// the session window (5 minutes), so one address (an office behind one
/// NAT) can complete about 80 pairings in any 5 minutes; an attacker's
/// address holds at most 256 rows, whatever number of client ids it makes.
pub const DEFAULT_MAX_TOKENS_PER_SOURCE: u64 = 256;

/// Entries (tombstones included) one store may hold: 1,000,000, about
/// 100 MB for the in-memory store. The last quarter is kept for sources
/// holding fewer than 32 entries ([`Budget::new`]).
pub const DEFAULT_MAX_TOKENS: u64 = 1_000_000;

/// Entries a registration that hit a quota sweeps before trying once more.
const QUOTA_SWEEP_LIMIT: usize = 64;

/// Every limit of a [`Ledger`]. Build it with [`LedgerConfig::from_policy`]
/// and adjust the fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerConfig {
    /// Longest lifetime of a registration: a registered expiry is clamped to
    /// `now + max_offer_lifetime`. From a policy,
    /// `max(first_offer_lifetime, rotated_offer_lifetime)`.
    #[serde(with = "millis")]
    pub max_offer_lifetime: Duration,
    /// How long a Hello's reservation holds ([`DEFAULT_RESERVE_WINDOW`]).
    #[serde(with = "millis")]
    pub reserve_window: Duration,
    /// How long after redemption the rest of the handshake is routed (and
    /// the id kept as a tombstone). From a policy, the larger of
    /// [`DEFAULT_SESSION_WINDOW`] and `approval_timeout + confirmation_timeout`.
    #[serde(with = "millis")]
    pub session_window: Duration,
    /// The entries (tombstones included) one client, one source and the
    /// whole store may hold ([`DEFAULT_MAX_TOKENS_PER_CLIENT`],
    /// [`DEFAULT_MAX_TOKENS_PER_SOURCE`], [`DEFAULT_MAX_TOKENS`], a quarter
    /// of the total kept for sources in good standing).
    pub tokens: Budget,
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

impl LedgerConfig {
    /// The limits that fit `policy`, with the default reservation window and
    /// quotas.
    pub fn from_policy(policy: &Policy) -> Self {
        LedgerConfig {
            max_offer_lifetime: policy
                .first_offer_lifetime()
                .max(policy.rotated_offer_lifetime()),
            reserve_window: DEFAULT_RESERVE_WINDOW,
            session_window: DEFAULT_SESSION_WINDOW.max(
                policy
                    .approval_timeout()
                    .saturating_add(policy.confirmation_timeout()),
            ),
            tokens: Budget::new(
                DEFAULT_MAX_TOKENS_PER_CLIENT,
                DEFAULT_MAX_TOKENS_PER_SOURCE,
                DEFAULT_MAX_TOKENS,
            ),
        }
    }
}

impl Default for LedgerConfig {
    /// [`LedgerConfig::from_policy`] of [`Policy::default`].
    fn default() -> Self {
        LedgerConfig::from_policy(&Policy::default())
    }
}

/// What a routed message did to its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A Hello reserved the token until `until`.
    Reserved {
        /// When the reservation lapses.
        until: Timestamp,
    },
    /// A Request redeemed the token.
    Redeemed {
        /// When.
        at: Timestamp,
    },
    /// A Grant, Refusal or Confirm of a redeemed token: nothing changed.
    None,
}

/// The ledger's routing decision for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// The token the message belongs to.
    pub token_id: TokenId,
    /// The message's kind.
    pub kind: MessageKind,
    /// Where to forward it: the companion (registering client) for a Hello,
    /// Grant or Refusal, the primary whose Hello reserved the token for a
    /// Request or Confirm.
    pub forward_to: ClientId,
    /// What it did to the token.
    pub transition: Transition,
}

/// The relay's token ledger: registers offers, reserves each token for one
/// Hello, redeems it once with the companion's Request, and routes the
/// handshake by the messages' headers. See the module documentation.
#[derive(Debug)]
pub struct Ledger<S: TokenStore = MemoryTokenStore> {
    store: S,
    config: LedgerConfig,
    /// The highest `now` seen, in Unix milliseconds.
    high_water: AtomicU64,
}

impl Default for Ledger<MemoryTokenStore> {
    fn default() -> Self {
        Ledger::in_memory(LedgerConfig::default())
    }
}

#[derive(Serialize, Deserialize)]
struct SavedLedger {
    config: LedgerConfig,
    high_water: Timestamp,
    store: MemoryInner,
}

impl Ledger<MemoryTokenStore> {
    /// A ledger over an empty in-memory store.
    pub fn in_memory(config: LedgerConfig) -> Self {
        Ledger::new(MemoryTokenStore::new(), config)
    }

    /// Serializes the whole ledger: store, configuration and the clock's
    /// high water (versioned JSON, see [`crate::persist`]).
    pub fn save(&self) -> Result<Vec<u8>, crate::persist::PersistError> {
        let g = self.store.lock();
        #[derive(Serialize)]
        struct Out<'a> {
            config: &'a LedgerConfig,
            high_water: Timestamp,
            store: &'a MemoryInner,
        }
        crate::persist::save(
            "ledger",
            &Out {
                config: &self.config,
                high_water: self.high_water(),
                store: &g,
            },
        )
    }

    /// Restores a ledger saved by [`Ledger::save`], with its settings.
    pub fn restore(bytes: &[u8]) -> Result<Self, crate::persist::PersistError> {
        let saved: SavedLedger = crate::persist::restore("ledger", bytes)?;
        let ledger = Ledger::new(MemoryTokenStore::from_inner(saved.store)?, saved.config);
        ledger
            .high_water
            .store(saved.high_water.as_unix_millis(), Ordering::Relaxed);
        Ok(ledger)
    }
}

impl<S: TokenStore> Ledger<S> {
    /// A ledger over `store` with the limits of `config`.
    pub fn new(store: S, config: LedgerConfig) -> Self {
        Ledger {
            store,
            config,
            high_water: AtomicU64::new(0),
        }
    }

    /// The limits.
    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// A token's record (its state, owner, expiry), if the store holds it;
    /// no trait needs to be in scope.
    pub fn token(&self, token: &TokenId) -> Result<Option<TokenRecord>, LedgerError> {
        self.store.get(token)
    }

    /// The highest `now` this ledger was given.
    pub fn high_water(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.high_water.load(Ordering::Acquire))
    }

    /// `max(now, high water)`, raising the high water to `now`.
    fn clock(&self, now: Timestamp) -> Timestamp {
        let prev = self
            .high_water
            .fetch_max(now.as_unix_millis(), Ordering::AcqRel);
        now.max(Timestamp::from_unix_millis(prev))
    }

    /// The companion (`client`, from the network source `source`) announces
    /// the token it shows, valid until `expires_at`, which is clamped to
    /// `now + max_offer_lifetime`. Returns the expiry recorded. Refuses an
    /// expiry not after `now` ([`LedgerError::TokenExpired`]), an id the
    /// store holds ([`LedgerError::DuplicateToken`]) and a registration over
    /// the tokens' budget ([`LedgerError::QuotaExceeded`], after sweeping a
    /// few expired entries to make room).
    pub fn register(
        &self,
        client: ClientId,
        source: SourceKey,
        token: TokenId,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<Timestamp, LedgerError> {
        let now = self.clock(now);
        if expires_at <= now {
            return Err(LedgerError::TokenExpired);
        }
        let expires_at = expires_at.min(now.saturating_add(self.config.max_offer_lifetime));
        let budget = self.config.tokens;
        match self
            .store
            .register(token, client, source, expires_at, budget)
        {
            Err(LedgerError::QuotaExceeded { .. }) if self.sweep(now, QUOTA_SWEEP_LIMIT)? > 0 => {
                self.store
                    .register(token, client, source, expires_at, budget)?;
            }
            other => other?,
        }
        Ok(expires_at)
    }

    /// Forgets every token `client` registered: the client is gone for good
    /// (a connection that never identified, whose random id ended with it).
    /// Its open tokens could never be redeemed and its redeemed ones never
    /// answered; deleted now, they stop counting against its source and the
    /// store ([`TokenStore::abandon`]). Returns how many.
    pub fn abandon(&self, client: ClientId) -> Result<usize, LedgerError> {
        self.store.abandon(client)
    }

    /// Routes a handshake message from `from` at `now`.
    ///
    /// In this order: the header is parsed ([`LedgerError::Unroutable`]); the
    /// length is checked against the kind ([`LedgerError::WrongSize`]);
    /// then by kind:
    ///
    /// - Hello: its redemption proof must hash to its token id
    ///   ([`LedgerError::BadRedemptionProof`]), then the token is reserved for
    ///   `from` ([`TokenStore::reserve`]); forwarded to the companion.
    /// - Request: must come from the companion that registered the token;
    ///   redeems it ([`TokenStore::redeem`]); forwarded to the reserving primary.
    /// - Grant, Refusal: for a redeemed token, from the primary whose Hello
    ///   redeemed it ([`LedgerError::WrongClient`] from anyone else);
    ///   forwarded to the companion.
    /// - Confirm: for a redeemed token, from the companion that registered
    ///   it; forwarded to the primary.
    ///
    /// A Grant, Refusal or Confirm is routed until the token's `keep_until`.
    pub fn route(
        &self,
        from: ClientId,
        message: &[u8],
        now: Timestamp,
    ) -> Result<Routed, LedgerError> {
        let header =
            MessageHeader::parse(message).map_err(|e| LedgerError::Unroutable(e.to_string()))?;
        header
            .check_size(message)
            .map_err(|_| LedgerError::WrongSize {
                kind: header.kind,
                len: message.len(),
            })?;
        let now = self.clock(now);
        let token = header.token_id;
        let (forward_to, transition) = match header.kind {
            MessageKind::Hello => {
                let proof = header
                    .redemption_proof(message)
                    .ok_or(LedgerError::BadRedemptionProof)?;
                if proof.token_id() != token {
                    return Err(LedgerError::BadRedemptionProof);
                }
                let until = now.saturating_add(self.config.reserve_window);
                let hello = HelloDigest::of(message);
                let companion = self.store.reserve(&token, from, &hello, now, until)?;
                (companion, Transition::Reserved { until })
            }
            MessageKind::Request => {
                let keep = now.saturating_add(self.config.session_window);
                let primary = self.store.redeem(&token, from, now, keep)?;
                (primary, Transition::Redeemed { at: now })
            }
            MessageKind::Grant | MessageKind::Refusal | MessageKind::Confirm => {
                let record = self.store.get(&token)?.ok_or(LedgerError::UnknownToken)?;
                let TokenState::Redeemed { primary, .. } = record.state else {
                    return Err(LedgerError::NotRedeemed);
                };
                if now >= record.keep_until {
                    return Err(LedgerError::UnknownToken);
                }
                // Grant and Refusal come from the primary whose Hello
                // redeemed the token and go to the companion; the Confirm
                // the other way round.
                let (sender, to) = if header.kind == MessageKind::Confirm {
                    (record.client, primary)
                } else {
                    (primary, record.client)
                };
                if from != sender {
                    return Err(LedgerError::WrongClient);
                }
                (to, Transition::None)
            }
        };
        Ok(Routed {
            token_id: token,
            kind: header.kind,
            forward_to,
            transition,
        })
    }

    /// The companion (`client`, which registered the token) refused the Hello
    /// whose digest is `hello` (an altered key or MAC, which the relay cannot
    /// check): if that Hello still holds the reservation, the token is open
    /// again for the genuine Hello. A release naming an older Hello than the
    /// one holding the reservation changes nothing
    /// ([`LedgerError::ReservedForOtherHello`]). A companion releases only
    /// when the refusal left it still showing the offer.
    pub fn release(
        &self,
        client: ClientId,
        token: &TokenId,
        hello: &HelloDigest,
        now: Timestamp,
    ) -> Result<(), LedgerError> {
        let now = self.clock(now);
        self.store.release(token, client, hello, now)
    }

    /// Removes up to `limit` entries whose `keep_until` has passed, earliest
    /// first; returns how many. Call it regularly with a modest limit (a few
    /// thousand) so that no call holds the store for long.
    pub fn sweep(&self, now: Timestamp, limit: usize) -> Result<usize, LedgerError> {
        let now = self.clock(now);
        self.store.sweep(now, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    const C: ClientId = ClientId::from_bytes([0xc; 16]);
    const P: ClientId = ClientId::from_bytes([0xa; 16]);
    const H: HelloDigest = HelloDigest::from_bytes([0x4e; 32]);
    const Q: Budget = Budget::new(8, 100, 100);
    const S: SourceKey = SourceKey::LOCAL;

    fn tok(n: u8) -> TokenId {
        TokenId([n; 16])
    }

    fn state(s: &MemoryTokenStore, n: u8) -> TokenState {
        s.get(&tok(n)).unwrap().unwrap().state
    }

    #[test]
    fn open_reserved_redeemed() {
        let s = MemoryTokenStore::new();
        s.register(tok(1), C, S, t(100), Q).unwrap();
        assert_eq!(
            s.register(tok(1), C, S, t(100), Q),
            Err(LedgerError::DuplicateToken)
        );
        assert_eq!(s.client_tokens(&C), 1);
        // A Request before any Hello.
        assert_eq!(
            s.redeem(&tok(1), C, t(1), t(500)),
            Err(LedgerError::NotReserved)
        );
        assert_eq!(s.reserve(&tok(1), P, &H, t(10), t(40)), Ok(C));
        assert_eq!(
            state(&s, 1),
            TokenState::Reserved {
                by: P,
                until: t(40),
                hello: H,
            }
        );
        assert_eq!(
            s.reserve(&tok(1), C, &H, t(11), t(41)),
            Err(LedgerError::TokenReserved { until: t(40) })
        );
        // Only the registering client redeems.
        assert_eq!(
            s.redeem(&tok(1), P, t(12), t(500)),
            Err(LedgerError::WrongClient)
        );
        assert_eq!(s.redeem(&tok(1), C, t(12), t(500)), Ok(P));
        assert_eq!(
            state(&s, 1),
            TokenState::Redeemed {
                primary: P,
                at: t(12)
            }
        );
        // The tombstone still counts until it is swept.
        assert_eq!(s.client_tokens(&C), 1);
        assert_eq!(s.get(&tok(1)).unwrap().unwrap().keep_until, t(500));
        for r in [
            s.redeem(&tok(1), C, t(13), t(500)).map(|_| ()),
            s.reserve(&tok(1), P, &H, t(13), t(43)).map(|_| ()),
            s.release(&tok(1), C, &H, t(13)),
            s.register(tok(1), C, S, t(100), Q),
        ] {
            assert!(
                matches!(
                    r,
                    Err(LedgerError::TokenAlreadyRedeemed | LedgerError::DuplicateToken)
                ),
                "{r:?}"
            );
        }
        assert_eq!(
            s.reserve(&tok(2), P, &H, t(1), t(2)),
            Err(LedgerError::UnknownToken)
        );
        s.lock().consistent().unwrap();
    }

    #[test]
    fn release_and_lapse_reopen() {
        let s = MemoryTokenStore::new();
        s.register(tok(1), C, S, t(100), Q).unwrap();
        assert_eq!(
            s.release(&tok(1), C, &H, t(1)),
            Err(LedgerError::NotReserved)
        );
        s.reserve(&tok(1), P, &H, t(10), t(40)).unwrap();
        assert_eq!(
            s.release(&tok(1), P, &H, t(11)),
            Err(LedgerError::WrongClient)
        );
        assert_eq!(s.release(&tok(1), C, &H, t(11)), Ok(()));
        assert_eq!(state(&s, 1), TokenState::Open);
        // Reserved again; lapses at 50; another Hello takes it over.
        s.reserve(&tok(1), P, &H, t(20), t(50)).unwrap();
        let other = ClientId::from(7);
        assert!(s.reserve(&tok(1), other, &H, t(49), t(79)).is_err());
        assert_eq!(s.reserve(&tok(1), other, &H, t(50), t(80)), Ok(C));
        assert_eq!(s.redeem(&tok(1), C, t(60), t(60)), Ok(other));
        s.lock().consistent().unwrap();
    }

    #[test]
    fn a_late_release_of_a_lapsed_reservation_leaves_the_newer_one() {
        let s = MemoryTokenStore::new();
        let (corrupt, genuine) = (HelloDigest::of(b"corrupted"), HelloDigest::of(b"genuine"));
        let other = ClientId::from(7);
        s.register(tok(1), C, S, t(100), Q).unwrap();
        s.reserve(&tok(1), P, &corrupt, t(10), t(40)).unwrap();
        // The corrupted Hello's reservation lapses; the genuine one reserves.
        s.reserve(&tok(1), other, &genuine, t(40), t(70)).unwrap();
        let before = s.get(&tok(1)).unwrap();
        // The companion's refusal of the corrupted Hello arrives late.
        assert_eq!(
            s.release(&tok(1), C, &corrupt, t(41)),
            Err(LedgerError::ReservedForOtherHello)
        );
        assert_eq!(s.get(&tok(1)).unwrap(), before);
        // The genuine Hello's Request still redeems.
        assert_eq!(s.redeem(&tok(1), C, t(42), t(400)), Ok(other));
        s.lock().consistent().unwrap();
    }

    #[test]
    fn expiry_reservation_past_expiry_and_sweep() {
        let s = MemoryTokenStore::new();
        s.register(tok(1), C, S, t(100), Q).unwrap();
        s.register(tok(2), C, S, t(100), Q).unwrap();
        s.register(tok(3), C, S, t(100), Q).unwrap();
        assert_eq!(
            s.reserve(&tok(1), P, &H, t(100), t(130)),
            Err(LedgerError::TokenExpired)
        );
        // Reserved just before expiry: the Request may come after it.
        s.reserve(&tok(2), P, &H, t(99), t(129)).unwrap();
        assert_eq!(s.get(&tok(2)).unwrap().unwrap().keep_until, t(129));
        assert_eq!(s.redeem(&tok(2), C, t(120), t(400)), Ok(P));
        // Reserved and never answered: dead at 129.
        s.reserve(&tok(3), P, &H, t(99), t(129)).unwrap();
        assert_eq!(
            s.redeem(&tok(3), C, t(129), t(400)),
            Err(LedgerError::TokenExpired)
        );
        assert_eq!(
            s.release(&tok(3), C, &H, t(129)),
            Err(LedgerError::UnknownToken)
        );
        assert_eq!(s.client_tokens(&C), 3);
        // Sweep in expiry order, with a limit.
        assert_eq!(s.sweep(t(100), 10), Ok(1));
        assert_eq!(s.sweep(t(200), 0), Ok(0));
        assert_eq!(s.sweep(t(200), 10), Ok(1));
        assert_eq!(s.client_tokens(&C), 1);
        assert_eq!(s.len(), 1);
        assert_eq!(s.sweep(t(399), 10), Ok(0));
        assert_eq!(s.sweep(t(400), 10), Ok(1));
        assert!(s.is_empty());
        s.lock().consistent().unwrap();
    }

    #[test]
    fn budgets_count_clients_sources_and_tombstones() {
        let s = MemoryTokenStore::new();
        let (x, y) = (
            SourceKey::from_bytes([1; 16]),
            SourceKey::from_bytes([2; 16]),
        );
        // 2 per client, 3 per source, 6 in all, the last 2 kept for
        // sources holding fewer than 1.
        let q = Budget::new(2, 3, 6).with_reserve(2, 1);
        let quota = |scope, limit| Err(LedgerError::QuotaExceeded { scope, limit });
        s.register(tok(1), C, x, t(100), q).unwrap();
        s.register(tok(2), C, x, t(100), q).unwrap();
        assert_eq!(
            s.register(tok(3), C, x, t(100), q),
            quota(BudgetScope::Client, 2)
        );
        s.register(tok(3), P, x, t(100), q).unwrap();
        // A fresh client id from the same source is still that source.
        assert_eq!(
            s.register(tok(4), ClientId::from(9), x, t(100), q),
            quota(BudgetScope::Source, 3)
        );
        s.register(tok(4), ClientId::from(9), y, t(100), q).unwrap();
        // Four held: the reserve begins; y holds one, x three: neither is
        // in good standing, a new source is.
        assert_eq!(
            s.register(tok(5), ClientId::from(10), y, t(100), q),
            quota(BudgetScope::Reserve, 4)
        );
        let z = SourceKey::from_bytes([3; 16]);
        s.register(tok(5), ClientId::from(11), z, t(100), q)
            .unwrap();
        s.register(
            tok(6),
            ClientId::from(12),
            SourceKey::from_bytes([4; 16]),
            t(100),
            q,
        )
        .unwrap();
        assert_eq!(
            s.register(
                tok(7),
                ClientId::from(13),
                SourceKey::from_bytes([5; 16]),
                t(100),
                q
            ),
            quota(BudgetScope::Total, 6)
        );
        // A redeemed token still counts for its client and source.
        s.reserve(&tok(1), P, &H, t(1), t(2)).unwrap();
        s.redeem(&tok(1), C, t(1), t(200)).unwrap();
        assert_eq!(s.client_tokens(&C), 2);
        assert_eq!(s.source_tokens(&x), 3);
        // Abandoning a client frees what it held, tombstone included.
        assert_eq!(s.abandon(C), Ok(2));
        assert_eq!(s.abandon(C), Ok(0));
        assert_eq!(s.client_tokens(&C), 0);
        assert_eq!(s.source_tokens(&x), 1);
        assert_eq!(s.get(&tok(1)), Ok(None));
        assert_eq!(s.len(), 4);
        // Four held again: x (one entry) is not in good standing.
        assert!(s.register(tok(8), C, x, t(100), q).is_err());
        s.register(tok(8), C, SourceKey::from_bytes([9; 16]), t(100), q)
            .unwrap();
        let mut g = s.lock();
        let before = (g.by_client.clone(), g.by_source.clone());
        g.consistent().unwrap();
        assert_eq!((g.by_client.clone(), g.by_source.clone()), before);
    }

    #[test]
    fn ledger_clamps_and_keeps_time_monotonic() {
        let l = Ledger::default();
        let max = l.config().max_offer_lifetime;
        assert_eq!(max, Duration::from_secs(60));
        let exp = l.register(C, S, tok(1), Timestamp::MAX, t(1_000)).unwrap();
        assert_eq!(exp, t(61_000));
        assert_eq!(
            l.register(C, S, tok(2), t(1_000), t(1_000)),
            Err(LedgerError::TokenExpired)
        );
        // The clock jumps past the expiry, then back.
        assert_eq!(l.sweep(t(70_000), 0), Ok(0));
        assert_eq!(l.high_water(), t(70_000));
        assert_eq!(
            l.register(C, S, tok(2), t(5_000), t(1_000)),
            Err(LedgerError::TokenExpired)
        );
        assert_eq!(l.sweep(t(2_000), 10), Ok(1));
    }

    #[test]
    fn restore_checks_counts_and_index() {
        let s = MemoryTokenStore::new();
        s.register(tok(1), C, S, t(100), Q).unwrap();
        s.register(tok(2), C, S, t(100), Q).unwrap();
        s.reserve(&tok(2), P, &H, t(1), t(200)).unwrap();
        let r = MemoryTokenStore::restore(&s.save().unwrap()).unwrap();
        assert_eq!(r.get(&tok(2)), s.get(&tok(2)));
        // The counts are rebuilt from the entries.
        assert_eq!(r.client_tokens(&C), 2);
        assert_eq!(r.source_tokens(&S), 2);
        s.lock().by_keep.remove(&(t(200), tok(2)));
        assert!(matches!(
            MemoryTokenStore::restore(&s.save().unwrap()),
            Err(crate::persist::PersistError::Inconsistent(
                "ledger expiry index"
            ))
        ));
    }
}
