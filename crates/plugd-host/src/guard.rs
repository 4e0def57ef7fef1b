//! The registry as an embedding application sees it: running plugins by kind, one plugin by
//! name with a typed error saying why it is not there, and [`PluginGuard`], a plugin started
//! for the length of a scope.

use plugd_manifest::PluginKind;
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

    /// Loads `name` (and its dependencies) and returns a guard that keeps it running until the
    /// guard is stopped or dropped. The error says why it could not start, as [`Host::get`].
    pub async fn guard(&self, name: &str) -> Result<PluginGuard, RegistryError> {
        if let Err(e) = self.load(name).await {
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
        Ok(PluginGuard {
            host: self.clone(),
            info,
            stopped: false,
        })
    }

    /// Runs `body` with `name` started, and stops it when `body` ends (whatever its outcome).
    pub async fn with_plugin<T, F, Fut>(&self, name: &str, body: F) -> Result<T, RegistryError>
    where
        F: FnOnce(&PluginGuard) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let guard = self.guard(name).await?;
        let out = body(&guard).await;
        guard.stop().await;
        Ok(out)
    }
}

/// A plugin started for the length of a scope (RAII): [`Host::guard`] starts it,
/// [`PluginGuard::stop`] stops it, and dropping the guard without `stop` stops it in the
/// background (`Drop` cannot await, so it spawns the unload on the current Tokio runtime).
#[must_use = "dropping the guard stops the plugin"]
pub struct PluginGuard {
    host: Host,
    info: PluginInfo,
    stopped: bool,
}

impl PluginGuard {
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

    /// Stops the plugin (and the plugins that depend on it) and waits for it to be stopped.
    pub async fn stop(mut self) {
        self.stopped = true;
        if let Err(e) = self.host.unload(self.info.name.as_str()).await {
            tracing::warn!(plugin = %self.info.name, "stopping a guarded plugin failed: {e}");
        }
    }
}

impl Drop for PluginGuard {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let host = self.host.clone();
        let name = self.info.name.clone();
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
