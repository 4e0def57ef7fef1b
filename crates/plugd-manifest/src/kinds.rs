//! String forms of the manifest's small enums: [`PluginKind`], [`RuntimeKind`], [`Service`] and
//! [`ManifestFormat`].

use std::fmt;
use std::str::FromStr;

use crate::{ManifestFormat, PluginKind, RuntimeKind, Service};

/// A string that names none of an enum's values, e.g. an unknown runtime.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Unknown {what} `{value}`; hint: use one of {}", list(allowed))]
pub struct UnknownValueError {
    what: &'static str,
    value: String,
    allowed: &'static [&'static str],
}

impl UnknownValueError {
    /// The rejected string.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The accepted strings.
    pub fn allowed(&self) -> &'static [&'static str] {
        self.allowed
    }
}

fn list(allowed: &[&str]) -> String {
    allowed
        .iter()
        .map(|a| format!("`{a}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

macro_rules! string_enum {
    ($ty:ident, $what:literal, [$($variant:ident => $s:literal),+ $(,)?]) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The manifest spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $s),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownValueError;

            fn from_str(s: &str) -> Result<Self, UnknownValueError> {
                match s {
                    $($s => Ok($ty::$variant),)+
                    _ => Err(UnknownValueError {
                        what: $what,
                        value: s.to_owned(),
                        allowed: &[$($s),+],
                    }),
                }
            }
        }
    };
}

string_enum!(PluginKind, "plugin kind", [
    Provider => "provider",
    Processor => "processor",
    Storage => "storage",
    Monitor => "monitor",
    Other => "other",
]);

string_enum!(RuntimeKind, "runtime", [
    Process => "process",
    Wasm => "wasm",
]);

string_enum!(Service, "service", [
    Kv => "kv",
    Events => "events",
    Tasks => "tasks",
    Http => "http",
    Plugins => "plugins",
]);

string_enum!(ManifestFormat, "manifest format", [
    Toml => "toml",
    Json => "json",
    Yaml => "yaml",
    Python => "python",
]);

impl ManifestFormat {
    /// The file this format is read from: `plugin.toml`, `plugin.json`, `plugin.yaml`, or an
    /// image-tool package's `__init__.py`.
    pub fn file_name(self) -> &'static str {
        match self {
            ManifestFormat::Toml => crate::TOML_MANIFEST,
            ManifestFormat::Json => crate::JSON_MANIFEST,
            ManifestFormat::Yaml => crate::foreign::YAML_MANIFEST,
            ManifestFormat::Python => crate::foreign::INIT_MODULE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for kind in PluginKind::ALL {
            assert_eq!(kind.as_str().parse::<PluginKind>(), Ok(*kind));
        }
        for runtime in RuntimeKind::ALL {
            assert_eq!(runtime.to_string().parse::<RuntimeKind>(), Ok(*runtime));
        }
        for service in Service::ALL {
            assert_eq!(service.as_str().parse::<Service>(), Ok(*service));
        }
    }

    #[test]
    fn unknown() {
        let err = "docker".parse::<RuntimeKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "Unknown runtime `docker`; hint: use one of `process`, `wasm`"
        );
        let err = "KV".parse::<Service>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "Unknown service `KV`; hint: use one of `kv`, `events`, `tasks`, `http`, `plugins`"
        );
    }
}
