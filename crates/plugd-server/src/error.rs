//! The API error type: a stable JSON body `{"error": {"code", "message"}}` with the right status
//! (refused params add `violations`, each with its JSON pointer); internal errors are logged,
//! never leaked.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plugd_host::HostError;
use plugd_runtime::RuntimeError;
use serde::Serialize;

/// An API error: status, machine-readable code and human message.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `plugin_not_found` (or a plugin's own code for its client errors).
    pub code: std::borrow::Cow<'static, str>,
    /// Human message.
    pub message: String,
    /// Every violation, for `bad_params` (empty otherwise, and then not in the body).
    pub violations: Vec<ViolationDto>,
    /// A script's static-check findings and further items (boxed: most errors have none).
    pub extra: Option<Box<ErrorExtra>>,
}

/// What some errors add to their body.
#[derive(Debug, Default)]
pub struct ErrorExtra {
    /// A script's static-check findings, for `invalid_script` (not in the body when empty).
    pub problems: Vec<serde_json::Value>,
    /// Further items, one sentence each (a template's missing variables, ...).
    pub details: Vec<String>,
    /// Seconds to send as `Retry-After` (a rate limit).
    pub retry_after: Option<u64>,
}

/// One way a value breaks a schema, as the error body lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ViolationDto {
    /// JSON pointer into the value (`""` for the value itself).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            violations: Vec::new(),
            extra: None,
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    violations: &'a [ViolationDto],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    problems: &'a [serde_json::Value],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    details: &'a [String],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error()
            && self.status != StatusCode::BAD_GATEWAY
            && self.status != StatusCode::GATEWAY_TIMEOUT
            && self.status != StatusCode::SERVICE_UNAVAILABLE
        {
            tracing::error!(code = %self.code, "{}", self.message);
        }
        let body = Body {
            error: Inner {
                code: &self.code,
                message: &self.message,
                violations: &self.violations,
                problems: self.extra.as_ref().map_or(&[], |e| &e.problems),
                details: self.extra.as_ref().map_or(&[], |e| &e.details),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.extra.as_ref().and_then(|e| e.retry_after) {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        let status = match &e {
            HostError::PluginNotFound { .. } => StatusCode::NOT_FOUND,
            HostError::NotRunning { .. } => StatusCode::SERVICE_UNAVAILABLE,
            HostError::CannotLoad(_) => StatusCode::CONFLICT,
            HostError::Runtime(r) => runtime_status(r),
            HostError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HostError::InvalidParams { .. } => StatusCode::BAD_REQUEST,
            HostError::BadResult(_) => StatusCode::BAD_GATEWAY,
            HostError::Store(e) => match e.code() {
                "internal" => StatusCode::INTERNAL_SERVER_ERROR,
                "limit_exceeded" => StatusCode::BAD_GATEWAY,
                "conflict" => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            },
            HostError::Invalid(_) => StatusCode::BAD_REQUEST,
            HostError::Overloaded(_) | HostError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            HostError::NotFound(_) => StatusCode::NOT_FOUND,
            HostError::Conflict(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &e {
            // Never leak internal paths or OS details.
            HostError::Io(_) => "Internal error; see the server log".to_owned(),
            other => other.to_string(),
        };
        if let HostError::Io(detail) = &e {
            tracing::error!("{detail}");
        }
        let violations = match &e {
            HostError::InvalidParams { violations, .. } => violations
                .iter()
                .map(|v| ViolationDto {
                    pointer: v.pointer.clone(),
                    message: v.message.clone(),
                })
                .collect(),
            _ => Vec::new(),
        };
        let extra = match &e {
            HostError::RateLimited { retry_after, .. } => Some(Box::new(ErrorExtra {
                // Whole seconds, rounded up: never invite a retry that is refused again.
                retry_after: Some(
                    retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
                ),
                ..Default::default()
            })),
            _ => None,
        };
        ApiError {
            status,
            code: e.code().to_owned().into(),
            message,
            violations,
            extra,
        }
    }
}

fn runtime_status(e: &RuntimeError) -> StatusCode {
    match e {
        RuntimeError::UnknownAction { .. } => StatusCode::NOT_FOUND,
        RuntimeError::BadPayload { .. } => StatusCode::BAD_REQUEST,
        RuntimeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        RuntimeError::NotRunning { .. } => StatusCode::SERVICE_UNAVAILABLE,
        RuntimeError::LimitExceeded { limit, .. } if limit == "concurrency" => {
            StatusCode::TOO_MANY_REQUESTS
        }
        RuntimeError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        // A plugin may choose a client error; 401 and 403 mean auth and are not its to answer.
        RuntimeError::ClientError { status, .. } => match *status {
            401 | 403 => StatusCode::BAD_REQUEST,
            s => StatusCode::from_u16(s)
                .ok()
                .filter(|s| s.is_client_error())
                .unwrap_or(StatusCode::BAD_REQUEST),
        },
        _ => StatusCode::BAD_GATEWAY,
    }
}
