//! plugd process protocol v1: message types and newline-delimited JSON-RPC framing.
//!
//! The wire format is specified in `docs/protocol.md`; this crate is its only Rust
//! implementation. It is shared by the process runtime (host side) and tested against the SDKs.
#![warn(missing_docs)]

mod framing;
mod message;

pub use framing::{FrameError, FrameReader};
pub use message::{
    CallParams, CancelParams, DecodeError, EmitParams, EventParams, Hello, HelloAction, InitLimits,
    Initialize, LogParams, Message, ParamsChangedParams, ProgressParams, RpcError, StartedParams,
    TaskRunParams, encode_error, encode_notification, encode_request, encode_result,
};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default largest frame the host accepts (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// The file descriptor the child finds its end of the socket pair on.
pub const CHILD_FD: i32 = 3;

/// The file descriptor a plugin with an `[http]` table finds its listening Unix socket on (also
/// named by the environment variable `PLUGD_HTTP_FD`): it accepts the host's proxied HTTP
/// connections there.
pub const HTTP_FD: i32 = 4;

/// The file descriptor a plugin with an `[http]` table finds its hand-off channel on (also
/// named by the environment variable `PLUGD_HANDOFF_FD`): one end of a `SOCK_SEQPACKET`
/// socket pair whose other end only the host holds (it has no path: nothing else can reach it).
/// For each WebSocket it hands over, the host sends one record: the request head (rewritten as
/// the proxy would forward it), with the client's TCP socket attached (`SCM_RIGHTS`). A plugin
/// whose `hello` says `"http_handoff": true` serves those connections itself from then on; see
/// `docs/protocol.md` ("WebSocket hand-off").
pub const HANDOFF_FD: i32 = 5;

/// The header that carries the secret `initialize` gave as `http_secret` on every request the
/// host sends to the plugin's HTTP side; the host drops one a client sent. A plugin checks it
/// to tell the host's requests from anything else that reaches its HTTP socket's path.
pub const HTTP_SECRET_HEADER: &str = "x-plugd-secret";

/// JSON-RPC error codes used by plugd (see `docs/protocol.md`).
pub mod codes {
    /// Malformed JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid JSON-RPC object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid params.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The plugin has no such action.
    pub const UNKNOWN_ACTION: i64 = -32001;
    /// The payload was rejected by the action's input model.
    pub const BAD_PAYLOAD: i64 = -32002;
    /// The action raised.
    pub const ACTION_FAILED: i64 = -32003;
    /// The action answered a client error it chose: `data.code` (string) and `data.status`
    /// (400..=499) say which.
    pub const CLIENT_ERROR: i64 = -32004;
    /// The protocol version was refused.
    pub const PROTOCOL_REFUSED: i64 = -32010;
    /// The service is not granted or not available.
    pub const NOT_GRANTED: i64 = -32020;
    /// The plugin has too many requests to the host in flight; it may retry after an answer.
    pub const TOO_MANY_REQUESTS: i64 = -32021;
    /// A host service refused or failed a request for a reason the plugin can act on;
    /// `data.code` names it (`not_found`, `conflict`, `limit_exceeded`, `cycle`, ...).
    pub const SERVICE_ERROR: i64 = -32022;
}

/// The machine-readable `data.code` of the host's error answers to the plugin's requests (every
/// error frame the host sends for a request carries one; the SDKs expose it as the error's code).
pub mod host_codes {
    /// The service is not granted (manifest or trust level).
    pub const NOT_GRANTED: &str = "not_granted";
    /// The host has no such method.
    pub const UNKNOWN_METHOD: &str = "unknown_method";
    /// The request's params are malformed.
    pub const INVALID_PARAMS: &str = "invalid_params";
    /// The service failed without a more specific code.
    pub const FAILED: &str = "failed";
    /// The host did not answer within its time for this request.
    pub const TIMEOUT: &str = "timeout";
    /// Too many requests of the child in flight.
    pub const TOO_MANY_REQUESTS: &str = "too_many_requests";
}
