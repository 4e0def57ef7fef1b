//! The process runtime: each plugin is a child process speaking protocol v1 on fd 3.
//!
//! `spawn` builds the child (socket pair on fd 3, clean environment, own process group, dies
//! with the host), `conn` speaks the protocol over the socket, `logs` turns stdout/stderr into
//! log lines, and `instance` supervises one plugin: handshake, calls, health pings, restarts.
#![warn(missing_docs)]

mod conn;
mod instance;
mod logs;
mod spawn;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use plugd_manifest::RuntimeKind;
use plugd_runtime::{HostCalls, Instance, InstanceSpec, Runtime, RuntimeError};

/// How the process runtime treats its children.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    /// Environment every child gets (besides the `PLUGD_*` variables and the manifest's
    /// `permissions.env`). Defaults to [`CHILD_PATH`], `LANG=C.UTF-8`,
    /// `PYTHONUNBUFFERED=1` and `PYTHONDONTWRITEBYTECODE=1`.
    pub base_env: Vec<(OsString, OsString)>,
    /// How long a child may take to start: to say `hello` and, when it has `on_start` hooks, to
    /// say `started` after them (one deadline for both).
    pub start_timeout: Duration,
    /// How often a running child is pinged.
    pub ping_interval: Duration,
    /// How long a ping may take before the child is killed and restarted.
    pub ping_timeout: Duration,
    /// Largest protocol frame accepted from a child.
    pub max_frame: usize,
    /// Crash handling.
    pub restart: RestartPolicy,
    /// Kernel confinement of children; `None` runs them unconfined (development only).
    pub sandbox: Option<SandboxConfig>,
}

/// How children are confined (see `plugd-sandbox`).
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Refuse to start a plugin when any layer is unavailable on this kernel.
    pub strict: bool,
    /// Read-only paths every child needs besides its package (interpreters, libraries, the SDK).
    pub read_paths: Vec<PathBuf>,
    /// Largest number of processes and threads per child (the pids cgroup).
    pub pids_max: u64,
    /// CPU bandwidth of each child as a fraction of one core (cgroup CPU quota).
    pub cpu_quota: Option<f64>,
    /// `HOME` of every child: a fresh tmpfs inside its mount namespace, never the data dir.
    pub home: PathBuf,
    /// The machine-wide uid allocation table (shared by every plugd process on the machine).
    pub uid_table: PathBuf,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            strict: false,
            read_paths: [
                "/usr",
                "/lib",
                "/lib64",
                "/bin",
                "/etc/ld.so.cache",
                "/etc/localtime",
                "/etc/ssl",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
            pids_max: 64,
            cpu_quota: Some(1.0),
            home: PathBuf::from(plugd_sandbox::DEFAULT_HOME),
            uid_table: PathBuf::from(plugd_sandbox::DEFAULT_UID_TABLE),
        }
    }
}

/// The `PATH` children get: system directories only. The host's own `PATH` may name directories
/// a sandboxed child cannot enter (e.g. a version manager's shims under `/root`).
pub const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The `PATH` of a child's base environment (empty when it sets none).
pub fn base_path(base_env: &[(OsString, OsString)]) -> OsString {
    base_env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The `PATH` of a child that runs with a Python environment: the environment's `bin` first,
/// then the base `PATH` (no empty entry, which would mean the working directory).
pub fn path_with_env(base_env: &[(OsString, OsString)], env: &std::path::Path) -> OsString {
    let mut path = OsString::from(env.join("bin"));
    let base = base_path(base_env);
    if !base.is_empty() {
        path.push(":");
        path.push(base);
    }
    path
}

/// When and how fast crashed children are restarted.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    /// First backoff delay; doubles after each crash.
    pub initial_backoff: Duration,
    /// Largest backoff delay.
    pub max_backoff: Duration,
    /// Crashes within `window` after which the plugin is given up (marked dead).
    pub max_crashes: u32,
    /// The window for `max_crashes`.
    pub window: Duration,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        let mut base_env = vec![
            ("LANG".into(), "C.UTF-8".into()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ];
        base_env.push(("PATH".into(), CHILD_PATH.into()));
        ProcessConfig {
            base_env,
            start_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(5),
            max_frame: plugd_protocol::DEFAULT_MAX_FRAME,
            restart: RestartPolicy {
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                max_crashes: 5,
                window: Duration::from_secs(60),
            },
            sandbox: None,
        }
    }
}

/// The process runtime. Cheap to clone; one per host.
#[derive(Clone, Debug, Default)]
pub struct ProcessRuntime {
    config: Arc<ProcessConfig>,
}

impl ProcessRuntime {
    /// A runtime with the given configuration.
    pub fn new(config: ProcessConfig) -> Self {
        ProcessRuntime {
            config: Arc::new(config),
        }
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    async fn start(
        &self,
        spec: InstanceSpec,
        host: Arc<dyn HostCalls>,
    ) -> Result<Arc<dyn Instance>, RuntimeError> {
        let instance = instance::ProcessInstance::start(spec, host, self.config.clone()).await?;
        Ok(instance)
    }
}
