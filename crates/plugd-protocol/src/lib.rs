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
    Initialize, LogParams, Message, ProgressParams, RpcError, encode_error, encode_notification,
    encode_request, encode_result,
};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default largest frame the host accepts (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// The file descriptor the child finds its end of the socket pair on.
pub const CHILD_FD: i32 = 3;

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
}
