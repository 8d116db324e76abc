//! PostgreSQL beside SQLite, in one run: durable redemptions per second
//! (store level) and full pairings per second (through relay processes),
//! with 1 and 3 PostgreSQL nodes, and where the time goes.
//!
//! ```sh
//! cargo build --release -p devicelink-relay --bin devicelink-relay --example pg_bench
//! cargo run --release -p devicelink-relay --example pg_bench -- --tokens 20000 --threads 16 --links 400 --concurrency 16
//! ```
//!
//! It starts its own throwaway PostgreSQL 15 (the test harness,
//! `tests/pg/mod.rs`: a temporary cluster on a free port of 127.0.0.1,
//! removed at the end) with the server's defaults (`fsync` and
//! `synchronous_commit` on), and relay processes on 127.0.0.1.
//!
//! 1. **Redemptions**: `--tokens` tokens are registered and reserved
//!    (untimed), then `--threads` threads redeem them, each redemption
//!    acknowledged only once durable: on SQLite (`synchronous = FULL`), on
//!    one `PgStore`, and on three `PgStore`s (three pools, as three nodes
//!    would hold) sharing the threads.
//! 2. **Pairings**: `--links` full pairings (real crypto on both ends, in
//!    this process), `--concurrency` at a time, each companion and primary
//!    connecting fresh, through one SQLite relay, one PostgreSQL node, and
//!    three PostgreSQL nodes (the companion and its primary always on
//!    different nodes, so every message crosses nodes).
//!
//! For each PostgreSQL phase it prints the commits and WAL flushes
//! PostgreSQL counted (`pg_stat_database`, `pg_stat_wal`) and the relays'
//! mean store-call latency (their `/metrics`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devicelink::relay::{Budget, ClientId, HelloDigest, SourceKey, TokenStore};
use devicelink::{Timestamp, TokenId};
use devicelink_relay::server::SystemClock;
use devicelink_relay::{PgStore, SqliteStore};

#[path = "../tests/pg/mod.rs"]
mod pg;

mod load;

use load::Error;

fn arg(name: &str, default: u64) -> u64 {
    load::Args::from_env().get(name, default)
}

fn token(n: u64) -> TokenId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    TokenId::from_bytes(b)
}

/// Registers and reserves `tokens` tokens, then redeems them from
/// `threads` threads, thread `w` on `stores[w % len]`. Redemptions/s.
fn redeem<S: TokenStore>(stores: &[S], tokens: u64, threads: u64) -> f64 {
    let quota = Budget::new(u64::MAX, u64::MAX, u64::MAX >> 1).with_reserve(0, 0);
    let now = Timestamp::from_unix_millis(1_000);
    let far = Timestamp::from_unix_millis(1_000_000_000);
    // One companion per token, as every pairing has its own connection
    // (one client's counter row would serialize its redemptions).
    let companion = |n: u64| ClientId::from(1_000_000 + n);
    let primary = ClientId::from(2);
    std::thread::scope(|s| {
        for w in 0..threads {
            let store = &stores[(w as usize) % stores.len()];
            s.spawn(move || {
                let mut n = w;
                while n < tokens {
                    let t = token(n);
                    let _ = store.register(t, companion(n), SourceKey::LOCAL, far, quota);
                    let _ = store.reserve(&t, primary, &HelloDigest::of(&t.to_bytes()), now, far);
                    n += threads;
                }
            });
        }
    });
    let redeemed = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..threads {
            let (store, redeemed) = (&stores[(w as usize) % stores.len()], &redeemed);
            s.spawn(move || {
                let mut n = w;
                while n < tokens {
                    if store.redeem(&token(n), companion(n), now, far).is_ok() {
                        redeemed.fetch_add(1, Ordering::Relaxed);
                    }
                    n += threads;
                }
            });
        }
    });
    redeemed.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// PostgreSQL's own counters for database `db`.
#[derive(Debug, Clone, Copy, Default)]
struct PgCounters {
    commits: u64,
    wal_syncs: u64,
    wal_sync_ms: f64,
}

fn pg_counters(server: &pg::PgServer, db: &str) -> PgCounters {
    let out = server.psql(
        db,
        "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
                wal_sync, wal_sync_time FROM pg_stat_wal",
    );
    let f: Vec<&str> = out.trim().split('|').collect();
    PgCounters {
        commits: f.first().and_then(|v| v.parse().ok()).unwrap_or(0),
        wal_syncs: f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
        wal_sync_ms: f.get(2).and_then(|v| v.parse().ok()).unwrap_or(0.0),
    }
}

fn delta(a: PgCounters, b: PgCounters) -> PgCounters {
    PgCounters {
        commits: b.commits.saturating_sub(a.commits),
        wal_syncs: b.wal_syncs.saturating_sub(a.wal_syncs),
        wal_sync_ms: b.wal_sync_ms - a.wal_sync_ms,
    }
}

/// A relay process on 127.0.0.1.
struct Node {
    child: Child,
    base: String,
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relay_binary() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?;
    let bin = dir.join("devicelink-relay");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = dir.ends_with("release");
        let mut c = Command::new(cargo);
        c.args([
            "build",
            "-p",
            "devicelink-relay",
            "--bin",
            "devicelink-relay",
        ]);
        if release {
            c.arg("--release");
        }
        if !c.status()?.success() {
            return Err("cannot build the relay binary".into());
        }
    }
    Ok(bin)
}

fn spawn(bin: &Path, db: &str) -> Result<Node, Error> {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--db", db])
        .args([
            "--rate",
            "100000",
            "--burst",
            "100000",
            "--max-connections",
            "10000",
        ])
        .args(["--max-connections-per-address", "10000"])
        .args(["--max-tokens-per-address", "100000000"])
        .args(["--max-http-connections-per-address", "100000"])
        .args(["--request-rate-per-address", "0"])
        .args(["--new-accounts-per-address-per-hour", "0"])
        .args(["--connect-rate-per-address", "0"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let addr = line
        .split("ws://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .ok_or_else(|| format!("relay did not start: {line:?}"))?
        .to_string();
    Ok(Node {
        child,
        base: format!("ws://{addr}"),
        addr,
    })
}

/// `GET /metrics` of a node: (store calls, their total seconds).
fn store_calls(node: &Node) -> (f64, f64) {
    let Ok(mut s) = std::net::TcpStream::connect(&node.addr) else {
        return (0.0, 0.0);
    };
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        node.addr
    );
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    let value = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("devicelink_store_call_seconds_count"),
        value("devicelink_store_call_seconds_sum"),
    )
}

/// Runs `links` pairings through `nodes`, `concurrency` at a time:
/// (links/s, p50 ms, p99 ms).
async fn pairings(nodes: &[Node], links: u64, concurrency: u64) -> Result<(f64, f64, f64), Error> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1) as usize));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..links as usize {
        let permit = sem.clone().acquire_owned().await?;
        let c_at = nodes[i % nodes.len()].base.clone();
        let p_at = nodes[(i + 1) % nodes.len()].base.clone();
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(
                Duration::from_secs(60),
                load::one_link(&c_at, &p_at, Arc::new(SystemClock)),
            )
            .await;
            drop(permit);
            r
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.push(t.await???);
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
    Ok((links as f64 / secs, pct(0.5), pct(0.99)))
}

fn report_pg(server: &pg::PgServer, db: &str, before: PgCounters, n: f64, what: &str) {
    let d = delta(before, pg_counters(server, db));
    println!(
        "    {what}: {:.2} commits and {:.2} WAL flushes each ({} flushes, {:.2} ms mean flush)",
        d.commits as f64 / n,
        d.wal_syncs as f64 / n,
        d.wal_syncs,
        d.wal_sync_ms / d.wal_syncs.max(1) as f64
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let tokens = arg("--tokens", 20_000);
    let threads = arg("--threads", 16).max(1);
    let links = arg("--links", 400).max(1);
    let concurrency = arg("--concurrency", 16).max(1);
    let server = pg::PgServer::start().ok_or("PostgreSQL binaries not found")?;
    server.psql("postgres", "ALTER SYSTEM SET track_wal_io_timing = on");
    server.psql("postgres", "SELECT pg_reload_conf()");
    let dir = tempfile::tempdir()?;

    println!("== durable redemptions/s ({tokens} tokens, {threads} threads)");
    let t = tokens;
    let sqlite_path = dir.path().join("redeem.db");
    let r_sqlite = tokio::task::spawn_blocking(move || -> Result<f64, Error> {
        let s = SqliteStore::open(&sqlite_path)?;
        Ok(redeem(&[s], t, threads))
    })
    .await??;
    println!("  SQLite (synchronous=FULL, WAL):   {r_sqlite:>8.0} /s");
    let mut r_pg = Vec::new();
    for stores in [1usize, 3] {
        let url = server.create_database(&format!("redeem{stores}"));
        let db = url.rsplit('/').next().unwrap_or_default().to_string();
        let opened: Vec<PgStore> = (0..stores)
            .map(|_| PgStore::connect(&url))
            .collect::<Result<_, _>>()?;
        let before = pg_counters(&server, &db);
        let r = tokio::task::spawn_blocking(move || redeem(&opened, t, threads)).await?;
        println!(
            "  PostgreSQL, {stores} store(s):          {r:>8.0} /s ({:.2}× SQLite)",
            r / r_sqlite
        );
        report_pg(
            &server,
            &db,
            before,
            tokens as f64 * 3.0,
            "per write (register, reserve, redeem)",
        );
        r_pg.push(r);
    }

    println!(
        "== full pairings/s ({links} links, {concurrency} at a time, both ends in this process)"
    );
    let bin = relay_binary()?;
    let sqlite_db = dir.path().join("relay.db");
    let node = spawn(&bin, &sqlite_db.to_string_lossy())?;
    let (rate, p50, p99) = pairings(std::slice::from_ref(&node), links, concurrency).await?;
    let (calls, secs) = store_calls(&node);
    println!(
        "  SQLite, 1 node:      {rate:>6.0} links/s, p50 {p50:.1} ms, p99 {p99:.1} ms; {:.1} store calls a link, {:.2} ms mean",
        calls / links as f64,
        secs / calls.max(1.0) * 1e3
    );
    drop(node);
    let sqlite_rate = rate;
    for n in [1usize, 3] {
        let url = server.create_database(&format!("pair{n}"));
        let db = url.rsplit('/').next().unwrap_or_default().to_string();
        let nodes: Vec<Node> = (0..n)
            .map(|_| spawn(&bin, &url))
            .collect::<Result<_, _>>()?;
        let before = pg_counters(&server, &db);
        let (rate, p50, p99) = pairings(&nodes, links, concurrency).await?;
        let (calls, secs) = nodes
            .iter()
            .map(store_calls)
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        println!(
            "  PostgreSQL, {n} node(s): {rate:>6.0} links/s ({:.2}× SQLite), p50 {p50:.1} ms, p99 {p99:.1} ms; {:.1} store calls a link, {:.2} ms mean",
            rate / sqlite_rate,
            calls / links as f64,
            secs / calls.max(1.0) * 1e3
        );
        report_pg(&server, &db, before, links as f64, "per link");
    }
    Ok(())
}
