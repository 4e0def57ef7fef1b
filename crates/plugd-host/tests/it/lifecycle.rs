//! Discovery, waves, dependency failures, load / unload / reload.

use plugd_host::PluginState;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_in_waves_and_failures_take_down_only_dependants() {
    let f = Fixture::new();
    f.sdk_plugin("base", "1.0.0", &[], "", ECHO);
    f.sdk_plugin("mid", "1.0.0", &[("base", "^1")], "", ECHO);
    // `broken` dies before its handshake; `needs-broken` and `top` depend on it, transitively.
    f.plugin(
        "broken",
        "1.0.0",
        &[],
        "",
        "import sys\nprint('boom: missing config', file=sys.stderr)\nsys.exit(4)\n",
    );
    f.sdk_plugin("needs-broken", "1.0.0", &[("broken", "*")], "", ECHO);
    f.sdk_plugin(
        "top",
        "1.0.0",
        &[("needs-broken", "*"), ("mid", "^1")],
        "",
        ECHO,
    );
    f.sdk_plugin("lonely", "1.0.0", &[("ghost", "^2.0")], "", ECHO);
    f.sdk_plugin("old-user", "1.0.0", &[("base", "^2.0")], "", ECHO);
    let host = f.host();
    host.start().await.unwrap();

    assert_eq!(
        states(&host),
        [
            "base running",
            "broken failed",
            "lonely failed",
            "mid running",
            "needs-broken failed",
            "old-user failed",
            "top failed",
        ]
    );
    assert_eq!(info(&host, "base").wave, Some(0));
    assert_eq!(info(&host, "mid").wave, Some(1));
    let broken = info(&host, "broken").reason.unwrap();
    assert!(
        broken.contains("exited with status 4 before saying `hello`"),
        "{broken}"
    );
    assert!(broken.contains("boom: missing config"), "{broken}");
    let dependant = info(&host, "needs-broken").reason.unwrap();
    assert!(
        dependant.starts_with("Plugin `needs-broken` cannot load because `broken`"),
        "{dependant}"
    );
    assert!(info(&host, "top").reason.unwrap().contains("`broken`"));
    let lonely = info(&host, "lonely").reason.unwrap();
    assert!(
        lonely.contains("needs `ghost ^2.0`, but no plugin `ghost` is installed"),
        "{lonely}"
    );
    let old = info(&host, "old-user").reason.unwrap();
    assert!(
        old.contains("needs `base ^2.0`, but `base 1.0.0` is installed"),
        "{old}"
    );

    assert_eq!(
        call(&host, "mid", "echo", r#"{"x":1}"#).await.unwrap(),
        r#"{"value":{"x":1}}"#
    );
    let err = call(&host, "top", "echo", "{}").await.unwrap_err();
    assert_eq!(err.code(), "plugin_not_running");
    host.shutdown().await;
    assert!(host.plugins().iter().all(|p| p.pid.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_and_bad_manifests_are_reported_per_plugin() {
    let f = Fixture::new();
    f.sdk_plugin("a", "1.0.0", &[("b", "*")], "", ECHO);
    f.sdk_plugin("b", "1.0.0", &[("a", "*")], "", ECHO);
    f.sdk_plugin("fine", "1.0.0", &[], "", ECHO);
    std::fs::create_dir(f.plugins().join("typo")).unwrap();
    std::fs::write(
        f.plugins().join("typo/plugin.toml"),
        "[plugin]\nname = \"typo\"\nverison = \"1.0.0\"\nruntime = \"process\"\nentry = [\"python3\"]\n",
    )
    .unwrap();
    let host = f.host();
    host.start().await.unwrap();
    assert_eq!(
        states(&host),
        ["a failed", "b failed", "fine running", "typo failed"]
    );
    let cycle = info(&host, "a").reason.unwrap();
    assert!(cycle.contains("`a` → `b` → `a`"), "{cycle}");
    let typo = info(&host, "typo").reason.unwrap();
    assert!(
        typo.contains("Unknown key `verison` in `[plugin]`"),
        "{typo}"
    );
    assert!(typo.contains("did you mean `version`"), "{typo}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_load_and_reload_are_idempotent_and_follow_dependencies() {
    let f = Fixture::new();
    let version_action =
        |v: &str| format!("{ECHO}@plugin.action()\nasync def version(p):\n    return '{v}'\n");
    f.sdk_plugin("store", "2.0.0", &[], "", &version_action("2.0.0"));
    f.sdk_plugin("thumbs", "1.0.0", &[("store", "^2.0")], "", ECHO);
    let host = f.host();
    host.start().await.unwrap();

    // Unloading a dependency stops its dependant first; a second unload changes nothing.
    let first = host.unload("store").await.unwrap();
    assert_eq!(first.plugin.state, PluginState::Stopped);
    let names: Vec<String> = first.also_stopped.iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["thumbs"]);
    let again = host.unload("store").await.unwrap();
    assert_eq!(again.plugin.state, PluginState::Stopped);
    assert!(again.also_stopped.is_empty(), "nothing left to stop");
    let thumbs = info(&host, "thumbs");
    assert_eq!(thumbs.state, PluginState::Stopped);
    assert_eq!(
        thumbs.reason.as_deref(),
        Some("its dependency `store` was unloaded")
    );
    let err = call(&host, "thumbs", "echo", "{}").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Plugin `thumbs` is stopped: its dependency `store` was unloaded"
    );

    // Loading the dependant brings its dependency back; loading twice is a no-op.
    for _ in 0..2 {
        assert_eq!(
            host.load("thumbs").await.unwrap().state,
            PluginState::Running
        );
    }
    assert!(running(&host, "store"));
    let pid = info(&host, "thumbs").pid;
    host.load("thumbs").await.unwrap();
    assert_eq!(
        info(&host, "thumbs").pid,
        pid,
        "an idempotent load must not restart"
    );

    // Reload picks up the new version from disk and restarts the running dependant.
    f.sdk_plugin("store", "2.1.0", &[], "", &version_action("2.1.0"));
    let store = host.reload("store").await.unwrap();
    assert_eq!(store.manifest.unwrap().version.to_string(), "2.1.0");
    assert_eq!(
        call(&host, "store", "version", "{}").await.unwrap(),
        r#"{"value":"2.1.0"}"#
    );
    assert!(running(&host, "thumbs"));

    // A new version that breaks its dependant's requirement is refused; the old one keeps serving.
    f.sdk_plugin(
        "store",
        "3.0.0",
        &[("missing", "*")],
        "",
        &version_action("3.0.0"),
    );
    let err = host.reload("store").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("was not reloaded, the running version keeps serving"),
        "{err}"
    );
    assert_eq!(
        call(&host, "store", "version", "{}").await.unwrap(),
        r#"{"value":"2.1.0"}"#
    );

    // A package added after start can be loaded by name.
    f.sdk_plugin("late", "0.1.0", &[], "", ECHO);
    assert_eq!(host.load("late").await.unwrap().state, PluginState::Running);
    assert_eq!(
        host.load("nope").await.unwrap_err().code(),
        "plugin_not_found"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_subscribers_and_plugins_can_emit() {
    let f = Fixture::new();
    let listener = "@plugin.on_event('image.*')\nasync def seen(topic, payload):\n    plugin.log.info('got %s %s', topic, payload['n'])\n";
    f.sdk_plugin(
        "listener",
        "1.0.0",
        &[],
        "[events]\nsubscribe = [\"image.*\"]\n",
        listener,
    );
    let emitter = "@plugin.action()\nasync def fire(p):\n    plugin.emit('image.imported', {'n': p['n']})\n    return 'ok'\n";
    f.sdk_plugin(
        "emitter",
        "1.0.0",
        &[],
        "[permissions]\nservices = [\"events\"]\n",
        emitter,
    );
    f.sdk_plugin("muted", "1.0.0", &[], "", emitter);
    let host = f.host();
    host.start().await.unwrap();
    assert_eq!(
        host.publish("image.imported", serde_json::json!({"n": 1}))
            .await
            .unwrap()
            .subscribers
            .len(),
        1
    );
    assert_eq!(
        host.publish("video.imported", serde_json::json!({"n": 2}))
            .await
            .unwrap()
            .subscribers
            .len(),
        0
    );
    call(&host, "emitter", "fire", r#"{"n": 7}"#).await.unwrap();
    // Without the `events` service the emit is denied and logged, not delivered.
    call(&host, "muted", "fire", r#"{"n": 9}"#).await.unwrap();
    eventually("listener logs both events", || {
        let log = log_text(&host, "listener");
        log.contains("got image.imported 1") && log.contains("got image.imported 7")
    })
    .await;
    eventually("the denial is logged", || {
        log_text(&host, "muted").contains("Denied `emit` of `image.imported`")
    })
    .await;
    assert!(!log_text(&host, "listener").contains("got image.imported 9"));
    host.shutdown().await;
}
