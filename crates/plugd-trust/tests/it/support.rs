//! Shared fixtures: a small package, fixed keys, a trust store and a staging root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use plugd_trust::{SecretKey, TrustError, TrustStore, sign_package};
use tempfile::TempDir;

/// The files of the fixture package, `(path, content, mode)`.
pub const FILES: &[(&str, &str, u32)] = &[
    (
        "plugin.toml",
        "schema = 1\n[plugin]\nname = \"demo\"\nversion = \"1.0.0\"\nruntime = \"process\"\nentry = [\"python3\", \"main.py\"]\n",
        0o644,
    ),
    ("main.py", "print('hello')\n", 0o644),
    ("assets/logo.txt", "logo\n", 0o644),
    ("bin/run", "#!/bin/sh\necho run\n", 0o755),
];

/// A temp dir with a package in `pkg`, a key whose public half is in `store`, and a staging
/// root that does not exist yet.
pub struct Fx {
    _tmp: TempDir,
    pub root: PathBuf,
    pub pkg: PathBuf,
    pub key: SecretKey,
    pub store: TrustStore,
    pub staging: PathBuf,
}

impl Fx {
    /// An unsigned package.
    pub fn unsigned() -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let pkg = root.join("pkg");
        for (path, content, mode) in FILES {
            write(&pkg.join(path), content, *mode);
        }
        let key = fixed_key(&root, 1);
        let store = TrustStore::open(&root.join("trust")).unwrap();
        store.add_key(&key.public_key()).unwrap();
        Fx {
            staging: root.join("staging"),
            _tmp: tmp,
            root,
            pkg,
            key,
            store,
        }
    }

    /// A package signed with the fixture key, which is trusted.
    pub fn signed() -> Fx {
        let fx = Fx::unsigned();
        sign_package(&fx.pkg, &fx.key).unwrap();
        fx
    }

    /// The error's message with the temp dir shown as `$TMP`.
    pub fn message(&self, e: &TrustError) -> String {
        e.to_string().replace(self.root.to_str().unwrap(), "$TMP")
    }

    /// Entries of the staging root (empty if it does not exist).
    pub fn staged_entries(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.staging) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

/// A secret key made from a fixed seed, written to and loaded from `dir/key-SEED`, so tests are
/// deterministic (Ed25519 signatures are too).
pub fn fixed_key(dir: &Path, seed: u8) -> SecretKey {
    use base64::Engine;
    let text = format!(
        "plugd-ed25519-secret-key v1\n{}\n",
        base64::engine::general_purpose::STANDARD.encode([seed; 32])
    );
    let path = dir.join(format!("key-{seed}"));
    write(&path, &text, 0o600);
    SecretKey::load(&path).unwrap()
}

/// Writes a file (creating parent directories) and sets its mode.
pub fn write(path: &Path, content: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The permission bits of a path (not following symlinks).
pub fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}
