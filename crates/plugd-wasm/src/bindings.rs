//! Host side of the `plugd:plugin@0.1.0` world: generated bindings and the store's data.

use std::sync::Arc;
use std::time::Instant;

use plugd_runtime::{HostCallError, HostCalls, LogLevel, LogSource, Progress};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::limits::Limiter;

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../../wit/plugd.wit",
    // Calls run as futures on the caller's task (see `instance.rs`), so a host request awaits
    // the host's future instead of blocking a thread.
    imports: { "plugd:plugin/host.request": async },
    exports: { default: async },
});

pub(crate) use self::exports::plugd::plugin::guest::Error as GuestError;
use self::plugd::plugin::host::{self, Level};
use self::plugd::plugin::types;

/// The data of one store: one instance of one plugin.
pub(crate) struct State {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) host: Arc<dyn HostCalls>,
    /// When the running call must be finished; host requests never wait past it.
    pub(crate) deadline: Instant,
    /// When the running call is interrupted: the deadline, or earlier when `limits.cpu` is the
    /// smaller budget. Checked at every epoch tick (see `instance.rs`).
    pub(crate) stop: Instant,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for State {}

impl host::Host for State {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.host.log(LogSource::Plugin, level, &message);
    }

    fn progress(&mut self, fraction: Option<f64>, message: Option<String>) {
        self.host.progress(Progress { fraction, message });
    }

    fn emit(&mut self, topic: String, payload: String) {
        match serde_json::from_str(&payload) {
            Ok(payload) => {
                if let Err(e) = self.host.emit(&topic, payload) {
                    self.host.log(
                        LogSource::Runtime,
                        LogLevel::Warn,
                        &format!("Refused `emit` of `{topic}`: {e}"),
                    );
                }
            }
            Err(e) => self.host.log(
                LogSource::Runtime,
                LogLevel::Warn,
                &format!("Dropped event `{topic}`: its payload is not JSON ({e})"),
            ),
        }
    }

    async fn request(&mut self, method: String, params: String) -> Result<String, types::Error> {
        let params = serde_json::from_str(&params).map_err(|e| types::Error {
            code: "invalid".to_owned(),
            message: format!("The params of `{method}` are not JSON: {e}"),
        })?;
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        // The wait is bounded by the call's deadline; the guest is suspended meanwhile.
        let answer = tokio::time::timeout(remaining, self.host.request(&method, params)).await;
        match answer {
            Ok(Ok(value)) => Ok(value.to_string()),
            Ok(Err(e)) => Err(types::Error {
                code: host_error_code(&e).to_owned(),
                message: e.to_string(),
            }),
            Err(_) => Err(types::Error {
                code: "timeout".to_owned(),
                message: format!(
                    "Host request `{method}` did not finish before the call's deadline"
                ),
            }),
        }
    }
}

fn host_error_code(e: &HostCallError) -> &'static str {
    match e {
        HostCallError::NotGranted { .. } => "not_granted",
        HostCallError::Unknown(_) => "not_available",
        HostCallError::Invalid(_) => "invalid",
        _ => "failed",
    }
}
