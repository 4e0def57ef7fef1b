//! One protocol connection to one child: a writer task fed by a bounded queue of whole frames,
//! requests with ids and many in flight (cleaned up by drop guards), and the reader loop that
//! routes replies and serves the child's own requests and notifications, with a bound on how many
//! of its requests are in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use plugd_manifest::PluginName;
use plugd_protocol::{
    CancelParams, EmitParams, FrameReader, LogParams, Message, ProgressParams, RpcError,
    StartedParams, codes, encode_error, encode_notification, encode_request, encode_result,
    host_codes,
};
use plugd_runtime::{HostCallError, HostCalls, LogLevel, LogSource, MAX_LOG_LINE, Progress};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Prefix of close reasons meaning the child's end of the stream went away.
pub(crate) const STREAM_ENDED: &str = "its protocol stream ended";

/// Frames queued for the writer task. When the child stops reading, the queue fills and every
/// sender waits at most its own deadline (a call times out, a ping fails the child).
pub(crate) const WRITE_QUEUE: usize = 64;

/// Requests from the child to the host served at once. Beyond it a request is answered at once
/// with [`codes::TOO_MANY_REQUESTS`] and its params are dropped, so a flooding child costs the
/// host at most this many requests' memory (and no task).
pub(crate) const MAX_HOST_REQUESTS: usize = 64;

/// Ids of abandoned calls remembered for `cancel` frames; beyond it cancels are skipped (the SDK
/// also cancels a handler at its deadline on its own).
const MAX_CANCELS: usize = 4096;

/// How long the host serves one request of the child (a service that hangs answers an error).
const HOST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a `plugin.call` may take beyond the `deadline_ms` of its `context`: the host ends the
/// callee's call at that deadline itself, and this margin only keeps its answer from being cut.
const PLUGIN_CALL_MARGIN: Duration = Duration::from_secs(5);

/// How long a `plugin.call` without a `context` may take: the host gives the callee its default
/// deadline, which this runtime does not know; this bound is the server's default request
/// timeout, so a hung chain still ends.
const PLUGIN_CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// How long an answer to the child's request may wait for room in the write queue.
const REPLY_SEND_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = Result<Box<RawValue>, RpcError>;

/// What the child's `started` said: `Ok` when its `on_start` hooks succeeded, else why the start
/// fails (a sentence naming `on_start`, with the child's error capped and escaped).
pub(crate) type Started = Result<(), String>;

/// Why a connection closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Closed {
    /// A user-facing sentence.
    pub reason: String,
    /// The limit whose breach closed it (`cpu`), if that was the cause.
    pub limit: Option<&'static str>,
}

impl Closed {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Closed {
            reason: reason.into(),
            limit: None,
        }
    }
}

/// Why a request got no reply.
#[derive(Debug)]
pub(crate) enum RequestError {
    /// No reply (or no room in the write queue) within the timeout.
    Timeout,
    /// The connection closed.
    Closed(Closed),
}

/// What the connection shares with its writer task.
struct Outbox {
    /// Ids of calls whose callers gave up; the writer sends `cancel` for each.
    cancels: Mutex<Vec<u64>>,
    wake: Notify,
    /// The socket's write half. Locked only for one non-blocking `poll_write`, never across an
    /// await: the writer task writes through it, and a caller may write its whole frame
    /// directly when the socket is idle (see [`Outbox::write_now`]).
    sink: Mutex<Sink>,
}

struct Sink {
    writer: Box<dyn AsyncWrite + Unpin + Send>,
    /// The rest of a frame a caller could only partly write: it goes out before anything else.
    front: Vec<u8>,
    /// The writer task holds bytes it has started, or is about to start, writing.
    busy: bool,
}

/// What became of a frame a caller tried to write itself.
enum WriteNow {
    /// On the wire, or its rest handed to the writer task ahead of everything else.
    Sent,
    /// Nothing was written: queue it as usual.
    Queue(Vec<u8>),
    /// The socket failed.
    Failed(std::io::Error),
}

impl Outbox {
    /// Writes a whole frame now, without a hop to the writer task, when nothing else is on its
    /// way to the socket (the writer idle, the queue empty, no rest pending). Never leaves half
    /// a frame: what a non-blocking write could not take becomes the writer's `front`.
    fn write_now(&self, frame: Vec<u8>, queue_empty: bool) -> WriteNow {
        if !queue_empty {
            return WriteNow::Queue(frame);
        }
        let Some(mut sink) = self.sink.try_lock() else {
            return WriteNow::Queue(frame);
        };
        if sink.busy || !sink.front.is_empty() {
            return WriteNow::Queue(frame);
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut written = 0;
        while written < frame.len() {
            match std::pin::Pin::new(&mut sink.writer).poll_write(&mut cx, &frame[written..]) {
                std::task::Poll::Ready(Ok(0)) => {
                    return WriteNow::Failed(std::io::ErrorKind::WriteZero.into());
                }
                std::task::Poll::Ready(Ok(n)) => written += n,
                std::task::Poll::Ready(Err(e)) => return WriteNow::Failed(e),
                std::task::Poll::Pending => break,
            }
        }
        if written == frame.len() {
            return WriteNow::Sent;
        }
        if written == 0 {
            return WriteNow::Queue(frame);
        }
        sink.front.extend_from_slice(&frame[written..]);
        drop(sink);
        self.wake.notify_one();
        WriteNow::Sent
    }
}

/// The host's side of one child's protocol socket.
pub(crate) struct Connection {
    out: mpsc::Sender<Vec<u8>>,
    outbox: Arc<Outbox>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    late_replies: Arc<AtomicU64>,
    closed: watch::Sender<Option<Closed>>,
    host_requests: Arc<Semaphore>,
    /// Where the child's `started` goes while the start waits for it (see
    /// [`Connection::expect_started`]); dropped when the connection closes.
    started: Mutex<Option<oneshot::Sender<Started>>>,
}

impl Connection {
    /// A connection writing to `writer` through its own writer task.
    pub(crate) fn new<W>(writer: W, late_replies: Arc<AtomicU64>) -> Arc<Self>
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out, rx) = mpsc::channel(WRITE_QUEUE);
        let outbox = Arc::new(Outbox {
            cancels: Mutex::new(Vec::new()),
            wake: Notify::new(),
            sink: Mutex::new(Sink {
                writer: Box::new(writer),
                front: Vec::new(),
                busy: false,
            }),
        });
        let conn = Arc::new(Connection {
            out,
            outbox: outbox.clone(),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            late_replies,
            closed: watch::channel(None).0,
            host_requests: Arc::new(Semaphore::new(MAX_HOST_REQUESTS)),
            started: Mutex::new(None),
        });
        let closed = conn.closed.subscribe();
        tokio::spawn(write_loop(rx, outbox, closed, Arc::downgrade(&conn)));
        conn
    }

    /// Sends a request and waits for its reply at most `timeout` (queueing included). A reply
    /// arriving later is dropped by the reader loop and counted in `late_replies`.
    pub(crate) async fn request<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        self.send_request(method, params, timeout, false).await
    }

    /// Sends a `call`: like [`Connection::request`], and when the caller gives up (timeout, or
    /// the future is dropped) the child is sent `cancel {id}`.
    pub(crate) async fn call<P: Serialize + ?Sized>(
        &self,
        params: &P,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        self.send_request("call", params, timeout, true).await
    }

    /// Sends a `task.run` and waits for its reply at most `timeout`. When `cancel` fires first,
    /// the child is sent `cancel {id}` and gets `grace` more to answer (a handler that stopped
    /// answers `cancelled`); no answer by then is [`RequestError::Timeout`]. A timeout sends
    /// `cancel` as well.
    pub(crate) async fn task_run<P: Serialize + ?Sized>(
        &self,
        params: &P,
        timeout: Duration,
        cancel: &tokio_util::sync::CancellationToken,
        grace: Duration,
    ) -> Result<Reply, RequestError> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::with_capacity(256);
        encode_request(&mut frame, id, "task.run", params);
        let (tx, mut rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let mut guard = PendingGuard {
            conn: self,
            id,
            cancel: false,
        };
        if let Some(closed) = self.closed.borrow().clone() {
            return Err(RequestError::Closed(closed));
        }
        self.put_on_the_wire(frame, deadline).await?;
        guard.cancel = true;
        tokio::select! {
            reply = tokio::time::timeout_at(deadline, &mut rx) => return match reply {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(RequestError::Closed(self.close_info())),
                Err(_) => Err(RequestError::Timeout),
            },
            _ = cancel.cancelled() => {}
        }
        // Cancelled: tell the child now, keep waiting for its answer within the grace.
        guard.cancel = false;
        {
            let mut cancels = self.outbox.cancels.lock();
            if cancels.len() < MAX_CANCELS {
                cancels.push(id);
            }
        }
        self.outbox.wake.notify_one();
        match tokio::time::timeout(grace, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(RequestError::Closed(self.close_info())),
            Err(_) => Err(RequestError::Timeout),
        }
    }

    async fn send_request<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
        timeout: Duration,
        cancel: bool,
    ) -> Result<Reply, RequestError> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::with_capacity(256);
        encode_request(&mut frame, id, method, params);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        // From here on the guard removes the id however this future ends (reply, timeout,
        // close, or the caller dropping it).
        let mut guard = PendingGuard {
            conn: self,
            id,
            cancel: false,
        };
        // `close` marks the connection before it clears the map: an id inserted after the clear
        // sees the mark here.
        if let Some(closed) = self.closed.borrow().clone() {
            return Err(RequestError::Closed(closed));
        }
        self.put_on_the_wire(frame, deadline).await?;
        guard.cancel = cancel;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => {
                // The reader took the id out of `pending` to answer it: nothing to undo, so the
                // guard (a reference, an id and a flag) is not run, sparing a lock per call.
                std::mem::forget(guard);
                Ok(reply)
            }
            Ok(Err(_)) => Err(RequestError::Closed(self.close_info())),
            Err(_) => Err(RequestError::Timeout),
        }
    }

    /// Puts one whole frame on its way: written now when nothing else is on its way to the
    /// socket (no hop to the writer task), else queued — without a timer when there is room,
    /// waiting until `deadline` for room otherwise.
    async fn put_on_the_wire(&self, frame: Vec<u8>, deadline: Instant) -> Result<(), RequestError> {
        let queue_empty = self.out.capacity() == self.out.max_capacity();
        let frame = match self.outbox.write_now(frame, queue_empty) {
            WriteNow::Sent => return Ok(()),
            WriteNow::Queue(frame) => frame,
            WriteNow::Failed(e) => {
                self.close(Closed::new(format!("its protocol socket failed: {e}")));
                return Err(RequestError::Closed(self.close_info()));
            }
        };
        match self.out.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(RequestError::Closed(self.close_info()))
            }
            Err(mpsc::error::TrySendError::Full(frame)) => {
                match tokio::time::timeout_at(deadline, self.out.send(frame)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(RequestError::Closed(self.close_info())),
                    Err(_) => Err(RequestError::Timeout),
                }
            }
        }
    }

    /// Queues one whole frame, waiting at most `timeout` for room in the write queue.
    pub(crate) async fn send_frame(
        &self,
        frame: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), RequestError> {
        if let Some(closed) = self.closed.borrow().clone() {
            return Err(RequestError::Closed(closed));
        }
        match tokio::time::timeout(timeout, self.out.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(RequestError::Closed(self.close_info())),
            Err(_) => Err(RequestError::Timeout),
        }
    }

    /// Queues a notification if there is room now; `false` when the queue is full or closed.
    pub(crate) fn try_notify<P: Serialize + ?Sized>(&self, method: &str, params: &P) -> bool {
        let mut frame = Vec::with_capacity(128);
        encode_notification(&mut frame, method, params);
        self.out.try_send(frame).is_ok()
    }

    /// Arms the wait for the child's `started` notification (a child whose `hello` said
    /// `on_start`); call it before the read loop runs. The receiver gets what `started` said, or
    /// an error when the connection closes first.
    pub(crate) fn expect_started(&self) -> oneshot::Receiver<Started> {
        let (tx, rx) = oneshot::channel();
        *self.started.lock() = Some(tx);
        if self.closed.borrow().is_some() {
            self.started.lock().take();
        }
        rx
    }

    /// The child's `started`: hands it to the waiting start, or logs it when nobody waits (it
    /// did not announce `on_start`, or said `started` twice).
    fn on_started(&self, host: &dyn HostCalls, params: &RawValue) {
        let Some(tx) = self.started.lock().take() else {
            host.log(
                LogSource::Runtime,
                LogLevel::Warn,
                "Ignored `started` from the plugin: nothing waits for it (it did not say `on_start` in `hello`, or said `started` twice)",
            );
            return;
        };
        let outcome = match serde_json::from_str::<StartedParams>(params.get()) {
            Ok(StartedParams { error: None }) => Ok(()),
            Ok(StartedParams { error: Some(error) }) if error.trim().is_empty() => {
                Err("`on_start` failed (it gave no reason)".to_owned())
            }
            Ok(StartedParams { error: Some(error) }) => {
                Err(format!("`on_start` failed: {}", plugin_text(&error)))
            }
            Err(e) => Err(format!(
                "its `started` notification is malformed: {}",
                plugin_text(&e.to_string())
            )),
        };
        let _ = tx.send(outcome);
    }

    /// Marks the connection closed and fails every pending request. The first reason wins.
    pub(crate) fn close(&self, closed: Closed) {
        self.closed.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(closed);
                true
            } else {
                false
            }
        });
        // Dropping the senders wakes every waiting caller with `Closed`.
        self.pending.lock().clear();
        self.started.lock().take();
    }

    fn close_info(&self) -> Closed {
        self.closed
            .borrow()
            .clone()
            .unwrap_or_else(|| Closed::new("the connection closed"))
    }

    /// Resolves when the connection is closed, with the reason.
    pub(crate) async fn closed(&self) -> Closed {
        let mut rx = self.closed.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(closed) => closed.clone().unwrap_or_else(|| Closed::new("")),
            Err(_) => Closed::new("the connection closed"),
        }
    }

    /// Requests of ours still waiting for a reply.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.lock().len()
    }

    /// Requests of the child being served by the host now.
    pub(crate) fn host_requests_in_flight(&self) -> usize {
        MAX_HOST_REQUESTS - self.host_requests.available_permits()
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

    /// Queues an answer to the child's request `id`, waiting at most `wait` for room.
    async fn reply(&self, frame: Vec<u8>, wait: Duration) {
        // A child that does not read its socket for this long is failed by its health ping.
        let _ = tokio::time::timeout(wait, self.out.send(frame)).await;
    }
}

/// Removes a request's id from the pending map when the request ends in any way; sends `cancel`
/// for a call whose frame went out and that got no reply.
struct PendingGuard<'a> {
    conn: &'a Connection,
    id: u64,
    cancel: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let abandoned = self.conn.pending.lock().remove(&self.id).is_some();
        if abandoned && self.cancel {
            let mut cancels = self.conn.outbox.cancels.lock();
            if cancels.len() < MAX_CANCELS {
                cancels.push(self.id);
                drop(cancels);
                self.conn.outbox.wake.notify_one();
            }
        }
    }
}

/// How many bytes of queued frames one write gathers.
const BATCH_BYTES: usize = 64 << 10;

/// The only writer of the socket: takes whole frames from the queue (and `cancel`s from the
/// outbox) and writes them one after another. No caller ever holds the socket, so a caller that
/// gives up can never leave half a frame behind. Ends when the connection closes or breaks.
async fn write_loop(
    mut rx: mpsc::Receiver<Vec<u8>>,
    outbox: Arc<Outbox>,
    mut closed: watch::Receiver<Option<Closed>>,
    conn: Weak<Connection>,
) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // The rest of a frame a caller started goes first; from taking it until it is written
        // the writer is busy, so no caller writes in between.
        {
            let mut sink = outbox.sink.lock();
            if !sink.front.is_empty() {
                std::mem::swap(&mut buf, &mut sink.front);
                sink.busy = true;
            }
        }
        for id in std::mem::take(&mut *outbox.cancels.lock()) {
            encode_notification(&mut buf, "cancel", &CancelParams { id });
        }
        // Frames already waiting go out together, in order, in one write (fewer system calls
        // and wake-ups under load); only an empty queue waits.
        while buf.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(frame) if buf.is_empty() => buf = frame,
                Ok(frame) => buf.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if buf.is_empty() {
            tokio::select! {
                biased;
                _ = closed.wait_for(Option::is_some) => break,
                _ = outbox.wake.notified() => continue,
                frame = rx.recv() => match frame {
                    Some(frame) => buf = frame,
                    None => break,
                },
            }
        }
        outbox.sink.lock().busy = true;
        let result = tokio::select! {
            biased;
            _ = closed.wait_for(Option::is_some) => break,
            r = write_all(&outbox.sink, &buf) => r,
        };
        outbox.sink.lock().busy = false;
        if let Err(e) = result {
            if let Some(conn) = conn.upgrade() {
                conn.close(Closed::new(format!("its protocol socket failed: {e}")));
            }
            break;
        }
    }
    // Replacing the writer closes our half; dropping `rx` fails every queued and later send.
    let mut sink = outbox.sink.lock();
    sink.busy = true;
    sink.writer = Box::new(tokio::io::sink());
}

/// Writes all of `buf` through the shared write half, holding its lock for one poll at a time.
async fn write_all(sink: &Mutex<Sink>, buf: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    while written < buf.len() {
        let n = std::future::poll_fn(|cx| {
            let mut sink = sink.lock();
            std::pin::Pin::new(&mut sink.writer).poll_write(cx, &buf[written..])
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    Ok(())
}

/// Serves the rest of the connection after the handshake: routes replies, forwards the child's
/// notifications and serves its requests (at most [`MAX_HOST_REQUESTS`] at once, each in a task
/// owned by this loop and aborted with it). Returns when the socket closes or breaks the
/// protocol; the connection is closed with the reason.
pub(crate) async fn read_loop<R: AsyncRead + Unpin>(
    conn: Arc<Connection>,
    mut reader: FrameReader<BufReader<R>>,
    host: Arc<dyn HostCalls>,
    plugin: PluginName,
) {
    let mut tasks = JoinSet::new();
    // One wait for the close for the whole loop: a fresh one per frame would subscribe to the
    // watch and register (and drop) a waiter for every frame read.
    let closed = conn.closed();
    tokio::pin!(closed);
    let reason = loop {
        while tasks.try_join_next().is_some() {}
        // Frames come first below (the close is waited for only while none is ready), so a
        // child that keeps writing is still cut off here once the connection is closed.
        if let Some(closed) = conn.closed.borrow().clone() {
            break closed;
        }
        let frame = tokio::select! {
            biased;
            frame = reader.next_frame() => frame,
            // The loop stops reading once the connection is closed for any other reason.
            closed = &mut closed => break closed,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                break Closed::new(format!("{STREAM_ENDED}: it closed its protocol socket"));
            }
            Err(plugd_protocol::FrameError::Io(e)) => {
                break Closed::new(format!("{STREAM_ENDED}: {e}"));
            }
            Err(e) => break Closed::new(format!("its protocol stream broke: {e}")),
        };
        let message = match Message::decode(frame) {
            Ok(m) => m,
            Err(e) => break Closed::new(format!("it sent a malformed protocol frame: {e}")),
        };
        match message {
            Message::Response { id, result } => conn.deliver(id, result),
            Message::Notification { method, params } if method == "started" => {
                conn.on_started(&*host, &params)
            }
            Message::Notification { method, params } => {
                notification(&host, plugin.as_str(), &method, &params)
            }
            Message::Request { id, method, params } => {
                match conn.host_requests.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let conn = conn.clone();
                        let host = host.clone();
                        tasks.spawn(async move {
                            let frame = answer(&*host, id, &method, &params).await;
                            drop(params);
                            conn.reply(frame, REPLY_SEND_TIMEOUT).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        let mut frame = Vec::with_capacity(256);
                        encode_error(
                            &mut frame,
                            id,
                            &RpcError {
                                code: codes::TOO_MANY_REQUESTS,
                                message: format!(
                                    "Too many requests to the host in flight (at most {MAX_HOST_REQUESTS}); hint: wait for answers before sending more"
                                ),
                                data: Some(
                                    serde_json::json!({ "code": host_codes::TOO_MANY_REQUESTS }),
                                ),
                            },
                        );
                        // A child that floods requests and does not read its answers is paused
                        // here (no more reading) and failed when it stays so.
                        if conn.send_frame(frame, REPLY_SEND_TIMEOUT).await.is_err() {
                            break Closed::new(format!(
                                "it did not read its protocol socket for {REPLY_SEND_TIMEOUT:?} while sending requests"
                            ));
                        }
                    }
                }
            }
        }
    };
    conn.close(reason);
    tasks.abort_all();
}

fn notification(host: &Arc<dyn HostCalls>, plugin: &str, method: &str, params: &RawValue) {
    match method {
        // Every record goes to the host, which applies the one cap, rate limit and escaping.
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
            Err(e) => bad_notification(&**host, method, &e),
        },
        "progress" => match serde_json::from_str::<ProgressParams>(params.get()) {
            Ok(p) => host.progress(Progress {
                task: p.task,
                fraction: p.fraction,
                message: p.message,
            }),
            Err(e) => bad_notification(&**host, method, &e),
        },
        // The old fire-and-forget form: a refusal can only go to the plugin's log. The SDK sends
        // `emit` as a request, which is answered with the refusal.
        // It is published in the background, so the reader never waits for the store.
        "emit" => match serde_json::from_str::<EmitParams>(params.get()) {
            Ok(p) => {
                let host = host.clone();
                tokio::spawn(async move {
                    if let Err(e) = host.emit(&p.topic, p.payload).await {
                        host.log(
                            LogSource::Runtime,
                            LogLevel::Warn,
                            &format!("Refused `emit` of `{}`: {e}", p.topic),
                        );
                    }
                });
            }
            Err(e) => bad_notification(&**host, method, &e),
        },
        other => host.log(
            LogSource::Runtime,
            LogLevel::Warn,
            &format!("Ignored unknown notification `{other}` from the plugin"),
        ),
    }
}

/// Text from the child for a host message: cut after about [`MAX_LOG_LINE`] bytes, control
/// characters escaped (a multi-line exception message stays on one line).
fn plugin_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_LOG_LINE));
    for c in text.chars() {
        if out.len() >= MAX_LOG_LINE {
            out.push_str(crate::logs::CUT_MARK);
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn bad_notification(host: &dyn HostCalls, method: &str, error: &serde_json::Error) {
    host.log(
        LogSource::Runtime,
        LogLevel::Warn,
        &format!("Ignored malformed `{method}` notification from the plugin: {error}"),
    );
}

/// Serves one request of the child; returns the answer frame.
async fn answer(host: &dyn HostCalls, id: u64, method: &str, params: &RawValue) -> Vec<u8> {
    let mut frame = Vec::with_capacity(128);
    let outcome = if method == "emit" {
        match serde_json::from_str::<EmitParams>(params.get()) {
            Ok(p) => host
                .emit(&p.topic, p.payload)
                .await
                .map(|()| serde_json::Value::Null),
            Err(e) => Err(HostCallError::Invalid(format!("`emit` params: {e}"))),
        }
    } else {
        match serde_json::from_str::<serde_json::Value>(params.get()) {
            Ok(params) => {
                let limit = request_timeout(method, &params);
                match tokio::time::timeout(limit, host.request(method, params)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(HostCallError::Service {
                        code: host_codes::TIMEOUT.to_owned(),
                        message: format!("The host did not answer `{method}` within {limit:?}"),
                    }),
                }
            }
            Err(e) => Err(HostCallError::Invalid(e.to_string())),
        }
    };
    match outcome {
        Ok(result) => encode_result(&mut frame, id, &result),
        Err(e) => encode_error(&mut frame, id, &rpc_error(&e)),
    }
    frame
}

/// How long the host may take to serve `method`: a `plugin.call` lasts as long as the callee's
/// call (the `deadline_ms` of its `context`, which the host enforces), everything else at most
/// [`HOST_REQUEST_TIMEOUT`].
fn request_timeout(method: &str, params: &serde_json::Value) -> Duration {
    if method != "plugin.call" {
        return HOST_REQUEST_TIMEOUT;
    }
    match params
        .pointer("/context/deadline_ms")
        .and_then(serde_json::Value::as_u64)
    {
        Some(ms) => Duration::from_millis(ms).min(PLUGIN_CALL_TIMEOUT) + PLUGIN_CALL_MARGIN,
        None => PLUGIN_CALL_TIMEOUT,
    }
}

/// The error frame for a refused or failed request. Every one carries a machine-readable
/// `data.code` (the SDKs' `HostError.code`): the service's own code for
/// [`HostCallError::Service`] (with [`codes::SERVICE_ERROR`]), else one per kind.
fn rpc_error(error: &HostCallError) -> RpcError {
    let (code, data_code) = match error {
        HostCallError::NotGranted { .. } | HostCallError::DeniedByTrust { .. } => {
            (codes::NOT_GRANTED, host_codes::NOT_GRANTED)
        }
        HostCallError::Unknown(_) => (codes::METHOD_NOT_FOUND, host_codes::UNKNOWN_METHOD),
        HostCallError::Invalid(_) => (codes::INVALID_PARAMS, host_codes::INVALID_PARAMS),
        HostCallError::Service { code, .. } => (codes::SERVICE_ERROR, code.as_str()),
        _ => (codes::ACTION_FAILED, host_codes::FAILED),
    };
    RpcError {
        code,
        message: error.to_string(),
        data: Some(serde_json::json!({ "code": data_code })),
    }
}

#[cfg(test)]
mod tests;
