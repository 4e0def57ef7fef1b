//! What a script says about itself: its PEP 723 inline metadata block (`# /// script` ...
//! `# ///`), with `dependencies` and a `[tool.plugd]` table, then the overrides of CLI flags and
//! API fields. The result, [`Meta`], is what a version stores and what a run enforces.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Default memory of a run.
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// Default CPU time of a run.
pub const DEFAULT_CPU: Duration = Duration::from_secs(60);
/// Default wall-clock time of a run.
pub const DEFAULT_WALL: Duration = Duration::from_secs(300);
/// Default output a run may write (stdout and stderr together).
pub const DEFAULT_OUTPUT: u64 = 16 << 20;
/// Default number of processes and threads of a run.
pub const DEFAULT_PROCESSES: u64 = 32;

/// A script's metadata, permissions and limits, as stored with each version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// A human name (defaults to the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// A category for listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Tags for listings.
    #[serde(default)]
    pub tags: Vec<String>,
    /// PEP 508 requirements, locked per version with uv.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// What it may do.
    #[serde(default)]
    pub permissions: Permissions,
    /// What it may use.
    #[serde(default)]
    pub limits: Limits,
    /// The CLI flags and API fields that changed what the script itself says: they stay with the
    /// script, applied again to each new version's own metadata, until changed again.
    #[serde(default, skip_serializing_if = "Overrides::is_empty")]
    pub overrides: Overrides,
}

/// What a run may do: enforced by the kernel sandbox, checked statically before it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Top-level modules it may import (`None`: any). Checked statically; see
    /// `ARCHITECTURE.md` for what the kernel layer does about dynamic imports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_imports: Option<Vec<String>>,
    /// Absolute paths it may read (besides the interpreter and its environment).
    #[serde(default)]
    pub read: Vec<PathBuf>,
    /// Absolute paths it may write.
    #[serde(default)]
    pub write: Vec<PathBuf>,
    /// TCP `host:port` it may connect to; empty: no network at all. The kernel enforces the
    /// port only.
    #[serde(default)]
    pub network: Vec<String>,
    /// Whether it may write files at all (its work dir, `/tmp`, `write` paths).
    #[serde(default = "yes")]
    pub filesystem: bool,
}

impl Default for Permissions {
    fn default() -> Self {
        Permissions {
            allowed_imports: None,
            read: Vec::new(),
            write: Vec::new(),
            network: Vec::new(),
            filesystem: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// What a run may use; each past its limit is stopped with the reason recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory, in bytes (cgroup, with `RLIMIT_DATA`).
    pub memory: u64,
    /// CPU time of all its processes, in milliseconds.
    pub cpu_ms: u64,
    /// Wall-clock time, in milliseconds.
    pub wall_ms: u64,
    /// Bytes of output (stdout and stderr together).
    pub output: u64,
    /// Processes and threads (the pids cgroup).
    pub processes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: DEFAULT_MEMORY,
            cpu_ms: DEFAULT_CPU.as_millis() as u64,
            wall_ms: DEFAULT_WALL.as_millis() as u64,
            output: DEFAULT_OUTPUT,
            processes: DEFAULT_PROCESSES,
        }
    }
}

/// Changes to a script's metadata from CLI flags or API fields; `None` keeps what the script
/// says. Limits are written as in the script (`"256MiB"`, `"30s"`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// See [`Meta::name`].
    #[serde(default)]
    pub name: Option<String>,
    /// See [`Meta::description`].
    #[serde(default)]
    pub description: Option<String>,
    /// See [`Meta::author`].
    #[serde(default)]
    pub author: Option<String>,
    /// See [`Meta::category`].
    #[serde(default)]
    pub category: Option<String>,
    /// See [`Meta::tags`].
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// See [`Permissions::allowed_imports`].
    #[serde(default)]
    pub allowed_imports: Option<Vec<String>>,
    /// See [`Permissions::read`].
    #[serde(default)]
    pub read: Option<Vec<PathBuf>>,
    /// See [`Permissions::write`].
    #[serde(default)]
    pub write: Option<Vec<PathBuf>>,
    /// See [`Permissions::network`]: `false`, or a list of `host:port`.
    #[serde(default)]
    pub network: Option<NetworkSpec>,
    /// See [`Permissions::filesystem`].
    #[serde(default)]
    pub filesystem: Option<bool>,
    /// See [`Limits`].
    #[serde(default)]
    pub limits: LimitsSpec,
}

impl Overrides {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }

    /// These overrides with `newer` on top: each field `newer` sets wins.
    pub fn merged(&self, newer: &Overrides) -> Overrides {
        fn pick<T: Clone>(old: &Option<T>, new: &Option<T>) -> Option<T> {
            new.clone().or_else(|| old.clone())
        }
        Overrides {
            name: pick(&self.name, &newer.name),
            description: pick(&self.description, &newer.description),
            author: pick(&self.author, &newer.author),
            category: pick(&self.category, &newer.category),
            tags: pick(&self.tags, &newer.tags),
            allowed_imports: pick(&self.allowed_imports, &newer.allowed_imports),
            read: pick(&self.read, &newer.read),
            write: pick(&self.write, &newer.write),
            network: pick(&self.network, &newer.network),
            filesystem: pick(&self.filesystem, &newer.filesystem),
            limits: LimitsSpec {
                memory: pick(&self.limits.memory, &newer.limits.memory),
                cpu: pick(&self.limits.cpu, &newer.limits.cpu),
                wall: pick(&self.limits.wall, &newer.limits.wall),
                output: pick(&self.limits.output, &newer.limits.output),
                processes: pick(&self.limits.processes, &newer.limits.processes),
            },
        }
    }
}

/// `network` as written: `false` or a list of `host:port`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NetworkSpec {
    /// `false` (no network); `true` is refused as too broad.
    Flag(bool),
    /// `["api.example.org:443"]`.
    List(Vec<String>),
}

/// Limits as written (`memory = "256MiB"`, `cpu = "10s"`, `processes = 8`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// A size.
    #[serde(default)]
    pub memory: Option<String>,
    /// A duration.
    #[serde(default)]
    pub cpu: Option<String>,
    /// A duration.
    #[serde(default)]
    pub wall: Option<String>,
    /// A size.
    #[serde(default)]
    pub output: Option<String>,
    /// A count.
    #[serde(default)]
    pub processes: Option<u64>,
}

/// The `[tool.plugd]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolPlugd {
    id: Option<String>,
    name: Option<String>,
    description: Option<String>,
    author: Option<String>,
    category: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    allowed_imports: Option<Vec<String>>,
    allowed_paths: Option<PathsSpec>,
    network: Option<NetworkSpec>,
    filesystem: Option<bool>,
    #[serde(default)]
    limits: LimitsSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathsSpec {
    #[serde(default)]
    read: Vec<PathBuf>,
    #[serde(default)]
    write: Vec<PathBuf>,
}

/// The whole PEP 723 block.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Block {
    #[serde(default)]
    dependencies: Vec<String>,
    #[allow(dead_code)]
    requires_python: Option<String>,
    #[serde(default)]
    tool: Tool,
}

#[derive(Debug, Default, Deserialize)]
struct Tool {
    #[serde(default)]
    plugd: Option<ToolPlugd>,
}

/// A script's self-description: the id it asks for and its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Described {
    /// `[tool.plugd] id`, when given.
    pub id: Option<String>,
    /// Metadata with the script's own values (defaults elsewhere).
    pub meta: Meta,
}

/// Reads the PEP 723 `script` block of `source` (none: default metadata). Errors name the line.
pub fn describe(source: &str) -> Result<Described, String> {
    let Some(toml_text) = block(source)? else {
        return Ok(Described {
            id: None,
            meta: Meta::from_parts(ToolPlugd::default(), Vec::new())?,
        });
    };
    let block: Block = toml::from_str(&toml_text).map_err(|e| {
        format!(
            "Its `# /// script` metadata block is not valid: {}",
            e.message()
        )
    })?;
    let tool = block.tool.plugd.unwrap_or_default();
    let id = tool.id.clone();
    Ok(Described {
        id,
        meta: Meta::from_parts(tool, block.dependencies)?,
    })
}

/// The TOML inside the `# /// script` block, per PEP 723: every line between `# /// script` and
/// `# ///` starts with `#` (and one space, which is removed).
fn block(source: &str) -> Result<Option<String>, String> {
    let mut found: Option<(usize, String)> = None;
    let mut lines = source.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim_end() != "# /// script" {
            continue;
        }
        if found.is_some() {
            return Err(format!(
                "Line {}: a second `# /// script` block; hint: keep one metadata block",
                n + 1
            ));
        }
        let mut text = String::new();
        let mut closed = false;
        for (_, line) in lines.by_ref() {
            if line.trim_end() == "# ///" {
                closed = true;
                break;
            }
            let Some(rest) = line.strip_prefix('#') else {
                break;
            };
            text.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            text.push('\n');
        }
        if !closed {
            return Err(format!(
                "Line {}: the `# /// script` block is never closed; hint: end it with a line `# ///`, every line in between starting with `#`",
                n + 1
            ));
        }
        found = Some((n, text));
    }
    Ok(found.map(|(_, text)| text))
}

impl Meta {
    fn from_parts(tool: ToolPlugd, dependencies: Vec<String>) -> Result<Meta, String> {
        let paths = tool.allowed_paths.unwrap_or_default();
        let mut meta = Meta {
            name: tool.name,
            description: tool.description,
            author: tool.author,
            category: tool.category,
            tags: tool.tags,
            dependencies,
            permissions: Permissions {
                allowed_imports: tool.allowed_imports,
                read: paths.read,
                write: paths.write,
                network: Vec::new(),
                filesystem: tool.filesystem.unwrap_or(true),
            },
            limits: Limits::default(),
            overrides: Overrides::default(),
        };
        if let Some(network) = tool.network {
            meta.permissions.network = network_list(network)?;
        }
        meta.limits = limits(meta.limits, &tool.limits)?;
        meta.validate()?;
        Ok(meta)
    }

    /// Applies CLI or API overrides, then validates the result.
    pub fn apply(mut self, o: &Overrides) -> Result<Meta, String> {
        let set = |field: &mut Option<String>, value: &Option<String>| {
            if let Some(v) = value {
                *field = (!v.is_empty()).then(|| v.clone());
            }
        };
        set(&mut self.name, &o.name);
        set(&mut self.description, &o.description);
        set(&mut self.author, &o.author);
        set(&mut self.category, &o.category);
        if let Some(tags) = &o.tags {
            self.tags = tags.clone();
        }
        if let Some(imports) = &o.allowed_imports {
            self.permissions.allowed_imports = Some(imports.clone());
        }
        if let Some(read) = &o.read {
            self.permissions.read = read.clone();
        }
        if let Some(write) = &o.write {
            self.permissions.write = write.clone();
        }
        if let Some(network) = &o.network {
            self.permissions.network = network_list(network.clone())?;
        }
        if let Some(fs) = o.filesystem {
            self.permissions.filesystem = fs;
        }
        self.limits = limits(self.limits, &o.limits)?;
        self.overrides = self.overrides.merged(o);
        self.validate()?;
        Ok(self)
    }

    fn validate(&mut self) -> Result<(), String> {
        self.tags.sort();
        self.tags.dedup();
        for tag in &self.tags {
            if tag.is_empty() || tag.len() > 64 || tag.chars().any(char::is_whitespace) {
                return Err(format!(
                    "Tag `{tag}` is not valid; hint: tags are 1 to 64 characters without spaces"
                ));
            }
        }
        for (what, paths) in [
            ("allowed_paths.read", &mut self.permissions.read),
            ("allowed_paths.write", &mut self.permissions.write),
        ] {
            for path in paths.iter() {
                if !path.is_absolute()
                    || path
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(format!(
                        "`{what}` has `{}`; hint: write absolute paths without `..`",
                        path.display()
                    ));
                }
                if path == std::path::Path::new("/") {
                    return Err(format!(
                        "`{what}` has `/`, the whole file system; hint: name the directories the script needs"
                    ));
                }
            }
            paths.sort();
            paths.dedup();
        }
        if !self.permissions.filesystem && !self.permissions.write.is_empty() {
            return Err(
                "`filesystem = false` forbids writing files, but `allowed_paths.write` lists paths; hint: drop one of them"
                    .into(),
            );
        }
        if let Some(imports) = &mut self.permissions.allowed_imports {
            for module in imports.iter() {
                if module.is_empty()
                    || !module.split('.').all(|p| {
                        !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_')
                    })
                {
                    return Err(format!(
                        "`allowed_imports` has `{module}`, which is not a module name; hint: write names like `json` or `os.path`"
                    ));
                }
            }
            imports.sort();
            imports.dedup();
        }
        for dependency in &self.dependencies {
            // A requirement by name and version only: no options (`-e`, `-r`, `--index-url`:
            // uv runs as the host), no line breaks that would smuggle one in, no direct
            // references (`name @ file:///dir` would be built from source).
            let d = dependency.trim();
            let ok = !d.is_empty()
                && d.len() <= 200
                && !d.starts_with('-')
                && !d.contains('@')
                && !d.chars().any(char::is_control)
                && d.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
            if !ok {
                return Err(format!(
                    "Dependency `{}` is not a requirement; hint: write a package name with a version range, like `requests>=2,<3` (the operator chooses the index; options and direct references are refused)",
                    dependency.escape_debug()
                ));
            }
        }
        let l = &self.limits;
        for (what, value) in [
            ("memory", l.memory),
            ("cpu", l.cpu_ms),
            ("wall", l.wall_ms),
            ("output", l.output),
            ("processes", l.processes),
        ] {
            if value == 0 {
                return Err(format!("`limits.{what}` is 0; hint: give a positive limit"));
            }
        }
        if l.memory < 16 << 20 {
            return Err(format!(
                "`limits.memory` is {} bytes, too little to start Python; hint: give at least `16MiB`",
                l.memory
            ));
        }
        if l.processes < 2 {
            return Err("`limits.processes` is 1, too few for the run's init and the interpreter; hint: give at least 2".into());
        }
        Ok(())
    }

    /// `sha256:<hex>` of the source and this metadata: a version's identity.
    pub fn digest(&self, source: &str) -> String {
        let mut hash = Sha256::new();
        hash.update(b"plugd-script-v1\0");
        hash.update(source.as_bytes());
        hash.update(b"\0");
        hash.update(serde_json::to_vec(self).unwrap_or_default());
        let bytes = hash.finalize();
        let mut hex = String::with_capacity(71);
        hex.push_str("sha256:");
        for b in bytes {
            hex.push_str(&format!("{b:02x}"));
        }
        hex
    }

    /// The metadata as stored JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Reads stored JSON back.
    pub fn from_json(value: &serde_json::Value) -> Result<Meta, String> {
        serde_json::from_value(value.clone())
            .map_err(|e| format!("Stored script metadata is not readable: {e}"))
    }
}

fn network_list(spec: NetworkSpec) -> Result<Vec<String>, String> {
    let list = match spec {
        NetworkSpec::Flag(false) => return Ok(Vec::new()),
        NetworkSpec::Flag(true) => {
            return Err(
                "`network = true` would open every host and port; hint: list what it needs, like `network = [\"api.example.org:443\"]`"
                    .into(),
            );
        }
        NetworkSpec::List(list) => list,
    };
    let mut out = Vec::new();
    for target in list {
        let ok = target.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(format!(
                "`network` has `{target}`; hint: write `host:port`, like `api.example.org:443`"
            ));
        }
        out.push(target);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn limits(mut l: Limits, spec: &LimitsSpec) -> Result<Limits, String> {
    let size = |s: &str, what: &str| {
        plugd_manifest::parse_size(s).map_err(|e| format!("`limits.{what}`: {e}"))
    };
    let duration = |s: &str, what: &str| {
        plugd_manifest::parse_duration(s)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| format!("`limits.{what}`: {e}"))
    };
    if let Some(s) = &spec.memory {
        l.memory = size(s, "memory")?;
    }
    if let Some(s) = &spec.output {
        l.output = size(s, "output")?;
    }
    if let Some(s) = &spec.cpu {
        l.cpu_ms = duration(s, "cpu")?;
    }
    if let Some(s) = &spec.wall {
        l.wall_ms = duration(s, "wall")?;
    }
    if let Some(n) = spec.processes {
        l.processes = n;
    }
    Ok(l)
}

/// Whether `id` is a valid script id: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or
/// digit.
pub fn valid_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "Script id `{id}` is not valid; hint: use 1 to 64 lowercase letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = r#"#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = ["requests<3"]
# [tool.plugd]
# id = "fetch"
# name = "Fetch"
# tags = ["net", "demo", "net"]
# allowed_imports = ["requests", "json"]
# allowed_paths = { read = ["/srv/in"], write = ["/srv/out"] }
# network = ["example.org:443"]
# limits = { memory = "128MiB", wall = "30s", processes = 4 }
# ///
import json
"#;

    #[test]
    fn the_block_gives_id_metadata_permissions_and_limits() {
        let d = describe(SCRIPT).unwrap();
        assert_eq!(d.id.as_deref(), Some("fetch"));
        let m = d.meta;
        assert_eq!(m.name.as_deref(), Some("Fetch"));
        assert_eq!(m.tags, ["demo", "net"]);
        assert_eq!(m.dependencies, ["requests<3"]);
        assert_eq!(
            m.permissions.allowed_imports,
            Some(vec!["json".to_owned(), "requests".to_owned()])
        );
        assert_eq!(m.permissions.read, [PathBuf::from("/srv/in")]);
        assert_eq!(m.permissions.network, ["example.org:443"]);
        assert_eq!(m.limits.memory, 128 << 20);
        assert_eq!(m.limits.wall_ms, 30_000);
        assert_eq!(m.limits.cpu_ms, DEFAULT_CPU.as_millis() as u64);
        assert_eq!(m.limits.processes, 4);
    }

    #[test]
    fn no_block_is_default_metadata() {
        let d = describe("print('hi')\n").unwrap();
        assert_eq!(d.id, None);
        assert_eq!(d.meta.limits, Limits::default());
        assert!(d.meta.permissions.network.is_empty());
        assert!(d.meta.permissions.filesystem);
    }

    #[test]
    fn bad_blocks_are_refused_with_the_reason() {
        let unclosed = describe("# /// script\n# dependencies = []\nimport os\n").unwrap_err();
        assert!(
            unclosed.contains("Line 1") && unclosed.contains("never closed"),
            "{unclosed}"
        );
        let typo =
            describe("# /// script\n# [tool.plugd]\n# allowed_import = []\n# ///\n").unwrap_err();
        assert!(typo.contains("allowed_import"), "{typo}");
        let net = describe("# /// script\n# [tool.plugd]\n# network = true\n# ///\n").unwrap_err();
        assert!(net.contains("network = true"), "{net}");
        let port =
            describe("# /// script\n# [tool.plugd]\n# network = [\"x\"]\n# ///\n").unwrap_err();
        assert!(port.contains("host:port"), "{port}");
        let rel = describe(
            "# /// script\n# [tool.plugd]\n# allowed_paths = { read = [\"data\"] }\n# ///\n",
        )
        .unwrap_err();
        assert!(rel.contains("absolute"), "{rel}");
        let mem =
            describe("# /// script\n# [tool.plugd]\n# limits = { memory = \"lots\" }\n# ///\n")
                .unwrap_err();
        assert!(mem.contains("limits.memory"), "{mem}");
    }

    #[test]
    fn overrides_win_and_are_validated() {
        let m = describe(SCRIPT).unwrap().meta;
        let o = Overrides {
            tags: Some(vec!["x".into()]),
            network: Some(NetworkSpec::Flag(false)),
            limits: LimitsSpec {
                cpu: Some("2s".into()),
                ..LimitsSpec::default()
            },
            ..Overrides::default()
        };
        let m2 = m.clone().apply(&o).unwrap();
        assert_eq!(m2.tags, ["x"]);
        // Recorded, and merged with later ones (the later field wins).
        assert_eq!(m2.overrides.tags, Some(vec!["x".to_owned()]));
        let later = Overrides {
            tags: Some(vec!["y".into()]),
            ..Overrides::default()
        };
        let merged = m2.overrides.merged(&later);
        assert_eq!(merged.tags, Some(vec!["y".to_owned()]));
        assert_eq!(merged.limits.cpu.as_deref(), Some("2s"));
        assert!(m2.permissions.network.is_empty());
        assert_eq!(m2.limits.cpu_ms, 2000);
        assert_ne!(m.digest("s"), m2.digest("s"));
        assert_eq!(m.digest("s"), m.clone().digest("s"));
        assert_ne!(m.digest("s"), m.digest("t"));
        let bad = Overrides {
            filesystem: Some(false),
            ..Overrides::default()
        };
        assert!(m.apply(&bad).unwrap_err().contains("filesystem = false"));
    }

    #[test]
    fn ids() {
        assert!(valid_id("csv-report.v2").is_ok());
        for bad in ["", "-x", "Has", "a b", &"x".repeat(65)] {
            assert!(valid_id(bad).is_err(), "{bad}");
        }
    }
}
