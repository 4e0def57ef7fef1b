//! The task queue's durable side: one row per task with its state, attempts, progress and
//! outcome. The host keeps the schedule in memory and writes every state change here before it
//! acts on it; after a restart it rebuilds the schedule from [`Store::tasks_unfinished`].

use rusqlite::{Connection, OptionalExtension, params};

use crate::Store;
use crate::error::{SqlResult, StoreError};
use crate::writer::Ctx;

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Waiting for a slot (or for its retry time).
    Queued,
    /// A handler runs it.
    Running,
    /// Its handler returned a result.
    Succeeded,
    /// Its handler failed for good (or it timed out).
    Failed,
    /// Cancelled before or while it ran.
    Cancelled,
}

impl TaskState {
    /// Lower-case name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parses a name from [`TaskState::as_str`].
    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            _ => return None,
        })
    }

    /// Whether the task is over.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// A task to insert.
#[derive(Clone, Debug)]
pub struct NewTask {
    /// The plugin that runs it.
    pub plugin: String,
    /// The task name (its handler).
    pub task: String,
    /// Whether this is an after-last hook run (the host's, not submitted).
    pub after_last: bool,
    /// The payload as JSON text.
    pub payload: String,
    /// The grouping key.
    pub key: Option<String>,
    /// Runs before normal tasks.
    pub priority: bool,
    /// Attempts before a retryable failure is final.
    pub max_attempts: u32,
    /// When a queued task of the same plugin with the same `key` (and the same kind) exists,
    /// return it instead of inserting.
    pub dedupe: bool,
}

/// A task as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRecord {
    /// Host-wide id, increasing.
    pub id: u64,
    /// The plugin that runs it.
    pub plugin: String,
    /// The task name.
    pub task: String,
    /// Whether it is an after-last hook run.
    pub after_last: bool,
    /// The payload as JSON text.
    pub payload: String,
    /// The grouping key.
    pub key: Option<String>,
    /// Runs before normal tasks.
    pub priority: bool,
    /// Where it is.
    pub state: TaskState,
    /// Runs started so far (1 during the first run).
    pub attempts: u32,
    /// Attempts before a retryable failure is final.
    pub max_attempts: u32,
    /// The last progress reported: fraction done, if known.
    pub progress: Option<f64>,
    /// The last progress message.
    pub message: Option<String>,
    /// The result as JSON text (succeeded).
    pub result: Option<String>,
    /// Why it failed (or was cancelled), as a sentence.
    pub error: Option<String>,
    /// A machine-readable code for the failure.
    pub error_code: Option<String>,
    /// For a task cancelled while running: whether its handler said it stopped.
    pub stopped: Option<bool>,
    /// When it was submitted (ms since the Unix epoch).
    pub submitted_ms: u64,
    /// When its latest run started.
    pub started_ms: Option<u64>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// A queued retry does not start before this.
    pub not_before_ms: u64,
}

/// How a run ended, as the host decided it.
#[derive(Clone, Debug)]
pub enum TaskEnd {
    /// The handler's result (JSON text).
    Succeeded {
        /// JSON text.
        result: String,
    },
    /// Failed; `retry_at_ms` set: queued again for another attempt at that time.
    Failed {
        /// Why.
        error: String,
        /// Its code.
        code: String,
        /// Run again at this time (ms since the Unix epoch), or `None`: final.
        retry_at_ms: Option<u64>,
    },
    /// Cancelled.
    Cancelled {
        /// Why (who cancelled it, and whether the handler stopped).
        error: String,
        /// For a running task: whether the handler stopped; `None` for a queued one.
        stopped: Option<bool>,
    },
}

/// Which tasks to list.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    /// Only this plugin's.
    pub plugin: Option<String>,
    /// Only in this state.
    pub state: Option<TaskState>,
    /// Only with this key.
    pub key: Option<String>,
    /// Only with an id below this (paging, newest first).
    pub before: Option<u64>,
    /// At most this many (newest first).
    pub limit: usize,
}

const TASK_COLUMNS: &str = "id, plugin, task, kind, payload, key, priority, state, attempts, max_attempts, progress, message, result, error, error_code, stopped, submitted_ms, started_ms, finished_ms, not_before_ms";

fn task_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRecord> {
    let state: String = row.get(7)?;
    Ok(TaskRecord {
        id: row.get(0)?,
        plugin: row.get(1)?,
        task: row.get(2)?,
        after_last: row.get::<_, i64>(3)? == 1,
        payload: row.get(4)?,
        key: row.get(5)?,
        priority: row.get::<_, i64>(6)? != 0,
        state: TaskState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                7,
                rusqlite::types::Type::Text,
                format!("unknown task state `{state}`").into(),
            )
        })?,
        attempts: row.get(8)?,
        max_attempts: row.get(9)?,
        progress: row.get(10)?,
        message: row.get(11)?,
        result: row.get(12)?,
        error: row.get(13)?,
        error_code: row.get(14)?,
        stopped: row.get::<_, Option<i64>>(15)?.map(|s| s != 0),
        submitted_ms: row.get(16)?,
        started_ms: row.get(17)?,
        finished_ms: row.get(18)?,
        not_before_ms: row.get(19)?,
    })
}

fn get(conn: &Connection, id: u64) -> Result<Option<TaskRecord>, StoreError> {
    conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))
        .sql()?
        .query_row([id as i64], task_row)
        .optional()
        .sql()
}

fn must_get(conn: &Connection, id: u64) -> Result<TaskRecord, StoreError> {
    get(conn, id)?.ok_or_else(|| StoreError::Sqlite(format!("task {id} vanished")))
}

fn insert(conn: &Connection, ctx: &Ctx, new: &NewTask) -> Result<(TaskRecord, bool), StoreError> {
    if new.dedupe
        && let Some(key) = &new.key
    {
        let existing: Option<u64> = conn
            .prepare_cached(
                "SELECT id FROM tasks WHERE state = 'queued' AND plugin = ?1 AND key = ?2 AND kind = ?3
                 ORDER BY id LIMIT 1",
            )
            .sql()?
            .query_row(params![new.plugin, key, new.after_last as i64], |row| row.get(0))
            .optional()
            .sql()?;
        if let Some(id) = existing {
            return Ok((must_get(conn, id)?, true));
        }
    }
    conn.prepare_cached(
        "INSERT INTO tasks (plugin, task, kind, payload, key, priority, state, attempts, max_attempts, submitted_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', 0, ?7, ?8)",
    )
    .sql()?
    .execute(params![
        new.plugin,
        new.task,
        new.after_last as i64,
        new.payload,
        new.key,
        new.priority as i64,
        new.max_attempts,
        ctx.now_ms
    ])
    .sql()?;
    let id = conn.last_insert_rowid() as u64;
    Ok((
        TaskRecord {
            id,
            plugin: new.plugin.clone(),
            task: new.task.clone(),
            after_last: new.after_last,
            payload: new.payload.clone(),
            key: new.key.clone(),
            priority: new.priority,
            state: TaskState::Queued,
            attempts: 0,
            max_attempts: new.max_attempts,
            progress: None,
            message: None,
            result: None,
            error: None,
            error_code: None,
            stopped: None,
            submitted_ms: ctx.now_ms,
            started_ms: None,
            finished_ms: None,
            not_before_ms: 0,
        },
        false,
    ))
}

impl Store {
    /// Inserts a queued task once committed; with `dedupe`, returns the queued task of the same
    /// key instead (and `true`).
    pub async fn task_insert(&self, new: NewTask) -> Result<(TaskRecord, bool), StoreError> {
        self.write(move |conn, ctx| insert(conn, ctx, &new)).await
    }

    /// Marks a queued task running (one more attempt, progress cleared) and returns it.
    pub async fn task_start(&self, id: u64) -> Result<TaskRecord, StoreError> {
        self.write(move |conn, ctx| {
            conn.prepare_cached(
                "UPDATE tasks SET state = 'running', attempts = attempts + 1, started_ms = ?2,
                        progress = NULL, message = NULL
                 WHERE id = ?1",
            )
            .sql()?
            .execute(params![id as i64, ctx.now_ms])
            .sql()?;
            must_get(conn, id)
        })
        .await
    }

    /// Records how a run (or a queued task's cancellation) ended; a failure with a retry time
    /// is queued again. `progress` is the last progress reported, kept with the outcome.
    pub async fn task_end(
        &self,
        id: u64,
        end: TaskEnd,
        progress: Option<(Option<f64>, Option<String>)>,
    ) -> Result<TaskRecord, StoreError> {
        self.write(move |conn, ctx| {
            if let Some((fraction, message)) = progress {
                conn.prepare_cached("UPDATE tasks SET progress = ?2, message = ?3 WHERE id = ?1")
                    .sql()?
                    .execute(params![id as i64, fraction, message])
                    .sql()?;
            }
            let now = ctx.now_ms;
            let mut stmt = match &end {
                TaskEnd::Succeeded { .. } => conn.prepare_cached(
                    "UPDATE tasks SET state = 'succeeded', result = ?2, error = NULL, error_code = NULL, finished_ms = ?3 WHERE id = ?1",
                ),
                TaskEnd::Failed { retry_at_ms: Some(_), .. } => conn.prepare_cached(
                    "UPDATE tasks SET state = 'queued', error = ?2, error_code = ?3, not_before_ms = ?4 WHERE id = ?1",
                ),
                TaskEnd::Failed { retry_at_ms: None, .. } => conn.prepare_cached(
                    "UPDATE tasks SET state = 'failed', error = ?2, error_code = ?3, finished_ms = ?4 WHERE id = ?1",
                ),
                TaskEnd::Cancelled { .. } => conn.prepare_cached(
                    "UPDATE tasks SET state = 'cancelled', error = ?2, stopped = ?3, error_code = 'cancelled', finished_ms = ?4 WHERE id = ?1",
                ),
            }
            .sql()?;
            match &end {
                TaskEnd::Succeeded { result } => stmt.execute(params![id as i64, result, now]),
                TaskEnd::Failed { error, code, retry_at_ms } => stmt.execute(params![
                    id as i64,
                    error,
                    code,
                    retry_at_ms.map(|t| t as i64).unwrap_or(now as i64)
                ]),
                TaskEnd::Cancelled { error, stopped } => {
                    stmt.execute(params![id as i64, error, stopped.map(i64::from), now])
                }
            }
            .sql()?;
            drop(stmt);
            must_get(conn, id)
        })
        .await
    }

    /// One task.
    pub async fn task(&self, id: u64) -> Result<Option<TaskRecord>, StoreError> {
        self.read(move |conn| get(conn, id)).await
    }

    /// Tasks matching `filter`, newest first.
    pub async fn tasks(&self, filter: TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
        self.read(move |conn| {
            let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
            conn.prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks
                 WHERE (?1 IS NULL OR plugin = ?1) AND (?2 IS NULL OR state = ?2)
                   AND (?3 IS NULL OR key = ?3) AND (?4 IS NULL OR id < ?4)
                 ORDER BY id DESC LIMIT ?5"
            ))
            .sql()?
            .query_map(
                params![
                    filter.plugin,
                    filter.state.map(TaskState::as_str),
                    filter.key,
                    filter.before.map(|b| b as i64),
                    limit
                ],
                task_row,
            )
            .sql()?
            .collect::<Result<_, _>>()
            .sql()
        })
        .await
    }

    /// Every queued or running task, oldest first: what a restarting host schedules again.
    pub async fn tasks_unfinished(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE state IN ('queued', 'running') ORDER BY id"
            ))
            .sql()?
            .query_map([], task_row)
            .sql()?
            .collect::<Result<_, _>>()
            .sql()
        })
        .await
    }

    /// Puts every `running` task back to `queued` (a host that died mid-run runs them again;
    /// their `attempts` already count the cut-short run). Returns how many.
    pub async fn tasks_requeue_running(&self) -> Result<u64, StoreError> {
        self.write(|conn, _| {
            Ok(conn
                .prepare_cached("UPDATE tasks SET state = 'queued' WHERE state = 'running'")
                .sql()?
                .execute([])
                .sql()? as u64)
        })
        .await
    }
}
