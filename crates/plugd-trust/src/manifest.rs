//! Just enough manifest reading to know a package's name and version.
//!
//! This crate deliberately does not depend on `plugd-manifest`: signing and verification must not
//! change when the manifest's other fields evolve. The name rule is the same as
//! `plugd_manifest::PluginName` (`^[a-z][a-z0-9_-]{0,63}$`), which also keeps the name safe to
//! use in a signed message and in a staging directory name.

use std::path::Path;

use semver::Version;
use serde::Deserialize;

use crate::digest::INIT_MODULE;
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

/// Reads name and version from the bytes of the manifest `file_name`: `plugin.toml`,
/// `plugin.json`, or a foreign one (`plugin.yaml`, `plugin.yml`, `manifest.json`, an
/// image-tool `__init__.py`). A foreign name that is not a plugin name is mapped by the rule of
/// `plugd_manifest::map_name` (the same code, kept here so that this crate stays apart), a
/// short foreign version (`1.2`) is completed with zeros, and an image-tool plugin is named
/// after its directory, version `0.0.0`.
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
    let native = file_name == TOML_MANIFEST || file_name == JSON_MANIFEST;
    let raw = match file_name {
        TOML_MANIFEST => {
            #[derive(Deserialize)]
            struct TomlManifest {
                plugin: RawIdentity,
            }
            toml::from_str::<TomlManifest>(text)
                .map_err(|e| invalid(e.message().to_owned()))?
                .plugin
        }
        INIT_MODULE => {
            let dir = path
                .parent()
                .and_then(Path::file_name)
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            RawIdentity {
                name: dir.to_owned(),
                version: "0.0.0".to_owned(),
            }
        }
        "plugin.yaml" | "plugin.yml" => {
            serde_norway::from_str::<RawIdentity>(text).map_err(|e| invalid(e.to_string()))?
        }
        _ => serde_json::from_str::<RawIdentity>(text).map_err(|e| invalid(e.to_string()))?,
    };
    // A foreign `plugin.json` (one with `class_path`, `execution_mode` or `entry_point`) maps
    // its name like the other foreign manifests.
    let foreign = !native
        || (file_name == JSON_MANIFEST
            && serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| {
                ["class_path", "execution_mode", "entry_point"]
                    .iter()
                    .any(|k| v.get(k).is_some())
            }));
    let name = if foreign {
        map_name(&raw.name).ok_or_else(|| {
            invalid(format!(
                "`{}` has no letter or digit to make a plugin name from",
                raw.name
            ))
        })?
    } else {
        raw.name
    };
    if !is_valid_name(&name) {
        return Err(invalid(format!(
            "`{name}` is not a valid plugin name (lower-case letters, digits, `_` and `-`, starting with a letter, at most 64)"
        )));
    }
    let version_text = if foreign {
        complete_version(&raw.version)
    } else {
        raw.version.clone()
    };
    let version = Version::parse(&version_text)
        .map_err(|e| invalid(format!("`{}` is not a semver version: {e}", raw.version)))?;
    Ok(Identity { name, version })
}

/// `plugd_manifest::map_name`'s rule: lower-case ASCII letters; each run of other characters
/// outside `a-z0-9_-` becomes one `-`; leading and trailing `-`/`_` go; a leading digit gets
/// `p-`; at most 64 characters.
fn map_name(foreign: &str) -> Option<String> {
    let mut out = String::with_capacity(foreign.len());
    for c in foreign.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches(|c| c == '-' || c == '_');
    let mut name = if trimmed.starts_with(|c: char| c.is_ascii_digit()) {
        format!("p-{trimmed}")
    } else {
        trimmed.to_owned()
    };
    name.truncate(64);
    let name = name.trim_end_matches(['-', '_']).to_owned();
    is_valid_name(&name).then_some(name)
}

/// `1` → `1.0.0`, `1.2` → `1.2.0`; anything else unchanged.
fn complete_version(text: &str) -> String {
    let parts: Vec<&str> = text.split('.').collect();
    if (1..3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    {
        format!("{text}{}", ".0".repeat(3 - parts.len()))
    } else {
        text.to_owned()
    }
}

/// Whether module text assigns `plugin_class` at the top level (as `plugd-manifest` decides).
pub(crate) fn sets_plugin_class(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| {
        text.lines().any(|line| {
            line.strip_prefix("plugin_class")
                .is_some_and(|rest| rest.trim_start().starts_with('=') && !rest.contains("=="))
        })
    })
}

#[derive(Deserialize)]
struct RawIdentity {
    name: String,
    #[serde(deserialize_with = "version_text")]
    version: String,
}

/// A version as text; YAML and JSON may write `1.2` or `1` as a number.
fn version_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        N(serde_json::Number),
    }
    Ok(match Text::deserialize(d)? {
        Text::S(s) => s,
        Text::N(n) => n.to_string(),
    })
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
