//! Who may open a session (a WebSocket, a long-poll session): the relay's
//! session limit, and per network source ([`SourceKey`]: an IPv4 address,
//! an IPv6 prefix) a cap on open sessions (the rate of new connections is
//! the accept loop's); and the rate at which one source may make the relay
//! keep accounts it did not know. Rates are keyed GCRA limiters from `governor`, their memory trimmed
//! by the sweeper. Counting per source is the budgets' rule
//! ([`devicelink::relay::Budget`]); the rates bound what cannot be counted
//! because it lasts (an account).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use devicelink::relay::{Budget, Held, SourceKey};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::Metrics;
use super::Limits;

/// Why a session was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The relay is shutting down (503).
    ShuttingDown,
    /// The relay's session limit (503).
    RelayFull,
    /// The source's open-session cap (429).
    AddressFull,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Refused::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            Refused::RelayFull => (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n"),
            Refused::AddressFull => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address\n",
            ),
        };
        (status, text).into_response()
    }
}

/// What a session holds while it is open.
#[derive(Debug)]
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
    _source: Option<SourcePermit>,
    source: SourceKey,
}

impl Admission {
    /// The budgets' key of the session's address ([`SourceKey::LOCAL`]
    /// when the router was served without one).
    pub(crate) fn source(&self) -> SourceKey {
        self.source
    }
}

/// Open things per source, counted up by a permit and down on its drop.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    open: Mutex<HashMap<SourceKey, u64>>,
}

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SourceKey, u64>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more for `source` if `budget` allows (`per_source` is the cap).
    pub(crate) fn acquire(
        self: &Arc<Self>,
        source: SourceKey,
        budget: &Budget,
    ) -> Option<SourcePermit> {
        let mut open = self.lock();
        let n = open.entry(source).or_insert(0);
        let held = Held {
            client: 0,
            source: *n,
            total: 0,
        };
        if budget.check(held).is_err() {
            if *n == 0 {
                open.remove(&source);
            }
            return None;
        }
        *n += 1;
        Some(SourcePermit {
            source,
            tally: self.clone(),
        })
    }

    /// Open things of `source` now.
    #[cfg(test)]
    pub(crate) fn held(&self, source: &SourceKey) -> u64 {
        self.lock().get(source).copied().unwrap_or(0)
    }
}

/// One open thing of a source; counted down on drop.
#[derive(Debug)]
pub(crate) struct SourcePermit {
    source: SourceKey,
    tally: Arc<Tally>,
}

impl Drop for SourcePermit {
    fn drop(&mut self) {
        let mut open = self.tally.lock();
        if let Some(n) = open.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// The relay-wide and per-source limits of sessions, and the rate of new
/// accounts per source.
pub(crate) struct Gate {
    connections: Arc<Semaphore>,
    sessions: Arc<Tally>,
    per_source: Budget,
    accounts: Option<DefaultKeyedRateLimiter<SourceKey>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("per_source", &self.per_source)
            .finish_non_exhaustive()
    }
}

impl Gate {
    pub(crate) fn new(limits: &Limits, connections: Arc<Semaphore>) -> Self {
        let accounts = NonZeroU32::new(limits.new_accounts_per_address_per_hour)
            .map(|n| RateLimiter::keyed(Quota::per_hour(n).allow_burst(n)));
        Gate {
            connections,
            sessions: Arc::default(),
            per_source: Budget::new(
                u64::MAX,
                u64::from(limits.max_connections_per_address),
                u64::MAX,
            ),
            accounts,
        }
    }

    /// Admits a session from `source`, or answers why not: 503 at the
    /// relay's session limit, 429 over the source's limits.
    pub(crate) fn admit(
        &self,
        source: Option<SourceKey>,
        metrics: &Metrics,
    ) -> Result<Admission, Refused> {
        let permit = match source {
            None => None,
            Some(source) => {
                let Some(p) = self.sessions.acquire(source, &self.per_source) else {
                    Metrics::inc(&metrics.connections_refused_address);
                    return Err(Refused::AddressFull);
                };
                Some(p)
            }
        };
        let Ok(relay) = self.connections.clone().try_acquire_owned() else {
            Metrics::inc(&metrics.connections_refused);
            return Err(Refused::RelayFull);
        };
        Ok(Admission {
            _permit: relay,
            _source: permit,
            source: source.unwrap_or(SourceKey::LOCAL),
        })
    }

    /// Whether `source` may make the relay keep one more account it did not
    /// know (takes one from the source's hourly allowance if so).
    pub(crate) fn new_account(&self, source: &SourceKey) -> bool {
        self.accounts
            .as_ref()
            .is_none_or(|r| r.check_key(source).is_ok())
    }

    /// Forgets rate state of sources that are back at full burst (keeps
    /// the limiters' memory to the sources active lately).
    pub(crate) fn sweep(&self) {
        if let Some(r) = &self.accounts {
            r.retain_recent();
            r.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_per_source_and_gives_back_on_drop() {
        let t = Arc::new(Tally::default());
        let b = Budget::new(u64::MAX, 2, u64::MAX);
        let (x, y) = (
            SourceKey::from_bytes([1; 16]),
            SourceKey::from_bytes([2; 16]),
        );
        let p1 = t.acquire(x, &b).unwrap();
        let _p2 = t.acquire(x, &b).unwrap();
        assert!(t.acquire(x, &b).is_none());
        let _q = t.acquire(y, &b).unwrap();
        drop(p1);
        assert_eq!(t.held(&x), 1);
        assert!(t.acquire(x, &b).is_some());
        assert_eq!(t.held(&SourceKey::LOCAL), 0);
    }
}
