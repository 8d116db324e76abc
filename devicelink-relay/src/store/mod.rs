//! Where the relay keeps what must survive a restart: pairing tokens (the
//! core's [`TokenStore`] contract, unchanged) and each account's facts as the
//! core's [`Directory`](devicelink::relay::Directory) holds them, with the
//! newest device list it applied.
//!
//! A store decides nothing. The core's [`Ledger`](devicelink::relay::Ledger)
//! and [`Directory`](devicelink::relay::Directory) make every decision; each
//! store method makes one decision durable with one atomic conditional write,
//! and a method that returned `Ok` is durable before it returns. Methods are
//! synchronous (like the core's [`TokenStore`]); an async server calls them
//! from `tokio::task::spawn_blocking`.
//!
//! Implementations: [`MemoryStore`] (tests, no durability) and, with the
//! `sqlite` feature (on by default), [`SqliteStore`], the embedded default;
//! with the `postgres` feature (on by default), [`PgStore`], one database
//! shared by many relay nodes.
//! `tests/contract.rs` runs one test body against every implementation.

mod directory;
mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use directory::{AccountDirectory, AccountDirectoryError, CreationRefused};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PgOptions, PgStore, PG_SCHEMA_VERSION};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, WriterStats, MAX_BATCH, SCHEMA_VERSION};

use devicelink::relay::{AccountFacts, TokenStore};
use devicelink::{AccountId, Timestamp};

/// Why a store could not answer. A write that failed had no effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The storage failed (I/O, a locked file, a stopped writer); retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A number the store cannot represent (SQL integers are signed 64-bit).
    #[error("{0} is out of the store's range")]
    OutOfRange(&'static str),
    /// Stored data that does not decode or verify.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The file was written by a newer build (its schema version is higher).
    #[error("schema version {found} is newer than this build's {supported}")]
    SchemaTooNew {
        /// The file's schema version.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
}

/// One account as the relay keeps it: the core directory's facts about it
/// ([`AccountFacts`]: list version and hash, last activity, linked devices,
/// logged-out floor, fork mark, expiry), the newest device list the
/// directory applied (its wire bytes, signed by the account: sent to a
/// subscribing companion; empty once the account expired with no companion
/// left, when nobody can subscribe), and a revision that every write raises
/// by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// The directory's facts.
    pub facts: AccountFacts,
    /// The applied list's wire bytes.
    pub list: Vec<u8>,
    /// 1 for the first write, one more for each later one.
    pub revision: u64,
}

impl AccountRecord {
    /// The account.
    pub fn account(&self) -> AccountId {
        self.facts.account()
    }

    /// What the store indexes for [`Store::due_accounts`]: the primary's
    /// last activity while the sweep has something to do for the account
    /// once its primary was inactive for the offline limit: log out its
    /// companions, or forget an account that never had one. `None`
    /// otherwise (an expired account, one whose companions were all
    /// removed): nothing is due for it until a newer list changes that, so
    /// such accounts, however many, never fill the sweep's batch.
    pub fn active_since(&self) -> Option<Timestamp> {
        due_since(&self.facts)
    }
}

/// [`AccountRecord::active_since`] of `facts`.
pub(crate) fn due_since(facts: &devicelink::relay::AccountFacts) -> Option<Timestamp> {
    let companions = facts.devices().next().is_some();
    let never_linked = !(facts.linked_once() || facts.expired() || facts.logged_out_floor() > 0);
    (companions || never_linked).then(|| facts.last_activity())
}

/// Versions of each account's device list a store keeps besides the newest,
/// for holders that missed some while away ([`Store::lists_after`]).
pub const LIST_HISTORY: u64 = 64;

/// A relay's durable store: the core's [`TokenStore`] (exactly-once
/// redemption, its contract unchanged) plus one record per account.
///
/// The store decides nothing about accounts: [`AccountDirectory`] loads an
/// account's record, lets the core's [`Directory`](devicelink::relay::Directory)
/// decide, and writes the new record back with a compare-and-set on the
/// revision, so that two relay processes (or two tasks) deciding for the
/// same account never overwrite each other: one write wins, the other
/// reloads and decides again.
///
/// ```sql
/// -- put_account, revision 1: insert if absent
/// INSERT INTO accounts (account, revision, active_since, facts, list)
///   VALUES ($account, 1, $active_since, $facts, $list) ON CONFLICT (account) DO NOTHING;
/// -- put_account, revision r > 1: only over revision r - 1
/// UPDATE accounts SET revision = $r, active_since = $active_since, facts = $facts, list = $list
///  WHERE account = $account AND revision = $r - 1;
/// -- delete_account: only revision r
/// DELETE FROM accounts WHERE account = $account AND revision = $r;
/// -- due_accounts
/// SELECT account FROM accounts WHERE active_since <= $before
///  ORDER BY active_since LIMIT $limit;          -- an index on active_since
/// ```
pub trait Store: TokenStore + Clone {
    /// The account's record. Read only.
    fn account(&self, account: &AccountId) -> Result<Option<AccountRecord>, StoreError>;

    /// Writes `record` if the store holds revision `record.revision - 1` of
    /// its account (none at all for revision 1); returns whether it wrote.
    /// Durable before it returns `Ok(true)`.
    fn put_account(&self, record: &AccountRecord) -> Result<bool, StoreError>;

    /// Deletes `account`'s record if the store holds exactly revision
    /// `revision` of it; returns whether it deleted. Durable before it
    /// returns `Ok(true)`.
    fn delete_account(&self, account: &AccountId, revision: u64) -> Result<bool, StoreError>;

    /// The account's device lists (wire bytes) newer than version `after`,
    /// oldest first: of the last [`LIST_HISTORY`] versions, those the store
    /// applied ([`Store::put_account`] keeps each new list beside the record,
    /// drops versions older than the window, and [`Store::delete_account`]
    /// drops them all). Read only.
    fn lists_after(&self, account: &AccountId, after: u64) -> Result<Vec<Vec<u8>>, StoreError>;

    /// Up to `limit` accounts whose [`AccountRecord::active_since`] is at
    /// or before `before`, earliest first, in time proportional to their
    /// number (an index). Read only.
    fn due_accounts(&self, before: Timestamp, limit: usize) -> Result<Vec<AccountId>, StoreError>;

    /// Whether a call may wait for I/O (a disk, a commit, a network). The
    /// server makes such a store's calls elsewhere ([`Store::offload`], or
    /// tokio's blocking pool); a store whose calls never wait
    /// ([`MemoryStore`]: a lock and a map) is called on the connection's own
    /// task, which spares each call two thread switches. `true` unless a
    /// store says otherwise.
    fn may_block(&self) -> bool {
        true
    }

    /// Whether a read may wait (for a lock, a network). `may_block` unless
    /// a store says otherwise: the SQLite store's readers never wait for its
    /// writer (WAL), so the server reads it on the connection's own task.
    fn reads_may_block(&self) -> bool {
        self.may_block()
    }

    /// Takes `work` (a decision that calls this store: the core's ledger or
    /// directory and the writes it makes) to run where its writes are
    /// cheapest, and calls the reply `work` returns once they are durable
    /// (`true`) or failed (`false`). The SQLite store runs it on its writer
    /// thread inside the next batch. A store without such a place hands the
    /// work back (`Err`, the default): the server runs it on tokio's
    /// blocking pool, where every call is durable when it returns.
    fn offload(&self, work: Offload) -> Result<(), Offload> {
        Err(work)
    }
}

/// Work for [`Store::offload`]: run it, then call what it returns with
/// whether its writes were committed.
pub type Offload = Box<dyn FnOnce() -> Box<dyn FnOnce(bool) + Send> + Send>;

/// The refusal a database's conditional write stands for when it changed
/// no row, named by the core's rule ([`devicelink::relay::TokenRecord`]'s
/// `check_*`) from the row read after it. A row the rule would let through
/// means another call changed it in between: a store error the caller may
/// retry.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn refusal<T>(
    decided: Result<T, devicelink::relay::LedgerError>,
    call: &str,
) -> devicelink::relay::LedgerError {
    match decided {
        Err(e) => e,
        Ok(_) => {
            devicelink::relay::LedgerError::Store(format!("{call} raced with another call; retry"))
        }
    }
}
