//! plugd's durable state: params with their history, kv with atomic commits and undo/redo, and
//! lifecycle records, in one SQLite file (`STATE/plugd.db`).
//!
//! One thread owns the write connection and does group commit: every request waiting when it
//! starts a batch runs in one transaction (a savepoint each, so one refused request does not fail
//! the others), and each request is answered only after `COMMIT` returned. "Acknowledged" means
//! committed: with [`Durability::Process`] (WAL, `synchronous=NORMAL`) a killed host loses
//! nothing it acknowledged; with [`Durability::Full`] (`synchronous=FULL`) neither does a power
//! loss. Reads use a small pool of read-only connections (WAL lets them run beside a batch).
//! Callers never see SQL.
#![warn(missing_docs)]

mod error;
mod events;
mod kv;
mod params;
mod schema;
mod scripts;
mod tasks;
mod tokens;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

use crate::error::SqlResult;
pub use crate::error::StoreError;
pub use crate::events::{Advance, DeadEvent, NewEvent, StoredEvent};
pub use crate::kv::PAGE_BYTES as KV_PAGE_BYTES;
pub use crate::schema::SCHEMA_VERSION;
pub use crate::scripts::{
    AddMode, AddedVersion, NewRun, NewScriptVersion, RunEnd, RunRecord, ScriptRecord,
    ScriptVersion, TemplateRecord,
};
pub use crate::tasks::{NewTask, TaskEnd, TaskFilter, TaskRecord, TaskState};
pub use crate::tokens::TokenRecord;
use crate::writer::{Ctx, Job, Op};

/// How far an acknowledged write survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: survives a killed host (the frames are in the OS when the
    /// commit returns); the last commits may be lost on power loss.
    #[default]
    Process,
    /// WAL with `synchronous=FULL`: the WAL is fsynced at every commit (once per group), so a
    /// power loss loses nothing acknowledged either.
    Full,
}

/// Where and how to open the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The database file, normally `STATE/plugd.db`; its directory is created if missing.
    pub path: PathBuf,
    /// How far an acknowledged write survives.
    pub durability: Durability,
    /// How many kv commits per plugin can be undone (the oldest are dropped); default 100.
    pub undo_depth: usize,
}

impl StoreConfig {
    /// A config for `path` with the defaults: [`Durability::Process`], 100 undoable commits.
    pub fn new(path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            path: path.into(),
            durability: Durability::default(),
            undo_depth: DEFAULT_UNDO_DEPTH,
        }
    }
}

/// The default of [`StoreConfig::undo_depth`].
pub const DEFAULT_UNDO_DEPTH: usize = 100;

/// One stored change of a plugin's params.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamsRevision {
    /// 1 for the first value stored, then one more per change.
    pub revision: u64,
    /// The whole params object as stored.
    pub value: Value,
    /// Who changed it: `api`, `cli`, `migration`, ...
    pub source: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// An atomic kv change: every put and delete happens, or none does.
#[derive(Clone, Debug, Default)]
pub struct Commit {
    /// Keys to set, each to a JSON value.
    pub puts: Vec<(String, Value)>,
    /// Keys to remove (removing an absent key is allowed and undoes to absent).
    pub deletes: Vec<String>,
    /// Compare-and-set: each key must currently hold this value (`None` = be absent), or the
    /// commit is refused with [`StoreError::Conflict`].
    pub expect: Vec<(String, Option<Value>)>,
}

/// A kv commit's id: per plugin, increasing from 1, never reused while the plugin's data lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitId(pub u64);

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The limits a kv commit is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLimits {
    /// Longest key, in bytes (default 1,024).
    pub max_key: usize,
    /// Longest value, in bytes of compact JSON (default 1 MiB).
    pub max_value: usize,
    /// Most bytes (keys plus JSON values) a plugin may hold (`limits.storage`, default 64 MiB).
    pub quota: u64,
}

impl Default for KvLimits {
    fn default() -> KvLimits {
        KvLimits {
            max_key: 1024,
            max_value: 1 << 20,
            quota: 64 << 20,
        }
    }
}

/// The store. Cheap to clone; every clone talks to the same writer thread, which stops when the
/// last clone is dropped (after answering what is queued).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Box<dyn Op>>,
    /// The write connection: the writer thread's while it runs a batch, a caller's while it
    /// commits inline (see [`Store::write_point`]).
    writer: Arc<Mutex<Connection>>,
    /// Requests queued for the writer or in its current batch.
    pending: Arc<AtomicUsize>,
    /// Whether a write may commit on the caller's thread: not with [`Durability::Full`], whose
    /// commit waits for an fsync (milliseconds a runtime worker must not block for).
    inline: bool,
    undo_depth: usize,
    /// `None`: reads go through the writer (an in-memory database has no second connection).
    reads: Option<Arc<ReadPool>>,
    /// Transactions the writer has run (for tests and the bench: requests per batch).
    batches: Arc<AtomicU64>,
    /// When the writer thread last committed a batch (inline commits wait until it is quiet).
    activity: Arc<writer::Activity>,
    /// WAL checkpoints, run by the writer thread only.
    checkpoints: Arc<writer::Checkpoints>,
}

/// A request counted in [`Inner::pending`] from before it is sent: once sent, the writer
/// uncounts it when its batch is over; never sent (no room in time, a dropped future), it is
/// uncounted when this is dropped.
struct Queued<'a> {
    pending: &'a AtomicUsize,
    sent: bool,
}

impl<'a> Queued<'a> {
    fn new(pending: &'a AtomicUsize) -> Queued<'a> {
        pending.fetch_add(1, Ordering::AcqRel);
        Queued {
            pending,
            sent: false,
        }
    }

    fn sent(mut self) {
        self.sent = true;
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Read-only connections; a read takes one for the duration of one blocking closure.
struct ReadPool {
    conns: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

/// Read-only connections opened beside the writer: enough for reads not to queue behind each
/// other on 2 cores, few enough to keep file descriptors and page caches small.
const READ_CONNECTIONS: usize = 4;

/// How long SQLite waits for a lock held by another connection (a second process, a checkpoint).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// Opens (creating and migrating if needed) the database at `config.path`.
    pub async fn open(config: StoreConfig) -> Result<Store, StoreError> {
        Store::open_with_readers(config, READ_CONNECTIONS).await
    }

    /// [`Store::open`] with `readers` read-only connections; 0 sends reads through the writer.
    /// For measurements (`examples/store_bench.rs`); the default is what `open` uses.
    #[doc(hidden)]
    pub async fn open_with_readers(
        config: StoreConfig,
        readers: usize,
    ) -> Result<Store, StoreError> {
        let undo_depth = config.undo_depth;
        let inline = config.durability == Durability::Process;
        let (writer, readers) = tokio::task::spawn_blocking(move || open_files(&config, readers))
            .await
            .map_err(|e| StoreError::Open {
                path: String::new(),
                reason: e.to_string(),
            })??;
        Store::start(writer, readers, undo_depth, inline)
    }

    /// A fresh in-memory store (reads go through the writer), for tests of code built on it.
    ///
    /// # Panics
    /// If SQLite cannot create an in-memory database or the thread cannot be spawned.
    pub fn in_memory_for_tests() -> Store {
        Store::in_memory(DEFAULT_UNDO_DEPTH)
    }

    /// [`Store::in_memory_for_tests`] with another undo depth.
    ///
    /// # Panics
    /// As [`Store::in_memory_for_tests`].
    pub fn in_memory(undo_depth: usize) -> Store {
        let mut conn = Connection::open_in_memory().expect("an in-memory SQLite database");
        configure(&conn).expect("an in-memory SQLite database takes the store's settings");
        schema::migrate(&mut conn, ":memory:", SCHEMA_VERSION).expect("migrations apply");
        Store::start(conn, Vec::new(), undo_depth, true).expect("the store's writer thread starts")
    }

    fn start(
        mut writer: Connection,
        readers: Vec<Connection>,
        undo_depth: usize,
        inline: bool,
    ) -> Result<Store, StoreError> {
        let checkpoints = Arc::new(writer::Checkpoints::new());
        let marks = checkpoints.clone();
        writer
            .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
                marks.committed(pages);
                Ok(())
            }))
            .map_err(|e| StoreError::Open {
                path: String::new(),
                reason: format!("cannot set the WAL hook: {e}"),
            })?;
        let (queue, receiver) = mpsc::channel(writer::QUEUE_CAPACITY);
        let batches = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(AtomicUsize::new(0));
        let writer = Arc::new(Mutex::new(writer));
        let activity = Arc::new(writer::Activity::new());
        let (counter, conn, queued, busy, ckpt) = (
            batches.clone(),
            writer.clone(),
            pending.clone(),
            activity.clone(),
            checkpoints.clone(),
        );
        std::thread::Builder::new()
            .name("plugd-store-writer".into())
            .spawn(move || {
                writer::run(&conn, receiver, undo_depth, &counter, &queued, &busy, &ckpt)
            })
            .map_err(|e| StoreError::Open {
                path: String::new(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        let reads = (!readers.is_empty()).then(|| {
            Arc::new(ReadPool {
                permits: Arc::new(Semaphore::new(readers.len())),
                conns: Mutex::new(readers),
            })
        });
        Ok(Store {
            inner: Arc::new(Inner {
                queue,
                writer,
                pending,
                inline,
                undo_depth,
                reads,
                batches,
                activity,
                checkpoints,
            }),
        })
    }

    /// How many transactions the writer has committed or tried so far.
    #[doc(hidden)]
    pub fn batches(&self) -> u64 {
        self.inner.batches.load(Ordering::Relaxed)
    }

    /// The plugin's current params, `None` if it never had any.
    pub async fn params(&self, plugin: &str) -> Result<Option<Value>, StoreError> {
        let plugin = plugin.to_owned();
        self.read_point(move |conn| params::get(conn, &plugin))
            .await
    }

    /// Stores a new params value (the whole object) and returns its revision (1-based).
    pub async fn set_params(
        &self,
        plugin: &str,
        value: &Value,
        source: &str,
    ) -> Result<u64, StoreError> {
        let (plugin, source) = (plugin.to_owned(), source.to_owned());
        let value = value.to_string();
        self.write_point(move |conn, ctx| params::set(conn, ctx, &plugin, &value, &source))
            .await
    }

    /// The plugin's params changes, newest first, at most `limit`.
    pub async fn params_history(
        &self,
        plugin: &str,
        limit: usize,
    ) -> Result<Vec<ParamsRevision>, StoreError> {
        let plugin = plugin.to_owned();
        self.read(move |conn| params::history(conn, &plugin, limit))
            .await
    }

    /// The value of one key, `None` if absent.
    pub async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let (plugin, key) = (plugin.to_owned(), key.to_owned());
        self.read_point(move |conn| kv::get(conn, &plugin, &key))
            .await
    }

    /// Up to `limit` entries whose key starts with `prefix` and is greater than `after`, sorted
    /// by key (bytewise, as `str` sorts). Page with `after` = the last key of the previous page.
    pub async fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        let (plugin, prefix, after) = (
            plugin.to_owned(),
            prefix.to_owned(),
            after.map(str::to_owned),
        );
        self.read(move |conn| kv::list(conn, &plugin, &prefix, after.as_deref(), limit))
            .await
    }

    /// Applies `commit` atomically. Limits, `expect` and the quota are checked before anything
    /// is written; a refused commit changes nothing. A commit clears the redo stack.
    pub async fn kv_commit(
        &self,
        plugin: &str,
        commit: Commit,
        limits: &KvLimits,
    ) -> Result<CommitId, StoreError> {
        // Malformed commits are refused here, without a trip to the writer.
        let checked = kv::check(commit, limits)?;
        let plugin = plugin.to_owned();
        self.write_point(move |conn, ctx| kv::commit(conn, ctx, &plugin, checked))
            .await
    }

    /// Reverts the newest applied commit and moves it to the redo stack; returns its id, or
    /// `None` when there is nothing to undo.
    pub async fn kv_undo(&self, plugin: &str) -> Result<Option<CommitId>, StoreError> {
        let plugin = plugin.to_owned();
        self.write(move |conn, _| kv::flip(conn, &plugin, true))
            .await
    }

    /// Re-applies the most recently undone commit; returns its id, or `None` when there is
    /// nothing to redo.
    pub async fn kv_redo(&self, plugin: &str) -> Result<Option<CommitId>, StoreError> {
        let plugin = plugin.to_owned();
        self.write(move |conn, _| kv::flip(conn, &plugin, false))
            .await
    }

    /// Bytes the plugin's kv holds: the sum of its keys' and JSON values' lengths.
    pub async fn kv_usage(&self, plugin: &str) -> Result<u64, StoreError> {
        let plugin = plugin.to_owned();
        self.read(move |conn| kv::usage(conn, &plugin)).await
    }

    /// Deletes the plugin's kv, commit history, params and params history (not its
    /// uninstalled mark). Its commit ids and params revisions start again from 1.
    pub async fn forget_plugin(&self, plugin: &str) -> Result<(), StoreError> {
        let plugin = plugin.to_owned();
        self.write(move |conn, _| params::forget(conn, &plugin))
            .await
    }

    /// Marks the plugin as uninstalled (so a scan does not start it) or clears the mark.
    pub async fn set_uninstalled(&self, plugin: &str, uninstalled: bool) -> Result<(), StoreError> {
        let plugin = plugin.to_owned();
        self.write(move |conn, ctx| params::set_uninstalled(conn, ctx, &plugin, uninstalled))
            .await
    }

    /// Every plugin marked uninstalled, sorted by name.
    pub async fn uninstalled(&self) -> Result<Vec<String>, StoreError> {
        self.read(params::uninstalled).await
    }

    /// Stores a new token (its `created_at_ms` is set here) and returns it as stored. A name
    /// that is taken is refused with [`StoreError::TokenNameTaken`].
    pub async fn create_token(&self, token: TokenRecord) -> Result<TokenRecord, StoreError> {
        self.write(move |conn, ctx| tokens::insert(conn, ctx, &token))
            .await
    }

    /// Every token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(tokens::list).await
    }

    /// The token whose secret hashes to `hash`, if any (expired ones included: the caller
    /// checks the expiry).
    pub async fn token_by_hash(&self, hash: [u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        self.read_point(move |conn| tokens::by_hash(conn, &hash))
            .await
    }

    /// The database's size in bytes: its pages in use times the page size (what the file holds
    /// once the write-ahead log is checkpointed; free pages of deleted rows included). A read of
    /// two header fields, cheap enough for every metrics scrape.
    pub async fn size_bytes(&self) -> Result<u64, StoreError> {
        self.read_point(|conn| {
            let pages: u64 = conn
                .pragma_query_value(None, "page_count", |row| row.get(0))
                .sql()?;
            let page_size: u64 = conn
                .pragma_query_value(None, "page_size", |row| row.get(0))
                .sql()?;
            Ok(pages * page_size)
        })
        .await
    }

    /// Deletes the token whose id or name is `which`; returns it, `None` if there is none.
    pub async fn revoke_token(&self, which: &str) -> Result<Option<TokenRecord>, StoreError> {
        let which = which.to_owned();
        self.write(move |conn, _| tokens::revoke(conn, &which))
            .await
    }

    /// Adds a script version (see [`AddMode`]) and makes it current; content that an earlier
    /// version has (same digest) is not stored twice: that version is made current.
    pub async fn add_script_version(
        &self,
        new: NewScriptVersion,
        mode: AddMode,
    ) -> Result<AddedVersion, StoreError> {
        self.write(move |conn, ctx| scripts::add_version(conn, ctx, &new, mode))
            .await
    }

    /// One script, `None` if there is none.
    pub async fn script(&self, id: &str) -> Result<Option<ScriptRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| scripts::script(conn, &id)).await
    }

    /// Every script, by id.
    pub async fn scripts(&self) -> Result<Vec<ScriptRecord>, StoreError> {
        self.read(scripts::scripts).await
    }

    /// One version of a script (`None`: the current one).
    pub async fn script_version(
        &self,
        id: &str,
        version: Option<u64>,
    ) -> Result<ScriptVersion, StoreError> {
        let id = id.to_owned();
        // Read at the start of every run: inline when a connection is free.
        self.read_point(move |conn| scripts::version(conn, &id, version))
            .await
    }

    /// Every version of a script, oldest first.
    pub async fn script_versions(&self, id: &str) -> Result<Vec<ScriptVersion>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| scripts::versions(conn, &id)).await
    }

    /// Makes an existing version the one runs use (a rollback).
    pub async fn set_script_current(&self, id: &str, version: u64) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write(move |conn, ctx| scripts::set_current(conn, ctx, &id, version))
            .await
    }

    /// Removes a script and its versions (its runs stay, until the retention purge); `false` if
    /// there was none.
    pub async fn remove_script(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |conn, _| scripts::remove(conn, &id)).await
    }

    /// Records a queued run; returns its id.
    pub async fn insert_run(&self, run: NewRun) -> Result<u64, StoreError> {
        self.write_point(move |conn, ctx| scripts::insert_run(conn, ctx, &run, false))
            .await
    }

    /// Records a run that starts at once (a slot was free): `running`, queued and started now,
    /// in one write instead of [`Store::insert_run`] and [`Store::start_run`]. Through the
    /// writer thread, not inline: the run's sandbox is being prepared meanwhile on a blocking
    /// thread, which an inline commit would keep off the caller's CPU.
    pub async fn insert_started_run(&self, run: NewRun) -> Result<u64, StoreError> {
        self.write(move |conn, ctx| scripts::insert_run(conn, ctx, &run, true))
            .await
    }

    /// Marks a queued run as running; returns the time recorded.
    pub async fn start_run(&self, id: u64) -> Result<u64, StoreError> {
        self.write_point(move |conn, ctx| scripts::start_run(conn, ctx, id))
            .await
    }

    /// Records how a run ended; returns the time recorded.
    pub async fn finish_run(&self, id: u64, end: RunEnd) -> Result<u64, StoreError> {
        self.write_point(move |conn, ctx| scripts::finish_run(conn, ctx, id, &end))
            .await
    }

    /// One run, `None` if there is none.
    pub async fn run(&self, id: u64) -> Result<Option<RunRecord>, StoreError> {
        // A row by its key, read after every run: inline when a connection is free.
        self.read_point(move |conn| scripts::run(conn, id)).await
    }

    /// Runs, newest first: of one script or of all, with ids below `before`, at most `limit`.
    pub async fn runs(
        &self,
        script_id: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let script_id = script_id.map(str::to_owned);
        self.read(move |conn| scripts::runs(conn, script_id.as_deref(), before, limit))
            .await
    }

    /// Marks the runs a stopped host left queued or running as failed; returns how many.
    pub async fn interrupt_runs(&self) -> Result<u64, StoreError> {
        self.write(scripts::interrupt_runs).await
    }

    /// Deletes the runs that ended before `before_ms`; returns how many.
    pub async fn purge_runs(&self, before_ms: u64) -> Result<u64, StoreError> {
        self.write(move |conn, _| scripts::purge_runs(conn, before_ms))
            .await
    }

    /// Stores a template (`replace`: overwrite one of the same name).
    pub async fn put_template(
        &self,
        template: TemplateRecord,
        replace: bool,
    ) -> Result<TemplateRecord, StoreError> {
        self.write(move |conn, ctx| scripts::put_template(conn, ctx, &template, replace))
            .await
    }

    /// One template, `None` if there is none.
    pub async fn template(&self, name: &str) -> Result<Option<TemplateRecord>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| scripts::template(conn, &name)).await
    }

    /// Every template, by name.
    pub async fn templates(&self) -> Result<Vec<TemplateRecord>, StoreError> {
        self.read(scripts::templates).await
    }

    /// Removes a template; `false` if there was none.
    pub async fn remove_template(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |conn, _| scripts::remove_template(conn, &name))
            .await
    }

    /// A small write (a row or a few, bounded by the caller): when the writer is idle and
    /// nothing is queued, `f` commits right here on the caller's thread, in a transaction of its
    /// own. A commit in WAL mode without an fsync takes tens of microseconds, less than waking
    /// the writer thread and being woken by it (on a VM whose other CPU idles, up to ~0.2 ms each
    /// way). Otherwise, and always with [`Durability::Full`] (the fsync would block a runtime
    /// worker) or when another process holds the database's write lock (never waited for
    /// here), as [`Store::write`]. Requests that arrive while one commits inline queue and are
    /// batched by the writer as before.
    ///
    /// "Idle" also means the writer thread has not committed a batch of several requests in the
    /// last [`writer::Activity::QUIET`] (1 ms): while writes come together they go to its queue
    /// and share transactions (an inline commit between two batches makes the next batch wait
    /// for it and costs a transaction of its own: 64 event publishers lost a third of their rate
    /// without this check); writes that come one at a time commit inline. A commit made here
    /// never checkpoints the WAL (see [`writer::Checkpoints`]). Used by event appends, cursor
    /// moves and kv commits (`plugd-bench services`/`work`: a kv.set from a Python plugin 107–111
    /// → 94–99 µs p50 with 64 in flight unchanged at 28–32k commits/s; publish → handler p50,
    /// wasm subscriber 84–112 → 29–48 µs, Python 139–150 → 52–94 µs).
    async fn write_point<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Ctx) -> Result<T, StoreError> + Send + 'static,
    {
        // As for inline reads: a write that never waits still counts against the task's budget.
        tokio::task::coop::consume_budget().await;
        let mut f = f;
        if self.inner.inline
            && self.inner.pending.load(Ordering::Acquire) == 0
            && self.inner.activity.quiet()
        {
            let conn = match self.inner.writer.try_lock() {
                Ok(conn) => Some(conn),
                Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            // Checked again under the lock: a request queued before it must commit first.
            if let Some(conn) = conn
                && self.inner.pending.load(Ordering::Acquire) == 0
            {
                let ctx = Ctx {
                    now_ms: writer::now_ms(),
                    undo_depth: self.inner.undo_depth,
                };
                match writer::run_inline(&conn, f, &ctx, BUSY_TIMEOUT) {
                    Ok(result) => {
                        drop(conn);
                        self.inner.batches.fetch_add(1, Ordering::Relaxed);
                        if self.inner.checkpoints.wake_writer() {
                            self.wake_writer();
                        }
                        return result;
                    }
                    Err(back) => f = back,
                }
            }
        }
        self.write(f).await
    }

    /// Queues an empty request, so that the writer thread runs a batch and then the checkpoint
    /// that is due. Never waits: with a full queue the writer is busy and gets to it anyway.
    fn wake_writer(&self) {
        let (job, _) = Job::new(|_: &Connection, _: &Ctx| Ok(()));
        let queued = Queued::new(&self.inner.pending);
        if self.inner.queue.try_send(Box::new(job)).is_ok() {
            queued.sent();
        }
    }

    /// How many WAL checkpoints the writer thread has run.
    #[doc(hidden)]
    pub fn checkpoints(&self) -> u64 {
        self.inner.checkpoints.runs()
    }

    /// Queues `f` for the writer and waits until its batch is committed. Cancel-safe: a dropped
    /// future leaves the request queued, and it is committed all the same. The answer itself has
    /// no deadline here: the writer answers every request once SQLite returns (lock waits are
    /// bounded by `busy_timeout`), and a tokio timer would fire spuriously under a paused test
    /// clock; callers that need a deadline wrap the call.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Ctx) -> Result<T, StoreError> + Send + 'static,
    {
        let (job, answer) = Job::new(f);
        // Counted before it is sent, so that no inline commit overtakes it; uncounted unless
        // the writer got it (also when this future is dropped while waiting for room).
        let queued = Queued::new(&self.inner.pending);
        match tokio::time::timeout(writer::SEND_DEADLINE, self.inner.queue.send(Box::new(job)))
            .await
        {
            Ok(Ok(())) => queued.sent(),
            Ok(Err(_)) => return Err(StoreError::Closed),
            Err(_) => {
                return Err(StoreError::Busy {
                    waited_ms: writer::SEND_DEADLINE.as_millis() as u64,
                });
            }
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// A read of one row by its key: an index lookup of a few pages, which SQLite serves from
    /// its page cache (or the OS's) in microseconds. When a read connection is free right now it
    /// runs on the caller's thread, sparing the two thread hops of a blocking task (most of such
    /// a read's cost); otherwise as [`Store::read`]. Nothing is awaited while the connection is
    /// out of the pool, so a dropped future cannot leak it.
    async fn read_point<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // A read served inline never waits, so a task reading in a loop would never yield:
        // count it against the task's cooperative budget like any tokio operation.
        tokio::task::coop::consume_budget().await;
        if let Some(pool) = &self.inner.reads
            && let Ok(permit) = pool.permits.try_acquire()
        {
            let taken = pool
                .conns
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pop();
            if let Some(conn) = taken {
                let result = f(&conn);
                pool.conns
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(conn);
                drop(permit);
                return result;
            }
        }
        self.read(f).await
    }

    /// Runs `f` on a read connection on a blocking thread (or through the writer when there is
    /// no pool).
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let Some(pool) = &self.inner.reads else {
            return self.write(move |conn, _| f(conn)).await;
        };
        // A permit guarantees a free connection in `conns`. Waiting is bounded like a write's
        // wait for queue room.
        let permit =
            match tokio::time::timeout(writer::SEND_DEADLINE, pool.permits.clone().acquire_owned())
                .await
            {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(StoreError::Closed),
                Err(_) => {
                    return Err(StoreError::Busy {
                        waited_ms: writer::SEND_DEADLINE.as_millis() as u64,
                    });
                }
            };
        let pool = pool.clone();
        // The blocking job owns the permit and puts the connection back itself, so a caller that
        // drops this future (a timeout, a disconnected client) can never leak a connection.
        tokio::task::spawn_blocking(move || {
            let conn = pool
                .conns
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pop()
                .ok_or(StoreError::Closed)?;
            let result = f(&conn);
            pool.conns
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(conn);
            drop(permit);
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

/// Opens the write connection (WAL, durability, migrations) and `readers` read-only ones.
fn open_files(
    config: &StoreConfig,
    readers: usize,
) -> Result<(Connection, Vec<Connection>), StoreError> {
    let shown = config.path.display().to_string();
    let open_err = |reason: String| StoreError::Open {
        path: shown.clone(),
        reason,
    };
    if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| open_err(format!("cannot create its directory: {e}")))?;
    }
    // SQLite's message repeats the path; ours already names it.
    let reason = |e: rusqlite::Error| {
        let text = e.to_string();
        text.strip_suffix(&format!(": {shown}"))
            .map_or(text.clone(), str::to_owned)
    };
    let mut conn = Connection::open(&config.path).map_err(|e| open_err(reason(e)))?;
    prepare_writer(&mut conn, config.durability).map_err(|e| match e {
        StoreError::Sqlite(reason) => open_err(reason),
        other => other,
    })?;
    schema::migrate(&mut conn, &shown, SCHEMA_VERSION).map_err(|e| match e {
        StoreError::Sqlite(reason) => open_err(format!("cannot migrate: {reason}")),
        other => other,
    })?;
    let readers = (0..readers)
        .map(|_| open_reader(&config.path).map_err(|e| open_err(reason(e))))
        .collect::<Result<_, _>>()?;
    Ok((conn, readers))
}

fn prepare_writer(conn: &mut Connection, durability: Durability) -> Result<(), StoreError> {
    configure(conn).sql()?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .sql()?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Sqlite(format!(
            "the file system refused WAL mode (got `{mode}`)"
        )));
    }
    let synchronous = match durability {
        Durability::Process => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous).sql()?;
    // After a checkpoint, keep the WAL file at most 64 MiB instead of its high-water mark.
    conn.pragma_update(None, "journal_size_limit", 64 << 20)
        .sql()?;
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    Ok(conn)
}

/// Statements cached per connection: every statement the store runs fits, so none is ever
/// evicted and compiled again (rusqlite's default is 16; the writer alone runs ~30 kinds).
const STATEMENT_CACHE: usize = 64;

/// What every connection gets: the lock wait, a statement cache that holds every statement, and
/// the query planner stability guarantee (QPSG).
///
/// Without QPSG, SQLite 3.54 marks a statement whose plan it derived from a bound value (any
/// `WHERE plugin = ?1 ... ORDER BY`, `LIMIT ?n`) for re-preparation whenever that parameter is
/// rebound, and rusqlite clears the bindings of every statement it puts back in its cache, which
/// counts as a rebind: such a statement was compiled again on every use (the oldest-commit lookup
/// of every kv commit, the params read, undo, redo, list). Our statements are primary-key lookups
/// and ranges whose plan does not depend on the values, so nothing is lost by fixing the plans.
fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Helpers for this crate's migration tests; not part of the API.
#[doc(hidden)]
pub mod testing {
    use std::path::Path;

    use rusqlite::Connection;

    use crate::StoreError;
    use crate::error::SqlResult;

    /// Creates a database at `path` with the schema of `version` (as that release of plugd
    /// would have left it) and runs `fixture_sql` in it: the data an older plugd wrote.
    pub fn create_at_version(
        path: &Path,
        version: u32,
        fixture_sql: &str,
    ) -> Result<(), StoreError> {
        let mut conn = Connection::open(path).sql()?;
        conn.pragma_update(None, "journal_mode", "WAL").sql()?;
        crate::schema::migrate(&mut conn, &path.display().to_string(), version)?;
        conn.execute_batch(fixture_sql).sql()?;
        Ok(())
    }

    /// The schema version of the file at `path`.
    pub fn version_of(path: &Path) -> Result<u32, StoreError> {
        let conn = Connection::open(path).sql()?;
        crate::schema::version(&conn)
    }

    /// Sets the schema version of the file at `path` (to simulate a newer plugd).
    pub fn set_version(path: &Path, version: u32) -> Result<(), StoreError> {
        let conn = Connection::open(path).sql()?;
        conn.pragma_update(None, "user_version", version).sql()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread a write ran on, and the write's own answer.
    async fn written_on(store: &Store, value: &str) -> (String, Result<(), StoreError>) {
        let value = value.to_owned();
        let (thread, result) = store
            .write_point(move |conn, ctx| {
                let thread = std::thread::current().name().unwrap_or("").to_owned();
                Ok((
                    thread,
                    params::set(conn, ctx, "p", &value, "test").map(drop),
                ))
            })
            .await
            .unwrap();
        (thread, result)
    }

    /// A store in a fresh directory (kept as long as the `TempDir`).
    async fn open(durability: Durability) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path().join("plugd.db"));
        config.durability = durability;
        (dir, Store::open(config).await.unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_writer_lets_a_write_commit_on_the_callers_thread() {
        let (_dir, store) = open(Durability::Process).await;
        let (thread, result) = written_on(&store, r#"{"a":1}"#).await;
        result.unwrap();
        assert_ne!(thread, "plugd-store-writer");
        assert_eq!(store.params("p").await.unwrap().unwrap()["a"], 1);
        assert_eq!(store.inner.pending.load(Ordering::Acquire), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_durability_always_commits_on_the_writer() {
        let (_dir, store) = open(Durability::Full).await;
        let (thread, result) = written_on(&store, r#"{"a":1}"#).await;
        result.unwrap();
        assert_eq!(thread, "plugd-store-writer");
    }

    /// Another process's write lock: the inline attempt does not wait for it, the request goes
    /// to the writer, which waits (within `busy_timeout`) and commits once the lock is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_blocked_by_another_connection_waits_on_the_writer_not_the_caller() {
        let (dir, store) = open(Durability::Process).await;
        let other = Connection::open(dir.path().join("plugd.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let releasing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            other.execute_batch("COMMIT").unwrap();
        });
        let (thread, result) = written_on(&store, r#"{"b":2}"#).await;
        releasing.join().unwrap();
        result.unwrap();
        assert_eq!(thread, "plugd-store-writer");
        assert_eq!(store.params("p").await.unwrap().unwrap()["b"], 2);
        assert_eq!(store.inner.pending.load(Ordering::Acquire), 0);
        // Idle again: the next one is inline.
        let (thread, _) = written_on(&store, r#"{"c":3}"#).await;
        assert_ne!(thread, "plugd-store-writer");
    }
}
