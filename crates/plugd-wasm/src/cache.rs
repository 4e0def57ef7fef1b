//! The on-disk cache of compiled components, keyed by content digest and engine configuration.
//!
//! A cache file is named `<sha256 of the component bytes>-<engine key>.cwasm`, where the engine
//! key is a sha256 over wasmtime's own compatibility hash (its version, the target and every
//! setting that changes generated code). A file is written to a temporary name in the same
//! directory and renamed into place, so a reader sees either nothing or a whole file.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Content digest of a component's bytes.
pub(crate) type ContentDigest = [u8; 32];

pub(crate) fn digest(bytes: &[u8]) -> ContentDigest {
    Sha256::digest(bytes).into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key for everything about the engine that makes compiled code (in)compatible.
pub(crate) fn engine_key(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex(&hasher.0.finalize()[..12])
}

pub(crate) fn path(dir: &Path, digest: &ContentDigest, engine_key: &str) -> PathBuf {
    dir.join(format!("{}-{engine_key}.cwasm", hex(digest)))
}

/// Loads a compiled component from the cache, or `None` when there is no usable file.
pub(crate) fn load(engine: &Engine, path: &Path) -> Option<Component> {
    if !path.is_file() {
        return None;
    }
    // SAFETY: `deserialize_file` maps the file and runs its machine code without checking it.
    // Only this module writes into the cache directory (created with mode 0700 and owned by the
    // host's user), always from code wasmtime itself compiled, and always under a name derived
    // from the digest of the component bytes and the engine's compatibility key, through a
    // temp file + rename so no partial file is ever visible. Anyone able to replace a file
    // there can already replace the host binary's inputs with the same rights, so this trusts
    // nothing the host does not already trust. wasmtime also checks the header (version, target,
    // settings) and refuses a file compiled for another engine; we then recompile.
    match unsafe { Component::deserialize_file(engine, path) } {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Ignoring an unusable compiled-code cache file");
            None
        }
    }
}

/// Writes `compiled` to `path` atomically.
pub(crate) fn store(path: &Path, compiled: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Unique per process and per write, so concurrent writers of one key never share a file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(compiled)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates the cache directory, private to the host's user.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Removes every `*.cwasm` file in `dir` that is not in `live`; returns the bytes freed.
pub(crate) fn collect(dir: &Path, live: &std::collections::HashSet<PathBuf>) -> io::Result<u64> {
    let mut freed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "cwasm") && !live.contains(&path) {
            let len = std::fs::symlink_metadata(&path).map_or(0, |m| m.len());
            match std::fs::remove_file(&path) {
                Ok(()) => freed += len,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(freed)
}
