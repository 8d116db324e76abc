//! The network transport: an axum router serving the relay's WebSocket
//! endpoints around the sans-IO core.
//!
//! The shell parses [`Frame`](crate::Frame)s, calls the core ([`Ledger`] for tokens and
//! routing, [`AccountDirectory`] for the accounts' signed facts) with `now`
//! from its [`Clock`], and carries out what the core returns: forward a
//! message, fan a list or heartbeat out to the account's subscribed
//! companions, push a logout, or answer with an [`Frame::Error`](crate::Frame::Error) whose code
//! is derived from the core's [`ErrorKind`](devicelink::ErrorKind)
//! ([`codes`]). No rule is decided here.
//!
//! The same connection task serves the HTTP long-poll fallback
//! (`/v1/poll/…`), whose wire is a pair of bounded queues fed by HTTP
//! requests instead of a socket.
//!
//! Like tokio's mini-redis: one task per connection owning its socket, a
//! bounded outbound queue per connection (a client that does not read is
//! closed, not buffered for), a semaphore for the connection limit (which
//! also tells when every connection task has ended), a shutdown signal every
//! task watches, and a drain with a deadline on exit. Store calls run in
//! `spawn_blocking`.
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

mod address;
mod admission;
mod clock;
#[cfg(feature = "postgres")]
pub mod cluster;
mod code;
mod connection;
mod hub;
mod metrics;
mod page;
mod poll;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use devicelink::relay::{Ledger, LedgerConfig};
use devicelink::Policy;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::codes;
pub use address::{source_key, DEFAULT_IPV6_PREFIX};
pub use clock::{Clock, ManualClock, SystemClock};
#[cfg(feature = "postgres")]
pub use cluster::{Cluster, ClusterOptions};
pub use metrics::Metrics;

use crate::store::{AccountDirectory, Store, StoreError};
use crate::MAX_FRAME_LEN;
use connection::Role;
use hub::Hub;

/// The transport's limits. Every field has a safe default; the binary sets
/// them from flags (`--help`).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Most WebSocket connections open at once; more get HTTP 503.
    pub max_connections: usize,
    /// Largest WebSocket message accepted (at most [`MAX_FRAME_LEN`], the
    /// largest valid frame).
    pub max_frame_len: usize,
    /// A connection that sends nothing (not even a pong to the relay's
    /// pings) for this long is closed.
    pub idle_timeout: Duration,
    /// Frames per second a connection may send, on average.
    pub rate_per_second: u32,
    /// Frames a connection may send in a burst.
    pub rate_burst: u32,
    /// Frames queued for a connection before it is closed as a slow reader.
    pub outbound_queue: usize,
    /// Longest wait for one write to a socket before the connection is
    /// closed as a slow reader.
    pub write_timeout: Duration,
    /// How often the ledger and the directory are swept.
    pub sweep_interval: Duration,
    /// Most ledger entries removed per sweep.
    pub sweep_limit: usize,
    /// How long shutdown waits for connection tasks to end.
    pub shutdown_grace: Duration,
    /// Longest a long-poll `GET` waits for frames before `204`.
    pub poll_wait: Duration,
    /// How long frames for an identified client that lost its connection
    /// are kept for it (0: not at all).
    pub mailbox_ttl: Duration,
    /// Most frames kept for one such client.
    pub mailbox_frames: usize,
    /// Most bytes kept in all mailboxes together.
    pub mailbox_bytes: usize,
    /// Most connections (WebSocket and long-poll) open at once from one IP
    /// address; more get HTTP 429.
    pub max_connections_per_address: u32,
    /// New connections per second one IP address may open, on average
    /// (more get HTTP 429).
    pub connect_rate_per_address: u32,
    /// New connections one IP address may open in a burst.
    pub connect_burst_per_address: u32,
    /// Bytes of each WebSocket's read buffer (tungstenite's
    /// `read_buffer_size`): allocated per connection and zero-filled on its
    /// first read, so it is resident memory per open connection. A frame
    /// larger than it grows it as needed; it only caps how much one read
    /// call takes from the socket.
    pub websocket_read_buffer: usize,
    /// Most tokens (open, reserved, or redeemed until swept) one client
    /// may hold (more get `QuotaExceeded`).
    pub max_tokens_per_client: u64,
    /// Most tokens one network source (an address; an IPv6 prefix) may
    /// hold, whatever number of client ids it uses.
    pub max_tokens_per_address: u64,
    /// Most tokens the store may hold in all, tombstones included (its
    /// last quarter kept for sources holding few).
    pub max_tokens: u64,
    /// The prefix length an IPv6 address is counted by (its /64 by
    /// default: one subscriber's whole network).
    pub ipv6_prefix: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_frame_len: MAX_FRAME_LEN,
            idle_timeout: Duration::from_secs(60),
            rate_per_second: 20,
            rate_burst: 40,
            outbound_queue: 64,
            write_timeout: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(1),
            sweep_limit: 4096,
            shutdown_grace: Duration::from_secs(5),
            poll_wait: Duration::from_secs(25),
            mailbox_ttl: Duration::from_secs(30),
            mailbox_frames: 16,
            mailbox_bytes: 64 << 20,
            max_connections_per_address: 256,
            connect_rate_per_address: 20,
            connect_burst_per_address: 100,
            websocket_read_buffer: DEFAULT_WEBSOCKET_READ_BUFFER,
            max_tokens_per_client: devicelink::relay::DEFAULT_MAX_TOKENS_PER_CLIENT,
            max_tokens_per_address: devicelink::relay::DEFAULT_MAX_TOKENS_PER_SOURCE,
            max_tokens: devicelink::relay::DEFAULT_MAX_TOKENS,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
}

/// The default [`Limits::websocket_read_buffer`]: 512 bytes, where
/// tungstenite's own default (128 KiB) makes every open connection cost
/// 128 KiB of resident memory. Almost every frame a client sends fits in
/// one read (Register 25 bytes, Hello 99, Request at most 144, a Grant or
/// list of a few devices a few hundred); a larger one takes a read per 512
/// bytes (the largest, a 14,830-byte Grant, 29). Measured over 10,000 open
/// offers: 7,373 bytes each with 4 KiB, 3,362 with 512, 3,307 with 256;
/// replayed pairings ran no slower with 512 than with 4 KiB (less of the
/// buffer is zero-filled on each read).
pub const DEFAULT_WEBSOCKET_READ_BUFFER: usize = 512;

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

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Whether every connection task ended within the grace period.
    pub all_closed: bool,
    /// Connections still open when [`Relay::serve`] returned.
    pub still_open: u64,
}

/// The relay: shared state (ledger, directory, connections, subscriptions)
/// and the router that serves it.
pub struct Relay<S: Store> {
    hub: Arc<Hub<S>>,
    code: Arc<code::CodeHub>,
    shutdown: watch::Sender<bool>,
}

impl<S: Store> std::fmt::Debug for Relay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("limits", &self.hub.limits)
            .finish_non_exhaustive()
    }
}

/// The ledger's settings: the policy's windows, the limits' token quotas.
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
        let directory = AccountDirectory::new(store.clone(), policy);
        let ledger = Ledger::new(store, ledger_config(policy, &limits));
        let (shutdown, watching) = watch::channel(false);
        let mut limits = limits;
        limits.max_frame_len = limits.max_frame_len.min(MAX_FRAME_LEN);
        let hub = Hub::new(ledger, directory, clock.clone(), limits, watching);
        Ok(Self::assemble(hub, policy, clock, shutdown))
    }

    /// The relay around `hub`, with the typed-code rendezvous beside it.
    /// The rendezvous stays within one node (both ends of a code link must
    /// reach the same node); it shares the hub's admission (the connection
    /// limit and the per-address limits) and shutdown.
    fn assemble(
        hub: Hub<S>,
        policy: &Policy,
        clock: Arc<dyn Clock>,
        shutdown: watch::Sender<bool>,
    ) -> Self {
        let hub = Arc::new(hub);
        let code = Arc::new(code::CodeHub::new(
            policy,
            clock,
            hub.limits.clone(),
            hub.gate.clone(),
            hub.metrics.clone(),
            hub.shutdown.clone(),
        ));
        Relay {
            hub,
            code,
            shutdown,
        }
    }

    /// The relay's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.hub.metrics.clone()
    }

    /// The router: the browser companion page at `GET /` (embedded),
    /// `GET /healthz`, `GET /metrics`, the WebSocket
    /// endpoints `GET /v1/companion` and `GET /v1/primary`, and the HTTP
    /// long-poll fallback under `/v1/poll/` (`docs/RELAY.md`). To serve it
    /// yourself, keep this `Relay` alive: dropping it is the shutdown
    /// signal for every connection (and no sweeper runs outside
    /// [`Relay::serve`]).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics::<S>))
            .route("/v1/companion", get(companion::<S>))
            .route("/v1/primary", get(primary::<S>))
            .route("/v1/poll/companion", post(poll::open_companion::<S>))
            .route("/v1/poll/primary", post(poll::open_primary::<S>))
            .route(
                "/v1/poll/session/{id}",
                get(poll::poll::<S>)
                    .post(poll::send::<S>)
                    .delete(poll::close::<S>)
                    .layer(DefaultBodyLimit::max(self.hub.limits.max_frame_len)),
            )
            .merge(page::routes())
            .with_state(self.hub.clone())
            .merge(
                Router::new()
                    .route("/v1/code", get(code::upgrade))
                    .with_state(self.code.clone()),
            )
    }

    /// Failed code attempts the relay counted for `key` (linking by typed
    /// code, `/v1/code`).
    pub fn code_failures(&self, key: &devicelink::relay::AttemptKey) -> u32 {
        let now = self.hub.clock.now();
        self.code
            .with_rendezvous(|r| r.attempts().failures(key, now))
    }

    /// Serves on `listener` until `shutdown` completes; then stops
    /// accepting, tells every connection task (each closes its socket with
    /// 1001), waits for them up to [`Limits::shutdown_grace`], stops the
    /// sweeper and drops its hold on the store (the SQLite store flushes when
    /// its last handle drops).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<Drained> {
        let router = self.router();
        let sweeper = tokio::spawn(hub::sweep_loop(self.hub.clone()));
        #[cfg(feature = "postgres")]
        let cluster = self
            .hub
            .cluster
            .clone()
            .map(|c| tokio::spawn(cluster::run(self.hub.clone(), c)));
        let signal = self.shutdown.clone();
        // Small frames in both directions: Nagle's algorithm with delayed
        // ACKs would add ~40 ms to each handshake step.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            signal.send_replace(true);
        })
        .await;
        // Stopped accepting (or failed): tell every task either way.
        self.shutdown.send_replace(true);
        let drained = self.hub.drain().await;
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
        served.map(|()| drained)
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
        let directory = AccountDirectory::new(store.clone(), policy);
        let ledger = Ledger::new(store, ledger_config(policy, &limits));
        let (shutdown, watching) = watch::channel(false);
        let mut limits = limits;
        limits.max_frame_len = limits.max_frame_len.min(MAX_FRAME_LEN);
        let hub =
            Hub::new(ledger, directory, clock.clone(), limits, watching).with_cluster(cluster);
        Ok(Self::assemble(hub, policy, clock, shutdown))
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics<S: Store + 'static>(State(hub): State<Arc<Hub<S>>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        hub.metrics.render(),
    )
        .into_response()
}

async fn companion<S: Store + 'static>(
    State(hub): State<Arc<Hub<S>>>,
    peer: admission::PeerAddress,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(hub, peer, ws, Role::Companion)
}

async fn primary<S: Store + 'static>(
    State(hub): State<Arc<Hub<S>>>,
    peer: admission::PeerAddress,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(hub, peer, ws, Role::Primary)
}

fn upgrade<S: Store + 'static>(
    hub: Arc<Hub<S>>,
    peer: admission::PeerAddress,
    ws: WebSocketUpgrade,
    role: Role,
) -> Response {
    let admission = match hub.admit(peer.0) {
        Ok(a) => a,
        Err(refused) => return refused.into_response(),
    };
    let max = hub.limits.max_frame_len;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(hub.limits.websocket_read_buffer.max(64))
        .on_upgrade(move |socket| connection::run(hub, socket, role, admission))
}
