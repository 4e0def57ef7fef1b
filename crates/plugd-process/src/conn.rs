//! One protocol connection to one child: requests with ids and many in flight, the reader loop
//! that routes replies and the child's own requests and notifications.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use plugd_manifest::PluginName;
use plugd_protocol::{
    EmitParams, FrameReader, LogParams, Message, ProgressParams, RpcError, codes, encode_error,
    encode_notification, encode_request, encode_result,
};
use plugd_runtime::{HostCallError, HostCalls, LogLevel, LogSource, Progress};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, watch};

/// Prefix of close reasons meaning the child's end of the stream went away.
pub(crate) const STREAM_ENDED: &str = "its protocol stream ended";

type Reply = Result<Box<RawValue>, RpcError>;

/// Why a request got no reply.
#[derive(Debug)]
pub(crate) enum RequestError {
    /// No reply within the timeout.
    Timeout,
    /// The connection closed (with the reason).
    Closed(String),
}

/// The host's side of one child's protocol socket.
pub(crate) struct Connection {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    late_replies: Arc<AtomicU64>,
    closed: watch::Sender<Option<String>>,
}

impl Connection {
    pub(crate) fn new(writer: OwnedWriteHalf, late_replies: Arc<AtomicU64>) -> Arc<Self> {
        Arc::new(Connection {
            writer: tokio::sync::Mutex::new(writer),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            late_replies,
            closed: watch::channel(None).0,
        })
    }

    /// Sends a request and waits for its reply at most `timeout`. A reply arriving later is
    /// dropped by the reader loop and counted in `late_replies`.
    pub(crate) async fn request<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let mut frame = Vec::with_capacity(256);
        encode_request(&mut frame, id, method, params);
        if let Err(reason) = self.write(&frame).await {
            self.pending.lock().remove(&id);
            return Err(RequestError::Closed(reason));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(RequestError::Closed(self.close_reason())),
            Err(_) => {
                self.pending.lock().remove(&id);
                Err(RequestError::Timeout)
            }
        }
    }

    /// Sends a notification.
    pub(crate) async fn notify<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<(), String> {
        let mut frame = Vec::with_capacity(128);
        encode_notification(&mut frame, method, params);
        self.write(&frame).await
    }

    async fn write(&self, frame: &[u8]) -> Result<(), String> {
        if let Some(reason) = self.closed.borrow().clone() {
            return Err(reason);
        }
        let mut writer = self.writer.lock().await;
        match writer.write_all(frame).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let reason = format!("its protocol socket failed: {e}");
                self.close(reason.clone());
                Err(reason)
            }
        }
    }

    /// Marks the connection closed and fails every pending request.
    pub(crate) fn close(&self, reason: String) {
        self.closed.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
        // Dropping the senders wakes every waiting caller with `Closed`.
        self.pending.lock().clear();
    }

    fn close_reason(&self) -> String {
        self.closed
            .borrow()
            .clone()
            .unwrap_or_else(|| "the connection closed".to_owned())
    }

    /// Resolves when the connection is closed, with the reason.
    pub(crate) async fn closed(&self) -> String {
        let mut rx = self.closed.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return "the connection closed".to_owned();
            }
        }
    }

    fn deliver(&self, id: u64, reply: Reply) {
        let sender = self.pending.lock().remove(&id);
        match sender {
            Some(tx) => {
                // The caller may have given up between our lookup and now; count that as late.
                if tx.send(reply).is_err() {
                    self.late_replies.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.late_replies.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Serves the rest of the connection after the handshake: routes replies, forwards the child's
/// notifications and requests to the host. Returns when the socket closes or breaks the protocol;
/// the connection is closed with the reason.
pub(crate) async fn read_loop(
    conn: Arc<Connection>,
    mut reader: FrameReader<BufReader<OwnedReadHalf>>,
    host: Arc<dyn HostCalls>,
    plugin: PluginName,
) {
    let reason = loop {
        let frame = match reader.next_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break format!("{STREAM_ENDED}: it closed its protocol socket"),
            Err(plugd_protocol::FrameError::Io(e)) => break format!("{STREAM_ENDED}: {e}"),
            Err(e) => break format!("its protocol stream broke: {e}"),
        };
        let message = match Message::decode(frame) {
            Ok(m) => m,
            Err(e) => break format!("it sent a malformed protocol frame: {e}"),
        };
        match message {
            Message::Response { id, result } => conn.deliver(id, result),
            Message::Notification { method, params } => {
                notification(&*host, plugin.as_str(), &method, &params)
            }
            Message::Request { id, method, params } => {
                let conn = conn.clone();
                let host = host.clone();
                tokio::spawn(async move { answer(&conn, &*host, id, &method, &params).await });
            }
        }
    };
    conn.close(reason);
}

fn notification(host: &dyn HostCalls, plugin: &str, method: &str, params: &RawValue) {
    match method {
        "log" => match serde_json::from_str::<LogParams>(params.get()) {
            Ok(p) => {
                let level = LogLevel::parse(p.level.as_deref().unwrap_or("info"));
                // The plugin's own logger (named after it) needs no prefix.
                match p.logger {
                    Some(logger) if !logger.is_empty() && logger != "root" && logger != plugin => {
                        host.log(
                            LogSource::Plugin,
                            level,
                            &format!("{logger}: {}", p.message),
                        );
                    }
                    _ => host.log(LogSource::Plugin, level, &p.message),
                }
            }
            Err(e) => bad_notification(host, method, &e),
        },
        "progress" => match serde_json::from_str::<ProgressParams>(params.get()) {
            Ok(p) => host.progress(Progress {
                fraction: p.fraction,
                message: p.message,
            }),
            Err(e) => bad_notification(host, method, &e),
        },
        "emit" => match serde_json::from_str::<EmitParams>(params.get()) {
            Ok(p) => {
                // A notification has no reply: the refusal goes to the plugin's log. SDK calls
                // that need the answer send `emit` as a request (see `docs/protocol.md`).
                if let Err(e) = host.emit(&p.topic, p.payload) {
                    host.log(LogSource::Runtime, LogLevel::Warn, &format!("Refused `emit` of `{}`: {e}", p.topic));
                }
            }
            Err(e) => bad_notification(host, method, &e),
        },
        other => host.log(
            LogSource::Runtime,
            LogLevel::Warn,
            &format!("Ignored unknown notification `{other}` from the plugin"),
        ),
    }
}

fn bad_notification(host: &dyn HostCalls, method: &str, error: &serde_json::Error) {
    host.log(
        LogSource::Runtime,
        LogLevel::Warn,
        &format!("Ignored malformed `{method}` notification from the plugin: {error}"),
    );
}

async fn answer(conn: &Connection, host: &dyn HostCalls, id: u64, method: &str, params: &RawValue) {
    let mut frame = Vec::with_capacity(128);
    let params: serde_json::Value = match serde_json::from_str(params.get()) {
        Ok(p) => p,
        Err(e) => {
            let error = RpcError {
                code: codes::INVALID_PARAMS,
                message: e.to_string(),
                data: None,
            };
            encode_error(&mut frame, id, &error);
            let _ = conn.write(&frame).await;
            return;
        }
    };
    match host.request(method, params).await {
        Ok(result) => encode_result(&mut frame, id, &result),
        Err(e) => {
            let code = match &e {
                HostCallError::NotGranted { .. } => codes::NOT_GRANTED,
                HostCallError::Unknown(_) => codes::METHOD_NOT_FOUND,
                HostCallError::Invalid(_) => codes::INVALID_PARAMS,
                _ => codes::ACTION_FAILED,
            };
            encode_error(
                &mut frame,
                id,
                &RpcError {
                    code,
                    message: e.to_string(),
                    data: None,
                },
            );
        }
    }
    // A write failure closes the connection; the supervisor handles it.
    let _ = conn.write(&frame).await;
}
