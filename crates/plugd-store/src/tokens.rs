//! API tokens: the SHA-256 of each secret with its name, scopes and expiry. The secret itself is
//! never stored (the caller hashes it); a lookup is by hash.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::{SqlResult, StoreError};
use crate::writer::Ctx;

/// One stored token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// Short public id (shown in listings and logs; not secret).
    pub id: String,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
    /// The operator's label, unique among tokens.
    pub name: String,
    /// Scopes as written (`admin`, `read`, `call:hello/greet`, ...).
    pub scopes: Vec<String>,
    /// When it was created, in milliseconds since the Unix epoch (set by the store).
    pub created_at_ms: u64,
    /// When it stops working, `None` for never.
    pub expires_at_ms: Option<u64>,
}

const COLUMNS: &str = "id, hash, name, scopes, created_at_ms, expires_at_ms";

fn record(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let hash: Vec<u8> = row.get(1)?;
    let scopes: String = row.get(3)?;
    Ok(TokenRecord {
        id: row.get(0)?,
        hash: hash.try_into().unwrap_or([0; 32]),
        name: row.get(2)?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        created_at_ms: row.get(4)?,
        expires_at_ms: row.get(5)?,
    })
}

pub(crate) fn insert(
    conn: &Connection,
    ctx: &Ctx,
    token: &TokenRecord,
) -> Result<TokenRecord, StoreError> {
    let taken: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM tokens WHERE name = ?1)")
        .sql()?
        .query_row([&token.name], |row| row.get(0))
        .sql()?;
    if taken {
        return Err(StoreError::TokenNameTaken {
            name: token.name.clone(),
        });
    }
    let mut stored = token.clone();
    stored.created_at_ms = ctx.now_ms;
    conn.prepare_cached(&format!(
        "INSERT INTO tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    ))
    .sql()?
    .execute(params![
        stored.id,
        &stored.hash[..],
        stored.name,
        stored.scopes.join(" "),
        stored.created_at_ms,
        stored.expires_at_ms
    ])
    .sql()?;
    Ok(stored)
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<TokenRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM tokens ORDER BY created_at_ms, id"
    ))
    .sql()?
    .query_map([], record)
    .sql()?
    .collect::<Result<_, _>>()
    .sql()
}

pub(crate) fn by_hash(
    conn: &Connection,
    hash: &[u8; 32],
) -> Result<Option<TokenRecord>, StoreError> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM tokens WHERE hash = ?1"))
        .sql()?
        .query_row([&hash[..]], record)
        .optional()
        .sql()
}

/// Deletes the token whose id or name is `which`; returns it, or `None` if there is none.
pub(crate) fn revoke(conn: &Connection, which: &str) -> Result<Option<TokenRecord>, StoreError> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM tokens WHERE id = ?1 OR name = ?1"
        ))
        .sql()?
        .query_row([which], record)
        .optional()
        .sql()?;
    if let Some(token) = &found {
        conn.prepare_cached("DELETE FROM tokens WHERE id = ?1")
            .sql()?
            .execute([&token.id])
            .sql()?;
    }
    Ok(found)
}
