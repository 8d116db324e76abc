//! One contract, every store: the same test body runs against
//! [`MemoryStore`], [`SqliteStore`] (a real file in a temporary
//! directory) and [`PgStore`] (a throwaway PostgreSQL cluster,
//! `pg/mod.rs`). The token rules are the core's `TokenStore` contract
//! (`src/relay/ledger.rs`); the account rules are [`Store`]'s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use devicelink::certificate::DeviceListDraft;
use devicelink::relay::{
    Budget, BudgetScope, ClientId, HelloDigest, LedgerError, ListApplied, SourceKey, TokenRecord,
    TokenState, TokenStore,
};
use devicelink::time::days;
use devicelink::{
    AccountKey, DeviceIdentity, DeviceIndex, DirectoryError, LogoutReason, Policy,
    PrimaryHeartbeat, SignedDeviceList, Timestamp,
};
use devicelink_relay::store::{AccountDirectoryError, LIST_HISTORY};
use devicelink_relay::{AccountDirectory, AccountRecord, MemoryStore, PgStore, SqliteStore, Store};
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

mod pg;
mod store_ops;

use store_ops::{apply, emptied, entry, op, record, t, tok};

const C: ClientId = ClientId::from_bytes([0xc; 16]);
const P: ClientId = ClientId::from_bytes([0xa; 16]);
const H: HelloDigest = HelloDigest::from_bytes([0x4e; 32]);
const Q: Budget = Budget::new(8, u64::MAX, 100).with_reserve(0, 0);

fn state<S: Store>(s: &S, n: u64) -> TokenState {
    s.get(&tok(n)).unwrap().unwrap().state
}

/// The whole contract, run on fresh stores from `make`.
fn contract<S: Store + 'static>(make: impl Fn() -> S) {
    open_reserved_redeemed(&make());
    release_and_lapse_reopen(&make());
    expiry_and_sweep(&make());
    quotas(&make());
    racing_threads(make());
    account_writes_are_compare_and_set(&make());
    due_accounts_follow_the_index(&make());
    directory_decides_store_remembers(&make());
    lists_are_kept_for_holders_that_missed_some(&make());
}

/// Protocol v2.1: the store keeps the last `LIST_HISTORY` versions of each
/// account's list beside its record, oldest first after any version, and
/// drops them with the account.
fn lists_are_kept_for_holders_that_missed_some<S: Store>(s: &S) {
    let policy = Policy::default();
    let mut rng = ChaCha20Rng::seed_from_u64(70);
    let key = AccountKey::generate(&mut rng);
    let account = key.account_id();
    let a = DeviceIdentity::generate(&mut rng).device_key();
    let d = AccountDirectory::new(s.clone(), &policy);
    let total = LIST_HISTORY + 6;
    let mut lists = vec![SignedDeviceList::sign(
        &key,
        &DeviceListDraft::new(1, vec![entry(1, a)]),
        t(1),
    )];
    for v in 2..=total {
        let next = SignedDeviceList::sign(
            &key,
            &DeviceListDraft::after(lists.last().unwrap(), vec![entry(1, a)]),
            t(v),
        );
        lists.push(next);
    }
    for (i, list) in lists.iter().enumerate() {
        d.apply_device_list(list, t(i as u64 + 1), || Ok(()))
            .unwrap();
    }
    let bytes = |from: u64| -> Vec<Vec<u8>> {
        lists[from as usize..]
            .iter()
            .map(|l| l.to_bytes())
            .collect()
    };
    // The newest two after version total - 2, in order.
    assert_eq!(
        s.lists_after(&account, total - 2).unwrap(),
        bytes(total - 2)
    );
    // From the start: only the window (the oldest versions were dropped).
    let all = s.lists_after(&account, 0).unwrap();
    assert_eq!(all.len() as u64, LIST_HISTORY);
    assert_eq!(all, bytes(total - LIST_HISTORY));
    assert!(s.lists_after(&account, total).unwrap().is_empty());
    // Another account has none.
    let other = AccountKey::generate(&mut rng).account_id();
    assert!(s.lists_after(&other, 0).unwrap().is_empty());
    // Deleting the account drops its history.
    let record = s.account(&account).unwrap().unwrap();
    assert!(s.delete_account(&account, record.revision).unwrap());
    assert!(s.lists_after(&account, 0).unwrap().is_empty());
}

fn open_reserved_redeemed<S: Store>(s: &S) {
    s.register(tok(1), C, SourceKey::LOCAL, t(100), Q).unwrap();
    assert_eq!(
        s.register(tok(1), C, SourceKey::LOCAL, t(100), Q),
        Err(LedgerError::DuplicateToken)
    );
    assert_eq!(
        s.get(&tok(1)).unwrap(),
        Some(TokenRecord {
            client: C,
            source: SourceKey::LOCAL,
            expires_at: t(100),
            keep_until: t(100),
            state: TokenState::Open
        })
    );
    assert_eq!(
        s.redeem(&tok(1), C, t(1), t(500)),
        Err(LedgerError::NotReserved)
    );
    assert_eq!(s.reserve(&tok(1), P, &H, t(10), t(40)), Ok(C));
    assert_eq!(
        state(s, 1),
        TokenState::Reserved {
            by: P,
            until: t(40),
            hello: H,
        }
    );
    assert_eq!(
        s.reserve(&tok(1), C, &H, t(11), t(41)),
        Err(LedgerError::TokenReserved { until: t(40) })
    );
    assert_eq!(
        s.redeem(&tok(1), P, t(12), t(500)),
        Err(LedgerError::WrongClient)
    );
    assert_eq!(s.redeem(&tok(1), C, t(12), t(500)), Ok(P));
    assert_eq!(
        s.get(&tok(1)).unwrap(),
        Some(TokenRecord {
            client: C,
            source: SourceKey::LOCAL,
            expires_at: t(100),
            keep_until: t(500),
            state: TokenState::Redeemed {
                primary: P,
                at: t(12)
            }
        })
    );
    assert_eq!(
        s.redeem(&tok(1), C, t(13), t(500)),
        Err(LedgerError::TokenAlreadyRedeemed)
    );
    assert_eq!(
        s.reserve(&tok(1), P, &H, t(13), t(43)),
        Err(LedgerError::TokenAlreadyRedeemed)
    );
    assert_eq!(
        s.release(&tok(1), C, &H, t(13)),
        Err(LedgerError::TokenAlreadyRedeemed)
    );
    assert_eq!(
        s.register(tok(1), C, SourceKey::LOCAL, t(100), Q),
        Err(LedgerError::DuplicateToken)
    );
    assert_eq!(
        s.reserve(&tok(2), P, &H, t(1), t(2)),
        Err(LedgerError::UnknownToken)
    );
    assert_eq!(
        s.redeem(&tok(2), C, t(1), t(2)),
        Err(LedgerError::UnknownToken)
    );
    assert_eq!(
        s.release(&tok(2), C, &H, t(1)),
        Err(LedgerError::UnknownToken)
    );
    assert_eq!(s.get(&tok(2)), Ok(None));
}

fn release_and_lapse_reopen<S: Store>(s: &S) {
    s.register(tok(1), C, SourceKey::LOCAL, t(100), Q).unwrap();
    assert_eq!(
        s.release(&tok(1), C, &H, t(1)),
        Err(LedgerError::NotReserved)
    );
    s.reserve(&tok(1), P, &H, t(10), t(40)).unwrap();
    assert_eq!(
        s.release(&tok(1), P, &H, t(11)),
        Err(LedgerError::WrongClient)
    );
    assert_eq!(s.release(&tok(1), C, &H, t(11)), Ok(()));
    assert_eq!(state(s, 1), TokenState::Open);
    assert_eq!(s.get(&tok(1)).unwrap().unwrap().keep_until, t(100));
    s.reserve(&tok(1), P, &H, t(20), t(50)).unwrap();
    let other = ClientId::from(7);
    assert_eq!(
        s.reserve(&tok(1), other, &H, t(49), t(79)),
        Err(LedgerError::TokenReserved { until: t(50) })
    );
    assert_eq!(s.reserve(&tok(1), other, &H, t(50), t(80)), Ok(C));
    assert_eq!(s.redeem(&tok(1), C, t(60), t(60)), Ok(other));

    // A late release names the lapsed reservation's Hello: the newer one
    // stands, unchanged.
    let (old, new) = (HelloDigest::of(b"refused"), HelloDigest::of(b"genuine"));
    s.register(tok(2), C, SourceKey::LOCAL, t(100), Q).unwrap();
    s.reserve(&tok(2), P, &old, t(10), t(40)).unwrap();
    s.reserve(&tok(2), other, &new, t(40), t(70)).unwrap();
    let before = s.get(&tok(2)).unwrap();
    assert_eq!(
        s.release(&tok(2), C, &old, t(41)),
        Err(LedgerError::ReservedForOtherHello)
    );
    assert_eq!(s.get(&tok(2)).unwrap(), before);
    assert_eq!(s.release(&tok(2), C, &new, t(41)), Ok(()));
    assert_eq!(state(s, 2), TokenState::Open);
}

fn expiry_and_sweep<S: Store>(s: &S) {
    for n in 1..=3 {
        s.register(tok(n), C, SourceKey::LOCAL, t(100), Q).unwrap();
    }
    assert_eq!(
        s.reserve(&tok(1), P, &H, t(100), t(130)),
        Err(LedgerError::TokenExpired)
    );
    s.reserve(&tok(2), P, &H, t(99), t(129)).unwrap();
    assert_eq!(s.get(&tok(2)).unwrap().unwrap().keep_until, t(129));
    assert_eq!(s.redeem(&tok(2), C, t(120), t(400)), Ok(P));
    s.reserve(&tok(3), P, &H, t(99), t(129)).unwrap();
    assert_eq!(
        s.redeem(&tok(3), C, t(129), t(400)),
        Err(LedgerError::TokenExpired)
    );
    assert_eq!(
        s.release(&tok(3), C, &H, t(129)),
        Err(LedgerError::UnknownToken)
    );
    assert_eq!(s.sweep(t(100), 10), Ok(1));
    assert_eq!(s.sweep(t(200), 0), Ok(0));
    assert_eq!(s.sweep(t(200), 10), Ok(1));
    assert_eq!(s.get(&tok(3)), Ok(None));
    assert_eq!(s.sweep(t(399), 10), Ok(0));
    assert_eq!(s.sweep(t(400), 10), Ok(1));
    assert_eq!(s.get(&tok(2)), Ok(None));
    // Sweeping freed the client's quota: 8 fresh tokens fit again.
    for n in 10..18 {
        s.register(tok(n), C, SourceKey::LOCAL, t(1_000), Q)
            .unwrap();
    }
    // Earliest first, at most `limit`.
    for n in 20..25 {
        s.register(tok(n), P, SourceKey::LOCAL, t(500 + n), Q)
            .unwrap();
    }
    assert_eq!(s.sweep(t(10_000), 3), Ok(3));
    assert_eq!(s.get(&tok(20)), Ok(None));
    assert_eq!(s.get(&tok(22)), Ok(None));
    assert!(s.get(&tok(23)).unwrap().is_some());
}

fn quotas<S: Store>(s: &S) {
    let (x, y, z) = (
        SourceKey::from_bytes([1; 16]),
        SourceKey::from_bytes([2; 16]),
        SourceKey::from_bytes([3; 16]),
    );
    // 2 per client, 3 per source, 5 in all, the last one kept for sources
    // holding none.
    let q = Budget::new(2, 3, 5).with_reserve(1, 1);
    let over = |scope, limit| Err(LedgerError::QuotaExceeded { scope, limit });
    s.register(tok(1), C, x, t(100), q).unwrap();
    s.register(tok(2), C, x, t(100), q).unwrap();
    assert_eq!(
        s.register(tok(3), C, x, t(100), q),
        over(BudgetScope::Client, 2)
    );
    // The refused registration left nothing behind.
    assert_eq!(s.get(&tok(3)), Ok(None));
    s.register(tok(3), P, x, t(100), q).unwrap();
    // A fresh client of the same source: the source's budget.
    assert_eq!(
        s.register(tok(4), ClientId::from(9), x, t(100), q),
        over(BudgetScope::Source, 3)
    );
    s.register(tok(4), ClientId::from(9), y, t(100), q).unwrap();
    // Four held: y (holding one) is not in good standing for the reserve,
    // a source holding none is.
    assert_eq!(
        s.register(tok(5), ClientId::from(10), y, t(100), q),
        over(BudgetScope::Reserve, 4)
    );
    s.register(tok(5), ClientId::from(10), z, t(100), q)
        .unwrap();
    assert_eq!(
        s.register(
            tok(6),
            ClientId::from(11),
            SourceKey::from_bytes([4; 16]),
            t(100),
            q
        ),
        over(BudgetScope::Total, 5)
    );
    assert_eq!(s.get(&tok(6)), Ok(None));
    // A redeemed token (a tombstone) still counts for its client and
    // source until it is swept.
    s.reserve(&tok(1), P, &H, t(1), t(2)).unwrap();
    s.redeem(&tok(1), C, t(1), t(200)).unwrap();
    assert_eq!(s.sweep(t(100), 10), Ok(4));
    assert_eq!(s.register(tok(7), C, x, t(300), q), Ok(()));
    assert_eq!(
        s.register(tok(8), C, x, t(300), q),
        over(BudgetScope::Client, 2)
    );
    // A departed client's rows go at once, tombstone included, and stop
    // counting for its source and the store.
    assert_eq!(s.abandon(C), Ok(2));
    assert_eq!(s.abandon(C), Ok(0));
    assert_eq!(s.get(&tok(1)), Ok(None));
    for n in 8..11 {
        s.register(tok(n), ClientId::from(n), x, t(300), q).unwrap();
    }
    assert_eq!(
        s.register(tok(11), ClientId::from(11), x, t(300), q),
        over(BudgetScope::Source, 3)
    );
    assert_eq!(s.sweep(t(300), 10), Ok(3));
    s.register(tok(11), ClientId::from(11), x, t(400), q)
        .unwrap();
}

/// 8 threads × 200 rounds: in every round all threads try to reserve the
/// same fresh token (as 8 primaries), then to redeem it (as its companion):
/// exactly one reserve and one redeem succeed.
fn racing_threads<S: Store + 'static>(s: S) {
    const THREADS: usize = 8;
    const ROUNDS: u64 = 200;
    // One companion registers every round's token (its tombstones stay).
    let quota = Budget::unlimited();
    let barrier = Arc::new(Barrier::new(THREADS));
    let reserved = Arc::new(AtomicUsize::new(0));
    let redeemed = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let (s, barrier) = (s.clone(), Arc::clone(&barrier));
            let (reserved, redeemed) = (Arc::clone(&reserved), Arc::clone(&redeemed));
            std::thread::spawn(move || {
                let me = ClientId::from(100 + i as u64);
                for round in 0..ROUNDS {
                    let token = tok(1_000 + round);
                    if i == 0 {
                        s.register(token, C, SourceKey::LOCAL, t(1_000_000), quota)
                            .unwrap();
                    }
                    barrier.wait();
                    match s.reserve(&token, me, &H, t(round), t(round + 500_000)) {
                        Ok(c) => {
                            assert_eq!(c, C);
                            reserved.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => assert!(matches!(e, LedgerError::TokenReserved { .. }), "{e:?}"),
                    }
                    barrier.wait();
                    match s.redeem(&token, C, t(round), t(round + 600_000)) {
                        Ok(_) => {
                            redeemed.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => assert_eq!(e, LedgerError::TokenAlreadyRedeemed),
                    }
                    barrier.wait();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(reserved.load(Ordering::SeqCst), ROUNDS as usize);
    assert_eq!(redeemed.load(Ordering::SeqCst), ROUNDS as usize);
    for round in 0..ROUNDS {
        let TokenState::Redeemed { primary, .. } = state(&s, 1_000 + round) else {
            panic!("round {round} not redeemed")
        };
        assert!((100..100 + THREADS as u64).any(|i| ClientId::from(i) == primary));
    }
}

fn account_writes_are_compare_and_set<S: Store + 'static>(s: &S) {
    let a = record(1, 2, 50, 1);
    let id = a.account();
    assert_eq!(s.account(&id), Ok(None));
    // Revision 2 needs revision 1 stored.
    assert_eq!(
        s.put_account(&AccountRecord {
            revision: 2,
            ..a.clone()
        }),
        Ok(false)
    );
    assert_eq!(s.put_account(&a), Ok(true));
    assert_eq!(s.account(&id), Ok(Some(a.clone())));
    // A second insert, a stale or a skipping revision change nothing.
    let other = record(1, 1, 60, 1);
    assert_eq!(s.put_account(&other), Ok(false));
    assert_eq!(
        s.put_account(&AccountRecord {
            revision: 3,
            ..other.clone()
        }),
        Ok(false)
    );
    assert_eq!(s.account(&id), Ok(Some(a.clone())));
    let two = AccountRecord {
        revision: 2,
        ..other.clone()
    };
    assert_eq!(s.put_account(&two), Ok(true));
    assert_eq!(s.put_account(&two), Ok(false));
    assert_eq!(s.account(&id), Ok(Some(two.clone())));
    // Two writers racing from revision 2: exactly one wins.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let (s, r) = (
                s.clone(),
                AccountRecord {
                    revision: 3,
                    ..record(1, 1 + i % 2, 70 + u64::from(i), 1)
                },
            );
            std::thread::spawn(move || s.put_account(&r).unwrap())
        })
        .collect();
    let wins = racers
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|won| *won)
        .count();
    assert_eq!(wins, 1);
    assert_eq!(s.account(&id).unwrap().unwrap().revision, 3);
}

fn due_accounts_follow_the_index<S: Store>(s: &S) {
    let a = record(11, 1, 30, 1);
    let b = record(12, 2, 10, 1);
    let none = record(13, 0, 5, 1);
    for r in [&a, &b, &none] {
        assert_eq!(s.put_account(r), Ok(true));
    }
    // Every account is indexed by its last activity, companions or none
    // (the sweep logs companions out, and forgets accounts left with none).
    assert_eq!(s.due_accounts(t(4), 10), Ok(vec![]));
    assert_eq!(s.due_accounts(t(9), 10), Ok(vec![none.account()]));
    assert_eq!(
        s.due_accounts(t(10), 10),
        Ok(vec![none.account(), b.account()])
    );
    assert_eq!(
        s.due_accounts(t(30), 10),
        Ok(vec![none.account(), b.account(), a.account()])
    );
    assert_eq!(s.due_accounts(t(30), 1), Ok(vec![none.account()]));
    assert_eq!(s.due_accounts(t(30), 0), Ok(vec![]));
    // A later activity moves an account in the index.
    let b_later = AccountRecord {
        revision: 2,
        ..record(12, 0, 40, 1)
    };
    assert_eq!(s.put_account(&b_later), Ok(true));
    assert_eq!(
        s.due_accounts(t(30), 10),
        Ok(vec![none.account(), a.account()])
    );
    // A compare-and-delete: only the revision held.
    assert_eq!(s.delete_account(&b.account(), 1), Ok(false));
    assert_eq!(s.delete_account(&b.account(), 2), Ok(true));
    assert_eq!(s.delete_account(&b.account(), 2), Ok(false));
    assert_eq!(s.account(&b.account()), Ok(None));
    assert_eq!(
        s.due_accounts(Timestamp::MAX, 10),
        Ok(vec![none.account(), a.account()])
    );
    // Written again from revision 1, as a new account.
    assert_eq!(s.put_account(&b), Ok(true));
    // Nothing is due for an account whose companions were all removed, or
    // one that expired: however many there are, they never stand before
    // the due ones in the sweep's batch.
    let before = s.due_accounts(Timestamp::MAX, 10).unwrap();
    for (seed, sweep) in [(14, false), (15, true)] {
        let r = emptied(seed, sweep);
        assert_eq!(r.active_since(), None);
        assert_eq!(s.put_account(&r), Ok(true));
    }
    assert_eq!(s.due_accounts(Timestamp::MAX, 10), Ok(before));
    // A newer list with a companion makes it due again.
    let revived = AccountRecord {
        revision: 2,
        ..record(14, 1, 100, 1)
    };
    assert_eq!(s.put_account(&revived), Ok(true));
    assert!(s
        .due_accounts(Timestamp::MAX, 10)
        .unwrap()
        .contains(&revived.account()));
}

/// The core's directory decides; the store remembers: two directories
/// over one store (two relay processes, or one restarted) give the same
/// answers, including logged-out indices and the fork mark.
fn directory_decides_store_remembers<S: Store>(s: &S) {
    let policy = Policy::default();
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let key = AccountKey::generate(&mut rng);
    let account = key.account_id();
    let a = DeviceIdentity::generate(&mut rng).device_key();
    let b = DeviceIdentity::generate(&mut rng).device_key();
    let c = DeviceIdentity::generate(&mut rng).device_key();
    let day = |n: u64| t(days(n).as_millis() as u64);

    let d = AccountDirectory::new(s.clone(), &policy);
    let other = AccountDirectory::new(s.clone(), &policy);
    let v1 = SignedDeviceList::sign(
        &key,
        &DeviceListDraft::new(1, vec![entry(1, a), entry(2, b)]),
        day(0),
    );
    assert_eq!(
        d.apply_device_list(&v1, day(0), || Ok(())),
        Ok(ListApplied::Changed { logged_out: vec![] })
    );
    assert_eq!(
        other.apply_device_list(&v1, day(0), || Ok(())),
        Ok(ListApplied::Unchanged)
    );
    let hb = PrimaryHeartbeat::sign(&key, &v1, Default::default(), day(5));
    other.apply_heartbeat(&hb, day(5)).unwrap();
    assert_eq!(
        s.account(&account).unwrap().unwrap().facts.last_activity(),
        day(5)
    );
    let v2 = SignedDeviceList::sign(
        &key,
        &DeviceListDraft::after(&v1, vec![entry(1, a)]),
        day(6),
    );
    let ListApplied::Changed { logged_out } = d.apply_device_list(&v2, day(6), || Ok(())).unwrap()
    else {
        panic!("v2 not applied")
    };
    assert_eq!(
        logged_out
            .iter()
            .map(|l| (l.index, l.reason))
            .collect::<Vec<_>>(),
        vec![(DeviceIndex(2), LogoutReason::Revoked)]
    );
    // A fork is refused by the core; the store keeps the fork mark and the
    // list it held.
    let fork = SignedDeviceList::sign(
        &key,
        &DeviceListDraft::after(&v1, vec![entry(1, a), entry(2, b)]),
        day(7),
    );
    assert!(matches!(
        other.apply_device_list(&fork, day(7), || Ok(())),
        Err(AccountDirectoryError::Refused(DirectoryError::Fork { .. }))
    ));
    let held = s.account(&account).unwrap().unwrap();
    assert_eq!(held.facts.list_version(), 2);
    assert!(held.facts.forked());
    assert_eq!(held.list, v2.to_bytes());
    // Forked: the other directory refuses a list two versions ahead too.
    let v2b = SignedDeviceList::sign(
        &key,
        &DeviceListDraft::after(&v2, vec![entry(1, a)]),
        day(7),
    );
    let v3b = SignedDeviceList::sign(
        &key,
        &DeviceListDraft::after(&v2b, vec![entry(1, a)]),
        day(7),
    );
    assert!(matches!(
        d.apply_device_list(&v3b, day(7), || Ok(())),
        Err(AccountDirectoryError::Refused(DirectoryError::Fork { .. }))
    ));
    assert!(d
        .apply_device_list(&v2b, day(7), || Ok(()))
        .unwrap()
        .changed());
    for dir in [&d, &other] {
        assert_eq!(
            dir.linked_device(&account, DeviceIndex(1), day(7)),
            Ok(Some(a))
        );
        assert_eq!(
            dir.linked_device(&account, DeviceIndex(2), day(7)),
            Ok(None)
        );
    }

    // Primary offline 14 days after day 7: index 1 is logged out once
    // (the other directory's sweep finds nothing left), and stays out after
    // a re-pair list that still names it.
    assert_eq!(d.sweep(day(20), 10), Ok(vec![]));
    let swept = d.sweep(day(21), 10).unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(
        (swept[0].index, swept[0].reason),
        (DeviceIndex(1), LogoutReason::PrimaryOffline)
    );
    assert_eq!(other.sweep(day(21), 10), Ok(vec![]));
    // Expired, the account is no longer due (until a newer list).
    assert_eq!(s.due_accounts(Timestamp::MAX, 10), Ok(vec![]));
    assert_eq!(
        s.account(&account)
            .unwrap()
            .unwrap()
            .facts
            .logged_out_floor(),
        1
    );
    let v3 = SignedDeviceList::sign(
        &key,
        &DeviceListDraft::after(&v2b, vec![entry(1, a), entry(3, c)]),
        day(22),
    );
    assert!(other
        .apply_device_list(&v3, day(22), || Ok(()))
        .unwrap()
        .changed());
    for dir in [&d, &other] {
        assert_eq!(
            dir.linked_device(&account, DeviceIndex(1), day(22)),
            Ok(None)
        );
        assert_eq!(
            dir.linked_device(&account, DeviceIndex(3), day(22)),
            Ok(Some(c))
        );
    }
    assert_eq!(s.due_accounts(day(22), 10), Ok(vec![account]));
}

#[test]
fn memory_store_keeps_the_contract() {
    contract(MemoryStore::new);
}

#[test]
fn sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    contract(|| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        SqliteStore::open(dir.path().join(format!("relay-{i}.db"))).unwrap()
    });
}

#[test]
fn postgres_store_keeps_the_contract() {
    let Some(server) = pg::PgServer::start() else {
        return;
    };
    contract(|| PgStore::connect(&server.create_database("contract")).unwrap());
}

#[test]
fn sqlite_acknowledged_writes_survive_a_reopen_and_reopening_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let quota = Budget::new(1_000, u64::MAX, 10_000).with_reserve(0, 0);
    {
        let s = SqliteStore::open(&path).unwrap();
        for n in 0..300 {
            s.register(tok(n), C, SourceKey::LOCAL, t(1_000), quota)
                .unwrap();
            if n % 3 != 0 {
                s.reserve(&tok(n), P, &H, t(1), t(500)).unwrap();
            }
            if n % 3 == 2 {
                s.redeem(&tok(n), C, t(2), t(5_000)).unwrap();
            }
        }
        s.put_account(&record(1, 4, 40, 1)).unwrap();
        s.put_account(&record(1, 3, 45, 2)).unwrap();
    }
    for _ in 0..2 {
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(
            s.schema_version(),
            Ok(devicelink_relay::store::SCHEMA_VERSION)
        );
        for n in 0..300 {
            let want = match n % 3 {
                0 => TokenState::Open,
                1 => TokenState::Reserved {
                    by: P,
                    until: t(500),
                    hello: H,
                },
                _ => TokenState::Redeemed {
                    primary: P,
                    at: t(2),
                },
            };
            assert_eq!(state(&s, n), want, "token {n}");
            if n % 3 == 2 {
                assert_eq!(
                    s.redeem(&tok(n), C, t(3), t(5_000)),
                    Err(LedgerError::TokenAlreadyRedeemed)
                );
            }
        }
        let held = record(1, 3, 45, 2);
        assert_eq!(s.account(&held.account()).unwrap(), Some(held));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// SQLite answers every operation exactly as the in-memory store (the
    /// core's reference) and ends in the same state.
    #[test]
    fn sqlite_matches_memory(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let sql = SqliteStore::open(dir.path().join("relay.db")).unwrap();
        let mem = MemoryStore::new();
        for op in &ops {
            prop_assert_eq!(apply(&sql, op), apply(&mem, op), "{:?}", op);
        }
        for k in 0..6 {
            prop_assert_eq!(sql.get(&tok(k)).unwrap(), mem.get(&tok(k)).unwrap());
        }
    }
}
