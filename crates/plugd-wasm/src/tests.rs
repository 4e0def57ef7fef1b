//! Unit tests of how calls share the executor: a guest that never returns must not hold up the
//! host's other work.

use std::sync::Arc;
use std::time::Duration;

use plugd_manifest::{ActionName, Manifest};
use plugd_runtime::{Instance, InstanceSpec, Invocation, NullHost, RuntimeError};
use serde_json::value::RawValue;

use crate::test_guest::TestGuest;
use crate::{WasmConfig, WasmError, WasmRuntime};

fn spec(root: &std::path::Path, name: &str, wasm: &[u8]) -> InstanceSpec {
    let package_dir = root.join("packages").join(name);
    std::fs::create_dir_all(&package_dir).unwrap();
    std::fs::write(package_dir.join("plugin.wasm"), wasm).unwrap();
    let toml = format!(
        "[plugin]\nname = \"{name}\"\nversion = \"0.1.0\"\nruntime = \"wasm\"\nentry = \"plugin.wasm\"\n"
    );
    let data_dir = root.join("data").join(name);
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

fn invocation(action: &str, payload: &str, timeout: Option<Duration>) -> Invocation {
    Invocation {
        action: ActionName::new(action).unwrap(),
        payload: RawValue::from_string(payload.to_owned()).unwrap(),
        timeout,
        chain: Vec::new(),
    }
}

/// On a single-threaded runtime (the strictest case: one thread for everything), a call
/// spinning until its timeout yields at every epoch tick, so calls to another plugin are served
/// meanwhile; the spinning call still ends with its timeout.
#[tokio::test(flavor = "current_thread")]
async fn an_endless_loop_does_not_hold_up_other_calls() {
    let root = tempfile::tempdir().unwrap();
    let wasm = TestGuest::new("0.1.0").component();
    let runtime = WasmRuntime::new(WasmConfig::new(root.path().join("cache"))).unwrap();
    let looper: Arc<dyn Instance> = runtime
        .start_wasm(spec(root.path(), "looper", &wasm), Arc::new(NullHost))
        .await
        .unwrap();
    let other: Arc<dyn Instance> = runtime
        .start_wasm(spec(root.path(), "other", &wasm), Arc::new(NullHost))
        .await
        .unwrap();

    let timeout = Duration::from_secs(3);
    let spinning = tokio::spawn({
        let looper = looper.clone();
        async move { looper.call(invocation("spin", "{}", Some(timeout))).await }
    });
    // Let the spinning call start: it runs until the next tick, then yields back here.
    tokio::task::yield_now().await;
    for i in 0..20 {
        let answer = other
            .call(invocation("echo", &i.to_string(), None))
            .await
            .unwrap();
        assert_eq!(answer.result.get(), format!(r#"{{"value":{i}}}"#));
    }
    assert!(
        !spinning.is_finished(),
        "the other calls waited for the spinning call"
    );
    let err = spinning.await.unwrap().unwrap_err();
    assert!(
        matches!(err, RuntimeError::Timeout { timeout: t, .. } if t == timeout),
        "{err:?}"
    );
}

/// A caller that gives up on a call (drops its future) cancels the guest; the plugin keeps
/// serving with a fresh instance.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_call_cancels_the_guest() {
    let root = tempfile::tempdir().unwrap();
    let wasm = TestGuest::new("0.1.0").component();
    let runtime = WasmRuntime::new(WasmConfig::new(root.path().join("cache"))).unwrap();
    let instance: Arc<dyn Instance> = runtime
        .start_wasm(spec(root.path(), "guest", &wasm), Arc::new(NullHost))
        .await
        .unwrap();
    let spin = instance.call(invocation("spin", "{}", Some(Duration::from_secs(30))));
    let gave_up = tokio::time::timeout(Duration::from_millis(50), spin).await;
    assert!(gave_up.is_err());
    let answer = instance.call(invocation("echo", "7", None)).await.unwrap();
    assert_eq!(answer.result.get(), r#"{"value":7}"#);
}

/// Without the epoch thread no deadline would fire: the runtime refuses to exist.
#[test]
fn a_failed_epoch_thread_fails_the_runtime() {
    let root = tempfile::tempdir().unwrap();
    // A stack no machine can map makes the thread spawn fail.
    let ticker = std::thread::Builder::new().stack_size(1 << 60);
    let err = WasmRuntime::with_ticker(WasmConfig::new(root.path().join("cache")), ticker)
        .err()
        .expect("the runtime is refused");
    assert!(matches!(err, WasmError::EpochThread(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("Could not start the wasm epoch thread: "),
        "{err}"
    );
}

/// A component that cannot be compiled leaves no cell behind; a good one keeps its cell only
/// while a plugin uses its code.
#[tokio::test]
async fn code_cells_live_as_long_as_their_code() {
    let root = tempfile::tempdir().unwrap();
    let runtime = WasmRuntime::new(WasmConfig::new(root.path().join("cache"))).unwrap();
    let cells = || runtime.inner.codes.lock().unwrap().len();
    let err = runtime
        .start_wasm(
            spec(root.path(), "broken", b"\0asm not really"),
            Arc::new(NullHost),
        )
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), "plugin_start_failed", "{err}");
    assert_eq!(cells(), 0);

    let wasm = TestGuest::new("0.1.0").component();
    let instance = runtime
        .start_wasm(spec(root.path(), "good", &wasm), Arc::new(NullHost))
        .await
        .unwrap();
    assert_eq!(cells(), 1);
    drop(instance);
    // The next start of other bytes sweeps the dead cell.
    let other = TestGuest::new("0.2.0").component();
    let _other = runtime
        .start_wasm(spec(root.path(), "other", &other), Arc::new(NullHost))
        .await
        .unwrap();
    assert_eq!(cells(), 1);
}
