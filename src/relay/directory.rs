//! Many accounts' device leases on a server, from signed facts only.
//!
//! The directory learns each account's devices from its [`SignedDeviceList`]
//! and the primary's activity from signed lists and [`PrimaryHeartbeat`]s. All
//! companions of an account share one deadline (`last primary activity +
//! primary_offline_limit`), so the expiry index holds one entry per account.
//!
//! Layout, chosen to keep at most 256 bytes of bookkeeping per device (heap
//! included; `tests/memory.rs` measures it):
//!
//! - `index`: a hash map from account id to a 4-byte slot number (O(1) lookup);
//! - `slots`: the accounts, in fixed-size chunks (no doubling waste);
//! - `by_deadline`: a `BTreeSet` of 16-byte `(deadline, slot)` keys, so
//!   [`Directory::sweep`] pops only what expired: its cost follows the number
//!   of expired accounts, not the population. Updates are O(log n).

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::certificate::{
    CertificateError, DeviceIndex, DeviceListEntry, PrimaryHeartbeat, SignedDeviceList,
};
use crate::keys::{AccountId, DeviceKey};
use crate::persist::PersistError;
use crate::policy::Policy;
use crate::session::LogoutReason;
use crate::time::{duration_millis, Timestamp};

/// Accounts per slot chunk.
const CHUNK: usize = 1024;

/// Why the directory refused an update. Nothing changed, except that a
/// [`DirectoryError::Fork`] marks the account so that only the chained
/// successor of its applied list is accepted from then on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The account's companions were logged out for primary inactivity and
    /// this fact predates the logout; only a device list signed after it (a
    /// re-pair) brings the account back.
    #[error("account was logged out for primary inactivity")]
    AccountExpired,
    /// No device list of this account was applied yet.
    #[error("unknown account")]
    UnknownAccount,
    /// The list names more companions than the policy allows.
    #[error("device list names {count} companions; the limit is {limit}")]
    DeviceLimitExceeded {
        /// Companions listed.
        count: usize,
        /// The policy's limit.
        limit: u32,
    },
    /// The directory holds `u32::MAX` accounts.
    #[error("directory is full")]
    Full,
    /// The list forks the account's history: another list of a version
    /// already applied, or a successor that does not chain to it (a primary
    /// restored from an old save). Once a fork is seen, only the direct,
    /// chained successor of the applied list is accepted.
    #[error("device list fork at version {version}")]
    Fork {
        /// Where the histories split.
        version: u64,
    },
    /// A heartbeat names a newer device list than the one applied: apply it
    /// first (the relay cannot keep a revoked device listed by dropping it).
    #[error("apply device list version {version} first")]
    NeedDeviceList {
        /// The version the heartbeat names.
        version: u64,
    },
}

fn fact_error(e: CertificateError) -> DirectoryError {
    match e {
        CertificateError::NeedDeviceList { version } => DirectoryError::NeedDeviceList { version },
        CertificateError::Fork { version } => DirectoryError::Fork { version },
        CertificateError::StaleDeviceList { got, .. } => DirectoryError::Fork { version: got },
        _ => DirectoryError::Fork { version: 0 },
    }
}

/// A device the sweep logged out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweptDevice {
    /// Its account.
    pub account: AccountId,
    /// Its index.
    pub index: DeviceIndex,
    /// Why.
    pub reason: LogoutReason,
    /// The deadline that passed.
    pub at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slot {
    account: AccountId,
    last_activity: Timestamp,
    list_version: u64,
    /// The first 16 bytes of the applied list's hash: its successor must
    /// name it (128 bits: a fork needs a second preimage).
    list_hash: [u8; 16],
    /// A fork was seen: accept only the chained successor.
    #[serde(default)]
    forked: bool,
    /// Linked companions: (index, identity key). Empty once expired.
    devices: Box<[(u32, DeviceKey)]>,
    /// Swept for primary inactivity: only a fact signed after the deadline
    /// (a re-pair) is accepted, whatever the relay's clock says.
    #[serde(default)]
    expired: bool,
    /// The highest index a sweep logged out. Indices are never reused, so a
    /// later list naming such an index (a primary that missed the logout) does
    /// not re-link it.
    #[serde(default)]
    swept_up_to: u32,
}

impl Slot {
    /// The highest index among `floor` and the slot's devices.
    fn highest_index(&self, floor: u32) -> u32 {
        self.devices.iter().map(|(i, _)| *i).fold(floor, u32::max)
    }
}

/// The server's view of many accounts' linked devices and their leases.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Directory {
    offline_limit_ms: u64,
    max_companions: u32,
    index: HashMap<AccountId, u32>,
    slots: Vec<Vec<Slot>>,
    by_deadline: BTreeSet<(Timestamp, u32)>,
}

impl Directory {
    /// An empty directory applying `policy`'s offline limit and companion limit.
    pub fn new(policy: &Policy) -> Self {
        Directory {
            offline_limit_ms: duration_millis(policy.primary_offline_limit()),
            max_companions: policy.max_companions(),
            index: HashMap::new(),
            slots: Vec::new(),
            by_deadline: BTreeSet::new(),
        }
    }

    fn deadline_of(&self, last_activity: Timestamp) -> Timestamp {
        last_activity.saturating_add_millis(self.offline_limit_ms)
    }

    fn slot(&self, n: u32) -> Option<&Slot> {
        let n = usize::try_from(n).ok()?;
        self.slots.get(n / CHUNK)?.get(n % CHUNK)
    }

    fn slot_mut(&mut self, n: u32) -> Option<&mut Slot> {
        let n = usize::try_from(n).ok()?;
        self.slots.get_mut(n / CHUNK)?.get_mut(n % CHUNK)
    }

    fn entry(&self, account: &AccountId) -> Option<(u32, &Slot)> {
        let n = *self.index.get(account)?;
        self.slot(n).map(|s| (n, s))
    }

    /// Finds or creates the slot of `account`.
    fn slot_for(
        &mut self,
        account: AccountId,
        last_activity: Timestamp,
    ) -> Result<u32, DirectoryError> {
        if let Some(n) = self.index.get(&account) {
            return Ok(*n);
        }
        let n = u32::try_from(self.index.len()).map_err(|_| DirectoryError::Full)?;
        if self.slots.last().is_none_or(|c| c.len() == CHUNK) {
            self.slots.push(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.slots.last_mut() {
            chunk.push(Slot {
                account,
                last_activity,
                list_version: 0,
                list_hash: [0; 16],
                forked: false,
                devices: Box::new([]),
                expired: false,
                swept_up_to: 0,
            });
        }
        self.index.insert(account, n);
        Ok(n)
    }

    /// Sets a slot's facts and re-indexes its deadline.
    fn set(
        &mut self,
        n: u32,
        last_activity: Timestamp,
        list: Option<(u64, [u8; 32])>,
        devices: Box<[(u32, DeviceKey)]>,
    ) {
        let limit = self.offline_limit_ms;
        let Some(slot) = self.slot_mut(n) else {
            return;
        };
        // A heartbeat (`list: None`) moves the activity only: the list the
        // directory holds is changed by lists alone.
        if let Some((list_version, hash)) = list {
            let mut list_hash = [0u8; 16];
            list_hash.copy_from_slice(&hash[..16]);
            slot.list_version = list_version;
            slot.list_hash = list_hash;
        }
        let old =
            (!slot.devices.is_empty()).then(|| slot.last_activity.saturating_add_millis(limit));
        slot.last_activity = last_activity;
        slot.devices = devices;
        slot.expired = false;
        let indexed = !slot.devices.is_empty();
        if let Some(d) = old {
            self.by_deadline.remove(&(d, n));
        }
        if indexed {
            self.by_deadline
                .insert((last_activity.saturating_add_millis(limit), n));
        }
    }

    /// Number of accounts known.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no account is known.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Number of linked devices across accounts (as of the last sweep).
    pub fn device_count(&self) -> usize {
        self.slots.iter().flatten().map(|s| s.devices.len()).sum()
    }

    /// Applies a verified, newer device list (an older one, or the same one
    /// again, is ignored and returns `Ok(false)`). Counts as primary activity
    /// at the list's signing time. A list that forks the applied one (same
    /// version, other content; or the next version not chained to it) is
    /// [`DirectoryError::Fork`]; from the first fork on, the account stays
    /// strict: only the chained successor of the applied list is accepted
    /// (never a list a version or more ahead), so a restored old primary
    /// cannot re-list a revoked device by publishing more versions. The
    /// genuine primary publishes every version it makes, so its lists always
    /// chain.
    pub fn apply_device_list(
        &mut self,
        list: &SignedDeviceList,
        now: Timestamp,
    ) -> Result<bool, DirectoryError> {
        let account = list.account();
        let mut last_activity = list.issued_at();
        if let Some((n, slot)) = self.entry(&account) {
            match list.check_successor_of(slot.list_version, &slot.list_hash) {
                Ok(()) => {}
                Err(CertificateError::StaleDeviceList { .. }) => return Ok(false),
                Err(e) => {
                    if let Some(slot) = self.slot_mut(n) {
                        slot.forked = true;
                    }
                    return Err(fact_error(e));
                }
            }
            let chained = list.version() == slot.list_version.saturating_add(1);
            if slot.forked && !chained {
                return Err(DirectoryError::Fork {
                    version: slot.list_version,
                });
            }
        }
        let count = list.distinct_devices();
        if count > usize::try_from(self.max_companions).unwrap_or(usize::MAX) {
            return Err(DirectoryError::DeviceLimitExceeded {
                count,
                limit: self.max_companions,
            });
        }
        // Indices logged out for primary inactivity, including those of an
        // expired account no sweep has reached yet.
        let mut swept_up_to = 0;
        if let Some((_, slot)) = self.entry(&account) {
            swept_up_to = slot.swept_up_to;
            let deadline = self.deadline_of(slot.last_activity);
            if slot.expired || now >= deadline {
                // The companions are (or are due to be) logged out. Only a
                // list the primary signed after that moment (a re-pair) is
                // accepted; an older fact must not revive anyone.
                if list.issued_at() < deadline {
                    return Err(DirectoryError::AccountExpired);
                }
                swept_up_to = slot.highest_index(swept_up_to);
            } else {
                last_activity = slot.last_activity.max(list.issued_at());
            }
        }
        let n = self.slot_for(account, last_activity)?;
        let devices = list
            .devices()
            .iter()
            .filter(|e| e.index.0 > swept_up_to)
            .map(|e| (e.index.0, e.device))
            .collect();
        self.set(
            n,
            last_activity,
            Some((list.version(), list.hash())),
            devices,
        );
        if let Some(slot) = self.slot_mut(n) {
            slot.swept_up_to = swept_up_to;
        }
        Ok(true)
    }

    /// Applies a verified heartbeat: extends the account's lease. A heartbeat
    /// signed at or after the deadline cannot revive the companions, and one
    /// naming a newer device list than the applied one extends nothing
    /// ([`DirectoryError::NeedDeviceList`]).
    pub fn apply_heartbeat(
        &mut self,
        heartbeat: &PrimaryHeartbeat,
        now: Timestamp,
    ) -> Result<(), DirectoryError> {
        let (n, slot) = self
            .entry(&heartbeat.account())
            .ok_or(DirectoryError::UnknownAccount)?;
        heartbeat
            .check_list(slot.list_version, &slot.list_hash)
            .map_err(fact_error)?;
        let deadline = self.deadline_of(slot.last_activity);
        if slot.expired || now >= deadline || heartbeat.at() >= deadline {
            return Err(DirectoryError::AccountExpired);
        }
        if heartbeat.at() > slot.last_activity {
            let devices = slot.devices.clone();
            self.set(n, heartbeat.at(), None, devices);
        }
        Ok(())
    }

    /// Loads an account's facts (its applied list's version and hash, last
    /// activity and devices) from the server's own store, where they were
    /// verified when first received (no signature is checked here). Replaces
    /// the account's entry. For restoring a directory at scale and for
    /// benchmarks.
    pub fn load_account(
        &mut self,
        account: AccountId,
        list: (u64, [u8; 32]),
        last_activity: Timestamp,
        devices: &[DeviceListEntry],
    ) -> Result<(), DirectoryError> {
        let n = self.slot_for(account, last_activity)?;
        let devices = devices.iter().map(|e| (e.index.0, e.device)).collect();
        self.set(n, last_activity, Some(list), devices);
        Ok(())
    }

    /// Whether `device` at `index` is linked to `account` at `now`. O(1) in the
    /// number of accounts; a pure function of stored facts and `now`.
    pub fn is_linked(
        &self,
        account: &AccountId,
        index: DeviceIndex,
        device: &DeviceKey,
        now: Timestamp,
    ) -> bool {
        self.entry(account).is_some_and(|(_, s)| {
            now < self.deadline_of(s.last_activity)
                && s.devices.iter().any(|(i, k)| *i == index.0 && k == device)
        })
    }

    /// The account's lease deadline (first instant its companions are logged out).
    pub fn deadline(&self, account: &AccountId) -> Option<Timestamp> {
        self.entry(account)
            .map(|(_, s)| self.deadline_of(s.last_activity))
    }

    /// The earliest deadline of any account: when to sweep next.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.by_deadline.first().map(|(d, _)| *d)
    }

    /// Logs out every companion of every account whose deadline is at or
    /// before `now`. Cost: O(k log n) for k expired accounts.
    pub fn sweep(&mut self, now: Timestamp) -> Vec<SweptDevice> {
        let mut out = Vec::new();
        while let Some(&(at, n)) = self.by_deadline.first() {
            if at > now {
                break;
            }
            self.by_deadline.pop_first();
            if let Some(slot) = self.slot_mut(n) {
                let account = slot.account;
                slot.expired = true;
                slot.swept_up_to = slot.highest_index(slot.swept_up_to);
                out.extend(
                    std::mem::take(&mut slot.devices)
                        .iter()
                        .map(|(i, _)| SweptDevice {
                            account,
                            index: DeviceIndex(*i),
                            reason: LogoutReason::PrimaryOffline,
                            at,
                        }),
                );
            }
        }
        out
    }

    /// Saves the directory (versioned JSON).
    pub fn save(&self) -> Result<Vec<u8>, PersistError> {
        crate::persist::save("directory", self)
    }

    /// Restores a directory saved by [`Directory::save`].
    pub fn restore(bytes: &[u8]) -> Result<Self, PersistError> {
        let d: Directory = crate::persist::restore("directory", bytes)?;
        let total: usize = d.slots.iter().map(Vec::len).sum();
        let chunks_ok = d
            .slots
            .iter()
            .enumerate()
            .all(|(i, c)| c.len() <= CHUNK && (c.len() == CHUNK || i + 1 == d.slots.len()));
        let index_ok = total == d.index.len()
            && d.index
                .iter()
                .all(|(a, n)| d.slot(*n).is_some_and(|s| s.account == *a));
        let live = d
            .slots
            .iter()
            .flatten()
            .filter(|s| !s.devices.is_empty())
            .count();
        let expired_ok = d
            .slots
            .iter()
            .flatten()
            .all(|s| !s.expired || s.devices.is_empty());
        let deadlines_ok = d.by_deadline.len() == live
            && d.by_deadline.iter().all(|(at, n)| {
                d.slot(*n)
                    .is_some_and(|s| !s.devices.is_empty() && d.deadline_of(s.last_activity) == *at)
            });
        let limits_ok = d.offline_limit_ms > 0 && d.max_companions > 0;
        if !(chunks_ok && index_ok && deadlines_ok && expired_ok && limits_ok) {
            return Err(PersistError::Inconsistent("directory index"));
        }
        let mut d = d;
        for chunk in &mut d.slots {
            chunk.reserve_exact(CHUNK.saturating_sub(chunk.len()));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::AccountKey;
    use crate::time::days;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    fn entry(index: u32, device: DeviceKey) -> DeviceListEntry {
        DeviceListEntry::new(
            DeviceIndex(index),
            device,
            crate::label::DeviceLabel::new("d").unwrap(),
            t(0),
        )
    }

    #[test]
    fn lists_heartbeats_and_sweep() {
        use crate::certificate::DeviceListDraft as Draft;
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let key = AccountKey::generate(&mut rng);
        let dev = crate::keys::DeviceIdentity::generate(&mut rng).device_key();
        let mut d = Directory::new(&Policy::default());
        let list = SignedDeviceList::sign(&key, &Draft::new(2, vec![entry(1, dev)]), t(0));
        assert_eq!(d.apply_device_list(&list, t(0)), Ok(true));
        assert_eq!(d.apply_device_list(&list, t(0)), Ok(false));
        let limit = days(14).as_millis() as u64;
        assert!(d.is_linked(&key.account_id(), DeviceIndex(1), &dev, t(limit - 1)));
        assert!(!d.is_linked(&key.account_id(), DeviceIndex(1), &dev, t(limit)));
        // A heartbeat at day 10 (naming the applied list) moves the deadline.
        let day10 = t(days(10).as_millis() as u64);
        let hb = PrimaryHeartbeat::sign(&key, &list, Default::default(), day10);
        d.apply_heartbeat(&hb, t(5)).unwrap();
        assert_eq!(d.sweep(t(limit)), vec![]);
        let at = t(days(24).as_millis() as u64);
        assert_eq!(d.next_deadline(), Some(at));
        let swept = d.sweep(at);
        assert_eq!(swept.len(), 1);
        assert_eq!(swept[0].at, at);
        assert_eq!(d.sweep(at), vec![]);
        // An old fact cannot revive; a list signed after the logout can.
        let old = SignedDeviceList::sign(&key, &Draft::after(&list, vec![entry(1, dev)]), t(1));
        assert_eq!(
            d.apply_device_list(&old, at),
            Err(DirectoryError::AccountExpired)
        );
        // Without a sweep, an expired account's indices are retired too.
        let mut unswept = Directory::new(&Policy::default());
        unswept.apply_device_list(&list, t(0)).unwrap();
        let late =
            SignedDeviceList::sign(&key, &Draft::after(&list, vec![entry(1, dev)]), t(limit));
        assert_eq!(unswept.apply_device_list(&late, t(limit)), Ok(true));
        assert!(!unswept.is_linked(&key.account_id(), DeviceIndex(1), &dev, t(limit)));
        // A list signed after the logout that still names the swept device
        // (its primary missed the logout) does not re-link it; a new index does.
        let fresh = SignedDeviceList::sign(&key, &Draft::after(&list, vec![entry(1, dev)]), at);
        assert_eq!(d.apply_device_list(&fresh, at), Ok(true));
        assert!(!d.is_linked(&key.account_id(), DeviceIndex(1), &dev, at));
        let repaired = SignedDeviceList::sign(&key, &Draft::after(&fresh, vec![entry(2, dev)]), at);
        assert_eq!(d.apply_device_list(&repaired, at), Ok(true));
        assert!(d.is_linked(&key.account_id(), DeviceIndex(2), &dev, at));
        // Save and restore keep everything; corruption is refused.
        let bytes = d.save().unwrap();
        let r = Directory::restore(&bytes).unwrap();
        assert_eq!(r.save().unwrap(), bytes);
        assert!(Directory::restore(&bytes[..bytes.len() - 3]).is_err());
        let five: Vec<DeviceListEntry> = (1..=5)
            .map(|i| {
                entry(
                    i + 2,
                    crate::keys::DeviceIdentity::generate(&mut rng).device_key(),
                )
            })
            .collect();
        let big = SignedDeviceList::sign(&key, &Draft::after(&repaired, five), at);
        assert!(matches!(
            d.apply_device_list(&big, at),
            Err(DirectoryError::DeviceLimitExceeded { count: 5, limit: 4 })
        ));
        // One key at two indices (a re-pair awaiting its confirmation) holds one slot.
        let twice = vec![entry(2, dev), entry(3, dev)];
        let repair = SignedDeviceList::sign(&key, &Draft::after(&repaired, twice), at);
        assert_eq!(d.apply_device_list(&repair, at), Ok(true));
    }

    #[test]
    fn forks_are_refused_and_a_fork_makes_the_directory_strict() {
        use crate::certificate::DeviceListDraft as Draft;
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let key = AccountKey::generate(&mut rng);
        let a = crate::keys::DeviceIdentity::generate(&mut rng).device_key();
        let b = crate::keys::DeviceIdentity::generate(&mut rng).device_key();
        let mut d = Directory::new(&Policy::default());
        let v1 = SignedDeviceList::sign(&key, &Draft::new(1, vec![entry(1, a), entry(2, b)]), t(0));
        let v2 = SignedDeviceList::sign(&key, &Draft::after(&v1, vec![entry(1, a)]), t(10));
        d.apply_device_list(&v1, t(0)).unwrap();
        d.apply_device_list(&v2, t(10)).unwrap();
        // A primary restored from before v2 re-issues version 2 listing b.
        let v2_fork = SignedDeviceList::sign(
            &key,
            &Draft::after(&v1, vec![entry(1, a), entry(2, b)]),
            t(20),
        );
        assert_eq!(
            d.apply_device_list(&v2_fork, t(20)),
            Err(DirectoryError::Fork { version: 2 })
        );
        // Its successors chain to the fork: refused, also after a gap.
        let v3_fork = SignedDeviceList::sign(
            &key,
            &Draft::after(&v2_fork, vec![entry(1, a), entry(2, b)]),
            t(30),
        );
        assert!(matches!(
            d.apply_device_list(&v3_fork, t(30)),
            Err(DirectoryError::Fork { .. })
        ));
        let v4_fork = SignedDeviceList::sign(
            &key,
            &Draft::after(&v3_fork, vec![entry(1, a), entry(2, b)]),
            t(40),
        );
        assert!(matches!(
            d.apply_device_list(&v4_fork, t(40)),
            Err(DirectoryError::Fork { .. })
        ));
        assert!(!d.is_linked(&key.account_id(), DeviceIndex(2), &b, t(40)));
        // The genuine primary's next list still applies.
        let v3 = SignedDeviceList::sign(&key, &Draft::after(&v2, vec![entry(1, a)]), t(50));
        assert_eq!(d.apply_device_list(&v3, t(50)), Ok(true));
        // A heartbeat naming a list the directory lacks extends nothing.
        let v4 = SignedDeviceList::sign(&key, &Draft::after(&v3, vec![]), t(60));
        let hb = PrimaryHeartbeat::sign(&key, &v4, Default::default(), t(70));
        assert_eq!(
            d.apply_heartbeat(&hb, t(70)),
            Err(DirectoryError::NeedDeviceList { version: 4 })
        );
        assert_eq!(
            d.deadline(&key.account_id()),
            Some(t(50).saturating_add(days(14)))
        );
        d.apply_device_list(&v4, t(70)).unwrap();
        d.apply_heartbeat(&hb, t(70)).unwrap();
        assert_eq!(
            d.deadline(&key.account_id()),
            Some(t(70).saturating_add(days(14)))
        );
        assert!(!d.is_linked(&key.account_id(), DeviceIndex(1), &a, t(70)));
    }
}
