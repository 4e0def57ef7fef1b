//! Schema migrations: a database written by every earlier schema version opens, upgrades and
//! keeps its data. Adding version N means adding `src/migrations/000N_*.sql` and
//! `tests/it/fixtures/vN.sql` (the same facts in that version's schema); this test then covers
//! the upgrade from N to the latest.

use plugd_store::testing::{create_at_version, set_version, version_of};
use plugd_store::{CommitId, KvLimits, SCHEMA_VERSION, Store, StoreConfig, StoreError};
use serde_json::json;

use crate::puts;

/// The facts every fixture holds, read through the current API.
async fn check_fixture(store: &Store) {
    assert_eq!(store.params("old").await.unwrap(), Some(json!({"a": 2})));
    let history = store.params_history("old", 10).await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|r| (r.revision, r.source.as_str(), r.at_ms))
            .collect::<Vec<_>>(),
        [(2, "cli", 1_700_000_000_001), (1, "api", 1_700_000_000_000)]
    );
    assert_eq!(
        store.kv_list("old", "", None, 10).await.unwrap(),
        vec![("k".to_owned(), json!("v1")), ("n".to_owned(), json!(2))]
    );
    assert_eq!(store.kv_usage("old").await.unwrap(), 7);
    assert_eq!(store.uninstalled().await.unwrap(), ["gone"]);
    assert_eq!(store.kv_undo("old").await.unwrap(), Some(CommitId(2)));
    assert_eq!(store.kv_get("old", "n").await.unwrap(), Some(json!(1)));
    assert_eq!(store.kv_undo("old").await.unwrap(), None);
    assert_eq!(store.kv_redo("old").await.unwrap(), Some(CommitId(2)));
    let next = store
        .kv_commit("old", puts(&[("x", json!(1))]), &KvLimits::default())
        .await;
    assert_eq!(next.unwrap(), CommitId(3));
}

#[tokio::test]
async fn opens_a_database_from_every_earlier_version() {
    for version in 1..=SCHEMA_VERSION {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugd.db");
        let fixture = format!(
            "{}/tests/it/fixtures/v{version}.sql",
            env!("CARGO_MANIFEST_DIR")
        );
        let fixture = std::fs::read_to_string(&fixture)
            .unwrap_or_else(|e| panic!("every schema version needs a fixture: `{fixture}`: {e}"));
        create_at_version(&path, version, &fixture).unwrap();
        assert_eq!(version_of(&path).unwrap(), version);
        let store = Store::open(StoreConfig::new(&path)).await.unwrap();
        assert_eq!(
            version_of(&path).unwrap(),
            SCHEMA_VERSION,
            "from v{version}"
        );
        check_fixture(&store).await;
        if version >= 5 {
            let script = store.script_version("old-script", None).await.unwrap();
            assert_eq!((script.version, script.source.as_str()), (1, "print(1)"));
        }
        drop(store);
        // Opening an up-to-date file again changes nothing.
        let store = Store::open(StoreConfig::new(&path)).await.unwrap();
        assert_eq!(store.kv_get("old", "x").await.unwrap(), Some(json!(1)));
    }
}

#[tokio::test]
async fn a_new_file_gets_the_latest_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deeper/state/plugd.db");
    let store = Store::open(StoreConfig::new(&path)).await.unwrap();
    store.set_params("p", &json!({}), "api").await.unwrap();
    assert_eq!(version_of(&path).unwrap(), SCHEMA_VERSION);
}

#[tokio::test]
async fn a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugd.db");
    drop(Store::open(StoreConfig::new(&path)).await.unwrap());
    set_version(&path, SCHEMA_VERSION + 1).unwrap();
    let err = Store::open(StoreConfig::new(&path))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        err,
        StoreError::SchemaTooNew {
            path: path.display().to_string(),
            found: SCHEMA_VERSION + 1,
            known: SCHEMA_VERSION,
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "Store `{}` has schema version {}, newer than this plugd knows ({}); hint: run a newer plugd or use another state dir",
            path.display(),
            SCHEMA_VERSION + 1,
            SCHEMA_VERSION
        )
    );
    assert_eq!(err.code(), "internal");
    assert_eq!(version_of(&path).unwrap(), SCHEMA_VERSION + 1);
}
