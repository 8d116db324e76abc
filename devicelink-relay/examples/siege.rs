//! The siege: one relay on SQLite with its production limits
//! (`Limits::default()`, every per-address budget on) while every attack
//! the budgets answer runs at full speed from its own loopback addresses,
//! and genuine companions and phones pair at a steady rate beside them, each
//! from addresses of its own. The same genuine load runs first without the
//! attackers (the quiet run), against a fresh relay and a fresh store.
//!
//! ```sh
//! cargo run --release -p devicelink-relay --example siege [-- \
//!     --pairings 300 --rate 5 --warmup 5 --per-address 4 --nice 19 \
//!     --attacks scan,sessions,tokens-anon,tokens-id,tombstones,accounts,slowloris,churn,poll,requests,mailboxes \
//!     --no-pin --timeline --paced]
//! ```
//!
//! - **The relay** is this example again (`--serve --db PATH`) in a child
//!   process pinned to CPU 1 (`taskset -c 1`): `Limits::default()`, a
//!   `SqliteStore` on the file the parent names (WAL, `synchronous =
//!   FULL`), `Relay::serve` on 127.0.0.1 (the default `Network`); it prints
//!   `listening ADDR` and serves until its stdin closes, then prints its
//!   counters.
//! - **This process** is pinned to CPU 0 (`taskset -a -p`). The genuine
//!   clients run on one tokio runtime; the attackers on another whose
//!   threads are reniced (`--nice`, 19 by default; 0 leaves them alone):
//!   real attackers are on other machines, and here they share the
//!   generator's core with the genuine clients, whose latency would
//!   otherwise measure the generator's queue. The attackers still take all
//!   the CPU the genuine clients leave.
//! - **Genuine load**: `--pairings` pairings started on a fixed schedule
//!   (`--rate` a second), in turn over WebSocket, HTTP long-poll and typed
//!   code. WebSocket and long-poll pairings are pre-built with the core
//!   (`load::prebuild`, real crypto before the clock starts) and replayed
//!   by thin clients as the relay's own clients run them: the phone
//!   identifies and proves its account key (`ProveAccount`), sends the
//!   Hello, publishes the grant-time list before the Grant and the final
//!   list after the Confirm; the companion registers, answers, carries its
//!   list and subscribes. Typed-code pairings run SPAKE2 for real
//!   (`CodeCompanion`, `Account::enter_code`) over `/v1/code`, the phone
//!   identified and proven. Pairing `i` has its companion on 127.1.x.y and
//!   its phone on 127.2.x.y (`y = i % 250 + 1`), so no genuine address
//!   comes near a per-address budget. A pairing's latency runs from the
//!   companion's first frame to both sides done; a pairing that fails or
//!   takes longer than 30 s is not linked.
//! - **Attacks** (`--per-address` addresses each, from 127.0.3.1 on; 44
//!   addresses with the defaults), all at once for the attacked window
//!   (`--warmup` seconds, then the genuine schedule, then stop):
//!   `scan` Join random handles on `/v1/code`, reconnecting when locked out
//!   or closed; `sessions` identified `/v1/code` clients Open sessions
//!   until refused; `tokens-anon` anonymous companions Register until
//!   refused and hold their connections; `tokens-id` identified companions
//!   with random secrets Register until refused and leave; `tombstones`
//!   complete pre-built pairings between two attacker connections (each
//!   leaves a redeemed token); `accounts` Identify, then ProveAccount and
//!   PublishList of self-signed lists of fresh account keys; `slowloris`
//!   300 connections an address, each a partial request header trickled a
//!   line a second until the relay ends it, then another (a second after
//!   a refusal: the flood of new connections is `churn`'s); `churn`
//!   connect and close as fast as the relay answers; `poll` `POST
//!   /v1/poll/companion` on keep-alive connections; `requests` `GET /` and
//!   `GET /healthz` on keep-alive connections; `mailboxes` identified
//!   clients that connect and leave. Each counts attempts, accepted and
//!   refused (by HTTP status, relay error code, close code, or the
//!   connection refused or reset). Full speed: each worker sends its next
//!   attempt as soon as the last one is answered, so what bounds an attack
//!   is the relay's per-address limits and this process's core.
//!
//! For the investigation: `--timeline` prints the relay's CPU share and
//! the slowest genuine pairing of each second; `--paced` keeps every
//! attacker within its address's rates (connections, requests, frames a
//! connection) while it still takes every budget it can: what the budgets
//! let attackers hold, without the cost of refusing them.
//!
//! The last line: `siege: genuine linked A/B, p99 attacked X ms vs quiet Y
//! ms, relay RSS peak Z MiB, store growth W MiB` (RSS: the attacked relay's
//! VmHWM; store: its SQLite files, database, `-wal` and `-shm`, at the end
//! of the attacked window less at its start). Everything is bounded: each
//! genuine pairing by 30 s, each attacker wait by 5 s, the attacked window
//! by the schedule plus 60 s.

mod load;

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use devicelink::certificate::{DeviceListDraft, DeviceListEntry};
use devicelink::code::{CodeHandle, TypedCode};
use devicelink::relay::AccountProof;
use devicelink::{
    Account, AccountKey, CodeCompanion, DeviceIdentity, DeviceIndex, DeviceLabel, Policy,
    SignedDeviceList, TokenId,
};
use devicelink_relay::code_frame::{is_code_frame, CodeFrame};
use devicelink_relay::server::{Clock, Limits, Relay, SystemClock};
use devicelink_relay::{ClientSecret, Frame, SqliteStore};
use futures_util::{SinkExt, StreamExt};
use load::{Args, Error, Hosted, Prebuilt, RawPollWire, StoreKind, Wire, WsWire};
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, RngCore, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{self, Message};

/// A genuine pairing that takes longer than this is not linked.
const PAIRING_LIMIT: Duration = Duration::from_secs(30);
/// Every single wait of an attacker.
const ATTACK_STEP: Duration = Duration::from_secs(5);
/// The attacked window ends at the latest this long after the schedule's.
const WINDOW_SLACK: Duration = Duration::from_secs(60);
/// Slowloris connections kept per address (the relay holds 256).
const SLOWLORIS_PER_ADDRESS: usize = 300;

const ATTACKS: [&str; 11] = [
    "scan",
    "sessions",
    "tokens-anon",
    "tokens-id",
    "tombstones",
    "accounts",
    "slowloris",
    "churn",
    "poll",
    "requests",
    "mailboxes",
];

fn main() -> Result<(), Error> {
    let args = Args::from_env();
    if args.flag("--serve") {
        return serve(&args);
    }
    let started = Instant::now();
    let cfg = Config::from_args(&args)?;

    // Pre-built pairings, on both cores before anything is pinned: the
    // genuine WebSocket and long-poll ones (the same in both runs, each run
    // on a fresh store), and the attackers' self-pairings.
    let run_id = u64::from(std::process::id()) << 20;
    let qr = cfg.pairings.div_ceil(3) * 2;
    let t = Instant::now();
    let genuine = Arc::new(load::prebuild(qr, 2, run_id, |i| i as u64)?);
    let tombstone_pairings = if cfg.attacks.iter().any(|a| a == "tombstones") {
        cfg.per_address * 350
    } else {
        0
    };
    let attacker_pairings = Arc::new(load::prebuild(tombstone_pairings, 2, run_id | 1, |i| {
        i as u64
    })?);
    println!(
        "siege: pre-built {} genuine and {} attacker pairings in {:.1} s; load average {}",
        genuine.len(),
        attacker_pairings.len(),
        t.elapsed().as_secs_f64(),
        load::loadavg()
    );

    if cfg.pin {
        // This process (every thread it starts) on CPU 0; the relay on 1.
        let me = std::process::id().to_string();
        let pinned = std::process::Command::new("taskset")
            .args(["-a", "-c", "-p", "0", &me])
            .stdout(std::process::Stdio::null())
            .status()?;
        if !pinned.success() {
            return Err("taskset failed".into());
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("siege-genuine")
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let limits = Limits::default();
    println!(
        "siege: relay {} with Limits::default(): per address {} TCP connections, {} new a second \
         (burst {}), {} requests a second (burst {}), {} sessions, {} tokens, {} new accounts an \
         hour, {} code sessions, {} mailboxes; per connection {} frames a second (burst {}); \
         attackers {}, their threads at nice {}",
        if cfg.pin {
            "child on CPU 1, clients on CPU 0,"
        } else {
            "child, unpinned,"
        },
        limits.max_http_connections_per_address,
        limits.connect_rate_per_address,
        limits.connect_burst_per_address,
        limits.request_rate_per_address,
        limits.request_burst_per_address,
        limits.max_connections_per_address,
        limits.max_tokens_per_address,
        limits.new_accounts_per_address_per_hour,
        limits.max_code_sessions_per_address,
        limits.mailboxes_per_address,
        limits.rate_per_second,
        limits.rate_burst,
        if cfg.paced {
            "paced within each address's rates (--paced)"
        } else {
            "at full speed"
        },
        cfg.nice,
    );
    println!(
        "siege: genuine load {} pairings at {}/s (WebSocket, long-poll, typed code in turn), \
         companions from 127.1.x.y, phones from 127.2.x.y, one address each",
        cfg.pairings, cfg.rate
    );

    let quiet = run(&cfg, &rt, &dir.path().join("quiet.db"), &genuine, None)?;
    quiet.print("quiet");
    if cfg.timeline {
        quiet.print_timeline("quiet");
    }
    let attacked = run(
        &cfg,
        &rt,
        &dir.path().join("attacked.db"),
        &genuine,
        Some(&attacker_pairings),
    )?;
    attacked.print("attacked");
    if cfg.timeline {
        attacked.print_timeline("attacked");
    }
    for a in &attacked.attacks {
        a.print(attacked.window);
    }
    let addresses = cfg.attacks.len() * cfg.per_address;
    let n = addresses as u64;
    println!(
        "siege: budgets for {addresses} attacker addresses: at most {} TCP connections, {} \
         sessions, {} tokens (tombstones included), {} new accounts an hour, {} code sessions, \
         {} mailboxes ({} MiB)",
        n * u64::from(limits.max_http_connections_per_address),
        n * u64::from(limits.max_connections_per_address),
        n * limits.max_tokens_per_address,
        n * u64::from(limits.new_accounts_per_address_per_hour),
        n * limits.max_code_sessions_per_address,
        n * limits.mailboxes_per_address,
        (n * limits.mailbox_bytes_per_address) >> 20,
    );
    let counters: Vec<&str> = attacked
        .metrics
        .iter()
        .filter(|m| !m.starts_with("store_call_seconds"))
        .map(String::as_str)
        .collect();
    println!("siege: attacked relay's counters: {}", counters.join(", "));

    let a = attacked.linked();
    let b = attacked.attempted;
    let x = load::pct_ms(&attacked.latencies, 0.99);
    let y = load::pct_ms(&quiet.latencies, 0.99);
    let z = attacked.hwm_kib as f64 / 1024.0;
    let w = attacked.growth() as f64 / (1024.0 * 1024.0);
    println!(
        "siege: targets: linked all {}, p99 within twice quiet {} ({x:.1} ≤ {:.1}); wall time {:.0} s",
        if a == b { "yes" } else { "NO" },
        if x <= 2.0 * y { "yes" } else { "NO" },
        2.0 * y,
        started.elapsed().as_secs_f64()
    );
    println!(
        "siege: genuine linked {a}/{b}, p99 attacked {x:.1} ms vs quiet {y:.1} ms, relay RSS peak {z:.1} MiB, store growth {w:.1} MiB"
    );
    Ok(())
}

// ---- configuration ------------------------------------------------------------------

struct Config {
    pairings: usize,
    rate: f64,
    warmup: Duration,
    per_address: usize,
    nice: i32,
    pin: bool,
    timeline: bool,
    paced: bool,
    attacks: Vec<String>,
}

impl Config {
    fn from_args(args: &Args) -> Result<Self, Error> {
        let attacks: Vec<String> = match args.string("--attacks") {
            Some(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
            None => ATTACKS.iter().map(|s| s.to_string()).collect(),
        };
        if let Some(bad) = attacks
            .iter()
            .find(|a| !ATTACKS.contains(&a.as_str()) && a.as_str() != "none")
        {
            return Err(format!("unknown attack {bad}; known: {}", ATTACKS.join(",")).into());
        }
        let attacks = attacks.into_iter().filter(|a| a != "none").collect();
        let per_address = args.get("--per-address", 4usize).clamp(1, 20);
        Ok(Config {
            pairings: args.get("--pairings", 300usize).clamp(3, 3_000),
            rate: args.get("--rate", 5.0f64).clamp(0.1, 100.0),
            warmup: Duration::from_secs_f64(args.get("--warmup", 5.0f64).clamp(0.0, 60.0)),
            per_address,
            nice: args.get("--nice", 19i32).clamp(0, 19),
            pin: !args.flag("--no-pin"),
            timeline: args.flag("--timeline"),
            paced: args.flag("--paced"),
            attacks,
        })
    }

    fn schedule(&self) -> Duration {
        Duration::from_secs_f64(self.pairings as f64 / self.rate)
    }
}

// ---- the relay, in a child process --------------------------------------------------

/// The child: the relay with `Limits::default()` on a SQLite file, until
/// stdin closes; then its counters.
fn serve(args: &Args) -> Result<(), Error> {
    let db = args.string("--db").ok_or("--serve needs --db PATH")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = SqliteStore::open(&db)?;
        let relay = Relay::new(
            store.clone(),
            &Policy::default(),
            Limits::default(),
            Arc::new(SystemClock),
        )?;
        let metrics = relay.metrics();
        let listener = devicelink_relay::server::listen("127.0.0.1:0".parse()?)?;
        println!("listening {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let stdin_closed = async move {
            let _ = tokio::task::spawn_blocking(|| {
                let mut sink = Vec::new();
                let _ = std::io::stdin().read_to_end(&mut sink);
            })
            .await;
        };
        let drained = relay.serve(listener, stdin_closed).await?;
        let stats = store.writer_stats();
        drop(store);
        println!("writer {} {}", stats.commits, stats.writes);
        for line in metrics.render().lines() {
            let histogram = line.contains("_bucket") && !line.contains("store_call_seconds");
            if !line.starts_with('#') && !histogram && !line.ends_with(" 0") {
                println!("metric {line}");
            }
        }
        if !drained.all_closed {
            println!("metric drain_still_open {}", drained.still_open);
        }
        Ok::<(), Error>(())
    })
}

/// Bytes of a SQLite database and its `-wal` and `-shm` files.
fn store_bytes(db: &Path) -> u64 {
    let mut total = 0;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        total += std::fs::metadata(PathBuf::from(p)).map_or(0, |m| m.len());
    }
    total
}

// ---- one run ----------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Ws,
    Poll,
    Code,
}

const TRANSPORTS: [(Transport, &str); 3] = [
    (Transport::Ws, "WebSocket"),
    (Transport::Poll, "long-poll"),
    (Transport::Code, "typed code"),
];

/// One genuine pairing's outcome.
struct Pairing {
    transport: Transport,
    /// From the companion's first frame to both sides done.
    latency: Result<Duration, String>,
    /// From the start (both sides connecting) to both sides done.
    with_connect: Option<Duration>,
    /// When it started, from the start of the schedule.
    at: Duration,
}

struct RunReport {
    attempted: usize,
    pairings: Vec<Pairing>,
    latencies: Vec<Duration>,
    with_connect: Vec<Duration>,
    window: Duration,
    relay_cpu: f64,
    relay_kernel: f64,
    hwm_kib: u64,
    rss_kib: u64,
    store_start: u64,
    store_end: u64,
    store_after_stop: u64,
    metrics: Vec<String>,
    attacks: Vec<AttackReport>,
    load_average: String,
    /// The relay's CPU seconds every half second from the start of the
    /// genuine schedule.
    cpu_samples: Vec<(Duration, f64)>,
    /// How late the genuine runtime's 5 ms sleeps woke, sorted.
    lateness: Vec<Duration>,
}

impl RunReport {
    fn linked(&self) -> usize {
        self.latencies.len()
    }

    fn growth(&self) -> u64 {
        self.store_end.saturating_sub(self.store_start)
    }

    /// A line a second: the relay's CPU share, the genuine pairings
    /// started, their slowest.
    fn print_timeline(&self, name: &str) {
        let seconds = self
            .cpu_samples
            .last()
            .map_or(0, |(t, _)| t.as_secs() as usize);
        for sec in 0..seconds {
            let cpu_at = |t: f64| {
                self.cpu_samples
                    .iter()
                    .find(|(at, _)| at.as_secs_f64() >= t)
                    .map_or(f64::NAN, |(_, c)| *c)
            };
            let cpu = cpu_at(sec as f64 + 1.0) - cpu_at(sec as f64);
            let started: Vec<&Pairing> = self
                .pairings
                .iter()
                .filter(|p| p.at.as_secs() as usize == sec)
                .collect();
            let slowest = started
                .iter()
                .filter_map(|p| p.latency.clone().ok())
                .max()
                .unwrap_or_default();
            println!(
                "{name} timeline {sec:>3} s: relay CPU {:>3.0} %, {} pairings started, slowest {:.1} ms",
                100.0 * cpu,
                started.len(),
                slowest.as_secs_f64() * 1e3
            );
        }
    }

    fn print(&self, name: &str) {
        let per: Vec<String> = TRANSPORTS
            .iter()
            .map(|(t, label)| {
                let of = self.pairings.iter().filter(|p| p.transport == *t);
                let linked = of.clone().filter(|p| p.latency.is_ok()).count();
                let mut l: Vec<Duration> = of.filter_map(|p| p.latency.clone().ok()).collect();
                l.sort();
                format!(
                    "{label} {linked}/{} p99 {:.1} ms",
                    self.pairings.iter().filter(|p| p.transport == *t).count(),
                    load::pct_ms(&l, 0.99)
                )
            })
            .collect();
        println!(
            "{name}: genuine linked {}/{} ({}); latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms; with connecting p99 {:.1} ms; window {:.1} s, relay CPU {:.1} s ({:.0} % \
             of its core, {:.0} % of that in the kernel), RSS peak {:.1} MiB (now {:.1}), store {:.2} → {:.2} MiB (growth {:.2} \
             MiB; {:.2} MiB after its shutdown); load average {}",
            self.linked(),
            self.attempted,
            per.join(", "),
            load::pct_ms(&self.latencies, 0.5),
            load::pct_ms(&self.latencies, 0.9),
            load::pct_ms(&self.latencies, 0.99),
            load::pct_ms(&self.latencies, 1.0),
            load::pct_ms(&self.with_connect, 0.99),
            self.window.as_secs_f64(),
            self.relay_cpu,
            100.0 * self.relay_cpu / self.window.as_secs_f64(),
            100.0 * self.relay_kernel / self.relay_cpu,
            self.hwm_kib as f64 / 1024.0,
            self.rss_kib as f64 / 1024.0,
            self.store_start as f64 / 1048576.0,
            self.store_end as f64 / 1048576.0,
            self.growth() as f64 / 1048576.0,
            self.store_after_stop as f64 / 1048576.0,
            self.load_average,
        );
        let mut slowest: Vec<&Pairing> =
            self.pairings.iter().filter(|p| p.latency.is_ok()).collect();
        slowest.sort_by_key(|p| std::cmp::Reverse(p.latency.clone().unwrap_or_default()));
        let slowest: Vec<String> = slowest
            .iter()
            .take(4)
            .map(|p| {
                let label = TRANSPORTS
                    .iter()
                    .find(|(t, _)| *t == p.transport)
                    .map_or("", |(_, l)| l);
                format!(
                    "{:.1} ms ({label} at {:.1} s)",
                    p.latency.clone().unwrap_or_default().as_secs_f64() * 1e3,
                    p.at.as_secs_f64()
                )
            })
            .collect();
        println!(
            "{name}: slowest pairings: {}; the genuine clients' runtime woke late by p50 {:.2} ms, \
             p99 {:.2} ms, max {:.2} ms",
            slowest.join(", "),
            load::pct_ms(&self.lateness, 0.5),
            load::pct_ms(&self.lateness, 0.99),
            load::pct_ms(&self.lateness, 1.0),
        );
        let buckets: Vec<(String, f64)> = self
            .metrics
            .iter()
            .filter_map(|m| {
                let rest = m.strip_prefix("store_call_seconds_bucket{le=\"")?;
                let (le, n) = rest.split_once("\"} ")?;
                Some((le.to_string(), n.parse().ok()?))
            })
            .collect();
        if let Some((_, all)) = buckets.last() {
            let shares: Vec<String> = buckets
                .iter()
                .filter(|(le, _)| ["0.001", "0.01", "0.1"].contains(&le.as_str()))
                .map(|(le, n)| format!("{:.2} % within {le} s", 100.0 * n / all))
                .collect();
            println!("{name}: relay store calls: {all} ({})", shares.join(", "));
        }
        let mut failures: BTreeMap<String, usize> = BTreeMap::new();
        for p in &self.pairings {
            if let Err(e) = &p.latency {
                *failures.entry(e.chars().take(120).collect()).or_default() += 1;
            }
        }
        for (e, n) in failures {
            println!("{name}: genuine failure ×{n}: {e}");
        }
    }
}

/// One run: a fresh relay child on a fresh SQLite file, the genuine
/// schedule, and with `attackers` (their pre-built pairings) every attack
/// from the start of the window to the end of the schedule.
fn run(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    db: &Path,
    genuine: &Arc<Vec<Prebuilt>>,
    attackers: Option<&Arc<Vec<Prebuilt>>>,
) -> Result<RunReport, Error> {
    let extra = vec!["--db".to_string(), db.display().to_string()];
    let hosted = Hosted::child(StoreKind::Sqlite, cfg.pin.then_some("1"), &extra)?;
    let pid = hosted.pid().ok_or("no child")?;
    let relay: SocketAddr = hosted.http.trim_start_matches("http://").parse()?;
    let store_start = store_bytes(db);
    let (user0, kernel0) = load::cpu_user_system(pid).unwrap_or((f64::NAN, f64::NAN));
    let window_start = Instant::now();
    let hard_end = tokio::time::Instant::now() + cfg.warmup + cfg.schedule() + WINDOW_SLACK;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut siege = None;
    if let Some(pairings) = attackers {
        let nice = cfg.nice;
        let attack_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("siege-attacker")
            .on_thread_start(move || renice_this_thread(nice))
            .enable_all()
            .build()?;
        let attacks = start_attacks(
            attack_rt.handle(),
            cfg,
            relay,
            stop_rx.clone(),
            hard_end,
            pairings.clone(),
        );
        siege = Some((attack_rt, attacks));
    }

    let (pairings, cpu_samples) = rt.block_on(async {
        if siege.is_some() {
            tokio::time::sleep(cfg.warmup).await;
        }
        let (done_tx, mut done_rx) = watch::channel(false);
        let sampler = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut samples = Vec::new();
            loop {
                tokio::select! {
                    _ = done_rx.wait_for(|d| *d) => break,
                    _ = tick.tick() => {
                        samples.push((start.elapsed(), load::cpu_seconds(pid).unwrap_or(f64::NAN)));
                    }
                }
            }
            samples
        });
        // How late the genuine clients' runtime wakes (a 5 ms sleep): the
        // generator's own queue, beside the relay's.
        let mut done = done_tx.subscribe();
        let probe = tokio::spawn(async move {
            let mut late = Vec::new();
            while !*done.borrow_and_update() {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(5)).await;
                late.push(t.elapsed().saturating_sub(Duration::from_millis(5)));
            }
            late
        });
        let pairings = genuine_load(relay, genuine.clone(), cfg.pairings, cfg.rate).await;
        let _ = done_tx.send(true);
        let mut late = probe.await.unwrap_or_default();
        late.sort();
        (pairings, (sampler.await.unwrap_or_default(), late))
    });
    let (cpu_samples, lateness) = cpu_samples;

    let _ = stop_tx.send(true);
    let mut attacks = Vec::new();
    if let Some((attack_rt, running)) = siege {
        // Every task ends at the stop signal; all are awaited within 10 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for a in running {
            let ended = attack_rt.block_on(async {
                let mut all = true;
                for h in a.tasks {
                    all &= tokio::time::timeout_at(deadline, h).await.is_ok();
                }
                all
            });
            attacks.push(AttackReport {
                name: a.name,
                unit: a.unit,
                from: a.from,
                workers: a.workers,
                counts: a.counts,
                ended,
            });
        }
        attack_rt.shutdown_timeout(Duration::from_secs(2));
    }
    let window = window_start.elapsed();
    let (user1, kernel1) = load::cpu_user_system(pid).unwrap_or((f64::NAN, f64::NAN));
    let (relay_cpu, relay_kernel) = (user1 + kernel1 - user0 - kernel0, kernel1 - kernel0);
    let (rss_kib, hwm_kib) = load::memory_kib(pid).unwrap_or((0, 0));
    let store_end = store_bytes(db);
    let load_average = load::loadavg();
    let report = rt.block_on(hosted.stop())?;
    let store_after_stop = store_bytes(db);

    let mut latencies: Vec<Duration> = pairings
        .iter()
        .filter_map(|p| p.latency.clone().ok())
        .collect();
    latencies.sort();
    let mut with_connect: Vec<Duration> = pairings.iter().filter_map(|p| p.with_connect).collect();
    with_connect.sort();
    let metrics = report
        .metrics
        .iter()
        .map(|m| m.trim_start_matches("devicelink_").to_string())
        .collect();
    Ok(RunReport {
        attempted: pairings.len(),
        pairings,
        latencies,
        with_connect,
        window,
        relay_cpu,
        relay_kernel,
        hwm_kib,
        rss_kib,
        store_start,
        store_end,
        store_after_stop,
        metrics,
        attacks,
        load_average,
        cpu_samples,
        lateness,
    })
}

/// Lowers this thread's priority (`renice` on its thread id: on Linux a
/// thread's nice value is its own).
fn renice_this_thread(nice: i32) {
    if nice == 0 {
        return;
    }
    let Ok(me) = std::fs::read_link("/proc/thread-self") else {
        return;
    };
    let Some(tid) = me.file_name().and_then(|t| t.to_str()).map(str::to_string) else {
        return;
    };
    let _ = std::process::Command::new("renice")
        .args(["-n", &nice.to_string(), "-p", &tid])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

// ---- genuine load -------------------------------------------------------------------------

fn genuine_addresses(i: usize) -> (IpAddr, IpAddr) {
    let (x, y) = ((i / 250) as u8, (i % 250 + 1) as u8);
    (
        IpAddr::V4(Ipv4Addr::new(127, 1, x, y)),
        IpAddr::V4(Ipv4Addr::new(127, 2, x, y)),
    )
}

/// Starts pairing `i` at `i / rate` seconds, whatever is in flight (open
/// loop: a pairing's latency is its own, not a queue's).
async fn genuine_load(
    relay: SocketAddr,
    prebuilt: Arc<Vec<Prebuilt>>,
    n: usize,
    rate: f64,
) -> Vec<Pairing> {
    let start = tokio::time::Instant::now();
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut qr = 0usize;
    let mut tasks: Vec<(Transport, JoinHandle<Pairing>)> = Vec::new();
    for i in 0..n {
        tokio::time::sleep_until(start + every.mul_f64(i as f64)).await;
        let transport = TRANSPORTS[i % 3].0;
        let (c_from, p_from) = genuine_addresses(i);
        let prebuilt = prebuilt.clone();
        let index = qr;
        let at = start.elapsed();
        if transport != Transport::Code {
            qr += 1;
        }
        tasks.push((
            transport,
            tokio::spawn(async move {
                let started = Instant::now();
                let work = async {
                    match transport {
                        Transport::Code => code_pairing(relay, c_from, p_from).await,
                        _ => {
                            let p = prebuilt.get(index).ok_or("too few pre-built pairings")?;
                            qr_pairing(relay, p, transport == Transport::Poll, c_from, p_from).await
                        }
                    }
                };
                let latency = match tokio::time::timeout(PAIRING_LIMIT, work).await {
                    Ok(Ok(d)) => Ok(d),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("not linked within {PAIRING_LIMIT:?}")),
                };
                Pairing {
                    transport,
                    with_connect: latency.is_ok().then(|| started.elapsed()),
                    latency,
                    at,
                }
            }),
        ));
    }
    let mut out = Vec::with_capacity(n);
    for (transport, t) in tasks {
        out.push(t.await.unwrap_or_else(|e| Pairing {
            transport,
            latency: Err(format!("task failed: {e}")),
            with_connect: None,
            at: Duration::ZERO,
        }));
    }
    out
}

/// A WebSocket or a long-poll session.
enum Conn {
    Ws(Box<WsWire>),
    Poll(RawPollWire),
}

async fn open(relay: SocketAddr, role: &str, from: IpAddr, poll: bool) -> Result<Conn, Error> {
    Ok(if poll {
        Conn::Poll(RawPollWire::open_from(relay, role, from).await?)
    } else {
        Conn::Ws(Box::new(WsWire(
            load::ws_connect_from(relay, &format!("/v1/{role}"), from).await?,
        )))
    })
}

impl Wire for Conn {
    async fn send(&mut self, frame: Bytes) -> Result<(), Error> {
        match self {
            Conn::Ws(w) => w.send(frame).await,
            Conn::Poll(w) => w.send(frame).await,
        }
    }

    async fn recv(&mut self) -> Result<Bytes, Error> {
        match self {
            Conn::Ws(w) => w.recv().await,
            Conn::Poll(w) => w.recv().await,
        }
    }

    async fn close(self) {
        match self {
            Conn::Ws(w) => w.close().await,
            Conn::Poll(w) => w.close().await,
        }
    }
}

/// One genuine pre-built pairing over WebSockets or long-poll, each side on
/// a fresh connection from its own address.
async fn qr_pairing(
    relay: SocketAddr,
    p: &Prebuilt,
    poll: bool,
    c_from: IpAddr,
    p_from: IpAddr,
) -> Result<Duration, Error> {
    let (tx, rx) = oneshot::channel();
    let companion = async {
        let mut w = open(relay, "companion", c_from, poll)
            .await
            .map_err(|e| format!("companion connect: {e}"))?;
        let t0 = Instant::now();
        let r = load::companion_side(&mut w, p, true, tx, true).await;
        let done = Instant::now();
        w.close().await;
        r.map_err(|e| format!("companion: {e}"))?;
        Ok::<_, Error>((t0, done))
    };
    let primary = async {
        let mut w = open(relay, "primary", p_from, poll)
            .await
            .map_err(|e| format!("phone connect: {e}"))?;
        let r = load::primary_side(&mut w, p, true, rx, true).await;
        let done = Instant::now();
        w.close().await;
        r.map_err(|e| format!("phone: {e}"))?;
        Ok::<_, Error>(done)
    };
    let (c, q) = tokio::join!(companion, primary);
    let (t0, c_done) = c?;
    let p_done = q?;
    Ok(c_done.max(p_done).duration_since(t0))
}

/// A `/v1/code` WebSocket: code frames and the relay's own, with the other
/// side's messages (Routed) kept aside while an answer is awaited.
struct CodeWs {
    ws: load::Ws,
    routed: VecDeque<Vec<u8>>,
}

impl CodeWs {
    async fn connect(relay: SocketAddr, from: IpAddr) -> Result<Self, Error> {
        Ok(CodeWs {
            ws: load::ws_connect_from(relay, "/v1/code", from).await?,
            routed: VecDeque::new(),
        })
    }

    async fn next(&mut self) -> Result<Bytes, Error> {
        loop {
            match self.ws.next().await {
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

    /// Sends `frame`; its answer (a Routed frame meanwhile is kept).
    async fn call(&mut self, frame: Vec<u8>) -> Result<Bytes, Error> {
        self.ws.send(Message::Binary(frame.into())).await?;
        loop {
            let b = self.next().await?;
            if b.first().copied().is_some_and(is_code_frame) {
                match CodeFrame::decode(&b)? {
                    CodeFrame::Routed(m) => self.routed.push_back(m.to_vec()),
                    CodeFrame::Spent(_) => return Err("the code was spent".into()),
                    _ => return Ok(b),
                }
            } else if let Frame::Error { code, text } = Frame::decode(&b)? {
                return Err(format!("refused: {code} {text}").into());
            } else {
                return Ok(b);
            }
        }
    }

    async fn call_ok(&mut self, frame: Vec<u8>) -> Result<(), Error> {
        let b = self.call(frame).await?;
        match CodeFrame::decode(&b) {
            Ok(CodeFrame::Ok) => Ok(()),
            _ => Err(format!("expected Ok, got {:02x?}", b.first()).into()),
        }
    }

    /// The next message from the other side.
    async fn routed(&mut self) -> Result<Vec<u8>, Error> {
        if let Some(m) = self.routed.pop_front() {
            return Ok(m);
        }
        let b = self.next().await?;
        if b.first().copied().is_some_and(is_code_frame) {
            match CodeFrame::decode(&b)? {
                CodeFrame::Routed(m) => Ok(m.to_vec()),
                CodeFrame::Spent(_) => Err("the code was spent".into()),
                other => Err(format!("expected a routed message, got {other:?}").into()),
            }
        } else {
            match Frame::decode(&b)? {
                Frame::Error { code, text } => Err(format!("refused: {code} {text}").into()),
                other => Err(format!("expected a routed message, got {other:?}").into()),
            }
        }
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// One genuine typed-code pairing with real SPAKE2 over `/v1/code`: the
/// companion opens a session and shows a code, the phone (identified, its
/// account key proven) joins with the handle and links.
async fn code_pairing(
    relay: SocketAddr,
    c_from: IpAddr,
    p_from: IpAddr,
) -> Result<Duration, Error> {
    let clock = SystemClock;
    let (code_tx, code_rx) = oneshot::channel::<String>();
    let companion = async {
        let mut ws = CodeWs::connect(relay, c_from)
            .await
            .map_err(|e| format!("companion connect: {e}"))?;
        let t0 = Instant::now();
        let r = async {
            let handle = match CodeFrame::decode(&ws.call(CodeFrame::Open.encode()).await?)? {
                CodeFrame::Opened { handle, .. } => handle,
                other => return Err(format!("expected Opened, got {other:?}").into()),
            };
            let mut shown = CodeCompanion::new(
                DeviceIdentity::generate(&mut OsRng),
                DeviceLabel::new("siege")?,
                handle,
                &Policy::default(),
                &mut OsRng,
                clock.now(),
            );
            let offer = shown.offer_message().ok_or("no code offer")?.to_vec();
            ws.call_ok(CodeFrame::Publish(&offer).encode()).await?;
            let _ = code_tx.send(shown.code_text().ok_or("no code")?);
            let hello = ws.routed().await?;
            let accepted = shown.receive_hello(&hello, &mut OsRng, clock.now())?;
            ws.call_ok(CodeFrame::Message(&accepted.confirm).encode())
                .await?;
            ws.call_ok(CodeFrame::Message(&accepted.request).encode())
                .await?;
            let grant = ws.routed().await?;
            let mut linked = accepted.companion;
            linked.receive_grant(&grant, clock.now())?;
            let confirm = linked.consent(clock.now())?;
            ws.call_ok(CodeFrame::Message(&confirm).encode()).await?;
            Ok::<_, Error>(())
        }
        .await;
        let done = Instant::now();
        ws.close().await;
        r.map_err(|e| format!("companion: {e}"))?;
        Ok::<_, Error>((t0, done))
    };
    let phone = async {
        let mut ws = CodeWs::connect(relay, p_from)
            .await
            .map_err(|e| format!("phone connect: {e}"))?;
        let r = async {
            let secret = ClientSecret::generate(&mut OsRng);
            let mut account = Account::generate(Policy::default(), &mut OsRng, clock.now());
            ws.call(
                Frame::Identify {
                    secret: secret.clone(),
                }
                .encode(),
            )
            .await?;
            ws.call(
                Frame::ProveAccount {
                    account: account.account_id(),
                    proof: AccountProof::sign(account.key(), secret.client_id()),
                }
                .encode(),
            )
            .await?;
            let text = code_rx.await.map_err(|_| "the companion showed no code")?;
            let typed = TypedCode::parse(&text)?;
            account.open_link_intent(clock.now());
            let offer =
                match CodeFrame::decode(&ws.call(CodeFrame::Join(typed.handle()).encode()).await?)?
                {
                    CodeFrame::Offer(o) => o.to_vec(),
                    other => return Err(format!("expected the offer, got {other:?}").into()),
                };
            let (mut entry, hello) = account.enter_code(&typed, &offer, &mut OsRng, clock.now())?;
            ws.call_ok(CodeFrame::Message(&hello).encode()).await?;
            let confirm = ws.routed().await?;
            let mut handshake = entry.receive_confirm(&confirm, clock.now())?;
            let request = ws.routed().await?;
            account.receive_request(&mut handshake, &request, &mut OsRng, clock.now())?;
            let grant = account.grant(&mut handshake, &mut OsRng, clock.now())?;
            ws.call_ok(CodeFrame::Message(&grant).encode()).await?;
            let confirm = ws.routed().await?;
            account.confirm(&mut handshake, &confirm, clock.now())?;
            Ok::<_, Error>(())
        }
        .await;
        let done = Instant::now();
        ws.close().await;
        r.map_err(|e| format!("phone: {e}"))?;
        Ok::<_, Error>(done)
    };
    let (c, p) = tokio::join!(companion, phone);
    let (t0, c_done) = c?;
    let p_done = p?;
    Ok(c_done.max(p_done).duration_since(t0))
}

// ---- attacks --------------------------------------------------------------------------------

/// What an attack counted.
#[derive(Default)]
struct Counts {
    attempts: AtomicU64,
    accepted: AtomicU64,
    refused: Mutex<BTreeMap<String, u64>>,
    /// Other observations (not attempts).
    notes: Mutex<BTreeMap<String, u64>>,
}

impl Counts {
    fn attempt(&self) {
        self.attempts.fetch_add(1, Relaxed);
    }

    fn accept(&self) {
        self.accepted.fetch_add(1, Relaxed);
    }

    fn refuse(&self, why: impl Into<String>) {
        let mut m = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(why.into()).or_default() += 1;
    }

    fn note(&self, what: impl Into<String>) {
        let mut m = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(what.into()).or_default() += 1;
    }
}

struct Running {
    name: &'static str,
    unit: &'static str,
    from: String,
    workers: usize,
    counts: Arc<Counts>,
    tasks: Vec<JoinHandle<()>>,
}

struct AttackReport {
    name: &'static str,
    unit: &'static str,
    from: String,
    workers: usize,
    counts: Arc<Counts>,
    ended: bool,
}

impl AttackReport {
    fn print(&self, window: Duration) {
        let attempts = self.counts.attempts.load(Relaxed);
        let accepted = self.counts.accepted.load(Relaxed);
        let refused = self
            .counts
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let total: u64 = refused.values().sum();
        let mut by: Vec<(&String, &u64)> = refused.iter().collect();
        by.sort_by(|a, b| b.1.cmp(a.1));
        let reasons: Vec<String> = by.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
        let notes = self.counts.notes.lock().unwrap_or_else(|e| e.into_inner());
        let notes: Vec<String> = notes.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
        println!(
            "attack {}: {attempts} {} ({:.0}/s) from {} ({} workers), {accepted} accepted, {total} \
             refused [{}]{}{}",
            self.name,
            self.unit,
            attempts as f64 / window.as_secs_f64(),
            self.from,
            self.workers,
            reasons.join(", "),
            if notes.is_empty() {
                String::new()
            } else {
                format!("; {}", notes.join(", "))
            },
            if self.ended { "" } else { "; STILL RUNNING at the end" },
        );
    }
}

/// Everything an attack worker needs.
#[derive(Clone)]
struct Ctx {
    relay: SocketAddr,
    from: IpAddr,
    counts: Arc<Counts>,
    /// With `--paced`: the address's connections and HTTP requests spaced
    /// within its limits, and each connection's frames.
    pace: Option<(Arc<Pacer>, Arc<Pacer>)>,
}

/// Attempts of one address spaced `every` apart (`--paced`: an attacker
/// that stays within the relay's per-address rates, so that it costs the
/// relay only what the budgets let it hold).
struct Pacer {
    every: Duration,
    next: Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn per_second(rate: u32) -> Arc<Self> {
        // 90 % of the limit: timing jitter never crosses it.
        Arc::new(Pacer {
            every: Duration::from_secs_f64(1.0 / (0.9 * f64::from(rate.max(1)))),
            next: Mutex::new(tokio::time::Instant::now()),
        })
    }

    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + self.every;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

impl Ctx {
    /// Waits for the address's next connection slot (paced only).
    async fn connect_slot(&self) {
        if let Some((connects, _)) = &self.pace {
            connects.wait().await;
        }
    }

    /// Waits for the address's next request slot (paced only).
    async fn request_slot(&self) {
        if let Some((_, requests)) = &self.pace {
            requests.wait().await;
        }
    }

    /// Spaces a connection's frames within its rate (paced only).
    async fn frame_slot(&self) {
        if self.pace.is_some() {
            let limits = Limits::default();
            let every = 1.0 / (0.9 * f64::from(limits.rate_per_second.max(1)));
            tokio::time::sleep(Duration::from_secs_f64(every)).await;
        }
    }
}

fn start_attacks(
    rt: &tokio::runtime::Handle,
    cfg: &Config,
    relay: SocketAddr,
    stop: watch::Receiver<bool>,
    hard_end: tokio::time::Instant,
    pairings: Arc<Vec<Prebuilt>>,
) -> Vec<Running> {
    let mut out = Vec::new();
    let next_pairing = Arc::new(AtomicUsize::new(0));
    for (k, name) in cfg.attacks.iter().enumerate() {
        let name: &'static str = ATTACKS
            .iter()
            .find(|a| **a == name.as_str())
            .copied()
            .unwrap_or("?");
        let first = k * cfg.per_address + 1;
        let addresses: Vec<IpAddr> = (first..first + cfg.per_address)
            .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 3, n as u8)))
            .collect();
        let from = format!("127.0.3.{first}-{}", first + cfg.per_address - 1);
        let counts = Arc::new(Counts::default());
        let (unit, per_address) = match name {
            "scan" => ("Join frames", 4),
            "sessions" => ("Open frames", 2),
            "tokens-anon" | "tokens-id" => ("Register frames", 4),
            "tombstones" => ("self-pairings", 4),
            "accounts" => ("new accounts", 2),
            "slowloris" => ("held connections", SLOWLORIS_PER_ADDRESS),
            "churn" => ("connections", 8),
            "poll" => ("session POSTs", 4),
            "requests" => ("GETs", 4),
            _ => ("identified connections", 4),
        };
        let mut tasks = Vec::new();
        let limits = Limits::default();
        for from in &addresses {
            let pace = cfg.paced.then(|| {
                (
                    Pacer::per_second(limits.connect_rate_per_address),
                    Pacer::per_second(limits.request_rate_per_address),
                )
            });
            for w in 0..per_address {
                let ctx = Ctx {
                    relay,
                    from: *from,
                    counts: counts.clone(),
                    pace: pace.clone(),
                };
                let stop_w = stop.clone();
                let (pairings, next_pairing) = (pairings.clone(), next_pairing.clone());
                let work = async move {
                    let stop_h = stop_w.clone();
                    match name {
                        "scan" => scan(ctx).await,
                        "sessions" => code_sessions(ctx).await,
                        "tokens-anon" => tokens(ctx, false, stop_h).await,
                        "tokens-id" => tokens(ctx, true, stop_h).await,
                        "tombstones" => tombstones(ctx, pairings, next_pairing).await,
                        "accounts" => accounts(ctx).await,
                        "slowloris" => {
                            // Spread the first connections over a second.
                            let at = Duration::from_millis(
                                (w as u64 * 1000) / SLOWLORIS_PER_ADDRESS as u64,
                            );
                            tokio::time::sleep(at).await;
                            slowloris(ctx).await
                        }
                        "churn" => churn(ctx).await,
                        "poll" => http_flood(ctx, Flood::PollSessions).await,
                        "requests" => http_flood(ctx, Flood::Requests).await,
                        _ => mailboxes(ctx).await,
                    }
                };
                tasks.push(rt.spawn(until(stop.clone(), hard_end, work)));
            }
        }
        out.push(Running {
            name,
            unit,
            from,
            workers: tasks.len(),
            counts,
            tasks,
        });
    }
    out
}

/// Runs `work` until the stop signal or `hard_end`.
async fn until(
    mut stop: watch::Receiver<bool>,
    hard_end: tokio::time::Instant,
    work: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = tokio::time::sleep_until(hard_end) => {}
        () = work => {}
    }
}

/// Why a connection attempt failed, as the attacker sees it.
fn conn_refusal(e: &Error) -> String {
    if let Some(t) = e.downcast_ref::<tungstenite::Error>() {
        return match t {
            tungstenite::Error::Http(r) => format!("HTTP {}", r.status().as_u16()),
            tungstenite::Error::Io(io) => io_refusal(io),
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                "closed".into()
            }
            tungstenite::Error::Protocol(_) => "closed before the upgrade".into(),
            other => format!("websocket: {other}"),
        };
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return io_refusal(io);
    }
    if e.is::<tokio::time::error::Elapsed>() {
        return "timeout".into();
    }
    let s = e.to_string();
    s.chars().take(60).collect()
}

fn io_refusal(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted => "reset".into(),
        K::TimedOut => "timeout".into(),
        K::AddrNotAvailable | K::AddrInUse => "no local port".into(),
        K::UnexpectedEof => "closed".into(),
        k => format!("io {k:?}"),
    }
}

/// A relay error frame as a reason: its code, and the budget's scope or a
/// lockout when its text names one.
fn error_reason(code: u16, text: &str) -> String {
    if text.contains("locked out") {
        return format!("error {code} locked out");
    }
    let scope = text
        .split(['(', ',', ')'])
        .nth(1)
        .filter(|s| s.len() < 12 && s.chars().all(|c| c.is_ascii_alphabetic()));
    match scope {
        Some(s) => format!("error {code} ({s})"),
        None => format!("error {code}"),
    }
}

/// What came back on an attacker's WebSocket.
enum Reply {
    Frame(Bytes),
    Error(String),
    Ended(String),
}

async fn reply(ws: &mut load::Ws) -> Reply {
    loop {
        match tokio::time::timeout(ATTACK_STEP, ws.next()).await {
            Err(_) => return Reply::Ended("timeout".into()),
            Ok(None) => return Reply::Ended("closed".into()),
            Ok(Some(Err(e))) => return Reply::Ended(conn_refusal(&Error::from(e))),
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Ok(Frame::Error { code, text }) = Frame::decode(&b) {
                    return Reply::Error(error_reason(code, text));
                }
                return Reply::Frame(b);
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                return Reply::Ended(match f {
                    Some(f) => format!("close {}", u16::from(f.code)),
                    None => "close".into(),
                })
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn send(ws: &mut load::Ws, frame: Vec<u8>) -> Result<(), String> {
    match tokio::time::timeout(ATTACK_STEP, ws.send(Message::Binary(frame.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(conn_refusal(&Error::from(e))),
        Err(_) => Err("timeout".into()),
    }
}

/// A WebSocket from the attacker's address, or the attempt counted as
/// refused.
async fn attacker_ws(ctx: &Ctx, path: &str) -> Option<load::Ws> {
    ctx.connect_slot().await;
    match load::ws_connect_from(ctx.relay, path, ctx.from).await {
        Ok(ws) => Some(ws),
        Err(e) => {
            ctx.counts.attempt();
            ctx.counts.refuse(conn_refusal(&e));
            tokio::task::yield_now().await;
            None
        }
    }
}

/// Identifies as a fresh attacker client (a random secret): its client
/// id, or `None` (counted as a refused attempt).
async fn identify(
    ctx: &Ctx,
    ws: &mut load::Ws,
    rng: &mut ChaCha20Rng,
) -> Option<devicelink::relay::ClientId> {
    let secret = ClientSecret::generate(rng);
    let client = secret.client_id();
    let why = match send(ws, Frame::Identify { secret }.encode()).await {
        Err(why) => why,
        Ok(()) => match reply(ws).await {
            Reply::Frame(_) => return Some(client),
            Reply::Error(why) | Reply::Ended(why) => why,
        },
    };
    ctx.counts.attempt();
    ctx.counts.refuse(why);
    None
}

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(OsRng.next_u64())
}

/// (1) Code-handle scanning: Join random handles on `/v1/code`, as fast as
/// the relay answers, reconnecting when locked out or closed.
async fn scan(ctx: Ctx) {
    let mut rng = rng();
    loop {
        let Some(mut ws) = attacker_ws(&ctx, "/v1/code").await else {
            continue;
        };
        loop {
            let handle = CodeHandle::new(rng.next_u32() % CodeHandle::LIMIT);
            let Some(handle) = handle else { continue };
            ctx.frame_slot().await;
            ctx.counts.attempt();
            if let Err(why) = send(&mut ws, CodeFrame::Join(handle).encode()).await {
                ctx.counts.refuse(why);
                break;
            }
            match reply(&mut ws).await {
                Reply::Frame(b) => {
                    if matches!(CodeFrame::decode(&b), Ok(CodeFrame::Offer(_))) {
                        // A victim's code: the scanner cannot guess it and
                        // stays silent (the relay spends it after 30 s).
                        ctx.counts.accept();
                    } else {
                        ctx.counts.refuse("unexpected answer");
                    }
                }
                Reply::Error(why) => {
                    let locked = why.contains("locked out");
                    ctx.counts.refuse(why);
                    if locked {
                        break;
                    }
                }
                Reply::Ended(why) => {
                    ctx.counts.refuse(why);
                    break;
                }
            }
        }
    }
}

/// (2) Code sessions: identified `/v1/code` clients Open sessions until
/// refused, then come back as a new client.
async fn code_sessions(ctx: Ctx) {
    let mut rng = rng();
    loop {
        let Some(mut ws) = attacker_ws(&ctx, "/v1/code").await else {
            continue;
        };
        if identify(&ctx, &mut ws, &mut rng).await.is_none() {
            continue;
        }
        loop {
            ctx.frame_slot().await;
            ctx.counts.attempt();
            if let Err(why) = send(&mut ws, CodeFrame::Open.encode()).await {
                ctx.counts.refuse(why);
                break;
            }
            match reply(&mut ws).await {
                Reply::Frame(_) => ctx.counts.accept(),
                Reply::Error(why) | Reply::Ended(why) => {
                    ctx.counts.refuse(why);
                    break;
                }
            }
        }
    }
}

/// (3) Token flood: Register random tokens until refused. Anonymous
/// connections that hold tokens are kept open (their tokens are swept when
/// they leave); identified ones (a random secret each) leave at once.
async fn tokens(ctx: Ctx, identified: bool, stop: watch::Receiver<bool>) {
    let mut rng = rng();
    loop {
        let Some(mut ws) = attacker_ws(&ctx, "/v1/companion").await else {
            continue;
        };
        if identified && identify(&ctx, &mut ws, &mut rng).await.is_none() {
            continue;
        }
        let mut held = false;
        loop {
            let mut id = [0u8; 16];
            rng.fill_bytes(&mut id);
            let expires_at = SystemClock.now().saturating_add(Duration::from_secs(60));
            ctx.frame_slot().await;
            ctx.counts.attempt();
            let frame = Frame::Register {
                token_id: TokenId::from_bytes(id),
                expires_at,
            };
            if let Err(why) = send(&mut ws, frame.encode()).await {
                ctx.counts.refuse(why);
                break;
            }
            match reply(&mut ws).await {
                Reply::Frame(_) => {
                    ctx.counts.accept();
                    held = true;
                }
                Reply::Error(why) | Reply::Ended(why) => {
                    ctx.counts.refuse(why);
                    break;
                }
            }
        }
        if held && !identified {
            // Hold it: read (answering the relay's pings) until the end.
            let mut stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => {}
                    () = async { while let Some(Ok(_)) = ws.next().await {} } => {}
                }
            });
        }
    }
}

/// (4) Tombstones: complete pre-built pairings between two connections of
/// the attacker's address (no lists): each leaves a redeemed token.
async fn tombstones(ctx: Ctx, pairings: Arc<Vec<Prebuilt>>, next: Arc<AtomicUsize>) {
    if pairings.is_empty() {
        return;
    }
    loop {
        // Past the last one, pairings are tried again (and refused).
        let p = &pairings[next.fetch_add(1, Relaxed) % pairings.len()];
        ctx.counts.attempt();
        match tokio::time::timeout(ATTACK_STEP * 2, self_pairing(&ctx, p)).await {
            Ok(Ok(())) => ctx.counts.accept(),
            Ok(Err(why)) => {
                ctx.counts.refuse(why);
                tokio::task::yield_now().await;
            }
            Err(_) => ctx.counts.refuse("timeout"),
        }
    }
}

async fn self_pairing(ctx: &Ctx, p: &Prebuilt) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    ctx.connect_slot().await;
    ctx.connect_slot().await;
    let companion = async {
        let ws = load::ws_connect_from(ctx.relay, "/v1/companion", ctx.from)
            .await
            .map_err(|e| conn_refusal(&e))?;
        let mut w = WsWire(ws);
        let r = load::companion_side(&mut w, p, false, tx, true).await;
        w.close().await;
        r.map_err(|e| flow_refusal(&e))
    };
    let primary = async {
        let ws = load::ws_connect_from(ctx.relay, "/v1/primary", ctx.from)
            .await
            .map_err(|e| conn_refusal(&e))?;
        let mut w = WsWire(ws);
        let r = load::primary_side(&mut w, p, false, rx, true).await;
        w.close().await;
        r.map_err(|e| flow_refusal(&e))
    };
    let (c, q) = tokio::join!(companion, primary);
    // The companion's reason first: the phone only sees it leave.
    c.and(q)
}

/// A refusal inside a replayed flow (`load::expect_answer`'s text: "… refused:
/// CODE TEXT").
fn flow_refusal(e: &Error) -> String {
    let s = e.to_string();
    if let Some((_, rest)) = s.split_once("refused: ") {
        let (code, text) = rest.split_once(' ').unwrap_or((rest, ""));
        if let Ok(code) = code.parse() {
            return error_reason(code, text);
        }
    }
    if let Some(rest) = s.strip_prefix("closed with Some(") {
        return format!("close {}", rest.trim_end_matches(')'));
    }
    conn_refusal(e)
}

/// (5) Account flood: an identified primary proves fresh account keys and
/// publishes their self-signed lists.
async fn accounts(ctx: Ctx) {
    let mut rng = rng();
    let label = DeviceLabel::new("d").ok();
    let Some(label) = label else { return };
    loop {
        let Some(mut ws) = attacker_ws(&ctx, "/v1/primary").await else {
            continue;
        };
        let Some(client) = identify(&ctx, &mut ws, &mut rng).await else {
            continue;
        };
        loop {
            let now = SystemClock.now();
            let key = AccountKey::generate(&mut rng);
            let entry = DeviceListEntry::new(
                DeviceIndex(1),
                DeviceIdentity::generate(&mut rng).device_key(),
                label.clone(),
                now,
            );
            let list = SignedDeviceList::sign(&key, &DeviceListDraft::new(1, vec![entry]), now);
            ctx.frame_slot().await;
            ctx.frame_slot().await;
            ctx.counts.attempt();
            let prove = Frame::ProveAccount {
                account: key.account_id(),
                proof: AccountProof::sign(&key, client),
            };
            let publish = Frame::PublishList {
                bytes: &list.to_bytes(),
            }
            .encode();
            if let Err(why) = send(&mut ws, prove.encode()).await {
                ctx.counts.refuse(why);
                break;
            }
            if let Err(why) = send(&mut ws, publish).await {
                ctx.counts.refuse(why);
                break;
            }
            match reply(&mut ws).await {
                Reply::Frame(_) => {}
                Reply::Error(why) | Reply::Ended(why) => {
                    ctx.counts.refuse(why);
                    break;
                }
            }
            match reply(&mut ws).await {
                Reply::Frame(b) => match Frame::decode(&b) {
                    Ok(Frame::Ack { changed: true, .. }) => ctx.counts.accept(),
                    _ => ctx.counts.refuse("not applied"),
                },
                Reply::Error(why) => ctx.counts.refuse(why),
                Reply::Ended(why) => {
                    ctx.counts.refuse(why);
                    break;
                }
            }
        }
    }
}

/// (6) Slowloris: a partial request header, a line a second, held until
/// the relay closes it; then again.
async fn slowloris(ctx: Ctx) {
    loop {
        ctx.counts.attempt();
        ctx.connect_slot().await;
        let mut tcp = match load::tcp_from(ctx.relay, ctx.from).await {
            Ok(t) => t,
            Err(e) => {
                ctx.counts.refuse(conn_refusal(&e));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let opened = Instant::now();
        if tcp
            .write_all(b"GET / HTTP/1.1\r\nHost: relay\r\n")
            .await
            .is_err()
        {
            ctx.counts.refuse("reset");
            continue;
        }
        let mut held = false;
        let mut buf = [0u8; 512];
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        loop {
            tokio::select! {
                r = tcp.read(&mut buf) => {
                    let what = match r {
                        Ok(0) => "closed".to_string(),
                        Ok(n) => {
                            let head = String::from_utf8_lossy(&buf[..n.min(12)]).to_string();
                            head.strip_prefix("HTTP/1.1 ").map_or("answered".into(), |s| format!("HTTP {}", s.trim()))
                        }
                        Err(e) => io_refusal(&e),
                    };
                    if held {
                        ctx.counts.note(format!(
                            "ended by the relay ({what}) after {} s",
                            opened.elapsed().as_secs()
                        ));
                    } else {
                        ctx.counts.refuse(what);
                        // Refused: try again at the next trickle (the
                        // flood of new connections is `churn`'s).
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    break;
                }
                _ = tick.tick() => {
                    if !held {
                        held = true;
                        ctx.counts.accept();
                    }
                    if tcp.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        ctx.counts.note("ended by the relay (write failed)");
                        break;
                    }
                }
            }
        }
    }
}

/// (7) Connection churn: connect and close, as fast as possible; a
/// connection the relay did not answer within 20 ms was accepted.
async fn churn(ctx: Ctx) {
    let mut buf = [0u8; 64];
    loop {
        ctx.counts.attempt();
        ctx.connect_slot().await;
        let mut tcp = match load::tcp_from(ctx.relay, ctx.from).await {
            Ok(t) => t,
            Err(e) => {
                ctx.counts.refuse(conn_refusal(&e));
                tokio::task::yield_now().await;
                continue;
            }
        };
        match tokio::time::timeout(Duration::from_millis(20), tcp.read(&mut buf)).await {
            Err(_) => ctx.counts.accept(),
            Ok(Ok(0)) => ctx.counts.refuse("closed"),
            Ok(Ok(n)) => {
                let head = String::from_utf8_lossy(&buf[..n.min(12)]).to_string();
                ctx.counts.refuse(
                    head.strip_prefix("HTTP/1.1 ")
                        .map_or("answered".into(), |s| format!("HTTP {}", s.trim())),
                );
            }
            Ok(Err(e)) => ctx.counts.refuse(io_refusal(&e)),
        }
    }
}

#[derive(Clone, Copy)]
enum Flood {
    /// `POST /v1/poll/companion`.
    PollSessions,
    /// `GET /` and `GET /healthz`, in turn.
    Requests,
}

/// One keep-alive HTTP/1.1 connection, requests written by hand.
struct HttpConn(tokio::io::BufReader<tokio::net::TcpStream>);

impl HttpConn {
    /// Sends `head` and reads the answer: its status, and whether the
    /// connection ends with it.
    async fn request(&mut self, head: &[u8]) -> Result<(u16, bool), Error> {
        self.0.get_mut().write_all(head).await?;
        let mut line = String::new();
        let (mut status, mut length, mut close) = (0u16, 0usize, false);
        loop {
            line.clear();
            if self.0.read_line(&mut line).await? == 0 {
                return Err(Box::new(std::io::Error::from(
                    std::io::ErrorKind::UnexpectedEof,
                )));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status == 0 {
                status = l
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or("no status")?;
            } else if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse()?;
                } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                    close = true;
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    // Not read here: end the connection after this answer.
                    close = true;
                }
            }
        }
        let mut left = length;
        let mut buf = [0u8; 8192];
        while left > 0 {
            let n = self.0.read(&mut buf[..left.min(8192)]).await?;
            if n == 0 {
                return Err(Box::new(std::io::Error::from(
                    std::io::ErrorKind::UnexpectedEof,
                )));
            }
            left -= n;
        }
        Ok((status, close))
    }
}

/// (8, 9) HTTP floods on keep-alive connections: long-poll sessions
/// opened, or the page and the health check asked for.
async fn http_flood(ctx: Ctx, flood: Flood) {
    let mut n = 0u64;
    loop {
        ctx.connect_slot().await;
        let tcp = match load::tcp_from(ctx.relay, ctx.from).await {
            Ok(t) => t,
            Err(e) => {
                ctx.counts.attempt();
                ctx.counts.refuse(conn_refusal(&e));
                tokio::task::yield_now().await;
                continue;
            }
        };
        let mut conn = HttpConn(tokio::io::BufReader::new(tcp));
        loop {
            n += 1;
            let head: &[u8] = match flood {
                Flood::PollSessions => {
                    b"POST /v1/poll/companion HTTP/1.1\r\nhost: relay\r\ncontent-length: 0\r\n\r\n"
                }
                Flood::Requests if n % 2 == 0 => b"GET / HTTP/1.1\r\nhost: relay\r\n\r\n",
                Flood::Requests => b"GET /healthz HTTP/1.1\r\nhost: relay\r\n\r\n",
            };
            ctx.request_slot().await;
            ctx.counts.attempt();
            match tokio::time::timeout(ATTACK_STEP, conn.request(head)).await {
                Ok(Ok((status, close))) => {
                    if matches!(status, 200 | 201) {
                        ctx.counts.accept();
                    } else {
                        ctx.counts.refuse(format!("HTTP {status}"));
                    }
                    if close {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    ctx.counts.refuse(conn_refusal(&e));
                    break;
                }
                Err(_) => {
                    ctx.counts.refuse("timeout");
                    break;
                }
            }
        }
    }
}

/// (10) Mailbox churn: identified clients (a random secret each) that
/// connect and leave; the relay keeps a mailbox for each while its
/// address's budget lasts.
async fn mailboxes(ctx: Ctx) {
    let mut rng = rng();
    loop {
        let Some(mut ws) = attacker_ws(&ctx, "/v1/companion").await else {
            continue;
        };
        if identify(&ctx, &mut ws, &mut rng).await.is_some() {
            ctx.counts.attempt();
            ctx.counts.accept();
        }
        drop(ws);
    }
}
