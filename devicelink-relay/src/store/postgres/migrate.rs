//! Versioned migrations of the PostgreSQL schema
//! (`migrations/postgres/NNNN_name.sql`, compiled in).
//!
//! All missing migrations are applied in **one transaction** that first
//! takes a transaction-scoped advisory lock ([`MIGRATION_LOCK`]): nodes
//! starting together queue on the lock, and each later one finds the
//! versions already recorded in `schema_migrations` and applies nothing.
//! DDL is transactional in PostgreSQL, so a failed migration leaves the
//! schema as it was.

use deadpool_postgres::Object;

use super::db::{at_commit, Fail};
use crate::store::StoreError;

/// The migrations, in order: (version, file, SQL).
pub(crate) const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "0001_tokens_accounts.sql",
        include_str!("../../../migrations/postgres/0001_tokens_accounts.sql"),
    ),
    (
        2,
        "0002_cluster.sql",
        include_str!("../../../migrations/postgres/0002_cluster.sql"),
    ),
    (
        3,
        "0003_source_budgets.sql",
        include_str!("../../../migrations/postgres/0003_source_budgets.sql"),
    ),
    (
        4,
        "0004_list_history.sql",
        include_str!("../../../migrations/postgres/0004_list_history.sql"),
    ),
];

/// The schema version this build writes (the last migration's).
pub const PG_SCHEMA_VERSION: u32 = 4;

/// The advisory lock key every node takes while migrating ("devicelk").
pub const MIGRATION_LOCK: i64 = 0x6465_7669_6365_6c6b;

/// Applies what the database lacks; returns the schema version.
pub(crate) async fn migrate(client: &mut Object) -> Result<u32, Fail<StoreError>> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
           version integer PRIMARY KEY,
           name text NOT NULL,
           applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::integer FROM schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    let current = u32::try_from(current)
        .map_err(|_| Fail::Refused(StoreError::Corrupt(format!("schema version {current}"))))?;
    if current > PG_SCHEMA_VERSION {
        return Err(Fail::Refused(StoreError::SchemaTooNew {
            found: current,
            supported: PG_SCHEMA_VERSION,
        }));
    }
    for &(version, file, sql) in MIGRATIONS {
        if version <= current {
            continue;
        }
        tx.batch_execute(sql).await.map_err(|e| {
            Fail::Refused(StoreError::Unavailable(format!("migration {file}: {e}")))
        })?;
        let v = i32::try_from(version).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&v, &file],
        )
        .await?;
        tracing::info!(version, file, "applied migration");
    }
    tx.commit().await.map_err(at_commit)?;
    Ok(PG_SCHEMA_VERSION)
}

/// The recorded schema version.
pub(crate) async fn version(client: &Object) -> Result<u32, Fail<StoreError>> {
    let v: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0)::integer FROM schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    u32::try_from(v).map_err(|_| Fail::Refused(StoreError::Corrupt(format!("schema version {v}"))))
}
