//! Application services: what an app embedding the host (or running `plugd serve` beside
//! itself) offers its plugins, e.g. a database. A plugin asks for one with `app:NAME` in
//! `permissions.services` and calls it with `service.call`; only trusted plugins get them.

use async_trait::async_trait;
use plugd_manifest::PluginName;

/// A service the application offers plugins. Register it with `HostBuilder::service`.
#[async_trait]
pub trait AppService: Send + Sync {
    /// Handles `method` with JSON `params` for the plugin `caller`. The host has already checked
    /// that the caller may use this service; the service decides what the method means.
    async fn call(
        &self,
        caller: &PluginName,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, AppServiceError>;
}

/// A failed application service call: a code the plugin can act on and a sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AppServiceError {
    /// Machine-readable, e.g. `not_found`, `bad_request`, `unavailable`.
    pub code: String,
    /// For a person.
    pub message: String,
}

impl AppServiceError {
    /// An error with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        AppServiceError {
            code: code.into(),
            message: message.into(),
        }
    }
}
