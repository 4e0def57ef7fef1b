//! The registry as an embedder uses it (`Host::get` with typed errors, `plugins_by_kind`,
//! `PluginGuard`), the per-plugin call rate limit, and discovery of foreign and unreadable
//! packages, through the fake runtime.

use std::time::Duration;

use plugd_host::{HostError, PluginState, RegistryError};
use plugd_manifest::{Dialect, PluginKind};

use crate::fake::Script;
use crate::support::{Fixture, call, eventually, info};

/// Rewrites a fake plugin's manifest with `kind` in its `[plugin]` table.
fn with_kind(f: &Fixture, name: &str, kind: &str) {
    std::fs::write(
        f.plugins().join(name).join("plugin.toml"),
        format!(
            "[plugin]\nname = \"{name}\"\nversion = \"1.0.0\"\nkind = \"{kind}\"\nruntime = \"process\"\nentry = [\"python3\", \"main.py\"]\n"
        ),
    )
    .unwrap();
}

#[tokio::test]
async fn get_says_why_a_plugin_is_not_running() {
    let f = Fixture::new();
    f.fake_plugin("ok", "1.0.0", &[], "");
    f.fake_plugin("orphan", "1.0.0", &[("ghost", "^1")], "");
    f.fake_plugin("broken", "1.0.0", &[], "");
    std::fs::write(
        f.plugins().join("broken/plugin.toml"),
        "[plugin]\nname = \"broken\"\n",
    )
    .unwrap();
    let host = f.fake_host(&Script::new());
    host.start().await.unwrap();

    assert_eq!(host.get("ok").unwrap().state, PluginState::Running);
    match host.get("orphan") {
        Err(RegistryError::Dependency { name, reason }) => {
            assert_eq!(name, "orphan");
            assert!(reason.contains("`ghost`"), "{reason}");
        }
        other => panic!("expected a dependency error, got {other:?}"),
    }
    match host.get("broken") {
        Err(RegistryError::Load { reason, .. }) => {
            assert!(reason.contains("version"), "{reason}")
        }
        other => panic!("expected a load error, got {other:?}"),
    }
    assert!(matches!(
        host.get("nope"),
        Err(RegistryError::NotFound { name }) if name == "nope"
    ));
    host.unload("ok").await.unwrap();
    let err = host.get("ok").unwrap_err();
    assert!(matches!(
        err,
        RegistryError::NotRunning {
            state: PluginState::Stopped,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "Plugin `ok` is stopped; hint: `plugd load ok`"
    );
}

#[tokio::test]
async fn plugins_by_kind_lists_the_running_plugins_of_that_kind() {
    let f = Fixture::new();
    for (name, kind) in [("p1", "provider"), ("p2", "provider"), ("s1", "storage")] {
        f.fake_plugin(name, "1.0.0", &[], "");
        with_kind(&f, name, kind);
    }
    let host = f.fake_host(&Script::new());
    host.start().await.unwrap();
    let names = |kind| -> Vec<String> {
        host.plugins_by_kind(kind)
            .into_iter()
            .map(|p| p.name.to_string())
            .collect()
    };
    assert_eq!(names(PluginKind::Provider), ["p1", "p2"]);
    assert_eq!(names(PluginKind::Storage), ["s1"]);
    assert!(names(PluginKind::Monitor).is_empty());
    host.unload("p2").await.unwrap();
    assert_eq!(names(PluginKind::Provider), ["p1"]);
}

#[tokio::test]
async fn a_guard_keeps_its_plugin_running_until_stopped_or_dropped() {
    let f = Fixture::new();
    f.fake_plugin("svc", "1.0.0", &[], "");
    f.fake_plugin("orphan", "1.0.0", &[("ghost", "^1")], "");
    let host = f.fake_host(&Script::new());
    host.start().await.unwrap();
    host.unload("svc").await.unwrap();

    // A guard starts it; `stop` stops it at once.
    let guard = host.guard("svc").await.unwrap();
    assert_eq!(info(&host, "svc").state, PluginState::Running);
    let answer = guard
        .call(
            "echo",
            serde_json::value::RawValue::from_string("1".into()).unwrap(),
        )
        .await
        .unwrap();
    assert!(answer.result.get().contains("1.0.0"));
    guard.stop().await;
    assert_eq!(info(&host, "svc").state, PluginState::Stopped);

    // Guards count: the plugin stops when the last one ends, dropped or stopped.
    let first = host.guard("svc").await.unwrap();
    let second = host.guard("svc").await.unwrap();
    // Not the last guard: its drop decides at once that nothing stops.
    drop(first);
    assert_eq!(info(&host, "svc").state, PluginState::Running);
    drop(second);
    eventually("the last dropped guard stops its plugin", || {
        info(&host, "svc").state == PluginState::Stopped
    })
    .await;

    // A scope: started for the body, stopped after it.
    let seen = host
        .with_plugin("svc", |svc| async move { svc.info().state })
        .await
        .unwrap();
    assert_eq!(seen, PluginState::Running);
    assert_eq!(info(&host, "svc").state, PluginState::Stopped);

    // A plugin that ran before its guard keeps running after it.
    host.load("svc").await.unwrap();
    host.guard("svc").await.unwrap().stop().await;
    assert_eq!(info(&host, "svc").state, PluginState::Running);

    // A guard of a plugin that cannot start says why, typed.
    assert!(matches!(
        host.guard("orphan").await,
        Err(RegistryError::Dependency { .. })
    ));
}

#[tokio::test]
async fn calls_past_the_rate_limit_are_refused_with_when_to_retry() {
    let f = Fixture::new();
    f.fake_plugin(
        "limited",
        "1.0.0",
        &[],
        "[limits]\nrate = { calls = 3, per = \"60s\" }\n",
    );
    let host = f.fake_host(&Script::new());
    host.start().await.unwrap();
    for _ in 0..3 {
        call(&host, "limited", "echo", "1").await.unwrap();
    }
    match call(&host, "limited", "echo", "1").await {
        Err(e @ HostError::RateLimited { .. }) => {
            let HostError::RateLimited {
                calls,
                per,
                retry_after,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*calls, *per), (3, Duration::from_secs(60)));
            assert!(
                *retry_after <= Duration::from_secs(60) && *retry_after > Duration::from_secs(50)
            );
            assert_eq!(e.code(), "rate_limited");
            assert!(
                e.to_string()
                    .starts_with("Plugin `limited` accepts at most 3 calls per 60s")
            );
        }
        other => panic!("expected a rate limit, got {other:?}"),
    }
    // A refused call never reached the plugin.
    assert_eq!(info(&host, "limited").calls, 3);
}

#[tokio::test]
async fn foreign_packages_load_and_unreadable_directories_are_reported() {
    let f = Fixture::new();
    let plugins = f.plugins();
    std::fs::create_dir_all(plugins.join("notes/src")).unwrap();
    std::fs::write(
        plugins.join("notes/plugin.yaml"),
        "name: notes manager\nversion: 1.0.0\nexecution_mode: sandboxed\n",
    )
    .unwrap();
    std::fs::write(plugins.join("notes/src/main.py"), "class Plugin: pass\n").unwrap();
    std::fs::create_dir_all(plugins.join("just-docs")).unwrap();
    std::fs::write(plugins.join("just-docs/README.md"), "no plugin here\n").unwrap();
    std::fs::create_dir_all(plugins.join(".git")).unwrap();
    std::fs::create_dir_all(plugins.join("__pycache__")).unwrap();
    let host = f.fake_host(&Script::new());
    host.start().await.unwrap();

    let notes = info(&host, "notes-manager");
    assert_eq!(notes.state, PluginState::Running, "{:?}", notes.reason);
    let foreign = notes.manifest.as_ref().unwrap().foreign.as_ref().unwrap();
    assert_eq!(foreign.dialect, Dialect::Xcore);
    assert_eq!(foreign.original_name, "notes manager");

    let problems = host.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].path.ends_with("just-docs"));
    assert!(
        problems[0]
            .message
            .starts_with("No `plugin.toml` or `plugin.json` in")
    );
}

/// `*` (what a class-based plugin subscribes to) is every application topic, never the host's
/// own `plugd.*` events: those carry other plugins' errors and host paths.
#[tokio::test]
async fn a_star_subscription_gets_no_host_events() {
    let f = Fixture::new();
    f.fake_plugin("watcher", "1.0.0", &[], "[events]\nsubscribe = [\"*\"]\n");
    f.fake_plugin("other", "1.0.0", &[], "");
    let script = Script::new();
    let host = f.fake_host(&script);
    host.start().await.unwrap();
    // A failed reload of `other` publishes `plugd.plugin.reload_failed`.
    std::fs::write(
        f.plugins().join("other/plugin.toml"),
        "[plugin]\nname = \"other\"\n",
    )
    .unwrap();
    assert!(host.reload("other").await.is_err());
    let logged = host
        .events_after(0, Some(plugd_host::RELOAD_FAILED), 10)
        .await
        .unwrap();
    assert_eq!(logged.len(), 1, "the host event is in the log");
    host.publish("app.ping", serde_json::json!({}))
        .await
        .unwrap();
    eventually("the application event arrives", || {
        script
            .events_of("watcher")
            .iter()
            .any(|(_, topic, _)| topic == "app.ping")
    })
    .await;
    // Delivery is in publish order: had it matched, the host event would have come first.
    let topics: Vec<String> = script
        .events_of("watcher")
        .into_iter()
        .map(|(_, topic, _)| topic)
        .collect();
    assert_eq!(topics, ["app.ping"]);
}
