//! The PostgreSQL store beyond the shared contract (`contract.rs` runs that
//! on PostgreSQL too): it answers every operation as the in-memory
//! reference does, nodes starting together migrate once, a newer schema
//! and corrupt rows are typed errors, and a restart of PostgreSQL is
//! survived by the same store handle: "unavailable" while it is down,
//! everything acknowledged still there when it is back.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use devicelink::relay::{
    Budget, ClientId, HelloDigest, LedgerError, SourceKey, TokenState, TokenStore,
};
use devicelink::{AccountId, Timestamp};
use devicelink_relay::store::{PgOptions, PG_SCHEMA_VERSION};
use devicelink_relay::{AccountRecord, MemoryStore, PgStore, Store, StoreError};
use proptest::prelude::*;

mod pg;
mod store_ops;

use store_ops::{apply, emptied, op, record, t, tok};

const C: ClientId = ClientId::from_bytes([0xc; 16]);
const P: ClientId = ClientId::from_bytes([0xa; 16]);
const Q: Budget = Budget::new(1_000, u64::MAX, 100_000).with_reserve(0, 0);

#[test]
fn postgres_answers_every_operation_as_the_memory_store() {
    let Some(server) = pg::PgServer::start() else {
        return;
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 12,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            let pg = PgStore::connect(&server.create_database("prop")).unwrap();
            let mem = MemoryStore::new();
            for op in &ops {
                prop_assert_eq!(apply(&pg, op), apply(&mem, op), "{:?}", op);
            }
            for k in 0..6 {
                prop_assert_eq!(pg.get(&tok(k)).unwrap(), mem.get(&tok(k)).unwrap());
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn nodes_starting_together_migrate_exactly_once() {
    let Some(server) = pg::PgServer::start() else {
        return;
    };
    let url = server.create_database("together");
    let barrier = Arc::new(Barrier::new(6));
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                PgStore::connect(&url).map(|s| s.schema_version())
            })
        })
        .collect();
    for s in starts {
        assert_eq!(s.join().unwrap().unwrap(), Ok(PG_SCHEMA_VERSION));
    }
    let db = url.rsplit('/').next().unwrap();
    let rows = server.psql(db, "SELECT count(*), max(version) FROM schema_migrations");
    assert_eq!(
        rows.trim(),
        format!("{PG_SCHEMA_VERSION}|{PG_SCHEMA_VERSION}")
    );

    // A database of a newer build is refused, not written to.
    server.psql(
        db,
        "INSERT INTO schema_migrations (version, name) VALUES (99, '0099_future.sql')",
    );
    assert_eq!(
        PgStore::connect(&url).err(),
        Some(StoreError::SchemaTooNew {
            found: 99,
            supported: PG_SCHEMA_VERSION
        })
    );
}

/// Migration 0003's data step: of the rows 0001 left NULL (no companion),
/// those of accounts that never had one become due; expired accounts and
/// accounts whose companions were all removed stay out of the index.
#[test]
fn migration_3_indexes_only_what_the_sweep_must_do() {
    let Some(server) = pg::PgServer::start() else {
        return;
    };
    let url = server.create_database("fill");
    let db = url.rsplit('/').next().unwrap().to_string();
    let linked = record(21, 2, 30, 1);
    let never = record(22, 0, 10, 1);
    let (removed, expired) = (emptied(23, false), emptied(24, true));
    {
        let s = PgStore::connect(&url).unwrap();
        for r in [&linked, &never, &removed, &expired] {
            assert_eq!(s.put_account(r), Ok(true));
        }
    }
    // Back to schema 2, as 0001 wrote accounts: NULL without a companion.
    server.psql(
        &db,
        &format!(
            "DROP TABLE account_lists; DELETE FROM schema_migrations WHERE version = 4;
             DROP TABLE sources; DROP INDEX tokens_client; ALTER TABLE tokens DROP COLUMN source;
             DELETE FROM schema_migrations WHERE version = 3;
             UPDATE accounts SET active_since = NULL WHERE account <> '\\x{}'",
            hex(&linked.account().to_bytes())
        ),
    );
    assert_eq!(
        server
            .psql(
                &db,
                "SELECT count(*) FROM accounts WHERE active_since IS NULL"
            )
            .trim(),
        "3"
    );
    let s = PgStore::connect(&url).unwrap();
    assert_eq!(s.schema_version(), Ok(PG_SCHEMA_VERSION));
    assert_eq!(
        s.due_accounts(Timestamp::MAX, 10),
        Ok(vec![never.account(), linked.account()])
    );
    // Migration 4 seeded each account's list history with its current list
    // (its version read from the list's bytes).
    assert_eq!(
        s.lists_after(&linked.account(), 0),
        Ok(vec![linked.list.clone()])
    );
    assert_eq!(s.lists_after(&linked.account(), 1), Ok(vec![]));
}

#[test]
fn corrupt_rows_are_typed_errors_never_panics() {
    let Some(server) = pg::PgServer::start() else {
        return;
    };
    let url = server.create_database("corrupt");
    let db = url.rsplit('/').next().unwrap().to_string();
    let s = PgStore::connect(&url).unwrap();
    s.register(tok(1), C, SourceKey::LOCAL, t(100), Q).unwrap();
    s.register(tok(2), C, SourceKey::LOCAL, t(100), Q).unwrap();
    s.register(tok(3), C, SourceKey::LOCAL, t(100), Q).unwrap();
    let id = |n: u64| format!("'\\x{}'", hex(&tok(n).to_bytes()));
    server.psql(
        &db,
        &format!("UPDATE tokens SET state = 7 WHERE id = {}", id(1)),
    );
    server.psql(
        &db,
        &format!("UPDATE tokens SET client = '\\x0102' WHERE id = {}", id(2)),
    );
    server.psql(
        &db,
        &format!("UPDATE tokens SET state = 1 WHERE id = {}", id(3)),
    );
    for n in 1..=3 {
        match s.get(&tok(n)) {
            Err(LedgerError::Store(text)) => assert!(text.contains("corrupt"), "{text}"),
            other => panic!("token {n}: {other:?}"),
        }
    }
    // A refusal that must read the corrupt row to name itself fails typed.
    assert!(matches!(
        s.reserve(&tok(1), P, &HelloDigest::of(b"h"), t(1), t(2)),
        Err(LedgerError::Store(_))
    ));

    let rec = record(5, 1, 20, 1);
    assert_eq!(s.put_account(&rec), Ok(true));
    assert_eq!(s.account(&rec.account()), Ok(Some(rec.clone())));
    assert_eq!(s.due_accounts(t(20), 10), Ok(vec![rec.account()]));
    server.psql(&db, "UPDATE accounts SET facts = '\\x00'");
    assert!(matches!(
        s.account(&rec.account()),
        Err(StoreError::Corrupt(_))
    ));
    server.psql(&db, "UPDATE accounts SET revision = -1");
    assert!(matches!(
        s.account(&rec.account()),
        Err(StoreError::Corrupt(_))
    ));
    server.psql(&db, "UPDATE accounts SET account = '\\x0102'");
    assert!(matches!(
        s.due_accounts(t(20), 10),
        Err(StoreError::Corrupt(_))
    ));
    // Out-of-range values are refused before they reach the database.
    assert_eq!(
        s.put_account(&AccountRecord {
            revision: u64::MAX,
            ..rec
        }),
        Err(StoreError::OutOfRange("revision"))
    );
    assert!(matches!(
        s.register(tok(9), C, SourceKey::LOCAL, Timestamp::MAX, Q),
        Err(LedgerError::Store(_))
    ));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Polls `f` until it returns `Some`, for at most 60 s (a hang guard).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_restart_of_postgres_is_survived_by_the_same_store() {
    let Some(server) = pg::PgServer::start() else {
        return;
    };
    let url = server.create_database("restart");
    let s = PgStore::connect_with(
        &url,
        PgOptions {
            retry_for: Duration::from_millis(300),
            ..PgOptions::default()
        },
    )
    .unwrap();
    let h = HelloDigest::of(b"hello");
    for n in 0..50 {
        s.register(tok(n), C, SourceKey::LOCAL, t(1_000_000), Q)
            .unwrap();
        s.reserve(&tok(n), P, &h, t(1), t(500_000)).unwrap();
        if n % 2 == 0 {
            assert_eq!(s.redeem(&tok(n), C, t(2), t(900_000)), Ok(P));
        }
    }

    // Down: every call answers "unavailable" (bounded by the retry
    // budget and the connect timeout), nothing is guessed.
    server.stop("fast");
    for n in 100..105 {
        let started = Instant::now();
        match s.register(tok(n), C, SourceKey::LOCAL, t(1_000_000), Q) {
            Err(LedgerError::Store(_)) => {}
            other => panic!("register while PostgreSQL is down: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(matches!(s.get(&tok(0)), Err(LedgerError::Store(_))));
        assert!(matches!(
            s.account(&AccountId::from_bytes([1; 32])),
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            s.put_account(&record(9, 1, 5, 1)),
            Err(StoreError::Unavailable(_))
        ));
    }
    assert!(!s.is_reachable());

    // Back: the same handle recovers by itself.
    server.start_again();
    eventually("the store did not reconnect", || {
        s.register(tok(200), C, SourceKey::LOCAL, t(1_000_000), Q)
            .ok()
    });
    assert!(s.is_reachable());
    for n in 0..50 {
        let state = s.get(&tok(n)).unwrap().unwrap().state;
        if n % 2 == 0 {
            assert!(
                matches!(state, TokenState::Redeemed { primary: P, .. }),
                "{n}"
            );
            assert_eq!(
                s.redeem(&tok(n), C, t(3), t(900_000)),
                Err(LedgerError::TokenAlreadyRedeemed)
            );
        } else {
            assert!(matches!(state, TokenState::Reserved { by: P, .. }), "{n}");
            assert_eq!(s.redeem(&tok(n), C, t(3), t(900_000)), Ok(P));
        }
    }
    // Nothing registered while down exists.
    for n in 100..105 {
        assert_eq!(s.get(&tok(n)), Ok(None));
    }
}

/// The store-wide quota is a sum of shards (`docs/RELAY.md` §7.4): 8
/// threads registering at once stay within the quota plus the
/// registrations in flight (8), and once it is reached every later one is
/// refused.
#[test]
fn the_store_wide_quota_holds_within_the_registrations_in_flight() {
    let Some(server) = pg::PgServer::start() else {
        return;
    };
    let s = PgStore::connect(&server.create_database("quota")).unwrap();
    let q = Budget::new(1_000, u64::MAX, 100).with_reserve(0, 0);
    let barrier = Arc::new(Barrier::new(8));
    let accepted: usize = (0..8u64)
        .map(|w| {
            let (s, barrier) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..25u64)
                    .filter(|n| {
                        let token = tok(w * 1_000 + n);
                        s.register(token, ClientId::from(w + 1), SourceKey::LOCAL, t(1_000), q)
                            .is_ok()
                    })
                    .count()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .sum();
    assert!((100..=108).contains(&accepted), "{accepted}");
    assert!(matches!(
        s.register(tok(99_999), C, SourceKey::LOCAL, t(1_000), q),
        Err(LedgerError::QuotaExceeded { .. })
    ));
}
