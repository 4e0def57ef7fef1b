//! What the Server-Sent Events routes share: the shutdown signal that ends every open stream (a
//! graceful shutdown waits for open responses, and a stream never ends by itself), keep-alives,
//! and the query and body helpers of the events and tasks routes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::error::ApiError;

/// Ends the open event and task streams: trigger it when the server starts shutting down (before
/// waiting for open connections), so `axum::serve(...).with_graceful_shutdown(...)` can finish.
/// Clones share one signal; the default is never triggered unless [`Shutdown::trigger`] is called.
#[derive(Clone)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Shutdown {
    /// A signal not triggered yet.
    pub fn new() -> Shutdown {
        Shutdown(Arc::new(watch::channel(false).0))
    }

    /// Ends every open stream (and every stream opened later, at once).
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Whether [`Shutdown::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once triggered.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`: `wait_for` can only end by the value.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Shutdown")
            .field(&self.is_triggered())
            .finish()
    }
}

/// How often an idle stream sends a comment, so proxies and clients see it is alive.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(crate) fn keep_alive() -> KeepAlive {
    KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")
}

/// An SSE event named `name` whose data is `value` as one line of JSON.
pub(crate) fn sse_json(name: &'static str, value: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(value)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}

/// The `error` event a stream ends with when the host fails under it (the same body as an API
/// error: `{"error": {"code", "message"}}`).
pub(crate) fn sse_error(e: plugd_host::HostError) -> Event {
    let api = ApiError::from(e);
    sse_json(
        "error",
        &serde_json::json!({ "error": { "code": api.code, "message": api.message } }),
    )
}

pub(crate) fn query<T>(
    query: Result<axum::extract::Query<T>, QueryRejection>,
) -> Result<T, ApiError> {
    query
        .map(|q| q.0)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
}

/// The `Last-Event-ID` header of a client resuming a stream: the seq of the last `what` it got
/// (an event, a log line), or a JSON 400.
pub(crate) fn last_event_id(
    headers: &axum::http::HeaderMap,
    what: &str,
) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("The `Last-Event-ID` header must be {what}'s seq (a whole number)"),
            )
        })
}

/// A path with a numeric id or seq: anything else is a JSON 400, not axum's plain text.
pub(crate) fn path<T>(path: Result<axum::extract::Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|p| p.0).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{}; hint: ids and seqs are whole numbers", e.body_text()),
        )
    })
}

/// A JSON request body of shape `T` (unknown fields are refused, so a typo is not silently
/// dropped).
pub(crate) fn body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    max_body: usize,
    shape: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| crate::routes::body_error(rejection, max_body))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("The request body is empty; hint: send {shape}"),
        ));
    }
    // Syntax first (`bad_json`), then the shape (`bad_request`).
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("Request body is not valid JSON: {e}; hint: send {shape}"),
        )
    })?;
    T::deserialize(value).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("Request body does not fit: {e}; hint: send {shape}"),
        )
    })
}

/// Who made a change (cancel), for the record: the CLI says so in its user agent.
pub(crate) fn who(headers: &axum::http::HeaderMap) -> &'static str {
    let agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if agent.starts_with("plugd-cli") {
        "cli"
    } else {
        "api"
    }
}
