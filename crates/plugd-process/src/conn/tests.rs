//! Unit tests of the connection over a `UnixStream` pair with a fake child (no Python).

use std::sync::atomic::AtomicUsize;

use async_trait::async_trait;
use plugd_runtime::{HostCallError, Progress};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::*;

/// A host whose requests wait until released, and whose `emit` refuses `denied.*` topics.
struct FakeHost {
    release: Semaphore,
    requests: AtomicUsize,
    logs: Mutex<Vec<String>>,
}

#[async_trait]
impl HostCalls for FakeHost {
    fn log(&self, _: LogSource, _: LogLevel, message: &str) {
        self.logs.lock().push(message.to_owned());
    }
    fn progress(&self, _: Progress) {}
    async fn emit(&self, topic: &str, _: Value) -> Result<(), HostCallError> {
        if topic.starts_with("denied.") {
            Err(HostCallError::NotGranted {
                plugin: "p".into(),
                service: "events".into(),
            })
        } else {
            Ok(())
        }
    }
    async fn request(&self, method: &str, _: Value) -> Result<Value, HostCallError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let _permit = self.release.acquire().await.unwrap();
        Ok(json!({ "method": method }))
    }
}

struct Fixture {
    conn: Arc<Connection>,
    host: Arc<FakeHost>,
    late: Arc<AtomicU64>,
    /// The child's end.
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    child_out: OwnedWriteHalf,
}

fn fixture() -> Fixture {
    let host = Arc::new(FakeHost {
        release: Semaphore::new(0),
        requests: AtomicUsize::new(0),
        logs: Mutex::new(Vec::new()),
    });
    let (conn, late, lines, child_out) = connect(host.clone());
    Fixture {
        conn,
        host,
        late,
        lines,
        child_out,
    }
}

type ChildEnd = (
    Arc<Connection>,
    Arc<AtomicU64>,
    tokio::io::Lines<BufReader<OwnedReadHalf>>,
    OwnedWriteHalf,
);

/// A connection serving `host`, and the child's end of its socket.
fn connect(host: Arc<dyn HostCalls>) -> ChildEnd {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (read_half, write_half) = ours.into_split();
    let late = Arc::new(AtomicU64::new(0));
    let conn = Connection::new(write_half, late.clone());
    tokio::spawn(read_loop(
        conn.clone(),
        FrameReader::new(BufReader::new(read_half), 1 << 20),
        host,
        PluginName::new("p").unwrap(),
    ));
    let (child_in, child_out) = theirs.into_split();
    (conn, late, BufReader::new(child_in).lines(), child_out)
}

impl Fixture {
    async fn next(&mut self) -> Value {
        let line = self.lines.next_line().await.unwrap().expect("a frame");
        serde_json::from_str(&line).unwrap()
    }

    async fn send(&mut self, frame: Value) {
        let mut line = serde_json::to_vec(&frame).unwrap();
        line.push(b'\n');
        self.child_out.write_all(&line).await.unwrap();
    }
}

fn call_params(payload: &str) -> Value {
    json!({ "action": "a", "payload": payload, "deadline_ms": 1000 })
}

#[tokio::test]
async fn replies_find_their_callers_in_any_order_and_late_ones_are_counted() {
    let mut f = fixture();
    let conn = f.conn.clone();
    let first = tokio::spawn({
        let conn = conn.clone();
        async move { conn.call(&call_params("one"), Duration::from_secs(5)).await }
    });
    let second = tokio::spawn({
        let conn = conn.clone();
        async move { conn.call(&call_params("two"), Duration::from_secs(5)).await }
    });
    let a = f.next().await;
    let b = f.next().await;
    // Answer in the opposite order, each with its own payload.
    for frame in [&b, &a] {
        let id = frame["id"].clone();
        let payload = frame["params"]["payload"].clone();
        f.send(json!({"jsonrpc": "2.0", "id": id, "result": payload}))
            .await;
    }
    let one = first.await.unwrap().unwrap().unwrap();
    let two = second.await.unwrap().unwrap().unwrap();
    assert_eq!((one.get(), two.get()), ("\"one\"", "\"two\""));
    f.send(json!({"jsonrpc": "2.0", "id": 999, "result": 1}))
        .await;
    // Once a later request round-trips, the stray reply was processed.
    let ping = tokio::spawn(async move {
        conn.request("ping", &json!({}), Duration::from_secs(5))
            .await
    });
    let frame = f.next().await;
    f.send(json!({"jsonrpc": "2.0", "id": frame["id"], "result": "pong"}))
        .await;
    ping.await.unwrap().unwrap().unwrap();
    assert_eq!(f.late.load(Ordering::Relaxed), 1);
    assert_eq!(f.conn.pending_len(), 0);
}

#[tokio::test]
async fn dropped_calls_leave_no_pending_ids_and_each_gets_a_cancel() {
    let mut f = fixture();
    let mut calls = Vec::new();
    for _ in 0..1000 {
        let conn = f.conn.clone();
        calls.push(tokio::spawn(async move {
            conn.call(&call_params("x"), Duration::from_secs(3600))
                .await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..1000 {
        let frame = f.next().await;
        assert_eq!(frame["method"], "call");
        ids.insert(frame["id"].as_u64().unwrap());
    }
    assert_eq!(f.conn.pending_len(), 1000);
    for call in &calls {
        call.abort();
    }
    for call in calls {
        assert!(call.await.unwrap_err().is_cancelled());
    }
    assert_eq!(f.conn.pending_len(), 0);
    let mut cancelled = std::collections::BTreeSet::new();
    while cancelled.len() < 1000 {
        let frame = f.next().await;
        assert_eq!(frame["method"], "cancel", "{frame}");
        cancelled.insert(frame["params"]["id"].as_u64().unwrap());
    }
    assert_eq!(cancelled, ids);
}

#[tokio::test(start_paused = true)]
async fn a_call_times_out_on_its_deadline_when_the_child_stops_reading() {
    let f = fixture();
    let big = "x".repeat(1 << 20);
    // The child never reads: the socket buffer fills, then the queue.
    let mut stuck = Vec::new();
    for _ in 0..WRITE_QUEUE + 4 {
        let conn = f.conn.clone();
        let big = big.clone();
        stuck.push(tokio::spawn(async move {
            conn.call(&call_params(&big), Duration::from_secs(60)).await
        }));
    }
    tokio::task::yield_now().await;
    let started = Instant::now();
    let err = f
        .conn
        .call(&call_params("small"), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Timeout), "{err:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    let started = Instant::now();
    let mut frame = Vec::new();
    plugd_protocol::encode_notification(&mut frame, "params.changed", &json!({}));
    let err = f
        .conn
        .send_frame(frame, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Timeout), "{err:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    for call in stuck {
        assert!(matches!(call.await.unwrap(), Err(RequestError::Timeout)));
    }
    assert_eq!(f.conn.pending_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn callers_dropped_mid_write_never_leave_half_a_frame() {
    let mut f = fixture();
    let big = "y".repeat(1 << 20);
    // Each caller gives up long before the child reads; the writer owns whole frames.
    for _ in 0..8 {
        let conn = f.conn.clone();
        let big = big.clone();
        let _ = tokio::time::timeout(
            Duration::from_millis(10),
            tokio::spawn(async move {
                conn.call(&call_params(&big), Duration::from_millis(5))
                    .await
            }),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let conn = f.conn.clone();
    let last = tokio::spawn(async move {
        conn.request("ping", &json!({}), Duration::from_secs(3600))
            .await
    });
    // Every frame the child reads is whole JSON, in order, ending with the ping.
    loop {
        let frame = f.next().await;
        if frame["method"] == "ping" {
            f.send(json!({"jsonrpc": "2.0", "id": frame["id"], "result": "pong"}))
                .await;
            break;
        }
        assert!(
            matches!(frame["method"].as_str(), Some("call" | "cancel")),
            "{frame}"
        );
    }
    last.await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn plugin_requests_beyond_the_bound_are_refused_at_once() {
    let mut f = fixture();
    let total = MAX_HOST_REQUESTS + 100;
    for id in 0..total {
        f.send(json!({"jsonrpc": "2.0", "id": id, "method": "kv.get", "params": {"k": id}}))
            .await;
    }
    let mut refused = 0;
    for _ in 0..total - MAX_HOST_REQUESTS {
        let frame = f.next().await;
        assert_eq!(
            frame["error"]["code"],
            codes::TOO_MANY_REQUESTS,
            "{refused}: {frame}"
        );
        assert_eq!(frame["error"]["data"]["code"], "too_many_requests");
        refused += 1;
    }
    assert_eq!(refused, 100);
    assert_eq!(f.conn.host_requests_in_flight(), MAX_HOST_REQUESTS);
    assert_eq!(f.host.requests.load(Ordering::Relaxed), MAX_HOST_REQUESTS);
    f.host.release.add_permits(MAX_HOST_REQUESTS);
    for _ in 0..MAX_HOST_REQUESTS {
        let frame = f.next().await;
        assert_eq!(frame["result"]["method"], "kv.get", "{frame}");
    }
    assert_eq!(f.conn.host_requests_in_flight(), 0);
}

#[tokio::test]
async fn emit_requests_get_the_hosts_verdict_and_notifications_still_work() {
    let mut f = fixture();
    f.send(json!({"jsonrpc": "2.0", "id": 1, "method": "emit", "params": {"topic": "ok.done", "payload": 1}}))
        .await;
    assert_eq!(
        f.next().await,
        json!({"jsonrpc": "2.0", "id": 1, "result": null})
    );
    f.send(json!({"jsonrpc": "2.0", "id": 2, "method": "emit", "params": {"topic": "denied.x"}}))
        .await;
    let refusal = f.next().await;
    assert_eq!(refusal["error"]["code"], codes::NOT_GRANTED);
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Service `events` is not granted"),
        "{refusal}"
    );
    // The old notification form: the refusal goes to the plugin's log.
    f.send(json!({"jsonrpc": "2.0", "method": "emit", "params": {"topic": "denied.y"}}))
        .await;
    f.send(json!({"jsonrpc": "2.0", "id": 3, "method": "emit", "params": {"topic": "ok.z"}}))
        .await;
    assert_eq!(f.next().await["id"], 3);
    let logs = f.host.logs.lock().clone();
    assert_eq!(logs.len(), 1);
    assert!(
        logs[0].starts_with("Refused `emit` of `denied.y`"),
        "{logs:?}"
    );
}

#[tokio::test]
async fn close_fails_waiting_callers_with_the_reason_and_stops_the_writer() {
    let mut f = fixture();
    let conn = f.conn.clone();
    let call = tokio::spawn(async move {
        conn.call(&call_params("x"), Duration::from_secs(3600))
            .await
    });
    f.next().await;
    f.conn.close(Closed {
        reason: "it used too much CPU".into(),
        limit: Some("cpu"),
    });
    match call.await.unwrap() {
        Err(RequestError::Closed(c)) => {
            assert_eq!(c.reason, "it used too much CPU");
            assert_eq!(c.limit, Some("cpu"));
        }
        other => panic!("expected Closed, got {other:?}"),
    }
    // The writer dropped its half: the child sees EOF.
    assert!(f.lines.next_line().await.unwrap().is_none());
    assert!(matches!(
        f.conn
            .request("ping", &json!({}), Duration::from_secs(1))
            .await,
        Err(RequestError::Closed(_))
    ));
    assert_eq!(f.conn.pending_len(), 0);
}

/// A host that refuses each method in its own way and takes `{"sleep_s": N}` seconds to answer.
struct RefusingHost;

#[async_trait]
impl HostCalls for RefusingHost {
    fn log(&self, _: LogSource, _: LogLevel, _: &str) {}
    fn progress(&self, _: Progress) {}
    async fn emit(&self, _: &str, _: Value) -> Result<(), HostCallError> {
        Ok(())
    }
    async fn request(&self, method: &str, params: Value) -> Result<Value, HostCallError> {
        if let Some(s) = params.get("sleep_s").and_then(Value::as_u64) {
            tokio::time::sleep(Duration::from_secs(s)).await;
        }
        let (plugin, service) = ("p".to_owned(), "kv".to_owned());
        match method {
            "kv.commit" => Err(HostCallError::Service {
                code: "conflict".into(),
                message: "Key `a` changed".into(),
            }),
            "kv.get" => Err(HostCallError::NotGranted { plugin, service }),
            "kv.set" => Err(HostCallError::DeniedByTrust { plugin, service }),
            "kv.list" => Err(HostCallError::Invalid("`prefix` must be a string".into())),
            "kv.undo" => Err(HostCallError::Failed("The store is gone".into())),
            "plugin.call" | "service.call" => Ok(json!({"value": "done"})),
            other => Err(HostCallError::Unknown(other.to_owned())),
        }
    }
}

#[tokio::test]
async fn refusals_carry_a_machine_readable_code() {
    let (_conn, _late, mut lines, mut out) = connect(Arc::new(RefusingHost));
    let cases = [
        (
            "kv.commit",
            json!({"code": -32022, "message": "Key `a` changed", "data": {"code": "conflict"}}),
        ),
        (
            "kv.get",
            json!({"code": -32020, "message": "Service `kv` is not granted to plugin `p`; hint: add it to `permissions.services` in `plugin.toml`", "data": {"code": "not_granted"}}),
        ),
        (
            "kv.set",
            json!({"code": -32020, "message": "Service `kv` is not available to plugin `p` because it is untrusted (unsigned); hint: sign the package with `plugd sign` and add the key with `plugd trust add`", "data": {"code": "not_granted"}}),
        ),
        (
            "kv.list",
            json!({"code": -32602, "message": "Invalid request: `prefix` must be a string", "data": {"code": "invalid_params"}}),
        ),
        (
            "kv.undo",
            json!({"code": -32003, "message": "The store is gone", "data": {"code": "failed"}}),
        ),
        (
            "task.submit",
            json!({"code": -32601, "message": "Host method `task.submit` is not available in this version of plugd", "data": {"code": "unknown_method"}}),
        ),
    ];
    for (id, (method, want)) in cases.into_iter().enumerate() {
        let mut line = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}}),
        )
        .unwrap();
        line.push(b'\n');
        out.write_all(&line).await.unwrap();
        let frame: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(
            frame,
            json!({"jsonrpc": "2.0", "id": id, "error": want}),
            "{method}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_plugin_call_may_take_as_long_as_its_context_deadline() {
    let (_conn, _late, mut lines, mut out) = connect(Arc::new(RefusingHost));
    let mut ask = async |method: &str, params: Value| {
        let started = Instant::now();
        let mut line = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
        )
        .unwrap();
        line.push(b'\n');
        out.write_all(&line).await.unwrap();
        let frame: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        (frame, started.elapsed())
    };
    // 40 s of a 60 s deadline: longer than any other request may take, and answered.
    let (frame, took) = ask(
        "plugin.call",
        json!({"sleep_s": 40, "context": {"chain": [], "deadline_ms": 60_000}}),
    )
    .await;
    assert_eq!(frame["result"], json!({"value": "done"}), "{frame}");
    assert_eq!(took, Duration::from_secs(40));
    // Other requests end after 30 s.
    let (frame, took) = ask("service.call", json!({"sleep_s": 40})).await;
    assert_eq!(
        frame["error"],
        json!({"code": -32022, "message": "The host did not answer `service.call` within 30s", "data": {"code": "timeout"}})
    );
    assert_eq!(took, Duration::from_secs(30));
    // A call with 1 s left ends 5 s (the margin) after that.
    let (frame, took) = ask(
        "plugin.call",
        json!({"sleep_s": 40, "context": {"chain": ["a"], "deadline_ms": 1000}}),
    )
    .await;
    assert_eq!(frame["error"]["data"]["code"], "timeout", "{frame}");
    assert_eq!(took, Duration::from_secs(6));
    // Without a context: the long bound.
    let (frame, took) = ask("plugin.call", json!({"sleep_s": 700})).await;
    assert_eq!(frame["error"]["data"]["code"], "timeout", "{frame}");
    assert_eq!(took, Duration::from_secs(600));
}

#[tokio::test]
async fn started_reaches_the_waiting_start_once_and_a_close_ends_the_wait() {
    let mut f = fixture();
    let started = f.conn.expect_started();
    // The child's text stays on one line and within the log cap.
    f.send(json!({"jsonrpc": "2.0", "method": "started", "params": {"error": format!("ValueError: bad\nline {}", "x".repeat(2 * MAX_LOG_LINE))}}))
        .await;
    let reason = started.await.unwrap().unwrap_err();
    assert!(
        reason.starts_with("`on_start` failed: ValueError: bad\\nline xxx"),
        "{reason}"
    );
    assert!(reason.ends_with(crate::logs::CUT_MARK), "{reason}");
    assert!(reason.len() < MAX_LOG_LINE + 100, "{}", reason.len());

    // Nobody waits any more: a second `started` is only logged.
    f.send(json!({"jsonrpc": "2.0", "method": "started", "params": {}}))
        .await;
    f.send(json!({"jsonrpc": "2.0", "id": 1, "method": "emit", "params": {"topic": "ok.x"}}))
        .await;
    assert_eq!(f.next().await["id"], 1);
    let logs = f.host.logs.lock().clone();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].starts_with("Ignored `started`"), "{logs:?}");

    let started = f.conn.expect_started();
    f.send(json!({"jsonrpc": "2.0", "method": "started", "params": {}}))
        .await;
    assert_eq!(started.await.unwrap(), Ok(()));

    // A close ends a wait that is under way, and one armed after it at once.
    let started = f.conn.expect_started();
    f.conn.close(Closed::new("it crashed"));
    assert!(started.await.is_err());
    assert!(f.conn.expect_started().await.is_err());
}
