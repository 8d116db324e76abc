//! Crash safety of the relay *server*: the real binary on a SQLite file,
//! driven by real clients (real crypto) linking companions as fast as they
//! can, is killed with SIGKILL in the middle of the run and restarted on
//! the same file. Every link the clients saw acknowledged (the companion
//! confirmed, the primary's list acknowledged) must have survived: its QR
//! code stays redeemed (a new Hello for it is a conflict) and its device
//! list is already applied (publishing it again changes nothing).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bounded, rng};
use devicelink::{Account, Companion, DeviceIdentity, DeviceLabel, ErrorKind, Policy};
use devicelink_relay::client::{CompanionClient, LinkOutcome, PrimaryClient};
use devicelink_relay::server::{Clock, SystemClock};

/// Concurrent link loops during the run.
const LOOPS: u64 = 6;

/// The relay process; killed (SIGKILL) when dropped, so a failing test
/// leaves no server behind.
struct Relay(Child);

impl Relay {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The relay binary on `db`, on a free loopback port; returns the process
/// and its `ws://` base once it listens.
fn start_relay(db: &std::path::Path) -> (Relay, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_devicelink-relay"))
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .args([
            "--rate",
            "10000",
            "--burst",
            "10000",
            "--connect-rate-per-address",
            "0",
            "--max-connections-per-address",
            "100000",
            "--max-tokens-per-address",
            "1000000",
            "--max-http-connections-per-address",
            "100000",
            "--request-rate-per-address",
            "0",
            "--new-accounts-per-address-per-hour",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (Relay(child), base)
}

/// What a link the clients saw acknowledged leaves to check.
struct Acknowledged {
    offer_text: String,
    list: devicelink::SignedDeviceList,
}

/// Links fresh companions to fresh accounts until `stop`, recording each
/// acknowledged link.
async fn link_loop(
    base: String,
    n: u64,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Acknowledged>>>,
) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let Ok(mut primary) = PrimaryClient::connect(&base, clock.clone()).await else {
        return;
    };
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let seed = n * 1_000_000 + round;
        let mut r = rng(seed);
        let now = clock.now();
        let companion = Companion::new(
            DeviceIdentity::generate(&mut r),
            DeviceLabel::new("crash test").unwrap(),
            &Policy::default(),
            &mut r,
            now,
        );
        let mut account = Account::generate(Policy::default(), &mut r, now);
        let Ok(mut c) = CompanionClient::connect(&base, companion, clock.clone()).await else {
            return;
        };
        let text = c.offer_text().unwrap();
        account.open_link_intent(clock.now());
        let mut rc = rng(seed + 7);
        let (linked, outcome) = tokio::join!(
            c.link(&mut rc, |_| true),
            primary.link(&mut account, &text, &mut r, |_| true)
        );
        match (linked, outcome) {
            (Ok(_), Ok(LinkOutcome::Linked(_))) => seen.lock().unwrap().push(Acknowledged {
                offer_text: text,
                list: account.device_list().clone(),
            }),
            // The relay died under us.
            _ => return,
        }
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_under_load_loses_no_acknowledged_link() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let seen = Arc::new(Mutex::new(Vec::new()));
    for run in 0..2u64 {
        let (mut child, base) = start_relay(&db);
        let stop = Arc::new(AtomicBool::new(false));
        let before = seen.lock().unwrap().len();
        let loops: Vec<_> = (0..LOOPS)
            .map(|n| {
                tokio::spawn(link_loop(
                    base.clone(),
                    run * LOOPS + n,
                    stop.clone(),
                    seen.clone(),
                ))
            })
            .collect();
        // Kill mid-run, once links are flowing.
        bounded(async {
            while seen.lock().unwrap().len() < before + 60 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        child.kill(); // SIGKILL
        stop.store(true, Ordering::Relaxed);
        for l in loops {
            let _ = bounded(l).await;
        }
    }

    // Restarted on the same file: every acknowledged link is there.
    let (mut child, base) = start_relay(&db);
    let acknowledged = std::mem::take(&mut *seen.lock().unwrap());
    assert!(acknowledged.len() >= 120, "{} links", acknowledged.len());
    eprintln!("{} acknowledged links to check", acknowledged.len());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut primary = bounded(PrimaryClient::connect(&base, clock.clone()))
        .await
        .unwrap();
    let mut prober = Account::generate(Policy::default(), &mut rng(99), clock.now());
    for (i, link) in acknowledged.iter().enumerate() {
        // Its QR code stays redeemed.
        prober.open_link_intent(clock.now());
        let (_, hello) = prober
            .scan(&link.offer_text, &mut rng(100 + i as u64), clock.now())
            .unwrap();
        let refused = bounded(primary.send_raw_message(&hello)).await.unwrap_err();
        assert_eq!(
            refused.kind(),
            Some(ErrorKind::Conflict),
            "link {i}: {refused}"
        );
        // Its list is applied: publishing it again changes nothing.
        let applied_again = bounded(primary.publish_list(&link.list)).await.unwrap();
        assert!(!applied_again, "link {i}: its list was lost");
    }
    child.kill();
}
