//! Who may open a connection: the relay's connection limit, and per IP
//! address a limit on open connections and a rate of new ones (a keyed
//! GCRA limiter from `governor`, its memory trimmed by the sweeper).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use devicelink::relay::SourceKey;

use super::metrics::Metrics;
use super::Limits;

/// The client's IP address, when the router is served with connect info
/// ([`super::Relay::serve`] does; a router served without it skips the
/// per-address limits).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddress(pub(crate) Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerAddress(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The relay is shutting down (503).
    ShuttingDown,
    /// The relay's connection limit (503).
    RelayFull,
    /// The address's open-connection cap (429).
    AddressFull,
    /// The address's rate of new connections (429).
    AddressRate,
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
            Refused::AddressRate => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many new connections from this address\n",
            ),
        };
        (status, text).into_response()
    }
}

/// What a connection holds while it is open.
#[derive(Debug)]
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
    _address: Option<AddressPermit>,
    source: SourceKey,
}

impl Admission {
    /// The budgets' key of the connection's address ([`SourceKey::LOCAL`]
    /// when the router was served without one).
    pub(crate) fn source(&self) -> SourceKey {
        self.source
    }
}

/// One open connection of an address; counted down on drop.
#[derive(Debug)]
struct AddressPermit {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The relay-wide and per-address limits.
pub(crate) struct Gate {
    connections: Arc<Semaphore>,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
    max_per_address: u32,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    ipv6_prefix: u8,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("max_per_address", &self.max_per_address)
            .finish_non_exhaustive()
    }
}

impl Gate {
    pub(crate) fn new(limits: &Limits, connections: Arc<Semaphore>) -> Self {
        let rate = NonZeroU32::new(limits.connect_rate_per_address).map(|per_second| {
            let burst = NonZeroU32::new(limits.connect_burst_per_address).unwrap_or(per_second);
            RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
        });
        Gate {
            connections,
            open: Arc::default(),
            max_per_address: limits.max_connections_per_address,
            rate,
            ipv6_prefix: limits.ipv6_prefix,
        }
    }

    /// Admits a connection from `ip`, or answers why not: 503 at the
    /// relay's connection limit, 429 over the address's limits.
    pub(crate) fn admit(
        &self,
        ip: Option<IpAddr>,
        metrics: &Metrics,
    ) -> Result<Admission, Refused> {
        let address = match ip {
            None => None,
            Some(ip) => {
                if self
                    .rate
                    .as_ref()
                    .is_some_and(|r| r.check_key(&ip).is_err())
                {
                    Metrics::inc(&metrics.connections_refused_address);
                    return Err(Refused::AddressRate);
                }
                let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                let n = open.entry(ip).or_insert(0);
                if *n >= self.max_per_address {
                    Metrics::inc(&metrics.connections_refused_address);
                    return Err(Refused::AddressFull);
                }
                *n += 1;
                Some(AddressPermit {
                    ip,
                    open: self.open.clone(),
                })
            }
        };
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            Metrics::inc(&metrics.connections_refused);
            return Err(Refused::RelayFull);
        };
        Ok(Admission {
            _permit: permit,
            _address: address,
            source: ip.map_or(SourceKey::LOCAL, |ip| {
                super::address::source_key(ip, self.ipv6_prefix)
            }),
        })
    }

    /// Forgets rate state of addresses that are back at full burst (keeps
    /// the limiter's memory to the addresses active lately).
    pub(crate) fn sweep(&self) {
        if let Some(r) = &self.rate {
            r.retain_recent();
            r.shrink_to_fit();
        }
    }
}
