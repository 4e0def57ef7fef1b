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
    f.fake_plugin("b", "1.0.0", &[], "");
    // The reload returns once the new version serves: the old one drains outside the lifecycle
    // lock, so other plugins' operations do not wait for its calls (up to their deadline).
    let reloaded = tokio::time::timeout(Duration::from_secs(5), host.reload("a")).await;
    assert!(reloaded.expect("the reload waited for the drain").is_ok());
    let loaded = tokio::time::timeout(Duration::from_secs(5), host.load("b")).await;
    assert!(
        loaded
            .expect("a load waited for another plugin's drain")
            .is_ok()
    );
    // New calls already go to the new version while the old one drains.
    let fresh = call(&host, "a", "echo", "1").await.unwrap();
    assert!(fresh.contains("2.0.0"), "{fresh}");
    assert!(
        script.stopped.lock().is_empty(),
        "the old version drains first"
    );
    // Garbage collection keeps the package the draining version runs from (a, its new
    // version, and b: three staged copies).
    let collected = host.collect_garbage().await.unwrap();
    assert!(collected.packages.is_empty(), "{:?}", collected.packages);
    let staged = std::fs::read_dir(f.dir.path().join("state/packages")).unwrap();
    assert_eq!(staged.count(), 3);
    script.gate.add_permits(3);
    for h in held {
        let answer = h.await.unwrap().unwrap();
        assert!(answer.contains("1.0.0"), "{answer}");
    }
    eventually("the old version stopped", || {
        !script.stopped.lock().is_empty()
    })
    .await;
    let stopped = script.stopped.lock().clone();
    assert_eq!(stopped.len(), 1);
    assert!(stopped[0].starts_with("a@1.0.0#"), "{stopped:?}");
}

#[tokio::test]
async fn a_draining_version_stops_with_its_plugin() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let h = host.clone();
    let held = tokio::spawn(async move { call(&h, "a", "wait", "7").await });
    eventually("call running", || info(&host, "a").in_flight == 1).await;
    f.fake_plugin("a", "2.0.0", &[], "");
    host.reload("a").await.unwrap();
    // Unloading stops the running version and the draining one, without waiting for its call.
    tokio::time::timeout(Duration::from_secs(5), host.unload("a"))
        .await
        .expect("the unload waited for the drain")
        .unwrap();
    let mut stopped = script.stopped.lock().clone();
    stopped.sort();
    assert_eq!(stopped.len(), 2, "{stopped:?}");
    assert!(stopped[0].starts_with("a@1.0.0#"), "{stopped:?}");
    assert!(stopped[1].starts_with("a@2.0.0#"), "{stopped:?}");
    // The held call ends (the fake's gate opens); the drain task finds nothing left to stop.
    script.gate.add_permits(1);
    let _ = held.await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(script.stopped.lock().len(), 2, "stopped once each");
    host.shutdown().await;
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
        let published = host.publish("n.x", serde_json::json!(i)).await.unwrap();
        assert_eq!(published.subscribers.len(), 1);
    }
    eventually("all delivered", || script.events_of("sub").len() == 200).await;
    let got: Vec<String> = script.events_of("sub").into_iter().map(|e| e.2).collect();
    let want: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
}

/// Many publishers at once on several threads: their events reach the in-memory window of
/// recent events out of order (and some appends commit on a worker, some in the writer's
/// batches), yet each subscriber gets every event once its turn comes, in `seq` order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_reach_every_subscriber_in_log_order() {
    let f = Fixture::new();
    f.fake_plugin("some", "1.0.0", &[], &subscribe(&["n.*"]));
    f.fake_plugin("all", "1.0.0", &[], &subscribe(&["*"]));
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..8 {
        let host = host.clone();
        publishers.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..150 {
                let topic = if i % 3 == 0 { "other.x" } else { "n.x" };
                let payload = format!("{p}-{i}");
                let published = host
                    .publish(topic, serde_json::json!(payload))
                    .await
                    .unwrap();
                seqs.push((published.seq, topic, payload));
            }
            seqs
        });
    }
    let mut all: Vec<(u64, &str, String)> = Vec::new();
    while let Some(seqs) = publishers.join_next().await {
        all.extend(seqs.unwrap());
    }
    all.sort();
    let want_all: Vec<String> = all.iter().map(|(_, _, p)| format!("\"{p}\"")).collect();
    let want_some: Vec<String> = all
        .iter()
        .filter(|(_, t, _)| *t == "n.x")
        .map(|(_, _, p)| format!("\"{p}\""))
        .collect();
    eventually("every event delivered", || {
        script.events_of("all").len() == want_all.len()
            && script.events_of("some").len() == want_some.len()
    })
    .await;
    let got =
        |name: &str| -> Vec<String> { script.events_of(name).into_iter().map(|e| e.2).collect() };
    assert_eq!(got("all"), want_all);
    assert_eq!(got("some"), want_some);
}

#[tokio::test]
async fn a_full_backlog_refuses_the_publisher_and_loses_nothing() {
    let f = Fixture::new();
    f.fake_plugin("slow", "1.0.0", &[], &subscribe(&["slow.*"]));
    f.fake_plugin("fast", "1.0.0", &[], &subscribe(&["slow.*"]));
    let script = Script::new();
    let host = f.fake_host_with(&script, |c| c.event_backlog = 50);
    host.start().await.unwrap();
    // `slow` holds its first event (gate closed); `fast` is not delayed by it.
    let mut accepted = 0;
    let refused = loop {
        match host.publish("slow.e", serde_json::json!(accepted)).await {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted <= 51, "the backlog is bounded");
        // `fast` must keep up, so that the backlog that fills is `slow`'s. Its delivery may wait
        // for the store's reader or writer thread, so no number of yields guarantees it (a
        // `yield_now` here lost the race under load, and `fast` was the one refused): wait for
        // it. (A publish that commits on this thread does not yield, and this runtime has one
        // thread, so the wait is also what lets the delivery tasks run.)
        eventually("the fast subscriber keeps up", || {
            script.events_of("fast").len() == accepted
        })
        .await;
    };
    assert_eq!(refused.code(), "overloaded");
    let text = refused.to_string();
    assert!(
        text.contains("plugin `slow` already has 50 events waiting"),
        "{text}"
    );
    eventually("the fast subscriber got everything", || {
        script.events_of("fast").len() == accepted
    })
    .await;
    script.gate.add_permits(1000);
    eventually("the slow one too, in order", || {
        script.events_of("slow").len() == accepted
    })
    .await;
    let got: Vec<String> = script.events_of("slow").into_iter().map(|e| e.2).collect();
    let want: Vec<String> = (0..accepted).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
    // The backlog drained: publishing works again.
    eventually("the backlog is empty", || {
        host.subscriber_info("slow").unwrap().backlog == 0
    })
    .await;
    host.publish("slow.e", serde_json::json!("again"))
        .await
        .unwrap();
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
    host.publish("bounce.ping", serde_json::json!({}))
        .await
        .unwrap();
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

#[tokio::test]
async fn bad_topics_and_payloads_are_refused_with_nothing_written() {
    let f = Fixture::new();
    let script = Script::new();
    f.fake_plugin("sub", "1.0.0", &[], &subscribe(&["t"]));
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let err = host.publish("", serde_json::json!(1)).await.unwrap_err();
    assert_eq!(err.code(), "bad_request");
    let err = host
        .publish("plugd.plugin.started", serde_json::json!(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    let big = serde_json::json!("x".repeat(plugd_host::MAX_EVENT_PAYLOAD));
    let err = host.publish("t", big).await.unwrap_err().to_string();
    assert!(err.contains("more than 262144"), "{err}");
    assert!(host.events_after(0, None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn log_lines_are_numbered_and_can_be_followed_after_a_seq() {
    let f = Fixture::new();
    f.fake_plugin("chatty", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let all = host.logs("chatty", 1000).unwrap();
    let seqs: Vec<u64> = all.iter().map(|l| l.seq).collect();
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(seqs, expected, "numbered from 1 without gaps");
    let mut updates = host.log_updates("chatty").unwrap();
    let newest = *updates.borrow_and_update();
    assert_eq!(newest, all.len() as u64);
    call(&host, "chatty", "log", r#"{"lines": 3, "text": "after"}"#)
        .await
        .unwrap();
    // The watch moved on; what follows `newest` is exactly the new lines.
    assert!(updates.has_changed().unwrap());
    let after = host.logs_after("chatty", Some(newest), 100).unwrap();
    let texts: Vec<&str> = after.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(texts, ["after", "after", "after"]);
    assert_eq!(after[0].seq, newest + 1);
    // `limit` takes the first lines after the seq (a follower pages forward), and the last
    // ones without a seq.
    let first = host.logs_after("chatty", Some(newest), 1).unwrap();
    assert_eq!(first[0].seq, newest + 1);
    assert_eq!(host.logs("chatty", 1).unwrap()[0].seq, newest + 3);
    assert!(
        host.logs_after("chatty", Some(newest + 3), 10)
            .unwrap()
            .is_empty()
    );
    let err = host.log_updates("nobody").unwrap_err();
    assert_eq!(err.code(), "plugin_not_found");
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
    host.publish("t", serde_json::json!(1)).await.unwrap();
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
        "[permissions]\nservices = [\"http\", \"kv\"]\n",
    );
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let denied = call(&host, "asker", "ask", r#"{"method": "http.fetch"}"#)
        .await
        .unwrap();
    assert_eq!(
        denied,
        "\"Service `http` is not available to plugin `asker` because it is untrusted (unsigned); hint: sign the package with `plugd sign` and add the key with `plugd trust add`\""
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
    // Each replaced version's copy goes once it has drained and stopped.
    eventually("replaced copies collected", || staged().len() == 1).await;
    let left = staged();
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

/// Asks the host `method` with `params` from inside a call of `plugin`'s `ask` action.
async fn ask(
    host: &plugd_host::Host,
    plugin: &str,
    method: &str,
    params: serde_json::Value,
) -> serde_json::Value {
    let payload = serde_json::json!({ "method": method, "params": params }).to_string();
    serde_json::from_str(&call(host, plugin, "ask", &payload).await.unwrap()).unwrap()
}

#[tokio::test]
async fn kv_commits_undo_and_redo_through_the_host() {
    let f = Fixture::new();
    let perms = "[permissions]\nservices = [\"kv\"]\n[limits]\nstorage = \"4KiB\"\n";
    f.fake_plugin("keeper", "1.0.0", &[], perms);
    f.fake_plugin("other", "1.0.0", &[], perms);
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    use serde_json::json;
    assert_eq!(
        ask(&host, "keeper", "kv.get", json!({"key": "a"})).await,
        json!({"found": false})
    );
    let c1 = ask(
        &host,
        "keeper",
        "kv.set",
        json!({"key": "a", "value": {"n": 1}}),
    )
    .await;
    assert!(c1["commit"].is_u64(), "{c1}");
    ask(
        &host,
        "keeper",
        "kv.commit",
        json!({"puts": {"b": 2, "c": 3}, "deletes": ["a"]}),
    )
    .await;
    assert_eq!(
        ask(&host, "keeper", "kv.list", json!({})).await,
        json!({"items": [{"key": "b", "value": 2}, {"key": "c", "value": 3}], "next": null})
    );
    // Undo reverts the whole commit; redo re-applies it.
    let undone = ask(&host, "keeper", "kv.undo", json!({})).await;
    assert!(undone["commit"].is_u64(), "{undone}");
    assert_eq!(
        ask(&host, "keeper", "kv.get", json!({"key": "a"})).await,
        json!({"found": true, "value": {"n": 1}})
    );
    assert_eq!(
        ask(&host, "keeper", "kv.get", json!({"key": "b"})).await,
        json!({"found": false})
    );
    ask(&host, "keeper", "kv.redo", json!({})).await;
    assert_eq!(
        ask(&host, "keeper", "kv.get", json!({"key": "b"})).await,
        json!({"found": true, "value": 2})
    );
    // Pages.
    let page = ask(&host, "keeper", "kv.list", json!({"limit": 1})).await;
    assert_eq!(
        page,
        json!({"items": [{"key": "b", "value": 2}], "next": "b"})
    );
    // Each plugin has its own namespace.
    assert_eq!(
        ask(&host, "other", "kv.get", json!({"key": "b"})).await,
        json!({"found": false})
    );
    // Past the quota: refused, nothing written.
    let big = "x".repeat(5000);
    let refused = ask(
        &host,
        "keeper",
        "kv.set",
        json!({"key": "big", "value": big}),
    )
    .await;
    assert!(refused.as_str().unwrap().contains("4096"), "{refused}");
    assert_eq!(
        ask(&host, "keeper", "kv.get", json!({"key": "big"})).await,
        json!({"found": false})
    );
    // Operators read it.
    let (listed, next) = host.kv_page("keeper", "", None, 10).await.unwrap();
    assert_eq!(next, None);
    assert_eq!(listed.len(), 2);
}

#[tokio::test]
async fn params_are_validated_stored_with_history_and_delivered() {
    let f = Fixture::new();
    let params = r#"
[params]
type = "object"
additionalProperties = false
[params.properties.batch_size]
type = "integer"
minimum = 1
default = 8
[params.properties.mode]
enum = ["fast", "exact"]
default = "fast"
"#;
    f.fake_plugin("gallery", "1.0.0", &[], params);
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    use serde_json::json;
    assert_eq!(
        host.params("gallery").await.unwrap().value,
        json!({"batch_size": 8, "mode": "fast"})
    );
    let err = host
        .set_params(
            "gallery",
            json!({"batch_size": 0, "mode": "slow", "extra": 1}),
            "test",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "bad_params");
    let message = err.to_string();
    for part in ["`/batch_size`", "`/mode`", "'extra' was unexpected"] {
        assert!(message.contains(part), "{message}");
    }
    assert!(script.params.lock().is_empty(), "nothing delivered");
    let new = host
        .set_params("gallery", json!({"batch_size": 32}), "test")
        .await
        .unwrap();
    assert_eq!(new, json!({"batch_size": 32, "mode": "fast"}));
    assert_eq!(script.params.lock()["gallery"], std::slice::from_ref(&new));
    let patched = host
        .patch_params("gallery", json!({"mode": "exact"}), "test")
        .await
        .unwrap();
    assert_eq!(patched, json!({"batch_size": 32, "mode": "exact"}));
    assert_eq!(
        ask(&host, "gallery", "params.get", json!({})).await,
        json!({"params": patched})
    );
    let history = host.params_history("gallery", 10).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].value, patched);
    // A new version whose schema no longer accepts `batch_size = 32` starts with the default and
    // says so; the old value stays in the history.
    f.fake_plugin(
        "gallery",
        "2.0.0",
        &[],
        &params.replace("minimum = 1", "minimum = 1\nmaximum = 16"),
    );
    host.reload("gallery").await.unwrap();
    assert_eq!(
        host.params("gallery").await.unwrap().value,
        json!({"batch_size": 8, "mode": "exact"})
    );
    let notes = info(&host, "gallery").notes;
    assert!(
        notes.iter().any(|n| n.contains(
            "Params `batch_size` of plugin `gallery` do not fit the schema of version 2.0.0"
        )),
        "{notes:?}"
    );
    let history = host.params_history("gallery", 10).await.unwrap();
    assert_eq!(history[1].value["batch_size"], 32, "the old value is kept");
}

/// A params change takes the lifecycle lock: during a reload it waits until the new version
/// serves, is validated by the new version's schema and delivered to it; an uninstalled plugin
/// takes no params (its stored ones were just removed; a reinstall starts clean).
#[tokio::test]
async fn a_params_change_meets_the_schema_of_the_version_that_serves() {
    use serde_json::json;
    let f = Fixture::new();
    let params = "[params]\ntype = \"object\"\n[params.properties.batch_size]\ntype = \"integer\"\nminimum = 1\ndefault = 8\n";
    f.fake_plugin("gallery", "1.0.0", &[], params);
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    // A call holds the old version, so it stays draining after the reload switched.
    let h = host.clone();
    let held = tokio::spawn(async move { call(&h, "gallery", "wait", "1").await });
    eventually("call running", || info(&host, "gallery").in_flight == 1).await;
    f.fake_plugin(
        "gallery",
        "2.0.0",
        &[],
        &params.replace("minimum = 1", "minimum = 1\nmaximum = 16"),
    );
    host.reload("gallery").await.unwrap();
    // 32 fits version 1's schema, not version 2's: a change made while version 1 drains is
    // checked against the version that serves.
    let refused = host
        .set_params("gallery", json!({"batch_size": 32}), "test")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "bad_params", "{refused}");
    script.gate.add_permits(1);
    held.await.unwrap().unwrap();
    assert!(host.params_history("gallery", 10).await.unwrap().is_empty());
    let fits = host
        .set_params("gallery", json!({"batch_size": 12}), "test")
        .await
        .unwrap();
    assert_eq!(script.params.lock()["gallery"], std::slice::from_ref(&fits));
    // Uninstalled: refused as a conflict with its state (409), nothing stored; `load` starts
    // clean with the defaults.
    host.uninstall("gallery", false).await.unwrap();
    let err = host
        .set_params("gallery", json!({"batch_size": 3}), "test")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "conflict", "{err}");
    assert!(err.to_string().contains("is uninstalled"), "{err}");
    host.load("gallery").await.unwrap();
    assert_eq!(
        host.params("gallery").await.unwrap().value,
        json!({"batch_size": 8})
    );
    assert!(host.params_history("gallery", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn plugins_call_their_dependencies_only_and_never_in_a_loop() {
    let f = Fixture::new();
    f.fake_plugin("store", "2.0.0", &[], "");
    f.fake_plugin("thumbs", "1.0.0", &[("store", "^2")], "");
    f.fake_plugin("stranger", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    use serde_json::json;
    let answer = ask(
        &host,
        "thumbs",
        "plugin.call",
        json!({"plugin": "store", "action": "echo", "payload": {"k": 1}}),
    )
    .await;
    assert_eq!(answer, json!({"value": {"k": 1}, "version": "2.0.0"}));
    // The callee saw who called.
    let chains = script.chains.lock().clone();
    assert!(
        chains.contains(&("store".to_owned(), vec!["thumbs".to_owned()])),
        "{chains:?}"
    );
    let refused = ask(
        &host,
        "stranger",
        "plugin.call",
        json!({"plugin": "store", "action": "echo", "payload": 1}),
    )
    .await;
    assert_eq!(
        refused,
        json!(
            "Plugin `stranger` may call only the plugins it depends on, and `store` is not in its `[dependencies]`; hint: add `store = \"*\"` (or a version requirement) there"
        )
    );
    // A chain that already holds the callee is a loop.
    let cycle = ask(
        &host,
        "thumbs",
        "plugin.call",
        json!({"plugin": "store", "action": "echo", "payload": 1, "context": {"chain": ["store"]}}),
    )
    .await;
    assert_eq!(
        cycle,
        json!(
            "Plugin `thumbs` cannot call `store`: the calls would loop (store → thumbs → store); calls between plugins may not form a cycle"
        )
    );
    // The caller's deadline travels: a callee call that waits longer than it fails in time.
    let timed = ask(&host, "thumbs", "plugin.call", json!({"plugin": "store", "action": "wait", "payload": 1, "context": {"chain": [], "deadline_ms": 50}})).await;
    assert!(
        timed
            .as_str()
            .unwrap()
            .contains("did not answer `wait` within 50ms"),
        "{timed}"
    );
}

struct Echoing;

#[async_trait::async_trait]
impl plugd_host::AppService for Echoing {
    async fn call(
        &self,
        caller: &plugd_manifest::PluginName,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, plugd_host::AppServiceError> {
        match method {
            "query" => Ok(serde_json::json!({"caller": caller.as_str(), "params": params})),
            _ => Err(plugd_host::AppServiceError::new(
                "unknown_method",
                format!("no method `{method}`"),
            )),
        }
    }
}

#[tokio::test]
async fn app_services_and_env_are_for_trusted_plugins_that_ask() {
    let f = Fixture::new();
    f.fake_plugin(
        "asker",
        "1.0.0",
        &[],
        "[permissions]\nservices = [\"app:db\"]\nenv = [\"PLUGD_TEST_SECRET\"]\n",
    );
    let script = Script::new();
    let mut config = plugd_host::HostConfig::new(f.plugins(), f.dir.path().join("state"));
    config.stop_grace = Duration::from_millis(100);
    let host = plugd_host::Host::builder(config)
        .runtime(std::sync::Arc::new(crate::fake::FakeRuntime {
            script: script.clone(),
        }))
        .service("db", std::sync::Arc::new(Echoing))
        .build();
    host.start().await.unwrap();
    use serde_json::json;
    // Unsigned: both refused, saying it is the trust level.
    let denied = ask(
        &host,
        "asker",
        "service.call",
        json!({"service": "db", "method": "query", "params": {}}),
    )
    .await;
    assert!(
        denied.as_str().unwrap().contains("because it is untrusted"),
        "{denied}"
    );
    let env = ask(
        &host,
        "asker",
        "env.get",
        json!({"name": "PLUGD_TEST_SECRET"}),
    )
    .await;
    assert!(
        env.as_str().unwrap().contains("because it is untrusted"),
        "{env}"
    );
    // Signed by a trusted key: granted.
    let key = crate::support::trusted_signing_key(&f);
    plugd_trust::sign_package(&f.plugins().join("asker"), &key).unwrap();
    host.reload("asker").await.unwrap();
    let answer = ask(
        &host,
        "asker",
        "service.call",
        json!({"service": "db", "method": "query", "params": {"q": 1}}),
    )
    .await;
    assert_eq!(answer, json!({"caller": "asker", "params": {"q": 1}}));
    let unknown = ask(
        &host,
        "asker",
        "service.call",
        json!({"service": "db", "method": "drop", "params": {}}),
    )
    .await;
    assert_eq!(unknown, json!("no method `drop`"));
    // SAFETY (test): this test alone reads the variable, and sets it before the read.
    unsafe { std::env::set_var("PLUGD_TEST_SECRET", "s3cret") };
    assert_eq!(
        ask(
            &host,
            "asker",
            "env.get",
            json!({"name": "PLUGD_TEST_SECRET"})
        )
        .await,
        json!({"value": "s3cret"})
    );
    let other = ask(&host, "asker", "env.get", json!({"name": "HOME"})).await;
    assert!(
        other
            .as_str()
            .unwrap()
            .contains("is not in `permissions.env`"),
        "{other}"
    );
}

#[tokio::test]
async fn uninstall_removes_the_data_and_keeps_the_plugin_down_until_load() {
    let f = Fixture::new();
    let perms = "[permissions]\nservices = [\"kv\"]\n";
    f.fake_plugin("store", "2.0.0", &[], perms);
    f.fake_plugin("thumbs", "1.0.0", &[("store", "^2")], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    use serde_json::json;
    ask(&host, "store", "kv.set", json!({"key": "k", "value": 1})).await;
    let data = f.dir.path().join("state/data/store");
    std::fs::write(data.join("file"), "x").unwrap();
    let gone = host.uninstall("store", false).await.unwrap();
    assert_eq!(gone.plugin.state, PluginState::Uninstalled);
    assert_eq!(
        gone.also_stopped
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>(),
        ["thumbs"]
    );
    assert!(!data.exists(), "the data dir is removed");
    // A new host (a restart) does not start it; `thumbs` cannot load without it.
    drop(host);
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    assert_eq!(info(&host, "store").state, PluginState::Uninstalled);
    let err = host.load("thumbs").await.unwrap_err().to_string();
    assert!(
        err.contains("its dependency `store` is uninstalled"),
        "{err}"
    );
    // `load` reinstalls it, starting clean.
    host.load("store").await.unwrap();
    assert_eq!(
        ask(&host, "store", "kv.get", json!({"key": "k"})).await,
        json!({"found": false})
    );
    assert!(
        f.plugins().join("store/plugin.toml").exists(),
        "the package is the operator's"
    );
}

#[tokio::test]
async fn a_copy_dropped_beside_a_running_plugin_stops_nothing() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    f.fake_plugin("b", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let copy = f.plugins().join("a-copy");
    std::fs::create_dir(&copy).unwrap();
    std::fs::copy(f.plugins().join("a/plugin.toml"), copy.join("plugin.toml")).unwrap();

    // Reloading another plugin leaves `a` serving: the duplicate is `a`'s business.
    f.fake_plugin("b", "1.1.0", &[], "");
    host.reload("b").await.unwrap();
    assert_eq!(info(&host, "a").state, PluginState::Running);
    assert!(
        call(&host, "a", "echo", "1")
            .await
            .unwrap()
            .contains("1.0.0")
    );
    assert!(script.stopped.lock().iter().all(|s| !s.starts_with("a@")));

    // Reloading `a` itself is refused, naming both directories; the running version serves on.
    let err = host.reload("a").await.unwrap_err().to_string();
    assert!(err.contains("keeps serving"), "{err}");
    assert!(err.contains("a-copy"), "{err}");
    assert!(
        call(&host, "a", "echo", "1")
            .await
            .unwrap()
            .contains("1.0.0")
    );
    host.shutdown().await;
}
