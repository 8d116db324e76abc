//! The network transport around the sans-IO core, in layers, each using
//! only the ones below it:
//!
//! - **accept** ([`Listener`], `accept.rs`, with `proxy.rs` and `tls.rs`):
//!   every TCP connection counted per source before HTTP, a trusted
//!   proxy's PROXY header, TLS, hyper with a timer, each request's client
//!   address and its source's request rate;
//! - **transports**: the WebSocket endpoints (`websocket.rs`), the HTTP
//!   long-poll sessions (`poll.rs`), the browser companion page (`page.rs`);
//! - **the connection** (`connection.rs`): one machinery for every
//!   endpoint, `/v1/code` included: token bucket, read buffer, frame size,
//!   pings, idle timeout, `Identify` first, one answer per frame;
//! - **the hub** (`hub.rs`, with `code.rs` for the code frames): the core's
//!   ledger, directory and code rendezvous, who is connected, who
//!   subscribed, the mailboxes, and the `Bus` to other nodes that a
//!   cluster (`cluster.rs`) plugs in;
//! - **the store** (`crate::store`).
//!
//! The shell parses [`Frame`](crate::Frame)s, calls the core ([`Ledger`]
//! for tokens and routing, [`AccountDirectory`] for the accounts' signed
//! facts, the code rendezvous) with `now` from its [`Clock`], and carries
//! out what the core returns: forward a message, fan a list or heartbeat
//! out to the account's subscribed companions, push a logout, or answer
//! with an [`Frame::Error`](crate::Frame::Error) whose code is derived
//! from the core's [`ErrorKind`](devicelink::ErrorKind) ([`codes`]). No
//! rule is decided here, and every budget is the core's
//! [`Budget`](devicelink::relay::Budget), counted where the resource is
//! made, per client and per source.
//!
//! Like tokio's mini-redis: one task per connection owning its socket, a
//! bounded outbound queue per connection (a client that does not read is
//! closed, not buffered for), a semaphore for the connection limit (which
//! also tells when every connection task has ended), a shutdown signal every
//! task watches, and a drain with a deadline on exit.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use devicelink::Policy;
//! use devicelink_relay::server::{Limits, Relay, SystemClock};
//! use devicelink_relay::MemoryStore;
//!
//! let relay = Relay::new(MemoryStore::new(), &Policy::default(), Limits::default(), Arc::new(SystemClock))
//!     .map_err(std::io::Error::other)?;
//! let listener = devicelink_relay::server::listen("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
//! relay.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod accept;
mod address;
mod admission;
mod clock;
#[cfg(feature = "postgres")]
pub mod cluster;
mod code;
mod connection;
mod hub;
mod limits;
mod metrics;
mod origin;
mod page;
mod poll;
mod proxy;
mod tls;
mod websocket;

use std::future::Future;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use devicelink::relay::{CodeRelayConfig, CodeRendezvous, Ledger, LedgerConfig};
use devicelink::Policy;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::codes;
pub use accept::{Listener, Network};
pub use address::{source_key, TrustedProxies, DEFAULT_IPV6_PREFIX};
pub use clock::{Clock, ManualClock, SystemClock};
#[cfg(feature = "postgres")]
pub use cluster::{Cluster, ClusterOptions};
pub use hub::Drained;
pub use limits::{Limits, DEFAULT_WEBSOCKET_READ_BUFFER};
pub use metrics::Metrics;
pub use origin::{AllowedOrigins, OriginError};
pub use tls::{Tls, TlsError};

use crate::store::{AccountDirectory, Store, StoreError};
use crate::MAX_FRAME_LEN;
use hub::Hub;

/// The accept queue [`listen`] asks for (the kernel caps it at
/// `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` for [`Relay::serve`], with an accept queue of
/// [`LISTEN_BACKLOG`] connections. `TcpListener::bind` asks for 128 (mio's
/// and the standard library's value): a burst of new connections beyond it
/// (a reconnect storm after a restart) loses SYNs, which the clients send
/// again only after a second (then three, then seven).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The relay: shared state (ledger, directory, code rendezvous, connections,
/// subscriptions) and the transports that serve it.
pub struct Relay<S: Store> {
    hub: Arc<Hub<S>>,
    shutdown: watch::Sender<bool>,
    /// The other nodes on the same database, if any.
    #[cfg(feature = "postgres")]
    cluster: Option<Arc<Cluster>>,
}

impl<S: Store> std::fmt::Debug for Relay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("limits", &self.hub.limits)
            .finish_non_exhaustive()
    }
}

/// The ledger's settings: the policy's windows, the limits' token budget.
fn ledger_config(policy: &Policy, limits: &Limits) -> LedgerConfig {
    LedgerConfig {
        tokens: devicelink::relay::Budget::new(
            limits.max_tokens_per_client.max(1),
            limits.max_tokens_per_address.max(1),
            limits.max_tokens.max(1),
        ),
        ..LedgerConfig::from_policy(policy)
    }
}

/// The code rendezvous's settings: the policy's lifetimes, the limits'
/// sessions per address.
fn code_config(policy: &Policy, limits: &Limits) -> CodeRelayConfig {
    let mut config = CodeRelayConfig::from_policy(policy);
    config.sessions = devicelink::relay::Budget::new(
        config.sessions.per_client,
        limits.max_code_sessions_per_address.max(1),
        config.sessions.total,
    );
    config
}

impl<S: Store + 'static> Relay<S> {
    /// A relay over `store` (the directory decides from the accounts' facts
    /// the store holds), with the ledger's and directory's limits from
    /// `policy`.
    pub fn new(
        store: S,
        policy: &Policy,
        limits: Limits,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        Ok(Self::assemble(store, policy, limits, clock, |hub| hub))
    }

    fn assemble(
        store: S,
        policy: &Policy,
        limits: Limits,
        clock: Arc<dyn Clock>,
        finish: impl FnOnce(Hub<S>) -> Hub<S>,
    ) -> Self {
        let directory = AccountDirectory::new(store.clone(), policy);
        let ledger = Ledger::new(store, ledger_config(policy, &limits));
        let code = CodeRendezvous::new(code_config(policy, &limits));
        let (shutdown, watching) = watch::channel(false);
        let mut limits = limits;
        limits.max_frame_len = limits.max_frame_len.min(MAX_FRAME_LEN);
        let hub = finish(Hub::new(ledger, directory, code, clock, limits, watching));
        Relay {
            hub: Arc::new(hub),
            shutdown,
            #[cfg(feature = "postgres")]
            cluster: None,
        }
    }

    /// The relay's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.hub.metrics.clone()
    }

    /// The relay's routes: the WebSocket endpoints `GET /v1/companion`,
    /// `/v1/primary` and `/v1/code`, the HTTP long-poll fallback under
    /// `/v1/poll/`, `GET /healthz`, and (with `page`) the browser companion
    /// page at `GET /` (`docs/RELAY.md`); the long-poll sessions they keep.
    /// `/metrics` is not among them: it is [`Relay::metrics_router`], for a
    /// listener of its own.
    ///
    /// The WebSocket and long-poll routes admit a browser only from
    /// `origins` or the relay's own origin ([`AllowedOrigins`]); the
    /// long-poll routes answer CORS for `origins`.
    fn routes(
        &self,
        page: bool,
        origins: &AllowedOrigins,
        tls: bool,
    ) -> (Router, Arc<poll::PollSessions>) {
        let (polls, sessions) = poll::routes(self.hub.clone());
        let polls = match origins.cors() {
            Some(cors) => polls.layer(cors),
            None => polls,
        };
        let allowed = Arc::new(origins.clone());
        let clients =
            websocket::routes(self.hub.clone())
                .merge(polls)
                .layer(axum::middleware::from_fn(move |req, next| {
                    origin::guard(allowed.clone(), tls, req, next)
                }));
        let mut router = Router::new().route("/healthz", get(healthz)).merge(clients);
        if page {
            router = router.merge(page::routes());
        }
        (router, sessions)
    }

    /// The router, for a host that serves it itself (without the accept
    /// loop: no per-address counting before HTTP, no PROXY header, no TLS;
    /// served with `into_make_service_with_connect_info::<SocketAddr>()`
    /// the per-session limits still key on the peer). Keep this `Relay`
    /// alive: dropping it is the shutdown signal for every connection, and
    /// no sweeper runs outside [`Relay::serve`].
    pub fn router(&self) -> Router {
        self.routes(true, &AllowedOrigins::none(), false).0
    }

    /// `GET /metrics` (Prometheus text), for a listener of its own
    /// (`--metrics-listen`): it shows pairing activity, so it is not
    /// served on the public address.
    pub fn metrics_router(&self) -> Router {
        let metrics = self.hub.metrics.clone();
        Router::new().route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    ([("content-type", "text/plain; version=0.0.4")], m.render()).into_response()
                }
            }),
        )
    }

    /// Failed code attempts the relay counted for `key` (linking by typed
    /// code, `/v1/code`).
    pub fn code_failures(&self, key: &devicelink::relay::AttemptKey) -> u32 {
        self.inspector().code_failures(key)
    }

    /// A read-only view of the relay's state that outlives handing the
    /// relay to [`Relay::serve`] (tests, tools).
    pub fn inspector(&self) -> Inspector {
        Inspector(self.hub.clone())
    }

    /// Serves on `listener` with the default [`Network`] (no proxy trusted,
    /// no TLS, the page served) until `shutdown` completes
    /// ([`Relay::serve_with`]).
    pub async fn serve<L: Listener>(
        self,
        listener: L,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<Drained> {
        self.serve_with(listener, Network::default(), shutdown)
            .await
    }

    /// Serves on `listener` as `network` says until `shutdown` completes;
    /// then stops accepting, tells every connection task (each closes its
    /// socket with 1001, or ends its HTTP exchange), waits for them up to
    /// [`Limits::shutdown_grace`], stops the sweeper and drops its hold on
    /// the store (the SQLite store flushes when its last handle drops).
    pub async fn serve_with<L: Listener>(
        self,
        listener: L,
        network: Network,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<Drained> {
        let (router, sessions) = self.routes(
            network.serve_page,
            &network.allowed_origins,
            network.tls.is_some(),
        );
        let accept = Arc::new(accept::Accept::new(
            &self.hub.limits,
            &network,
            self.hub.metrics.clone(),
        ));
        let sweeper = tokio::spawn(sweep_loop(self.hub.clone(), sessions, accept.clone()));
        #[cfg(feature = "postgres")]
        let cluster = self
            .cluster
            .clone()
            .map(|c| tokio::spawn(cluster::run(self.hub.clone(), c)));
        let signal = self.shutdown.clone();
        tokio::spawn(async move {
            shutdown.await;
            signal.send_replace(true);
        });
        accept::serve(listener, router, accept.clone(), self.hub.shutdown.clone()).await;
        // Stopped accepting: tell every task.
        self.shutdown.send_replace(true);
        let drained = self.hub.drain().await;
        if !accept.drain(self.hub.limits.shutdown_grace).await {
            tracing::warn!("HTTP connections still open at the end of the grace period");
        }
        if sweeper.await.is_err() {
            tracing::error!("the sweeper task failed");
        }
        #[cfg(feature = "postgres")]
        if let Some(c) = cluster {
            if c.await.is_err() {
                tracing::error!("the cluster task failed");
            }
        }
        tracing::info!(?drained, "relay stopped");
        Ok(drained)
    }
}

/// What an [`Inspector`] reads.
trait Inspect: Send + Sync {
    fn code_failures(&self, key: &devicelink::relay::AttemptKey) -> u32;
    fn code_sessions(&self) -> usize;
}

impl<S: Store + 'static> Inspect for Hub<S> {
    fn code_failures(&self, key: &devicelink::relay::AttemptKey) -> u32 {
        let now = self.clock.now();
        self.with_code(|r| r.attempts().failures(key, now))
    }

    fn code_sessions(&self) -> usize {
        self.with_code(|r| r.len())
    }
}

/// A read-only view of a relay's state ([`Relay::inspector`]).
#[derive(Clone)]
pub struct Inspector(Arc<dyn Inspect>);

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inspector(…)")
    }
}

impl Inspector {
    /// Failed code attempts counted for `key` now.
    pub fn code_failures(&self, key: &devicelink::relay::AttemptKey) -> u32 {
        self.0.code_failures(key)
    }

    /// Code sessions held now.
    pub fn code_sessions(&self) -> usize {
        self.0.code_sessions()
    }
}

#[cfg(feature = "postgres")]
impl Relay<crate::store::PgStore> {
    /// A node of a cluster of relays on one PostgreSQL database: like
    /// [`Relay::new`] (whose directory already decides every fact from the
    /// stored facts, so nodes agree), with delivery across nodes through
    /// `cluster` ([`cluster`]).
    pub fn clustered(
        store: crate::store::PgStore,
        policy: &Policy,
        limits: Limits,
        clock: Arc<dyn Clock>,
        cluster: Arc<Cluster>,
    ) -> Result<Self, StoreError> {
        let bus: Arc<dyn hub::Bus> = cluster.clone();
        let mut relay = Self::assemble(store, policy, limits, clock, |hub| hub.with_bus(bus));
        relay.cluster = Some(cluster);
        Ok(relay)
    }
}

async fn healthz() -> Response {
    "ok\n".into_response()
}

/// Every `sweep_interval`: the hub's sweep (tokens, code sessions,
/// accounts, mailboxes), long-poll sessions that ended long ago, and the
/// accept loop's idle rate state.
async fn sweep_loop<S: Store + 'static>(
    hub: Arc<Hub<S>>,
    sessions: Arc<poll::PollSessions>,
    accept: Arc<accept::Accept>,
) {
    let mut shutdown = hub.shutdown.clone();
    let mut tick = tokio::time::interval(hub.limits.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = hub::stopped(&mut shutdown) => break,
            _ = tick.tick() => {}
        }
        sessions.sweep(hub.limits.poll_wait.saturating_mul(2));
        accept.sweep();
        hub.sweep().await;
    }
}
