//! App services of `plugd.toml` (`[services.NAME] url = ...`): each call of a plugin is POSTed
//! to the application's endpoint as `{"plugin", "method", "params"}`, and the JSON answer is the
//! result. An application that runs `plugd serve` beside itself offers its database (or
//! anything) to plugins this way; an application that embeds `plugd-host` implements
//! `AppService` directly instead.
//!
//! The call runs on a blocking thread with `ureq` (plain HTTP, as the CLI): the endpoint is
//! local, and one blocking thread per call in flight is bounded by tokio's blocking pool.

use std::time::Duration;

use async_trait::async_trait;
use plugd_host::{AppService, AppServiceError};
use plugd_manifest::PluginName;
use serde_json::{Value, json};

use crate::config::ServiceConfig;

/// The largest answer read from a service (as large as a plugin frame may be).
const MAX_ANSWER: u64 = 16 << 20;

/// A service that forwards to an HTTP endpoint (cheap to clone: the agent shares its pool).
#[derive(Clone)]
pub(crate) struct HttpService {
    name: String,
    url: String,
    timeout: Duration,
    agent: ureq::Agent,
}

impl HttpService {
    pub(crate) fn new(config: &ServiceConfig) -> HttpService {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            // Error answers carry `error.code` and `error.message`: read them.
            .http_status_as_error(false)
            .user_agent("plugd-service")
            .build();
        HttpService {
            name: config.name.clone(),
            url: config.url.clone(),
            timeout: config.timeout,
            agent: ureq::Agent::new_with_config(agent),
        }
    }

    /// One blocking round trip.
    fn forward(&self, body: &[u8]) -> Result<Value, AppServiceError> {
        let name = &self.name;
        let mut response = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .send(body)
            .map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| self.transport_error(e))?;
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if (200..300).contains(&status) {
            return parsed.ok_or_else(|| {
                AppServiceError::new(
                    "bad_answer",
                    format!("Service `{name}` answered HTTP {status} with a body that is not JSON"),
                )
            });
        }
        let field = |key: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.pointer(&format!("/error/{key}")))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let code = field("code").unwrap_or_else(|| {
            if matches!(status, 502..=504) {
                "unavailable".to_owned()
            } else {
                "failed".to_owned()
            }
        });
        let message = field("message").unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&bytes);
            let text: String = text.trim().chars().take(200).collect();
            if text.is_empty() {
                format!("Service `{name}` answered HTTP {status}")
            } else {
                format!("Service `{name}` answered HTTP {status}: {text}")
            }
        });
        Err(AppServiceError::new(code, message))
    }

    fn transport_error(&self, e: ureq::Error) -> AppServiceError {
        let name = &self.name;
        match e {
            ureq::Error::Timeout(_) => AppServiceError::new(
                "timeout",
                format!(
                    "Service `{name}` did not answer within {} ms; hint: raise `timeout` in `[services.{name}]` of `plugd.toml`",
                    self.timeout.as_millis()
                ),
            ),
            ureq::Error::BodyExceedsLimit(_) => AppServiceError::new(
                "bad_answer",
                format!(
                    "Service `{name}` answered more than {} MiB",
                    MAX_ANSWER >> 20
                ),
            ),
            e => AppServiceError::new(
                "unavailable",
                format!(
                    "Service `{name}` cannot be reached at `{}`: {e}; hint: is the application running?",
                    self.url
                ),
            ),
        }
    }
}

#[async_trait]
impl AppService for HttpService {
    async fn call(
        &self,
        caller: &PluginName,
        method: &str,
        params: Value,
    ) -> Result<Value, AppServiceError> {
        let body = json!({ "plugin": caller.as_str(), "method": method, "params": params });
        let body = serde_json::to_vec(&body).expect("a JSON value serialises");
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.forward(&body))
            .await
            .map_err(|e| {
                AppServiceError::new("failed", format!("Service `{}` failed: {e}", self.name))
            })?
    }
}
