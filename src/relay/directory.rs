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
    MAX_LIST_DEVICES,
};
use crate::facts::LogoutReason;
use crate::keys::{AccountId, DeviceKey};
use crate::persist::PersistError;
use crate::policy::Policy;
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

/// A device the directory logged out: by a sweep (its primary was offline
/// too long) or by a device list that no longer names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLogout {
    /// Its account.
    pub account: AccountId,
    /// Its index.
    pub index: DeviceIndex,
    /// Why.
    pub reason: LogoutReason,
    /// When: the deadline that passed, or the signing time of the list
    /// that dropped it.
    pub at: Timestamp,
}

/// What applying a device list did ([`Directory::apply_device_list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListApplied {
    /// An older list, or the applied one again: nothing changed.
    Unchanged,
    /// The list is now the account's. The devices it no longer names were
    /// logged out: with the reason the list gives for each removal
    /// ([`SignedDeviceList::removed`]), `Revoked` where it gives none (a
    /// holder that missed versions), and `PrimaryOffline` for devices of an
    /// account whose deadline had passed (a re-pair before any sweep).
    Changed {
        /// The devices logged out by this list.
        logged_out: Vec<DeviceLogout>,
    },
}

impl ListApplied {
    /// Whether the list changed the directory.
    pub fn changed(&self) -> bool {
        matches!(self, ListApplied::Changed { .. })
    }
}

/// Bytes of an [`AccountFacts`] encoding without devices.
const FACTS_HEADER_LEN: usize = 1 + 32 + 8 + 16 + 8 + 4 + 1 + 2;
/// Bytes per device in an [`AccountFacts`] encoding.
const FACTS_DEVICE_LEN: usize = 4 + 32;
/// The [`AccountFacts`] encoding's version byte.
const FACTS_VERSION: u8 = 1;

/// Everything the directory holds about one account, for a durable store
/// that keeps the directory's state per account ([`Directory::facts`],
/// [`Directory::load_facts`]). Built only by the directory or decoded from
/// its own encoding ([`AccountFacts::from_bytes`]), so its invariants hold:
/// at most [`MAX_LIST_DEVICES`] devices, none once expired.
///
/// Encoding (`to_bytes`, 72 + 36·n bytes, integers big-endian): version (1,
/// `0x01`) ‖ account (32) ‖ list version (u64) ‖ list hash prefix (16) ‖
/// last activity (u64, Unix ms) ‖ logged-out index floor (u32) ‖ flags (u8:
/// bit 0 forked, bit 1 expired, bit 2 a companion was linked once) ‖ n (u16)
/// ‖ n × (index (u32) ‖ device key (32)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountFacts {
    slot: Slot,
}

/// Why stored [`AccountFacts`] bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed account facts: {0}")]
pub struct FactsError(&'static str);

impl AccountFacts {
    /// The account.
    pub fn account(&self) -> AccountId {
        self.slot.account
    }

    /// The applied list's version.
    pub fn list_version(&self) -> u64 {
        self.slot.list_version
    }

    /// The primary's last activity the directory counts.
    pub fn last_activity(&self) -> Timestamp {
        self.slot.last_activity
    }

    /// The linked devices (index and identity key); empty once expired.
    pub fn devices(&self) -> impl Iterator<Item = (DeviceIndex, DeviceKey)> + '_ {
        self.slot.devices.iter().map(|(i, k)| (DeviceIndex(*i), *k))
    }

    /// The identity key of the linked device at `index`.
    pub fn device(&self, index: DeviceIndex) -> Option<DeviceKey> {
        self.devices().find(|(i, _)| *i == index).map(|(_, k)| k)
    }

    /// Whether a fork was seen (only the chained successor is accepted).
    pub fn forked(&self) -> bool {
        self.slot.forked
    }

    /// Whether the account's companions were logged out for primary
    /// inactivity.
    pub fn expired(&self) -> bool {
        self.slot.expired
    }

    /// The highest index logged out for primary inactivity (0 if none).
    pub fn logged_out_floor(&self) -> u32 {
        self.slot.swept_up_to
    }

    /// Whether a list of the account ever named a companion.
    pub fn linked_once(&self) -> bool {
        self.slot.linked_once
    }

    /// The canonical encoding (see the type's documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let s = &self.slot;
        let mut out = Vec::with_capacity(FACTS_HEADER_LEN + FACTS_DEVICE_LEN * s.devices.len());
        out.push(FACTS_VERSION);
        out.extend_from_slice(&s.account.to_bytes());
        out.extend_from_slice(&s.list_version.to_be_bytes());
        out.extend_from_slice(&s.list_hash);
        out.extend_from_slice(&s.last_activity.as_unix_millis().to_be_bytes());
        out.extend_from_slice(&s.swept_up_to.to_be_bytes());
        out.push(u8::from(s.forked) | (u8::from(s.expired) << 1) | (u8::from(s.linked_once) << 2));
        // At most MAX_LIST_DEVICES (checked where slots are built).
        let n = u16::try_from(s.devices.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for (i, k) in s.devices.iter().take(usize::from(n)) {
            out.extend_from_slice(&i.to_be_bytes());
            out.extend_from_slice(k.as_bytes());
        }
        out
    }

    /// Decodes [`AccountFacts::to_bytes`]. Total: the length is checked
    /// against the device count before any device is read.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FactsError> {
        let header = bytes
            .get(..FACTS_HEADER_LEN)
            .ok_or(FactsError("too short"))?;
        let field = |at: usize, len: usize| header.get(at..at + len).unwrap_or_default();
        if header[0] != FACTS_VERSION {
            return Err(FactsError("unknown version"));
        }
        let n = usize::from(u16::from_be_bytes(be(field(70, 2))));
        if n > MAX_LIST_DEVICES {
            return Err(FactsError("too many devices"));
        }
        if bytes.len() != FACTS_HEADER_LEN + FACTS_DEVICE_LEN * n {
            return Err(FactsError("wrong length"));
        }
        let flags = header[69];
        if flags & !0b111 != 0 {
            return Err(FactsError("unknown flags"));
        }
        let expired = flags & 0b10 != 0;
        if expired && n > 0 {
            return Err(FactsError("an expired account lists devices"));
        }
        let devices = bytes[FACTS_HEADER_LEN..]
            .chunks_exact(FACTS_DEVICE_LEN)
            .map(|d| {
                (
                    u32::from_be_bytes(be(&d[..4])),
                    DeviceKey::from_bytes(be(&d[4..])),
                )
            })
            .collect();
        Ok(AccountFacts {
            slot: Slot {
                account: AccountId::from_bytes(be(field(1, 32))),
                list_version: u64::from_be_bytes(be(field(33, 8))),
                list_hash: be(field(41, 16)),
                last_activity: Timestamp::from_unix_millis(u64::from_be_bytes(be(field(57, 8)))),
                swept_up_to: u32::from_be_bytes(be(field(65, 4))),
                forked: flags & 1 != 0,
                expired,
                linked_once: flags & 0b100 != 0,
                devices,
            },
        })
    }
}

/// The first `N` bytes of `b` (zeros past its end; callers check lengths).
fn be<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Slot {
    account: AccountId,
    last_activity: Timestamp,
    list_version: u64,
    /// The first 16 bytes of the applied list's hash: its successor must
    /// name it (128 bits: a fork needs a second preimage).
    #[serde(with = "crate::encoding::b64_array")]
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
    /// A list once named a companion: what the account's history decides
    /// (its floor, its fork mark, the removals it signed) must outlive it,
    /// so it is never forgotten ([`Directory::is_forgettable`]).
    #[serde(default)]
    linked_once: bool,
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
                linked_once: false,
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
        slot.linked_once |= !slot.devices.is_empty() || !devices.is_empty();
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
    /// again, is ignored: [`ListApplied::Unchanged`]); the devices it drops
    /// are returned ([`ListApplied::Changed`]). Counts as primary activity
    /// at the list's signing time. A list that forks the applied one (same
    /// version, other content; or the next version not chained to it) is
    /// [`DirectoryError::Fork`]; from the first fork on, the account stays
    /// strict: only the chained successor of the applied list is accepted
    /// (never a list a version or more ahead), so a restored old primary
    /// cannot re-list a revoked device by publishing more versions. The
    /// genuine primary publishes every version it makes, so its lists always
    /// chain. A first list of an account the directory does not know that
    /// was signed the offline limit or longer before `now` creates nothing
    /// ([`DirectoryError::AccountExpired`]): its account would be expired
    /// from the start, and kept for good.
    pub fn apply_device_list(
        &mut self,
        list: &SignedDeviceList,
        now: Timestamp,
    ) -> Result<ListApplied, DirectoryError> {
        let account = list.account();
        let mut last_activity = list.issued_at();
        if self.entry(&account).is_none() && now >= self.deadline_of(list.issued_at()) {
            return Err(DirectoryError::AccountExpired);
        }
        if let Some((n, slot)) = self.entry(&account) {
            match list.check_successor_of(slot.list_version, &slot.list_hash) {
                Ok(()) => {}
                Err(CertificateError::StaleDeviceList { .. }) => return Ok(ListApplied::Unchanged),
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
        let mut logged_out = Vec::new();
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
                // Due but not yet swept: logged out now, for inactivity.
                logged_out.extend(slot.devices.iter().map(|(i, _)| DeviceLogout {
                    account,
                    index: DeviceIndex(*i),
                    reason: LogoutReason::PrimaryOffline,
                    at: deadline,
                }));
            } else {
                last_activity = slot.last_activity.max(list.issued_at());
                // Devices the new list no longer names.
                logged_out.extend(
                    slot.devices
                        .iter()
                        .filter(|(i, k)| !list.contains(DeviceIndex(*i), k))
                        .map(|(i, _)| DeviceLogout {
                            account,
                            index: DeviceIndex(*i),
                            reason: list
                                .removed()
                                .iter()
                                .find(|r| r.index.0 == *i)
                                .map_or(LogoutReason::Revoked, |r| r.reason),
                            at: list.issued_at(),
                        }),
                );
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
        Ok(ListApplied::Changed { logged_out })
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

    /// Everything the directory holds about `account`, for a store that
    /// keeps the directory per account (and decides each fact by loading
    /// the account's facts into a directory, applying, and storing the new
    /// facts).
    pub fn facts(&self, account: &AccountId) -> Option<AccountFacts> {
        self.entry(account)
            .map(|(_, slot)| AccountFacts { slot: slot.clone() })
    }

    /// Loads an account's facts as [`Directory::facts`] gave them (the fork
    /// mark, the logged-out floor and the expiry included), replacing the
    /// account's entry: afterwards the directory decides for that account
    /// exactly as the one the facts came from.
    pub fn load_facts(&mut self, facts: &AccountFacts) -> Result<(), DirectoryError> {
        let f = &facts.slot;
        let n = self.slot_for(f.account, f.last_activity)?;
        let list_hash = f.list_hash;
        self.set(n, f.last_activity, None, f.devices.clone());
        if let Some(slot) = self.slot_mut(n) {
            slot.list_version = f.list_version;
            slot.list_hash = list_hash;
            slot.forked = f.forked;
            slot.swept_up_to = f.swept_up_to;
            slot.expired = f.expired;
            // Facts written before the mark existed: a floor means a
            // companion was linked.
            slot.linked_once |= f.linked_once || f.swept_up_to > 0;
        }
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

    /// Whether the relay may forget `account` at `now`: no list of it ever
    /// named a companion, and its primary was inactive for the offline
    /// limit. Nothing it could still decide depends on it: every list it
    /// applied was signed before its deadline, so published again it creates
    /// nothing (a first list past the offline limit), and a newer list from
    /// the primary starts the account afresh. An account that once had a
    /// companion is kept: its floor and its fork mark must still bind a
    /// primary that missed a logout or was restored from a backup.
    pub fn is_forgettable(&self, account: &AccountId, now: Timestamp) -> bool {
        self.entry(account).is_some_and(|(_, s)| {
            s.devices.is_empty()
                && !s.linked_once
                && s.swept_up_to == 0
                && now >= self.deadline_of(s.last_activity)
        })
    }

    /// Whether `account` is expired with no companion left: nothing more
    /// will ever be pushed for it (its stored list is no longer needed).
    pub fn is_spent(&self, account: &AccountId) -> bool {
        self.entry(account)
            .is_some_and(|(_, s)| s.expired && s.devices.is_empty())
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
    pub fn sweep(&mut self, now: Timestamp) -> Vec<DeviceLogout> {
        let mut out = Vec::new();
        while let Some(&(at, n)) = self.by_deadline.first() {
            if at > now {
                break;
            }
            self.by_deadline.pop_first();
            if let Some(slot) = self.slot_mut(n) {
                let account = slot.account;
                slot.expired = true;
                slot.linked_once = true;
                slot.swept_up_to = slot.highest_index(slot.swept_up_to);
                out.extend(
                    std::mem::take(&mut slot.devices)
                        .iter()
                        .map(|(i, _)| DeviceLogout {
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
        assert_eq!(
            d.apply_device_list(&list, t(0)).map(|a| a.changed()),
            Ok(true)
        );
        assert_eq!(
            d.apply_device_list(&list, t(0)).map(|a| a.changed()),
            Ok(false)
        );
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
        assert_eq!(
            unswept
                .apply_device_list(&late, t(limit))
                .map(|a| a.changed()),
            Ok(true)
        );
        assert!(!unswept.is_linked(&key.account_id(), DeviceIndex(1), &dev, t(limit)));
        // A list signed after the logout that still names the swept device
        // (its primary missed the logout) does not re-link it; a new index does.
        let fresh = SignedDeviceList::sign(&key, &Draft::after(&list, vec![entry(1, dev)]), at);
        assert_eq!(
            d.apply_device_list(&fresh, at).map(|a| a.changed()),
            Ok(true)
        );
        assert!(!d.is_linked(&key.account_id(), DeviceIndex(1), &dev, at));
        let repaired = SignedDeviceList::sign(&key, &Draft::after(&fresh, vec![entry(2, dev)]), at);
        assert_eq!(
            d.apply_device_list(&repaired, at).map(|a| a.changed()),
            Ok(true)
        );
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
        assert_eq!(
            d.apply_device_list(&repair, at).map(|a| a.changed()),
            Ok(true)
        );
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
        assert_eq!(
            d.apply_device_list(&v3, t(50)).map(|a| a.changed()),
            Ok(true)
        );
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
