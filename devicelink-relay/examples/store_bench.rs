//! SQLite-durable redemptions per second.
//!
//! ```sh
//! cargo run --release -p devicelink-relay --example store_bench -- --threads 16 --tokens 20000
//! ```
//!
//! Registers and reserves `--tokens` tokens (untimed), then `--threads`
//! threads redeem them, each redemption acknowledged only after its batch is
//! committed with `synchronous = FULL`. Stops after `--seconds` (default 20)
//! if not done. Prints redemptions per second and writes per commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devicelink::relay::{Budget, ClientId, HelloDigest, SourceKey, TokenStore};
use devicelink::{Timestamp, TokenId};
use devicelink_relay::SqliteStore;

fn token(n: u64) -> TokenId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    TokenId::from_bytes(b)
}

fn arg(args: &[String], name: &str, default: u64) -> Result<u64, Box<dyn std::error::Error>> {
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).ok_or("missing value")?.parse()?),
        None => Ok(default),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let threads = arg(&args, "--threads", 16)?.max(1);
    let tokens = arg(&args, "--tokens", 20_000)?;
    let limit = Duration::from_secs(arg(&args, "--seconds", 20)?);
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path().join("bench.db"))?;
    let quota = Budget::new(u64::MAX, u64::MAX, u64::MAX >> 1).with_reserve(0, 0);
    let now = Timestamp::from_unix_millis(1_000);
    let far = Timestamp::from_unix_millis(1_000_000_000);
    let (companion, primary) = (ClientId::from(1), ClientId::from(2));

    // Set-up, also batched: register and reserve from many threads.
    let setup = Instant::now();
    std::thread::scope(|s| {
        for w in 0..threads {
            let store = &store;
            s.spawn(move || {
                let mut n = w;
                while n < tokens {
                    let t = token(n);
                    let _ = store.register(t, companion, SourceKey::LOCAL, far, quota);
                    let _ = store.reserve(&t, primary, &HelloDigest::of(&t.to_bytes()), now, far);
                    n += threads;
                }
            });
        }
    });
    let before = store.writer_stats();
    println!(
        "set-up: {tokens} tokens registered and reserved in {:.2} s",
        setup.elapsed().as_secs_f64()
    );

    let redeemed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..threads {
            let (store, redeemed) = (&store, Arc::clone(&redeemed));
            s.spawn(move || {
                let mut n = w;
                while n < tokens && start.elapsed() < limit {
                    if store.redeem(&token(n), companion, now, far).is_ok() {
                        redeemed.fetch_add(1, Ordering::Relaxed);
                    }
                    n += threads;
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let after = store.writer_stats();
    let n = redeemed.load(Ordering::Relaxed);
    let commits = after.commits - before.commits;
    println!(
        "redeemed {n} tokens with {threads} threads in {secs:.2} s: {:.0} durable redemptions/s, \
         {commits} commits ({:.1} redemptions per commit, synchronous=FULL, WAL)",
        n as f64 / secs,
        n as f64 / commits.max(1) as f64
    );
    Ok(())
}
