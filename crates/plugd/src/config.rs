//! `plugd.toml`, the host's own configuration file (`plugd serve --config FILE`): today the
//! ceilings per trust level; later issues add app services, undo depth and queue bounds.
//!
//! ```toml
//! [ceilings.untrusted]
//! memory = "512MiB"       # sizes as in plugin.toml
//! cpu = "60s"             # CPU time per call
//! call_timeout = "5m"
//! concurrency = 256
//! disk = "1GiB"
//! storage = "256MiB"     # kv bytes
//!
//! [ceilings.trusted]
//! memory = "8GiB"
//! call_timeout = "none"   # "none" removes the ceiling
//! ```
//!
//! Unknown keys are errors, as in manifests. A limit left out keeps its default ceiling.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use plugd_host::{Ceiling, Ceilings};
use plugd_manifest::{parse_duration, parse_size};
use toml::Value;

/// The parsed file.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct HostFile {
    pub ceilings: Ceilings,
}

const TOP_KEYS: &[&str] = &["ceilings"];
const LEVELS: &[&str] = &["untrusted", "trusted"];
const LIMITS: &[&str] = &[
    "memory",
    "cpu",
    "call_timeout",
    "concurrency",
    "disk",
    "storage",
];

/// Reads `plugd.toml`.
pub(crate) fn load(path: &Path) -> anyhow::Result<HostFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Cannot read the config file `{}`", path.display()))?;
    parse(&text).with_context(|| format!("Invalid config file `{}`", path.display()))
}

pub(crate) fn parse(text: &str) -> anyhow::Result<HostFile> {
    let root: toml::Table = toml::from_str(text)?;
    let mut file = HostFile::default();
    for (key, value) in &root {
        if !TOP_KEYS.contains(&key.as_str()) {
            bail!(
                "Unknown key `{key}`; hint: `plugd.toml` knows {}",
                list(TOP_KEYS)
            );
        }
        let Value::Table(levels) = value else {
            bail!("`{key}` must be a table");
        };
        for (level, limits) in levels {
            let ceiling = match level.as_str() {
                "untrusted" => &mut file.ceilings.untrusted,
                "trusted" => &mut file.ceilings.trusted,
                other => bail!(
                    "Unknown trust level `[ceilings.{other}]`; hint: use {}",
                    list(LEVELS)
                ),
            };
            let Value::Table(limits) = limits else {
                bail!("`[ceilings.{level}]` must be a table");
            };
            for (name, value) in limits {
                set(ceiling, name, value)
                    .with_context(|| format!("In `[ceilings.{level}]`, key `{name}`"))?;
            }
        }
    }
    Ok(file)
}

fn set(ceiling: &mut Ceiling, name: &str, value: &Value) -> anyhow::Result<()> {
    let none = value.as_str() == Some("none");
    let text = || -> anyhow::Result<&str> {
        value
            .as_str()
            .context("expected a string like `\"512MiB\"`, `\"60s\"` or `\"none\"`")
    };
    let size = || -> anyhow::Result<Option<u64>> {
        if none {
            return Ok(None);
        }
        match value {
            Value::Integer(n) if *n > 0 => Ok(Some(*n as u64)),
            _ => Ok(Some(parse_size(text()?).map_err(anyhow::Error::msg)?)),
        }
    };
    let duration = || -> anyhow::Result<Option<Duration>> {
        if none {
            return Ok(None);
        }
        Ok(Some(parse_duration(text()?).map_err(anyhow::Error::msg)?))
    };
    match name {
        "memory" => ceiling.memory = size()?,
        "disk" => ceiling.disk = size()?,
        "storage" => ceiling.storage = size()?,
        "cpu" => ceiling.cpu = duration()?,
        "call_timeout" => ceiling.call_timeout = duration()?,
        "concurrency" => {
            ceiling.concurrency = match value {
                _ if none => None,
                Value::Integer(n) if (1..=i64::from(u32::MAX)).contains(n) => Some(*n as u32),
                _ => bail!("expected a whole number of at least 1, or `\"none\"`"),
            }
        }
        other => bail!(
            "unknown limit `{other}`; hint: ceilings exist for {}",
            list(LIMITS)
        ),
    }
    Ok(())
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn ceilings_override_the_defaults_per_level() {
        let file = parse(
            "[ceilings.untrusted]\nmemory = \"64MiB\"\nconcurrency = 8\ncall_timeout = \"none\"\n[ceilings.trusted]\ndisk = \"2GiB\"\n",
        )
        .unwrap();
        let defaults = Ceilings::default();
        assert_eq!(file.ceilings.untrusted.memory, Some(64 << 20));
        assert_eq!(file.ceilings.untrusted.concurrency, Some(8));
        assert_eq!(file.ceilings.untrusted.call_timeout, None);
        assert_eq!(file.ceilings.untrusted.disk, defaults.untrusted.disk);
        assert_eq!(file.ceilings.trusted.disk, Some(2 << 30));
        assert_eq!(parse("").unwrap(), HostFile::default());
    }

    #[test]
    fn mistakes_name_the_key_and_the_fix() {
        assert_eq!(
            err("[ceiling.untrusted]\n"),
            "Unknown key `ceiling`; hint: `plugd.toml` knows `ceilings`"
        );
        assert_eq!(
            err("[ceilings.signed]\n"),
            "Unknown trust level `[ceilings.signed]`; hint: use `untrusted`, `trusted`"
        );
        assert_eq!(
            err("[ceilings.untrusted]\nram = \"1GiB\"\n"),
            "In `[ceilings.untrusted]`, key `ram`: unknown limit `ram`; hint: ceilings exist for `memory`, `cpu`, `call_timeout`, `concurrency`, `disk`, `storage`"
        );
        assert!(
            err("[ceilings.untrusted]\nmemory = \"12XB\"\n")
                .starts_with("In `[ceilings.untrusted]`, key `memory`: Invalid size `12XB`"),
        );
        assert_eq!(
            err("[ceilings.untrusted]\nconcurrency = 0\n"),
            "In `[ceilings.untrusted]`, key `concurrency`: expected a whole number of at least 1, or `\"none\"`"
        );
    }
}
