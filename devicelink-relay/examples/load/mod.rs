//! What the load examples (`relay_load`, `relay_replay`, `relay_memory`, `pg_bench`,
//! `siege`) share: arguments, hosting a relay (in this process, or as a child
//! process of the same example, optionally pinned to a core with
//! `taskset`), pre-built pairings made with the core before any clock
//! starts, thin clients that carry pre-encoded frames over a WebSocket or
//! the HTTP long-poll fallback, and the figures read from `/proc`.
//!
//! Everything listens on 127.0.0.1 and every run is bounded in count and
//! time.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use devicelink::handshake::{MessageHeader, MessageKind};
use devicelink::relay::{AccountProof, SubscriptionProof};
use devicelink::{Account, Companion, DeviceIdentity, DeviceLabel, Policy, Timestamp};
use devicelink_relay::server::{Clock, Limits, Metrics, Relay, SystemClock};
use devicelink_relay::{ClientSecret, Frame, FrameType, MemoryStore, SqliteStore, MAX_FRAME_LEN};
use futures_util::{SinkExt, StreamExt};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Any error, for examples.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Every single wait of a load client is bounded by this.
pub const STEP: Duration = Duration::from_secs(30);

/// One full pairing with real crypto on both ends, each connecting fresh:
/// a companion at `companion_at` and a fresh account's primary at
/// `primary_at` (the same relay, or two nodes of one cluster). How long it
/// took, from the companion's key generation to both sides done.
pub async fn one_link(
    companion_at: &str,
    primary_at: &str,
    clock: Arc<dyn Clock>,
) -> Result<Duration, Error> {
    use devicelink_relay::client::{CompanionClient, LinkOutcome, PrimaryClient};
    use rand_core::OsRng;
    let started = std::time::Instant::now();
    let companion = Companion::new(
        DeviceIdentity::generate(&mut OsRng),
        DeviceLabel::new("load")?,
        &Policy::default(),
        &mut OsRng,
        clock.now(),
    );
    let mut c = CompanionClient::connect(companion_at, companion, clock.clone()).await?;
    let mut p = PrimaryClient::connect(primary_at, clock.clone()).await?;
    let mut account = Account::generate(Policy::default(), &mut OsRng, clock.now());
    account.open_link_intent(clock.now());
    let qr = c.offer_text().ok_or("no offer")?;
    let (mut rc, mut rp) = (OsRng, OsRng);
    let (cr, pr) = tokio::join!(
        c.link(&mut rc, |_| true),
        p.link(&mut account, &qr, &mut rp, |_| true)
    );
    cr?;
    if !matches!(pr?, LinkOutcome::Linked(_)) {
        return Err("refused".into());
    }
    let took = started.elapsed();
    c.close().await;
    p.close().await;
    Ok(took)
}

// ---- arguments ---------------------------------------------------------------

/// The command line, read by name (`--name value`, `--flag`).
#[derive(Debug, Clone)]
pub struct Args(Vec<String>);

impl Args {
    /// This process's arguments.
    pub fn from_env() -> Self {
        Args(std::env::args().skip(1).collect())
    }

    /// `--name`'s value, parsed, or `default`.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> T {
        self.string(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// `--name`'s value as text.
    pub fn string(&self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|a| a == name)?;
        self.0.get(i + 1).cloned()
    }

    /// `--name a,b,c` as numbers, or `default`.
    pub fn list(&self, name: &str, default: &[usize]) -> Vec<usize> {
        match self.string(name) {
            Some(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
            None => default.to_vec(),
        }
    }

    /// Whether `--name` is given.
    pub fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }
}

// ---- figures from /proc --------------------------------------------------------

/// A process's resident set and its peak, in KiB (`/proc/PID/status`).
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// User + system CPU seconds a process has used (`/proc/PID/stat`; 100
/// ticks a second, Linux's `USER_HZ`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_user_system(pid).map(|(u, s)| u + s)
}

/// User and system CPU seconds a process has used, apart.
pub fn cpu_user_system(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3,
    // utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime / 100.0, stime / 100.0))
}

/// Nanoseconds the calling thread has run on a CPU
/// (`/proc/thread-self/schedstat`).
pub fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// The kernel's TCP memory in use, in pages (`/proc/net/sockstat`).
pub fn tcp_mem_pages() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// The `p`-quantile (0..=1) of sorted durations, in milliseconds.
pub fn pct_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

// ---- hosting a relay -------------------------------------------------------------

/// Which store the relay runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `MemoryStore`.
    Memory,
    /// `SqliteStore` on a fresh file in a temporary directory
    /// (`synchronous = FULL`, WAL).
    Sqlite,
    /// The same, with its decisions made on tokio's blocking pool instead
    /// of its writer thread (`--no-offload`: the relay's write path before
    /// `Store::offload`, to compare in one run).
    SqliteBlockingPool,
}

impl StoreKind {
    /// `--store memory|sqlite` (or `--sqlite`).
    pub fn from_args(args: &Args) -> Self {
        let sqlite = args.flag("--sqlite") || args.string("--store").as_deref() == Some("sqlite");
        if sqlite && args.flag("--no-offload") {
            StoreKind::SqliteBlockingPool
        } else if sqlite {
            StoreKind::Sqlite
        } else {
            StoreKind::Memory
        }
    }

    /// Its name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Sqlite => "sqlite",
            StoreKind::SqliteBlockingPool => "sqlite",
        }
    }
}

/// A store whose decisions the relay makes on tokio's blocking pool (it
/// offloads nothing): the SQLite store as the relay used it before
/// `Store::offload`, for a comparison in one run.
#[derive(Debug, Clone)]
pub struct BlockingPool<S>(pub S);

impl<S: devicelink::relay::TokenStore> devicelink::relay::TokenStore for BlockingPool<S> {
    fn register(
        &self,
        token: devicelink::TokenId,
        client: devicelink::relay::ClientId,
        source: devicelink::relay::SourceKey,
        expires_at: Timestamp,
        budget: devicelink::relay::Budget,
    ) -> Result<(), devicelink::relay::LedgerError> {
        self.0.register(token, client, source, expires_at, budget)
    }
    fn reserve(
        &self,
        token: &devicelink::TokenId,
        by: devicelink::relay::ClientId,
        hello: &devicelink::relay::HelloDigest,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<devicelink::relay::ClientId, devicelink::relay::LedgerError> {
        self.0.reserve(token, by, hello, now, until)
    }
    fn release(
        &self,
        token: &devicelink::TokenId,
        client: devicelink::relay::ClientId,
        hello: &devicelink::relay::HelloDigest,
        now: Timestamp,
    ) -> Result<(), devicelink::relay::LedgerError> {
        self.0.release(token, client, hello, now)
    }
    fn redeem(
        &self,
        token: &devicelink::TokenId,
        client: devicelink::relay::ClientId,
        now: Timestamp,
        keep: Timestamp,
    ) -> Result<devicelink::relay::ClientId, devicelink::relay::LedgerError> {
        self.0.redeem(token, client, now, keep)
    }
    fn get(
        &self,
        token: &devicelink::TokenId,
    ) -> Result<Option<devicelink::relay::TokenRecord>, devicelink::relay::LedgerError> {
        self.0.get(token)
    }
    fn sweep(&self, now: Timestamp, limit: usize) -> Result<usize, devicelink::relay::LedgerError> {
        self.0.sweep(now, limit)
    }
    fn abandon(
        &self,
        client: devicelink::relay::ClientId,
    ) -> Result<usize, devicelink::relay::LedgerError> {
        self.0.abandon(client)
    }
}

impl<S: devicelink_relay::Store> devicelink_relay::Store for BlockingPool<S> {
    fn account(
        &self,
        account: &devicelink::AccountId,
    ) -> Result<Option<devicelink_relay::AccountRecord>, devicelink_relay::StoreError> {
        self.0.account(account)
    }
    fn put_account(
        &self,
        record: &devicelink_relay::AccountRecord,
    ) -> Result<bool, devicelink_relay::StoreError> {
        self.0.put_account(record)
    }
    fn delete_account(
        &self,
        account: &devicelink::AccountId,
        revision: u64,
    ) -> Result<bool, devicelink_relay::StoreError> {
        self.0.delete_account(account, revision)
    }
    fn lists_after(
        &self,
        account: &devicelink::AccountId,
        after: u64,
    ) -> Result<Vec<Vec<u8>>, devicelink_relay::StoreError> {
        self.0.lists_after(account, after)
    }
    fn due_accounts(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<devicelink::AccountId>, devicelink_relay::StoreError> {
        self.0.due_accounts(before, limit)
    }
}

/// Limits for load on loopback: every client comes from 127.0.0.1, so the
/// per-address limits are off, a reused client's tokens are not budgeted,
/// and the per-connection rate is far above what a load client sends;
/// everything else is the default.
pub fn load_limits(args: &Args) -> Limits {
    let defaults = Limits::default();
    Limits {
        max_connections: args.get("--max-connections", 60_000),
        rate_per_second: args.get("--rate", 1_000_000),
        rate_burst: args.get("--burst", 1_000_000),
        connect_rate_per_address: 0,
        max_connections_per_address: u32::MAX,
        max_http_connections_per_address: u32::MAX,
        request_rate_per_address: 0,
        new_accounts_per_address_per_hour: 0,
        max_code_sessions_per_address: u64::MAX,
        max_tokens_per_address: u64::MAX,
        // A reused connection registers a token per pairing, and each
        // redeemed one stays a tombstone for its session window.
        max_tokens_per_client: u64::MAX,
        max_tokens: 100_000_000,
        idle_timeout: Duration::from_secs(args.get("--idle-timeout-secs", 60)),
        websocket_read_buffer: args.get("--ws-read-buffer", defaults.websocket_read_buffer),
        ..defaults
    }
}

/// A relay serving on 127.0.0.1 for one run.
pub struct Hosted {
    /// `ws://127.0.0.1:PORT`.
    pub base: String,
    /// `http://127.0.0.1:PORT`.
    pub http: String,
    inner: HostedInner,
}

enum HostedInner {
    InProcess {
        metrics: Arc<Metrics>,
        sqlite: Option<(SqliteStore, tempfile::TempDir)>,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<std::io::Result<devicelink_relay::server::Drained>>,
    },
    Child {
        child: Child,
        stdin: Option<ChildStdin>,
        stdout: BufReader<ChildStdout>,
    },
}

/// What a relay reports after a run.
#[derive(Debug, Default, Clone)]
pub struct RelayReport {
    /// SQLite commits and writes (batching factor = writes / commits).
    pub commits: u64,
    /// SQLite writes acknowledged.
    pub writes: u64,
    /// Selected `/metrics` lines.
    pub metrics: Vec<String>,
}

fn pick_metrics(rendered: &str) -> Vec<String> {
    rendered
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("devicelink_tokens_")
                    || l.starts_with("devicelink_messages_routed_total")
                    || l.starts_with("devicelink_store_call_seconds_count")
                    || l.starts_with("devicelink_store_call_seconds_sum")
                    || l.starts_with("devicelink_refusals_total")
                    || l.starts_with("devicelink_connections_total")
                    || l.starts_with("devicelink_slow_reader"))
        })
        .map(str::to_string)
        .collect()
}

impl Hosted {
    /// A relay in this process, on the current tokio runtime.
    pub async fn in_process(store: StoreKind, limits: Limits) -> Result<Self, Error> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // The relay's accept queue (`server::listen`); LOAD_BACKLOG=128
        // shows what `TcpListener::bind`'s would do.
        let listener = match std::env::var("LOAD_BACKLOG")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            Some(backlog) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind("127.0.0.1:0".parse()?)?;
                socket.listen(backlog)?
            }
            None => devicelink_relay::server::listen("127.0.0.1:0".parse()?)?,
        };
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let (metrics, sqlite, task) = match store {
            StoreKind::Memory => {
                let relay = Relay::new(MemoryStore::new(), &Policy::default(), limits, clock)?;
                (
                    relay.metrics(),
                    None,
                    tokio::spawn(relay.serve(listener, shutdown)),
                )
            }
            StoreKind::Sqlite => {
                let dir = tempfile::tempdir()?;
                let db = SqliteStore::open(dir.path().join("relay.db"))?;
                let relay = Relay::new(db.clone(), &Policy::default(), limits, clock)?;
                (
                    relay.metrics(),
                    Some((db, dir)),
                    tokio::spawn(relay.serve(listener, shutdown)),
                )
            }
            StoreKind::SqliteBlockingPool => {
                let dir = tempfile::tempdir()?;
                let db = SqliteStore::open(dir.path().join("relay.db"))?;
                let store = BlockingPool(db.clone());
                let relay = Relay::new(store, &Policy::default(), limits, clock)?;
                (
                    relay.metrics(),
                    Some((db, dir)),
                    tokio::spawn(relay.serve(listener, shutdown)),
                )
            }
        };
        Ok(Hosted {
            base: format!("ws://{addr}"),
            http: format!("http://{addr}"),
            inner: HostedInner::InProcess {
                metrics,
                sqlite,
                stop,
                task,
            },
        })
    }

    /// A relay in a child process: this example again with `--serve`,
    /// under `taskset -c CPU` if `cpu` is given. `extra` is passed on
    /// (limits such as `--ws-read-buffer`).
    pub fn child(store: StoreKind, cpu: Option<&str>, extra: &[String]) -> Result<Self, Error> {
        let exe = std::env::current_exe()?;
        // `LOAD_RELAY_WRAP=heaptrack` (say) runs the child under a tool.
        let mut words: Vec<std::ffi::OsString> = Vec::new();
        if let Some(cpu) = cpu {
            words.extend(["taskset".into(), "-c".into(), cpu.into()]);
        }
        if let Ok(wrap) = std::env::var("LOAD_RELAY_WRAP") {
            words.extend(wrap.split_whitespace().map(Into::into));
        }
        words.push(exe.into());
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..]);
        cmd.arg("--serve")
            .arg("--store")
            .arg(store.name())
            .args((store == StoreKind::SqliteBlockingPool).then_some("--no-offload"))
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut addr = None;
        for _ in 0..16 {
            let mut line = String::new();
            if stdout.read_line(&mut line)? == 0 {
                break;
            }
            if let Some(a) = line.trim().strip_prefix("listening ") {
                addr = Some(a.to_string());
                break;
            }
        }
        let addr = addr.ok_or("the child relay did not say where it listens")?;
        Ok(Hosted {
            base: format!("ws://{addr}"),
            http: format!("http://{addr}"),
            inner: HostedInner::Child {
                child,
                stdin,
                stdout,
            },
        })
    }

    /// The child's process id (`None` in process).
    pub fn pid(&self) -> Option<u32> {
        match &self.inner {
            HostedInner::Child { child, .. } => Some(child.id()),
            HostedInner::InProcess { .. } => None,
        }
    }

    /// CPU seconds the relay's process has used (this process's own when
    /// the relay runs in it).
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid().unwrap_or_else(std::process::id)).unwrap_or(f64::NAN)
    }

    /// SQLite commits and writes so far (in process only).
    pub fn writer_stats(&self) -> Option<(u64, u64)> {
        match &self.inner {
            HostedInner::InProcess {
                sqlite: Some((db, _)),
                ..
            } => {
                let s = db.writer_stats();
                Some((s.commits, s.writes))
            }
            _ => None,
        }
    }

    /// Stops the relay and returns its figures.
    pub async fn stop(self) -> Result<RelayReport, Error> {
        match self.inner {
            HostedInner::InProcess {
                metrics,
                sqlite,
                stop,
                task,
            } => {
                let mut report = RelayReport {
                    metrics: pick_metrics(&metrics.render()),
                    ..RelayReport::default()
                };
                if let Some((db, _)) = &sqlite {
                    let s = db.writer_stats();
                    (report.commits, report.writes) = (s.commits, s.writes);
                }
                let _ = stop.send(());
                task.await??;
                drop(sqlite);
                Ok(report)
            }
            HostedInner::Child {
                mut child,
                stdin,
                mut stdout,
            } => {
                drop(stdin); // end of stdin: the child shuts down and reports
                let mut out = String::new();
                tokio::task::block_in_place(|| stdout.read_to_string(&mut out))?;
                child.wait()?;
                let mut report = RelayReport::default();
                for line in out.lines() {
                    if let Some(rest) = line.strip_prefix("writer ") {
                        let mut it = rest.split_whitespace().filter_map(|x| x.parse().ok());
                        report.commits = it.next().unwrap_or(0);
                        report.writes = it.next().unwrap_or(0);
                    } else if let Some(m) = line.strip_prefix("metric ") {
                        report.metrics.push(m.to_string());
                    }
                }
                Ok(report)
            }
        }
    }
}

/// The child's side of [`Hosted::child`]: serves until stdin ends, then
/// prints its figures. Call it first thing in `main` when `--serve` is
/// given.
pub fn serve_child(args: &Args) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let store = StoreKind::from_args(args);
    runtime.block_on(async {
        let hosted = Hosted::in_process(store, load_limits(args)).await?;
        let addr = hosted.base.trim_start_matches("ws://").to_string();
        println!("listening {addr}");
        std::io::stdout().flush()?;
        // Serve until the parent closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await?;
        let report = hosted.stop().await?;
        println!("writer {} {}", report.commits, report.writes);
        for m in report.metrics {
            println!("metric {m}");
        }
        Ok::<(), Error>(())
    })
}

// ---- pre-built pairings ------------------------------------------------------------

/// One complete, valid pairing made with the core (real crypto) before the
/// clock starts, as the frames each side sends, pre-encoded.
#[derive(Debug, Clone)]
pub struct Prebuilt {
    /// Companion: Identify (its client secret).
    pub c_identify: Bytes,
    /// Companion: Register (the offer's token, its expiry).
    pub register: Bytes,
    /// Companion: Message(Request).
    pub request: Bytes,
    /// Companion: Message(Confirm).
    pub confirm: Bytes,
    /// Companion: PublishList (the list its certificate holds).
    pub c_list: Bytes,
    /// Companion: Subscribe (account, index, proof for its client id).
    pub subscribe: Bytes,
    /// Primary: Identify.
    pub p_identify: Bytes,
    /// Primary: Message(Hello).
    pub hello: Bytes,
    /// Primary: Message(Grant).
    pub grant: Bytes,
    /// Primary: PublishList (the account's list naming the companion).
    pub p_list: Bytes,
    /// Primary: ProveAccount (the account key's proof for its client id),
    /// which a relay asks before it keeps an account it does not know.
    pub prove: Bytes,
    /// Primary: PublishList of the list the grant made, which a primary
    /// publishes before the Grant (so the relay knows the account before
    /// the companion carries its list and subscribes).
    pub grant_list: Bytes,
}

/// A client secret for load client `n` of `side` (0 companion, 1 primary):
/// distinct per `(side, n, run)`.
pub fn secret(side: u8, n: u64, run: u64) -> ClientSecret {
    let mut b = [0u8; 32];
    b[0] = side;
    b[8..16].copy_from_slice(&n.to_be_bytes());
    b[16..24].copy_from_slice(&run.to_be_bytes());
    ClientSecret::from_bytes(b)
}

fn message_frame(message: &[u8]) -> Result<Bytes, Error> {
    let header = MessageHeader::parse(message)?;
    Ok(Bytes::from(
        Frame::Message {
            header,
            bytes: message,
        }
        .encode(),
    ))
}

/// Makes one pairing with the core: both ends' real handshake, the
/// account's list, the companion's subscription proof for `companion`'s
/// client id.
pub fn prebuild_one(
    rng: &mut ChaCha20Rng,
    now: Timestamp,
    companion: &ClientSecret,
    primary: &ClientSecret,
) -> Result<Prebuilt, Error> {
    // A long first offer: the relay clamps the registration to its own
    // limit from the moment of the replay, so pairings made a while
    // before the replay still register.
    let policy = Policy::builder()
        .first_offer_lifetime(Duration::from_secs(3_600))
        .build()?;
    let mut c = Companion::new(
        DeviceIdentity::generate(rng),
        DeviceLabel::new("replay")?,
        &policy,
        rng,
        now,
    );
    let offer = c.offer().ok_or("no offer")?;
    let (token_id, text) = (offer.token_id(), offer.to_text());
    let expires_at = c.next_deadline().ok_or("no deadline")?;
    let mut account = Account::generate(Policy::default(), rng, now);
    account.open_link_intent(now);
    let (mut hs, hello) = account.scan(&text, rng, now)?;
    let request = c.receive_hello(&hello, rng, now)?;
    account.receive_request(&mut hs, &request, rng, now)?;
    let grant = account.grant(&mut hs, rng, now)?;
    let grant_list = account.device_list().to_bytes();
    c.receive_grant(&grant, now)?;
    let confirm = c.consent(now)?;
    account.confirm(&mut hs, &confirm, now)?;
    let session = c.into_session().map_err(|_| "not linked")?;
    let proof = SubscriptionProof::sign(&session, companion.client_id())
        .expect("the session holds its key");
    let p_list = account.device_list().to_bytes();
    let c_list = session.device_list().to_bytes();
    let enc = |f: Frame<'_>| Bytes::from(f.encode());
    Ok(Prebuilt {
        c_identify: enc(Frame::Identify {
            secret: companion.clone(),
        }),
        register: enc(Frame::Register {
            token_id,
            expires_at,
        }),
        request: message_frame(&request)?,
        confirm: message_frame(&confirm)?,
        c_list: enc(Frame::PublishList { bytes: &c_list }),
        subscribe: enc(Frame::Subscribe {
            account: session.account(),
            index: session.index(),
            proof,
            after: None,
        }),
        p_identify: enc(Frame::Identify {
            secret: primary.clone(),
        }),
        hello: message_frame(&hello)?,
        grant: message_frame(&grant)?,
        p_list: enc(Frame::PublishList { bytes: &p_list }),
        prove: enc(Frame::ProveAccount {
            account: account.account_id(),
            proof: AccountProof::sign(account.key(), primary.client_id()),
        }),
        grant_list: enc(Frame::PublishList { bytes: &grant_list }),
    })
}

/// Makes `n` pairings on `threads` threads; pairing `i` identifies as
/// clients `owner(i)` (companion and primary secrets).
pub fn prebuild(
    n: usize,
    threads: usize,
    run: u64,
    owner: impl Fn(usize) -> u64 + Sync,
) -> Result<Vec<Prebuilt>, Error> {
    let now = SystemClock.now();
    let threads = threads.max(1);
    let mut parts: Vec<Result<Vec<(usize, Prebuilt)>, String>> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let owner = &owner;
                s.spawn(move || {
                    let mut rng = ChaCha20Rng::seed_from_u64(run ^ (t as u64) << 32);
                    let mut out = Vec::new();
                    for i in (t..n).step_by(threads) {
                        let o = owner(i);
                        let p = prebuild_one(&mut rng, now, &secret(0, o, run), &secret(1, o, run))
                            .map_err(|e| e.to_string())?;
                        out.push((i, p));
                    }
                    Ok(out)
                })
            })
            .collect();
        for h in handles {
            parts.push(h.join().unwrap_or_else(|_| Err("a thread panicked".into())));
        }
    });
    let mut all = Vec::with_capacity(n);
    for part in parts {
        all.extend(part?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, p)| p).collect())
}

// ---- thin clients ---------------------------------------------------------------------

/// What a thin load client sends frames over and reads frames from.
pub trait Wire: Send {
    /// Sends one pre-encoded frame.
    fn send(&mut self, frame: Bytes)
        -> impl std::future::Future<Output = Result<(), Error>> + Send;
    /// The next frame from the relay.
    fn recv(&mut self) -> impl std::future::Future<Output = Result<Bytes, Error>> + Send;
    /// Ends the connection (without waiting for the relay).
    fn close(self) -> impl std::future::Future<Output = ()> + Send;
}

/// A WebSocket client connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The load clients' WebSocket settings: a 4 KiB read buffer (the default
/// 128 KiB would be zero-filled on the first read of every connection).
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_FRAME_LEN))
        .max_frame_size(Some(MAX_FRAME_LEN))
}

/// Opens `base` + `path` (`/v1/companion` or `/v1/primary`), without
/// Nagle's algorithm.
pub async fn ws_connect(base: &str, path: &str) -> Result<Ws, Error> {
    let url = format!("{base}{path}");
    let (ws, _) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true),
    )
    .await??;
    Ok(ws)
}

/// A TCP connection to `addr` from the local address `from` (on Linux
/// every 127.0.0.0/8 address is this machine's, so a load client can be
/// many network sources), without Nagle's algorithm.
pub async fn tcp_from(
    addr: std::net::SocketAddr,
    from: std::net::IpAddr,
) -> Result<TcpStream, Error> {
    let socket = if from.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(from, 0))?;
    let tcp = tokio::time::timeout(STEP, socket.connect(addr)).await??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Opens `ws://addr` + `path` over a TCP connection from the local address
/// `from` ([`tcp_from`]). A refusal before the upgrade is a
/// `tungstenite::Error::Http` carrying the relay's answer (429, 503).
pub async fn ws_connect_from(
    addr: std::net::SocketAddr,
    path: &str,
    from: std::net::IpAddr,
) -> Result<Ws, Error> {
    let tcp = tcp_from(addr, from).await?;
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async_with_config(
            url,
            MaybeTlsStream::Plain(tcp),
            Some(client_config()),
        ),
    )
    .await??;
    Ok(ws)
}

/// A WebSocket [`Wire`].
pub struct WsWire(pub Ws);

impl Wire for WsWire {
    async fn send(&mut self, frame: Bytes) -> Result<(), Error> {
        self.0.send(Message::Binary(frame)).await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Bytes, Error> {
        loop {
            match tokio::time::timeout(STEP, self.0.next()).await? {
                None => return Err("closed".into()),
                Some(m) => match m? {
                    Message::Binary(b) => return Ok(b),
                    Message::Close(f) => {
                        return Err(format!("closed with {:?}", f.map(|f| u16::from(f.code))).into())
                    }
                    _ => {}
                },
            }
        }
    }

    async fn close(mut self) {
        let _ = self.0.close(None).await;
    }
}

/// HTTP requests the long-poll clients made (all of them, this process).
pub static HTTP_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn counted() {
    HTTP_REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// An HTTP long-poll session [`Wire`] (`docs/RELAY.md` §3.6): frames
/// POSTed numbered (`If-Match`), records polled and acknowledged
/// (`If-None-Match`).
pub struct PollWire {
    http: reqwest::Client,
    url: String,
    sent: u64,
    acked: u64,
    ready: VecDeque<Bytes>,
}

impl PollWire {
    /// Opens a session as `role` (`companion` or `primary`).
    pub async fn open(http: &reqwest::Client, base: &str, role: &str) -> Result<Self, Error> {
        counted();
        let r = http.post(format!("{base}/v1/poll/{role}")).send().await?;
        if r.status() != reqwest::StatusCode::CREATED {
            return Err(format!("open: HTTP {}", r.status()).into());
        }
        let id = r.text().await?;
        Ok(PollWire {
            http: http.clone(),
            url: format!("{base}/v1/poll/session/{id}"),
            sent: 0,
            acked: 0,
            ready: VecDeque::new(),
        })
    }
}

impl Wire for PollWire {
    async fn send(&mut self, frame: Bytes) -> Result<(), Error> {
        let k = self.sent + 1;
        for _ in 0..100 {
            counted();
            let r = self
                .http
                .post(&self.url)
                .header("If-Match", format!("\"{k}\""))
                .body(frame.clone())
                .send()
                .await?;
            match r.status() {
                reqwest::StatusCode::ACCEPTED => {
                    self.sent = k;
                    return Ok(());
                }
                reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                s => return Err(format!("send: HTTP {s}").into()),
            }
        }
        Err("send: the session stayed full".into())
    }

    async fn recv(&mut self) -> Result<Bytes, Error> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Ok(f);
            }
            counted();
            let r = self
                .http
                .get(&self.url)
                .header("If-None-Match", format!("\"{}\"", self.acked))
                .send()
                .await?;
            match r.status() {
                reqwest::StatusCode::NO_CONTENT => continue,
                reqwest::StatusCode::OK => {}
                s => return Err(format!("poll: HTTP {s}").into()),
            }
            let last: u64 = r
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .and_then(|t| t.trim_matches('"').parse().ok())
                .ok_or("poll: no ETag")?;
            let body = r.bytes().await?;
            let mut records = Vec::new();
            let mut rest = &body[..];
            while rest.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                rest = &rest[2..];
                if len == 0 {
                    let code = rest.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    return Err(format!("session closed with {code:?}").into());
                }
                let frame = rest.get(..len).ok_or("poll: truncated record")?;
                records.push(body.slice_ref(frame));
                rest = &rest[len..];
            }
            let first = last + 1 - records.len() as u64;
            for (n, f) in (first..).zip(records) {
                if n > self.acked {
                    self.ready.push_back(f);
                }
            }
            self.acked = last;
        }
    }

    async fn close(self) {
        counted();
        let _ = self.http.delete(&self.url).send().await;
    }
}

/// The next frame that is not a pushed list or heartbeat (a list
/// published after a companion subscribed reaches it too, whenever it
/// comes).
async fn next_non_push<W: Wire>(w: &mut W) -> Result<Bytes, Error> {
    loop {
        let bytes = w.recv().await?;
        if !matches!(
            bytes.first().copied().and_then(FrameType::from_byte),
            Some(FrameType::PublishList | FrameType::PublishHeartbeat)
        ) {
            return Ok(bytes);
        }
    }
}

/// An HTTP long-poll session [`Wire`] over one keep-alive HTTP/1.1
/// connection of its own, with requests written and answers parsed by hand
/// (what a load generator such as `wrk` does), so that the client's HTTP
/// stack costs little beside the relay's. The same requests as
/// [`PollWire`]; a session's requests never overlap (its flow is
/// sequential), so one connection carries them all.
pub struct RawPollWire {
    tcp: tokio::io::BufReader<TcpStream>,
    path: String,
    sent: u64,
    acked: u64,
    ready: VecDeque<Bytes>,
}

/// One HTTP answer: status, `ETag` (a number), body.
struct Answer {
    status: u16,
    etag: Option<u64>,
    body: Bytes,
}

impl RawPollWire {
    /// Opens a session as `role` on a new connection to `addr`.
    pub async fn open(addr: &str, role: &str) -> Result<Self, Error> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Self::open_on(tcp, role).await
    }

    /// Opens a session as `role` on a new connection to `addr` from the
    /// local address `from` ([`tcp_from`]).
    pub async fn open_from(
        addr: std::net::SocketAddr,
        role: &str,
        from: std::net::IpAddr,
    ) -> Result<Self, Error> {
        Self::open_on(tcp_from(addr, from).await?, role).await
    }

    /// Opens a session as `role` on `tcp`, a connection to the relay.
    pub async fn open_on(tcp: TcpStream, role: &str) -> Result<Self, Error> {
        let mut w = RawPollWire {
            tcp: tokio::io::BufReader::new(tcp),
            path: String::new(),
            sent: 0,
            acked: 0,
            ready: VecDeque::new(),
        };
        let a = w
            .request("POST", &format!("/v1/poll/{role}"), "", &[])
            .await?;
        if a.status != 201 {
            return Err(format!("open: HTTP {}", a.status).into());
        }
        w.path = format!("/v1/poll/session/{}", String::from_utf8_lossy(&a.body));
        Ok(w)
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        header: &str,
        body: &[u8],
    ) -> Result<Answer, Error> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        counted();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: relay\r\ncontent-length: {}\r\n{header}\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.tcp.get_mut().write_all(&req).await?;
        let mut status = None;
        let (mut length, mut etag) = (0usize, None);
        let mut line = String::new();
        loop {
            line.clear();
            if self.tcp.read_line(&mut line).await? == 0 {
                return Err("the relay closed the connection".into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status.is_none() {
                status = l.split_whitespace().nth(1).and_then(|c| c.parse().ok());
            } else if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse()?;
                } else if k.eq_ignore_ascii_case("etag") {
                    etag = v.trim_matches('"').parse().ok();
                }
            }
        }
        let mut body = vec![0u8; length];
        self.tcp.read_exact(&mut body).await?;
        Ok(Answer {
            status: status.ok_or("no status line")?,
            etag,
            body: Bytes::from(body),
        })
    }
}

impl Wire for RawPollWire {
    async fn send(&mut self, frame: Bytes) -> Result<(), Error> {
        let k = self.sent + 1;
        let path = self.path.clone();
        for _ in 0..100 {
            let a = self
                .request("POST", &path, &format!("if-match: \"{k}\"\r\n"), &frame)
                .await?;
            match a.status {
                202 => {
                    self.sent = k;
                    return Ok(());
                }
                429 => tokio::time::sleep(Duration::from_millis(1)).await,
                s => return Err(format!("send: HTTP {s}").into()),
            }
        }
        Err("send: the session stayed full".into())
    }

    async fn recv(&mut self) -> Result<Bytes, Error> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Ok(f);
            }
            let path = self.path.clone();
            let header = format!("if-none-match: \"{}\"\r\n", self.acked);
            let a = self.request("GET", &path, &header, &[]).await?;
            match a.status {
                204 => continue,
                200 => {}
                s => return Err(format!("poll: HTTP {s}").into()),
            }
            let last = a.etag.ok_or("poll: no ETag")?;
            let body = a.body;
            let mut records = Vec::new();
            let mut rest = &body[..];
            while rest.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                rest = &rest[2..];
                if len == 0 {
                    let code = rest.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    return Err(format!("session closed with {code:?}").into());
                }
                let frame = rest.get(..len).ok_or("poll: truncated record")?;
                records.push(body.slice_ref(frame));
                rest = &rest[len..];
            }
            let first = last + 1 - records.len() as u64;
            for (n, f) in (first..).zip(records) {
                if n > self.acked {
                    self.ready.push_back(f);
                }
            }
            self.acked = last;
        }
    }

    async fn close(mut self) {
        let path = self.path.clone();
        let _ = self.request("DELETE", &path, "", &[]).await;
    }
}

/// The companion's part of a pre-built pairing, as `CompanionClient` runs
/// it (identifying first if `identify`); with `lists`, it carries its
/// certificate's list and subscribes.
pub async fn companion_side<W: Wire>(
    w: &mut W,
    p: &Prebuilt,
    lists: bool,
    registered: tokio::sync::oneshot::Sender<()>,
    identify: bool,
) -> Result<(), Error> {
    if identify {
        w.send(p.c_identify.clone()).await?;
    }
    w.send(p.register.clone()).await?;
    if identify {
        expect_answer(w, FrameType::Identify).await?;
    }
    expect_answer(w, FrameType::Register).await?;
    let _ = registered.send(());
    expect_message(w, MessageKind::Hello).await?;
    w.send(p.request.clone()).await?;
    expect_answer(w, FrameType::Message).await?;
    expect_message(w, MessageKind::Grant).await?;
    w.send(p.confirm.clone()).await?;
    expect_answer(w, FrameType::Message).await?;
    if lists {
        w.send(p.c_list.clone()).await?;
        w.send(p.subscribe.clone()).await?;
        expect_answer(w, FrameType::PublishList).await?;
        expect_answer(w, FrameType::Subscribe).await?;
        expect_list(w).await?;
    }
    Ok(())
}

/// The phone's part of a pre-built pairing, as `PrimaryClient::link` runs
/// it (identifying first if `identify`); with `lists`, it proves the
/// account key, publishes the grant-time list before the Grant and the
/// final list after the Confirm.
pub async fn primary_side<W: Wire>(
    w: &mut W,
    p: &Prebuilt,
    lists: bool,
    registered: tokio::sync::oneshot::Receiver<()>,
    identify: bool,
) -> Result<(), Error> {
    if identify {
        w.send(p.p_identify.clone()).await?;
    }
    if lists {
        w.send(p.prove.clone()).await?;
    }
    registered.await?;
    w.send(p.hello.clone()).await?;
    if identify {
        expect_answer(w, FrameType::Identify).await?;
    }
    if lists {
        expect_answer(w, FrameType::ProveAccount).await?;
    }
    expect_answer(w, FrameType::Message).await?;
    expect_message(w, MessageKind::Request).await?;
    if lists {
        w.send(p.grant_list.clone()).await?;
    }
    w.send(p.grant.clone()).await?;
    if lists {
        expect_answer(w, FrameType::PublishList).await?;
    }
    expect_answer(w, FrameType::Message).await?;
    expect_message(w, MessageKind::Confirm).await?;
    if lists {
        w.send(p.p_list.clone()).await?;
        expect_answer(w, FrameType::PublishList).await?;
    }
    Ok(())
}

/// Reads the next frame and checks it is the answer to a frame of type
/// `of` (an Ack, or Routed for a Message); an Error frame fails with its
/// code.
pub async fn expect_answer<W: Wire>(w: &mut W, of: FrameType) -> Result<(), Error> {
    let bytes = next_non_push(w).await?;
    match Frame::decode(&bytes)? {
        Frame::Ack { of: got, .. } if got == of => Ok(()),
        Frame::Routed { .. } if of == FrameType::Message => Ok(()),
        Frame::Error { code, text } => Err(format!("{of:?} refused: {code} {text}").into()),
        other => Err(format!(
            "expected the answer to {of:?}, got {:?}",
            other.frame_type()
        )
        .into()),
    }
}

/// Reads the next frame and checks it is a forwarded message of `kind`.
pub async fn expect_message<W: Wire>(w: &mut W, kind: MessageKind) -> Result<(), Error> {
    let bytes = next_non_push(w).await?;
    match Frame::decode(&bytes)? {
        Frame::Message { header, .. } if header.kind == kind => Ok(()),
        Frame::Error { code, text } => Err(format!("waiting for {kind:?}: {code} {text}").into()),
        other => Err(format!("expected {kind:?}, got {:?}", other.frame_type()).into()),
    }
}

/// Reads the next frame and checks it is a pushed list.
pub async fn expect_list<W: Wire>(w: &mut W) -> Result<(), Error> {
    let bytes = w.recv().await?;
    match Frame::decode(&bytes)? {
        Frame::PublishList { .. } => Ok(()),
        other => Err(format!("expected a list, got {:?}", other.frame_type()).into()),
    }
}
