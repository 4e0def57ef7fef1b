//! The one error type of this crate, with the user-facing message of every refusal.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::digest::PackageDigest;
use crate::keys::KeyId;

/// Everything that can go wrong with keys, signatures, the trust store and staging.
///
/// Each tamper case has its own variant so callers (and tests) can tell them apart; the message
/// names the file, key or package involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// A file system operation failed.
    #[error("Cannot {action} `{}`: {source}", path.display())]
    Io {
        /// What was being done, e.g. `read`.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// `keygen` would overwrite an existing key file.
    #[error(
        "Key file `{}` already exists; hint: pass `--force` to replace it, or choose another path",
        path.display()
    )]
    KeyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A key file does not have the expected format.
    #[error("File `{}` is not a plugd {expected}: {reason}", path.display())]
    KeyFormat {
        /// The key file.
        path: PathBuf,
        /// `secret key` or `public key`.
        expected: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A public key was given where a secret key is needed, or the other way round.
    #[error(
        "File `{}` is a plugd {found}, but a {expected} is needed; hint: {}",
        path.display(),
        if *expected == "secret key" {
            "pass the secret key file (the one without `.pub`)"
        } else {
            "pass the public key file (`KEY.pub`)"
        }
    )]
    WrongKeyKind {
        /// The key file.
        path: PathBuf,
        /// What was needed.
        expected: &'static str,
        /// What the file is.
        found: &'static str,
    },
    /// A secret key file can be read or written by other users.
    #[error(
        "Secret key `{}` is accessible by other users (mode {mode:04o}); hint: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A string is not a key id.
    #[error(
        "Invalid key id `{text}`; hint: a key id is 16 lower-case hex digits, as shown by `plugd trust list`"
    )]
    InvalidKeyId {
        /// The offending text.
        text: String,
    },
    /// A key id is not in the trust store.
    #[error(
        "Key `{key_id}` is not in the trust store `{}`; hint: `plugd trust list` shows the trusted keys",
        store.display()
    )]
    KeyNotInStore {
        /// The key id asked for.
        key_id: KeyId,
        /// The trust store directory.
        store: PathBuf,
    },
    /// The trust store or staging directory could be changed by someone else.
    #[error(
        "{what} `{}` is not private: {reason}; hint: use a directory owned by the user running plugd and not writable by others",
        path.display()
    )]
    InsecureDirectory {
        /// `Trust store` or `Staging directory`.
        what: &'static str,
        /// The directory.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },

    /// The package path is not a directory.
    #[error("Package path `{}` is not a directory", path.display())]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// The package has no manifest at its root.
    #[error(
        "Package `{}` has no `plugin.toml` or `plugin.json`; hint: the manifest must be at the top of the package directory",
        dir.display()
    )]
    MissingManifest {
        /// The package directory.
        dir: PathBuf,
    },
    /// The manifest's name or version cannot be read.
    #[error("Cannot read the plugin name and version from `{}`: {reason}", path.display())]
    ManifestInvalid {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The package contains a symlink.
    #[error(
        "File `{path}` in package `{}` is a symlink; hint: a package may contain only regular files and directories, replace the link with a copy of its target",
        dir.display()
    )]
    Symlink {
        /// The package directory.
        dir: PathBuf,
        /// The package-relative path.
        path: String,
    },
    /// The package contains a device file, fifo or socket.
    #[error(
        "File `{path}` in package `{}` is a {kind}; hint: a package may contain only regular files and directories",
        dir.display()
    )]
    SpecialFile {
        /// The package directory.
        dir: PathBuf,
        /// The package-relative path.
        path: String,
        /// What it is.
        kind: SpecialKind,
    },
    /// A file name cannot be represented in the canonical listing.
    #[error("File `{path}` in package `{}` has a name that {reason}; hint: rename it", dir.display())]
    BadFileName {
        /// The package directory.
        dir: PathBuf,
        /// The package-relative path (lossily decoded, control characters escaped).
        path: String,
        /// Why the name is refused.
        reason: &'static str,
    },

    /// `plugin.sig` cannot be parsed or is inconsistent.
    #[error(
        "Signature file `{}` is malformed: {reason}; hint: sign the package again with `plugd sign DIR --key KEY`",
        path.display()
    )]
    MalformedSignature {
        /// The signature file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The package is signed by a key that is not in the trust store.
    #[error(
        "Package `{package}` is signed by key `{key_id}`, which is not in the trust store `{}`; hint: if you trust that key, add its public key with `plugd trust add KEY.pub` using the same `--state-dir` as `plugd serve`",
        store.display()
    )]
    UnknownKey {
        /// `name version` from the signature.
        package: String,
        /// The signing key.
        key_id: KeyId,
        /// The trust store directory that was searched.
        store: PathBuf,
    },
    /// The package is signed by another key than the one given explicitly.
    #[error(
        "Package `{package}` is signed by key `{key_id}`, not by the given key `{given}`; hint: pass the public key of `{key_id}`"
    )]
    WrongKey {
        /// `name version` from the signature.
        package: String,
        /// The signing key.
        key_id: KeyId,
        /// The key that was given.
        given: KeyId,
    },
    /// The signature bytes do not verify.
    #[error(
        "Signature of package `{package}` does not verify with key `{key_id}`; hint: the signature file was altered or made with another key, sign the package again with `plugd sign DIR --key KEY`"
    )]
    BadSignature {
        /// `name version` from the signature.
        package: String,
        /// The key it claims.
        key_id: KeyId,
    },
    /// A valid signature for another plugin or version (replay or downgrade).
    #[error(
        "Signature was made for `{signed}` but the package is `{package}`; hint: sign this version with `plugd sign DIR --key KEY`"
    )]
    SignedForOtherPackage {
        /// `name version` the signature is for.
        signed: String,
        /// `name version` from the manifest.
        package: String,
    },
    /// A signed file's content changed.
    #[error(
        "Package `{package}` does not match its signature: `{path}` was changed after signing; hint: restore the signed file, or sign the package again if the change is intended"
    )]
    FileChanged {
        /// `name version`.
        package: String,
        /// The package-relative path.
        path: String,
    },
    /// A file not covered by the signature was added.
    #[error(
        "Package `{package}` does not match its signature: `{path}` was added after signing; hint: remove it, or sign the package again if the change is intended"
    )]
    FileAdded {
        /// `name version`.
        package: String,
        /// The package-relative path.
        path: String,
    },
    /// A signed file is missing.
    #[error(
        "Package `{package}` does not match its signature: `{path}` was removed after signing; hint: restore it, or sign the package again if the change is intended"
    )]
    FileRemoved {
        /// `name version`.
        package: String,
        /// The package-relative path.
        path: String,
    },
    /// The digest differs although no single file difference was found (defensive).
    #[error(
        "Package `{package}` does not match its signature: its digest is `{actual}`, the signed digest is `{expected}`; hint: sign the package again with `plugd sign DIR --key KEY`"
    )]
    DigestMismatch {
        /// `name version`.
        package: String,
        /// The signed digest.
        expected: PackageDigest,
        /// The digest of the files found.
        actual: PackageDigest,
    },
    /// Strict mode refuses an unsigned package.
    #[error(
        "Package `{package}` is not signed and strict mode is on; hint: sign it with `plugd sign DIR --key KEY` and add the key with `plugd trust add`"
    )]
    Unsigned {
        /// `name version`.
        package: String,
    },
}

impl TrustError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        TrustError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// A kind of file a package may not contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpecialKind {
    /// A named pipe.
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// A block device.
    BlockDevice,
    /// A character device.
    CharDevice,
    /// Anything else that is not a regular file, directory or symlink.
    Other,
}

impl fmt::Display for SpecialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpecialKind::Fifo => "named pipe (fifo)",
            SpecialKind::Socket => "socket",
            SpecialKind::BlockDevice => "block device",
            SpecialKind::CharDevice => "character device",
            SpecialKind::Other => "special file",
        })
    }
}
