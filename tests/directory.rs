//! The many-account directory: its expiry sweep at 1,000 accounts returns
//! exactly what expired, stale facts and clocks going backwards never revive
//! anyone. Deterministic inputs (seeded RNG, virtual clock).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use devicelink::audit::AuditAnchor;
use devicelink::certificate::{DeviceListDraft, DeviceListEntry};
use devicelink::relay::{DeviceLogout, DirectoryError};
use devicelink::{
    AccountId, AccountKey, DeviceIndex, DeviceKey, DeviceLabel, Directory, LogoutReason, Policy,
    PrimaryHeartbeat, SignedDeviceList, Timestamp,
};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const T0: u64 = 1_700_000_000_000;
const DAY: u64 = 86_400_000;
const OFFLINE: u64 = 14 * DAY;

fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(T0 + ms)
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
            DeviceListEntry::new(
                DeviceIndex(first_index + i),
                DeviceKey::from_bytes(k),
                DeviceLabel::new("device").unwrap(),
                at(0),
            )
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
                &DeviceListDraft::new(1, some_entries(rng, 1)),
                at(first),
            )];
            let mut heartbeats = Vec::new();
            if i > 2 {
                match rng.next_u32() % 4 {
                    // A heartbeat within the lease.
                    0 => {
                        let hb = first + u64::from(rng.next_u32()) % OFFLINE;
                        heartbeats.push(PrimaryHeartbeat::sign(
                            &key,
                            &lists[0],
                            AuditAnchor::default(),
                            at(hb),
                        ));
                    }
                    // A newer device list within the lease.
                    1 => {
                        let t = first + u64::from(rng.next_u32()) % OFFLINE;
                        let next = DeviceListDraft::after(&lists[0], some_entries(rng, 10));
                        lists.push(SignedDeviceList::sign(&key, &next, at(t)));
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
            assert_eq!(
                dir.apply_device_list(list, list.issued_at())
                    .map(|a| a.changed()),
                Ok(true)
            );
        }
        for hb in &f.heartbeats {
            dir.apply_heartbeat(hb, hb.at()).unwrap();
        }
        // An old version is ignored.
        assert_eq!(
            dir.apply_device_list(&f.lists[0], f.lists[0].issued_at())
                .map(|a| a.changed()),
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
        .map(|d: &DeviceLogout| {
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
    let latest = expired.lists.last().unwrap();
    let late_hb = PrimaryHeartbeat::sign(&expired.key, latest, AuditAnchor::default(), deadline);
    assert_eq!(
        dir.apply_heartbeat(&late_hb, sweep_at),
        Err(DirectoryError::AccountExpired)
    );
    let stale = SignedDeviceList::sign(
        &expired.key,
        &DeviceListDraft::after(latest, expired.devices().to_vec()),
        expired.last_activity(),
    );
    assert_eq!(
        dir.apply_device_list(&stale, sweep_at),
        Err(DirectoryError::AccountExpired)
    );
    let e = expired.devices()[0].clone();
    assert!(!dir.is_linked(&expired.id, e.index, &e.device, sweep_at));
    // A list signed after the deadline that still names the swept index (a
    // primary that missed the logout) does not re-link it; a re-pair under a
    // new index (indices are never reused) does.
    let missed = SignedDeviceList::sign(
        &expired.key,
        &DeviceListDraft::after(latest, vec![e.clone()]),
        sweep_at,
    );
    assert_eq!(
        dir.apply_device_list(&missed, sweep_at)
            .map(|a| a.changed()),
        Ok(true)
    );
    assert!(!dir.is_linked(&expired.id, e.index, &e.device, sweep_at));
    let e = DeviceListEntry::new(
        DeviceIndex(e.index.0 + 100),
        e.device,
        e.label.clone(),
        sweep_at,
    );
    let repair = SignedDeviceList::sign(
        &expired.key,
        &DeviceListDraft::after(&missed, vec![e.clone()]),
        sweep_at,
    );
    assert_eq!(
        dir.apply_device_list(&repair, sweep_at)
            .map(|a| a.changed()),
        Ok(true)
    );
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
    let v1 = SignedDeviceList::sign(&key, &DeviceListDraft::new(1, devices.clone()), at(0));
    assert_eq!(
        dir.apply_device_list(&v1, at(0)).map(|a| a.changed()),
        Ok(true)
    );
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
    let v2 = SignedDeviceList::sign(
        &key,
        &DeviceListDraft::after(&v1, devices.clone()),
        at(13 * DAY),
    );
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

/// Signs `draft` for `key` at `t`.
fn signed(key: &AccountKey, draft: &DeviceListDraft, t: u64) -> SignedDeviceList {
    SignedDeviceList::sign(key, draft, at(t))
}

#[test]
fn a_list_that_drops_devices_returns_them_with_the_lists_reasons() {
    use devicelink::certificate::RemovedDevice;
    use devicelink::relay::ListApplied;
    let mut rng = ChaCha20Rng::seed_from_u64(120);
    let key = AccountKey::generate(&mut rng);
    let id = key.account_id();
    let four = entries(&mut rng, 1, 4);
    let mut dir = Directory::new(&Policy::default());
    let v1 = signed(&key, &DeviceListDraft::new(1, four.clone()), 0);
    assert_eq!(
        dir.apply_device_list(&v1, at(0)),
        Ok(ListApplied::Changed { logged_out: vec![] })
    );
    // v2 drops #1 (revoked) and #2 (idle), keeps #3 and #4.
    let v2 = signed(
        &key,
        &DeviceListDraft {
            removed: vec![
                RemovedDevice {
                    index: DeviceIndex(1),
                    reason: LogoutReason::Revoked,
                },
                RemovedDevice {
                    index: DeviceIndex(2),
                    reason: LogoutReason::CompanionIdle,
                },
            ],
            ..DeviceListDraft::after(&v1, four[2..].to_vec())
        },
        DAY,
    );
    let logout = |i: u32, reason, t| DeviceLogout {
        account: id,
        index: DeviceIndex(i),
        reason,
        at: at(t),
    };
    assert_eq!(
        dir.apply_device_list(&v2, at(DAY)),
        Ok(ListApplied::Changed {
            logged_out: vec![
                logout(1, LogoutReason::Revoked, DAY),
                logout(2, LogoutReason::CompanionIdle, DAY)
            ]
        })
    );
    // A holder that missed versions: v4 drops #3 without a reason in v4.
    let v3 = signed(
        &key,
        &DeviceListDraft::after(&v2, four[2..].to_vec()),
        2 * DAY,
    );
    let v4 = signed(
        &key,
        &DeviceListDraft::after(&v3, four[3..].to_vec()),
        3 * DAY,
    );
    assert_eq!(
        dir.apply_device_list(&v4, at(3 * DAY)),
        Ok(ListApplied::Changed {
            logged_out: vec![logout(3, LogoutReason::Revoked, 3 * DAY)]
        })
    );
    assert_eq!(
        dir.apply_device_list(&v4, at(3 * DAY)),
        Ok(ListApplied::Unchanged)
    );
    // Past the deadline, unswept: a re-pair list logs #4 out for inactivity.
    let deadline = 3 * DAY + OFFLINE;
    let fresh = entries(&mut rng, 5, 1);
    let v5 = signed(&key, &DeviceListDraft::after(&v4, fresh), deadline + 5);
    assert_eq!(
        dir.apply_device_list(&v5, at(deadline + 5)),
        Ok(ListApplied::Changed {
            logged_out: vec![logout(4, LogoutReason::PrimaryOffline, deadline)]
        })
    );
}

#[test]
fn account_facts_round_trip_and_a_directory_loaded_from_them_decides_alike() {
    use devicelink::relay::AccountFacts;
    let mut rng = ChaCha20Rng::seed_from_u64(121);
    let policy = Policy::default();
    let t_sweep = 25 * DAY;
    let facts = build_facts(&mut rng, 200, t_sweep);
    let mut dir = Directory::new(&policy);
    for f in &facts {
        for list in &f.lists {
            dir.apply_device_list(list, list.issued_at()).unwrap();
        }
        for hb in &f.heartbeats {
            dir.apply_heartbeat(hb, hb.at()).unwrap();
        }
    }
    // Sweep some, fork one.
    dir.sweep(at(t_sweep));
    let f0 = &facts[5];
    let fork = signed(
        &f0.key,
        &DeviceListDraft::new(f0.lists.last().unwrap().version(), vec![]),
        t_sweep,
    );
    let _ = dir.apply_device_list(&fork, at(t_sweep));
    // Every account, through bytes, into a fresh directory per account.
    for f in &facts {
        let held = dir.facts(&f.id).unwrap();
        let bytes = held.to_bytes();
        let back = AccountFacts::from_bytes(&bytes).unwrap();
        assert_eq!(back, held);
        assert_eq!(back.to_bytes(), bytes);
        let mut one = Directory::new(&policy);
        one.load_facts(&back).unwrap();
        assert_eq!(one.facts(&f.id), Some(held.clone()));
        assert_eq!(one.deadline(&f.id), dir.deadline(&f.id));
        // The same next facts get the same answers in both.
        let next = signed(
            &f.key,
            &DeviceListDraft::after(f.lists.last().unwrap(), entries(&mut rng, 40, 1)),
            t_sweep + DAY,
        );
        let mut whole = dir.clone();
        assert_eq!(
            one.apply_device_list(&next, at(t_sweep + DAY)),
            whole.apply_device_list(&next, at(t_sweep + DAY)),
            "account {}",
            f.id.fingerprint()
        );
        assert_eq!(one.facts(&f.id), whole.facts(&f.id));
        assert_eq!(
            one.sweep(at(t_sweep + 20 * DAY)),
            whole
                .sweep(at(t_sweep + 20 * DAY))
                .into_iter()
                .filter(|d| d.account == f.id)
                .collect::<Vec<_>>()
        );
    }
    assert!(dir.facts(&f0.id).unwrap().forked());
}

#[test]
fn account_facts_decoding_is_total() {
    use devicelink::relay::AccountFacts;
    let mut rng = ChaCha20Rng::seed_from_u64(122);
    let key = AccountKey::generate(&mut rng);
    let mut dir = Directory::new(&Policy::default());
    let list = signed(&key, &DeviceListDraft::new(1, entries(&mut rng, 1, 3)), 0);
    dir.apply_device_list(&list, at(0)).unwrap();
    let good = dir.facts(&key.account_id()).unwrap().to_bytes();
    assert_eq!(good.len(), 72 + 3 * 36);
    // Every truncation and extension is refused; so are an unknown version,
    // unknown flags, and an expired account that lists devices.
    for n in 0..good.len() {
        assert!(AccountFacts::from_bytes(&good[..n]).is_err(), "{n}");
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(AccountFacts::from_bytes(&longer).is_err());
    for (at_byte, value) in [(0usize, 2u8), (69, 8), (69, 6)] {
        let mut bad = good.clone();
        bad[at_byte] = value;
        assert!(AccountFacts::from_bytes(&bad).is_err(), "{at_byte}={value}");
    }
    let mut many = good.clone();
    many[70..72].copy_from_slice(&u16::MAX.to_be_bytes());
    assert!(AccountFacts::from_bytes(&many).is_err());
    // Random bytes never panic.
    for len in [0usize, 1, 71, 72, 108, 4_680, 5_000] {
        let mut b = vec![0u8; len];
        for _ in 0..200 {
            rng.fill_bytes(&mut b);
            if len > 0 {
                b[0] = 1;
            }
            let _ = AccountFacts::from_bytes(&b);
        }
    }
}

#[test]
fn a_first_list_signed_past_the_offline_limit_creates_nothing() {
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let key = AccountKey::generate(&mut rng);
    let list = signed(&key, &DeviceListDraft::new(1, some_entries(&mut rng, 1)), 0);
    let mut dir = Directory::new(&Policy::default());
    // Seen for the first time at the offline limit: refused, nothing kept,
    // so the genuine primary's current facts still apply later.
    assert_eq!(
        dir.apply_device_list(&list, at(OFFLINE)),
        Err(DirectoryError::AccountExpired)
    );
    assert!(dir.is_empty());
    assert_eq!(dir.facts(&key.account_id()), None);
    // A millisecond earlier it is the account's first fact.
    assert!(dir
        .apply_device_list(&list, at(OFFLINE - 1))
        .unwrap()
        .changed());
    // And the genuine primary's next list, signed now, applies.
    let next = signed(
        &key,
        &DeviceListDraft::after(&list, some_entries(&mut rng, 5)),
        OFFLINE,
    );
    assert!(dir.apply_device_list(&next, at(OFFLINE)).unwrap().changed());
}

#[test]
fn an_account_without_companions_is_forgettable_after_the_offline_limit() {
    let mut rng = ChaCha20Rng::seed_from_u64(78);
    let key = AccountKey::generate(&mut rng);
    let id = key.account_id();
    let mut dir = Directory::new(&Policy::default());
    let empty = signed(&key, &DeviceListDraft::new(1, Vec::new()), 0);
    dir.apply_device_list(&empty, at(0)).unwrap();
    assert!(!dir.is_forgettable(&id, at(OFFLINE - 1)));
    assert!(dir.is_forgettable(&id, at(OFFLINE)));
    // With a companion it is not, until the sweep logged it out.
    let listed = signed(
        &key,
        &DeviceListDraft::after(&empty, some_entries(&mut rng, 1)),
        DAY,
    );
    dir.apply_device_list(&listed, at(DAY)).unwrap();
    assert!(!dir.is_forgettable(&id, at(DAY + OFFLINE)));
    assert!(!dir.is_spent(&id));
    assert!(!dir.sweep(at(DAY + OFFLINE)).is_empty());
    // Swept, it lists none; but it had one: its floor must keep binding a
    // primary that missed the logout, so it is never forgotten. Its stored
    // list is no longer needed.
    assert!(!dir.is_forgettable(&id, at(DAY + 10 * OFFLINE)));
    assert!(dir.is_spent(&id));
    let facts = dir.facts(&id).unwrap();
    assert!(facts.linked_once());
    assert_eq!(
        devicelink::relay::AccountFacts::from_bytes(&facts.to_bytes()).unwrap(),
        facts
    );
    // Once forgotten, its old lists create nothing when published again.
    let mut fresh = Directory::new(&Policy::default());
    assert_eq!(
        fresh.apply_device_list(&listed, at(DAY + OFFLINE)),
        Err(DirectoryError::AccountExpired)
    );
    assert!(!fresh.is_forgettable(&AccountId::from_bytes([0; 32]), at(0)));
}
