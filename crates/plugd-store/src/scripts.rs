//! The script manager's records: scripts with immutable, content-addressed versions, their runs
//! and templates. The store keeps metadata as opaque JSON; `plugd-scripts` gives it meaning.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

use crate::error::{SqlResult, StoreError};
use crate::writer::Ctx;

/// A registered script: its id, the version runs use by default, and how many it has.
#[derive(Clone, Debug, PartialEq)]
pub struct ScriptRecord {
    /// The script id.
    pub id: String,
    /// The version a run uses when none is named.
    pub current: u64,
    /// The newest version number.
    pub latest: u64,
    /// When it was registered, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When a version was last added or made current.
    pub updated_at_ms: u64,
}

/// One version of a script, as stored (never changed once written).
#[derive(Clone, Debug, PartialEq)]
pub struct ScriptVersion {
    /// The script id.
    pub script_id: String,
    /// 1 for the first version, then one more per new content.
    pub version: u64,
    /// `sha256:<hex>` of its source and metadata.
    pub digest: String,
    /// The Python source.
    pub source: String,
    /// Its metadata: name, description, tags, permissions, limits, dependencies.
    pub meta: Value,
    /// Its uv lock, when it has dependencies.
    pub lock: Option<String>,
    /// When it was added.
    pub created_at_ms: u64,
}

/// A version to add: [`Store::add_script_version`](crate::Store::add_script_version).
#[derive(Clone, Debug, PartialEq)]
pub struct NewScriptVersion {
    /// The script id.
    pub script_id: String,
    /// `sha256:<hex>` of its source and metadata.
    pub digest: String,
    /// The Python source.
    pub source: String,
    /// Its metadata.
    pub meta: Value,
    /// Its uv lock, when it has dependencies.
    pub lock: Option<String>,
}

/// Whether adding a version may create the script, or must find it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddMode {
    /// A new script: refused with [`StoreError::ScriptExists`] if the id is taken.
    Create,
    /// A new version of an existing script: refused with [`StoreError::ScriptNotFound`].
    Edit,
    /// Either (an import).
    Upsert,
}

/// What [`Store::add_script_version`](crate::Store::add_script_version) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddedVersion {
    /// The version that now holds this content (and is current).
    pub version: u64,
    /// `false` when a version with the same digest existed already (it was made current).
    pub created: bool,
}

/// A run to record: [`Store::insert_run`](crate::Store::insert_run).
#[derive(Clone, Debug, PartialEq)]
pub struct NewRun {
    /// The script id; `None` for a file run without registration.
    pub script_id: Option<String>,
    /// The version run; `None` for a file run.
    pub version: Option<u64>,
    /// The digest of what runs.
    pub digest: String,
    /// The script id or the file's name, for listings.
    pub label: String,
    /// The arguments, a JSON object.
    pub args: Value,
    /// Who asked: a token name, `cli`, `anonymous`.
    pub who: String,
}

/// How a run ended: [`Store::finish_run`](crate::Store::finish_run).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct RunEnd {
    /// `succeeded`, `failed`, `cancelled` or `killed`.
    pub state: String,
    /// The process's exit status, when it exited.
    pub exit_code: Option<i64>,
    /// Why it failed or was killed (a limit, a signal, a validation error).
    pub reason: Option<String>,
    /// The highest memory use seen, in bytes.
    pub peak_rss: Option<u64>,
    /// CPU time used, in milliseconds.
    pub cpu_ms: Option<u64>,
    /// The output excerpt kept (bounded by the caller).
    pub output: String,
    /// How many bytes of output the run wrote in all.
    pub output_bytes: u64,
    /// The JSON result the script reported.
    pub result: Option<Value>,
}

/// One recorded run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    /// The run id, increasing.
    pub id: u64,
    /// The script id; `None` for a file run.
    pub script_id: Option<String>,
    /// The version run; `None` for a file run.
    pub version: Option<u64>,
    /// The digest of what ran.
    pub digest: String,
    /// The script id or the file's name.
    pub label: String,
    /// The arguments.
    pub args: Value,
    /// Who asked.
    pub who: String,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled` or `killed`.
    pub state: String,
    /// When it was asked for.
    pub queued_at_ms: u64,
    /// When its process started.
    pub started_at_ms: Option<u64>,
    /// When it ended.
    pub ended_at_ms: Option<u64>,
    /// The exit status, when it exited.
    pub exit_code: Option<i64>,
    /// Why it failed or was killed.
    pub reason: Option<String>,
    /// The highest memory use seen, in bytes.
    pub peak_rss: Option<u64>,
    /// CPU time used, in milliseconds.
    pub cpu_ms: Option<u64>,
    /// The output excerpt kept.
    pub output: String,
    /// How many bytes of output it wrote in all.
    pub output_bytes: u64,
    /// The JSON result it reported.
    pub result: Option<Value>,
}

/// A template: a script with `{{ variable }}` placeholders and its typed variables.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateRecord {
    /// The template name.
    pub name: String,
    /// What it makes.
    pub description: String,
    /// The template text.
    pub source: String,
    /// Its variables (a JSON array, as `plugd-scripts` writes them).
    pub vars: Value,
    /// When it was first stored.
    pub created_at_ms: u64,
    /// When it was last replaced.
    pub updated_at_ms: u64,
}

fn json_col(row: &Row<'_>, i: usize) -> rusqlite::Result<Value> {
    let text: String = row.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn opt_json_col(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<Value>> {
    let text: Option<String> = row.get(i)?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

const SCRIPT_COLUMNS: &str = "s.id, s.current, (SELECT MAX(version) FROM script_versions v WHERE v.script_id = s.id), s.created_at_ms, s.updated_at_ms";

fn script_record(row: &Row<'_>) -> rusqlite::Result<ScriptRecord> {
    Ok(ScriptRecord {
        id: row.get(0)?,
        current: row.get(1)?,
        latest: row.get::<_, Option<u64>>(2)?.unwrap_or(0),
        created_at_ms: row.get(3)?,
        updated_at_ms: row.get(4)?,
    })
}

const VERSION_COLUMNS: &str = "script_id, version, digest, source, meta, lock, created_at_ms";

fn version_record(row: &Row<'_>) -> rusqlite::Result<ScriptVersion> {
    Ok(ScriptVersion {
        script_id: row.get(0)?,
        version: row.get(1)?,
        digest: row.get(2)?,
        source: row.get(3)?,
        meta: json_col(row, 4)?,
        lock: row.get(5)?,
        created_at_ms: row.get(6)?,
    })
}

pub(crate) fn script(conn: &Connection, id: &str) -> Result<Option<ScriptRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {SCRIPT_COLUMNS} FROM scripts s WHERE s.id = ?1"
    ))
    .sql()?
    .query_row([id], script_record)
    .optional()
    .sql()
}

pub(crate) fn scripts(conn: &Connection) -> Result<Vec<ScriptRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {SCRIPT_COLUMNS} FROM scripts s ORDER BY s.id"
    ))
    .sql()?
    .query_map([], script_record)
    .sql()?
    .collect::<Result<_, _>>()
    .sql()
}

pub(crate) fn add_version(
    conn: &Connection,
    ctx: &Ctx,
    new: &NewScriptVersion,
    mode: AddMode,
) -> Result<AddedVersion, StoreError> {
    let existing = script(conn, &new.script_id)?;
    match (mode, &existing) {
        (AddMode::Create, Some(_)) => {
            return Err(StoreError::ScriptExists {
                id: new.script_id.clone(),
            });
        }
        (AddMode::Edit, None) => {
            return Err(StoreError::ScriptNotFound {
                id: new.script_id.clone(),
            });
        }
        _ => {}
    }
    let same: Option<u64> = conn
        .prepare_cached("SELECT version FROM script_versions WHERE script_id = ?1 AND digest = ?2")
        .sql()?
        .query_row(params![new.script_id, new.digest], |row| row.get(0))
        .optional()
        .sql()?;
    let (version, created) = match same {
        Some(version) => (version, false),
        None => {
            let version = existing.as_ref().map_or(0, |s| s.latest) + 1;
            conn.prepare_cached(&format!(
                "INSERT INTO script_versions ({VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ))
            .sql()?
            .execute(params![
                new.script_id,
                version,
                new.digest,
                new.source,
                new.meta.to_string(),
                new.lock,
                ctx.now_ms
            ])
            .sql()?;
            (version, true)
        }
    };
    conn.prepare_cached(
        "INSERT INTO scripts (id, current, created_at_ms, updated_at_ms) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (id) DO UPDATE SET current = excluded.current, updated_at_ms = excluded.updated_at_ms",
    )
    .sql()?
    .execute(params![new.script_id, version, ctx.now_ms])
    .sql()?;
    Ok(AddedVersion { version, created })
}

pub(crate) fn version(
    conn: &Connection,
    id: &str,
    version: Option<u64>,
) -> Result<ScriptVersion, StoreError> {
    let Some(record) = script(conn, id)? else {
        return Err(StoreError::ScriptNotFound { id: id.to_owned() });
    };
    let version = version.unwrap_or(record.current);
    // SQLite integers are i64: a larger number names no version (and must not be an error).
    if version > i64::MAX as u64 {
        return Err(StoreError::ScriptVersionNotFound {
            id: id.to_owned(),
            version,
        });
    }
    conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM script_versions WHERE script_id = ?1 AND version = ?2"
    ))
    .sql()?
    .query_row(params![id, version], version_record)
    .optional()
    .sql()?
    .ok_or_else(|| StoreError::ScriptVersionNotFound {
        id: id.to_owned(),
        version,
    })
}

pub(crate) fn versions(conn: &Connection, id: &str) -> Result<Vec<ScriptVersion>, StoreError> {
    if script(conn, id)?.is_none() {
        return Err(StoreError::ScriptNotFound { id: id.to_owned() });
    }
    conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM script_versions WHERE script_id = ?1 ORDER BY version"
    ))
    .sql()?
    .query_map([id], version_record)
    .sql()?
    .collect::<Result<_, _>>()
    .sql()
}

pub(crate) fn set_current(
    conn: &Connection,
    ctx: &Ctx,
    id: &str,
    to: u64,
) -> Result<(), StoreError> {
    version(conn, id, Some(to))?;
    conn.prepare_cached("UPDATE scripts SET current = ?2, updated_at_ms = ?3 WHERE id = ?1")
        .sql()?
        .execute(params![id, to, ctx.now_ms])
        .sql()?;
    Ok(())
}

pub(crate) fn remove(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    conn.prepare_cached("DELETE FROM script_versions WHERE script_id = ?1")
        .sql()?
        .execute([id])
        .sql()?;
    let removed = conn
        .prepare_cached("DELETE FROM scripts WHERE id = ?1")
        .sql()?
        .execute([id])
        .sql()?;
    Ok(removed > 0)
}

const RUN_COLUMNS: &str = "id, script_id, version, digest, label, args, who, state, queued_at_ms, started_at_ms, ended_at_ms, exit_code, reason, peak_rss, cpu_ms, output, output_bytes, result";

fn run_record(row: &Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: row.get(0)?,
        script_id: row.get(1)?,
        version: row.get(2)?,
        digest: row.get(3)?,
        label: row.get(4)?,
        args: json_col(row, 5)?,
        who: row.get(6)?,
        state: row.get(7)?,
        queued_at_ms: row.get(8)?,
        started_at_ms: row.get(9)?,
        ended_at_ms: row.get(10)?,
        exit_code: row.get(11)?,
        reason: row.get(12)?,
        peak_rss: row.get(13)?,
        cpu_ms: row.get(14)?,
        output: row.get(15)?,
        output_bytes: row.get(16)?,
        result: opt_json_col(row, 17)?,
    })
}

pub(crate) fn insert_run(
    conn: &Connection,
    ctx: &Ctx,
    run: &NewRun,
    started: bool,
) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO script_runs (script_id, version, digest, label, args, who, state, queued_at_ms, started_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .sql()?
    .execute(params![
        run.script_id,
        run.version,
        run.digest,
        run.label,
        run.args.to_string(),
        run.who,
        if started { "running" } else { "queued" },
        ctx.now_ms,
        started.then_some(ctx.now_ms),
    ])
    .sql()?;
    Ok(conn.last_insert_rowid() as u64)
}

pub(crate) fn start_run(conn: &Connection, ctx: &Ctx, id: u64) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "UPDATE script_runs SET state = 'running', started_at_ms = ?2 WHERE id = ?1 AND state = 'queued'",
    )
    .sql()?
    .execute(params![id, ctx.now_ms])
    .sql()?;
    Ok(ctx.now_ms)
}

pub(crate) fn finish_run(
    conn: &Connection,
    ctx: &Ctx,
    id: u64,
    end: &RunEnd,
) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "UPDATE script_runs SET state = ?2, ended_at_ms = ?3, exit_code = ?4, reason = ?5,
         peak_rss = ?6, cpu_ms = ?7, output = ?8, output_bytes = ?9, result = ?10 WHERE id = ?1",
    )
    .sql()?
    .execute(params![
        id,
        end.state,
        ctx.now_ms,
        end.exit_code,
        end.reason,
        end.peak_rss,
        end.cpu_ms,
        end.output,
        end.output_bytes,
        end.result.as_ref().map(Value::to_string)
    ])
    .sql()?;
    Ok(ctx.now_ms)
}

pub(crate) fn run(conn: &Connection, id: u64) -> Result<Option<RunRecord>, StoreError> {
    if id > i64::MAX as u64 {
        return Ok(None);
    }
    conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM script_runs WHERE id = ?1"
    ))
    .sql()?
    .query_row([id], run_record)
    .optional()
    .sql()
}

pub(crate) fn runs(
    conn: &Connection,
    script_id: Option<&str>,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<RunRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM script_runs
         WHERE (?1 IS NULL OR script_id = ?1) AND id < ?2 ORDER BY id DESC LIMIT ?3"
    ))
    .sql()?
    .query_map(
        params![
            script_id,
            before.unwrap_or(u64::MAX).min(i64::MAX as u64),
            limit.min(i64::MAX as usize) as i64
        ],
        run_record,
    )
    .sql()?
    .collect::<Result<_, _>>()
    .sql()
}

/// Marks the runs a stopped host left queued or running as failed; returns how many.
pub(crate) fn interrupt_runs(conn: &Connection, ctx: &Ctx) -> Result<u64, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE script_runs SET state = 'failed', ended_at_ms = ?1,
             reason = 'the host stopped before the run ended' WHERE state IN ('queued', 'running')",
        )
        .sql()?
        .execute([ctx.now_ms])
        .sql()?;
    Ok(n as u64)
}

pub(crate) fn purge_runs(conn: &Connection, before_ms: u64) -> Result<u64, StoreError> {
    let n = conn
        .prepare_cached(
            "DELETE FROM script_runs WHERE ended_at_ms IS NOT NULL AND ended_at_ms < ?1",
        )
        .sql()?
        .execute([before_ms])
        .sql()?;
    Ok(n as u64)
}

const TEMPLATE_COLUMNS: &str = "name, description, source, vars, created_at_ms, updated_at_ms";

fn template_record(row: &Row<'_>) -> rusqlite::Result<TemplateRecord> {
    Ok(TemplateRecord {
        name: row.get(0)?,
        description: row.get(1)?,
        source: row.get(2)?,
        vars: json_col(row, 3)?,
        created_at_ms: row.get(4)?,
        updated_at_ms: row.get(5)?,
    })
}

pub(crate) fn put_template(
    conn: &Connection,
    ctx: &Ctx,
    template: &TemplateRecord,
    replace: bool,
) -> Result<TemplateRecord, StoreError> {
    let existing = self::template(conn, &template.name)?;
    if existing.is_some() && !replace {
        return Err(StoreError::TemplateExists {
            name: template.name.clone(),
        });
    }
    let mut stored = template.clone();
    stored.created_at_ms = existing.map_or(ctx.now_ms, |t| t.created_at_ms);
    stored.updated_at_ms = ctx.now_ms;
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO templates ({TEMPLATE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    ))
    .sql()?
    .execute(params![
        stored.name,
        stored.description,
        stored.source,
        stored.vars.to_string(),
        stored.created_at_ms,
        stored.updated_at_ms
    ])
    .sql()?;
    Ok(stored)
}

pub(crate) fn template(
    conn: &Connection,
    name: &str,
) -> Result<Option<TemplateRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {TEMPLATE_COLUMNS} FROM templates WHERE name = ?1"
    ))
    .sql()?
    .query_row([name], template_record)
    .optional()
    .sql()
}

pub(crate) fn templates(conn: &Connection) -> Result<Vec<TemplateRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {TEMPLATE_COLUMNS} FROM templates ORDER BY name"
    ))
    .sql()?
    .query_map([], template_record)
    .sql()?
    .collect::<Result<_, _>>()
    .sql()
}

pub(crate) fn remove_template(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached("DELETE FROM templates WHERE name = ?1")
        .sql()?
        .execute([name])
        .sql()?;
    Ok(n > 0)
}
