//! The host's core mechanisms through the fake runtime: cancel-safe calls, the state machine
//! driven by pushed health, blue/green reload, bounded ordered events, and the log gate.

use std::time::Duration;

use plugd_host::PluginState;
use plugd_runtime::Health;

use crate::fake::Script;
use crate::support::{Fixture, call, eventually, info, log_text, raw};

fn subscribe(topics: &[&str]) -> String {
    let list: Vec<String> = topics.iter().map(|t| format!("\"{t}\"")).collect();
    format!("[events]\nsubscribe = [{}]\n", list.join(", "))
}

#[tokio::test]
async fn a_thousand_dropped_calls_leave_no_counter_behind() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    for _ in 0..1000 {
        let h = host.clone();
        // Each call parks on the closed gate; the timeout drops it mid-flight.
        let r = tokio::time::timeout(Duration::from_millis(1), async move {
            h.call("a", "wait", raw("{}")).await
        })
        .await;
        assert!(r.is_err());
    }
    assert_eq!(info(&host, "a").in_flight, 0);
    assert_eq!(
        script.live_calls.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // The plugin still serves.
    assert!(
        call(&host, "a", "echo", "1")
            .await
            .unwrap()
            .contains("1.0.0")
    );
}

#[tokio::test]
async fn a_dead_instance_fails_the_plugin_and_its_dependants_and_load_recovers() {
    let f = Fixture::new();
    f.fake_plugin("base", "1.0.0", &[], "");
    f.fake_plugin("app", "1.0.0", &[("base", "^1")], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    script.set_health(
        "base",
        Health::Dead {
            reason: "Plugin `base` crashed 6 times within 60s; gave up".into(),
        },
    );
    eventually("base and app failed", || {
        info(&host, "base").state == PluginState::Failed
            && info(&host, "app").state == PluginState::Failed
    })
    .await;
    assert_eq!(
        info(&host, "base").reason.as_deref(),
        Some("Plugin `base` crashed 6 times within 60s; gave up")
    );
    let app = info(&host, "app").reason.unwrap();
    assert!(app.contains("`base`, which it depends on, failed"), "{app}");
    let err = call(&host, "app", "echo", "1").await.unwrap_err();
    assert_eq!(err.code(), "plugin_not_running");
    // Both instances were stopped, not left running behind a `failed` state.
    let stopped = script.stopped.lock().clone();
    assert!(
        stopped.iter().any(|s| s.starts_with("base@")),
        "{stopped:?}"
    );
    assert!(stopped.iter().any(|s| s.starts_with("app@")), "{stopped:?}");
    // `load` really starts them again.
    host.load("app").await.unwrap();
    assert_eq!(info(&host, "base").state, PluginState::Running);
    assert_eq!(info(&host, "app").state, PluginState::Running);
    assert!(call(&host, "app", "echo", "2").await.is_ok());
}

#[tokio::test]
async fn a_health_report_from_a_replaced_generation_does_not_fail_its_successor() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let old = script.health.lock().keys().next().unwrap().clone();
    f.fake_plugin("a", "1.1.0", &[], "");
    host.reload("a").await.unwrap();
    script.health.lock()[&old].send_replace(Health::Dead {
        reason: "old one died".into(),
    });
    tokio::task::yield_now().await;
    assert!(
        call(&host, "a", "echo", "1")
            .await
            .unwrap()
            .contains("1.1.0")
    );
    assert_eq!(info(&host, "a").state, PluginState::Running);
}

#[tokio::test]
async fn a_reload_to_a_version_that_cannot_start_keeps_the_old_one_serving() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    f.fake_plugin("b", "1.0.0", &[("a", "^1")], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    f.fake_plugin("a", "1.1.0", &[], "");
    script.fail_start.lock().insert("a@1.1.0".into());
    let err = host.reload("a").await.unwrap_err().to_string();
    assert!(
        err.starts_with("Plugin `a` was not reloaded, the running version keeps serving:"),
        "{err}"
    );
    assert!(err.contains("the fake was told to fail"), "{err}");
    assert!(
        call(&host, "a", "echo", "1")
            .await
            .unwrap()
            .contains("1.0.0")
    );
    assert_eq!(info(&host, "b").state, PluginState::Running);
    assert!(script.stopped.lock().is_empty(), "nothing was stopped");
}

#[tokio::test]
async fn a_reload_of_a_broken_manifest_says_what_is_wrong() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    std::fs::write(
        f.plugins().join("a/plugin.toml"),
        "[plugin]\nname = \"a\"\n",
    )
    .unwrap();
    let err = host.reload("a").await.unwrap_err().to_string();
    assert!(
        err.contains("keeps serving: its new manifest is invalid"),
        "{err}"
    );
    assert!(call(&host, "a", "echo", "1").await.is_ok());
}

#[tokio::test]
async fn a_reload_drops_no_call_and_drains_the_old_version() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    // Three calls are running on the old version when the reload switches.
    let held: Vec<_> = (0..3)
        .map(|_| {
            let h = host.clone();
            tokio::spawn(async move { call(&h, "a", "wait", "7").await })
        })
        .collect();
    eventually("calls running", || info(&host, "a").in_flight == 3).await;
    f.fake_plugin("a", "2.0.0", &[], "");
    let h = host.clone();
    let reload = tokio::spawn(async move { h.reload("a").await });
    // New calls already go to the new version while the old one drains.
    eventually("switched", || {
        info(&host, "a").manifest.unwrap().version.to_string() == "2.0.0"
    })
    .await;
    let fresh = call(&host, "a", "echo", "1").await.unwrap();
    assert!(fresh.contains("2.0.0"), "{fresh}");
    assert!(
        script.stopped.lock().is_empty(),
        "the old version drains first"
    );
    script.gate.add_permits(3);
    for h in held {
        let answer = h.await.unwrap().unwrap();
        assert!(answer.contains("1.0.0"), "{answer}");
    }
    reload.await.unwrap().unwrap();
    let stopped = script.stopped.lock().clone();
    assert_eq!(stopped.len(), 1);
    assert!(stopped[0].starts_with("a@1.0.0#"), "{stopped:?}");
}

#[tokio::test]
async fn dependants_keep_running_when_their_requirement_holds_and_stop_when_it_breaks() {
    let f = Fixture::new();
    f.fake_plugin("store", "2.0.0", &[], "");
    f.fake_plugin("thumbs", "1.0.0", &[("store", "^2")], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    f.fake_plugin("store", "2.1.0", &[], "");
    host.reload("store").await.unwrap();
    let stopped = script.stopped.lock().clone();
    assert!(
        stopped.iter().all(|s| !s.starts_with("thumbs@")),
        "thumbs was not restarted: {stopped:?}"
    );
    assert_eq!(info(&host, "thumbs").state, PluginState::Running);
    f.fake_plugin("store", "3.0.0", &[], "");
    host.reload("store").await.unwrap();
    let thumbs = info(&host, "thumbs");
    assert_eq!(thumbs.state, PluginState::Failed);
    let reason = thumbs.reason.unwrap();
    assert!(reason.contains("store"), "{reason}");
    assert!(
        script
            .stopped
            .lock()
            .iter()
            .any(|s| s.starts_with("thumbs@"))
    );
}

#[tokio::test]
async fn events_arrive_in_publish_order_per_subscriber() {
    let f = Fixture::new();
    f.fake_plugin("sub", "1.0.0", &[], &subscribe(&["n.*"]));
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    for i in 0..200 {
        assert_eq!(host.publish("n.x", serde_json::json!(i)).unwrap(), 1);
    }
    eventually("all delivered", || script.events_of("sub").len() == 200).await;
    let got: Vec<String> = script.events_of("sub").into_iter().map(|e| e.2).collect();
    let want: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_slow_subscriber_gets_a_bounded_queue_and_the_drops_are_counted() {
    let f = Fixture::new();
    f.fake_plugin("slow", "1.0.0", &[], &subscribe(&["slow.*"]));
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let queue = plugd_host::EVENT_QUEUE;
    let mut queued = 0;
    for i in 0..queue + 100 {
        queued += host.publish("slow.e", serde_json::json!(i)).unwrap();
    }
    // One event is in the subscriber's hands, `queue` wait, the rest were dropped.
    assert!(queued <= queue + 1 && queued >= queue, "{queued}");
    assert!(log_text(&host, "slow").contains("Dropped event `slow.e`"));
    script.gate.add_permits(queue + 100);
    eventually("the queue drained", || {
        script.events_of("slow").len() == queued
    })
    .await;
}

#[tokio::test]
async fn two_plugins_cannot_bounce_events_forever() {
    let f = Fixture::new();
    let extra = "[permissions]\nservices = [\"events\"]\n";
    f.fake_plugin(
        "ping",
        "1.0.0",
        &[],
        &format!("{extra}{}", subscribe(&["bounce.ping"])),
    );
    f.fake_plugin(
        "pong",
        "1.0.0",
        &[],
        &format!("{extra}{}", subscribe(&["bounce.pong"])),
    );
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    host.publish("bounce.ping", serde_json::json!({})).unwrap();
    eventually("the chain was cut", || {
        script.emit_errors.lock().values().flatten().count() == 1
    })
    .await;
    let errors: Vec<String> = script
        .emit_errors
        .lock()
        .values()
        .flatten()
        .cloned()
        .collect();
    assert!(
        errors[0].contains("hop 9 of a chain of events (at most 8)"),
        "{errors:?}"
    );
    let total = script.events_of("ping").len() + script.events_of("pong").len();
    assert_eq!(total, 9, "the app's event and 8 hops");
}

#[test]
fn publish_works_outside_a_tokio_runtime() {
    let f = Fixture::new();
    let script = Script::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    f.fake_plugin("sub", "1.0.0", &[], &subscribe(&["t"]));
    let host = f.fake_host(&script);
    rt.block_on(host.start()).unwrap();
    let h = host.clone();
    let n = std::thread::spawn(move || h.publish("t", serde_json::json!(1)).unwrap())
        .join()
        .unwrap();
    assert_eq!(n, 1);
    let err = host.publish("", serde_json::json!(1)).unwrap_err();
    assert_eq!(err.code(), "bad_request");
}

#[tokio::test]
async fn a_plugin_log_flood_is_capped_rate_limited_and_escaped() {
    let f = Fixture::new();
    f.fake_plugin("noisy", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    call(&host, "noisy", "log", r#"{"lines": 20000, "text": "x"}"#)
        .await
        .unwrap();
    let kept = host
        .logs("noisy", 100_000)
        .unwrap()
        .into_iter()
        .filter(|l| l.message == "x")
        .count();
    assert!(kept <= 1000 + 50, "the burst, not 20,000: {kept}");
    let big = "y".repeat(4 << 20);
    let payload = serde_json::json!({"lines": 24, "text": big}).to_string();
    tokio::time::sleep(Duration::from_millis(200)).await; // refill a few tokens
    call(&host, "noisy", "log", &payload).await.unwrap();
    for line in host.logs("noisy", 100_000).unwrap() {
        assert!(line.message.len() <= plugd_runtime::MAX_LOG_LINE + 16);
    }
    let forged = r#"{"lines": 1, "text": "ok\nERROR plugd: forged \u001b[31m"}"#;
    tokio::time::sleep(Duration::from_millis(50)).await;
    call(&host, "noisy", "log", forged).await.unwrap();
    let text = log_text(&host, "noisy");
    assert!(
        text.contains("ok\\nERROR plugd: forged \\u{1b}[31m"),
        "escaped"
    );
    assert!(text.contains("Dropped"), "the drop was reported");
}

#[tokio::test]
async fn dropping_the_host_without_shutdown_frees_it() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    host.publish("t", serde_json::json!(1)).unwrap();
    drop(host);
    // No reference cycle (host → instance → services → host, or through the event task) keeps
    // the instance, and with it a child process, alive.
    eventually("the instance was dropped", || {
        script.dropped.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
}

const RESIZE: &str = r#"
[[actions]]
name = "resize"
[actions.input]
type = "object"
required = ["width"]
properties = { width = { type = "integer", minimum = 1 }, mode = { enum = ["fit", "fill"] } }
[[actions]]
name = "wait"
"#;

#[tokio::test]
async fn the_host_enforces_input_schemas_and_the_declared_actions() {
    let f = Fixture::new();
    f.fake_plugin("img", "1.0.0", &[], RESIZE);
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let ok = call(&host, "img", "resize", r#"{"width": 3, "mode": "fit"}"#).await;
    assert!(ok.is_ok(), "{ok:?}");
    let err = call(&host, "img", "resize", r#"{"width": 0, "mode": "zoom"}"#)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "bad_payload");
    assert_eq!(
        err.to_string(),
        "Plugin `img` rejected the payload for `resize`: `/mode`: \"zoom\" is not one of \"fit\" or \"fill\"; `/width`: 0 is less than the minimum of 1"
    );
    let err = call(&host, "img", "resize", "{}").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("`/`: \"width\" is a required property"),
        "{err}"
    );
    // Not declared: does not exist, whatever the code has.
    let err = call(&host, "img", "echo", "{}").await.unwrap_err();
    assert_eq!(err.code(), "action_not_found");
}

#[tokio::test]
async fn code_that_lacks_a_declared_action_does_not_start() {
    let f = Fixture::new();
    f.fake_plugin("img", "1.0.0", &[], RESIZE);
    f.fake_plugin("extra", "1.0.0", &[], RESIZE);
    let script = Script::new();
    script
        .announce
        .lock()
        .insert("img".into(), vec!["wait".into()]);
    script.announce.lock().insert(
        "extra".into(),
        vec!["wait".into(), "resize".into(), "secret".into()],
    );
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let img = info(&host, "img");
    assert_eq!(img.state, PluginState::Failed);
    assert_eq!(
        img.reason.unwrap(),
        "Plugin `img` declares `resize` in `plugin.toml`, but its code does not implement it; hint: add a handler for each declared action or remove it from `[[actions]]`"
    );
    assert_eq!(info(&host, "extra").state, PluginState::Running);
    assert!(
        log_text(&host, "extra")
            .contains("implements `secret`, which `plugin.toml` does not declare")
    );
    assert_eq!(
        call(&host, "extra", "secret", "{}")
            .await
            .unwrap_err()
            .code(),
        "action_not_found"
    );
}

#[tokio::test]
async fn a_plugin_over_its_disk_quota_is_stopped_with_the_reason() {
    let f = Fixture::new();
    f.fake_plugin("hoarder", "1.0.0", &[], "[limits]\ndisk = \"1MiB\"\n");
    f.fake_plugin("dependant", "1.0.0", &[("hoarder", "^1")], "");
    let script = Script::new();
    let host = f.fake_host_with(&script, |c| {
        c.disk_check_interval = Duration::from_millis(20)
    });
    host.start().await.unwrap();
    let data = f.dir.path().join("state/data/hoarder");
    std::fs::write(data.join("small"), vec![0u8; 100_000]).unwrap();
    eventually("measured", || info(&host, "hoarder").disk_used >= 100_000).await;
    assert_eq!(info(&host, "hoarder").state, PluginState::Running);
    std::fs::write(data.join("big"), vec![1u8; 2 << 20]).unwrap();
    eventually("stopped", || {
        info(&host, "hoarder").state == PluginState::Failed
    })
    .await;
    let reason = info(&host, "hoarder").reason.unwrap();
    assert!(
        reason.starts_with("Plugin `hoarder` was stopped: its data dir holds 2 MiB, more than its disk quota of 1 MiB (`limits.disk`)"),
        "{reason}"
    );
    eventually("dependant failed", || {
        info(&host, "dependant").state == PluginState::Failed
    })
    .await;
    // Freeing space and loading again works.
    std::fs::remove_file(data.join("big")).unwrap();
    host.load("dependant").await.unwrap();
    assert_eq!(info(&host, "hoarder").state, PluginState::Running);
}

#[tokio::test]
async fn limits_above_the_trust_ceiling_are_clamped_or_refused_in_strict_mode() {
    let f = Fixture::new();
    f.fake_plugin("greedy", "1.0.0", &[], "[limits]\nmemory = \"64GiB\"\n");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let greedy = info(&host, "greedy");
    assert_eq!(greedy.state, PluginState::Running);
    assert_eq!(greedy.limits.unwrap().memory, 512 << 20);
    assert!(log_text(&host, "greedy").contains(
        "asks for `limits.memory = \"64GiB\"`, more than the untrusted ceiling of \"512MiB\"; it gets \"512MiB\""
    ));
    // Strict mode refuses unsigned packages before ceilings matter; a custom ceiling in
    // strict mode is exercised through a trusted package in the trust tests.
    let f2 = Fixture::new();
    f2.fake_plugin("greedy", "1.0.0", &[], "[limits]\nconcurrency = 1000\n");
    let mut ceilings = plugd_host::Ceilings::default();
    ceilings.untrusted.concurrency = Some(10);
    let host = f2.fake_host_with(&script, |c| c.ceilings = ceilings);
    host.start().await.unwrap();
    assert_eq!(info(&host, "greedy").limits.unwrap().concurrency, 10);
}

#[tokio::test]
async fn a_service_denied_by_trust_says_so_and_an_undeclared_one_says_to_declare_it() {
    let f = Fixture::new();
    f.fake_plugin(
        "asker",
        "1.0.0",
        &[],
        "[permissions]\nservices = [\"plugins\", \"kv\"]\n",
    );
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let denied = call(&host, "asker", "ask", r#"{"method": "plugin.call"}"#)
        .await
        .unwrap();
    assert_eq!(
        denied,
        "\"Service `plugins` is not available to plugin `asker` because it is untrusted (unsigned); hint: sign the package with `plugd sign` and add the key with `plugd trust add`\""
    );
    let undeclared = call(&host, "asker", "ask", r#"{"method": "task.submit"}"#)
        .await
        .unwrap();
    assert_eq!(
        undeclared,
        "\"Service `tasks` is not granted to plugin `asker`; hint: add it to `permissions.services` in `plugin.toml`\""
    );
    assert_eq!(
        info(&host, "asker").denials,
        3,
        "the start-up denial and two requests"
    );
}

#[tokio::test]
async fn reloads_leave_one_staged_copy_and_gc_removes_unused_ones() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let staged = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(f.dir.path().join("state/packages"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    for v in ["1.1.0", "1.2.0", "1.3.0"] {
        f.fake_plugin("a", v, &[], "");
        host.reload("a").await.unwrap();
    }
    let left = staged();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("a-1.3.0-"), "{left:?}");
    // Once nothing runs from it, an explicit collection removes it.
    host.unload("a").await.unwrap();
    let collected = host.collect_garbage().await.unwrap();
    assert_eq!(collected.packages.len(), 1);
    assert!(collected.package_bytes > 0);
    assert!(staged().is_empty());
    // Loading again stages afresh.
    host.load("a").await.unwrap();
    assert_eq!(staged().len(), 1);
}
