//! Validated identifier newtypes: [`PluginName`] and [`ActionName`].

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ActionName, PluginName};

/// Longest allowed plugin or action name, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// A string that is not a valid [`PluginName`] or [`ActionName`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(*.kind, name))]
pub struct NameError {
    kind: NameKind,
    name: String,
}

impl NameError {
    /// The rejected string.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NameKind {
    Plugin,
    Action,
}

impl NameKind {
    fn noun(self) -> &'static str {
        match self {
            NameKind::Plugin => "plugin",
            NameKind::Action => "action",
        }
    }

    fn rule(self) -> &'static str {
        match self {
            NameKind::Plugin => {
                "use lower-case letters, digits, `-` and `_`, starting with a letter"
            }
            NameKind::Action => {
                "use lower-case letters, digits, `_`, `.` and `-`, starting with a letter or `_`"
            }
        }
    }

    fn is_valid(self, s: &str) -> bool {
        let mut chars = s.chars();
        let Some(first) = chars.next() else {
            return false;
        };
        let first_ok = match self {
            NameKind::Plugin => first.is_ascii_lowercase(),
            NameKind::Action => first.is_ascii_lowercase() || first == '_',
        };
        let rest_ok = |c: char| match self {
            NameKind::Plugin => {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
            }
            NameKind::Action => {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')
            }
        };
        first_ok && chars.all(rest_ok) && s.len() <= MAX_NAME_LEN
    }
}

fn render(kind: NameKind, name: &str) -> String {
    let noun = kind.noun();
    if name.is_empty() {
        format!("Empty {noun} name: {}", kind.rule())
    } else if name.chars().count() > MAX_NAME_LEN
        && kind.is_valid(&name.chars().take(MAX_NAME_LEN).collect::<String>())
    {
        format!(
            "Invalid {noun} name `{name}`: it has {} characters, at most {MAX_NAME_LEN} are allowed",
            name.chars().count()
        )
    } else {
        format!("Invalid {noun} name `{name}`: {}", kind.rule())
    }
}

macro_rules! name_type {
    ($ty:ident, $kind:expr) => {
        impl $ty {
            /// Validates `name` and wraps it.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                if $kind.is_valid(&name) {
                    Ok(Self(name))
                } else {
                    Err(NameError { kind: $kind, name })
                }
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The name as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl FromStr for $ty {
            type Err = NameError;

            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;

            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = NameError;

            fn try_from(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Sound because `Eq`, `Ord` and `Hash` are derived from the inner `String`, so they
        // agree with `str`'s.
        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(PluginName, NameKind::Plugin);
name_type!(ActionName, NameKind::Action);

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    fn check(input: &str, expect: Expect) {
        let plugin = match PluginName::new(input) {
            Ok(name) => format!("ok {name:?}"),
            Err(e) => e.to_string(),
        };
        let action = match ActionName::new(input) {
            Ok(name) => format!("ok {name:?}"),
            Err(e) => e.to_string(),
        };
        expect.assert_eq(&format!("plugin: {plugin}\naction: {action}"));
    }

    #[test]
    fn names() {
        check(
            "thumbs",
            expect![[r#"
                plugin: ok "thumbs"
                action: ok "thumbs""#]],
        );
        check(
            "a-b_c9",
            expect![[r#"
                plugin: ok "a-b_c9"
                action: ok "a-b_c9""#]],
        );
        check(
            "Foo",
            expect![[r#"
                plugin: Invalid plugin name `Foo`: use lower-case letters, digits, `-` and `_`, starting with a letter
                action: Invalid action name `Foo`: use lower-case letters, digits, `_`, `.` and `-`, starting with a letter or `_`"#]],
        );
        check(
            "_private",
            expect![[r#"
                plugin: Invalid plugin name `_private`: use lower-case letters, digits, `-` and `_`, starting with a letter
                action: ok "_private""#]],
        );
        check(
            "image.resize",
            expect![[r#"
                plugin: Invalid plugin name `image.resize`: use lower-case letters, digits, `-` and `_`, starting with a letter
                action: ok "image.resize""#]],
        );
        check(
            "9lives",
            expect![[r#"
                plugin: Invalid plugin name `9lives`: use lower-case letters, digits, `-` and `_`, starting with a letter
                action: Invalid action name `9lives`: use lower-case letters, digits, `_`, `.` and `-`, starting with a letter or `_`"#]],
        );
        check(
            "",
            expect![[r#"
                plugin: Empty plugin name: use lower-case letters, digits, `-` and `_`, starting with a letter
                action: Empty action name: use lower-case letters, digits, `_`, `.` and `-`, starting with a letter or `_`"#]],
        );
        check(
            "caf\u{e9}",
            expect![[r#"
                plugin: Invalid plugin name `café`: use lower-case letters, digits, `-` and `_`, starting with a letter
                action: Invalid action name `café`: use lower-case letters, digits, `_`, `.` and `-`, starting with a letter or `_`"#]],
        );
        check(
            &"a".repeat(64),
            expect![[r#"
                plugin: ok "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                action: ok "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa""#]],
        );
        check(
            &"a".repeat(65),
            expect![[r#"
                plugin: Invalid plugin name `aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa`: it has 65 characters, at most 64 are allowed
                action: Invalid action name `aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa`: it has 65 characters, at most 64 are allowed"#]],
        );
    }

    #[test]
    fn traits() {
        use std::collections::BTreeMap;

        let name: PluginName = "thumbs".parse().unwrap();
        assert_eq!(name.as_str(), "thumbs");
        assert_eq!(name.to_string(), "thumbs");
        assert_eq!(format!("{name:?}"), r#""thumbs""#);
        assert_eq!(AsRef::<str>::as_ref(&name), "thumbs");
        let map = BTreeMap::from([(name.clone(), 1)]);
        assert_eq!(map.get("thumbs"), Some(&1));

        assert_eq!(serde_json::to_string(&name).unwrap(), r#""thumbs""#);
        let back: PluginName = serde_json::from_str(r#""thumbs""#).unwrap();
        assert_eq!(back, name);
        let err = serde_json::from_str::<ActionName>(r#""Bad""#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid action name `Bad`: use lower-case letters, digits, `_`, `.` and `-`, starting with a letter or `_`"
        );
    }
}
