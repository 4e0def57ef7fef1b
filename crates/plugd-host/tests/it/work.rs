//! Durable events and tasks on the fake runtime: ordering, retries and dead letters,
//! backpressure, restarts of the plugin and of the host, and each task semantic one by one.

use std::time::Duration;

use plugd_host::{PluginState, TaskState, TaskSubmit, TaskView};
use plugd_runtime::Health;
use serde_json::json;

use crate::fake::Script;
use crate::support::{Fixture, eventually, info};

fn subscribe(topics: &[&str]) -> String {
    let list: Vec<String> = topics.iter().map(|t| format!("\"{t}\"")).collect();
    format!("[events]\nsubscribe = [{}]\n", list.join(", "))
}

/// Polls the store until task `id` is in `state` (the store is the truth; runs are async).
async fn wait_state(host: &plugd_host::Host, id: u64, state: TaskState) -> TaskView {
    let mut last = None;
    for _ in 0..1500 {
        let view = host.task(id).await.unwrap();
        if view.state == state {
            return view;
        }
        last = Some(view);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("task {id} never reached {state:?}; last: {last:#?}");
}

fn task(plugin: &str, name: &str, payload: serde_json::Value) -> TaskSubmit {
    TaskSubmit::new(plugin, name, payload)
}

#[tokio::test]
async fn undelivered_events_survive_a_restart_of_the_host_in_order() {
    let f = Fixture::new();
    f.fake_plugin("slowsub", "1.0.0", &[], &subscribe(&["slow.*"]));
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    for i in 0..5 {
        host.publish("slow.e", json!(i)).await.unwrap();
    }
    // The first is in the handler (gate closed), nothing is acknowledged.
    host.shutdown().await;
    drop(host);
    assert!(script.events_of("slowsub").is_empty());

    let again = Script::new();
    again.gate.add_permits(100);
    let host = f.fake_host(&again);
    host.start().await.unwrap();
    eventually("the five events arrived", || {
        again.events_of("slowsub").len() == 5
    })
    .await;
    let got: Vec<String> = again
        .events_of("slowsub")
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert_eq!(got, ["0", "1", "2", "3", "4"]);
    host.shutdown().await;
}

#[tokio::test]
async fn a_failing_handler_is_retried_then_dead_lettered_and_can_be_replayed() {
    let f = Fixture::new();
    f.fake_plugin("sub", "1.0.0", &[], &subscribe(&["fail.*"]));
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    script
        .event_failures
        .lock()
        .insert("sub".into(), plugd_host::EVENT_ATTEMPTS);
    let first = host.publish("fail.first", json!(1)).await.unwrap();
    host.publish("fail.second", json!(2)).await.unwrap();
    // The second waits behind the first's retries, then arrives.
    eventually("the second event arrived", || {
        script.events_of("sub").iter().any(|e| e.1 == "fail.second")
    })
    .await;
    assert!(
        !script.events_of("sub").iter().any(|e| e.1 == "fail.first"),
        "the first was never handled"
    );
    let dead = host.dead_events(Some("sub"), 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].event.seq, first.seq);
    assert_eq!(dead[0].attempts, plugd_host::EVENT_ATTEMPTS);
    assert!(
        dead[0].error.contains("the fake handler failed"),
        "{dead:?}"
    );
    let info = host.subscriber_info("sub").unwrap();
    assert_eq!((info.dead, info.failures), (1, 5));

    // Replay: the copy goes to `sub` alone and the dead letter is gone.
    let copy = host.replay_dead("sub", first.seq).await.unwrap();
    assert!(copy > first.seq);
    eventually("the replayed event arrived", || {
        script.events_of("sub").iter().any(|e| e.1 == "fail.first")
    })
    .await;
    assert!(host.dead_events(Some("sub"), 10).await.unwrap().is_empty());
    let err = host.replay_dead("sub", first.seq).await.unwrap_err();
    assert_eq!(err.code(), "not_found");
    host.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_that_failed_gets_what_it_missed_when_it_runs_again() {
    let f = Fixture::new();
    f.fake_plugin("sub", "1.0.0", &[], &subscribe(&["n.*"]));
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    script.set_health(
        "sub",
        Health::Dead {
            reason: "crashed too often".into(),
        },
    );
    eventually("failed", || info(&host, "sub").state == PluginState::Failed).await;
    for i in 0..3 {
        let published = host.publish("n.x", json!(i)).await.unwrap();
        assert_eq!(
            published.subscribers.len(),
            1,
            "a failed plugin keeps its place"
        );
    }
    host.load("sub").await.unwrap();
    eventually("delivered after the restart", || {
        script.events_of("sub").len() == 3
    })
    .await;
    // An unloaded plugin is no subscriber any more.
    host.unload("sub").await.unwrap();
    let published = host.publish("n.x", json!(9)).await.unwrap();
    assert!(published.subscribers.is_empty());
    host.shutdown().await;
}

#[tokio::test]
async fn a_task_runs_and_keeps_its_result() {
    let f = Fixture::new();
    f.fake_plugin("worker", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let submitted = host
        .submit(task("worker", "ok", json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(submitted.state, TaskState::Queued);
    let done = wait_state(&host, submitted.id, TaskState::Succeeded).await;
    assert_eq!(
        done.result,
        Some(json!({"payload": {"n": 1}, "attempt": 1}))
    );
    assert_eq!(done.attempts, 1);
    assert!(done.started_ms.is_some() && done.finished_ms.is_some());
    let listed = host
        .tasks(plugd_host::TaskQuery {
            plugin: Some("worker".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    host.shutdown().await;
}

#[tokio::test]
async fn bad_submits_are_refused_with_the_reason() {
    let f = Fixture::new();
    f.fake_plugin("worker", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let err = host
        .submit(task("nobody", "ok", json!(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "plugin_not_found");
    for bad in ["", "@after_last", "has space", &"x".repeat(65)] {
        let err = host
            .submit(task("worker", bad, json!(1)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "bad_request", "{bad:?}: {err}");
    }
    let mut t = task("worker", "ok", json!(1));
    t.max_attempts = Some(0);
    assert_eq!(host.submit(t).await.unwrap_err().code(), "bad_request");
    let err = host.task(424242).await.unwrap_err();
    assert_eq!(err.code(), "not_found");
    // An unknown task name fails for good, naming the fix.
    let unknown = host.submit(task("worker", "nope", json!(1))).await.unwrap();
    let failed = wait_state(&host, unknown.id, TaskState::Failed).await;
    assert_eq!(failed.error_code.as_deref(), Some("task_not_found"));
    assert!(failed.error.unwrap().contains("@plugin.task(\"nope\")"));
    host.shutdown().await;
}

const ONE_AT_A_TIME: &str = "[limits]\ntasks = 1\n";

#[tokio::test]
async fn priority_tasks_run_first_then_fifo_one_at_a_time() {
    let f = Fixture::new();
    f.fake_plugin("worker", "1.0.0", &[], ONE_AT_A_TIME);
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    // `wait` holds the only task slot until the gate opens.
    let blocker = host.submit(task("worker", "wait", json!(0))).await.unwrap();
    wait_state(&host, blocker.id, TaskState::Running).await;
    let a = host.submit(task("worker", "ok", json!("a"))).await.unwrap();
    let mut b = task("worker", "ok", json!("b"));
    b.priority = true;
    let b = host.submit(b).await.unwrap();
    let c = host.submit(task("worker", "ok", json!("c"))).await.unwrap();
    assert_eq!(host.task(a.id).await.unwrap().state, TaskState::Queued);
    script.gate.add_permits(1);
    wait_state(&host, c.id, TaskState::Succeeded).await;
    let order: Vec<u64> = script.task_runs.lock().iter().map(|r| r.2).collect();
    assert_eq!(order, [blocker.id, b.id, a.id, c.id]);
    host.shutdown().await;
}

#[tokio::test]
async fn retryable_failures_and_crashes_are_retried_up_to_max_attempts() {
    let f = Fixture::new();
    f.fake_plugin("worker", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let flaky = host
        .submit(task("worker", "flaky", json!({"n": 2})))
        .await
        .unwrap();
    let final_fail = host.submit(task("worker", "fail", json!(0))).await.unwrap();
    let mut crash = task("worker", "crash", json!(0));
    crash.max_attempts = Some(2);
    let crash = host.submit(crash).await.unwrap();
    let done = wait_state(&host, flaky.id, TaskState::Succeeded).await;
    assert_eq!(done.attempts, 2, "one retry");
    let failed = wait_state(&host, final_fail.id, TaskState::Failed).await;
    assert_eq!(
        (failed.attempts, failed.error_code.as_deref()),
        (1, Some("boom"))
    );
    let crashed = wait_state(&host, crash.id, TaskState::Failed).await;
    assert_eq!(
        crashed.attempts, 2,
        "a crash is retried, up to max_attempts"
    );
    assert_eq!(crashed.error_code.as_deref(), Some("plugin_crashed"));
    host.shutdown().await;
}

#[tokio::test]
async fn cancel_is_immediate_when_queued_and_asks_the_handler_when_running() {
    let f = Fixture::new();
    f.fake_plugin("worker", "1.0.0", &[], ONE_AT_A_TIME);
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let running = host.submit(task("worker", "wait", json!(0))).await.unwrap();
    wait_state(&host, running.id, TaskState::Running).await;
    let queued = host.submit(task("worker", "ok", json!(1))).await.unwrap();
    let cancelled = host.cancel_task(queued.id, "the test").await.unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    assert_eq!(cancelled.stopped, None, "it never ran");
    let cancelled = host.cancel_task(running.id, "the test").await.unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    assert_eq!(cancelled.stopped, Some(true));
    assert!(cancelled.error.unwrap().contains("the handler stopped"));
    let err = host.cancel_task(running.id, "the test").await.unwrap_err();
    assert_eq!(err.code(), "conflict");
    let runs: Vec<u64> = script.task_runs.lock().iter().map(|r| r.2).collect();
    assert_eq!(runs, [running.id], "the queued one never ran");
    host.shutdown().await;
}

#[tokio::test]
async fn dedupe_returns_the_queued_task_of_the_key() {
    let f = Fixture::new();
    f.fake_plugin("worker", "1.0.0", &[], ONE_AT_A_TIME);
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let blocker = host.submit(task("worker", "wait", json!(0))).await.unwrap();
    wait_state(&host, blocker.id, TaskState::Running).await;
    let keyed = |dedupe| {
        let mut t = task("worker", "ok", json!("k"));
        t.key = Some("thumbs".into());
        t.dedupe = dedupe;
        t
    };
    let first = host.submit(keyed(true)).await.unwrap();
    let second = host.submit(keyed(true)).await.unwrap();
    assert_eq!(second.id, first.id);
    assert!(second.deduped && !first.deduped);
    let third = host.submit(keyed(false)).await.unwrap();
    assert_ne!(third.id, first.id, "without dedupe: a new task");
    script.gate.add_permits(1);
    wait_state(&host, third.id, TaskState::Succeeded).await;
    host.shutdown().await;
}

#[tokio::test]
async fn after_last_runs_once_when_the_last_task_of_its_key_finishes() {
    let f = Fixture::new();
    f.fake_plugin("worker", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut t = task("worker", if i == 1 { "fail" } else { "ok" }, json!(i));
        t.key = Some("index".into());
        ids.push(host.submit(t).await.unwrap().id);
    }
    wait_state(&host, ids[2], TaskState::Succeeded).await;
    let hook_runs = || {
        script
            .task_runs
            .lock()
            .iter()
            .filter(|r| r.1 == "@after_last")
            .map(|r| r.4.clone())
            .collect::<Vec<_>>()
    };
    eventually("the hook ran", || !hook_runs().is_empty()).await;
    // Give a second (wrong) run every chance to show up: the hook's own end is recorded.
    let hooks = host
        .tasks(plugd_host::TaskQuery {
            key: Some("index".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.task == "@after_last")
        .collect::<Vec<_>>();
    assert_eq!(hooks.len(), 1, "{hooks:#?}");
    wait_state(&host, hooks[0].id, TaskState::Succeeded).await;
    assert_eq!(hook_runs(), [Some("index".to_owned())]);
    host.shutdown().await;
}

#[tokio::test]
async fn queued_tasks_survive_a_restart_of_the_host() {
    let f = Fixture::new();
    f.fake_plugin("worker", "1.0.0", &[], ONE_AT_A_TIME);
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let blocker = host.submit(task("worker", "wait", json!(0))).await.unwrap();
    wait_state(&host, blocker.id, TaskState::Running).await;
    let queued = host
        .submit(task("worker", "ok", json!("later")))
        .await
        .unwrap();
    host.shutdown().await;
    drop(host);

    let again = Script::new();
    again.gate.add_permits(10);
    let host = f.fake_host(&again);
    host.start().await.unwrap();
    let rerun = wait_state(&host, blocker.id, TaskState::Succeeded).await;
    assert_eq!(rerun.attempts, 2, "the cut-short run counts");
    let done = wait_state(&host, queued.id, TaskState::Succeeded).await;
    assert_eq!(done.attempts, 1);
    host.shutdown().await;
}

#[tokio::test]
async fn a_full_task_queue_refuses_the_submitter() {
    let f = Fixture::new();
    f.fake_plugin("worker", "1.0.0", &[], ONE_AT_A_TIME);
    let script = Script::new();
    let host = f.fake_host_with(&script, |c| c.task_queue = 3);
    host.start().await.unwrap();
    let blocker = host.submit(task("worker", "wait", json!(0))).await.unwrap();
    wait_state(&host, blocker.id, TaskState::Running).await;
    for i in 0..3 {
        host.submit(task("worker", "ok", json!(i))).await.unwrap();
    }
    let err = host
        .submit(task("worker", "ok", json!(9)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "overloaded");
    assert!(err.to_string().contains("3 queued tasks"), "{err}");
    script.gate.add_permits(1);
    host.shutdown().await;
}

#[tokio::test]
async fn progress_reaches_the_task_view_while_it_runs() {
    let f = Fixture::new();
    f.fake_plugin("worker", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let mut updates = host.task_updates();
    let t = host
        .submit(task("worker", "progress", json!(0)))
        .await
        .unwrap();
    let mut saw_progress = false;
    while let Ok(Ok(update)) = tokio::time::timeout(Duration::from_secs(5), updates.recv()).await {
        if update.id == t.id && update.progress == Some(0.5) {
            assert_eq!(update.message.as_deref(), Some("half"));
            saw_progress = true;
        }
        if update.id == t.id && update.state.is_finished() {
            assert_eq!(update.progress, Some(0.5), "kept with the outcome");
            break;
        }
    }
    assert!(saw_progress);
    host.shutdown().await;
}

#[tokio::test]
async fn a_task_past_its_timeout_fails_for_good() {
    let f = Fixture::new();
    f.fake_plugin(
        "worker",
        "1.0.0",
        &[],
        "[limits]\ntask_timeout = \"200ms\"\n",
    );
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let t = host.submit(task("worker", "wait", json!(0))).await.unwrap();
    let failed = wait_state(&host, t.id, TaskState::Failed).await;
    assert_eq!(failed.error_code.as_deref(), Some("task_timeout"));
    assert_eq!(failed.attempts, 1, "a timeout is not retried");
    assert!(failed.error.unwrap().contains("limits.task_timeout"));
    host.shutdown().await;
}
