//! Protocol messages: decoding incoming frames and encoding outgoing ones without copies of
//! payloads (payloads stay raw JSON end to end).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A decoded incoming frame.
#[derive(Debug)]
pub enum Message {
    /// A request expecting a response with the same id.
    Request {
        /// Request id.
        id: u64,
        /// Method name.
        method: String,
        /// Raw params (`null` when absent).
        params: Box<RawValue>,
    },
    /// A notification (no id, no response).
    Notification {
        /// Method name.
        method: String,
        /// Raw params (`null` when absent).
        params: Box<RawValue>,
    },
    /// A response to one of our requests.
    Response {
        /// The id of our request.
        id: u64,
        /// The result or the error.
        result: Result<Box<RawValue>, RpcError>,
    },
}

/// A JSON-RPC error object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RpcError {
    /// Error code (see [`crate::codes`]).
    pub code: i64,
    /// Human message.
    pub message: String,
    /// Extra data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// Why an incoming frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON.
    #[error("Frame is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not a JSON-RPC message.
    #[error("Frame is not a JSON-RPC message: {0}")]
    Shape(&'static str),
}

#[derive(Deserialize)]
struct RawFrame {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Box<RawValue>>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<RpcError>,
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("`null` is valid JSON")
}

impl Message {
    /// Decodes one frame (without its trailing newline).
    pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
        // serde would accept a JSON array as a struct (fields by position): refuse it first.
        if frame.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return match serde_json::from_slice::<serde::de::IgnoredAny>(frame) {
                Err(e) => Err(DecodeError::Json(e)),
                Ok(_) => Err(DecodeError::Shape("a frame must be a JSON object")),
            };
        }
        let raw: RawFrame = serde_json::from_slice(frame)?;
        let id = match raw.id {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => Some(
                n.as_u64()
                    .ok_or(DecodeError::Shape("`id` must be a non-negative integer"))?,
            ),
            Some(_) => return Err(DecodeError::Shape("`id` must be a non-negative integer")),
        };
        match (raw.method, id) {
            (Some(method), Some(id)) => Ok(Message::Request {
                id,
                method,
                params: raw.params.unwrap_or_else(null),
            }),
            (Some(method), None) => Ok(Message::Notification {
                method,
                params: raw.params.unwrap_or_else(null),
            }),
            (None, Some(id)) => {
                let result = match (raw.result, raw.error) {
                    (_, Some(error)) => Err(error),
                    (Some(result), None) => Ok(result),
                    (None, None) => Ok(null()),
                };
                Ok(Message::Response { id, result })
            }
            (None, None) => Err(DecodeError::Shape("a frame needs a `method` or an `id`")),
        }
    }
}

/// Appends a request frame (with trailing newline) to `buf`.
pub fn encode_request<P: Serialize + ?Sized>(buf: &mut Vec<u8>, id: u64, method: &str, params: &P) {
    #[derive(Serialize)]
    struct Frame<'a, P: ?Sized> {
        jsonrpc: &'static str,
        id: u64,
        method: &'a str,
        params: &'a P,
    }
    write_frame(
        buf,
        &Frame {
            jsonrpc: "2.0",
            id,
            method,
            params,
        },
    );
}

/// Appends a notification frame to `buf`.
pub fn encode_notification<P: Serialize + ?Sized>(buf: &mut Vec<u8>, method: &str, params: &P) {
    #[derive(Serialize)]
    struct Frame<'a, P: ?Sized> {
        jsonrpc: &'static str,
        method: &'a str,
        params: &'a P,
    }
    write_frame(
        buf,
        &Frame {
            jsonrpc: "2.0",
            method,
            params,
        },
    );
}

/// Appends a success response frame to `buf`.
pub fn encode_result<R: Serialize + ?Sized>(buf: &mut Vec<u8>, id: u64, result: &R) {
    #[derive(Serialize)]
    struct Frame<'a, R: ?Sized> {
        jsonrpc: &'static str,
        id: u64,
        result: &'a R,
    }
    write_frame(
        buf,
        &Frame {
            jsonrpc: "2.0",
            id,
            result,
        },
    );
}

/// Appends an error response frame to `buf`.
pub fn encode_error(buf: &mut Vec<u8>, id: u64, error: &RpcError) {
    #[derive(Serialize)]
    struct Frame<'a> {
        jsonrpc: &'static str,
        id: u64,
        error: &'a RpcError,
    }
    write_frame(
        buf,
        &Frame {
            jsonrpc: "2.0",
            id,
            error,
        },
    );
}

fn write_frame<T: Serialize>(buf: &mut Vec<u8>, frame: &T) {
    // Serialising our own frame types into a Vec cannot fail: every map key is a string.
    serde_json::to_writer(&mut *buf, frame).expect("protocol frames always serialise");
    buf.push(b'\n');
}

/// `hello` params (child → host, first frame).
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the child speaks.
    pub protocol: u32,
    /// SDK name and version, e.g. `python/0.1.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk: Option<String>,
    /// Actions the child offers; overrides the manifest list when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<HelloAction>>,
    /// The child runs `on_start` hooks after the `initialize` answer and says `started` when
    /// they are done; the host sends it no call, event or task before then. Absent (`false`)
    /// for a child without hooks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_start: bool,
    /// The child accepts WebSockets handed over on its hand-off channel (`PLUGD_HANDOFF_FD`)
    /// and serves them itself; absent (`false`), the host relays them to its HTTP socket.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http_handoff: bool,
}

/// One action announced in `hello`.
#[derive(Debug, Serialize, Deserialize)]
pub struct HelloAction {
    /// Action name.
    pub name: String,
    /// Human description.
    #[serde(default)]
    pub description: String,
}

/// `initialize` result (host → child, answer to `hello`). Its `Debug` never shows the secret.
#[derive(Serialize)]
pub struct Initialize<'a> {
    /// Protocol version the host speaks.
    pub protocol: u32,
    /// Plugin name.
    pub plugin: &'a str,
    /// Plugin version.
    pub version: String,
    /// Current params.
    pub params: &'a serde_json::Value,
    /// Data directory.
    pub data_dir: &'a str,
    /// Granted services.
    pub services: Vec<&'a str>,
    /// The plugin's limits, so the SDK can size its workers and budgets.
    pub limits: InitLimits,
    /// For a plugin with an `[http]` table: the secret the host sends in the `X-Plugd-Secret`
    /// header of every request to its HTTP socket (fd 4), the same for every child of this
    /// start, so the child can refuse requests that did not come from the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_secret: Option<&'a str>,
}

impl std::fmt::Debug for Initialize<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initialize")
            .field("protocol", &self.protocol)
            .field("plugin", &self.plugin)
            .field("version", &self.version)
            .field("params", &self.params)
            .field("data_dir", &self.data_dir)
            .field("services", &self.services)
            .field("limits", &self.limits)
            .field("http_secret", &self.http_secret.map(|_| "…"))
            .finish()
    }
}

/// `initialize.limits`: the manifest's `[limits]` as the host enforces them.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitLimits {
    /// Default deadline of one call, in milliseconds.
    pub call_timeout_ms: u64,
    /// Calls the host sends at once.
    pub concurrency: u32,
    /// Memory limit in bytes (enforced by the sandbox when it is on).
    pub memory: u64,
    /// CPU time one call may use, in milliseconds.
    pub cpu_ms: u64,
}

/// `cancel` params (host → child): the host gave up on the `call` with this id.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CancelParams {
    /// The id of the `call` request.
    pub id: u64,
}

/// `call` params (host → child).
#[derive(Debug, Serialize)]
pub struct CallParams<'a> {
    /// Action name.
    pub action: &'a str,
    /// Raw payload.
    pub payload: &'a RawValue,
    /// How long the host waits, in milliseconds.
    pub deadline_ms: u64,
    /// The plugins whose calls led to this one, outermost first. Omitted when empty (a call from
    /// an application); the plugin sends it back in the `context` of its own `plugin.call`s.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<&'a str>,
}

/// `task.run` params (host → child): run one task to its end and answer its result.
#[derive(Debug, Serialize)]
pub struct TaskRunParams<'a> {
    /// The task's id (stable across retries); the child sends it back in `progress`.
    pub id: u64,
    /// The task name (`@after_last` for an after-last hook; then `key` names the key).
    pub task: &'a str,
    /// Raw payload.
    pub payload: &'a RawValue,
    /// The grouping key, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    /// 1 for the first run, then one more per retry.
    pub attempt: u32,
    /// How long the host waits, in milliseconds (`limits.task_timeout`).
    pub deadline_ms: u64,
}

/// `params.changed` params (host → child): the complete new params object, not a patch.
#[derive(Debug, Serialize)]
pub struct ParamsChangedParams<'a> {
    /// The new params.
    pub params: &'a serde_json::Value,
}

/// `event` params (host → child).
#[derive(Debug, Serialize)]
pub struct EventParams<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Raw payload.
    pub payload: &'a RawValue,
}

/// `log` params (child → host).
#[derive(Debug, Serialize, Deserialize)]
pub struct LogParams {
    /// Level name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// The message.
    pub message: String,
    /// Logger name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<String>,
    /// Id of the `call` being served when the record was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<u64>,
}

/// `progress` params (child → host).
#[derive(Debug, Serialize, Deserialize)]
pub struct ProgressParams {
    /// Id of the `call` this progress belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<u64>,
    /// Id of the task (`task.run` `id`) this progress belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<u64>,
    /// Fraction done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Human message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `started` params (child → host, a notification after its `on_start` hooks ran, sent only by
/// a child whose `hello` said `on_start`): `error` is absent when every hook succeeded, else it
/// says why the first failing one failed (`ValueError: ...`), and the start fails with it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StartedParams {
    /// Why `on_start` failed; `None` when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `emit` params (child → host).
#[derive(Debug, Serialize, Deserialize)]
pub struct EmitParams {
    /// Topic.
    pub topic: String,
    /// Payload.
    #[serde(default)]
    pub payload: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(frame: &str, expect: &str) {
        let got = match Message::decode(frame.as_bytes()) {
            Ok(m) => format!("{m:?}"),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expect, "decoding {frame}");
    }

    #[test]
    fn decodes_requests_notifications_and_responses() {
        check(
            r#"{"jsonrpc":"2.0","id":1,"method":"hello","params":{"protocol":1}}"#,
            r#"Request { id: 1, method: "hello", params: RawValue({"protocol":1}) }"#,
        );
        check(
            r#"{"jsonrpc":"2.0","method":"log","params":{"message":"hi"}}"#,
            r#"Notification { method: "log", params: RawValue({"message":"hi"}) }"#,
        );
        check(
            r#"{"jsonrpc":"2.0","id":7,"result":{"value":1}}"#,
            r#"Response { id: 7, result: Ok(RawValue({"value":1})) }"#,
        );
        check(
            r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32001,"message":"no"}}"#,
            r#"Response { id: 7, result: Err(RpcError { code: -32001, message: "no", data: None }) }"#,
        );
        check(
            r#"{"method":"ping"}"#,
            r#"Notification { method: "ping", params: RawValue(null) }"#,
        );
    }

    #[test]
    fn rejects_garbage() {
        check(
            "hello",
            "error: Frame is not valid JSON: expected value at line 1 column 1",
        );
        check(
            "{}",
            "error: Frame is not a JSON-RPC message: a frame needs a `method` or an `id`",
        );
        check(
            r#"{"id":"x","result":1}"#,
            "error: Frame is not a JSON-RPC message: `id` must be a non-negative integer",
        );
        check(
            "[1,2]",
            "error: Frame is not a JSON-RPC message: a frame must be a JSON object",
        );
        check(
            r#"[1,"call"]"#,
            "error: Frame is not a JSON-RPC message: a frame must be a JSON object",
        );
    }

    #[test]
    fn encodes_frames_with_raw_payloads() {
        let payload = RawValue::from_string(r#"{"name":"Ada"}"#.into()).unwrap();
        let mut buf = Vec::new();
        encode_request(
            &mut buf,
            3,
            "call",
            &CallParams {
                action: "greet",
                payload: &payload,
                deadline_ms: 5000,
                chain: Vec::new(),
            },
        );
        encode_request(
            &mut buf,
            6,
            "call",
            &CallParams {
                action: "greet",
                payload: &payload,
                deadline_ms: 10,
                chain: vec!["gallery", "thumbs"],
            },
        );
        encode_notification(&mut buf, "shutdown", &serde_json::json!({}));
        encode_result(&mut buf, 4, "pong");
        encode_error(
            &mut buf,
            5,
            &RpcError {
                code: -32601,
                message: "nope".into(),
                data: None,
            },
        );
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            concat!(
                r#"{"jsonrpc":"2.0","id":3,"method":"call","params":{"action":"greet","payload":{"name":"Ada"},"deadline_ms":5000}}"#,
                "\n",
                r#"{"jsonrpc":"2.0","id":6,"method":"call","params":{"action":"greet","payload":{"name":"Ada"},"deadline_ms":10,"chain":["gallery","thumbs"]}}"#,
                "\n",
                r#"{"jsonrpc":"2.0","method":"shutdown","params":{}}"#,
                "\n",
                r#"{"jsonrpc":"2.0","id":4,"result":"pong"}"#,
                "\n",
                r#"{"jsonrpc":"2.0","id":5,"error":{"code":-32601,"message":"nope"}}"#,
                "\n",
            )
        );
    }
}
