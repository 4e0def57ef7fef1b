//! Just enough manifest reading to know a package's name and version.
//!
//! This crate deliberately does not depend on `plugd-manifest`: signing and verification must not
//! change when the manifest's other fields evolve. The name rule is the same as
//! `plugd_manifest::PluginName` (`^[a-z][a-z0-9_-]{0,63}$`), which also keeps the name safe to
//! use in a signed message and in a staging directory name.

use std::path::Path;

use semver::Version;
use serde::Deserialize;

use crate::error::TrustError;
use crate::{JSON_MANIFEST, TOML_MANIFEST};

/// A plugin's name and version, as the manifest states them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) version: Version,
}

impl Identity {
    /// `name version`, the way messages show a package.
    pub(crate) fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

/// Whether `name` is a valid plugin name.
pub(crate) fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= 64
}

/// Reads name and version from the bytes of `plugin.toml` or `plugin.json` (`file_name`).
pub(crate) fn parse_identity(
    file_name: &str,
    bytes: &[u8],
    path: &Path,
) -> Result<Identity, TrustError> {
    let invalid = |reason: String| TrustError::ManifestInvalid {
        path: path.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("it is not UTF-8 text".into()))?;
    let raw = if file_name == TOML_MANIFEST {
        #[derive(Deserialize)]
        struct TomlManifest {
            plugin: RawIdentity,
        }
        toml::from_str::<TomlManifest>(text)
            .map_err(|e| invalid(e.message().to_owned()))?
            .plugin
    } else {
        debug_assert_eq!(file_name, JSON_MANIFEST);
        serde_json::from_str::<RawIdentity>(text).map_err(|e| invalid(e.to_string()))?
    };
    if !is_valid_name(&raw.name) {
        return Err(invalid(format!(
            "`{}` is not a valid plugin name (lower-case letters, digits, `_` and `-`, starting with a letter, at most 64)",
            raw.name
        )));
    }
    let version = Version::parse(&raw.version)
        .map_err(|e| invalid(format!("`{}` is not a semver version: {e}", raw.version)))?;
    Ok(Identity {
        name: raw.name,
        version,
    })
}

#[derive(Deserialize)]
struct RawIdentity {
    name: String,
    version: String,
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    fn check(file_name: &str, text: &str, expect: Expect) {
        let outcome = match parse_identity(file_name, text.as_bytes(), Path::new(file_name)) {
            Ok(id) => format!("ok {}", id.label()),
            Err(e) => e.to_string(),
        };
        expect.assert_eq(&outcome);
    }

    #[test]
    fn reads_name_and_version() {
        check(
            TOML_MANIFEST,
            "schema = 1\n[plugin]\nname = \"thumbs\"\nversion = \"1.2.0\"\nruntime = \"process\"\n[params]\nx = 1\n",
            expect!["ok thumbs 1.2.0"],
        );
        check(
            JSON_MANIFEST,
            r#"{"name": "seed_plugin", "version": "0.1.0-rc.1+b7", "description": "x"}"#,
            expect!["ok seed_plugin 0.1.0-rc.1+b7"],
        );
        check(
            TOML_MANIFEST,
            "[plugin]\nname = \"thumbs\"\n",
            expect![
                "Cannot read the plugin name and version from `plugin.toml`: missing field `version`"
            ],
        );
        check(
            TOML_MANIFEST,
            "[plugin]\nname = \"Thumbs\"\nversion = \"1.0.0\"\n",
            expect![
                "Cannot read the plugin name and version from `plugin.toml`: `Thumbs` is not a valid plugin name (lower-case letters, digits, `_` and `-`, starting with a letter, at most 64)"
            ],
        );
        check(
            TOML_MANIFEST,
            "[plugin]\nname = \"a\\nb\"\nversion = \"1.0.0\"\n",
            expect![[r#"
                Cannot read the plugin name and version from `plugin.toml`: `a
                b` is not a valid plugin name (lower-case letters, digits, `_` and `-`, starting with a letter, at most 64)"#]],
        );
        check(
            JSON_MANIFEST,
            r#"{"name": "x", "version": "1.0"}"#,
            expect![
                "Cannot read the plugin name and version from `plugin.json`: `1.0` is not a semver version: unexpected end of input while parsing minor version number"
            ],
        );
    }
}
