//! Garbage collection of what plugins leave on disk: staged package copies that no running
//! or draining version uses (each reload makes one) and the runtimes' caches (compiled wasm). Runs at start,
//! after each reload, and on demand (`plugd gc`).

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
}

impl Host {
    /// Removes every staged package copy that no running version of a plugin runs from, and
    /// asks each runtime to drop what it keeps for plugins no instance uses. Waits for lifecycle
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
            Ok(c) if !c.packages.is_empty() || c.runtime_bytes > 0 => tracing::info!(
                packages = c.packages.len(),
                package_bytes = c.package_bytes,
                runtime_bytes = c.runtime_bytes,
                "collected garbage"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("garbage collection failed: {e}"),
        }
    }

    async fn collect_locked(&self, scope: Scope) -> Result<Collected, HostError> {
        let keep: HashSet<PathBuf> = self
            .inner
            .slots
            .read()
            .values()
            .flat_map(|slot| {
                let draining = slot.draining.lock().clone();
                slot.running().into_iter().chain(draining)
            })
            .map(|generation| generation.package_dir.clone())
            .collect();
        let root = self.inner.config.staging_dir();
        let staged = tokio::task::spawn_blocking(move || plugd_trust::collect_staged(&root, &keep))
            .await
            .map_err(|e| HostError::Io(format!("Garbage collection failed: {e}")))?
            .map_err(|e| HostError::Io(format!("Garbage collection failed: {e}")))?;
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
        })
    }
}

/// What a collection removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Staged copies and the runtimes' unused compiled code.
    All,
    /// Staged copies only.
    Packages,
}
