//! Durable background tasks: a queue per plugin with priorities, retries, progress, cancel and
//! an after-last hook per key.
//!
//! The store holds every task and every state change (written before the host acts on it); the
//! host keeps each plugin's schedule in memory and rebuilds it from the store at start, where
//! a task that was running when the previous host died is queued again (its `attempts` already
//! counts the run that was cut short: at least once).
//!
//! Semantics (also in ARCHITECTURE.md):
//! - states `queued → running → succeeded | failed | cancelled`; a retry goes back to `queued`
//!   with a `not_before` time;
//! - priority tasks before normal ones, FIFO within a priority (by id);
//! - per plugin, at most `limits.tasks` run at once, apart from its calls' `limits.concurrency`;
//! - a run may take `limits.task_timeout`; past it the handler is cancelled and the task fails
//!   with `task_timeout` (not retried);
//! - a failure the handler marks retryable (`retry`) or a crash is retried after
//!   [`TASK_BACKOFF`] × 2^(attempt − 1) (at most [`TASK_BACKOFF_MAX`]) until `max_attempts`;
//!   any other failure is final;
//! - cancelling a queued task is immediate; cancelling a running one sends the protocol `cancel`
//!   and waits up to the runtime's grace for the handler to stop; `stopped` says whether it did;
//! - `dedupe` on a key that has a queued task returns that task instead of a new one;
//! - `after_last(key)`: when the number of queued plus running tasks of a key drops to zero, the
//!   plugin's `@after_last` run for that key is queued (once: not while one is queued), runs
//!   after any running one of the same key, and is retried like a task.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use plugd_manifest::PluginName;
use plugd_runtime::{
    AFTER_LAST, LogLevel, LogSource, Progress, RuntimeError, TASK_CANCEL_GRACE, TASK_RETRY, TaskRun,
};
use plugd_store::{NewTask, TaskEnd, TaskFilter, TaskRecord, TaskState};
use serde_json::value::RawValue;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::registry::Slot;
use crate::{Host, HostError, now_ms};

/// Default attempts of a task before a retryable failure is final.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The most attempts a submitter may ask for.
pub const MAX_ATTEMPTS: u32 = 20;
/// The wait before the first retry; it doubles with each further attempt.
pub const TASK_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const TASK_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Queued tasks a plugin may have before a submit is refused (the default of
/// [`crate::HostConfig::task_queue`]).
pub const DEFAULT_TASK_QUEUE: usize = 10_000;
/// The largest task payload and result, as JSON text.
pub const MAX_TASK_PAYLOAD: usize = 1 << 20;
/// The longest task name and key.
const MAX_TASK_NAME: usize = 64;
const MAX_KEY: usize = 256;

/// What to submit.
#[derive(Clone, Debug)]
pub struct TaskSubmit {
    /// The plugin that runs it.
    pub plugin: String,
    /// The task name (the handler the plugin registered, e.g. `@plugin.task("embed")`).
    pub task: String,
    /// The JSON payload.
    pub payload: serde_json::Value,
    /// Groups tasks for `dedupe` and the after-last hook.
    pub key: Option<String>,
    /// Runs before normal tasks.
    pub priority: bool,
    /// With a `key`: when a task of that key is queued, return it instead of a new one.
    pub dedupe: bool,
    /// Attempts before a retryable failure is final (default 3).
    pub max_attempts: Option<u32>,
}

impl TaskSubmit {
    /// A normal task without key.
    pub fn new(plugin: &str, task: &str, payload: serde_json::Value) -> TaskSubmit {
        TaskSubmit {
            plugin: plugin.to_owned(),
            task: task.to_owned(),
            payload,
            key: None,
            priority: false,
            dedupe: false,
            max_attempts: None,
        }
    }
}

/// A task as the host shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskView {
    /// Its id.
    pub id: u64,
    /// The plugin.
    pub plugin: String,
    /// The task name (`@after_last` for an after-last run).
    pub task: String,
    /// The payload (JSON).
    pub payload: serde_json::Value,
    /// The key.
    pub key: Option<String>,
    /// Priority task.
    pub priority: bool,
    /// Where it is.
    pub state: TaskState,
    /// Runs started so far.
    pub attempts: u32,
    /// Attempts before a retryable failure is final.
    pub max_attempts: u32,
    /// Fraction done, as last reported.
    pub progress: Option<f64>,
    /// The last progress message.
    pub message: Option<String>,
    /// The result (succeeded).
    pub result: Option<serde_json::Value>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// The failure's code (`plugin_failed`, `task_timeout`, `cancelled`, a plugin's own).
    pub error_code: Option<String>,
    /// Cancelled while running: whether the handler stopped.
    pub stopped: Option<bool>,
    /// Timestamps, ms since the Unix epoch.
    pub submitted_ms: u64,
    /// When the latest run started.
    pub started_ms: Option<u64>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// A queued retry waits until then (0: no wait).
    pub not_before_ms: u64,
    /// A dedupe submit returned this existing task.
    pub deduped: bool,
}

impl TaskView {
    fn from_record(r: TaskRecord) -> TaskView {
        let parse = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
        TaskView {
            id: r.id,
            payload: parse(&r.payload),
            result: r.result.as_deref().map(parse),
            plugin: r.plugin,
            task: r.task,
            key: r.key,
            priority: r.priority,
            state: r.state,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            progress: r.progress,
            message: r.message,
            error: r.error,
            error_code: r.error_code,
            stopped: r.stopped,
            submitted_ms: r.submitted_ms,
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
            not_before_ms: r.not_before_ms,
            deduped: false,
        }
    }
}

/// Which tasks to list (see [`Host::tasks`]).
#[derive(Clone, Debug, Default)]
pub struct TaskQuery {
    /// Only this plugin's.
    pub plugin: Option<String>,
    /// Only in this state.
    pub state: Option<TaskState>,
    /// Only with this key.
    pub key: Option<String>,
    /// Only older than this id (paging).
    pub before: Option<u64>,
    /// At most this many, newest first (default 100).
    pub limit: Option<usize>,
}

/// A queued task as the schedule keeps it (enough to run it without reading the store).
#[derive(Clone, Debug)]
struct Pending {
    task: String,
    payload: String,
    key: Option<String>,
    priority: bool,
    after_last: bool,
}

struct Running {
    key: Option<String>,
    after_last: bool,
    cancel: CancellationToken,
    /// Set by `cancel`: who cancelled it (the outcome becomes `cancelled`).
    cancelled_by: Option<String>,
    progress: Option<(Option<f64>, Option<String>)>,
    /// Resolved when the run is recorded.
    done: Arc<Notify>,
}

/// One plugin's schedule.
#[derive(Default)]
struct Schedule {
    /// (0 = priority / 1 = normal, id).
    ready: BTreeSet<(u8, u64)>,
    /// (not before, ms; id): retries waiting.
    delayed: BTreeSet<(u64, u64)>,
    pending: HashMap<u64, Pending>,
    running: HashMap<u64, Running>,
    /// Queued plus running tasks (not after-last runs) per key.
    keys: HashMap<String, usize>,
}

impl Schedule {
    fn queued(&self) -> usize {
        self.pending.len()
    }

    fn enqueue(&mut self, id: u64, pending: Pending, not_before_ms: u64, now_ms: u64) {
        if not_before_ms > now_ms {
            self.delayed.insert((not_before_ms, id));
        } else {
            self.ready.insert((u8::from(!pending.priority), id));
        }
        self.pending.insert(id, pending);
    }

    fn count_key(&mut self, key: &Option<String>, after_last: bool) {
        if let (Some(key), false) = (key, after_last) {
            *self.keys.entry(key.clone()).or_default() += 1;
        }
    }

    /// Takes one task off the count of its key; returns the key when it dropped to zero.
    fn uncount_key(&mut self, key: &Option<String>, after_last: bool) -> Option<String> {
        let (Some(key), false) = (key, after_last) else {
            return None;
        };
        let n = self.keys.get_mut(key)?;
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.keys.remove(key);
            return Some(key.clone());
        }
        None
    }

    /// Moves retries whose time came to the ready set; returns when the next one is due.
    fn promote(&mut self, now_ms: u64) -> Option<u64> {
        while let Some(&(at, id)) = self.delayed.first() {
            if at > now_ms {
                return Some(at);
            }
            self.delayed.pop_first();
            if let Some(p) = self.pending.get(&id) {
                self.ready.insert((u8::from(!p.priority), id));
            }
        }
        None
    }

    /// The next task to run: the first ready one, skipping an after-last run while another
    /// run of the same key's hook is in progress.
    fn next(&mut self) -> Option<(u64, Pending)> {
        let busy_hooks: Vec<&Option<String>> = self
            .running
            .values()
            .filter(|r| r.after_last)
            .map(|r| &r.key)
            .collect();
        let pick = self.ready.iter().copied().find(|(_, id)| {
            self.pending
                .get(id)
                .is_some_and(|p| !p.after_last || !busy_hooks.contains(&&p.key))
        })?;
        self.ready.remove(&pick);
        let pending = self.pending.remove(&pick.1)?;
        Some((pick.1, pending))
    }

    fn remove_queued(&mut self, id: u64) -> Option<Pending> {
        let pending = self.pending.remove(&id)?;
        self.ready.remove(&(u8::from(!pending.priority), id));
        self.delayed.retain(|&(_, i)| i != id);
        Some(pending)
    }
}

/// One plugin's queue and its dispatcher.
pub(crate) struct PluginTasks {
    name: PluginName,
    schedule: Mutex<Schedule>,
    wake: Notify,
}

/// Every plugin's task queue.
pub(crate) struct Board {
    plugins: Mutex<HashMap<PluginName, Arc<PluginTasks>>>,
    updates: broadcast::Sender<Arc<TaskView>>,
    stop: CancellationToken,
    /// Set at shutdown: a run that fails because its instance stopped is left for the next
    /// start instead of being counted as a failure.
    shutting_down: AtomicBool,
    /// Serialises the first recovery from the store.
    recovered: tokio::sync::OnceCell<()>,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            plugins: Mutex::new(HashMap::new()),
            updates: broadcast::channel(1024).0,
            stop: CancellationToken::new(),
            shutting_down: AtomicBool::new(false),
            recovered: tokio::sync::OnceCell::new(),
        }
    }
}

impl Board {
    pub(crate) fn stop_all(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.stop.cancel();
    }

    /// Queued and running tasks of every plugin that has a queue.
    pub(crate) fn counts(&self) -> Vec<(PluginName, usize, usize)> {
        let queues: Vec<Arc<PluginTasks>> = self.plugins.lock().values().cloned().collect();
        queues
            .iter()
            .map(|q| {
                let schedule = q.schedule.lock();
                (q.name.clone(), schedule.queued(), schedule.running.len())
            })
            .collect()
    }
}

impl Host {
    /// Submits a task; returns it once it is durable (`queued`). With `dedupe` and a `key` that
    /// already has a queued task, returns that task (`deduped`). Refused when the plugin is not
    /// installed (404), the name, key or payload is invalid (400) or its queue is full (429).
    pub async fn submit(&self, submit: TaskSubmit) -> Result<TaskView, HostError> {
        let slot = self.inner.existing(&submit.plugin)?;
        if slot.inner.lock().state() == crate::PluginState::Uninstalled {
            return Err(HostError::NotRunning {
                plugin: submit.plugin.clone(),
                state: crate::PluginState::Uninstalled,
                reason: Some(format!(
                    "it is uninstalled; hint: `plugd load {}` installs it again",
                    submit.plugin
                )),
            });
        }
        check_task_name(&submit.task)?;
        if let Some(key) = &submit.key
            && (key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control))
        {
            return Err(HostError::Invalid(format!(
                "Task key `{}` is not valid; hint: use 1 to {MAX_KEY} printable characters",
                key.escape_default()
            )));
        }
        let max_attempts = submit.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(HostError::Invalid(format!(
                "`max_attempts` must be 1 to {MAX_ATTEMPTS}, found {max_attempts}"
            )));
        }
        let payload = submit.payload.to_string();
        if payload.len() > MAX_TASK_PAYLOAD {
            return Err(HostError::Invalid(format!(
                "The payload of task `{}` is {} bytes, more than {MAX_TASK_PAYLOAD}; hint: put large data in kv or the data dir and send its key",
                submit.task,
                payload.len()
            )));
        }
        self.recover_tasks().await?;
        let queue = self.plugin_tasks(&slot);
        let limit = self.inner.config.task_queue;
        if queue.schedule.lock().queued() >= limit {
            return Err(HostError::Overloaded(format!(
                "Plugin `{}` already has {limit} queued tasks; task `{}` was refused; hint: wait for the queue to drain (`plugd tasks --plugin {}`)",
                submit.plugin, submit.task, submit.plugin
            )));
        }
        let new = NewTask {
            plugin: submit.plugin.clone(),
            task: submit.task.clone(),
            after_last: false,
            payload: payload.clone(),
            key: submit.key.clone(),
            priority: submit.priority,
            max_attempts,
            dedupe: submit.dedupe,
        };
        let (record, deduped) = self.store().await?.task_insert(new).await?;
        let mut view = TaskView::from_record(record);
        view.deduped = deduped;
        if !deduped {
            // Announced before the dispatcher can start it, so followers see `queued` first.
            let _ = self.inner.board.updates.send(Arc::new(view.clone()));
            {
                let mut schedule = queue.schedule.lock();
                schedule.count_key(&submit.key, false);
                schedule.enqueue(
                    view.id,
                    Pending {
                        task: submit.task,
                        payload,
                        key: submit.key,
                        priority: submit.priority,
                        after_last: false,
                    },
                    0,
                    0,
                );
            }
            queue.wake.notify_one();
        }
        Ok(view)
    }

    /// One task.
    pub async fn task(&self, id: u64) -> Result<TaskView, HostError> {
        let record = self
            .store()
            .await?
            .task(id)
            .await?
            .ok_or_else(|| task_not_found(id))?;
        let mut view = TaskView::from_record(record);
        self.overlay_progress(&mut view);
        Ok(view)
    }

    /// Tasks matching `query`, newest first.
    pub async fn tasks(&self, query: TaskQuery) -> Result<Vec<TaskView>, HostError> {
        let records = self
            .store()
            .await?
            .tasks(TaskFilter {
                plugin: query.plugin,
                state: query.state,
                key: query.key,
                before: query.before,
                limit: query.limit.unwrap_or(100).min(10_000),
            })
            .await?;
        Ok(records
            .into_iter()
            .map(|r| {
                let mut view = TaskView::from_record(r);
                self.overlay_progress(&mut view);
                view
            })
            .collect())
    }

    /// Follows task changes live: every submit, start, progress report and end.
    pub fn task_updates(&self) -> broadcast::Receiver<Arc<TaskView>> {
        self.inner.board.updates.subscribe()
    }

    /// Cancels a task: a queued one at once; a running one by asking its handler to stop, and
    /// returns once the run is over (within the runtime's grace), with `stopped` saying whether
    /// the handler stopped. A finished task cannot be cancelled (`conflict`).
    pub async fn cancel_task(&self, id: u64, by: &str) -> Result<TaskView, HostError> {
        self.recover_tasks().await?;
        let record = self
            .store()
            .await?
            .task(id)
            .await?
            .ok_or_else(|| task_not_found(id))?;
        if record.state.is_finished() {
            return Err(HostError::Conflict(format!(
                "Task {id} is already {}; only queued or running tasks can be cancelled",
                record.state.as_str()
            )));
        }
        let Some(slot) = self.inner.slot(&record.plugin) else {
            return Err(task_not_found(id));
        };
        let queue = self.plugin_tasks(&slot);
        let action = {
            let mut schedule = queue.schedule.lock();
            if let Some(pending) = schedule.remove_queued(id) {
                let emptied = schedule.uncount_key(&pending.key, pending.after_last);
                Some(Err((pending, emptied)))
            } else if let Some(running) = schedule.running.get_mut(&id) {
                running.cancelled_by = Some(by.to_owned());
                running.cancel.cancel();
                Some(Ok(running.done.clone()))
            } else {
                None
            }
        };
        match action {
            Some(Err((_, emptied))) => {
                let record = self
                    .store()
                    .await?
                    .task_end(
                        id,
                        TaskEnd::Cancelled {
                            error: format!("Cancelled by {by} before it ran"),
                            stopped: None,
                        },
                        None,
                    )
                    .await?;
                crate::telemetry::task_ended(&slot, record.state, None);
                let view = TaskView::from_record(record);
                let _ = self.inner.board.updates.send(Arc::new(view.clone()));
                if let Some(key) = emptied {
                    self.queue_after_last(&queue, key).await;
                }
                Ok(view)
            }
            Some(Ok(done)) => {
                let wait = done.notified();
                // The run records its end within the grace (plus the write).
                let _ =
                    tokio::time::timeout(TASK_CANCEL_GRACE + Duration::from_secs(5), wait).await;
                self.task(id).await
            }
            // Between states (a run being recorded): what the store says now.
            None => self.task(id).await,
        }
    }

    /// Reports progress of a running task (from its plugin).
    pub(crate) fn task_progress(&self, slot: &Slot, progress: &Progress) {
        let Some(id) = progress.task else { return };
        let Some(queue) = self.inner.board.plugins.lock().get(&slot.name).cloned() else {
            return;
        };
        let update = {
            let mut schedule = queue.schedule.lock();
            let Some(running) = schedule.running.get_mut(&id) else {
                return;
            };
            let fraction = progress.fraction.map(|f| f.clamp(0.0, 1.0));
            running.progress = Some((fraction, progress.message.clone()));
            (fraction, progress.message.clone())
        };
        if self.inner.board.updates.receiver_count() > 0 {
            let view = TaskView {
                id,
                plugin: slot.name.to_string(),
                task: String::new(),
                payload: serde_json::Value::Null,
                key: None,
                priority: false,
                state: TaskState::Running,
                attempts: 0,
                max_attempts: 0,
                progress: update.0,
                message: update.1,
                result: None,
                error: None,
                error_code: None,
                stopped: None,
                submitted_ms: 0,
                started_ms: None,
                finished_ms: None,
                not_before_ms: 0,
                deduped: false,
            };
            let _ = self.inner.board.updates.send(Arc::new(view));
        }
    }

    /// The live progress of a running task over what the store holds.
    fn overlay_progress(&self, view: &mut TaskView) {
        if view.state != TaskState::Running {
            return;
        }
        let Ok(name) = PluginName::new(&view.plugin) else {
            return;
        };
        let Some(queue) = self.inner.board.plugins.lock().get(&name).cloned() else {
            return;
        };
        if let Some(Running {
            progress: Some((fraction, message)),
            ..
        }) = queue.schedule.lock().running.get(&view.id)
        {
            view.progress = *fraction;
            view.message = message.clone();
        }
    }

    /// Loads the unfinished tasks of the previous run into the schedule (once per host).
    pub(crate) async fn recover_tasks(&self) -> Result<(), HostError> {
        let board = &self.inner.board;
        board
            .recovered
            .get_or_try_init(|| async {
                let store = self.store().await?;
                store.tasks_requeue_running().await?;
                let now = now_ms();
                for record in store.tasks_unfinished().await? {
                    let Some(slot) = self.inner.slot(&record.plugin) else {
                        // A task of a plugin that is no longer installed waits in the store.
                        continue;
                    };
                    let queue = self.plugin_tasks(&slot);
                    let mut schedule = queue.schedule.lock();
                    schedule.count_key(&record.key, record.after_last);
                    schedule.enqueue(
                        record.id,
                        Pending {
                            task: record.task,
                            payload: record.payload,
                            key: record.key,
                            priority: record.priority,
                            after_last: record.after_last,
                        },
                        record.not_before_ms,
                        now,
                    );
                    drop(schedule);
                    queue.wake.notify_one();
                }
                Ok::<(), HostError>(())
            })
            .await?;
        Ok(())
    }

    /// The queue of a plugin, created (with its dispatcher) on first use.
    fn plugin_tasks(&self, slot: &Arc<Slot>) -> Arc<PluginTasks> {
        let mut plugins = self.inner.board.plugins.lock();
        if let Some(queue) = plugins.get(&slot.name) {
            return queue.clone();
        }
        let queue = Arc::new(PluginTasks {
            name: slot.name.clone(),
            schedule: Mutex::new(Schedule::default()),
            wake: Notify::new(),
        });
        plugins.insert(slot.name.clone(), queue.clone());
        let host = Arc::downgrade(&self.inner);
        let slot = Arc::downgrade(slot);
        let stop = self.inner.board.stop.clone();
        let dispatched = queue.clone();
        tokio::spawn(async move { dispatch(host, slot, dispatched, stop).await });
        queue
    }

    /// Queues the after-last run of `key` (unless one is queued already).
    async fn queue_after_last(&self, queue: &Arc<PluginTasks>, key: String) {
        let new = NewTask {
            plugin: queue.name.to_string(),
            task: AFTER_LAST.to_owned(),
            after_last: true,
            payload: serde_json::json!({ "key": key }).to_string(),
            key: Some(key.clone()),
            priority: false,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            dedupe: true,
        };
        let store = match self.store().await {
            Ok(store) => store,
            Err(e) => {
                tracing::error!(plugin = %queue.name, "cannot queue the after-last run of `{key}`: {e}");
                return;
            }
        };
        match store.task_insert(new).await {
            Ok((record, false)) => {
                let view = TaskView::from_record(record);
                let _ = self.inner.board.updates.send(Arc::new(view.clone()));
                {
                    let mut schedule = queue.schedule.lock();
                    schedule.enqueue(
                        view.id,
                        Pending {
                            task: view.task.clone(),
                            payload: view.payload.to_string(),
                            key: view.key.clone(),
                            priority: false,
                            after_last: true,
                        },
                        0,
                        0,
                    );
                }
                queue.wake.notify_one();
            }
            Ok((_, true)) => {}
            Err(e) => {
                tracing::error!(plugin = %queue.name, "cannot queue the after-last run of `{key}`: {e}");
            }
        }
    }

    /// Sends a task change to the live followers, if any (the view is built only then).
    fn announce(&self, view: impl FnOnce() -> TaskView) {
        if self.inner.board.updates.receiver_count() > 0 {
            let _ = self.inner.board.updates.send(Arc::new(view()));
        }
    }

    /// Runs one task to its end and records the outcome.
    async fn run_one(&self, slot: Arc<Slot>, queue: Arc<PluginTasks>, id: u64, pending: Pending) {
        let store = match self.store().await {
            Ok(store) => store.clone(),
            Err(_) => return,
        };
        let (cancel, done) = {
            let schedule = queue.schedule.lock();
            match schedule.running.get(&id) {
                Some(r) => (r.cancel.clone(), r.done.clone()),
                None => return,
            }
        };
        let record = match store.task_start(id).await {
            Ok(record) => record,
            Err(e) => {
                // Not started: back to the queue, tried again on the next wake.
                tracing::warn!(plugin = %slot.name, "cannot start task {id}: {e}");
                let mut schedule = queue.schedule.lock();
                schedule.running.remove(&id);
                schedule.enqueue(id, pending, now_ms() + 1000, now_ms());
                return;
            }
        };
        self.announce(|| TaskView::from_record(record.clone()));
        let outcome = match slot.running() {
            None => Err(RuntimeError::NotRunning {
                plugin: slot.name.clone(),
                reason: "it stopped".into(),
            }),
            Some(generation) => {
                let timeout = generation.manifest.limits.task_timeout;
                let payload = RawValue::from_string(pending.payload.clone())
                    .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("JSON"));
                let run = TaskRun {
                    id,
                    task: pending.task.clone(),
                    payload,
                    key: pending.key.clone(),
                    attempt: record.attempts,
                    timeout,
                    cancel: cancel.clone(),
                };
                // The runtime enforces the timeout; this bound only guards against one that
                // does not.
                let guard = timeout + TASK_CANCEL_GRACE + Duration::from_secs(5);
                match tokio::time::timeout(guard, generation.instance.run_task(run)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(RuntimeError::Timeout {
                        plugin: slot.name.clone(),
                        action: pending.task.clone(),
                        timeout,
                    }),
                }
            }
        };
        let (cancelled_by, progress) = {
            let schedule = queue.schedule.lock();
            schedule
                .running
                .get(&id)
                .map(|r| (r.cancelled_by.clone(), r.progress.clone()))
                .unwrap_or_default()
        };
        let shutting_down = self.inner.board.shutting_down.load(Ordering::SeqCst);
        if shutting_down && outcome.is_err() && cancelled_by.is_none() {
            // The host is stopping under it: left `running` in the store, run again at the
            // next start (at least once).
            return;
        }
        let end = decide(
            &slot.name,
            &pending,
            record.attempts,
            record.max_attempts,
            outcome,
            cancelled_by,
        );
        let retry_at = match &end {
            TaskEnd::Failed {
                retry_at_ms: Some(at),
                ..
            } => Some(*at),
            _ => None,
        };
        if let TaskEnd::Failed { error, .. } = &end {
            slot.push_log(
                LogSource::Runtime,
                if retry_at.is_some() {
                    LogLevel::Warn
                } else {
                    LogLevel::Error
                },
                &format!(
                    "Task `{}` ({id}) attempt {} failed{}: {error}",
                    pending.task,
                    record.attempts,
                    if retry_at.is_some() { ", retrying" } else { "" }
                ),
            );
        }
        let recorded = store.task_end(id, end, progress).await;
        let emptied = {
            let mut schedule = queue.schedule.lock();
            schedule.running.remove(&id);
            match (&recorded, retry_at) {
                (Ok(_), Some(at)) => {
                    schedule.enqueue(id, pending.clone(), at, now_ms());
                    None
                }
                (Ok(_), None) => schedule.uncount_key(&pending.key, pending.after_last),
                // Not recorded: it stays `running` in the store and runs again at the next
                // start; here it is put back to run again.
                (Err(_), _) => {
                    schedule.enqueue(id, pending.clone(), now_ms() + 1000, now_ms());
                    None
                }
            }
        };
        done.notify_waiters();
        queue.wake.notify_one();
        match recorded {
            Ok(record) => {
                let ran = record
                    .started_ms
                    .zip(record.finished_ms)
                    .map(|(start, end)| Duration::from_millis(end.saturating_sub(start)));
                crate::telemetry::task_ended(&slot, record.state, ran);
                self.announce(|| TaskView::from_record(record))
            }
            Err(e) => {
                tracing::error!(plugin = %slot.name, "cannot record the end of task {id}: {e}")
            }
        }
        if let Some(key) = emptied {
            self.queue_after_last(&queue, key).await;
        }
    }
}

/// Maps a run's outcome to what is recorded.
fn decide(
    plugin: &PluginName,
    pending: &Pending,
    attempt: u32,
    max_attempts: u32,
    outcome: Result<plugd_runtime::Outcome, RuntimeError>,
    cancelled_by: Option<String>,
) -> TaskEnd {
    if let Some(by) = cancelled_by {
        let stopped = match &outcome {
            // No answer within the grace: the handler may still run.
            Err(RuntimeError::Timeout { .. }) => false,
            _ => true,
        };
        return TaskEnd::Cancelled {
            error: if stopped {
                format!("Cancelled by {by} while it ran; the handler stopped")
            } else {
                format!(
                    "Cancelled by {by} while it ran; the handler did not stop within {TASK_CANCEL_GRACE:?} and may still be running"
                )
            },
            stopped: Some(stopped),
        };
    }
    let (error, code, retryable) = match outcome {
        Ok(outcome) => {
            let result = outcome.result.get();
            if result.len() > MAX_TASK_PAYLOAD {
                (
                    format!(
                        "Task `{}` returned {} bytes, more than {MAX_TASK_PAYLOAD}; hint: put large results in kv or the data dir",
                        pending.task,
                        result.len()
                    ),
                    "bad_result".to_owned(),
                    false,
                )
            } else {
                return TaskEnd::Succeeded {
                    result: result.to_owned(),
                };
            }
        }
        Err(RuntimeError::ActionFailed {
            message,
            code: Some(code),
            ..
        }) if code == TASK_RETRY => (message, code, true),
        // The handler's own code (`cancelled` without a cancel request: it cancelled itself).
        Err(RuntimeError::ActionFailed {
            message,
            code: Some(code),
            ..
        }) => (message, code, false),
        Err(e @ (RuntimeError::Crashed { .. } | RuntimeError::NotRunning { .. })) => {
            (e.to_string(), e.code().to_owned(), true)
        }
        Err(RuntimeError::Timeout { timeout, .. }) => (
            format!(
                "Plugin `{plugin}` did not finish task `{}` within {timeout:?} (`limits.task_timeout`)",
                pending.task
            ),
            "task_timeout".to_owned(),
            false,
        ),
        Err(RuntimeError::UnknownAction { .. }) => (
            format!(
                "Plugin `{plugin}` has no task `{}`; hint: register a handler with `@plugin.task(\"{}\")`",
                pending.task, pending.task
            ),
            "task_not_found".to_owned(),
            false,
        ),
        Err(e) => (e.to_string(), e.code().to_owned(), false),
    };
    let retry_at_ms = (retryable && attempt < max_attempts).then(|| {
        let backoff = TASK_BACKOFF
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(TASK_BACKOFF_MAX);
        now_ms() + backoff.as_millis() as u64
    });
    TaskEnd::Failed {
        error,
        code,
        retry_at_ms,
    }
}

/// The dispatcher of one plugin's queue: starts ready tasks while the plugin runs and has a
/// free task slot. Ends with the host.
async fn dispatch(
    host: std::sync::Weak<crate::lifecycle::HostInner>,
    slot: std::sync::Weak<Slot>,
    queue: Arc<PluginTasks>,
    stop: CancellationToken,
) {
    loop {
        let woken = queue.wake.notified();
        let (Some(inner), Some(slot)) = (host.upgrade(), slot.upgrade()) else {
            return;
        };
        if stop.is_cancelled() {
            return;
        }
        let host = Host { inner };
        let mut next_due = None;
        if let Some(generation) = slot.running() {
            let limit = generation.manifest.limits.tasks as usize;
            loop {
                let picked = {
                    let mut schedule = queue.schedule.lock();
                    next_due = schedule.promote(now_ms());
                    let next = if schedule.running.len() >= limit {
                        None
                    } else {
                        schedule.next()
                    };
                    if let Some((id, pending)) = &next {
                        schedule.running.insert(
                            *id,
                            Running {
                                key: pending.key.clone(),
                                after_last: pending.after_last,
                                cancel: CancellationToken::new(),
                                cancelled_by: None,
                                progress: None,
                                done: Arc::new(Notify::new()),
                            },
                        );
                    }
                    next
                };
                let Some((id, pending)) = picked else { break };
                let (host, slot, queue) = (host.clone(), slot.clone(), queue.clone());
                tokio::spawn(async move { host.run_one(slot, queue, id, pending).await });
            }
        }
        let started = slot.phase_changed.notified();
        drop(host);
        let wait = match next_due {
            Some(at) => {
                Duration::from_millis(at.saturating_sub(now_ms())).min(Duration::from_secs(1))
            }
            None => Duration::from_secs(1),
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = woken => {}
            _ = started => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn check_task_name(task: &str) -> Result<(), HostError> {
    let ok = !task.is_empty()
        && task.len() <= MAX_TASK_NAME
        && task
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && task.as_bytes()[0].is_ascii_alphabetic();
    if ok {
        Ok(())
    } else {
        Err(HostError::Invalid(format!(
            "Task name `{}` is not valid; hint: use 1 to {MAX_TASK_NAME} letters, digits, `_`, `-` or `.`, starting with a letter (e.g. `embed`)",
            task.escape_default()
        )))
    }
}

fn task_not_found(id: u64) -> HostError {
    HostError::NotFound(format!(
        "There is no task {id}; hint: `plugd tasks` lists the tasks (finished ones are kept for the retention period)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(priority: bool, key: Option<&str>, after_last: bool) -> Pending {
        Pending {
            task: "t".into(),
            payload: "null".into(),
            key: key.map(str::to_owned),
            priority,
            after_last,
        }
    }

    #[test]
    fn priority_first_then_fifo() {
        let mut s = Schedule::default();
        s.enqueue(1, pending(false, None, false), 0, 0);
        s.enqueue(2, pending(true, None, false), 0, 0);
        s.enqueue(3, pending(false, None, false), 0, 0);
        s.enqueue(4, pending(true, None, false), 0, 0);
        let order: Vec<u64> = std::iter::from_fn(|| s.next().map(|(id, _)| id)).collect();
        assert_eq!(order, [2, 4, 1, 3]);
    }

    #[test]
    fn delayed_retries_wait_for_their_time() {
        let mut s = Schedule::default();
        s.enqueue(1, pending(false, None, false), 5_000, 1_000);
        assert!(s.next().is_none());
        assert_eq!(s.promote(4_999), Some(5_000));
        assert!(s.next().is_none());
        assert_eq!(s.promote(5_000), None);
        assert_eq!(s.next().map(|(id, _)| id), Some(1));
    }

    #[test]
    fn keys_count_down_to_zero_once() {
        let mut s = Schedule::default();
        let k = Some("index".to_owned());
        s.count_key(&k, false);
        s.count_key(&k, false);
        s.count_key(&k, true);
        assert_eq!(s.uncount_key(&k, false), None);
        assert_eq!(s.uncount_key(&k, true), None, "hook runs are not counted");
        assert_eq!(s.uncount_key(&k, false), Some("index".into()));
        assert_eq!(s.uncount_key(&None, false), None);
    }

    #[test]
    fn an_after_last_run_waits_for_the_running_one_of_its_key() {
        let mut s = Schedule::default();
        s.running.insert(
            1,
            Running {
                key: Some("k".into()),
                after_last: true,
                cancel: CancellationToken::new(),
                cancelled_by: None,
                progress: None,
                done: Arc::new(Notify::new()),
            },
        );
        s.enqueue(2, pending(false, Some("k"), true), 0, 0);
        s.enqueue(3, pending(false, Some("k"), false), 0, 0);
        assert_eq!(s.next().map(|(id, _)| id), Some(3));
        assert!(s.next().is_none());
        s.running.clear();
        assert_eq!(s.next().map(|(id, _)| id), Some(2));
    }

    #[test]
    fn outcomes_map_to_states() {
        let name = PluginName::new("p").unwrap();
        let p = pending(false, None, false);
        let failed = |code: &str| {
            Err(RuntimeError::ActionFailed {
                plugin: name.clone(),
                action: "t".into(),
                message: "boom".into(),
                code: Some(code.into()),
            })
        };
        assert!(matches!(
            decide(&name, &p, 1, 3, failed("retry"), None),
            TaskEnd::Failed {
                retry_at_ms: Some(_),
                ..
            }
        ));
        assert!(matches!(
            decide(&name, &p, 3, 3, failed("retry"), None),
            TaskEnd::Failed {
                retry_at_ms: None,
                ..
            }
        ));
        assert!(matches!(
            decide(&name, &p, 1, 3, failed("other"), None),
            TaskEnd::Failed {
                retry_at_ms: None,
                ..
            }
        ));
        let crashed = Err(RuntimeError::Crashed {
            plugin: name.clone(),
            reason: "exit 1".into(),
        });
        assert!(matches!(
            decide(&name, &p, 1, 3, crashed, None),
            TaskEnd::Failed {
                retry_at_ms: Some(_),
                ..
            }
        ));
        let timeout = Err(RuntimeError::Timeout {
            plugin: name.clone(),
            action: "t".into(),
            timeout: Duration::from_secs(1),
        });
        match decide(&name, &p, 1, 3, timeout, Some("api".into())) {
            TaskEnd::Cancelled { stopped, .. } => assert_eq!(stopped, Some(false)),
            other => panic!("{other:?}"),
        }
        match decide(&name, &p, 1, 3, failed("cancelled"), Some("api".into())) {
            TaskEnd::Cancelled { stopped, .. } => assert_eq!(stopped, Some(true)),
            other => panic!("{other:?}"),
        }
    }
}
