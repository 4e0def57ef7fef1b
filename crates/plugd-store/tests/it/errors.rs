//! Every `StoreError` with its exact message and code, and proof that a refused commit wrote
//! nothing.

use plugd_store::{Commit, KvLimits, Store, StoreError};
use serde_json::json;

use crate::puts;

fn check(err: StoreError, code: &str, message: &str) {
    assert_eq!(err.to_string(), message);
    assert_eq!(err.code(), code, "{message}");
}

/// Commits `commit` to a store holding `k0 = 0`, expects it refused, and checks nothing changed.
async fn refused(commit: Commit, limits: KvLimits) -> StoreError {
    let store = Store::in_memory_for_tests();
    store
        .kv_commit("p", puts(&[("k0", json!(0))]), &limits)
        .await
        .expect("the first commit");
    let used = store.kv_usage("p").await.unwrap();
    let err = store.kv_commit("p", commit, &limits).await.unwrap_err();
    assert_eq!(store.kv_usage("p").await.unwrap(), used);
    let all = store.kv_list("p", "", None, 100).await.unwrap();
    assert_eq!(
        all,
        vec![("k0".to_owned(), json!(0))],
        "nothing half-written"
    );
    // The refused commit is not in the history: one undo removes k0, a second has nothing.
    assert!(store.kv_undo("p").await.unwrap().is_some());
    assert_eq!(store.kv_undo("p").await.unwrap(), None);
    err
}

#[tokio::test]
async fn empty_key() {
    let err = refused(puts(&[("", json!(1))]), KvLimits::default()).await;
    check(
        err,
        "bad_request",
        "Key is empty; hint: use a key of at least one byte",
    );
}

#[tokio::test]
async fn key_with_nul() {
    let err = refused(puts(&[("a\0b", json!(1))]), KvLimits::default()).await;
    check(
        err,
        "bad_request",
        "Key `a\\0b` contains a NUL byte; hint: remove the NUL byte from the key",
    );
}

#[tokio::test]
async fn key_too_long() {
    let limits = KvLimits {
        max_key: 4,
        ..KvLimits::default()
    };
    let err = refused(puts(&[("abcde", json!(1))]), limits).await;
    check(
        err,
        "bad_request",
        "Key `abcde` is 5 bytes, over the limit of 4 bytes; hint: use a shorter key",
    );
    // A very long key is shortened in the message; limits apply to deletes and expects too.
    let long = "k".repeat(2000);
    let commit = Commit {
        deletes: vec![long],
        ..Commit::default()
    };
    let err = refused(commit, KvLimits::default()).await;
    check(
        err,
        "bad_request",
        &format!(
            "Key `{}…` is 2000 bytes, over the limit of 1024 bytes; hint: use a shorter key",
            "k".repeat(64)
        ),
    );
    let commit = Commit {
        puts: vec![("ok".into(), json!(1))],
        expect: vec![("".into(), None)],
        ..Commit::default()
    };
    check(
        refused(commit, KvLimits::default()).await,
        "bad_request",
        "Key is empty; hint: use a key of at least one byte",
    );
}

#[tokio::test]
async fn value_too_large() {
    let limits = KvLimits {
        max_value: 10,
        ..KvLimits::default()
    };
    // "0123456789" is 12 bytes of JSON with its quotes.
    let err = refused(puts(&[("v", json!("0123456789"))]), limits).await;
    check(
        err,
        "bad_request",
        "Value of key `v` is 12 bytes of JSON, over the limit of 10 bytes; hint: split it over several keys or keep large data in the plugin's data dir",
    );
    // Exactly at the limit is fine.
    let store = Store::in_memory_for_tests();
    store
        .kv_commit("p", puts(&[("v", json!("01234567"))]), &limits)
        .await
        .expect("10 bytes of JSON is within the limit");
}

#[tokio::test]
async fn duplicate_key() {
    let commit = Commit {
        puts: vec![("a".into(), json!(1))],
        deletes: vec!["a".into()],
        ..Commit::default()
    };
    let err = refused(commit, KvLimits::default()).await;
    check(
        err,
        "bad_request",
        "Key `a` appears more than once in one commit; hint: put or delete each key at most once per commit",
    );
    let err = refused(
        puts(&[("b", json!(1)), ("b", json!(2))]),
        KvLimits::default(),
    )
    .await;
    assert!(matches!(err, StoreError::DuplicateKey { key } if key == "b"));
}

#[tokio::test]
async fn empty_commit() {
    let commit = Commit {
        expect: vec![("k0".into(), Some(json!(0)))],
        ..Commit::default()
    };
    let err = refused(commit, KvLimits::default()).await;
    check(
        err,
        "bad_request",
        "Commit has no puts and no deletes; hint: put or delete at least one key",
    );
}

#[tokio::test]
async fn quota_exceeded() {
    // k0 = 0 uses 3 bytes; "123456789012" is 14 bytes of JSON plus 1 of key: 18 in all.
    let limits = KvLimits {
        quota: 17,
        ..KvLimits::default()
    };
    let err = refused(puts(&[("k", json!("123456789012"))]), limits).await;
    check(
        err,
        "limit_exceeded",
        "Plugin `p` would use 18 bytes of kv storage, over its quota of 17 bytes; hint: delete keys or raise `limits.storage` in its manifest",
    );
    // A commit that frees space passes even when the plugin is over a lowered quota.
    let store = Store::in_memory_for_tests();
    let roomy = KvLimits::default();
    store
        .kv_commit(
            "p",
            puts(&[("a", json!("xxxxxxxx")), ("b", json!(1))]),
            &roomy,
        )
        .await
        .unwrap();
    let tight = KvLimits { quota: 1, ..roomy };
    let shrink = Commit {
        deletes: vec!["a".into()],
        ..Commit::default()
    };
    store
        .kv_commit("p", shrink, &tight)
        .await
        .expect("freeing space is allowed");
    assert_eq!(store.kv_usage("p").await.unwrap(), 2);
}

#[tokio::test]
async fn conflict() {
    let commit = Commit {
        puts: vec![("k1".into(), json!(1))],
        expect: vec![("k0".into(), Some(json!(1)))],
        ..Commit::default()
    };
    let err = refused(commit, KvLimits::default()).await;
    check(
        err,
        "conflict",
        "Key `k0` does not hold the expected value; hint: read it again and retry the commit",
    );
    let commit = Commit {
        puts: vec![("k1".into(), json!(1))],
        expect: vec![("k0".into(), None)],
        ..Commit::default()
    };
    let err = refused(commit, KvLimits::default()).await;
    assert!(matches!(err, StoreError::Conflict { key } if key == "k0"));
}

#[test]
fn errors_not_reachable_from_a_healthy_store() {
    // These need a full queue, a dead writer or a broken file; their text is checked here and the
    // paths that produce them in the migrations tests (schema) or by construction.
    check(
        StoreError::Busy { waited_ms: 5000 },
        "overloaded",
        "The store is busy: its write queue stayed full for 5000 ms; hint: retry later",
    );
    check(
        StoreError::Closed,
        "internal",
        "The store's writer has stopped; hint: restart plugd",
    );
    check(
        StoreError::Open {
            path: "/s/plugd.db".into(),
            reason: "unable to open database file".into(),
        },
        "internal",
        "Cannot open store `/s/plugd.db`: unable to open database file",
    );
    check(
        StoreError::Sqlite("disk I/O error".into()),
        "internal",
        "Store database error: disk I/O error",
    );
    check(
        StoreError::Corrupt("a stored value is not JSON: EOF".into()),
        "internal",
        "Stored data is corrupt: a stored value is not JSON: EOF",
    );
}

#[tokio::test]
async fn open_a_path_that_cannot_be_a_database() {
    let dir = tempfile::tempdir().unwrap();
    // The database path is a directory.
    let path = dir.path().join("plugd.db");
    std::fs::create_dir(&path).unwrap();
    let err = Store::open(plugd_store::StoreConfig::new(&path))
        .await
        .err()
        .expect("a directory is not a database");
    check(
        err,
        "internal",
        &format!(
            "Cannot open store `{}`: unable to open database file",
            path.display()
        ),
    );
}
