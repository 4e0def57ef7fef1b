//! Script records: versions are content-addressed and immutable, rollback moves the current
//! pointer, runs are recorded from queued to their end, templates are named.

use plugd_store::{AddMode, NewRun, NewScriptVersion, RunEnd, StoreError, TemplateRecord};
use serde_json::json;

use crate::file_store;

fn version(id: &str, source: &str) -> NewScriptVersion {
    NewScriptVersion {
        script_id: id.to_owned(),
        digest: format!("sha256:{}", source.len()),
        source: source.to_owned(),
        meta: json!({"name": id}),
        lock: None,
    }
}

#[tokio::test]
async fn versions_are_content_addressed_and_rollback_moves_the_current_one() {
    let (store, _dir) = file_store().await;
    let added = store
        .add_script_version(version("s", "a"), AddMode::Create)
        .await
        .unwrap();
    assert_eq!((added.version, added.created), (1, true));
    // The id is taken for `Create`; `Edit` of a missing script is refused.
    let err = store
        .add_script_version(version("s", "b"), AddMode::Create)
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::ScriptExists { id: "s".into() });
    assert_eq!(err.code(), "conflict");
    let err = store
        .add_script_version(version("t", "b"), AddMode::Edit)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_found");
    let two = store
        .add_script_version(version("s", "bb"), AddMode::Edit)
        .await
        .unwrap();
    assert_eq!((two.version, two.created), (2, true));
    // The same content again is version 1, made current; nothing new is stored.
    let again = store
        .add_script_version(version("s", "a"), AddMode::Edit)
        .await
        .unwrap();
    assert_eq!((again.version, again.created), (1, false));
    let record = store.script("s").await.unwrap().unwrap();
    assert_eq!((record.current, record.latest), (1, 2));
    store.set_script_current("s", 2).await.unwrap();
    assert_eq!(store.script_version("s", None).await.unwrap().source, "bb");
    assert_eq!(
        store.set_script_current("s", 9).await.unwrap_err(),
        StoreError::ScriptVersionNotFound {
            id: "s".into(),
            version: 9
        }
    );
    assert_eq!(
        store
            .script_version("s", Some(u64::MAX))
            .await
            .unwrap_err()
            .code(),
        "not_found"
    );
    let all = store.script_versions("s").await.unwrap();
    assert_eq!(all.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2]);
    assert!(store.remove_script("s").await.unwrap());
    assert!(!store.remove_script("s").await.unwrap());
    assert!(store.script("s").await.unwrap().is_none());
    assert_eq!(
        store.script_versions("s").await.unwrap_err().code(),
        "not_found"
    );
}

#[tokio::test]
async fn runs_are_recorded_and_a_stopped_hosts_runs_are_marked_failed() {
    let (store, _dir) = file_store().await;
    let new = |label: &str| NewRun {
        script_id: Some(label.to_owned()),
        version: Some(1),
        digest: "sha256:x".into(),
        label: label.to_owned(),
        args: json!({"n": 1}),
        who: "cli".into(),
    };
    let a = store.insert_run(new("a")).await.unwrap();
    let b = store.insert_run(new("b")).await.unwrap();
    assert!(b > a);
    store.start_run(a).await.unwrap();
    store
        .finish_run(
            a,
            RunEnd {
                state: "succeeded".into(),
                exit_code: Some(0),
                output: "hi\n".into(),
                output_bytes: 3,
                result: Some(json!({"ok": true})),
                cpu_ms: Some(12),
                peak_rss: Some(1 << 20),
                ..RunEnd::default()
            },
        )
        .await
        .unwrap();
    let run = store.run(a).await.unwrap().unwrap();
    assert_eq!(run.state, "succeeded");
    assert_eq!(run.result, Some(json!({"ok": true})));
    assert_eq!(run.args, json!({"n": 1}));
    assert!(run.started_at_ms.is_some() && run.ended_at_ms.is_some());
    // Newest first, per script or all.
    let all = store.runs(None, None, 10).await.unwrap();
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), [b, a]);
    assert_eq!(store.runs(Some("a"), None, 10).await.unwrap().len(), 1);
    assert_eq!(store.runs(None, Some(b), 10).await.unwrap()[0].id, a);
    // Numbers past SQLite's integers name nothing; they are not errors.
    assert!(store.run(u64::MAX).await.unwrap().is_none());
    assert_eq!(store.runs(None, Some(u64::MAX), 10).await.unwrap().len(), 2);
    // A run that starts at once is recorded running, in one write; `start_run` leaves it be.
    let c = store.insert_started_run(new("c")).await.unwrap();
    let started = store.run(c).await.unwrap().unwrap();
    assert_eq!(started.state, "running");
    assert_eq!(started.started_at_ms, Some(started.queued_at_ms));
    store.start_run(c).await.unwrap();
    assert_eq!(store.run(c).await.unwrap().unwrap(), started);
    // `b` was left queued and `c` running by a host that stopped.
    assert_eq!(store.interrupt_runs().await.unwrap(), 2);
    assert_eq!(store.run(c).await.unwrap().unwrap().state, "failed");
    let b = store.run(b).await.unwrap().unwrap();
    assert_eq!(b.state, "failed");
    assert_eq!(
        b.reason.as_deref(),
        Some("the host stopped before the run ended")
    );
    // Purge by end time.
    assert_eq!(store.purge_runs(0).await.unwrap(), 0);
    assert_eq!(store.purge_runs(u64::MAX / 2).await.unwrap(), 3);
    assert!(store.run(a).await.unwrap().is_none());
}

#[tokio::test]
async fn templates_are_named_and_replaced_only_when_asked() {
    let (store, _dir) = file_store().await;
    let t = TemplateRecord {
        name: "csv".into(),
        description: "Reads a CSV".into(),
        source: "print('{{ x }}')".into(),
        vars: json!([{"name": "x", "type": "string"}]),
        created_at_ms: 0,
        updated_at_ms: 0,
    };
    let stored = store.put_template(t.clone(), false).await.unwrap();
    assert!(stored.created_at_ms > 0);
    assert_eq!(
        store.put_template(t.clone(), false).await.unwrap_err(),
        StoreError::TemplateExists { name: "csv".into() }
    );
    let mut changed = t.clone();
    changed.source = "pass".into();
    let replaced = store.put_template(changed, true).await.unwrap();
    assert_eq!(replaced.created_at_ms, stored.created_at_ms);
    assert_eq!(store.template("csv").await.unwrap().unwrap().source, "pass");
    assert_eq!(store.templates().await.unwrap().len(), 1);
    assert!(store.remove_template("csv").await.unwrap());
    assert!(store.template("csv").await.unwrap().is_none());
}
