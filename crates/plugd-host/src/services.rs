//! What the host offers one plugin: its log, progress, events, and (later) kv, tasks and calls
//! to its dependencies. A plugin gets only the services its manifest asks for.

use std::sync::Arc;

use async_trait::async_trait;
use plugd_manifest::{Manifest, Service};
use plugd_runtime::{HostCallError, HostCalls, LogLevel, LogSource, Progress};

use crate::Host;
use crate::registry::Slot;

pub(crate) struct PluginServices {
    host: Host,
    slot: Arc<Slot>,
    manifest: Arc<Manifest>,
}

impl PluginServices {
    pub(crate) fn new(host: Host, slot: Arc<Slot>, manifest: Arc<Manifest>) -> Self {
        PluginServices {
            host,
            slot,
            manifest,
        }
    }

    fn grant(&self, service: Service) -> Result<(), HostCallError> {
        if self.manifest.permissions.services.contains(&service) {
            Ok(())
        } else {
            self.slot
                .denials
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(HostCallError::NotGranted {
                plugin: self.slot.name.to_string(),
                service: service.as_str().to_owned(),
            })
        }
    }
}

#[async_trait]
impl HostCalls for PluginServices {
    fn log(&self, source: LogSource, level: LogLevel, message: &str) {
        let plugin = self.slot.name.as_str();
        match level {
            LogLevel::Error => {
                tracing::error!(target: "plugd::plugin", plugin, ?source, "{message}")
            }
            LogLevel::Warn => tracing::warn!(target: "plugd::plugin", plugin, ?source, "{message}"),
            LogLevel::Info => tracing::info!(target: "plugd::plugin", plugin, ?source, "{message}"),
            LogLevel::Debug => {
                tracing::debug!(target: "plugd::plugin", plugin, ?source, "{message}")
            }
        }
        self.slot.push_log(source, level, message);
    }

    fn progress(&self, progress: Progress) {
        tracing::debug!(
            target: "plugd::plugin",
            plugin = self.slot.name.as_str(),
            fraction = progress.fraction,
            message = progress.message.as_deref(),
            "progress"
        );
    }

    fn emit(&self, topic: &str, payload: serde_json::Value) -> Result<(), HostCallError> {
        if let Err(e) = self.grant(Service::Events) {
            self.log(
                LogSource::Runtime,
                LogLevel::Warn,
                &format!("Denied `emit` of `{topic}`: {e}"),
            );
            return Err(e);
        }
        self.host
            .publish_from(Some(&self.slot.name), topic, payload);
        Ok(())
    }

    async fn request(
        &self,
        method: &str,
        _params: serde_json::Value,
    ) -> Result<serde_json::Value, HostCallError> {
        let service = match method.split('.').next() {
            Some("kv") => Service::Kv,
            Some("task") => Service::Tasks,
            Some("plugin") => Service::Plugins,
            Some("http") => Service::Http,
            _ => return Err(HostCallError::Unknown(method.to_owned())),
        };
        self.grant(service)?;
        // The services issue implements these; until then a granted service says so clearly.
        Err(HostCallError::Unknown(method.to_owned()))
    }
}
