//! Runs the deterministic lifecycle simulator and prints a summary.
//!
//! ```text
//! cargo run --release --example simulate -- --accounts 10000 --days 60 --seed 1
//! cargo run --release --example simulate -- --accounts 1000000 --days 60 --seed 1 --lifecycle-only
//! cargo run --release --example simulate -- --accounts 300 --days 60 --seed 2 --threads 1 --show 50
//! ```
//!
//! Stdout is a pure function of the configuration (accounts, days, seed,
//! mode): the same seed prints the same bytes, whatever `--threads`. Timings
//! go to stderr only.

use std::time::Instant;

use devicelink::sim::{run, SimConfig, SimMode};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn parse<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value
        .parse()
        .map_err(|e| format!("{flag} {value:?}: {e}").into())
}

fn main() -> Result<()> {
    let mut config = SimConfig::default();
    let mut show = 20usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--accounts" => config.accounts = parse(&arg, args.next())?,
            "--days" => config.days = parse(&arg, args.next())?,
            "--seed" => config.seed = parse(&arg, args.next())?,
            "--threads" => config.threads = parse(&arg, args.next())?,
            "--show" => show = parse(&arg, args.next())?,
            "--lifecycle-only" => config.mode = SimMode::LifecycleOnly,
            "--full-crypto" => config.mode = SimMode::FullCrypto,
            "-h" | "--help" => {
                println!(
                    "usage: simulate [--accounts N] [--days D] [--seed S] [--lifecycle-only] \
                     [--threads T] [--show K]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }

    let started = Instant::now();
    let mut first = Vec::with_capacity(show);
    let report = run(&config, |event| {
        if first.len() < show {
            first.push(event.to_string());
        }
    })?;
    let elapsed = started.elapsed();

    let policy = &config.policy;
    println!(
        "devicelink lifecycle simulation: {} accounts x {} days, seed {}, {}",
        report.accounts, report.days, report.seed, report.mode
    );
    println!(
        "policy: {} companions, primary offline limit {} days, idle limit {}, offers {} s then {} s x {} rotations",
        policy.max_companions(),
        policy.primary_offline_limit().as_secs() / 86_400,
        policy
            .companion_idle_limit()
            .map_or("off".to_owned(), |d| format!("{} days", d.as_secs() / 86_400)),
        policy.first_offer_lifetime().as_secs(),
        policy.rotated_offer_lifetime().as_secs(),
        policy.max_rotations(),
    );
    println!("\nevents by kind:");
    for (kind, count) in report.counts.iter() {
        println!("  {:<36}{count:>12}", kind.name());
    }
    println!("  {:<36}{:>12}", "total", report.events());
    println!("\nevent log sha-256: {}", report.digest_hex());
    if show > 0 {
        println!("\nfirst {} events:", first.len());
        for line in &first {
            println!("  {line}");
        }
    }

    let secs = elapsed.as_secs_f64();
    eprintln!(
        "simulated {} accounts x {} days ({}) on {} thread(s) in {secs:.2} s: {:.0} accounts/s, {:.0} events/s",
        report.accounts,
        report.days,
        report.mode,
        config.threads.max(1),
        report.accounts as f64 / secs.max(1e-9),
        report.events() as f64 / secs.max(1e-9),
    );
    Ok(())
}
