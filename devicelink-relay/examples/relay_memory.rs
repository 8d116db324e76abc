//! The relay's memory: resident memory per open offer, and 100,000
//! registrations from one client.
//!
//! ```sh
//! cargo run --release -p devicelink-relay --example relay_memory -- \
//!     --offers 10000 [--ws-read-buffer 131072,4096,512] --registrations 100000 [--sqlite]
//! ```
//!
//! The relay runs in a child process (this example with `--serve`), so its
//! resident set (`VmRSS`, `VmHWM` in `/proc/PID/status`) holds nothing of
//! the clients'.
//!
//! 1. **Open offers.** For each `--ws-read-buffer` size: a fresh relay;
//!    256 offers opened and closed first (so the runtime's threads, the
//!    blocking pool and the allocator's arenas exist before the baseline);
//!    then `--offers` companions connect, identify and register one token
//!    each (64 at a time) and stay connected. Per open offer = (VmRSS with
//!    them − VmRSS before) / offers. The kernel's socket memory
//!    (`/proc/net/sockstat`, both ends of each loopback connection) is
//!    printed beside it: it is not in the relay's RSS.
//! 2. **Registrations from one client.** One companion connection sends
//!    Identify and then `--registrations` Register frames for distinct
//!    tokens, pipelined, and reads every answer: the per-client quota's
//!    worth get an Ack, every other one an Error frame (400, the core's
//!    `QuotaExceeded`). Then `/healthz` and a fresh client's registration
//!    show the relay is up; VmHWM is its peak. The relay's frame rate is
//!    raised for this run (at the default 20/s, burst 40, the client is
//!    closed with 401 / 4004 at its 41st frame: shown by a third, short run).

mod load;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use devicelink::TokenId;
use devicelink_relay::server::Clock;
use devicelink_relay::{Frame, FrameType};
use futures_util::{SinkExt, StreamExt};
use load::{Args, Error, Hosted, StoreKind, Wire, WsWire};
use tokio_tungstenite::tungstenite::Message;

fn token(run: u64, n: u64) -> TokenId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&run.to_be_bytes());
    b[8..].copy_from_slice(&n.to_be_bytes());
    TokenId::from_bytes(b)
}

fn register(run: u64, n: u64) -> axum::body::Bytes {
    let expires_at = devicelink_relay::server::SystemClock
        .now()
        .saturating_add(Duration::from_secs(60));
    axum::body::Bytes::from(
        Frame::Register {
            token_id: token(run, n),
            expires_at,
        }
        .encode(),
    )
}

/// Connects a companion, identifies as client `n`, registers token `n`.
async fn open_offer(base: &str, run: u64, n: u64) -> Result<WsWire, Error> {
    let mut w = WsWire(load::ws_connect(base, "/v1/companion").await?);
    let identify = Frame::Identify {
        secret: load::secret(0, n, run),
    }
    .encode();
    w.send(identify.into()).await?;
    w.send(register(run, n)).await?;
    load::expect_answer(&mut w, FrameType::Identify).await?;
    load::expect_answer(&mut w, FrameType::Register).await?;
    Ok(w)
}

/// Opens offers `from..to`, 64 at a time.
async fn open_offers(base: &str, run: u64, from: u64, to: u64) -> Result<Vec<WsWire>, Error> {
    let futures = (from..to).map(|n| open_offer(base, run, n));
    let opened: Vec<Result<WsWire, Error>> = futures_util::stream::iter(futures)
        .buffer_unordered(64)
        .collect()
        .await;
    opened.into_iter().collect()
}

async fn metric(http: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn offers_run(store: StoreKind, offers: u64, buffer: usize) -> Result<(), Error> {
    let extra: Vec<String> = [
        "--ws-read-buffer",
        &buffer.to_string(),
        "--idle-timeout-secs",
        "600",
        "--max-connections",
        &(offers + 1_000).to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let relay = Hosted::child(store, None, &extra)?;
    let pid = relay.pid().ok_or("no child")?;
    let run = u64::from(std::process::id()) << 20 | buffer as u64;

    // Warm-up: threads, blocking pool, allocator arenas.
    let warm = open_offers(&relay.base, run, 1 << 40, (1 << 40) + 256).await?;
    for w in warm {
        w.close().await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (base_rss, _) = load::memory_kib(pid).ok_or("no /proc")?;
    let tcp_before = load::tcp_mem_pages().unwrap_or(0);

    let started = Instant::now();
    let open = open_offers(&relay.base, run, 0, offers).await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (rss, hwm) = load::memory_kib(pid).ok_or("no /proc")?;
    let tcp_after = load::tcp_mem_pages().unwrap_or(0);
    let connected = metric(&relay.http, "devicelink_connections_open").await;
    let per_offer = (rss.saturating_sub(base_rss) as f64) * 1024.0 / offers as f64;
    println!(
        "store {}, ws read buffer {buffer} B: {offers} open offers (opened in {:.2} s; relay says {} connections open): \
         relay VmRSS {base_rss} KiB -> {rss} KiB (VmHWM {hwm} KiB): {per_offer:.0} bytes per open offer; \
         kernel TCP memory +{} KiB for both ends ({:.0} bytes per connection pair, not in the relay's RSS)",
        store.name(),
        took.as_secs_f64(),
        connected.map_or("?".into(), |c| format!("{c:.0}")),
        tcp_after.saturating_sub(tcp_before) * 4,
        (tcp_after.saturating_sub(tcp_before) * 4096) as f64 / offers as f64,
    );
    for w in open {
        w.close().await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    if let Some((after, _)) = load::memory_kib(pid) {
        println!("  after closing them: VmRSS {after} KiB");
    }
    relay.stop().await?;
    Ok(())
}

/// One client, `n` registrations pipelined; counts the answers.
async fn flood_run(store: StoreKind, n: u64, extra: &[String]) -> Result<(), Error> {
    let relay = Hosted::child(store, None, extra)?;
    let pid = relay.pid().ok_or("no child")?;
    let run = u64::from(std::process::id()) << 20 | 0xf1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (base_rss, _) = load::memory_kib(pid).ok_or("no /proc")?;
    let ws = load::ws_connect(&relay.base, "/v1/companion").await?;
    let (mut sink, mut stream) = ws.split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let identify = Frame::Identify {
            secret: load::secret(0, 0, run),
        }
        .encode();
        sink.feed(Message::binary(identify)).await?;
        for i in 0..n {
            sink.feed(Message::Binary(register(run, i))).await?;
        }
        sink.flush().await?;
        Ok::<_, Error>(sink)
    });
    // Sample the relay's RSS while it works.
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            if let Some((rss, _)) = load::memory_kib(pid) {
                peak = peak.max(rss);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if load::memory_kib(pid).is_none() {
                return peak;
            }
        }
    });
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    let mut closed = None;
    let mut got = 0;
    // Identify's Ack, then one answer per Register.
    while got < n + 1 {
        let next = tokio::time::timeout(load::STEP, stream.next()).await?;
        match next {
            Some(Ok(Message::Binary(b))) => {
                got += 1;
                let key = match Frame::decode(&b)? {
                    Frame::Ack { of, .. } => format!("Ack({of:?})"),
                    Frame::Error { code, .. } => format!("Error {code}"),
                    other => format!("{:?}", other.frame_type()),
                };
                *answers.entry(key).or_default() += 1;
            }
            Some(Ok(Message::Close(f))) => {
                closed = f.map(|f| u16::from(f.code));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                closed = Some(0);
                println!("  the socket failed: {e}");
                break;
            }
            None => break,
        }
    }
    let took = started.elapsed();
    let _ = writer.await;
    let (rss, hwm) = load::memory_kib(pid).ok_or("no /proc")?;
    // Still up: healthz, and a fresh client registers.
    let health = reqwest::get(format!("{}/healthz", relay.http))
        .await?
        .text()
        .await?;
    let fresh = open_offer(&relay.base, run, 1 << 40).await.is_ok();
    sampler.abort();
    println!(
        "store {}, {n} registrations from one client in {:.2} s ({:.0} answers/s): answers {answers:?}, \
         close {closed:?}; relay VmRSS {base_rss} KiB before, {rss} KiB after, VmHWM {hwm} KiB; \
         /healthz {:?}, a fresh client registers: {fresh}",
        store.name(),
        took.as_secs_f64(),
        got as f64 / took.as_secs_f64(),
        health.trim(),
    );
    relay.stop().await?;
    Ok(())
}

fn main() -> Result<(), Error> {
    let args = Args::from_env();
    if args.flag("--serve") {
        return load::serve_child(&args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = StoreKind::from_args(&args);
        let offers: u64 = args.get("--offers", 10_000);
        let registrations: u64 = args.get("--registrations", 100_000);
        println!("load average {}", load::loadavg());
        if offers > 0 {
            let default = devicelink_relay::server::DEFAULT_WEBSOCKET_READ_BUFFER;
            for buffer in args.list("--ws-read-buffer", &[default]) {
                offers_run(store, offers, buffer).await?;
            }
        }
        if registrations > 0 {
            let raised: Vec<String> = ["--idle-timeout-secs", "600"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            flood_run(store, registrations, &raised).await?;
            // The default rate: the client is cut off at its burst.
            let default_rate: Vec<String> = ["--rate", "20", "--burst", "40"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            flood_run(store, 1_000, &default_rate).await?;
        }
        println!("load average {}", load::loadavg());
        Ok(())
    })
}
