//! Params with history, and the uninstalled marks.

use plugd_store::{ParamsRevision, Store};
use serde_json::json;

use crate::file_store;

#[tokio::test]
async fn params_revisions_and_history_newest_first() {
    let (store, _dir) = file_store().await;
    assert_eq!(store.params("p").await.unwrap(), None);
    assert_eq!(
        store
            .set_params("p", &json!({"batch_size": 8}), "migration")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .set_params("p", &json!({"batch_size": 16}), "api")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .set_params("p", &json!({"batch_size": 32}), "cli")
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store.set_params("other", &json!({}), "api").await.unwrap(),
        1
    );
    assert_eq!(
        store.params("p").await.unwrap(),
        Some(json!({"batch_size": 32}))
    );
    let history = store.params_history("p", 2).await.unwrap();
    let summary: Vec<(u64, serde_json::Value, &str)> = history
        .iter()
        .map(|r: &ParamsRevision| (r.revision, r.value.clone(), r.source.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (3, json!({"batch_size": 32}), "cli"),
            (2, json!({"batch_size": 16}), "api")
        ]
    );
    assert!(history[0].at_ms >= history[1].at_ms && history[1].at_ms > 1_600_000_000_000);
    assert_eq!(store.params_history("p", 100).await.unwrap().len(), 3);
}

#[tokio::test]
async fn uninstalled_marks() {
    let store = Store::in_memory_for_tests();
    assert_eq!(store.uninstalled().await.unwrap(), Vec::<String>::new());
    store.set_uninstalled("zeta", true).await.unwrap();
    store.set_uninstalled("alpha", true).await.unwrap();
    store.set_uninstalled("alpha", true).await.unwrap();
    assert_eq!(store.uninstalled().await.unwrap(), ["alpha", "zeta"]);
    store.set_uninstalled("zeta", false).await.unwrap();
    store.set_uninstalled("never", false).await.unwrap();
    // Forgetting a plugin's data keeps its mark (uninstall = forget + mark).
    store.forget_plugin("alpha").await.unwrap();
    assert_eq!(store.uninstalled().await.unwrap(), ["alpha"]);
}
