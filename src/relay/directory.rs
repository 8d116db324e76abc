//! Many accounts' device leases on a server, from signed facts only.
//!
//! The directory learns each account's devices from its [`SignedDeviceList`]
//! and the primary's activity from signed lists and [`PrimaryHeartbeat`]s. All
//! companions of an account share one deadline (`last primary activity +
//! primary_offline_limit`), so the expiry index holds one entry per account:
//! a `BTreeSet` ordered by deadline. Lookups are O(1) (hash map) and updates
//! O(log n); [`Directory::sweep`] pops only what expired, so its cost follows
//! the number of expired accounts, not the population.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::certificate::{CertificateError, DeviceIndex, PrimaryHeartbeat, SignedDeviceList};
use crate::keys::{AccountId, DeviceKey};
use crate::persist::PersistError;
use crate::policy::Policy;
use crate::session::LogoutReason;
use crate::time::{duration_millis, Timestamp};

/// Why the directory refused an update. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// Bad signature or layout.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The account's companions were logged out for primary inactivity and
    /// this fact predates the logout; only a newer device list (a re-pair)
    /// brings the account back.
    #[error("account was logged out for primary inactivity")]
    AccountExpired,
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
struct AccountEntry {
    last_activity: Timestamp,
    list_version: u64,
    /// Linked companions: (index, identity key). Empty once expired.
    devices: Vec<(u32, DeviceKey)>,
}

/// The server's view of many accounts' linked devices and their leases.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Directory {
    offline_limit_ms: u64,
    accounts: HashMap<AccountId, AccountEntry>,
    by_deadline: BTreeSet<(Timestamp, AccountId)>,
}

impl Directory {
    /// An empty directory applying `policy`'s offline limit.
    pub fn new(policy: &Policy) -> Self {
        Directory {
            offline_limit_ms: duration_millis(policy.primary_offline_limit()),
            accounts: HashMap::new(),
            by_deadline: BTreeSet::new(),
        }
    }

    fn deadline_of(&self, last_activity: Timestamp) -> Timestamp {
        Timestamp::from_unix_millis(
            last_activity
                .as_unix_millis()
                .saturating_add(self.offline_limit_ms),
        )
    }

    /// Number of accounts known.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Whether no account is known.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Number of linked devices across accounts (as of the last sweep).
    pub fn device_count(&self) -> usize {
        self.accounts.values().map(|a| a.devices.len()).sum()
    }

    /// Applies a verified, newer device list (older or equal versions are
    /// ignored and return `Ok(false)`). Counts as primary activity at the
    /// list's signing time.
    pub fn apply_device_list(
        &mut self,
        list: &SignedDeviceList,
        now: Timestamp,
    ) -> Result<bool, DirectoryError> {
        let account = list.account();
        let mut last_activity = list.issued_at();
        if let Some(entry) = self.accounts.get(&account) {
            if list.version() <= entry.list_version {
                return Ok(false);
            }
            let deadline = self.deadline_of(entry.last_activity);
            if now >= deadline {
                // The companions are (or are due to be) logged out. Only a
                // list the primary signed after that moment (a re-pair) is
                // accepted; an older fact must not revive anyone.
                if list.issued_at() < deadline {
                    return Err(DirectoryError::AccountExpired);
                }
                self.sweep_account(&account);
            } else {
                last_activity = entry.last_activity.max(list.issued_at());
                self.by_deadline.remove(&(deadline, account));
            }
        }
        let devices: Vec<(u32, DeviceKey)> = list
            .devices()
            .iter()
            .map(|e| (e.index.0, e.device))
            .collect();
        self.by_deadline
            .insert((self.deadline_of(last_activity), account));
        self.accounts.insert(
            account,
            AccountEntry {
                last_activity,
                list_version: list.version(),
                devices,
            },
        );
        Ok(true)
    }

    /// Applies a verified heartbeat: extends the account's lease. A heartbeat
    /// signed at or after the deadline cannot revive the companions.
    pub fn apply_heartbeat(
        &mut self,
        heartbeat: &PrimaryHeartbeat,
        now: Timestamp,
    ) -> Result<(), DirectoryError> {
        let account = heartbeat.account();
        let Some(entry) = self.accounts.get(&account) else {
            return Err(CertificateError::WrongAccount.into());
        };
        let deadline = self.deadline_of(entry.last_activity);
        if now >= deadline || heartbeat.at() >= deadline {
            return Err(DirectoryError::AccountExpired);
        }
        if heartbeat.at() > entry.last_activity {
            let new_deadline = self.deadline_of(heartbeat.at());
            self.by_deadline.remove(&(deadline, account));
            self.by_deadline.insert((new_deadline, account));
            if let Some(e) = self.accounts.get_mut(&account) {
                e.last_activity = heartbeat.at();
            }
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
        self.accounts.get(account).is_some_and(|e| {
            now < self.deadline_of(e.last_activity)
                && e.devices.iter().any(|(i, k)| *i == index.0 && k == device)
        })
    }

    /// The account's lease deadline (first instant its companions are logged out).
    pub fn deadline(&self, account: &AccountId) -> Option<Timestamp> {
        self.accounts
            .get(account)
            .map(|e| self.deadline_of(e.last_activity))
    }

    /// The earliest deadline of any account: when to sweep next.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.by_deadline.first().map(|(d, _)| *d)
    }

    fn sweep_account(&mut self, account: &AccountId) -> Vec<SweptDevice> {
        let Some(entry) = self.accounts.get_mut(account) else {
            return Vec::new();
        };
        let at = Timestamp::from_unix_millis(
            entry
                .last_activity
                .as_unix_millis()
                .saturating_add(self.offline_limit_ms),
        );
        self.by_deadline.remove(&(at, *account));
        std::mem::take(&mut entry.devices)
            .into_iter()
            .map(|(i, _)| SweptDevice {
                account: *account,
                index: DeviceIndex(i),
                reason: LogoutReason::PrimaryOffline,
                at,
            })
            .collect()
    }

    /// Logs out every companion of every account whose deadline is at or
    /// before `now`. Cost: O(k log n) for k expired accounts.
    pub fn sweep(&mut self, now: Timestamp) -> Vec<SweptDevice> {
        let mut out = Vec::new();
        while let Some(&(deadline, account)) = self.by_deadline.first() {
            if deadline > now {
                break;
            }
            out.extend(self.sweep_account(&account));
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
        let live = d
            .accounts
            .iter()
            .filter(|(_, e)| !e.devices.is_empty())
            .count();
        let indexed = d.by_deadline.iter().all(|(at, a)| {
            d.accounts
                .get(a)
                .is_some_and(|e| d.deadline_of(e.last_activity) == *at)
        });
        if !indexed || d.by_deadline.len() < live {
            return Err(PersistError::Inconsistent("directory deadline index"));
        }
        Ok(d)
    }
}
