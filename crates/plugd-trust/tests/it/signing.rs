//! Signing and verifying in place: the round trip, every tamper case, refusals, and policy.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use expect_test::{Expect, expect};
use plugd_trust::{
    KeySource, SIGNATURE_FILE, SpecialKind, Trust, TrustError, TrustPolicy, package_digest,
    sign_package, stage_package, verify_package,
};
use sha2::{Digest, Sha256};

use crate::support::{Fx, fixed_key, write};

#[test]
fn sign_then_verify_round_trip() {
    let fx = Fx::unsigned();
    let info = sign_package(&fx.pkg, &fx.key).unwrap();
    assert_eq!(info.path, fx.pkg.join(SIGNATURE_FILE));
    assert_eq!(info.key_id, fx.key.key_id());
    assert_eq!(
        (info.plugin.as_str(), info.version.to_string().as_str()),
        ("demo", "1.0.0")
    );
    assert_eq!(info.files, 4);
    assert_eq!(info.digest, package_digest(&fx.pkg).unwrap());

    // Deterministic: fixed key, Ed25519 is deterministic, the listing is canonical.
    expect![[r##"
        # plugd package signature, written by `plugd sign`; do not edit
        format = 1
        key_id = "34750f98bd59fcfc"
        plugin = "demo"
        version = "1.0.0"
        digest = "c84a5e6e13ddac8cb2f9fb95bb876b5af0737e5f6c09aaa56e289daf99831d4c"
        signature = "Q+0ous2h3quvNhxCLc/p9wJnF4nbzQOS5mmMUBO7BWln02N0t2kFkAu5AQ2r8ZEMc7BO4QdKmi9RwXxttDZHAQ=="

        [[file]]
        path = "assets/logo.txt"
        size = 5
        sha256 = "84e68693496e281178406d280fe930ba381918a2d8267fa3e43c894c40be93e2"

        [[file]]
        path = "bin/run"
        size = 19
        sha256 = "a4e0317eafab5cf1bc4a0041c7c8aeb6ece56fe72e7b2b3017a8a6574614cd35"

        [[file]]
        path = "main.py"
        size = 15
        sha256 = "03e693d9f2f687e0f40e36a8df7fcb4d1c22974012b7c2a55c000eb30f305824"

        [[file]]
        path = "plugin.toml"
        size = 103
        sha256 = "d878041a19789cfdae4185fe518b3cb49b47d755ef5d47e133af8bbc24b2fa98"
    "##]].assert_eq(&fs::read_to_string(&info.path).unwrap());

    let by_store = verify_package(&fx.pkg, &KeySource::Store(&fx.store)).unwrap();
    assert_eq!(
        by_store.trust,
        Trust::Trusted {
            key_id: fx.key.key_id()
        }
    );
    assert_eq!(by_store.digest, info.digest);
    assert_eq!(by_store.package(), "demo 1.0.0");
    let public = fx.key.public_key();
    let by_key = verify_package(&fx.pkg, &KeySource::Key(&public)).unwrap();
    assert_eq!(by_key, by_store);
    // Signing leaves nothing but `plugin.sig` behind, and the digest ignores it.
    assert_eq!(package_digest(&fx.pkg).unwrap(), info.digest);
    assert_eq!(fs::read_dir(&fx.pkg).unwrap().count(), 5);
}

#[test]
fn a_json_manifest_package_signs_and_verifies() {
    let fx = Fx::unsigned();
    fs::remove_file(fx.pkg.join("plugin.toml")).unwrap();
    write(
        &fx.pkg.join("plugin.json"),
        r#"{"name": "seed", "version": "0.3.1"}"#,
        0o644,
    );
    let info = sign_package(&fx.pkg, &fx.key).unwrap();
    assert_eq!(info.plugin, "seed");
    let v = verify_package(&fx.pkg, &KeySource::Store(&fx.store)).unwrap();
    assert_eq!(v.package(), "seed 0.3.1");
    assert_eq!(
        v.trust,
        Trust::Trusted {
            key_id: fx.key.key_id()
        }
    );
}

/// Applies `tamper` to a signed package and checks that both in-place verification and staging
/// refuse it with the same variant and message, even in non-strict mode, and stage nothing.
fn check_tamper(tamper: fn(&Fx), is_variant: fn(&TrustError) -> bool, expect: Expect) {
    let fx = Fx::signed();
    tamper(&fx);
    let err = verify_package(&fx.pkg, &KeySource::Store(&fx.store)).unwrap_err();
    assert!(is_variant(&err), "unexpected variant: {err:?}");
    expect.assert_eq(&fx.message(&err));

    let lenient = TrustPolicy { strict: false };
    let staged = stage_package(&fx.pkg, &fx.staging, &KeySource::Store(&fx.store), &lenient);
    let staged_err = staged.expect_err("staging must refuse a tampered package");
    assert_eq!(fx.message(&staged_err), fx.message(&err));
    assert_eq!(
        fx.staged_entries(),
        Vec::<String>::new(),
        "nothing may be left staged"
    );
}

fn edit_signature(fx: &Fx, edit: impl FnOnce(String) -> String) {
    let path = fx.pkg.join(SIGNATURE_FILE);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, edit(text)).unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn one_byte_changed() {
    check_tamper(
        |fx| fs::write(fx.pkg.join("main.py"), "print('hellO')\n").unwrap(),
        |e| matches!(e, TrustError::FileChanged { path, .. } if path == "main.py"),
        expect![
            "Package `demo 1.0.0` does not match its signature: `main.py` was changed after signing; hint: restore the signed file, or sign the package again if the change is intended"
        ],
    );
}

#[test]
fn file_added() {
    check_tamper(
        |fx| write(&fx.pkg.join("assets/extra.py"), "import os\n", 0o644),
        |e| matches!(e, TrustError::FileAdded { path, .. } if path == "assets/extra.py"),
        expect![
            "Package `demo 1.0.0` does not match its signature: `assets/extra.py` was added after signing; hint: remove it, or sign the package again if the change is intended"
        ],
    );
}

#[test]
fn file_removed() {
    check_tamper(
        |fx| fs::remove_file(fx.pkg.join("assets/logo.txt")).unwrap(),
        |e| matches!(e, TrustError::FileRemoved { path, .. } if path == "assets/logo.txt"),
        expect![
            "Package `demo 1.0.0` does not match its signature: `assets/logo.txt` was removed after signing; hint: restore it, or sign the package again if the change is intended"
        ],
    );
}

#[test]
fn symlink_swapped_in() {
    check_tamper(
        |fx| {
            fs::write(fx.root.join("evil.py"), "print('evil')\n").unwrap();
            fs::remove_file(fx.pkg.join("main.py")).unwrap();
            symlink(fx.root.join("evil.py"), fx.pkg.join("main.py")).unwrap();
        },
        |e| matches!(e, TrustError::Symlink { path, .. } if path == "main.py"),
        expect![
            "File `main.py` in package `$TMP/pkg` is a symlink; hint: a package may contain only regular files and directories, replace the link with a copy of its target"
        ],
    );
}

#[test]
fn signed_by_an_unknown_key() {
    check_tamper(
        |fx| {
            sign_package(&fx.pkg, &fixed_key(&fx.root, 2)).unwrap();
        },
        |e| matches!(e, TrustError::UnknownKey { .. }),
        expect![
            "Package `demo 1.0.0` is signed by key `6a3803d5f059902a`, which is not in the trust store `$TMP/trust`; hint: if you trust that key, add its public key with `plugd trust add KEY.pub` using the same `--state-dir` as `plugd serve`"
        ],
    );
}

#[test]
fn signature_replayed_onto_a_newer_version() {
    check_tamper(
        |fx| {
            let manifest = fx.pkg.join("plugin.toml");
            let text = fs::read_to_string(&manifest).unwrap();
            fs::write(&manifest, text.replace("1.0.0", "1.1.0")).unwrap();
        },
        |e| matches!(e, TrustError::SignedForOtherPackage { .. }),
        expect![
            "Signature was made for `demo 1.0.0` but the package is `demo 1.1.0`; hint: sign this version with `plugd sign DIR --key KEY`"
        ],
    );
}

#[test]
fn signature_replayed_onto_another_plugin() {
    check_tamper(
        |fx| {
            let manifest = fx.pkg.join("plugin.toml");
            let text = fs::read_to_string(&manifest).unwrap();
            fs::write(&manifest, text.replace("\"demo\"", "\"other\"")).unwrap();
        },
        |e| matches!(e, TrustError::SignedForOtherPackage { .. }),
        expect![
            "Signature was made for `demo 1.0.0` but the package is `other 1.0.0`; hint: sign this version with `plugd sign DIR --key KEY`"
        ],
    );
}

#[test]
fn truncated_signature_file() {
    check_tamper(
        |fx| edit_signature(fx, |text| text[..text.len() / 2].to_owned()),
        |e| matches!(e, TrustError::MalformedSignature { .. }),
        expect![[
            r#"Signature file `$TMP/pkg/plugin.sig` is malformed: invalid basic string, expected `"`; hint: sign the package again with `plugd sign DIR --key KEY`"#
        ]],
    );
}

#[test]
fn garbled_signature_file() {
    check_tamper(
        |fx| fs::write(fx.pkg.join(SIGNATURE_FILE), b"\x00\x9f garbage").unwrap(),
        |e| matches!(e, TrustError::MalformedSignature { .. }),
        expect![
            "Signature file `$TMP/pkg/plugin.sig` is malformed: it is not UTF-8 text; hint: sign the package again with `plugd sign DIR --key KEY`"
        ],
    );
}

#[test]
fn an_xcore_hmac_signature_is_named_as_such() {
    check_tamper(
        |fx| {
            fs::write(
                fx.pkg.join(SIGNATURE_FILE),
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n",
            )
            .unwrap()
        },
        |e| matches!(e, TrustError::MalformedSignature { .. }),
        expect![
            "Signature file `$TMP/pkg/plugin.sig` is malformed: it is not a plugd signature but a single token, like the shared-key HMAC digest xcore writes; plugd verifies Ed25519 signatures only; hint: sign the package again with `plugd sign DIR --key KEY`"
        ],
    );
}

#[test]
fn unsupported_signature_format() {
    check_tamper(
        |fx| edit_signature(fx, |text| text.replace("format = 1", "format = 2")),
        |e| matches!(e, TrustError::MalformedSignature { .. }),
        expect![
            "Signature file `$TMP/pkg/plugin.sig` is malformed: `format = 2` is not supported, this plugd reads format 1; hint: sign the package again with `plugd sign DIR --key KEY`"
        ],
    );
}

#[test]
fn signature_file_replaced_by_a_directory() {
    check_tamper(
        |fx| {
            fs::remove_file(fx.pkg.join(SIGNATURE_FILE)).unwrap();
            fs::create_dir(fx.pkg.join(SIGNATURE_FILE)).unwrap();
        },
        |e| matches!(e, TrustError::MalformedSignature { .. }),
        expect![
            "Signature file `$TMP/pkg/plugin.sig` is malformed: it is not a regular file; hint: sign the package again with `plugd sign DIR --key KEY`"
        ],
    );
}

#[test]
fn signature_bytes_flipped() {
    check_tamper(
        |fx| {
            edit_signature(fx, |text| {
                let line = text
                    .lines()
                    .find(|l| l.starts_with("signature = "))
                    .unwrap();
                let encoded = line.trim_start_matches("signature = ").trim_matches('"');
                let mut bytes = BASE64.decode(encoded).unwrap();
                bytes[10] ^= 1;
                text.replace(encoded, &BASE64.encode(bytes))
            })
        },
        |e| matches!(e, TrustError::BadSignature { .. }),
        expect![
            "Signature of package `demo 1.0.0` does not verify with key `34750f98bd59fcfc`; hint: the signature file was altered or made with another key, sign the package again with `plugd sign DIR --key KEY`"
        ],
    );
}

#[test]
fn file_list_edited_to_hide_a_change() {
    check_tamper(
        |fx| {
            fs::write(fx.pkg.join("main.py"), "print('hellO')\n").unwrap();
            let old = sha256_hex(b"print('hello')\n");
            let new = sha256_hex(b"print('hellO')\n");
            edit_signature(fx, |text| text.replace(&old, &new));
        },
        |e| matches!(e, TrustError::MalformedSignature { .. }),
        expect![
            "Signature file `$TMP/pkg/plugin.sig` is malformed: the file list does not match `digest`; hint: sign the package again with `plugd sign DIR --key KEY`"
        ],
    );
}

#[test]
fn file_list_and_digest_edited_to_hide_a_change() {
    check_tamper(
        |fx| {
            let old_digest = package_digest(&fx.pkg).unwrap().to_hex();
            fs::write(fx.pkg.join("main.py"), "print('hellO')\n").unwrap();
            let new_digest = package_digest(&fx.pkg).unwrap().to_hex();
            let old = sha256_hex(b"print('hello')\n");
            let new = sha256_hex(b"print('hellO')\n");
            edit_signature(fx, |text| {
                text.replace(&old, &new).replace(&old_digest, &new_digest)
            });
        },
        |e| matches!(e, TrustError::BadSignature { .. }),
        expect![
            "Signature of package `demo 1.0.0` does not verify with key `34750f98bd59fcfc`; hint: the signature file was altered or made with another key, sign the package again with `plugd sign DIR --key KEY`"
        ],
    );
}

#[test]
fn verifying_with_another_explicit_key_names_both_keys() {
    let fx = Fx::signed();
    let other = fixed_key(&fx.root, 3).public_key();
    let err = verify_package(&fx.pkg, &KeySource::Key(&other)).unwrap_err();
    assert!(matches!(err, TrustError::WrongKey { .. }), "{err:?}");
    expect!["Package `demo 1.0.0` is signed by key `34750f98bd59fcfc`, not by the given key `b62e867fa2f33afe`; hint: pass the public key of `34750f98bd59fcfc`"].assert_eq(&fx.message(&err));
}

/// Adds something a package may not contain and checks that signing refuses it (and writes no
/// signature), as do digesting and verifying.
fn check_refused(add: fn(&Path), is_variant: fn(&TrustError) -> bool, expect: Expect) {
    let fx = Fx::unsigned();
    add(&fx.pkg);
    let err = sign_package(&fx.pkg, &fx.key).unwrap_err();
    assert!(is_variant(&err), "unexpected variant: {err:?}");
    expect.assert_eq(&fx.message(&err));
    assert!(!fx.pkg.join(SIGNATURE_FILE).exists());
    assert_eq!(
        fx.message(&package_digest(&fx.pkg).unwrap_err()),
        fx.message(&err)
    );
    let verify = verify_package(&fx.pkg, &KeySource::Store(&fx.store)).unwrap_err();
    assert_eq!(fx.message(&verify), fx.message(&err));
}

#[test]
fn refuses_symlinks() {
    check_refused(
        |pkg| symlink("main.py", pkg.join("assets/link.py")).unwrap(),
        |e| matches!(e, TrustError::Symlink { .. }),
        expect![
            "File `assets/link.py` in package `$TMP/pkg` is a symlink; hint: a package may contain only regular files and directories, replace the link with a copy of its target"
        ],
    );
}

#[test]
fn refuses_a_symlinked_directory() {
    check_refused(
        |pkg| symlink("/etc", pkg.join("etc")).unwrap(),
        |e| matches!(e, TrustError::Symlink { .. }),
        expect![
            "File `etc` in package `$TMP/pkg` is a symlink; hint: a package may contain only regular files and directories, replace the link with a copy of its target"
        ],
    );
}

#[test]
fn refuses_fifos_without_blocking() {
    check_refused(
        |pkg| {
            let path = std::ffi::CString::new(pkg.join("pipe").as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path; `mkfifo` has no other preconditions.
            assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
        },
        |e| {
            matches!(
                e,
                TrustError::SpecialFile {
                    kind: SpecialKind::Fifo,
                    ..
                }
            )
        },
        expect![
            "File `pipe` in package `$TMP/pkg` is a named pipe (fifo); hint: a package may contain only regular files and directories"
        ],
    );
}

#[test]
fn refuses_sockets() {
    check_refused(
        |pkg| drop(UnixListener::bind(pkg.join("sock")).unwrap()),
        |e| {
            matches!(
                e,
                TrustError::SpecialFile {
                    kind: SpecialKind::Socket,
                    ..
                }
            )
        },
        expect![
            "File `sock` in package `$TMP/pkg` is a socket; hint: a package may contain only regular files and directories"
        ],
    );
}

#[test]
fn refuses_names_that_are_not_utf8() {
    check_refused(
        |pkg| write(&pkg.join(OsStr::from_bytes(b"caf\xe9.txt")), "x", 0o644),
        |e| matches!(e, TrustError::BadFileName { .. }),
        expect![
            "File `caf�.txt` in package `$TMP/pkg` has a name that is not valid UTF-8; hint: rename it"
        ],
    );
}

#[test]
fn refuses_names_with_newlines() {
    check_refused(
        |pkg| write(&pkg.join("a\nb.txt"), "x", 0o644),
        |e| matches!(e, TrustError::BadFileName { .. }),
        expect![[
            r#"File `a\nb.txt` in package `$TMP/pkg` has a name that contains a control character such as a newline or tab; hint: rename it"#
        ]],
    );
}

#[test]
fn refuses_names_with_tabs() {
    check_refused(
        |pkg| write(&pkg.join("assets/a\tb.txt"), "x", 0o644),
        |e| matches!(e, TrustError::BadFileName { .. }),
        expect![[
            r#"File `assets/a\tb.txt` in package `$TMP/pkg` has a name that contains a control character such as a newline or tab; hint: rename it"#
        ]],
    );
}

#[test]
fn refuses_a_package_without_manifest() {
    check_refused(
        |pkg| fs::remove_file(pkg.join("plugin.toml")).unwrap(),
        |e| matches!(e, TrustError::MissingManifest { .. }),
        expect![
            "Package `$TMP/pkg` has no `plugin.toml` or `plugin.json`; hint: the manifest must be at the top of the package directory"
        ],
    );
}

#[test]
fn strict_mode_refuses_unsigned_packages_only() {
    let fx = Fx::unsigned();
    let v = verify_package(&fx.pkg, &KeySource::Store(&fx.store)).unwrap();
    assert_eq!(v.trust, Trust::Unsigned);
    assert_eq!(v.digest, package_digest(&fx.pkg).unwrap());
    TrustPolicy { strict: false }.check(&v).unwrap();
    TrustPolicy::default().check(&v).unwrap();
    let err = TrustPolicy { strict: true }.check(&v).unwrap_err();
    assert!(matches!(err, TrustError::Unsigned { .. }), "{err:?}");
    expect!["Package `demo 1.0.0` is not signed and strict mode is on; hint: sign it with `plugd sign DIR --key KEY` and add the key with `plugd trust add`"].assert_eq(&err.to_string());

    sign_package(&fx.pkg, &fx.key).unwrap();
    let v = verify_package(&fx.pkg, &KeySource::Store(&fx.store)).unwrap();
    TrustPolicy { strict: true }.check(&v).unwrap();
}

/// Writes Python byte-code caches into a package: a `__pycache__` beside a module, one inside a
/// sub-directory (holding a file whose name is not even valid for a package), a sourceless
/// `helper.pyc` and an old `.pyo`.
fn add_bytecode(pkg: &Path) {
    write(&pkg.join("__pycache__/main.cpython-312.pyc"), "\0", 0o644);
    write(&pkg.join("lib/__pycache__/odd\tname.pyc"), "\0", 0o644);
    write(&pkg.join("helper.pyc"), "\0import os", 0o644);
    write(&pkg.join("lib/old.pyo"), "\0", 0o644);
}

#[test]
fn bytecode_caches_are_never_part_of_a_package() {
    let fx = Fx::unsigned();
    let clean = package_digest(&fx.pkg).unwrap();
    add_bytecode(&fx.pkg);
    // Signing skips them: same digest, same file count as without them.
    let info = sign_package(&fx.pkg, &fx.key).unwrap();
    assert_eq!((info.digest, info.files), (clean, 4));
    assert_eq!(package_digest(&fx.pkg).unwrap(), clean);
    let verification = verify_package(&fx.pkg, &KeySource::Store(&fx.store)).unwrap();
    assert_eq!(
        verification.trust,
        Trust::Trusted {
            key_id: fx.key.key_id()
        }
    );

    // Staging never copies them, so a compiled file can never run unsigned.
    let strict = TrustPolicy { strict: true };
    let staged =
        stage_package(&fx.pkg, &fx.staging, &KeySource::Store(&fx.store), &strict).unwrap();
    let mut found = Vec::new();
    let mut pending = vec![staged.dir().to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            }
            let rel = entry.path().strip_prefix(staged.dir()).unwrap().to_owned();
            found.push(rel.to_string_lossy().into_owned());
        }
    }
    found.sort();
    assert_eq!(
        found,
        [
            "assets",
            "assets/logo.txt",
            "bin",
            "bin/run",
            "lib",
            "main.py",
            "plugin.sig",
            "plugin.toml"
        ]
    );
}

#[test]
fn bytecode_added_after_signing_is_ignored() {
    let fx = Fx::signed();
    add_bytecode(&fx.pkg);
    let verification = verify_package(&fx.pkg, &KeySource::Store(&fx.store)).unwrap();
    assert_eq!(verification.digest, package_digest(&fx.pkg).unwrap());
    let strict = TrustPolicy { strict: true };
    let staged =
        stage_package(&fx.pkg, &fx.staging, &KeySource::Store(&fx.store), &strict).unwrap();
    assert!(!staged.dir().join("helper.pyc").exists());
    assert!(!staged.dir().join("__pycache__").exists());
}
