//! The single writer: one thread owns the write connection, takes requests from a bounded
//! queue, runs every request waiting at that moment in ONE transaction (one savepoint each, so a
//! failed request does not fail the others), commits, and only then answers each request.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;

/// Requests waiting for the writer. When it is full, a caller waits up to [`SEND_DEADLINE`] for
/// room and then gets [`StoreError::Busy`] (backpressure, then rejection; nothing is dropped
/// silently).
pub(crate) const QUEUE_CAPACITY: usize = 1024;

/// How long a request waits for room in a full queue.
pub(crate) const SEND_DEADLINE: Duration = Duration::from_secs(5);

/// At most this many requests share one transaction, so one commit's latency stays bounded.
const MAX_BATCH: usize = 512;

/// What every request sees besides the connection.
pub(crate) struct Ctx {
    /// Wall-clock time of the batch, for `at_ms` columns.
    pub now_ms: u64,
    /// How many commits per plugin the undo history keeps.
    pub undo_depth: usize,
}

/// One queued request, type-erased so the queue can hold every kind.
pub(crate) trait Op: Send {
    /// Runs the request inside the batch's transaction; `false` if it failed (its savepoint is
    /// then rolled back).
    fn apply(&mut self, conn: &Connection, ctx: &Ctx) -> bool;
    /// Answers the caller once the batch's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

/// A request whose work is the closure `f` and whose answer goes to `reply`.
pub(crate) struct Job<T, F> {
    f: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job<T, F> {
    pub(crate) fn new(f: F) -> (Self, oneshot::Receiver<Result<T, StoreError>>) {
        let (reply, rx) = oneshot::channel();
        (
            Job {
                f: Some(f),
                result: None,
                reply,
            },
            rx,
        )
    }
}

impl<T, F> Op for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection, &Ctx) -> Result<T, StoreError> + Send,
{
    fn apply(&mut self, conn: &Connection, ctx: &Ctx) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let result = f(conn, ctx);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
        let answer = match (self.result, committed) {
            // Its own refusal wins: it is true whatever happened to the batch.
            (Some(Err(own)), _) => Err(own),
            (_, Err(batch)) => Err(batch),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (None, Ok(())) => Err(StoreError::Sqlite("the request was never run".into())),
        };
        // The caller may have gone (a dropped future): the work is committed all the same.
        let _ = self.reply.send(answer);
    }
}

/// The writer thread's loop: returns when every sender is gone. It holds `conn` while it runs a
/// batch; between batches a caller may commit on its own thread ([`run_inline`]). `pending`
/// counts the requests queued or running here, each released once its batch is over.
pub(crate) fn run(
    conn: &Mutex<Connection>,
    mut queue: mpsc::Receiver<Box<dyn Op>>,
    undo_depth: usize,
    batches: &AtomicU64,
    pending: &AtomicUsize,
    activity: &Activity,
    checkpoints: &Checkpoints,
) {
    let connection = conn;
    let mut batch: Vec<Box<dyn Op>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let ctx = Ctx {
            now_ms: now_ms(),
            undo_depth,
        };
        let committed = run_batch(&mut conn, &mut batch, &ctx);
        batches.fetch_add(1, Ordering::Relaxed);
        activity.batch_done(batch.len());
        // The batch is committed (or rolled back): nothing of it can be overtaken any more, so
        // the connection and the count are released before the answers, and a caller answered
        // finds the writer idle.
        drop(conn);
        pending.fetch_sub(batch.len(), Ordering::Release);
        for op in batch.drain(..) {
            op.finish(committed.clone());
        }
        if checkpoints.due() {
            let conn = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            checkpoints.run(&conn);
        }
    }
}

/// WAL checkpoints, always on the writer thread. SQLite's automatic checkpoint runs inside the
/// commit that takes the log past 1,000 pages, on whichever thread commits, and syncs the
/// database file (milliseconds on a slow disk): with commits on callers' threads
/// (`Store::write_point`) that would block a runtime worker. So the write connection's WAL hook
/// (which replaces the automatic checkpoint) only marks a checkpoint due; the writer thread runs
/// it after its next batch, and a commit on a caller's thread that finds one due queues an empty
/// request to wake it.
pub(crate) struct Checkpoints {
    /// 0: none due; 1: due; 2: due, and the writer was woken for it.
    state: std::sync::atomic::AtomicU8,
    /// Checkpoints run (for tests).
    runs: AtomicU64,
}

impl Checkpoints {
    /// The log size (in pages) past which a checkpoint is due: SQLite's own default.
    pub(crate) const PAGES: i32 = 1000;

    pub(crate) fn new() -> Checkpoints {
        Checkpoints {
            state: std::sync::atomic::AtomicU8::new(0),
            runs: AtomicU64::new(0),
        }
    }

    /// The WAL hook: called after every commit with the log's size in pages.
    pub(crate) fn committed(&self, pages: i32) {
        if pages >= Self::PAGES {
            let _ = self
                .state
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Whether the caller should wake the writer for a due checkpoint (true once per due one).
    pub(crate) fn wake_writer(&self) -> bool {
        self.state
            .compare_exchange(1, 2, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    fn due(&self) -> bool {
        self.state.load(Ordering::Acquire) != 0
    }

    /// A passive checkpoint: copies what it can without waiting for readers; the next one
    /// continues. A failure is left for the next one too (the log only grows meanwhile).
    fn run(&self, conn: &Connection) {
        self.state.store(0, Ordering::Release);
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        self.runs.fetch_add(1, Ordering::Relaxed);
    }

    /// How many checkpoints ran.
    pub(crate) fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}

/// Whether writes have lately come together. When the writer thread's last batch held several
/// requests and ended less than [`Activity::QUIET`] ago, writes are arriving faster than one
/// transaction takes: a write then joins the queue, where it shares a transaction with the
/// others. Otherwise (writes come one at a time) a lone write may commit on its caller's thread
/// (see `Store::write_point`), sparing two thread wake-ups.
pub(crate) struct Activity {
    epoch: std::time::Instant,
    /// Nanoseconds after `epoch` at the end of the writer's last batch of several requests (0:
    /// none yet, or the last batch held one).
    last_group: AtomicU64,
}

impl Activity {
    /// How long after a batch of several requests writes keep going to the queue.
    pub(crate) const QUIET: Duration = Duration::from_millis(1);

    pub(crate) fn new() -> Activity {
        Activity {
            epoch: std::time::Instant::now(),
            last_group: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        // Never 0, which means "no group".
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    fn batch_done(&self, requests: usize) {
        let at = if requests > 1 { self.now_ns() } else { 0 };
        self.last_group.store(at, Ordering::Relaxed);
    }

    /// Whether a lone write may commit inline: no batch of several requests in the last
    /// [`Activity::QUIET`].
    pub(crate) fn quiet(&self) -> bool {
        let last = self.last_group.load(Ordering::Relaxed);
        last == 0 || self.now_ns().saturating_sub(last) >= Self::QUIET.as_nanos() as u64
    }
}

/// One request committed on the caller's thread, in a transaction of its own, when the writer
/// is idle (the caller holds `conn` and nothing is queued). It never waits for a lock: if
/// another process holds the database's write lock, `Err(f)` hands the request back for the
/// queue, whose transactions wait up to `busy_timeout`.
pub(crate) fn run_inline<T, F>(
    conn: &Connection,
    f: F,
    ctx: &Ctx,
    busy_timeout: Duration,
) -> Result<Result<T, StoreError>, F>
where
    F: FnOnce(&Connection, &Ctx) -> Result<T, StoreError>,
{
    if conn.busy_timeout(Duration::ZERO).is_err() {
        return Err(f);
    }
    let begun = conn
        .prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut s| s.execute([]));
    let restored = conn.busy_timeout(busy_timeout);
    if begun.is_err() || restored.is_err() {
        rollback(conn);
        return Err(f);
    }
    let result = f(conn, ctx);
    if result.is_err() {
        rollback(conn);
        return Ok(result);
    }
    if let Err(e) = commit(conn) {
        rollback(conn);
        return Ok(Err(e));
    }
    Ok(result)
}

/// One transaction for the whole batch. `Ok` only once `COMMIT` returned, which with WAL and
/// `synchronous=NORMAL` means the frames are in the OS (a killed process loses nothing) and with
/// `FULL` that they were fsynced.
fn run_batch(
    conn: &mut Connection,
    batch: &mut [Box<dyn Op>],
    ctx: &Ctx,
) -> Result<(), StoreError> {
    let sql = |e: rusqlite::Error| StoreError::Sqlite(e.to_string());
    conn.prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut s| s.execute([]))
        .map_err(sql)?;
    // A request alone in its batch needs no savepoint: if it fails, the whole transaction is
    // rolled back, which undoes exactly its writes (the usual case with one request in flight).
    if let [op] = batch {
        let outcome = if op.apply(conn, ctx) {
            commit(conn)
        } else {
            rollback(conn);
            Ok(())
        };
        if outcome.is_err() {
            rollback(conn);
        }
        return outcome;
    }
    let outcome = (|| {
        for op in batch.iter_mut() {
            conn.prepare_cached("SAVEPOINT op")
                .and_then(|mut s| s.execute([]))
                .map_err(sql)?;
            if op.apply(conn, ctx) {
                conn.prepare_cached("RELEASE op")
                    .and_then(|mut s| s.execute([]))
                    .map_err(sql)?;
            } else {
                // Some errors (disk full, I/O) make SQLite roll back the whole transaction; then
                // there is no savepoint left and nothing of this batch is committed.
                if conn.is_autocommit() {
                    return Err(StoreError::Sqlite(
                        "the transaction was rolled back after an error".into(),
                    ));
                }
                conn.execute_batch("ROLLBACK TO op; RELEASE op")
                    .map_err(sql)?;
            }
        }
        commit(conn)
    })();
    if outcome.is_err() {
        rollback(conn);
    }
    outcome
}

fn commit(conn: &Connection) -> Result<(), StoreError> {
    conn.prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]))
        .map(drop)
        .map_err(|e| StoreError::Sqlite(e.to_string()))
}

/// Rolls the open transaction back, if there is one (some errors, such as a full disk, already
/// rolled it back). Best effort: the error that matters is the one that led here.
fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, ffi};

    use super::*;
    use crate::{Commit, KvLimits, StoreConfig, kv, params};

    /// Every statement still prepared on `conn` with how often SQLite compiled it again.
    fn reprepared(conn: &Connection) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        // SAFETY: the handle is valid while `conn` lives, nothing else uses the connection
        // meanwhile, and `sqlite3_next_stmt`/`sqlite3_stmt_status`/`sqlite3_sql` only read.
        unsafe {
            let db = conn.handle();
            let mut stmt = ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
            while !stmt.is_null() {
                let n = ffi::sqlite3_stmt_status(stmt, ffi::SQLITE_STMTSTATUS_REPREPARE, 0);
                let sql = std::ffi::CStr::from_ptr(ffi::sqlite3_sql(stmt))
                    .to_string_lossy()
                    .into_owned();
                out.push((sql, n));
                stmt = ffi::sqlite3_next_stmt(db, stmt);
            }
        }
        out
    }

    fn batch<T, F>(conn: &mut Connection, f: F) -> T
    where
        F: FnOnce(&Connection, &Ctx) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let (job, mut answer) = Job::new(f);
        let mut ops: Vec<Box<dyn Op>> = vec![Box::new(job)];
        let ctx = Ctx {
            now_ms: now_ms(),
            undo_depth: 5,
        };
        let committed = run_batch(conn, &mut ops, &ctx);
        for op in ops.drain(..) {
            op.finish(committed.clone());
        }
        answer.try_recv().unwrap().unwrap()
    }

    /// The store's statements are compiled once per connection: none is re-prepared when it is
    /// used again with other values (SQLite 3.54 did that to every statement whose plan used a
    /// bound value, through rusqlite's cache clearing the bindings) or evicted from the cache.
    #[test]
    fn statements_are_never_compiled_twice() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(dir.path().join("plugd.db"));
        let (mut writer, readers) = crate::open_files(&config, 1).unwrap();
        let reader = &readers[0];
        let limits = KvLimits {
            quota: 4096,
            ..KvLimits::default()
        };
        for round in 0..40u64 {
            for plugin in ["a", "b"] {
                let checked = kv::check(
                    Commit {
                        puts: vec![(format!("k{}", round % 7), serde_json::json!(round))],
                        deletes: vec![format!("k{}", (round + 3) % 7)],
                        ..Commit::default()
                    },
                    &limits,
                )
                .unwrap();
                let p = plugin.to_owned();
                batch(&mut writer, move |c, ctx| kv::commit(c, ctx, &p, checked));
                if round % 3 == 0 {
                    let p = plugin.to_owned();
                    batch(&mut writer, move |c, _| kv::flip(c, &p, true));
                }
                if round % 6 == 0 {
                    let p = plugin.to_owned();
                    batch(&mut writer, move |c, _| kv::flip(c, &p, false));
                }
                let p = plugin.to_owned();
                let value = format!("{{\"n\":{round}}}");
                batch(&mut writer, move |c, ctx| {
                    params::set(c, ctx, &p, &value, "test")
                });
                kv::get(reader, plugin, "k1").unwrap();
                kv::list(reader, plugin, "k", None, 3 + round as usize % 4).unwrap();
                kv::list(reader, plugin, "", Some("k2"), 10).unwrap();
                params::get(reader, plugin).unwrap();
                params::history(reader, plugin, 1 + round as usize % 3).unwrap();
            }
        }
        for conn in [&writer, reader] {
            let stats = reprepared(conn);
            assert!(stats.len() >= 5, "{stats:?}");
            let again: Vec<_> = stats.iter().filter(|(_, n)| *n > 0).collect();
            assert!(again.is_empty(), "compiled again: {again:?}");
        }
    }

    #[test]
    fn writes_commit_inline_unless_the_writer_lately_batched_several() {
        use super::Activity;
        // Started 10 ms ago, so that "QUIET ago" is after its epoch.
        let activity = Activity {
            epoch: std::time::Instant::now() - Duration::from_millis(10),
            last_group: AtomicU64::new(0),
        };
        assert!(activity.quiet(), "no batch yet");
        activity.batch_done(1);
        assert!(
            activity.quiet(),
            "a batch of one: writes come one at a time"
        );
        activity.batch_done(5);
        assert!(
            !activity.quiet(),
            "a batch of several just now: writes come together"
        );
        // The same batch, QUIET ago.
        let long_ago = activity.now_ns() - Activity::QUIET.as_nanos() as u64;
        activity.last_group.store(long_ago, Ordering::Relaxed);
        assert!(activity.quiet(), "quiet again after QUIET");
        activity.batch_done(2);
        activity.batch_done(1);
        assert!(activity.quiet(), "a batch of one after it");
    }
}
