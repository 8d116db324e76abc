//! Where the relay keeps what must survive a restart: pairing tokens (the
//! core's [`TokenStore`] contract, unchanged) and each account's newest signed
//! facts for the [`Directory`](devicelink::relay::Directory).
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

pub use directory::{AccountDirectory, AccountDirectoryError};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PgOptions, PgStore, PG_SCHEMA_VERSION};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, WriterStats, MAX_BATCH, SCHEMA_VERSION};

use devicelink::relay::TokenStore;
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

/// One account's durable facts: the newest device list the directory
/// applied (its wire bytes, signed by the account), the primary's last
/// activity as the directory computed it, and the highest device index
/// logged out for primary inactivity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// The account.
    pub account: AccountId,
    /// The applied list's version.
    pub list_version: u64,
    /// The applied list's hash ([`devicelink::SignedDeviceList::hash`]).
    pub list_hash: [u8; 32],
    /// The applied list's wire bytes.
    pub list: Vec<u8>,
    /// The primary's last activity (deadline − offline limit).
    pub last_activity: Timestamp,
    /// The highest index logged out for primary inactivity (0 if none);
    /// devices at or below it are not loaded back.
    pub swept_up_to: u32,
}

/// A relay's durable store: the core's [`TokenStore`] (exactly-once
/// redemption, its contract unchanged) plus the accounts' facts.
///
/// Account writes are conditional, so a late or repeated write never moves
/// a fact backwards:
///
/// ```sql
/// -- put_list: a newer version only
/// INSERT INTO accounts (account, list_version, list_hash, list, last_activity, swept_up_to)
///   VALUES ($account, $version, $hash, $list, $activity, $swept)
/// ON CONFLICT (account) DO UPDATE SET list_version = excluded.list_version,
///   list_hash = excluded.list_hash, list = excluded.list,
///   last_activity = excluded.last_activity,
///   swept_up_to = max(accounts.swept_up_to, excluded.swept_up_to)
/// WHERE accounts.list_version < excluded.list_version;
/// -- put_activity: forward only
/// UPDATE accounts SET last_activity = $at WHERE account = $account AND last_activity < $at;
/// -- put_swept: upward only
/// UPDATE accounts SET swept_up_to = $index WHERE account = $account AND swept_up_to < $index;
/// ```
pub trait Store: TokenStore + Clone {
    /// Stores `record` if the store holds no list of its account or an older
    /// version; returns whether it wrote.
    fn put_list(&self, record: &AccountRecord) -> Result<bool, StoreError>;

    /// Moves the account's last activity forward to `at`; returns whether it
    /// wrote (not for an unknown account or an earlier `at`).
    fn put_activity(&self, account: &AccountId, at: Timestamp) -> Result<bool, StoreError>;

    /// Raises the account's logged-out index floor to `swept_up_to`; returns
    /// whether it wrote.
    fn put_swept(&self, account: &AccountId, swept_up_to: u32) -> Result<bool, StoreError>;

    /// The account's record. Read only.
    fn account(&self, account: &AccountId) -> Result<Option<AccountRecord>, StoreError>;

    /// Calls `visit` with every account's record (at start, to rebuild the
    /// directory); stops at the first error `visit` returns.
    fn for_each_account(
        &self,
        visit: &mut dyn FnMut(AccountRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
}
