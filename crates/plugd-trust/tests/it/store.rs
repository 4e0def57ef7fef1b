//! The trust store: add, list, get, remove, and refusing stores others can write.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use plugd_trust::{KeyId, Overwrite, SecretKey, TrustError, TrustStore};

use crate::support::fixed_key;

#[test]
fn add_list_get_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("nested/trust");
    let store = TrustStore::open(&store_dir).unwrap();
    assert!(store_dir.is_dir(), "open creates the store");
    assert_eq!(store.list().unwrap(), vec![]);

    let a = SecretKey::generate();
    let b = SecretKey::generate();
    let a_path = tmp.path().join("a");
    let b_path = tmp.path().join("b");
    a.write(&a_path, Overwrite::Refuse).unwrap();
    b.write(&b_path, Overwrite::Refuse).unwrap();

    assert_eq!(
        store.add(&a_path.with_extension("pub")).unwrap(),
        a.key_id()
    );
    assert_eq!(
        store.add(&b_path.with_extension("pub")).unwrap(),
        b.key_id()
    );
    // Adding again is idempotent.
    assert_eq!(
        store.add(&a_path.with_extension("pub")).unwrap(),
        a.key_id()
    );

    let mut expected = vec![
        (a.key_id(), store_dir.join(format!("{}.pub", a.key_id()))),
        (b.key_id(), store_dir.join(format!("{}.pub", b.key_id()))),
    ];
    expected.sort();
    assert_eq!(store.list().unwrap(), expected);
    assert_eq!(store.get(&a.key_id()).unwrap(), Some(a.public_key()));

    // A store re-opened later sees the same keys.
    assert_eq!(
        TrustStore::open(&store_dir).unwrap().list().unwrap(),
        expected
    );

    assert_eq!(
        store.remove(&a.key_id()).unwrap(),
        store_dir.join(format!("{}.pub", a.key_id()))
    );
    assert_eq!(store.get(&a.key_id()).unwrap(), None);
    assert_eq!(store.list().unwrap().len(), 1);
    let err = store.remove(&a.key_id()).unwrap_err();
    assert!(matches!(err, TrustError::KeyNotInStore { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "Key `{}` is not in the trust store `{}`; hint: `plugd trust list` shows the trusted keys",
            a.key_id(),
            store_dir.display()
        )
    );
}

#[test]
fn adding_a_secret_key_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = TrustStore::open(&tmp.path().join("trust")).unwrap();
    let key = tmp.path().join("k");
    SecretKey::generate()
        .write(&key, Overwrite::Refuse)
        .unwrap();
    let err = store.add(&key).unwrap_err();
    assert!(matches!(err, TrustError::WrongKeyKind { .. }), "{err:?}");
    assert_eq!(store.list().unwrap(), vec![]);
}

#[test]
fn a_key_file_renamed_to_another_id_is_not_trusted_under_that_id() {
    let tmp = tempfile::tempdir().unwrap();
    let store = TrustStore::open(&tmp.path().join("trust")).unwrap();
    let attacker = fixed_key(tmp.path(), 9);
    let victim = fixed_key(tmp.path(), 1);
    let attacker_id = store.add_key(&attacker.public_key()).unwrap();
    fs::rename(
        store.dir().join(format!("{attacker_id}.pub")),
        store.dir().join(format!("{}.pub", victim.key_id())),
    )
    .unwrap();
    let err = store.get(&victim.key_id()).unwrap_err();
    assert!(matches!(err, TrustError::KeyFormat { .. }), "{err:?}");
    assert_eq!(
        err.to_string()
            .replace(tmp.path().to_str().unwrap(), "$TMP"),
        format!(
            "File `$TMP/trust/{v}.pub` is not a plugd public key: it holds key `{attacker_id}`, not `{v}` as its name says; hint: add keys with `plugd trust add`",
            v = victim.key_id()
        )
    );
    assert!(store.list().is_err());
}

#[test]
fn a_store_others_can_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("trust");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let err = TrustStore::open(&dir).unwrap_err();
    assert!(
        matches!(err, TrustError::InsecureDirectory { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "Trust store `{}` is not private: it is writable by group or others (mode 0777); hint: use a directory owned by the user running plugd and not writable by others",
            dir.display()
        )
    );
}

#[test]
fn key_ids_parse_strictly() {
    let id = SecretKey::generate().key_id();
    assert_eq!(KeyId::parse(id.as_str()).unwrap(), id);
    let err = KeyId::parse("ABC").unwrap_err();
    assert_eq!(
        err.to_string(),
        "Invalid key id `ABC`; hint: a key id is 16 lower-case hex digits, as shown by `plugd trust list`"
    );
}
