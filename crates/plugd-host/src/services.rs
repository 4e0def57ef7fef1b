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
    declared_apps: Vec<String>,
    declared_env: Vec<String>,
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
            declared_apps: declared.permissions.app_services.clone(),
            declared_env: declared.permissions.env.clone(),
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
        slot.deny("service");
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
        if progress.task.is_some()
            && let Ok(host) = self.host()
        {
            host.task_progress(&slot, &progress);
        }
        tracing::debug!(
            target: "plugd::plugin",
            plugin = slot.name.as_str(),
            fraction = progress.fraction,
            message = progress.message.as_deref(),
            "progress"
        );
    }

    async fn emit(&self, topic: &str, payload: serde_json::Value) -> Result<(), HostCallError> {
        let slot = self.slot()?;
        if let Err(e) = self.grant(Service::Events) {
            slot.push_log(
                LogSource::Runtime,
                LogLevel::Warn,
                &format!("Denied `emit` of `{topic}`: {e}"),
            );
            return Err(e);
        }
        match self.host()?.publish_from(Some(&slot), topic, payload).await {
            Ok(_) => Ok(()),
            Err(e @ HostError::Invalid(_)) => Err(HostCallError::Invalid(e.to_string())),
            Err(e) => Err(host_error(e)),
        }
    }

    async fn request(
        &self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, HostCallError> {
        let slot = self.slot()?;
        // A plugin that was uninstalled or stopped keeps no service: a call that outlives it
        // (a wasm call finishing after the stop) cannot write into a store that was just cleared.
        if matches!(
            slot.inner.lock().state(),
            crate::PluginState::Uninstalled | crate::PluginState::Stopped
        ) {
            return Err(HostCallError::Service {
                code: "not_running".into(),
                message: format!("Plugin `{}` is no longer running", slot.name),
            });
        }
        match method.split('.').next() {
            Some("kv") => {
                self.grant(Service::Kv)?;
                crate::kv::request(&self.host()?, &slot, &self.manifest, method, params).await
            }
            // Params need no grant: they are the plugin's own settings.
            Some("params") if method == "params.get" => {
                let view = self
                    .host()?
                    .params(slot.name.as_str())
                    .await
                    .map_err(host_error)?;
                Ok(serde_json::json!({ "params": view.value }))
            }
            // The dependency declaration is the grant (see `crate::calls`).
            Some("plugin") if method == "plugin.call" => {
                crate::calls::plugin_call(&self.host()?, &slot, &self.manifest, params).await
            }
            Some("service") if method == "service.call" => self.app_call(&slot, params).await,
            Some("env") if method == "env.get" => self.env(&slot, &params),
            Some("task") if method == "task.submit" => {
                self.grant(Service::Tasks)?;
                self.submit(&slot, params).await
            }
            Some("http") => {
                self.grant(Service::Http)?;
                Err(HostCallError::Unknown(method.to_owned()))
            }
            _ => Err(HostCallError::Unknown(method.to_owned())),
        }
    }
}

impl PluginServices {
    /// `task.submit {task, payload, key?, priority?, dedupe?, max_attempts?}`: a task of the
    /// plugin itself; answers `{id, deduped}` once it is durable.
    async fn submit(
        &self,
        slot: &Arc<Slot>,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, HostCallError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Submit {
            task: String,
            #[serde(default)]
            payload: serde_json::Value,
            key: Option<String>,
            #[serde(default)]
            priority: bool,
            #[serde(default)]
            dedupe: bool,
            max_attempts: Option<u32>,
        }
        let submit: Submit = serde_json::from_value(params).map_err(|e| {
            HostCallError::Invalid(format!(
                "`task.submit` needs `task` and optionally `payload`, `key`, `priority`, `dedupe`, `max_attempts`: {e}"
            ))
        })?;
        let view = self
            .host()?
            .submit(crate::TaskSubmit {
                plugin: slot.name.to_string(),
                task: submit.task,
                payload: submit.payload,
                key: submit.key,
                priority: submit.priority,
                dedupe: submit.dedupe,
                max_attempts: submit.max_attempts,
            })
            .await
            .map_err(host_error)?;
        Ok(serde_json::json!({ "id": view.id, "deduped": view.deduped }))
    }

    /// `service.call {service, method, params}`: an application service, trusted plugins only.
    async fn app_call(
        &self,
        slot: &Arc<Slot>,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, HostCallError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Call {
            service: String,
            method: String,
            #[serde(default)]
            params: serde_json::Value,
        }
        let call: Call = serde_json::from_value(params).map_err(|e| {
            HostCallError::Invalid(format!(
                "`service.call` needs `service`, `method` and `params`: {e}"
            ))
        })?;
        let name = call.service.strip_prefix("app:").unwrap_or(&call.service);
        if !self
            .manifest
            .permissions
            .app_services
            .iter()
            .any(|s| s == name)
        {
            slot.deny("app_service");
            let declared = self.declared_apps.iter().any(|s| s == name);
            let error = if declared {
                HostCallError::DeniedByTrust {
                    plugin: slot.name.to_string(),
                    service: format!("app:{name}"),
                }
            } else {
                HostCallError::NotGranted {
                    plugin: slot.name.to_string(),
                    service: format!("app:{name}"),
                }
            };
            slot.push_log(
                LogSource::Runtime,
                LogLevel::Warn,
                &format!("Denied `service.call`: {error}"),
            );
            return Err(error);
        }
        let host = self.host()?;
        let Some(service) = host.inner.app_services.get(name).cloned() else {
            return Err(HostCallError::Service {
                code: "unknown_service".into(),
                message: format!(
                    "This host offers no application service `{name}`; hint: the application must register it (`HostBuilder::service`) or declare it in `plugd.toml` `[services.{name}]`"
                ),
            });
        };
        service
            .call(&slot.name, &call.method, call.params)
            .await
            .map_err(|e| HostCallError::Service {
                code: e.code,
                message: e.message,
            })
    }

    /// `env.get {name}`: a host environment variable named in `permissions.env` (trusted only;
    /// the trust policy empties the list of an untrusted plugin).
    fn env(
        &self,
        slot: &Arc<Slot>,
        params: &serde_json::Value,
    ) -> Result<serde_json::Value, HostCallError> {
        let Some(name) = params.get("name").and_then(|n| n.as_str()) else {
            return Err(HostCallError::Invalid(
                "`env.get` needs a string `name`".into(),
            ));
        };
        if !self.manifest.permissions.env.iter().any(|e| e == name) {
            slot.deny("env");
            let message = if self.declared_env.iter().any(|e| e == name) {
                format!(
                    "Environment variable `{name}` is not available to plugin `{}` because it is untrusted (unsigned); hint: sign the package",
                    slot.name
                )
            } else {
                format!(
                    "Environment variable `{name}` is not in `permissions.env` of plugin `{}`; hint: add it there",
                    slot.name
                )
            };
            slot.push_log(
                LogSource::Runtime,
                LogLevel::Warn,
                &format!("Denied `env.get`: {message}"),
            );
            return Err(HostCallError::Service {
                code: "not_granted".into(),
                message,
            });
        }
        Ok(serde_json::json!({ "value": std::env::var(name).ok() }))
    }
}

/// A host error as the plugin sees it: its code and message.
pub(crate) fn host_error(e: HostError) -> HostCallError {
    HostCallError::Service {
        code: e.code().to_owned(),
        message: e.to_string(),
    }
}
