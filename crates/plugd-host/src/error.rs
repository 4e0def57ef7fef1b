//! Errors of the host façade, each with a stable machine-readable code.

use plugd_runtime::RuntimeError;

/// Why a host operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// No plugin of that name is installed.
    #[error("Plugin `{name}` is not installed; hint: `plugd list` shows the installed plugins")]
    PluginNotFound {
        /// The name asked for.
        name: String,
    },
    /// The plugin exists but is not running.
    #[error("{}", not_running(plugin, *state, reason.as_deref()))]
    NotRunning {
        /// The plugin.
        plugin: String,
        /// Its state.
        state: crate::PluginState,
        /// Why, if known.
        reason: Option<String>,
    },
    /// The plugin's manifest or dependencies prevent loading it.
    #[error("{0}")]
    CannotLoad(String),
    /// The runtime reported an error.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The request was malformed (e.g. an invalid event topic).
    #[error("{0}")]
    Invalid(String),
    /// A rate or queue limit refused the request; retry later.
    #[error("{0}")]
    Overloaded(String),
    /// The plugin's `limits.rate` refused the call; it may be retried after `retry_after`.
    #[error(
        "Plugin `{plugin}` accepts at most {calls} calls per {per:?}; hint: retry in {:.1} s",
        retry_after.as_secs_f64()
    )]
    RateLimited {
        /// The plugin.
        plugin: String,
        /// Its `limits.rate.calls`.
        calls: u32,
        /// Its `limits.rate.per`.
        per: std::time::Duration,
        /// When the oldest call in the window leaves it.
        retry_after: std::time::Duration,
    },
    /// New params do not fit the plugin's `[params]` schema; nothing was stored.
    #[error("{}", invalid_params(plugin, violations))]
    InvalidParams {
        /// The plugin.
        plugin: String,
        /// Every violation, with its JSON pointer.
        violations: Vec<plugd_manifest::Violation>,
    },
    /// The store refused or failed (quota, limits, conflict, I/O).
    #[error(transparent)]
    Store(#[from] plugd_store::StoreError),
    /// A plugin answered with a result that breaks the result shape.
    #[error("{0}")]
    BadResult(String),
    /// The host could not read or write its directories.
    #[error("{0}")]
    Io(String),
    /// No such task, dead letter or other record (the message names what was asked for).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the state of what it names (e.g. cancelling a finished task).
    #[error("{0}")]
    Conflict(String),
}

impl HostError {
    /// A stable machine-readable code for API error bodies (a plugin's own code for its client
    /// errors).
    pub fn code(&self) -> &str {
        match self {
            HostError::Runtime(e) => e.code(),
            other => other.kind(),
        }
    }

    /// The bounded form of [`HostError::code`], for metric labels: the same code, except that
    /// a plugin's own client error code is `client_error`.
    pub fn kind(&self) -> &'static str {
        match self {
            HostError::PluginNotFound { .. } => "plugin_not_found",
            HostError::NotRunning { .. } => "plugin_not_running",
            HostError::CannotLoad(_) => "plugin_cannot_load",
            HostError::Runtime(e) => e.kind(),
            HostError::Invalid(_) => "bad_request",
            HostError::InvalidParams { .. } => "bad_params",
            HostError::Store(e) => e.code(),
            HostError::BadResult(_) => "bad_result",
            HostError::Overloaded(_) => "overloaded",
            HostError::RateLimited { .. } => "rate_limited",
            HostError::Io(_) => "internal",
            HostError::NotFound(_) => "not_found",
            HostError::Conflict(_) => "conflict",
        }
    }
}

fn not_running(plugin: &str, state: crate::PluginState, reason: Option<&str>) -> String {
    // Failure reasons are whole sentences that usually name the plugin already.
    match reason {
        Some(r) if r.starts_with(&format!("Plugin `{plugin}` ")) => r.to_owned(),
        Some(r) => format!("Plugin `{plugin}` is {state}: {r}"),
        None => format!("Plugin `{plugin}` is {state}"),
    }
}

fn invalid_params(plugin: &str, violations: &[plugd_manifest::Violation]) -> String {
    format!(
        "The params of plugin `{plugin}` were not changed: {}; hint: `plugd params {plugin}` shows the schema and the current values",
        violations_text(violations)
    )
}

/// Every violation as `` `/pointer`: message ``, joined by `; ` (the root pointer shown as `/`).
pub(crate) fn violations_text(violations: &[plugd_manifest::Violation]) -> String {
    let list: Vec<String> = violations
        .iter()
        .map(|v| {
            let at = if v.pointer.is_empty() {
                "/"
            } else {
                &v.pointer
            };
            format!("`{at}`: {}", v.message)
        })
        .collect();
    list.join("; ")
}
