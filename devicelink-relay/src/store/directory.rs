//! The core's [`Directory`], one account at a time over a [`Store`]: each
//! signed fact is decided by the core from the account's stored facts, and
//! the new facts are written back with a compare-and-set before the caller
//! is answered.
//!
//! Nothing is mirrored in memory, so the relay's memory does not grow with
//! the number of accounts, a restart has nothing to rebuild, and several
//! relay processes on one database (PostgreSQL) decide from the same facts:
//! if two decide for one account at once, one write wins and the other
//! decides again from what won.

use devicelink::relay::{DeviceLogout, Directory, DirectoryError, ListApplied};
use devicelink::{
    AccountId, DeviceIndex, DeviceKey, Policy, PrimaryHeartbeat, SignedDeviceList, Timestamp,
};

use super::{AccountRecord, Store, StoreError};

/// Times a decision is retried when another writer changed the account
/// between its read and its write.
const MAX_ATTEMPTS: usize = 16;

/// Why [`AccountDirectory`] refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountDirectoryError {
    /// The core's directory refused the fact; nothing was stored (except the
    /// fork mark of a [`DirectoryError::Fork`], which the core keeps too).
    #[error(transparent)]
    Refused(#[from] DirectoryError),
    /// The store failed; nothing is acknowledged (the primary publishes
    /// again).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Other writers changed the account on every attempt; nothing
    /// happened, retry.
    #[error("account {0} is contended; retry")]
    Contended(String),
    /// The stored facts do not load into the directory.
    #[error("stored facts of account {0} do not load")]
    Corrupt(String),
    /// A first list of an account the store does not hold, which the
    /// caller did not allow to create it; nothing was stored.
    #[error(transparent)]
    NotAllowed(#[from] CreationRefused),
}

/// Why a caller did not allow a list to create an account the store does
/// not hold ([`AccountDirectory::apply_device_list`]'s `may_create`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CreationRefused {
    /// The client did not prove the account key on this connection
    /// ([`devicelink::relay::AccountProof`]).
    #[error("the relay does not know this account: prove the account key first (ProveAccount)")]
    NeedsProof,
    /// The client's source made the relay keep too many new accounts lately.
    #[error("too many new accounts from this address; try again later")]
    TooMany,
}

/// Many accounts' leases: the core's [`Directory`] deciding from the facts a
/// [`Store`] keeps per account. Clones share the store.
#[derive(Debug, Clone)]
pub struct AccountDirectory<S: Store> {
    store: S,
    policy: Policy,
}

/// What a decision changed: the new record to write (if any) and what to
/// return.
struct Decision<T> {
    write: Option<(devicelink::relay::AccountFacts, Vec<u8>)>,
    out: Result<T, AccountDirectoryError>,
}

impl<S: Store> AccountDirectory<S> {
    /// A directory over `store`, with `policy`'s offline and companion limits.
    pub fn new(store: S, policy: &Policy) -> Self {
        AccountDirectory {
            store,
            policy: policy.clone(),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The account's stored record.
    pub fn account(&self, account: &AccountId) -> Result<Option<AccountRecord>, StoreError> {
        self.store.account(account)
    }

    /// A directory holding only `record`'s account.
    fn load(&self, record: Option<&AccountRecord>) -> Result<Directory, AccountDirectoryError> {
        let mut d = Directory::new(&self.policy);
        if let Some(r) = record {
            d.load_facts(&r.facts).map_err(|e| {
                AccountDirectoryError::Corrupt(format!("{}: {e}", r.account().fingerprint()))
            })?;
        }
        Ok(d)
    }

    /// Loads the account, lets `decide` run the core on it, writes the new
    /// facts with a compare-and-set, and retries on a lost race.
    fn decide<T>(
        &self,
        account: &AccountId,
        decide: impl Fn(&mut Directory, Option<&AccountRecord>) -> Decision<T>,
    ) -> Result<T, AccountDirectoryError> {
        for _ in 0..MAX_ATTEMPTS {
            let held = self.store.account(account)?;
            let mut d = self.load(held.as_ref())?;
            let Decision { write, out } = decide(&mut d, held.as_ref());
            let Some((facts, list)) = write else {
                return out;
            };
            let record = AccountRecord {
                facts,
                list,
                revision: held.as_ref().map_or(1, |r| r.revision.saturating_add(1)),
            };
            if self.store.put_account(&record)? {
                return out;
            }
        }
        Err(AccountDirectoryError::Contended(account.fingerprint()))
    }

    /// Applies a verified device list (the core decides:
    /// [`ListApplied::Unchanged`] for an old or repeated one) and stores it
    /// before returning [`ListApplied::Changed`] with the devices it logged
    /// out. A list of an account the store does not hold creates it only if
    /// the core accepts it as a first list and `may_create` agrees (it is
    /// asked once, just before the write; a refusal is
    /// [`AccountDirectoryError::NotAllowed`] with its reason).
    pub fn apply_device_list(
        &self,
        list: &SignedDeviceList,
        now: Timestamp,
        may_create: impl Fn() -> Result<(), CreationRefused>,
    ) -> Result<ListApplied, AccountDirectoryError> {
        let account = list.account();
        self.decide(&account, |d, held| {
            let out = d.apply_device_list(list, now);
            if held.is_none() && out.is_ok() {
                if let Err(why) = may_create() {
                    return Decision {
                        write: None,
                        out: Err(AccountDirectoryError::NotAllowed(why)),
                    };
                }
            }
            let facts = d.facts(&account);
            let write = match (&out, facts) {
                (Ok(ListApplied::Changed { .. }), Some(f)) => Some((f, list.to_bytes())),
                // A fork marks the account (the core keeps the mark).
                (Err(DirectoryError::Fork { .. }), Some(f)) => match held {
                    Some(h) if h.facts != f => Some((f, h.list.clone())),
                    _ => None,
                },
                _ => None,
            };
            Decision {
                write,
                out: out.map_err(Into::into),
            }
        })
    }

    /// Applies a verified heartbeat (the core decides) and stores the new
    /// last activity before returning.
    pub fn apply_heartbeat(
        &self,
        heartbeat: &PrimaryHeartbeat,
        now: Timestamp,
    ) -> Result<(), AccountDirectoryError> {
        let account = heartbeat.account();
        self.decide(&account, |d, held| {
            let out = d.apply_heartbeat(heartbeat, now);
            let write = match (held, d.facts(&account)) {
                (Some(h), Some(f)) if out.is_ok() && h.facts != f => Some((f, h.list.clone())),
                _ => None,
            };
            Decision {
                write,
                out: out.map_err(Into::into),
            }
        })
    }

    /// Logs out every companion of up to `limit` accounts whose deadline
    /// passed by `now` and returns them, and forgets the accounts left with
    /// no companion (the core's [`Directory::is_forgettable`]: an account
    /// made with a self-signed list and never used costs the store nothing
    /// after the offline limit). Cost follows the number of accounts due
    /// (the store's index). An account another writer holds is left for the
    /// next sweep.
    pub fn sweep(&self, now: Timestamp, limit: usize) -> Result<Vec<DeviceLogout>, StoreError> {
        let before = now.saturating_sub(self.policy.primary_offline_limit());
        let mut out = Vec::new();
        for account in self.store.due_accounts(before, limit)? {
            // An account no list of which named a companion is forgotten
            // (a compare-and-delete: one another writer changed since is
            // no longer, or not yet, due, and is decided next time).
            if let Some(held) = self.store.account(&account)? {
                let forget = self
                    .load(Some(&held))
                    .is_ok_and(|d| d.is_forgettable(&account, now));
                if forget {
                    if !self.store.delete_account(&account, held.revision)? {
                        tracing::debug!(account = %account.fingerprint(), "account changed before it was forgotten");
                    }
                    continue;
                }
            }
            let r = self.decide(&account, |d, held| {
                let logouts = d.sweep(now);
                // An account left with no companion keeps its facts (its
                // floor binds) but not its list: nobody can subscribe to it.
                let list = |h: &AccountRecord| {
                    if d.is_spent(&account) {
                        Vec::new()
                    } else {
                        h.list.clone()
                    }
                };
                // Expired, the record leaves the due index
                // (`AccountRecord::active_since`).
                let write = match (held, d.facts(&account)) {
                    (Some(h), Some(f)) if !logouts.is_empty() || f != h.facts => Some((f, list(h))),
                    _ => None,
                };
                Decision {
                    write,
                    out: Ok(logouts),
                }
            });
            match r {
                Ok(logouts) => out.extend(logouts),
                Err(AccountDirectoryError::Store(e)) => return Err(e),
                Err(e) => tracing::warn!(error = %e, "sweep skipped an account"),
            }
        }
        Ok(out)
    }

    /// The identity key of the device linked at `index` of `account` at
    /// `now` (the core's facts: listed, not logged out, lease running).
    pub fn linked_device(
        &self,
        account: &AccountId,
        index: DeviceIndex,
        now: Timestamp,
    ) -> Result<Option<DeviceKey>, AccountDirectoryError> {
        let held = self.store.account(account)?;
        let Some(record) = held.as_ref() else {
            return Ok(None);
        };
        let d = self.load(Some(record))?;
        Ok(record
            .facts
            .device(index)
            .filter(|key| d.is_linked(account, index, key, now)))
    }
}
