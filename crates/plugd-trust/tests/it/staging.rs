//! Staging: the verified read-only copy, reuse, and the source changing after or during staging.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use plugd_trust::{
    KeySource, StagedPackage, Trust, TrustError, TrustPolicy, package_digest, stage_package,
    verify_package,
};

use crate::support::{FILES, Fx, mode};

const LENIENT: TrustPolicy = TrustPolicy { strict: false };
const STRICT: TrustPolicy = TrustPolicy { strict: true };

fn stage(fx: &Fx, policy: &TrustPolicy) -> Result<StagedPackage, TrustError> {
    stage_package(&fx.pkg, &fx.staging, &KeySource::Store(&fx.store), policy)
}

/// Asserts the staged copy holds exactly the fixture's files and still verifies.
fn assert_pristine(fx: &Fx, staged: &StagedPackage) {
    for (path, content, _) in FILES {
        assert_eq!(
            fs::read_to_string(staged.dir().join(path)).unwrap(),
            *content,
            "staged `{path}`"
        );
    }
    let again = verify_package(staged.dir(), &KeySource::Store(&fx.store)).unwrap();
    assert_eq!(&again, staged.verification());
}

#[test]
fn stages_a_verified_read_only_copy() {
    let fx = Fx::signed();
    let staged = stage(&fx, &STRICT).unwrap();
    let digest = package_digest(&fx.pkg).unwrap();
    assert_eq!(
        staged.dir(),
        fx.staging.join(format!("demo-1.0.0-{}", digest.short()))
    );
    assert!(!staged.reused());
    let v = staged.verification();
    assert_eq!(
        v.trust,
        Trust::Trusted {
            key_id: fx.key.key_id()
        }
    );
    assert_eq!(v.digest, digest);
    assert_pristine(&fx, &staged);

    // Read-only for everyone, readable by the sandbox's unprivileged uid.
    assert_eq!(mode(staged.dir()), 0o555);
    assert_eq!(mode(&staged.dir().join("assets")), 0o555);
    assert_eq!(mode(&staged.dir().join("main.py")), 0o444);
    assert_eq!(mode(&staged.dir().join("plugin.sig")), 0o444);
    assert_eq!(mode(&staged.dir().join("bin/run")), 0o555);
    assert_eq!(mode(&fx.staging) & 0o755, 0o755);
    // No temporary directory is left behind.
    assert_eq!(
        fx.staged_entries(),
        vec![format!("demo-1.0.0-{}", digest.short())]
    );
}

#[test]
fn the_staged_copy_keeps_the_verified_bytes_when_the_source_changes_afterwards() {
    let fx = Fx::signed();
    let staged = stage(&fx, &STRICT).unwrap();

    // Every kind of swap an attacker could make in the source after the check.
    fs::write(fx.pkg.join("main.py"), "print('evil')\n").unwrap();
    fs::remove_file(fx.pkg.join("assets/logo.txt")).unwrap();
    symlink("/etc/passwd", fx.pkg.join("assets/logo.txt")).unwrap();
    fs::write(fx.pkg.join("bin/run"), "#!/bin/sh\nrm -rf ~\n").unwrap();
    fs::write(fx.pkg.join("extra.py"), "import os\n").unwrap();

    assert_pristine(&fx, &staged);
    assert!(!staged.dir().join("extra.py").exists());

    // And the changed source is refused on the next load.
    let err = stage(&fx, &LENIENT).unwrap_err();
    assert!(matches!(err, TrustError::Symlink { .. }), "{err:?}");
    fs::remove_file(fx.pkg.join("assets/logo.txt")).unwrap();
    let err = stage(&fx, &LENIENT).unwrap_err();
    assert!(
        matches!(err, TrustError::FileRemoved { ref path, .. } if path == "assets/logo.txt"),
        "{err:?}"
    );
    fs::write(fx.pkg.join("assets/logo.txt"), "logo\n").unwrap();
    let err = stage(&fx, &LENIENT).unwrap_err();
    assert!(
        matches!(err, TrustError::FileChanged { ref path, .. } if path == "bin/run"),
        "{err:?}"
    );
    assert_pristine(&fx, &staged);
}

/// Staging hashes the bytes it copies, in one pass, so there is no moment between "digest" and
/// "copy" for the source to change in: a concurrent writer flipping `main.py` between the signed
/// and an evil content (rewriting in place, so readers also see empty and partial files) can
/// only make staging fail. Whatever the interleaving, a staged copy that exists holds exactly
/// the signed bytes. A stager that hashed first and copied afterwards would fail this test as
/// soon as a write lands between its two reads.
#[test]
fn a_source_changing_during_staging_never_yields_an_unverified_copy() {
    let fx = Fx::signed();
    let main = fx.pkg.join("main.py");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (main, stop) = (main.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut flips = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let content = if flips.is_multiple_of(2) {
                    "print('evil!')\n"
                } else {
                    "print('hello')\n"
                };
                fs::write(&main, content).unwrap();
                flips += 1;
            }
            flips
        })
    };
    let (mut staged_ok, mut refused) = (0, 0);
    for _ in 0..40 {
        match stage(&fx, &STRICT) {
            Ok(staged) => {
                staged_ok += 1;
                assert_pristine(&fx, &staged);
            }
            Err(TrustError::FileChanged { path, .. }) => {
                assert_eq!(path, "main.py");
                refused += 1;
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flips = writer.join().unwrap();
    assert!(flips > 0);
    assert_eq!(staged_ok + refused, 40);
    // Only complete, verified copies were ever put in place.
    for name in fx.staged_entries() {
        assert!(name.starts_with("demo-1.0.0-"), "leftover `{name}`");
    }
}

#[test]
fn staging_again_reuses_an_intact_copy_and_replaces_a_damaged_one() {
    let fx = Fx::signed();
    let first = stage(&fx, &STRICT).unwrap();
    let second = stage(&fx, &STRICT).unwrap();
    assert!(second.reused());
    assert_eq!(second.dir(), first.dir());

    // Damage the staged copy (only the host's uid or root can).
    let main = first.dir().join("main.py");
    fs::set_permissions(first.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&main, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&main, "print('evil')\n").unwrap();
    fs::write(first.dir().join("dropped.py"), "x").unwrap();

    let third = stage(&fx, &STRICT).unwrap();
    assert!(!third.reused());
    assert_eq!(third.dir(), first.dir());
    assert_pristine(&fx, &third);
    assert!(!third.dir().join("dropped.py").exists());
    assert_eq!(fx.staged_entries().len(), 1, "{:?}", fx.staged_entries());

    third.remove().unwrap();
    assert_eq!(fx.staged_entries(), Vec::<String>::new());
}

#[test]
fn unsigned_packages_stage_only_when_not_strict() {
    let fx = Fx::unsigned();
    let err = stage(&fx, &STRICT).unwrap_err();
    assert!(matches!(err, TrustError::Unsigned { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "Package `demo 1.0.0` is not signed and strict mode is on; hint: sign it with `plugd sign DIR --key KEY` and add the key with `plugd trust add`"
    );
    assert_eq!(fx.staged_entries(), Vec::<String>::new());

    let staged = stage(&fx, &LENIENT).unwrap();
    assert_eq!(staged.verification().trust, Trust::Unsigned);
    assert_pristine(&fx, &staged);
}

#[test]
fn a_staging_root_others_can_write_is_refused() {
    let fx = Fx::signed();
    fs::create_dir(&fx.staging).unwrap();
    fs::set_permissions(&fx.staging, fs::Permissions::from_mode(0o777)).unwrap();
    let err = stage(&fx, &STRICT).unwrap_err();
    assert!(
        matches!(err, TrustError::InsecureDirectory { .. }),
        "{err:?}"
    );
    assert_eq!(
        fx.message(&err),
        "Staging directory `$TMP/staging` is not private: it is writable by group or others (mode 0777); hint: use a directory owned by the user running plugd and not writable by others"
    );
}

#[test]
fn a_staging_root_inside_the_package_is_refused() {
    let fx = Fx::signed();
    let inside = fx.pkg.join("staging");
    let err = stage_package(&fx.pkg, &inside, &KeySource::Store(&fx.store), &STRICT).unwrap_err();
    assert_eq!(
        fx.message(&err),
        "Cannot stage into `$TMP/pkg/staging`: it is inside the package `$TMP/pkg`"
    );
    assert!(!inside.exists(), "a refused staging root is not created");
}

#[test]
fn garbage_collection_keeps_only_what_is_in_use() {
    let fx = Fx::signed();
    let first = stage(&fx, &LENIENT).unwrap();
    // A new version of the package makes a second copy; a crash left a stale staging dir.
    fs::write(fx.pkg.join("main.py"), "print('v2')\n").unwrap();
    let unsigned = stage_package(&fx.pkg, &fx.staging, &KeySource::Store(&fx.store), &LENIENT);
    // The signature no longer matches: refused, but nothing half-made stays.
    assert!(unsigned.is_err());
    fs::create_dir(fx.staging.join(".staging-leftover")).unwrap();
    fs::write(fx.staging.join(".staging-leftover/x"), "12345").unwrap();
    let keep = std::collections::HashSet::from([first.dir().to_owned()]);
    let collected = plugd_trust::collect_staged(&fx.staging, &keep).unwrap();
    assert_eq!(collected.removed, [fx.staging.join(".staging-leftover")]);
    assert_eq!(collected.bytes, 5);
    assert_pristine_dir(first.dir());
    // Nothing in use: the read-only copy goes too.
    let collected = plugd_trust::collect_staged(&fx.staging, &Default::default()).unwrap();
    assert_eq!(collected.removed, [first.dir().to_owned()]);
    assert!(!first.dir().exists());
    // A missing root is an empty one.
    let none = plugd_trust::collect_staged(&fx.staging.join("nope"), &Default::default());
    assert_eq!(none.unwrap(), plugd_trust::Collected::default());
}

fn assert_pristine_dir(dir: &std::path::Path) {
    assert!(dir.join("main.py").is_file(), "{}", dir.display());
}
