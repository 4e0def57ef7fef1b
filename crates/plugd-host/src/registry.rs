//! Per-plugin records: the lifecycle state machine (one `Phase` that owns the running
//! generation), counters, the in-flight guard and the log ring.
//!
//! Every change of a plugin's state goes through a named transition on [`SlotInner`]; nothing
//! else assigns the phase. The running instance lives *inside* `Phase::Running`, so "running
//! without an instance" or "failed but still holding one" cannot be written down.

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use plugd_manifest::{Manifest, PluginName};
use plugd_runtime::{ActionInfo, Health, Instance, LogLevel, LogSource};
use tokio::sync::Notify;

use crate::logs::LogGate;
use crate::telemetry::{CallHandles, PluginHandles, Registered};

/// Where a plugin is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginState {
    /// Found on disk, manifest read.
    Discovered,
    /// Dependencies resolved; waiting for its wave.
    Resolved,
    /// Its runtime is starting it.
    Starting,
    /// Serving calls.
    Running,
    /// Being stopped.
    Stopping,
    /// Stopped (unloaded, or shut down with the host).
    Stopped,
    /// Could not be loaded or crashed for good; see the reason.
    Failed,
    /// Uninstalled by the operator: its package is still in the plugins directory, but it is
    /// not started until `load NAME`.
    Uninstalled,
}

impl PluginState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Discovered => "discovered",
            PluginState::Resolved => "resolved",
            PluginState::Starting => "starting",
            PluginState::Running => "running",
            PluginState::Stopping => "stopping",
            PluginState::Stopped => "stopped",
            PluginState::Failed => "failed",
            PluginState::Uninstalled => "uninstalled",
        }
    }
}

impl fmt::Display for PluginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A package in the plugins directory that could not even be named (no readable manifest and a
/// directory name that is not a valid plugin name).
#[derive(Clone, Debug)]
pub struct Problem {
    /// The package directory.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// One captured log line.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// Its number among the plugin's lines since the host started: 1, 2, ... with no gaps (a
    /// gap seen by a reader means lines were dropped from the ring before it read them).
    pub seq: u64,
    /// When the host received it.
    pub at: SystemTime,
    /// Where it came from.
    pub source: LogSource,
    /// Its level.
    pub level: LogLevel,
    /// The text.
    pub message: String,
}

/// A snapshot of one plugin for listings and status.
#[derive(Clone, Debug)]
pub struct PluginInfo {
    /// Name.
    pub name: PluginName,
    /// The manifest, when it could be read.
    pub manifest: Option<Arc<Manifest>>,
    /// Package directory.
    pub dir: PathBuf,
    /// Lifecycle state.
    pub state: PluginState,
    /// Why it failed or stopped, if it did.
    pub reason: Option<String>,
    /// Load wave (0 = no dependencies), when resolved.
    pub wave: Option<usize>,
    /// Actions: as announced by the running plugin, else from the manifest.
    pub actions: Vec<ActionInfo>,
    /// Restarts after crashes.
    pub restarts: u32,
    /// The runtime's last error (e.g. the last crash), even when it recovered.
    pub last_error: Option<String>,
    /// OS process id, if any.
    pub pid: Option<u32>,
    /// Calls answered (successfully or not).
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Calls in flight now.
    pub in_flight: u64,
    /// Replies that arrived after their call timed out.
    pub late_replies: u64,
    /// Capability requests denied by policy.
    pub denials: u64,
    /// Runtime-specific details.
    pub details: Vec<(String, String)>,
    /// Trust of the running (or last started) package.
    pub trust: Option<TrustLevel>,
    /// Bytes in the data dir at the last quota check (0 before the first).
    pub disk_used: u64,
    /// The limits in force for the running version (after trust policy and ceilings).
    pub limits: Option<plugd_manifest::Limits>,
    /// Its `[http]` table as granted to the running version (an untrusted plugin has no mount
    /// or exposed port), else as its manifest asks.
    pub http: Option<plugd_manifest::Http>,
    /// What the operator should know about how the running version was started (limits clamped
    /// to a ceiling, params reset to defaults).
    pub notes: Vec<String>,
    /// Faults its runtime reported (crashes, failed restarts), oldest first, the newest
    /// [`crate::SUPERVISION_KEPT`] across every version.
    pub faults: Vec<crate::Fault>,
    /// The restart the runtime has scheduled after a crash, while it waits.
    pub backoff: Option<plugd_runtime::Backoff>,
    /// Version swaps (reloads, restarts) and failed attempts, oldest first, the newest
    /// [`crate::SUPERVISION_KEPT`].
    pub swaps: Vec<crate::Swap>,
}

/// Whether a package was signed by a key in the trust store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustLevel {
    /// Signed by the key with this id, which is in the trust store.
    Trusted {
        /// Key id.
        key_id: String,
    },
    /// Not signed; runs with the untrusted capability set (refused in strict mode).
    Untrusted,
}

/// One started version of a plugin: its instance and everything that was decided when it was
/// started. A reload starts a new generation beside the old one, switches, then drains the old.
pub(crate) struct Generation {
    /// Increases with every start of this plugin (reloads and restarts after `failed`).
    pub id: u64,
    pub instance: Arc<dyn Instance>,
    /// The verified, staged copy it runs from (kept by garbage collection while it runs).
    pub package_dir: PathBuf,
    /// The Python environment it runs with (`STATE/envs/<hash>`; kept by garbage collection
    /// while it runs).
    pub python_env: Option<PathBuf>,
    /// The Unix socket of its HTTP side (`[http]`), one per generation, so a reload switches
    /// HTTP traffic in the same step as calls.
    pub http_socket: Option<PathBuf>,
    /// What the operator should know about how it was started (clamped limits, params reset).
    pub notes: Vec<String>,
    /// The manifest as granted (permissions narrowed by trust).
    pub manifest: Arc<Manifest>,
    pub trust: TrustLevel,
    /// Calls running on this generation; the old generation of a reload is stopped when it
    /// reaches zero (or its drain deadline passes).
    pub in_flight: AtomicU64,
    pub idle: Notify,
    /// Cancelled when this generation stops: proxied WebSockets still relayed to it end then.
    pub halted: tokio_util::sync::CancellationToken,
    /// The series of its actions (see `telemetry`).
    pub call_metrics: Registered<CallHandles>,
    /// Its runtime's restarts and late replies already added to the plugin's series.
    pub seen_restarts: AtomicU64,
    pub seen_late_replies: AtomicU64,
}

impl Generation {
    /// The series of its actions, registered on first use (and again if the recorder changed).
    pub(crate) fn call_handles(&self, plugin: &metrics::SharedString) -> Arc<CallHandles> {
        self.call_metrics
            .get(|| CallHandles::register(plugin, self))
    }

    /// Waits until no call runs on this generation. Cancel-safe.
    pub(crate) async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Where a plugin is in its lifecycle, with the data that belongs to that state.
pub(crate) enum Phase {
    Discovered,
    Resolved,
    Starting,
    Running(Arc<Generation>),
    Stopping,
    Stopped { reason: String },
    Failed { reason: String, cause: FailCause },
    Uninstalled,
}

/// Why a plugin failed: its own load, or a dependency (missing, conflicting, cyclic, failed,
/// uninstalled). [`crate::Host::get`] reports them as different errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailCause {
    Load,
    Dependency,
}

impl FailCause {
    /// The cause of a resolution failure.
    pub(crate) fn of(error: &plugd_resolve::ResolveError) -> FailCause {
        match error {
            plugd_resolve::ResolveError::Duplicate { .. } => FailCause::Load,
            _ => FailCause::Dependency,
        }
    }
}

impl Phase {
    pub(crate) fn state(&self) -> PluginState {
        match self {
            Phase::Discovered => PluginState::Discovered,
            Phase::Resolved => PluginState::Resolved,
            Phase::Starting => PluginState::Starting,
            Phase::Running(_) => PluginState::Running,
            Phase::Stopping => PluginState::Stopping,
            Phase::Stopped { .. } => PluginState::Stopped,
            Phase::Failed { .. } => PluginState::Failed,
            Phase::Uninstalled => PluginState::Uninstalled,
        }
    }

    pub(crate) fn reason(&self) -> Option<&str> {
        match self {
            Phase::Stopped { reason } | Phase::Failed { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

pub(crate) struct Slot {
    pub name: PluginName,
    pub inner: Mutex<SlotInner>,
    pub logs: Mutex<VecDeque<LogLine>>,
    /// The seq of the newest log line (0: none yet); followers wait on it.
    pub log_seq: tokio::sync::watch::Sender<u64>,
    pub gate: Mutex<LogGate>,
    pub log_capacity: usize,
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub in_flight: AtomicU64,
    pub denials: AtomicU64,
    /// Events this plugin published (accepted by the host).
    pub emitted: AtomicU64,
    /// Bytes in the data dir at the last quota check.
    pub disk_used: AtomicU64,
    /// Hop count of the event being delivered to this plugin now (see `events`).
    pub delivering_hops: crate::events::DeliveringHops,
    /// The plugin's `emit` rate limit.
    pub emit_bucket: Mutex<crate::logs::Bucket>,
    /// The calls admitted under its `limits.rate`, if it has one.
    pub call_rate: Mutex<crate::rate::Window>,
    /// Notified when a generation starts serving (start or reload): event delivery and the task
    /// dispatcher wait on it.
    pub phase_changed: Notify,
    /// Faults and version swaps, across generations.
    pub supervision: Mutex<crate::supervision::Record>,
    /// Generations replaced by a reload whose calls are still finishing. Whoever takes one out
    /// of this list stops it: the drain task when its calls are done, or a stop of the plugin.
    pub draining: Mutex<Vec<Arc<Generation>>>,
    /// The plugin's series (see `telemetry`).
    metrics: Registered<PluginHandles>,
}

pub(crate) struct SlotInner {
    /// The package directory on disk (the source, not the staged copy).
    pub dir: PathBuf,
    /// The manifest as read from disk (what resolution used).
    pub manifest: Option<Arc<Manifest>>,
    pub wave: Option<usize>,
    phase: Phase,
    /// Trust of the last started package (kept after it stops, for listings).
    pub trust: Option<TrustLevel>,
    next_generation: u64,
}

impl SlotInner {
    pub(crate) fn phase(&self) -> &Phase {
        &self.phase
    }

    pub(crate) fn state(&self) -> PluginState {
        self.phase.state()
    }

    /// The running generation, if the plugin is running.
    pub(crate) fn running(&self) -> Option<&Arc<Generation>> {
        match &self.phase {
            Phase::Running(generation) => Some(generation),
            _ => None,
        }
    }

    /// Whether a lifecycle operation is under way or the plugin serves (the registry must not
    /// overwrite it from a fresh scan).
    pub(crate) fn busy(&self) -> bool {
        matches!(
            self.phase,
            Phase::Running(_) | Phase::Starting | Phase::Stopping
        )
    }

    /// Discovered → Resolved (or back to Resolved after a stop/failure that a new scan clears).
    pub(crate) fn resolved(&mut self) {
        if !self.busy() && !matches!(self.phase, Phase::Stopped { .. } | Phase::Uninstalled) {
            self.phase = Phase::Resolved;
        }
    }

    /// Any non-running state → Starting. Returns the generation id to use.
    pub(crate) fn begin_start(&mut self) -> u64 {
        debug_assert!(!matches!(self.phase, Phase::Running(_)));
        self.phase = Phase::Starting;
        self.next_generation()
    }

    /// An id for a generation started beside the running one (reload).
    pub(crate) fn next_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Starting → Running.
    pub(crate) fn started(&mut self, generation: Arc<Generation>) {
        self.trust = Some(generation.trust.clone());
        self.phase = Phase::Running(generation);
    }

    /// Running(old) → Running(new): the switch of a reload. Returns the old generation to drain.
    pub(crate) fn swap(&mut self, generation: Arc<Generation>) -> Option<Arc<Generation>> {
        self.trust = Some(generation.trust.clone());
        match std::mem::replace(&mut self.phase, Phase::Running(generation)) {
            Phase::Running(old) => Some(old),
            _ => None,
        }
    }

    /// Any state → Failed. Returns the generation that was running, which the caller stops.
    pub(crate) fn fail(&mut self, reason: String) -> Option<Arc<Generation>> {
        self.fail_because(reason, FailCause::Load)
    }

    /// → Failed for `cause`; returns the generation that was running, if any.
    pub(crate) fn fail_because(
        &mut self,
        reason: String,
        cause: FailCause,
    ) -> Option<Arc<Generation>> {
        match std::mem::replace(&mut self.phase, Phase::Failed { reason, cause }) {
            Phase::Running(generation) => Some(generation),
            _ => None,
        }
    }

    /// Running(generation `id`) → Failed, only if that generation is still the running one (a
    /// health report from an old generation must not fail its successor).
    pub(crate) fn fail_generation(&mut self, id: u64, reason: String) -> Option<Arc<Generation>> {
        match &self.phase {
            Phase::Running(generation) if generation.id == id => self.fail(reason),
            _ => None,
        }
    }

    /// Running → Stopping; returns the generation to stop. A plugin that is not running becomes
    /// Stopped with the reason (unless it failed: the failure stays visible).
    pub(crate) fn begin_stop(&mut self, reason: &str) -> Option<Arc<Generation>> {
        match std::mem::replace(&mut self.phase, Phase::Stopping) {
            Phase::Running(generation) => Some(generation),
            failed @ Phase::Failed { .. } => {
                self.phase = failed;
                None
            }
            Phase::Starting => {
                // A start in progress finishes under the lifecycle lock, so this is not reached
                // from lifecycle operations; keep the state honest anyway.
                self.phase = Phase::Starting;
                None
            }
            _ => {
                self.phase = Phase::Stopped {
                    reason: reason.to_owned(),
                };
                None
            }
        }
    }

    /// Not running → Uninstalled (the caller stopped it first).
    pub(crate) fn uninstalled(&mut self) {
        if !self.busy() {
            self.phase = Phase::Uninstalled;
        }
    }

    /// Uninstalled → Discovered (a `load` reinstalls it; the next scan resolves it).
    pub(crate) fn reinstalled(&mut self) {
        if matches!(self.phase, Phase::Uninstalled) {
            self.phase = Phase::Discovered;
        }
    }

    /// Stopping → Stopped.
    pub(crate) fn stopped(&mut self, reason: &str) {
        if matches!(self.phase, Phase::Stopping) {
            self.phase = Phase::Stopped {
                reason: reason.to_owned(),
            };
        }
    }
}

/// Counts one call in flight on a slot, on a generation and in the plugin's in-flight gauge;
/// undone on drop, so a caller that drops the call future (a disconnected HTTP client, a
/// `select!`) leaks nothing.
pub(crate) struct InFlight {
    slot: Arc<Slot>,
    generation: Arc<Generation>,
    handles: Arc<PluginHandles>,
}

impl InFlight {
    pub(crate) fn enter(
        slot: Arc<Slot>,
        generation: Arc<Generation>,
        handles: Arc<PluginHandles>,
    ) -> Self {
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        generation.in_flight.fetch_add(1, Ordering::AcqRel);
        handles.in_flight.increment(1.0);
        InFlight {
            slot,
            generation,
            handles,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.handles.in_flight.decrement(1.0);
        if self.generation.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.generation.idle.notify_waiters();
        }
    }
}

impl Slot {
    pub(crate) fn new(name: PluginName, dir: PathBuf, log_capacity: usize) -> Arc<Self> {
        Arc::new(Slot {
            name,
            inner: Mutex::new(SlotInner {
                dir,
                manifest: None,
                wave: None,
                phase: Phase::Discovered,
                trust: None,
                next_generation: 0,
            }),
            logs: Mutex::new(VecDeque::new()),
            log_seq: tokio::sync::watch::Sender::new(0),
            gate: Mutex::new(LogGate::default()),
            log_capacity,
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            denials: AtomicU64::new(0),
            emitted: AtomicU64::new(0),
            disk_used: AtomicU64::new(0),
            delivering_hops: Default::default(),
            call_rate: Default::default(),
            emit_bucket: Mutex::new(crate::logs::Bucket::new(
                crate::events::EMIT_RATE,
                crate::events::EMIT_BURST,
            )),
            phase_changed: Notify::new(),
            draining: Mutex::new(Vec::new()),
            supervision: Mutex::new(Default::default()),
            metrics: Registered::default(),
        })
    }

    /// The plugin's series, registered on first use (and again if the recorder changed).
    pub(crate) fn handles(&self) -> Arc<PluginHandles> {
        self.metrics
            .get(|| PluginHandles::register(self.name.as_str()))
    }

    /// Counts a capability request refused by policy (`kind`: what was asked for, e.g. `env`).
    pub(crate) fn deny(&self, kind: &'static str) {
        self.denials.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::denied(self, kind);
    }

    /// The running generation, if any (a short lock; the generation is shared).
    pub(crate) fn running(&self) -> Option<Arc<Generation>> {
        self.inner.lock().running().cloned()
    }

    /// Logs a line from the host itself (never rate limited: the host bounds its own output).
    pub(crate) fn push_log(&self, source: LogSource, level: LogLevel, message: &str) {
        let line = crate::logs::sanitize(message);
        self.push_line(source, level, line);
    }

    /// Logs a line from the plugin through the one gate every source passes (cap, rate limit,
    /// escaping). Returns the text kept, if any, so the caller can forward it to `tracing`.
    pub(crate) fn plugin_log(
        &self,
        source: LogSource,
        level: LogLevel,
        message: &str,
    ) -> Option<String> {
        let (admitted, note) = self.gate.lock().admit(std::time::Instant::now());
        if let Some(dropped) = note {
            self.push_line(
                LogSource::Runtime,
                LogLevel::Warn,
                format!(
                    "Dropped {dropped} log lines of this plugin (more than {} lines/s)",
                    crate::logs::LINES_PER_SECOND
                ),
            );
        }
        if !admitted {
            return None;
        }
        let line = crate::logs::sanitize(message);
        self.push_line(source, level, line.clone());
        Some(line)
    }

    fn push_line(&self, source: LogSource, level: LogLevel, message: String) {
        let mut logs = self.logs.lock();
        if logs.len() >= self.log_capacity {
            logs.pop_front();
        }
        // Under the ring's lock, so seqs are in ring order.
        let seq = *self.log_seq.borrow() + 1;
        logs.push_back(LogLine {
            seq,
            at: SystemTime::now(),
            source,
            level,
            message,
        });
        self.log_seq.send_replace(seq);
    }

    pub(crate) fn info(&self) -> PluginInfo {
        let supervision = self.supervision.lock().clone();
        let inner = self.inner.lock();
        let generation = inner.running();
        let status = generation.map(|g| g.instance.status()).unwrap_or_default();
        let mut actions = generation.map(|g| g.instance.actions()).unwrap_or_default();
        let manifest = inner.manifest.clone();
        if actions.is_empty()
            && let Some(m) = &manifest
        {
            actions = m
                .actions
                .iter()
                .map(|a| ActionInfo {
                    name: a.name.clone(),
                    description: a.description.clone(),
                })
                .collect();
        }
        let health = generation.map(|g| g.instance.health().borrow().clone());
        let reason = match (&health, inner.phase()) {
            (Some(Health::Recovering { reason }), _) => Some(reason.clone()),
            (_, phase) => phase.reason().map(str::to_owned),
        };
        PluginInfo {
            name: self.name.clone(),
            manifest,
            dir: inner.dir.clone(),
            state: inner.state(),
            reason,
            wave: inner.wave,
            actions,
            restarts: status.restarts,
            last_error: status.last_error,
            pid: status.pid,
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            late_replies: status.late_replies,
            denials: self.denials.load(Ordering::Relaxed),
            details: status.details,
            trust: inner.trust.clone(),
            disk_used: self.disk_used.load(Ordering::Relaxed),
            limits: generation.map(|g| g.manifest.limits.clone()),
            http: match generation {
                Some(g) => g.manifest.http.clone(),
                None => inner.manifest.as_ref().and_then(|m| m.http.clone()),
            },
            notes: generation.map(|g| g.notes.clone()).unwrap_or_default(),
            faults: supervision.faults.iter().cloned().collect(),
            backoff: status.backoff,
            swaps: supervision.swaps.iter().cloned().collect(),
        }
    }
}
