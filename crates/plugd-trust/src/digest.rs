//! The canonical package digest, and the one walker that reads (and optionally copies) a
//! package.
//!
//! The digest is the SHA-256 of a canonical text: `plugd-package-v1\n`, then one
//! `path\tsize\tsha256\n` line per regular file, sorted by path (bytes of the UTF-8 path, `/`
//! separators). Every regular file except the top-level `plugin.sig` is listed, the manifest
//! included. Symlinks, device files, fifos, sockets and names that are not UTF-8 or contain
//! control characters (newline, tab, ...) are refused, so the listing is unambiguous and covers
//! everything that can run.
//!
//! Byte-code caches are never part of a package: every entry named `__pycache__` and every file
//! ending in `.pyc` or `.pyo` is skipped, whatever its type, by signing, verification and staging
//! alike. They are not hashed and not copied, so a stray compiled file can never run unsigned (a
//! sourceless `helper.pyc` would otherwise be importable), and running a plugin's tests locally
//! never makes its package unloadable.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, DirBuilder, File, FileType, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{SpecialKind, TrustError};
use crate::hex;
use crate::manifest::{Identity, parse_identity};
use crate::{JSON_MANIFEST, SIGNATURE_FILE, TOML_MANIFEST};

/// First line of the canonical listing; changing the format means changing this line.
const LISTING_HEADER: &str = "plugd-package-v1\n";
/// The manifest and the signature are held in memory while they are hashed; this bounds that.
const MAX_KEPT_FILE: usize = 16 << 20;

/// The SHA-256 digest of a package's canonical listing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackageDigest([u8; 32]);

impl PackageDigest {
    /// The digest as 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// The first 12 hex digits, for directory names and short displays.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_owned()
    }

    /// Parses 64 lower-case hex digits.
    pub fn from_hex(text: &str) -> Option<PackageDigest> {
        hex::decode::<32>(text).map(PackageDigest)
    }
}

impl fmt::Display for PackageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PackageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackageDigest({})", self.to_hex())
    }
}

/// Computes the canonical digest of the package in `dir`, refusing anything a package may not
/// contain. The manifest (`plugin.toml` or `plugin.json`) must be present.
pub fn package_digest(dir: &Path) -> Result<PackageDigest, TrustError> {
    Ok(scan(dir, None)?.digest())
}

/// One line of the canonical listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileEntry {
    pub(crate) path: String,
    pub(crate) size: u64,
    pub(crate) sha256: [u8; 32],
}

/// Renders the canonical listing of `files` (which must be sorted by path).
pub(crate) fn render(files: &[FileEntry]) -> String {
    let mut out = String::from(LISTING_HEADER);
    for f in files {
        out.push_str(&format!(
            "{}\t{}\t{}\n",
            f.path,
            f.size,
            hex::encode(&f.sha256)
        ));
    }
    out
}

/// The digest of the canonical listing of `files` (sorted by path).
pub(crate) fn digest_of(files: &[FileEntry]) -> PackageDigest {
    PackageDigest(Sha256::digest(render(files).as_bytes()).into())
}

/// What one pass over a package found.
pub(crate) struct Scan {
    /// The package directory that was read.
    pub(crate) dir: PathBuf,
    /// Every listed file, sorted by path.
    pub(crate) files: Vec<FileEntry>,
    /// Paths of listed files with an execute bit (not signed; kept for staging).
    pub(crate) executables: BTreeSet<String>,
    /// File name and the exact bytes hashed of the manifest.
    pub(crate) manifest: (&'static str, Vec<u8>),
    /// The exact bytes of `plugin.sig`, if there is one.
    pub(crate) signature: Option<Vec<u8>>,
}

impl Scan {
    pub(crate) fn digest(&self) -> PackageDigest {
        digest_of(&self.files)
    }

    /// Name and version from the manifest bytes that were hashed.
    pub(crate) fn identity(&self) -> Result<Identity, TrustError> {
        let (name, bytes) = &self.manifest;
        parse_identity(name, bytes, &self.dir.join(name))
    }
}

/// Reads every file of the package in `dir` once. With `copy_to` (an existing, empty, private
/// directory) each file is written there in the same pass as it is hashed, so the listing
/// describes exactly the bytes of the copy, whatever happens to `dir` meanwhile.
///
/// Files are opened with `O_NOFOLLOW` and checked with `fstat` on the open descriptor, so a
/// symlink or fifo swapped in after the directory was listed is refused rather than followed
/// or blocked on (`O_NONBLOCK`).
pub(crate) fn scan(dir: &Path, copy_to: Option<&Path>) -> Result<Scan, TrustError> {
    let meta = fs::metadata(dir).map_err(|e| TrustError::io("read", dir, e))?;
    if !meta.is_dir() {
        return Err(TrustError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let mut walker = Walker {
        root: dir,
        copy_to,
        files: Vec::new(),
        executables: BTreeSet::new(),
        manifests: Default::default(),
        signature: None,
        buf: vec![0; 64 * 1024],
    };
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        walker.dir(&rel, &mut pending)?;
    }
    let Walker {
        mut files,
        executables,
        mut manifests,
        signature,
        ..
    } = walker;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    // The first candidate present wins, in `plugd-manifest`'s order; all are covered by the
    // digest. An `__init__.py` counts only when it sets `plugin_class` (an image-tool plugin).
    let manifest = MANIFEST_FILES
        .iter()
        .find_map(|name| {
            let bytes = manifests.remove(name)?;
            if *name == INIT_MODULE && !crate::manifest::sets_plugin_class(&bytes) {
                return None;
            }
            Some((*name, bytes))
        })
        .ok_or_else(|| TrustError::MissingManifest {
            dir: dir.to_owned(),
        })?;
    Ok(Scan {
        dir: dir.to_owned(),
        files,
        executables,
        manifest,
        signature,
    })
}

struct Walker<'a> {
    root: &'a Path,
    copy_to: Option<&'a Path>,
    files: Vec<FileEntry>,
    executables: BTreeSet<String>,
    /// The top-level manifest candidates read, by file name.
    manifests: std::collections::BTreeMap<&'static str, Vec<u8>>,
    signature: Option<Vec<u8>>,
    buf: Vec<u8>,
}

/// Which top-level file is being read, when it must also be kept in memory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kept {
    No,
    /// A manifest candidate (one of [`MANIFEST_FILES`]).
    Manifest(&'static str),
    Signature,
}

/// The files a package's identity may come from, in order of precedence: plugd's own manifests,
/// then the foreign ones `plugd-manifest` translates.
const MANIFEST_FILES: [&str; 6] = [
    TOML_MANIFEST,
    JSON_MANIFEST,
    "plugin.yaml",
    "plugin.yml",
    "manifest.json",
    INIT_MODULE,
];
/// An image-tool plugin's module, which names no version and takes its name from its directory.
pub(crate) const INIT_MODULE: &str = "__init__.py";

impl Walker<'_> {
    /// Lists one directory (`rel` is package-relative, empty for the root); files are read at
    /// once, subdirectories are pushed onto `pending` (an explicit stack: no recursion depth
    /// limit to hit on a deep tree).
    fn dir(&mut self, rel: &str, pending: &mut Vec<String>) -> Result<(), TrustError> {
        let path = self.root.join(rel);
        let entries =
            fs::read_dir(&path).map_err(|e| TrustError::io("read directory", &path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| TrustError::io("read directory", &path, e))?;
            let os_name = entry.file_name();
            let Some(name) = os_name.to_str() else {
                return Err(TrustError::BadFileName {
                    dir: self.root.to_owned(),
                    path: join(rel, &os_name.to_string_lossy()),
                    reason: "is not valid UTF-8",
                });
            };
            if is_bytecode_cache(name) {
                continue;
            }
            let child = join(rel, name);
            if name.chars().any(char::is_control) {
                return Err(TrustError::BadFileName {
                    dir: self.root.to_owned(),
                    path: child.escape_debug().to_string(),
                    reason: "contains a control character such as a newline or tab",
                });
            }
            // `DirEntry::file_type` does not follow symlinks.
            let file_type = entry
                .file_type()
                .map_err(|e| TrustError::io("read", entry.path(), e))?;
            let top = rel.is_empty();
            if file_type.is_symlink() {
                return Err(self.symlink(child));
            } else if file_type.is_dir() {
                if top && name == SIGNATURE_FILE {
                    return Err(not_a_regular_signature(&entry.path()));
                }
                if let Some(dest) = self.copy_to {
                    let dest = dest.join(&child);
                    DirBuilder::new()
                        .mode(0o700)
                        .create(&dest)
                        .map_err(|e| TrustError::io("create directory", dest, e))?;
                }
                pending.push(child);
            } else if file_type.is_file() {
                let kept = match (top, name) {
                    (true, SIGNATURE_FILE) => Kept::Signature,
                    (true, _) => MANIFEST_FILES
                        .iter()
                        .find(|m| **m == name)
                        .map_or(Kept::No, |m| Kept::Manifest(m)),
                    _ => Kept::No,
                };
                self.file(child, kept)?;
            } else {
                if top && name == SIGNATURE_FILE {
                    return Err(not_a_regular_signature(&entry.path()));
                }
                return Err(self.special(child, &file_type));
            }
        }
        Ok(())
    }

    /// Reads, hashes and (when staging) copies one regular file in a single pass.
    fn file(&mut self, rel: String, kept: Kept) -> Result<(), TrustError> {
        let path = self.root.join(&rel);
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                // The file was replaced by a symlink after the directory was listed.
                Some(libc::ELOOP) => self.symlink(rel.clone()),
                _ => TrustError::io("open", &path, e),
            })?;
        let meta = file
            .metadata()
            .map_err(|e| TrustError::io("read", &path, e))?;
        let file_type = meta.file_type();
        if !file_type.is_file() {
            if file_type.is_dir() {
                return Err(TrustError::io(
                    "read",
                    &path,
                    io::Error::other("it was replaced by a directory while the package was read"),
                ));
            }
            return Err(self.special(rel, &file_type));
        }
        if meta.permissions().mode() & 0o111 != 0 {
            self.executables.insert(rel.clone());
        }
        let mut dest = match self.copy_to {
            Some(dir) => Some(create_copy(&dir.join(&rel))?),
            None => None,
        };
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut kept_bytes = Vec::new();
        loop {
            let n = match file.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(TrustError::io("read", &path, e)),
            };
            let chunk = &self.buf[..n];
            hasher.update(chunk);
            size += n as u64;
            if kept != Kept::No {
                if kept_bytes.len() + n > MAX_KEPT_FILE {
                    return Err(too_large(&path, kept));
                }
                kept_bytes.extend_from_slice(chunk);
            }
            if let Some((dest_path, dest)) = &mut dest {
                dest.write_all(chunk)
                    .map_err(|e| TrustError::io("write", dest_path.as_path(), e))?;
            }
        }
        match kept {
            Kept::Signature => {
                // The signature file is the one file outside the listing.
                self.signature = Some(kept_bytes);
                return Ok(());
            }
            Kept::Manifest(name) => {
                self.manifests.insert(name, kept_bytes);
            }
            Kept::No => {}
        }
        self.files.push(FileEntry {
            path: rel,
            size,
            sha256: hasher.finalize().into(),
        });
        Ok(())
    }

    fn symlink(&self, path: String) -> TrustError {
        TrustError::Symlink {
            dir: self.root.to_owned(),
            path,
        }
    }

    fn special(&self, path: String, file_type: &FileType) -> TrustError {
        let kind = if file_type.is_fifo() {
            SpecialKind::Fifo
        } else if file_type.is_socket() {
            SpecialKind::Socket
        } else if file_type.is_block_device() {
            SpecialKind::BlockDevice
        } else if file_type.is_char_device() {
            SpecialKind::CharDevice
        } else {
            SpecialKind::Other
        };
        TrustError::SpecialFile {
            dir: self.root.to_owned(),
            path,
            kind,
        }
    }
}

/// Whether a directory entry is a Python byte-code cache, which is never part of a package.
pub(crate) fn is_bytecode_cache(name: &str) -> bool {
    name == "__pycache__" || name.ends_with(".pyc") || name.ends_with(".pyo")
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

fn create_copy(path: &Path) -> Result<(PathBuf, File), TrustError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map(|file| (path.to_owned(), file))
        .map_err(|e| TrustError::io("create", path, e))
}

fn not_a_regular_signature(path: &Path) -> TrustError {
    TrustError::MalformedSignature {
        path: path.to_owned(),
        reason: "it is not a regular file".into(),
    }
}

fn too_large(path: &Path, kept: Kept) -> TrustError {
    let reason = format!("it is larger than {} MiB", MAX_KEPT_FILE >> 20);
    if kept == Kept::Signature {
        TrustError::MalformedSignature {
            path: path.to_owned(),
            reason,
        }
    } else {
        TrustError::ManifestInvalid {
            path: path.to_owned(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn canonical_listing_is_stable() {
        let files = [
            FileEntry {
                path: "assets/logo.txt".into(),
                size: 0,
                sha256: Sha256::digest(b"").into(),
            },
            FileEntry {
                path: "plugin.toml".into(),
                size: 3,
                sha256: Sha256::digest(b"abc").into(),
            },
        ];
        expect![[r#"
            plugd-package-v1
            assets/logo.txt	0	e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
            plugin.toml	3	ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        "#]]
        .assert_eq(&render(&files));
        // Pinned: a change here invalidates every signature ever made.
        expect!["8b64544163a6917440c1de342379009959c5ad0a10f7046aa85c620941eaffe8"]
            .assert_eq(&digest_of(&files).to_hex());
    }
}
