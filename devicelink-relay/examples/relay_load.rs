//! Links many companions through an in-process relay over loopback, `C` at
//! a time, each to a fresh account (real crypto, real WebSockets), and
//! prints links per second and link latency percentiles.
//!
//! `cargo run --release -p devicelink-relay --example relay_load -- --links 400 --concurrency 16 [--sqlite]`
//!
//! Both ends run in this process, so the numbers include the clients' crypto
//! and share the same cores with the relay: a floor, not a ceiling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use devicelink::{Account, Companion, DeviceIdentity, DeviceLabel, Policy};
use devicelink_relay::client::{CompanionClient, LinkOutcome, PrimaryClient};
use devicelink_relay::server::{Clock, Limits, Relay, SystemClock};
use devicelink_relay::{MemoryStore, SqliteStore, Store};
use rand_core::OsRng;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn one_link(base: String, clock: Arc<dyn Clock>) -> Result<Duration, Error> {
    let started = Instant::now();
    let companion = Companion::new(
        DeviceIdentity::generate(&mut OsRng),
        DeviceLabel::new("load")?,
        &Policy::default(),
        &mut OsRng,
        clock.now(),
    );
    let mut c = CompanionClient::connect(&base, companion, clock.clone()).await?;
    let mut p = PrimaryClient::connect(&base, clock.clone()).await?;
    let mut account = Account::generate(Policy::default(), &mut OsRng, clock.now());
    account.open_link_intent(clock.now());
    let qr = c.offer_text().ok_or("no offer")?;
    let (mut rc, mut rp) = (OsRng, OsRng);
    let (cr, pr) = tokio::join!(
        c.link(&mut rc),
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

async fn run<S: Store + 'static>(store: S, links: usize, concurrency: usize) -> Result<(), Error> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let limits = Limits {
        rate_per_second: 1_000,
        rate_burst: 1_000,
        // Every load client comes from 127.0.0.1.
        connect_rate_per_address: 0,
        max_connections_per_address: u32::MAX,
        ..Limits::default()
    };
    let relay = Relay::new(store, &Policy::default(), limits, clock.clone())?;
    let metrics = relay.metrics();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("ws://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay.serve(listener, async {
        let _ = stopped.await;
    }));

    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::new();
    for _ in 0..links {
        let permit = sem.clone().acquire_owned().await?;
        let (base, clock) = (base.clone(), clock.clone());
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(30), one_link(base, clock)).await;
            drop(permit);
            r
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.push(t.await???);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "{links} links, {concurrency} at a time, in {:.2} s: {:.0} links/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        elapsed.as_secs_f64(),
        links as f64 / elapsed.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3,
    );
    let m = metrics.render();
    for line in m.lines().filter(|l| {
        l.starts_with("devicelink_tokens_redeemed_total")
            || l.starts_with("devicelink_store_call_seconds_count")
            || l.starts_with("devicelink_store_call_seconds_sum")
    }) {
        println!("{line}");
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let links = arg("--links", 200).max(1);
    let concurrency = arg("--concurrency", 16);
    if std::env::args().any(|a| a == "--sqlite") {
        let dir = std::env::temp_dir().join(format!("devicelink-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let store = SqliteStore::open(dir.join("relay.db"))?;
        println!("store: sqlite {}", dir.display());
        let r = run(store, links, concurrency).await;
        let _ = std::fs::remove_dir_all(&dir);
        r
    } else {
        println!("store: memory");
        run(MemoryStore::new(), links, concurrency).await
    }
}
