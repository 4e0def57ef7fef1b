//! kv on one connection: validation (done by the caller, before queueing), commits with their
//! inverse, undo/redo by flipping a stored commit, reads.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::error::{SqlResult, StoreError, shown_key};
use crate::writer::Ctx;
use crate::{Commit, CommitId, KvLimits};

/// A commit that passed every check that needs no database: keys valid, values serialised and
/// within size, no duplicates, not empty.
pub(crate) struct Checked {
    /// Each touched key with its new JSON text (`None` = delete), puts first.
    ops: Vec<(String, Option<String>)>,
    expect: Vec<(String, Option<Value>)>,
    quota: u64,
}

pub(crate) fn check(commit: Commit, limits: &KvLimits) -> Result<Checked, StoreError> {
    if commit.puts.is_empty() && commit.deletes.is_empty() {
        return Err(StoreError::EmptyCommit);
    }
    let mut seen = HashSet::with_capacity(commit.puts.len() + commit.deletes.len());
    let mut ops = Vec::with_capacity(commit.puts.len() + commit.deletes.len());
    for (key, value) in commit.puts {
        check_key(&key, limits)?;
        let text = serde_json::to_string(&value)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialise a value: {e}")))?;
        if text.len() > limits.max_value {
            return Err(StoreError::ValueTooLarge {
                key: shown_key(&key),
                len: text.len(),
                max: limits.max_value,
            });
        }
        if !seen.insert(key.clone()) {
            return Err(StoreError::DuplicateKey {
                key: shown_key(&key),
            });
        }
        ops.push((key, Some(text)));
    }
    for key in commit.deletes {
        check_key(&key, limits)?;
        if !seen.insert(key.clone()) {
            return Err(StoreError::DuplicateKey {
                key: shown_key(&key),
            });
        }
        ops.push((key, None));
    }
    for (key, _) in &commit.expect {
        check_key(key, limits)?;
    }
    Ok(Checked {
        ops,
        expect: commit.expect,
        quota: limits.quota,
    })
}

/// The key rules: non-empty, no NUL, at most `max_key` bytes.
pub(crate) fn check_key(key: &str, limits: &KvLimits) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if key.contains('\0') {
        return Err(StoreError::KeyHasNul {
            key: shown_key(key),
        });
    }
    if key.len() > limits.max_key {
        return Err(StoreError::KeyTooLong {
            key: shown_key(key),
            len: key.len(),
            max: limits.max_key,
        });
    }
    Ok(())
}

/// Applies a checked commit: expectations, then quota, then the writes, the inverse and the
/// history. Runs inside the writer's savepoint, but refuses before writing anything anyway.
pub(crate) fn commit(
    conn: &Connection,
    ctx: &Ctx,
    plugin: &str,
    checked: Checked,
) -> Result<CommitId, StoreError> {
    for (key, want) in &checked.expect {
        let current = get_text(conn, plugin, key)?
            .map(|text| parse(&text))
            .transpose()?;
        if current.as_ref() != want.as_ref() {
            return Err(StoreError::Conflict {
                key: shown_key(key),
            });
        }
    }
    let mut meta = meta(conn, plugin)?;
    let before = current_values(conn, plugin, checked.ops.iter().map(|(k, _)| k.as_str()))?;
    let delta = delta(&checked.ops, &before);
    let used = meta.bytes.saturating_add_signed(delta);
    // A commit that frees space is always allowed, even over a quota that was lowered.
    if delta > 0 && used > checked.quota {
        return Err(StoreError::QuotaExceeded {
            plugin: plugin.to_owned(),
            used,
            quota: checked.quota,
        });
    }
    write(conn, plugin, &checked.ops)?;
    // A new commit clears the redo stack (the counts in `kv_meta` spare the scans when empty).
    if meta.undone > 0 {
        let redo_bytes: u64 = conn
            .prepare_cached(
                "SELECT COALESCE(SUM(bytes), 0) FROM kv_commits WHERE plugin = ?1 AND undone = 1",
            )
            .sql()?
            .query_row([plugin], |row| row.get(0))
            .sql()?;
        meta.history = meta.history.saturating_sub(redo_bytes);
        conn.prepare_cached(
            "DELETE FROM kv_commit_ops WHERE plugin = ?1 AND id >= (SELECT MIN(id) FROM kv_commits WHERE plugin = ?1 AND undone = 1)",
        )
        .sql()?
        .execute([plugin])
        .sql()?;
        conn.prepare_cached("DELETE FROM kv_commits WHERE plugin = ?1 AND undone = 1")
            .sql()?
            .execute([plugin])
            .sql()?;
        meta.undone = 0;
    }
    let id = meta.next_commit;
    if ctx.undo_depth > 0 {
        // Deleting a key that is not there changes nothing and needs no history: undo leaves it
        // absent, redo deletes nothing. (A plugin cannot grow the history with them.)
        let recorded: Vec<(&String, &Option<String>)> = checked
            .ops
            .iter()
            .zip(&before)
            .filter(|((_, new), old)| new.is_some() || old.is_some())
            .map(|((key, _), old)| (key, old))
            .collect();
        let bytes: u64 = recorded
            .iter()
            .map(|(key, old)| row_bytes(key, old.as_deref()))
            .sum();
        conn.prepare_cached(
            "INSERT INTO kv_commits (plugin, id, undone, at_ms, bytes) VALUES (?1, ?2, 0, ?3, ?4)",
        )
        .sql()?
        .execute(params![plugin, id, ctx.now_ms, bytes])
        .sql()?;
        let mut insert = conn
            .prepare_cached(
                "INSERT INTO kv_commit_ops (plugin, id, key, value) VALUES (?1, ?2, ?3, ?4)",
            )
            .sql()?;
        for (key, old) in recorded {
            insert.execute(params![plugin, id, key, old]).sql()?;
        }
        meta.applied += 1;
        meta.history += bytes;
    }
    // Drop the oldest commits beyond the depth (one per commit, more if the depth was lowered),
    // then while the history holds more bytes than the quota: what a plugin may keep includes
    // what it keeps for undo.
    while meta.applied > ctx.undo_depth as u64 || (meta.applied > 0 && meta.history > checked.quota)
    {
        drop_oldest(conn, plugin, &mut meta)?;
    }
    meta.bytes = used;
    meta.next_commit = id + 1;
    set_meta(conn, plugin, &meta)?;
    Ok(CommitId(id))
}

/// Undo (`undone` = 0 → 1, newest first) or redo (1 → 0, most recently undone first).
pub(crate) fn flip(
    conn: &Connection,
    plugin: &str,
    undo: bool,
) -> Result<Option<CommitId>, StoreError> {
    let pick = if undo {
        "SELECT id FROM kv_commits WHERE plugin = ?1 AND undone = 0 ORDER BY id DESC LIMIT 1"
    } else {
        "SELECT id FROM kv_commits WHERE plugin = ?1 AND undone = 1 ORDER BY id ASC LIMIT 1"
    };
    let Some(id) = conn
        .prepare_cached(pick)
        .sql()?
        .query_row([plugin], |row| row.get::<_, u64>(0))
        .optional()
        .sql()?
    else {
        return Ok(None);
    };
    let ops: Vec<(String, Option<String>)> = conn
        .prepare_cached("SELECT key, value FROM kv_commit_ops WHERE plugin = ?1 AND id = ?2")
        .sql()?
        .query_map(params![plugin, id], |row| Ok((row.get(0)?, row.get(1)?)))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()?;
    let current = current_values(conn, plugin, ops.iter().map(|(k, _)| k.as_str()))?;
    // No quota check: undo restores exactly the state before the commit and redo the state after
    // it, both of which were accepted when they were written.
    let delta = delta(&ops, &current);
    write(conn, plugin, &ops)?;
    let mut keep = conn
        .prepare_cached(
            "UPDATE kv_commit_ops SET value = ?4 WHERE plugin = ?1 AND id = ?2 AND key = ?3",
        )
        .sql()?;
    for ((key, _), now) in ops.iter().zip(&current) {
        keep.execute(params![plugin, id, key, now]).sql()?;
    }
    // The commit now keeps the values it flips back to: its size in the history changes.
    let was: u64 = ops.iter().map(|(k, v)| row_bytes(k, v.as_deref())).sum();
    let now: u64 = ops
        .iter()
        .zip(&current)
        .map(|((k, _), v)| row_bytes(k, v.as_deref()))
        .sum();
    conn.prepare_cached(
        "UPDATE kv_commits SET undone = ?3, bytes = ?4 WHERE plugin = ?1 AND id = ?2",
    )
    .sql()?
    .execute(params![plugin, id, undo, now])
    .sql()?;
    let mut meta = meta(conn, plugin)?;
    meta.history = (meta.history + now).saturating_sub(was);
    meta.bytes = meta.bytes.saturating_add_signed(delta);
    if undo {
        meta.applied -= 1;
        meta.undone += 1;
    } else {
        meta.applied += 1;
        meta.undone -= 1;
    }
    set_meta(conn, plugin, &meta)?;
    Ok(Some(CommitId(id)))
}

pub(crate) fn get(conn: &Connection, plugin: &str, key: &str) -> Result<Option<Value>, StoreError> {
    get_text(conn, plugin, key)?
        .map(|text| parse(&text))
        .transpose()
}

pub(crate) fn list(
    conn: &Connection,
    plugin: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, Value)>, StoreError> {
    // A range on the primary key instead of LIKE/substr, so the index bounds both ends. SQLite
    // compares TEXT bytewise (BINARY), which for UTF-8 is code point order, like Rust's `str`.
    let upper = prefix_upper_bound(prefix);
    let lower = match after {
        Some(after) if after >= prefix => after,
        _ => prefix,
    };
    let strict = after.is_some_and(|after| after >= prefix);
    let sql = match (strict, upper.is_some()) {
        (true, true) => {
            "SELECT key, value FROM kv WHERE plugin = ?1 AND key > ?2 AND key < ?3 ORDER BY key LIMIT ?4"
        }
        (true, false) => {
            "SELECT key, value FROM kv WHERE plugin = ?1 AND key > ?2 AND ?3 IS NULL ORDER BY key LIMIT ?4"
        }
        (false, true) => {
            "SELECT key, value FROM kv WHERE plugin = ?1 AND key >= ?2 AND key < ?3 ORDER BY key LIMIT ?4"
        }
        (false, false) => {
            "SELECT key, value FROM kv WHERE plugin = ?1 AND key >= ?2 AND ?3 IS NULL ORDER BY key LIMIT ?4"
        }
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // Rows are read one by one and the page stops once it holds `PAGE_BYTES` of text (always at
    // least one row), so a page of large values never makes one huge answer in memory.
    let mut stmt = conn.prepare_cached(sql).sql()?;
    let mut rows = stmt.query(params![plugin, lower, upper, limit]).sql()?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.next().sql()? {
        let (key, text): (String, String) = (row.get(0).sql()?, row.get(1).sql()?);
        bytes += key.len() + text.len();
        out.push((key, parse(&text)?));
        if bytes >= PAGE_BYTES {
            break;
        }
    }
    Ok(out)
}

/// The most text one `kv_list` page collects (past it, the page ends early: ask again from its
/// last key).
pub const PAGE_BYTES: usize = 1 << 20;

pub(crate) fn usage(conn: &Connection, plugin: &str) -> Result<u64, StoreError> {
    Ok(meta(conn, plugin)?.bytes)
}

/// The smallest string greater than every string that starts with `prefix`, or `None` when
/// there is none (the empty prefix, or one made only of `char::MAX`).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 + 1 {
            0xD800 => Some('\u{E000}'),
            n => char::from_u32(n),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn parse(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("a stored value is not JSON: {e}")))
}

fn get_text(conn: &Connection, plugin: &str, key: &str) -> Result<Option<String>, StoreError> {
    conn.prepare_cached("SELECT value FROM kv WHERE plugin = ?1 AND key = ?2")
        .sql()?
        .query_row([plugin, key], |row| row.get(0))
        .optional()
        .sql()
}

fn current_values<'a>(
    conn: &Connection,
    plugin: &str,
    keys: impl Iterator<Item = &'a str>,
) -> Result<Vec<Option<String>>, StoreError> {
    keys.map(|key| get_text(conn, plugin, key)).collect()
}

/// Bytes gained (or freed, negative) by writing `ops` over `before`.
fn delta(ops: &[(String, Option<String>)], before: &[Option<String>]) -> i64 {
    let size = |key: &str, value: &Option<String>| {
        value.as_ref().map_or(0, |v| (key.len() + v.len()) as i64)
    };
    ops.iter()
        .zip(before)
        .map(|((key, new), old)| size(key, new) - size(key, old))
        .sum()
}

fn write(
    conn: &Connection,
    plugin: &str,
    ops: &[(String, Option<String>)],
) -> Result<(), StoreError> {
    const PUT: &str = "INSERT INTO kv (plugin, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value";
    const DELETE: &str = "DELETE FROM kv WHERE plugin = ?1 AND key = ?2";
    // Each statement is taken from the cache only if the commit needs it.
    let (mut put, mut delete) = (None, None);
    for (key, value) in ops {
        match value {
            Some(value) => {
                if put.is_none() {
                    put = Some(conn.prepare_cached(PUT).sql()?);
                }
                if let Some(put) = &mut put {
                    put.execute(params![plugin, key, value]).sql()?;
                }
            }
            None => {
                if delete.is_none() {
                    delete = Some(conn.prepare_cached(DELETE).sql()?);
                }
                if let Some(delete) = &mut delete {
                    delete.execute(params![plugin, key]).sql()?;
                }
            }
        }
    }
    Ok(())
}

/// A plugin's row in `kv_meta`.
struct Meta {
    /// Bytes used: keys plus JSON values.
    bytes: u64,
    next_commit: u64,
    /// Commits on the undo stack.
    applied: u64,
    /// Commits on the redo stack.
    undone: u64,
    /// Bytes the undo and redo stacks keep (keys plus stored values), held within the quota.
    history: u64,
}

fn meta(conn: &Connection, plugin: &str) -> Result<Meta, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT bytes, next_commit, applied, undone, history FROM kv_meta WHERE plugin = ?1",
        )
        .sql()?
        .query_row([plugin], |row| {
            Ok(Meta {
                bytes: row.get(0)?,
                next_commit: row.get(1)?,
                applied: row.get(2)?,
                undone: row.get(3)?,
                history: row.get(4)?,
            })
        })
        .optional()
        .sql()?
        .unwrap_or(Meta {
            bytes: 0,
            next_commit: 1,
            applied: 0,
            undone: 0,
            history: 0,
        }))
}

/// The bytes one stored history row keeps: its key and, unless absent, its JSON value.
fn row_bytes(key: &str, value: Option<&str>) -> u64 {
    (key.len() + value.map_or(0, str::len)) as u64
}

/// Drops the oldest commit of the undo stack (the history is held within the quota and depth).
fn drop_oldest(conn: &Connection, plugin: &str, meta: &mut Meta) -> Result<(), StoreError> {
    // One statement finds and removes the commit (applied ids are below undone ids, so the
    // oldest applied commit is the plugin's oldest), a second its keys.
    let (oldest, bytes): (u64, u64) = conn
        .prepare_cached(
            "DELETE FROM kv_commits WHERE plugin = ?1 AND id = (SELECT MIN(id) FROM kv_commits WHERE plugin = ?1 AND undone = 0) RETURNING id, bytes",
        )
        .sql()?
        .query_row([plugin], |row| Ok((row.get(0)?, row.get(1)?)))
        .sql()?;
    conn.prepare_cached("DELETE FROM kv_commit_ops WHERE plugin = ?1 AND id = ?2")
        .sql()?
        .execute(params![plugin, oldest])
        .sql()?;
    meta.applied -= 1;
    meta.history = meta.history.saturating_sub(bytes);
    Ok(())
}

fn set_meta(conn: &Connection, plugin: &str, meta: &Meta) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO kv_meta (plugin, bytes, next_commit, applied, undone, history) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (plugin) DO UPDATE SET bytes = excluded.bytes, next_commit = excluded.next_commit,
             applied = excluded.applied, undone = excluded.undone, history = excluded.history",
    )
    .sql()?
    .execute(params![plugin, meta.bytes, meta.next_commit, meta.applied, meta.undone, meta.history])
    .sql()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::prefix_upper_bound;

    #[test]
    fn upper_bounds() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        assert_eq!(
            prefix_upper_bound("a\u{D7FF}").as_deref(),
            Some("a\u{E000}")
        );
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
    }
}
