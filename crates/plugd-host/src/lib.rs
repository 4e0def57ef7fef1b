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
mod guard;
mod http;
mod kv;
mod lifecycle;
mod logs;
mod params;
mod policy;
pub mod pyenv;
mod quota;
mod rate;
mod registry;
mod results;
mod services;
mod supervision;
mod tasks;
mod telemetry;
mod watch;

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
pub use events::{
    DEFAULT_EVENT_BACKLOG, DeadLetter, EMIT_BURST, EMIT_RATE, EVENT_ATTEMPTS, EVENT_BACKOFF,
    EventRecord, MAX_EVENT_PAYLOAD, MAX_HOPS, Published, SubscriberInfo, topic_matches,
};
pub use gc::Collected;
pub use guard::{GuardedPlugin, PluginGuard, RegistryError};
pub use http::{HttpEndpoint, HttpRoute, MAX_SOCKET_PATH};
pub use kv::{MAX_COMMIT_OPS, MAX_KEY, MAX_PAGE, MAX_VALUE};
pub use lifecycle::{CallOptions, Unloaded};
pub use params::ParamsView;
pub use plugd_runtime::Backoff;
pub use plugd_store::TaskState;
pub use pyenv::PythonConfig;
pub use quota::dir_usage;
pub use registry::{LogLine, PluginInfo, PluginState, Problem, TrustLevel};
pub use supervision::{Fault, KEPT as SUPERVISION_KEPT, RELOAD_FAILED, Swap, Trigger};
pub use tasks::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_TASK_QUEUE, MAX_TASK_PAYLOAD, TASK_BACKOFF, TaskQuery,
    TaskSubmit, TaskView,
};
pub use telemetry::describe_metrics;
pub use watch::{WatchConfig, WatchMode, Watching};

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
    /// Events a subscriber may have waiting before publishing to it is refused.
    pub event_backlog: u64,
    /// Queued tasks a plugin may have before a submit is refused.
    pub task_queue: usize,
    /// How long finished tasks, delivered events and dead letters are kept (zero: forever).
    pub retention: Duration,
    /// Where `uv` comes from and which index it uses for plugins' Python dependencies
    /// (environments in `STATE/envs`, see `docs/python-deps.md`).
    pub python: PythonConfig,
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
            event_backlog: events::DEFAULT_EVENT_BACKLOG,
            task_queue: tasks::DEFAULT_TASK_QUEUE,
            retention: DEFAULT_RETENTION,
            python: PythonConfig::default(),
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

/// Milliseconds since the Unix epoch (0 before it): the time stamps of events and tasks.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The default of [`HostConfig::retention`]: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often the retention purge runs.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

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

    /// Removes finished tasks, delivered events and dead letters older than the retention
    /// period; returns how many (events, dead letters, tasks) went. Runs hourly after
    /// [`Host::start`].
    pub async fn purge(&self) -> Result<(u64, u64, u64), HostError> {
        let retention = self.inner.config.retention;
        if retention.is_zero() {
            return Ok((0, 0, 0));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let before = now.saturating_sub(retention).as_millis() as u64;
        Ok(self.store().await?.purge(before).await?)
    }

    /// Starts the hourly purge (once per host; it ends with the host).
    fn start_retention(&self) {
        if self.inner.config.retention.is_zero()
            || self
                .inner
                .purging
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let host = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = host.upgrade() else { return };
                let host_now = Host { inner };
                match host_now.purge().await {
                    Ok((0, 0, 0)) => {}
                    Ok((events, dead, tasks)) => tracing::info!(
                        events,
                        dead,
                        tasks,
                        "purged what is older than the retention period"
                    ),
                    Err(e) => tracing::warn!("the retention purge failed: {e}"),
                }
                drop(host_now);
                tokio::time::sleep(PURGE_EVERY).await;
            }
        });
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
