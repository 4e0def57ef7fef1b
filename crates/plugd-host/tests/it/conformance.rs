//! One conformance suite for every runtime: each behaviour below runs twice through the host,
//! once against a Python SDK process plugin (`conformance/plugin.py`) and once against a wasm
//! component (`plugd_wasm::test_guest`, world `plugd:plugin@0.2.0` with `lifecycle` and
//! `tasks`), with the same test body. The two plugins implement the same actions ([`ACTIONS`]),
//! event handling and tasks with the same semantics:
//! - events: the handler of `conformance.*` logs the topic of every delivery; a topic ending in
//!   `.broken` always fails, one ending in `.flaky` fails its first two deliveries (a counter in
//!   `kv`, which state must live in: a trap discards the wasm instance);
//! - tasks: `echo` returns `{"value": <payload>}`; `progress` reports 0.5 `halfway`, then echoes;
//!   `flaky` fails retryably (`retry`) on its first two runs (a counter in `kv`), then echoes;
//!   `spin` never finishes; there is no other task.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use plugd_host::{
    DEFAULT_MAX_ATTEMPTS, EVENT_ATTEMPTS, Host, HostConfig, HostError, PluginState, TaskState,
    TaskSubmit, TaskView,
};
use plugd_process::{ProcessConfig, ProcessRuntime, SandboxConfig};
use plugd_runtime::{LogSource, RuntimeError};
use plugd_wasm::{WasmConfig, WasmRuntime};
use serde_json::{Value, json};

use crate::support::{Fixture, call, info, log_text};

/// The actions both plugins announce, in order: `(name, description)`.
const ACTIONS: &[(&str, &str)] = &[
    ("echo", "Returns the payload"),
    ("fail", "Always fails"),
    ("reject", "Rejects its payload"),
    ("crash", "Dies in the middle of the call"),
    ("spin", "Never finishes"),
    ("grow", "Allocates past the memory limit"),
    ("log", "Logs a line, then echoes"),
    (
        "ask",
        "Asks the host for `kv.get` and returns the error text",
    ),
    (
        "emit",
        "Emits `test.emitted`, then echoes; a refusal is its answer",
    ),
    ("client", "Answers a 404 `not_found` client error"),
    ("forbidden", "Answers a client error with status 403"),
    ("host.kv.get", "Asks the host `kv.get`"),
    ("host.kv.set", "Asks the host `kv.set`"),
    ("host.kv.commit", "Asks the host `kv.commit`"),
    ("host.kv.undo", "Asks the host `kv.undo`"),
    ("host.plugin.call", "Asks the host `plugin.call`"),
];
const FAIL_CODE: &str = "boom";
const FAIL_MESSAGE: &str = "it failed on purpose";
const LOG_LINE: &str = "hello from the plugin";
const PLUGIN: &str = "conformance";

/// Generates one test per runtime for each behaviour: `conformance::process::NAME` and
/// `conformance::wasm::NAME` both run `NAME(flavor)`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Flavor::Process).await;
                }
            )*
        }
        mod wasm {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Flavor::Wasm).await;
                }
            )*
        }
    };
}

conformance! {
    handshake_announces_the_actions,
    echo_returns_the_payload_unchanged,
    unknown_action_is_action_not_found,
    guest_error_is_plugin_failed_with_its_message,
    bad_payload_is_bad_payload,
    call_timeout_is_plugin_timeout_and_the_plugin_recovers,
    memory_limit_fails_the_call_and_the_plugin_recovers,
    crash_fails_the_call_and_the_plugin_recovers,
    published_events_reach_the_subscriber,
    plugin_logs_reach_the_host,
    concurrent_calls_get_their_own_answers,
    saturation_is_overloaded,
    client_error_keeps_its_status_and_code,
    kv_commits_undo_through_the_host,
    plugins_call_their_dependencies,
    refused_emit_is_visible_to_the_plugin,
    ungranted_service_is_refused_to_the_guest,
    events_arrive_in_publish_order,
    failing_event_is_delivered_again_until_it_succeeds,
    event_failing_past_its_budget_is_dead_lettered,
    task_returns_its_result,
    task_progress_reaches_the_task,
    retryable_task_failure_is_retried_until_it_succeeds,
    cancelled_running_task_ends_cancelled_and_stopped,
    unknown_task_is_task_not_found,
}

/// Which runtime the plugin under test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    Process,
    Wasm,
}

/// A running host with the plugin `conformance` of the given flavour. `limits` is the body of
/// the manifest's `[limits]` table.
struct Env {
    host: Host,
    _fixture: Fixture,
}

impl Env {
    async fn start(flavor: Flavor, limits: &str) -> Env {
        Env::start_with(flavor, limits, "", false).await
    }

    /// [`Env::start`] with more manifest text, and optionally a process plugin `callee` (an SDK
    /// echo) that the plugin under test depends on.
    async fn start_with(flavor: Flavor, limits: &str, extra: &str, callee: bool) -> Env {
        // Sandboxed: `limits.memory` of a process plugin is enforced by the sandbox only.
        let f = Fixture::sandboxed();
        let dir = f.plugins().join(PLUGIN);
        std::fs::create_dir(&dir).unwrap();
        let (runtime, entry) = match flavor {
            Flavor::Process => {
                std::fs::write(dir.join("main.py"), include_str!("conformance/plugin.py")).unwrap();
                ("process", r#"["python3", "main.py"]"#)
            }
            Flavor::Wasm => {
                let guest = plugd_wasm::test_guest::TestGuest {
                    actions: ACTIONS
                        .iter()
                        .map(|(n, d)| (n.to_string(), d.to_string()))
                        .collect(),
                    fail_code: FAIL_CODE.into(),
                    fail_message: FAIL_MESSAGE.into(),
                    log_line: LOG_LINE.into(),
                    // `tasks` comes with `lifecycle` (whose `on-start` only logs).
                    lifecycle: true,
                    ..plugd_wasm::test_guest::TestGuest::new("0.2.0")
                };
                std::fs::write(dir.join("plugin.wasm"), guest.component()).unwrap();
                ("wasm", r#""plugin.wasm""#)
            }
        };
        let dependencies = if callee {
            let callee_dir = f.plugins().join("callee");
            std::fs::create_dir(&callee_dir).unwrap();
            std::fs::write(
                callee_dir.join("plugin.toml"),
                "[plugin]\nname = \"callee\"\nversion = \"1.0.0\"\nruntime = \"process\"\nentry = [\"python3\", \"main.py\"]\n",
            )
            .unwrap();
            std::fs::write(
                callee_dir.join("main.py"),
                "from plugd import Plugin\nplugin = Plugin()\n@plugin.action()\nasync def echo(p):\n    return p\nplugin.run()\n",
            )
            .unwrap();
            set_readable(&callee_dir);
            "[dependencies]\ncallee = \"^1\"\n"
        } else {
            ""
        };
        let manifest = format!(
            "[plugin]\nname = \"{PLUGIN}\"\nversion = \"1.0.0\"\nruntime = \"{runtime}\"\nentry = {entry}\n\
             {dependencies}{extra}\
             [events]\nsubscribe = [\"conformance.*\"]\n\
             [limits]\n{limits}\n"
        );
        std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
        set_readable(&dir);
        let host = host(&f);
        host.start().await.unwrap();
        let plugin = info(&host, PLUGIN);
        assert_eq!(
            plugin.state,
            PluginState::Running,
            "the plugin did not start: {:?}",
            plugin.reason
        );
        Env { host, _fixture: f }
    }

    async fn call(&self, action: &str, payload: &str) -> Result<Value, HostError> {
        call(&self.host, PLUGIN, action, payload)
            .await
            .map(|text| serde_json::from_str(&text).unwrap())
    }

    /// Calls `action` and returns the error, failing the test if it succeeded.
    async fn fails(&self, action: &str, payload: &str) -> HostError {
        match self.call(action, payload).await {
            Ok(value) => panic!("`{action}` succeeded with {value}"),
            Err(e) => e,
        }
    }

    /// Asserts that the very next call is served.
    async fn serves_the_next_call(&self) {
        let answer = self.call("echo", r#"{"after":"fault"}"#).await;
        assert_eq!(answer.unwrap(), json!({"value": {"after": "fault"}}));
    }
}

/// A host running both runtimes; process children are sandboxed (not strictly: a layer the
/// kernel lacks is skipped), with the fixture's SDK copy on `PYTHONPATH`.
fn host(f: &Fixture) -> Host {
    let mut process = ProcessConfig::default();
    process.base_env.push((
        "PYTHONPATH".into(),
        f.dir.path().join("sdk").into_os_string(),
    ));
    process.start_timeout = Duration::from_secs(30);
    process.ping_interval = Duration::from_secs(1);
    process.ping_timeout = Duration::from_secs(20);
    process.restart.initial_backoff = Duration::from_millis(20);
    process.sandbox = Some(SandboxConfig {
        strict: false,
        ..SandboxConfig::default()
    });
    // The default pool reserves address space for 2000 instances of 4 GiB memories: a few such
    // runtimes alive at once (one per test, run in parallel) exhaust the address space.
    let mut wasm = WasmConfig::new(f.dir.path().join("wasm-cache"));
    wasm.max_instances = 64;
    wasm.max_memory_size = 256 << 20;
    let wasm = WasmRuntime::new(wasm).unwrap();
    let mut config = HostConfig::new(f.plugins(), f.dir.path().join("state"));
    config.stop_grace = Duration::from_secs(2);
    config.log_lines = 200;
    Host::builder(config)
        .runtime(Arc::new(ProcessRuntime::new(process)))
        .runtime(Arc::new(wasm))
        .build()
}

/// Makes a package readable by the sandboxed child's own uid.
fn set_readable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// The runtime error inside a host error, for matching on its fields.
fn runtime_error(e: &HostError) -> &RuntimeError {
    match e {
        HostError::Runtime(r) => r,
        other => panic!("expected a runtime error, got: {other}"),
    }
}

/// Polls (at most 30 s) until `action` succeeds; a process plugin restarts asynchronously.
async fn eventually_serves(env: &Env) {
    let mut last = None;
    for _ in 0..1500 {
        match env.call("echo", r#"{"after":"crash"}"#).await {
            Ok(value) => {
                assert_eq!(value, json!({"value": {"after": "crash"}}));
                return;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the plugin never served a call again; last error: {last:?}");
}

const DEFAULT_LIMITS: &str = "call_timeout = \"30s\"";

async fn handshake_announces_the_actions(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let announced: Vec<(String, String)> = info(&env.host, PLUGIN)
        .actions
        .into_iter()
        .map(|a| (a.name.to_string(), a.description))
        .collect();
    let expected: Vec<(String, String)> = ACTIONS
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_string()))
        .collect();
    assert_eq!(announced, expected);
}

async fn echo_returns_the_payload_unchanged(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let payloads = [
        r#"{"text":"héllo wörld — 日本語 🦀","quote":"\"\\","n":[1,-2.5,null,true,{}]}"#,
        r#""just a string""#,
        "[]",
        "0",
        "null",
    ];
    for payload in payloads {
        let expected: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(
            env.call("echo", payload).await.unwrap(),
            json!({"value": expected}),
            "payload {payload}"
        );
    }
}

async fn unknown_action_is_action_not_found(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let e = env.fails("nope", "{}").await;
    assert_eq!(e.code(), "action_not_found", "{e}");
    assert_eq!(
        e.to_string(),
        "Plugin `conformance` has no action `nope`",
        "{e:?}"
    );
    env.serves_the_next_call().await;
}

async fn guest_error_is_plugin_failed_with_its_message(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let e = env.fails("fail", "{}").await;
    assert_eq!(e.code(), "plugin_failed", "{e}");
    match runtime_error(&e) {
        RuntimeError::ActionFailed {
            action,
            message,
            code,
            ..
        } => {
            assert_eq!(action, "fail");
            assert_eq!(message, FAIL_MESSAGE);
            assert_eq!(code.as_deref(), Some(FAIL_CODE));
        }
        other => panic!("expected ActionFailed, got {other:?}"),
    }
    env.serves_the_next_call().await;
}

async fn bad_payload_is_bad_payload(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let e = env.fails("reject", r#"{"anything":1}"#).await;
    assert_eq!(e.code(), "bad_payload", "{e}");
    assert!(
        e.to_string()
            .starts_with("Plugin `conformance` rejected the payload for `reject`: "),
        "{e}"
    );
    env.serves_the_next_call().await;
}

async fn call_timeout_is_plugin_timeout_and_the_plugin_recovers(flavor: Flavor) {
    let env = Env::start(flavor, "call_timeout = \"300ms\"").await;
    let e = env.fails("spin", "{}").await;
    assert_eq!(e.code(), "plugin_timeout", "{e}");
    assert_eq!(
        e.to_string(),
        "Plugin `conformance` did not answer `spin` within 300ms"
    );
    env.serves_the_next_call().await;
}

async fn memory_limit_fails_the_call_and_the_plugin_recovers(flavor: Flavor) {
    let env = Env::start(flavor, "call_timeout = \"30s\"\nmemory = \"64MiB\"").await;
    let e = env.fails("grow", "{}").await;
    // Both runtimes report a refused allocation as the memory limit, in the same words.
    assert_eq!(e.code(), "limit_exceeded", "{e}");
    assert_eq!(
        e.to_string(),
        "Plugin `conformance` exceeded its memory limit; hint: raise `limits.memory` in `plugin.toml`"
    );
    env.serves_the_next_call().await;
}

async fn crash_fails_the_call_and_the_plugin_recovers(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let e = env.fails("crash", "{}").await;
    // A trap discards the wasm instance and the call fails in the handler (`plugin_failed`); a
    // process that dies takes the connection with it (`plugin_crashed`) and is restarted.
    let expected = match flavor {
        Flavor::Wasm => "plugin_failed",
        Flavor::Process => "plugin_crashed",
    };
    assert_eq!(e.code(), expected, "{e}");
    eventually_serves(&env).await;
    assert!(info(&env.host, PLUGIN).last_error.is_some());
}

async fn published_events_reach_the_subscriber(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    assert_eq!(
        env.host
            .publish("elsewhere.ping", json!({}))
            .await
            .unwrap()
            .subscribers
            .len(),
        0
    );
    assert_eq!(
        env.host
            .publish("conformance.ping", json!({"n": 1}))
            .await
            .unwrap()
            .subscribers
            .len(),
        1,
        "delivered to one subscriber"
    );
    crate::support::eventually("the event handler's log line", || {
        plugin_log_lines(&env.host)
            .iter()
            .any(|l| l == "conformance.ping")
    })
    .await;
    assert!(!log_text(&env.host, PLUGIN).contains("elsewhere.ping"));
}

async fn plugin_logs_reach_the_host(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let answer = env.call("log", r#"{"x":1}"#).await.unwrap();
    assert_eq!(answer, json!({"value": {"x": 1}}));
    crate::support::eventually("the plugin's log line", || {
        plugin_log_lines(&env.host).iter().any(|l| l == LOG_LINE)
    })
    .await;
}

async fn concurrent_calls_get_their_own_answers(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let calls = (0..32).map(|i| {
        let env = &env;
        async move {
            let payload = json!({"i": i, "text": format!("call {i} ✓")});
            let answer = env.call("echo", &payload.to_string()).await.unwrap();
            assert_eq!(answer, json!({"value": payload}), "call {i}");
        }
    });
    futures::future::join_all(calls).await;
    let plugin = info(&env.host, PLUGIN);
    assert_eq!((plugin.calls, plugin.errors), (32, 0));
}

async fn saturation_is_overloaded(flavor: Flavor) {
    // One slot, held by a call that spins for 2 s; a call whose own deadline (300 ms) passes
    // while it waits for the slot is refused as overloaded (429), in both runtimes alike.
    let env = Env::start(flavor, "concurrency = 1\ncall_timeout = \"2s\"").await;
    let host = env.host.clone();
    let holder = tokio::spawn(async move { call(&host, PLUGIN, "spin", "{}").await });
    // The runtime's own count: the host counts a call in flight before it has a slot.
    crate::support::eventually("the slot is taken", || {
        info(&env.host, PLUGIN)
            .details
            .iter()
            .any(|(k, v)| k == "calls.running" && v == "1")
    })
    .await;
    let e = env
        .host
        .call_with(
            PLUGIN,
            "echo",
            crate::support::raw("1"),
            plugd_host::CallOptions::timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "overloaded", "{e}");
    let message = e.to_string();
    assert!(
        message.starts_with(
            "Plugin `conformance` is overloaded: all 1 concurrency slots stayed busy for "
        ),
        "{message}"
    );
    assert!(
        message.ends_with(
            "; hint: raise `limits.concurrency` in `plugin.toml` or send fewer calls at once"
        ),
        "{message}"
    );
    assert_eq!(holder.await.unwrap().unwrap_err().code(), "plugin_timeout");
    env.serves_the_next_call().await;
}

async fn client_error_keeps_its_status_and_code(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let e = env.fails("client", "{}").await;
    match runtime_error(&e) {
        RuntimeError::ClientError {
            code,
            message,
            status,
            ..
        } => assert_eq!(
            (code.as_str(), message.as_str(), *status),
            ("not_found", "no such thing", 404)
        ),
        other => panic!("not a client error: {other}"),
    }
    assert_eq!(e.code(), "not_found");
    // 403 means auth, which is the host's: the plugin's status becomes 400, its code stays.
    let e = env.fails("forbidden", "{}").await;
    match runtime_error(&e) {
        RuntimeError::ClientError { code, status, .. } => {
            assert_eq!((code.as_str(), *status), ("denied", 400))
        }
        other => panic!("not a client error: {other}"),
    }
    env.serves_the_next_call().await;
}

async fn kv_commits_undo_through_the_host(flavor: Flavor) {
    let perms = "[permissions]\nservices = [\"kv\"]\n";
    let env = Env::start_with(flavor, DEFAULT_LIMITS, perms, false).await;
    let set = env
        .call("host.kv.set", r#"{"key": "a", "value": 1}"#)
        .await
        .unwrap();
    assert!(set["value"]["commit"].is_u64(), "{set}");
    env.call("host.kv.commit", r#"{"puts": {"a": 2, "b": [3]}}"#)
        .await
        .unwrap();
    assert_eq!(
        env.call("host.kv.get", r#"{"key": "b"}"#).await.unwrap(),
        json!({"value": {"found": true, "value": [3]}})
    );
    let undone = env.call("host.kv.undo", "{}").await.unwrap();
    assert!(undone["value"]["commit"].is_u64(), "{undone}");
    assert_eq!(
        env.call("host.kv.get", r#"{"key": "a"}"#).await.unwrap(),
        json!({"value": {"found": true, "value": 1}})
    );
    assert_eq!(
        env.call("host.kv.get", r#"{"key": "b"}"#).await.unwrap(),
        json!({"value": {"found": false}})
    );
    // A key past 1 KiB: refused with the limit named, nothing stored.
    let long = "k".repeat(2000);
    let refused = env
        .call("host.kv.set", &json!({"key": long, "value": 1}).to_string())
        .await
        .unwrap();
    assert!(
        refused["value"].as_str().unwrap().contains("1024"),
        "{refused}"
    );
}

async fn plugins_call_their_dependencies(flavor: Flavor) {
    let env = Env::start_with(flavor, DEFAULT_LIMITS, "", true).await;
    let answer = env
        .call(
            "host.plugin.call",
            r#"{"plugin": "callee", "action": "echo", "payload": {"n": 7}}"#,
        )
        .await
        .unwrap();
    assert_eq!(answer, json!({"value": {"value": {"n": 7}}}));
    // Not a dependency: refused, with the reason, to the plugin.
    let refused = env
        .call(
            "host.plugin.call",
            r#"{"plugin": "stranger", "action": "echo", "payload": 1}"#,
        )
        .await
        .unwrap();
    assert!(
        refused["value"]
            .as_str()
            .unwrap()
            .contains("`stranger` is not in its `[dependencies]`"),
        "{refused}"
    );
}

async fn refused_emit_is_visible_to_the_plugin(flavor: Flavor) {
    // The manifest grants no `events`: the host refuses the emit, and the plugin sees why.
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let answer = env.call("emit", "{}").await.unwrap();
    assert_eq!(
        answer,
        json!({"value": "Service `events` is not granted to plugin `conformance`; hint: add it to `permissions.services` in `plugin.toml`"})
    );
}

async fn ungranted_service_is_refused_to_the_guest(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let answer = env.call("ask", r#"{"key":"k"}"#).await.unwrap();
    assert_eq!(
        answer,
        json!({"value": "Service `kv` is not granted to plugin `conformance`; hint: add it to `permissions.services` in `plugin.toml`"})
    );
    assert_eq!(info(&env.host, PLUGIN).denials, 1);
}

/// The plugin's own structured log lines (not stdout, stderr or the runtime's).
fn plugin_log_lines(host: &Host) -> Vec<String> {
    host.logs(PLUGIN, 10_000)
        .unwrap()
        .into_iter()
        .filter(|l| l.source == LogSource::Plugin)
        .map(|l| l.message)
        .collect()
}

/// The manifest table granting `kv`, where the flaky handlers keep their counters.
const KV: &str = "[permissions]\nservices = [\"kv\"]\n";

/// The topics of the deliveries the plugin got, in order (its event handler logs each).
fn deliveries(host: &Host) -> Vec<String> {
    plugin_log_lines(host)
        .into_iter()
        .filter(|l| l.starts_with("conformance."))
        .collect()
}

/// Polls (at most 30 s) until `probe` answers something.
async fn poll<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..1500 {
        if let Some(found) = probe().await {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn submit(env: &Env, task: &str, payload: Value) -> TaskView {
    submit_with(env, TaskSubmit::new(PLUGIN, task, payload)).await
}

async fn submit_with(env: &Env, submit: TaskSubmit) -> TaskView {
    let view = env.host.submit(submit).await.unwrap();
    assert_eq!(view.state, TaskState::Queued, "{view:?}");
    view
}

/// The task once it finished (succeeded, failed or cancelled).
async fn finished(env: &Env, id: u64) -> TaskView {
    poll("the task to finish", || async {
        let view = env.host.task(id).await.unwrap();
        view.state.is_finished().then_some(view)
    })
    .await
}

async fn events_arrive_in_publish_order(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let topics: Vec<String> = (0..20).map(|i| format!("conformance.seq.{i}")).collect();
    let mut last = 0;
    for topic in &topics {
        let published = env
            .host
            .publish(topic, json!({"topic": topic}))
            .await
            .unwrap();
        assert!(published.seq > last, "{published:?} after {last}");
        last = published.seq;
    }
    // Handled: the cursor moved past the last one, and the backlog (taken off after the
    // cursor's write) is empty.
    crate::support::eventually("every event handled", || {
        let info = env.host.subscriber_info(PLUGIN).unwrap();
        info.cursor >= last && info.backlog == 0 && deliveries(&env.host).len() >= topics.len()
    })
    .await;
    assert_eq!(deliveries(&env.host), topics, "each once, in publish order");
    let info = env.host.subscriber_info(PLUGIN).unwrap();
    assert_eq!(
        (info.delivered, info.failures, info.dead),
        (20, 0, 0),
        "{info:?}"
    );
}

async fn failing_event_is_delivered_again_until_it_succeeds(flavor: Flavor) {
    let env = Env::start_with(flavor, DEFAULT_LIMITS, KV, false).await;
    let flaky = env
        .host
        .publish("conformance.flaky", json!({"n": 1}))
        .await
        .unwrap();
    let after = env
        .host
        .publish("conformance.after", json!({"n": 2}))
        .await
        .unwrap();
    crate::support::eventually("the later event handled", || {
        env.host.subscriber_info(PLUGIN).unwrap().cursor >= after.seq
            && deliveries(&env.host).len() >= 4
    })
    .await;
    // At least once: delivered again after each failure until the handler succeeded, and the
    // later event held until then (publish order).
    assert_eq!(
        deliveries(&env.host),
        [
            "conformance.flaky",
            "conformance.flaky",
            "conformance.flaky",
            "conformance.after"
        ]
    );
    let info = env.host.subscriber_info(PLUGIN).unwrap();
    assert_eq!(
        (info.delivered, info.failures, info.dead),
        (2, 2, 0),
        "{info:?}"
    );
    assert!(
        env.host
            .dead_events(Some(PLUGIN), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let log = log_text(&env.host, PLUGIN);
    for attempt in [1, 2] {
        let retried = format!(
            "Event `conformance.flaky` (seq {}) failed (attempt {attempt} of {EVENT_ATTEMPTS}",
            flaky.seq
        );
        assert!(log.contains(&retried), "no `{retried}` in:\n{log}");
    }
}

async fn event_failing_past_its_budget_is_dead_lettered(flavor: Flavor) {
    // Five failed deliveries take 0.2 + 0.4 + 0.8 + 1.6 s of backoff.
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let broken = env
        .host
        .publish("conformance.broken", json!({"n": 1}))
        .await
        .unwrap();
    let after = env
        .host
        .publish("conformance.after", json!({"n": 2}))
        .await
        .unwrap();
    let dead = poll("the dead letter", || async {
        let dead = env.host.dead_events(Some(PLUGIN), 10).await.unwrap();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter = &dead[0];
    assert_eq!(
        (
            letter.plugin.as_str(),
            letter.event.seq,
            letter.event.topic.as_str(),
            letter.event.payload.get(),
            letter.attempts
        ),
        (
            PLUGIN,
            broken.seq,
            "conformance.broken",
            r#"{"n":1}"#,
            EVENT_ATTEMPTS
        )
    );
    // Then delivery went on with the next event.
    let mut expected = vec!["conformance.broken"; EVENT_ATTEMPTS as usize];
    expected.push("conformance.after");
    crate::support::eventually("the later event handled", || {
        env.host.subscriber_info(PLUGIN).unwrap().cursor >= after.seq
            && deliveries(&env.host).len() >= expected.len()
    })
    .await;
    assert_eq!(deliveries(&env.host), expected);
    let info = env.host.subscriber_info(PLUGIN).unwrap();
    assert_eq!(
        (info.delivered, info.failures, info.dead),
        (1, u64::from(EVENT_ATTEMPTS), 1),
        "{info:?}"
    );
}

async fn task_returns_its_result(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let payload = json!({"n": 1, "text": "héllo ✓", "list": [1, null, true]});
    let submitted = submit(&env, "echo", payload.clone()).await;
    let done = finished(&env, submitted.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!(done.result, Some(json!({"value": payload})));
    assert_eq!(
        (
            done.attempts,
            done.error.as_deref(),
            done.error_code.as_deref()
        ),
        (1, None, None)
    );
    assert!(
        done.started_ms.is_some() && done.finished_ms.is_some(),
        "{done:?}"
    );
}

async fn task_progress_reaches_the_task(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let mut updates = env.host.task_updates();
    let submitted = submit(&env, "progress", json!({"p": 1})).await;
    // Live, while it runs.
    let reported = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match updates.recv().await {
                Ok(view)
                    if view.id == submitted.id
                        && view.state == TaskState::Running
                        && view.progress.is_some() =>
                {
                    return view;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("the task updates ended: {e}"),
            }
        }
    })
    .await
    .expect("a progress update of the running task");
    assert_eq!(
        (reported.progress, reported.message.as_deref()),
        (Some(0.5), Some("halfway"))
    );
    // And kept with the finished task.
    let done = finished(&env, submitted.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!(
        (done.progress, done.message.as_deref()),
        (Some(0.5), Some("halfway"))
    );
    assert_eq!(done.result, Some(json!({"value": {"p": 1}})));
}

async fn retryable_task_failure_is_retried_until_it_succeeds(flavor: Flavor) {
    let env = Env::start_with(flavor, DEFAULT_LIMITS, KV, false).await;
    // With one attempt allowed, a retryable failure is final.
    let once = submit_with(
        &env,
        TaskSubmit {
            max_attempts: Some(1),
            ..TaskSubmit::new(PLUGIN, "flaky", json!({"try": 1}))
        },
    )
    .await;
    let failed = finished(&env, once.id).await;
    assert_eq!(failed.state, TaskState::Failed, "{failed:?}");
    assert_eq!(
        (
            failed.attempts,
            failed.error_code.as_deref(),
            failed.error.as_deref()
        ),
        (1, Some("retry"), Some("not yet"))
    );
    // The handler fails once more (its second run overall), and the host runs it again.
    let retried = submit(&env, "flaky", json!({"try": 2})).await;
    let done = finished(&env, retried.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!(
        (done.attempts, done.max_attempts),
        (2, DEFAULT_MAX_ATTEMPTS)
    );
    assert_eq!(done.result, Some(json!({"value": {"try": 2}})));
    let log = log_text(&env.host, PLUGIN);
    let line = format!(
        "Task `flaky` ({}) attempt 1 failed, retrying: not yet",
        retried.id
    );
    assert!(log.contains(&line), "no `{line}` in:\n{log}");
}

async fn cancelled_running_task_ends_cancelled_and_stopped(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let spinning = submit(&env, "spin", json!({})).await;
    poll("the task to run", || async {
        let view = env.host.task(spinning.id).await.unwrap();
        (view.state == TaskState::Running).then_some(())
    })
    .await;
    let cancelled = env.host.cancel_task(spinning.id, "the test").await.unwrap();
    assert_eq!(
        (
            cancelled.state,
            cancelled.stopped,
            cancelled.error_code.as_deref(),
            cancelled.error.as_deref()
        ),
        (
            TaskState::Cancelled,
            Some(true),
            Some("cancelled"),
            Some("Cancelled by the test while it ran; the handler stopped")
        ),
        "{cancelled:?}"
    );
    assert_eq!(cancelled.attempts, 1);
    // Finished: a second cancel is a conflict.
    let again = env
        .host
        .cancel_task(spinning.id, "the test")
        .await
        .unwrap_err();
    assert_eq!(again.code(), "conflict", "{again}");
    // The plugin serves calls and runs tasks again.
    env.serves_the_next_call().await;
    let next = submit(&env, "echo", json!(7)).await;
    assert_eq!(
        finished(&env, next.id).await.result,
        Some(json!({"value": 7}))
    );
}

async fn unknown_task_is_task_not_found(flavor: Flavor) {
    let env = Env::start(flavor, DEFAULT_LIMITS).await;
    let submitted = submit(&env, "nope", json!({})).await;
    let done = finished(&env, submitted.id).await;
    assert_eq!(
        (done.state, done.attempts, done.error_code.as_deref()),
        (TaskState::Failed, 1, Some("task_not_found")),
        "{done:?}"
    );
    env.serves_the_next_call().await;
}
