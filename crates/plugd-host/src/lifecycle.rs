//! Discovery, resolution and the lifecycle of plugins: start in waves, stop in reverse, load,
//! unload and reload one plugin, and the call path.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::RwLock;
use plugd_manifest::{ActionName, JSON_MANIFEST, Manifest, PluginName, RuntimeKind, TOML_MANIFEST};
use plugd_resolve::{Candidate, Resolution};
use plugd_runtime::{InstanceSpec, Invocation, LogLevel, LogSource, Outcome, Runtime};
use serde_json::value::RawValue;

use plugd_trust::{KeySource, Trust, TrustPolicy, TrustStore, stage_package};

use crate::registry::{PluginInfo, PluginState, Problem, Slot, TrustLevel};
use crate::services::PluginServices;
use crate::{Host, HostConfig, HostError, LogLine};

pub(crate) struct HostInner {
    pub config: HostConfig,
    runtimes: HashMap<RuntimeKind, Arc<dyn Runtime>>,
    pub slots: RwLock<BTreeMap<PluginName, Arc<Slot>>>,
    problems: RwLock<Vec<Problem>>,
    /// Serialises lifecycle operations and holds the current resolution.
    lifecycle: tokio::sync::Mutex<Resolution>,
}

impl HostInner {
    pub(crate) fn new(
        config: HostConfig,
        runtimes: HashMap<RuntimeKind, Arc<dyn Runtime>>,
    ) -> Arc<Self> {
        Arc::new(HostInner {
            config,
            runtimes,
            slots: RwLock::new(BTreeMap::new()),
            problems: RwLock::new(Vec::new()),
            lifecycle: tokio::sync::Mutex::new(plugd_resolve::resolve(Vec::new())),
        })
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots.read().get(name).cloned()
    }

    /// The slot of an installed plugin, or `plugin_not_found`.
    fn existing(&self, name: &str) -> Result<Arc<Slot>, HostError> {
        self.slot(name).ok_or_else(|| HostError::PluginNotFound {
            name: name.to_owned(),
        })
    }
}

impl Host {
    /// Discovers every package in the plugins directory, resolves dependencies and starts the
    /// plugins wave by wave (plugins of one wave start concurrently). A plugin that cannot load
    /// is marked failed with its reason and takes down only its dependants; the rest serve.
    pub async fn start(&self) -> Result<(), HostError> {
        let mut resolution = self.inner.lifecycle.lock().await;
        *resolution = self.refresh().await?;
        let waves = resolution.waves().to_vec();
        for wave in waves {
            // A plugin whose dependency failed earlier is already marked failed: skip it.
            let starts = wave
                .iter()
                .filter_map(|name| self.inner.slot(name.as_str()))
                .filter(|slot| slot.inner.lock().state != PluginState::Failed)
                .map(|slot| {
                    let host = self.clone();
                    async move {
                        let result = host.start_slot(&slot).await;
                        (slot, result)
                    }
                });
            for (slot, result) in futures::future::join_all(starts).await {
                if let Err(reason) = result {
                    self.fail_dependants(&mut resolution, &slot.name, &reason);
                }
            }
        }
        Ok(())
    }

    /// Stops every running plugin, dependants before their dependencies.
    pub async fn shutdown(&self) {
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
    pub async fn call(
        &self,
        plugin: &str,
        action: &str,
        payload: Box<RawValue>,
    ) -> Result<Outcome, HostError> {
        let slot = self.inner.existing(plugin)?;
        let action = ActionName::new(action).map_err(|_| {
            HostError::Runtime(plugd_runtime::RuntimeError::UnknownAction {
                plugin: slot.name.clone(),
                action: action.to_owned(),
            })
        })?;
        let instance = {
            let inner = slot.inner.lock();
            match (&inner.instance, inner.state) {
                (Some(instance), PluginState::Running) => instance.clone(),
                (_, state) => {
                    return Err(HostError::NotRunning {
                        plugin: plugin.to_owned(),
                        state,
                        reason: inner.reason.clone(),
                    });
                }
            }
        };
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        let result = instance
            .call(Invocation {
                action,
                payload,
                timeout: None,
            })
            .await;
        slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        slot.calls.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        Ok(result?)
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
        let slot = self.inner.existing(name)?;
        let logs = slot.logs.lock();
        Ok(logs
            .iter()
            .skip(logs.len().saturating_sub(limit))
            .cloned()
            .collect())
    }

    /// Loads (starts) a plugin and, first, any of its dependencies that are not running.
    /// Re-reads the plugins directory, so a newly added package can be loaded. Idempotent.
    pub async fn load(&self, name: &str) -> Result<PluginInfo, HostError> {
        let mut resolution = self.inner.lifecycle.lock().await;
        *resolution = self.refresh().await?;
        self.ensure_running(&mut resolution, name).await?;
        self.plugin(name)
    }

    /// Unloads (stops) a plugin, after stopping the running plugins that depend on it.
    /// Idempotent.
    pub async fn unload(&self, name: &str) -> Result<PluginInfo, HostError> {
        let resolution = self.inner.lifecycle.lock().await;
        let slot = self.inner.existing(name)?;
        for dependant in resolution.dependants(name) {
            if let Some(d) = self.inner.slot(dependant.as_str()) {
                self.stop_slot(&d, &format!("its dependency `{name}` was unloaded"))
                    .await;
            }
        }
        self.stop_slot(&slot, "unloaded").await;
        Ok(slot.info())
    }

    /// Reloads a plugin from disk: re-reads its package, stops its running dependants and the
    /// old version, starts the new version, then restarts the dependants that were running.
    /// If the new version cannot be resolved, the running version is left untouched.
    pub async fn reload(&self, name: &str) -> Result<PluginInfo, HostError> {
        let mut resolution = self.inner.lifecycle.lock().await;
        let fresh = self.plan_from_disk().await?;
        let pname = PluginName::new(name).map_err(|_| HostError::PluginNotFound {
            name: name.to_owned(),
        })?;
        if let Some(error) = fresh.resolution.failed().get(&pname) {
            return Err(HostError::CannotLoad(format!(
                "Plugin `{name}` was not reloaded, the running version keeps serving: {error}"
            )));
        }
        if !fresh
            .resolution
            .waves()
            .iter()
            .flatten()
            .any(|n| n == &pname)
        {
            return Err(HostError::PluginNotFound {
                name: name.to_owned(),
            });
        }
        // Verify the new package before touching the running version.
        if let Some(Found {
            dir,
            manifest: Ok(manifest),
        }) = fresh.found.get(&pname)
            && let Err(reason) = self.stage(&pname, dir, manifest).await
        {
            return Err(HostError::CannotLoad(format!(
                "Plugin `{name}` was not reloaded, the running version keeps serving: {reason}"
            )));
        }
        let running_dependants: Vec<Arc<Slot>> = resolution
            .dependants(name)
            .into_iter()
            .filter_map(|d| self.inner.slot(d.as_str()))
            .filter(|s| s.inner.lock().state == PluginState::Running)
            .collect();
        for d in &running_dependants {
            self.stop_slot(d, &format!("its dependency `{name}` is reloading"))
                .await;
        }
        if let Some(slot) = self.inner.slot(name) {
            self.stop_slot(&slot, "reloading").await;
        }
        *resolution = self.apply_plan(fresh);
        self.ensure_running(&mut resolution, name).await?;
        // Restart dependants in load order.
        let mut ordered = running_dependants;
        ordered.sort_by_key(|s| resolution.wave_of(s.name.as_str()).unwrap_or(usize::MAX));
        for d in ordered {
            let dname = d.name.to_string();
            if let Err(e) = self.ensure_running(&mut resolution, &dname).await {
                tracing::warn!(plugin = %dname, "dependant did not restart after reload: {e}");
            }
        }
        self.plugin(name)
    }

    /// Starts `name` and its not-running dependencies, in dependency order.
    async fn ensure_running(
        &self,
        resolution: &mut Resolution,
        name: &str,
    ) -> Result<(), HostError> {
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
            if dslot.inner.lock().state == PluginState::Running {
                continue;
            }
            if let Err(reason) = self.start_slot(&dslot).await {
                self.fail_dependants(resolution, &dep, &reason);
                return Err(HostError::CannotLoad(format!(
                    "Plugin `{name}` cannot load because its dependency `{dep}` failed to start: {reason}"
                )));
            }
        }
        if slot.inner.lock().state == PluginState::Running {
            return Ok(());
        }
        match self.start_slot(&slot).await {
            Ok(()) => Ok(()),
            Err(reason) => {
                self.fail_dependants(resolution, &pname, &reason);
                Err(HostError::CannotLoad(reason))
            }
        }
    }

    /// Marks the dependants of a plugin that failed to start as failed.
    fn fail_dependants(&self, resolution: &mut Resolution, name: &PluginName, reason: &str) {
        for dependant in resolution.dependants(name.as_str()) {
            if let Some(slot) = self.inner.slot(dependant.as_str())
                && slot.inner.lock().state != PluginState::Running
            {
                slot.set_state(
                        PluginState::Failed,
                        Some(format!("Plugin `{dependant}` cannot load because `{name}`, which it depends on, failed to start: {reason}")),
                    );
            }
        }
    }

    /// Starts one plugin whose dependencies are running. On failure the slot is marked failed
    /// and the reason returned.
    async fn start_slot(&self, slot: &Arc<Slot>) -> Result<(), String> {
        let (manifest, dir) = {
            let mut inner = slot.inner.lock();
            if inner.state == PluginState::Running {
                return Ok(());
            }
            let Some(manifest) = inner.manifest.clone() else {
                return Err(inner
                    .reason
                    .clone()
                    .unwrap_or_else(|| "its manifest is unreadable".into()));
            };
            inner.state = PluginState::Starting;
            inner.reason = None;
            (manifest, inner.dir.clone())
        };
        let fail = |reason: String| {
            slot.set_state(PluginState::Failed, Some(reason.clone()));
            slot.push_log(LogSource::Runtime, LogLevel::Error, &reason);
            tracing::error!(plugin = %slot.name, "{reason}");
            Err(reason)
        };
        let Some(runtime) = self.inner.runtimes.get(&manifest.runtime).cloned() else {
            return fail(format!(
                "Plugin `{}` needs the `{}` runtime, which this host does not have",
                slot.name, manifest.runtime
            ));
        };
        // Verify the package and copy it to a private read-only directory; the plugin runs
        // from that copy, so nothing changed after the check can run.
        let (manifest, dir, trust) = match self.stage(&slot.name, &dir, &manifest).await {
            Ok(staged) => staged,
            Err(reason) => return fail(reason),
        };
        {
            let mut inner = slot.inner.lock();
            inner.manifest = Some(manifest.clone());
            inner.trust = Some(trust.clone());
        }
        let (granted, denials) = crate::policy::effective(&manifest, &trust);
        for denial in &denials {
            slot.denials.fetch_add(1, Ordering::Relaxed);
            slot.push_log(LogSource::Runtime, LogLevel::Warn, denial);
            tracing::warn!(plugin = %slot.name, "{denial}");
        }
        let manifest = Arc::new(granted);
        let data_dir = self
            .inner
            .config
            .state_dir
            .join("data")
            .join(slot.name.as_str());
        if let Err(e) = tokio::fs::create_dir_all(&data_dir).await {
            return fail(format!(
                "Cannot create the data dir `{}`: {e}",
                data_dir.display()
            ));
        }
        let spec = InstanceSpec {
            params: default_params(&manifest),
            manifest: manifest.clone(),
            package_dir: dir,
            data_dir,
        };
        let services = Arc::new(PluginServices::new(
            self.clone(),
            slot.clone(),
            manifest.clone(),
        ));
        match runtime.start(spec, services).await {
            Ok(instance) => {
                let mut inner = slot.inner.lock();
                inner.instance = Some(instance);
                inner.state = PluginState::Running;
                inner.reason = None;
                drop(inner);
                slot.push_log(
                    LogSource::Runtime,
                    LogLevel::Info,
                    &format!("Started `{} {}`", slot.name, manifest.version),
                );
                tracing::info!(plugin = %slot.name, version = %manifest.version, "plugin started");
                Ok(())
            }
            Err(e) => fail(e.to_string()),
        }
    }

    /// Verifies and stages a package; returns the manifest read from the staged copy, the
    /// staged directory and the trust level.
    async fn stage(
        &self,
        name: &PluginName,
        dir: &Path,
        resolved: &Manifest,
    ) -> Result<(Arc<Manifest>, PathBuf, TrustLevel), String> {
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
        let manifest = Manifest::load(staged.dir()).map_err(|e| e.to_string())?;
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
        Ok((Arc::new(manifest), staged.dir().to_owned(), trust))
    }

    /// Stops one plugin if it has an instance. Idempotent.
    async fn stop_slot(&self, slot: &Arc<Slot>, reason: &str) {
        let instance = {
            let mut inner = slot.inner.lock();
            match inner.instance.take() {
                Some(i) => {
                    inner.state = PluginState::Stopping;
                    i
                }
                None => {
                    if matches!(
                        inner.state,
                        PluginState::Running | PluginState::Resolved | PluginState::Discovered
                    ) {
                        inner.state = PluginState::Stopped;
                        inner.reason = Some(reason.to_owned());
                    }
                    return;
                }
            }
        };
        instance.stop(self.inner.config.stop_grace).await;
        slot.set_state(PluginState::Stopped, Some(reason.to_owned()));
        slot.push_log(
            LogSource::Runtime,
            LogLevel::Info,
            &format!("Stopped: {reason}"),
        );
        tracing::info!(plugin = %slot.name, "plugin stopped: {reason}");
    }

    /// Re-reads the plugins directory and applies it to the registry (running plugins keep
    /// their running version until they are restarted).
    async fn refresh(&self) -> Result<Resolution, HostError> {
        let plan = self.plan_from_disk().await?;
        Ok(self.apply_plan(plan))
    }

    async fn plan_from_disk(&self) -> Result<DiskPlan, HostError> {
        let dir = self.inner.config.plugins_dir.clone();
        tokio::task::spawn_blocking(move || scan(&dir))
            .await
            .map_err(|e| HostError::Io(format!("Scanning plugins failed: {e}")))?
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
            let busy = matches!(
                inner.state,
                PluginState::Running | PluginState::Starting | PluginState::Stopping
            );
            if busy {
                continue;
            }
            inner.dir = found.dir;
            match found.manifest {
                Ok(manifest) => {
                    for warning in &manifest.warnings {
                        tracing::warn!(plugin = %name, "{warning}");
                    }
                    inner.manifest = Some(Arc::new(manifest));
                    if let Some(error) = plan.resolution.failed().get(&name) {
                        inner.state = PluginState::Failed;
                        inner.reason = Some(error.to_string());
                    } else if inner.state != PluginState::Stopped {
                        inner.state = PluginState::Resolved;
                        inner.reason = None;
                    }
                }
                Err(reason) => {
                    inner.manifest = None;
                    inner.state = PluginState::Failed;
                    inner.reason = Some(reason);
                }
            }
            inner.wave = plan.resolution.wave_of(name.as_str());
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
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir() && (p.join(TOML_MANIFEST).is_file() || p.join(JSON_MANIFEST).is_file())
        })
        .collect();
    dirs.sort();
    let mut found = BTreeMap::new();
    let mut problems = Vec::new();
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
        found,
        problems,
        resolution,
    })
}

/// The defaults declared in a params JSON Schema (`properties.*.default`).
fn default_params(manifest: &Manifest) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if let Some(props) = manifest
        .params
        .as_ref()
        .and_then(|p| p.get("properties"))
        .and_then(|p| p.as_object())
    {
        for (key, schema) in props {
            if let Some(default) = schema.get("default") {
                out.insert(key.clone(), default.clone());
            }
        }
    }
    serde_json::Value::Object(out)
}
