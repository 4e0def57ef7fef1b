//! The HTTP API through `router(...)` and `oneshot`, without a socket, against a real host that
//! runs small Python test plugins written to a temp dir.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use plugd_host::{Host, HostConfig};
use plugd_process::{ProcessConfig, ProcessRuntime};
use plugd_server::{Readiness, ServerConfig, router};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

mod work;

/// The plugin behind the call routes: one action per kind of answer.
const CALLS_PY: &str = r#"
import asyncio
from dataclasses import dataclass

from plugd import Plugin

plugin = Plugin()


@dataclass
class GreetInput:
    name: str


@plugin.action(description="Greets someone by name", input=GreetInput)
async def greet(req: GreetInput):
    return {"message": f"Hello, {req.name}!"}


@plugin.action(description="Returns the payload unchanged")
async def echo(payload):
    return payload


@plugin.action(description="Always raises")
async def boom(payload):
    raise RuntimeError("kaboom: the disk is full")


@plugin.action(description="Sleeps past the call timeout")
async def slow(payload):
    await asyncio.sleep(2)
    return {"late": True}


if __name__ == "__main__":
    plugin.run()
"#;

const CALLS_ACTIONS: &str = r#"
[limits]
call_timeout = "300ms"

[[actions]]
name = "greet"
description = "Greets someone by name"
input = { type = "object", required = ["name"], properties = { name = { type = "string" } } }

[[actions]]
name = "echo"
description = "Returns the payload unchanged"

[[actions]]
name = "boom"
description = "Always raises"

[[actions]]
name = "slow"
description = "Sleeps past the call timeout"
"#;

/// A plugin with one `ping` action, used for the dependency pair `base` ← `child`.
const PING_PY: &str = r#"
from plugd import Plugin

plugin = Plugin()


@plugin.action(description="Answers pong")
async def ping(payload):
    return "pong"


if __name__ == "__main__":
    plugin.run()
"#;

const PING_ACTIONS: &str = r#"
[[actions]]
name = "ping"
description = "Answers pong"
"#;

const PYTHON: &str = r#"["python3", "main.py"]"#;

/// A running host on a temp plugins dir, and its router.
struct TestHost {
    host: Host,
    app: Router,
    plugins: PathBuf,
    _tmp: TempDir,
}

impl TestHost {
    /// Writes the plugins, starts the host and builds the router with `max_body` = 1 KiB.
    async fn start(plugins: &[TestPlugin<'_>]) -> TestHost {
        let tmp = tempfile::tempdir().unwrap();
        let plugins_dir = tmp.path().join("plugins");
        for p in plugins {
            p.write(&plugins_dir);
        }
        let mut process = ProcessConfig::default();
        process
            .base_env
            .push(("PYTHONPATH".into(), sdk_dir().into_os_string()));
        let host = Host::builder(HostConfig::new(&plugins_dir, tmp.path().join("state")))
            .runtime(Arc::new(ProcessRuntime::new(process)))
            .build();
        host.start().await.unwrap();
        let app = router(
            host.clone(),
            ServerConfig {
                max_body: 1024,
                ..ServerConfig::default()
            },
        );
        TestHost {
            host,
            app,
            plugins: plugins_dir,
            _tmp: tmp,
        }
    }

    /// Sends one request and returns its status, `Content-Type` and body.
    async fn raw(&self, method: &str, uri: &str, body: &str) -> (StatusCode, String, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }

    /// The one check: a request answers `expect`, written `"200"` for a success or
    /// `"404 plugin_not_found"` for an error (status and `error.code`). Error bodies must carry
    /// a non-empty message. Returns the body for further checks.
    async fn check(&self, method: &str, uri: &str, body: &str, expect: &str) -> Value {
        let (status, content_type, text) = self.raw(method, uri, body).await;
        assert_eq!(
            content_type, "application/json",
            "{method} {uri}: {status} {text}"
        );
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {uri}: body is not JSON ({e}): {text}"));
        let actual = match value.pointer("/error/code").and_then(Value::as_str) {
            Some(code) => format!("{} {code}", status.as_u16()),
            None => status.as_u16().to_string(),
        };
        assert_eq!(actual, expect, "{method} {uri} {body:?} answered {value}");
        if !status.is_success() {
            let message = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            assert!(
                !message.is_empty(),
                "{method} {uri}: error without a message: {value}"
            );
        }
        value
    }
}

/// A test plugin package: `plugin.toml` (with `extra` appended) and `main.py`.
struct TestPlugin<'a> {
    name: &'a str,
    version: &'a str,
    entry: &'a str,
    extra: &'a str,
    main_py: &'a str,
}

impl TestPlugin<'_> {
    fn write(&self, plugins_dir: &Path) {
        let dir = plugins_dir.join(self.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("plugin.toml"),
            manifest(self.name, self.version, self.entry, self.extra),
        )
        .unwrap();
        std::fs::write(dir.join("main.py"), self.main_py).unwrap();
    }
}

fn manifest(name: &str, version: &str, entry: &str, extra: &str) -> String {
    format!(
        r#"schema = 1

[plugin]
name = "{name}"
version = "{version}"
description = "Test plugin `{name}`"
kind = "other"
runtime = "process"
entry = {entry}
{extra}"#
    )
}

/// `sdk/python/src` of this checkout, so the test plugins import `plugd` without pip.
fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sdk/python/src")
        .canonicalize()
        .unwrap()
}

fn calls_plugin() -> TestPlugin<'static> {
    TestPlugin {
        name: "calls",
        version: "1.0.0",
        entry: PYTHON,
        extra: CALLS_ACTIONS,
        main_py: CALLS_PY,
    }
}

/// `base 2.0.0`, and `child` which depends on `base ^2.0`.
fn dependency_pair() -> [TestPlugin<'static>; 2] {
    [
        TestPlugin {
            name: "base",
            version: "2.0.0",
            entry: PYTHON,
            extra: PING_ACTIONS,
            main_py: PING_PY,
        },
        TestPlugin {
            name: "child",
            version: "1.0.0",
            entry: PYTHON,
            extra: "\n[dependencies]\nbase = \"^2.0\"\n[[actions]]\nname = \"ping\"\ndescription = \"Answers pong\"\n",
            main_py: PING_PY,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_routes_answer_with_the_right_status_and_code() {
    let t = TestHost::start(&[calls_plugin()]).await;

    // Both call routes reach the action.
    for uri in ["/plugin/calls/greet", "/api/v1/plugins/calls/actions/greet"] {
        let body = t.check("POST", uri, r#"{"name":"Ada"}"#, "200").await;
        assert_eq!(body, json!({"value": {"message": "Hello, Ada!"}}), "{uri}");
    }
    // An empty body is the payload `{}`.
    let body = t.check("POST", "/plugin/calls/echo", "", "200").await;
    assert_eq!(body, json!({"value": {}}));

    let oversized = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2048));
    let cases: &[(&str, &str, &str, &str)] = &[
        ("POST", "/plugin/nope/greet", "{}", "404 plugin_not_found"),
        (
            "POST",
            "/api/v1/plugins/nope/actions/greet",
            "{}",
            "404 plugin_not_found",
        ),
        ("POST", "/plugin/calls/nope", "{}", "404 action_not_found"),
        (
            "POST",
            "/api/v1/plugins/calls/actions/nope",
            "{}",
            "404 action_not_found",
        ),
        // Not even a valid action name.
        (
            "POST",
            "/plugin/calls/NOT%20AN%20ACTION",
            "{}",
            "404 action_not_found",
        ),
        ("POST", "/plugin/calls/greet", "{not json", "400 bad_json"),
        (
            "POST",
            "/plugin/calls/greet",
            r#"{"name":"Ada""#,
            "400 bad_json",
        ),
        ("POST", "/plugin/calls/greet", "{}", "400 bad_payload"),
        (
            "POST",
            "/plugin/calls/greet",
            r#"{"name":42}"#,
            "400 bad_payload",
        ),
        ("POST", "/plugin/calls/boom", "{}", "502 plugin_failed"),
        ("POST", "/plugin/calls/slow", "{}", "504 plugin_timeout"),
        (
            "POST",
            "/plugin/calls/echo",
            &oversized,
            "413 payload_too_large",
        ),
        ("GET", "/nope", "", "404 not_found"),
        ("GET", "/api/v1/nope", "", "404 not_found"),
        // Below a plugin, only the named operations exist.
        ("GET", "/api/v1/plugins/calls/nope", "", "404 not_found"),
        ("POST", "/api/v1/plugins/calls/explode", "", "404 not_found"),
    ];
    for &(method, uri, body, expect) in cases {
        t.check(method, uri, body, expect).await;
    }

    // Routing errors say what was asked and where to look.
    let body = t
        .check("GET", "/api/v1/plugins/calls/nope", "", "404 not_found")
        .await;
    assert_eq!(
        body["error"]["message"],
        "No route `/api/v1/plugins/calls/nope`; hint: calls are `POST /plugin/NAME/ACTION`, the plugins are listed at `GET /api/v1/plugins`"
    );
    let body = t
        .check("GET", "/plugin/calls/greet", "", "405 method_not_allowed")
        .await;
    assert_eq!(
        body["error"]["message"],
        "Route `/plugin/calls/greet` does not accept `GET`; hint: actions and lifecycle operations are `POST`"
    );
    // A body over the limit says the limit and how to raise it.
    let body = t
        .check(
            "POST",
            "/plugin/calls/echo",
            &oversized,
            "413 payload_too_large",
        )
        .await;
    assert_eq!(
        body["error"]["message"],
        "Request body is larger than the limit of 1024 bytes; hint: send a smaller payload, or raise the limit with `plugd serve --max-body BYTES`"
    );

    // The plugin's exception message reaches the caller.
    let body = t
        .check("POST", "/plugin/calls/boom", "{}", "502 plugin_failed")
        .await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("kaboom: the disk is full"), "{message}");
    // A timed-out call says which plugin and action.
    let body = t
        .check("POST", "/plugin/calls/slow", "{}", "504 plugin_timeout")
        .await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`calls`") && message.contains("`slow`"),
        "{message}"
    );

    // The plugin keeps serving after a failure and a timeout.
    t.check("POST", "/plugin/calls/greet", r#"{"name":"Bo"}"#, "200")
        .await;

    // Errors produced by axum's own routing and extractors are JSON too.
    t.check("GET", "/plugin/calls/greet", "", "405 method_not_allowed")
        .await;
    t.check("DELETE", "/api/v1/plugins", "", "405 method_not_allowed")
        .await;
    t.check("POST", "/healthz", "", "405 method_not_allowed")
        .await;
    t.check(
        "GET",
        "/api/v1/plugins/calls/logs?limit=abc",
        "",
        "400 bad_request",
    )
    .await;

    let health = t.check("GET", "/healthz", "", "200").await;
    assert_eq!(
        health,
        json!({"status": "ok", "plugins": {"total": 1, "running": 1, "failed": 0}})
    );

    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_list_show_and_run_the_lifecycle() {
    // Its entry program does not exist, so `broken` fails to start.
    let broken = TestPlugin {
        name: "broken",
        version: "0.1.0",
        entry: r#"["no-such-program-plugd"]"#,
        extra: "",
        main_py: PING_PY,
    };
    let [base, child] = dependency_pair();
    let t = TestHost::start(&[base, child, broken]).await;

    // The list and its admin alias agree.
    let list = t.check("GET", "/api/v1/plugins", "", "200").await;
    let alias = t.check("GET", "/api/admin/v1/plugins", "", "200").await;
    // Metrics move between two requests (the disk quota check measures in the background).
    let without_metrics = |mut v: Value| {
        for p in v["plugins"].as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("metrics");
        }
        v
    };
    assert_eq!(without_metrics(list.clone()), without_metrics(alias));
    let names: Vec<&str> = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "broken", "child"]);

    let base = t.check("GET", "/api/v1/plugins/base", "", "200").await;
    assert_eq!(
        summary(&base),
        json!({
            "name": "base", "state": "running", "version": "2.0.0", "kind": "other",
            "runtime": "process", "wave": 0, "actions": ["ping"], "reason": null,
            "last_error": null, "dependencies": [],
        })
    );
    assert!(base["pid"].as_u64().is_some(), "{base}");
    let child = t.check("GET", "/api/v1/plugins/child", "", "200").await;
    assert_eq!(summary(&child)["wave"], 1);
    assert_eq!(
        summary(&child)["dependencies"],
        json!([{"name": "base", "requirement": "^2.0"}])
    );
    let broken = t.check("GET", "/api/v1/plugins/broken", "", "200").await;
    assert_eq!(broken["state"], "failed", "{broken}");
    let reason = broken["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no-such-program-plugd"), "{broken}");
    t.check("GET", "/api/v1/plugins/nope", "", "404 plugin_not_found")
        .await;

    let health = t.check("GET", "/healthz", "", "200").await;
    assert_eq!(
        health["plugins"],
        json!({"total": 3, "running": 2, "failed": 1})
    );

    // Unloading a dependency stops its dependant first; unload is idempotent.
    for _ in 0..2 {
        let base = t
            .check("POST", "/api/v1/plugins/base/unload", "", "200")
            .await;
        assert_eq!(base["state"], "stopped", "{base}");
    }
    let child = t.check("GET", "/api/v1/plugins/child", "", "200").await;
    assert_eq!(child["state"], "stopped", "{child}");
    let reason = child["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("`base`"), "{child}");
    t.check("POST", "/plugin/base/ping", "{}", "503 plugin_not_running")
        .await;
    t.check("POST", "/plugin/child/ping", "{}", "503 plugin_not_running")
        .await;

    // Loading the dependant brings its dependency back; load is idempotent.
    for _ in 0..2 {
        let child = t
            .check("POST", "/api/v1/plugins/child/load", "", "200")
            .await;
        assert_eq!(child["state"], "running", "{child}");
    }
    let base = t.check("GET", "/api/v1/plugins/base", "", "200").await;
    assert_eq!(base["state"], "running", "{base}");
    assert_eq!(
        t.check("POST", "/plugin/child/ping", "{}", "200").await,
        json!({"value": "pong"})
    );

    // Reload is idempotent, and the dependant is running again afterwards.
    for _ in 0..2 {
        let base = t
            .check("POST", "/api/v1/plugins/base/reload", "", "200")
            .await;
        assert_eq!(base["state"], "running", "{base}");
    }
    let child = t.check("GET", "/api/v1/plugins/child", "", "200").await;
    assert_eq!(child["state"], "running", "{child}");

    // Reload picks up a changed manifest.
    std::fs::write(
        t.plugins.join("base/plugin.toml"),
        manifest("base", "2.1.0", PYTHON, PING_ACTIONS),
    )
    .unwrap();
    let base = t
        .check("POST", "/api/v1/plugins/base/reload", "", "200")
        .await;
    assert_eq!(
        (&base["state"], &base["version"]),
        (&json!("running"), &json!("2.1.0")),
        "{base}"
    );
    assert_eq!(
        t.check("POST", "/plugin/base/ping", "{}", "200").await,
        json!({"value": "pong"})
    );

    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "POST",
            "/api/v1/plugins/broken/load",
            "",
            "409 plugin_cannot_load",
        ),
        (
            "POST",
            "/plugin/broken/ping",
            "{}",
            "503 plugin_not_running",
        ),
        ("POST", "/api/v1/plugins/base/explode", "", "404 not_found"),
        (
            "POST",
            "/api/v1/plugins/nope/load",
            "",
            "404 plugin_not_found",
        ),
        (
            "POST",
            "/api/v1/plugins/nope/unload",
            "",
            "404 plugin_not_found",
        ),
        (
            "POST",
            "/api/v1/plugins/nope/reload",
            "",
            "404 plugin_not_found",
        ),
        (
            "GET",
            "/api/v1/plugins/nope/logs",
            "",
            "404 plugin_not_found",
        ),
    ];
    for &(method, uri, body, expect) in cases {
        t.check(method, uri, body, expect).await;
    }

    // The log ring records the lifecycle.
    let logs = t
        .check("GET", "/api/v1/plugins/base/logs?limit=100", "", "200")
        .await;
    let messages: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(messages.contains(&"Reloaded `base 2.1.0`"), "{messages:?}");
    assert!(
        messages.contains(&"Stopped `base 2.0.0`: unloaded"),
        "{messages:?}"
    );

    t.host.shutdown().await;
}

/// The fields of a plugin the admin API promises, actions reduced to their names.
fn summary(p: &Value) -> Value {
    let actions: Vec<&Value> = p["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["name"])
        .collect();
    json!({
        "name": p["name"], "state": p["state"], "version": p["version"], "kind": p["kind"],
        "runtime": p["runtime"], "wave": p["wave"], "actions": actions, "reason": p["reason"],
        "last_error": p["last_error"], "dependencies": p["dependencies"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_until_the_start_wave_is_done() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let host = Host::builder(HostConfig::new(&plugins, tmp.path().join("state"))).build();
    let readiness = Readiness::pending();
    let app = router(
        host.clone(),
        ServerConfig {
            readiness: readiness.clone(),
            ..ServerConfig::default()
        },
    );
    let t = TestHost {
        host,
        app,
        plugins,
        _tmp: tmp,
    };
    let health = t.check("GET", "/healthz", "", "200").await;
    assert_eq!(health["status"], "ok");
    let (status, _, body) = t.raw("GET", "/readyz", "").await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "starting", "plugins": {"total": 0, "running": 0, "failed": 0}})
        )
    );
    t.host.start().await.unwrap();
    readiness.set_ready();
    let ready = t.check("GET", "/readyz", "", "200").await;
    assert_eq!(ready["status"], "ready");
    // A router built with the default config is ready at once.
    assert!(ServerConfig::default().readiness.is_ready());
}

/// What a `tracing` subscriber writes, shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One thread: the subscriber set for the test's thread sees the requests it serves.
#[tokio::test(flavor = "current_thread")]
async fn requests_are_traced_only_when_the_log_filter_asks_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let host = Host::builder(HostConfig::new(&plugins, tmp.path().join("state"))).build();
    for (level, traced) in [(tracing::Level::INFO, false), (tracing::Level::DEBUG, true)] {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer({
                let captured = captured.clone();
                move || captured.clone()
            })
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let t = TestHost {
            host: host.clone(),
            app: router(host.clone(), ServerConfig::default()),
            plugins: plugins.clone(),
            _tmp: tempfile::tempdir().unwrap(),
        };
        t.check("GET", "/healthz", "", "200").await;
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.contains("finished processing request"),
            traced,
            "{level}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_warnings_are_in_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    let dir = plugins.join("legacy");
    std::fs::create_dir_all(&dir).unwrap();
    // A seed-style `plugin.json`: the entry is defaulted, with a warning.
    std::fs::write(
        dir.join("plugin.json"),
        r#"{"name": "legacy", "version": "1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(dir.join("main.py"), PING_PY).unwrap();
    let mut process = ProcessConfig::default();
    process
        .base_env
        .push(("PYTHONPATH".into(), sdk_dir().into_os_string()));
    let host = Host::builder(HostConfig::new(&plugins, tmp.path().join("state")))
        .runtime(Arc::new(ProcessRuntime::new(process)))
        .build();
    host.start().await.unwrap();
    let t = TestHost {
        app: router(host.clone(), ServerConfig::default()),
        host,
        plugins,
        _tmp: tmp,
    };
    let expected =
        json!(["No `entry` given; running `python3 main.py` as the seed did; hint: set `entry`",]);
    let legacy = t.check("GET", "/api/v1/plugins/legacy", "", "200").await;
    assert_eq!(legacy["warnings"], expected, "{legacy}");
    let list = t.check("GET", "/api/v1/plugins", "", "200").await;
    assert_eq!(list["plugins"][0]["warnings"], expected, "{list}");
    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_server_timeout_is_a_json_504() {
    let mut t = TestHost::start(&[calls_plugin()]).await;
    t.app = router(
        t.host.clone(),
        ServerConfig {
            request_timeout: Duration::from_millis(100),
            ..ServerConfig::default()
        },
    );
    // `slow` sleeps 2 s; its own call timeout (300 ms) is longer than the server's.
    let body = t
        .check("POST", "/plugin/calls/slow", "{}", "504 request_timeout")
        .await;
    assert_eq!(
        body["error"]["message"],
        "The request took longer than 100 ms and was cancelled; hint: raise the limit with `plugd serve --request-timeout SECONDS`"
    );
    // The plugin serves the next call.
    t.check("POST", "/plugin/calls/greet", r#"{"name":"Bo"}"#, "200")
        .await;
    t.host.shutdown().await;
}

/// A plugin with params, kv writes and a view of the params it was given.
const SETTINGS_PY: &str = r#"
from plugd import Plugin

plugin = Plugin()


@plugin.action(description="Stores each key of the payload in one commit")
async def save(payload):
    return await plugin.kv.commit(puts=payload)


@plugin.action(description="The params the plugin holds now")
async def current(payload):
    return plugin.params


if __name__ == "__main__":
    plugin.run()
"#;

const SETTINGS_TOML: &str = r#"
[permissions]
services = ["kv"]

[params]
type = "object"
additionalProperties = false
[params.properties.batch_size]
type = "integer"
minimum = 1
default = 8
[params.properties.threshold]
type = "number"
minimum = 0
maximum = 1
default = 0.5

[[actions]]
name = "save"
description = "Stores each key of the payload in one commit"

[[actions]]
name = "current"
description = "The params the plugin holds now"
"#;

fn settings_plugin() -> TestPlugin<'static> {
    TestPlugin {
        name: "settings",
        version: "1.0.0",
        entry: PYTHON,
        extra: SETTINGS_TOML,
        main_py: SETTINGS_PY,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_routes_read_replace_patch_and_refuse_with_every_violation() {
    let t = TestHost::start(&[settings_plugin(), calls_plugin()]).await;
    let url = "/api/v1/plugins/settings/params";

    let got = t.check("GET", url, "", "200").await;
    assert_eq!(got["params"], json!({"batch_size": 8, "threshold": 0.5}));
    assert_eq!(got["schema"]["properties"]["batch_size"]["type"], "integer");
    // A plugin without `[params]` has none, and no schema.
    let none = t
        .check("GET", "/api/v1/plugins/calls/params", "", "200")
        .await;
    assert_eq!(none, json!({"params": {}, "schema": null}));

    // PATCH changes one key; PUT replaces the whole (keys left out take their defaults).
    let patched = t.check("PATCH", url, r#"{"batch_size": 32}"#, "200").await;
    assert_eq!(
        patched,
        json!({"params": {"batch_size": 32, "threshold": 0.5}})
    );
    let put = t.check("PUT", url, r#"{"threshold": 0.9}"#, "200").await;
    assert_eq!(put, json!({"params": {"batch_size": 8, "threshold": 0.9}}));
    // The running plugin got the new value.
    let current = t
        .check("POST", "/plugin/settings/current", "{}", "200")
        .await;
    assert_eq!(current["value"], json!({"batch_size": 8, "threshold": 0.9}));

    // Every violation is listed with its pointer, and nothing is stored.
    let refused = t
        .check(
            "PATCH",
            url,
            r#"{"batch_size": 0, "threshold": 2, "colour": "red"}"#,
            "400 bad_params",
        )
        .await;
    let violations = refused["error"]["violations"].as_array().unwrap();
    let pointers: Vec<&str> = violations
        .iter()
        .map(|v| v["pointer"].as_str().unwrap())
        .collect();
    assert!(
        pointers.contains(&"/batch_size") && pointers.contains(&"/threshold"),
        "{refused}"
    );
    assert!(
        violations
            .iter()
            .all(|v| !v["message"].as_str().unwrap().is_empty()),
        "{refused}"
    );
    assert_eq!(violations.len(), 3, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("The params of plugin `settings` were not changed: ")
            && message
                .ends_with("hint: `plugd params settings` shows the schema and the current values"),
        "{message}"
    );
    let not_an_object = t.check("PUT", url, "[1]", "400 bad_params").await;
    assert_eq!(
        not_an_object["error"]["violations"],
        json!([{"pointer": "", "message": "params must be a JSON object"}])
    );
    let got = t.check("GET", url, "", "200").await;
    assert_eq!(got["params"], json!({"batch_size": 8, "threshold": 0.9}));

    // The history has each stored change, newest first, with who made it.
    let history = t
        .check(
            "GET",
            "/api/v1/plugins/settings/params/history?limit=5",
            "",
            "200",
        )
        .await;
    let revisions: Vec<(u64, Value, &str)> = history["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["revision"].as_u64().unwrap(),
                r["params"].clone(),
                r["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        revisions,
        [
            (2, json!({"batch_size": 8, "threshold": 0.9}), "api"),
            (1, json!({"batch_size": 32, "threshold": 0.5}), "api"),
        ]
    );
    let one = t
        .check(
            "GET",
            "/api/v1/plugins/settings/params/history?limit=1",
            "",
            "200",
        )
        .await;
    assert_eq!(one["revisions"].as_array().unwrap().len(), 1);

    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "GET",
            "/api/v1/plugins/nope/params",
            "",
            "404 plugin_not_found",
        ),
        (
            "PUT",
            "/api/v1/plugins/nope/params",
            "{}",
            "404 plugin_not_found",
        ),
        (
            "PATCH",
            "/api/v1/plugins/nope/params",
            "{}",
            "404 plugin_not_found",
        ),
        (
            "GET",
            "/api/v1/plugins/nope/params/history",
            "",
            "404 plugin_not_found",
        ),
        ("PUT", url, "{not json", "400 bad_json"),
        ("POST", url, "{}", "405 method_not_allowed"),
        (
            "GET",
            "/api/v1/plugins/settings/params/history?limit=x",
            "",
            "400 bad_request",
        ),
    ];
    for &(method, uri, body, expect) in cases {
        t.check(method, uri, body, expect).await;
    }
    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_route_pages_through_a_plugins_entries() {
    let t = TestHost::start(&[settings_plugin()]).await;
    t.check(
        "POST",
        "/plugin/settings/save",
        r#"{"img/1": {"tag": "cat"}, "img/2": {"tag": "dog"}, "img/3": null, "other": 1}"#,
        "200",
    )
    .await;
    let all = t
        .check("GET", "/api/v1/plugins/settings/kv", "", "200")
        .await;
    assert_eq!(
        all,
        json!({"items": [
            {"key": "img/1", "value": {"tag": "cat"}},
            {"key": "img/2", "value": {"tag": "dog"}},
            {"key": "img/3", "value": null},
            {"key": "other", "value": 1},
        ], "next": null})
    );
    let page = t
        .check(
            "GET",
            "/api/v1/plugins/settings/kv?prefix=img/&limit=2",
            "",
            "200",
        )
        .await;
    assert_eq!(
        page,
        json!({"items": [
            {"key": "img/1", "value": {"tag": "cat"}},
            {"key": "img/2", "value": {"tag": "dog"}},
        ], "next": "img/2"})
    );
    let rest = t
        .check(
            "GET",
            "/api/v1/plugins/settings/kv?prefix=img/&limit=2&after=img/2",
            "",
            "200",
        )
        .await;
    assert_eq!(
        rest,
        json!({"items": [{"key": "img/3", "value": null}], "next": null})
    );
    // Read-only: no write method exists on the route.
    t.check(
        "PUT",
        "/api/v1/plugins/settings/kv",
        "{}",
        "405 method_not_allowed",
    )
    .await;
    t.check("GET", "/api/v1/plugins/nope/kv", "", "404 plugin_not_found")
        .await;
    t.check(
        "GET",
        "/api/v1/plugins/settings/kv?limit=-1",
        "",
        "400 bad_request",
    )
    .await;
    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_uninstalls_with_or_without_the_data() {
    let [base, child] = dependency_pair();
    let t = TestHost::start(&[base, child, settings_plugin()]).await;

    // Keeping the data: the kv survives a reinstall.
    t.check("POST", "/plugin/settings/save", r#"{"k": "v"}"#, "200")
        .await;
    let gone = t
        .check(
            "DELETE",
            "/api/v1/plugins/settings?keep_data=true",
            "",
            "200",
        )
        .await;
    assert_eq!(
        (&gone["state"], &gone["also_stopped"]),
        (&json!("uninstalled"), &json!([])),
        "{gone}"
    );
    t.check(
        "POST",
        "/plugin/settings/current",
        "{}",
        "503 plugin_not_running",
    )
    .await;
    let loaded = t
        .check("POST", "/api/v1/plugins/settings/load", "", "200")
        .await;
    assert_eq!(loaded["state"], "running", "{loaded}");
    let kv = t
        .check("GET", "/api/v1/plugins/settings/kv", "", "200")
        .await;
    assert_eq!(kv["items"], json!([{"key": "k", "value": "v"}]));

    // Without: the kv and params go, and the running dependant is stopped first.
    t.check(
        "PATCH",
        "/api/v1/plugins/settings/params",
        r#"{"batch_size": 2}"#,
        "200",
    )
    .await;
    let settings = t
        .check("DELETE", "/api/v1/plugins/settings", "", "200")
        .await;
    assert_eq!(settings["state"], "uninstalled", "{settings}");
    let base = t
        .check("DELETE", "/api/v1/plugins/base?keep_data=false", "", "200")
        .await;
    assert_eq!(
        (&base["state"], &base["also_stopped"]),
        (&json!("uninstalled"), &json!(["child"])),
        "{base}"
    );
    let list = t.check("GET", "/api/v1/plugins", "", "200").await;
    let states: Vec<(&str, &str)> = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("base", "uninstalled"),
            ("child", "stopped"),
            ("settings", "uninstalled")
        ]
    );
    t.check("POST", "/api/v1/plugins/settings/load", "", "200")
        .await;
    let kv = t
        .check("GET", "/api/v1/plugins/settings/kv", "", "200")
        .await;
    assert_eq!(kv["items"], json!([]));
    let params = t
        .check("GET", "/api/v1/plugins/settings/params", "", "200")
        .await;
    assert_eq!(params["params"], json!({"batch_size": 8, "threshold": 0.5}));

    let cases: &[(&str, &str, &str, &str)] = &[
        ("DELETE", "/api/v1/plugins/nope", "", "404 plugin_not_found"),
        (
            "DELETE",
            "/api/v1/plugins/settings?keep_data=maybe",
            "",
            "400 bad_request",
        ),
    ];
    for &(method, uri, body, expect) in cases {
        t.check(method, uri, body, expect).await;
    }
    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_of_a_start_are_warnings_in_the_api() {
    let t = TestHost::start(&[settings_plugin()]).await;
    t.check(
        "PATCH",
        "/api/v1/plugins/settings/params",
        r#"{"batch_size": 32}"#,
        "200",
    )
    .await;
    // Version 2 allows at most 16: the stored 32 no longer fits and is reset, with a note.
    let v2 = SETTINGS_TOML.replace("minimum = 1\n", "minimum = 1\nmaximum = 16\n");
    std::fs::write(
        t.plugins.join("settings/plugin.toml"),
        manifest("settings", "2.0.0", PYTHON, &v2),
    )
    .unwrap();
    let reloaded = t
        .check("POST", "/api/v1/plugins/settings/reload", "", "200")
        .await;
    assert_eq!(reloaded["version"], "2.0.0", "{reloaded}");
    assert_eq!(
        reloaded["warnings"],
        json!([
            "Params `batch_size` of plugin `settings` do not fit the schema of version 2.0.0 and were reset to their defaults; the old values are in the params history; hint: `plugd params settings` shows the current ones"
        ])
    );
    let params = t
        .check("GET", "/api/v1/plugins/settings/params", "", "200")
        .await;
    assert_eq!(params["params"], json!({"batch_size": 8, "threshold": 0.5}));
    t.host.shutdown().await;
}
