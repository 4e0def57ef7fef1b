//! `plugd.toml`, the host's own configuration file (`plugd serve --config FILE`): the ceilings
//! per trust level and the application services offered to plugins.
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
//!
//! [services.db]           # `app:db` in a trusted plugin's `permissions.services`
//! url = "http://127.0.0.1:9000/plugd"   # each call is POSTed here (plain HTTP)
//! timeout = "5s"          # the default
//!
//! [durable]               # events and tasks (the `serve` flags of the same names win)
//! retention = "7d"        # finished tasks, delivered events, dead letters; "0" keeps forever
//! event_backlog = 10000   # events a subscriber may have waiting (then 429)
//! task_queue = 10000      # queued tasks per plugin (then 429)
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
    /// `[services.NAME]`, sorted by name.
    pub services: Vec<ServiceConfig>,
    /// `[durable]`.
    pub durable: Durable,
}

/// `[durable]`: the bounds and retention of events and tasks (unset: the flag or the default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Durable {
    pub retention: Option<Duration>,
    pub event_backlog: Option<u64>,
    pub task_queue: Option<u64>,
}

/// An application service that forwards each call to an HTTP endpoint of the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceConfig {
    /// The name plugins use (`app:NAME` in `permissions.services`).
    pub name: String,
    /// Where each call is POSTed.
    pub url: String,
    /// How long one call may take, connecting included.
    pub timeout: Duration,
}

/// How long a service call may take when `timeout` is not given.
pub(crate) const SERVICE_TIMEOUT: Duration = Duration::from_secs(5);

const TOP_KEYS: &[&str] = &["ceilings", "services", "durable"];
const DURABLE_KEYS: &[&str] = &["retention", "event_backlog", "task_queue"];
const SERVICE_KEYS: &[&str] = &["url", "timeout"];
const LEVELS: &[&str] = &["untrusted", "trusted"];
const LIMITS: &[&str] = &[
    "memory",
    "cpu",
    "call_timeout",
    "concurrency",
    "disk",
    "storage",
    "tasks",
    "task_timeout",
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
        if key == "durable" {
            file.durable = durable(levels).context("In `[durable]`")?;
            continue;
        }
        if key == "services" {
            for (name, table) in levels {
                let service =
                    service(name, table).with_context(|| format!("In `[services.{name}]`"))?;
                file.services.push(service);
            }
            continue;
        }
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

fn durable(table: &toml::Table) -> anyhow::Result<Durable> {
    let mut durable = Durable::default();
    for (key, value) in table {
        let count = || -> anyhow::Result<u64> {
            match value {
                Value::Integer(n) if *n >= 1 => Ok(*n as u64),
                _ => bail!("`{key}` must be a whole number of at least 1"),
            }
        };
        match key.as_str() {
            "retention" => {
                let text = value
                    .as_str()
                    .context("`retention` must be a string like `\"7d\"` or `\"0\"`")?;
                durable.retention = Some(parse_retention(text).map_err(anyhow::Error::msg)?);
            }
            "event_backlog" => durable.event_backlog = Some(count()?),
            "task_queue" => durable.task_queue = Some(count()?),
            other => bail!(
                "unknown key `{other}`; hint: `[durable]` has {}",
                list(DURABLE_KEYS)
            ),
        }
    }
    Ok(durable)
}

/// A retention period: `0` (keep forever), whole days or weeks (`7d`, `2w`), or a duration as
/// in manifests (`12h`, `30m`, `90s`).
pub(crate) fn parse_retention(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    for (unit, secs) in [("d", 86_400u64), ("w", 7 * 86_400)] {
        if let Some(n) = t.strip_suffix(unit)
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
        {
            return n
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(secs))
                .map(Duration::from_secs)
                .ok_or_else(|| format!("Invalid retention `{text}`: it is too large"));
        }
    }
    parse_duration(t).map_err(|_| {
        format!(
            "Invalid retention `{text}`; hint: write `7d`, `2w`, `12h`, `30m`, or `0` to keep everything forever"
        )
    })
}

fn service(name: &str, table: &Value) -> anyhow::Result<ServiceConfig> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        bail!("the service name must be lower-case letters, digits, `-` and `_`");
    }
    let Value::Table(table) = table else {
        bail!("expected a table with `url` (and optionally `timeout`)");
    };
    for key in table.keys() {
        if !SERVICE_KEYS.contains(&key.as_str()) {
            bail!(
                "unknown key `{key}`; hint: a service has {}",
                list(SERVICE_KEYS)
            );
        }
    }
    let url = match table.get("url") {
        Some(Value::String(url)) => url.clone(),
        Some(_) => bail!("`url` must be a string"),
        None => bail!("`url` is missing; hint: e.g. `url = \"http://127.0.0.1:9000/plugd\"`"),
    };
    if !url.starts_with("http://") {
        bail!(
            "`url` `{url}` must start with `http://` (this build has no TLS); hint: keep the application's endpoint on this host"
        );
    }
    let timeout = match table.get("timeout") {
        None => SERVICE_TIMEOUT,
        Some(Value::String(text)) => parse_duration(text).map_err(anyhow::Error::msg)?,
        Some(_) => bail!("`timeout` must be a string like `\"5s\"`"),
    };
    Ok(ServiceConfig {
        name: name.to_owned(),
        url,
        timeout,
    })
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
        "task_timeout" => ceiling.task_timeout = duration()?,
        "concurrency" | "tasks" => {
            let count = match value {
                _ if none => None,
                Value::Integer(n) if (1..=i64::from(u32::MAX)).contains(n) => Some(*n as u32),
                _ => bail!("expected a whole number of at least 1, or `\"none\"`"),
            };
            if name == "tasks" {
                ceiling.tasks = count;
            } else {
                ceiling.concurrency = count;
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
        assert_eq!(
            file.ceilings.untrusted.tasks,
            Some(16),
            "the built-in default stays"
        );
        assert_eq!(file.ceilings.untrusted.call_timeout, None);
        assert_eq!(file.ceilings.untrusted.disk, defaults.untrusted.disk);
        assert_eq!(file.ceilings.trusted.disk, Some(2 << 30));
        assert_eq!(parse("").unwrap(), HostFile::default());
    }

    #[test]
    fn services_forward_to_a_url_with_a_timeout() {
        let file = parse(
            "[services.db]\nurl = \"http://127.0.0.1:9000/plugd\"\n[services.clock]\nurl = \"http://h/c\"\ntimeout = \"250ms\"\n",
        )
        .unwrap();
        assert_eq!(
            file.services,
            [
                ServiceConfig {
                    name: "clock".into(),
                    url: "http://h/c".into(),
                    timeout: Duration::from_millis(250),
                },
                ServiceConfig {
                    name: "db".into(),
                    url: "http://127.0.0.1:9000/plugd".into(),
                    timeout: SERVICE_TIMEOUT,
                },
            ]
        );
        assert_eq!(
            err("[services.db]\nurl = \"https://h\"\n"),
            "In `[services.db]`: `url` `https://h` must start with `http://` (this build has no TLS); hint: keep the application's endpoint on this host"
        );
        assert_eq!(
            err("[services.db]\ntimeout = \"1s\"\n"),
            "In `[services.db]`: `url` is missing; hint: e.g. `url = \"http://127.0.0.1:9000/plugd\"`"
        );
        assert_eq!(
            err("[services.db]\nurl = \"http://h\"\nretries = 3\n"),
            "In `[services.db]`: unknown key `retries`; hint: a service has `url`, `timeout`"
        );
        assert_eq!(
            err("[services.\"app:db\"]\nurl = \"http://h\"\n"),
            "In `[services.app:db]`: the service name must be lower-case letters, digits, `-` and `_`"
        );
    }

    #[test]
    fn durable_sets_retention_and_bounds() {
        let file =
            parse("[durable]\nretention = \"2d\"\nevent_backlog = 50\ntask_queue = 7\n").unwrap();
        assert_eq!(
            file.durable,
            Durable {
                retention: Some(Duration::from_secs(2 * 86_400)),
                event_backlog: Some(50),
                task_queue: Some(7),
            }
        );
        assert_eq!(
            parse("[durable]\nretention = \"0\"\n")
                .unwrap()
                .durable
                .retention,
            Some(Duration::ZERO)
        );
        assert_eq!(
            err("[durable]\nbacklog = 5\n"),
            "In `[durable]`: unknown key `backlog`; hint: `[durable]` has `retention`, `event_backlog`, `task_queue`"
        );
        assert_eq!(
            err("[durable]\ntask_queue = 0\n"),
            "In `[durable]`: `task_queue` must be a whole number of at least 1"
        );
        assert_eq!(
            err("[durable]\nretention = \"7 days\"\n"),
            "In `[durable]`: Invalid retention `7 days`; hint: write `7d`, `2w`, `12h`, `30m`, or `0` to keep everything forever"
        );
    }

    #[test]
    fn retention_is_days_weeks_a_duration_or_zero() {
        assert_eq!(parse_retention("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_retention("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_retention("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_retention("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_retention("0"), Ok(Duration::ZERO));
        for bad in ["", "d", "7", "-1d", "1.5d", "7x", "99999999999999999999d"] {
            assert!(parse_retention(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mistakes_name_the_key_and_the_fix() {
        assert_eq!(
            err("[ceiling.untrusted]\n"),
            "Unknown key `ceiling`; hint: `plugd.toml` knows `ceilings`, `services`, `durable`"
        );
        assert_eq!(
            err("[ceilings.signed]\n"),
            "Unknown trust level `[ceilings.signed]`; hint: use `untrusted`, `trusted`"
        );
        assert_eq!(
            err("[ceilings.untrusted]\nram = \"1GiB\"\n"),
            "In `[ceilings.untrusted]`, key `ram`: unknown limit `ram`; hint: ceilings exist for `memory`, `cpu`, `call_timeout`, `concurrency`, `disk`, `storage`, `tasks`, `task_timeout`"
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
