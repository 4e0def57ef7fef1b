//! The trust store: a directory of trusted public keys, one `<key id>.pub` file each.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::TrustError;
use crate::keys::{KeyId, PublicKey, write_replace};

/// A directory of trusted public keys.
///
/// The directory must be owned by the current user (or root) and not writable by group or
/// others: whoever can write it decides what runs as trusted.
#[derive(Clone, Debug)]
pub struct TrustStore {
    dir: PathBuf,
}

impl TrustStore {
    /// Opens the trust store at `dir`, creating it (mode 0755) if it is missing.
    pub fn open(dir: &Path) -> Result<TrustStore, TrustError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| TrustError::io("create directory", dir, e))?;
        check_private_dir("Trust store", dir)?;
        Ok(TrustStore {
            dir: dir.to_owned(),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds the public key file at `public_key` and returns its id. Adding a key that is already
    /// trusted is not an error.
    pub fn add(&self, public_key: &Path) -> Result<KeyId, TrustError> {
        self.add_key(&PublicKey::load(public_key)?)
    }

    /// Adds a public key and returns its id.
    pub fn add_key(&self, key: &PublicKey) -> Result<KeyId, TrustError> {
        let id = key.key_id();
        write_replace(&self.key_path(&id), key.to_text().as_bytes(), 0o644)?;
        Ok(id)
    }

    /// Every trusted key with its file, sorted by key id. Files not named `<key id>.pub` are
    /// ignored; a `<key id>.pub` that does not hold that key is an error.
    pub fn list(&self) -> Result<Vec<(KeyId, PathBuf)>, TrustError> {
        let entries =
            fs::read_dir(&self.dir).map_err(|e| TrustError::io("read directory", &self.dir, e))?;
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| TrustError::io("read directory", &self.dir, e))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".pub"))
                .and_then(|stem| KeyId::parse(stem).ok())
            else {
                continue;
            };
            if self.get(&id)?.is_some() {
                keys.push((id, entry.path()));
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Removes a key; returns the path of the removed file.
    pub fn remove(&self, key_id: &KeyId) -> Result<PathBuf, TrustError> {
        let path = self.key_path(key_id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(TrustError::KeyNotInStore {
                key_id: key_id.clone(),
                store: self.dir.clone(),
            }),
            Err(e) => Err(TrustError::io("remove", path, e)),
        }
    }

    /// The trusted key with this id, if there is one.
    pub fn get(&self, key_id: &KeyId) -> Result<Option<PublicKey>, TrustError> {
        let path = self.key_path(key_id);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TrustError::io("read", path, e)),
        };
        let bad = |reason: String| TrustError::KeyFormat {
            path: path.clone(),
            expected: "public key",
            reason,
        };
        if !meta.is_file() {
            return Err(bad("it is not a regular file".into()));
        }
        let key = PublicKey::load(&path)?;
        if key.key_id() != *key_id {
            // A renamed file must not make another key trusted under this id.
            return Err(bad(format!(
                "it holds key `{}`, not `{key_id}` as its name says; hint: add keys with `plugd trust add`",
                key.key_id()
            )));
        }
        Ok(Some(key))
    }

    fn key_path(&self, key_id: &KeyId) -> PathBuf {
        self.dir.join(format!("{key_id}.pub"))
    }
}

/// Refuses a directory that someone other than us (or root) could change.
pub(crate) fn check_private_dir(what: &'static str, dir: &Path) -> Result<(), TrustError> {
    let meta = fs::metadata(dir).map_err(|e| TrustError::io("read", dir, e))?;
    let insecure = |reason: String| TrustError::InsecureDirectory {
        what,
        path: dir.to_owned(),
        reason,
    };
    if !meta.is_dir() {
        return Err(insecure("it is not a directory".into()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(insecure(format!(
            "it is writable by group or others (mode {mode:04o})"
        )));
    }
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(insecure(format!(
            "it is owned by uid {}, not by uid {euid} or root",
            meta.uid()
        )));
    }
    Ok(())
}
