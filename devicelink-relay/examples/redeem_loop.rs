//! Child process of the crash test (`tests/crash.rs`): on the SQLite file
//! given as the first argument, `THREADS` threads register, reserve and
//! redeem fresh tokens, and print each redeemed token's number (one line,
//! flushed) only after the store acknowledged the redemption; one more
//! thread applies ever newer signed device lists of one account (its key
//! seeded by the offset) through the `AccountDirectory` and prints
//! `L <version>` after each acknowledged one. Runs until
//! killed or until `COUNT` (second argument) tokens are redeemed. Token
//! numbers start at `REDEEM_LOOP_OFFSET` (environment, default 0), so a
//! restarted run uses fresh tokens.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use devicelink::certificate::{DeviceListDraft, DeviceListEntry};
use devicelink::relay::{Budget, ClientId, HelloDigest, SourceKey, TokenStore};
use devicelink::{
    AccountKey, DeviceIdentity, DeviceIndex, DeviceLabel, Policy, SignedDeviceList, Timestamp,
    TokenId,
};
use devicelink_relay::{AccountDirectory, SqliteStore};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const THREADS: u64 = 4;

/// The token of number `n` (also used by the test).
fn token(n: u64) -> TokenId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    TokenId::from_bytes(b)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: redeem_loop DB [COUNT]")?;
    let count: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(u64::MAX);
    let store = SqliteStore::open(path)?;
    let offset: u64 = std::env::var("REDEEM_LOOP_OFFSET")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0);
    let count = count.saturating_add(offset);
    let next = Arc::new(AtomicU64::new(offset));
    // Each worker's companion registers every token it redeems (their
    // tombstones stay): no budget.
    let quota = Budget::unlimited();
    let now = Timestamp::from_unix_millis(1_000);
    let far = Timestamp::from_unix_millis(1_000_000_000);
    let lists = {
        let directory = AccountDirectory::new(store.clone(), &Policy::default());
        let mut rng = ChaCha20Rng::seed_from_u64(offset);
        let key = AccountKey::generate(&mut rng);
        let device = DeviceListEntry::new(
            DeviceIndex(1),
            DeviceIdentity::generate(&mut rng).device_key(),
            DeviceLabel::new("laptop").map_err(|e| e.to_string())?,
            now,
        );
        std::thread::spawn(move || -> Result<(), String> {
            // Continue after what an earlier run of this offset stored.
            let mut previous: Option<SignedDeviceList> = directory
                .account(&key.account_id())
                .map_err(|e| e.to_string())?
                .map(|r| SignedDeviceList::from_bytes(&r.list))
                .transpose()
                .map_err(|e| e.to_string())?;
            for _ in 0..count.min(1_000_000) {
                let devices = vec![device.clone()];
                let draft = match &previous {
                    Some(p) => DeviceListDraft::after(p, devices),
                    None => DeviceListDraft::new(1, devices),
                };
                let version = draft.version;
                let list = SignedDeviceList::sign(&key, &draft, now);
                if !directory
                    .apply_device_list(&list, now, || Ok(()))
                    .map_err(|e| e.to_string())?
                    .changed()
                {
                    return Err(format!("list version {version} not applied"));
                }
                previous = Some(list);
                let mut out = std::io::stdout().lock();
                writeln!(out, "L {version}").map_err(|e| e.to_string())?;
                out.flush().map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|w| {
            let (store, next) = (store.clone(), Arc::clone(&next));
            std::thread::spawn(move || -> Result<(), String> {
                let companion = ClientId::from(1_000 + w);
                let primary = ClientId::from(2_000 + w);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return Ok(());
                    }
                    let t = token(n);
                    store
                        .register(t, companion, SourceKey::LOCAL, far, quota)
                        .map_err(|e| e.to_string())?;
                    store
                        .reserve(&t, primary, &HelloDigest::of(&t.to_bytes()), now, far)
                        .map_err(|e| e.to_string())?;
                    store
                        .redeem(&t, companion, now, far)
                        .map_err(|e| e.to_string())?;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{n}").map_err(|e| e.to_string())?;
                    out.flush().map_err(|e| e.to_string())?;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "worker panicked")??;
    }
    lists.join().map_err(|_| "list writer panicked")??;
    Ok(())
}
