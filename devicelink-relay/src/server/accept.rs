//! The accept loop, below HTTP: every connection is counted per source
//! before a byte of HTTP is parsed, a trusted proxy's PROXY header is read
//! within a time bound, TLS is handshaken within a time bound, and hyper
//! serves HTTP/1.1 with a timer (a header that does not arrive in time, or
//! a keep-alive connection idle for as long, is closed). Each request's
//! client address (the TCP peer's, or the one a trusted proxy vouches for)
//! is attached to it ([`ConnectionInfo`]) and its source's request rate is
//! checked before the router sees it: `GET /`, `/healthz` and long-poll
//! polls pass it like everything else.
//!
//! Where connections come from is a seam ([`Listener`]): a TCP listener in
//! production and in the tests, anything that yields byte streams and peer
//! addresses elsewhere (a simulated network).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use devicelink::relay::{Budget, SourceKey};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use super::address::{source_key, ConnectionInfo, TrustedProxies};
use super::admission::{SourcePermit, Tally};
use super::hub::stopped;
use super::limits::Limits;
use super::metrics::Metrics;
use super::proxy;
use super::tls::Tls;

/// Where the relay's connections come from: the seam a simulated network
/// plugs into. [`TcpListener`] is one.
pub trait Listener: Send + 'static {
    /// A connection's byte stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection and its peer's address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;

    /// The address it listens on.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Drops a connection refused before it is served, as cheaply as the
    /// transport allows. The default drops it; TCP resets it (no FIN
    /// exchange, no `TIME_WAIT`).
    fn reset(io: Self::Io) {
        drop(io);
    }

    /// The next connection whose peer `screen` admits (`Some`), with what
    /// `screen` said; the others are [`reset`](Listener::reset) at once.
    fn accept_screened<T: Send>(
        &mut self,
        screen: impl Fn(SocketAddr) -> Option<T> + Send,
    ) -> impl Future<Output = io::Result<(Self::Io, SocketAddr, T)>> + Send {
        async move {
            loop {
                let (io, peer) = self.accept().await?;
                match screen(peer) {
                    Some(t) => return Ok((io, peer, t)),
                    None => Self::reset(io),
                }
            }
        }
    }
}

/// Small frames in both directions: Nagle's algorithm with delayed ACKs
/// would add ~40 ms to each handshake step.
fn no_delay(tcp: &tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, SocketAddr)> {
        let (tcp, peer) = TcpListener::accept(self).await?;
        no_delay(&tcp);
        Ok((tcp, peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }

    async fn accept_screened<T: Send>(
        &mut self,
        screen: impl Fn(SocketAddr) -> Option<T> + Send,
    ) -> io::Result<(Self::Io, SocketAddr, T)> {
        loop {
            let (tcp, peer) = TcpListener::accept(self).await?;
            // Screened first: a refused connection costs no more syscalls
            // than its reset.
            match screen(peer) {
                Some(t) => {
                    no_delay(&tcp);
                    return Ok((tcp, peer, t));
                }
                None => Self::reset(tcp),
            }
        }
    }

    fn reset(io: Self::Io) {
        // A zero linger never blocks the drop (the deprecation is about
        // non-zero ones).
        #[allow(deprecated)]
        let _ = io.set_linger(Some(Duration::ZERO));
        drop(io);
    }
}

/// How the relay meets the network: whom to believe about client
/// addresses, TLS, and whether the browser companion page is served.
#[derive(Debug, Clone)]
pub struct Network {
    /// Peers that may vouch for another client address (PROXY protocol or
    /// `X-Forwarded-For`).
    pub trusted_proxies: TrustedProxies,
    /// TLS on every connection (`wss://`, `https://`), if set.
    pub tls: Option<Tls>,
    /// Whether `GET /` serves the browser companion page. The page holds a
    /// device key: the binary serves it only over TLS, on loopback, or
    /// with `--insecure-http`.
    pub serve_page: bool,
    /// Web origins besides the relay's own whose pages may open sessions
    /// (the page served from a separate static origin); a browser from any
    /// other origin is refused with 403.
    pub allowed_origins: super::AllowedOrigins,
}

impl Default for Network {
    /// No trusted proxy, no TLS, the page served, no other origin.
    fn default() -> Self {
        Network {
            trusted_proxies: TrustedProxies::none(),
            tls: None,
            serve_page: true,
            allowed_origins: super::AllowedOrigins::none(),
        }
    }
}

/// The accept loop's own state: connections per source, their rate, the
/// request rate, and the permits of all open connections.
pub(crate) struct Accept {
    limits: Limits,
    trusted: Arc<TrustedProxies>,
    tls: Option<Tls>,
    open: Arc<Semaphore>,
    per_source: Arc<Tally>,
    per_source_budget: Budget,
    connect_rate: Option<DefaultKeyedRateLimiter<SourceKey>>,
    request_rate: Option<DefaultKeyedRateLimiter<SourceKey>>,
    metrics: Arc<Metrics>,
}

fn keyed(per_second: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<SourceKey>> {
    NonZeroU32::new(per_second).map(|rate| {
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
    })
}

impl Accept {
    pub(crate) fn new(limits: &Limits, network: &Network, metrics: Arc<Metrics>) -> Self {
        Accept {
            limits: limits.clone(),
            trusted: Arc::new(network.trusted_proxies.clone()),
            tls: network.tls.clone(),
            open: Arc::new(Semaphore::new(limits.max_http_connections.max(1))),
            per_source: Arc::default(),
            per_source_budget: Budget::new(
                u64::MAX,
                u64::from(limits.max_http_connections_per_address),
                u64::try_from(limits.max_http_connections).unwrap_or(u64::MAX),
            ),
            connect_rate: keyed(
                limits.connect_rate_per_address,
                limits.connect_burst_per_address,
            ),
            request_rate: keyed(
                limits.request_rate_per_address,
                limits.request_burst_per_address,
            ),
            metrics,
        }
    }

    fn source(&self, ip: IpAddr) -> SourceKey {
        source_key(ip, self.limits.ipv6_prefix)
    }

    /// A new connection from `ip`: `None` over its source's connection
    /// rate; else admitted, or over its source's open-connection budget.
    fn screen(&self, ip: IpAddr) -> Option<Screened> {
        let source = self.source(ip);
        if self
            .connect_rate
            .as_ref()
            .is_some_and(|r| r.check_key(&source).is_err())
        {
            return None;
        }
        Some(
            match self.per_source.acquire(source, &self.per_source_budget) {
                Ok(permit) => Screened::Admitted(permit),
                Err(_) => Screened::OverBudget,
            },
        )
    }

    /// Forgets rate state of sources back at full burst.
    pub(crate) fn sweep(&self) {
        for r in [&self.connect_rate, &self.request_rate]
            .into_iter()
            .flatten()
        {
            r.retain_recent();
            r.shrink_to_fit();
        }
    }

    /// Waits up to `grace` for every connection task to end.
    pub(crate) async fn drain(&self, grace: Duration) -> bool {
        let all = u32::try_from(self.limits.max_http_connections.max(1)).unwrap_or(u32::MAX);
        matches!(
            tokio::time::timeout(grace, self.open.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }
}

/// Accepts connections from `listener` until `shutdown`, each served on its
/// own task; then tells them to finish (HTTP/1.1 graceful shutdown) and
/// returns. WebSocket sessions live on in their own tasks (the hub drains
/// them).
pub(crate) async fn serve<L: Listener>(
    mut listener: L,
    router: Router,
    accept: Arc<Accept>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A peer that is not a trusted proxy is its own source: over its
    // connection rate it is reset at accept, before a task, a registration
    // or a byte of answer costs anything (a flood of new connections is
    // what a relay refuses most often).
    let screen = |peer: SocketAddr| {
        if accept.trusted.contains(peer.ip()) {
            return Some(Screened::Later);
        }
        let screened = accept.screen(peer.ip());
        if screened.is_none() {
            Metrics::inc(&accept.metrics.connections_refused_address);
        }
        screened
    };
    loop {
        let (io, peer, screened) = tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept_screened(screen) => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was
                    // accepted: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        tokio::spawn(connection(
            io,
            peer.ip(),
            screened,
            router.clone(),
            accept.clone(),
            shutdown.clone(),
        ));
    }
}

/// What the accept loop decided about a connection's source.
enum Screened {
    /// A trusted proxy's connection: its source is known after its PROXY
    /// header (or per request).
    Later,
    /// Within its source's rate and open-connection budget: the permit it
    /// holds while open.
    Admitted(SourcePermit),
    /// Within its rate but over its source's open-connection budget:
    /// answered 429 and closed.
    OverBudget,
}

/// One connection, before and through HTTP.
async fn connection<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
    peer: IpAddr,
    screened: Screened,
    router: Router,
    accept: Arc<Accept>,
    shutdown: watch::Receiver<bool>,
) {
    let Ok(_open) = accept.open.clone().try_acquire_owned() else {
        Metrics::inc(&accept.metrics.http_refused);
        return;
    };
    let trusted = accept.trusted.contains(peer);
    let wait = accept.limits.header_read_timeout;
    let (proxied, io) = if trusted {
        match proxy::read_header(io, wait).await {
            Ok(read) => read,
            Err(e) => {
                Metrics::inc(&accept.metrics.proxy_headers_refused);
                tracing::debug!(%peer, error = %e, "PROXY header refused");
                return;
            }
        }
    } else {
        (None, proxy::Prefixed::new(io))
    };
    // Counted by the source it serves: the peer's (screened at accept), or
    // the one a PROXY header named. A trusted proxy passing X-Forwarded-For
    // carries many clients on one connection; those are counted per
    // request (and per session) instead.
    let screened = match (screened, proxied) {
        (Screened::Later, Some(source)) => accept.screen(source).unwrap_or(Screened::OverBudget),
        (other, _) => other,
    };
    let _source_permit = match screened {
        Screened::Later => None,
        Screened::Admitted(permit) => Some(permit),
        Screened::OverBudget => {
            Metrics::inc(&accept.metrics.connections_refused_address);
            if accept.tls.is_none() {
                refuse(io).await;
            }
            return;
        }
    };
    let info = ConnectionInfo {
        peer,
        proxied,
        trusted: accept.trusted.clone(),
    };
    match accept.tls.clone() {
        None => http(io, info, router, accept, shutdown).await,
        Some(tls) => {
            let handshake = tls.acceptor().accept(io);
            match tokio::time::timeout(wait, handshake).await {
                Ok(Ok(stream)) => http(stream, info, router, accept, shutdown).await,
                Ok(Err(e)) => {
                    Metrics::inc(&accept.metrics.tls_failed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    Metrics::inc(&accept.metrics.tls_failed);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
}

/// Answers a plain-HTTP connection refused at accept with a fixed 429
/// (one bounded write; the request is not read), then closes it.
async fn refuse<I: AsyncWrite + Unpin>(mut io: I) {
    use tokio::io::AsyncWriteExt;
    const ANSWER: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nconnection: close\r\n\
        content-type: text/plain\r\ncontent-length: 39\r\n\r\n\
        too many connections from this address\n";
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let _ = io.write_all(ANSWER).await;
        let _ = io.shutdown().await;
    })
    .await;
}

/// The answer over the request rate. A connection that carries one client
/// is closed after it (`close`): its next requests would be refused too,
/// and as new connections they meet the connection rate, refused at accept
/// at a fraction of the cost. A trusted proxy's connection, carrying many
/// clients, stays open.
fn too_many_requests(close: bool) -> Response<Body> {
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        "too many requests from this address\n",
    )
        .into_response();
    if close {
        r.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    r
}

/// HTTP/1.1 on one connection, with upgrades (WebSockets), until it ends or
/// the relay shuts down.
async fn http<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
    info: ConnectionInfo,
    router: Router,
    accept: Arc<Accept>,
    mut shutdown: watch::Receiver<bool>,
) {
    let request_timeout = accept.limits.poll_wait + accept.limits.write_timeout;
    let limits = accept.clone();
    let service = tower::service_fn(move |mut req: Request<Incoming>| {
        let (router, info, accept) = (router.clone(), info.clone(), limits.clone());
        async move {
            let source = accept.source(info.client(req.headers()));
            if accept
                .request_rate
                .as_ref()
                .is_some_and(|r| r.check_key(&source).is_err())
            {
                Metrics::inc(&accept.metrics.requests_refused_address);
                let shared = info.proxied.is_none() && info.trusted.contains(info.peer);
                return Ok::<_, std::convert::Infallible>(too_many_requests(!shared));
            }
            req.extensions_mut().insert(info);
            let answered =
                tokio::time::timeout(request_timeout, router.oneshot(req.map(Body::new)));
            Ok(match answered.await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
            })
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(accept.limits.header_read_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended");
            }
        }
        () = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(accept.limits.shutdown_grace, conn).await;
        }
    }
}
