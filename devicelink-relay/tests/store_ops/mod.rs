//! What the store tests share: times and tokens by number, account records
//! of each kind the sweep tells apart, and random token-store operations run against two stores to compare their answers
//! (`contract.rs` against SQLite, `postgres.rs` against PostgreSQL; the
//! memory store is the reference).
#![allow(dead_code)]

use devicelink::certificate::{DeviceListDraft, DeviceListEntry};
use devicelink::relay::{Budget, ClientId, Directory, HelloDigest, SourceKey, TokenStore};
use devicelink::{
    AccountKey, DeviceIdentity, DeviceIndex, DeviceKey, DeviceLabel, Policy, SignedDeviceList,
    Timestamp, TokenId,
};
use devicelink_relay::AccountRecord;
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub fn t(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

pub fn tok(n: u64) -> TokenId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    TokenId::from_bytes(b)
}

/// A random operation on the token store.
#[derive(Debug, Clone)]
pub enum Op {
    Register(u8, u8, u16),
    Reserve(u8, u8, u8, u16, u16),
    Release(u8, u8, u8, u16),
    Redeem(u8, u8, u16, u16),
    Sweep(u16, u8),
    Abandon(u8),
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 0u8..3, 0u16..400).prop_map(|(k, c, e)| Op::Register(k, c, e)),
        (0u8..6, 0u8..3, 0u8..2, 0u16..400, 0u16..100)
            .prop_map(|(k, c, h, n, w)| Op::Reserve(k, c, h, n, w)),
        (0u8..6, 0u8..3, 0u8..2, 0u16..400).prop_map(|(k, c, h, n)| Op::Release(k, c, h, n)),
        (0u8..6, 0u8..3, 0u16..400, 0u16..300).prop_map(|(k, c, n, w)| Op::Redeem(k, c, n, w)),
        (0u16..500, 0u8..4).prop_map(|(n, l)| Op::Sweep(n, l)),
        (0u8..3).prop_map(Op::Abandon),
    ]
}

pub fn apply<S: TokenStore>(s: &S, op: &Op) -> String {
    // 3 per client, 4 per source (clients 0 and 2 share one), 5 in all,
    // the last one kept for sources holding fewer than 2.
    let q = Budget::new(3, 4, 5).with_reserve(1, 2);
    let src = |c: u8| SourceKey::from_bytes([c % 2; 16]);
    let cl = |c: u8| ClientId::from(u64::from(c));
    let tm = |n: u16| t(u64::from(n));
    let hd = |h: u8| HelloDigest::from_bytes([h; 32]);
    match *op {
        Op::Register(k, c, e) => {
            format!("{:?}", s.register(tok(k.into()), cl(c), src(c), tm(e), q))
        }
        Op::Reserve(k, c, h, n, w) => format!(
            "{:?}",
            s.reserve(&tok(k.into()), cl(c), &hd(h), tm(n), tm(n + w))
        ),
        Op::Release(k, c, h, n) => {
            format!("{:?}", s.release(&tok(k.into()), cl(c), &hd(h), tm(n)))
        }
        Op::Redeem(k, c, n, w) => {
            format!("{:?}", s.redeem(&tok(k.into()), cl(c), tm(n), tm(n + w)))
        }
        Op::Sweep(n, l) => format!("{:?}", s.sweep(tm(n), l.into())),
        Op::Abandon(c) => format!("{:?}", s.abandon(cl(c))),
    }
}

pub fn entry(index: u32, device: DeviceKey) -> DeviceListEntry {
    DeviceListEntry::new(
        DeviceIndex(index),
        device,
        DeviceLabel::new("laptop").unwrap(),
        t(0),
    )
}

/// A record of a fresh account (key seeded by `seed`) with `devices`
/// companions, its list signed at `activity`.
pub fn record(seed: u64, devices: u32, activity: u64, revision: u64) -> AccountRecord {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let key = AccountKey::generate(&mut rng);
    let entries = (1..=devices)
        .map(|i| entry(i, DeviceIdentity::generate(&mut rng).device_key()))
        .collect();
    let list = SignedDeviceList::sign(&key, &DeviceListDraft::new(1, entries), t(activity));
    let mut d = Directory::new(&Policy::default());
    d.apply_device_list(&list, t(activity)).unwrap();
    AccountRecord {
        facts: d.facts(&key.account_id()).unwrap(),
        list: list.to_bytes(),
        revision,
    }
}

/// A record of an account (key seeded by `seed`) that had one companion,
/// then none: removed by a newer list, or (`sweep`) logged out for its
/// primary's inactivity.
pub fn emptied(seed: u64, sweep: bool) -> AccountRecord {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let key = AccountKey::generate(&mut rng);
    let device = DeviceIdentity::generate(&mut rng).device_key();
    let one = SignedDeviceList::sign(&key, &DeviceListDraft::new(1, vec![entry(1, device)]), t(1));
    let policy = Policy::default();
    let mut d = Directory::new(&policy);
    d.apply_device_list(&one, t(1)).unwrap();
    let list = if sweep {
        let deadline = t(1).saturating_add(policy.primary_offline_limit());
        assert_eq!(d.sweep(deadline).len(), 1);
        one
    } else {
        let none = SignedDeviceList::sign(&key, &DeviceListDraft::after(&one, vec![]), t(2));
        d.apply_device_list(&none, t(2)).unwrap();
        none
    };
    AccountRecord {
        facts: d.facts(&key.account_id()).unwrap(),
        list: list.to_bytes(),
        revision: 1,
    }
}
