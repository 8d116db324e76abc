//! Crash safety: a child process redeems tokens on a SQLite file and prints
//! each acknowledged redemption; it is killed with SIGKILL in the middle of
//! the run, and the file, reopened, must hold every acknowledged redemption
//! and must refuse every one of them a second time.

#![cfg(unix)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use devicelink::relay::{ClientId, LedgerError, TokenState, TokenStore};
use devicelink::{Timestamp, TokenId};
use devicelink_relay::SqliteStore;

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
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .map(|l| l.trim().parse::<u64>().unwrap())
                .collect::<Vec<u64>>()
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
        let printed = reader.join().unwrap();
        assert!(!printed.is_empty(), "run {run}: nothing acknowledged");
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
            store.reserve(&token(n), ClientId::from(9), now, far),
            Err(LedgerError::TokenAlreadyRedeemed)
        );
    }
    println!(
        "{} acknowledged redemptions over 2 killed runs, all durable",
        acknowledged.len()
    );
}
