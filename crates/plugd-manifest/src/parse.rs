//! The manifest reader: TOML or JSON text → a JSON value tree → a validated [`Manifest`].
//!
//! Both formats are first turned into a [`serde_json::Value`] so one walker validates them; the
//! walker knows which format it reads only to name tables the way the author wrote them
//! (`[plugin]` in TOML, `limits` in JSON) and to apply the seed format's defaults.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::suggest::did_you_mean;
use crate::units::{DURATION_HINT, SIZE_HINT};
use crate::{
    ActionName, ActionSpec, Events, Http, Limits, Manifest, ManifestError, ManifestFormat,
    Permissions, PluginKind, PluginName, Python, Rate, RuntimeKind, SCHEMA_VERSION, Schema,
    Service, Version, VersionReq,
};

/// The seed's implicit entry, used when `plugin.json` has none.
const SEED_ENTRY: [&str; 2] = ["python3", "main.py"];

const TOML_TOP_KEYS: &[&str] = &[
    "schema",
    "plugin",
    "dependencies",
    "permissions",
    "limits",
    "params",
    "actions",
    "events",
    "python",
    "http",
];
const PLUGIN_KEYS: &[&str] = &[
    "name",
    "version",
    "description",
    "authors",
    "kind",
    "runtime",
    "entry",
];
pub(crate) const JSON_TOP_KEYS: &[&str] = &[
    "schema",
    "name",
    "version",
    "description",
    "authors",
    "kind",
    "runtime",
    "entry",
    "dependencies",
    "permissions",
    "limits",
    "params",
    "actions",
    "events",
    "python",
    "http",
];
const PERMISSION_KEYS: &[&str] = &["fs.read", "net.connect", "env", "services", "imports"];
const LIMIT_KEYS: &[&str] = &[
    "memory",
    "disk",
    "storage",
    "cpu",
    "call_timeout",
    "concurrency",
    "tasks",
    "task_timeout",
    "rate",
];
const ACTION_KEYS: &[&str] = &["name", "description", "input", "hooks"];
const EVENT_KEYS: &[&str] = &["subscribe"];
const PYTHON_KEYS: &[&str] = &["requirements"];
const HTTP_KEYS: &[&str] = &["mount", "expose", "health"];

/// Every key the reader accepts, as dotted paths (`limits.memory`, `actions.input`): the top-level
/// keys of the format, then the keys of each sub-table. `dependencies` and `params` are free-form
/// (plugin names; a JSON Schema) and listed as one key each.
pub(crate) fn known_keys(format: ManifestFormat) -> Vec<String> {
    let mut keys = Vec::new();
    let tops = match format {
        ManifestFormat::Toml => TOML_TOP_KEYS,
        _ => JSON_TOP_KEYS,
    };
    for top in tops {
        let sub = match *top {
            "plugin" => PLUGIN_KEYS,
            "permissions" => PERMISSION_KEYS,
            "limits" => LIMIT_KEYS,
            "actions" => ACTION_KEYS,
            "events" => EVENT_KEYS,
            "python" => PYTHON_KEYS,
            "http" => HTTP_KEYS,
            _ => {
                keys.push((*top).to_owned());
                continue;
            }
        };
        keys.extend(sub.iter().map(|k| format!("{top}.{k}")));
    }
    keys
}

const INSIDE_HINT: &str = "use a path inside the package, relative to its root";

/// Parses and validates `plugin.toml` text.
pub(crate) fn parse_toml(src: &str) -> Result<Manifest, ManifestError> {
    let table: toml::Table = src.parse().map_err(|e: toml::de::Error| {
        let (line, column) = e.span().map_or((1, 1), |span| line_column(src, span.start));
        ManifestError::Syntax {
            format: ManifestFormat::Toml,
            path: None,
            line,
            column,
            message: e.message().trim_end().to_owned(),
        }
    })?;
    let Value::Object(root) = toml_to_json(toml::Value::Table(table)) else {
        unreachable!("a TOML table converts to a JSON object")
    };
    Ok(Reader::new(ManifestFormat::Toml).manifest(&root)?)
}

/// Parses and validates `plugin.json` text: plugd's own form, or a foreign dialect told apart
/// by its keys (translated).
pub(crate) fn parse_json(src: &str) -> Result<Manifest, ManifestError> {
    parse_json_in(src, Path::new(""))
}

/// [`parse_json`] of the `plugin.json` of the package in `dir` (empty: none), which a foreign
/// dialect's translation checks the files it names against.
pub(crate) fn parse_json_in(src: &str, dir: &Path) -> Result<Manifest, ManifestError> {
    let value = json_value(src)?;
    let Value::Object(root) = value else {
        return Err(Invalid::new(format!(
            "The manifest must be a JSON object, found {}",
            describe(&value, ManifestFormat::Json)
        ))
        .hint("write `{\"name\": ..., \"version\": ..., \"description\": ...}`")
        .into());
    };
    if let Some(dialect) = crate::foreign::json_dialect_of(&root) {
        let (native, foreign) =
            crate::foreign::translate(&root, dialect, crate::JSON_MANIFEST, dir)?;
        return from_native_tree(&native, foreign);
    }
    Ok(Reader::new(ManifestFormat::Json).manifest(&root)?)
}

/// Parses foreign manifest text of `dialect` as read from `file` (no package directory, so
/// files the manifest names are not checked).
pub(crate) fn parse_foreign_text(
    src: &str,
    dialect: crate::foreign::Dialect,
    file: &'static str,
) -> Result<Manifest, ManifestError> {
    let root = crate::foreign::parse_text(src, file)?;
    let (native, foreign) = crate::foreign::translate(&root, dialect, file, Path::new(""))?;
    from_native_tree(&native, foreign)
}

/// Reads the native tree a foreign manifest was translated into, with the ordinary rules.
pub(crate) fn from_native_tree(
    native: &Map<String, Value>,
    foreign: crate::Foreign,
) -> Result<Manifest, ManifestError> {
    let mut manifest = Reader::new(ManifestFormat::Toml).manifest(native)?;
    manifest.format = match foreign.file {
        crate::foreign::YAML_MANIFEST | crate::foreign::YML_MANIFEST => ManifestFormat::Yaml,
        crate::foreign::INIT_MODULE => ManifestFormat::Python,
        _ => ManifestFormat::Json,
    };
    manifest.warnings.extend(
        foreign
            .changes
            .iter()
            .filter(|c| c.note.starts_with("unknown key"))
            .map(|c| {
                format!(
                    "Unknown key `{}` in the {} manifest `{}`: kept, not used",
                    c.field,
                    foreign.dialect.label(),
                    foreign.file
                )
            }),
    );
    manifest.foreign = Some(foreign);
    Ok(manifest)
}

/// JSON text → a value, with the position of a syntax error.
pub(crate) fn json_value(src: &str) -> Result<Value, ManifestError> {
    serde_json::from_str(src).map_err(|e| {
        // serde_json appends " at line L column C"; we report the position ourselves.
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        ManifestError::Syntax {
            format: ManifestFormat::Json,
            path: None,
            line: e.line(),
            column: e.column(),
            message,
        }
    })
}

/// A validation failure before it is attached to a file.
#[derive(Debug)]
pub(crate) struct Invalid {
    message: String,
    hint: Option<String>,
}

impl Invalid {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Invalid {
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl From<Invalid> for ManifestError {
    fn from(e: Invalid) -> Self {
        ManifestError::Invalid {
            path: None,
            message: e.message,
            hint: e.hint,
        }
    }
}

type R<T> = Result<T, Invalid>;

/// 1-based line and column (in characters) of byte `offset` in `src`.
fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        // No manifest key takes a date; as a string it is reported as one where it does not fit.
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// "a string", "an integer", ... in the vocabulary of the format the author wrote.
fn describe(value: &Value, format: ManifestFormat) -> &'static str {
    match (value, format) {
        (Value::Null, _) => "null",
        (Value::Bool(_), _) => "a boolean",
        (Value::Number(n), ManifestFormat::Toml) if n.is_f64() => "a float",
        (Value::Number(_), ManifestFormat::Toml) => "an integer",
        (Value::Number(_), _) => "a number",
        (Value::String(_), _) => "a string",
        (Value::Array(_), _) => "an array",
        (Value::Object(_), ManifestFormat::Toml) => "a table",
        (Value::Object(_), _) => "an object",
    }
}

fn backticked(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One table (TOML) or object (JSON) of the manifest, with the label used in messages.
struct Table<'a> {
    map: &'a Map<String, Value>,
    /// How messages name this table: "`[plugin]`", "`limits`", "the top-level object".
    label: String,
    format: ManifestFormat,
}

impl<'a> Table<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    /// Fails on the first key (in sorted order) that is not in `known`.
    fn deny_unknown(&self, known: &[&str]) -> R<()> {
        let Some(key) = self.map.keys().find(|k| !known.contains(&k.as_str())) else {
            return Ok(());
        };
        let err = Invalid::new(format!("Unknown key `{key}` in {}", self.label));
        Err(match did_you_mean(key, known) {
            Some(near) => err.hint(format!("did you mean `{near}`?")),
            None => err.hint(format!("known keys are {}", backticked(known))),
        })
    }

    fn type_error(&self, key: &str, expected: &str, found: &Value) -> Invalid {
        Invalid::new(format!(
            "Key `{key}` in {} must be {expected}, found {}",
            self.label,
            describe(found, self.format)
        ))
    }

    fn missing(&self, key: &str) -> Invalid {
        Invalid::new(format!("Missing key `{key}` in {}", self.label))
    }

    fn string(&self, key: &str) -> R<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.type_error(key, "a string", other)),
        }
    }

    fn required_string(&self, key: &str) -> R<&'a str> {
        self.string(key)?.ok_or_else(|| self.missing(key))
    }

    /// An array of strings; absent means empty.
    fn strings(&self, key: &str) -> R<Vec<String>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.type_error(key, "an array of strings", other)),
                })
                .collect(),
            Some(other) => Err(self.type_error(key, "an array of strings", other)),
        }
    }

    fn table(&self, key: &str, label: String) -> R<Option<Table<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Table {
                map,
                label,
                format: self.format,
            })),
            Some(other) => {
                let expected = match self.format {
                    ManifestFormat::Toml => "a table",
                    _ => "an object",
                };
                Err(self.type_error(key, expected, other))
            }
        }
    }

    /// The label of a sub-table, as the author would write it.
    fn child_label(&self, key: &str) -> String {
        match self.format {
            ManifestFormat::Toml => format!("`[{key}]`"),
            _ => format!("`{key}`"),
        }
    }
}

struct Reader {
    format: ManifestFormat,
    warnings: Vec<String>,
}

/// What `[plugin]` (TOML) or the top-level object (JSON) says about the plugin itself.
struct Identity {
    name: PluginName,
    version: Version,
    description: String,
    authors: Vec<String>,
    kind: PluginKind,
    runtime: RuntimeKind,
    entry: Vec<String>,
}

impl Reader {
    fn new(format: ManifestFormat) -> Self {
        Reader {
            format,
            warnings: Vec::new(),
        }
    }

    fn manifest(mut self, root: &Map<String, Value>) -> R<Manifest> {
        let top = Table {
            map: root,
            label: match self.format {
                ManifestFormat::Toml => "the top level".to_owned(),
                _ => "the top-level object".to_owned(),
            },
            format: self.format,
        };
        let schema = schema(&top)?;
        let identity = match self.format {
            ManifestFormat::Toml => {
                deny_unknown_toml_top(root)?;
                let plugin = top.table("plugin", "`[plugin]`".to_owned())?.ok_or_else(|| {
                    Invalid::new("Missing table `[plugin]`")
                        .hint("start the manifest with `[plugin]` and its `name`, `version`, `runtime` and `entry`")
                })?;
                plugin.deny_unknown(PLUGIN_KEYS)?;
                self.identity(&plugin)?
            }
            _ => {
                top.deny_unknown(JSON_TOP_KEYS)?;
                self.identity(&top)?
            }
        };
        let dependencies = self.dependencies(&top, &identity.name)?;
        let permissions = match top.table("permissions", top.child_label("permissions"))? {
            Some(t) => permissions(&t)?,
            None => Permissions::default(),
        };
        let limits = match top.table("limits", top.child_label("limits"))? {
            Some(t) => limits(&t)?,
            None => Limits::default(),
        };
        let params_label = top.child_label("params");
        let params = match top.get("params") {
            None => None,
            Some(schema @ Value::Object(map)) if map.get("type") == Some(&"object".into()) => {
                Some(schema.clone())
            }
            Some(_) => {
                return Err(Invalid::new(format!(
                    "The {} schema must describe an object",
                    top.child_label("params")
                ))
                .hint("give it `type = \"object\"` and describe each setting under `properties`"));
            }
        };
        let params_schema = params
            .as_ref()
            .map(|raw| compile(raw, &format!("The {params_label} schema")))
            .transpose()?;
        if let (Some(raw), Some(schema)) = (&params, &params_schema) {
            check_defaults(raw, schema, &params_label)?;
        }
        let actions = self.actions(&top)?;
        let events = match top.table("events", top.child_label("events"))? {
            Some(t) => events(&t)?,
            None => Events::default(),
        };
        let python = match top.table("python", top.child_label("python"))? {
            Some(t) => python(&t, identity.runtime)?,
            None => Python::default(),
        };
        let http = match top.table("http", top.child_label("http"))? {
            Some(t) => Some(http(&t, identity.runtime)?),
            None => None,
        };
        let Identity {
            name,
            version,
            description,
            authors,
            kind,
            runtime,
            entry,
        } = identity;
        Ok(Manifest {
            schema,
            name,
            version,
            description,
            authors,
            kind,
            runtime,
            entry,
            dependencies,
            permissions,
            limits,
            params,
            actions,
            events,
            python,
            http,
            format: self.format,
            warnings: self.warnings,
            foreign: None,
            params_schema,
        })
    }

    fn identity(&mut self, t: &Table<'_>) -> R<Identity> {
        let name =
            PluginName::new(t.required_string("name")?).map_err(|e| Invalid::new(e.to_string()))?;
        let version_str = t.required_string("version")?;
        let version = Version::parse(version_str).map_err(|e| {
            Invalid::new(format!(
                "Invalid version `{version_str}` of plugin `{name}`: {e}"
            ))
            .hint("use a semantic version like `1.2.0`")
        })?;
        let description = t.string("description")?.unwrap_or_default().to_owned();
        let authors = t.strings("authors")?;
        let kind = match t.string("kind")? {
            None => PluginKind::Other,
            Some(s) => s
                .parse()
                .map_err(|e: crate::UnknownValueError| Invalid::new(e.to_string()))?,
        };
        let runtime = match t.string("runtime")? {
            Some(s) => s.parse().map_err(|e: crate::UnknownValueError| {
                // The error already lists the runtimes; keep its hint.
                let text = e.to_string();
                match text.split_once("; hint: ") {
                    Some((message, hint)) => Invalid::new(message).hint(hint),
                    None => Invalid::new(text),
                }
            })?,
            None if self.format == ManifestFormat::Json => RuntimeKind::Process,
            None => {
                return Err(t
                    .missing("runtime")
                    .hint("add `runtime = \"process\"` or `runtime = \"wasm\"`"));
            }
        };
        let entry = self.entry(t, runtime)?;
        Ok(Identity {
            name,
            version,
            description,
            authors,
            kind,
            runtime,
            entry,
        })
    }

    fn entry(&mut self, t: &Table<'_>, runtime: RuntimeKind) -> R<Vec<String>> {
        let value = t.get("entry");
        match runtime {
            RuntimeKind::Process => {
                let argv: Vec<String> = match value {
                    None if self.format == ManifestFormat::Json => {
                        self.warnings.push(format!(
                            "No `entry` given; running `{}` as the seed did; hint: set `entry`",
                            SEED_ENTRY.join(" ")
                        ));
                        SEED_ENTRY.iter().map(|s| (*s).to_owned()).collect()
                    }
                    None => {
                        return Err(t
                            .missing("entry")
                            .hint("add `entry = [\"python3\", \"main.py\"]`, the command that starts the plugin"));
                    }
                    Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
                    Some(Value::Array(_)) => t.strings("entry")?,
                    Some(other) => {
                        return Err(t.type_error(
                            "entry",
                            "an array of strings or a string",
                            other,
                        ));
                    }
                };
                let Some((program, args)) = argv.split_first() else {
                    return Err(Invalid::new(format!("Key `entry` in {} is empty", t.label))
                        .hint("set it to the command that starts the plugin, like `[\"python3\", \"main.py\"]`"));
                };
                check_program(program)?;
                // The compatibility runner's one argument is its JSON configuration, not a
                // path (it checks the paths inside itself).
                let runner =
                    matches!(args, [m, module, _] if m == "-m" && module == "plugd.compat");
                for arg in args.iter().take(if runner { 2 } else { args.len() }) {
                    check_inside(arg, "Entry argument")?;
                }
                Ok(argv)
            }
            RuntimeKind::Wasm => {
                let hint = "set it to the component file, like `entry = \"plugin.wasm\"`";
                let file = match value {
                    None => return Err(t.missing("entry").hint(hint)),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
                        items[0].as_str().unwrap_or_default().to_owned()
                    }
                    Some(other) => {
                        return Err(t
                            .type_error("entry", "one `.wasm` file name", other)
                            .hint(hint));
                    }
                };
                if file.is_empty() {
                    return Err(
                        Invalid::new(format!("Key `entry` in {} is empty", t.label)).hint(hint)
                    );
                }
                check_inside(&file, "Entry")?;
                if !file.ends_with(".wasm") {
                    return Err(Invalid::new(format!(
                        "Wasm entry `{file}` is not a `.wasm` file"
                    ))
                    .hint("compile the plugin to a WebAssembly component and name its file, like `plugin.wasm`"));
                }
                Ok(vec![file])
            }
        }
    }

    fn dependencies(
        &self,
        top: &Table<'_>,
        plugin: &PluginName,
    ) -> R<BTreeMap<PluginName, VersionReq>> {
        let label = top.child_label("dependencies");
        let mut deps = BTreeMap::new();
        let dep_name =
            |s: &str| PluginName::new(s).map_err(|e| Invalid::new(format!("{e} (in {label})")));
        match top.get("dependencies") {
            None => {}
            Some(Value::Object(map)) => {
                for (name, req) in map {
                    let dep = dep_name(name)?;
                    let Value::String(req) = req else {
                        return Err(Invalid::new(format!(
                            "Dependency `{name}` of plugin `{plugin}` must be a version requirement string, found {}",
                            describe(req, self.format)
                        ))
                        .hint(format!("write `{name} = \"^1.0\"`")));
                    };
                    let parsed = VersionReq::parse(req).map_err(|e| {
                        Invalid::new(format!(
                            "Invalid version requirement `{req}` for dependency `{name}` of plugin `{plugin}`: {e}"
                        ))
                        .hint("use a semver requirement like `^2.0`, `>=1.2, <2` or `*`")
                    })?;
                    deps.insert(dep, parsed);
                }
            }
            // The seed lists dependencies by name only: any version will do.
            Some(Value::Array(items)) if self.format == ManifestFormat::Json => {
                for item in items {
                    let Value::String(name) = item else {
                        return Err(top.type_error(
                            "dependencies",
                            "an array of plugin names or an object",
                            item,
                        ));
                    };
                    deps.insert(dep_name(name)?, VersionReq::STAR);
                }
            }
            Some(other) => {
                let expected = match self.format {
                    ManifestFormat::Toml => "a table of version requirements",
                    _ => "an array of plugin names or an object",
                };
                return Err(top.type_error("dependencies", expected, other));
            }
        }
        if deps.contains_key(plugin) {
            return Err(Invalid::new(format!("Plugin `{plugin}` depends on itself"))
                .hint(format!("remove `{plugin}` from {label}")));
        }
        Ok(deps)
    }

    fn actions(&self, top: &Table<'_>) -> R<Vec<ActionSpec>> {
        let items = match top.get("actions") {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                let expected = match self.format {
                    ManifestFormat::Toml => "an array of tables (`[[actions]]`)",
                    _ => "an array of objects",
                };
                return Err(top.type_error("actions", expected, other));
            }
        };
        let mut actions: Vec<ActionSpec> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let label = match self.format {
                ManifestFormat::Toml => format!("`[[actions]]` number {}", i + 1),
                _ => format!("`actions[{i}]`"),
            };
            let Value::Object(map) = item else {
                return Err(Invalid::new(format!(
                    "{label} must be {}, found {}",
                    describe(&Value::Object(Map::new()), self.format),
                    describe(item, self.format)
                )));
            };
            let t = Table {
                map,
                label,
                format: self.format,
            };
            t.deny_unknown(ACTION_KEYS)?;
            let name = ActionName::new(t.required_string("name")?)
                .map_err(|e| Invalid::new(e.to_string()))?;
            if actions.iter().any(|a| a.name == name) {
                return Err(Invalid::new(format!("Action `{name}` is declared twice"))
                    .hint("give each action a unique `name`"));
            }
            let input = match t.get("input") {
                None => None,
                Some(schema @ Value::Object(_)) => Some(schema.clone()),
                Some(other) => {
                    return Err(t
                        .type_error("input", "a JSON Schema object", other)
                        .hint("describe the payload, like `{ type = \"object\" }`"));
                }
            };
            let input_schema = input
                .as_ref()
                .map(|raw| compile(raw, &format!("The `input` schema of {}", t.label)))
                .transpose()?;
            let hooks = t.strings("hooks")?;
            if let Some(empty) = hooks.iter().find(|h| h.trim().is_empty()) {
                return Err(Invalid::new(format!("Empty hook `{empty}` in {}", t.label)));
            }
            actions.push(ActionSpec {
                name,
                description: t.string("description")?.unwrap_or_default().to_owned(),
                input,
                hooks,
                input_schema,
            });
        }
        Ok(actions)
    }
}

/// Compiles a JSON Schema of the manifest; `what` names it at the start of an error.
fn compile(raw: &Value, what: &str) -> R<Schema> {
    Schema::new(raw).map_err(|e| {
        let text = e.to_string();
        match text.split_once("; hint: ") {
            Some((message, hint)) => {
                Invalid::new(format!("{what} is invalid: {message}")).hint(hint)
            }
            None => Invalid::new(format!("{what} is invalid: {text}")),
        }
    })
}

/// Refuses a `[params]` property whose `default` breaks its own schema: the plugin would start
/// with settings its manifest says are invalid.
///
/// Each default is checked alone, against the whole schema (so `$ref`s resolve), keeping only
/// the violations inside that property: a `required` setting without a default is not an error.
fn check_defaults(raw: &Value, schema: &Schema, label: &str) -> R<()> {
    let Some(properties) = raw.get("properties").and_then(Value::as_object) else {
        return Ok(());
    };
    for (name, property) in properties {
        let Some(default) = property.get("default") else {
            continue;
        };
        let instance = Value::Object(Map::from_iter([(name.clone(), default.clone())]));
        let Err(violations) = schema.validate(&instance) else {
            continue;
        };
        let pointer = format!("/{}", name.replace('~', "~0").replace('/', "~1"));
        let inside = |p: &str| p == pointer || p.starts_with(&format!("{pointer}/"));
        if let Some(v) = violations.iter().find(|v| inside(&v.pointer)) {
            return Err(Invalid::new(format!(
                "The default of `{name}` in {label} breaks its schema: {}",
                v.message
            ))
            .hint("change the `default` or the schema so that they agree"));
        }
    }
    Ok(())
}

fn schema(top: &Table<'_>) -> R<u32> {
    match top.get("schema") {
        None => Ok(SCHEMA_VERSION),
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {
            Ok(SCHEMA_VERSION)
        }
        Some(Value::Number(n)) => Err(Invalid::new(format!(
            "Manifest schema `{n}` is not supported; this plugd reads schema {SCHEMA_VERSION}"
        ))),
        Some(other) => Err(top.type_error("schema", "an integer", other)),
    }
}

/// TOML's top level names tables rather than keys, so its unknown-key message does too.
fn deny_unknown_toml_top(root: &Map<String, Value>) -> R<()> {
    let Some((key, value)) = root
        .iter()
        .find(|(k, _)| !TOML_TOP_KEYS.contains(&k.as_str()))
    else {
        return Ok(());
    };
    let (shown, candidates): (String, Vec<String>) = match value {
        Value::Object(_) => (
            format!("Unknown table `[{key}]`"),
            TOML_TOP_KEYS.iter().map(|k| format!("[{k}]")).collect(),
        ),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => (
            format!("Unknown table `[[{key}]]`"),
            TOML_TOP_KEYS.iter().map(|k| format!("[[{k}]]")).collect(),
        ),
        _ => (
            format!("Unknown top-level key `{key}`"),
            TOML_TOP_KEYS.iter().map(|k| (*k).to_owned()).collect(),
        ),
    };
    let candidates: Vec<&str> = candidates.iter().map(String::as_str).collect();
    let bracketed = match value {
        Value::Object(_) => format!("[{key}]"),
        Value::Array(_) => format!("[[{key}]]"),
        _ => key.clone(),
    };
    let err = Invalid::new(shown);
    Err(match did_you_mean(&bracketed, &candidates) {
        Some(near) => err.hint(format!("did you mean `{near}`?")),
        None => err.hint(format!("a manifest has only {}", backticked(TOML_TOP_KEYS))),
    })
}

/// Element 0 of a process entry: a bare program name (looked up on `PATH`) or a path inside
/// the package.
fn check_program(program: &str) -> R<()> {
    if program.is_empty() {
        return Err(Invalid::new("Entry program is empty")
            .hint("name a program like `python3` or a file in the package like `bin/run`"));
    }
    if program.starts_with('/') {
        let base = program.rsplit('/').next().unwrap_or(program);
        let base = if base.is_empty() { "python3" } else { base };
        return Err(Invalid::new(format!("Entry program `{program}` is an absolute path"))
            .hint(format!("use a bare program name like `{base}`, found on `PATH`, or a path inside the package")));
    }
    if program.contains('/') {
        check_inside(program, "Entry program")?;
    }
    Ok(())
}

/// Rejects absolute paths and `..` components; `what` names the path ("Entry argument", or
/// "Path in `fs.read`", which reads as "Path `x` in `fs.read`"). Works on `/`-separated text, so it also applies
/// to entry arguments that are not paths at all (a `--flag` passes; `--out=/x` is not a path
/// component and passes too: the sandbox, not this check, is the boundary).
fn check_inside(path: &str, what: &str) -> R<()> {
    let (what, place) = what
        .split_once(" in ")
        .map_or((what, String::new()), |(w, p)| (w, format!(" in {p}")));
    if path.starts_with('/') {
        return Err(
            Invalid::new(format!("{what} `{path}`{place} is an absolute path")).hint(INSIDE_HINT),
        );
    }
    if path.split('/').any(|c| c == "..") {
        return Err(
            Invalid::new(format!("{what} `{path}`{place} escapes the package")).hint(INSIDE_HINT),
        );
    }
    Ok(())
}

fn permissions(t: &Table<'_>) -> R<Permissions> {
    // `fs.read = [...]` in TOML is the table `fs = { read = [...] }`; JSON may write either form.
    let mut flat = Map::new();
    for (key, value) in t.map {
        match value {
            Value::Object(inner) => {
                for (sub, v) in inner {
                    flat.insert(format!("{key}.{sub}"), v.clone());
                }
            }
            _ => {
                flat.insert(key.clone(), value.clone());
            }
        }
    }
    let t = Table {
        map: &flat,
        label: t.label.clone(),
        format: t.format,
    };
    t.deny_unknown(PERMISSION_KEYS)?;

    let mut fs_read = Vec::new();
    for path in t.strings("fs.read")? {
        if path.is_empty() {
            return Err(
                Invalid::new("Empty path in `fs.read`").hint("use `.` for the whole package")
            );
        }
        check_inside(&path, "Path in `fs.read`")?;
        fs_read.push(PathBuf::from(path));
    }
    let net_connect = t.strings("net.connect")?;
    for target in &net_connect {
        check_host_port(target)?;
    }
    let env = t.strings("env")?;
    for var in &env {
        if !is_identifier(var, false) {
            return Err(Invalid::new(format!(
                "Invalid environment variable name `{var}` in `env`"
            ))
            .hint("use letters, digits and `_`, not starting with a digit"));
        }
    }
    let mut services = Vec::new();
    let mut app_services = Vec::new();
    for s in t.strings("services")? {
        // `app:NAME` names a service of the embedding application; host services keep their
        // fixed names, so a typo stays an error.
        if let Some(name) = s.strip_prefix("app:") {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(Invalid::new(format!(
                    "Invalid application service `{s}` in `services`"
                ))
                .hint("write `app:NAME` with letters, digits, `-`, `_` or `.`, like `app:db`"));
            }
            if !app_services.iter().any(|a| a == name) {
                app_services.push(name.to_owned());
            }
            continue;
        }
        let service: Service = s.parse().map_err(|e: crate::UnknownValueError| {
            let text = e.to_string();
            match text.split_once("; hint: ") {
                Some((message, hint)) => Invalid::new(message).hint(hint),
                None => Invalid::new(text),
            }
        })?;
        if !services.contains(&service) {
            services.push(service);
        }
    }
    let imports = t.strings("imports")?;
    for module in &imports {
        if !module.split('.').all(|part| is_identifier(part, true)) {
            return Err(
                Invalid::new(format!("Invalid module name `{module}` in `imports`"))
                    .hint("use Python module names like `json` or `urllib.parse`"),
            );
        }
    }
    Ok(Permissions {
        fs_read,
        net_connect,
        env,
        services,
        app_services,
        imports,
    })
}

/// `[A-Za-z_][A-Za-z0-9_]*`, plus non-ASCII letters when `unicode` (Python identifiers).
fn is_identifier(s: &str, unicode: bool) -> bool {
    let letter = |c: char| c == '_' || c.is_ascii_alphabetic() || (unicode && c.is_alphabetic());
    let mut chars = s.chars();
    chars.next().is_some_and(letter) && chars.all(|c| letter(c) || c.is_ascii_digit())
}

/// `host:port`, where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
fn check_host_port(s: &str) -> R<()> {
    let bad = |why: &str| {
        Invalid::new(format!("Invalid `net.connect` entry `{s}`: {why}"))
            .hint("write `host:port`, like `api.example.org:443` or `[::1]:8080`")
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| bad("expected `[address]:port`"))?;
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(bad("the IPv6 address is not valid"));
        }
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("there is no port"))?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if host.is_empty() || !host.split('.').all(label_ok) {
            return Err(bad("the host is not a valid name or address"));
        }
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && !host.is_empty() => Ok(()),
        _ => Err(bad("the port must be a number from 1 to 65535")),
    }
}

fn limits(t: &Table<'_>) -> R<Limits> {
    t.deny_unknown(LIMIT_KEYS)?;
    let defaults = Limits::default();
    let memory = size(t, "memory", defaults.memory)?;
    let disk = size(t, "disk", defaults.disk)?;
    let storage = size(t, "storage", defaults.storage)?;
    let cpu = duration(t, "cpu", defaults.cpu)?;
    let call_timeout = duration(t, "call_timeout", defaults.call_timeout)?;
    let concurrency = count(
        t,
        "concurrency",
        defaults.concurrency,
        "it is the number of calls the plugin may serve at once",
    )?;
    let tasks = count(
        t,
        "tasks",
        defaults.tasks,
        "it is the number of background tasks the plugin may run at once",
    )?;
    let task_timeout = duration(t, "task_timeout", defaults.task_timeout)?;
    let rate = rate(t)?;
    Ok(Limits {
        memory,
        disk,
        storage,
        cpu,
        call_timeout,
        concurrency,
        tasks,
        task_timeout,
        rate,
    })
}

/// The most calls a `limits.rate` window may count: the host keeps one timestamp per call.
pub(crate) const MAX_RATE_CALLS: u32 = 100_000;

/// `rate = { calls = 100, per = "60s" }`.
fn rate(t: &Table<'_>) -> R<Option<Rate>> {
    let hint = "write `rate = { calls = 100, per = \"60s\" }`: at most 100 calls in any 60 seconds";
    let Some(r) = t.table("rate", "`limits.rate`".to_owned())? else {
        return Ok(None);
    };
    r.deny_unknown(&["calls", "per"])?;
    let calls = match r.get("calls") {
        None => return Err(r.missing("calls").hint(hint)),
        Some(_) => count(&r, "calls", 1, hint)?,
    };
    if r.get("per").is_none() {
        return Err(r.missing("per").hint(hint));
    }
    if calls > MAX_RATE_CALLS {
        return Err(Invalid::new(format!(
            "`calls` in `limits.rate` is {calls}, more than the {MAX_RATE_CALLS} plugd counts per window"
        ))
        .hint("use a shorter `per` with fewer `calls`, like `{ calls = 1000, per = \"1s\" }`"));
    }
    let per = duration(&r, "per", Duration::from_secs(1))?;
    Ok(Some(Rate { calls, per }))
}

/// A whole number of at least 1 (`concurrency`, `tasks`).
fn count(t: &Table<'_>, key: &str, default: u32, meaning: &str) -> R<u32> {
    match t.get(key) {
        None => Ok(default),
        Some(Value::Number(n))
            if n.as_u64()
                .is_some_and(|c| c >= 1 && c <= u64::from(u32::MAX)) =>
        {
            Ok(u32::try_from(n.as_u64().unwrap_or(1)).unwrap_or(1))
        }
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Err(Invalid::new(format!(
            "Key `{key}` in {} must be at least 1, found `{n}`",
            t.label
        ))
        .hint(meaning)),
        Some(other) => Err(t.type_error(key, "a whole number", other)),
    }
}

fn size(t: &Table<'_>, key: &str, default: u64) -> R<u64> {
    let bytes = match t.get(key) {
        None => default,
        Some(Value::String(s)) => crate::units::size(s).map_err(|why| {
            Invalid::new(format!(
                "Invalid size `{s}` for `{key}` in {}: {why}",
                t.label
            ))
            .hint(SIZE_HINT)
        })?,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or_default(),
        Some(other) => return Err(t.type_error(key, "a size like `\"256MiB\"`", other)),
    };
    if bytes == 0 {
        return Err(
            Invalid::new(format!("Key `{key}` in {} must be more than 0", t.label)).hint(SIZE_HINT),
        );
    }
    Ok(bytes)
}

fn duration(t: &Table<'_>, key: &str, default: Duration) -> R<Duration> {
    let d = match t.get(key) {
        None => return Ok(default),
        Some(Value::String(s)) => crate::units::duration(s).map_err(|why| {
            Invalid::new(format!(
                "Invalid duration `{s}` for `{key}` in {}: {why}",
                t.label
            ))
            .hint(DURATION_HINT)
        })?,
        Some(other) => {
            return Err(t
                .type_error(key, "a duration string", other)
                .hint(format!("write it with a unit, like `{key} = \"5s\"`")));
        }
    };
    if d.is_zero() {
        return Err(
            Invalid::new(format!("Key `{key}` in {} must be more than 0", t.label))
                .hint(DURATION_HINT),
        );
    }
    Ok(d)
}

fn events(t: &Table<'_>) -> R<Events> {
    t.deny_unknown(EVENT_KEYS)?;
    let subscribe = t.strings("subscribe")?;
    for topic in &subscribe {
        if !is_topic_pattern(topic) {
            return Err(Invalid::new(format!("Invalid event topic `{topic}` in `subscribe`"))
                .hint("use lower-case dot-separated words of letters, digits, `_` and `-`, like `image.imported`, optionally ending in `.*`; `*` alone is every topic"));
        }
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = subscribe.iter().find(|t| !seen.insert(t.as_str())) {
        return Err(Invalid::new(format!(
            "Event topic `{dup}` is subscribed twice"
        )));
    }
    Ok(Events { subscribe })
}

fn python(t: &Table<'_>, runtime: RuntimeKind) -> R<Python> {
    t.deny_unknown(PYTHON_KEYS)?;
    if runtime != RuntimeKind::Process {
        return Err(Invalid::new(format!(
            "{} is for process plugins; this plugin's runtime is `{runtime}`",
            t.label
        ))
        .hint("a wasm component carries its dependencies inside it: remove the table"));
    }
    let requirements = t.strings("requirements")?;
    for req in &requirements {
        let trimmed = req.trim();
        if trimmed.is_empty() || trimmed.contains(['\n', '\r']) {
            return Err(Invalid::new(format!(
                "Invalid requirement `{}` in `requirements` of {}: it must be one non-blank line",
                req.escape_debug(),
                t.label
            )));
        }
        if trimmed.starts_with('-') {
            return Err(Invalid::new(format!(
                "Requirement `{trimmed}` in `requirements` of {} is an installer option, which plugd does not pass on",
                t.label
            ))
            .hint("list package requirements only, like `fastapi>=0.110`; plugd resolves them from the index it is configured with"));
        }
    }
    Ok(Python { requirements })
}

fn http(t: &Table<'_>, runtime: RuntimeKind) -> R<Http> {
    t.deny_unknown(HTTP_KEYS)?;
    if runtime != RuntimeKind::Process {
        return Err(Invalid::new(format!(
            "{} is for process plugins; wasm components cannot serve HTTP in plugd yet",
            t.label
        ))
        .hint("serve HTTP from a process plugin (Python: `plugin.serve_asgi(app)`), or remove the table"));
    }
    let path = |key: &str| -> R<Option<String>> {
        let Some(p) = t.string(key)? else {
            return Ok(None);
        };
        let valid = p.starts_with('/')
            && p.len() > 1
            && !p.ends_with('/')
            && p[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
            });
        if !valid {
            return Err(Invalid::new(format!(
                "Invalid path `{p}` for `{key}` in {}",
                t.label
            ))
            .hint("write an absolute URL path like `/client-manager`: `/`-separated segments of letters, digits, `-`, `.`, `_` and `~`, no trailing `/`"));
        }
        Ok(Some(p.to_owned()))
    };
    let mount = path("mount")?;
    if let Some(m) = &mount {
        let first = m
            .split('/')
            .nth(1)
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        if crate::RESERVED_PATHS.contains(&first.as_str()) {
            return Err(Invalid::new(format!(
                "`mount = \"{m}\"` in {} would shadow `{first}`, which the host serves itself",
                t.label
            ))
            .hint(format!(
                "pick another prefix; the host keeps {}",
                crate::RESERVED_PATHS
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let expose = match t.get("expose") {
        None => None,
        Some(Value::Number(n)) => match n.as_u64().filter(|p| (1..=65535).contains(p)) {
            Some(port) => Some(port as u16),
            None => {
                return Err(Invalid::new(format!(
                    "Key `expose` in {} must be a TCP port from 1 to 65535, found `{n}`",
                    t.label
                )));
            }
        },
        Some(other) => return Err(t.type_error("expose", "a TCP port number", other)),
    };
    let health = path("health")?;
    Ok(Http {
        mount,
        expose,
        health,
    })
}

/// `word(.word)*` with an optional trailing `.*`; words are `[a-z0-9_-]+`.
fn is_topic_pattern(topic: &str) -> bool {
    if topic == "*" {
        return true;
    }
    let exact = topic.strip_suffix(".*").unwrap_or(topic);
    !exact.is_empty()
        && exact.split('.').all(|word| {
            !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        })
}
