//! The relay side under pressure: exactly-once token redemption raced from
//! many threads, first-Hello-wins routing, and the many-account directory's
//! expiry sweep.
//!
//! Deterministic inputs (seeded RNG, virtual clock); the only nondeterminism
//! is the thread interleaving, which the assertions do not depend on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Barrier;
use std::time::Duration;

use devicelink::certificate::DeviceListEntry;
use devicelink::handshake::HEADER_LEN;
use devicelink::offer::OfferState;
use devicelink::relay::{DirectoryError, SweptDevice, DEFAULT_SESSION_WINDOW};
use devicelink::{
    AccountId, AccountKey, Companion, CompanionState, DeviceIdentity, DeviceIndex, DeviceKey,
    DeviceLabel, Directory, Ledger, LedgerError, LogoutReason, Policy, PrimaryHandshake,
    PrimaryHeartbeat, SignedDeviceList, Timestamp, TokenId,
};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const T0: u64 = 1_700_000_000_000;
const DAY: u64 = 86_400_000;
const OFFLINE: u64 = 14 * DAY;
const THREADS: usize = 8;

fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(T0 + ms)
}

fn random_token(rng: &mut ChaCha20Rng) -> TokenId {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    TokenId::from_bytes(b)
}

#[test]
fn concurrent_redeems_succeed_exactly_once_per_token() {
    let mut rng = ChaCha20Rng::seed_from_u64(100);
    let ledger = Ledger::in_memory();
    let mut tokens = Vec::new();
    for round in 0..200u64 {
        let token = random_token(&mut rng);
        ledger.register(token, at(60_000)).unwrap();
        tokens.push(token);
        let now = at(round);
        let barrier = Barrier::new(THREADS);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        ledger.redeem(&token, now)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(ok.len(), 1, "round {round}: {results:?}");
        assert_eq!(ok[0].token_id, token);
        assert_eq!(ok[0].at, now);
        for r in results.iter().filter(|r| r.is_err()) {
            assert_eq!(
                r.as_ref().unwrap_err(),
                &LedgerError::TokenAlreadyRedeemed,
                "round {round}"
            );
        }
        // And every later attempt, whatever the clock, is refused the same way.
        assert_eq!(
            ledger.redeem(&token, at(1)),
            Err(LedgerError::TokenAlreadyRedeemed)
        );
    }
    assert_eq!(ledger.store().len(), 200);
    // A redeemed token stays for its session window (past its offer's
    // expiry), then it is swept and reads as unknown.
    let window = u64::try_from(DEFAULT_SESSION_WINDOW.as_millis()).unwrap();
    assert!(window > 60_000);
    assert_eq!(ledger.sweep(at(60_000)), Ok(0));
    assert_eq!(ledger.sweep(at(window - 1)), Ok(0));
    assert_eq!(ledger.sweep(at(window + 199)), Ok(200));
    for t in &tokens {
        assert_eq!(ledger.redeem(t, at(10)), Err(LedgerError::UnknownToken));
    }
}

/// A companion showing an offer, registered with the ledger.
fn registered_companion(
    ledger: &Ledger,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
) -> (Companion, String, TokenId, Timestamp) {
    let policy = Policy::default();
    let identity = DeviceIdentity::generate(rng);
    let companion = Companion::new(
        identity,
        DeviceLabel::new("browser").unwrap(),
        &policy,
        rng,
        now,
    );
    let offer = companion.offer().unwrap();
    let token = offer.token_id();
    let text = offer.to_text();
    let CompanionState::AwaitingScan {
        offer: OfferState::Showing { expires_at, .. },
    } = companion.state()
    else {
        panic!("companion is not showing an offer");
    };
    ledger.register(token, expires_at).unwrap();
    (companion, text, token, expires_at)
}

#[test]
fn route_lets_only_the_first_hello_through() {
    let mut rng = ChaCha20Rng::seed_from_u64(101);
    let ledger = Ledger::in_memory();
    let now = at(0);
    let (mut companion, text, token, expires_at) = registered_companion(&ledger, &mut rng, now);

    // Two primaries scan the same code; their Hellos differ, the token is one.
    let (mut first, hello_a) = PrimaryHandshake::scan(&text, &mut rng, now).unwrap();
    let (_second, hello_b) = PrimaryHandshake::scan(&text, &mut rng, now).unwrap();
    assert_ne!(hello_a, hello_b);

    // Unroutable and unregistered messages.
    assert!(matches!(
        ledger.route(&hello_a[..HEADER_LEN - 1], now),
        Err(LedgerError::Unroutable(_))
    ));
    assert!(matches!(
        ledger.route(b"", now),
        Err(LedgerError::Unroutable(_))
    ));
    // Before the Hello, nothing else routes for the token.
    let request_like = {
        let mut c = companion.clone();
        c.receive_hello(&hello_b, now).unwrap()
    };
    assert_eq!(
        ledger.route(&request_like, now),
        Err(LedgerError::UnknownToken)
    );

    // A Hello whose redemption proof was tampered with (someone who never
    // saw the code) is refused and does not burn the token.
    let mut forged = hello_b.clone();
    forged[HEADER_LEN] ^= 0x01;
    assert_eq!(
        ledger.route(&forged, now),
        Err(LedgerError::BadRedemptionProof)
    );

    assert_eq!(ledger.route(&hello_a, now), Ok(token));
    assert_eq!(
        ledger.route(&hello_b, now),
        Err(LedgerError::TokenAlreadyRedeemed)
    );
    assert_eq!(
        ledger.route(&hello_a, now),
        Err(LedgerError::TokenAlreadyRedeemed)
    );
    assert_eq!(
        ledger.redeem(&token, now),
        Err(LedgerError::TokenAlreadyRedeemed)
    );

    // The rest of the winning exchange routes by the redeemed token.
    let request = companion.receive_hello(&hello_a, now).unwrap();
    assert_eq!(ledger.route(&request, now), Ok(token));
    first.receive_request(&request, now).unwrap();

    // Another companion's token: a Hello after expiry is refused, and so is
    // one for a token nobody registered.
    let (_c2, text2, token2, expires2) = registered_companion(&ledger, &mut rng, now);
    let (_p, hello2) = PrimaryHandshake::scan(&text2, &mut rng, expires2).unwrap();
    assert_eq!(
        ledger.route(&hello2, expires2),
        Err(LedgerError::TokenExpired)
    );
    assert_ne!(token2, token);
    let unregistered = Companion::new(
        DeviceIdentity::generate(&mut rng),
        DeviceLabel::new("x").unwrap(),
        &Policy::default(),
        &mut rng,
        now,
    );
    let text3 = unregistered.offer().unwrap().to_text();
    let (_p3, hello3) = PrimaryHandshake::scan(&text3, &mut rng, now).unwrap();
    assert_eq!(ledger.route(&hello3, now), Err(LedgerError::UnknownToken));
    assert!(expires_at > now);
}

#[test]
fn concurrent_hellos_for_one_token_route_exactly_once() {
    let mut rng = ChaCha20Rng::seed_from_u64(102);
    let ledger = Ledger::in_memory();
    for round in 0..20u64 {
        let now = at(round * 1_000);
        let (mut companion, text, token, _) = registered_companion(&ledger, &mut rng, now);
        let hellos: Vec<(PrimaryHandshake, Vec<u8>)> = (0..THREADS)
            .map(|_| PrimaryHandshake::scan(&text, &mut rng, now).unwrap())
            .collect();
        let barrier = Barrier::new(THREADS);
        let results: Vec<Result<TokenId, LedgerError>> = std::thread::scope(|s| {
            let handles: Vec<_> = hellos
                .iter()
                .map(|(_, hello)| {
                    let (ledger, barrier) = (&ledger, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        ledger.route(hello, now)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<usize> = (0..THREADS).filter(|i| results[*i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert_eq!(results[winners[0]], Ok(token));
        for (i, r) in results.iter().enumerate() {
            if i != winners[0] {
                assert_eq!(r, &Err(LedgerError::TokenAlreadyRedeemed));
            }
        }
        // The companion completes the exchange with the routed Hello.
        let request = companion.receive_hello(&hellos[winners[0]].1, now).unwrap();
        assert_eq!(ledger.route(&request, now), Ok(token));
    }
}

/// One account's facts as the directory receives them.
struct Facts {
    key: AccountKey,
    id: AccountId,
    /// Signed lists in version order, with the time each is applied.
    lists: Vec<SignedDeviceList>,
    /// Heartbeats (always before the lease's end).
    heartbeats: Vec<PrimaryHeartbeat>,
}

impl Facts {
    fn last_activity(&self) -> Timestamp {
        self.lists
            .iter()
            .map(|l| l.issued_at())
            .chain(self.heartbeats.iter().map(|h| h.at()))
            .max()
            .unwrap()
    }
    fn devices(&self) -> &[DeviceListEntry] {
        self.lists.last().unwrap().devices()
    }
}

/// `n` devices with random keys at indices `first_index..`.
fn entries(rng: &mut ChaCha20Rng, first_index: u32, n: u32) -> Vec<DeviceListEntry> {
    (0..n)
        .map(|i| {
            let mut k = [0u8; 32];
            rng.fill_bytes(&mut k);
            DeviceListEntry {
                index: DeviceIndex(first_index + i),
                device: DeviceKey::from_bytes(k),
            }
        })
        .collect()
}

/// Zero to four devices.
fn some_entries(rng: &mut ChaCha20Rng, first_index: u32) -> Vec<DeviceListEntry> {
    let n = rng.next_u32() % 5;
    entries(rng, first_index, n)
}

fn build_facts(rng: &mut ChaCha20Rng, n: usize, t_sweep: u64) -> Vec<Facts> {
    (0..n)
        .map(|i| {
            let key = AccountKey::generate(rng);
            let id = key.account_id();
            // Spread over 30 days; a few sit exactly on the sweep boundary.
            let first = match i {
                0 => t_sweep - OFFLINE,
                1 => t_sweep - OFFLINE + 1,
                2 => t_sweep - OFFLINE - 1,
                _ => u64::from(rng.next_u32()) % (30 * DAY),
            };
            let mut lists = vec![SignedDeviceList::sign(
                &key,
                1,
                &some_entries(rng, 1),
                at(first),
            )];
            let mut heartbeats = Vec::new();
            if i > 2 {
                match rng.next_u32() % 4 {
                    // A heartbeat within the lease.
                    0 => {
                        let hb = first + u64::from(rng.next_u32()) % OFFLINE;
                        heartbeats.push(PrimaryHeartbeat::sign(&key, at(hb)));
                    }
                    // A newer device list within the lease.
                    1 => {
                        let t = first + u64::from(rng.next_u32()) % OFFLINE;
                        lists.push(SignedDeviceList::sign(
                            &key,
                            2,
                            &some_entries(rng, 10),
                            at(t),
                        ));
                    }
                    _ => {}
                }
            }
            Facts {
                key,
                id,
                lists,
                heartbeats,
            }
        })
        .collect()
}

#[test]
fn directory_sweep_returns_exactly_the_expired_accounts_devices() {
    let mut rng = ChaCha20Rng::seed_from_u64(103);
    let policy = Policy::default();
    let t_sweep = 25 * DAY;
    let sweep_at = at(t_sweep);
    let facts = build_facts(&mut rng, 1_000, t_sweep);
    let mut dir = Directory::new(&policy);
    for f in &facts {
        for list in &f.lists {
            assert_eq!(dir.apply_device_list(list, list.issued_at()), Ok(true));
        }
        for hb in &f.heartbeats {
            dir.apply_heartbeat(hb, hb.at()).unwrap();
        }
        // An old version is ignored.
        assert_eq!(
            dir.apply_device_list(&f.lists[0], f.lists[0].issued_at()),
            Ok(false)
        );
    }
    assert_eq!(dir.len(), 1_000);
    let total_devices: usize = facts.iter().map(|f| f.devices().len()).sum();
    assert_eq!(dir.device_count(), total_devices);

    // What the sweep must return.
    let mut expected: BTreeSet<(AccountId, u32, u64)> = BTreeSet::new();
    let mut expired_accounts = 0;
    for f in &facts {
        let deadline = f
            .last_activity()
            .saturating_add(Duration::from_millis(OFFLINE));
        assert_eq!(dir.deadline(&f.id), Some(deadline));
        if deadline <= sweep_at {
            expired_accounts += 1;
            for e in f.devices() {
                expected.insert((f.id, e.index.0, deadline.as_unix_millis()));
            }
        }
    }
    assert!(
        expired_accounts > 100 && expired_accounts < 900,
        "{expired_accounts}"
    );
    assert!(expected.iter().any(|(a, _, _)| *a == facts[0].id) || facts[0].devices().is_empty());
    let earliest = facts
        .iter()
        .map(|f| {
            f.last_activity()
                .saturating_add(Duration::from_millis(OFFLINE))
        })
        .min();
    assert_eq!(dir.next_deadline(), earliest);

    let linked_before: BTreeMap<(AccountId, u32), bool> = facts
        .iter()
        .flat_map(|f| {
            f.devices()
                .iter()
                .map(|e| {
                    (
                        (f.id, e.index.0),
                        dir.is_linked(&f.id, e.index, &e.device, sweep_at),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for f in &facts {
        let deadline = f
            .last_activity()
            .saturating_add(Duration::from_millis(OFFLINE));
        for e in f.devices() {
            assert_eq!(linked_before[&(f.id, e.index.0)], deadline > sweep_at);
            // One millisecond before its deadline, every device is linked.
            assert!(dir.is_linked(
                &f.id,
                e.index,
                &e.device,
                Timestamp::from_unix_millis(deadline.as_unix_millis() - 1)
            ));
            // Not under another index or key.
            assert!(!dir.is_linked(&f.id, DeviceIndex(e.index.0 + 100), &e.device, at(0)));
        }
    }

    let swept = dir.sweep(sweep_at);
    let got: BTreeSet<(AccountId, u32, u64)> = swept
        .iter()
        .map(|d: &SweptDevice| {
            assert_eq!(d.reason, LogoutReason::PrimaryOffline);
            (d.account, d.index.0, d.at.as_unix_millis())
        })
        .collect();
    assert_eq!(swept.len(), got.len(), "a device was swept twice");
    assert_eq!(got, expected);
    assert_eq!(dir.device_count(), total_devices - expected.len());
    assert!(dir.next_deadline().is_none_or(|d| d > sweep_at));

    // A second sweep at the same instant finds nothing.
    assert!(dir.sweep(sweep_at).is_empty());

    // Lookups agree with what they said before the sweep.
    for f in &facts {
        for e in f.devices() {
            assert_eq!(
                dir.is_linked(&f.id, e.index, &e.device, sweep_at),
                linked_before[&(f.id, e.index.0)]
            );
        }
    }

    // A stale fact cannot revive an expired account; a heartbeat neither.
    let expired = facts
        .iter()
        .find(|f| {
            f.last_activity()
                .saturating_add(Duration::from_millis(OFFLINE))
                <= sweep_at
                && !f.devices().is_empty()
        })
        .unwrap();
    let deadline = expired
        .last_activity()
        .saturating_add(Duration::from_millis(OFFLINE));
    let late_hb = PrimaryHeartbeat::sign(&expired.key, deadline);
    assert_eq!(
        dir.apply_heartbeat(&late_hb, sweep_at),
        Err(DirectoryError::AccountExpired)
    );
    let stale = SignedDeviceList::sign(&expired.key, 9, expired.devices(), expired.last_activity());
    assert_eq!(
        dir.apply_device_list(&stale, sweep_at),
        Err(DirectoryError::AccountExpired)
    );
    let e = expired.devices()[0];
    assert!(!dir.is_linked(&expired.id, e.index, &e.device, sweep_at));
    // A list signed after the deadline that still names the swept index (a
    // primary that missed the logout) does not re-link it; a re-pair under a
    // new index (indices are never reused) does.
    let missed = SignedDeviceList::sign(&expired.key, 10, &[e], sweep_at);
    assert_eq!(dir.apply_device_list(&missed, sweep_at), Ok(true));
    assert!(!dir.is_linked(&expired.id, e.index, &e.device, sweep_at));
    let e = devicelink::certificate::DeviceListEntry {
        index: devicelink::DeviceIndex(e.index.0 + 100),
        device: e.device,
    };
    let repair = SignedDeviceList::sign(&expired.key, 11, &[e], sweep_at);
    assert_eq!(dir.apply_device_list(&repair, sweep_at), Ok(true));
    assert!(dir.is_linked(&expired.id, e.index, &e.device, sweep_at));

    // Far in the future, every remaining device is swept, once.
    let rest = dir.sweep(Timestamp::MAX);
    assert_eq!(rest.len(), total_devices - expected.len() + 1);
    assert!(dir.sweep(Timestamp::MAX).is_empty());
    assert_eq!(dir.device_count(), 0);
    assert_eq!(dir.next_deadline(), None);
}

#[test]
fn directory_swept_account_is_not_revived_by_a_clock_going_backwards() {
    let mut rng = ChaCha20Rng::seed_from_u64(104);
    let mut dir = Directory::new(&Policy::default());
    let key = AccountKey::generate(&mut rng);
    let devices = entries(&mut rng, 1, 2);
    let v1 = SignedDeviceList::sign(&key, 1, &devices, at(0));
    assert_eq!(dir.apply_device_list(&v1, at(0)), Ok(true));
    let swept = dir.sweep(at(OFFLINE + DAY));
    assert_eq!(swept.len(), 2);
    assert!(!dir.is_linked(
        &key.account_id(),
        devices[0].index,
        &devices[0].device,
        at(OFFLINE + DAY)
    ));

    // The same list, refreshed by the primary at day 13, arrives late: with a
    // correct clock it is refused...
    let v2 = SignedDeviceList::sign(&key, 2, &devices, at(13 * DAY));
    let mut correct = dir.clone();
    assert_eq!(
        correct.apply_device_list(&v2, at(OFFLINE + DAY)),
        Err(DirectoryError::AccountExpired)
    );
    // ...and with a clock set back to day 13 it must be refused too: the
    // devices were logged out for good.
    let _ = dir.apply_device_list(&v2, at(13 * DAY));
    for e in &devices {
        assert!(
            !dir.is_linked(&key.account_id(), e.index, &e.device, at(OFFLINE + DAY)),
            "device {} revived",
            e.index
        );
    }
}
