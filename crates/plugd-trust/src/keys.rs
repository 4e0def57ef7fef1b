//! Ed25519 key pairs, their text file formats, and short key ids.
//!
//! A secret key file is two lines: `plugd-ed25519-secret-key v1` and the base64 of the 32-byte
//! seed; it is created with mode 0600 and never silently overwritten. The public key lives
//! beside it at `PATH.pub` with the header `plugd-ed25519-public-key v1`. The header makes a
//! wrong file (or the wrong half of the pair) a clear error instead of a confusing one.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::TrustError;
use crate::hex;

const SECRET_HEADER: &str = "plugd-ed25519-secret-key v1";
const PUBLIC_HEADER: &str = "plugd-ed25519-public-key v1";
const SECRET: &str = "secret key";
const PUBLIC: &str = "public key";
/// Key files are tiny; anything larger is certainly the wrong file.
const MAX_KEY_FILE: u64 = 4096;

/// A short, stable identifier of a public key: the first 16 hex digits of the SHA-256 of its
/// 32 bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Parses a key id as printed by [`KeyId`]'s `Display` (16 lower-case hex digits).
    pub fn parse(text: &str) -> Result<KeyId, TrustError> {
        match hex::decode::<8>(text) {
            Some(_) => Ok(KeyId(text.to_owned())),
            None => Err(TrustError::InvalidKeyId {
                text: text.to_owned(),
            }),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn of(key: &VerifyingKey) -> KeyId {
        let hash = Sha256::digest(key.as_bytes());
        KeyId(hex::encode(&hash[..8]))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether writing a key may replace existing files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overwrite {
    /// Fail with [`TrustError::KeyExists`] if either file exists (the default).
    Refuse,
    /// Replace existing files atomically (`--force`).
    Replace,
}

/// An Ed25519 public key, used to verify signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
}

impl PublicKey {
    /// Loads a public key file (`plugd-ed25519-public-key v1`).
    pub fn load(path: &Path) -> Result<PublicKey, TrustError> {
        let text = read_key_file(path, PUBLIC)?;
        let bytes = parse_key_text(&text, path, PUBLIC)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| TrustError::KeyFormat {
            path: path.to_owned(),
            expected: PUBLIC,
            reason: "the key is not a valid Ed25519 public key".into(),
        })?;
        if key.is_weak() {
            return Err(TrustError::KeyFormat {
                path: path.to_owned(),
                expected: PUBLIC,
                reason: "the key is a weak Ed25519 key".into(),
            });
        }
        Ok(PublicKey { key })
    }

    /// The key's id.
    pub fn key_id(&self) -> KeyId {
        KeyId::of(&self.key)
    }

    /// The key in its file format, ending with a newline.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_HEADER}\n{}\n", BASE64.encode(self.key.as_bytes()))
    }

    /// Whether `signature` is a valid signature of `message` by this key. Uses strict
    /// verification, which refuses malleable signatures and small-order keys.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.key
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PublicKey").field(&self.key_id()).finish()
    }
}

/// An Ed25519 secret key, used to sign packages. Its bytes are zeroed when it is dropped, and
/// `Debug` shows only the key id.
pub struct SecretKey {
    key: SigningKey,
}

impl SecretKey {
    /// Generates a new key from the operating system's random source.
    pub fn generate() -> SecretKey {
        SecretKey {
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// Loads a secret key file, refusing one that other users can access.
    pub fn load(path: &Path) -> Result<SecretKey, TrustError> {
        let text = read_key_file(path, SECRET)?;
        let bytes = parse_key_text(&text, path, SECRET)?;
        let mode = fs::metadata(path)
            .map_err(|e| TrustError::io("read", path, e))?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TrustError::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        Ok(SecretKey {
            key: SigningKey::from_bytes(&bytes),
        })
    }

    /// Writes the secret key to `path` (mode 0600) and the public key to `PATH.pub`; returns the
    /// public key's path. With [`Overwrite::Refuse`] the files are created exclusively
    /// (`O_EXCL`), so an existing key is never clobbered, not even by a concurrent `keygen`.
    pub fn write(&self, path: &Path, overwrite: Overwrite) -> Result<PathBuf, TrustError> {
        let public_path = public_key_path(path);
        let secret_text = format!("{SECRET_HEADER}\n{}\n", BASE64.encode(self.key.as_bytes()));
        let public_text = self.public_key().to_text();
        match overwrite {
            Overwrite::Refuse => {
                if fs::symlink_metadata(&public_path).is_ok() {
                    return Err(TrustError::KeyExists { path: public_path });
                }
                write_new(path, secret_text.as_bytes(), 0o600)?;
                if let Err(e) = write_new(&public_path, public_text.as_bytes(), 0o644) {
                    // Leave nothing half-made behind: a secret key without its public half.
                    let _ = fs::remove_file(path);
                    return Err(e);
                }
            }
            Overwrite::Replace => {
                write_replace(path, secret_text.as_bytes(), 0o600)?;
                write_replace(&public_path, public_text.as_bytes(), 0o644)?;
            }
        }
        Ok(public_path)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// The id of the matching public key.
    pub fn key_id(&self) -> KeyId {
        self.public_key().key_id()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretKey").field(&self.key_id()).finish()
    }
}

/// Where the public half of the secret key at `secret` is written: `SECRET.pub`.
pub fn public_key_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn read_key_file(path: &Path, expected: &'static str) -> Result<String, TrustError> {
    let file = File::open(path).map_err(|e| TrustError::io("read", path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TrustError::io("read", path, e))?;
    let format_error = |reason: &str| TrustError::KeyFormat {
        path: path.to_owned(),
        expected,
        reason: reason.into(),
    };
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(format_error("it is far larger than a key file"));
    }
    String::from_utf8(bytes).map_err(|_| format_error("it is not a text file"))
}

/// Parses the two-line key format; `expected` is [`SECRET`] or [`PUBLIC`].
fn parse_key_text(text: &str, path: &Path, expected: &'static str) -> Result<[u8; 32], TrustError> {
    let (header, other_header, other) = if expected == SECRET {
        (SECRET_HEADER, PUBLIC_HEADER, PUBLIC)
    } else {
        (PUBLIC_HEADER, SECRET_HEADER, SECRET)
    };
    let format_error = |reason: String| TrustError::KeyFormat {
        path: path.to_owned(),
        expected,
        reason,
    };
    let mut lines = text.lines().map(str::trim_end);
    match lines.next() {
        Some(first) if first == header => {}
        Some(first) if first == other_header => {
            return Err(TrustError::WrongKeyKind {
                path: path.to_owned(),
                expected,
                found: other,
            });
        }
        _ => return Err(format_error(format!("the first line must be `{header}`"))),
    }
    let encoded = lines
        .next()
        .ok_or_else(|| format_error("the key line after the header is missing".into()))?;
    let bytes = BASE64
        .decode(encoded)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| format_error("the second line is not 32 bytes in base64".into()))?;
    if lines.any(|line| !line.is_empty()) {
        return Err(format_error(
            "there is unexpected text after the key".into(),
        ));
    }
    Ok(bytes)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TrustError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => TrustError::KeyExists {
                path: path.to_owned(),
            },
            _ => TrustError::io("create", path, e),
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| TrustError::io("write", path, e))
}

/// Replaces `path` atomically: a private temporary file in the same directory, renamed over it.
pub(crate) fn write_replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TrustError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut temp = tempfile::NamedTempFile::new_in(parent)
        .map_err(|e| TrustError::io("create a file in", parent, e))?;
    temp.write_all(bytes)
        .and_then(|()| {
            temp.as_file()
                .set_permissions(fs::Permissions::from_mode(mode))
        })
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| TrustError::io("write", temp.path(), e))?;
    temp.persist(path)
        .map_err(|e| TrustError::io("replace", path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    /// Parses `text` as the given kind of key file and renders the outcome.
    fn check(text: &str, expected: &'static str, expect: Expect) {
        let outcome = match parse_key_text(text, Path::new("k"), expected) {
            Ok(bytes) => format!("ok {}", hex::encode(&bytes[..4])),
            Err(e) => e.to_string(),
        };
        expect.assert_eq(&outcome);
    }

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn key_text_formats() {
        check(
            &format!("{PUBLIC_HEADER}\n{KEY}\n"),
            PUBLIC,
            expect!["ok 00010203"],
        );
        check(
            &format!("{SECRET_HEADER}\r\n{KEY}\r\n\n"),
            SECRET,
            expect!["ok 00010203"],
        );
        check(
            &format!("{SECRET_HEADER}\n{KEY}\n"),
            PUBLIC,
            expect![
                "File `k` is a plugd secret key, but a public key is needed; hint: pass the public key file (`KEY.pub`)"
            ],
        );
        check(
            &format!("{PUBLIC_HEADER}\n{KEY}\n"),
            SECRET,
            expect![
                "File `k` is a plugd public key, but a secret key is needed; hint: pass the secret key file (the one without `.pub`)"
            ],
        );
        check(
            "ssh-ed25519 AAAA user@host\n",
            PUBLIC,
            expect![
                "File `k` is not a plugd public key: the first line must be `plugd-ed25519-public-key v1`"
            ],
        );
        check(
            PUBLIC_HEADER,
            PUBLIC,
            expect!["File `k` is not a plugd public key: the key line after the header is missing"],
        );
        check(
            &format!("{PUBLIC_HEADER}\nAAEC\n"),
            PUBLIC,
            expect![
                "File `k` is not a plugd public key: the second line is not 32 bytes in base64"
            ],
        );
        check(
            &format!("{PUBLIC_HEADER}\n{KEY}\nmore\n"),
            PUBLIC,
            expect!["File `k` is not a plugd public key: there is unexpected text after the key"],
        );
    }

    #[test]
    fn key_id_is_sixteen_hex_digits_of_the_public_key_hash() {
        let key = SecretKey {
            key: SigningKey::from_bytes(&[7; 32]),
        };
        let id = key.key_id();
        assert_eq!(id.as_str().len(), 16);
        assert_eq!(KeyId::parse(id.as_str()).unwrap(), id);
        let hash = Sha256::digest(key.public_key().key.as_bytes());
        assert_eq!(id.as_str(), hex::encode(&hash[..8]));
        for bad in [
            "",
            "0123",
            "0123456789ABCDEF",
            "0123456789abcdef0",
            "g123456789abcdef",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn debug_never_shows_secret_bytes() {
        let key = SecretKey {
            key: SigningKey::from_bytes(&[7; 32]),
        };
        let debug = format!("{key:?}");
        assert_eq!(
            debug,
            format!("SecretKey(KeyId({:?}))", key.key_id().as_str())
        );
    }
}
