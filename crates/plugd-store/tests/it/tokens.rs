//! Tokens: stored by hash, names unique, revoked by id or name, seen by a second process.

use plugd_store::{Store, StoreConfig, StoreError, TokenRecord};

fn token(id: &str, name: &str, byte: u8) -> TokenRecord {
    TokenRecord {
        id: id.to_owned(),
        hash: [byte; 32],
        name: name.to_owned(),
        scopes: vec!["call:hello/greet".to_owned(), "read".to_owned()],
        created_at_ms: 0,
        expires_at_ms: Some(4_000_000_000_000),
    }
}

#[tokio::test]
async fn a_token_is_found_by_its_hash_listed_and_revoked_by_id_or_name() {
    let (store, _dir) = super::file_store().await;
    let a = store.create_token(token("aaaa", "ci", 1)).await.unwrap();
    assert!(a.created_at_ms > 0, "the store stamps the creation time");
    store.create_token(token("bbbb", "ui", 2)).await.unwrap();

    let found = store.token_by_hash([1; 32]).await.unwrap().unwrap();
    assert_eq!(found, a);
    assert_eq!(found.scopes, ["call:hello/greet", "read"]);
    assert_eq!(store.token_by_hash([9; 32]).await.unwrap(), None);

    let names: Vec<String> = store
        .tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["ci", "ui"]);

    assert_eq!(store.revoke_token("ui").await.unwrap().unwrap().id, "bbbb");
    assert_eq!(
        store.revoke_token("aaaa").await.unwrap().unwrap().name,
        "ci"
    );
    assert_eq!(store.revoke_token("aaaa").await.unwrap(), None);
    assert!(store.tokens().await.unwrap().is_empty());
    assert_eq!(store.token_by_hash([1; 32]).await.unwrap(), None);
}

#[tokio::test]
async fn a_taken_name_is_refused_and_nothing_is_written() {
    let (store, _dir) = super::file_store().await;
    store.create_token(token("aaaa", "ci", 1)).await.unwrap();
    let err = store
        .create_token(token("cccc", "ci", 3))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::TokenNameTaken { name: "ci".into() });
    assert_eq!(err.code(), "conflict");
    assert!(err.to_string().contains("plugd token revoke ci"), "{err}");
    assert_eq!(store.token_by_hash([3; 32]).await.unwrap(), None);
}

#[tokio::test]
async fn a_token_created_by_another_store_on_the_file_is_found() {
    // `plugd token create --state-dir` writes while `plugd serve` holds the file open.
    let (server, dir) = super::file_store().await;
    let offline = Store::open(StoreConfig::new(dir.path().join("state/plugd.db")))
        .await
        .unwrap();
    offline
        .create_token(token("dddd", "late", 4))
        .await
        .unwrap();
    drop(offline);
    assert_eq!(
        server.token_by_hash([4; 32]).await.unwrap().unwrap().name,
        "late"
    );
}
