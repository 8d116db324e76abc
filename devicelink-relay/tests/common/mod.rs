//! A relay on 127.0.0.1 (port 0) with a hand-moved clock, and the steps of
//! a link through it, shared by the transport tests.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use devicelink::{Account, Companion, DeviceIdentity, DeviceLabel, Policy, Timestamp};
use devicelink_relay::client::{ClientError, CompanionClient, LinkOutcome, PrimaryClient};
use devicelink_relay::server::{Drained, Limits, ManualClock, Metrics, Network, Relay};
use devicelink_relay::{MemoryStore, Store};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every wait in these tests is bounded by this.
pub const STEP: Duration = Duration::from_secs(10);

pub const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

pub struct TestRelay {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub clock: Arc<ManualClock>,
    pub metrics: Arc<Metrics>,
    pub inspector: devicelink_relay::server::Inspector,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<Drained>>,
}

/// Limits for tests: a fast sweeper, generous rates (most test clients
/// come from 127.0.0.1: no per-address rates, high per-address caps; the
/// tests of a budget set it, and send from other loopback addresses).
pub fn test_limits() -> Limits {
    Limits {
        sweep_interval: Duration::from_millis(20),
        rate_per_second: 10_000,
        rate_burst: 10_000,
        connect_rate_per_address: 0,
        max_connections_per_address: 100_000,
        max_http_connections_per_address: 100_000,
        request_rate_per_address: 0,
        new_accounts_per_address_per_hour: 0,
        max_tokens_per_address: 1_000_000,
        shutdown_grace: Duration::from_secs(5),
        ..Limits::default()
    }
}

pub async fn start(limits: Limits) -> TestRelay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_on(listener, limits).await
}

pub async fn start_on(listener: TcpListener, limits: Limits) -> TestRelay {
    start_with(MemoryStore::new(), listener, limits, T0).await
}

pub async fn start_with<S: Store + 'static>(
    store: S,
    listener: TcpListener,
    limits: Limits,
    at: Timestamp,
) -> TestRelay {
    start_networked(store, listener, limits, at, Network::default()).await
}

/// A relay on 127.0.0.1 (port 0) with `network`'s proxies and TLS.
pub async fn start_network(limits: Limits, network: Network) -> TestRelay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_networked(MemoryStore::new(), listener, limits, T0, network).await
}

pub async fn start_networked<S: Store + 'static>(
    store: S,
    listener: TcpListener,
    limits: Limits,
    at: Timestamp,
    network: Network,
) -> TestRelay {
    let clock = Arc::new(ManualClock::new(at));
    let relay = Relay::new(store, &Policy::default(), limits, clock.clone()).unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = relay.metrics();
    let inspector = relay.inspector();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(relay.serve_with(listener, network, async move {
        let _ = stopped.await;
    }));
    TestRelay {
        base: format!("ws://{addr}"),
        addr,
        clock,
        metrics,
        inspector,
        stop: Some(stop),
        task,
    }
}

impl TestRelay {
    pub async fn stop(mut self) -> Drained {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        bounded(&mut self.task).await.unwrap().unwrap()
    }

    /// Failed code attempts the relay counted for `key`.
    pub fn code_failures(&self, key: &devicelink::relay::AttemptKey) -> u32 {
        self.inspector.code_failures(key)
    }

    pub fn now(&self) -> Timestamp {
        devicelink_relay::server::Clock::now(&*self.clock)
    }
}

/// Awaits `f`, failing the test after [`STEP`].
pub async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .expect("a step took longer than its bound")
}

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub fn account(relay: &TestRelay, seed: u64) -> Account {
    Account::generate(Policy::default(), &mut rng(seed), relay.now())
}

pub async fn companion(relay: &TestRelay, seed: u64, label: &str) -> CompanionClient {
    let mut r = rng(seed);
    let identity = DeviceIdentity::generate(&mut r);
    let companion = Companion::new(
        identity,
        DeviceLabel::new(label).unwrap(),
        &Policy::default(),
        &mut r,
        relay.now(),
    );
    bounded(CompanionClient::connect(
        &relay.base,
        companion,
        relay.clock.clone(),
    ))
    .await
    .unwrap()
}

/// Links `companion` to `account` through the relay; returns both ends'
/// results.
pub async fn link(
    relay: &TestRelay,
    primary: &mut PrimaryClient,
    account: &mut Account,
    companion: &mut CompanionClient,
    seed: u64,
) -> (Result<(), ClientError>, Result<LinkOutcome, ClientError>) {
    let text = companion.offer_text().unwrap();
    account.open_link_intent(relay.now());
    let mut rc = rng(seed);
    let mut rp = rng(seed + 1);
    let (c, p) = bounded(async {
        tokio::join!(
            companion.link(&mut rc, |_| true),
            primary.link(account, &text, &mut rp, |_| true)
        )
    })
    .await;
    (c.map(|_| ()), p)
}

/// A WebSocket over a raw stream (the tests' clients).
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to `path` from the local address `from` (any 127.0.0.0/8
/// address is this machine's): the relay sees another source.
pub async fn ws_from(relay: &TestRelay, path: &str, from: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = bounded(socket.connect(relay.addr)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let url = format!("{}{path}", relay.base);
    let (ws, _) = bounded(tokio_tungstenite::client_async(
        url,
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    ))
    .await
    .unwrap();
    ws
}

/// A TCP connection to the relay from the local address `from`.
pub async fn tcp_from(relay: &TestRelay, from: &str) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    bounded(socket.connect(relay.addr)).await
}
