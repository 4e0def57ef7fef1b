//! The plugd host: discovers plugins, resolves them, runs them through injected runtimes, and
//! routes calls, events and logs. The façade every front end (HTTP server, CLI, embedding app)
//! uses.
//!
//! This crate never names wasmtime, a child process, SQLite or HTTP: runtimes arrive as
//! `Arc<dyn Runtime>` from the binary or the embedding app.
#![warn(missing_docs)]

mod app;
mod calls;
mod ceilings;
mod error;
mod events;
mod gc;
mod kv;
mod lifecycle;
mod logs;
mod params;
mod policy;
mod quota;
mod registry;
mod results;
mod services;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use plugd_manifest::RuntimeKind;
use plugd_runtime::Runtime;

pub use app::{AppService, AppServiceError};
pub use calls::MAX_CHAIN;
pub use ceilings::{Ceiling, Ceilings};
pub use error::HostError;
pub use events::{EMIT_BURST, EMIT_RATE, EVENT_QUEUE, MAX_EVENT_PAYLOAD, MAX_HOPS};
pub use gc::Collected;
pub use kv::{MAX_COMMIT_OPS, MAX_KEY, MAX_PAGE, MAX_VALUE};
pub use lifecycle::{CallOptions, Unloaded};
pub use params::ParamsView;
pub use quota::dir_usage;
pub use registry::{LogLine, PluginInfo, PluginState, Problem, TrustLevel};

/// How the host runs.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// The directory scanned for plugin packages (one sub-directory each).
    pub plugins_dir: PathBuf,
    /// Where plugd keeps its state (plugin data dirs under `data/`).
    pub state_dir: PathBuf,
    /// How long a stopping plugin may take before it is killed.
    pub stop_grace: Duration,
    /// How many log lines are kept per plugin.
    pub log_lines: usize,
    /// Refuse unsigned or untrusted packages.
    pub strict: bool,
    /// The trust store: a directory of trusted public keys (default `STATE/trust`).
    pub trust_dir: PathBuf,
    /// The most a plugin of each trust level may have (`plugd.toml` `[ceilings.*]`).
    pub ceilings: Ceilings,
    /// How often each running plugin's data dir is measured against `limits.disk` (zero: never).
    pub disk_check_interval: Duration,
    /// How hard the store pushes each acknowledged write to disk.
    pub durability: plugd_store::Durability,
    /// Commits each plugin can undo (kv history depth).
    pub undo_depth: usize,
}

impl HostConfig {
    /// A configuration with default timings for the given directories.
    pub fn new(plugins_dir: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        HostConfig {
            plugins_dir: plugins_dir.into(),
            trust_dir: state_dir.join("trust"),
            state_dir,
            stop_grace: Duration::from_secs(3),
            log_lines: 1000,
            strict: false,
            ceilings: Ceilings::default(),
            disk_check_interval: Duration::from_secs(5),
            durability: plugd_store::Durability::default(),
            undo_depth: 100,
        }
    }

    /// The store's database file (`STATE/plugd.db`).
    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join("plugd.db")
    }

    /// Where verified private copies of packages are kept (`STATE/packages`).
    pub fn staging_dir(&self) -> PathBuf {
        self.state_dir.join("packages")
    }
}

/// The plugin host. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Host {
    inner: Arc<lifecycle::HostInner>,
}

/// Builds a [`Host`] from a configuration and runtimes.
pub struct HostBuilder {
    config: HostConfig,
    runtimes: HashMap<RuntimeKind, Arc<dyn Runtime>>,
    services: HashMap<String, Arc<dyn AppService>>,
    store: Option<plugd_store::Store>,
}

impl HostBuilder {
    /// Registers the runtime for its kind (the last registration of a kind wins).
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtimes.insert(runtime.kind(), runtime);
        self
    }

    /// Offers an application service to plugins under `name`: a plugin with `app:NAME` in its
    /// `permissions.services` (and trusted) may call it (the last registration of a name wins).
    pub fn service(mut self, name: impl Into<String>, service: Arc<dyn AppService>) -> Self {
        self.services.insert(name.into(), service);
        self
    }

    /// Uses an already open store instead of opening `STATE/plugd.db` at start.
    pub fn store(mut self, store: plugd_store::Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Builds the host. Nothing is discovered or started yet: call [`Host::start`].
    pub fn build(self) -> Host {
        Host {
            inner: lifecycle::HostInner::new(self.config, self.runtimes, self.services, self.store),
        }
    }
}

impl Host {
    /// Starts building a host.
    pub fn builder(config: HostConfig) -> HostBuilder {
        HostBuilder {
            config,
            runtimes: HashMap::new(),
            services: HashMap::new(),
            store: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// The store, opened (and migrated) on first use at `STATE/plugd.db` unless the builder was
    /// given one.
    pub async fn store(&self) -> Result<&plugd_store::Store, HostError> {
        let config = &self.inner.config;
        self.inner
            .store
            .get_or_try_init(|| async {
                plugd_store::Store::open(plugd_store::StoreConfig {
                    path: config.store_path(),
                    durability: config.durability,
                    undo_depth: config.undo_depth,
                })
                .await
            })
            .await
            .map_err(HostError::Store)
    }
}
