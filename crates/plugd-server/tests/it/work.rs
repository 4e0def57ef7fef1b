//! The events and tasks routes: publish, history, dead letters and replay, submit, list, show,
//! cancel, and both Server-Sent Events streams, against a real host running a Python plugin.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use plugd_server::{ServerConfig, Shutdown, router};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{PYTHON, TestHost, TestPlugin};

/// Subscribes to `image.*` (failing on a payload with `fail`), runs `step` (progress, then its
/// payload back), `hold` (until cancelled) and `refuse` (a final failure); one task at a time.
const WORKER_PY: &str = r#"
import asyncio

from plugd import Plugin

plugin = Plugin()
seen = []


@plugin.on_event("image.*")
async def on_image(topic, payload):
    if isinstance(payload, dict) and payload.get("fail"):
        raise ValueError("cannot handle it")
    seen.append(topic)


@plugin.action(description="The topics handled so far")
async def handled(payload):
    return seen


@plugin.task("step")
async def step(payload, ctx):
    ctx.progress(0.5, "half way")
    await asyncio.sleep(0.05)
    return {"done": payload}


@plugin.task("hold")
async def hold(payload, ctx):
    ctx.progress(0.25, "holding")
    await asyncio.sleep(60)
    return "finished"


@plugin.task("refuse")
async def refuse(payload, ctx):
    raise ValueError("no, thanks")


if __name__ == "__main__":
    plugin.run()
"#;

const WORKER_TOML: &str = r#"
[limits]
tasks = 1

[[actions]]
name = "handled"
description = "The topics handled so far"

[events]
subscribe = ["image.*"]
"#;

fn worker() -> TestPlugin<'static> {
    TestPlugin {
        name: "worker",
        version: "1.0.0",
        entry: PYTHON,
        extra: WORKER_TOML,
        main_py: WORKER_PY,
    }
}

/// One event of a stream, as the client sees it.
#[derive(Debug, Default, PartialEq)]
struct Sse {
    event: String,
    id: String,
    data: Value,
}

/// An open SSE response, read event by event.
struct Stream {
    body: Body,
    buffer: String,
}

impl Stream {
    /// The next event (keep-alive comments skipped); `None` when the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Sse::default();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event.event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        event.id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if data.is_empty() {
                    continue;
                }
                event.data = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}"));
                return Some(event);
            }
            let frame = tokio::time::timeout(Duration::from_secs(30), self.body.frame())
                .await
                .expect("the stream sent nothing for 30 s");
            match frame {
                None => return None,
                Some(frame) => {
                    if let Ok(bytes) = frame.unwrap().into_data() {
                        self.buffer.push_str(std::str::from_utf8(&bytes).unwrap());
                    }
                }
            }
        }
    }

    /// The next event, which must exist.
    async fn expect(&mut self) -> Sse {
        self.next().await.expect("the stream ended")
    }
}

impl TestHost {
    /// Opens a stream: it must answer 200 `text/event-stream`.
    async fn stream(&self, uri: &str, last_event_id: Option<&str>) -> Stream {
        self.stream_with(self.app.clone(), uri, last_event_id).await
    }

    async fn stream_with(
        &self,
        app: axum::Router,
        uri: &str,
        last_event_id: Option<&str>,
    ) -> Stream {
        let mut request = Request::builder().method("GET").uri(uri);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = app
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "GET {uri}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream",
            "GET {uri}"
        );
        Stream {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// Waits until task `id` is finished; returns it.
    async fn finished(&self, id: u64) -> Value {
        for _ in 0..600 {
            let task = self
                .check("GET", &format!("/api/v1/tasks/{id}"), "", "200")
                .await;
            if matches!(
                task["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("task {id} did not finish within 30 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_listed_and_refused_with_json_errors() {
    let t = TestHost::start(&[worker()]).await;

    let first = t
        .check(
            "POST",
            "/api/v1/events",
            r#"{"topic":"image.imported","payload":{"path":"a.png"}}"#,
            "202",
        )
        .await;
    assert_eq!(first["subscribers"], json!(["worker"]));
    let other = t
        .check("POST", "/api/v1/events", r#"{"topic":"audio.done"}"#, "202")
        .await;
    assert_eq!(other["subscribers"], json!([]));
    assert!(other["seq"].as_u64() > first["seq"].as_u64());

    // History: all, by pattern, paged.
    let all = t.check("GET", "/api/v1/events", "", "200").await;
    let topics: Vec<&str> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["image.imported", "audio.done"]);
    let e = &all["events"][0];
    assert_eq!(e["seq"], first["seq"]);
    assert_eq!(e["payload"], json!({"path": "a.png"}));
    assert_eq!(e["source"], Value::Null);
    assert!(e["at_ms"].as_u64().unwrap() > 0);
    // The payload defaults to {}.
    assert_eq!(all["events"][1]["payload"], json!({}));
    assert_eq!(all["next"], other["seq"]);

    let images = t
        .check("GET", "/api/v1/events?topic=image.*", "", "200")
        .await;
    assert_eq!(images["events"].as_array().unwrap().len(), 1);
    let page = t
        .check(
            "GET",
            &format!("/api/v1/events?after={}&limit=5", first["seq"]),
            "",
            "200",
        )
        .await;
    assert_eq!(page["events"][0]["topic"], "audio.done");
    assert_eq!(page["events"].as_array().unwrap().len(), 1);

    // The subscriber got it.
    for _ in 0..200 {
        let handled = t.check("POST", "/plugin/worker/handled", "", "200").await;
        if handled["value"] == json!(["image.imported"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let handled = t.check("POST", "/plugin/worker/handled", "", "200").await;
    assert_eq!(handled["value"], json!(["image.imported"]));

    for (method, uri, body, expect) in [
        ("POST", "/api/v1/events", "", "400 bad_request"),
        ("POST", "/api/v1/events", "{nope", "400 bad_json"),
        (
            "POST",
            "/api/v1/events",
            r#"{"payload":1}"#,
            "400 bad_request",
        ),
        (
            "POST",
            "/api/v1/events",
            r#"{"topic":"a","payload":1,"extra":true}"#,
            "400 bad_request",
        ),
        (
            "POST",
            "/api/v1/events",
            r#"{"topic":""}"#,
            "400 bad_request",
        ),
        (
            "POST",
            "/api/v1/events",
            r#"{"topic":"plugd.started"}"#,
            "400 bad_request",
        ),
        ("GET", "/api/v1/events?topic=image*", "", "400 bad_request"),
        ("GET", "/api/v1/events?after=x", "", "400 bad_request"),
        (
            "GET",
            "/api/v1/events/stream?topic=a.*.b",
            "",
            "400 bad_request",
        ),
        ("DELETE", "/api/v1/events", "", "405 method_not_allowed"),
    ] {
        let answer = t.check(method, uri, body, expect).await;
        if uri == "/api/v1/events" && body.is_empty() && method == "POST" {
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.contains(r#""topic""#), "{message}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_deliveries_are_dead_letters_that_can_be_replayed() {
    let t = TestHost::start(&[worker()]).await;
    let published = t
        .check(
            "POST",
            "/api/v1/events",
            r#"{"topic":"image.broken","payload":{"fail":true}}"#,
            "202",
        )
        .await;
    let seq = published["seq"].as_u64().unwrap();
    // Five deliveries with 0.2 + 0.4 + 0.8 + 1.6 s between them.
    let mut dead = Value::Null;
    for _ in 0..300 {
        dead = t.check("GET", "/api/v1/events/dead", "", "200").await;
        if !dead["dead_letters"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let letter = &dead["dead_letters"][0];
    assert_eq!(letter["plugin"], "worker");
    assert_eq!(letter["event"]["seq"], seq);
    assert_eq!(letter["event"]["topic"], "image.broken");
    assert_eq!(letter["attempts"], 5);
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("cannot handle it"),
        "{letter}"
    );
    let mine = t
        .check(
            "GET",
            "/api/v1/events/dead?plugin=worker&limit=1",
            "",
            "200",
        )
        .await;
    assert_eq!(mine["dead_letters"].as_array().unwrap().len(), 1);

    let replayed = t
        .check(
            "POST",
            &format!("/api/v1/events/dead/worker/{seq}/replay"),
            "",
            "202",
        )
        .await;
    assert_eq!(replayed["plugin"], "worker");
    assert_eq!(replayed["seq"], seq);
    let copy = replayed["replayed"].as_u64().unwrap();
    assert!(copy > seq);
    // The copy is in the log, for `worker` alone.
    let history = t
        .check("GET", &format!("/api/v1/events?after={seq}"), "", "200")
        .await;
    assert_eq!(history["events"][0]["seq"], copy);
    assert_eq!(history["events"][0]["target"], "worker");

    for (method, uri, expect) in [
        (
            "GET",
            "/api/v1/events/dead?plugin=nope",
            "404 plugin_not_found",
        ),
        ("GET", "/api/v1/events/dead?limit=-1", "400 bad_request"),
        (
            "POST",
            "/api/v1/events/dead/worker/999999/replay",
            "404 not_found",
        ),
        (
            "POST",
            "/api/v1/events/dead/nope/1/replay",
            "404 plugin_not_found",
        ),
        (
            "POST",
            "/api/v1/events/dead/worker/x/replay",
            "400 bad_request",
        ),
    ] {
        t.check(method, uri, "", expect).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_replays_then_goes_live_and_resumes() {
    let t = TestHost::start(&[worker()]).await;
    let publish = |topic: &'static str, n: u64| {
        let t = &t;
        async move {
            let body = json!({ "topic": topic, "payload": { "n": n } }).to_string();
            t.check("POST", "/api/v1/events", &body, "202").await["seq"]
                .as_u64()
                .unwrap()
        }
    };
    let s1 = publish("audio.a", 1).await;
    let s2 = publish("image.b", 2).await;

    // From the start (`after=0`): the stored events, then live ones.
    let mut all = t.stream("/api/v1/events/stream?after=0", None).await;
    let e = all.expect().await;
    assert_eq!(e.event, "event");
    assert_eq!(e.id, s1.to_string());
    assert_eq!(e.data["topic"], "audio.a");
    assert_eq!(e.data["payload"], json!({"n": 1}));
    assert_eq!(all.expect().await.id, s2.to_string());

    // Filtered, live only (no cursor).
    let mut images = t.stream("/api/v1/events/stream?topic=image.*", None).await;
    let s3 = publish("audio.c", 3).await;
    let s4 = publish("image.d", 4).await;
    assert_eq!(all.expect().await.id, s3.to_string());
    assert_eq!(all.expect().await.id, s4.to_string());
    let e = images.expect().await;
    assert_eq!(
        (e.id, e.data["topic"].clone()),
        (s4.to_string(), json!("image.d"))
    );

    // Resumed with `Last-Event-ID` (which wins over `after`): from s2 on.
    let mut resumed = t
        .stream("/api/v1/events/stream?after=0", Some(&s2.to_string()))
        .await;
    assert_eq!(resumed.expect().await.id, s3.to_string());
    assert_eq!(resumed.expect().await.id, s4.to_string());
    let s5 = publish("image.e", 5).await;
    assert_eq!(resumed.expect().await.id, s5.to_string());

    // A burst larger than the broadcast buffer: a lagging stream reads the gap from the store,
    // in order and complete.
    let mut burst = t
        .stream(
            &format!("/api/v1/events/stream?after={s5}&topic=burst"),
            None,
        )
        .await;
    let mut seqs = Vec::new();
    for n in 0..1100 {
        seqs.push(publish("burst", n).await);
    }
    for seq in &seqs {
        let e = burst.expect().await;
        assert_eq!(e.id, seq.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_the_server_shuts_down() {
    let t = TestHost::start(&[worker()]).await;
    let shutdown = Shutdown::new();
    let app = router(
        t.host.clone(),
        ServerConfig {
            shutdown: shutdown.clone(),
            ..ServerConfig::default()
        },
    );
    let mut events = t
        .stream_with(app.clone(), "/api/v1/events/stream", None)
        .await;
    let mut tasks = t
        .stream_with(app.clone(), "/api/v1/tasks/stream", None)
        .await;
    shutdown.trigger();
    assert_eq!(events.next().await, None);
    assert_eq!(tasks.next().await, None);
    // One opened afterwards ends at once.
    let mut late = t.stream_with(app, "/api/v1/events/stream", None).await;
    assert_eq!(late.next().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_submitted_listed_shown_and_refused_with_json_errors() {
    let t = TestHost::start(&[worker()]).await;

    let (status, _, text) = t
        .raw(
            "POST",
            "/api/v1/tasks",
            r#"{"plugin":"worker","task":"step","payload":{"n":1},"key":"k"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let task: Value = serde_json::from_str(&text).unwrap();
    let id = task["id"].as_u64().unwrap();
    assert_eq!(task["state"], "queued");
    assert_eq!(task["plugin"], "worker");
    assert_eq!(task["task"], "step");
    assert_eq!(task["key"], "k");
    assert_eq!(task["max_attempts"], 3);
    assert_eq!(task["deduped"], false);

    let done = t.finished(id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"], json!({"done": {"n": 1}}));
    assert_eq!(done["attempts"], 1);
    assert!(done["finished_ms"].as_u64() >= done["started_ms"].as_u64());

    // A task the plugin has no handler for fails for good with `task_not_found`.
    let missing = t
        .check(
            "POST",
            "/api/v1/tasks",
            r#"{"plugin":"worker","task":"nope","max_attempts":2}"#,
            "201",
        )
        .await;
    let missing = t.finished(missing["id"].as_u64().unwrap()).await;
    assert_eq!(missing["state"], "failed");
    assert_eq!(missing["error_code"], "task_not_found");
    assert_eq!(missing["attempts"], 1);
    let refused = t
        .check(
            "POST",
            "/api/v1/tasks",
            r#"{"plugin":"worker","task":"refuse"}"#,
            "201",
        )
        .await;
    let refused = t.finished(refused["id"].as_u64().unwrap()).await;
    assert_eq!(refused["state"], "failed");
    assert!(
        refused["error"].as_str().unwrap().contains("no, thanks"),
        "{refused}"
    );

    // Lists: newest first, filtered, paged. (The end of key `k` queued an `@after_last` run.)
    let ids = |list: &Value| -> Vec<u64> {
        list["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect()
    };
    let list = t.check("GET", "/api/v1/tasks", "", "200").await;
    let names: Vec<&str> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .filter(|name| *name != "@after_last")
        .collect();
    assert_eq!(names, ["refuse", "nope", "step"], "{list:#}");
    let all = ids(&list);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "{all:?}");
    assert_eq!(list["next"], Value::Null);
    let failed = t
        .check("GET", "/api/v1/tasks?state=failed&plugin=worker", "", "200")
        .await;
    assert_eq!(failed["tasks"].as_array().unwrap().len(), 2);
    let keyed = t.check("GET", "/api/v1/tasks?key=k", "", "200").await;
    assert!(ids(&keyed).contains(&id), "{keyed}");
    assert!(
        keyed["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["key"] == "k"),
        "{keyed}"
    );
    let page = t.check("GET", "/api/v1/tasks?limit=2", "", "200").await;
    assert_eq!(ids(&page), all[..2]);
    let next = page["next"].as_u64().unwrap();
    let rest = t
        .check(
            "GET",
            &format!("/api/v1/tasks?limit=2&before={next}"),
            "",
            "200",
        )
        .await;
    assert_eq!(ids(&rest), all[2..4.min(all.len())]);

    // A finished task cannot be cancelled.
    t.check(
        "POST",
        &format!("/api/v1/tasks/{id}/cancel"),
        "",
        "409 conflict",
    )
    .await;

    let bad_state = t
        .check("GET", "/api/v1/tasks?state=done", "", "400 bad_request")
        .await;
    let message = bad_state["error"]["message"].as_str().unwrap();
    for state in ["queued", "running", "succeeded", "failed", "cancelled"] {
        assert!(message.contains(state), "{message}");
    }
    for (method, uri, body, expect) in [
        ("POST", "/api/v1/tasks", "", "400 bad_request"),
        ("POST", "/api/v1/tasks", "[1", "400 bad_json"),
        (
            "POST",
            "/api/v1/tasks",
            r#"{"plugin":"worker"}"#,
            "400 bad_request",
        ),
        (
            "POST",
            "/api/v1/tasks",
            r#"{"plugin":"worker","task":"step","priority":"yes"}"#,
            "400 bad_request",
        ),
        (
            "POST",
            "/api/v1/tasks",
            r#"{"plugin":"worker","task":"step","dedupe":true}"#,
            "400 bad_request",
        ),
        (
            "POST",
            "/api/v1/tasks",
            r#"{"plugin":"worker","task":"step","max_attempts":0}"#,
            "400 bad_request",
        ),
        (
            "POST",
            "/api/v1/tasks",
            r#"{"plugin":"nope","task":"step"}"#,
            "404 plugin_not_found",
        ),
        (
            "GET",
            "/api/v1/tasks?plugin=nope",
            "",
            "404 plugin_not_found",
        ),
        ("GET", "/api/v1/tasks?limit=x", "", "400 bad_request"),
        ("GET", "/api/v1/tasks/999999", "", "404 not_found"),
        ("GET", "/api/v1/tasks/x", "", "400 bad_request"),
        ("POST", "/api/v1/tasks/999999/cancel", "", "404 not_found"),
        (
            "GET",
            "/api/v1/tasks/1/cancel",
            "",
            "405 method_not_allowed",
        ),
        ("GET", "/api/v1/tasks/stream?id=999999", "", "404 not_found"),
        (
            "GET",
            "/api/v1/tasks/stream?plugin=nope",
            "",
            "404 plugin_not_found",
        ),
        (
            "GET",
            "/api/v1/tasks/stream?plugin=worker&id=1",
            "",
            "400 bad_request",
        ),
    ] {
        t.check(method, uri, body, expect).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_stream_shows_progress_dedupe_and_cancel() {
    let t = TestHost::start(&[worker()]).await;
    let mut plugin_stream = t.stream("/api/v1/tasks/stream?plugin=worker", None).await;

    // `hold` takes the plugin's one task slot; what comes next stays queued.
    let held = t
        .check(
            "POST",
            "/api/v1/tasks",
            r#"{"plugin":"worker","task":"hold"}"#,
            "201",
        )
        .await;
    let held = held["id"].as_u64().unwrap();
    let mut one = t
        .stream(&format!("/api/v1/tasks/stream?id={held}"), None)
        .await;
    // It starts with the current view, then follows.
    let first = one.expect().await;
    assert_eq!(first.event, "task");
    assert_eq!(first.data["id"], held);
    let mut seen = vec![first];
    while !seen.iter().any(|e| e.event == "progress") {
        seen.push(one.expect().await);
    }
    let progress = seen.last().unwrap();
    assert_eq!(
        progress.data,
        json!({"id": held, "plugin": "worker", "state": "running", "progress": 0.25, "message": "holding"})
    );

    // Dedupe: the second submit of a key with a queued task returns that task, 200.
    let body = r#"{"plugin":"worker","task":"step","key":"batch","dedupe":true}"#;
    let (status, _, text) = t.raw("POST", "/api/v1/tasks", body).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let queued: Value = serde_json::from_str(&text).unwrap();
    let (status, _, text) = t.raw("POST", "/api/v1/tasks", body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let again: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(again["id"], queued["id"]);
    assert_eq!(again["deduped"], true);

    // A late stream of the plugin starts with the running and the queued task, oldest first.
    let mut late = t.stream("/api/v1/tasks/stream?plugin=worker", None).await;
    let a = late.expect().await;
    let b = late.expect().await;
    assert_eq!(
        (a.data["id"].clone(), a.data["state"].clone()),
        (json!(held), json!("running"))
    );
    assert_eq!(
        (b.data["id"].clone(), b.data["state"].clone()),
        (queued["id"].clone(), json!("queued"))
    );

    // Cancel the running one: it stops, the stream of that task ends with it.
    let cancelled = t
        .check("POST", &format!("/api/v1/tasks/{held}/cancel"), "", "200")
        .await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["stopped"], true, "{cancelled}");
    let mut last = None;
    while let Some(e) = one.next().await {
        last = Some(e);
    }
    let last = last.expect("the final state");
    assert_eq!(
        (last.event.as_str(), &last.data["state"]),
        ("task", &json!("cancelled"))
    );

    // Then the queued one runs; the plugin stream sees all of it, in order per task.
    let queued_id = queued["id"].as_u64().unwrap();
    let mut states = Vec::new();
    while !states.contains(&(queued_id, "succeeded".to_owned())) {
        let e = plugin_stream.expect().await;
        if e.event == "task" {
            states.push((
                e.data["id"].as_u64().unwrap(),
                e.data["state"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let of = |id: u64| -> Vec<&str> {
        states
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, s)| s.as_str())
            .collect()
    };
    // Never a step back; the submit's `queued` may have been overtaken by the start it woke.
    let held_states = of(held);
    assert!(
        held_states == ["queued", "running", "cancelled"]
            || held_states == ["running", "cancelled"],
        "{held_states:?}"
    );
    assert_eq!(of(queued_id), ["queued", "running", "succeeded"]);

    // A stream of a finished task: its view, then the end.
    let mut finished = t
        .stream(&format!("/api/v1/tasks/stream?id={queued_id}"), None)
        .await;
    let e = finished.expect().await;
    assert_eq!(e.data["state"], "succeeded");
    assert_eq!(e.data["result"], json!({"done": {}}));
    assert_eq!(finished.next().await, None);
}
