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
use devicelink::relay::{Budget, BudgetScope, Held, SourceKey};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::limits::Limits;
use super::metrics::Metrics;

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

/// Open things per source and in all, counted up by a permit and down on
/// its drop.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    by_source: HashMap<SourceKey, u64>,
    total: u64,
}

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more for `source` if `budget` allows: its `per_source` cap, and
    /// its total, whose reserve only sources holding little may use (a few
    /// sources at their cap never fill the relay for everyone).
    pub(crate) fn acquire(
        self: &Arc<Self>,
        source: SourceKey,
        budget: &Budget,
    ) -> Result<SourcePermit, BudgetScope> {
        let mut c = self.lock();
        let total = c.total;
        let n = c.by_source.get(&source).copied().unwrap_or(0);
        let held = Held {
            client: 0,
            source: n,
            total,
        };
        budget.check(held).map_err(|e| e.scope)?;
        c.by_source.insert(source, n + 1);
        c.total = total + 1;
        Ok(SourcePermit {
            source,
            tally: self.clone(),
        })
    }

    /// Open things of `source` now.
    #[cfg(test)]
    pub(crate) fn held(&self, source: &SourceKey) -> u64 {
        self.lock().by_source.get(source).copied().unwrap_or(0)
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
        let mut c = self.tally.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_source.remove(&self.source);
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
                u64::try_from(limits.max_connections).unwrap_or(u64::MAX),
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
            Some(source) => match self.sessions.acquire(source, &self.per_source) {
                Ok(p) => Some(p),
                Err(BudgetScope::Total) => {
                    Metrics::inc(&metrics.connections_refused);
                    return Err(Refused::RelayFull);
                }
                Err(_) => {
                    Metrics::inc(&metrics.connections_refused_address);
                    return Err(Refused::AddressFull);
                }
            },
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
        assert_eq!(t.acquire(x, &b).err(), Some(BudgetScope::Source));
        let _q = t.acquire(y, &b).unwrap();
        drop(p1);
        assert_eq!(t.held(&x), 1);
        assert!(t.acquire(x, &b).is_ok());
        assert_eq!(t.held(&SourceKey::LOCAL), 0);
    }

    #[test]
    fn sources_at_their_cap_leave_the_reserve_to_others() {
        // 16 in all, 8 a source; the last 4 for sources holding none.
        let t = Arc::new(Tally::default());
        let b = Budget::new(u64::MAX, 8, 16);
        let s = |n: u8| SourceKey::from_bytes([n; 16]);
        let mut held: Vec<_> = (0..8).map(|_| t.acquire(s(1), &b).unwrap()).collect();
        held.extend((0..4).map(|_| t.acquire(s(2), &b).unwrap()));
        // At the soft total: the busy sources are refused, fresh ones not.
        assert_eq!(t.acquire(s(2), &b).err(), Some(BudgetScope::Reserve));
        held.extend((3..7).map(|n| t.acquire(s(n), &b).unwrap()));
        assert_eq!(t.acquire(s(9), &b).err(), Some(BudgetScope::Total));
        held.truncate(15);
        assert!(t.acquire(s(9), &b).is_ok());
    }
}
