//! Discovery, resolution and the lifecycle of plugins: start in waves, stop in reverse, load,
//! unload and reload (blue/green) one plugin, health changes pushed by runtimes, and the call
//! path.
//!
//! Every lifecycle operation runs under one async lock that also holds the current resolution;
//! calls never take it. State changes are the named transitions of `registry::SlotInner`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use parking_lot::RwLock;
use plugd_manifest::{ActionName, Manifest, ManifestError, PluginName, RuntimeKind};
use plugd_resolve::{Candidate, Resolution};
use plugd_runtime::{
    Health, InstanceSpec, Invocation, LogLevel, LogSource, Outcome, Runtime, RuntimeError,
};
use plugd_trust::{KeySource, Trust, TrustPolicy, TrustStore, stage_package};
use serde_json::value::RawValue;
use tracing::Instrument;

use crate::registry::{
    FailCause, Generation, InFlight, PluginInfo, PluginState, Problem, Slot, TrustLevel,
};
use crate::services::PluginServices;
use crate::supervision::{Swap, Trigger};
use crate::telemetry::CallRecord;
use crate::{Host, HostConfig, HostError, LogLine};

pub(crate) struct HostInner {
    pub config: HostConfig,
    pub runtimes: HashMap<RuntimeKind, Arc<dyn Runtime>>,
    pub slots: RwLock<BTreeMap<PluginName, Arc<Slot>>>,
    problems: RwLock<Vec<Problem>>,
    /// Serialises lifecycle operations and holds the current resolution.
    pub lifecycle: tokio::sync::Mutex<Resolution>,
    /// Application services offered to plugins, by name.
    pub app_services: HashMap<String, Arc<dyn crate::AppService>>,
    /// The store, opened on first use (see `Host::store`).
    pub store: tokio::sync::OnceCell<plugd_store::Store>,
    /// Event subscribers and the live stream.
    pub bus: crate::events::Bus,
    /// Task queues.
    pub board: crate::tasks::Board,
    /// Whether the retention purge runs.
    pub purging: std::sync::atomic::AtomicBool,
    /// Plugins held by `PluginGuard`s: how many guards, and whether they started it.
    pub guards: parking_lot::Mutex<HashMap<PluginName, crate::guard::Held>>,
}

impl HostInner {
    pub(crate) fn new(
        config: HostConfig,
        runtimes: HashMap<RuntimeKind, Arc<dyn Runtime>>,
        app_services: HashMap<String, Arc<dyn crate::AppService>>,
        store: Option<plugd_store::Store>,
    ) -> Arc<Self> {
        Arc::new(HostInner {
            guards: Default::default(),
            config,
            runtimes,
            app_services,
            store: match store {
                Some(store) => tokio::sync::OnceCell::new_with(Some(store)),
                None => tokio::sync::OnceCell::new(),
            },
            slots: RwLock::new(BTreeMap::new()),
            problems: RwLock::new(Vec::new()),
            lifecycle: tokio::sync::Mutex::new(plugd_resolve::resolve(Vec::new())),
            bus: crate::events::Bus::default(),
            board: crate::tasks::Board::default(),
            purging: Default::default(),
        })
    }

    pub(crate) fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots.read().get(name).cloned()
    }

    /// The slot of an installed plugin, or `plugin_not_found`.
    pub(crate) fn existing(&self, name: &str) -> Result<Arc<Slot>, HostError> {
        self.slot(name).ok_or_else(|| HostError::PluginNotFound {
            name: name.to_owned(),
        })
    }
}

/// What [`Host::unload`] did.
#[derive(Clone, Debug)]
pub struct Unloaded {
    /// The plugin, now stopped.
    pub plugin: PluginInfo,
    /// Running dependants that were stopped first, dependants of dependants first.
    pub also_stopped: Vec<PluginName>,
}

/// How one call runs.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// The caller's deadline, when shorter than the plugin's `limits.call_timeout` (a longer one
    /// is cut to it). Waiting for a concurrency slot counts against it.
    pub timeout: Option<std::time::Duration>,
    /// The plugins whose calls led to this one, outermost first (set by `plugin.call`).
    pub chain: Vec<PluginName>,
}

impl CallOptions {
    /// Options with a deadline.
    pub fn timeout(timeout: std::time::Duration) -> Self {
        CallOptions {
            timeout: Some(timeout),
            chain: Vec::new(),
        }
    }
}

/// What a reload attempt learned, for the supervision record.
#[derive(Default)]
struct Attempt {
    /// The version it tried to start.
    to: Option<plugd_manifest::Version>,
    /// When the new version began to serve.
    switched: Option<Instant>,
}

/// A package that was verified and staged, ready to start: staged once, started from that copy.
pub(crate) struct Staged {
    manifest: Arc<Manifest>,
    dir: PathBuf,
    trust: TrustLevel,
    /// The private Python environment built for the package's dependencies, if it has any.
    python_env: Option<PathBuf>,
}

impl Host {
    /// Discovers every package in the plugins directory, resolves dependencies and starts the
    /// plugins wave by wave (plugins of one wave start concurrently). A plugin that cannot load
    /// is marked failed with its reason and takes down only its dependants; the rest serve.
    pub async fn start(&self) -> Result<(), HostError> {
        let mut resolution = self.inner.lifecycle.lock().await;
        // Sockets of an earlier run's plugins (their processes are gone).
        self.clear_http_sockets();
        *resolution = self.refresh().await?;
        let waves = resolution.waves().to_vec();
        for wave in waves {
            // A plugin whose dependency the operator uninstalled does not start either.
            for name in &wave {
                let uninstalled = resolution
                    .dependencies(name.as_str())
                    .into_iter()
                    .find(|d| {
                        self.inner
                            .slot(d.as_str())
                            .is_some_and(|s| s.inner.lock().state() == PluginState::Uninstalled)
                    });
                if let Some(dep) = uninstalled
                    && let Some(slot) = self.inner.slot(name.as_str())
                    && !matches!(slot.inner.lock().state(), PluginState::Uninstalled)
                {
                    let reason = format!(
                        "Plugin `{name}` cannot load because its dependency `{dep}` is uninstalled; hint: `plugd load {dep}` first"
                    );
                    slot.inner
                        .lock()
                        .fail_because(reason.clone(), FailCause::Dependency);
                    slot.push_log(LogSource::Runtime, LogLevel::Error, &reason);
                }
            }
            // A plugin whose dependency failed earlier is already marked failed: skip it.
            let starts = wave
                .iter()
                .filter_map(|name| self.inner.slot(name.as_str()))
                .filter(|slot| {
                    !matches!(
                        slot.inner.lock().state(),
                        PluginState::Failed | PluginState::Uninstalled
                    )
                })
                .map(|slot| {
                    let host = self.clone();
                    async move {
                        let result = host.start_slot(&slot, None).await;
                        (slot, result)
                    }
                });
            for (slot, result) in futures::future::join_all(starts).await {
                if let Err(reason) = result {
                    self.fail_dependants(&resolution, &slot.name, &reason).await;
                }
            }
        }
        // Plugins that did not start keep their subscriptions: they get their events later.
        let slots: Vec<_> = self.inner.slots.read().values().cloned().collect();
        for slot in slots {
            let (state, patterns) = {
                let inner = slot.inner.lock();
                let patterns = inner
                    .manifest
                    .as_ref()
                    .map(|m| m.events.subscribe.clone())
                    .unwrap_or_default();
                (inner.state(), patterns)
            };
            if crate::events::keeps_subscription(state)
                && !patterns.is_empty()
                && self.inner.bus.subscriber(slot.name.as_str()).is_none()
            {
                self.subscribe(&slot, patterns).await;
            }
        }
        // Tasks queued or running when the previous host stopped are scheduled again.
        if let Err(e) = self.recover_tasks().await {
            tracing::error!("cannot recover the task queue: {e}");
        }
        self.start_retention();
        // What a previous run left (old staged copies, compiled code) goes now.
        self.collect_quietly(crate::gc::Scope::All).await;
        Ok(())
    }

    /// Stops every running plugin, dependants before their dependencies. Event delivery and the
    /// task queues stop first: undelivered events and unfinished tasks stay in the store for the
    /// next start.
    pub async fn shutdown(&self) {
        self.inner.bus.stop_all();
        self.inner.board.stop_all();
        let resolution = self.inner.lifecycle.lock().await;
        for wave in resolution.stop_order() {
            let stops = wave
                .iter()
                .filter_map(|name| self.inner.slot(name.as_str()))
                .map(|slot| async move { self.stop_slot(&slot, "the host shut down").await });
            futures::future::join_all(stops).await;
        }
        // Anything not in the plan (e.g. started before a failed reload) stops too.
        let rest: Vec<_> = self.inner.slots.read().values().cloned().collect();
        for slot in rest {
            self.stop_slot(&slot, "the host shut down").await;
        }
    }

    /// Calls `action` of plugin `plugin` with a raw JSON payload.
    ///
    /// Cancel-safe: dropping the returned future undoes every counter it touched and tells the
    /// runtime (which cancels the plugin's handler where it can).
    pub async fn call(
        &self,
        plugin: &str,
        action: &str,
        payload: Box<RawValue>,
    ) -> Result<Outcome, HostError> {
        self.call_with(plugin, action, payload, CallOptions::default())
            .await
    }

    /// [`Host::call`] with options (a deadline shorter than the manifest's `call_timeout`).
    ///
    /// Each call of an installed plugin runs in a `call` span (`plugin`, `action`, and on
    /// completion `outcome` and `duration_ms`) and is counted in the call metrics (see
    /// `docs/metrics.md`), also when the caller drops it (`cancelled`).
    pub async fn call_with(
        &self,
        plugin: &str,
        action: &str,
        payload: Box<RawValue>,
        options: CallOptions,
    ) -> Result<Outcome, HostError> {
        let slot = self.inner.existing(plugin)?;
        let running = {
            let inner = slot.inner.lock();
            match inner.running() {
                // Counted in flight before the lock is released: a reload that replaces this
                // generation from now on drains this call too, rather than stopping the
                // instance under it.
                Some(generation) => Ok((
                    generation.clone(),
                    InFlight::enter(slot.clone(), generation.clone(), slot.handles()),
                )),
                None => Err(HostError::NotRunning {
                    plugin: plugin.to_owned(),
                    state: inner.state(),
                    reason: inner.phase().reason().map(str::to_owned),
                }),
            }
        };
        let record = CallRecord::begin(&slot, running.as_ref().ok().map(|(g, _)| &**g), action);
        let call = self.call_running(&slot, running, action, payload, options);
        // A disabled span (the default filter) is not entered at every poll.
        let result = if record.span().is_disabled() {
            call.await
        } else {
            call.instrument(record.span().clone()).await
        };
        record.finish(&result);
        result
    }

    /// The call itself, on the generation that was running when it arrived.
    async fn call_running(
        &self,
        slot: &Arc<Slot>,
        running: Result<(Arc<Generation>, InFlight), HostError>,
        action: &str,
        payload: Box<RawValue>,
        options: CallOptions,
    ) -> Result<Outcome, HostError> {
        let action_name = action;
        let action = ActionName::new(action).map_err(|_| {
            HostError::Runtime(RuntimeError::UnknownAction {
                plugin: slot.name.clone(),
                action: action.to_owned(),
            })
        })?;
        let (generation, guard) = running?;
        check_payload(&slot.name, &generation.manifest, &action, &payload)?;
        if let Some(rate) = generation.manifest.limits.rate {
            let admitted = slot
                .call_rate
                .lock()
                .admit(tokio::time::Instant::now(), rate);
            if let Err(retry_after) = admitted {
                return Err(HostError::RateLimited {
                    plugin: slot.name.to_string(),
                    calls: rate.calls,
                    per: rate.per,
                    retry_after,
                });
            }
        }
        let result = generation
            .instance
            .call(Invocation {
                action,
                payload,
                // Never longer than the plugin's own `call_timeout`.
                timeout: options
                    .timeout
                    .map(|t| t.min(generation.manifest.limits.call_timeout)),
                chain: options.chain,
            })
            .await;
        drop(guard);
        slot.calls.fetch_add(1, Ordering::Relaxed);
        let result = result.map_err(HostError::from).and_then(|outcome| {
            match crate::results::check(outcome.result.get()) {
                Ok(()) => Ok(outcome),
                Err(problem) => Err(HostError::BadResult(format!(
                    "Plugin `{plugin}` answered `{action}` with a result that breaks the result shape: {problem}; hint: see the result shape in `docs/protocol.md`",
                    plugin = slot.name,
                    action = action_name,
                ))),
            }
        });
        if result.is_err() {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// The plugins directory this host loads from.
    pub fn plugins_dir(&self) -> &Path {
        &self.inner.config.plugins_dir
    }

    /// Every known plugin, sorted by name.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.inner.slots.read().values().map(|s| s.info()).collect()
    }

    /// One plugin.
    pub fn plugin(&self, name: &str) -> Result<PluginInfo, HostError> {
        self.inner.existing(name).map(|s| s.info())
    }

    /// Packages that could not be read well enough to become plugins.
    pub fn problems(&self) -> Vec<Problem> {
        self.inner.problems.read().clone()
    }

    /// The last `limit` log lines of a plugin, oldest first.
    pub fn logs(&self, name: &str, limit: usize) -> Result<Vec<LogLine>, HostError> {
        self.logs_after(name, None, limit)
    }

    /// A plugin's log lines, oldest first: with `after`, the first `limit` lines whose seq is
    /// greater (those still in the ring); without, the last `limit`.
    pub fn logs_after(
        &self,
        name: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LogLine>, HostError> {
        let slot = self.inner.existing(name)?;
        let logs = slot.logs.lock();
        Ok(match after {
            Some(after) => logs
                .iter()
                .filter(|l| l.seq > after)
                .take(limit)
                .cloned()
                .collect(),
            None => logs
                .iter()
                .skip(logs.len().saturating_sub(limit))
                .cloned()
                .collect(),
        })
    }

    /// The seq of a plugin's newest log line, changing as lines arrive: what a follower waits
    /// on (then reads [`Host::logs_after`]).
    pub fn log_updates(&self, name: &str) -> Result<tokio::sync::watch::Receiver<u64>, HostError> {
        Ok(self.inner.existing(name)?.log_seq.subscribe())
    }

    /// Loads (starts) a plugin and, first, any of its dependencies that are not running.
    /// Re-reads the plugins directory, so a newly added package can be loaded, and a plugin
    /// that failed (even one its runtime gave up on) can be loaded again. Idempotent.
    pub async fn load(&self, name: &str) -> Result<PluginInfo, HostError> {
        let mut resolution = self.inner.lifecycle.lock().await;
        // Loading an uninstalled plugin reinstalls it.
        if let Some(slot) = self.inner.slot(name)
            && slot.inner.lock().state() == PluginState::Uninstalled
        {
            self.store().await?.set_uninstalled(name, false).await?;
            slot.inner.lock().reinstalled();
        }
        *resolution = self.refresh().await?;
        self.ensure_running(&resolution, name).await?;
        self.plugin(name)
    }

    /// Unloads (stops) a plugin, after stopping the running plugins that depend on it; says
    /// which ones it stopped. Idempotent.
    pub async fn unload(&self, name: &str) -> Result<Unloaded, HostError> {
        let resolution = self.inner.lifecycle.lock().await;
        let slot = self.inner.existing(name)?;
        let also_stopped = self
            .stop_with_dependants(&resolution, &slot, "unloaded")
            .await;
        // An unloaded plugin is no subscriber: it does not get what is published meanwhile.
        self.unsubscribe(&slot.name).await;
        Ok(Unloaded {
            plugin: slot.info(),
            also_stopped,
        })
    }

    /// Reloads a plugin from disk, blue/green: the new version is read, resolved, verified and
    /// started *beside* the running one; calls switch to it at once and the old version is
    /// drained (calls in flight finish within their deadlines) and stopped. If the new version
    /// cannot start, the running version keeps serving and nothing else changes. Dependants keep
    /// running when their requirement still holds, and are stopped with the reason when it
    /// breaks. A plugin that is not running is simply loaded.
    pub async fn reload(&self, name: &str) -> Result<PluginInfo, HostError> {
        self.swap_version(name, Trigger::Reload).await
    }

    /// Restarts a plugin: a reload (blue/green, from the package as it is on disk now) that the
    /// supervision record shows as a restart. It also clears a `failed` state, including a crash
    /// loop its runtime gave up on: the new instance starts with a fresh crash budget.
    pub async fn restart(&self, name: &str) -> Result<PluginInfo, HostError> {
        self.swap_version(name, Trigger::Restart).await
    }

    /// [`Host::reload`] with what asked for it, recorded in the supervision record; a failure is
    /// also logged and published as `plugd.plugin.reload_failed`.
    pub(crate) async fn swap_version(
        &self,
        name: &str,
        trigger: Trigger,
    ) -> Result<PluginInfo, HostError> {
        let mut resolution = self.inner.lifecycle.lock().await;
        let at = SystemTime::now();
        let began = Instant::now();
        let from = self
            .inner
            .slot(name)
            .and_then(|s| s.running())
            .map(|g| g.manifest.version.clone());
        let mut attempt = Attempt::default();
        let result = self
            .reload_locked(&mut resolution, name, &mut attempt)
            .await;
        drop(resolution);
        let Some(slot) = self.inner.slot(name) else {
            return result;
        };
        let took = attempt.switched.unwrap_or_else(Instant::now) - began;
        let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
        crate::telemetry::swapped(&slot, trigger, outcome.is_ok());
        slot.supervision.lock().swap(Swap {
            at,
            trigger,
            from: from.clone(),
            to: attempt.to.clone(),
            took,
            outcome: outcome.clone(),
        });
        if let Err(reason) = outcome {
            slot.push_log(LogSource::Runtime, LogLevel::Error, &reason);
            tracing::warn!(plugin = %slot.name, trigger = trigger.as_str(), "{reason}");
            self.publish_host(
                crate::supervision::RELOAD_FAILED,
                serde_json::json!({
                    "plugin": slot.name.as_str(),
                    "trigger": trigger.as_str(),
                    "running": from.map(|v| v.to_string()),
                    "version": attempt.to.map(|v| v.to_string()),
                    "reason": reason,
                }),
            )
            .await;
        }
        // The answer shows this swap in the record.
        result.and_then(|_| self.plugin(name))
    }

    async fn reload_locked(
        &self,
        resolution: &mut Resolution,
        name: &str,
        attempt: &mut Attempt,
    ) -> Result<PluginInfo, HostError> {
        let fresh = self.plan_from_disk().await?;
        let keeps_serving = |reason: &dyn std::fmt::Display| {
            HostError::CannotLoad(format!(
                "Plugin `{name}` was not reloaded, the running version keeps serving: {reason}"
            ))
        };
        let pname = PluginName::new(name).map_err(|_| HostError::PluginNotFound {
            name: name.to_owned(),
        })?;
        let Some(slot) = self.inner.slot(name) else {
            // Not known yet: a reload of a new package is a load, unless the operator
            // uninstalled it (in an earlier run): `plugd load NAME` reinstalls.
            let uninstalled = fresh.uninstalled.contains(name);
            *resolution = self.apply_plan(fresh);
            if uninstalled {
                return Err(HostError::CannotLoad(format!(
                    "Plugin `{name}` is uninstalled; hint: `plugd load {name}` installs and starts it again"
                )));
            }
            self.ensure_running(resolution, name).await?;
            return self.plugin(name);
        };
        let new_manifest = match fresh.found.get(&pname) {
            None => {
                return Err(keeps_serving(&format_args!(
                    "its package is no longer in the plugins directory `{}`; hint: `plugd unload {name}` stops it",
                    self.inner.config.plugins_dir.display()
                )));
            }
            Some(Found {
                manifest: Err(reason),
                ..
            }) => {
                return Err(keeps_serving(&format_args!(
                    "its new manifest is invalid: {reason}"
                )));
            }
            Some(Found {
                dir,
                manifest: Ok(manifest),
            }) => {
                attempt.to = Some(manifest.version.clone());
                (dir.clone(), manifest.clone())
            }
        };
        if let Some(error) = fresh.resolution.failed().get(&pname) {
            return Err(keeps_serving(error));
        }
        if slot.inner.lock().state() == PluginState::Uninstalled {
            return Err(HostError::CannotLoad(format!(
                "Plugin `{name}` is uninstalled; hint: `plugd load {name}` installs and starts it again"
            )));
        }
        if slot.running().is_none() {
            *resolution = self.apply_plan(fresh);
            self.ensure_running(resolution, name).await?;
            return self.plugin(name);
        }
        // The new version's dependencies must be running before it starts.
        for dep in fresh.resolution.dependencies(name) {
            let running = self
                .inner
                .slot(dep.as_str())
                .is_some_and(|d| d.running().is_some());
            if !running {
                return Err(keeps_serving(&format_args!(
                    "its new version depends on `{dep}`, which is not running; hint: `plugd load {dep}` first"
                )));
            }
        }
        // Running plugins that depend on this one: the only ones whose fate this reload decides.
        let dependants = resolution.dependants(name);
        let (dir, manifest) = new_manifest;
        let began = Instant::now();
        let launched = match self.stage(&pname, &dir, &manifest).await {
            Ok(staged) => self.launch(&slot, staged).await,
            Err(reason) => Err(reason),
        };
        crate::telemetry::loaded(&slot, began, launched.is_ok());
        let generation = launched.map_err(|reason| keeps_serving(&reason))?;
        // Switch: from here on every call goes to the new version.
        let old = {
            let mut inner = slot.inner.lock();
            inner.dir = dir;
            inner.manifest = Some(Arc::new(manifest));
            inner.swap(generation.clone())
        };
        attempt.switched = Some(Instant::now());
        slot.phase_changed.notify_waiters();
        self.watch_health(&slot, &generation);
        self.watch_disk(&slot, generation.id, generation.manifest.limits.disk);
        self.log_started(&slot, &generation, "Reloaded");
        self.subscribe(&slot, generation.manifest.events.subscribe.clone())
            .await;
        *resolution = self.apply_plan(fresh);
        // Dependants the new plan cannot hold (their requirement the new version breaks) stop,
        // with the reason. Every other plugin keeps running untouched, even one the new plan
        // fails for its own reasons (a copy of it dropped beside it, its own package edited into
        // a broken state): those take effect when that plugin itself is reloaded or restarted.
        for (other, error) in resolution.failed() {
            if !dependants.contains(other) {
                continue;
            }
            let Some(oslot) = self.inner.slot(other.as_str()) else {
                continue;
            };
            let reason = error.to_string();
            let running = {
                let mut inner = oslot.inner.lock();
                match inner.running() {
                    Some(_) => inner.fail_because(reason.clone(), FailCause::of(error)),
                    None => None,
                }
            };
            if let Some(running) = running {
                oslot.push_log(LogSource::Runtime, LogLevel::Error, &reason);
                self.stop_generation(&oslot, running, &reason).await;
            }
        }
        if let Some(old) = old {
            // The replaced version drains outside the lifecycle lock: its calls may run for their
            // whole deadline, and other plugins' operations must not wait for them.
            slot.draining.lock().push(old.clone());
            let host = self.clone();
            let slot = slot.clone();
            tokio::spawn(async move { host.drain_and_stop(&slot, old).await });
        }
        self.collect_quietly(crate::gc::Scope::Packages).await;
        self.plugin(name)
    }

    /// Stops a plugin whose package left the plugins directory (and its running dependants).
    pub(crate) async fn remove_package(&self, name: &str) {
        let resolution = self.inner.lifecycle.lock().await;
        let Some(slot) = self.inner.slot(name) else {
            return;
        };
        self.stop_with_dependants(&resolution, &slot, "removed from the plugins directory")
            .await;
        self.unsubscribe(&slot.name).await;
    }

    /// Re-reads the plugins directory, so listings show what is there now (new problems, new
    /// plugins), without starting or stopping anything.
    pub(crate) async fn rescan(&self) -> Result<(), HostError> {
        let mut resolution = self.inner.lifecycle.lock().await;
        *resolution = self.refresh().await?;
        Ok(())
    }

    /// Uninstalls a plugin: stops its running dependants and it, removes its data dir, kv,
    /// params (with their history) and staged copies unless `keep_data`, and records it as
    /// uninstalled, so a scan does not start it again until `load NAME`. The package directory in
    /// the plugins dir is the operator's and is never touched.
    pub async fn uninstall(&self, name: &str, keep_data: bool) -> Result<Unloaded, HostError> {
        let resolution = self.inner.lifecycle.lock().await;
        let slot = self.inner.existing(name)?;
        let also_stopped = self
            .stop_with_dependants(&resolution, &slot, "uninstalled")
            .await;
        self.unsubscribe(&slot.name).await;
        let store = self.store().await?;
        store.set_uninstalled(name, true).await?;
        if !keep_data {
            store.forget_plugin(name).await?;
            store.forget_plugin_work(name).await?;
            let data = self.data_dir(&slot.name);
            tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&data) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(HostError::Io(format!(
                    "Cannot remove the data dir `{}`: {e}",
                    data.display()
                ))),
                _ => Ok(()),
            })
            .await
            .map_err(|e| HostError::Io(format!("Uninstall failed: {e}")))??;
        }
        slot.inner.lock().uninstalled();
        slot.push_log(
            LogSource::Runtime,
            LogLevel::Info,
            if keep_data {
                "Uninstalled; its data was kept"
            } else {
                "Uninstalled; its data dir, kv and params were removed"
            },
        );
        self.collect_quietly(crate::gc::Scope::All).await;
        Ok(Unloaded {
            plugin: slot.info(),
            also_stopped,
        })
    }

    /// Starts `name` and its not-running dependencies, in dependency order.
    async fn ensure_running(&self, resolution: &Resolution, name: &str) -> Result<(), HostError> {
        let pname = PluginName::new(name).map_err(|_| HostError::PluginNotFound {
            name: name.to_owned(),
        })?;
        let slot = self.inner.existing(name)?;
        if let Some(error) = resolution.failed().get(&pname) {
            return Err(HostError::CannotLoad(error.to_string()));
        }
        // Transitive dependencies, ordered by wave.
        let mut needed = Vec::new();
        let mut stack = resolution.dependencies(name);
        while let Some(dep) = stack.pop() {
            if !needed.contains(&dep) {
                stack.extend(resolution.dependencies(dep.as_str()));
                needed.push(dep);
            }
        }
        needed.sort_by_key(|n| resolution.wave_of(n.as_str()).unwrap_or(usize::MAX));
        for dep in needed {
            let Some(dslot) = self.inner.slot(dep.as_str()) else {
                continue;
            };
            if dslot.running().is_some() {
                continue;
            }
            if dslot.inner.lock().state() == PluginState::Uninstalled {
                return Err(HostError::CannotLoad(format!(
                    "Plugin `{name}` cannot load because its dependency `{dep}` is uninstalled; hint: `plugd load {dep}` first"
                )));
            }
            if let Err(reason) = self.start_slot(&dslot, None).await {
                self.fail_dependants(resolution, &dep, &reason).await;
                return Err(HostError::CannotLoad(format!(
                    "Plugin `{name}` cannot load because its dependency `{dep}` failed to start: {reason}"
                )));
            }
        }
        match self.start_slot(&slot, None).await {
            Ok(()) => Ok(()),
            Err(reason) => {
                self.fail_dependants(resolution, &pname, &reason).await;
                Err(HostError::CannotLoad(reason))
            }
        }
    }

    /// Marks the dependants of a plugin that failed (to start, or for good while running) as
    /// failed with the reason, stopping those that run.
    async fn fail_dependants(&self, resolution: &Resolution, name: &PluginName, reason: &str) {
        for dependant in resolution.dependants(name.as_str()) {
            let Some(slot) = self.inner.slot(dependant.as_str()) else {
                continue;
            };
            let why = format!(
                "Plugin `{dependant}` cannot load because `{name}`, which it depends on, failed: {reason}"
            );
            let running = slot
                .inner
                .lock()
                .fail_because(why.clone(), FailCause::Dependency);
            slot.push_log(LogSource::Runtime, LogLevel::Error, &why);
            if let Some(generation) = running {
                self.stop_generation(&slot, generation, &why).await;
            }
        }
    }

    /// Stops a plugin after its running dependants (reasons "its dependency `NAME` was {how}"
    /// and "{how}"); returns the dependants that were running.
    async fn stop_with_dependants(
        &self,
        resolution: &Resolution,
        slot: &Arc<Slot>,
        how: &str,
    ) -> Vec<PluginName> {
        let name = slot.name.as_str();
        let stopped = self
            .stop_dependants(
                resolution,
                name,
                &format!("its dependency `{name}` was {how}"),
            )
            .await;
        self.stop_slot(slot, how).await;
        stopped
    }

    /// Stops the running dependants of `name` (dependants first), with the reason; returns the
    /// ones that were running.
    async fn stop_dependants(
        &self,
        resolution: &Resolution,
        name: &str,
        reason: &str,
    ) -> Vec<PluginName> {
        let mut dependants = resolution.dependants(name);
        dependants.sort_by_key(|d| std::cmp::Reverse(resolution.wave_of(d.as_str())));
        let mut stopped = Vec::new();
        for dependant in dependants {
            if let Some(d) = self.inner.slot(dependant.as_str())
                && d.running().is_some()
            {
                self.stop_slot(&d, reason).await;
                stopped.push(dependant);
            }
        }
        stopped
    }

    /// Starts one plugin whose dependencies are running (no-op if it runs). On failure the slot
    /// is marked failed and the reason returned. `staged` is a package already verified.
    async fn start_slot(&self, slot: &Arc<Slot>, staged: Option<Staged>) -> Result<(), String> {
        let (manifest, dir) = {
            let mut inner = slot.inner.lock();
            if inner.running().is_some() {
                return Ok(());
            }
            let Some(manifest) = inner.manifest.clone() else {
                return Err(inner
                    .phase()
                    .reason()
                    .map(str::to_owned)
                    .unwrap_or_else(|| "its manifest is unreadable".into()));
            };
            inner.begin_start();
            (manifest, inner.dir.clone())
        };
        let began = Instant::now();
        let fail = |reason: String| {
            crate::telemetry::loaded(slot, began, false);
            slot.inner.lock().fail(reason.clone());
            slot.push_log(LogSource::Runtime, LogLevel::Error, &reason);
            tracing::error!(plugin = %slot.name, "{reason}");
            Err(reason)
        };
        let staged = match staged {
            Some(staged) => staged,
            None => match self.stage(&slot.name, &dir, &manifest).await {
                Ok(staged) => staged,
                Err(reason) => return fail(reason),
            },
        };
        slot.inner.lock().manifest = Some(staged.manifest.clone());
        match self.launch(slot, staged).await {
            Ok(generation) => {
                crate::telemetry::loaded(slot, began, true);
                slot.inner.lock().started(generation.clone());
                slot.phase_changed.notify_waiters();
                self.watch_health(slot, &generation);
                self.watch_disk(slot, generation.id, generation.manifest.limits.disk);
                self.log_started(slot, &generation, "Started");
                self.subscribe(slot, generation.manifest.events.subscribe.clone())
                    .await;
                Ok(())
            }
            Err(reason) => fail(reason),
        }
    }

    /// Starts a new generation of a plugin from a staged package, without touching its state:
    /// the caller decides whether it becomes the running one (start) or replaces it (reload).
    async fn launch(&self, slot: &Arc<Slot>, staged: Staged) -> Result<Arc<Generation>, String> {
        let Staged {
            manifest,
            dir,
            trust,
            python_env,
        } = staged;
        let Some(runtime) = self.inner.runtimes.get(&manifest.runtime).cloned() else {
            return Err(format!(
                "Plugin `{}` needs the `{}` runtime, which this host does not have",
                slot.name, manifest.runtime
            ));
        };
        let (mut granted, denials) = crate::policy::effective(&manifest, &trust);
        let clamped = crate::ceilings::clamp(
            &mut granted,
            &trust,
            self.inner.config.ceilings.for_trust(&trust),
        );
        if self.inner.config.strict && !clamped.is_empty() {
            return Err(format!("{} (strict mode refuses it)", clamped.join("; ")));
        }
        for warning in &clamped {
            slot.push_log(LogSource::Runtime, LogLevel::Warn, warning);
            tracing::warn!(plugin = %slot.name, "{warning}");
        }
        for (kind, denial) in &denials {
            slot.deny(kind);
            slot.push_log(LogSource::Runtime, LogLevel::Warn, denial);
            tracing::warn!(plugin = %slot.name, "{denial}");
        }
        let granted = Arc::new(granted);
        let data_dir = self.data_dir(&slot.name);
        if let Err(e) = tokio::fs::create_dir_all(&data_dir).await {
            return Err(format!(
                "Cannot create the data dir `{}`: {e}",
                data_dir.display()
            ));
        }
        let (params, params_note) = self.params_for_start(&granted).await?;
        if let Some(note) = &params_note {
            slot.push_log(LogSource::Runtime, LogLevel::Warn, note);
            tracing::warn!(plugin = %slot.name, "{note}");
        }
        let notes: Vec<String> = clamped.into_iter().chain(params_note).collect();
        let id = slot.inner.lock().next_generation();
        let http_socket = match &granted.http {
            Some(http) => {
                if let Some(mount) = &http.mount {
                    self.check_mount(&slot.name, mount)?;
                }
                if let Some(port) = http.expose {
                    self.check_expose(&slot.name, port)?;
                }
                Some(self.http_socket_path(&slot.name)?)
            }
            None => None,
        };
        let spec = InstanceSpec {
            params,
            manifest: granted.clone(),
            package_dir: dir.clone(),
            data_dir,
            python_env: python_env.clone(),
            http_socket: http_socket.clone(),
        };
        let services = Arc::new(PluginServices::new(self, slot, &manifest, granted.clone()));
        let instance = runtime
            .start(spec, services)
            .await
            .map_err(|e| e.to_string())?;
        // The manifest is the contract: code must implement every declared action. A runtime
        // that announces nothing (an empty list) is taken at its manifest's word.
        let announced: Vec<ActionName> = instance.actions().into_iter().map(|a| a.name).collect();
        if !granted.actions.is_empty() && !announced.is_empty() {
            let mismatch = granted.check_announced(&announced);
            if !mismatch.missing.is_empty() {
                instance.stop(self.inner.config.stop_grace).await;
                return Err(format!(
                    "Plugin `{}` declares {} in `plugin.toml`, but its code does not implement {}; hint: add a handler for each declared action or remove it from `[[actions]]`",
                    slot.name,
                    backticked(&mismatch.missing),
                    if mismatch.missing.len() == 1 {
                        "it"
                    } else {
                        "them"
                    },
                ));
            }
            if !mismatch.extra.is_empty() {
                let warning = format!(
                    "Plugin `{}` implements {}, which `plugin.toml` does not declare: it cannot be called; hint: add an `[[actions]]` entry for each",
                    slot.name,
                    backticked(&mismatch.extra)
                );
                slot.push_log(LogSource::Runtime, LogLevel::Warn, &warning);
                tracing::warn!(plugin = %slot.name, "{warning}");
            }
        }
        Ok(Arc::new(Generation {
            id,
            http_socket,
            notes,
            package_dir: dir,
            python_env,
            instance,
            manifest: granted,
            trust,
            in_flight: Default::default(),
            idle: Default::default(),
            halted: Default::default(),
            call_metrics: Default::default(),
            seen_restarts: Default::default(),
            seen_late_replies: Default::default(),
        }))
    }

    /// The private writable directory of a plugin (`STATE/data/NAME`), shared by its versions.
    pub(crate) fn data_dir(&self, name: &PluginName) -> PathBuf {
        self.inner.config.state_dir.join("data").join(name.as_str())
    }

    fn log_started(&self, slot: &Slot, generation: &Generation, verb: &str) {
        let version = &generation.manifest.version;
        slot.push_log(
            LogSource::Runtime,
            LogLevel::Info,
            &format!("{verb} `{} {version}`", slot.name),
        );
        tracing::info!(plugin = %slot.name, %version, "plugin {}", verb.to_lowercase());
    }

    /// Follows the health a runtime pushes for one generation: `Dead` makes the plugin failed
    /// (if that generation still serves) and fails its dependants at once.
    fn watch_health(&self, slot: &Arc<Slot>, generation: &Arc<Generation>) {
        let mut health = generation.instance.health();
        // Weak references only: this task must not keep a dropped host or slot alive.
        let host = Arc::downgrade(&self.inner);
        let slot = Arc::downgrade(slot);
        let id = generation.id;
        let watched = Arc::downgrade(generation);
        tokio::spawn(async move {
            loop {
                let current = health.borrow_and_update().clone();
                // A restart after a crash shows as a health change: count it now.
                if let (Some(slot), Some(generation)) = (slot.upgrade(), watched.upgrade()) {
                    crate::telemetry::sync_runtime_counters(&slot, &generation);
                }
                if let Health::Recovering { reason } = &current
                    && let Some(slot) = slot.upgrade()
                {
                    slot.supervision.lock().fault(reason.clone());
                }
                if let Health::Dead { reason } = current {
                    let (Some(inner), Some(slot)) = (host.upgrade(), slot.upgrade()) else {
                        return;
                    };
                    let host = Host { inner };
                    host.give_up(&slot, id, reason).await;
                    return;
                }
                if health.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Fails generation `id` of a plugin for good (its runtime gave up, or it broke its disk
    /// quota), if it is still the running one, and fails its dependants.
    pub(crate) async fn give_up(&self, slot: &Arc<Slot>, id: u64, reason: String) {
        let resolution = self.inner.lifecycle.lock().await;
        let running = slot.inner.lock().fail_generation(id, reason.clone());
        let Some(generation) = running else {
            return;
        };
        slot.supervision.lock().fault(reason.clone());
        slot.push_log(LogSource::Runtime, LogLevel::Error, &reason);
        tracing::error!(plugin = %slot.name, "plugin failed: {reason}");
        self.stop_generation(slot, generation, &reason).await;
        self.fail_dependants(&resolution, &slot.name, &reason).await;
    }

    /// Verifies and stages a package; returns the manifest read from the staged copy, the
    /// staged directory and the trust level.
    async fn stage(
        &self,
        name: &PluginName,
        dir: &Path,
        resolved: &Manifest,
    ) -> Result<Staged, String> {
        let config = &self.inner.config;
        let (src, staging, trust_dir, strict) = (
            dir.to_owned(),
            config.staging_dir(),
            config.trust_dir.clone(),
            config.strict,
        );
        let staged = tokio::task::spawn_blocking(move || {
            let store = TrustStore::open(&trust_dir)?;
            stage_package(
                &src,
                &staging,
                &KeySource::Store(&store),
                &TrustPolicy { strict },
            )
        })
        .await
        .map_err(|e| format!("Staging `{name}` failed: {e}"))?
        .map_err(|e| format!("Plugin `{name}` was refused: {e}"))?;
        let manifest = Manifest::load_staged(staged.dir(), dir).map_err(|e| e.to_string())?;
        if manifest.name != resolved.name
            || manifest.version != resolved.version
            || manifest.dependencies != resolved.dependencies
        {
            return Err(format!(
                "Plugin `{name}` changed on disk while it was loading; hint: load it again"
            ));
        }
        let trust = match &staged.verification().trust {
            Trust::Trusted { key_id } => TrustLevel::Trusted {
                key_id: key_id.to_string(),
            },
            Trust::Unsigned => TrustLevel::Untrusted,
        };
        let python_env = self
            .python_env(name, staged.dir(), &manifest, &trust)
            .await?;
        Ok(Staged {
            manifest: Arc::new(manifest),
            dir: staged.dir().to_owned(),
            trust,
            python_env,
        })
    }

    /// Stops one plugin if it runs. Idempotent.
    /// Versions a reload replaced that are still draining stop with it.
    async fn stop_slot(&self, slot: &Arc<Slot>, reason: &str) {
        let draining = std::mem::take(&mut *slot.draining.lock());
        let replaced = draining
            .into_iter()
            .map(|old| self.stop_generation(slot, old, reason));
        futures::future::join_all(replaced).await;
        let running = slot.inner.lock().begin_stop(reason);
        let Some(generation) = running else {
            return;
        };
        self.stop_generation(slot, generation, reason).await;
        slot.inner.lock().stopped(reason);
    }

    /// Stops one generation (already detached from the slot's phase) and logs it.
    async fn stop_generation(&self, slot: &Slot, generation: Arc<Generation>, reason: &str) {
        generation.instance.stop(self.inner.config.stop_grace).await;
        // What its runtime counted since the last look, before the generation is gone.
        crate::telemetry::sync_runtime_counters(slot, &generation);
        generation.halted.cancel();
        Self::remove_http_socket(&generation);
        slot.push_log(
            LogSource::Runtime,
            LogLevel::Info,
            &format!(
                "Stopped `{} {}`: {reason}",
                slot.name, generation.manifest.version
            ),
        );
        tracing::info!(plugin = %slot.name, version = %generation.manifest.version, "plugin stopped: {reason}");
    }

    /// Lets the calls running on a replaced generation finish (at most its call deadline plus
    /// the stop grace), then stops it, unless a stop of the plugin took it out of the slot's
    /// `draining` list (and stopped it) first.
    async fn drain_and_stop(&self, slot: &Slot, old: Arc<Generation>) {
        let deadline = old.manifest.limits.call_timeout + self.inner.config.stop_grace;
        let timed_out = tokio::time::timeout(deadline, old.drained()).await.is_err();
        let ours = {
            let mut draining = slot.draining.lock();
            let before = draining.len();
            draining.retain(|g| !Arc::ptr_eq(g, &old));
            draining.len() < before
        };
        if !ours {
            return;
        }
        if timed_out {
            slot.push_log(
                LogSource::Runtime,
                LogLevel::Warn,
                &format!(
                    "{} calls of the replaced version were still running after {deadline:?}; stopping it anyway",
                    old.in_flight.load(Ordering::Acquire)
                ),
            );
        }
        self.stop_generation(slot, old, "replaced by a reload")
            .await;
        // Its staged copy is garbage now; collect under the lock, so nothing being staged is
        // touched.
        let _lifecycle = self.inner.lifecycle.lock().await;
        self.collect_quietly(crate::gc::Scope::Packages).await;
    }

    /// Re-reads the plugins directory and applies it to the registry (running plugins keep
    /// their running version until they are restarted).
    async fn refresh(&self) -> Result<Resolution, HostError> {
        let plan = self.plan_from_disk().await?;
        Ok(self.apply_plan(plan))
    }

    async fn plan_from_disk(&self) -> Result<DiskPlan, HostError> {
        let dir = self.inner.config.plugins_dir.clone();
        let mut plan = tokio::task::spawn_blocking(move || scan(&dir))
            .await
            .map_err(|e| HostError::Io(format!("Scanning plugins failed: {e}")))??;
        plan.uninstalled = self
            .store()
            .await?
            .uninstalled()
            .await?
            .into_iter()
            .collect();
        Ok(plan)
    }

    fn apply_plan(&self, plan: DiskPlan) -> Resolution {
        let mut slots = self.inner.slots.write();
        for (name, found) in plan.found {
            let slot = slots
                .entry(name.clone())
                .or_insert_with(|| {
                    Slot::new(name.clone(), found.dir.clone(), self.inner.config.log_lines)
                })
                .clone();
            let mut inner = slot.inner.lock();
            inner.wave = plan.resolution.wave_of(name.as_str());
            if inner.busy() {
                continue;
            }
            inner.dir = found.dir;
            if plan.uninstalled.contains(name.as_str()) {
                inner.manifest = found.manifest.ok().map(Arc::new);
                inner.uninstalled();
                continue;
            }
            match found.manifest {
                Ok(manifest) => {
                    for warning in &manifest.warnings {
                        tracing::warn!(plugin = %name, "{warning}");
                    }
                    inner.manifest = Some(Arc::new(manifest));
                    if let Some(error) = plan.resolution.failed().get(&name) {
                        inner.fail_because(error.to_string(), FailCause::of(error));
                    } else {
                        inner.resolved();
                    }
                }
                Err(reason) => {
                    inner.manifest = None;
                    inner.fail(reason);
                }
            }
        }
        *self.inner.problems.write() = plan.problems;
        plan.resolution
    }
}

struct Found {
    dir: PathBuf,
    manifest: Result<Manifest, String>,
}

struct DiskPlan {
    found: BTreeMap<PluginName, Found>,
    /// Plugins the operator uninstalled: found on disk, but not started.
    uninstalled: std::collections::HashSet<String>,
    problems: Vec<Problem>,
    resolution: Resolution,
}

/// Reads every package directory under `dir` and resolves them.
fn scan(dir: &Path) -> Result<DiskPlan, HostError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        HostError::Io(format!(
            "Cannot read the plugins directory `{}`: {e}; hint: pass `--plugins DIR`",
            dir.display()
        ))
    })?;
    let mut problems = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if !path.is_dir() || is_ignored_dir(&path) {
            continue;
        }
        if plugd_manifest::foreign::is_package(&path) {
            dirs.push(path);
        } else {
            // A directory plugd cannot read is reported, never skipped in silence.
            problems.push(Problem {
                message: ManifestError::NotFound { dir: path.clone() }.to_string(),
                path,
            });
        }
    }
    dirs.sort();
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    let mut found = BTreeMap::new();
    let mut candidates = Vec::new();
    for pkg in dirs {
        match Manifest::load(&pkg) {
            Ok(manifest) => {
                candidates.push(Candidate {
                    name: manifest.name.clone(),
                    version: manifest.version.clone(),
                    dependencies: manifest.dependencies.clone(),
                    source: pkg.clone(),
                });
                // A duplicate name keeps the first directory here; the resolver reports both.
                found.entry(manifest.name.clone()).or_insert(Found {
                    dir: pkg,
                    manifest: Ok(manifest),
                });
            }
            Err(e) => {
                let dir_name = pkg.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                match PluginName::new(dir_name) {
                    Ok(name) if !found.contains_key(&name) => {
                        found.insert(
                            name,
                            Found {
                                dir: pkg.clone(),
                                manifest: Err(e.to_string()),
                            },
                        );
                    }
                    _ => problems.push(Problem {
                        path: pkg.clone(),
                        message: e.to_string(),
                    }),
                }
            }
        }
    }
    let resolution = plugd_resolve::resolve(candidates);
    Ok(DiskPlan {
        uninstalled: Default::default(),
        found,
        problems,
        resolution,
    })
}

/// Directories of the plugins dir that are not packages by convention: hidden ones (`.git`),
/// Python's `__pycache__`.
fn is_ignored_dir(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.') || n == "__pycache__")
}

/// `a`, `b` and `c` (each in backticks).
fn backticked(names: &[ActionName]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The host's check of a call before it reaches any runtime: a manifest that declares actions
/// is the contract (undeclared actions do not exist), and a declared input schema is enforced,
/// every violation listed with its JSON pointer.
fn check_payload(
    plugin: &PluginName,
    manifest: &Manifest,
    action: &ActionName,
    payload: &RawValue,
) -> Result<(), HostError> {
    if manifest.actions.is_empty() {
        return Ok(());
    }
    let Some(spec) = manifest.action(action.as_str()) else {
        return Err(HostError::Runtime(RuntimeError::UnknownAction {
            plugin: plugin.clone(),
            action: action.to_string(),
        }));
    };
    let Some(schema) = spec.input_schema() else {
        return Ok(());
    };
    let value: serde_json::Value = serde_json::from_str(payload.get()).map_err(|e| {
        HostError::Runtime(RuntimeError::BadPayload {
            plugin: plugin.clone(),
            action: action.to_string(),
            message: format!("the payload is not JSON: {e}"),
        })
    })?;
    schema.validate(&value).map_err(|violations| {
        HostError::Runtime(RuntimeError::BadPayload {
            plugin: plugin.clone(),
            action: action.to_string(),
            message: crate::error::violations_text(&violations),
        })
    })
}
