//! A running wasm plugin: its ready instances, calls with deadlines and limits, and fault mapping.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use plugd_manifest::{ActionName, PluginName};
use plugd_runtime::{
    ActionInfo, CallPermit, CallSlots, HostCalls, Instance, InstanceSpec, InstanceStatus,
    Invocation, LogLevel, LogSource, Outcome, RuntimeError, TaskRun,
};
use serde_json::value::RawValue;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::bindings::{Exports, GuestError, State};
use crate::limits::Limiter;
use crate::stdio::LogStream;
use crate::{Code, Inner, InstanceReuse};

/// A started wasm plugin. Implements [`Instance`]; [`WasmInstance::call_blocking`] is the same
/// call for callers on their own (non-async) threads.
///
/// Calls run on the caller's task as wasmtime async calls; a guest that runs longer than an
/// epoch tick yields to the executor at every tick, so it never holds a worker thread for more
/// than a tick at a time.
pub struct WasmInstance {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<Inner>,
    code: Arc<Code>,
    spec: InstanceSpec,
    plugin: PluginName,
    host: Arc<dyn HostCalls>,
    handle: tokio::runtime::Handle,
    idle: Mutex<Vec<Ready>>,
    max_idle: usize,
    slots: CallSlots,
    actions: Vec<ActionInfo>,
    stopped: AtomicBool,
    faults: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// One instantiated component in its own store.
struct Ready {
    store: Store<State>,
    exports: Exports,
}

/// A ready instance taken for one call, with how its budget was set.
struct Lease {
    ready: Ready,
    /// Whether `limits.cpu`, not the call's timeout, set the stop time.
    cpu_bound: bool,
}

/// What a call is, for deadlines and messages.
struct CallCtx<'a> {
    action: &'a str,
    timeout: Duration,
    started: Instant,
    /// The plugins whose calls led here (for `plugin.call`s the guest makes).
    chain: &'a [PluginName],
}

impl WasmInstance {
    /// Instantiates once, asks the plugin to describe itself, and keeps that instance ready.
    pub(crate) async fn start(
        inner: Arc<Inner>,
        code: Arc<Code>,
        spec: InstanceSpec,
        host: Arc<dyn HostCalls>,
        handle: tokio::runtime::Handle,
    ) -> Result<Arc<WasmInstance>, RuntimeError> {
        let plugin = spec.manifest.name.clone();
        for dir in &spec.manifest.permissions.fs_read {
            if !spec.package_dir.join(dir).is_dir() {
                return Err(RuntimeError::Refused {
                    plugin,
                    reason: format!(
                        "`permissions.fs_read` entry `{}` is not a directory of the package; hint: wasm plugins can be granted directories only",
                        dir.display()
                    ),
                });
            }
        }
        let max_idle = match inner.config.instance_reuse {
            InstanceReuse::Pooled { max_idle } => {
                max_idle.min(spec.manifest.limits.concurrency as usize)
            }
            InstanceReuse::Fresh => 0,
        };
        let slots = CallSlots::new(plugin.clone(), spec.manifest.limits.concurrency as usize);
        let mut shared = Shared {
            inner,
            code,
            plugin: plugin.clone(),
            host,
            handle,
            idle: Mutex::new(Vec::new()),
            max_idle,
            slots,
            actions: Vec::new(),
            stopped: AtomicBool::new(false),
            faults: AtomicU64::new(0),
            last_error: Mutex::new(None),
            spec,
        };
        let timeout = shared.spec.manifest.limits.call_timeout;
        // `on-start` (when exported) runs on the first instance, before anything else.
        let ctx = CallCtx {
            action: "on-start",
            timeout,
            started: Instant::now(),
            chain: &[],
        };
        if shared.code.indices.has_lifecycle() {
            let started = match shared.lease(&ctx).await {
                Ok(mut lease) => {
                    let ready = &mut lease.ready;
                    let answer = ready.exports.on_start(&mut ready.store).await;
                    match shared.give_back(&ctx, lease, answer) {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(format!("`on-start` failed: {} ({})", e.message, e.code)),
                        Err(e) => Err(format!("`on-start` failed: {e}")),
                    }
                }
                Err(e) => Err(format!("`on-start` failed: {e}")),
            };
            started.map_err(|reason| RuntimeError::StartFailed {
                plugin: plugin.clone(),
                reason,
            })?;
        }
        let ctx = CallCtx {
            action: "describe",
            timeout,
            started: Instant::now(),
            chain: &[],
        };
        let described = match shared.lease(&ctx).await {
            Ok(mut lease) => {
                let ready = &mut lease.ready;
                let answer = ready.exports.describe(&mut ready.store).await;
                shared.give_back(&ctx, lease, answer)
            }
            Err(e) => Err(e),
        };
        let description = described.map_err(|e| RuntimeError::StartFailed {
            plugin: plugin.clone(),
            reason: format!("`describe` failed: {e}"),
        })?;
        shared.actions =
            parse_actions(&description).map_err(|reason| RuntimeError::StartFailed {
                plugin: plugin.clone(),
                reason,
            })?;
        Ok(Arc::new(WasmInstance {
            shared: Arc::new(shared),
        }))
    }

    /// Calls an action on the current thread, which must not be an async worker: the call's
    /// future is driven here with [`tokio::runtime::Handle::block_on`] on the runtime the plugin
    /// was started on (host requests need it).
    ///
    /// Waits for a concurrency slot like [`Instance::call`] (the wait counts against the
    /// call's timeout; none in time is [`RuntimeError::Overloaded`]).
    pub fn call_blocking(&self, invocation: &Invocation) -> Result<Outcome, RuntimeError> {
        let shared = &self.shared;
        let started = Instant::now();
        // A free slot is taken without entering the runtime; only a wait for one does.
        shared.check_running()?;
        if let Some(_permit) = shared.slots.try_acquire() {
            return shared.handle.block_on(shared.call(invocation, started));
        }
        shared.handle.block_on(async {
            let _permit = shared.acquire(shared.timeout(invocation)).await?;
            shared.call(invocation, started).await
        })
    }

    /// How many ready instances are kept for the next calls.
    pub fn idle_instances(&self) -> usize {
        self.shared
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[async_trait]
impl Instance for WasmInstance {
    async fn call(&self, invocation: Invocation) -> Result<Outcome, RuntimeError> {
        let shared = &self.shared;
        let started = Instant::now();
        let timeout = shared.timeout(&invocation);
        // Waiting for a concurrency slot counts against the call's deadline.
        let _permit = shared.acquire(timeout).await?;
        let action = &invocation.action;
        // A panic in the runtime (never a guest fault: those are traps) fails this call only.
        AssertUnwindSafe(shared.call(&invocation, started))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(RuntimeError::Crashed {
                    plugin: shared.plugin.clone(),
                    reason: format!(
                        "the call of `{action}` panicked in the runtime: {}",
                        panic_message(&panic)
                    ),
                })
            })
    }

    async fn event(&self, topic: &str, payload: &RawValue) -> Result<(), RuntimeError> {
        let shared = &self.shared;
        let started = Instant::now();
        let timeout = shared.spec.manifest.limits.call_timeout;
        let _permit = shared.acquire(timeout).await?;
        shared.check_running()?;
        let ctx = CallCtx {
            action: "on-event",
            timeout,
            started,
            chain: &[],
        };
        let deliver = async {
            let mut lease = shared.lease(&ctx).await?;
            let ready = &mut lease.ready;
            let answer = ready
                .exports
                .on_event(&mut ready.store, topic, payload.get())
                .await;
            shared.give_back(&ctx, lease, answer)
        };
        AssertUnwindSafe(deliver)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(RuntimeError::Crashed {
                    plugin: shared.plugin.clone(),
                    reason: format!(
                        "delivering an event panicked in the runtime: {}",
                        panic_message(&panic)
                    ),
                })
            })
    }

    /// A task runs like a call on a pooled instance; cancelling it drops the run (the guest is
    /// stopped at once, its instance discarded), so the handler always stops.
    async fn run_task(&self, run: TaskRun) -> Result<Outcome, RuntimeError> {
        let task = run.task.clone();
        tokio::select! {
            // A guest answers `unknown_task` for a task it lacks (`wit/plugd-0.2.wit`).
            outcome = self.run_task_as(&run.task, &run.payload, Some(run.timeout), Some(run.id)) => match outcome {
                Err(RuntimeError::ActionFailed { plugin, action, code: Some(code), .. })
                    if code == "unknown_task" =>
                {
                    Err(RuntimeError::UnknownAction { plugin, action })
                }
                other => other,
            },
            _ = run.cancel.cancelled() => Err(RuntimeError::ActionFailed {
                plugin: self.shared.plugin.clone(),
                action: task,
                message: "the task was cancelled".into(),
                code: Some(plugd_runtime::TASK_CANCELLED.into()),
            }),
        }
    }

    fn actions(&self) -> Vec<ActionInfo> {
        self.shared.actions.clone()
    }

    fn status(&self) -> InstanceStatus {
        let shared = &self.shared;
        let stopped = shared.stopped.load(Ordering::Acquire);
        let reuse = match shared.inner.config.instance_reuse {
            InstanceReuse::Pooled { .. } => "pooled",
            InstanceReuse::Fresh => "fresh",
        };
        InstanceStatus {
            ready: !stopped,
            dead: false,
            restarts: 0,
            last_error: shared
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            pid: None,
            late_replies: 0,
            details: vec![
                (
                    "world".to_owned(),
                    format!("plugd:plugin@{}", shared.code.version),
                ),
                ("instances".to_owned(), reuse.to_owned()),
                (
                    "idle_instances".to_owned(),
                    self.idle_instances().to_string(),
                ),
                (
                    "faulted_instances".to_owned(),
                    shared.faults.load(Ordering::Relaxed).to_string(),
                ),
                // Calls holding a concurrency slot now (inside the guest, not waiting).
                (
                    "calls.running".to_owned(),
                    shared.slots.in_use().to_string(),
                ),
            ],
            // A trapped instance is replaced before the next call: nothing waits to restart.
            backoff: None,
        }
    }

    async fn stop(&self, grace: Duration) {
        let shared = &self.shared;
        // A wasm instance holds no outside resources: dropping the stores is the whole stop.
        // Calls already running finish (their deadline bounds them) and are then dropped.
        if shared.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        if shared.code.indices.has_lifecycle() {
            let ctx = CallCtx {
                action: "on-stop",
                timeout: grace,
                started: Instant::now(),
                chain: &[],
            };
            let hook = async {
                let mut lease = shared.lease(&ctx).await?;
                let ready = &mut lease.ready;
                let answer = ready.exports.on_stop(&mut ready.store).await;
                shared.give_back(&ctx, lease, answer)
            };
            let done = AssertUnwindSafe(hook).catch_unwind().await;
            // The plugin stops either way; a failed hook is worth a line in its log.
            let failed = match done {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(panic) => Some(format!(
                    "it panicked in the runtime: {}",
                    panic_message(&panic)
                )),
            };
            if let Some(reason) = failed {
                shared.host.log(
                    LogSource::Runtime,
                    LogLevel::Warn,
                    &format!("`on-stop` of plugin `{}` failed: {reason}", shared.plugin),
                );
            }
        }
        shared
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl WasmInstance {
    /// Runs the task `task` with `payload` on a component that exports
    /// `plugd:plugin/tasks@0.2.0`, like a call: a concurrency slot, the call's deadline and
    /// limits (`timeout`, else `limits.call_timeout`), the same fault mapping. A component
    /// without `tasks` is refused.
    pub async fn run_task(
        &self,
        task: &str,
        payload: &RawValue,
        timeout: Option<Duration>,
    ) -> Result<Outcome, RuntimeError> {
        self.run_task_as(task, payload, timeout, None).await
    }

    /// [`WasmInstance::run_task`] for task `id`: the guest's `progress` reports name it.
    async fn run_task_as(
        &self,
        task: &str,
        payload: &RawValue,
        timeout: Option<Duration>,
        id: Option<u64>,
    ) -> Result<Outcome, RuntimeError> {
        let shared = &self.shared;
        if !shared.code.indices.has_tasks() {
            return Err(RuntimeError::Refused {
                plugin: shared.plugin.clone(),
                reason: format!(
                    "it cannot run task `{task}`: its component does not export `plugd:plugin/tasks@0.2.0`; hint: build it for the world `plugin-full` of `wit/plugd-0.2.wit`"
                ),
            });
        }
        let started = Instant::now();
        let timeout = timeout.unwrap_or(shared.spec.manifest.limits.call_timeout);
        let _permit = shared.acquire(timeout).await?;
        let ctx = CallCtx {
            action: task,
            timeout,
            started,
            chain: &[],
        };
        let run = async {
            let mut lease = shared.lease(&ctx).await?;
            if id.is_some() {
                // A task of the host's queue is bounded by its own timeout
                // (`limits.task_timeout`), not by the per-call CPU budget `limits.cpu`.
                lease.cpu_bound = false;
                let state = lease.ready.store.data_mut();
                state.task = id;
                state.stop = state.deadline;
            }
            let ready = &mut lease.ready;
            let answer = ready
                .exports
                .run_task(&mut ready.store, task, payload.get())
                .await;
            let answer = shared.give_back(&ctx, lease, answer)?;
            shared.outcome(task, answer)
        };
        AssertUnwindSafe(run)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(shared.panicked(task, &panic)))
    }

    /// Tells a component that exports `plugd:plugin/lifecycle@0.2.0` that its settings
    /// changed (`on-params-changed`); its error is the caller's (e.g. settings it rejects).
    /// Nothing to do for other components. Instances made afterwards still see the settings
    /// they were started with in `PLUGD_PARAMS`.
    pub async fn params_changed(&self, params: &serde_json::Value) -> Result<(), RuntimeError> {
        let shared = &self.shared;
        if !shared.code.indices.has_lifecycle() {
            return Ok(());
        }
        let started = Instant::now();
        let timeout = shared.spec.manifest.limits.call_timeout;
        let _permit = shared.acquire(timeout).await?;
        let ctx = CallCtx {
            action: "on-params-changed",
            timeout,
            started,
            chain: &[],
        };
        let params = params.to_string();
        let run = async {
            let mut lease = shared.lease(&ctx).await?;
            let ready = &mut lease.ready;
            let answer = ready
                .exports
                .on_params_changed(&mut ready.store, &params)
                .await;
            let answer = shared.give_back(&ctx, lease, answer)?;
            answer.map_err(|e| shared.guest_error(ctx.action, e))
        };
        AssertUnwindSafe(run)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(shared.panicked(ctx.action, &panic)))
    }
}

impl Shared {
    /// Waits for a concurrency slot (the shared policy of every runtime: the wait counts against
    /// the call's timeout; no slot in time is `Overloaded`). A call that got its slot after a
    /// stop is refused by [`Shared::call`]'s own check.
    async fn acquire(&self, timeout: Duration) -> Result<CallPermit<'_>, RuntimeError> {
        self.check_running()?;
        let permit = self.slots.acquire(timeout).await?;
        self.check_running()?;
        Ok(permit)
    }

    fn timeout(&self, invocation: &Invocation) -> Duration {
        invocation
            .timeout
            .unwrap_or(self.spec.manifest.limits.call_timeout)
    }

    async fn call(
        &self,
        invocation: &Invocation,
        started: Instant,
    ) -> Result<Outcome, RuntimeError> {
        self.check_running()?;
        let ctx = CallCtx {
            action: invocation.action.as_str(),
            timeout: self.timeout(invocation),
            started,
            chain: &invocation.chain,
        };
        let mut lease = self.lease(&ctx).await?;
        let ready = &mut lease.ready;
        let answer = ready
            .exports
            .call(
                &mut ready.store,
                invocation.action.as_str(),
                invocation.payload.get(),
            )
            .await;
        let answer = self.give_back(&ctx, lease, answer)?;
        self.outcome(ctx.action, answer)
    }

    /// A guest's `result<string, error>` as the caller's outcome.
    fn outcome(
        &self,
        action: &str,
        answer: Result<String, GuestError>,
    ) -> Result<Outcome, RuntimeError> {
        match answer {
            Ok(text) => match RawValue::from_string(text) {
                Ok(result) => Ok(Outcome { result }),
                Err(e) => Err(RuntimeError::ActionFailed {
                    plugin: self.plugin.clone(),
                    action: action.to_owned(),
                    message: format!("the result is not JSON: {e}"),
                    code: Some("bad_result".to_owned()),
                }),
            },
            Err(error) => Err(self.guest_error(action, error)),
        }
    }

    /// Takes a ready instance (or instantiates one) and sets its deadline and limits for the
    /// call. The caller runs the guest on it and hands it to [`Shared::give_back`].
    async fn lease(&self, ctx: &CallCtx<'_>) -> Result<Lease, RuntimeError> {
        let remaining = ctx.timeout.saturating_sub(ctx.started.elapsed());
        if remaining.is_zero() {
            return Err(self.timeout_error(ctx));
        }
        let cpu = self.spec.manifest.limits.cpu;
        let budget = remaining.min(cpu);
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut ready = match pooled {
            Some(ready) => ready,
            // Boxed: instantiation's future is large, and held inline it would make every call's
            // future (moved a few times per call, pooled or not) as large.
            None => Box::pin(self.instantiate(ctx.started + remaining)).await?,
        };
        let now = Instant::now();
        let state = ready.store.data_mut();
        state.deadline = now + remaining;
        state.chain = ctx.chain.to_vec();
        state.task = None;
        // The epoch callback interrupts the guest at the first tick at or after `stop`: never
        // early, at most a tick late.
        state.stop = now + budget;
        state.limiter.denied = false;
        state.stderr.clear_tail();
        ready.store.set_epoch_deadline(1);
        Ok(Lease {
            ready,
            cpu_bound: budget < remaining,
        })
    }

    /// Ends a call: the instance goes back to the pool only when the guest returned normally;
    /// otherwise it is dropped and the fault mapped to the caller's error.
    fn give_back<R>(
        &self,
        ctx: &CallCtx<'_>,
        lease: Lease,
        answer: wasmtime::Result<R>,
    ) -> Result<R, RuntimeError> {
        let Lease { ready, cpu_bound } = lease;
        match answer {
            Ok(value) => {
                if !self.stopped.load(Ordering::Acquire) {
                    let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                    if idle.len() < self.max_idle {
                        idle.push(ready);
                    }
                }
                Ok(value)
            }
            Err(error) => {
                let denied = ready.store.data().limiter.denied;
                let stderr = ready.store.data().stderr.tail();
                drop(ready);
                Err(self.fault(ctx, &error, denied, cpu_bound, &stderr))
            }
        }
    }

    async fn instantiate(&self, deadline: Instant) -> Result<Ready, RuntimeError> {
        let spec = &self.spec;
        let stderr = LogStream::new(self.host.clone(), LogSource::Stderr);
        let wasi = self
            .wasi(stderr.clone())
            .map_err(|reason| RuntimeError::StartFailed {
                plugin: self.plugin.clone(),
                reason,
            })?;
        let state = State {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(spec.manifest.limits.memory),
            host: self.host.clone(),
            stderr,
            deadline,
            // Instantiation runs the component's start functions: give them the call's budget.
            stop: deadline,
            chain: Vec::new(),
            task: None,
        };
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        // Every tick, a running guest either stops (its time is up) or yields to the executor
        // and goes on. `yield_now` puts the task at the back of the queue, so other tasks run.
        store.epoch_deadline_callback(|store| {
            if Instant::now() >= store.data().stop {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        store.set_epoch_deadline(1);
        match self.code.pre.instantiate_async(&mut store).await {
            Ok(instance) => {
                let exports = self.code.indices.load(&mut store, &instance).map_err(|e| {
                    RuntimeError::StartFailed {
                        plugin: self.plugin.clone(),
                        reason: format!("the component's exports do not match: {}", e.root_cause()),
                    }
                })?;
                Ok(Ready { store, exports })
            }
            Err(e) => {
                if store.data().limiter.denied {
                    return Err(self.memory_error());
                }
                if e.is::<wasmtime::PoolConcurrencyLimitError>() {
                    return Err(RuntimeError::LimitExceeded {
                        plugin: self.plugin.clone(),
                        limit: "instances".to_owned(),
                        hint: Some(
                            "too many wasm instances are alive in this host; raise `WasmConfig::max_instances`"
                                .to_owned(),
                        ),
                    });
                }
                Err(RuntimeError::StartFailed {
                    plugin: self.plugin.clone(),
                    reason: format!("instantiating the component failed: {}", e.root_cause()),
                })
            }
        }
    }

    fn wasi(&self, stderr: LogStream) -> Result<wasmtime_wasi::WasiCtx, String> {
        let spec = &self.spec;
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(LogStream::new(self.host.clone(), LogSource::Stdout))
            .stderr(stderr);
        wasi.env("PLUGD_DATA_DIR", "/data")
            .env("PLUGD_PARAMS", spec.params.to_string());
        for name in &spec.manifest.permissions.env {
            if let Ok(value) = std::env::var(name) {
                wasi.env(name, value);
            }
        }
        wasi.preopened_dir(&spec.data_dir, "/data", FsPerms::ReadWrite)
            .map_err(|e| {
                format!(
                    "cannot open the data dir `{}`: {}",
                    spec.data_dir.display(),
                    e.root_cause()
                )
            })?;
        for dir in &spec.manifest.permissions.fs_read {
            let guest = format!("/package/{}", dir.display());
            let guest = guest.trim_end_matches('/');
            wasi.preopened_dir(spec.package_dir.join(dir), guest, FsPerms::ReadOnly)
                .map_err(|e| format!("cannot open `{}`: {}", dir.display(), e.root_cause()))?;
        }
        Ok(wasi.build())
    }

    /// Turns a failed wasm call into the error its caller sees, and records it.
    fn fault(
        &self,
        ctx: &CallCtx<'_>,
        error: &wasmtime::Error,
        memory_denied: bool,
        cpu_bound: bool,
        stderr: &[String],
    ) -> RuntimeError {
        self.faults.fetch_add(1, Ordering::Relaxed);
        let interrupted = error.downcast_ref::<Trap>() == Some(&Trap::Interrupt);
        let mapped = if interrupted && cpu_bound {
            RuntimeError::LimitExceeded {
                plugin: self.plugin.clone(),
                limit: "cpu".to_owned(),
                hint: Some("raise `limits.cpu` in `plugin.toml`".to_owned()),
            }
        } else if interrupted {
            self.timeout_error(ctx)
        } else if memory_denied {
            self.memory_error()
        } else {
            let mut message = match error.downcast_ref::<Trap>() {
                Some(trap) => trap.to_string(),
                None => error.root_cause().to_string(),
            };
            // A guest language runtime (Python, JS) prints the uncaught exception to stderr
            // and then traps: its last lines say what the trap alone cannot.
            if !stderr.is_empty() {
                message.push_str("; the guest's stderr ended with: ");
                message.push_str(&stderr.join(" | "));
            }
            RuntimeError::ActionFailed {
                plugin: self.plugin.clone(),
                action: ctx.action.to_owned(),
                message,
                code: Some("trap".to_owned()),
            }
        };
        self.host.log(
            LogSource::Runtime,
            LogLevel::Error,
            &format!("{mapped}; the instance was discarded ({error:?})"),
        );
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(mapped.to_string());
        mapped
    }

    fn guest_error(&self, action: &str, error: GuestError) -> RuntimeError {
        let plugin = self.plugin.clone();
        let action = action.to_owned();
        if let Some(status @ 400..=499) = error.status {
            return RuntimeError::ClientError {
                plugin,
                action,
                code: error.code,
                message: error.message,
                // 401 and 403 will mean authentication; a plugin may not answer them.
                status: if matches!(status, 401 | 403) {
                    400
                } else {
                    status
                },
            };
        }
        match error.code.as_str() {
            "unknown_action" => RuntimeError::UnknownAction { plugin, action },
            "bad_payload" => RuntimeError::BadPayload {
                plugin,
                action,
                message: error.message,
            },
            _ => RuntimeError::ActionFailed {
                plugin,
                action,
                message: error.message,
                code: Some(error.code),
            },
        }
    }

    fn panicked(&self, action: &str, panic: &Box<dyn std::any::Any + Send>) -> RuntimeError {
        RuntimeError::Crashed {
            plugin: self.plugin.clone(),
            reason: format!(
                "`{action}` panicked in the runtime: {}",
                panic_message(panic)
            ),
        }
    }

    fn timeout_error(&self, ctx: &CallCtx<'_>) -> RuntimeError {
        RuntimeError::Timeout {
            plugin: self.plugin.clone(),
            action: ctx.action.to_owned(),
            timeout: ctx.timeout,
        }
    }

    fn memory_error(&self) -> RuntimeError {
        RuntimeError::LimitExceeded {
            plugin: self.plugin.clone(),
            limit: "memory".to_owned(),
            hint: Some("raise `limits.memory` in `plugin.toml`".to_owned()),
        }
    }

    fn not_running(&self) -> RuntimeError {
        RuntimeError::NotRunning {
            plugin: self.plugin.clone(),
            reason: "it was stopped".to_owned(),
        }
    }

    fn check_running(&self) -> Result<(), RuntimeError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(self.not_running());
        }
        Ok(())
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// Reads `describe`'s `{"actions": [{"name", "description"}]}`.
fn parse_actions(text: &str) -> Result<Vec<ActionInfo>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("`describe` did not return JSON: {e}"))?;
    let Some(list) = value.get("actions").and_then(|a| a.as_array()) else {
        return Err("`describe` returned no `actions` list".to_owned());
    };
    list.iter()
        .map(|item| {
            let name = item
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default();
            let name = ActionName::new(name)
                .map_err(|e| format!("`describe` announced an invalid action: {e}"))?;
            let description = item
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or_default()
                .to_owned();
            Ok(ActionInfo { name, description })
        })
        .collect()
}
