//! The in-memory [`Store`]: the core's [`MemoryTokenStore`] and a map of
//! account records behind one lock. For tests; nothing survives the process.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use devicelink::relay::{
    Budget, ClientId, HelloDigest, LedgerError, MemoryTokenStore, SourceKey, TokenRecord,
    TokenStore,
};
use devicelink::{AccountId, Timestamp, TokenId};

use super::{AccountRecord, Store, StoreError};

/// The in-memory store. Clones share the same data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    tokens: Arc<MemoryTokenStore>,
    accounts: Arc<Mutex<Accounts>>,
}

/// The account records and their index on [`AccountRecord::active_since`].
#[derive(Debug, Default)]
struct Accounts {
    records: HashMap<AccountId, AccountRecord>,
    active: BTreeSet<(Timestamp, AccountId)>,
    /// Each account's recent lists by version ([`super::LIST_HISTORY`]).
    history: HashMap<AccountId, std::collections::BTreeMap<u64, Vec<u8>>>,
}

impl MemoryStore {
    /// Accounts held.
    pub fn account_count(&self) -> usize {
        self.accounts().records.len()
    }
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

    fn accounts(&self) -> MutexGuard<'_, Accounts> {
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
        source: SourceKey,
        expires_at: Timestamp,
        budget: Budget,
    ) -> Result<(), LedgerError> {
        self.tokens
            .register(token, client, source, expires_at, budget)
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

    fn abandon(&self, client: ClientId) -> Result<usize, LedgerError> {
        self.tokens.abandon(client)
    }
}

impl Store for MemoryStore {
    fn account(&self, account: &AccountId) -> Result<Option<AccountRecord>, StoreError> {
        Ok(self.accounts().records.get(account).cloned())
    }

    fn put_account(&self, record: &AccountRecord) -> Result<bool, StoreError> {
        let mut g = self.accounts();
        let account = record.account();
        let held = g
            .records
            .get(&account)
            .map(|r| (r.revision, r.active_since()));
        let expected = record
            .revision
            .checked_sub(1)
            .ok_or(StoreError::OutOfRange("revision"))?;
        match held {
            None if expected == 0 => {}
            Some((rev, active)) if rev == expected => {
                if let Some(at) = active {
                    g.active.remove(&(at, account));
                }
            }
            _ => return Ok(false),
        }
        if let Some(at) = record.active_since() {
            g.active.insert((at, account));
        }
        if !record.list.is_empty() {
            let version = record.facts.list_version();
            let lists = g.history.entry(account).or_default();
            lists.entry(version).or_insert_with(|| record.list.clone());
            let floor = version.saturating_sub(super::LIST_HISTORY);
            lists.retain(|v, _| *v > floor);
        }
        g.records.insert(account, record.clone());
        Ok(true)
    }

    fn lists_after(&self, account: &AccountId, after: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self
            .accounts()
            .history
            .get(account)
            .map(|lists| {
                lists
                    .range(after.saturating_add(1)..)
                    .map(|(_, l)| l.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    fn delete_account(&self, account: &AccountId, revision: u64) -> Result<bool, StoreError> {
        let mut g = self.accounts();
        let held = g
            .records
            .get(account)
            .map(|r| (r.revision, r.active_since()));
        match held {
            Some((rev, active)) if rev == revision => {
                if let Some(at) = active {
                    g.active.remove(&(at, *account));
                }
                g.records.remove(account);
                g.history.remove(account);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn due_accounts(&self, before: Timestamp, limit: usize) -> Result<Vec<AccountId>, StoreError> {
        Ok(self
            .accounts()
            .active
            .iter()
            .take_while(|(at, _)| *at <= before)
            .take(limit)
            .map(|(_, a)| *a)
            .collect())
    }

    /// A lock and a map: never waits.
    fn may_block(&self) -> bool {
        false
    }
}
