//! The in-memory [`Store`]: the core's [`MemoryTokenStore`] and a map of
//! account records behind one lock. For tests; nothing survives the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use devicelink::relay::{
    ClientId, HelloDigest, LedgerError, MemoryTokenStore, Quota, TokenRecord, TokenStore,
};
use devicelink::{AccountId, Timestamp, TokenId};

use super::{AccountRecord, Store, StoreError};

/// The in-memory store. Clones share the same data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    tokens: Arc<MemoryTokenStore>,
    accounts: Arc<Mutex<HashMap<AccountId, AccountRecord>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The core's token store underneath.
    pub fn tokens(&self) -> &MemoryTokenStore {
        &self.tokens
    }

    fn accounts(&self) -> MutexGuard<'_, HashMap<AccountId, AccountRecord>> {
        // Every method checks before it writes and cannot panic while
        // writing, so a poisoned lock still guards a consistent map.
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TokenStore for MemoryStore {
    fn register(
        &self,
        token: TokenId,
        client: ClientId,
        expires_at: Timestamp,
        quota: Quota,
    ) -> Result<(), LedgerError> {
        self.tokens.register(token, client, expires_at, quota)
    }

    fn reserve(
        &self,
        token: &TokenId,
        by: ClientId,
        hello: &HelloDigest,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<ClientId, LedgerError> {
        self.tokens.reserve(token, by, hello, now, until)
    }

    fn release(
        &self,
        token: &TokenId,
        client: ClientId,
        hello: &HelloDigest,
        now: Timestamp,
    ) -> Result<(), LedgerError> {
        self.tokens.release(token, client, hello, now)
    }

    fn redeem(
        &self,
        token: &TokenId,
        client: ClientId,
        now: Timestamp,
        keep: Timestamp,
    ) -> Result<ClientId, LedgerError> {
        self.tokens.redeem(token, client, now, keep)
    }

    fn get(&self, token: &TokenId) -> Result<Option<TokenRecord>, LedgerError> {
        self.tokens.get(token)
    }

    fn sweep(&self, now: Timestamp, limit: usize) -> Result<usize, LedgerError> {
        self.tokens.sweep(now, limit)
    }
}

impl Store for MemoryStore {
    fn put_list(&self, record: &AccountRecord) -> Result<bool, StoreError> {
        let mut accounts = self.accounts();
        match accounts.get_mut(&record.account) {
            Some(held) if held.list_version >= record.list_version => Ok(false),
            Some(held) => {
                let swept_up_to = held.swept_up_to.max(record.swept_up_to);
                *held = AccountRecord {
                    swept_up_to,
                    ..record.clone()
                };
                Ok(true)
            }
            None => {
                accounts.insert(record.account, record.clone());
                Ok(true)
            }
        }
    }

    fn put_activity(&self, account: &AccountId, at: Timestamp) -> Result<bool, StoreError> {
        Ok(match self.accounts().get_mut(account) {
            Some(held) if held.last_activity < at => {
                held.last_activity = at;
                true
            }
            _ => false,
        })
    }

    fn put_swept(&self, account: &AccountId, swept_up_to: u32) -> Result<bool, StoreError> {
        Ok(match self.accounts().get_mut(account) {
            Some(held) if held.swept_up_to < swept_up_to => {
                held.swept_up_to = swept_up_to;
                true
            }
            _ => false,
        })
    }

    fn account(&self, account: &AccountId) -> Result<Option<AccountRecord>, StoreError> {
        Ok(self.accounts().get(account).cloned())
    }

    fn for_each_account(
        &self,
        visit: &mut dyn FnMut(AccountRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let records: Vec<AccountRecord> = self.accounts().values().cloned().collect();
        records.into_iter().try_for_each(visit)
    }
}
