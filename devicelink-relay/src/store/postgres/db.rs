//! The connection side of [`PgStore`](super::PgStore): a dedicated tokio
//! runtime that owns the pool's connections, the retry policy, and the
//! breaker that makes callers fail fast with "unavailable" while the
//! database cannot be reached.
//!
//! The store's methods are synchronous (the core's `TokenStore` is). A call
//! spawns its work on the store's own runtime and blocks the calling thread
//! on a channel until the work is done, so it works from any thread: the
//! server's `spawn_blocking` pool, a plain thread, even an async task
//! (which it blocks, like the SQLite store's writer channel does; the
//! server never calls a store from one).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::tokio_postgres::error::SqlState;
use deadpool_postgres::tokio_postgres::{self, NoTls};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use rand_core::{OsRng, RngCore};
use tokio::runtime::{Handle, Runtime};

/// How a [`PgStore`](super::PgStore) connects and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// Connections kept open to the database by this process.
    pub pool_size: usize,
    /// How long one call keeps retrying transient failures (a connection
    /// lost while PostgreSQL restarts, a serialization failure, a deadlock
    /// PostgreSQL broke) before it answers "unavailable".
    pub retry_for: Duration,
    /// How long [`PgStore::connect`](super::PgStore::connect) waits for the
    /// database to accept connections at start.
    pub connect_wait: Duration,
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// Worker threads of the store's runtime.
    pub threads: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 16,
            retry_for: Duration::from_secs(2),
            connect_wait: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            threads: 2,
        }
    }
}

/// A failure of the database itself (not a refusal).
#[derive(Debug, Clone)]
pub(crate) struct DbError {
    pub(crate) text: String,
    /// Nothing was committed, and trying again may work.
    pub(crate) retry: bool,
}

/// Why an operation did not happen.
#[derive(Debug)]
pub(crate) enum Fail<E> {
    /// The decision said no (the transaction was rolled back).
    Refused(E),
    /// The database failed.
    Db(DbError),
}

/// SQLSTATE classes after which nothing was committed and a new attempt
/// (on a new connection) may succeed.
fn transient(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") // connection exception
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::QUERY_CANCELED
}

impl DbError {
    pub(crate) fn new(text: impl Into<String>, retry: bool) -> Self {
        DbError {
            text: text.into(),
            retry,
        }
    }

    /// A failure before anything was committed: the server reported an
    /// error (the statement or transaction was rolled back), or the
    /// connection was lost before the transaction's `COMMIT` was sent.
    pub(crate) fn before_commit(e: &tokio_postgres::Error) -> Self {
        let retry = e.code().is_none_or(transient);
        DbError::new(describe(e), retry)
    }

    /// A failure of a statement that commits (an autocommit write or a
    /// `COMMIT`): a reported error means it did not commit; a lost
    /// connection leaves the outcome unknown, so it is never retried; a
    /// client-side encoding failure sent nothing.
    pub(crate) fn at_commit(e: &tokio_postgres::Error) -> Self {
        match e.code() {
            Some(code) => DbError::new(describe(e), transient(code)),
            None if e.is_closed() => DbError::new(
                format!("{}; the outcome of the write is unknown", describe(e)),
                false,
            ),
            // A client-side failure (a parameter that does not encode):
            // nothing was sent.
            None => DbError::new(describe(e), false),
        }
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres {}: {}", db.code().code(), db.message()),
        None => format!("postgres: {e}"),
    }
}

impl<E> From<tokio_postgres::Error> for Fail<E> {
    /// An error before the commit (see [`DbError::before_commit`]).
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Db(DbError::before_commit(&e))
    }
}

/// An error of a committing statement (see [`DbError::at_commit`]).
pub(crate) fn at_commit<E>(e: tokio_postgres::Error) -> Fail<E> {
    Fail::Db(DbError::at_commit(&e))
}

/// What the runtime's tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    /// The last connection attempt failed: callers fail fast until the
    /// prober reconnects.
    down: AtomicBool,
    probing: AtomicBool,
    retry_for: Duration,
}

/// The jittered exponential wait before attempt `n` (1-based): a random
/// duration in `[d/2, d]`, `d = min(cap, first × 2ⁿ⁻¹)`.
pub(crate) fn backoff(n: u32, first: Duration, cap: Duration) -> Duration {
    let d = first
        .saturating_mul(
            1u32.checked_shl(n.saturating_sub(1).min(31))
                .unwrap_or(u32::MAX),
        )
        .min(cap);
    let jitter = f64::from(OsRng.next_u32()) / f64::from(u32::MAX);
    d.mul_f64(0.5 + jitter / 2.0)
}

impl Shared {
    /// Whether the breaker is open (the database was unreachable at the
    /// last attempt and the prober has not reconnected yet).
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    fn mark_down(self: &Arc<Self>, why: &str) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %why, "database unreachable; refusing work until it is back");
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.probe().await });
        }
    }

    /// Reconnects with backoff (50 ms doubling to 1 s) until the database
    /// answers, then closes the breaker.
    async fn probe(self: Arc<Self>) {
        let mut n = 0;
        loop {
            n += 1;
            tokio::time::sleep(backoff(
                n,
                Duration::from_millis(50),
                Duration::from_secs(1),
            ))
            .await;
            if let Ok(client) = self.pool.get().await {
                if client.simple_query("SELECT 1").await.is_ok() {
                    self.probing.store(false, Ordering::Release);
                    self.down.store(false, Ordering::Release);
                    tracing::info!(attempts = n, "database reachable again");
                    return;
                }
            }
        }
    }

    /// A pooled connection, or why there is none (opening the breaker when
    /// the database does not accept connections).
    pub(crate) async fn client(self: &Arc<Self>) -> Result<Object, DbError> {
        if self.is_down() {
            return Err(DbError::new(
                "database unreachable (reconnecting in the background)",
                false,
            ));
        }
        match self.pool.get().await {
            Ok(c) => Ok(c),
            Err(PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)) => {
                Err(DbError::new("every database connection is busy", false))
            }
            Err(e) => {
                let text = format!("cannot connect to the database: {e}");
                self.mark_down(&text);
                Err(DbError::new(text, false))
            }
        }
    }

    /// Runs `op` on a pooled connection, again on a new connection after a
    /// transient failure (with backoff, for up to `retry_for`).
    pub(crate) async fn attempt<T, E, F, Fut>(self: &Arc<Self>, mut op: F) -> Result<T, Fail<E>>
    where
        F: FnMut(Object) -> Fut,
        Fut: Future<Output = Result<T, Fail<E>>>,
    {
        let start = Instant::now();
        let mut n = 0;
        loop {
            let client = self.client().await.map_err(Fail::Db)?;
            match op(client).await {
                Err(Fail::Db(e)) if e.retry && start.elapsed() < self.retry_for => {
                    n += 1;
                    tracing::debug!(error = %e.text, attempt = n, "transient database failure; retrying");
                    tokio::time::sleep(backoff(
                        n,
                        Duration::from_millis(20),
                        Duration::from_millis(500),
                    ))
                    .await;
                }
                other => return other,
            }
        }
    }
}

/// The store's runtime and pool. Dropping the last handle stops the
/// runtime (in the background: allowed from async code too) and closes the
/// connections.
pub(crate) struct Db {
    runtime: Option<Runtime>,
    pub(crate) handle: Handle,
    pub(crate) shared: Arc<Shared>,
    /// The connection settings (for connections outside the pool: the
    /// cluster's listener).
    pub(crate) config: tokio_postgres::Config,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("down", &self.shared.is_down())
            .finish_non_exhaustive()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.shared.pool.close();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Settings every store connection gets: bounds on statements, lock waits
/// and abandoned transactions, so a stuck peer never holds a row for long.
const SESSION_OPTIONS: &str = "-c statement_timeout=10000 -c lock_timeout=5000 \
     -c idle_in_transaction_session_timeout=10000";

impl Db {
    /// Parses `url`, starts the runtime and builds the pool (no connection
    /// yet).
    pub(crate) fn new(url: &str, options: &PgOptions) -> Result<Self, String> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
        let mut session = config.get_options().unwrap_or_default().to_string();
        if !session.is_empty() {
            session.push(' ');
        }
        session.push_str(SESSION_OPTIONS);
        config
            .options(session)
            .application_name("devicelink-relay")
            .connect_timeout(options.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        #[cfg(target_os = "linux")]
        config.tcp_user_timeout(Duration::from_secs(10));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.threads.max(1))
            .thread_name("devicelink-pg")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the store's runtime: {e}"))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .build()
            .map_err(|e| format!("cannot build the pool: {e}"))?;
        Ok(Db {
            config,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            shared: Arc::new(Shared {
                pool,
                down: AtomicBool::new(false),
                probing: AtomicBool::new(false),
                retry_for: options.retry_for,
            }),
        })
    }

    /// Runs `op` (with retries) on the store's runtime and blocks until it
    /// is done.
    pub(crate) fn run<T, E, F, Fut>(&self, op: F) -> Result<T, Fail<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
        F: FnMut(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Fail<E>>> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        self.block_on(async move { shared.attempt(op).await })
    }

    /// Runs `fut` on the store's runtime and blocks until it is done.
    pub(crate) fn block_on<T, E, Fut>(&self, fut: Fut) -> Result<T, Fail<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
        Fut: Future<Output = Result<T, Fail<E>>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(Fail::Db(DbError::new("the store's runtime stopped", false))))
    }
}
