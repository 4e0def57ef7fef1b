//! Package trust for plugd: Ed25519 keys, the canonical package digest, `plugin.sig`, the trust
//! store, and verified staging of a package into a private read-only copy.
//!
//! The pieces fit together like this:
//!
//! - [`SecretKey::generate`] / [`SecretKey::write`] make a key pair (`plugd keygen`).
//! - [`package_digest`] walks a package and hashes every regular file into one canonical digest;
//!   symlinks, special files and odd file names are refused; Python byte-code caches
//!   (`__pycache__`, `*.pyc`, `*.pyo`) are skipped everywhere, so they are never signed, verified,
//!   copied or run.
//! - [`sign_package`] writes `plugin.sig` beside the manifest (`plugd sign`).
//! - [`TrustStore`] is a directory of trusted public keys (`plugd trust add|list|remove`).
//! - [`verify_package`] checks a package in place (`plugd verify`), and
//!   [`TrustPolicy::check`] decides whether an unsigned package may load.
//! - [`stage_package`] is what the host uses on every load: it copies the package into a private
//!   directory while hashing the very bytes it copies, verifies the signature against that
//!   digest, and makes the copy read-only. The plugin then runs from [`StagedPackage::dir`], so a
//!   file changed in the source directory after (or during) the check cannot change what runs.
//!
//! A package that has a `plugin.sig` is always fully verified, whatever the policy: any failure
//! refuses it, it is never treated as merely unsigned.
#![warn(missing_docs)]

mod digest;
mod error;
mod hex;
mod keys;
mod manifest;
mod signature;
mod stage;
mod store;

pub use digest::{PackageDigest, package_digest};
pub use error::{SpecialKind, TrustError};
pub use keys::{KeyId, Overwrite, PublicKey, SecretKey, public_key_path};
pub use signature::{
    KeySource, SignatureInfo, Trust, TrustPolicy, Verification, sign_detached, sign_package,
    verify_detached, verify_package,
};
pub use stage::{Collected, StagedPackage, collect_staged, stage_package};
pub use store::TrustStore;

/// File name of the signature, beside the manifest at the package root.
pub const SIGNATURE_FILE: &str = "plugin.sig";
/// File name of the native manifest.
pub const TOML_MANIFEST: &str = "plugin.toml";
/// File name of the seed-compatible manifest.
pub const JSON_MANIFEST: &str = "plugin.json";
