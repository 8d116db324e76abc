//! Relay-only throughput: complete, valid pairings made with the core
//! before the clock starts (real crypto: offer, Hello, Request, Grant,
//! Confirm, the account's list, the companion's subscription proof), then
//! replayed through the relay by thin clients that only carry pre-encoded
//! frames (no crypto at replay time).
//!
//! ```sh
//! cargo run --release -p devicelink-relay --example relay_replay -- \
//!     --pairings 20000 --concurrency 256 [--sqlite] [--lists] [--reuse] \
//!     [--transport ws|poll] [--child [--pin]]
//! ```
//!
//! Each pairing, as the relay's own clients run it (`docs/RELAY.md` §3.5):
//!
//! - companion (`/v1/companion`): Identify, Register (both answered by an
//!   Ack) · the Hello arrives · Message(Request) (Routed) · the Grant
//!   arrives · Message(Confirm) (Routed); with `--lists`: PublishList (its
//!   certificate's list) and Subscribe (its proof), Acked, then the newest
//!   list arrives;
//! - primary (`/v1/primary`): Identify (Ack); with `--lists`, ProveAccount
//!   (Ack: the account key's proof for its client id, which the relay asks
//!   before it keeps an account it does not know) · once the token is
//!   registered, Message(Hello) (Routed) · the Request arrives · with
//!   `--lists`, PublishList of the list the grant made (Ack), as
//!   `PrimaryClient::link` publishes it before the Grant · Message(Grant)
//!   (Routed) · the Confirm arrives; with `--lists`: PublishList (Ack).
//!
//! So every pairing is 4 routed handshake messages and one redemption (the
//! Request), each acknowledged only after the store made it durable (on
//! SQLite, after its batch's commit with `synchronous = FULL`). With
//! `--lists` the relay also verifies the account proof, three list
//! signatures and a subscription proof (five Ed25519 verifications) and
//! writes the account. A client sends a frame's successor before reading the answer
//! only where the relay's order makes that safe (Identify, then Register
//! or the Hello; PublishList, then Subscribe): the relay answers a
//! connection's frames in order.
//!
//! Each pairing opens its two connections and closes them at the end, like
//! a real link; `--reuse` keeps two connections per concurrent slot and runs
//! its pairings one after another on them (what is left is routing).
//! `--child` runs the relay in a child process (this example with
//! `--serve`); `--pin` pins the child to CPU 1 and this load generator to
//! CPU 0 (`taskset`), so each gets one core and their CPU times are apart.
//! `--transport poll` speaks the HTTP long-poll fallback instead
//! (`docs/RELAY.md` §3.6), each session on a keep-alive HTTP/1.1 connection
//! of its own with hand-written requests; `--transport poll-reqwest` makes
//! the same requests with `reqwest` (a heavier client, so a lower figure).

mod load;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devicelink_relay::FrameType;
use load::{expect_answer, Args, Error, Hosted, PollWire, Prebuilt, StoreKind, Wire, WsWire};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Ws,
    /// Long-poll with hand-written HTTP/1.1 ([`load::RawPollWire`]).
    Poll,
    /// Long-poll with `reqwest` ([`PollWire`]).
    PollReqwest,
}

#[derive(Clone)]
struct Setup {
    base: String,
    http: String,
    /// `127.0.0.1:PORT`.
    addr: String,
    transport: Transport,
    lists: bool,
    client: reqwest::Client,
}

async fn open(setup: &Setup, role: &str) -> Result<Conn, Error> {
    Ok(match setup.transport {
        Transport::Ws => Conn::Ws(WsWire(
            load::ws_connect(&setup.base, &format!("/v1/{role}")).await?,
        )),
        Transport::Poll => Conn::Raw(load::RawPollWire::open(&setup.addr, role).await?),
        Transport::PollReqwest => {
            Conn::Poll(PollWire::open(&setup.client, &setup.http, role).await?)
        }
    })
}

/// Either transport, so one flow serves both.
#[allow(clippy::large_enum_variant)] // one per connection, never moved much
enum Conn {
    Ws(WsWire),
    Poll(PollWire),
    Raw(load::RawPollWire),
}

impl Wire for Conn {
    async fn send(&mut self, frame: axum::body::Bytes) -> Result<(), Error> {
        match self {
            Conn::Ws(w) => w.send(frame).await,
            Conn::Poll(w) => w.send(frame).await,
            Conn::Raw(w) => w.send(frame).await,
        }
    }

    async fn recv(&mut self) -> Result<axum::body::Bytes, Error> {
        match self {
            Conn::Ws(w) => w.recv().await,
            Conn::Poll(w) => w.recv().await,
            Conn::Raw(w) => w.recv().await,
        }
    }

    async fn close(self) {
        match self {
            Conn::Ws(w) => w.close().await,
            Conn::Poll(w) => w.close().await,
            Conn::Raw(w) => w.close().await,
        }
    }
}

async fn identify<W: Wire>(w: &mut W, frame: &axum::body::Bytes) -> Result<(), Error> {
    w.send(frame.clone()).await?;
    expect_answer(w, FrameType::Identify).await
}

/// One pairing on two fresh connections (opened, identified, closed).
async fn fresh_pairing(setup: &Setup, p: &Prebuilt) -> Result<(), Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let c = async {
        let mut w = open(setup, "companion").await?;
        load::companion_side(&mut w, p, setup.lists, tx, true).await?;
        w.close().await;
        Ok::<(), Error>(())
    };
    let q = async {
        let mut w = open(setup, "primary").await?;
        load::primary_side(&mut w, p, setup.lists, rx, true).await?;
        w.close().await;
        Ok::<(), Error>(())
    };
    let (c, q) = tokio::join!(c, q);
    c.and(q)
}

struct Outcome {
    latencies: Vec<Duration>,
    failures: Vec<String>,
    elapsed: Duration,
    /// CPU seconds (relay, generator) when the clock started.
    cpu_at_start: (f64, f64),
}

async fn replay(
    setup: Setup,
    pairings: Arc<Vec<Prebuilt>>,
    concurrency: usize,
    reuse: bool,
    limit: Duration,
    cpu: impl Fn() -> (f64, f64),
) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    // With --reuse the clock starts once every slot has its connections.
    let ready = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let mut workers = Vec::new();
    for slot in 0..concurrency {
        let (setup, pairings, next, failures, ready) = (
            setup.clone(),
            pairings.clone(),
            next.clone(),
            failures.clone(),
            ready.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut started = Instant::now();
            let mut latencies = Vec::new();
            let fail = |e: Error| failures.lock().unwrap().push(e.to_string());
            if reuse {
                // Two connections for this slot; its pairings (every
                // `concurrency`-th, made for this slot's client ids) one
                // after another on them.
                let first = &pairings[slot];
                let setup_conns = async {
                    let mut c = open(&setup, "companion").await?;
                    let mut q = open(&setup, "primary").await?;
                    identify(&mut c, &first.c_identify).await?;
                    identify(&mut q, &first.p_identify).await?;
                    Ok::<_, Error>((c, q))
                };
                let conns = setup_conns.await;
                ready.wait().await;
                started = Instant::now();
                let (mut c, mut q) = match conns {
                    Ok(x) => x,
                    Err(e) => return (fail(e), latencies).1,
                };
                for i in (slot..pairings.len()).step_by(concurrency) {
                    if started.elapsed() > limit {
                        break;
                    }
                    let p = &pairings[i];
                    let t = Instant::now();
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let both = async {
                        let (a, b) = tokio::join!(
                            load::companion_side(&mut c, p, setup.lists, tx, false),
                            load::primary_side(&mut q, p, setup.lists, rx, false)
                        );
                        a.and(b)
                    };
                    match tokio::time::timeout(load::STEP, both).await {
                        Ok(Ok(())) => latencies.push(t.elapsed()),
                        Ok(Err(e)) => {
                            fail(e);
                            break;
                        }
                        Err(_) => {
                            fail("timed out".into());
                            break;
                        }
                    }
                }
                c.close().await;
                q.close().await;
            } else {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= pairings.len() || started.elapsed() > limit {
                        break;
                    }
                    let t = Instant::now();
                    match tokio::time::timeout(load::STEP, fresh_pairing(&setup, &pairings[i]))
                        .await
                    {
                        Ok(Ok(())) => latencies.push(t.elapsed()),
                        Ok(Err(e)) => fail(e),
                        Err(_) => fail("timed out".into()),
                    }
                }
            }
            latencies
        }));
    }
    if reuse {
        ready.wait().await;
    }
    let started = Instant::now();
    let cpu_at_start = cpu();
    let mut latencies = Vec::new();
    for w in workers {
        match w.await {
            Ok(l) => latencies.extend(l),
            Err(e) => failures.lock().unwrap().push(e.to_string()),
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    Outcome {
        latencies,
        failures,
        elapsed,
        cpu_at_start,
    }
}

/// The machine's floor for what the relay does most: small frames in and
/// out over loopback TCP with tokio. `concurrency` clients each send a
/// 100-byte frame and wait for it to come back, through a server that
/// echoes it (one task per connection, like the relay, but nothing else:
/// no framing, store, routing or second connection). With `websocket`,
/// both ends speak WebSocket (tokio-tungstenite, as the relay and its
/// clients do). Returns frames carried per second (in + out, counted at
/// the server).
async fn floor(concurrency: usize, websocket: bool, seconds: f64) -> Result<f64, Error> {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                if websocket {
                    let config = load::client_config();
                    let Ok(mut ws) =
                        tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await
                    else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_binary() && ws.send(m).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let mut tcp = tcp;
                    let mut buf = [0u8; 100];
                    while tcp.read_exact(&mut buf).await.is_ok() {
                        if tcp.write_all(&buf).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            if websocket {
                let mut ws = load::ws_connect(&format!("ws://{addr}"), "/").await?;
                let frame = axum::body::Bytes::from(vec![7u8; 100]);
                while Instant::now() < stop {
                    ws.send(Message::Binary(frame.clone())).await?;
                    ws.next().await.ok_or("closed")??;
                    n += 1;
                }
            } else {
                let mut tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let mut buf = [7u8; 100];
                while Instant::now() < stop {
                    tcp.write_all(&buf).await?;
                    tcp.read_exact(&mut buf).await?;
                    n += 1;
                }
            }
            Ok::<u64, Error>(n)
        }));
    }
    let started = Instant::now();
    let mut round_trips = 0;
    for c in clients {
        round_trips += c.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    server.abort();
    Ok(2.0 * round_trips as f64 / secs)
}

fn main() -> Result<(), Error> {
    let args = Args::from_env();
    if args.flag("--serve") {
        return load::serve_child(&args);
    }
    let pin = args.flag("--pin");
    if pin {
        // This process (and the threads it starts) on CPU 0; the relay on 1.
        let me = std::process::id().to_string();
        std::process::Command::new("taskset")
            .args(["-a", "-c", "-p", "0", &me])
            .stdout(std::process::Stdio::null())
            .status()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, pin))
}

async fn run(args: Args, pin: bool) -> Result<(), Error> {
    let store = StoreKind::from_args(&args);
    let n: usize = args.get("--pairings", 20_000);
    let lists = args.flag("--lists");
    let reuse = args.flag("--reuse");
    let limit = Duration::from_secs(args.get("--seconds", 60));
    let transport = match args.string("--transport").as_deref() {
        Some("poll") => Transport::Poll,
        Some("poll-reqwest") => Transport::PollReqwest,
        _ => Transport::Ws,
    };
    let child = args.flag("--child") || pin;
    let concurrencies = args.list("--concurrency", &[256]);
    println!(
        "load average {} before pre-building; store {}, transport {:?}, lists {lists}, reuse {reuse}, relay {}",
        load::loadavg(),
        store.name(),
        transport,
        if pin {
            "child on CPU 1, generator on CPU 0"
        } else if child {
            "child process"
        } else {
            "in process"
        }
    );

    if args.flag("--floor") {
        for concurrency in concurrencies {
            let tcp = floor(concurrency, false, 3.0).await?;
            let ws = floor(concurrency, true, 3.0).await?;
            println!(
                "floor, {concurrency} echo clients: {tcp:.0} frames/s over TCP, {ws:.0} frames/s over WebSocket \
                 (in + out at the server); load average {}",
                load::loadavg()
            );
        }
        return Ok(());
    }
    for concurrency in concurrencies {
        let concurrency = concurrency.clamp(1, n);
        // Each run gets its own client ids and tokens.
        let run_id = u64::from(std::process::id()) << 16 | concurrency as u64;
        let t = Instant::now();
        let owner = |i: usize| {
            if reuse {
                (i % concurrency) as u64
            } else {
                i as u64
            }
        };
        let pairings = Arc::new(tokio::task::block_in_place(|| {
            load::prebuild(n, 2, run_id, owner)
        })?);
        let built = t.elapsed();

        let hosted = if child {
            let extra: Vec<String> = args
                .string("--ws-read-buffer")
                .map(|b| vec!["--ws-read-buffer".to_string(), b])
                .unwrap_or_default();
            Hosted::child(store, pin.then_some("1"), &extra)?
        } else {
            Hosted::in_process(store, load::load_limits(&args)).await?
        };
        let setup = Setup {
            base: hosted.base.clone(),
            http: hosted.http.clone(),
            addr: hosted.http.trim_start_matches("http://").to_string(),
            transport,
            lists,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(usize::MAX)
                .build()?,
        };
        let load_before = load::loadavg();
        let relay_pid = hosted.pid();
        let kernel = || {
            relay_pid
                .and_then(load::cpu_user_system)
                .map_or(f64::NAN, |(_, s)| s)
        };
        let cpu = || {
            (
                hosted.cpu_seconds(),
                load::cpu_seconds(std::process::id()).unwrap_or(f64::NAN),
            )
        };
        let kernel0 = kernel();
        let out = replay(setup, pairings, concurrency, reuse, limit, cpu).await;
        let relay_kernel = kernel() - kernel0;
        let (relay_cpu0, own_cpu0) = out.cpu_at_start;
        let relay_cpu = hosted.cpu_seconds() - relay_cpu0;
        let own_cpu = load::cpu_seconds(std::process::id()).unwrap_or(f64::NAN) - own_cpu0;
        let relay_memory = hosted.pid().and_then(load::memory_kib);
        let report = hosted.stop().await?;

        let done = out.latencies.len();
        let secs = out.elapsed.as_secs_f64();
        // Frames the relay carried per pairing: in, and out (an answer to
        // each, the 4 forwarded messages, the list a subscription sends).
        let frames_in = 5 + if reuse { 0 } else { 2 } + if lists { 5 } else { 0 };
        let frames_out = frames_in + 4 + usize::from(lists);
        let per_s = done as f64 / secs;
        let per = |cpu: f64| cpu / done.max(1) as f64 * 1e6;
        println!(
            "{} pairings, {concurrency} at a time, in {secs:.2} s (pre-built in {:.1} s): \
             {per_s:.0} pairings/s = {:.0} routed messages/s, {per_s:.0} redemptions/s, \
             {:.0} frames carried/s ({} a pairing); latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; failures {}",
            done,
            built.as_secs_f64(),
            per_s * 4.0,
            per_s * (frames_in + frames_out) as f64,
            frames_in + frames_out,
            load::pct_ms(&out.latencies, 0.5),
            load::pct_ms(&out.latencies, 0.99),
            load::pct_ms(&out.latencies, 1.0),
            out.failures.len(),
        );
        if let Some((rss, hwm)) = relay_memory {
            println!("  relay memory at the end: VmRSS {rss} KiB, VmHWM {hwm} KiB");
        }
        if child {
            println!(
                "  CPU: relay {relay_cpu:.2} s ({:.0} µs a pairing, {:.0} % of it in the kernel), generator {own_cpu:.2} s ({:.0} µs a pairing)",
                per(relay_cpu),
                100.0 * relay_kernel / relay_cpu,
                per(own_cpu)
            );
        } else {
            println!(
                "  CPU: relay and generator together {own_cpu:.2} s ({:.0} µs a pairing)",
                per(own_cpu)
            );
        }
        let http = load::HTTP_REQUESTS.swap(0, Ordering::Relaxed);
        if http > 0 {
            println!(
                "  HTTP requests: {http} ({:.1} a pairing, {:.0}/s)",
                http as f64 / done.max(1) as f64,
                http as f64 / secs
            );
        }
        if report.commits > 0 {
            println!(
                "  SQLite: {} commits, {} writes ({:.1} writes per commit)",
                report.commits,
                report.writes,
                report.writes as f64 / report.commits as f64
            );
        }
        let nonzero: Vec<&str> = report
            .metrics
            .iter()
            .filter(|m| !m.ends_with(" 0"))
            .map(|m| m.trim_start_matches("devicelink_"))
            .collect();
        println!("  relay metrics: {}", nonzero.join(", "));
        for f in out.failures.iter().take(5) {
            println!("  failure: {f}");
        }
        println!(
            "  load average {load_before} at the start, {} at the end",
            load::loadavg()
        );
    }
    Ok(())
}
