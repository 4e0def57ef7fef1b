//! plugd-store's integration tests: one binary, one module per concern.

mod durability;
mod errors;
mod kv;
mod migrations;
mod model;
mod params;
mod scripts;
mod tokens;
mod work;

use plugd_store::{Commit, Store, StoreConfig};
use serde_json::Value;

/// A store on a fresh file in its own temp dir (kept alive by the returned guard).
async fn file_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::open(StoreConfig::new(dir.path().join("state/plugd.db")))
        .await
        .expect("the store opens");
    (store, dir)
}

/// A commit of puts only.
fn puts(entries: &[(&str, Value)]) -> Commit {
    Commit {
        puts: entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        ..Commit::default()
    }
}
