//! The embedded SQLite [`Store`] (rusqlite with its bundled SQLite).
//!
//! # Design
//!
//! - **One writer thread** owns the only write connection. Callers send it
//!   their write (a closure) over a channel and block on a one-shot reply.
//!   The writer takes every write already queued (at most [`MAX_BATCH`]),
//!   runs them in one `BEGIN IMMEDIATE` transaction, each inside its own
//!   `SAVEPOINT` (a refused decision rolls back to it and leaves the others
//!   in), commits, and only then answers each caller. A commit that fails
//!   answers every write of the batch with "unavailable" (refusals too, as
//!   they may have read an uncommitted write of the batch): nothing is
//!   acknowledged that is not on disk. The writer never waits to fill a
//!   batch: while one commit syncs, new writes queue, and the next batch
//!   takes them all (group commit), so one `fsync` serves many callers under
//!   load and a lone caller pays one commit.
//! - **Work on the writer thread** ([`Store::offload`]): the relay hands a
//!   whole decision (the core's ledger or directory call and the writes it
//!   makes) to the writer thread, which runs it inside the open batch: its
//!   writes and reads go straight to the writer's connection (each write in
//!   its own savepoint, as above; reads see the batch's writes), and its
//!   answer is handed back once the batch is committed. The connection's
//!   task awaits it without a hop through tokio's blocking pool.
//! - **Durability.** `journal_mode = WAL` and `synchronous = FULL`: each
//!   commit syncs the WAL before it returns, so an acknowledged write
//!   survives a process kill *and* a power loss (`NORMAL` would survive the
//!   kill but may lose the last commits on power loss, and the store
//!   contract says "durable before it returns").
//! - **Readers are never blocked.** `get`, `account` and `for_each_account`
//!   use reader connections (a small pool, `query_only`) that read the last
//!   committed snapshot while the writer writes (WAL).
//! - **No `SQLITE_BUSY` reaches a caller.** Within the process only the
//!   writer writes, so writers never contend; every connection has a
//!   `busy_timeout`, and the writer retries `BEGIN IMMEDIATE` while another
//!   process holds the write lock, up to [`LOCK_WAIT`]; then the batch
//!   fails as "unavailable" (`LedgerError::Store`), never as a raw
//!   `SQLITE_BUSY`.
//! - **Migrations** are the versioned files `migrations/NNNN_*.sql`,
//!   compiled in and applied at open, each in its own transaction that also
//!   sets `PRAGMA user_version`. A file of a newer schema is refused.
//!
//! Times and versions are stored as SQL integers (signed 64-bit): a value
//! above `i64::MAX` (a time past the year 292 million) is refused as
//! [`StoreError::OutOfRange`] / `LedgerError::Store`, never wrapped.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devicelink::relay::{
    AccountFacts, Budget, ClientId, Directory, Held, HelloDigest, LedgerError, SourceKey,
    TokenRecord, TokenState, TokenStore,
};
use devicelink::{AccountId, DeviceIndex, DeviceKey, Timestamp, TokenId};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use super::{refusal, AccountRecord, Offload, Store, StoreError};

/// Store identities, for the writer thread's connection ([`WRITER`]).
static STORE_IDS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// On a store's writer thread: its store's identity and the write
    /// connection. Offloaded work running there reaches it through here.
    static WRITER: RefCell<Option<(u64, Connection)>> = const { RefCell::new(None) };
    /// Set when a write inside offloaded work left the batch's transaction
    /// unsound (a savepoint that did not roll back).
    static UNSOUND: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on this thread's write connection if this is the writer thread
/// of store `id` (offloaded work); `None` anywhere else.
fn on_writer<T>(id: u64, f: impl FnOnce(&Connection) -> T) -> Option<T> {
    WRITER.with(|w| match &*w.borrow() {
        Some((held, conn)) if *held == id => Some(f(conn)),
        _ => None,
    })
}

fn is_writer(id: u64) -> bool {
    WRITER.with(|w| matches!(&*w.borrow(), Some((held, _)) if *held == id))
}

/// Most writes committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// Prepared statements kept per connection (more than the store uses).
const STATEMENT_CACHE: usize = 64;
/// How long every connection waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the writer keeps retrying `BEGIN IMMEDIATE` while another
/// process holds the write lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Reader connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// The schema migrations, in order: (version, file, SQL, and a data step
/// run after the SQL in the same transaction).
type DataStep = fn(&rusqlite::Transaction<'_>) -> Result<(), StoreError>;
const MIGRATIONS: &[(u32, &str, &str, Option<DataStep>)] = &[
    (
        1,
        "0001_tokens.sql",
        include_str!("../../migrations/0001_tokens.sql"),
        None,
    ),
    (
        2,
        "0002_accounts.sql",
        include_str!("../../migrations/0002_accounts.sql"),
        None,
    ),
    (
        3,
        "0003_reservation_hello.sql",
        include_str!("../../migrations/0003_reservation_hello.sql"),
        None,
    ),
    (
        4,
        "0004_account_facts.sql",
        include_str!("../../migrations/0004_account_facts.sql"),
        Some(convert_accounts_v3),
    ),
    (
        5,
        "0005_source_budgets.sql",
        include_str!("../../migrations/0005_source_budgets.sql"),
        Some(fill_active_since),
    ),
    (
        6,
        "0006_list_history.sql",
        include_str!("../../migrations/0006_list_history.sql"),
        Some(seed_list_history),
    ),
];

/// Migration 6's data step: each account's current list starts its history.
fn seed_list_history(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let rows: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = {
        let mut st = tx
            .prepare("SELECT account, facts, list FROM accounts WHERE length(list) > 0")
            .map_err(unavailable)?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(unavailable)?;
        rows.collect::<rusqlite::Result<_>>().map_err(unavailable)?
    };
    for (account, facts, list) in rows {
        let facts =
            AccountFacts::from_bytes(&facts).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // A version past SQLite's integers (a list published as an
        // unchained jump) has no history: nothing to seed, nothing fails.
        let Ok(version) = i64::try_from(facts.list_version()) else {
            continue;
        };
        tx.execute(
            "INSERT INTO account_lists (account, version, list) VALUES (?1, ?2, ?3)",
            params![account, version, list],
        )
        .map_err(unavailable)?;
    }
    Ok(())
}

/// Migration 5's data step: an account without companions that never had
/// one is due too ([`AccountRecord::active_since`]; schema 4 left
/// `active_since` NULL for every account without a linked companion).
fn fill_active_since(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let rows: Vec<(Vec<u8>, Vec<u8>)> = {
        let mut st = tx
            .prepare("SELECT account, facts FROM accounts WHERE active_since IS NULL")
            .map_err(unavailable)?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(unavailable)?;
        rows.collect::<rusqlite::Result<_>>().map_err(unavailable)?
    };
    for (account, facts) in rows {
        let facts =
            AccountFacts::from_bytes(&facts).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let Some(at) = super::due_since(&facts) else {
            continue;
        };
        let at = i64::try_from(at.as_unix_millis())
            .map_err(|_| StoreError::OutOfRange("last activity"))?;
        tx.execute(
            "UPDATE accounts SET active_since = ?2 WHERE account = ?1",
            params![account, at],
        )
        .map_err(unavailable)?;
    }
    Ok(())
}

/// Migration 4's data step: each account row of schema 3 (the applied
/// list's bytes, the last activity, the logged-out floor) becomes the core
/// directory's facts. The floor is restored through the directory's own
/// sweep: a placeholder device at the floor index, active at the epoch,
/// swept; then the real facts are loaded (which keeps the floor), leaving
/// out devices at or below it.
fn convert_accounts_v3(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    use devicelink::{DeviceLabel, DeviceListEntry, Policy, SignedDeviceList};
    let policy = Policy::default();
    let rows: Vec<(Vec<u8>, Vec<u8>, i64, u32)> = {
        let mut st = tx
            .prepare("SELECT account, list, last_activity, swept_up_to FROM accounts")
            .map_err(unavailable)?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(unavailable)?;
        rows.collect::<rusqlite::Result<_>>().map_err(unavailable)?
    };
    for (account, list, last_activity, floor) in rows {
        let list =
            SignedDeviceList::from_bytes(&list).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if list.account().to_bytes().as_slice() != account.as_slice() {
            return Err(StoreError::Corrupt("account row names another list".into()));
        }
        let id = list.account();
        let key = (list.version(), list.hash());
        let mut d = Directory::new(&policy);
        if floor > 0 {
            let placeholder = DeviceListEntry::new(
                DeviceIndex(floor),
                DeviceKey::from_bytes([0; 32]),
                DeviceLabel::new("logged out").map_err(|e| StoreError::Corrupt(e.to_string()))?,
                Timestamp::EPOCH,
            );
            d.load_account(id, key, Timestamp::EPOCH, &[placeholder])
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            d.sweep(Timestamp::EPOCH.saturating_add(policy.primary_offline_limit()));
        }
        let devices: Vec<_> = list
            .devices()
            .iter()
            .filter(|e| e.index.0 > floor)
            .cloned()
            .collect();
        d.load_account(id, key, ts(last_activity), &devices)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let facts = d
            .facts(&id)
            .ok_or_else(|| StoreError::Corrupt("account lost in conversion".into()))?;
        let record = AccountRecord {
            facts,
            list: list.to_bytes(),
            revision: 1,
        };
        // As schema 4 wrote it: the last activity while companions are
        // linked, NULL otherwise (migration 5 fills the NULLs).
        let active = record
            .facts
            .devices()
            .next()
            .map(|_| active_ms(&record))
            .transpose()
            .map_err(|_| StoreError::OutOfRange("last activity"))?;
        tx.execute(
            "INSERT INTO accounts_v4 (account, revision, active_since, facts, list)
             VALUES (?1, 1, ?2, ?3, ?4)",
            params![id.to_bytes(), active, record.facts.to_bytes(), record.list],
        )
        .map_err(unavailable)?;
    }
    tx.execute_batch(
        "DROP TABLE accounts;
         ALTER TABLE accounts_v4 RENAME TO accounts;
         CREATE INDEX accounts_active ON accounts (active_since) WHERE active_since IS NOT NULL;",
    )
    .map_err(unavailable)
}

/// The schema version this build writes (the last migration's).
pub const SCHEMA_VERSION: u32 = 6;

/// Why a write did not happen.
enum Fail<E> {
    /// The decision said no (the savepoint was rolled back).
    Refused(E),
    /// The storage failed.
    Unavailable(String),
}

impl<E> From<rusqlite::Error> for Fail<E> {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Unavailable(e.to_string())
    }
}

fn ledger(f: Fail<LedgerError>) -> LedgerError {
    match f {
        Fail::Refused(e) => e,
        Fail::Unavailable(s) => LedgerError::Store(s),
    }
}

fn store(f: Fail<StoreError>) -> StoreError {
    match f {
        Fail::Refused(e) => e,
        Fail::Unavailable(s) => StoreError::Unavailable(s),
    }
}

/// What the writer calls once the batch's commit succeeded (`true`) or failed.
type Reply = Box<dyn FnOnce(bool) + Send>;
/// A write: runs on the writer's connection (`None`: the batch could not
/// start); returns its reply and whether the transaction is still sound.
type Job = Box<dyn FnOnce(Option<&Connection>) -> (Reply, bool) + Send>;

/// Counters of the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: u64,
    /// Writes acknowledged in them.
    pub writes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
}

struct Inner {
    id: u64,
    path: PathBuf,
    writer: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    readers: Mutex<Vec<Connection>>,
    counters: Arc<Counters>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer after the writes it holds.
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The SQLite store. Clones share one writer thread and one reader pool;
/// the writer stops when the last clone is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Every statement is prepared once per connection (parsing is most of
    // a small write's CPU on the one writer thread).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// Applies the migrations the file lacks. Each runs in an immediate
/// transaction that re-reads the version, so two processes opening one new
/// file apply each migration once.
fn migrate(conn: &mut Connection) -> Result<u32, StoreError> {
    for &(version, file, sql, data) in MIGRATIONS {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let current: u32 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(unavailable)?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: current,
                supported: SCHEMA_VERSION,
            });
        }
        if current >= version {
            continue;
        }
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Unavailable(format!("migration {file}: {e}")))?;
        if let Some(step) = data {
            step(&tx)?;
        }
        tx.pragma_update(None, "user_version", version)
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        tracing::info!(version, file, "applied migration");
    }
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(unavailable)
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`: WAL, `synchronous = FULL`,
    /// migrations applied, and the writer thread started.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Connection::open(&path).map_err(unavailable)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(unavailable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "journal mode {mode}, not WAL"
            )));
        }
        configure(&conn).map_err(unavailable)?;
        migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        let id = STORE_IDS.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::Builder::new()
            .name("devicelink-sqlite-writer".into())
            .spawn(move || run_writer(id, conn, rx, &c))
            .map_err(unavailable)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                id,
                path,
                writer: Some(tx),
                thread: Some(thread),
                readers: Mutex::new(Vec::new()),
                counters,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The file's schema version (after migrations: [`SCHEMA_VERSION`]).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.read(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
    }

    /// Commits and writes acknowledged so far (writes per commit is the
    /// batching factor).
    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            commits: self.inner.counters.commits.load(Ordering::Relaxed),
            writes: self.inner.counters.writes.load(Ordering::Relaxed),
        }
    }

    fn reader(&self) -> rusqlite::Result<Connection> {
        let idle = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        if let Some(c) = idle {
            return Ok(c);
        }
        let c = Connection::open_with_flags(
            &self.inner.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.busy_timeout(BUSY_TIMEOUT)?;
        c.pragma_update(None, "query_only", true)?;
        Ok(c)
    }

    /// Runs a read on a pooled reader connection (the last committed state).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        // Offloaded work reads on the writer's connection: it sees the
        // batch's writes (a compare-and-set after a write of this batch).
        if is_writer(self.inner.id) {
            return on_writer(self.inner.id, f)
                .unwrap_or(Err(rusqlite::Error::InvalidQuery))
                .map_err(unavailable);
        }
        let conn = self.reader().map_err(unavailable)?;
        let out = f(&conn).map_err(unavailable);
        let mut idle = self.inner.readers.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    /// Sends `op` to the writer and waits until its batch is committed.
    fn write<T, E>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, Fail<E>> + Send + 'static,
    ) -> Result<T, Fail<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        // Offloaded work: straight into the open batch, in a savepoint;
        // its caller is answered after the batch's commit.
        if is_writer(self.inner.id) {
            let (result, sound) = on_writer(self.inner.id, |c| in_savepoint(c, op)).unwrap_or((
                Err(Fail::Unavailable("writer connection gone".into())),
                false,
            ));
            if !sound {
                UNSOUND.with(|u| u.set(true));
            }
            return result;
        }
        let (tx, rx): (SyncSender<Result<T, Fail<E>>>, _) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn| {
            let (result, sound) = match conn {
                None => (
                    Err(Fail::Unavailable("writer could not begin".into())),
                    true,
                ),
                Some(c) => in_savepoint(c, op),
            };
            let reply: Reply = Box::new(move |committed| {
                let r = if committed {
                    result
                } else {
                    Err(Fail::Unavailable("commit failed; nothing written".into()))
                };
                let _ = tx.send(r);
            });
            (reply, sound)
        });
        let sender = self
            .inner
            .writer
            .as_ref()
            .ok_or_else(|| Fail::Unavailable("writer stopped".into()))?;
        sender
            .send(job)
            .map_err(|_| Fail::Unavailable("writer stopped".into()))?;
        rx.recv()
            .map_err(|_| Fail::Unavailable("writer stopped".into()))?
    }
}

/// Runs one statement without parameters, prepared once per connection.
fn cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs `op` inside a savepoint: kept on `Ok`, rolled back on `Err`.
/// Returns whether the enclosing transaction is still sound.
fn in_savepoint<T, E>(
    conn: &Connection,
    op: impl FnOnce(&Connection) -> Result<T, Fail<E>>,
) -> (Result<T, Fail<E>>, bool) {
    if let Err(e) = cached(conn, "SAVEPOINT op") {
        return (Err(e.into()), false);
    }
    match op(conn) {
        Ok(v) => match cached(conn, "RELEASE op") {
            Ok(()) => (Ok(v), true),
            Err(e) => (Err(e.into()), false),
        },
        Err(e) => {
            let sound = conn.execute_batch("ROLLBACK TO op; RELEASE op").is_ok();
            (Err(e), sound)
        }
    }
}

/// `BEGIN IMMEDIATE`, retried while another process holds the write lock.
fn begin(conn: &Connection) -> rusqlite::Result<()> {
    let start = Instant::now();
    loop {
        match cached(conn, "BEGIN IMMEDIATE") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                    && start.elapsed() < LOCK_WAIT =>
            {
                tracing::warn!("database write-locked by another connection; retrying");
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn run_writer(id: u64, conn: Connection, rx: Receiver<Job>, counters: &Counters) {
    WRITER.with(|w| *w.borrow_mut() = Some((id, conn)));
    // The connection lives in WRITER for the thread's life (offloaded work
    // reaches it there); each batch borrows it.
    let batch = |jobs: Vec<Job>| {
        WRITER.with(|w| match &*w.borrow() {
            Some((_, conn)) => run_batch(conn, jobs, counters),
            None => {
                for job in jobs {
                    let (reply, _) = job(None);
                    reply(false);
                }
            }
        })
    };
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        batch(jobs);
    }
    // Closes the connection (the last handle dropped the channel).
    WRITER.with(|w| w.borrow_mut().take());
}

/// One batch: `BEGIN IMMEDIATE`, every job, `COMMIT`, then every reply.
fn run_batch(conn: &Connection, jobs: Vec<Job>, counters: &Counters) {
    let n = jobs.len();
    if let Err(e) = begin(conn) {
        tracing::error!(error = %e, writes = n, "cannot begin a write transaction");
        for job in jobs {
            let (reply, _) = job(None);
            reply(false);
        }
        return;
    }
    let mut sound = true;
    let mut replies = Vec::with_capacity(n);
    for job in jobs {
        let (reply, ok) = job(Some(conn));
        sound &= ok;
        replies.push(reply);
    }
    let committed = sound && cached(conn, "COMMIT").is_ok();
    if !committed {
        tracing::error!(writes = n, "write batch not committed; rolled back");
        let _ = conn.execute_batch("ROLLBACK");
    } else {
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters
            .writes
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    for reply in replies {
        reply(committed);
    }
}

// ---- value conversions -----------------------------------------------------

fn int<E>(v: u64, what: &'static str) -> Result<i64, Fail<E>> {
    i64::try_from(v).map_err(|_| Fail::Unavailable(format!("{what} out of range")))
}

fn ms<E>(t: Timestamp, what: &'static str) -> Result<i64, Fail<E>> {
    int(t.as_unix_millis(), what)
}

fn ts(v: i64) -> Timestamp {
    Timestamp::from_unix_millis(u64::try_from(v).unwrap_or(0))
}

fn client_of(bytes: &[u8]) -> Option<ClientId> {
    <[u8; 16]>::try_from(bytes).ok().map(ClientId::from_bytes)
}

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, what.into(), rusqlite::types::Type::Blob)
}

/// One token's row (the columns [`token_row`] reads).
const LOAD_TOKEN: &str = "SELECT client, expires_at, keep_until, state, peer, state_at, hello,
                                   source
                            FROM tokens WHERE id = ?1";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let client = client_of(&r.get::<_, Vec<u8>>(0)?).ok_or_else(|| corrupt("client"))?;
    let expires_at = ts(r.get(1)?);
    let keep_until = ts(r.get(2)?);
    let peer: Option<Vec<u8>> = r.get(4)?;
    let peer = peer.as_deref().and_then(client_of);
    let at: Option<i64> = r.get(5)?;
    let hello: Option<Vec<u8>> = r.get(6)?;
    let state = match (r.get::<_, i64>(3)?, peer, at) {
        (0, _, _) => TokenState::Open,
        (1, Some(by), Some(until)) => TokenState::Reserved {
            by,
            until: ts(until),
            // A reservation from before migration 3 matches no release.
            hello: HelloDigest::from_bytes(
                hello
                    .as_deref()
                    .map(<[u8; 32]>::try_from)
                    .transpose()
                    .map_err(|_| corrupt("hello"))?
                    .unwrap_or([0; 32]),
            ),
        },
        (2, Some(primary), Some(at)) => TokenState::Redeemed {
            primary,
            at: ts(at),
        },
        _ => return Err(corrupt("state")),
    };
    let source = <[u8; 16]>::try_from(r.get::<_, Vec<u8>>(7)?.as_slice())
        .map(SourceKey::from_bytes)
        .map_err(|_| corrupt("source"))?;
    Ok(TokenRecord {
        client,
        source,
        expires_at,
        keep_until,
        state,
    })
}

fn load_token(c: &Connection, token: &TokenId) -> rusqlite::Result<Option<TokenRecord>> {
    c.prepare_cached(LOAD_TOKEN)?
        .query_row([token.to_bytes()], token_row)
        .optional()
}

/// One row less for a client and a source; counter rows that reach zero
/// are deleted.
fn uncount(c: &Connection, client: &[u8], source: &[u8]) -> rusqlite::Result<()> {
    for table in ["clients", "sources"] {
        let id = if table == "clients" { client } else { source };
        c.prepare_cached(&format!(
            "UPDATE {table} SET live = live - 1 WHERE id = ?1 AND live > 0"
        ))?
        .execute([id])?;
        c.prepare_cached(&format!("DELETE FROM {table} WHERE id = ?1 AND live = 0"))?
            .execute([id])?;
    }
    Ok(())
}

/// Raises a counter row by one; returns what it held before.
fn count_up(c: &Connection, table: &str, id: &[u8]) -> rusqlite::Result<u64> {
    let held: i64 = c
        .prepare_cached(&format!(
            "INSERT INTO {table} (id, live) VALUES (?1, 1)
             ON CONFLICT (id) DO UPDATE SET live = live + 1 RETURNING live - 1"
        ))?
        .query_row([id], |r| r.get(0))?;
    Ok(u64::try_from(held).unwrap_or(0))
}

impl TokenStore for SqliteStore {
    fn register(
        &self,
        token: TokenId,
        client: ClientId,
        source: SourceKey,
        expires_at: Timestamp,
        budget: Budget,
    ) -> Result<(), LedgerError> {
        self.write(move |c| {
            let exp = ms(expires_at, "expiry")?;
            let (id, cl, src) = (token.to_bytes(), client.to_bytes(), source.to_bytes());
            let inserted = c
                .prepare_cached(
                    "INSERT INTO tokens (id, client, source, expires_at, keep_until, state)
                     VALUES (?1, ?2, ?3, ?4, ?4, 0) ON CONFLICT (id) DO NOTHING",
                )?
                .execute(params![id, cl, src, exp])?;
            if inserted == 0 {
                return Err(Fail::Refused(LedgerError::DuplicateToken));
            }
            let total: i64 = c
                .prepare_cached("UPDATE totals SET n = n + 1 RETURNING n - 1")?
                .query_row([], |r| r.get(0))?;
            let held = Held {
                client: count_up(c, "clients", &cl)?,
                source: count_up(c, "sources", &src)?,
                total: u64::try_from(total).unwrap_or(0),
            };
            // decision: the core's rule over the counts before this row (a
            // refusal rolls the savepoint back, counters included)
            budget.check(held).map_err(|e| {
                Fail::Refused(LedgerError::QuotaExceeded {
                    scope: e.scope,
                    limit: e.limit,
                })
            })
        })
        .map_err(ledger)
    }

    fn reserve(
        &self,
        token: &TokenId,
        by: ClientId,
        hello: &HelloDigest,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<ClientId, LedgerError> {
        let (token, hello) = (*token, *hello);
        self.write(move |c| {
            let (now_ms, until_ms) = (ms(now, "now")?, ms(until, "reservation")?);
            // decision
            let client: Option<Vec<u8>> = c
                .prepare_cached(
                    "UPDATE tokens SET state = 1, peer = ?2, state_at = ?4, hello = ?5,
                            keep_until = max(expires_at, ?4)
                      WHERE id = ?1 AND expires_at > ?3
                        AND (state = 0 OR (state = 1 AND state_at <= ?3))
                     RETURNING client",
                )?
                .query_row(
                    params![
                        token.to_bytes(),
                        by.to_bytes(),
                        now_ms,
                        until_ms,
                        hello.to_bytes()
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(client) = client {
                return client_of(&client).ok_or_else(|| corrupt("client").into());
            }
            let r = load_token(c, &token)?.ok_or(Fail::Refused(LedgerError::UnknownToken))?;
            Err(Fail::Refused(refusal(r.check_reserve(now), "reserve")))
        })
        .map_err(ledger)
    }

    fn release(
        &self,
        token: &TokenId,
        client: ClientId,
        hello: &HelloDigest,
        now: Timestamp,
    ) -> Result<(), LedgerError> {
        let (token, hello) = (*token, *hello);
        self.write(move |c| {
            // decision
            let changed = c
                .prepare_cached(
                    "UPDATE tokens SET state = 0, peer = NULL, state_at = NULL, hello = NULL,
                        keep_until = expires_at
                  WHERE id = ?1 AND client = ?2 AND state = 1 AND hello = ?4
                    AND keep_until > ?3",
                )?
                .execute(params![
                    token.to_bytes(),
                    client.to_bytes(),
                    ms(now, "now")?,
                    hello.to_bytes()
                ])?;
            if changed == 1 {
                return Ok(());
            }
            let r = load_token(c, &token)?.ok_or(Fail::Refused(LedgerError::UnknownToken))?;
            Err(Fail::Refused(refusal(
                r.check_release(client, &hello, now),
                "release",
            )))
        })
        .map_err(ledger)
    }

    fn redeem(
        &self,
        token: &TokenId,
        client: ClientId,
        now: Timestamp,
        keep: Timestamp,
    ) -> Result<ClientId, LedgerError> {
        let token = *token;
        self.write(move |c| {
            let (now_ms, keep_ms) = (ms(now, "now")?, ms(keep, "keep")?);
            // decision
            let peer: Option<Option<Vec<u8>>> = c
                .prepare_cached(
                    "UPDATE tokens SET state = 2, state_at = ?3, keep_until = max(keep_until, ?4)
                      WHERE id = ?1 AND client = ?2 AND state = 1 AND keep_until > ?3
                     RETURNING peer",
                )?
                .query_row(
                    params![token.to_bytes(), client.to_bytes(), now_ms, keep_ms],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(peer) = peer {
                let primary = peer
                    .as_deref()
                    .and_then(client_of)
                    .ok_or_else(|| corrupt("peer"))?;
                return Ok(primary);
            }
            let r = load_token(c, &token)?.ok_or(Fail::Refused(LedgerError::UnknownToken))?;
            Err(Fail::Refused(refusal(
                r.check_redeem(client, now),
                "redeem",
            )))
        })
        .map_err(ledger)
    }

    fn get(&self, token: &TokenId) -> Result<Option<TokenRecord>, LedgerError> {
        self.read(|c| load_token(c, token))
            .map_err(|e| LedgerError::Store(e.to_string()))
    }

    fn sweep(&self, now: Timestamp, limit: usize) -> Result<usize, LedgerError> {
        if limit == 0 {
            return Ok(0);
        }
        self.write(move |c| {
            let now_ms = ms(now, "now")?;
            let limit = int(u64::try_from(limit).unwrap_or(u64::MAX), "limit")?;
            let deleted: Vec<(Vec<u8>, Vec<u8>)> = {
                let mut st = c.prepare_cached(
                    "DELETE FROM tokens WHERE id IN
                       (SELECT id FROM tokens WHERE keep_until <= ?1
                         ORDER BY keep_until, id LIMIT ?2)
                     RETURNING client, source",
                )?;
                let rows = st.query_map(params![now_ms, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for (client, source) in &deleted {
                uncount(c, client, source)?;
            }
            let n = deleted.len();
            c.prepare_cached("UPDATE totals SET n = n - ?1")?
                .execute([int(u64::try_from(n).unwrap_or(u64::MAX), "count")?])?;
            Ok(n)
        })
        .map_err(ledger)
    }

    fn abandon(&self, client: ClientId) -> Result<usize, LedgerError> {
        self.write(move |c| {
            let cl = client.to_bytes();
            let sources: Vec<Vec<u8>> = {
                let mut st =
                    c.prepare_cached("DELETE FROM tokens WHERE client = ?1 RETURNING source")?;
                let rows = st.query_map([cl], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for source in &sources {
                uncount(c, &cl, source)?;
            }
            let n = sources.len();
            c.prepare_cached("UPDATE totals SET n = n - ?1")?
                .execute([int(u64::try_from(n).unwrap_or(u64::MAX), "count")?])?;
            Ok(n)
        })
        .map_err(ledger)
    }
}

fn account_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AccountRecord> {
    let facts = AccountFacts::from_bytes(&r.get::<_, Vec<u8>>(1)?).map_err(|_| corrupt("facts"))?;
    Ok(AccountRecord {
        facts,
        list: r.get(2)?,
        revision: u64::try_from(r.get::<_, i64>(0)?).map_err(|_| corrupt("revision"))?,
    })
}

/// The record's `active_since` column.
fn active_ms(record: &AccountRecord) -> Result<Option<i64>, Fail<StoreError>> {
    record
        .active_since()
        .map(|at| ms(at, "last activity").map_err(out_of_range("last activity")))
        .transpose()
}

fn out_of_range(what: &'static str) -> impl Fn(Fail<StoreError>) -> Fail<StoreError> {
    move |_| Fail::Refused(StoreError::OutOfRange(what))
}

impl Store for SqliteStore {
    /// WAL: a reader reads the last committed snapshot and never waits for
    /// the writer (nor the writer for it).
    fn reads_may_block(&self) -> bool {
        false
    }

    /// Runs `work` on the writer thread inside the next batch; its reply is
    /// called once the batch is committed (`true`) or not. A batch that
    /// cannot begin does not run it, and drops its reply (its caller hears
    /// that nothing happened).
    fn offload(&self, work: Offload) -> Result<(), Offload> {
        let Some(sender) = self.inner.writer.as_ref() else {
            return Err(work);
        };
        let job: Job = Box::new(move |conn| {
            if conn.is_none() {
                return (Box::new(|_| {}) as Reply, true);
            }
            UNSOUND.with(|u| u.set(false));
            let reply = work();
            let sound = !UNSOUND.with(|u| u.replace(false));
            (reply, sound)
        });
        // A stopped writer: the work (inside the job) is dropped unrun, and
        // a stand-in that does nothing goes back; the caller hears that
        // nothing happened.
        sender.send(job).map_err(|_| {
            tracing::error!("the SQLite writer stopped");
            Box::new(|| Box::new(|_: bool| {}) as Box<dyn FnOnce(bool) + Send>) as Offload
        })
    }

    fn account(&self, account: &AccountId) -> Result<Option<AccountRecord>, StoreError> {
        let found = self.read(|c| {
            c.prepare_cached("SELECT revision, facts, list FROM accounts WHERE account = ?1")?
                .query_row([account.to_bytes()], account_row)
                .optional()
        })?;
        match found {
            Some(r) if r.account() != *account => Err(StoreError::Corrupt(
                "an account row holds another account's facts".into(),
            )),
            other => Ok(other),
        }
    }

    fn put_account(&self, record: &AccountRecord) -> Result<bool, StoreError> {
        let record = record.clone();
        self.write(move |c| {
            let revision = int(record.revision, "revision").map_err(out_of_range("revision"))?;
            let active = active_ms(&record)?;
            let account = record.account().to_bytes();
            let facts = record.facts.to_bytes();
            // decision
            let n = if record.revision == 1 {
                c.prepare_cached(
                    "INSERT INTO accounts (account, revision, active_since, facts, list)
                     VALUES (?1, 1, ?2, ?3, ?4) ON CONFLICT (account) DO NOTHING",
                )?
                .execute(params![account, active, facts, record.list])?
            } else {
                c.prepare_cached(
                    "UPDATE accounts SET revision = ?2, active_since = ?3, facts = ?4, list = ?5
                      WHERE account = ?1 AND revision = ?2 - 1",
                )?
                .execute(params![
                    account,
                    revision,
                    active,
                    facts,
                    record.list
                ])?
            };
            // The history (a version past SQLite's integers has none).
            let version = i64::try_from(record.facts.list_version()).ok();
            if let (1, false, Some(version)) = (n, record.list.is_empty(), version) {
                c.prepare_cached(
                    "INSERT INTO account_lists (account, version, list) VALUES (?1, ?2, ?3)
                     ON CONFLICT (account, version) DO NOTHING",
                )?
                .execute(params![account, version, record.list])?;
                let floor =
                    version.saturating_sub(i64::try_from(super::LIST_HISTORY).unwrap_or(i64::MAX));
                c.prepare_cached("DELETE FROM account_lists WHERE account = ?1 AND version <= ?2")?
                    .execute(params![account, floor])?;
            }
            Ok(n == 1)
        })
        .map_err(store)
    }

    fn lists_after(&self, account: &AccountId, after: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT list FROM account_lists WHERE account = ?1 AND version > ?2
                  ORDER BY version",
            )?;
            let rows = st.query_map(params![account.to_bytes(), after], |r| r.get(0))?;
            rows.collect()
        })
    }

    fn delete_account(&self, account: &AccountId, revision: u64) -> Result<bool, StoreError> {
        let account = account.to_bytes();
        self.write(move |c| {
            let revision = int(revision, "revision").map_err(out_of_range("revision"))?;
            // decision
            let n = c
                .prepare_cached("DELETE FROM accounts WHERE account = ?1 AND revision = ?2")?
                .execute(params![account, revision])?;
            if n == 1 {
                c.prepare_cached("DELETE FROM account_lists WHERE account = ?1")?
                    .execute(params![account])?;
            }
            Ok(n == 1)
        })
        .map_err(store)
    }

    fn due_accounts(&self, before: Timestamp, limit: usize) -> Result<Vec<AccountId>, StoreError> {
        // Past SQLite's range, every stored time is before it.
        let before = i64::try_from(before.as_unix_millis()).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT account FROM accounts WHERE active_since <= ?1
                  ORDER BY active_since LIMIT ?2",
            )?;
            let rows = st.query_map(params![before, limit], |r| {
                let b: Vec<u8> = r.get(0)?;
                <[u8; 32]>::try_from(b.as_slice())
                    .map(AccountId::from_bytes)
                    .map_err(|_| corrupt("account"))
            })?;
            rows.collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_compiled_in_in_order() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        let compiled: Vec<String> = MIGRATIONS.iter().map(|m| m.1.to_string()).collect();
        assert_eq!(files, compiled);
        for (i, (version, file, _, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version as usize, i + 1);
            assert!(file.starts_with(&format!("{version:04}_")), "{file}");
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
    }

    #[test]
    fn offloaded_work_runs_in_the_writers_batch_and_is_answered_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("relay.db")).unwrap();
        let q = Budget::unlimited();
        let (tx, rx) = mpsc::channel();
        let mut sent = Vec::new();
        for n in 0..50u8 {
            let (store, tx) = (s.clone(), tx.clone());
            let work: Offload = Box::new(move || {
                let t = TokenId::from_bytes([n; 16]);
                let c = ClientId::from(u64::from(n));
                let at = Timestamp::from_unix_millis(1_000);
                // A write, a read of it (the batch's own, uncommitted), a
                // refused decision (rolled back alone), on this thread.
                let wrote = store.register(t, c, SourceKey::LOCAL, at, q);
                let seen = store.get(&t).map(|r| r.is_some());
                let refused = store.register(t, c, SourceKey::LOCAL, at, q);
                let on_writer = std::thread::current().name() == Some("devicelink-sqlite-writer");
                Box::new(move |committed| {
                    let _ = tx.send((committed, wrote, seen, refused, on_writer));
                })
            });
            sent.push(s.offload(work).is_ok());
        }
        assert!(sent.iter().all(|ok| *ok));
        for _ in 0..50 {
            let (committed, wrote, seen, refused, on_writer) = rx.recv().unwrap();
            assert!(committed && on_writer);
            assert_eq!(wrote, Ok(()));
            assert_eq!(seen, Ok(true));
            assert_eq!(refused, Err(LedgerError::DuplicateToken));
        }
        // One job per work in the writer's counts, batched into fewer
        // commits as they queued.
        let w = s.writer_stats();
        assert_eq!(w.writes, 50, "{w:?}");
        assert!(w.commits <= 50, "{w:?}");
        // Durable: read back on a reader connection, from a fresh open.
        drop(s);
        let s = SqliteStore::open(dir.path().join("relay.db")).unwrap();
        for n in 0..50u8 {
            assert!(s.get(&TokenId::from_bytes([n; 16])).unwrap().is_some());
        }
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        drop(SqliteStore::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(c);
        assert_eq!(
            SqliteStore::open(&path).err(),
            Some(StoreError::SchemaTooNew {
                found: SCHEMA_VERSION + 1,
                supported: SCHEMA_VERSION
            })
        );
    }

    /// Migration 6 seeds each account's list history with its current list.
    #[test]
    fn a_schema_5_file_gets_its_current_lists_as_history() {
        use devicelink::certificate::{DeviceListDraft, DeviceListEntry};
        use devicelink::{AccountKey, DeviceIdentity, DeviceIndex, DeviceLabel, SignedDeviceList};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(6);
        let key = AccountKey::generate(&mut rng);
        let device = DeviceIdentity::generate(&mut rng).device_key();
        let now = Timestamp::from_unix_millis(1_000);
        let entry =
            DeviceListEntry::new(DeviceIndex(1), device, DeviceLabel::new("a").unwrap(), now);
        let list = SignedDeviceList::sign(&key, &DeviceListDraft::new(1, vec![entry]), now);
        let mut d = devicelink::Directory::new(&devicelink::Policy::default());
        d.apply_device_list(&list, now).unwrap();
        let record = AccountRecord {
            facts: d.facts(&key.account_id()).unwrap(),
            list: list.to_bytes(),
            revision: 1,
        };
        {
            let s = SqliteStore::open(&path).unwrap();
            assert!(s.put_account(&record).unwrap());
        }
        {
            // Back to schema 5: no history table.
            let c = Connection::open(&path).unwrap();
            c.execute_batch("DROP TABLE account_lists").unwrap();
            c.pragma_update(None, "user_version", 5).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version(), Ok(SCHEMA_VERSION));
        assert_eq!(
            s.lists_after(&key.account_id(), 0),
            Ok(vec![list.to_bytes()])
        );
    }

    #[test]
    fn an_old_schema_is_migrated_forward_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        {
            // A file at schema 1, as the first release left it.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0].2).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO tokens (id, client, expires_at, keep_until, state) VALUES (?1, ?2, 100, 100, 0)",
                params![[1u8; 16], [2u8; 16]],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version(), Ok(SCHEMA_VERSION));
        let r = s.get(&TokenId::from_bytes([1; 16])).unwrap().unwrap();
        assert_eq!(r.state, TokenState::Open);
        assert_eq!(s.account(&AccountId::from_bytes([0; 32])), Ok(None));
    }

    #[test]
    fn out_of_range_values_are_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("relay.db")).unwrap();
        let q = Budget::new(8, 100, 100);
        let t = TokenId::from_bytes([1; 16]);
        let src = SourceKey::LOCAL;
        assert!(matches!(
            s.register(t, ClientId::from(1), src, Timestamp::MAX, q),
            Err(LedgerError::Store(_))
        ));
        assert_eq!(s.get(&t), Ok(None));
        let (_, list) = signed_list(1, 1);
        let mut d = Directory::new(&devicelink::Policy::default());
        d.apply_device_list(&list, list.issued_at()).unwrap();
        let rec = AccountRecord {
            facts: d.facts(&list.account()).unwrap(),
            list: list.to_bytes(),
            revision: u64::MAX,
        };
        assert_eq!(s.put_account(&rec), Err(StoreError::OutOfRange("revision")));
        // The refused write did not spoil its batch or the writer.
        s.register(t, ClientId::from(1), src, Timestamp::from_unix_millis(5), q)
            .unwrap();
    }

    /// A first list of one account with `n` devices, signed at day 1.
    fn signed_list(seed: u64, n: u32) -> (devicelink::AccountKey, devicelink::SignedDeviceList) {
        use devicelink::certificate::{DeviceListDraft, DeviceListEntry};
        use rand_chacha::rand_core::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let key = devicelink::AccountKey::generate(&mut rng);
        let devices = (1..=n)
            .map(|i| {
                DeviceListEntry::new(
                    DeviceIndex(i),
                    devicelink::DeviceIdentity::generate(&mut rng).device_key(),
                    devicelink::DeviceLabel::new("d").unwrap(),
                    Timestamp::EPOCH,
                )
            })
            .collect();
        let list = devicelink::SignedDeviceList::sign(
            &key,
            &DeviceListDraft::new(1, devices),
            Timestamp::from_unix_millis(86_400_000),
        );
        (key, list)
    }

    #[test]
    fn schema_3_accounts_become_the_directorys_facts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let (_, a) = signed_list(7, 3);
        let (_, b) = signed_list(8, 2);
        {
            let c = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..3] {
                c.execute_batch(m.2).unwrap();
            }
            c.pragma_update(None, "user_version", 3).unwrap();
            // a: active since day 2; b: devices up to #1 logged out.
            for (list, activity, floor) in [(&a, 2 * 86_400_000i64, 0u32), (&b, 86_400_000, 1)] {
                c.execute(
                    "INSERT INTO accounts (account, list_version, list_hash, list, last_activity, swept_up_to)
                     VALUES (?1, 1, ?2, ?3, ?4, ?5)",
                    params![list.account().to_bytes(), list.hash(), list.to_bytes(), activity, floor],
                )
                .unwrap();
            }
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version(), Ok(SCHEMA_VERSION));
        let ra = s.account(&a.account()).unwrap().unwrap();
        assert_eq!(ra.revision, 1);
        assert_eq!(ra.list, a.to_bytes());
        assert_eq!(ra.facts.devices().count(), 3);
        assert_eq!(
            ra.facts.last_activity(),
            Timestamp::from_unix_millis(2 * 86_400_000)
        );
        assert_eq!(ra.facts.logged_out_floor(), 0);
        let rb = s.account(&b.account()).unwrap().unwrap();
        assert_eq!(
            rb.facts.devices().map(|(i, _)| i).collect::<Vec<_>>(),
            vec![DeviceIndex(2)]
        );
        assert_eq!(rb.facts.logged_out_floor(), 1);
        // The index answers the sweep's question.
        let day = |d: u64| Timestamp::from_unix_millis(d * 86_400_000);
        assert_eq!(s.due_accounts(day(1), 10), Ok(vec![b.account()]));
        assert_eq!(
            s.due_accounts(day(2), 10),
            Ok(vec![b.account(), a.account()])
        );
        assert_eq!(s.due_accounts(day(2), 1), Ok(vec![b.account()]));
        // Compare-and-set on the revision.
        let next = AccountRecord {
            revision: 2,
            ..ra.clone()
        };
        assert_eq!(s.put_account(&next), Ok(true));
        assert_eq!(s.put_account(&next), Ok(false));
        assert_eq!(s.put_account(&ra), Ok(false));
    }
}
