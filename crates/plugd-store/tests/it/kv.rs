//! kv behaviour: commits, listing, undo/redo, history depth, usage, isolation, group commit.

use plugd_store::{Commit, CommitId, Durability, KvLimits, Store, StoreConfig, StoreError};
use serde_json::json;

use crate::{file_store, puts};

#[tokio::test]
async fn commit_get_and_ids_per_plugin() {
    let (store, _dir) = file_store().await;
    let limits = KvLimits::default();
    assert_eq!(store.kv_get("a", "k").await.unwrap(), None);
    let first = store
        .kv_commit("a", puts(&[("k", json!({"x": [1, 2]}))]), &limits)
        .await
        .unwrap();
    let second = store
        .kv_commit("a", puts(&[("k", json!(null))]), &limits)
        .await
        .unwrap();
    let other = store
        .kv_commit("b", puts(&[("k", json!("b"))]), &limits)
        .await
        .unwrap();
    assert_eq!(
        (first, second, other),
        (CommitId(1), CommitId(2), CommitId(1))
    );
    assert_eq!(second.to_string(), "2");
    // JSON null is a value, not absence.
    assert_eq!(store.kv_get("a", "k").await.unwrap(), Some(json!(null)));
    assert_eq!(store.kv_get("b", "k").await.unwrap(), Some(json!("b")));
}

#[tokio::test]
async fn list_by_prefix_in_key_order_with_paging() {
    let (store, _dir) = file_store().await;
    let keys = ["a", "b/1", "b/2", "b/10", "b0", "b/é", "b/\u{10FFFF}", "c"];
    let commit = puts(&keys.iter().map(|k| (*k, json!(k))).collect::<Vec<_>>());
    store
        .kv_commit("p", commit, &KvLimits::default())
        .await
        .unwrap();
    store
        .kv_commit("q", puts(&[("b/1", json!(0))]), &KvLimits::default())
        .await
        .unwrap();
    let list = |prefix: &'static str, after: Option<&'static str>, limit| {
        let store = store.clone();
        async move {
            store
                .kv_list("p", prefix, after, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list("b/", None, 100).await,
        ["b/1", "b/10", "b/2", "b/é", "b/\u{10FFFF}"]
    );
    assert_eq!(list("b/", None, 2).await, ["b/1", "b/10"]);
    assert_eq!(list("b/", Some("b/10"), 2).await, ["b/2", "b/é"]);
    assert_eq!(
        list("b/", Some("a"), 1).await,
        ["b/1"],
        "`after` before the prefix"
    );
    assert_eq!(list("b/", Some("c"), 10).await, Vec::<String>::new());
    assert_eq!(list("", Some("b0"), 10).await, ["c"]);
    assert_eq!(list("", None, 100).await.len(), keys.len());
    assert_eq!(list("b/\u{10FFFF}", None, 10).await, ["b/\u{10FFFF}"]);
    let values = store.kv_list("p", "c", None, 10).await.unwrap();
    assert_eq!(values, vec![("c".to_owned(), json!("c"))]);
}

#[tokio::test]
async fn undo_redo_and_a_new_commit_clears_redo() {
    let (store, _dir) = file_store().await;
    let limits = KvLimits::default();
    let c1 = store
        .kv_commit("p", puts(&[("a", json!(1)), ("b", json!(1))]), &limits)
        .await
        .unwrap();
    let c2 = store
        .kv_commit(
            "p",
            Commit {
                puts: vec![("a".into(), json!(2))],
                deletes: vec!["b".into(), "never-there".into()],
                ..Commit::default()
            },
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(store.kv_usage("p").await.unwrap(), 2);
    assert_eq!(store.kv_undo("p").await.unwrap(), Some(c2));
    assert_eq!(store.kv_get("p", "a").await.unwrap(), Some(json!(1)));
    assert_eq!(store.kv_get("p", "b").await.unwrap(), Some(json!(1)));
    assert_eq!(store.kv_get("p", "never-there").await.unwrap(), None);
    assert_eq!(store.kv_usage("p").await.unwrap(), 4);
    assert_eq!(store.kv_undo("p").await.unwrap(), Some(c1));
    assert_eq!(store.kv_undo("p").await.unwrap(), None);
    assert_eq!(store.kv_usage("p").await.unwrap(), 0);
    assert_eq!(store.kv_redo("p").await.unwrap(), Some(c1));
    assert_eq!(store.kv_redo("p").await.unwrap(), Some(c2));
    assert_eq!(store.kv_redo("p").await.unwrap(), None);
    assert_eq!(store.kv_get("p", "a").await.unwrap(), Some(json!(2)));
    assert_eq!(store.kv_get("p", "b").await.unwrap(), None);
    // Undo c2, commit c3: redo is gone and c3 gets a fresh id.
    assert_eq!(store.kv_undo("p").await.unwrap(), Some(c2));
    let c3 = store
        .kv_commit("p", puts(&[("c", json!(3))]), &limits)
        .await
        .unwrap();
    assert_eq!(c3, CommitId(3));
    assert_eq!(store.kv_redo("p").await.unwrap(), None);
    assert_eq!(store.kv_undo("p").await.unwrap(), Some(c3));
    assert_eq!(store.kv_undo("p").await.unwrap(), Some(c1));
    assert_eq!(store.kv_list("p", "", None, 10).await.unwrap(), vec![]);
}

#[tokio::test]
async fn history_is_bounded_by_undo_depth() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        undo_depth: 3,
        ..StoreConfig::new(dir.path().join("plugd.db"))
    };
    let store = Store::open(config).await.unwrap();
    for i in 1..=5 {
        store
            .kv_commit("p", puts(&[("k", json!(i))]), &KvLimits::default())
            .await
            .unwrap();
    }
    let mut undone = vec![];
    while let Some(id) = store.kv_undo("p").await.unwrap() {
        undone.push(id.0);
    }
    assert_eq!(undone, [5, 4, 3]);
    assert_eq!(store.kv_get("p", "k").await.unwrap(), Some(json!(2)));

    let none = Store::in_memory(0);
    none.kv_commit("p", puts(&[("k", json!(1))]), &KvLimits::default())
        .await
        .unwrap();
    assert_eq!(
        none.kv_undo("p").await.unwrap(),
        None,
        "depth 0 keeps no history"
    );
    assert_eq!(
        none.kv_commit("p", puts(&[("k", json!(2))]), &KvLimits::default())
            .await
            .unwrap(),
        CommitId(2)
    );
}

#[tokio::test]
async fn expect_is_compare_and_set() {
    let store = Store::in_memory_for_tests();
    let limits = KvLimits::default();
    let create = Commit {
        puts: vec![("n".into(), json!(1))],
        expect: vec![("n".into(), None)],
        ..Commit::default()
    };
    store.kv_commit("p", create.clone(), &limits).await.unwrap();
    let err = store.kv_commit("p", create, &limits).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }));
    let bump = Commit {
        puts: vec![("n".into(), json!(2))],
        expect: vec![("n".into(), Some(json!(1)))],
        ..Commit::default()
    };
    store.kv_commit("p", bump, &limits).await.unwrap();
    assert_eq!(store.kv_get("p", "n").await.unwrap(), Some(json!(2)));
}

#[tokio::test]
async fn usage_counts_keys_and_json_and_forget_clears_everything() {
    let (store, _dir) = file_store().await;
    let limits = KvLimits::default();
    store
        .kv_commit(
            "p",
            puts(&[("ab", json!("xyz")), ("c", json!([1, 2]))]),
            &limits,
        )
        .await
        .unwrap();
    // "ab" + "\"xyz\"" = 2 + 5; "c" + "[1,2]" = 1 + 5.
    assert_eq!(store.kv_usage("p").await.unwrap(), 13);
    store
        .kv_commit("q", puts(&[("k", json!(1))]), &limits)
        .await
        .unwrap();
    store
        .set_params("p", &json!({"a": 1}), "api")
        .await
        .unwrap();
    store.forget_plugin("p").await.unwrap();
    assert_eq!(store.kv_usage("p").await.unwrap(), 0);
    assert_eq!(store.kv_list("p", "", None, 10).await.unwrap(), vec![]);
    assert_eq!(store.kv_undo("p").await.unwrap(), None);
    assert_eq!(store.params("p").await.unwrap(), None);
    assert_eq!(store.params_history("p", 10).await.unwrap(), vec![]);
    assert_eq!(
        store.kv_get("q", "k").await.unwrap(),
        Some(json!(1)),
        "other plugins keep theirs"
    );
    // A reinstalled plugin starts clean.
    assert_eq!(
        store
            .kv_commit("p", puts(&[("k", json!(1))]), &limits)
            .await
            .unwrap(),
        CommitId(1)
    );
    assert_eq!(store.set_params("p", &json!({}), "api").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_batches_and_a_refused_one_fails_alone() {
    let (store, _dir) = file_store().await;
    concurrent_commits(&store).await;
}

/// Full durability (`synchronous=FULL`, an fsync per batch): the same answers, ids and grouping,
/// and everything acknowledged is in the file when it is reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_durability_answers_every_commit_after_its_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/plugd.db");
    let config = StoreConfig {
        durability: Durability::Full,
        ..StoreConfig::new(&path)
    };
    let store = Store::open(config.clone()).await.unwrap();
    concurrent_commits(&store).await;
    // Dropping the last clone stops the writer after it answered what it had.
    drop(store);
    let store = Store::open(config).await.unwrap();
    let all = store.kv_list("p", "k", None, 1000).await.unwrap();
    let acknowledged = (0..256).filter(|i| i % 3 != 0).count();
    assert_eq!(all.len(), acknowledged, "{all:?}");
}

async fn concurrent_commits(store: &Store) {
    let limits = KvLimits::default();
    store
        .kv_commit("p", puts(&[("gate", json!(0))]), &limits)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..256u32 {
        let store = store.clone();
        tasks.spawn(async move {
            // Every third commit expects a value `gate` never has: refused in its savepoint.
            let expect = if i % 3 == 0 {
                Some(json!(1))
            } else {
                Some(json!(0))
            };
            let commit = Commit {
                puts: vec![(format!("k{i}"), json!(i))],
                expect: vec![("gate".into(), expect)],
                ..Commit::default()
            };
            (i, store.kv_commit("p", commit, &KvLimits::default()).await)
        });
    }
    let mut ids = vec![];
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.unwrap();
        if i % 3 == 0 {
            assert!(
                matches!(result, Err(StoreError::Conflict { .. })),
                "{i}: {result:?}"
            );
            assert_eq!(store.kv_get("p", &format!("k{i}")).await.unwrap(), None);
        } else {
            ids.push(result.unwrap().0);
            assert_eq!(
                store.kv_get("p", &format!("k{i}")).await.unwrap(),
                Some(json!(i))
            );
        }
    }
    ids.sort();
    let expected: Vec<u64> = (2..2 + ids.len() as u64).collect();
    assert_eq!(ids, expected, "ids are dense and unique");
    assert!(
        store.batches() < 256,
        "256 concurrent commits took {} batches",
        store.batches()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_dropped_mid_flight_leak_no_connection() {
    let (store, _dir) = file_store().await;
    let limits = KvLimits::default();
    let big = json!(vec![0u8; 200_000]);
    for i in 0..10 {
        store
            .kv_commit("a", puts(&[(&format!("k{i}"), big.clone())]), &limits)
            .await
            .unwrap();
    }
    // More dropped reads than the pool has connections: each is cancelled while its blocking job
    // runs (a timeout, a disconnected client).
    for _ in 0..12 {
        let _ = tokio::time::timeout(
            std::time::Duration::from_micros(50),
            store.kv_list("a", "", None, 1000),
        )
        .await;
    }
    // Every connection came back: reads of every kind still work.
    assert_eq!(store.kv_get("a", "k0").await.unwrap(), Some(big));
    assert_eq!(store.params("b").await.unwrap(), None);
    // A page of large values ends once it holds `KV_PAGE_BYTES` of text (3 of these ~400 KB
    // values), whatever the count asked for.
    let page = store.kv_list("a", "", None, 1000).await.unwrap();
    assert_eq!(page.len(), 3);
    const {
        assert!(
            2 * 400_001 < plugd_store::KV_PAGE_BYTES && 3 * 400_000 >= plugd_store::KV_PAGE_BYTES
        )
    };
}

#[tokio::test]
async fn the_undo_history_is_held_within_the_quota() {
    let (store, _dir) = file_store().await;
    // Each value is 30 bytes of JSON ("…" with 28 letters); the key is 1 byte.
    let value = |c: char| json!(c.to_string().repeat(28));
    let limits = KvLimits {
        quota: 100,
        ..KvLimits::default()
    };
    for c in ['a', 'b', 'c', 'd', 'e'] {
        store
            .kv_commit("p", puts(&[("k", value(c))]), &limits)
            .await
            .unwrap();
    }
    // Live: 31 bytes. History: the first commit keeps `k` absent (1 byte), each later one the
    // 31-byte value it replaced; 1 + 4 × 31 = 125 > 100, so the oldest commits went until the
    // rest fits: the last three (93 bytes) can be undone, not more.
    for c in ['d', 'c', 'b'] {
        assert!(store.kv_undo("p").await.unwrap().is_some());
        assert_eq!(store.kv_get("p", "k").await.unwrap(), Some(value(c)));
    }
    assert_eq!(store.kv_undo("p").await.unwrap(), None);
    // Redo brings them all back.
    for _ in 0..3 {
        assert!(store.kv_redo("p").await.unwrap().is_some());
    }
    assert_eq!(store.kv_get("p", "k").await.unwrap(), Some(value('e')));
}

#[tokio::test]
async fn size_bytes_is_the_pages_in_use_and_grows_with_the_data() {
    let (store, _dir) = file_store().await;
    let empty = store.size_bytes().await.unwrap();
    // The migrated schema fills a few pages of 4 KiB (SQLite's default page size).
    assert!(empty >= 4096 && empty % 4096 == 0, "{empty}");
    let limits = KvLimits::default();
    let big = "x".repeat(200_000);
    store
        .kv_commit("a", puts(&[("big", json!(big))]), &limits)
        .await
        .unwrap();
    let grown = store.size_bytes().await.unwrap();
    // At least the value's bytes (free pages of the empty file may have been reused).
    assert!(grown > empty && grown >= 200_000, "{empty} → {grown}");
    // An in-memory store answers too (through its writer).
    let memory = Store::in_memory_for_tests();
    assert!(memory.size_bytes().await.unwrap() > 0);
}
