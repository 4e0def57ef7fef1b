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
    Runtime, RuntimeError,
};
use plugd_wasm::{WasmConfig, WasmRuntime};
use serde_json::value::RawValue;

struct QuietHost;

#[async_trait]
impl HostCalls for QuietHost {
    fn log(&self, source: LogSource, level: LogLevel, message: &str) {
        // Shown when the test fails: a guest's own error report is the best clue.
        eprintln!("[{source:?} {}] {message}", level.as_str());
    }
    fn progress(&self, _: Progress) {}
    fn emit(&self, _: &str, _: serde_json::Value) -> Result<(), plugd_runtime::HostCallError> {
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

async fn start(runtime: &WasmRuntime, name: &str, data: &Path) -> Arc<dyn Instance> {
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
    };
    runtime.start(spec, Arc::new(QuietHost)).await.unwrap()
}

async fn call(
    instance: &Arc<dyn Instance>,
    action: &str,
    payload: &str,
) -> Result<serde_json::Value, RuntimeError> {
    let outcome = instance
        .call(Invocation {
            action: ActionName::new(action).unwrap(),
            payload: RawValue::from_string(payload.to_owned()).unwrap(),
            timeout: None,
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
        assert_eq!(names, ["echo", action], "{name}");
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
