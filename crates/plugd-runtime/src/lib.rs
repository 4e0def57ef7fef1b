//! The runtime boundary: what the host asks of a runtime, and what a plugin may ask of the host.
//!
//! This crate names neither wasmtime nor child processes. Runtimes (`plugd-process`,
//! `plugd-wasm`, an embedding app's built-ins) implement [`Runtime`]; the binary injects them into
//! the host as `Arc<dyn Runtime>`. A plugin fault of any kind reaches the host as a
//! [`RuntimeError`] value, never as a panic or a hang.
#![warn(missing_docs)]

mod slots;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use plugd_manifest::{ActionName, Manifest, PluginName, RuntimeKind};
use serde_json::value::RawValue;
use tokio::sync::watch;

pub use slots::{CallPermit, CallSlots};

/// The longest log line (in bytes) the host keeps; longer lines are cut with a marker. Runtimes
/// that read lines from a stream stop reading a line at this size, so no source of plugin output
/// can make the host buffer more than this per line.
pub const MAX_LOG_LINE: usize = 4096;

/// Everything a runtime needs to start one plugin instance.
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    /// The validated manifest.
    pub manifest: Arc<Manifest>,
    /// The package directory the code runs from (already verified when signing is on).
    pub package_dir: PathBuf,
    /// The plugin's private writable directory (exists when `start` is called).
    pub data_dir: PathBuf,
    /// The plugin's current settings (JSON object).
    pub params: serde_json::Value,
    /// A private Python environment built for the plugin's dependencies (a venv root, read-only
    /// to the plugin); process runtime only.
    pub python_env: Option<PathBuf>,
    /// Where the runtime binds the Unix socket of the plugin's HTTP side (`[http]`): it listens
    /// there and hands the listening descriptor to the plugin; the host connects to the path.
    /// With it, the plugin gets one end of a hand-off channel (a socket pair, no path; see
    /// [`HttpSide`]). Process runtime only.
    pub http_socket: Option<PathBuf>,
}

/// How the host reaches the HTTP side of a running plugin with an `[http]` table, beyond its
/// socket's path: for the host's proxy.
#[derive(Clone, Default)]
pub struct HttpSide {
    /// The host's end of the child's hand-off channel (a `SOCK_SEQPACKET` socket pair, made
    /// non-blocking), when the child takes WebSockets handed over rather than relayed.
    pub handoff: Option<Arc<std::os::fd::OwnedFd>>,
    /// The secret the host sends in `X-Plugd-Secret` with every request to the plugin's HTTP
    /// socket (one per start, given to each child in `initialize`).
    pub secret: Option<Arc<str>>,
    /// The socket file of the current child's listener, pinned: the host connects through it
    /// (`/proc/self/fd/N`), never through the path, which another process of the host's uid
    /// could replace.
    pub socket: Option<Arc<PinnedSocket>>,
}

/// A socket file pinned right after its bind: an `O_PATH` descriptor of it, checked to reach
/// the listener just bound. Connecting to `/proc/self/fd/N` reaches that socket whatever has
/// been renamed or bound at its path since.
#[derive(Debug)]
pub struct PinnedSocket {
    /// The `O_PATH` descriptor.
    pub fd: std::os::fd::OwnedFd,
    /// Unique in this process (a descriptor number is reused once closed): the proxy's
    /// connection pool tells pins apart by it.
    pub serial: u64,
}

impl PinnedSocket {
    /// The path to connect to.
    pub fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

impl std::fmt::Debug for HttpSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("HttpSide")
            .field("handoff", &self.handoff)
            .field("secret", &self.secret.as_ref().map(|_| "…"))
            .field("socket", &self.socket)
            .finish()
    }
}

/// One call of an action.
#[derive(Debug)]
pub struct Invocation {
    /// The action to run.
    pub action: ActionName,
    /// The JSON payload, passed through without re-encoding.
    pub payload: Box<RawValue>,
    /// How long the caller waits; `None` means the manifest's `call_timeout`.
    pub timeout: Option<Duration>,
    /// The plugins whose calls led here, outermost first (empty for a call from an app). A
    /// runtime passes it to the plugin, which sends it back with its own `plugin.call`s, so the
    /// host can refuse a cycle.
    pub chain: Vec<PluginName>,
}

/// One run of a background task (see the host's task queue). A task is like a call whose
/// result is kept: the runtime delivers it (process protocol `task.run`, wasm `run-task`) and
/// returns the handler's JSON result.
///
/// Failures the host retries: [`RuntimeError::ActionFailed`] with `code` [`TASK_RETRY`] (the
/// handler asked for it, e.g. Python `raise plugd.Retry(...)`) and [`RuntimeError::Crashed`].
/// A handler that stopped because of `cancel` answers [`RuntimeError::ActionFailed`] with `code`
/// [`TASK_CANCELLED`].
#[derive(Debug)]
pub struct TaskRun {
    /// The task's id (host-wide, stable across retries); the plugin sends it back with its
    /// `progress` reports.
    pub id: u64,
    /// The task name the plugin registered (`@after_last` for an after-last hook).
    pub task: String,
    /// The JSON payload (for `@after_last`: `{"key": ...}`).
    pub payload: Box<RawValue>,
    /// The grouping key it was submitted with, if any.
    pub key: Option<String>,
    /// 1 for the first run, then one more per retry (and per run cut short by a host crash).
    pub attempt: u32,
    /// How long the run may take (`limits.task_timeout`).
    pub timeout: Duration,
    /// Fires when the task is cancelled: the runtime asks the plugin to stop and waits at most
    /// [`TASK_CANCEL_GRACE`] for it to say it did.
    pub cancel: tokio_util::sync::CancellationToken,
}

/// The task name of an after-last hook run; payload `{"key": KEY}`. Submitted names never
/// start with `@`.
pub const AFTER_LAST: &str = "@after_last";
/// The error code a task handler answers to ask for a retry.
pub const TASK_RETRY: &str = "retry";
/// The error code of a task handler that stopped because it was cancelled.
pub const TASK_CANCELLED: &str = "cancelled";
/// How long a runtime waits for a cancelled task's handler to stop.
pub const TASK_CANCEL_GRACE: Duration = Duration::from_secs(5);

/// The successful result of a call: the plugin's JSON result object, passed through as bytes.
///
/// By convention it has the shape `{"value": ..., "notifications"?: [...], "groups"?: [...]}`
/// (the seed's `ActionResult`); the runtime checks only that it is JSON.
#[derive(Debug)]
pub struct Outcome {
    /// The raw JSON result.
    pub result: Box<RawValue>,
}

/// An action as announced by a running plugin (handshake or `describe`).
#[derive(Clone, Debug, PartialEq)]
pub struct ActionInfo {
    /// Action name.
    pub name: ActionName,
    /// Human description.
    pub description: String,
}

/// What a runtime reports about a running instance.
#[derive(Clone, Debug, Default)]
pub struct InstanceStatus {
    /// Whether the instance currently accepts calls.
    pub ready: bool,
    /// Whether the instance has given up for good (e.g. crashed too often); the host marks the
    /// plugin failed.
    pub dead: bool,
    /// How many times the instance was restarted after a crash.
    pub restarts: u32,
    /// The last fault, as a user-facing sentence.
    pub last_error: Option<String>,
    /// OS process id, for runtimes that have one.
    pub pid: Option<u32>,
    /// Replies that arrived after their call had timed out (dropped).
    pub late_replies: u64,
    /// Free-form runtime details shown in status (e.g. sandbox layers achieved).
    pub details: Vec<(String, String)>,
    /// The restart scheduled after a crash, while the instance waits for it.
    pub backoff: Option<Backoff>,
}

/// A restart a runtime has scheduled after a crash: when, and how much of the crash budget is
/// spent (the instance is given up after `budget` crashes within `window`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// When the next restart is attempted.
    pub next_attempt: std::time::SystemTime,
    /// The delay chosen before it (exponential, with jitter).
    pub delay: Duration,
    /// Crashes within the current window, this one included.
    pub crashes: u32,
    /// Crashes within `window` after which the instance is given up.
    pub budget: u32,
    /// The window of the crash budget.
    pub window: Duration,
}

/// Whether an instance serves, is recovering, or has been given up. Runtimes push every change
/// through the receiver returned by [`Instance::health`]; the host stores it as the plugin's state
/// (a `Dead` instance makes the plugin `failed` and stops its dependants at once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Accepts calls.
    Ready,
    /// Temporarily not serving (e.g. restarting after a crash); calls fail with `NotRunning`.
    Recovering {
        /// Why, as a user-facing sentence.
        reason: String,
    },
    /// Given up for good (e.g. crashed too often). Only a new start brings the plugin back.
    Dead {
        /// Why, as a user-facing sentence.
        reason: String,
    },
}

/// Severity of a plugin log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warning.
    Warn,
    /// Error.
    Error,
}

impl LogLevel {
    /// Parses a level name as sent by SDKs (`debug`, `info`, `warning`/`warn`, `error`/`critical`).
    pub fn parse(s: &str) -> LogLevel {
        match s.to_ascii_lowercase().as_str() {
            "debug" | "trace" => LogLevel::Debug,
            "warn" | "warning" => LogLevel::Warn,
            "error" | "critical" | "fatal" => LogLevel::Error,
            _ => LogLevel::Info,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Where a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogSource {
    /// A structured `log` message from the plugin (SDK logging).
    Plugin,
    /// A line the plugin wrote to stdout.
    Stdout,
    /// A line the plugin wrote to stderr.
    Stderr,
    /// The runtime itself (spawn, crash, restart).
    Runtime,
}

/// Progress of a running call or task.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// The task it belongs to (the `id` of the [`TaskRun`] being run), `None` for a call.
    pub task: Option<u64>,
    /// Fraction done in `0.0..=1.0`, if known.
    pub fraction: Option<f64>,
    /// Human message.
    pub message: Option<String>,
}

/// A failed plugin → host request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostCallError {
    /// The plugin's manifest did not ask for this service, or its trust level forbids it.
    #[error(
        "Service `{service}` is not granted to plugin `{plugin}`; hint: add it to `permissions.services` in `plugin.toml`"
    )]
    NotGranted {
        /// The plugin.
        plugin: String,
        /// The service.
        service: String,
    },
    /// The manifest asks for this service, but the plugin's trust level does not allow it.
    #[error(
        "Service `{service}` is not available to plugin `{plugin}` because it is untrusted (unsigned); hint: sign the package with `plugd sign` and add the key with `plugd trust add`"
    )]
    DeniedByTrust {
        /// The plugin.
        plugin: String,
        /// The service.
        service: String,
    },
    /// The host does not offer this method (yet).
    #[error("Host method `{0}` is not available in this version of plugd")]
    Unknown(String),
    /// The request was malformed.
    #[error("Invalid request: {0}")]
    Invalid(String),
    /// The service failed.
    #[error("{0}")]
    Failed(String),
    /// The service refused or failed with a machine-readable code the plugin can act on
    /// (`limit_exceeded`, `conflict`, `not_found`, `cycle`, ...).
    #[error("{message}")]
    Service {
        /// The code.
        code: String,
        /// A sentence for a person.
        message: String,
    },
}

/// What a plugin may ask of the host. One value per plugin instance; the runtime forwards the
/// plugin's requests here. Implemented by `plugd-host`.
#[async_trait]
pub trait HostCalls: Send + Sync {
    /// A log line from the plugin (structured log, or a captured stdout/stderr line).
    fn log(&self, source: LogSource, level: LogLevel, message: &str);
    /// Progress reported by the plugin while handling `call_id` (runtime-local call id).
    fn progress(&self, progress: Progress);
    /// The plugin publishes an event; returns once the event is durable (acknowledged). A
    /// refusal (service not granted, rate limit, hop limit, a full subscriber backlog) is
    /// returned so the runtime can report it to the plugin as an error.
    async fn emit(&self, topic: &str, payload: serde_json::Value) -> Result<(), HostCallError>;
    /// Any other request (`kv.get`, `plugin.call`, `task.submit`, ...): JSON params in, JSON out.
    async fn request(
        &self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, HostCallError>;
}

/// A [`HostCalls`] that offers nothing: it drops logs, progress and events and refuses every
/// request. For running a runtime on its own (benchmarks, tests, tools).
#[derive(Clone, Copy, Debug, Default)]
pub struct NullHost;

#[async_trait]
impl HostCalls for NullHost {
    fn log(&self, _: LogSource, _: LogLevel, _: &str) {}
    fn progress(&self, _: Progress) {}
    async fn emit(&self, _: &str, _: serde_json::Value) -> Result<(), HostCallError> {
        Err(HostCallError::Unknown("emit".to_owned()))
    }
    async fn request(
        &self,
        method: &str,
        _: serde_json::Value,
    ) -> Result<serde_json::Value, HostCallError> {
        Err(HostCallError::Unknown(method.to_owned()))
    }
}

/// A runtime: knows how to start instances of plugins of one [`RuntimeKind`].
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Which manifests this runtime runs.
    fn kind(&self) -> RuntimeKind;
    /// Starts one instance. Returns when the plugin is ready for calls (handshake done), or with
    /// an error saying why it could not start.
    async fn start(
        &self,
        spec: InstanceSpec,
        host: Arc<dyn HostCalls>,
    ) -> Result<Arc<dyn Instance>, RuntimeError>;
    /// Removes what the runtime keeps on disk for plugins that no running instance uses (e.g.
    /// compiled code); returns the bytes freed. The host calls it at start, after each reload and
    /// on `plugd gc`. The default keeps nothing on disk.
    async fn collect_garbage(&self) -> Result<u64, String> {
        Ok(0)
    }
}

/// A running plugin.
#[async_trait]
pub trait Instance: Send + Sync {
    /// Calls an action. Concurrent calls are allowed up to the manifest's `concurrency`.
    async fn call(&self, invocation: Invocation) -> Result<Outcome, RuntimeError>;
    /// Delivers an event and returns once the plugin handled it (`Ok`: acknowledged); an error
    /// makes the host retry it with backoff and, past its budget, dead-letter it.
    async fn event(&self, topic: &str, payload: &RawValue) -> Result<(), RuntimeError>;
    /// Runs a background task to its end (see [`TaskRun`]); a plugin without such a task
    /// answers [`RuntimeError::UnknownAction`].
    async fn run_task(&self, run: TaskRun) -> Result<Outcome, RuntimeError>;
    /// Delivers new params (the host stored them already).
    async fn params_changed(&self, params: &serde_json::Value) -> Result<(), RuntimeError> {
        let _ = params;
        Ok(())
    }
    /// Actions the running plugin announced (may be empty: the manifest's list is used then).
    fn actions(&self) -> Vec<ActionInfo>;
    /// Current status.
    fn status(&self) -> InstanceStatus;
    /// Health changes, pushed by the runtime. The default is an instance that is always ready
    /// (for runtimes that cannot fail between calls).
    fn health(&self) -> watch::Receiver<Health> {
        watch::channel(Health::Ready).1
    }
    /// Its HTTP side's hand-off channel (when the running child's `hello` offered hand-offs;
    /// it changes when a crashed child is restarted) and request secret.
    fn http_side(&self) -> HttpSide {
        HttpSide::default()
    }
    /// Stops the instance: asks politely, waits at most `grace`, then forces. Idempotent.
    async fn stop(&self, grace: Duration);
}

/// Why a call or a start failed. Every message names the plugin and, where known, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The plugin has no such action.
    #[error("Plugin `{plugin}` has no action `{action}`")]
    UnknownAction {
        /// Plugin.
        plugin: PluginName,
        /// Action.
        action: String,
    },
    /// The payload was rejected by the plugin (validation).
    #[error("Plugin `{plugin}` rejected the payload for `{action}`: {message}")]
    BadPayload {
        /// Plugin.
        plugin: PluginName,
        /// Action.
        action: String,
        /// What was wrong.
        message: String,
    },
    /// The plugin's handler failed (raised, trapped, returned an error).
    #[error("Plugin `{plugin}` failed in `{action}`: {message}")]
    ActionFailed {
        /// Plugin.
        plugin: PluginName,
        /// Action.
        action: String,
        /// The plugin's error message.
        message: String,
        /// Machine-readable code from the plugin, if any.
        code: Option<String>,
    },
    /// The call did not finish in time.
    #[error("Plugin `{plugin}` did not answer `{action}` within {timeout:?}")]
    Timeout {
        /// Plugin.
        plugin: PluginName,
        /// Action.
        action: String,
        /// The limit.
        timeout: Duration,
    },
    /// The plugin answered with a client error it chose (a status in the 4xx range and a code),
    /// e.g. `raise plugd.ClientError("not_found", "no such image", status=404)`.
    #[error("{message}")]
    ClientError {
        /// Plugin.
        plugin: PluginName,
        /// Action.
        action: String,
        /// The plugin's machine-readable code.
        code: String,
        /// The plugin's message.
        message: String,
        /// The status it asked for (400..=499; 401 and 403 are reserved for auth and become 400).
        status: u16,
    },
    /// No concurrency slot became free before the call's deadline (`limits.concurrency`
    /// calls were already running), or the host shed the call. Maps to 429.
    #[error("Plugin `{plugin}` is overloaded: {reason}")]
    Overloaded {
        /// Plugin.
        plugin: PluginName,
        /// Why, with a hint.
        reason: String,
    },
    /// A resource limit was hit (memory, CPU).
    #[error("Plugin `{plugin}` exceeded its {limit} limit{}", hint_suffix(.hint))]
    LimitExceeded {
        /// Plugin.
        plugin: PluginName,
        /// Which limit (`memory`, `cpu`, `concurrency`, ...).
        limit: String,
        /// Optional hint.
        hint: Option<String>,
    },
    /// The plugin is not running (starting, restarting, stopped).
    #[error("Plugin `{plugin}` is not running: {reason}")]
    NotRunning {
        /// Plugin.
        plugin: PluginName,
        /// Why.
        reason: String,
    },
    /// The plugin broke the protocol or crashed; the instance is being restarted or is dead.
    #[error("Plugin `{plugin}` crashed: {reason}")]
    Crashed {
        /// Plugin.
        plugin: PluginName,
        /// Why.
        reason: String,
    },
    /// The plugin could not be started.
    #[error("Plugin `{plugin}` could not start: {reason}")]
    StartFailed {
        /// Plugin.
        plugin: PluginName,
        /// Why, with a hint where known.
        reason: String,
    },
    /// The runtime refused the plugin before running it (unsupported version, missing layer...).
    #[error("Plugin `{plugin}` was refused: {reason}")]
    Refused {
        /// Plugin.
        plugin: PluginName,
        /// Why.
        reason: String,
    },
}

impl RuntimeError {
    /// A stable machine-readable code for API error bodies (for [`RuntimeError::ClientError`], the
    /// plugin's own code).
    pub fn code(&self) -> &str {
        match self {
            RuntimeError::ClientError { code, .. } => code,
            other => other.kind(),
        }
    }

    /// The bounded form of [`RuntimeError::code`], for metric labels: the same code, except that
    /// a plugin's own client error code is `client_error`.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeError::ClientError { .. } => "client_error",
            RuntimeError::Overloaded { .. } => "overloaded",
            RuntimeError::UnknownAction { .. } => "action_not_found",
            RuntimeError::BadPayload { .. } => "bad_payload",
            RuntimeError::ActionFailed { .. } => "plugin_failed",
            RuntimeError::Timeout { .. } => "plugin_timeout",
            RuntimeError::LimitExceeded { .. } => "limit_exceeded",
            RuntimeError::NotRunning { .. } => "plugin_not_running",
            RuntimeError::Crashed { .. } => "plugin_crashed",
            RuntimeError::StartFailed { .. } => "plugin_start_failed",
            RuntimeError::Refused { .. } => "plugin_refused",
        }
    }
}

fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!("; hint: {h}"),
        None => String::new(),
    }
}
