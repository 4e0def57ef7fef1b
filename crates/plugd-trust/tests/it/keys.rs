//! Key files: generation, permissions, refusal to overwrite, wrong-file messages.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use plugd_trust::{Overwrite, PublicKey, SecretKey, TrustError, public_key_path};

use crate::support::mode;

#[test]
fn keygen_writes_a_private_secret_and_a_public_key() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("release");
    let key = SecretKey::generate();
    let public = key.write(&path, Overwrite::Refuse).unwrap();

    assert_eq!(public, tmp.path().join("release.pub"));
    assert_eq!(public_key_path(&path), public);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(
        mode(&public) & 0o022,
        0,
        "the public key must not be writable by others"
    );
    assert!(
        fs::read_to_string(&path)
            .unwrap()
            .starts_with("plugd-ed25519-secret-key v1\n")
    );
    assert!(
        fs::read_to_string(&public)
            .unwrap()
            .starts_with("plugd-ed25519-public-key v1\n")
    );

    let loaded = SecretKey::load(&path).unwrap();
    assert_eq!(loaded.key_id(), key.key_id());
    assert_eq!(PublicKey::load(&public).unwrap(), key.public_key());
    assert_eq!(PublicKey::load(&public).unwrap().key_id(), key.key_id());
}

#[test]
fn keygen_refuses_to_overwrite_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("k");
    let first = SecretKey::generate();
    first.write(&path, Overwrite::Refuse).unwrap();

    let second = SecretKey::generate();
    let err = second.write(&path, Overwrite::Refuse).unwrap_err();
    assert!(matches!(err, TrustError::KeyExists { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "Key file `{}` already exists; hint: pass `--force` to replace it, or choose another path",
            path.with_extension("pub").display()
        )
    );
    assert_eq!(SecretKey::load(&path).unwrap().key_id(), first.key_id());

    // Only the public half left behind: still refused, and no secret key is written.
    fs::remove_file(&path).unwrap();
    assert!(matches!(
        second.write(&path, Overwrite::Refuse),
        Err(TrustError::KeyExists { .. })
    ));
    assert!(!path.exists());

    second.write(&path, Overwrite::Replace).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(SecretKey::load(&path).unwrap().key_id(), second.key_id());
    assert_eq!(
        PublicKey::load(&path.with_extension("pub")).unwrap(),
        second.public_key()
    );
}

#[test]
fn loading_the_wrong_file_says_what_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("k");
    SecretKey::generate()
        .write(&path, Overwrite::Refuse)
        .unwrap();
    let public = path.with_extension("pub");
    let shown = |e: TrustError| e.to_string().replace(tmp.path().to_str().unwrap(), "$TMP");

    let err = SecretKey::load(&public).unwrap_err();
    assert!(matches!(err, TrustError::WrongKeyKind { .. }), "{err:?}");
    assert_eq!(
        shown(err),
        "File `$TMP/k.pub` is a plugd public key, but a secret key is needed; hint: pass the secret key file (the one without `.pub`)"
    );

    let err = PublicKey::load(&path).unwrap_err();
    assert!(matches!(err, TrustError::WrongKeyKind { .. }), "{err:?}");

    let manifest = tmp.path().join("plugin.toml");
    fs::write(&manifest, "[plugin]\n").unwrap();
    assert_eq!(
        shown(PublicKey::load(&manifest).unwrap_err()),
        "File `$TMP/plugin.toml` is not a plugd public key: the first line must be `plugd-ed25519-public-key v1`"
    );
}

#[test]
fn a_secret_key_readable_by_others_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("k");
    SecretKey::generate()
        .write(&path, Overwrite::Refuse)
        .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let err = SecretKey::load(&path).unwrap_err();
    assert!(
        matches!(err, TrustError::KeyPermissions { mode: 0o640, .. }),
        "{err:?}"
    );
    let p = path.display();
    assert_eq!(
        err.to_string(),
        format!(
            "Secret key `{p}` is accessible by other users (mode 0640); hint: run `chmod 600 {p}`"
        )
    );
}
