//! What the host offers one plugin: its log, progress, events, and (later) kv, tasks and calls
//! to its dependencies. A plugin gets only the services its manifest asks for.
//!
//! The services hold the host weakly: a plugin's instance holds its services, and the host holds
//! the instance, so a strong reference would be a cycle that keeps children alive after an
//! embedding app drops `Host` without `shutdown`.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use plugd_manifest::{Manifest, Service};
use plugd_runtime::{HostCallError, HostCalls, LogLevel, LogSource, Progress};

use crate::registry::Slot;
use crate::{Host, HostError, lifecycle::HostInner};

pub(crate) struct PluginServices {
    host: Weak<HostInner>,
    /// The services the manifest asked for, before trust narrowed them (for the right message).
    declared: Vec<Service>,
    /// Weak too: the slot holds the instance, which holds these services.
    slot: Weak<Slot>,
    manifest: Arc<Manifest>,
}

impl PluginServices {
    pub(crate) fn new(
        host: &Host,
        slot: &Arc<Slot>,
        declared: &Manifest,
        manifest: Arc<Manifest>,
    ) -> Self {
        PluginServices {
            host: Arc::downgrade(&host.inner),
            declared: declared.permissions.services.clone(),
            slot: Arc::downgrade(slot),
            manifest,
        }
    }

    fn host(&self) -> Result<Host, HostCallError> {
        self.host
            .upgrade()
            .map(|inner| Host { inner })
            .ok_or_else(|| HostCallError::Failed("The host is shutting down".to_owned()))
    }

    fn slot(&self) -> Result<Arc<Slot>, HostCallError> {
        self.slot
            .upgrade()
            .ok_or_else(|| HostCallError::Failed("The plugin is being removed".to_owned()))
    }

    fn grant(&self, service: Service) -> Result<(), HostCallError> {
        let slot = self.slot()?;
        if self.manifest.permissions.services.contains(&service) {
            return Ok(());
        }
        slot.denials
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (plugin, service_name) = (slot.name.to_string(), service.as_str().to_owned());
        Err(if self.declared.contains(&service) {
            HostCallError::DeniedByTrust {
                plugin,
                service: service_name,
            }
        } else {
            HostCallError::NotGranted {
                plugin,
                service: service_name,
            }
        })
    }
}

#[async_trait]
impl HostCalls for PluginServices {
    fn log(&self, source: LogSource, level: LogLevel, message: &str) {
        let Ok(slot) = self.slot() else { return };
        let Some(line) = slot.plugin_log(source, level, message) else {
            return;
        };
        let plugin = slot.name.as_str();
        match level {
            LogLevel::Error => tracing::error!(target: "plugd::plugin", plugin, ?source, "{line}"),
            LogLevel::Warn => tracing::warn!(target: "plugd::plugin", plugin, ?source, "{line}"),
            LogLevel::Info => tracing::info!(target: "plugd::plugin", plugin, ?source, "{line}"),
            LogLevel::Debug => tracing::debug!(target: "plugd::plugin", plugin, ?source, "{line}"),
        }
    }

    fn progress(&self, progress: Progress) {
        let Ok(slot) = self.slot() else { return };
        tracing::debug!(
            target: "plugd::plugin",
            plugin = slot.name.as_str(),
            fraction = progress.fraction,
            message = progress.message.as_deref(),
            "progress"
        );
    }

    fn emit(&self, topic: &str, payload: serde_json::Value) -> Result<(), HostCallError> {
        let slot = self.slot()?;
        if let Err(e) = self.grant(Service::Events) {
            slot.push_log(
                LogSource::Runtime,
                LogLevel::Warn,
                &format!("Denied `emit` of `{topic}`: {e}"),
            );
            return Err(e);
        }
        match self.host()?.publish_from(Some(&slot), topic, payload) {
            Ok(_) => Ok(()),
            Err(e @ (HostError::Invalid(_) | HostError::Overloaded(_))) => {
                Err(HostCallError::Invalid(e.to_string()))
            }
            Err(e) => Err(HostCallError::Failed(e.to_string())),
        }
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
