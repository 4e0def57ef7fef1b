//! Integration tests of the wasm runtime against the WAT guest of `plugd_wasm::test_guest`,
//! built offline for `plugd:plugin@0.1.0` and `@0.2.0`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use plugd_manifest::{ActionName, Manifest};
use plugd_runtime::{
    HostCallError, HostCalls, Instance, InstanceSpec, Invocation, LogLevel, LogSource, Progress,
    Runtime, RuntimeError,
};
use plugd_wasm::test_guest::TestGuest;
use plugd_wasm::{InstanceReuse, WasmConfig, WasmRuntime};
use serde_json::value::RawValue;
use tempfile::TempDir;

mod v02;

/// Records everything the plugin asks of the host.
#[derive(Default)]
struct RecordingHost {
    logs: Mutex<Vec<(LogSource, LogLevel, String)>>,
    /// What `request` answers; `None` refuses as "not granted".
    answer: Option<serde_json::Value>,
    /// Events published; `emit` refuses as "not granted" when `refuse_emit`.
    events: Mutex<Vec<(String, serde_json::Value)>>,
    refuse_emit: bool,
    /// Progress reports, in order.
    progress: Mutex<Vec<Progress>>,
}

#[async_trait]
impl HostCalls for RecordingHost {
    fn log(&self, source: LogSource, level: LogLevel, message: &str) {
        self.logs
            .lock()
            .unwrap()
            .push((source, level, message.to_owned()));
    }
    fn progress(&self, progress: Progress) {
        self.progress.lock().unwrap().push(progress);
    }
    async fn emit(&self, topic: &str, payload: serde_json::Value) -> Result<(), HostCallError> {
        if self.refuse_emit {
            return Err(HostCallError::NotGranted {
                plugin: "guest".to_owned(),
                service: "events".to_owned(),
            });
        }
        self.events
            .lock()
            .unwrap()
            .push((topic.to_owned(), payload));
        Ok(())
    }
    async fn request(
        &self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, HostCallError> {
        match &self.answer {
            Some(answer) => {
                Ok(serde_json::json!({"method": method, "params": params, "answer": answer}))
            }
            None => Err(HostCallError::NotGranted {
                plugin: "guest".to_owned(),
                service: "kv".to_owned(),
            }),
        }
    }
}

impl RecordingHost {
    fn lines(&self, source: LogSource) -> Vec<String> {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter(|(s, _, _)| *s == source)
            .map(|(_, _, m)| m.clone())
            .collect()
    }
}

fn guest_v01() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| TestGuest::new("0.1.0").component())
}

/// A temp dir holding a cache dir, packages and data dirs.
struct Env {
    dir: TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn runtime(&self) -> WasmRuntime {
        WasmRuntime::new(WasmConfig::new(self.cache())).unwrap()
    }

    /// Writes a package with `wasm` as `plugin.wasm` and the given extra manifest tables.
    fn package(&self, name: &str, wasm: &[u8], extra: &str) -> InstanceSpec {
        let package_dir = self.dir.path().join("packages").join(name);
        std::fs::create_dir_all(&package_dir).unwrap();
        std::fs::write(package_dir.join("plugin.wasm"), wasm).unwrap();
        let toml = format!(
            "[plugin]\nname = \"{name}\"\nversion = \"0.1.0\"\nruntime = \"wasm\"\nentry = \"plugin.wasm\"\n{extra}"
        );
        std::fs::write(package_dir.join("plugin.toml"), &toml).unwrap();
        let data_dir = self.dir.path().join("data").join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        InstanceSpec {
            manifest: Arc::new(Manifest::from_toml_str(&toml).unwrap()),
            package_dir,
            data_dir,
            params: serde_json::json!({}),
            python_env: None,
            http_socket: None,
        }
    }
}

async fn start(env: &Env, extra: &str) -> (Arc<dyn Instance>, Arc<RecordingHost>) {
    let host = Arc::new(RecordingHost::default());
    let runtime = env.runtime();
    let spec = env.package("guest", guest_v01(), extra);
    let instance = runtime.start(spec, host.clone()).await.unwrap();
    (instance, host)
}

fn invocation(action: &str, payload: &str) -> Invocation {
    Invocation {
        action: ActionName::new(action).unwrap(),
        payload: RawValue::from_string(payload.to_owned()).unwrap(),
        timeout: None,
        chain: Vec::new(),
    }
}

async fn call(
    instance: &Arc<dyn Instance>,
    action: &str,
    payload: &str,
) -> Result<String, RuntimeError> {
    instance
        .call(invocation(action, payload))
        .await
        .map(|outcome| outcome.result.get().to_owned())
}

#[tokio::test]
async fn describe_announces_the_guest_actions() {
    let env = Env::new();
    let (instance, _) = start(&env, "").await;
    let actions: Vec<(String, String)> = instance
        .actions()
        .into_iter()
        .map(|a| (a.name.to_string(), a.description))
        .collect();
    assert_eq!(
        actions,
        [
            ("echo".to_owned(), "Returns the payload".to_owned()),
            ("fail".to_owned(), "Always fails".to_owned()),
            ("trap".to_owned(), "Traps".to_owned()),
        ]
    );
    assert_eq!(
        Runtime::kind(&env.runtime()),
        plugd_manifest::RuntimeKind::Wasm
    );
}

#[tokio::test]
async fn echo_returns_the_payload_as_value() {
    let env = Env::new();
    let (instance, _) = start(&env, "").await;
    let payload = r#"{"text":"héllo","n":[1,2,3]}"#;
    assert_eq!(
        call(&instance, "echo", payload).await.unwrap(),
        format!(r#"{{"value":{payload}}}"#)
    );
}

#[tokio::test]
async fn unknown_action_and_guest_errors_map_to_their_kinds() {
    let env = Env::new();
    let (instance, _) = start(&env, "").await;
    let err = call(&instance, "nope", "{}").await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::UnknownAction { ref action, .. } if action == "nope"),
        "{err:?}"
    );

    let err = call(&instance, "fail", "{}").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Plugin `guest` failed in `fail`: it failed on purpose"
    );
    assert!(matches!(err, RuntimeError::ActionFailed { code: Some(ref c), .. } if c == "boom"));

    let err = call(&instance, "reject", "{}").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Plugin `guest` rejected the payload for `reject`: the payload is never good enough"
    );
}

#[tokio::test]
async fn a_trap_fails_the_call_and_the_next_call_succeeds() {
    let env = Env::new();
    let (instance, host) = start(&env, "").await;
    let err = call(&instance, "trap", "{}").await.unwrap_err();
    match &err {
        RuntimeError::ActionFailed { code, message, .. } => {
            assert_eq!(code.as_deref(), Some("trap"));
            assert!(message.contains("unreachable"), "{message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(
        call(&instance, "echo", "1").await.unwrap(),
        r#"{"value":1}"#
    );
    let status = instance.status();
    assert!(status.ready);
    assert!(
        status
            .details
            .contains(&("world".to_owned(), "plugd:plugin@0.1.0".to_owned()))
    );
    assert_eq!(status.last_error.as_deref(), Some(err.to_string().as_str()));
    assert!(
        status
            .details
            .contains(&("faulted_instances".to_owned(), "1".to_owned()))
    );
    assert_eq!(host.lines(LogSource::Runtime).len(), 1);
}

#[tokio::test]
async fn an_endless_loop_times_out_and_the_plugin_keeps_serving() {
    let env = Env::new();
    let (instance, _) = start(&env, "").await;
    let mut spin = invocation("spin", "{}");
    spin.timeout = Some(Duration::from_millis(100));
    let err = instance.call(spin).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::Timeout { timeout, .. } if timeout == Duration::from_millis(100)),
        "{err:?}"
    );
    assert_eq!(
        call(&instance, "echo", "2").await.unwrap(),
        r#"{"value":2}"#
    );
}

#[tokio::test]
async fn the_cpu_limit_stops_a_call_before_its_timeout() {
    let env = Env::new();
    let (instance, _) = start(&env, "[limits]\ncpu = \"50ms\"\ncall_timeout = \"30s\"\n").await;
    let err = call(&instance, "spin", "{}").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Plugin `guest` exceeded its cpu limit; hint: raise `limits.cpu` in `plugin.toml`"
    );
}

#[tokio::test]
async fn growing_memory_past_the_limit_is_a_memory_limit() {
    let env = Env::new();
    let (instance, _) = start(&env, "[limits]\nmemory = \"2MiB\"\n").await;
    let err = call(&instance, "grow", "{}").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Plugin `guest` exceeded its memory limit; hint: raise `limits.memory` in `plugin.toml`"
    );
    assert_eq!(
        call(&instance, "echo", "3").await.unwrap(),
        r#"{"value":3}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_each_get_their_answer() {
    let env = Env::new();
    let (instance, _) = start(&env, "[limits]\nconcurrency = 4\n").await;
    let calls = (0..32).map(|i| {
        let instance = instance.clone();
        tokio::spawn(async move { (i, call(&instance, "echo", &i.to_string()).await) })
    });
    for handle in calls {
        let (i, answer) = handle.await.unwrap();
        assert_eq!(answer.unwrap(), format!(r#"{{"value":{i}}}"#));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_a_slot_past_its_timeout_is_overloaded() {
    let env = Env::new();
    let (instance, _) = start(&env, "[limits]\nconcurrency = 1\ncall_timeout = \"30s\"\n").await;
    let mut spin = invocation("spin", "{}");
    spin.timeout = Some(Duration::from_millis(500));
    let mut echo = invocation("echo", "{}");
    echo.timeout = Some(Duration::from_millis(50));
    // `join!` polls the spinning call first, so it holds the only slot.
    let (spun, echoed) = tokio::join!(instance.call(spin), instance.call(echo));
    assert!(matches!(spun.unwrap_err(), RuntimeError::Timeout { .. }));
    let err = echoed.unwrap_err();
    assert_eq!(err.code(), "overloaded");
    assert_eq!(
        err.to_string(),
        "Plugin `guest` is overloaded: all 1 concurrency slots stayed busy for 50ms; hint: raise `limits.concurrency` in `plugin.toml` or send fewer calls at once"
    );
    // The slot is free again once the spinning call ended.
    assert_eq!(
        call(&instance, "echo", "8").await.unwrap(),
        r#"{"value":8}"#
    );
}

#[tokio::test]
async fn logs_events_and_host_requests_reach_the_host() {
    let env = Env::new();
    let (instance, host) = start(&env, "").await;
    assert_eq!(call(&instance, "log", "4").await.unwrap(), r#"{"value":4}"#);
    instance
        .event(
            "image.imported",
            &RawValue::from_string("{}".to_owned()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        host.lines(LogSource::Plugin),
        ["hello from wasm", "image.imported"]
    );

    // The guest answers a refused request with the host's message.
    assert_eq!(
        call(&instance, "ask", r#"{"key":"k"}"#).await.unwrap(),
        r#"{"value":"Service `kv` is not granted to plugin `guest`; hint: add it to `permissions.services` in `plugin.toml`"}"#
    );
    // 0.1 cannot tell the guest that `emit` was refused; the host got the event here.
    assert_eq!(
        call(&instance, "emit", "[1]").await.unwrap(),
        r#"{"value":[1]}"#
    );
    assert_eq!(
        *host.events.lock().unwrap(),
        [("test.emitted".to_owned(), serde_json::json!([1]))]
    );

    let granted = Arc::new(RecordingHost {
        answer: Some(serde_json::json!("v")),
        ..RecordingHost::default()
    });
    let spec = env.package("granted", guest_v01(), "");
    let instance = env.runtime().start(spec, granted).await.unwrap();
    assert_eq!(
        call(&instance, "ask", r#"{"key":"k"}"#).await.unwrap(),
        r#"{"value":{"answer":"v","method":"kv.get","params":{"key":"k"}}}"#
    );
}

#[tokio::test]
async fn fresh_instances_serve_calls_too() {
    let env = Env::new();
    let mut config = WasmConfig::new(env.cache());
    config.instance_reuse = InstanceReuse::Fresh;
    let runtime = WasmRuntime::new(config).unwrap();
    let spec = env.package("guest", guest_v01(), "");
    let instance = runtime
        .start_wasm(spec, Arc::new(RecordingHost::default()))
        .await
        .unwrap();
    assert_eq!(instance.idle_instances(), 0);
    let echoed = tokio::task::spawn_blocking(move || {
        let first = instance.call_blocking(&invocation("echo", "5")).unwrap();
        let second = instance.call_blocking(&invocation("echo", "6")).unwrap();
        (
            first.result.get().to_owned(),
            second.result.get().to_owned(),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        echoed,
        (r#"{"value":5}"#.to_owned(), r#"{"value":6}"#.to_owned())
    );
}

#[tokio::test]
async fn compiled_code_is_cached_on_disk_and_reused_by_the_next_runtime() {
    let env = Env::new();
    let host = Arc::new(RecordingHost::default());
    let first = env.runtime();
    let _a = first
        .start(env.package("a", guest_v01(), ""), host.clone())
        .await
        .unwrap();
    // The same bytes in another package share the compiled code in memory.
    let _b = first
        .start(env.package("b", guest_v01(), ""), host.clone())
        .await
        .unwrap();
    let stats = first.cache_stats();
    assert_eq!((stats.compiled, stats.loaded, stats.shared), (1, 0, 1));
    let files = cwasm_files(&env.cache());
    assert_eq!(files.len(), 1, "{files:?}");

    let second = env.runtime();
    let instance = second
        .start(env.package("a", guest_v01(), ""), host)
        .await
        .unwrap();
    let stats = second.cache_stats();
    assert_eq!((stats.compiled, stats.loaded, stats.shared), (0, 1, 0));
    assert_eq!(
        call(&instance, "echo", "7").await.unwrap(),
        r#"{"value":7}"#
    );
    assert_eq!(cwasm_files(&env.cache()), files);
}

#[tokio::test]
async fn garbage_collection_drops_compiled_code_no_live_component_uses() {
    let env = Env::new();
    let host = Arc::new(RecordingHost::default());
    let runtime = env.runtime();
    let v01 = runtime
        .start(env.package("a", guest_v01(), ""), host.clone())
        .await
        .unwrap();
    let v02 = runtime
        .start(
            env.package("b", &TestGuest::new("0.2.0").component(), ""),
            host.clone(),
        )
        .await
        .unwrap();
    std::fs::write(env.cache().join("0123-oldengine.cwasm"), b"stale").unwrap();
    assert_eq!(cwasm_files(&env.cache()).len(), 3);
    // Both live: only the other engine's file goes.
    assert_eq!(runtime.collect_garbage().await.unwrap(), 5);
    assert_eq!(cwasm_files(&env.cache()).len(), 2);
    v02.stop(Duration::from_millis(100)).await;
    drop(v02);
    let freed = runtime.collect_garbage().await.unwrap();
    assert!(freed > 0);
    assert_eq!(cwasm_files(&env.cache()).len(), 1);
    // The live one still serves.
    assert_eq!(call(&v01, "echo", "7").await.unwrap(), r#"{"value":7}"#);
}

fn cwasm_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.iter().all(|n| n.ends_with(".cwasm")), "{names:?}");
    names
}

#[tokio::test]
async fn a_component_for_another_major_version_is_refused() {
    let env = Env::new();
    let runtime = env.runtime();
    for (version, shown) in [("1.0.0", "1.0.0"), ("0.3.0", "0.3.0")] {
        let spec = env.package("future", &TestGuest::new(version).component(), "");
        let err = runtime
            .start(spec, Arc::new(RecordingHost::default()))
            .await
            .err()
            .expect("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "Plugin `future` was refused: component `plugin.wasm` targets `plugd:plugin@{shown}`, this host speaks `plugd:plugin@0.1.0` and `plugd:plugin@0.2.0`; hint: rebuild the plugin against this host's `wit/plugd-0.2.wit`"
            )
        );
    }
}

#[tokio::test]
async fn network_permissions_and_non_components_are_refused_at_start() {
    let env = Env::new();
    let runtime = env.runtime();
    let host = Arc::new(RecordingHost::default());
    let spec = env.package(
        "net",
        guest_v01(),
        "[permissions]\nnet.connect = [\"example.org:443\"]\n",
    );
    let err = runtime
        .start(spec, host.clone())
        .await
        .err()
        .expect("refused");
    assert_eq!(
        err.to_string(),
        "Plugin `net` was refused: network for wasm plugins is not supported yet (`permissions.net_connect`); hint: use `runtime = \"process\"` or remove `net.connect`"
    );

    let core = wat::parse_str("(module)").unwrap();
    let spec = env.package("core", &core, "");
    let err = runtime.start(spec, host).await.err().expect("refused");
    assert!(
        err.to_string().starts_with(
            "Plugin `core` could not start: `plugin.wasm` is not a valid WebAssembly component: "
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_stopped_plugin_refuses_calls() {
    let env = Env::new();
    let (instance, _) = start(&env, "").await;
    instance.stop(Duration::from_millis(10)).await;
    instance.stop(Duration::from_millis(10)).await;
    let err = call(&instance, "echo", "{}").await.unwrap_err();
    assert!(matches!(err, RuntimeError::NotRunning { .. }), "{err:?}");
    assert!(!instance.status().ready);
}

#[tokio::test]
async fn too_many_live_instances_is_the_instances_limit() {
    let env = Env::new();
    let mut config = WasmConfig::new(env.cache());
    config.max_instances = 1;
    let runtime = WasmRuntime::new(config).unwrap();
    let host = Arc::new(RecordingHost::default());
    // The first plugin keeps its one instance ready in its pool.
    let _first = runtime
        .start(env.package("first", guest_v01(), ""), host.clone())
        .await
        .unwrap();
    let err = runtime
        .start(env.package("second", guest_v01(), ""), host)
        .await
        .err()
        .expect("no instance left");
    assert_eq!(
        err.to_string(),
        "Plugin `second` could not start: `describe` failed: Plugin `second` exceeded its instances limit; hint: too many wasm instances are alive in this host; raise `WasmConfig::max_instances`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_compile_each_distinct_component_once() {
    let env = Env::new();
    let runtime = env.runtime();
    let host = Arc::new(RecordingHost::default());
    let other = TestGuest::new("0.2.0").component();
    let starts = [
        ("a", guest_v01()),
        ("b", guest_v01()),
        ("c", other.as_slice()),
        ("d", other.as_slice()),
    ]
    .map(|(name, wasm)| runtime.start(env.package(name, wasm, ""), host.clone()));
    let instances = futures::future::join_all(starts).await;
    for instance in &instances {
        let instance = instance.as_ref().unwrap();
        assert_eq!(call(instance, "echo", "1").await.unwrap(), r#"{"value":1}"#);
    }
    let stats = runtime.cache_stats();
    assert_eq!((stats.compiled, stats.loaded, stats.shared), (2, 0, 2));
}

/// The host's conformance suite builds the guest with its own action list and texts; a long
/// list still fits the guest's static data.
#[tokio::test]
async fn the_test_guest_takes_its_announcements_from_the_caller() {
    let env = Env::new();
    let actions = [
        "echo", "fail", "reject", "crash", "spin", "grow", "log", "ask",
    ]
    .map(|name| {
        (
            name.to_owned(),
            format!("The `{name}` action, described at some length ✓"),
        )
    });
    let guest = TestGuest {
        actions: actions.to_vec(),
        fail_code: "custom_code".to_owned(),
        fail_message: "a custom message".to_owned(),
        log_line: "a custom line".to_owned(),
        ..TestGuest::new("0.1.0")
    };
    let host = Arc::new(RecordingHost::default());
    let instance = env
        .runtime()
        .start(env.package("guest", &guest.component(), ""), host.clone())
        .await
        .unwrap();
    let announced: Vec<(String, String)> = instance
        .actions()
        .into_iter()
        .map(|a| (a.name.to_string(), a.description))
        .collect();
    assert_eq!(announced, actions);
    let err = call(&instance, "fail", "{}").await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::ActionFailed { code: Some(ref c), ref message, .. }
            if c == "custom_code" && message == "a custom message"),
        "{err:?}"
    );
    let err = call(&instance, "crash", "{}").await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::ActionFailed { code: Some(ref c), .. } if c == "trap"),
        "{err:?}"
    );
    call(&instance, "log", "1").await.unwrap();
    assert_eq!(host.lines(LogSource::Plugin), ["a custom line"]);
}
