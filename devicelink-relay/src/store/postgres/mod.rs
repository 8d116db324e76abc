//! The PostgreSQL [`Store`]: many relay nodes on one database
//! (`--db postgres://…`), through `tokio-postgres` and a `deadpool` pool.
//!
//! # Design
//!
//! - **The SQL is the core's contract, verbatim.** Each decision is one
//!   conditional write whose affected rows decide (`UPDATE … WHERE state = …
//!   RETURNING`, `INSERT … ON CONFLICT DO NOTHING`), in the same transaction
//!   as what it records (the per-client and store-wide counters). PostgreSQL
//!   re-checks an `UPDATE`'s `WHERE` on the newest row version after waiting
//!   for a concurrent writer's lock, so of any number of racing reserves or
//!   redemptions (from any number of nodes) at most one changes the row, at
//!   the default `READ COMMITTED` isolation.
//! - **Budgets.** A registration raises its client's and its source's
//!   counter rows (upserts that lock them) and its shard of the store-wide
//!   count in one transaction, reads what they held before, and lets the
//!   core's `Budget::check` decide; a refusal rolls it all back.
//! - **The store-wide count** (`totals`) is the sum of 64 counter rows; a
//!   registration adds to the row of its token id's shard and reads the
//!   sum from its snapshot. Registrations therefore
//!   do not queue on one row lock for the length of each commit's `fsync`
//!   (one counter row capped the whole cluster at about one registration
//!   per `fsync`, ~290/s here). The price: registrations committing at the
//!   same instant each read the sum before the others' increments, so the
//!   store may exceed `quota.total` by at most the number of registrations
//!   in flight (pool connections across nodes, e.g. 48 over 1,000,000);
//!   sequentially the quota is exact, and the per-client quota is exact
//!   always (one row per client, locked).
//! - **One round trip per decision where one statement is enough**:
//!   reserve, release, redeem (a data-modifying `WITH` that also decrements
//!   the client's counter) and the account write (a compare-and-set on the
//!   record's revision) are single autocommit statements; register is one transaction whose three statements are
//!   pipelined. An autocommit statement's answer arrives after its commit
//!   (`ReadyForQuery`), so nothing is acknowledged before it is durable
//!   (with PostgreSQL's `synchronous_commit = on`, the default).
//! - **Sweeps** delete at most `limit` rows in `keep_until` order through
//!   the index on it, taking them with `FOR UPDATE SKIP LOCKED` so nodes
//!   sweeping at once take disjoint rows and never wait on each other or on
//!   a redemption in flight. Counter rows are updated in key order (no
//!   deadlock between sweeps); rows of clients whose count reached zero are
//!   removed by the sweep through a partial index.
//! - **Failures.** A failure reported by the server (the statement rolled
//!   back), or a lost connection before a transaction's `COMMIT`, is
//!   retried on a new connection with jittered backoff for up to
//!   [`PgOptions::retry_for`]. A lost connection during a committing
//!   statement leaves its outcome unknown: it is not retried and is
//!   reported as unavailable (the contract's "nothing happened" cannot be
//!   promised for it; exactly-once still holds, as the row decides). When a
//!   connection cannot be opened, a breaker opens: every call fails at once
//!   with "unavailable" (`LedgerError::Store` / [`StoreError::Unavailable`],
//!   the relay's error 700) while a background task reconnects with backoff;
//!   the first success closes it. Nothing is guessed.
//! - **Sync over async.** The store's methods are synchronous like the
//!   core's `TokenStore`; each runs its statements on the store's own small
//!   tokio runtime (which owns the pool) and blocks on the answer.
//! - **Migrations**: `migrations/postgres/NNNN_*.sql`, compiled in, applied
//!   at connect under an advisory lock (`migrate`).
//!
//! Times and versions are `bigint` (signed 64-bit), as in SQLite; a value
//! above `i64::MAX` is refused, never wrapped. Rows are decoded totally: a
//! value of the wrong length, sign or state is [`StoreError::Corrupt`]
//! (`LedgerError::Store` for token reads), never a panic.

mod db;
mod migrate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::tokio_postgres::Row;
use deadpool_postgres::Object;
use devicelink::relay::{
    AccountFacts, Budget, ClientId, Held, HelloDigest, LedgerError, SourceKey, TokenRecord,
    TokenState, TokenStore,
};
use devicelink::{AccountId, Timestamp, TokenId};

pub use db::PgOptions;
pub(crate) use db::{backoff, Db, DbError, Fail};
pub use migrate::{MIGRATION_LOCK, PG_SCHEMA_VERSION};

use super::{refusal, AccountRecord, Store, StoreError};

/// A statement parameter.
type Param<'a> = dyn deadpool_postgres::tokio_postgres::types::ToSql + Sync + 'a;

/// Shards of the store-wide token count (`totals`).
const TOTAL_SHARDS: u8 = 64;

/// Zero-count client and source rows removed per sweep.
const IDLE_CLIENTS_PER_SWEEP: i64 = 1_000;

/// The PostgreSQL store. Clones share one runtime and one pool.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    target: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

/// `host:port/dbname` of a connection string, without user or password.
fn target_of(url: &str) -> String {
    let Ok(config) = url.parse::<deadpool_postgres::tokio_postgres::Config>() else {
        return "postgres".into();
    };
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            deadpool_postgres::tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            deadpool_postgres::tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres {host}:{port}/{}",
        config.get_dbname().unwrap_or("")
    )
}

fn ledger(f: Fail<LedgerError>) -> LedgerError {
    match f {
        Fail::Refused(e) => e,
        Fail::Db(e) => LedgerError::Store(e.text),
    }
}

fn store(f: Fail<StoreError>) -> StoreError {
    match f {
        Fail::Refused(e) => e,
        Fail::Db(e) => StoreError::Unavailable(e.text),
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/dbname`, or
    /// the `key=value` form) with [`PgOptions::default`], waits up to
    /// [`PgOptions::connect_wait`] for the database, and applies the
    /// migrations it lacks.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PgOptions::default())
    }

    /// [`PgStore::connect`] with explicit options.
    pub fn connect_with(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let db = Db::new(url, &options).map_err(StoreError::Unavailable)?;
        let shared = Arc::clone(&db.shared);
        let wait = options.connect_wait;
        db.block_on(async move {
            let start = Instant::now();
            let mut n = 0;
            loop {
                match shared.pool.get().await {
                    Ok(mut client) => return migrate::migrate(&mut client).await,
                    Err(e) if start.elapsed() < wait => {
                        n += 1;
                        tracing::info!(error = %e, attempt = n, "database not reachable yet; waiting");
                        tokio::time::sleep(backoff(
                            n,
                            Duration::from_millis(50),
                            Duration::from_secs(1),
                        ))
                        .await;
                    }
                    Err(e) => {
                        return Err(Fail::Db(DbError::new(
                            format!("cannot connect to the database: {e}"),
                            false,
                        )))
                    }
                }
            }
        })
        .map_err(store)?;
        Ok(PgStore {
            inner: Arc::new(Inner {
                db,
                target: target_of(url),
            }),
        })
    }

    /// `postgres host:port/dbname` (no credentials), for logs.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// The database's schema version (after connecting:
    /// [`PG_SCHEMA_VERSION`]).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.db()
            .run(|c| async move { migrate::version(&c).await })
            .map_err(store)
    }

    /// Whether the database answered the last connection attempt (while
    /// not, every call fails at once as unavailable).
    pub fn is_reachable(&self) -> bool {
        !self.db().shared.is_down()
    }

    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }
}

// ---- value conversions -----------------------------------------------------

/// A stored value that does not decode.
fn corrupt(what: impl std::fmt::Display) -> String {
    format!("stored data is corrupt: {what}")
}

fn int<E>(v: u64, what: &'static str) -> Result<i64, Fail<E>> {
    i64::try_from(v).map_err(|_| Fail::Db(DbError::new(format!("{what} out of range"), false)))
}

fn ms<E>(t: Timestamp, what: &'static str) -> Result<i64, Fail<E>> {
    int(t.as_unix_millis(), what)
}

fn ts(v: i64, what: &str) -> Result<Timestamp, String> {
    u64::try_from(v)
        .map(Timestamp::from_unix_millis)
        .map_err(|_| corrupt(format_args!("{what} {v}")))
}

fn array<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], String> {
    <[u8; N]>::try_from(bytes).map_err(|_| corrupt(format_args!("{what} of {} bytes", bytes.len())))
}

fn col<'a, T: deadpool_postgres::tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    i: usize,
) -> Result<T, String> {
    row.try_get(i)
        .map_err(|e| corrupt(format_args!("column {i}: {e}")))
}

fn ledger_corrupt(text: String) -> Fail<LedgerError> {
    Fail::Db(DbError::new(text, false))
}

fn store_corrupt(text: String) -> Fail<StoreError> {
    Fail::Refused(StoreError::Corrupt(text))
}

const TOKEN_COLUMNS: &str = "client, expires_at, keep_until, state, peer, state_at, hello, source";

fn token_row(r: &Row) -> Result<TokenRecord, String> {
    let client = ClientId::from_bytes(array(col::<&[u8]>(r, 0)?, "client")?);
    let expires_at = ts(col(r, 1)?, "expires_at")?;
    let keep_until = ts(col(r, 2)?, "keep_until")?;
    let state: i16 = col(r, 3)?;
    let peer: Option<&[u8]> = col(r, 4)?;
    let at: Option<i64> = col(r, 5)?;
    let hello: Option<&[u8]> = col(r, 6)?;
    let state = match (state, peer, at) {
        (0, _, _) => TokenState::Open,
        (1, Some(by), Some(until)) => TokenState::Reserved {
            by: ClientId::from_bytes(array(by, "peer")?),
            until: ts(until, "state_at")?,
            hello: HelloDigest::from_bytes(array(hello.unwrap_or_default(), "hello")?),
        },
        (2, Some(primary), Some(at)) => TokenState::Redeemed {
            primary: ClientId::from_bytes(array(primary, "peer")?),
            at: ts(at, "state_at")?,
        },
        (s, _, _) => return Err(corrupt(format_args!("token state {s}"))),
    };
    let source = SourceKey::from_bytes(array(col::<&[u8]>(r, 7)?, "source")?);
    Ok(TokenRecord {
        client,
        source,
        expires_at,
        keep_until,
        state,
    })
}

async fn load_token(c: &Object, token: &TokenId) -> Result<Option<TokenRecord>, Fail<LedgerError>> {
    let st = c
        .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"))
        .await?;
    let id = token.to_bytes();
    match c.query_opt(&st, &[&&id[..]]).await? {
        None => Ok(None),
        Some(row) => token_row(&row).map(Some).map_err(ledger_corrupt),
    }
}

/// The refusal of a reserve that changed no row, named from the row.
async fn reserve_refusal(c: &Object, token: &TokenId, now: Timestamp) -> Fail<LedgerError> {
    let r = match load_token(c, token).await {
        Ok(Some(r)) => r,
        Ok(None) => return Fail::Refused(LedgerError::UnknownToken),
        Err(e) => return e,
    };
    Fail::Refused(refusal(r.check_reserve(now), "reserve"))
}

impl TokenStore for PgStore {
    fn register(
        &self,
        token: TokenId,
        client: ClientId,
        source: SourceKey,
        expires_at: Timestamp,
        budget: Budget,
    ) -> Result<(), LedgerError> {
        self.db()
            .run(move |mut c| async move {
                let exp = ms(expires_at, "expiry")?;
                let (id, cl, src) = (token.to_bytes(), client.to_bytes(), source.to_bytes());
                let tx = c.transaction().await?;
                let (insert, count_client, count_source, add) = tokio::try_join!(
                    tx.prepare_cached(
                        "INSERT INTO tokens (id, client, source, expires_at, keep_until, state)
                         VALUES ($1, $2, $3, $4, $4, 0) ON CONFLICT (id) DO NOTHING"
                    ),
                    tx.prepare_cached(
                        "INSERT INTO clients (id, live) VALUES ($1, 1)
                         ON CONFLICT (id) DO UPDATE SET live = clients.live + 1
                         RETURNING live - 1"
                    ),
                    tx.prepare_cached(
                        "INSERT INTO sources (id, live) VALUES ($1, 1)
                         ON CONFLICT (id) DO UPDATE SET live = sources.live + 1
                         RETURNING live - 1"
                    ),
                    tx.prepare_cached(
                        "UPDATE totals SET n = n + 1 WHERE shard = $1
                         RETURNING (SELECT sum(n) FROM totals)::bigint"
                    ),
                )?;
                // Pipelined; the store-wide counter last, so its row lock is
                // held for the shortest time. Its subquery reads the sum
                // from the statement's snapshot, before this increment.
                let shard = i16::from(id[15] % TOTAL_SHARDS);
                let (id, cl, src) = (&id[..], &cl[..], &src[..]);
                let p_insert: [&Param<'_>; 4] = [&id, &cl, &src, &exp];
                let (p_client, p_source, p_add): (
                    [&Param<'_>; 1],
                    [&Param<'_>; 1],
                    [&Param<'_>; 1],
                ) = ([&cl], [&src], [&shard]);
                let (inserted, by_client, by_source, total) = tokio::try_join!(
                    tx.execute(&insert, &p_insert),
                    tx.query_one(&count_client, &p_client),
                    tx.query_one(&count_source, &p_source),
                    tx.query_one(&add, &p_add),
                )?;
                let held = |row: &Row| -> Result<u64, Fail<LedgerError>> {
                    let n: i64 = col(row, 0).map_err(ledger_corrupt)?;
                    Ok(u64::try_from(n).unwrap_or(0))
                };
                let refusal = if inserted == 0 {
                    Some(LedgerError::DuplicateToken)
                } else {
                    // decision: the core's rule over the counts before this row
                    budget
                        .check(Held {
                            client: held(&by_client)?,
                            source: held(&by_source)?,
                            total: held(&total)?,
                        })
                        .err()
                        .map(|e| LedgerError::QuotaExceeded {
                            scope: e.scope,
                            limit: e.limit,
                        })
                };
                if let Some(refusal) = refusal {
                    let _ = tx.rollback().await;
                    return Err(Fail::Refused(refusal));
                }
                tx.commit().await.map_err(db::at_commit)?;
                Ok(())
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
        self.db()
            .run(move |c| async move {
                let (now_ms, until_ms) = (ms(now, "now")?, ms(until, "reservation")?);
                let st = c
                    .prepare_cached(
                        "UPDATE tokens SET state = 1, peer = $2, state_at = $4, hello = $5,
                                keep_until = greatest(expires_at, $4)
                          WHERE id = $1 AND expires_at > $3
                            AND (state = 0 OR (state = 1 AND state_at <= $3))
                         RETURNING client",
                    )
                    .await?;
                let (id, b, h) = (token.to_bytes(), by.to_bytes(), hello.to_bytes());
                // decision
                let row = c
                    .query_opt(&st, &[&&id[..], &&b[..], &now_ms, &until_ms, &&h[..]])
                    .await
                    .map_err(db::at_commit)?;
                match row {
                    Some(row) => col::<&[u8]>(&row, 0)
                        .and_then(|b| array(b, "client"))
                        .map(ClientId::from_bytes)
                        .map_err(ledger_corrupt),
                    None => Err(reserve_refusal(&c, &token, now).await),
                }
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
        self.db()
            .run(move |c| async move {
                let now_ms = ms(now, "now")?;
                let st = c
                    .prepare_cached(
                        "UPDATE tokens SET state = 0, peer = NULL, state_at = NULL, hello = NULL,
                                keep_until = expires_at
                          WHERE id = $1 AND client = $2 AND state = 1 AND hello = $4
                            AND keep_until > $3",
                    )
                    .await?;
                let (id, cl, h) = (token.to_bytes(), client.to_bytes(), hello.to_bytes());
                // decision
                let changed = c
                    .execute(&st, &[&&id[..], &&cl[..], &now_ms, &&h[..]])
                    .await
                    .map_err(db::at_commit)?;
                if changed == 1 {
                    return Ok(());
                }
                let r = load_token(&c, &token)
                    .await?
                    .ok_or(Fail::Refused(LedgerError::UnknownToken))?;
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
        self.db()
            .run(move |c| async move {
                let (now_ms, keep_ms) = (ms(now, "now")?, ms(keep, "keep")?);
                // decision: the token row (its tombstone still counts for
                // its client and source until it is swept)
                let st = c
                    .prepare_cached(
                        "UPDATE tokens SET state = 2, state_at = $3,
                                keep_until = greatest(keep_until, $4)
                          WHERE id = $1 AND client = $2 AND state = 1 AND keep_until > $3
                         RETURNING peer",
                    )
                    .await?;
                let (id, cl) = (token.to_bytes(), client.to_bytes());
                let row = c
                    .query_opt(&st, &[&&id[..], &&cl[..], &now_ms, &keep_ms])
                    .await
                    .map_err(db::at_commit)?;
                if let Some(row) = row {
                    return col::<Option<&[u8]>>(&row, 0)
                        .and_then(|p| array(p.unwrap_or_default(), "peer"))
                        .map(ClientId::from_bytes)
                        .map_err(ledger_corrupt);
                }
                let r = load_token(&c, &token)
                    .await?
                    .ok_or(Fail::Refused(LedgerError::UnknownToken))?;
                Err(Fail::Refused(refusal(
                    r.check_redeem(client, now),
                    "redeem",
                )))
            })
            .map_err(ledger)
    }

    fn get(&self, token: &TokenId) -> Result<Option<TokenRecord>, LedgerError> {
        let token = *token;
        self.db()
            .run(move |c| async move { load_token(&c, &token).await })
            .map_err(ledger)
    }

    fn sweep(&self, now: Timestamp, limit: usize) -> Result<usize, LedgerError> {
        if limit == 0 {
            return Ok(0);
        }
        self.db()
            .run(move |mut c| async move {
                let now_ms = ms(now, "now")?;
                let limit = int(u64::try_from(limit).unwrap_or(u64::MAX), "limit")?;
                let tx = c.transaction().await?;
                let delete = tx
                    .prepare_cached(
                        "DELETE FROM tokens WHERE id IN
                           (SELECT id FROM tokens WHERE keep_until <= $1
                             ORDER BY keep_until, id LIMIT $2 FOR UPDATE SKIP LOCKED)
                         RETURNING client, source",
                    )
                    .await?;
                let rows = tx.query(&delete, &[&now_ms, &limit]).await?;
                if rows.is_empty() {
                    let _ = tx.rollback().await;
                    return Ok(0);
                }
                uncount(&tx, &rows).await?;
                tx.commit().await.map_err(db::at_commit)?;
                Ok(rows.len())
            })
            .map_err(ledger)
    }

    fn abandon(&self, client: ClientId) -> Result<usize, LedgerError> {
        self.db()
            .run(move |mut c| async move {
                let tx = c.transaction().await?;
                let delete = tx
                    .prepare_cached("DELETE FROM tokens WHERE client = $1 RETURNING client, source")
                    .await?;
                let cl = client.to_bytes();
                let rows = tx.query(&delete, &[&&cl[..]]).await?;
                if rows.is_empty() {
                    let _ = tx.rollback().await;
                    return Ok(0);
                }
                uncount(&tx, &rows).await?;
                tx.commit().await.map_err(db::at_commit)?;
                Ok(rows.len())
            })
            .map_err(ledger)
    }
}

/// Takes deleted token rows (`client, source`) off their counters, in key
/// order (so concurrent sweeps lock counter rows in the same order), removes
/// a bounded number of counter rows at zero, and subtracts them from the
/// store-wide count.
async fn uncount(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[Row],
) -> Result<(), Fail<LedgerError>> {
    let mut clients = std::collections::BTreeMap::<Vec<u8>, i64>::new();
    let mut sources = std::collections::BTreeMap::<Vec<u8>, i64>::new();
    for row in rows {
        let client: Vec<u8> = col(row, 0).map_err(ledger_corrupt)?;
        let source: Vec<u8> = col(row, 1).map_err(ledger_corrupt)?;
        *clients.entry(client).or_default() += 1;
        *sources.entry(source).or_default() += 1;
    }
    for (table, counts) in [("clients", &clients), ("sources", &sources)] {
        let down = tx
            .prepare_cached(&format!(
                "UPDATE {table} SET live = greatest(live - $2, 0) WHERE id = $1"
            ))
            .await?;
        for (id, n) in counts {
            tx.execute(&down, &[&&id[..], n]).await?;
        }
        let idle = tx
            .prepare_cached(&format!(
                "DELETE FROM {table} WHERE id IN
                   (SELECT id FROM {table} WHERE live = 0 LIMIT $1 FOR UPDATE SKIP LOCKED)"
            ))
            .await?;
        tx.execute(&idle, &[&IDLE_CLIENTS_PER_SWEEP]).await?;
    }
    let deleted = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    let sub = tx
        .prepare_cached("UPDATE totals SET n = n - $1 WHERE shard = 0")
        .await?;
    tx.execute(&sub, &[&deleted]).await?;
    Ok(())
}

fn account_row(r: &Row) -> Result<AccountRecord, String> {
    let revision: i64 = col(r, 0)?;
    let facts = AccountFacts::from_bytes(col::<&[u8]>(r, 1)?)
        .map_err(|e| corrupt(format_args!("account facts: {e}")))?;
    Ok(AccountRecord {
        facts,
        list: col(r, 2)?,
        revision: u64::try_from(revision)
            .map_err(|_| corrupt(format_args!("revision {revision}")))?,
    })
}

fn range<E>(what: &'static str) -> impl Fn(Fail<E>) -> Fail<StoreError> {
    move |_| Fail::Refused(StoreError::OutOfRange(what))
}

impl Store for PgStore {
    fn account(&self, account: &AccountId) -> Result<Option<AccountRecord>, StoreError> {
        let account = *account;
        self.db()
            .run(move |c| async move {
                let st = c
                    .prepare_cached("SELECT revision, facts, list FROM accounts WHERE account = $1")
                    .await?;
                let id = account.to_bytes();
                let Some(row) = c.query_opt(&st, &[&&id[..]]).await? else {
                    return Ok(None);
                };
                let record = account_row(&row).map_err(store_corrupt)?;
                if record.account() != account {
                    return Err(store_corrupt(corrupt(
                        "an account row holds another account's facts",
                    )));
                }
                Ok(Some(record))
            })
            .map_err(store)
    }

    fn put_account(&self, record: &AccountRecord) -> Result<bool, StoreError> {
        let record = record.clone();
        self.db()
            .run(move |c| {
                let record = record.clone();
                async move {
                    let revision =
                        int::<()>(record.revision, "revision").map_err(range("revision"))?;
                    let active = record
                        .active_since()
                        .map(|at| ms::<()>(at, "last activity").map_err(range("last activity")))
                        .transpose()?;
                    let account = record.account().to_bytes();
                    let facts = record.facts.to_bytes();
                    let (account, facts) = (&account[..], &facts[..]);
                    // The list's history (Store::lists_after) is written by
                    // the same statement as the record, so both commit or
                    // neither does (a version past bigint keeps none).
                    let version = i64::try_from(record.facts.list_version()).ok();
                    let keep = !record.list.is_empty() && version.is_some();
                    let version = version.unwrap_or(0);
                    let floor = version.saturating_sub(
                        i64::try_from(crate::store::LIST_HISTORY).unwrap_or(i64::MAX),
                    );
                    // decision: insert only if absent (revision 1), else
                    // only over the revision before.
                    let write = if record.revision == 1 {
                        "INSERT INTO accounts (account, revision, active_since, facts, list)
                         VALUES ($1, $8::bigint, $2::bigint, $3, $4)
                         ON CONFLICT (account) DO NOTHING RETURNING 1"
                    } else {
                        "UPDATE accounts SET revision = $8::bigint,
                                active_since = $2::bigint, facts = $3, list = $4
                          WHERE account = $1 AND revision = $8::bigint - 1
                         RETURNING 1"
                    };
                    let sql = format!(
                        "WITH up AS ({write}),
                         ins AS (INSERT INTO account_lists (account, version, list)
                                 SELECT $1, $5::bigint, $4
                                  WHERE $6::boolean AND EXISTS (SELECT 1 FROM up)
                                 ON CONFLICT (account, version) DO NOTHING RETURNING 1),
                         del AS (DELETE FROM account_lists
                                  WHERE account = $1 AND version <= $7::bigint
                                    AND $6::boolean AND EXISTS (SELECT 1 FROM up)
                                 RETURNING 1)
                         SELECT count(*) FROM up"
                    );
                    let st = c.prepare_cached(&sql).await?;
                    let row = c
                        .query_one(
                            &st,
                            &[
                                &account,
                                &active,
                                &facts,
                                &record.list,
                                &version,
                                &keep,
                                &floor,
                                &revision,
                            ],
                        )
                        .await
                        .map_err(db::at_commit)?;
                    Ok(row.get::<_, i64>(0) == 1)
                }
            })
            .map_err(store)
    }

    fn lists_after(&self, account: &AccountId, after: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let account = *account;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        self.db()
            .run(move |c| async move {
                let st = c
                    .prepare_cached(
                        "SELECT list FROM account_lists WHERE account = $1 AND version > $2
                          ORDER BY version",
                    )
                    .await?;
                let id = account.to_bytes();
                let rows = c.query(&st, &[&&id[..], &after]).await?;
                Ok(rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect())
            })
            .map_err(store)
    }

    fn delete_account(&self, account: &AccountId, revision: u64) -> Result<bool, StoreError> {
        let account = *account;
        self.db()
            .run(move |c| async move {
                let revision = int::<()>(revision, "revision").map_err(range("revision"))?;
                // The record and its list history go in one statement.
                let st = c
                    .prepare_cached(
                        "WITH d AS (DELETE FROM accounts WHERE account = $1 AND revision = $2
                                    RETURNING 1),
                              h AS (DELETE FROM account_lists
                                     WHERE account = $1 AND EXISTS (SELECT 1 FROM d)
                                    RETURNING 1)
                         SELECT count(*) FROM d",
                    )
                    .await?;
                let id = account.to_bytes();
                // decision
                let row = c
                    .query_one(&st, &[&&id[..], &revision])
                    .await
                    .map_err(db::at_commit)?;
                Ok(row.get::<_, i64>(0) == 1)
            })
            .map_err(store)
    }

    fn due_accounts(&self, before: Timestamp, limit: usize) -> Result<Vec<AccountId>, StoreError> {
        // Past the bigint range, every stored time is before it.
        let before = i64::try_from(before.as_unix_millis()).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db()
            .run(move |c| async move {
                let st = c
                    .prepare_cached(
                        "SELECT account FROM accounts WHERE active_since <= $1
                          ORDER BY active_since LIMIT $2",
                    )
                    .await?;
                let rows = c.query(&st, &[&before, &limit]).await?;
                rows.iter()
                    .map(|r| {
                        col::<&[u8]>(r, 0)
                            .and_then(|b| array(b, "account"))
                            .map(AccountId::from_bytes)
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(store_corrupt)
            })
            .map_err(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_postgres_migration_file_is_compiled_in_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        let compiled: Vec<String> = migrate::MIGRATIONS
            .iter()
            .map(|m| m.1.to_string())
            .collect();
        assert_eq!(files, compiled);
        for (i, (version, file, _)) in migrate::MIGRATIONS.iter().enumerate() {
            assert_eq!(*version as usize, i + 1);
            assert!(file.starts_with(&format!("{version:04}_")), "{file}");
        }
        assert_eq!(
            migrate::MIGRATIONS.last().map(|m| m.0),
            Some(PG_SCHEMA_VERSION)
        );
    }

    #[test]
    fn the_target_names_no_credentials() {
        let t = target_of("postgres://relay:secret@127.0.0.1:5433/devicelink");
        assert_eq!(t, "postgres 127.0.0.1:5433/devicelink");
        assert!(!target_of("host=/tmp port=1 user=a password=hunter2").contains("hunter2"));
    }

    #[test]
    fn an_unreachable_database_is_unavailable_not_a_hang() {
        // Nothing listens on port 1 of loopback.
        let options = PgOptions {
            connect_wait: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(200),
            ..PgOptions::default()
        };
        let r = PgStore::connect_with("postgres://u@127.0.0.1:1/db", options);
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    }
}
