//! Golden frames: every frame kind of protocol v1 as `plugd-protocol` encodes it, one file each
//! under `tests/golden/`. The Python SDK's tests replay the same files (`test_golden.py`), so the
//! host and the SDK cannot drift apart. Run with `PLUGD_BLESS=1` to rewrite the files after a
//! deliberate protocol change (and update `docs/protocol.md`).

use std::path::PathBuf;

use plugd_protocol::{
    CallParams, CancelParams, EmitParams, EventParams, Hello, HelloAction, InitLimits, Initialize,
    LogParams, Message, ParamsChangedParams, ProgressParams, RpcError, StartedParams,
    TaskRunParams, codes, encode_error, encode_notification, encode_request, encode_result,
    host_codes,
};
use serde_json::json;
use serde_json::value::RawValue;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Every golden frame, by file stem, as encoded by this crate.
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |name: &'static str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut buf = Vec::new();
        f(&mut buf);
        out.push((name, buf));
    };
    let payload = RawValue::from_string(r#"{"name":"Ada"}"#.to_owned()).unwrap();

    // Plugin → host.
    add("hello", &|b| {
        encode_request(
            b,
            1,
            "hello",
            &Hello {
                protocol: 1,
                sdk: Some("python/0.1.0".into()),
                actions: Some(vec![HelloAction {
                    name: "greet".into(),
                    description: "Greets someone".into(),
                }]),
                on_start: false,
                http_handoff: false,
            },
        )
    });
    // A child with `on_start` hooks says so in `hello`, and after the `initialize` answer sends
    // `started` once they ran: `{}` when they succeeded, the first failure otherwise.
    add("hello_on_start", &|b| {
        encode_request(
            b,
            1,
            "hello",
            &Hello {
                protocol: 1,
                sdk: Some("python/0.1.0".into()),
                actions: Some(vec![HelloAction {
                    name: "greet".into(),
                    description: "Greets someone".into(),
                }]),
                on_start: true,
                http_handoff: false,
            },
        )
    });
    // A child that serves its own HTTP and adopts handed-over WebSockets (`serve_asgi`).
    add("hello_http_handoff", &|b| {
        encode_request(
            b,
            1,
            "hello",
            &Hello {
                protocol: 1,
                sdk: Some("python/0.1.0".into()),
                actions: None,
                on_start: false,
                http_handoff: true,
            },
        )
    });
    add("started", &|b| {
        encode_notification(b, "started", &StartedParams::default())
    });
    add("started_error", &|b| {
        encode_notification(
            b,
            "started",
            &StartedParams {
                error: Some("ValueError: no model in the data dir".into()),
            },
        )
    });
    add("result", &|b| {
        encode_result(b, 2, &json!({"value": {"message": "Hello, Ada!"}}))
    });
    add("error", &|b| {
        encode_error(
            b,
            2,
            &RpcError {
                code: codes::ACTION_FAILED,
                message: "boom".into(),
                data: Some(json!({"type": "ValueError"})),
            },
        )
    });
    add("client_error", &|b| {
        encode_error(
            b,
            2,
            &RpcError {
                code: codes::CLIENT_ERROR,
                message: "no such image".into(),
                data: Some(json!({"type": "ClientError", "code": "not_found", "status": 404})),
            },
        )
    });
    add("log", &|b| {
        encode_notification(
            b,
            "log",
            &LogParams {
                level: Some("warning".into()),
                message: "careful".into(),
                logger: Some("hello".into()),
                call: Some(2),
            },
        )
    });
    add("progress", &|b| {
        encode_notification(
            b,
            "progress",
            &ProgressParams {
                call: Some(2),
                task: None,
                fraction: Some(0.5),
                message: Some("half".into()),
            },
        )
    });
    // Progress of a task: `task` is the `id` of `task_run` (the task's id, not the request's).
    add("progress_task", &|b| {
        encode_notification(
            b,
            "progress",
            &ProgressParams {
                call: None,
                task: Some(12),
                fraction: Some(0.25),
                message: Some("embedding".into()),
            },
        )
    });
    add("emit", &|b| {
        encode_request(
            b,
            3,
            "emit",
            &EmitParams {
                topic: "image.imported".into(),
                payload: json!({"id": 7}),
            },
        )
    });

    // Host → plugin.
    add("initialize", &|b| {
        encode_result(
            b,
            1,
            &Initialize {
                protocol: 1,
                plugin: "hello",
                version: "0.1.0".into(),
                params: &json!({"quality": 80}),
                data_dir: "/var/lib/plugd/data/hello",
                services: vec!["kv"],
                limits: InitLimits {
                    call_timeout_ms: 5000,
                    concurrency: 4,
                    memory: 268_435_456,
                    cpu_ms: 10_000,
                },
                http_secret: None,
            },
        )
    });
    // A plugin with an `[http]` table also gets the secret of its HTTP side.
    add("initialize_http", &|b| {
        encode_result(
            b,
            1,
            &Initialize {
                protocol: 1,
                plugin: "web",
                version: "0.1.0".into(),
                params: &json!({}),
                data_dir: "/var/lib/plugd/data/web",
                services: vec![],
                limits: InitLimits {
                    call_timeout_ms: 5000,
                    concurrency: 64,
                    memory: 268_435_456,
                    cpu_ms: 10_000,
                },
                http_secret: Some(
                    "5f0c1d2e3a4b59687766554433221100ffeeddccbbaa99887766554433221100",
                ),
            },
        )
    });
    add("call", &|b| {
        encode_request(
            b,
            2,
            "call",
            &CallParams {
                action: "greet",
                payload: &payload,
                deadline_ms: 5000,
                chain: Vec::new(),
            },
        )
    });
    add("call_chain", &|b| {
        let payload = RawValue::from_string(
            r#"{"plugin":"store","action":"put","payload":{"key":"a","value":1}}"#.to_owned(),
        )
        .unwrap();
        encode_request(
            b,
            5,
            "call",
            &CallParams {
                action: "relay",
                payload: &payload,
                deadline_ms: 5000,
                chain: vec!["gallery"],
            },
        )
    });
    add("params_changed", &|b| {
        encode_notification(
            b,
            "params.changed",
            &ParamsChangedParams {
                params: &json!({"quality": 90, "batch_size": 8}),
            },
        )
    });
    add("cancel", &|b| {
        encode_notification(b, "cancel", &CancelParams { id: 2 })
    });
    // An event is a request: answered `null` once the handlers ran, or an error.
    add("event", &|b| {
        encode_request(
            b,
            7,
            "event",
            &EventParams {
                topic: "image.imported",
                payload: &payload,
            },
        )
    });
    add("event_result", &|b| {
        encode_result(b, 7, &serde_json::Value::Null)
    });
    add("event_error", &|b| {
        encode_error(
            b,
            7,
            &RpcError {
                code: codes::ACTION_FAILED,
                message: "cannot handle Ada".into(),
                data: Some(json!({"type": "ValueError"})),
            },
        )
    });
    // Tasks: a run, its result, a retryable failure (`data.code` = `plugd_runtime::TASK_RETRY`)
    // and a run that stopped after `cancel` (`TASK_CANCELLED`); the after-last hook of a key.
    add("task_run", &|b| {
        encode_request(
            b,
            8,
            "task.run",
            &TaskRunParams {
                id: 12,
                task: "embed",
                payload: &payload,
                key: Some("index"),
                attempt: 1,
                deadline_ms: 600_000,
            },
        )
    });
    add("task_result", &|b| {
        encode_result(b, 8, &json!({"name": "Ada", "vector": [0.5, 0.25]}))
    });
    add("task_retry", &|b| {
        encode_error(
            b,
            8,
            &RpcError {
                code: codes::ACTION_FAILED,
                message: "the GPU is busy".into(),
                data: Some(json!({"type": "Retry", "code": "retry"})),
            },
        )
    });
    add("task_cancelled", &|b| {
        encode_error(
            b,
            8,
            &RpcError {
                code: codes::ACTION_FAILED,
                message: "The task was cancelled".into(),
                data: Some(json!({"type": "CancelledError", "code": "cancelled"})),
            },
        )
    });
    add("task_after_last", &|b| {
        let payload = RawValue::from_string(r#"{"key":"index"}"#.to_owned()).unwrap();
        encode_request(
            b,
            9,
            "task.run",
            &TaskRunParams {
                id: 13,
                task: "@after_last",
                payload: &payload,
                key: Some("index"),
                attempt: 1,
                deadline_ms: 600_000,
            },
        )
    });
    add("ping", &|b| encode_request(b, 4, "ping", &json!({})));
    add("pong", &|b| encode_result(b, 4, "pong"));
    add("shutdown", &|b| {
        encode_notification(b, "shutdown", &json!({}))
    });
    add("emit_result", &|b| {
        encode_result(b, 3, &serde_json::Value::Null)
    });
    add("emit_refused", &|b| {
        encode_error(
            b,
            3,
            &RpcError {
                code: codes::NOT_GRANTED,
                message: "Service `events` is not granted to plugin `hello`; hint: add it to `permissions.services` in `plugin.toml`".into(),
                data: Some(json!({"code": host_codes::NOT_GRANTED})),
            },
        )
    });
    out.extend(host_services());
    out
}

/// The host services a plugin asks for (`docs/protocol.md`, "Host services"): each request as the
/// Python SDK sends it and an answer of the host. The process runtime passes these params and
/// results through untouched (`HostCalls::request`), so they are spelled out here as JSON.
fn host_services() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |name: &'static str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut buf = Vec::new();
        f(&mut buf);
        out.push((name, buf));
    };
    let request = |method: &'static str, params: serde_json::Value| {
        move |b: &mut Vec<u8>| encode_request(b, 6, method, &params)
    };
    let result = |result: serde_json::Value| move |b: &mut Vec<u8>| encode_result(b, 6, &result);
    add("kv_get", &request("kv.get", json!({"key": "img/a"})));
    add(
        "kv_get_result",
        &result(json!({"found": true, "value": {"w": 640}})),
    );
    add("kv_get_missing", &result(json!({"found": false})));
    add(
        "kv_set",
        &request("kv.set", json!({"key": "img/a", "value": {"w": 640}})),
    );
    add("kv_set_result", &result(json!({"commit": 7})));
    add("kv_delete", &request("kv.delete", json!({"key": "img/a"})));
    add("kv_delete_result", &result(json!({"commit": 8})));
    // The second page of `kv.list("img/")`: the first answer's `next` is passed as `after`.
    add(
        "kv_list",
        &request("kv.list", json!({"prefix": "img/", "after": "img/a"})),
    );
    add(
        "kv_list_result",
        &result(json!({"items": [{"key": "img/b", "value": 2}], "next": null})),
    );
    add(
        "kv_commit",
        &request(
            "kv.commit",
            json!({"puts": {"img/a": 1, "img/b": 2}, "deletes": ["img/c"], "expect": {"img/a": 0, "img/d": null}}),
        ),
    );
    add("kv_commit_result", &result(json!({"commit": 9})));
    add("kv_undo", &request("kv.undo", json!({})));
    add("kv_undo_result", &result(json!({"commit": 9})));
    add("kv_redo", &request("kv.redo", json!({})));
    add("kv_redo_result", &result(json!({"commit": null})));
    add("params_get", &request("params.get", json!({})));
    add(
        "params_get_result",
        &result(json!({"params": {"quality": 90, "batch_size": 8}})),
    );
    // Made while handling `call_chain`: its chain comes back, and `deadline_ms` is what is
    // left of that call's 5000 ms (the SDK's tests compare it as "at most").
    add(
        "plugin_call",
        &request(
            "plugin.call",
            json!({"plugin": "store", "action": "put", "payload": {"key": "a", "value": 1},
                   "context": {"chain": ["gallery"], "deadline_ms": 4990}}),
        ),
    );
    // The callee's whole result object, in the documented shape.
    add(
        "plugin_call_result",
        &result(json!({
            "value": {"stored": 1},
            "notifications": [{"level": "success", "title": "Stored", "message": "1 item stored",
                               "data": {"keys": ["a"]},
                               "actions": [{"action": "undo", "label": "Undo", "payload": {"commit": 9}}]}],
            "groups": [{"id": "g1", "key": "sharp", "name": "Sharp ones", "members": ["a", "b"],
                        "score": 0.9, "scores": {"sharpness": 0.8}}],
        })),
    );
    add(
        "service_call",
        &request(
            "service.call",
            json!({"service": "db", "method": "query", "params": {"sql": "select 1"}}),
        ),
    );
    add("service_call_result", &result(json!({"rows": [[1]]})));
    add(
        "env_get",
        &request("env.get", json!({"name": "CLIENT_MANAGER_PORT"})),
    );
    add("env_get_result", &result(json!({"value": "10000"})));
    add("env_get_missing", &result(json!({"value": null})));
    // `plugin.submit("embed", {"name": "Ada"}, key="index", priority=True)`: the SDK leaves out
    // the options at their defaults.
    add(
        "task_submit",
        &request(
            "task.submit",
            json!({"task": "embed", "payload": {"name": "Ada"}, "key": "index", "priority": true}),
        ),
    );
    add(
        "task_submit_result",
        &result(json!({"id": 12, "deduped": false})),
    );
    add("service_error", &|b| {
        encode_error(
            b,
            6,
            &RpcError {
                code: codes::SERVICE_ERROR,
                message: "Key `img/a` changed since it was read; hint: read it again and retry"
                    .into(),
                data: Some(json!({"code": "conflict"})),
            },
        )
    });
    // An action's full result as the SDK's `ActionResult` encodes it; unknown top-level
    // fields (`urls`) pass through.
    add("result_full", &|b| {
        encode_result(
            b,
            2,
            &json!({
                "value": {"n": 2},
                "notifications": [{"level": "warning", "title": "Careful", "message": "It is hot",
                                   "data": {"t": 40},
                                   "actions": [{"action": "cool", "label": "Cool down", "payload": {"t": 20}}]},
                                  {"level": "info", "message": "Done"}],
                "groups": [{"id": "g1", "name": "pair", "members": [1, 2], "score": 0.5,
                            "scores": {"size": 1.0}},
                           {"key": "k", "name": "rest", "members": []}],
                "urls": ["https://example.com/a.png"],
            }),
        )
    });
    out
}

#[test]
fn golden_frames_match_the_files() {
    let bless = std::env::var_os("PLUGD_BLESS").is_some();
    let dir = golden_dir();
    let mut stale = Vec::new();
    for (name, frame) in frames() {
        let path = dir.join(format!("{name}.json"));
        if bless {
            std::fs::write(&path, &frame).unwrap();
            continue;
        }
        let want = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "Cannot read `{}`: {e}; hint: run with `PLUGD_BLESS=1`",
                path.display()
            )
        });
        if want != frame {
            stale.push(format!(
                "{name}: file {:?}\n   encoded {:?}",
                String::from_utf8_lossy(&want),
                String::from_utf8_lossy(&frame)
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "Golden frames differ (bless with `PLUGD_BLESS=1` if deliberate):\n{}",
        stale.join("\n")
    );
    // No file without a frame: the SDK replays every file in the directory.
    let names: Vec<String> = frames().iter().map(|(n, _)| format!("{n}.json")).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            names.contains(&file),
            "`{file}` is not produced by this test"
        );
    }
}

/// `kv_get` → `kv.get`, `plugin_call` → `plugin.call`.
fn service_method(name: &str) -> String {
    name.replacen('_', ".", 1)
}

#[test]
fn golden_frames_decode_as_what_they_are() {
    for (name, frame) in frames() {
        assert_eq!(frame.last(), Some(&b'\n'), "{name} ends with a newline");
        assert_eq!(
            frame.iter().filter(|&&b| b == b'\n').count(),
            1,
            "{name} is one line"
        );
        let message = Message::decode(&frame[..frame.len() - 1]).unwrap();
        let kind = match &message {
            Message::Request { method, .. } => format!("request {method}"),
            Message::Notification { method, .. } => format!("notification {method}"),
            Message::Response { result: Ok(_), .. } => "result".to_owned(),
            Message::Response { result: Err(e), .. } => format!("error {}", e.code),
        };
        let want = match name {
            "hello" | "call" | "ping" | "emit" | "event" => format!("request {name}"),
            "call_chain" => "request call".to_owned(),
            "hello_on_start" | "hello_http_handoff" => "request hello".to_owned(),
            "started" | "started_error" => "notification started".to_owned(),
            "task_run" | "task_after_last" => "request task.run".to_owned(),
            "log" | "progress" | "cancel" | "shutdown" => format!("notification {name}"),
            "progress_task" => "notification progress".to_owned(),
            "params_changed" => "notification params.changed".to_owned(),
            "result" | "result_full" | "initialize" | "initialize_http" | "pong"
            | "emit_result" => "result".to_owned(),
            "error" | "event_error" | "task_retry" | "task_cancelled" => {
                format!("error {}", codes::ACTION_FAILED)
            }
            "client_error" => format!("error {}", codes::CLIENT_ERROR),
            "emit_refused" => format!("error {}", codes::NOT_GRANTED),
            "service_error" => format!("error {}", codes::SERVICE_ERROR),
            n if n.ends_with("_result") || n.ends_with("_missing") => "result".to_owned(),
            n => format!("request {}", service_method(n)),
        };
        assert_eq!(kind, want, "{name}");
        // The plugin's frames parse into the host's typed params.
        if let Message::Request { method, params, .. } | Message::Notification { method, params } =
            message
        {
            let parsed = match method.as_str() {
                "hello" => serde_json::from_str::<Hello>(params.get())
                    .map(|h| assert_eq!(h.on_start, name == "hello_on_start", "{name}")),
                "started" => serde_json::from_str::<StartedParams>(params.get()).map(|p| {
                    assert_eq!(p.error.is_some(), name == "started_error", "{name}");
                }),
                "log" => serde_json::from_str::<LogParams>(params.get()).map(|_| ()),
                "progress" => serde_json::from_str::<ProgressParams>(params.get()).map(|p| {
                    let want = if name == "progress_task" {
                        (None, Some(12))
                    } else {
                        (Some(2), None)
                    };
                    assert_eq!((p.call, p.task), want, "{name}");
                }),
                "emit" => serde_json::from_str::<EmitParams>(params.get()).map(|_| ()),
                "cancel" => serde_json::from_str::<CancelParams>(params.get()).map(|_| ()),
                _ => Ok(()),
            };
            parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
