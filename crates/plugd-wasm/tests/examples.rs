//! Calls every wasm example plugin built by `examples/plugins/build.sh`.
//!
//! Built only with `--features examples-test`, because it needs the Python, JavaScript and C
//! toolchains' output: CI runs `examples/plugins/build.sh` and then
//! `cargo test -p plugd-wasm --features examples-test --test examples`. A missing build fails
//! here; it is never skipped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use plugd_manifest::{ActionName, Manifest};
use plugd_runtime::{
    HostCallError, HostCalls, Instance, InstanceSpec, Invocation, LogLevel, LogSource, Progress,
    RuntimeError,
};
use plugd_wasm::{WasmConfig, WasmInstance, WasmRuntime};
use serde_json::value::RawValue;

struct QuietHost;

#[async_trait]
impl HostCalls for QuietHost {
    fn log(&self, source: LogSource, level: LogLevel, message: &str) {
        // Shown when the test fails: a guest's own error report is the best clue.
        eprintln!("[{source:?} {}] {message}", level.as_str());
    }
    fn progress(&self, _: Progress) {}
    async fn emit(
        &self,
        _: &str,
        _: serde_json::Value,
    ) -> Result<(), plugd_runtime::HostCallError> {
        Ok(())
    }
    async fn request(
        &self,
        m: &str,
        _: serde_json::Value,
    ) -> Result<serde_json::Value, HostCallError> {
        Err(HostCallError::Unknown(m.to_owned()))
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins")
}

async fn start(runtime: &WasmRuntime, name: &str, data: &Path) -> Arc<WasmInstance> {
    let dir = examples_dir().join(name);
    assert!(
        dir.join("plugin.wasm").is_file(),
        "`{name}/plugin.wasm` is missing; hint: run `examples/plugins/build.sh` first"
    );
    let manifest = Manifest::load(&dir).unwrap();
    let data_dir = data.join(name);
    std::fs::create_dir_all(&data_dir).unwrap();
    let spec = InstanceSpec {
        manifest: Arc::new(manifest),
        package_dir: dir,
        data_dir,
        params: serde_json::json!({}),
        python_env: None,
        http_socket: None,
    };
    runtime.start_wasm(spec, Arc::new(QuietHost)).await.unwrap()
}

async fn call(
    instance: &Arc<WasmInstance>,
    action: &str,
    payload: &str,
) -> Result<serde_json::Value, RuntimeError> {
    let outcome = instance
        .call(Invocation {
            action: ActionName::new(action).unwrap(),
            payload: RawValue::from_string(payload.to_owned()).unwrap(),
            timeout: None,
            chain: Vec::new(),
        })
        .await?;
    Ok(serde_json::from_str(outcome.result.get()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_echoes_and_runs_its_own_action() {
    let tmp = tempfile::tempdir().unwrap();
    let runtime = WasmRuntime::new(WasmConfig::new(tmp.path().join("cache"))).unwrap();
    let payload = r#"{"text":"Hello, Wörld! hello again","n":[1,2]}"#;
    let echoed =
        serde_json::json!({"value": serde_json::from_str::<serde_json::Value>(payload).unwrap()});
    let cases = [
        (
            "echo-py-wasm",
            "wordcount",
            serde_json::json!({"value": {"lines": 1, "words": 4, "chars": 25}}),
        ),
        (
            "hello-js-wasm",
            "slugify",
            serde_json::json!({"value": "hello-world-hello-again"}),
        ),
        (
            "hello-c-wasm",
            "checksum",
            serde_json::json!({"value": {"fnv1a32": fnv1a32(payload), "bytes": payload.len()}}),
        ),
    ];
    for (name, action, expected) in cases {
        let instance = start(&runtime, name, tmp.path()).await;
        let names: Vec<String> = instance
            .actions()
            .iter()
            .map(|a| a.name.to_string())
            .collect();
        assert_eq!(names[..2], ["echo", action], "{name}");
        assert_eq!(
            call(&instance, "echo", payload).await.unwrap(),
            echoed,
            "{name}"
        );
        assert_eq!(
            call(&instance, action, payload).await.unwrap(),
            expected,
            "{name}"
        );
        let err = call(&instance, "nope", "{}").await.unwrap_err();
        assert!(
            matches!(err, RuntimeError::UnknownAction { .. }),
            "{name}: {err:?}"
        );
    }
}

fn fnv1a32(text: &str) -> String {
    let mut h: u32 = 2166136261;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(16777619);
    }
    format!("{h:08x}")
}

/// A thrown exception reaches the caller with the guest's own message: through the 0.2 world's
/// `error` result (JavaScript), or from the last stderr lines of a trap (Python, 0.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thrown_errors_keep_the_guests_message() {
    let tmp = tempfile::tempdir().unwrap();
    let runtime = WasmRuntime::new(WasmConfig::new(tmp.path().join("cache"))).unwrap();

    let js = start(&runtime, "hello-js-wasm", tmp.path()).await;
    let err = call(&js, "kaboom", "{}").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Plugin `hello-js-wasm` failed in `kaboom`: Error: js kaboom"
    );
    assert!(
        matches!(err, RuntimeError::ActionFailed { code: Some(ref c), .. } if c == "plugin_error"),
        "{err:?}"
    );
    let err = call(&js, "lookup", r#"{"key":"grace"}"#).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::ClientError { status: 404, ref code, ref message, .. }
            if code == "not_found" && message == "no entry `grace`"),
        "{err:?}"
    );
    assert_eq!(
        call(&js, "lookup", r#"{"key":"ada"}"#).await.unwrap(),
        serde_json::json!({"value": "Ada Lovelace"})
    );
    let payload = RawValue::from_string(r#"{"texts":["Hello World","Ça va"]}"#.to_owned()).unwrap();
    let done = js.run_task("slugify", &payload, None).await.unwrap();
    assert_eq!(done.result.get(), r#"{"value":["hello-world","ca-va"]}"#);
    js.params_changed(&serde_json::json!({"a": 1}))
        .await
        .unwrap();
    let err = js
        .params_changed(&serde_json::json!([1]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::ClientError { status: 400, ref code, .. } if code == "bad_params"),
        "{err:?}"
    );
    js.stop(std::time::Duration::from_secs(5)).await;

    let py = start(&runtime, "echo-py-wasm", tmp.path()).await;
    let err = call(&py, "kaboom", "{}").await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("Plugin `echo-py-wasm` failed in `kaboom`: wasm trap: "),
        "{text}"
    );
    // componentize-py prints the traceback, then its runtime's panic note, to stderr.
    assert!(
        text.contains("; the guest's stderr ended with: ")
            && text.contains(" | ValueError: py kaboom | "),
        "{text}"
    );
    // The instance that trapped was replaced.
    assert_eq!(
        call(&py, "echo", "1").await.unwrap(),
        serde_json::json!({"value": 1})
    );
}
