//! Bookkeeping per device on a server: the relay's `Directory` keeps at most
//! 256 bytes per linked device (heap included), measured with dhat's heap
//! statistics, not estimated. Deterministic: allocation sizes, not time.

use devicelink::certificate::DeviceListEntry;
use devicelink::relay::Directory;
use devicelink::{AccountId, DeviceIndex, DeviceKey, DeviceLabel, Policy, Timestamp};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn id(i: u64, tag: u8) -> [u8; 32] {
    let mut b = [tag; 32];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b
}

/// Heap bytes per device for `accounts` accounts of `per_account` devices.
fn bytes_per_device(accounts: u64, per_account: u32) -> f64 {
    let before = dhat::HeapStats::get().curr_bytes;
    let mut d = Directory::new(&Policy::default());
    let label = DeviceLabel::new("Firefox on Linux").unwrap();
    for i in 0..accounts {
        let at = Timestamp::from_unix_millis(1_700_000_000_000 + i);
        let devices: Vec<DeviceListEntry> = (1..=per_account)
            .map(|k| {
                DeviceListEntry::new(
                    DeviceIndex(k),
                    DeviceKey::from_bytes(id(i * 8 + u64::from(k), 2)),
                    label.clone(),
                    at,
                )
            })
            .collect();
        // The list's version and hash are stored beside the devices (the
        // hash is opaque here: load_account checks no signature).
        d.load_account(AccountId::from_bytes(id(i, 1)), (1, id(i, 3)), at, &devices)
            .unwrap();
    }
    let after = dhat::HeapStats::get().curr_bytes;
    let total = std::mem::size_of::<Directory>() + (after - before);
    let per = total as f64 / (accounts * u64::from(per_account)) as f64;
    assert_eq!(d.device_count() as u64, accounts * u64::from(per_account));
    drop(d);
    per
}

#[test]
fn directory_keeps_at_most_256_bytes_per_device() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut report = Vec::new();
    // 229_377 accounts is just past a hash-table growth step: the worst load factor.
    for (accounts, per_account) in [(200_000u64, 1u32), (229_377, 1), (100_000, 2), (50_000, 4)] {
        let per = bytes_per_device(accounts, per_account);
        report.push(format!(
            "{accounts} accounts x {per_account} devices: {per:.1} bytes/device"
        ));
        assert!(
            per <= 256.0,
            "{per:.1} bytes per device with {per_account} per account"
        );
    }
    eprintln!("{}", report.join("\n"));
}
