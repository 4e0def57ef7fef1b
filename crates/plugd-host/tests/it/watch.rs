//! Hot reload from disk (`Host::watch`) and the supervision record, through the fake runtime:
//! real packages on disk, real inotify (and polling), no child processes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use plugd_host::{Host, PluginState, Trigger, WatchConfig, WatchMode};
use plugd_runtime::Health;

use crate::fake::Script;
use crate::support::{Fixture, call, eventually, info};

fn version(host: &Host, name: &str) -> String {
    info(host, name)
        .manifest
        .map(|m| m.version.to_string())
        .unwrap_or_default()
}

fn watch_swaps(host: &Host, name: &str) -> Vec<plugd_host::Swap> {
    info(host, name)
        .swaps
        .into_iter()
        .filter(|s| s.trigger == Trigger::Watch)
        .collect()
}

#[tokio::test]
async fn the_watcher_loads_added_reloads_changed_and_unloads_removed_packages() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let watching = host.watch(WatchConfig::default()).unwrap();
    assert_eq!(watching.mode(), WatchMode::Notify);

    // Added: loaded.
    f.fake_plugin("b", "1.0.0", &[], "");
    eventually("b loaded", || {
        host.plugin("b")
            .is_ok_and(|p| p.state == PluginState::Running)
    })
    .await;

    // Changed: the new version serves, the swap is recorded with its duration.
    f.fake_plugin("a", "1.1.0", &[], "");
    eventually("a reloaded", || version(&host, "a") == "1.1.0").await;
    assert!(
        call(&host, "a", "echo", "1")
            .await
            .unwrap()
            .contains("1.1.0")
    );
    let swap = watch_swaps(&host, "a").pop().expect("a swap record");
    assert_eq!(swap.from.unwrap().to_string(), "1.0.0");
    assert_eq!(swap.to.unwrap().to_string(), "1.1.0");
    assert!(swap.outcome.is_ok(), "{:?}", swap.outcome);
    assert!(swap.took > Duration::ZERO);

    // Removed: unloaded, with the reason.
    std::fs::remove_dir_all(f.plugins().join("b")).unwrap();
    eventually("b unloaded", || {
        info(&host, "b").state == PluginState::Stopped
    })
    .await;
    let reason = info(&host, "b").reason.unwrap();
    assert_eq!(reason, "removed from the plugins directory");
    assert!(script.stopped.lock().iter().any(|s| s.starts_with("b@")));
}

#[tokio::test]
async fn a_burst_of_writes_to_one_package_is_one_reload() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    // A debounce far longer than the burst, so the test does not depend on the machine's speed.
    let mut config = WatchConfig::default();
    config.debounce = Duration::from_millis(300);
    let _watching = host.watch(config).unwrap();
    let dir = f.plugins().join("a");
    for i in 0..50 {
        std::fs::write(dir.join(format!("module_{i}.py")), format!("X = {i}\n")).unwrap();
    }
    f.fake_plugin("a", "2.0.0", &[], "");
    eventually("a reloaded", || version(&host, "a") == "2.0.0").await;
    // Anything still pending settles within the debounce; a second change settles after it.
    f.fake_plugin("b", "1.0.0", &[], "");
    eventually("b loaded", || host.plugin("b").is_ok()).await;
    eventually("b running", || {
        info(&host, "b").state == PluginState::Running
    })
    .await;
    assert_eq!(
        watch_swaps(&host, "a").len(),
        1,
        "{:?}",
        watch_swaps(&host, "a")
    );
}

#[tokio::test]
async fn editor_noise_and_caches_never_reload() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    f.fake_plugin("b", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let _watching = host.watch(WatchConfig::default()).unwrap();
    let a = f.plugins().join("a");
    std::fs::create_dir_all(a.join("__pycache__")).unwrap();
    std::fs::write(a.join("__pycache__/main.cpython-311.pyc"), "x").unwrap();
    std::fs::create_dir_all(a.join(".git")).unwrap();
    std::fs::write(a.join(".git/index"), "x").unwrap();
    std::fs::write(a.join("main.py~"), "x").unwrap();
    std::fs::write(a.join(".main.py.swp"), "x").unwrap();
    std::fs::create_dir_all(f.plugins().join(".git")).unwrap();
    std::fs::write(f.plugins().join(".git/HEAD"), "x").unwrap();
    // A real change written after the noise: changes are applied in the order their packages
    // settle, so had the noise counted, `a` would have been reloaded before `b`.
    f.fake_plugin("b", "1.1.0", &[], "");
    eventually("b reloaded", || version(&host, "b") == "1.1.0").await;
    assert!(watch_swaps(&host, "a").is_empty());
}

#[tokio::test]
async fn a_broken_change_keeps_the_running_version_and_says_so() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let _watching = host.watch(WatchConfig::default()).unwrap();

    // A manifest that does not parse.
    std::fs::write(f.plugins().join("a/plugin.toml"), "[plugin\nname = ").unwrap();
    eventually("failure recorded", || !watch_swaps(&host, "a").is_empty()).await;
    let swap = watch_swaps(&host, "a").pop().unwrap();
    let reason = swap.outcome.unwrap_err();
    assert!(reason.contains("keeps serving"), "{reason}");
    assert_eq!(swap.from.unwrap().to_string(), "1.0.0");
    assert!(
        call(&host, "a", "echo", "1")
            .await
            .unwrap()
            .contains("1.0.0")
    );
    assert_eq!(info(&host, "a").state, PluginState::Running);

    // A version that cannot start.
    script.fail_start.lock().insert("a@1.2.0".into());
    f.fake_plugin("a", "1.2.0", &[], "");
    eventually("second failure recorded", || {
        watch_swaps(&host, "a").len() == 2
    })
    .await;
    let swap = watch_swaps(&host, "a").pop().unwrap();
    assert_eq!(swap.to.unwrap().to_string(), "1.2.0");
    assert!(swap.outcome.is_err());
    assert!(
        call(&host, "a", "echo", "1")
            .await
            .unwrap()
            .contains("1.0.0")
    );

    // Both are in the plugin's log and in the host's own event.
    let events = host
        .events_after(0, Some(plugd_host::RELOAD_FAILED), 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    let payload: serde_json::Value = serde_json::from_str(events[1].payload.get()).unwrap();
    assert_eq!(payload["plugin"], "a");
    assert_eq!(payload["trigger"], "watch");
    assert_eq!(payload["running"], "1.0.0");
    assert_eq!(payload["version"], "1.2.0");
    assert!(
        payload["reason"]
            .as_str()
            .unwrap()
            .contains("the fake was told to fail")
    );
    // Fixed on disk: the next change serves.
    script.fail_start.lock().clear();
    f.fake_plugin("a", "1.3.0", &[], "");
    eventually("a reloaded", || version(&host, "a") == "1.3.0").await;
}

#[tokio::test]
async fn polling_finds_changes_where_inotify_is_not_used() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let mut config = WatchConfig::default();
    config.poll = Some(Duration::from_millis(50));
    let watching = host.watch(config).unwrap();
    assert_eq!(watching.mode(), WatchMode::Poll(Duration::from_millis(50)));
    f.fake_plugin("a", "1.1.0", &[], "");
    eventually("a reloaded", || version(&host, "a") == "1.1.0").await;
    drop(watching);
}

#[tokio::test]
async fn faults_are_recorded_with_their_time_and_restart_clears_a_failed_plugin() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let before = std::time::SystemTime::now();
    script.set_health(
        "a",
        Health::Recovering {
            reason: "it is restarting after a crash: exit 1".into(),
        },
    );
    eventually("fault recorded", || info(&host, "a").faults.len() == 1).await;
    script.set_health("a", Health::Ready);
    script.set_health(
        "a",
        Health::Dead {
            reason: "crashed 6 times within 60s, gave up".into(),
        },
    );
    eventually("failed", || info(&host, "a").state == PluginState::Failed).await;
    let faults = info(&host, "a").faults;
    assert_eq!(faults.len(), 2, "{faults:?}");
    assert!(faults[0].reason.contains("exit 1"));
    assert!(faults[0].at >= before);
    assert!(faults[1].reason.contains("gave up"));

    let restarted = host.restart("a").await.unwrap();
    assert_eq!(restarted.state, PluginState::Running);
    let swap = restarted.swaps.last().unwrap().clone();
    assert_eq!(swap.trigger, Trigger::Restart);
    assert_eq!(swap.from, None, "it was not running");
    assert!(swap.outcome.is_ok());
    // The record outlives the instance it was about.
    assert_eq!(restarted.faults.len(), 2);
}

#[tokio::test]
async fn an_uninstalled_plugin_is_not_reinstalled_by_an_edit() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    host.uninstall("a", false).await.unwrap();
    let _watching = host.watch(WatchConfig::default()).unwrap();
    f.fake_plugin("a", "1.1.0", &[], "");
    // Changes apply in the order they settled (by name within one tick): once `b` runs, the
    // edit of `a`, written first, was handled.
    f.fake_plugin("b", "1.0.0", &[], "");
    eventually("b running", || {
        host.plugin("b")
            .is_ok_and(|p| p.state == PluginState::Running)
    })
    .await;
    assert_eq!(info(&host, "a").state, PluginState::Uninstalled);
    assert!(watch_swaps(&host, "a").is_empty());
}

#[tokio::test]
async fn an_unloaded_plugin_and_its_dependants_are_not_started_by_an_edit() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    f.fake_plugin("user", "1.0.0", &[("a", "^1")], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    host.unload("a").await.unwrap();
    let _watching = host.watch(WatchConfig::default()).unwrap();
    f.fake_plugin("a", "1.1.0", &[], "");
    f.fake_plugin("user", "1.1.0", &[("a", "^1")], "");
    // Changes apply in settle order (by name within a tick): once `z` runs, both edits were
    // handled.
    f.fake_plugin("z", "1.0.0", &[], "");
    eventually("z running", || {
        host.plugin("z")
            .is_ok_and(|p| p.state == PluginState::Running)
    })
    .await;
    for name in ["a", "user"] {
        assert_eq!(info(&host, name).state, PluginState::Stopped, "{name}");
        assert!(watch_swaps(&host, name).is_empty(), "{name}");
    }
    // `load` brings it back, with the edited version.
    host.load("user").await.unwrap();
    assert_eq!(version(&host, "a"), "1.1.0");
    assert_eq!(version(&host, "user"), "1.1.0");
}

#[tokio::test]
async fn a_reload_keeps_the_compiled_code_of_the_version_it_replaced() {
    let f = Fixture::new();
    f.fake_plugin("a", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    let at_start = script.collections.load(Ordering::SeqCst);
    assert!(at_start > 0, "the start collects what a previous run left");
    f.fake_plugin("a", "1.1.0", &[], "");
    host.reload("a").await.unwrap();
    // Staged copies go, compiled code stays: swapping back must not recompile.
    assert_eq!(script.collections.load(Ordering::SeqCst), at_start);
    host.collect_garbage().await.unwrap();
    assert_eq!(script.collections.load(Ordering::SeqCst), at_start + 1);
}
