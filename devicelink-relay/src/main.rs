//! The `devicelink-relay` binary: the relay on a SQLite file (or in
//! memory, or as one node of many on a PostgreSQL database), serving the
//! browser companion page at `/`, `/v1/companion`, `/v1/primary`,
//! `/v1/code`, the long-poll fallback and `/healthz` until Ctrl-C or
//! SIGTERM; `/metrics` on a listener of its own (`--metrics-listen`); TLS
//! with `--tls-cert`/`--tls-key` (the files read again on SIGHUP).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use devicelink::Policy;
use devicelink::Timestamp;
use devicelink_relay::server::{
    AllowedOrigins, Clock, Cluster, ClusterOptions, Limits, ManualClock, Network, Relay,
    SystemClock, Tls, TrustedProxies,
};
use devicelink_relay::{MemoryStore, PgStore, SqliteStore, Store, StoreError, MAX_FRAME_LEN};

/// The devicelink relay: routes pairing messages between companions and
/// primaries, redeems each QR token exactly once, and pushes the accounts'
/// signed device lists, heartbeats and logouts to linked companions.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// PEM certificate chain: serve TLS (`wss://`, `https://`). Read again
    /// on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve the browser companion page over plain HTTP on a non-loopback
    /// address (the page holds a device key: without TLS it is served on
    /// loopback only, or behind a TLS proxy with this flag).
    #[arg(long)]
    insecure_http: bool,
    /// A web origin (`https://static.example.org`) whose pages may open
    /// sessions besides the relay's own, when the browser companion page is
    /// served from a separate static origin; repeat for several. Browsers
    /// from any other origin are refused with 403.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// A proxy or load balancer whose connections may say whose they are
    /// (PROXY protocol v1/v2, or X-Forwarded-For): a network (`10.0.0.0/8`)
    /// or an address. Repeatable. Nobody else is believed.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<String>,
    /// Serve `GET /metrics` (Prometheus text) on this address (keep it
    /// private: it shows pairing activity). Off unless given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// SQLite database file (created if missing); `:memory:` for the
    /// in-memory store; `postgres://user:password@host:port/dbname` for a
    /// PostgreSQL database shared by many relay nodes.
    #[arg(long, default_value = "devicelink.db")]
    db: PathBuf,
    /// With PostgreSQL: connections this node keeps to the database.
    #[arg(long, default_value_t = devicelink_relay::store::PgOptions::default().pool_size)]
    pg_pool: usize,
    /// With PostgreSQL: milliseconds a node's lease lasts without renewal
    /// (how long a dead node's clients stay addressed).
    #[arg(long, default_value_t = 5_000)]
    node_lease_ms: u64,
    /// Milliseconds between sweeps of expired tokens and accounts.
    #[arg(long, default_value_t = 1_000)]
    sweep_interval_ms: u64,
    /// TESTS ONLY: read the relay's clock (Unix milliseconds) from this
    /// file, re-read every 10 ms, instead of the system clock, so a test
    /// can move several relay processes through virtual days.
    #[arg(long, value_name = "FILE")]
    test_clock_file: Option<PathBuf>,
    /// Use the in-memory store (nothing survives a restart).
    #[arg(long)]
    memory: bool,
    /// Most sessions (WebSockets and long-poll sessions) open at once.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Most TCP connections open at once.
    #[arg(long, default_value_t = Limits::default().max_http_connections)]
    max_http_connections: usize,
    /// Largest WebSocket message accepted, in bytes (at most the largest
    /// frame).
    #[arg(long, default_value_t = MAX_FRAME_LEN)]
    max_frame_len: usize,
    /// Seconds without any message (or pong) before a connection is closed.
    #[arg(long, default_value_t = Limits::default().idle_timeout.as_secs())]
    idle_timeout_secs: u64,
    /// Frames per second a connection may send on average.
    #[arg(long, default_value_t = Limits::default().rate_per_second)]
    rate: u32,
    /// Frames a connection may send in a burst.
    #[arg(long, default_value_t = Limits::default().rate_burst)]
    burst: u32,
    /// Frames queued for a connection before it is closed as a slow reader.
    #[arg(long, default_value_t = Limits::default().outbound_queue)]
    outbound_queue: usize,
    /// Seconds a long-poll request waits for frames.
    #[arg(long, default_value_t = Limits::default().poll_wait.as_secs())]
    poll_wait_secs: u64,
    /// Seconds shutdown waits for connections to close.
    #[arg(long, default_value_t = Limits::default().shutdown_grace.as_secs())]
    shutdown_grace_secs: u64,
    /// Most sessions (WebSockets, long-poll sessions) open at once from one
    /// address (an IPv6 prefix; behind a proxy, see --trusted-proxy).
    #[arg(long, default_value_t = Limits::default().max_connections_per_address)]
    max_connections_per_address: u32,
    /// Most TCP connections open at once from one address (counted at
    /// accept, before HTTP).
    #[arg(long, default_value_t = Limits::default().max_http_connections_per_address)]
    max_http_connections_per_address: u32,
    /// New connections per second from one address (0: no limit).
    #[arg(long, default_value_t = Limits::default().connect_rate_per_address)]
    connect_rate_per_address: u32,
    /// New connections one address may open in a burst.
    #[arg(long, default_value_t = Limits::default().connect_burst_per_address)]
    connect_burst_per_address: u32,
    /// HTTP requests per second from one address (0: no limit).
    #[arg(long, default_value_t = Limits::default().request_rate_per_address)]
    request_rate_per_address: u32,
    /// HTTP requests one address may send in a burst.
    #[arg(long, default_value_t = Limits::default().request_burst_per_address)]
    request_burst_per_address: u32,
    /// Seconds for a request's header (and the next one on an idle
    /// keep-alive connection), a PROXY header, and a TLS handshake.
    #[arg(long, default_value_t = Limits::default().header_read_timeout.as_secs())]
    header_read_timeout_secs: u64,
    /// Accounts the relay did not know that one address may make it keep
    /// per hour (0: no limit).
    #[arg(long, default_value_t = Limits::default().new_accounts_per_address_per_hour)]
    new_accounts_per_address_per_hour: u32,
    /// Most code sessions (`/v1/code`) held for one address.
    #[arg(long, default_value_t = Limits::default().max_code_sessions_per_address)]
    max_code_sessions_per_address: u64,
    /// Most mailbox bytes held for clients of one address.
    #[arg(long, default_value_t = Limits::default().mailbox_bytes_per_address)]
    mailbox_bytes_per_address: u64,
    /// Most mailboxes held for clients of one address.
    #[arg(long, default_value_t = Limits::default().mailboxes_per_address)]
    mailboxes_per_address: u64,
    /// Most mailboxes held in all.
    #[arg(long, default_value_t = Limits::default().mailboxes)]
    mailboxes: u64,
    /// Seconds frames wait for an identified client that lost its
    /// connection (0: not at all).
    #[arg(long, default_value_t = Limits::default().mailbox_ttl.as_secs())]
    mailbox_ttl_secs: u64,
    /// Most frames kept for one such client.
    #[arg(long, default_value_t = Limits::default().mailbox_frames)]
    mailbox_frames: usize,
    /// Most bytes kept in all mailboxes together.
    #[arg(long, default_value_t = Limits::default().mailbox_bytes)]
    mailbox_bytes: usize,
    /// Seconds a write to a connection may take before it is closed as a
    /// slow reader.
    #[arg(long, default_value_t = Limits::default().write_timeout.as_secs())]
    write_timeout_secs: u64,
    /// Bytes each WebSocket reads at a time (resident per open connection;
    /// larger frames still arrive whole).
    #[arg(long, default_value_t = Limits::default().websocket_read_buffer)]
    ws_read_buffer: usize,
    /// Most tokens (offers, redeemed ones until swept included) one client
    /// may hold.
    #[arg(long, default_value_t = Limits::default().max_tokens_per_client)]
    max_tokens_per_client: u64,
    /// Most tokens one address (an IPv6 prefix) may hold, whatever number
    /// of clients it opens.
    #[arg(long, default_value_t = Limits::default().max_tokens_per_address)]
    max_tokens_per_address: u64,
    /// The prefix length by which IPv6 addresses are counted.
    #[arg(long, default_value_t = Limits::default().ipv6_prefix)]
    ipv6_prefix: u8,
    /// Most tokens the store holds in all, redeemed ones until swept
    /// included.
    #[arg(long, default_value_t = Limits::default().max_tokens)]
    max_tokens: u64,
}

impl Args {
    fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections.max(1),
            max_http_connections: self.max_http_connections.max(1),
            request_rate_per_address: self.request_rate_per_address,
            request_burst_per_address: self.request_burst_per_address.max(1),
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs.max(1)),
            new_accounts_per_address_per_hour: self.new_accounts_per_address_per_hour,
            max_code_sessions_per_address: self.max_code_sessions_per_address.max(1),
            mailbox_bytes_per_address: self.mailbox_bytes_per_address,
            mailboxes_per_address: self.mailboxes_per_address,
            mailboxes: self.mailboxes,
            max_frame_len: self.max_frame_len.clamp(1, MAX_FRAME_LEN),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            rate_per_second: self.rate,
            rate_burst: self.burst.max(1),
            outbound_queue: self.outbound_queue.max(1),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            poll_wait: Duration::from_secs(self.poll_wait_secs.max(1)),
            sweep_interval: Duration::from_millis(self.sweep_interval_ms.max(1)),
            max_connections_per_address: self.max_connections_per_address.max(1),
            max_http_connections_per_address: self.max_http_connections_per_address.max(1),
            connect_rate_per_address: self.connect_rate_per_address,
            connect_burst_per_address: self.connect_burst_per_address.max(1),
            mailbox_ttl: Duration::from_secs(self.mailbox_ttl_secs),
            mailbox_frames: self.mailbox_frames,
            mailbox_bytes: self.mailbox_bytes,
            write_timeout: Duration::from_secs(self.write_timeout_secs.max(1)),
            websocket_read_buffer: self.ws_read_buffer.max(64),
            max_tokens_per_client: self.max_tokens_per_client.max(1),
            max_tokens_per_address: self.max_tokens_per_address.max(1),
            ipv6_prefix: self.ipv6_prefix.min(128),
            max_tokens: self.max_tokens.max(1),
            ..Limits::default()
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

/// The system clock, or (tests only) a clock read from a file.
fn clock(args: &Args) -> Result<Arc<dyn Clock>, String> {
    let Some(path) = args.test_clock_file.clone() else {
        return Ok(Arc::new(SystemClock));
    };
    let read = move |path: &std::path::Path| -> Result<Timestamp, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        text.trim()
            .parse::<u64>()
            .map(Timestamp::from_unix_millis)
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let clock = Arc::new(ManualClock::new(read(&path)?));
    let moved = clock.clone();
    std::thread::Builder::new()
        .name("test-clock".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(10));
            if let Ok(t) = read(&path) {
                moved.set(t);
            }
        })
        .map_err(|e| e.to_string())?;
    tracing::warn!("the relay's clock is read from a file (--test-clock-file): for tests only");
    Ok(clock)
}

async fn run<S: Store + 'static>(store: S, args: &Args, what: String) -> ExitCode {
    let relay = clock(args).and_then(|clock| {
        Relay::new(store, &Policy::default(), args.limits(), clock).map_err(|e| e.to_string())
    });
    match relay {
        Ok(relay) => serve(relay, args, what).await,
        Err(e) => {
            tracing::error!(store = %what, error = %e, "cannot start the relay");
            ExitCode::FAILURE
        }
    }
}

/// One node of many on a PostgreSQL database.
async fn run_node(store: PgStore, args: &Args) -> ExitCode {
    let options = ClusterOptions {
        lease: Duration::from_millis(args.node_lease_ms.max(100)),
        ..ClusterOptions::default()
    };
    let joined = tokio::task::block_in_place(|| Cluster::join(&store, options));
    let cluster = match joined {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(store = %store.target(), error = %e, "cannot join the cluster");
            return ExitCode::FAILURE;
        }
    };
    let what = format!("{}, node {}", store.target(), cluster.node_id());
    let relay = clock(args).and_then(|clock| {
        tokio::task::block_in_place(|| {
            Relay::clustered(store, &Policy::default(), args.limits(), clock, cluster)
                .map_err(|e: StoreError| e.to_string())
        })
    });
    match relay {
        Ok(relay) => serve(relay, args, what).await,
        Err(e) => {
            tracing::error!(store = %what, error = %e, "cannot start the relay");
            ExitCode::FAILURE
        }
    }
}

/// TLS, trusted proxies and the page's policy from the flags.
fn network(args: &Args) -> Result<Network, String> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Tls::from_pem_files(cert, key).map_err(|e| e.to_string())?),
        _ => None,
    };
    let trusted_proxies = TrustedProxies::parse(args.trusted_proxies.iter().map(String::as_str))?;
    // The page holds a device key: not in clear on a public address.
    let serve_page = tls.is_some() || args.listen.ip().is_loopback() || args.insecure_http;
    if !serve_page {
        tracing::warn!(
            listen = %args.listen,
            "no TLS on a non-loopback address: the browser companion page is not served \
             (give --tls-cert/--tls-key, or --insecure-http behind a TLS proxy)"
        );
    }
    let allowed_origins = AllowedOrigins::parse(args.allowed_origins.iter().map(String::as_str))
        .map_err(|e| e.to_string())?;
    Ok(Network {
        trusted_proxies,
        tls,
        serve_page,
        allowed_origins,
    })
}

/// Reads the certificate again on every SIGHUP.
fn reload_on_sighup(tls: Tls) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: no certificate reloads");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate not reloaded; the old one stays")
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = tls;
}

async fn serve<S: Store + 'static>(relay: Relay<S>, args: &Args, what: String) -> ExitCode {
    let network = match network(args) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the network");
            return ExitCode::FAILURE;
        }
    };
    if let Some(tls) = network.tls.clone() {
        reload_on_sighup(tls);
    }
    if let Some(addr) = args.metrics_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                let router = relay.metrics_router();
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(l, router).await {
                        tracing::error!(error = %e, "metrics listener failed");
                    }
                });
            }
            Err(e) => {
                tracing::error!(listen = %addr, error = %e, "cannot listen for metrics");
                return ExitCode::FAILURE;
            }
        }
    }
    let listener = match devicelink_relay::server::listen(args.listen) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %args.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    let (ws, http) = if network.tls.is_some() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let page = if network.serve_page {
        format!("the browser companion: {http}://{addr}/")
    } else {
        "no browser companion page (plain HTTP off loopback)".into()
    };
    // One line, written once: whoever started the relay may read just this
    // line and close the pipe, which must not stop the relay.
    let _ = writeln!(
        std::io::stdout(),
        "devicelink-relay listening on {ws}://{addr} (store: {what}); {page}"
    );
    match relay.serve_with(listener, network, shutdown_signal()).await {
        Ok(drained) if drained.all_closed => ExitCode::SUCCESS,
        Ok(drained) => {
            tracing::warn!(open = drained.still_open, "connections still open at exit");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    if args.memory || args.db.as_os_str() == ":memory:" {
        return runtime.block_on(run(MemoryStore::new(), &args, "memory".into()));
    }
    if let Some(url) = args
        .db
        .to_str()
        .filter(|d| d.starts_with("postgres://") || d.starts_with("postgresql://"))
    {
        let options = devicelink_relay::store::PgOptions {
            pool_size: args.pg_pool.max(1),
            ..Default::default()
        };
        let store = match PgStore::connect_with(url, options) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the PostgreSQL store");
                return ExitCode::FAILURE;
            }
        };
        let code = runtime.block_on(run_node(store, &args));
        drop(runtime);
        return code;
    }
    let store = match SqliteStore::open(&args.db) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(db = %args.db.display(), error = %e, "cannot open the store");
            return ExitCode::FAILURE;
        }
    };
    let what = format!("sqlite {}", args.db.display());
    let code = runtime.block_on(run(store, &args, what));
    // The store's last handle dropped inside `run`: the SQLite writer has
    // flushed and stopped.
    drop(runtime);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::parse_from([&["devicelink-relay"], list].concat())
    }

    #[test]
    fn the_page_travels_in_clear_on_loopback_only_unless_told() {
        let serve_page = |a: &[&str]| network(&args(a)).unwrap().serve_page;
        assert!(serve_page(&[]));
        assert!(serve_page(&["--listen", "[::1]:8080"]));
        assert!(!serve_page(&["--listen", "0.0.0.0:8080"]));
        assert!(!serve_page(&["--listen", "192.0.2.1:443"]));
        assert!(serve_page(&["--listen", "0.0.0.0:8080", "--insecure-http"]));
        // Trusted proxies parse as networks or addresses, or refuse.
        let n = network(&args(&[
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "::1",
        ]))
        .unwrap();
        assert!(n.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        assert!(n.trusted_proxies.contains("::1".parse().unwrap()));
        assert!(!n.trusted_proxies.contains("192.0.2.1".parse().unwrap()));
        assert!(network(&args(&["--trusted-proxy", "nope"])).is_err());
        // TLS needs both files, and files that exist.
        assert!(Args::try_parse_from(["devicelink-relay", "--tls-cert", "c.pem"]).is_err());
        assert!(network(&args(&[
            "--tls-cert",
            "/nonexistent/c.pem",
            "--tls-key",
            "/nonexistent/k.pem"
        ]))
        .is_err());
    }
}
