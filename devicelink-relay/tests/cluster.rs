//! Three relay nodes (the real binary, separate processes) on one
//! throwaway PostgreSQL: primaries racing one QR across nodes link exactly
//! once; a link, a revocation, a heartbeat and the 14-day expiry work with
//! the companion and the primary on different nodes; a node killed with
//! SIGKILL loses nothing acknowledged; a restart of PostgreSQL is survived
//! by every node without a restart of its own.
//!
//! The nodes run on 127.0.0.1 (port 0) with `--test-clock-file`: the test
//! writes the virtual time to a file that every node re-reads, and its own
//! clients read the same `ManualClock`. Every wait is event-based, bounded
//! by a hang guard.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devicelink::relay::{TokenState, TokenStore};
use devicelink::{
    Account, Companion, DeviceIdentity, DeviceLabel, ErrorKind, LogoutReason, Policy,
    SessionStatus, Timestamp,
};
use devicelink_relay::client::{
    Backoff, ClientError, CompanionClient, CompanionUpdate, LinkOutcome, PrimaryClient,
};
use devicelink_relay::server::{Clock, ManualClock};
use devicelink_relay::PgStore;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

mod pg;

/// Hang guard of every step.
const STEP: Duration = Duration::from_secs(30);
const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);
const RACE_ROUNDS: u64 = 500;
const RACERS: usize = 8;

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .expect("a step took longer than its hang guard")
}

/// One relay process.
struct Node {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Node {
    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The cluster under test: PostgreSQL, nodes, and the shared virtual clock.
struct Nodes {
    nodes: Vec<Node>,
    clock: Arc<ManualClock>,
    clock_file: PathBuf,
    url: String,
    dir: tempfile::TempDir,
    lease_ms: u64,
    /// More flags for every node.
    extra: Vec<String>,
    // Last: dropped after the nodes.
    pg: pg::PgServer,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- relay node logs ----\n{}", self.logs());
        }
    }
}

impl Nodes {
    fn start(pg: pg::PgServer, n: usize) -> Self {
        Self::start_with_lease(pg, n, 1_500)
    }

    /// `n` nodes whose leases last `lease_ms`.
    fn start_with_lease(pg: pg::PgServer, n: usize, lease_ms: u64) -> Self {
        Self::start_with_flags(pg, n, lease_ms, &[])
    }

    /// `n` nodes whose leases last `lease_ms`, with `extra` flags.
    fn start_with_flags(pg: pg::PgServer, n: usize, lease_ms: u64, extra: &[&str]) -> Self {
        let url = pg.create_database("cluster");
        let dir = tempfile::tempdir().unwrap();
        let clock_file = dir.path().join("clock");
        std::fs::write(&clock_file, T0.as_unix_millis().to_string()).unwrap();
        let mut nodes = Nodes {
            nodes: Vec::new(),
            clock: Arc::new(ManualClock::new(T0)),
            clock_file,
            url,
            dir,
            lease_ms,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            pg,
        };
        for _ in 0..n {
            let node = nodes.spawn();
            nodes.nodes.push(node);
        }
        nodes
    }

    fn spawn(&self) -> Node {
        let i = self.nodes.len();
        let log = self.dir.path().join(format!("node-{i}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_devicelink-relay"))
            .args(["--listen", "127.0.0.1:0", "--db", &self.url])
            .arg("--test-clock-file")
            .arg(&self.clock_file)
            .args(["--sweep-interval-ms", "50", "--node-lease-ms"])
            .arg(self.lease_ms.to_string())
            .args(["--rate", "100000", "--burst", "100000", "--pg-pool", "8"])
            // Every test client comes from 127.0.0.1.
            .args(["--max-tokens-per-address", "1000000"])
            .args(["--request-rate-per-address", "0"])
            .args(["--new-accounts-per-address-per-hour", "0"])
            .args(&self.extra)
            .env(
                "RUST_LOG",
                std::env::var("DEVICELINK_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("ws://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| {
                panic!(
                    "node {i} did not start: {line:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Node {
            child,
            base: format!("ws://{addr}"),
            log,
        }
    }

    fn base(&self, i: usize) -> &str {
        &self.nodes[i % self.nodes.len()].base
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Moves every node's clock and the test's.
    fn advance(&self, by: Duration) {
        self.clock.advance(by);
        let tmp = self.clock_file.with_extension("tmp");
        std::fs::write(&tmp, self.now().as_unix_millis().to_string()).unwrap();
        std::fs::rename(&tmp, &self.clock_file).unwrap();
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| std::fs::read_to_string(&n.log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    fn db(&self) -> String {
        self.url.rsplit('/').next().unwrap().to_string()
    }

    /// Nodes whose lease PostgreSQL holds as live.
    fn live_nodes(&self) -> usize {
        self.pg
            .psql(
                &self.db(),
                "SELECT count(*) FROM relay_nodes WHERE lease_until > now()",
            )
            .trim()
            .parse()
            .unwrap()
    }
}

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn account(nodes: &Nodes, seed: u64) -> Account {
    Account::generate(Policy::default(), &mut rng(seed), nodes.now())
}

async fn companion(nodes: &Nodes, on: usize, seed: u64, label: &str) -> CompanionClient {
    let mut r = rng(seed);
    let c = Companion::new(
        DeviceIdentity::generate(&mut r),
        DeviceLabel::new(label).unwrap(),
        &Policy::default(),
        &mut r,
        nodes.now(),
    );
    bounded(CompanionClient::connect(nodes.base(on), c, nodes.clock()))
        .await
        .unwrap()
}

async fn primary(nodes: &Nodes, on: usize) -> PrimaryClient {
    bounded(PrimaryClient::connect(nodes.base(on), nodes.clock()))
        .await
        .unwrap()
}

async fn link(
    nodes: &Nodes,
    primary: &mut PrimaryClient,
    account: &mut Account,
    companion: &mut CompanionClient,
    seed: u64,
) {
    let text = companion.offer_text().unwrap();
    account.open_link_intent(nodes.now());
    let (mut rc, mut rp) = (rng(seed), rng(seed + 1));
    let (c, p) = bounded(async {
        tokio::join!(
            companion.link(&mut rc, |_| true),
            primary.link(account, &text, &mut rp, |_| true)
        )
    })
    .await;
    c.unwrap();
    assert!(matches!(p.unwrap(), LinkOutcome::Linked(_)));
}

/// Waits (bounded) for a Logout update, returning it and what came before.
async fn until_logout(c: &mut CompanionClient) -> (CompanionUpdate, Vec<CompanionUpdate>) {
    let mut before = Vec::new();
    loop {
        let u = bounded(c.next_update()).await.unwrap();
        if matches!(u, CompanionUpdate::Logout { .. }) {
            return (u, before);
        }
        before.push(u);
    }
}

/// Waits (bounded) for the next heartbeat update.
async fn until_heartbeat(c: &mut CompanionClient) -> SessionStatus {
    loop {
        match bounded(c.next_update()).await.unwrap() {
            CompanionUpdate::Heartbeat(s) => return s,
            CompanionUpdate::DeviceList(_) | CompanionUpdate::Ignored(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// Updates that arrive within `wait` (stops at the first gap).
async fn updates_within(c: &mut CompanionClient, wait: Duration) -> Vec<CompanionUpdate> {
    let mut out = Vec::new();
    while let Ok(Ok(u)) = tokio::time::timeout(wait, c.next_update()).await {
        out.push(u);
    }
    out
}

/// Polls `f` until it is true (bounded by the hang guard).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < STEP, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_eight_primaries_race_one_qr_and_link_exactly_once() {
    let Some(pg) = pg::PgServer::start() else {
        return;
    };
    let nodes = Nodes::start(pg, 3);
    let mut primaries = Vec::new();
    for i in 0..RACERS {
        primaries.push(primary(&nodes, i).await);
    }
    for round in 0..RACE_ROUNDS {
        let mut c = companion(&nodes, round as usize, 10_000 + round, "Raced").await;
        let text = c.offer_text().unwrap();
        let companion_task = tokio::spawn(async move {
            let r = c
                .link(&mut rng(20_000 + round), |_| true)
                .await
                .map(|s| s.account());
            (c, r)
        });
        let mut racers = Vec::new();
        for (i, mut p) in primaries.drain(..).enumerate() {
            let text = text.clone();
            let seed = 30_000 + round * 16 + i as u64;
            let mut acct = account(&nodes, seed);
            acct.open_link_intent(nodes.now());
            racers.push(tokio::spawn(async move {
                let r = p.link(&mut acct, &text, &mut rng(seed + 8), |_| true).await;
                (p, acct.account_id(), r)
            }));
        }
        let mut winners = Vec::new();
        for r in racers {
            let (p, id, result) = bounded(r).await.unwrap();
            primaries.push(p);
            match result {
                Ok(LinkOutcome::Linked(_)) => winners.push(id),
                Ok(other) => panic!("round {round}: {other:?}"),
                Err(e) => assert_eq!(e.kind(), Some(ErrorKind::Conflict), "round {round}: {e}"),
            }
        }
        let (c, linked_to) = bounded(companion_task).await.unwrap();
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(linked_to.unwrap(), winners[0], "round {round}");
        c.close().await;
    }
    // The database agrees: RACE_ROUNDS tokens redeemed, none twice (a
    // second redemption of a token is impossible by its row's state), and
    // RACE_ROUNDS accounts hold a list.
    let db = nodes.db();
    let redeemed = nodes
        .pg
        .psql(&db, "SELECT count(*) FROM tokens WHERE state = 2");
    assert_eq!(redeemed.trim(), RACE_ROUNDS.to_string());
    let accounts = nodes.pg.psql(&db, "SELECT count(*) FROM accounts");
    assert_eq!(accounts.trim(), RACE_ROUNDS.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_nodes_a_link_a_revocation_a_heartbeat_and_the_fourteen_day_expiry() {
    let Some(pg) = pg::PgServer::start() else {
        return;
    };
    let nodes = Nodes::start(pg, 3);
    // The primary on node 0, companions on nodes 1 and 2.
    let mut p = primary(&nodes, 0).await;
    let mut acct = account(&nodes, 1);
    let mut kept = companion(&nodes, 1, 100, "Kept").await;
    link(&nodes, &mut p, &mut acct, &mut kept, 101).await;
    let mut revoked = companion(&nodes, 2, 200, "Revoked").await;
    link(&nodes, &mut p, &mut acct, &mut revoked, 201).await;
    assert_eq!(acct.companion_count(nodes.now()), 2);

    // A heartbeat published on node 0 reaches both.
    nodes.advance(Duration::from_secs(3600));
    let hb = acct.heartbeat(nodes.now());
    bounded(p.publish_heartbeat(&hb)).await.unwrap();
    for c in [&mut kept, &mut revoked] {
        assert!(matches!(
            until_heartbeat(c).await,
            SessionStatus::Linked { .. }
        ));
    }

    // A revocation published on node 0: node 2 pushes the list and the
    // logout to its device; node 1's device gets the list and no logout.
    let victim = revoked.session().unwrap().index();
    acct.revoke(victim, nodes.now()).unwrap();
    bounded(p.publish_list(acct.device_list())).await.unwrap();
    let (logout, _) = until_logout(&mut revoked).await;
    assert!(matches!(
        logout,
        CompanionUpdate::Logout { index, reason: LogoutReason::Revoked, status: SessionStatus::LoggedOut { reason: LogoutReason::Revoked } } if index == victim
    ));
    let got = updates_within(&mut kept, Duration::from_millis(1_000)).await;
    assert!(
        got.iter()
            .any(|u| matches!(u, CompanionUpdate::DeviceList(_))),
        "{got:?}"
    );
    assert!(
        !got.iter()
            .any(|u| matches!(u, CompanionUpdate::Logout { .. })),
        "{got:?}"
    );

    // The kept companion moves to node 2 (a reconnect to another node)
    // and still hears the primary, which moves to node 1.
    let backoff = Backoff::default();
    bounded(kept.reconnect(nodes.base(2), &backoff))
        .await
        .unwrap();
    bounded(p.reconnect(nodes.base(1), &backoff)).await.unwrap();
    // (The reconnect's catch-up list comes first.)
    nodes.advance(Duration::from_secs(3600));
    let hb = acct.heartbeat(nodes.now());
    bounded(p.publish_heartbeat(&hb)).await.unwrap();
    assert!(matches!(
        until_heartbeat(&mut kept).await,
        SessionStatus::Linked { .. }
    ));

    // Thirteen days on: nothing. Past fourteen since the last heartbeat:
    // node 2 (not the node that applied it) logs its companion out.
    nodes.advance(Duration::from_secs(13 * 86_400));
    let got = updates_within(&mut kept, Duration::from_millis(500)).await;
    assert!(
        !got.iter()
            .any(|u| matches!(u, CompanionUpdate::Logout { .. })),
        "{got:?}"
    );
    nodes.advance(
        Policy::default().primary_offline_limit() - Duration::from_secs(13 * 86_400)
            + Duration::from_secs(1),
    );
    let index = kept.session().unwrap().index();
    let (logout, _) = until_logout(&mut kept).await;
    assert_eq!(
        logout,
        CompanionUpdate::Logout {
            index,
            reason: LogoutReason::PrimaryOffline,
            status: SessionStatus::LoggedOut {
                reason: LogoutReason::PrimaryOffline
            }
        }
    );
    // The store agrees: the floor was recorded once for the account.
    let store = PgStore::connect(&nodes.url).unwrap();
    let held = devicelink_relay::Store::account(&store, &acct.account_id())
        .unwrap()
        .unwrap();
    assert!(
        held.facts.logged_out_floor() >= index.0,
        "{held:?}\n{}",
        nodes.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_pairing_loses_nothing_acknowledged() {
    let Some(pg) = pg::PgServer::start() else {
        return;
    };
    let mut nodes = Nodes::start(pg, 3);
    let mut p = primary(&nodes, 0).await;
    let mut acct = account(&nodes, 3);
    // A companion linked through node 1 before the kill.
    let mut linked = companion(&nodes, 1, 300, "Linked before").await;
    link(&nodes, &mut p, &mut acct, &mut linked, 301).await;
    // A companion pairing on node 1: its token is registered (acknowledged).
    let mut pairing = companion(&nodes, 1, 400, "Pairing").await;
    let old_qr = pairing.offer_text().unwrap();
    let old_token = devicelink::PairingOffer::from_text(&old_qr)
        .unwrap()
        .token_id();

    nodes.nodes[1].kill();

    // The pairing companion loses its connection (a typed error), connects
    // to node 2 as the same client (its id is stable) and resumes: the
    // primary on node 0 scans the QR shown all along and the link
    // completes across nodes.
    let lost = bounded(pairing.link(&mut rng(401), |_| true)).await;
    assert!(
        matches!(
            lost,
            Err(ClientError::Socket(_) | ClientError::Closed { .. })
        ),
        "{lost:?}"
    );
    bounded(pairing.reconnect(nodes.base(2), &Backoff::default()))
        .await
        .unwrap();
    assert_eq!(pairing.offer_text().as_deref(), Some(old_qr.as_str()));
    link(&nodes, &mut p, &mut acct, &mut pairing, 402).await;

    // The companion linked before the kill reconnects to node 2 and still
    // hears its account.
    bounded(linked.reconnect(nodes.base(2), &Backoff::default()))
        .await
        .unwrap();
    let hb = acct.heartbeat(nodes.now());
    bounded(p.publish_heartbeat(&hb)).await.unwrap();
    for c in [&mut linked, &mut pairing] {
        assert!(matches!(
            until_heartbeat(c).await,
            SessionStatus::Linked { .. }
        ));
    }

    // The dead node's lease lapses: nothing is addressed to it any more.
    eventually("node 1's lease did not lapse", || nodes.live_nodes() == 2).await;

    // Nothing acknowledged was lost and nothing was redeemed twice: the
    // resumed pairing's token is redeemed (once: a second redemption is
    // refused), both links' tokens are the only redeemed ones, and the
    // account's list is the newest the primary published.
    let db = nodes.db();
    let store = PgStore::connect(&nodes.url).unwrap();
    let old = store.get(&old_token).unwrap().unwrap();
    assert!(matches!(old.state, TokenState::Redeemed { .. }), "{old:?}");
    let now = nodes.now();
    assert_eq!(
        store.redeem(&old_token, old.client, now, now),
        Err(devicelink::LedgerError::TokenAlreadyRedeemed)
    );
    let redeemed = nodes
        .pg
        .psql(&db, "SELECT count(*) FROM tokens WHERE state = 2");
    assert_eq!(redeemed.trim(), "2");
    let held = devicelink_relay::Store::account(&store, &acct.account_id())
        .unwrap()
        .unwrap();
    assert_eq!(held.facts.list_version(), acct.device_list_version());
    // A replacement node joins and serves.
    let replacement = nodes.spawn();
    nodes.nodes.push(replacement);
    let mut c = companion(&nodes, 3, 600, "On the new node").await;
    link(&nodes, &mut p, &mut acct, &mut c, 601).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_postgres_mid_run_is_survived_by_every_node() {
    let Some(pg) = pg::PgServer::start() else {
        return;
    };
    // Leases longer than the outage: a node is not taken for dead because
    // PostgreSQL was.
    let nodes = Nodes::start_with_lease(pg, 3, 5_000);
    let mut p = primary(&nodes, 0).await;
    let mut acct = account(&nodes, 5);
    let mut before = companion(&nodes, 1, 700, "Before").await;
    link(&nodes, &mut p, &mut acct, &mut before, 701).await;

    for (round, mode) in ["fast", "immediate"].into_iter().enumerate() {
        let round = round as u64;
        nodes.pg.stop(mode);
        // While PostgreSQL is down: typed "unavailable" (700), nothing
        // guessed.
        let mut r = rng(800 + round);
        let c = Companion::new(
            DeviceIdentity::generate(&mut r),
            DeviceLabel::new("While down").unwrap(),
            &Policy::default(),
            &mut r,
            nodes.now(),
        );
        let down = bounded(CompanionClient::connect(nodes.base(2), c, nodes.clock())).await;
        match down {
            Err(e) => assert_eq!(e.kind(), Some(ErrorKind::Unavailable), "{e}"),
            Ok(_) => panic!("a registration was acknowledged while PostgreSQL was down"),
        }
        nodes.pg.start_again();

        // Back: every node renews its lease by itself (after a crash of
        // PostgreSQL, which empties the lease table, it writes it again)...
        eventually("the nodes did not renew their leases", || {
            nodes.live_nodes() == 3
        })
        .await;
        // ...and serves again.
        for on in 0..3 {
            let start = Instant::now();
            let mut c = loop {
                let mut r = rng(900 + round * 10 + on as u64);
                let comp = Companion::new(
                    DeviceIdentity::generate(&mut r),
                    DeviceLabel::new("After").unwrap(),
                    &Policy::default(),
                    &mut r,
                    nodes.now(),
                );
                match CompanionClient::connect(nodes.base(on), comp, nodes.clock()).await {
                    Ok(c) => break c,
                    Err(e) => {
                        assert_eq!(e.kind(), Some(ErrorKind::Unavailable), "{e}");
                        assert!(start.elapsed() < STEP, "node {on} did not recover");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            let mut p_on = primary(&nodes, (on + 1) % 3).await;
            let mut fresh = account(&nodes, 1_000 + round * 10 + on as u64);
            link(
                &nodes,
                &mut p_on,
                &mut fresh,
                &mut c,
                950 + round * 10 + on as u64,
            )
            .await;
        }
        // The companion linked before the restart still hears its primary.
        nodes.advance(Duration::from_secs(60));
        let hb = acct.heartbeat(nodes.now());
        let start = Instant::now();
        loop {
            match bounded(p.publish_heartbeat(&hb)).await {
                Ok(()) => break,
                Err(e) => {
                    assert_eq!(e.kind(), Some(ErrorKind::Unavailable), "{e}");
                    assert!(start.elapsed() < STEP, "the heartbeat was never applied");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        assert!(matches!(
            until_heartbeat(&mut before).await,
            SessionStatus::Linked { .. }
        ));
    }
}

/// Anyone who can connect to the database can NOTIFY on any channel: a
/// forged notice makes a node read, never act. And an identified client
/// that left leaves no presence row once its mailbox time is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_notifications_change_nothing_and_departed_clients_leave_no_presence() {
    let Some(pg) = pg::PgServer::start() else {
        return;
    };
    let nodes = Nodes::start_with_flags(pg, 2, 1_500, &["--mailbox-ttl-secs", "1"]);
    let mut p = primary(&nodes, 0).await;
    let mut acct = account(&nodes, 3);
    let mut kept = companion(&nodes, 1, 300, "Kept").await;
    link(&nodes, &mut p, &mut acct, &mut kept, 301).await;
    let index = kept.session().unwrap().index();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let account_hex = hex(&acct.account_id().to_bytes());
    let client_hex = hex(&kept.secret().client_id().to_bytes());
    let db = nodes.db();
    let node1: String = nodes.pg.psql(
        &db,
        &format!("SELECT node FROM relay_presence WHERE client = '\\x{client_hex}'"),
    );
    let node1 = node1.trim().to_owned();
    assert!(!node1.is_empty(), "the companion's presence row");
    // Forged: the old format's logouts, a revocation notice, a sweep
    // notice, a heartbeat that is no heartbeat, and a "moved elsewhere"
    // for the companion's client to the node that holds it.
    for payload in [
        format!("L99:{account_hex}:{}.2.0", index.0),
        format!("O99:{account_hex}:{}.4.0", index.0),
        format!("A99:{account_hex}"),
        format!("H99:{}", hex(&[7; 185])),
    ] {
        nodes.pg.psql(
            &db,
            &format!("SELECT pg_notify('devicelink_accounts', '{payload}')"),
        );
    }
    nodes.pg.psql(
        &db,
        &format!("SELECT pg_notify('devicelink_node_{node1}', 'x{client_hex}')"),
    );
    let got = updates_within(&mut kept, Duration::from_millis(1_000)).await;
    assert!(
        !got.iter()
            .any(|u| matches!(u, CompanionUpdate::Logout { .. })),
        "{got:?}"
    );
    assert!(kept.session().unwrap().is_linked(nodes.now()));
    // Still connected, still subscribed: a genuine heartbeat arrives.
    nodes.advance(Duration::from_secs(60));
    let hb = acct.heartbeat(nodes.now());
    bounded(p.publish_heartbeat(&hb)).await.unwrap();
    assert!(matches!(
        until_heartbeat(&mut kept).await,
        SessionStatus::Linked { .. }
    ));

    // The primary's client leaves node 0: its presence row goes once its
    // mailbox time (1 s here) is up.
    let primary_rows = |nodes: &Nodes| -> usize {
        nodes
            .pg
            .psql(&nodes.db(), "SELECT count(*) FROM relay_presence")
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(primary_rows(&nodes), 2);
    p.close().await;
    let start = Instant::now();
    while primary_rows(&nodes) != 1 {
        assert!(
            start.elapsed() < STEP,
            "presence row kept\n{}",
            nodes.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
