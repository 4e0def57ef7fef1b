//! The registry as an embedding application sees it: running plugins by kind, one plugin by
//! name with a typed error saying why it is not there, and [`PluginGuard`], a plugin started
//! for the length of a scope.

use plugd_manifest::{PluginKind, PluginName};
use plugd_runtime::Outcome;
use serde_json::value::RawValue;

use crate::registry::{FailCause, Phase};
use crate::{Host, HostError, PluginInfo, PluginState};

/// Why [`Host::get`] (or [`Host::guard`]) has no running plugin to give.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// No plugin of that name is installed.
    #[error("Plugin `{name}` is not installed; hint: `plugd list` shows the installed plugins")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The plugin itself could not load: its manifest, its package, its start.
    #[error("{reason}")]
    Load {
        /// The plugin.
        name: String,
        /// Why, as a sentence.
        reason: String,
    },
    /// A dependency of the plugin is missing, of the wrong version, in a cycle, failed or
    /// uninstalled.
    #[error("{reason}")]
    Dependency {
        /// The plugin.
        name: String,
        /// Why, as a sentence naming the dependency.
        reason: String,
    },
    /// The plugin is installed and fine, but not running now (stopped, starting, unloaded).
    #[error("Plugin `{name}` is {state}; hint: `plugd load {name}`")]
    NotRunning {
        /// The plugin.
        name: String,
        /// Its state.
        state: PluginState,
    },
}

impl Host {
    /// The running plugins whose manifest declares `kind` (`[plugin] kind`), sorted by name.
    pub fn plugins_by_kind(&self, kind: PluginKind) -> Vec<PluginInfo> {
        self.plugins()
            .into_iter()
            .filter(|p| {
                p.state == PluginState::Running
                    && p.manifest.as_ref().is_some_and(|m| m.kind == kind)
            })
            .collect()
    }

    /// A running plugin, or why there is none: not installed, failed to load, failed because of
    /// a dependency, or not running now.
    pub fn get(&self, name: &str) -> Result<PluginInfo, RegistryError> {
        let Some(slot) = self.inner.slot(name) else {
            return Err(RegistryError::NotFound {
                name: name.to_owned(),
            });
        };
        let inner = slot.inner.lock();
        match inner.phase() {
            Phase::Running(_) => {
                drop(inner);
                Ok(slot.info())
            }
            Phase::Failed { reason, cause } => {
                let (name, reason) = (name.to_owned(), reason.clone());
                Err(match cause {
                    FailCause::Load => RegistryError::Load { name, reason },
                    FailCause::Dependency => RegistryError::Dependency { name, reason },
                })
            }
            other => Err(RegistryError::NotRunning {
                name: name.to_owned(),
                state: other.state(),
            }),
        }
    }

    /// Loads `name` (and its dependencies) and returns a guard that keeps it running while it
    /// lives. The error says why it could not start, as [`Host::get`].
    ///
    /// Guards count: the plugin is unloaded when the last guard of it ends, and only if a guard
    /// started it (a plugin that ran before its first guard keeps running). Unloading it stops
    /// the plugins that depend on it too, as [`Host::unload`] does.
    pub async fn guard(&self, name: &str) -> Result<PluginGuard, RegistryError> {
        let was_running = self.get(name).is_ok();
        if !was_running && let Err(e) = self.load(name).await {
            return Err(match self.get(name) {
                Err(typed) => typed,
                // The load failed, but the plugin runs: another caller started it meanwhile.
                Ok(_) => RegistryError::Load {
                    name: name.to_owned(),
                    reason: e.to_string(),
                },
            });
        }
        let info = self.get(name)?;
        self.inner
            .guards
            .lock()
            .entry(info.name.clone())
            .and_modify(|held| held.count += 1)
            .or_insert(Held {
                count: 1,
                started: !was_running,
            });
        Ok(PluginGuard {
            plugin: GuardedPlugin {
                host: self.clone(),
                info,
            },
            released: false,
        })
    }

    /// Runs `body` with `name` held by a guard (started if it was not running), and releases
    /// the guard when `body` ends, whatever its outcome. `body` gets the plugin by value.
    pub async fn with_plugin<T, F, Fut>(&self, name: &str, body: F) -> Result<T, RegistryError>
    where
        F: FnOnce(GuardedPlugin) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let guard = self.guard(name).await?;
        let out = body(guard.plugin.clone()).await;
        guard.stop().await;
        Ok(out)
    }

    /// One guard of `name` ended: whether the plugin must be unloaded now.
    fn release(&self, name: &PluginName) -> bool {
        let mut guards = self.inner.guards.lock();
        let Some(held) = guards.get_mut(name) else {
            return false;
        };
        held.count -= 1;
        if held.count > 0 {
            return false;
        }
        guards.remove(name).is_some_and(|held| held.started)
    }
}

/// How a plugin is held by guards.
#[derive(Debug)]
pub(crate) struct Held {
    count: usize,
    /// A guard started it: the last guard unloads it.
    started: bool,
}

/// A plugin as a guard holds it: its info when the guard was made, and calls.
#[derive(Clone)]
pub struct GuardedPlugin {
    host: Host,
    info: PluginInfo,
}

impl GuardedPlugin {
    /// The plugin as it was when the guard was made.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Calls one of the plugin's actions.
    pub async fn call(&self, action: &str, payload: Box<RawValue>) -> Result<Outcome, HostError> {
        self.host
            .call(self.info.name.as_str(), action, payload)
            .await
    }
}

/// A plugin held running for the length of a scope (RAII): [`Host::guard`] starts it if needed,
/// [`PluginGuard::stop`] releases it, and dropping the guard releases it too (`Drop` cannot
/// await, so the unload, when due, is spawned on the current Tokio runtime).
#[must_use = "dropping the guard releases the plugin"]
pub struct PluginGuard {
    plugin: GuardedPlugin,
    released: bool,
}

impl std::ops::Deref for PluginGuard {
    type Target = GuardedPlugin;

    fn deref(&self) -> &GuardedPlugin {
        &self.plugin
    }
}

impl PluginGuard {
    /// Releases the guard and, when it was the last one of a plugin a guard started, unloads the
    /// plugin (and its dependants) and waits until it stopped.
    pub async fn stop(mut self) {
        self.released = true;
        let GuardedPlugin { host, info } = &self.plugin;
        if host.release(&info.name)
            && let Err(e) = host.unload(info.name.as_str()).await
        {
            tracing::warn!(plugin = %info.name, "stopping a guarded plugin failed: {e}");
        }
    }
}

impl Drop for PluginGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let GuardedPlugin { host, info } = &self.plugin;
        if !host.release(&info.name) {
            return;
        }
        let (host, name) = (host.clone(), info.name.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = host.unload(name.as_str()).await {
                        tracing::warn!(plugin = %name, "stopping a guarded plugin failed: {e}");
                    }
                });
            }
            Err(_) => tracing::warn!(
                plugin = %name,
                "a plugin guard was dropped outside a Tokio runtime: the plugin keeps running until the host shuts down"
            ),
        }
    }
}
