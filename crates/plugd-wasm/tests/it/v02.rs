//! Components built for `plugd:plugin@0.2.0`: plugin-chosen statuses, `emit` refusals seen by
//! the guest, the optional `lifecycle` and `tasks` interfaces.

use std::sync::Arc;
use std::time::Duration;

use plugd_runtime::{Instance, LogSource, Runtime, RuntimeError};
use plugd_wasm::test_guest::TestGuest;
use serde_json::value::RawValue;

use crate::{Env, RecordingHost, call, guest_v01};

fn guest_v02() -> Vec<u8> {
    TestGuest::new("0.2.0").component()
}

fn lifecycle_guest() -> TestGuest {
    TestGuest {
        lifecycle: true,
        ..TestGuest::new("0.2.0")
    }
}

async fn start_v02(env: &Env, wasm: &[u8], host: Arc<RecordingHost>) -> Arc<dyn Instance> {
    env.runtime()
        .start(env.package("guest", wasm, ""), host)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_guest_chooses_its_client_error_status_and_code() {
    let env = Env::new();
    let instance = start_v02(&env, &guest_v02(), Arc::default()).await;
    assert_eq!(
        call(&instance, "echo", "[2]").await.unwrap(),
        r#"{"value":[2]}"#
    );

    let err = call(&instance, "client", "{}").await.unwrap_err();
    match &err {
        RuntimeError::ClientError {
            action,
            code,
            message,
            status,
            ..
        } => assert_eq!(
            (action.as_str(), code.as_str(), message.as_str(), *status),
            ("client", "not_found", "no such thing", 404)
        ),
        other => panic!("expected a client error, got {other:?}"),
    }
    assert_eq!(err.code(), "not_found");
    assert_eq!(err.to_string(), "no such thing");

    // 401 and 403 are reserved for authentication: the plugin's 403 becomes 400.
    let err = call(&instance, "forbidden", "{}").await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::ClientError { status: 400, ref code, .. } if code == "denied"),
        "{err:?}"
    );

    // Without a status the codes mean what they meant in 0.1.
    let err = call(&instance, "fail", "{}").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Plugin `guest` failed in `fail`: it failed on purpose"
    );
    let err = call(&instance, "reject", "{}").await.unwrap_err();
    assert!(matches!(err, RuntimeError::BadPayload { .. }), "{err:?}");
    let err = call(&instance, "nope", "{}").await.unwrap_err();
    assert!(matches!(err, RuntimeError::UnknownAction { .. }), "{err:?}");
}

#[tokio::test]
async fn a_refused_emit_is_an_error_the_guest_sees() {
    let env = Env::new();
    let refusing = Arc::new(RecordingHost {
        refuse_emit: true,
        ..RecordingHost::default()
    });
    let instance = start_v02(&env, &guest_v02(), refusing.clone()).await;
    // The guest returns the refusal it got as its value.
    assert_eq!(
        call(&instance, "emit", r#"{"n":1}"#).await.unwrap(),
        r#"{"value":"Service `events` is not granted to plugin `guest`; hint: add it to `permissions.services` in `plugin.toml`"}"#
    );
    assert!(refusing.events.lock().unwrap().is_empty());

    let accepting = Arc::new(RecordingHost::default());
    let instance = start_v02(&env, &guest_v02(), accepting.clone()).await;
    assert_eq!(
        call(&instance, "emit", r#"{"n":1}"#).await.unwrap(),
        r#"{"value":{"n":1}}"#
    );
    assert_eq!(
        *accepting.events.lock().unwrap(),
        [("test.emitted".to_owned(), serde_json::json!({"n": 1}))]
    );
}

#[tokio::test]
async fn lifecycle_hooks_run_once_at_start_and_at_stop() {
    let env = Env::new();
    let host = Arc::new(RecordingHost::default());
    let instance = start_v02(&env, &lifecycle_guest().component(), host.clone()).await;
    assert_eq!(host.lines(LogSource::Plugin), ["on-start"]);
    assert!(
        instance
            .status()
            .details
            .contains(&("world".to_owned(), "plugd:plugin@0.2.0".to_owned()))
    );
    for i in 0..3 {
        assert_eq!(
            call(&instance, "echo", &i.to_string()).await.unwrap(),
            format!(r#"{{"value":{i}}}"#)
        );
    }
    instance.stop(Duration::from_secs(1)).await;
    instance.stop(Duration::from_secs(1)).await;
    assert_eq!(host.lines(LogSource::Plugin), ["on-start", "on-stop"]);
    assert!(host.lines(LogSource::Runtime).is_empty());
}

#[tokio::test]
async fn a_failing_on_start_fails_the_start() {
    let env = Env::new();
    let guest = TestGuest {
        on_start_fails: true,
        ..lifecycle_guest()
    };
    let err = env
        .runtime()
        .start(
            env.package("guest", &guest.component(), ""),
            Arc::new(RecordingHost::default()),
        )
        .await
        .err()
        .expect("the start fails");
    assert_eq!(
        err.to_string(),
        "Plugin `guest` could not start: `on-start` failed: on-start refused (not_ready)"
    );
}

#[tokio::test]
async fn run_task_and_params_changed_reach_the_guest() {
    let env = Env::new();
    let host = Arc::new(RecordingHost::default());
    let runtime = env.runtime();
    let spec = env.package("guest", &lifecycle_guest().component(), "");
    let instance = runtime.start_wasm(spec, host.clone()).await.unwrap();
    let payload = RawValue::from_string(r#"{"t":1}"#.to_owned()).unwrap();

    let done = instance.run_task("echo", &payload, None).await.unwrap();
    assert_eq!(done.result.get(), r#"{"value":{"t":1}}"#);
    let err = instance
        .run_task("other", &payload, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Plugin `guest` failed in `other`: no such task"
    );

    instance
        .params_changed(&serde_json::json!({"a": 1}))
        .await
        .unwrap();
    let err = instance
        .params_changed(&serde_json::json!({"reject": true}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::ClientError { status: 400, ref code, .. } if code == "bad_params"),
        "{err:?}"
    );
    assert_eq!(
        host.lines(LogSource::Plugin),
        ["on-start", r#"{"a":1}"#, r#"{"reject":true}"#]
    );

    // A component without `tasks` is refused; without `lifecycle`, params changes are a no-op.
    let plain = runtime
        .start_wasm(env.package("plain", &guest_v02(), ""), host.clone())
        .await
        .unwrap();
    let err = plain.run_task("echo", &payload, None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Plugin `plain` was refused: it cannot run task `echo`: its component does not export `plugd:plugin/tasks@0.2.0`; hint: build it for the world `plugin-full` of `wit/plugd-0.2.wit`"
    );
    plain.params_changed(&serde_json::json!({})).await.unwrap();
    let old = runtime
        .start_wasm(env.package("old", guest_v01(), ""), host)
        .await
        .unwrap();
    assert!(matches!(
        old.run_task("echo", &payload, None).await.unwrap_err(),
        RuntimeError::Refused { .. }
    ));
}

#[tokio::test]
async fn the_test_guest_tasks_report_progress_retry_and_spin() {
    let env = Env::new();
    let runtime = env.runtime();
    let payload = RawValue::from_string(r#"{"t":2}"#.to_owned()).unwrap();
    // `request` answers: the counter of `flaky` advances, so it asks for a retry.
    let granting = Arc::new(RecordingHost {
        answer: Some(serde_json::json!({"commit": 1})),
        ..RecordingHost::default()
    });
    let instance = runtime
        .start_wasm(
            env.package("guest", &lifecycle_guest().component(), ""),
            granting.clone(),
        )
        .await
        .unwrap();

    let done = instance.run_task("progress", &payload, None).await.unwrap();
    assert_eq!(done.result.get(), r#"{"value":{"t":2}}"#);
    assert_eq!(
        *granting.progress.lock().unwrap(),
        [plugd_runtime::Progress {
            task: None,
            fraction: Some(0.5),
            message: Some("halfway".to_owned()),
        }]
    );

    match instance
        .run_task("flaky", &payload, None)
        .await
        .unwrap_err()
    {
        RuntimeError::ActionFailed { code, message, .. } => {
            assert_eq!(
                (code.as_deref(), message.as_str()),
                (Some("retry"), "not yet")
            )
        }
        other => panic!("expected a retryable failure, got {other:?}"),
    }

    let err = instance
        .run_task("spin", &payload, Some(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Timeout { .. }), "{err:?}");

    // Without `kv` the counter cannot advance: `flaky` succeeds at once.
    let refusing = Arc::new(RecordingHost::default());
    let plain = runtime
        .start_wasm(
            env.package("refused", &lifecycle_guest().component(), ""),
            refusing,
        )
        .await
        .unwrap();
    let done = plain.run_task("flaky", &payload, None).await.unwrap();
    assert_eq!(done.result.get(), r#"{"value":{"t":2}}"#);
}
