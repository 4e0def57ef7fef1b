//! Garbage collection of what plugins leave on disk: staged package copies that no running
//! or draining version uses (each reload makes one), the runtimes' caches (compiled wasm) and
//! Python environments (`STATE/envs`) no running or draining version uses. Runs at start,
//! after each reload (staged copies only), and on demand (`plugd gc`).

use std::collections::HashSet;
use std::path::PathBuf;

use crate::{Host, HostError};

/// What one collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Collected {
    /// Staged package copies removed (`STATE/packages/...`).
    pub packages: Vec<PathBuf>,
    /// Bytes those copies held.
    pub package_bytes: u64,
    /// Bytes the runtimes freed (compiled code of plugins no instance uses).
    pub runtime_bytes: u64,
    /// Python environments removed (`STATE/envs/...`, and what killed builds left).
    pub envs: Vec<PathBuf>,
    /// Bytes those environments held (files uv's cache shares through hard links stay there).
    pub env_bytes: u64,
}

impl Host {
    /// Removes every staged package copy that no running version of a plugin runs from and
    /// every Python environment (`STATE/envs`) none uses, and asks each runtime to drop what it
    /// keeps for plugins no instance uses. Waits for lifecycle
    /// operations in progress, so nothing being staged or started is touched.
    pub async fn collect_garbage(&self) -> Result<Collected, HostError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        self.collect_locked(Scope::All).await
    }

    /// [`Host::collect_garbage`] for callers that hold the lifecycle lock; failures are logged,
    /// never fatal to the operation that triggered the collection. `Scope::Packages` leaves the
    /// runtimes' compiled code alone: after a reload, the version just replaced is the likeliest
    /// next one (an undo, a rollback, an A/B swap), and recompiling it would cost the next swap.
    pub(crate) async fn collect_quietly(&self, scope: Scope) {
        match self.collect_locked(scope).await {
            Ok(c) if !c.packages.is_empty() || c.runtime_bytes > 0 || !c.envs.is_empty() => {
                tracing::info!(
                    packages = c.packages.len(),
                    package_bytes = c.package_bytes,
                    runtime_bytes = c.runtime_bytes,
                    envs = c.envs.len(),
                    env_bytes = c.env_bytes,
                    "collected garbage"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("garbage collection failed: {e}"),
        }
    }

    async fn collect_locked(&self, scope: Scope) -> Result<Collected, HostError> {
        let generations: Vec<_> = self
            .inner
            .slots
            .read()
            .values()
            .flat_map(|slot| {
                let draining = slot.draining.lock().clone();
                slot.running().into_iter().chain(draining)
            })
            .collect();
        let keep: HashSet<PathBuf> = generations
            .iter()
            .map(|generation| generation.package_dir.clone())
            .collect();
        let keep_envs: HashSet<PathBuf> = generations
            .iter()
            .filter_map(|generation| generation.python_env.clone())
            .collect();
        let root = self.inner.config.staging_dir();
        let staged = tokio::task::spawn_blocking(move || plugd_trust::collect_staged(&root, &keep))
            .await
            .map_err(|e| HostError::Io(format!("Garbage collection failed: {e}")))?
            .map_err(|e| HostError::Io(format!("Garbage collection failed: {e}")))?;
        // Environments only in a full collection: the version a reload just replaced is the
        // likeliest next one, and rebuilding its environment could need the network.
        let (envs, env_bytes) = match scope {
            Scope::All => {
                let state_dir = self.inner.config.state_dir.clone();
                tokio::task::spawn_blocking(move || {
                    crate::pyenv::collect_envs(&state_dir, &keep_envs)
                })
                .await
                .map_err(|e| HostError::Io(format!("Garbage collection failed: {e}")))?
                .map_err(|e| {
                    HostError::Io(format!(
                        "Garbage collection of Python environments failed: {e}"
                    ))
                })?
            }
            Scope::Packages => (Vec::new(), 0),
        };
        let mut runtime_bytes = 0;
        let runtimes = match scope {
            Scope::All => self.inner.runtimes.values().collect(),
            Scope::Packages => Vec::new(),
        };
        for runtime in runtimes {
            runtime_bytes += runtime
                .collect_garbage()
                .await
                .map_err(|e| HostError::Io(format!("Garbage collection failed: {e}")))?;
        }
        Ok(Collected {
            packages: staged.removed,
            package_bytes: staged.bytes,
            runtime_bytes,
            envs,
            env_bytes,
        })
    }
}

/// What a collection removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Staged copies, the runtimes' unused compiled code and unused Python environments.
    All,
    /// Staged copies only.
    Packages,
}
