//! Host side of the `plugd:plugin` worlds 0.1 and 0.2: generated bindings, the store's data,
//! and one view of a component's exports whichever world it targets.

use std::sync::Arc;
use std::time::Instant;

use plugd_runtime::{HostCallError, HostCalls, LogLevel, LogSource, Progress};
use wasmtime::component::{Instance, InstancePre, ResourceTable};
use wasmtime::{AsContextMut, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::limits::Limiter;
use crate::stdio::LogStream;

/// `plugd:plugin@0.1.0` (`wit/plugd.wit`).
pub(crate) mod v01 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../../wit/plugd.wit",
        // Calls run as futures on the caller's task (see `instance.rs`), so a host request
        // awaits the host's future instead of blocking a thread.
        imports: { "plugd:plugin/host.request": async, "plugd:plugin/host.emit": async },
        exports: { default: async },
    });
}

/// `plugd:plugin@0.2.0` (`wit/plugd-0.2.wit`); `plugin-full` names every export, and each
/// optional one is looked up on its own.
pub(crate) mod v02 {
    wasmtime::component::bindgen!({
        world: "plugin-full",
        path: "../../wit/plugd-0.2.wit",
        imports: { "plugd:plugin/host.request": async, "plugd:plugin/host.emit": async },
        exports: { default: async },
    });
}

use v01::exports::plugd::plugin::guest as guest01;
use v02::exports::plugd::plugin::{guest as guest02, lifecycle as lifecycle02, tasks as tasks02};

/// The versions of `plugd:plugin` this host runs, newest first.
pub(crate) const VERSIONS: [&str; 2] = ["0.2.0", "0.1.0"];

/// A failure reported by the guest through the world's `error` result.
#[derive(Debug)]
pub(crate) struct GuestError {
    pub(crate) code: String,
    pub(crate) message: String,
    /// A status the plugin chose (0.2 only).
    pub(crate) status: Option<u16>,
}

/// The export indices of one component, found once when it is linked.
pub(crate) enum Indices {
    V01(guest01::GuestIndices),
    V02 {
        guest: guest02::GuestIndices,
        lifecycle: Option<lifecycle02::GuestIndices>,
        tasks: Option<tasks02::GuestIndices>,
    },
}

/// The typed exports of one instance.
pub(crate) enum Exports {
    V01(guest01::Guest),
    V02 {
        guest: guest02::Guest,
        lifecycle: Option<lifecycle02::Guest>,
        tasks: Option<tasks02::Guest>,
    },
}

impl Indices {
    /// Looks up the exports of the world `version` (one of [`VERSIONS`]); `guest` is required.
    pub(crate) fn new(pre: &InstancePre<State>, version: &str) -> wasmtime::Result<Indices> {
        Ok(match version {
            "0.1.0" => Indices::V01(guest01::GuestIndices::new(pre)?),
            _ => Indices::V02 {
                guest: guest02::GuestIndices::new(pre)?,
                lifecycle: lifecycle02::GuestIndices::new(pre).ok(),
                tasks: tasks02::GuestIndices::new(pre).ok(),
            },
        })
    }

    pub(crate) fn load(
        &self,
        mut store: impl AsContextMut,
        instance: &Instance,
    ) -> wasmtime::Result<Exports> {
        Ok(match self {
            Indices::V01(guest) => Exports::V01(guest.load(&mut store, instance)?),
            Indices::V02 {
                guest,
                lifecycle,
                tasks,
            } => Exports::V02 {
                guest: guest.load(&mut store, instance)?,
                lifecycle: lifecycle
                    .as_ref()
                    .map(|l| l.load(&mut store, instance))
                    .transpose()?,
                tasks: tasks
                    .as_ref()
                    .map(|t| t.load(&mut store, instance))
                    .transpose()?,
            },
        })
    }
}

/// The answer of an export that returns `result<T, error>`: the guest's own error inside the
/// trap-or-value outer result.
pub(crate) type Answer<T> = wasmtime::Result<Result<T, GuestError>>;

impl Indices {
    /// Whether the component exports `lifecycle` (0.2).
    pub(crate) fn has_lifecycle(&self) -> bool {
        matches!(
            self,
            Indices::V02 {
                lifecycle: Some(_),
                ..
            }
        )
    }

    /// Whether the component exports `tasks` (0.2).
    pub(crate) fn has_tasks(&self) -> bool {
        matches!(self, Indices::V02 { tasks: Some(_), .. })
    }
}

impl Exports {
    pub(crate) async fn describe(&self, store: &mut Store<State>) -> wasmtime::Result<String> {
        match self {
            Exports::V01(g) => g.call_describe(store).await,
            Exports::V02 { guest, .. } => guest.call_describe(store).await,
        }
    }

    pub(crate) async fn call(
        &self,
        store: &mut Store<State>,
        action: &str,
        payload: &str,
    ) -> Answer<String> {
        match self {
            Exports::V01(g) => Ok(g.call_call(store, action, payload).await?.map_err(from01)),
            Exports::V02 { guest, .. } => Ok(guest
                .call_call(store, action, payload)
                .await?
                .map_err(from02)),
        }
    }

    pub(crate) async fn on_event(
        &self,
        store: &mut Store<State>,
        topic: &str,
        payload: &str,
    ) -> wasmtime::Result<()> {
        match self {
            Exports::V01(g) => g.call_on_event(store, topic, payload).await,
            Exports::V02 { guest, .. } => guest.call_on_event(store, topic, payload).await,
        }
    }

    /// `on-start`, when exported (else `Ok(Ok(()))`).
    pub(crate) async fn on_start(&self, store: &mut Store<State>) -> Answer<()> {
        match self {
            Exports::V02 {
                lifecycle: Some(l), ..
            } => Ok(l.call_on_start(store).await?.map_err(from02)),
            _ => Ok(Ok(())),
        }
    }

    /// `on-stop`, when exported.
    pub(crate) async fn on_stop(&self, store: &mut Store<State>) -> wasmtime::Result<()> {
        match self {
            Exports::V02 {
                lifecycle: Some(l), ..
            } => l.call_on_stop(store).await,
            _ => Ok(()),
        }
    }

    /// `on-params-changed`, when exported (else `Ok(Ok(()))`).
    pub(crate) async fn on_params_changed(
        &self,
        store: &mut Store<State>,
        params: &str,
    ) -> Answer<()> {
        match self {
            Exports::V02 {
                lifecycle: Some(l), ..
            } => Ok(l
                .call_on_params_changed(store, params)
                .await?
                .map_err(from02)),
            _ => Ok(Ok(())),
        }
    }

    /// `run-task`; the caller checked [`Exports::has_tasks`].
    pub(crate) async fn run_task(
        &self,
        store: &mut Store<State>,
        task: &str,
        payload: &str,
    ) -> Answer<String> {
        match self {
            Exports::V02 { tasks: Some(t), .. } => {
                Ok(t.call_run_task(store, task, payload).await?.map_err(from02))
            }
            _ => Err(wasmtime::format_err!(
                "the component does not export `tasks`"
            )),
        }
    }
}

fn from01(e: v01::plugd::plugin::types::Error) -> GuestError {
    GuestError {
        code: e.code,
        message: e.message,
        status: None,
    }
}

fn from02(e: v02::plugd::plugin::types::Error) -> GuestError {
    GuestError {
        code: e.code,
        message: e.message,
        status: e.status,
    }
}

/// The data of one store: one instance of one plugin.
pub(crate) struct State {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) host: Arc<dyn HostCalls>,
    /// The guest's stderr, whose last lines explain a trap.
    pub(crate) stderr: LogStream,
    /// When the running call must be finished; host requests never wait past it.
    pub(crate) deadline: Instant,
    /// When the running call is interrupted: the deadline, or earlier when `limits.cpu` is the
    /// smaller budget. Checked at every epoch tick (see `instance.rs`).
    pub(crate) stop: Instant,
    /// The chain of plugins that led to the running call; a `plugin.call` of the guest carries
    /// it (and the rest of the deadline) to the host, as the SDKs do.
    pub(crate) chain: Vec<plugd_manifest::PluginName>,
    /// The task being run (`run-task`), which the guest's `progress` reports belong to.
    pub(crate) task: Option<u64>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl State {
    /// Forwards a structured log line untouched: the host applies the one cap, rate limit and
    /// escaping of every log source.
    fn log(&self, level: LogLevel, message: &str) {
        self.host.log(LogSource::Plugin, level, message);
    }

    /// Parses and publishes an event (durably); the error is the host's refusal, as a
    /// sentence. The future holds what it needs, not the store's data.
    fn emit(
        &self,
        topic: String,
        payload: String,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let host = self.host.clone();
        async move {
            let payload = serde_json::from_str(&payload)
                .map_err(|e| format!("The payload of event `{topic}` is not JSON: {e}"))?;
            host.emit(&topic, payload).await.map_err(|e| e.to_string())
        }
    }

    /// A host request, bounded by the call's deadline (the guest is suspended meanwhile). The
    /// future holds what it needs, not the store's data (which is not `Sync`).
    fn request(
        &self,
        method: String,
        params: String,
    ) -> impl Future<Output = Result<String, (String, String)>> + Send + 'static {
        let (host, deadline) = (self.host.clone(), self.deadline);
        let chain: Vec<String> = self.chain.iter().map(|n| n.to_string()).collect();
        async move { request(host, deadline, &chain, &method, &params).await }
    }
}

/// The body of [`State::request`].
async fn request(
    host: Arc<dyn HostCalls>,
    deadline: Instant,
    chain: &[String],
    method: &str,
    params: &str,
) -> Result<String, (String, String)> {
    let mut params: serde_json::Value = serde_json::from_str(params).map_err(|e| {
        (
            "invalid".to_owned(),
            format!("The params of `{method}` are not JSON: {e}"),
        )
    })?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    // The call context travels with a `plugin.call`: the chain (for cycle refusal) and what is
    // left of this call's deadline.
    if method == "plugin.call"
        && let Some(object) = params.as_object_mut()
    {
        object.insert(
            "context".to_owned(),
            serde_json::json!({ "chain": chain, "deadline_ms": remaining.as_millis() as u64 }),
        );
    }
    let answer = tokio::time::timeout(remaining, host.request(method, params)).await;
    match answer {
        Ok(Ok(value)) => Ok(value.to_string()),
        Ok(Err(e)) => Err((host_error_code(&e).to_owned(), e.to_string())),
        Err(_) => Err((
            "timeout".to_owned(),
            format!("Host request `{method}` did not finish before the call's deadline"),
        )),
    }
}

impl v01::plugd::plugin::types::Host for State {}

impl v01::plugd::plugin::host::Host for State {
    fn log(&mut self, level: v01::plugd::plugin::host::Level, message: String) {
        use v01::plugd::plugin::host::Level;
        let level = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        State::log(self, level, &message);
    }

    fn progress(&mut self, fraction: Option<f64>, message: Option<String>) {
        self.host.progress(Progress {
            task: self.task,
            fraction,
            message,
        });
    }

    async fn emit(&mut self, topic: String, payload: String) {
        // 0.1 has no way to tell the guest: the refusal goes to the plugin's log.
        if let Err(e) = State::emit(self, topic.clone(), payload).await {
            self.host.log(
                LogSource::Runtime,
                LogLevel::Warn,
                &format!("Refused `emit` of `{topic}`: {e}"),
            );
        }
    }

    async fn request(
        &mut self,
        method: String,
        params: String,
    ) -> Result<String, v01::plugd::plugin::types::Error> {
        State::request(self, method, params)
            .await
            .map_err(|(code, message)| v01::plugd::plugin::types::Error { code, message })
    }
}

impl v02::plugd::plugin::types::Host for State {}

impl v02::plugd::plugin::host::Host for State {
    fn log(&mut self, level: v02::plugd::plugin::host::Level, message: String) {
        use v02::plugd::plugin::host::Level;
        let level = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        State::log(self, level, &message);
    }

    fn progress(&mut self, fraction: Option<f64>, message: Option<String>) {
        self.host.progress(Progress {
            task: self.task,
            fraction,
            message,
        });
    }

    async fn emit(&mut self, topic: String, payload: String) -> Result<(), String> {
        State::emit(self, topic, payload).await
    }

    async fn request(
        &mut self,
        method: String,
        params: String,
    ) -> Result<String, v02::plugd::plugin::types::Error> {
        State::request(self, method, params)
            .await
            .map_err(|(code, message)| v02::plugd::plugin::types::Error {
                code,
                message,
                status: None,
            })
    }
}

fn host_error_code(e: &HostCallError) -> &str {
    match e {
        HostCallError::NotGranted { .. } | HostCallError::DeniedByTrust { .. } => "not_granted",
        HostCallError::Unknown(_) => "not_available",
        HostCallError::Invalid(_) => "invalid",
        // The service's own code (`conflict`, `limit_exceeded`, `cycle`, ...), as the process
        // protocol passes it.
        HostCallError::Service { code, .. } => code,
        _ => "failed",
    }
}
