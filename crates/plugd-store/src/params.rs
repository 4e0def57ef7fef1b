//! Params and lifecycle records on one connection: the current value is the newest revision.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::ParamsRevision;
use crate::error::{SqlResult, StoreError};
use crate::writer::Ctx;

pub(crate) fn get(conn: &Connection, plugin: &str) -> Result<Option<Value>, StoreError> {
    let text: Option<String> = conn
        .prepare_cached("SELECT value FROM params WHERE plugin = ?1 ORDER BY revision DESC LIMIT 1")
        .sql()?
        .query_row([plugin], |row| row.get(0))
        .optional()
        .sql()?;
    text.map(|text| parse(&text)).transpose()
}

pub(crate) fn set(
    conn: &Connection,
    ctx: &Ctx,
    plugin: &str,
    value: &str,
    source: &str,
) -> Result<u64, StoreError> {
    let revision: u64 = conn
        .prepare_cached("SELECT COALESCE(MAX(revision), 0) + 1 FROM params WHERE plugin = ?1")
        .sql()?
        .query_row([plugin], |row| row.get(0))
        .sql()?;
    conn.prepare_cached(
        "INSERT INTO params (plugin, revision, value, source, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .sql()?
    .execute(params![plugin, revision, value, source, ctx.now_ms])
    .sql()?;
    Ok(revision)
}

pub(crate) fn history(
    conn: &Connection,
    plugin: &str,
    limit: usize,
) -> Result<Vec<ParamsRevision>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<(u64, String, String, u64)> = conn
        .prepare_cached(
            "SELECT revision, value, source, at_ms FROM params WHERE plugin = ?1
             ORDER BY revision DESC LIMIT ?2",
        )
        .sql()?
        .query_map(params![plugin, limit], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .sql()?
        .collect::<Result<_, _>>()
        .sql()?;
    rows.into_iter()
        .map(|(revision, text, source, at_ms)| {
            Ok(ParamsRevision {
                revision,
                value: parse(&text)?,
                source,
                at_ms,
            })
        })
        .collect()
}

/// Deletes everything stored for `plugin` except its uninstalled mark.
pub(crate) fn forget(conn: &Connection, plugin: &str) -> Result<(), StoreError> {
    for table in ["kv", "kv_meta", "kv_commits", "kv_commit_ops", "params"] {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE plugin = ?1"))
            .sql()?
            .execute([plugin])
            .sql()?;
    }
    Ok(())
}

pub(crate) fn set_uninstalled(
    conn: &Connection,
    ctx: &Ctx,
    plugin: &str,
    uninstalled: bool,
) -> Result<(), StoreError> {
    if uninstalled {
        conn.prepare_cached("INSERT OR IGNORE INTO uninstalled (plugin, at_ms) VALUES (?1, ?2)")
            .sql()?
            .execute(params![plugin, ctx.now_ms])
            .sql()?;
    } else {
        conn.prepare_cached("DELETE FROM uninstalled WHERE plugin = ?1")
            .sql()?
            .execute([plugin])
            .sql()?;
    }
    Ok(())
}

pub(crate) fn uninstalled(conn: &Connection) -> Result<Vec<String>, StoreError> {
    conn.prepare_cached("SELECT plugin FROM uninstalled ORDER BY plugin")
        .sql()?
        .query_map([], |row| row.get(0))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()
}

fn parse(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("stored params are not JSON: {e}")))
}
