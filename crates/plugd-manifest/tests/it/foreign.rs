//! Golden tests of the foreign formats: every directory in `tests/foreign` is a package written
//! for another plugin system; `Manifest::load` reads it, and the outcome is compared with the
//! directory's `expected.out` (the translated manifest, dumped) or `expected.err` (the exact
//! message). `UPDATE_EXPECT=1 cargo test -p plugd-manifest` rewrites them.

use std::fs;
use std::path::{Path, PathBuf};

use expect_test::expect_file;
use plugd_manifest::Manifest;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/foreign");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .expect("tests/foreign is readable")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn foreign_golden_packages() {
    let cases = cases();
    assert!(
        cases.len() >= 12,
        "expected the foreign packages in tests/foreign"
    );
    for dir in cases {
        let (actual, kept, stale) = match Manifest::load(&dir) {
            Ok(manifest) => (crate::ui::dump(&manifest), "out", "err"),
            Err(e) => (format!("{e}\n"), "err", "out"),
        };
        // Paths are shown relative to the crate, so that the golden text is stable.
        let actual = actual.replace(concat!(env!("CARGO_MANIFEST_DIR"), "/"), "");
        let stale = dir.join(format!("expected.{stale}"));
        if stale.exists() {
            if std::env::var_os("UPDATE_EXPECT").is_some() {
                fs::remove_file(&stale).expect("stale golden file is removable");
            } else {
                panic!(
                    "{} exists, but the package now gives:\n{actual}",
                    stale.display()
                );
            }
        }
        expect_file![dir.join(format!("expected.{kept}"))].assert_eq(&actual);
    }
}

/// The translated tree is itself a valid native manifest: what `plugd migrate` writes reads back
/// as the same plugin.
#[test]
fn translations_are_native_manifests() {
    for dir in cases() {
        let Ok(manifest) = Manifest::load(&dir) else {
            continue;
        };
        let foreign = manifest.foreign.as_ref().expect("a foreign package");
        let text = toml::to_string(&foreign.native).expect("the tree is TOML");
        let native = Manifest::from_toml_str(&text)
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", dir.display()));
        assert_eq!(native.name, manifest.name);
        assert_eq!(native.entry, manifest.entry);
        assert_eq!(native.limits, manifest.limits);
        assert_eq!(native.permissions, manifest.permissions);
        assert_eq!(native.events, manifest.events);
    }
}
