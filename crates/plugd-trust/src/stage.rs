//! Verified staging: the copy of a package that the host actually runs.
//!
//! Checking a package in place and then running it from the same path is a time-of-check to
//! time-of-use race: a file can be swapped between the two. [`stage_package`] closes it by
//! construction. It copies the package into a fresh private directory and computes the digest
//! from the very bytes it writes to the copy, in the same pass (each source file opened once,
//! with `O_NOFOLLOW`, checked with `fstat`, then read, hashed and written chunk by chunk). The
//! signature is then checked against that digest. There is no second read of the source, so
//! there is no moment at which the source could differ from what was hashed: a change made to
//! the source during the copy either lands in the bytes that are hashed (and fails the
//! signature) or is not in the copy at all. The copy is made read-only and renamed into place
//! only after verification, so nothing can run from a half-verified directory.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::digest::{Scan, scan};
use crate::error::TrustError;
use crate::signature::{KeySource, TrustPolicy, Verification, evaluate};
use crate::store::check_private_dir;

/// A verified, read-only copy of a package.
#[derive(Debug)]
pub struct StagedPackage {
    dir: PathBuf,
    verification: Verification,
    reused: bool,
}

impl StagedPackage {
    /// The directory to run the plugin from: `STAGING_ROOT/<name>-<version>-<digest12>`. Files
    /// are mode 0444 (0555 if executable in the source) and directories 0555, so the sandbox's
    /// unprivileged uid can read them and nobody but root or the host's uid can change them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What was verified: trust level, digest, name and version.
    pub fn verification(&self) -> &Verification {
        &self.verification
    }

    /// Whether an existing staged copy with the same content was reused.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Deletes the staged copy (for example when the plugin is uninstalled or upgraded and no
    /// instance runs from it any more).
    pub fn remove(self) -> Result<(), TrustError> {
        remove_tree(&self.dir)
    }
}

/// Copies the package in `src` into a private directory under `staging_root`, verifying the
/// copied bytes against the package's signature with `keys`, and applying `policy`.
///
/// `staging_root` is created (mode 0755) if missing and must be owned by the current user (or
/// root) and not writable by group or others. If a staged copy with the same digest and
/// signature already exists, it is reused after its content is checked again; a copy that does
/// not match is replaced.
pub fn stage_package(
    src: &Path,
    staging_root: &Path,
    keys: &KeySource<'_>,
    policy: &TrustPolicy,
) -> Result<StagedPackage, TrustError> {
    // A staging root inside the package would be copied into itself, level after level.
    if let (Ok(root), Ok(package)) = (resolve(staging_root), src.canonicalize())
        && root.starts_with(&package)
    {
        return Err(TrustError::io(
            "stage into",
            staging_root,
            io::Error::other(format!("it is inside the package `{}`", src.display())),
        ));
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(staging_root)
        .map_err(|e| TrustError::io("create directory", staging_root, e))?;
    check_private_dir("Staging directory", staging_root)?;

    let temp = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(staging_root)
        .map_err(|e| TrustError::io("create a directory in", staging_root, e))?;
    let temp = TempTree(Some(temp.keep()));
    let copy = scan(src, Some(temp.path()))?;
    let verification = evaluate(&copy, keys)?;
    policy.check(&verification)?;

    let target = staging_root.join(format!(
        "{}-{}-{}",
        verification.plugin,
        verification.version,
        verification.digest.short()
    ));
    if matches_existing(&target, &copy) {
        return Ok(StagedPackage {
            dir: target,
            verification,
            reused: true,
        });
    }
    seal(temp.path(), &copy)?;
    if fs::symlink_metadata(&target).is_ok() {
        // A stale or damaged copy: move it aside first, since `rename` cannot replace a
        // non-empty directory.
        let stale = staging_root.join(format!(
            ".stale-{}",
            temp.path()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x")
        ));
        fs::rename(&target, &stale).map_err(|e| TrustError::io("move aside", &target, e))?;
        remove_tree(&stale)?;
    }
    match fs::rename(temp.path(), &target) {
        Ok(()) => {}
        Err(e) if is_not_empty(&e) && matches_existing(&target, &copy) => {
            // Another stager won the race with the same content.
            return Ok(StagedPackage {
                dir: target,
                verification,
                reused: true,
            });
        }
        Err(e) => return Err(TrustError::io("rename into", &target, e)),
    }
    temp.disarm();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o555))
        .map_err(|e| TrustError::io("make read-only", &target, e))?;
    Ok(StagedPackage {
        dir: target,
        verification,
        reused: false,
    })
}

/// Whether `target` is a staged copy of exactly what `copy` read: same listing, same execute
/// bits, same signature bytes. Reads it in full again, so a damaged copy is never reused.
fn matches_existing(target: &Path, copy: &Scan) -> bool {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => {}
        _ => return false,
    }
    match scan(target, None) {
        Ok(existing) => {
            existing.files == copy.files
                && existing.executables == copy.executables
                && existing.signature == copy.signature
        }
        Err(_) => false,
    }
}

/// Makes the copy read-only: files 0444 (0555 when executable), directories 0555. The root is
/// made read-only after it is renamed into place.
fn seal(root: &Path, copy: &Scan) -> Result<(), TrustError> {
    let mut dirs = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| TrustError::io("read directory", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| TrustError::io("read directory", &dir, e))?;
            let path = entry.path();
            let is_dir = entry
                .file_type()
                .map_err(|e| TrustError::io("read", &path, e))?
                .is_dir();
            if is_dir {
                pending.push(path.clone());
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let executable = rel.to_str().is_some_and(|r| copy.executables.contains(r));
                let mode = if executable { 0o555 } else { 0o444 };
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(|e| TrustError::io("make read-only", &path, e))?;
            }
        }
    }
    for dir in dirs {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o555))
            .map_err(|e| TrustError::io("make read-only", &dir, e))?;
    }
    Ok(())
}

/// Removes a (possibly read-only) tree without following symlinks.
fn remove_tree(path: &Path) -> Result<(), TrustError> {
    fn make_writable(path: &Path) -> io::Result<()> {
        if fs::symlink_metadata(path)?.is_dir() {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
            for entry in fs::read_dir(path)? {
                make_writable(&entry?.path())?;
            }
        }
        Ok(())
    }
    let is_dir = match fs::symlink_metadata(path) {
        Ok(meta) => meta.is_dir(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TrustError::io("remove", path, e)),
    };
    let result = if is_dir {
        make_writable(path).and_then(|()| fs::remove_dir_all(path))
    } else {
        fs::remove_file(path)
    };
    result.map_err(|e| TrustError::io("remove", path, e))
}

/// `path` with symlinks resolved, for a path that may not exist yet: the deepest existing
/// ancestor is canonicalized and the rest appended.
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut rest = Vec::new();
    let mut existing = path;
    loop {
        match existing.canonicalize() {
            Ok(base) => return Ok(rest.iter().rev().fold(base, |acc, name| acc.join(name))),
            Err(e) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name);
                    existing = if parent.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        parent
                    };
                }
                _ => return Err(e),
            },
        }
    }
}

fn is_not_empty(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST))
}

/// A staging directory that is removed on drop unless it was renamed into place.
struct TempTree(Option<PathBuf>);

impl TempTree {
    fn path(&self) -> &Path {
        self.0
            .as_deref()
            .expect("a temp tree is only used while armed")
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: a leftover `.staging-*` directory is harmless and never reused.
            let _ = remove_tree(&path);
        }
    }
}

/// What [`collect_staged`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// The staged copies (and leftovers of interrupted staging) that were removed.
    pub removed: Vec<PathBuf>,
    /// Bytes they held (file sizes).
    pub bytes: u64,
}

/// Removes every staged copy under `staging_root` that is not in `keep`, and every leftover of
/// an interrupted staging (`.staging-*`, `.stale-*`). The caller must make sure no staging runs
/// at the same time (the host holds its lifecycle lock). A missing root is an empty one.
pub fn collect_staged(
    staging_root: &Path,
    keep: &std::collections::HashSet<PathBuf>,
) -> Result<Collected, TrustError> {
    let mut collected = Collected::default();
    let entries = match fs::read_dir(staging_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(collected),
        Err(e) => return Err(TrustError::io("read", staging_root, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| TrustError::io("read", staging_root, e))?;
        let path = entry.path();
        if keep.contains(&path) {
            continue;
        }
        collected.bytes += tree_size(&path);
        remove_tree(&path)?;
        collected.removed.push(path);
    }
    collected.removed.sort();
    Ok(collected)
}

/// Bytes of the regular files under `path` (not following symlinks); best effort.
fn tree_size(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| tree_size(&e.path()))
                    .sum()
            })
            .unwrap_or(0),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}
