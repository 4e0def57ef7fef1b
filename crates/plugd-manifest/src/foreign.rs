//! Foreign plugin formats: the manifests of the systems plugd replaces, read as they are and
//! translated into a native manifest.
//!
//! Three dialects are recognised ([`Dialect`]); which one a package is written in is decided by
//! its files alone (see [`detect`]):
//! - **xcore**: `plugin.yaml` (or `plugin.yml`), or a `plugin.json` with `execution_mode` or
//!   `entry_point`. The code is a `class Plugin` with `async handle(action, payload)`.
//! - **class-based**: a `plugin.json` or `manifest.json` with `class_path`. The code is a class
//!   subclassing `core.base_plugin.BasePlugin`, built as `cls(runtime)`.
//! - **image tool** (Panoptic-style): no manifest; an `__init__.py` that sets `plugin_class`.
//!
//! Translation builds the native manifest tree (the keys of `plugin.toml`) and hands it to the
//! ordinary reader, so a foreign package obeys exactly the rules of a native one. Its process
//! entry is `python3 -m plugd.compat '<JSON>'`: the SDK's compatibility runner, told the dialect
//! and what the foreign manifest said that the runner needs (the xcore `env`, the class to load).
//! Every field that is dropped or changed on the way is a [`Change`]; `plugd migrate` prints them
//! and writes the tree as `plugin.toml`.
//!
//! A foreign name that is not a plugd name is mapped by [`map_name`]; both are kept.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::parse::Invalid;
use crate::{ManifestError, PluginName, Version, VersionReq};

/// `plugin.yaml`: xcore's manifest.
pub const YAML_MANIFEST: &str = "plugin.yaml";
/// `plugin.yml`: the same, by its other common name.
pub const YML_MANIFEST: &str = "plugin.yml";
/// `manifest.json`: a class-based plugin's manifest.
pub const CLASS_MANIFEST: &str = "manifest.json";
/// `__init__.py` exporting `plugin_class`: an image-tool plugin.
pub const INIT_MODULE: &str = "__init__.py";

/// The largest foreign manifest read (1 MiB, as `plugd-trust` keeps in memory).
const MAX_MANIFEST: u64 = 1 << 20;

/// Which foreign system a package was written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// xcore: `class Plugin` with `handle(action, payload)`.
    Xcore,
    /// Class-based with lifecycle hooks (`class_path`, `BasePlugin`).
    ClassBased,
    /// Image tool: `plugin_class`, `APlugin`, `add_action_easy`.
    ImageTool,
}

impl Dialect {
    /// The name the compatibility runner and the docs use: `xcore`, `classic`, `panoptic`.
    pub fn runner(self) -> &'static str {
        match self {
            Dialect::Xcore => "xcore",
            Dialect::ClassBased => "classic",
            Dialect::ImageTool => "panoptic",
        }
    }

    /// A human label: `xcore`, `class-based`, `image-tool`.
    pub fn label(self) -> &'static str {
        match self {
            Dialect::Xcore => "xcore",
            Dialect::ClassBased => "class-based",
            Dialect::ImageTool => "image-tool",
        }
    }
}

/// What a foreign manifest said, and how it was translated.
#[derive(Clone, Debug, PartialEq)]
pub struct Foreign {
    /// The dialect.
    pub dialect: Dialect,
    /// The file it was read from (`plugin.yaml`, `plugin.json`, `manifest.json`, `__init__.py`).
    pub file: &'static str,
    /// The plugin's own name, as written (may differ from the plugd name, see [`map_name`]).
    pub original_name: String,
    /// xcore's `execution_mode` (`trusted`, `sandboxed`, `legacy`), informational only.
    pub execution_mode: Option<String>,
    /// Every field dropped or changed by the translation, in manifest order.
    pub changes: Vec<Change>,
    /// The native manifest tree (`plugin.toml`'s keys) the package was translated into.
    pub native: Map<String, Value>,
}

/// One field a translation dropped or changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The foreign field, as a dotted path (`resources.rate_limit`).
    pub field: String,
    /// What happened to it, one sentence.
    pub note: String,
}

/// Maps a foreign plugin name onto a plugd name: ASCII letters are lower-cased; every run of
/// other characters outside `a-z`, `0-9`, `_`, `-` becomes one `-`; leading and trailing `-`
/// and `_` go; a name starting with a digit gets `p-` in front; the result is cut to 64
/// characters. `"notes manager"` → `notes-manager`, `"Client_Manager"` → `client_manager`.
/// `None` when nothing is left (a name of only punctuation).
pub fn map_name(foreign: &str) -> Option<PluginName> {
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
    name.truncate(crate::MAX_NAME_LEN);
    let name = name.trim_end_matches(['-', '_']);
    PluginName::new(name).ok()
}

/// Refuses text with control characters (a newline, an escape sequence): a name is shown in
/// terminals, logs and the `plugin.toml` that `plugd migrate` writes.
fn check_printable(text: &str, what: &str, file: &str) -> Result<(), Invalid> {
    if text.chars().any(char::is_control) {
        return Err(Invalid::new(format!(
            "{what} `{}` in `{file}` contains a control character",
            text.escape_debug()
        ))
        .hint("use a name of printable characters"));
    }
    Ok(())
}

/// Reads a foreign version: semver, or a short `1` / `1.2` completed with zeros (a change).
fn version(text: &str, changes: &mut Vec<Change>) -> Result<Version, Invalid> {
    if let Ok(v) = Version::parse(text) {
        return Ok(v);
    }
    let parts: Vec<&str> = text.split('.').collect();
    if (1..3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    {
        let padded = format!("{text}{}", ".0".repeat(3 - parts.len()));
        if let Ok(v) = Version::parse(&padded) {
            changes.push(Change {
                field: "version".into(),
                note: format!("`{text}` is read as the semantic version `{v}`"),
            });
            return Ok(v);
        }
    }
    Err(Invalid::new(format!(
        "Invalid version `{text}`: it is not a semantic version"
    ))
    .hint("use a version like `1.2.0`"))
}

/// Which dialect the package in `dir` is written in, and the file that says so; `None` for a
/// native package (`plugin.toml`, or a `plugin.json` of plugd's own form) or no package at all.
/// `plugin.json` is told apart by its keys: `class_path` → class-based; `execution_mode` or
/// `entry_point` → xcore.
pub fn detect(dir: &Path) -> Option<(Dialect, &'static str)> {
    if dir.join(crate::TOML_MANIFEST).is_file() {
        return None;
    }
    if let Some(text) = read_small(&dir.join(crate::JSON_MANIFEST)) {
        return json_dialect(&text).map(|d| (d, crate::JSON_MANIFEST));
    }
    for file in [YAML_MANIFEST, YML_MANIFEST] {
        if dir.join(file).is_file() {
            return Some((Dialect::Xcore, file));
        }
    }
    if dir.join(CLASS_MANIFEST).is_file() {
        return Some((Dialect::ClassBased, CLASS_MANIFEST));
    }
    match read_small(&dir.join(INIT_MODULE)) {
        Some(text) if sets_plugin_class(&text) => Some((Dialect::ImageTool, INIT_MODULE)),
        _ => None,
    }
}

/// A file's text, when it is a regular file of at most [`MAX_MANIFEST`] bytes (detection never
/// reads more; an oversized manifest is refused with its size by [`read`]).
fn read_small(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_MANIFEST {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// Whether the directory holds something plugd reads as a plugin package, native or foreign.
pub fn is_package(dir: &Path) -> bool {
    dir.join(crate::TOML_MANIFEST).is_file()
        || dir.join(crate::JSON_MANIFEST).is_file()
        || detect(dir).is_some()
}

/// The dialect of a `plugin.json`, by its keys; `None` for plugd's own form (or not JSON).
fn json_dialect(text: &str) -> Option<Dialect> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => json_dialect_of(&map),
        _ => None,
    }
}

/// The dialect of a `plugin.json` object: `class_path` → class-based; `execution_mode` or
/// `entry_point` → xcore; otherwise `None`, plugd's own form.
pub(crate) fn json_dialect_of(map: &Map<String, Value>) -> Option<Dialect> {
    if map.contains_key("class_path") {
        Some(Dialect::ClassBased)
    } else if map.contains_key("execution_mode") || map.contains_key("entry_point") {
        Some(Dialect::Xcore)
    } else {
        None
    }
}

/// Whether module text assigns `plugin_class` at the top level (`plugin_class = MyPlugin`).
fn sets_plugin_class(text: &str) -> bool {
    text.lines().any(|line| {
        line.strip_prefix("plugin_class")
            .is_some_and(|rest| rest.trim_start().starts_with('=') && !rest.contains("=="))
    })
}

/// Reads the foreign manifest `file` of `dialect` in `dir` into a native tree; an image-tool
/// plugin is named after the directory `named_by`.
pub(crate) fn read(
    dir: &Path,
    named_by: &Path,
    dialect: Dialect,
    file: &'static str,
) -> Result<(Map<String, Value>, Foreign), ManifestError> {
    let path = dir.join(file);
    let root = if dialect == Dialect::ImageTool {
        Map::new()
    } else {
        let read = |source| ManifestError::Read {
            path: path.clone(),
            source,
        };
        let size = std::fs::metadata(&path).map_err(read)?.len();
        if size > MAX_MANIFEST {
            return Err(ManifestError::from(
                Invalid::new(format!(
                    "The manifest is {size} bytes, more than the {MAX_MANIFEST} plugd reads"
                ))
                .hint("a manifest describes the plugin; keep data in the package's files"),
            )
            .in_file(&path));
        }
        let text = std::fs::read_to_string(&path).map_err(read)?;
        parse_text(&text, file).map_err(|e| e.in_file(&path))?
    };
    let checked = if dialect == Dialect::ImageTool {
        named_by
    } else {
        dir
    };
    translate(&root, dialect, file, checked).map_err(|e| e.in_file(&path))
}

/// The object of a foreign manifest's text: YAML for `plugin.yaml`/`.yml`, else JSON.
pub(crate) fn parse_text(text: &str, file: &str) -> Result<Map<String, Value>, ManifestError> {
    match file {
        YAML_MANIFEST | YML_MANIFEST => yaml_object(text),
        _ => json_object(text),
    }
}

/// Translates a foreign manifest object into a native tree. `dir` is the package, to check
/// the files the manifest names (empty: not checked), and an image-tool plugin's name.
pub(crate) fn translate(
    root: &Map<String, Value>,
    dialect: Dialect,
    file: &'static str,
    dir: &Path,
) -> Result<(Map<String, Value>, Foreign), ManifestError> {
    let translated = match dialect {
        Dialect::Xcore => xcore(root, file),
        Dialect::ClassBased => class_based(root, file, dir),
        Dialect::ImageTool => image_tool(dir),
    };
    Ok(translated?)
}

fn yaml_object(text: &str) -> Result<Map<String, Value>, ManifestError> {
    use serde::de::DeserializeSeed;
    let budget = std::cell::Cell::new(MAX_YAML_NODES);
    let parsed = Budgeted(&budget).deserialize(serde_norway::Deserializer::from_str(text));
    let value: Value = parsed.map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        let message = e.to_string();
        // The location is reported by the error itself; keep the message alone.
        let message = message
            .split_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m)
            .to_owned();
        ManifestError::Syntax {
            format: crate::ManifestFormat::Yaml,
            path: None,
            line,
            column,
            message,
        }
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(Invalid::new(format!(
            "The manifest must be a YAML mapping, found {}",
            kind(&other)
        ))
        .hint("write `name: ...`, `version: ...` at the top level")
        .into()),
    }
}

/// The most values a foreign YAML manifest may hold once its aliases are expanded. Aliases
/// replay their anchor's nodes, so a few kilobytes of `*a` references can stand for billions
/// of values; counting while building stops such a file early, in bounded memory.
const MAX_YAML_NODES: usize = 100_000;

/// Deserializes a [`Value`] while counting its nodes against a budget.
#[derive(Clone, Copy)]
struct Budgeted<'a>(&'a std::cell::Cell<usize>);

impl Budgeted<'_> {
    fn spend<E: serde::de::Error>(self) -> Result<(), E> {
        let left = self.0.get();
        if left == 0 {
            return Err(E::custom(format!(
                "more than {MAX_YAML_NODES} values once its aliases are expanded"
            )));
        }
        self.0.set(left - 1);
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Budgeted<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Budgeted<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.spend()?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(self, d)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.spend()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.spend()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(self)? {
            let key = match key {
                Value::String(s) => s,
                other => other.to_string(),
            };
            out.insert(key, map.next_value_seed(self)?);
        }
        Ok(Value::Object(out))
    }
}

fn json_object(text: &str) -> Result<Map<String, Value>, ManifestError> {
    match crate::parse::json_value(text)? {
        Value::Object(map) => Ok(map),
        other => Err(Invalid::new(format!(
            "The manifest must be a JSON object, found {}",
            kind(&other)
        ))
        .into()),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A foreign manifest being read: the source object and what the translation collects.
struct Source<'a> {
    map: &'a Map<String, Value>,
    file: &'static str,
    changes: Vec<Change>,
}

impl<'a> Source<'a> {
    fn string(&self, key: &str) -> Result<Option<&'a str>, Invalid> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(Invalid::new(format!(
                "Key `{key}` in `{}` must be a string, found {}",
                self.file,
                kind(other)
            ))),
        }
    }

    fn required(&self, key: &str) -> Result<&'a str, Invalid> {
        self.string(key)?.ok_or_else(|| {
            Invalid::new(format!("Missing key `{key}` in `{}`", self.file))
                .hint(format!("add `{key}`"))
        })
    }

    /// `version`, as text: YAML and JSON may write `1.2` as a number.
    fn version_text(&self) -> Result<String, Invalid> {
        match self.map.get("version") {
            // `1.10` unquoted is the number 1.1: refused rather than read as another version.
            Some(Value::Number(n)) if n.is_f64() => Err(Invalid::new(format!(
                "Key `version` in `{}` is the number `{n}`, not a version",
                self.file
            ))
            .hint("write the version in quotes, like `version: \"1.10.0\"`")),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => self.required("version").map(str::to_owned),
        }
    }

    fn change(&mut self, field: impl Into<String>, note: impl Into<String>) {
        self.changes.push(Change {
            field: field.into(),
            note: note.into(),
        });
    }

    /// The name, mapped onto a plugd name when it is not one.
    fn name(&mut self) -> Result<(String, PluginName), Invalid> {
        let original = self.required("name")?.to_owned();
        check_printable(&original, "Plugin name", self.file)?;
        let mapped = map_name(&original).ok_or_else(|| {
            Invalid::new(format!(
                "Plugin name `{original}` in `{}` has no letter or digit to make a plugd name from",
                self.file
            ))
            .hint("give the plugin a name with letters, like `notes`")
        })?;
        if mapped.as_str() != original {
            self.change(
                "name",
                format!("`{original}` is not a plugd name; the plugin is called `{mapped}`"),
            );
        }
        Ok((original, mapped))
    }

    /// Keys of the source that the dialect does not know: kept in the change list, unused.
    fn unknown(&mut self, known: &[&str]) {
        let unknown: Vec<String> = self
            .map
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        for key in unknown {
            // The key is the package's text: shown escaped, never as terminal control codes.
            self.change(
                key.escape_debug().to_string(),
                "unknown key, kept in the file and not used",
            );
        }
    }

    /// `requires` / `dependencies`: names, or `{name, version}` with a semver range.
    fn dependencies(&mut self, key: &str, own: &PluginName) -> Result<Map<String, Value>, Invalid> {
        let mut deps = Map::new();
        let items = match self.map.get(key) {
            None | Some(Value::Null) => return Ok(deps),
            Some(Value::Array(items)) => items.clone(),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(name, req)| json!({"name": name, "version": req}))
                .collect(),
            Some(other) => {
                return Err(Invalid::new(format!(
                    "Key `{key}` in `{}` must be a list of plugin names, found {}",
                    self.file,
                    kind(other)
                ))
                .hint(format!("write `{key}: [other_plugin]`")));
            }
        };
        for item in items {
            let (name, req) = match &item {
                Value::String(name) => (name.clone(), None),
                Value::Object(m) => match m.get("name") {
                    Some(Value::String(name)) => (
                        name.clone(),
                        match m.get("version") {
                            None | Some(Value::Null) => None,
                            Some(Value::String(r)) => Some(r.clone()),
                            Some(other) => Some(other.to_string()),
                        },
                    ),
                    _ => {
                        return Err(Invalid::new(format!(
                            "An entry of `{key}` in `{}` has no `name`",
                            self.file
                        ))
                        .hint("write `{name: other_plugin, version: \">=1.0\"}`"));
                    }
                },
                other => {
                    return Err(Invalid::new(format!(
                        "An entry of `{key}` in `{}` must be a name or `{{name, version}}`, found {}",
                        self.file,
                        kind(other)
                    )));
                }
            };
            let mapped = map_name(&name).ok_or_else(|| {
                Invalid::new(format!(
                    "Dependency `{name}` in `{}` is not a plugin name",
                    self.file
                ))
            })?;
            if mapped.as_str() != name {
                self.change(
                    format!("{key}.{name}"),
                    format!("dependency `{name}` is the plugd plugin `{mapped}`"),
                );
            }
            if &mapped == own {
                return Err(Invalid::new(format!("Plugin `{own}` depends on itself"))
                    .hint(format!("remove `{name}` from `{key}`")));
            }
            let req = req.unwrap_or_else(|| "*".to_owned());
            VersionReq::parse(&req).map_err(|e| {
                Invalid::new(format!(
                    "Invalid version requirement `{req}` for dependency `{name}` in `{}`: {e}",
                    self.file
                ))
                .hint("use a semver requirement like `^2.0`, `>=1.2, <2` or `*`")
            })?;
            deps.insert(mapped.into_string(), Value::String(req));
        }
        Ok(deps)
    }
}

/// The services a foreign plugin's compatibility runner offers it: kv (storage), events (its
/// bus), tasks, and calls to its dependencies when it has any.
fn services(has_dependencies: bool) -> Value {
    let mut s = vec!["kv", "events", "tasks"];
    if has_dependencies {
        s.push("plugins");
    }
    json!(s)
}

/// The native `[plugin]` table of a translated package.
fn plugin_table(
    name: &PluginName,
    version: &Version,
    description: &str,
    author: Option<&str>,
    runner: Value,
) -> Value {
    let mut plugin = json!({
        "name": name.as_str(),
        "version": version.to_string(),
        "description": description,
        "runtime": "process",
        "entry": ["python3", "-m", "plugd.compat", runner.to_string()],
    });
    if let Some(author) = author {
        plugin["authors"] = json!([author]);
    }
    plugin
}

const XCORE_KEYS: &[&str] = &[
    "name",
    "version",
    "description",
    "execution_mode",
    "entry_point",
    "requires",
    "resources",
    "runtime",
    "env",
    "filesystem",
    "allowed_imports",
    "author",
    "framework_version",
    "envconfiguration",
];
const EXECUTION_MODES: &[&str] = &["trusted", "sandboxed", "legacy"];

fn xcore(
    root: &Map<String, Value>,
    file: &'static str,
) -> Result<(Map<String, Value>, Foreign), Invalid> {
    let mut src = Source {
        map: root,
        file,
        changes: Vec::new(),
    };
    let (original, name) = src.name()?;
    let version = version(&src.version_text()?, &mut src.changes)?;
    let description = src.string("description")?.unwrap_or_default().to_owned();
    let author = src.string("author")?.map(str::to_owned);
    let execution_mode = match src.string("execution_mode")? {
        None => None,
        Some(mode) if EXECUTION_MODES.contains(&mode) => Some(mode.to_owned()),
        Some(mode) => {
            return Err(
                Invalid::new(format!("Unknown `execution_mode` `{mode}` in `{file}`"))
                    .hint("use `trusted`, `sandboxed` or `legacy`"),
            );
        }
    };
    if let Some(mode) = &execution_mode {
        let note = if mode == "sandboxed" {
            "plugd confines every plugin; `sandboxed` is what it always does".to_owned()
        } else {
            format!(
                "`{mode}` does not weaken confinement: plugd grants what the manifest asks for only to a package with a valid plugd signature (`plugd sign`)"
            )
        };
        src.change("execution_mode", note);
    }
    let entry = src
        .string("entry_point")?
        .unwrap_or("src/main.py")
        .to_owned();
    if entry.split('/').next() == Some("data") {
        return Err(Invalid::new(format!(
            "`entry_point` `{entry}` in `{file}` is under `data/`, which is the plugin's writable data dir at run time"
        ))
        .hint("keep code out of `data/`, like `src/main.py`: plugd runs only code from the signed package"));
    }
    if entry.starts_with('/') || entry.split('/').any(|c| c == "..") || !entry.ends_with(".py") {
        return Err(Invalid::new(format!(
            "`entry_point` `{entry}` in `{file}` must be a `.py` file inside the package"
        ))
        .hint("use a package-relative path like `src/main.py`"));
    }
    let dependencies = src.dependencies("requires", &name)?;

    let mut limits = Map::new();
    if let Some(resources) = root.get("resources") {
        xcore_resources(&mut src, resources, &mut limits)?;
    }
    if root.get("runtime").is_some() {
        src.change(
            "runtime",
            "dropped: plugd supervises every plugin itself (health pings, restarts with backoff); see `plugd status NAME`",
        );
    }
    let (env, env_names) = xcore_env(&mut src)?;
    let mut fs_read = Vec::new();
    if let Some(filesystem) = root.get("filesystem") {
        xcore_filesystem(&mut src, filesystem, &mut fs_read)?;
    }
    let imports = match root.get("allowed_imports") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| {
                Invalid::new(format!(
                    "`allowed_imports` in `{file}` must be a list of module names"
                ))
            })?,
        Some(other) => {
            return Err(Invalid::new(format!(
                "`allowed_imports` in `{file}` must be a list of module names, found {}",
                kind(other)
            )));
        }
    };
    if !imports.is_empty() {
        src.change(
            "allowed_imports",
            "kept as `permissions.imports`, advisory: plugd's boundary is the kernel sandbox, not an import hook",
        );
    }
    if root.get("framework_version").is_some() {
        src.change(
            "framework_version",
            "dropped: plugd speaks its own protocol version",
        );
    }
    if root.get("envconfiguration").is_some() {
        src.change("envconfiguration", "kept in the file and not used");
    }
    src.unknown(XCORE_KEYS);

    let runner = json!({"format": "xcore", "entry": entry, "name": original, "env": env});
    let mut permissions = Map::new();
    permissions.insert("services".into(), services(!dependencies.is_empty()));
    if !env_names.is_empty() {
        permissions.insert("env".into(), json!(env_names));
    }
    if !fs_read.is_empty() {
        permissions.insert("fs".into(), json!({ "read": fs_read }));
    }
    if !imports.is_empty() {
        permissions.insert("imports".into(), json!(imports));
    }
    let mut native = Map::new();
    native.insert("schema".into(), json!(1));
    native.insert(
        "plugin".into(),
        plugin_table(&name, &version, &description, author.as_deref(), runner),
    );
    if !dependencies.is_empty() {
        native.insert("dependencies".into(), Value::Object(dependencies));
    }
    native.insert("permissions".into(), Value::Object(permissions));
    if !limits.is_empty() {
        native.insert("limits".into(), Value::Object(limits));
    }
    Ok((
        native.clone(),
        Foreign {
            dialect: Dialect::Xcore,
            file,
            original_name: original,
            execution_mode,
            changes: src.changes,
            native,
        },
    ))
}

/// A positive number of a `resources` key.
fn positive(file: &str, key: &str, value: &Value) -> Result<f64, Invalid> {
    match value.as_f64() {
        Some(n) if n > 0.0 && n.is_finite() => Ok(n),
        _ => Err(Invalid::new(format!(
            "`resources.{key}` in `{file}` must be a number more than 0, found `{value}`"
        ))),
    }
}

/// Seconds as a duration string; a fraction is rounded up to whole milliseconds (never `0ms`).
fn seconds(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{n:.0}s")
    } else {
        format!("{}ms", (n * 1000.0).ceil().max(1.0))
    }
}

fn xcore_resources(
    src: &mut Source<'_>,
    resources: &Value,
    limits: &mut Map<String, Value>,
) -> Result<(), Invalid> {
    let file = src.file;
    let Value::Object(map) = resources else {
        return Err(Invalid::new(format!(
            "`resources` in `{file}` must be a mapping, found {}",
            kind(resources)
        )));
    };
    for (key, value) in map {
        match key.as_str() {
            "timeout_seconds" => {
                let d = seconds(positive(file, key, value)?);
                src.change(
                    "resources.timeout_seconds",
                    format!("becomes `limits.call_timeout = \"{d}\"`"),
                );
                limits.insert("call_timeout".into(), json!(d));
            }
            "max_memory_mb" => {
                let mb = positive(file, key, value)?.ceil();
                src.change(
                    "resources.max_memory_mb",
                    format!("becomes `limits.memory = \"{mb}MiB\"`, enforced by the kernel"),
                );
                limits.insert("memory".into(), json!(format!("{mb}MiB")));
            }
            "max_disk_mb" => {
                let mb = positive(file, key, value)?.ceil();
                src.change(
                    "resources.max_disk_mb",
                    format!("becomes `limits.disk = \"{mb}MiB\"` (the data dir)"),
                );
                limits.insert("disk".into(), json!(format!("{mb}MiB")));
            }
            "rate_limit" => {
                let calls = value
                    .get("calls")
                    .and_then(Value::as_u64)
                    .filter(|c| (1..=u64::from(crate::parse::MAX_RATE_CALLS)).contains(c));
                let period = value
                    .get("period_seconds")
                    .and_then(Value::as_f64)
                    .filter(|p| *p > 0.0 && p.is_finite());
                let (Some(calls), Some(period)) = (calls, period) else {
                    return Err(Invalid::new(format!(
                        "`resources.rate_limit` in `{file}` needs `calls` (a whole number from 1 to {}) and `period_seconds` (more than 0)",
                        crate::parse::MAX_RATE_CALLS
                    ))
                    .hint("write `rate_limit: {calls: 100, period_seconds: 60}`"));
                };
                let per = seconds(period);
                src.change(
                    "resources.rate_limit",
                    format!("becomes `limits.rate = {{ calls = {calls}, per = \"{per}\" }}`: calls past it are answered 429"),
                );
                limits.insert("rate".into(), json!({"calls": calls, "per": per}));
            }
            other => src.change(format!("resources.{other}"), "unknown key, not used"),
        }
    }
    Ok(())
}

/// xcore's `env`: values as text; the `${VAR}` names they use become `permissions.env`.
fn xcore_env(src: &mut Source<'_>) -> Result<(Map<String, Value>, Vec<String>), Invalid> {
    let file = src.file;
    let mut env = Map::new();
    let mut names: Vec<String> = Vec::new();
    let map = match src.map.get("env") {
        None | Some(Value::Null) => return Ok((env, names)),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(Invalid::new(format!(
                "`env` in `{file}` must be a mapping of names to values, found {}",
                kind(other)
            )));
        }
    };
    for (key, value) in map {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            Value::Null => String::new(),
            other => {
                return Err(Invalid::new(format!(
                    "`env.{key}` in `{file}` must be a text, number or boolean, found {}",
                    kind(other)
                )));
            }
        };
        let mut rest = text.as_str();
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(
                    Invalid::new(format!("`env.{key}` in `{file}` has an unclosed `${{`"))
                        .hint("write `${NAME}`"),
                );
            };
            let var = &after[..end];
            let valid = var
                .chars()
                .next()
                .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
                && var.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
            if !valid {
                return Err(Invalid::new(format!(
                    "`${{{var}}}` in `env.{key}` of `{file}` is not an environment variable name"
                ))
                .hint("use letters, digits and `_`, not starting with a digit"));
            }
            if !names.iter().any(|n| n == var) {
                names.push(var.to_owned());
            }
            rest = &after[end + 1..];
        }
        env.insert(key.clone(), Value::String(text));
    }
    if !names.is_empty() {
        src.change(
            "env",
            format!(
                "`${{...}}` reads host variables through plugd's env policy: {} (listed in `permissions.env`; an unsigned plugin gets none, a package signed by a trusted key gets them)",
                names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            ),
        );
    }
    Ok((env, names))
}

fn xcore_filesystem(
    src: &mut Source<'_>,
    filesystem: &Value,
    fs_read: &mut Vec<String>,
) -> Result<(), Invalid> {
    let file = src.file;
    let Value::Object(map) = filesystem else {
        return Err(Invalid::new(format!(
            "`filesystem` in `{file}` must be a mapping, found {}",
            kind(filesystem)
        )));
    };
    let list = |key: &str| -> Result<Vec<String>, Invalid> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    Invalid::new(format!(
                        "`filesystem.{key}` in `{file}` must be a list of paths"
                    ))
                }),
            Some(other) => Err(Invalid::new(format!(
                "`filesystem.{key}` in `{file}` must be a list of paths, found {}",
                kind(other)
            ))),
        }
    };
    for path in list("allowed_paths")? {
        let clean = path.trim_start_matches("./").trim_end_matches('/');
        if clean == "data" || clean.starts_with("data/") {
            src.change(
                format!("filesystem.allowed_paths.{path}"),
                "`data/` is the plugin's own data dir in plugd, always read-write",
            );
        } else if path.starts_with('/')
            || path.starts_with('~')
            || clean.split('/').any(|c| c == "..")
        {
            src.change(
                format!("filesystem.allowed_paths.{path}"),
                "dropped: plugd grants a plugin no path outside its package and data dir",
            );
        } else if clean.is_empty() || clean == "." {
            fs_read.push(".".into());
        } else {
            fs_read.push(clean.to_owned());
        }
    }
    if !list("denied_paths")?.is_empty() {
        src.change(
            "filesystem.denied_paths",
            "dropped: in plugd everything not granted is denied by the kernel",
        );
    }
    for key in map.keys() {
        if key != "allowed_paths" && key != "denied_paths" {
            src.change(format!("filesystem.{key}"), "unknown key, not used");
        }
    }
    Ok(())
}

const CLASS_KEYS: &[&str] = &[
    "class_path",
    "name",
    "version",
    "description",
    "author",
    "dependencies",
];

fn class_based(
    root: &Map<String, Value>,
    file: &'static str,
    dir: &Path,
) -> Result<(Map<String, Value>, Foreign), Invalid> {
    let mut src = Source {
        map: root,
        file,
        changes: Vec::new(),
    };
    // plugd's own keys beside `class_path`: a native manifest with a leftover seed key, whose
    // entry and permissions would be dropped. Refused rather than guessed.
    if let Some(native) = crate::parse::JSON_TOP_KEYS
        .iter()
        .find(|k| !CLASS_KEYS.contains(k) && root.contains_key(**k))
    {
        return Err(Invalid::new(format!(
            "`{file}` has `class_path`, which makes it a class-based manifest, and plugd's own key `{native}`"
        ))
        .hint("remove `class_path` to keep plugd's form, or remove the plugd keys to run it as a class-based plugin"));
    }
    let class_path = src.required("class_path")?.to_owned();
    let parts: Vec<&str> = class_path.split('.').collect();
    let identifier = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c == '_' || c.is_alphabetic())
            && s.chars().all(|c| c == '_' || c.is_alphanumeric())
    };
    if parts.len() < 2 || !parts.iter().all(|p| identifier(p)) {
        return Err(Invalid::new(format!(
            "`class_path` `{class_path}` in `{file}` must name a module and a class, like `plugins.hello.plugin.HelloPlugin`"
        )));
    }
    let (module, class) = (parts[parts.len() - 2], parts[parts.len() - 1]);
    if module == "data" {
        return Err(Invalid::new(format!(
            "`class_path` `{class_path}` in `{file}` names the module `data`, which is the plugin's writable data dir at run time"
        ))
        .hint("move the class into a module of the package, like `plugin.py`"));
    }
    if !dir.as_os_str().is_empty()
        && !dir.join(format!("{module}.py")).is_file()
        && !dir.join(module).join(INIT_MODULE).is_file()
    {
        return Err(Invalid::new(format!(
            "`class_path` `{class_path}` names module `{module}`, but the package has no `{module}.py`"
        ))
        .hint(format!("put the class `{class}` in `{module}.py` at the package root")));
    }
    if parts.len() > 2 {
        src.change(
            "class_path",
            format!("module `{module}` and class `{class}` are loaded from the package root; the prefix `{}` is not used", parts[..parts.len() - 2].join(".")),
        );
    }
    let (original, name) = src.name()?;
    let version = version(&src.version_text()?, &mut src.changes)?;
    let description = src.string("description")?.unwrap_or_default().to_owned();
    let author = src.string("author")?.map(str::to_owned);
    let dependencies = src.dependencies("dependencies", &name)?;
    src.unknown(CLASS_KEYS);
    let runner = json!({
        "format": "classic",
        "module": module,
        "class": class,
        "name": original,
        "version": version.to_string(),
        "description": description,
        "author": author.clone().unwrap_or_default(),
        "dependencies": dependencies.keys().collect::<Vec<_>>(),
    });
    src.change(
        "events",
        "the event bus is plugd's: the plugin subscribes to every topic (`*`) and its runner keeps the topics the code subscribes to",
    );
    let mut native = Map::new();
    native.insert("schema".into(), json!(1));
    native.insert(
        "plugin".into(),
        plugin_table(&name, &version, &description, author.as_deref(), runner),
    );
    if !dependencies.is_empty() {
        native.insert("dependencies".into(), Value::Object(dependencies.clone()));
    }
    native.insert(
        "permissions".into(),
        json!({ "services": services(!dependencies.is_empty()) }),
    );
    native.insert("events".into(), json!({ "subscribe": ["*"] }));
    Ok((
        native.clone(),
        Foreign {
            dialect: Dialect::ClassBased,
            file,
            original_name: original,
            execution_mode: None,
            changes: src.changes,
            native,
        },
    ))
}

fn image_tool(dir: &Path) -> Result<(Map<String, Value>, Foreign), Invalid> {
    // `.` or `pkg/..` name no directory: the name is that of the directory they lead to.
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let original = canonical
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let mut changes = Vec::new();
    check_printable(&original, "The directory name", INIT_MODULE)?;
    let name = map_name(&original).ok_or_else(|| {
        Invalid::new(format!(
            "The directory name `{original}` has no letter or digit to make a plugin name from"
        ))
        .hint("rename the directory, like `my_plugin`")
    })?;
    if name.as_str() != original {
        changes.push(Change {
            field: "name".into(),
            note: format!("the directory `{original}` is the plugin `{name}`"),
        });
    }
    changes.push(Change {
        field: "version".into(),
        note: "an image-tool plugin has no version; it is `0.0.0` until `plugin.toml` gives one"
            .into(),
    });
    changes.push(Change {
        field: "params".into(),
        note: "the params model is checked by the plugin (pydantic); the host stores any object until `[params]` declares its schema".into(),
    });
    changes.push(Change {
        field: "project".into(),
        note: "the host database API (`project.get_instances`, ...) is not available; tasks, `run_async`, `do`/`undo` are".into(),
    });
    let runner = json!({"format": "panoptic", "name": original});
    let mut native = Map::new();
    native.insert("schema".into(), json!(1));
    native.insert(
        "plugin".into(),
        plugin_table(&name, &Version::new(0, 0, 0), "", None, runner),
    );
    native.insert("permissions".into(), json!({ "services": services(false) }));
    native.insert("params".into(), json!({ "type": "object" }));
    Ok((
        native.clone(),
        Foreign {
            dialect: Dialect::ImageTool,
            file: INIT_MODULE,
            original_name: original,
            execution_mode: None,
            changes,
            native,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_by_the_documented_rule() {
        let cases = [
            ("notes manager", Some("notes-manager")),
            ("Client_Manager", Some("client_manager")),
            ("hello", Some("hello")),
            ("  spaced  out  ", Some("spaced-out")),
            ("2fa helper", Some("p-2fa-helper")),
            ("café", Some("caf")),
            ("__private__", Some("private")),
            ("a.b.c", Some("a-b-c")),
            ("!!!", None),
            ("", None),
        ];
        for (foreign, expected) in cases {
            assert_eq!(
                map_name(foreign).map(PluginName::into_string).as_deref(),
                expected,
                "{foreign:?}"
            );
        }
        let long = "x".repeat(100);
        assert_eq!(map_name(&long).map(|n| n.as_str().len()), Some(64));
    }

    #[test]
    fn short_versions_are_completed() {
        let mut changes = Vec::new();
        assert_eq!(version("1.2", &mut changes).unwrap(), Version::new(1, 2, 0));
        assert_eq!(version("3", &mut changes).unwrap(), Version::new(3, 0, 0));
        assert_eq!(changes.len(), 2);
        assert!(version("1.x", &mut changes).is_err());
        assert!(version("1.2.3.4", &mut changes).is_err());
    }

    #[test]
    fn plugin_class_assignment_is_recognised() {
        assert!(sets_plugin_class(
            "from .demo import Demo\nplugin_class = Demo\n"
        ));
        assert!(sets_plugin_class("plugin_class=Demo"));
        assert!(!sets_plugin_class("# plugin_class = Demo\n"));
        assert!(!sets_plugin_class("plugin_classes = []\n"));
        assert!(!sets_plugin_class("if plugin_class == x: pass\n"));
    }
}
