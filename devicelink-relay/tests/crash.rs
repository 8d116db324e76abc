//! Crash safety: a child process redeems tokens and stores newer device
//! lists on a SQLite file and prints each acknowledged write; it is killed
//! with SIGKILL in the middle of the run, and the file, reopened, must hold
//! every acknowledged redemption (and refuse each a second time) and at
//! least the newest acknowledged list version.

#![cfg(unix)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use devicelink::relay::{ClientId, HelloDigest, LedgerError, TokenState, TokenStore};
use devicelink::{AccountKey, SignedDeviceList, Timestamp, TokenId};
use devicelink_relay::{SqliteStore, Store};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn token(n: u64) -> TokenId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    TokenId::from_bytes(b)
}

/// The example binary, built by Cargo for this test run (examples are built
/// for integration tests); built here if missing.
fn child_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join("redeem_loop");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "devicelink-relay",
                "--example",
                "redeem_loop",
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
    path
}

#[test]
fn sigkill_mid_run_loses_no_acknowledged_redemption_and_redeems_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let mut acknowledged = BTreeSet::new();
    let mut newest_lists = Vec::new();
    // Two runs on the same file: killed, restarted (new tokens), killed.
    for run in 0..2u64 {
        let mut child = Command::new(child_binary())
            .arg(&db)
            .env("REDEEM_LOOP_OFFSET", (run * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut tokens, mut list) = (Vec::new(), 0u64);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match line.trim().strip_prefix("L ") {
                    Some(v) => list = list.max(v.parse().unwrap()),
                    None => tokens.push(line.trim().parse::<u64>().unwrap()),
                }
            }
            (tokens, list)
        });
        // Let it run until it has acknowledged work, at most a few seconds,
        // then kill it in the middle of its writes.
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(700));
        while start.elapsed() < Duration::from_secs(3)
            && db
                .with_extension("db-wal")
                .metadata()
                .map_or(0, |m| m.len())
                == 0
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let (printed, list) = reader.join().unwrap();
        assert!(!printed.is_empty(), "run {run}: nothing acknowledged");
        assert!(list > 0, "run {run}: no list acknowledged");
        let offset = run * 1_000_000;
        // The child's account key is seeded by its offset.
        let key = AccountKey::generate(&mut ChaCha20Rng::seed_from_u64(offset));
        newest_lists.push((key.account_id(), list));
        for n in printed {
            assert!(acknowledged.insert(n), "token {n} acknowledged twice");
        }
    }

    let store = SqliteStore::open(&db).unwrap();
    let now = Timestamp::from_unix_millis(2_000);
    let far = Timestamp::from_unix_millis(1_000_000_000);
    for &n in &acknowledged {
        let record = store.get(&token(n)).unwrap();
        assert!(
            matches!(record.map(|r| r.state), Some(TokenState::Redeemed { .. })),
            "acknowledged token {n} is {record:?}"
        );
        let companion = record.unwrap().client;
        assert_eq!(
            store.redeem(&token(n), companion, now, far),
            Err(LedgerError::TokenAlreadyRedeemed)
        );
        assert_eq!(
            store.reserve(
                &token(n),
                ClientId::from(9),
                &HelloDigest::of(b"hello"),
                now,
                far
            ),
            Err(LedgerError::TokenAlreadyRedeemed)
        );
    }
    for (account, version) in &newest_lists {
        let held = store.account(account).unwrap().unwrap();
        let stored = held.facts.list_version();
        assert!(
            stored >= *version,
            "acknowledged list {version} lost: {stored}"
        );
        let list = SignedDeviceList::from_bytes(&held.list).unwrap();
        assert_eq!((list.account(), list.version()), (*account, stored));
    }
    println!(
        "{} acknowledged redemptions and list versions {:?} over 2 killed runs, all durable",
        acknowledged.len(),
        newest_lists.iter().map(|l| l.1).collect::<Vec<_>>()
    );
}
