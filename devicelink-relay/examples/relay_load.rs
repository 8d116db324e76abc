//! Full pairings through a relay over loopback, with real crypto on both
//! ends: the crate's own `CompanionClient` and `PrimaryClient` driving the
//! core's state machines, each pairing to a fresh account (offer, Hello,
//! Request, Grant, Confirm, the account's list published, the companion's
//! list carried and its subscription proven).
//!
//! ```sh
//! cargo run --release -p devicelink-relay --example relay_load -- \
//!     --concurrency 1,64,512 --links 2048 [--sqlite] [--transport poll] \
//!     [--child [--pin]] [--arrivals R]
//! ```
//!
//! Closed loop: `C` pairings in flight at once, each started as soon as
//! one ends, `--links` in all (at least `4 × C`), bounded by `--seconds`.
//! With `--arrivals R`, open loop instead: a pairing starts every `1/R`
//! seconds whatever is in flight, so the latency is a pairing's own, not
//! the queue's.
//!
//! Both ends run in this process; the relay too, unless `--child` (this
//! example again, with `--serve`, in a child process: then the relay's and
//! the clients' CPU times are apart) and `--pin` (`taskset`: the relay on
//! CPU 1, the clients on CPU 0). Before the runs it times the clients'
//! share of the cryptography alone, on one thread with no relay (the same
//! core calls a pairing makes on both ends, the subscription proof, and
//! the list and proof verifications the relay makes), so the tables can say
//! how much of the machine the cryptography takes.

mod load;

use std::sync::Arc;
use std::time::{Duration, Instant};

use devicelink::relay::SubscriptionProof;
use devicelink::{Account, Companion, DeviceIdentity, DeviceLabel, Policy, SignedDeviceList};
use devicelink_relay::server::{Clock, SystemClock};
use load::{Args, Error, Hosted, StoreKind};
use rand_core::OsRng;

/// The cryptography of one pairing, both ends and the relay's
/// verifications, on this thread with no I/O: CPU µs per pairing (the
/// thread's own CPU time, so other load on the machine does not count).
fn crypto_alone(n: u32) -> Result<f64, Error> {
    let clock = SystemClock;
    let start = load::thread_cpu_ns().ok_or("no schedstat")?;
    for _ in 0..n {
        let now = clock.now();
        let mut c = Companion::new(
            DeviceIdentity::generate(&mut OsRng),
            DeviceLabel::new("load")?,
            &Policy::default(),
            &mut OsRng,
            now,
        );
        let text = c.offer().ok_or("no offer")?.to_text();
        let mut account = Account::generate(Policy::default(), &mut OsRng, now);
        account.open_link_intent(now);
        let (mut hs, hello) = account.scan(&text, &mut OsRng, now)?;
        let request = c.receive_hello(&hello, &mut OsRng, now)?;
        account.receive_request(&mut hs, &request, &mut OsRng, now)?;
        let grant = account.grant(&mut hs, &mut OsRng, now)?;
        c.receive_grant(&grant, now)?;
        let confirm = c.consent(now)?;
        account.confirm(&mut hs, &confirm, now)?;
        let session = c.into_session().map_err(|_| "not linked")?;
        let client = devicelink_relay::ClientSecret::generate(&mut OsRng).client_id();
        let proof = SubscriptionProof::sign(&session, client).expect("the session holds its key");
        // What the relay verifies: both published lists, the proof.
        let list = SignedDeviceList::from_bytes(&account.device_list().to_bytes())?;
        SignedDeviceList::from_bytes(&session.device_list().to_bytes())?;
        let key = list.entry(session.index()).ok_or("not listed")?.device;
        proof.verify(&key, &session.account(), session.index(), client)?;
    }
    let ran = load::thread_cpu_ns()
        .ok_or("no schedstat")?
        .saturating_sub(start);
    Ok(ran as f64 / 1e3 / f64::from(n))
}

struct Outcome {
    latencies: Vec<Duration>,
    failures: Vec<String>,
    elapsed: Duration,
    most_in_flight: usize,
}

async fn closed_loop(base: &str, links: usize, concurrency: usize, limit: Duration) -> Outcome {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::new();
    for _ in 0..links {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        if started.elapsed() > limit {
            break;
        }
        let (base, clock) = (base.to_string(), clock.clone());
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(load::STEP, load::one_link(&base, &base, clock)).await;
            drop(permit);
            r
        }));
    }
    collect(tasks, started, concurrency).await
}

async fn open_loop(base: &str, links: usize, per_second: f64, limit: Duration) -> Outcome {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let started = Instant::now();
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let every = Duration::from_secs_f64(1.0 / per_second.max(0.001));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for _ in 0..links {
        tick.tick().await;
        if started.elapsed() > limit {
            break;
        }
        let (base, clock) = (base.to_string(), clock.clone());
        let (in_flight, most) = (in_flight.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            let now = in_flight.fetch_add(1, Relaxed) + 1;
            most.fetch_max(now, Relaxed);
            let r = tokio::time::timeout(load::STEP, load::one_link(&base, &base, clock)).await;
            in_flight.fetch_sub(1, Relaxed);
            r
        }));
    }
    let mut out = collect(tasks, started, 0).await;
    out.most_in_flight = most.load(std::sync::atomic::Ordering::Relaxed);
    out
}

type LinkTask =
    tokio::task::JoinHandle<Result<Result<Duration, Error>, tokio::time::error::Elapsed>>;

async fn collect(tasks: Vec<LinkTask>, started: Instant, concurrency: usize) -> Outcome {
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(Ok(d))) => latencies.push(d),
            Ok(Ok(Err(e))) => failures.push(e.to_string()),
            Ok(Err(_)) => failures.push("timed out".into()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Outcome {
        latencies,
        failures,
        elapsed,
        most_in_flight: concurrency,
    }
}

fn main() -> Result<(), Error> {
    let args = Args::from_env();
    if args.flag("--serve") {
        return load::serve_child(&args);
    }
    let pin = args.flag("--pin");
    if pin {
        let me = std::process::id().to_string();
        std::process::Command::new("taskset")
            .args(["-a", "-c", "-p", "0", &me])
            .stdout(std::process::Stdio::null())
            .status()?;
    }
    let crypto_us = crypto_alone(args.get("--crypto-samples", 200))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, pin, crypto_us))
}

async fn run(args: Args, pin: bool, crypto_us: f64) -> Result<(), Error> {
    let store = StoreKind::from_args(&args);
    let child = args.flag("--child") || pin;
    let poll = args.string("--transport").as_deref() == Some("poll");
    let limit = Duration::from_secs(args.get("--seconds", 60));
    let arrivals: Option<f64> = args.string("--arrivals").and_then(|v| v.parse().ok());
    println!(
        "load average {}; store {}, transport {}, relay {}; the cryptography alone: {crypto_us:.0} CPU µs a pairing \
         (so at most {:.0} pairings/s on 2 cores with nothing else to do)",
        load::loadavg(),
        store.name(),
        if poll { "long-poll" } else { "websocket" },
        if pin {
            "child on CPU 1, clients on CPU 0"
        } else if child {
            "child process"
        } else {
            "in process"
        },
        2e6 / crypto_us,
    );
    let runs: Vec<usize> = match arrivals {
        Some(_) => vec![0],
        None => args.list("--concurrency", &[1, 64, 512]),
    };
    for concurrency in runs {
        let links = args.get("--links", 2_048).max(concurrency * 4);
        let hosted = if child {
            Hosted::child(store, pin.then_some("1"), &[])?
        } else {
            Hosted::in_process(store, load::load_limits(&args)).await?
        };
        let base = if poll {
            hosted.http.clone()
        } else {
            hosted.base.clone()
        };
        let load_before = load::loadavg();
        let relay_cpu0 = hosted.cpu_seconds();
        let own_cpu0 = load::cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
        let out = match arrivals {
            Some(r) => open_loop(&base, links, r, limit).await,
            None => closed_loop(&base, links, concurrency, limit).await,
        };
        let relay_cpu = hosted.cpu_seconds() - relay_cpu0;
        let own_cpu = load::cpu_seconds(std::process::id()).unwrap_or(f64::NAN) - own_cpu0;
        let report = hosted.stop().await?;
        let done = out.latencies.len();
        let secs = out.elapsed.as_secs_f64();
        let per = |cpu: f64| cpu / done.max(1) as f64 * 1e6;
        let shape = match arrivals {
            Some(r) => format!(
                "open loop at {r:.0}/s (at most {} in flight)",
                out.most_in_flight
            ),
            None => format!("{concurrency} at a time"),
        };
        println!(
            "{done} pairings, {shape}, in {secs:.2} s: {:.0} pairings/s; latency p50 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms; failures {}",
            done as f64 / secs,
            load::pct_ms(&out.latencies, 0.5),
            load::pct_ms(&out.latencies, 0.99),
            load::pct_ms(&out.latencies, 1.0),
            out.failures.len(),
        );
        if child {
            println!(
                "  CPU a pairing: relay {:.0} µs, clients {:.0} µs (of which the clients' cryptography ≈ {:.0} µs)",
                per(relay_cpu),
                per(own_cpu),
                crypto_us,
            );
        } else {
            println!(
                "  CPU a pairing: {:.0} µs, relay and clients together (the cryptography alone ≈ {crypto_us:.0} µs)",
                per(own_cpu)
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
