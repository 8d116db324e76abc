//! The core's [`Directory`], made durable: the directory decides, the store
//! records what it decided before the caller is answered.

use devicelink::relay::{Directory, DirectoryError, SweptDevice};
use devicelink::{
    AccountId, CertificateError, DeviceIndex, DeviceKey, DeviceLabel, DeviceListEntry, Policy,
    PrimaryHeartbeat, SignedDeviceList, Timestamp,
};

use super::{AccountRecord, Store, StoreError};

/// Why [`AccountDirectory`] refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountDirectoryError {
    /// The core's directory refused the fact; nothing was stored.
    #[error(transparent)]
    Refused(#[from] DirectoryError),
    /// The store failed. The fact may be applied in memory but is not
    /// durable: the caller must not acknowledge it (the primary publishes
    /// again, and a restart reloads what is durable).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Many accounts' leases (the core's [`Directory`]) over a [`Store`] that
/// keeps each account's newest applied list, last activity and logged-out
/// index floor.
///
/// Before applying a fact it sweeps the directory up to `now` and records
/// each swept account's floor, so the store always holds the floor the
/// directory applies (an account past its deadline is swept before its
/// re-pair list is applied). The logouts found on the way are kept until
/// [`AccountDirectory::sweep`] hands them out.
#[derive(Debug)]
pub struct AccountDirectory<S: Store> {
    directory: Directory,
    store: S,
    offline_limit: std::time::Duration,
    logouts: Vec<SweptDevice>,
    /// Other relay nodes write the same store: reload an account from it
    /// before deciding about it (see [`AccountDirectory::shared`]).
    shared: bool,
}

impl<S: Store> AccountDirectory<S> {
    /// Rebuilds the directory from every account in `store` (each stored
    /// list is decoded and its signature verified again).
    ///
    /// The core's [`Directory::load_account`] does not take the logged-out
    /// index floor (`swept_up_to`), so it is restored through the directory's
    /// documented sweep: a first pass loads, for each account with a floor,
    /// one placeholder device at the floor index with a deadline in 1970 and
    /// sweeps it (which sets the floor); the second pass loads the real facts
    /// (which keeps the floor), leaving out devices at or below it.
    pub fn open(store: S, policy: &Policy) -> Result<Self, StoreError> {
        let mut directory = Directory::new(policy);
        let offline_limit = policy.primary_offline_limit();
        let mut floors = 0usize;
        store.for_each_account(&mut |rec| {
            if rec.swept_up_to > 0 {
                let placeholder = DeviceListEntry::new(
                    DeviceIndex(rec.swept_up_to),
                    DeviceKey::from_bytes([0; 32]),
                    DeviceLabel::new("logged out")
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    Timestamp::EPOCH,
                );
                directory
                    .load_account(
                        rec.account,
                        (rec.list_version, rec.list_hash),
                        Timestamp::EPOCH,
                        &[placeholder],
                    )
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                floors += 1;
            }
            Ok(())
        })?;
        if floors > 0 {
            let swept = directory.sweep(Timestamp::EPOCH.saturating_add(offline_limit));
            if swept.len() != floors {
                return Err(StoreError::Corrupt(format!(
                    "restoring {floors} logged-out floors swept {} devices",
                    swept.len()
                )));
            }
        }
        store.for_each_account(&mut |rec| {
            let list = SignedDeviceList::from_bytes(&rec.list)
                .map_err(|e: CertificateError| StoreError::Corrupt(e.to_string()))?;
            if list.account() != rec.account
                || list.version() != rec.list_version
                || list.hash() != rec.list_hash
            {
                return Err(StoreError::Corrupt(format!(
                    "account {}: stored list does not match its record",
                    rec.account.fingerprint()
                )));
            }
            let devices: Vec<_> = list
                .devices()
                .iter()
                .filter(|e| e.index.0 > rec.swept_up_to)
                .cloned()
                .collect();
            directory
                .load_account(
                    rec.account,
                    (rec.list_version, rec.list_hash),
                    rec.last_activity,
                    &devices,
                )
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })?;
        Ok(AccountDirectory {
            directory,
            store,
            offline_limit,
            logouts: Vec::new(),
            shared: false,
        })
    }

    /// Marks the store as shared with other relay nodes (PostgreSQL): each
    /// fact is then decided from the account's facts as the store holds
    /// them now (the account is reloaded first, [`AccountDirectory::refresh`]),
    /// and a sweep logs out only accounts whose stored activity also says
    /// they expired (another node may have applied a heartbeat since).
    ///
    /// Interim, until the core's directory decides from per-account facts
    /// loaded from the store: a node that reloads an account keeps its own
    /// logged-out floor for it (the stored floor filters the devices it
    /// loads).
    pub fn shared(mut self) -> Self {
        self.shared = true;
        self
    }

    /// Reloads `account` from the store into the core's directory (its list
    /// decoded and verified again, devices at or below the stored floor left
    /// out). Returns whether the store holds the account.
    pub fn refresh(&mut self, account: &AccountId) -> Result<bool, StoreError> {
        let Some(rec) = self.store.account(account)? else {
            return Ok(false);
        };
        let list = SignedDeviceList::from_bytes(&rec.list)
            .map_err(|e: CertificateError| StoreError::Corrupt(e.to_string()))?;
        if list.account() != rec.account
            || list.version() != rec.list_version
            || list.hash() != rec.list_hash
        {
            return Err(StoreError::Corrupt(format!(
                "account {}: stored list does not match its record",
                rec.account.fingerprint()
            )));
        }
        let devices: Vec<_> = list
            .devices()
            .iter()
            .filter(|e| e.index.0 > rec.swept_up_to)
            .cloned()
            .collect();
        self.directory
            .load_account(
                rec.account,
                (rec.list_version, rec.list_hash),
                rec.last_activity,
                &devices,
            )
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(true)
    }

    /// Reloads every account the store holds (after this node may have
    /// missed other nodes' updates).
    pub fn refresh_all(&mut self) -> Result<usize, StoreError> {
        let mut accounts = Vec::new();
        self.store.for_each_account(&mut |rec| {
            accounts.push(rec.account);
            Ok(())
        })?;
        for account in &accounts {
            self.refresh(account)?;
        }
        Ok(accounts.len())
    }

    /// The core's directory (for `is_linked`, `deadline`, `next_deadline`).
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn last_activity(&self, account: &AccountId) -> Timestamp {
        self.directory
            .deadline(account)
            .map(|d| d.saturating_sub(self.offline_limit))
            .unwrap_or(Timestamp::EPOCH)
    }

    /// Sweeps the core's directory up to `now` and records each swept
    /// account's floor.
    fn sweep_into(&mut self, now: Timestamp) -> Result<(), StoreError> {
        let mut swept = self.directory.sweep(now);
        if self.shared && !swept.is_empty() {
            // Another node may have applied a heartbeat or list this node
            // has not heard of: keep only accounts the store agrees expired.
            let mut alive: Vec<AccountId> = Vec::new();
            for d in &swept {
                if alive.contains(&d.account) {
                    continue;
                }
                let stored = self.store.account(&d.account)?;
                if stored.is_some_and(|r| r.last_activity.saturating_add(self.offline_limit) > now)
                {
                    alive.push(d.account);
                }
            }
            for account in &alive {
                self.refresh(account)?;
            }
            swept.retain(|d| !alive.contains(&d.account));
        }
        let mut floors: Vec<(AccountId, u32)> = Vec::new();
        for d in &swept {
            match floors.iter_mut().find(|(a, _)| *a == d.account) {
                Some((_, floor)) => *floor = (*floor).max(d.index.0),
                None => floors.push((d.account, d.index.0)),
            }
        }
        self.logouts.extend(swept);
        for (account, floor) in floors {
            self.store.put_swept(&account, floor)?;
        }
        Ok(())
    }

    /// Applies a verified device list (the core decides: `Ok(false)` for an
    /// old or repeated one) and stores it before returning `Ok(true)`.
    pub fn apply_device_list(
        &mut self,
        list: &SignedDeviceList,
        now: Timestamp,
    ) -> Result<bool, AccountDirectoryError> {
        if self.shared {
            self.refresh(&list.account())?;
        }
        self.sweep_into(now)?;
        if !self.directory.apply_device_list(list, now)? {
            return Ok(false);
        }
        let account = list.account();
        self.store.put_list(&AccountRecord {
            account,
            list_version: list.version(),
            list_hash: list.hash(),
            list: list.to_bytes(),
            last_activity: self.last_activity(&account),
            swept_up_to: 0,
        })?;
        Ok(true)
    }

    /// Applies a verified heartbeat (the core decides) and stores the new
    /// last activity before returning.
    pub fn apply_heartbeat(
        &mut self,
        heartbeat: &PrimaryHeartbeat,
        now: Timestamp,
    ) -> Result<(), AccountDirectoryError> {
        if self.shared {
            self.refresh(&heartbeat.account())?;
        }
        self.sweep_into(now)?;
        self.directory.apply_heartbeat(heartbeat, now)?;
        let account = heartbeat.account();
        self.store
            .put_activity(&account, self.last_activity(&account))?;
        Ok(())
    }

    /// Logs out every companion whose account's deadline passed by `now`
    /// (recording the floors), and returns them with the logouts found
    /// while applying facts since the last call.
    pub fn sweep(&mut self, now: Timestamp) -> Result<Vec<SweptDevice>, StoreError> {
        self.sweep_into(now)?;
        Ok(std::mem::take(&mut self.logouts))
    }
}
