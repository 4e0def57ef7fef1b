//! Versioned migrations: `PRAGMA user_version` holds the schema version; migration N is
//! `migrations/000N_*.sql`, applied in its own immediate transaction.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{SqlResult, StoreError};

/// Every migration, in order: index 0 takes a fresh file to version 1. Adding a version means
/// adding one SQL file here and one fixture in `tests/it/fixtures/` (the upgrade test opens a
/// database created at every earlier version).
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_history_bytes.sql"),
    include_str!("migrations/0003_events_tasks.sql"),
    include_str!("migrations/0004_tokens.sql"),
    include_str!("migrations/0005_scripts.sql"),
    include_str!("migrations/0006_kv_without_rowid.sql"),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings `conn` to version `target` (at most [`SCHEMA_VERSION`]). A file newer than this build
/// is refused rather than touched.
pub(crate) fn migrate(conn: &mut Connection, path: &str, target: u32) -> Result<(), StoreError> {
    debug_assert!(target <= SCHEMA_VERSION);
    loop {
        // Read the version inside the write transaction, so two processes opening one file at
        // once cannot both apply the same migration.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        let found: u32 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .sql()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: path.to_owned(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        if found >= target {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[found as usize]).sql()?;
        tx.pragma_update(None, "user_version", found + 1).sql()?;
        tx.commit().sql()?;
    }
}

/// The schema version of an open connection.
pub(crate) fn version(conn: &Connection) -> Result<u32, StoreError> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
        .sql()
}
