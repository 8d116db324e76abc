//! Exactly-once redemption of pairing tokens.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::handshake::{MessageHeader, MessageKind};
use crate::offer::TokenId;
use crate::time::Timestamp;

/// Why the ledger refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The token was already redeemed: every attempt after the first gets this.
    #[error("token already redeemed")]
    TokenAlreadyRedeemed,
    /// The token was never registered (or was swept after expiring).
    #[error("unknown token")]
    UnknownToken,
    /// The token's lifetime ended before the attempt.
    #[error("token expired")]
    TokenExpired,
    /// The token is already registered.
    #[error("token already registered")]
    DuplicateToken,
    /// A message that cannot be routed (bad header).
    #[error("unroutable message: {0}")]
    Unroutable(String),
    /// A Hello whose redemption proof does not match its token: whoever sent
    /// it never saw the QR code. The token stays redeemable.
    #[error("bad redemption proof: the sender did not see the QR code")]
    BadRedemptionProof,
    /// The durable store failed (I/O, connection); the attempt had no effect.
    #[error("token store unavailable: {0}")]
    Store(String),
}

/// The result of a successful redemption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redemption {
    /// The token.
    pub token_id: TokenId,
    /// When it was redeemed.
    pub at: Timestamp,
}

/// Where the ledger keeps tokens. The whole exactly-once guarantee rests on
/// [`TokenStore::redeem`] being atomic.
///
/// Contract for every implementation (the in-memory one here, or SQLite /
/// PostgreSQL later):
///
/// 1. `register` inserts a token in state *open* with its expiry, or fails
///    with [`LedgerError::DuplicateToken`] if the token exists.
/// 2. `redeem` is one atomic compare-and-set from *open* to *redeemed*: of any
///    number of concurrent calls for one token, from any thread, process or
///    node, **at most one** returns `Ok`; the others get
///    [`LedgerError::TokenAlreadyRedeemed`]. An expired token
///    (`now >= expires_at`) is never redeemed. A redeemed token is kept until
///    `keep_until` (the rest of its handshake is routed meanwhile). In SQL:
///    `UPDATE tokens SET redeemed_at = $now, expires_at = greatest(expires_at, $keep)
///    WHERE id = $id AND redeemed_at IS NULL AND expires_at > $now`;
///    exactly one affected row means success.
/// 3. A redemption that returned `Ok` is durable before it returns (a crash
///    afterwards must not let the token be redeemed again).
/// 4. `sweep` deletes tokens that expired at or before `now`, in time
///    proportional to their number (an index on `expires_at`). A redeemed
///    token swept after expiry then reads as unknown, which still refuses it;
///    it could only be redeemed again if the same token were registered again,
///    which takes the same offer (a fresh 128-bit secret per offer), and the
///    companion and primary state machines refuse that replay themselves.
/// 5. Errors of the store itself are [`LedgerError::Store`] and mean "nothing
///    happened".
pub trait TokenStore: Send + Sync {
    /// Registers a token valid until `expires_at` (exclusive).
    fn register(&self, token: TokenId, expires_at: Timestamp) -> Result<(), LedgerError>;
    /// Atomically redeems a token once, keeping it until `keep_until`.
    fn redeem(
        &self,
        token: &TokenId,
        now: Timestamp,
        keep_until: Timestamp,
    ) -> Result<(), LedgerError>;
    /// Whether the token has been redeemed.
    fn is_redeemed(&self, token: &TokenId) -> Result<bool, LedgerError>;
    /// Removes tokens expired at `now`; returns how many.
    fn sweep(&self, now: Timestamp) -> Result<usize, LedgerError>;
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Entry {
    expires_at: Timestamp,
    redeemed_at: Option<Timestamp>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct MemoryInner {
    tokens: HashMap<TokenId, Entry>,
    by_expiry: BTreeSet<(Timestamp, TokenId)>,
}

/// The in-memory [`TokenStore`]: a mutex over a map and an expiry index.
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
        // A panic in another thread while holding the lock cannot leave the
        // map half-updated (every update is a single insert), so recover.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of tokens held.
    pub fn len(&self) -> usize {
        self.lock().tokens.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Serializes the store (versioned JSON, see [`crate::persist`]).
    pub fn save(&self) -> Result<Vec<u8>, crate::persist::PersistError> {
        crate::persist::save("ledger", &*self.lock())
    }

    /// Restores a store saved by [`MemoryTokenStore::save`].
    pub fn restore(bytes: &[u8]) -> Result<Self, crate::persist::PersistError> {
        let inner: MemoryInner = crate::persist::restore("ledger", bytes)?;
        let consistent = inner.by_expiry.len() == inner.tokens.len()
            && inner
                .by_expiry
                .iter()
                .all(|(at, t)| inner.tokens.get(t).is_some_and(|e| e.expires_at == *at));
        if !consistent {
            return Err(crate::persist::PersistError::Inconsistent(
                "ledger expiry index",
            ));
        }
        Ok(MemoryTokenStore {
            inner: Mutex::new(inner),
        })
    }
}

impl TokenStore for MemoryTokenStore {
    fn register(&self, token: TokenId, expires_at: Timestamp) -> Result<(), LedgerError> {
        let mut g = self.lock();
        if g.tokens.contains_key(&token) {
            return Err(LedgerError::DuplicateToken);
        }
        g.tokens.insert(
            token,
            Entry {
                expires_at,
                redeemed_at: None,
            },
        );
        g.by_expiry.insert((expires_at, token));
        Ok(())
    }

    fn redeem(
        &self,
        token: &TokenId,
        now: Timestamp,
        keep_until: Timestamp,
    ) -> Result<(), LedgerError> {
        let mut g = self.lock();
        let entry = g.tokens.get_mut(token).ok_or(LedgerError::UnknownToken)?;
        if entry.redeemed_at.is_some() {
            return Err(LedgerError::TokenAlreadyRedeemed);
        }
        if now >= entry.expires_at {
            return Err(LedgerError::TokenExpired);
        }
        entry.redeemed_at = Some(now);
        let old = entry.expires_at;
        if keep_until > old {
            entry.expires_at = keep_until;
            g.by_expiry.remove(&(old, *token));
            g.by_expiry.insert((keep_until, *token));
        }
        Ok(())
    }

    fn is_redeemed(&self, token: &TokenId) -> Result<bool, LedgerError> {
        Ok(self
            .lock()
            .tokens
            .get(token)
            .is_some_and(|e| e.redeemed_at.is_some()))
    }

    fn sweep(&self, now: Timestamp) -> Result<usize, LedgerError> {
        let mut g = self.lock();
        let mut n = 0;
        while let Some(&(at, token)) = g.by_expiry.first() {
            if at > now {
                break;
            }
            g.by_expiry.pop_first();
            g.tokens.remove(&token);
            n += 1;
        }
        Ok(n)
    }
}

/// How long a redeemed token stays routable for the rest of its handshake,
/// unless set with [`Ledger::with_session_window`]: 5 minutes, more than the
/// default policy's approval (120 s) and confirmation (60 s) timeouts
/// together. A host with a longer policy sets a longer window.
pub const DEFAULT_SESSION_WINDOW: Duration = Duration::from_secs(300);

/// The relay's token ledger: registers offers, redeems each token once, and
/// routes handshake messages by their header.
#[derive(Debug)]
pub struct Ledger<S: TokenStore = MemoryTokenStore> {
    store: S,
    session_window: Duration,
}

impl Default for Ledger<MemoryTokenStore> {
    fn default() -> Self {
        Ledger::in_memory()
    }
}

impl Ledger<MemoryTokenStore> {
    /// A ledger over an empty in-memory store.
    pub fn in_memory() -> Self {
        Ledger::new(MemoryTokenStore::new())
    }
}

impl<S: TokenStore> Ledger<S> {
    /// A ledger over `store`.
    pub fn new(store: S) -> Self {
        Ledger {
            store,
            session_window: DEFAULT_SESSION_WINDOW,
        }
    }

    /// Sets how long a redeemed token stays routable after its redemption.
    pub fn with_session_window(mut self, window: Duration) -> Self {
        self.session_window = window;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The companion announces the token it shows, valid until `expires_at`.
    pub fn register(&self, token: TokenId, expires_at: Timestamp) -> Result<(), LedgerError> {
        self.store.register(token, expires_at)
    }

    /// Redeems `token` at `now`: `Ok` exactly once, then
    /// [`LedgerError::TokenAlreadyRedeemed`] for every later attempt.
    ///
    /// This is the bare rule; [`Ledger::route`] also checks the redemption
    /// proof, so that only a party that saw the QR code can redeem.
    pub fn redeem(&self, token: &TokenId, now: Timestamp) -> Result<Redemption, LedgerError> {
        self.store
            .redeem(token, now, now.saturating_add(self.session_window))?;
        Ok(Redemption {
            token_id: *token,
            at: now,
        })
    }

    /// Routes a handshake message: a Hello redeems its token if its
    /// redemption proof matches (so only the first primary that saw the QR
    /// code gets through; a forged Hello cannot burn the token); every later
    /// message must belong to a redeemed token. Returns the token to forward on.
    pub fn route(&self, message: &[u8], now: Timestamp) -> Result<TokenId, LedgerError> {
        let header =
            MessageHeader::parse(message).map_err(|e| LedgerError::Unroutable(e.to_string()))?;
        if header.kind == MessageKind::Hello {
            let proof = header
                .redemption_proof(message)
                .ok_or(LedgerError::BadRedemptionProof)?;
            if proof.token_id() != header.token_id {
                return Err(LedgerError::BadRedemptionProof);
            }
            self.redeem(&header.token_id, now)?;
        } else if !self.store.is_redeemed(&header.token_id)? {
            return Err(LedgerError::UnknownToken);
        }
        Ok(header.token_id)
    }

    /// Removes expired tokens; returns how many.
    pub fn sweep(&self, now: Timestamp) -> Result<usize, LedgerError> {
        self.store.sweep(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    #[test]
    fn redeems_once_then_refuses() {
        let l = Ledger::in_memory();
        let tok = TokenId([1; 16]);
        l.register(tok, t(100)).unwrap();
        assert_eq!(l.register(tok, t(100)), Err(LedgerError::DuplicateToken));
        assert!(l.redeem(&tok, t(10)).is_ok());
        assert_eq!(
            l.redeem(&tok, t(11)),
            Err(LedgerError::TokenAlreadyRedeemed)
        );
        assert_eq!(
            l.redeem(&TokenId([2; 16]), t(11)),
            Err(LedgerError::UnknownToken)
        );
    }

    #[test]
    fn expiry_boundary_and_sweep() {
        let l = Ledger::in_memory();
        l.register(TokenId([1; 16]), t(100)).unwrap();
        l.register(TokenId([2; 16]), t(200)).unwrap();
        assert_eq!(
            l.redeem(&TokenId([1; 16]), t(100)),
            Err(LedgerError::TokenExpired)
        );
        assert!(l.redeem(&TokenId([2; 16]), t(199)).is_ok());
        assert_eq!(l.sweep(t(150)), Ok(1));
        assert_eq!(l.store().len(), 1);
        // The redeemed token stays for its session window (5 min from 199).
        assert_eq!(l.sweep(t(200)), Ok(0));
        assert_eq!(l.sweep(t(199 + 300_000)), Ok(1));
        assert!(l.store().is_empty());
    }

    #[test]
    fn save_restore_keeps_redemptions() {
        let l = Ledger::in_memory();
        l.register(TokenId([1; 16]), t(100)).unwrap();
        l.redeem(&TokenId([1; 16]), t(1)).unwrap();
        l.register(TokenId([2; 16]), t(100)).unwrap();
        let bytes = l.store().save().unwrap();
        let r = Ledger::new(MemoryTokenStore::restore(&bytes).unwrap());
        assert_eq!(
            r.redeem(&TokenId([1; 16]), t(2)),
            Err(LedgerError::TokenAlreadyRedeemed)
        );
        assert!(r.redeem(&TokenId([2; 16]), t(2)).is_ok());
        assert!(MemoryTokenStore::restore(&bytes[..bytes.len() / 2]).is_err());
    }
}
