//! `plugin.sig`: signing a package, and verifying one against a trust store or a given key.
//!
//! The signature file is TOML. It names the format, the key id, the plugin name and version, the
//! package digest, the Ed25519 signature (base64) over the domain-separated message
//! `plugd-signature-v1\n{name}\n{version}\n{digest}`, and the signed file list, so that a
//! mismatch can name the file that was changed, added or removed. The file list is checked to
//! render to the signed digest, so it is as authentic as the signature itself.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::SIGNATURE_FILE;
use crate::digest::{FileEntry, PackageDigest, Scan, digest_of, scan};
use crate::error::TrustError;
use crate::hex;
use crate::keys::{KeyId, PublicKey, SecretKey, write_replace};
use crate::manifest::is_valid_name;
use crate::store::TrustStore;

/// The only signature format this crate writes and reads.
const FORMAT: u32 = 1;
const MESSAGE_DOMAIN: &str = "plugd-signature-v1";
const FILE_COMMENT: &str = "# plugd package signature, written by `plugd sign`; do not edit\n";

/// What [`sign_package`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignatureInfo {
    /// The `plugin.sig` file.
    pub path: PathBuf,
    /// The signing key.
    pub key_id: KeyId,
    /// Plugin name from the manifest.
    pub plugin: String,
    /// Plugin version from the manifest.
    pub version: Version,
    /// The signed package digest.
    pub digest: PackageDigest,
    /// How many files the signature covers.
    pub files: usize,
}

/// Which keys a signature may be made with.
#[derive(Clone, Copy, Debug)]
pub enum KeySource<'a> {
    /// Any key in this trust store.
    Store(&'a TrustStore),
    /// Exactly this key (`plugd verify DIR --key KEY.pub`).
    Key(&'a PublicKey),
}

/// The outcome of a successful verification.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verification {
    /// Whether, and by whom, the package is signed.
    pub trust: Trust,
    /// The digest of the package as read.
    pub digest: PackageDigest,
    /// Plugin name from the manifest.
    pub plugin: String,
    /// Plugin version from the manifest.
    pub version: Version,
}

impl Verification {
    /// `name version`, the way messages show a package.
    pub fn package(&self) -> String {
        format!("{} {}", self.plugin, self.version)
    }
}

/// The trust level of a verified package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Signed by this key, which is in the trust store (or is the given key), and every file
    /// matches the signature.
    Trusted {
        /// The signing key.
        key_id: KeyId,
    },
    /// No `plugin.sig` at all. (A package with a signature file that fails verification is an
    /// error, never `Unsigned`.)
    Unsigned,
}

/// What the host accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Refuse unsigned packages.
    pub strict: bool,
}

impl TrustPolicy {
    /// Refuses an unsigned package in strict mode. Signed packages were already fully verified
    /// when the [`Verification`] was made.
    pub fn check(&self, verification: &Verification) -> Result<(), TrustError> {
        match verification.trust {
            Trust::Unsigned if self.strict => Err(TrustError::Unsigned {
                package: verification.package(),
            }),
            _ => Ok(()),
        }
    }
}

/// Signs the package in `dir` with `key`: reads name and version from its manifest, computes the
/// canonical digest and writes `plugin.sig` (atomically replacing an older one).
pub fn sign_package(dir: &Path, key: &SecretKey) -> Result<SignatureInfo, TrustError> {
    let scan = scan(dir, None)?;
    let identity = scan.identity()?;
    let digest = scan.digest();
    let version = identity.version.to_string();
    let signature = key.sign(&signed_message(&identity.name, &version, &digest));
    let key_id = key.key_id();
    let file = SignatureFile {
        format: FORMAT,
        key_id: key_id.to_string(),
        plugin: identity.name.clone(),
        version,
        digest: digest.to_hex(),
        signature: BASE64.encode(signature),
        files: scan
            .files
            .iter()
            .map(|f| SignedFile {
                path: f.path.clone(),
                size: f.size,
                sha256: hex::encode(&f.sha256),
            })
            .collect(),
    };
    let path = dir.join(SIGNATURE_FILE);
    let text = toml::to_string(&file).map_err(|e| TrustError::MalformedSignature {
        path: path.clone(),
        reason: format!("it cannot be written: {e}"),
    })?;
    write_replace(&path, format!("{FILE_COMMENT}{text}").as_bytes(), 0o644)?;
    Ok(SignatureInfo {
        path,
        key_id,
        plugin: identity.name,
        version: identity.version,
        digest,
        files: scan.files.len(),
    })
}

/// Verifies the package in `dir` in place. An unsigned package is `Ok` with [`Trust::Unsigned`]
/// (apply a [`TrustPolicy`] to refuse it); a package with a `plugin.sig` is refused on any
/// failure.
///
/// This checks the directory as it is now; to run a package, use
/// [`stage_package`](crate::stage_package), which verifies the bytes that will actually run.
pub fn verify_package(dir: &Path, keys: &KeySource<'_>) -> Result<Verification, TrustError> {
    evaluate(&scan(dir, None)?, keys)
}

/// Verifies what one pass over a package read, without touching the file system again except
/// for looking keys up.
pub(crate) fn evaluate(scan: &Scan, keys: &KeySource<'_>) -> Result<Verification, TrustError> {
    let identity = scan.identity()?;
    let digest = scan.digest();
    let package = identity.label();
    let Some(bytes) = &scan.signature else {
        return Ok(Verification {
            trust: Trust::Unsigned,
            digest,
            plugin: identity.name,
            version: identity.version,
        });
    };
    let signed = ParsedSignature::parse(bytes, &scan.dir.join(SIGNATURE_FILE))?;
    let signed_package = format!("{} {}", signed.plugin, signed.version);

    let key = match keys {
        KeySource::Store(store) => {
            store
                .get(&signed.key_id)?
                .ok_or_else(|| TrustError::UnknownKey {
                    package: signed_package.clone(),
                    key_id: signed.key_id.clone(),
                    store: store.dir().to_owned(),
                })?
        }
        KeySource::Key(key) if key.key_id() == signed.key_id => (*key).clone(),
        KeySource::Key(key) => {
            return Err(TrustError::WrongKey {
                package: signed_package,
                key_id: signed.key_id,
                given: key.key_id(),
            });
        }
    };
    let message = signed_message(&signed.plugin, &signed.version_text, &signed.digest);
    if !key.verifies(&message, &signed.signature) {
        return Err(TrustError::BadSignature {
            package: signed_package,
            key_id: signed.key_id,
        });
    }

    // From here on the signature file's content is authentic; what remains is whether it is
    // about this package, as it is now.
    if signed.plugin != identity.name || signed.version != identity.version {
        return Err(TrustError::SignedForOtherPackage {
            signed: signed_package,
            package,
        });
    }
    compare_files(&signed.files, &scan.files, &package)?;
    if digest != signed.digest {
        return Err(TrustError::DigestMismatch {
            package,
            expected: signed.digest,
            actual: digest,
        });
    }
    Ok(Verification {
        trust: Trust::Trusted {
            key_id: signed.key_id,
        },
        digest,
        plugin: identity.name,
        version: identity.version,
    })
}

/// The exact bytes the Ed25519 signature covers; the domain line keeps a plugd signature from
/// being valid for anything else signed with the same key.
fn signed_message(plugin: &str, version: &str, digest: &PackageDigest) -> Vec<u8> {
    format!("{MESSAGE_DOMAIN}\n{plugin}\n{version}\n{digest}").into_bytes()
}

/// Reports the first difference, in path order, between the signed and the found listing.
fn compare_files(
    signed: &[FileEntry],
    found: &[FileEntry],
    package: &str,
) -> Result<(), TrustError> {
    let (mut s, mut f) = (signed.iter().peekable(), found.iter().peekable());
    loop {
        match (s.peek(), f.peek()) {
            (None, None) => return Ok(()),
            (Some(a), Some(b)) if a.path == b.path => {
                if a != b {
                    return Err(TrustError::FileChanged {
                        package: package.to_owned(),
                        path: a.path.clone(),
                    });
                }
                s.next();
                f.next();
            }
            (Some(a), Some(b)) if a.path > b.path => {
                return Err(TrustError::FileAdded {
                    package: package.to_owned(),
                    path: b.path.clone(),
                });
            }
            (None, Some(b)) => {
                return Err(TrustError::FileAdded {
                    package: package.to_owned(),
                    path: b.path.clone(),
                });
            }
            (Some(a), _) => {
                return Err(TrustError::FileRemoved {
                    package: package.to_owned(),
                    path: a.path.clone(),
                });
            }
        }
    }
}

/// `plugin.sig` on disk.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    format: u32,
    key_id: String,
    plugin: String,
    version: String,
    digest: String,
    signature: String,
    #[serde(rename = "file", default)]
    files: Vec<SignedFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedFile {
    path: String,
    size: u64,
    sha256: String,
}

/// A `plugin.sig` whose fields all parsed and whose file list renders to its digest (the
/// signature itself is not checked yet).
struct ParsedSignature {
    key_id: KeyId,
    plugin: String,
    version: Version,
    version_text: String,
    digest: PackageDigest,
    signature: [u8; 64],
    files: Vec<FileEntry>,
}

impl ParsedSignature {
    fn parse(bytes: &[u8], path: &Path) -> Result<ParsedSignature, TrustError> {
        let malformed = |reason: String| TrustError::MalformedSignature {
            path: path.to_owned(),
            reason,
        };
        let text =
            std::str::from_utf8(bytes).map_err(|_| malformed("it is not UTF-8 text".into()))?;
        let trimmed = text.trim();
        if !trimmed.is_empty()
            && trimmed
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_'))
        {
            return Err(malformed(
                "it is not a plugd signature but a single token, like the shared-key HMAC digest xcore writes; plugd verifies Ed25519 signatures only".into(),
            ));
        }
        let file: SignatureFile =
            toml::from_str(text).map_err(|e| malformed(e.message().trim_end().to_owned()))?;
        if file.format != FORMAT {
            return Err(malformed(format!(
                "`format = {}` is not supported, this plugd reads format {FORMAT}",
                file.format
            )));
        }
        let key_id = KeyId::parse(&file.key_id)
            .map_err(|_| malformed(format!("`key_id` `{}` is not a key id", file.key_id)))?;
        if !is_valid_name(&file.plugin) {
            return Err(malformed(format!(
                "`plugin` `{}` is not a plugin name",
                file.plugin.escape_debug()
            )));
        }
        let version = Version::parse(&file.version).map_err(|_| {
            malformed(format!(
                "`version` `{}` is not a semver version",
                file.version.escape_debug()
            ))
        })?;
        let digest = PackageDigest::from_hex(&file.digest)
            .ok_or_else(|| malformed("`digest` is not 64 lower-case hex digits".into()))?;
        let signature = BASE64
            .decode(&file.signature)
            .ok()
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
            .ok_or_else(|| malformed("`signature` is not 64 bytes in base64".into()))?;
        let mut files = Vec::with_capacity(file.files.len());
        for f in file.files {
            let sha256 = hex::decode::<32>(&f.sha256).ok_or_else(|| {
                malformed(format!(
                    "the `sha256` of `{}` is not 64 lower-case hex digits",
                    f.path.escape_debug()
                ))
            })?;
            if f.path.is_empty() || f.path.chars().any(char::is_control) {
                return Err(malformed(format!(
                    "`{}` is not a valid file path",
                    f.path.escape_debug()
                )));
            }
            if files
                .last()
                .is_some_and(|prev: &FileEntry| prev.path >= f.path)
            {
                return Err(malformed("the file list is not sorted by path".into()));
            }
            files.push(FileEntry {
                path: f.path,
                size: f.size,
                sha256,
            });
        }
        if digest_of(&files) != digest {
            return Err(malformed("the file list does not match `digest`".into()));
        }
        Ok(ParsedSignature {
            key_id,
            plugin: file.plugin,
            version,
            version_text: file.version,
            digest,
            signature,
            files,
        })
    }
}

/// The domain line of a detached signature over other artifacts (script archives, ...): never
/// the same as a package signature's, so one cannot stand in for the other.
const DETACHED_DOMAIN: &str = "plugd-detached-v1";

fn detached_message(kind: &str, sha256: &[u8; 32]) -> Vec<u8> {
    format!("{DETACHED_DOMAIN}\n{kind}\n{}", hex::encode(sha256)).into_bytes()
}

/// Signs the sha256 of an artifact of `kind` (e.g. `script-archive`) with `key`; returns the
/// key id and the base64 signature, to be stored beside the artifact.
pub fn sign_detached(kind: &str, sha256: &[u8; 32], key: &SecretKey) -> (KeyId, String) {
    let signature = key.sign(&detached_message(kind, sha256));
    (key.key_id(), BASE64.encode(signature))
}

/// Verifies a signature made by [`sign_detached`]; `what` names the artifact in errors.
pub fn verify_detached(
    kind: &str,
    what: &str,
    sha256: &[u8; 32],
    key_id: &str,
    signature: &str,
    keys: &KeySource<'_>,
) -> Result<KeyId, TrustError> {
    let key_id = KeyId::parse(key_id)?;
    let key = match keys {
        KeySource::Store(store) => store.get(&key_id)?.ok_or_else(|| TrustError::UnknownKey {
            package: what.to_owned(),
            key_id: key_id.clone(),
            store: store.dir().to_owned(),
        })?,
        KeySource::Key(key) if key.key_id() == key_id => (*key).clone(),
        KeySource::Key(key) => {
            return Err(TrustError::WrongKey {
                package: what.to_owned(),
                key_id,
                given: key.key_id(),
            });
        }
    };
    let bad = || TrustError::BadSignature {
        package: what.to_owned(),
        key_id: key_id.clone(),
    };
    let bytes = BASE64.decode(signature.trim()).map_err(|_| bad())?;
    let signature: [u8; 64] = bytes.try_into().map_err(|_| bad())?;
    if key.verifies(&detached_message(kind, sha256), &signature) {
        Ok(key_id)
    } else {
        Err(bad())
    }
}
