//! What the host measures, through the `metrics` facade, and the tracing span of each call.
//!
//! Nothing is recorded until the process installs a recorder (the server installs its
//! Prometheus exporter when its router is built); every series is listed in `docs/metrics.md`.
//! Each fact is recorded where the host decides it (the call path, a load, a denial, a delivery,
//! a task's end), never by the callers.
//!
//! Labels are bounded: `plugin` names an installed plugin, `action` an action the plugin's
//! manifest declares (or, without declared actions, one its code announced) and `unknown` for
//! anything else, `outcome` a stable error code ([`HostError::kind`]). Never a topic, a payload
//! or a plugin's own error code.
//!
//! The call path does not build label sets: the handles of a plugin's series are registered once
//! (per slot, per generation for its actions) and cached, and registered again only when the
//! process's recorder changes (a handle taken before a recorder was installed records nothing).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use metrics::{
    Counter, Gauge, Histogram, SharedString, Unit, counter, describe_counter, describe_gauge,
    describe_histogram, gauge, histogram,
};
use parking_lot::RwLock;

use crate::HostError;
use crate::registry::{Generation, PluginState, Slot};

/// Plugin starts (load, start wave, reload, restart) by outcome.
pub(crate) const PLUGIN_LOADS: &str = "plugd_plugin_loads_total";
/// How long a start took: staging (verification, Python environment) and the runtime's start.
pub(crate) const PLUGIN_LOAD_DURATION: &str = "plugd_plugin_load_duration_seconds";
/// Blue/green version swaps (reload, restart, a change seen by the watcher) by outcome.
pub(crate) const PLUGIN_SWAPS: &str = "plugd_plugin_swaps_total";
/// Restarts of a plugin by its runtime after a crash.
pub(crate) const PLUGIN_RESTARTS: &str = "plugd_plugin_restarts_total";
/// Replies that arrived after their call had timed out.
pub(crate) const LATE_REPLIES: &str = "plugd_late_replies_total";
/// Capability requests refused by policy.
pub(crate) const SANDBOX_DENIALS: &str = "plugd_sandbox_denials_total";
/// Installed plugins by lifecycle state.
pub(crate) const PLUGINS: &str = "plugd_plugins";
/// Calls by outcome.
pub(crate) const CALLS: &str = "plugd_calls_total";
/// How long calls took.
pub(crate) const CALL_DURATION: &str = "plugd_call_duration_seconds";
/// Calls running now.
pub(crate) const CALLS_IN_FLIGHT: &str = "plugd_calls_in_flight";
/// Events appended to the event log.
pub(crate) const EVENTS_PUBLISHED: &str = "plugd_events_published_total";
/// Events a subscriber's handler acknowledged.
pub(crate) const EVENTS_DELIVERED: &str = "plugd_events_delivered_total";
/// Events dead-lettered.
pub(crate) const EVENTS_DEAD: &str = "plugd_events_dead_total";
/// Tasks that reached a final state.
pub(crate) const TASKS: &str = "plugd_tasks_total";
/// How long the final run of a finished task took.
pub(crate) const TASK_DURATION: &str = "plugd_task_duration_seconds";
/// Tasks waiting in a plugin's queue.
pub(crate) const TASKS_QUEUED: &str = "plugd_tasks_queued";
/// Tasks running now.
pub(crate) const TASKS_RUNNING: &str = "plugd_tasks_running";
/// The store's database size.
pub(crate) const STORE_SIZE: &str = "plugd_store_size_bytes";

/// The label of an action that is not declared.
pub(crate) const UNKNOWN_ACTION: &str = "unknown";

/// The outcome of a call whose caller went away before it finished (the future was dropped).
pub(crate) const CANCELLED: &str = "cancelled";

/// Describes every series the host records (unit and help text) to the recorder installed now;
/// call it once after installing one.
pub fn describe_metrics() {
    describe_counter!(
        PLUGIN_LOADS,
        "Plugin starts (start wave, load, reload, restart), by plugin and outcome (ok, error)"
    );
    describe_histogram!(
        PLUGIN_LOAD_DURATION,
        Unit::Seconds,
        "How long a plugin start took: verification, staging, environment and the runtime's start"
    );
    describe_counter!(
        PLUGIN_SWAPS,
        "Version swaps (reload, restart, watch), by plugin, trigger and outcome (ok, error)"
    );
    describe_counter!(
        PLUGIN_RESTARTS,
        "Restarts of a plugin by its runtime after a crash"
    );
    describe_counter!(
        LATE_REPLIES,
        "Replies that arrived after their call had timed out (dropped)"
    );
    describe_counter!(
        SANDBOX_DENIALS,
        "Capability requests refused by policy, by plugin and kind"
    );
    describe_gauge!(PLUGINS, "Installed plugins by lifecycle state");
    describe_counter!(
        CALLS,
        "Calls by plugin, action (`unknown`: not declared) and outcome (`ok` or the error code)"
    );
    describe_histogram!(
        CALL_DURATION,
        Unit::Seconds,
        "How long calls took, from the host receiving them to their answer"
    );
    describe_gauge!(CALLS_IN_FLIGHT, "Calls running in a plugin now");
    describe_counter!(EVENTS_PUBLISHED, "Events appended to the event log");
    describe_counter!(
        EVENTS_DELIVERED,
        "Events a subscriber's handler acknowledged (a redelivery counts again)"
    );
    describe_counter!(
        EVENTS_DEAD,
        "Events dead-lettered for a subscriber after failed deliveries"
    );
    describe_counter!(
        TASKS,
        "Tasks that reached a final state (succeeded, failed, cancelled)"
    );
    describe_histogram!(
        TASK_DURATION,
        Unit::Seconds,
        "How long the final run of a finished task took"
    );
    describe_gauge!(TASKS_QUEUED, "Tasks waiting in a plugin's queue");
    describe_gauge!(TASKS_RUNNING, "Tasks running now");
    describe_gauge!(
        STORE_SIZE,
        Unit::Bytes,
        "Size of the store's database (pages in use times the page size)"
    );
}

/// Which recorder metrics go to now (the global one, a thread's local one, or none).
fn recorder_id() -> usize {
    metrics::with_recorder(|recorder| std::ptr::from_ref(recorder).cast::<()>() as usize)
}

/// Handles registered with the recorder in place when they were made, made again when another
/// recorder is in place (handles made before any was installed would record nothing forever).
pub(crate) struct Registered<T> {
    cell: RwLock<Option<(usize, Arc<T>)>>,
}

impl<T> Default for Registered<T> {
    fn default() -> Self {
        Registered {
            cell: RwLock::new(None),
        }
    }
}

impl<T> Registered<T> {
    pub(crate) fn get(&self, register: impl FnOnce() -> T) -> Arc<T> {
        let id = recorder_id();
        if let Some((at, handles)) = &*self.cell.read()
            && *at == id
        {
            return handles.clone();
        }
        let handles = Arc::new(register());
        *self.cell.write() = Some((id, handles.clone()));
        handles
    }
}

/// The series of one plugin that carry only its name.
pub(crate) struct PluginHandles {
    pub plugin: SharedString,
    pub in_flight: Gauge,
    pub restarts: Counter,
    pub late_replies: Counter,
    pub delivered: Counter,
    pub dead: Counter,
}

impl PluginHandles {
    pub(crate) fn register(name: &str) -> PluginHandles {
        let plugin = SharedString::from(Arc::<str>::from(name));
        PluginHandles {
            in_flight: gauge!(CALLS_IN_FLIGHT, "plugin" => plugin.clone()),
            restarts: counter!(PLUGIN_RESTARTS, "plugin" => plugin.clone()),
            late_replies: counter!(LATE_REPLIES, "plugin" => plugin.clone()),
            delivered: counter!(EVENTS_DELIVERED, "plugin" => plugin.clone()),
            dead: counter!(EVENTS_DEAD, "plugin" => plugin.clone()),
            plugin,
        }
    }
}

/// The series of one action of a plugin.
pub(crate) struct ActionHandles {
    label: SharedString,
    ok: Counter,
    duration: Histogram,
}

impl ActionHandles {
    fn register(plugin: &SharedString, action: SharedString) -> ActionHandles {
        ActionHandles {
            ok: counter!(CALLS, "plugin" => plugin.clone(), "action" => action.clone(), "outcome" => "ok"),
            duration: histogram!(CALL_DURATION, "plugin" => plugin.clone(), "action" => action.clone()),
            label: action,
        }
    }
}

/// The action series of one generation: one per action it can be called with, and `unknown`.
pub(crate) struct CallHandles {
    actions: HashMap<String, Arc<ActionHandles>>,
    unknown: Arc<ActionHandles>,
}

impl CallHandles {
    pub(crate) fn register(plugin: &SharedString, generation: &Generation) -> CallHandles {
        let actions = callable(&generation.manifest, || {
            generation
                .instance
                .actions()
                .into_iter()
                .map(|a| a.name.to_string())
                .collect()
        });
        CallHandles {
            actions: actions
                .into_iter()
                .map(|name| {
                    let handles = ActionHandles::register(plugin, name.clone().into());
                    (name, Arc::new(handles))
                })
                .collect(),
            unknown: Arc::new(ActionHandles::register(plugin, UNKNOWN_ACTION.into())),
        }
    }

    fn action(&self, name: &str) -> Arc<ActionHandles> {
        self.actions.get(name).unwrap_or(&self.unknown).clone()
    }
}

/// The actions a plugin can be called with: those its manifest declares, or, when it declares
/// none, those its code announced.
fn callable(
    manifest: &plugd_manifest::Manifest,
    announced: impl FnOnce() -> Vec<String>,
) -> Vec<String> {
    if manifest.actions.is_empty() {
        announced()
    } else {
        manifest
            .actions
            .iter()
            .map(|a| a.name.to_string())
            .collect()
    }
}

/// One call being measured: its span, its series, when it began. Recorded once, by
/// [`CallRecord::finish`], or as `cancelled` when dropped unfinished (the caller went away).
pub(crate) struct CallRecord {
    plugin: Arc<PluginHandles>,
    action: Arc<ActionHandles>,
    span: tracing::Span,
    started: Instant,
    finished: bool,
}

impl CallRecord {
    /// Starts measuring a call of `action` on `slot`'s plugin, served by `generation` (none when
    /// the plugin is not running: the call is refused, and its action is judged by the manifest).
    pub(crate) fn begin(slot: &Slot, generation: Option<&Generation>, action: &str) -> CallRecord {
        let started = Instant::now();
        let plugin = slot.handles();
        let action = match generation {
            Some(generation) => generation.call_handles(&plugin.plugin).action(action),
            None => {
                let manifest = slot.inner.lock().manifest.clone();
                let declared = manifest.is_some_and(|m| m.action(action).is_some());
                let label = if declared {
                    SharedString::from(action.to_owned())
                } else {
                    SharedString::const_str(UNKNOWN_ACTION)
                };
                Arc::new(ActionHandles::register(&plugin.plugin, label))
            }
        };
        // Debug level: a span per call at the default `info` filter cost the server ~8 % of its
        // CPU per request (created, entered at every poll, its fields formatted twice).
        let span = tracing::debug_span!(
            "call",
            plugin = slot.name.as_str(),
            action = &*action.label,
            outcome = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        CallRecord {
            plugin,
            action,
            span,
            started,
            finished: false,
        }
    }

    /// The call's span (the call runs inside it).
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Records the call's end.
    pub(crate) fn finish<T>(mut self, result: &Result<T, HostError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.record(outcome);
    }

    fn record(&mut self, outcome: &'static str) {
        self.finished = true;
        let took = self.started.elapsed();
        if outcome == "ok" {
            self.action.ok.increment(1);
        } else {
            counter!(
                CALLS,
                "plugin" => self.plugin.plugin.clone(),
                "action" => self.action.label.clone(),
                "outcome" => outcome,
            )
            .increment(1);
        }
        self.action.duration.record(took.as_secs_f64());
        if !self.span.is_disabled() {
            let duration_ms = took.as_secs_f64() * 1000.0;
            self.span.record("outcome", outcome);
            self.span.record("duration_ms", duration_ms);
            tracing::debug!(parent: &self.span, outcome, duration_ms, "call finished");
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if !self.finished {
            self.record(CANCELLED);
        }
    }
}

/// A plugin start ended (`ok`: it serves).
pub(crate) fn loaded(slot: &Slot, started: Instant, ok: bool) {
    let plugin = slot.handles().plugin.clone();
    counter!(PLUGIN_LOADS, "plugin" => plugin.clone(), "outcome" => if ok { "ok" } else { "error" })
        .increment(1);
    histogram!(PLUGIN_LOAD_DURATION, "plugin" => plugin).record(started.elapsed().as_secs_f64());
}

/// A blue/green swap of `slot`'s version ended (reload, restart or the watcher's).
pub(crate) fn swapped(slot: &Slot, trigger: crate::supervision::Trigger, ok: bool) {
    counter!(
        PLUGIN_SWAPS,
        "plugin" => slot.handles().plugin.clone(),
        "trigger" => trigger.as_str(),
        "outcome" => if ok { "ok" } else { "error" }
    )
    .increment(1);
}

/// A capability request of `slot`'s plugin was refused by policy.
pub(crate) fn denied(slot: &Slot, kind: &'static str) {
    counter!(SANDBOX_DENIALS, "plugin" => slot.handles().plugin.clone(), "kind" => kind)
        .increment(1);
}

/// A task of `slot`'s plugin reached a final state; `ran` is how long its final run took (none
/// when it was cancelled before running).
pub(crate) fn task_ended(slot: &Slot, state: plugd_store::TaskState, ran: Option<Duration>) {
    if !state.is_finished() {
        return;
    }
    let plugin = slot.handles().plugin.clone();
    counter!(TASKS, "plugin" => plugin.clone(), "state" => state.as_str()).increment(1);
    if let Some(ran) = ran {
        histogram!(TASK_DURATION, "plugin" => plugin).record(ran.as_secs_f64());
    }
}

/// An event was appended to the log.
pub(crate) fn published() {
    counter!(EVENTS_PUBLISHED).increment(1);
}

/// Brings the counters a runtime keeps for a generation (restarts after crashes, late replies)
/// into the plugin's series: only what grew since the last look is added.
pub(crate) fn sync_runtime_counters(slot: &Slot, generation: &Generation) {
    let status = generation.instance.status();
    let handles = slot.handles();
    let restarts = u64::from(status.restarts);
    let before = generation
        .seen_restarts
        .fetch_max(restarts, Ordering::AcqRel);
    if restarts > before {
        handles.restarts.increment(restarts - before);
    }
    let late = status.late_replies;
    let before = generation
        .seen_late_replies
        .fetch_max(late, Ordering::AcqRel);
    if late > before {
        handles.late_replies.increment(late - before);
    }
}

/// Sets the plugins-by-state gauge (every state, zero included).
pub(crate) fn plugin_states(states: impl IntoIterator<Item = PluginState>) {
    const ALL: [PluginState; 8] = [
        PluginState::Discovered,
        PluginState::Resolved,
        PluginState::Starting,
        PluginState::Running,
        PluginState::Stopping,
        PluginState::Stopped,
        PluginState::Failed,
        PluginState::Uninstalled,
    ];
    let mut counts = [0u32; ALL.len()];
    for state in states {
        if let Some(i) = ALL.iter().position(|s| *s == state) {
            counts[i] += 1;
        }
    }
    for (state, count) in ALL.iter().zip(counts) {
        gauge!(PLUGINS, "state" => state.as_str()).set(count);
    }
}

/// Sets one plugin's task gauges.
pub(crate) fn task_gauges(plugin: &SharedString, queued: usize, running: usize) {
    gauge!(TASKS_QUEUED, "plugin" => plugin.clone()).set(queued as f64);
    gauge!(TASKS_RUNNING, "plugin" => plugin.clone()).set(running as f64);
}

/// Sets the store size gauge.
pub(crate) fn store_size(bytes: u64) {
    gauge!(STORE_SIZE).set(bytes as f64);
}

impl crate::Host {
    /// Brings what is read on demand into the metrics: the plugins-by-state, queued and running
    /// task and store size gauges, and the counters runtimes keep (restarts after crashes, late
    /// replies). Cheap (no store scan); call it before rendering a scrape.
    pub async fn refresh_metrics(&self) {
        let slots: Vec<Arc<Slot>> = self.inner.slots.read().values().cloned().collect();
        plugin_states(slots.iter().map(|s| s.inner.lock().state()));
        for slot in &slots {
            let mut generations: Vec<Arc<Generation>> = slot.draining.lock().clone();
            generations.extend(slot.running());
            for generation in generations {
                sync_runtime_counters(slot, &generation);
            }
        }
        for (plugin, queued, running) in self.inner.board.counts() {
            let handles = match self.inner.slot(plugin.as_str()) {
                Some(slot) => slot.handles().plugin.clone(),
                None => SharedString::from(plugin.to_string()),
            };
            task_gauges(&handles, queued, running);
        }
        // Only a store that is open: a scrape does not open (or create) it.
        if let Some(store) = self.inner.store.get() {
            match store.size_bytes().await {
                Ok(bytes) => store_size(bytes),
                Err(e) => tracing::debug!("cannot read the store's size: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugd_manifest::PluginName;
    use plugd_runtime::RuntimeError;

    #[test]
    fn runtime_kinds_are_the_codes_except_a_plugins_own() {
        let plugin = PluginName::new("p").unwrap();
        let (action, reason) = (String::from("a"), String::from("r"));
        let errors = [
            RuntimeError::Overloaded {
                plugin: plugin.clone(),
                reason: reason.clone(),
            },
            RuntimeError::UnknownAction {
                plugin: plugin.clone(),
                action: action.clone(),
            },
            RuntimeError::BadPayload {
                plugin: plugin.clone(),
                action: action.clone(),
                message: reason.clone(),
            },
            RuntimeError::ActionFailed {
                plugin: plugin.clone(),
                action: action.clone(),
                message: reason.clone(),
                code: Some("mine".into()),
            },
            RuntimeError::Timeout {
                plugin: plugin.clone(),
                action: action.clone(),
                timeout: Duration::from_secs(1),
            },
            RuntimeError::LimitExceeded {
                plugin: plugin.clone(),
                limit: "memory".into(),
                hint: None,
            },
            RuntimeError::NotRunning {
                plugin: plugin.clone(),
                reason: reason.clone(),
            },
            RuntimeError::Crashed {
                plugin: plugin.clone(),
                reason: reason.clone(),
            },
            RuntimeError::StartFailed {
                plugin: plugin.clone(),
                reason: reason.clone(),
            },
            RuntimeError::Refused {
                plugin: plugin.clone(),
                reason: reason.clone(),
            },
        ];
        for e in &errors {
            assert_eq!(e.kind(), e.code(), "{e:?}");
        }
        let own = RuntimeError::ClientError {
            plugin,
            action,
            code: "my_code_42".into(),
            message: reason,
            status: 422,
        };
        assert_eq!(own.code(), "my_code_42");
        assert_eq!(own.kind(), "client_error");
        assert_eq!(
            HostError::Runtime(own).kind(),
            "client_error",
            "a plugin's own code never becomes a label"
        );
    }
}
