//! Typed, validated plugin manifests: `plugin.toml` (native) and `plugin.json` (seed format).
//!
//! Everything downstream trusts these values: names are validated newtypes, versions are semver,
//! entry paths stay inside the package, sizes and durations are parsed into numbers.
//!
//! # Reading
//! [`Manifest::load`] reads a package directory: `plugin.toml` if present, else `plugin.json`
//! (when both exist `plugin.toml` wins and [`Manifest::warnings`] says so).
//! [`Manifest::from_toml_str`] and [`Manifest::from_json_str`] read text. Every error is a
//! [`ManifestError`] whose message is one user-facing line, naming the file when there is one.
//!
//! # Policy
//! - **Unknown keys are errors**, anywhere in `plugin.toml` and in `plugin.json`, naming the key
//!   and its table, with a "did you mean" hint when a known key is at most two edits away. A
//!   typo such as `verison` or `[limit]` must not silently drop a limit or a permission. The one
//!   exception is the seed's `class_path`, accepted in `plugin.json` with a warning.
//! - `schema` is optional and defaults to 1; any other value is refused.
//! - `[plugin] runtime` and `entry` are required in `plugin.toml`. `plugin.json` (the seed
//!   format) defaults to `runtime = "process"` and `entry = ["python3", "main.py"]`, with a
//!   warning for the latter.
//! - Paths stay inside the package: `fs.read` paths, a wasm entry and every process entry
//!   argument may be neither absolute nor contain a `..` component. Element 0 of a process
//!   entry may be a bare program name (`python3`, looked up on `PATH` when the plugin starts)
//!   or a package-relative path (`bin/run`); an absolute program path (`/bin/sh`) is refused.
//!   Arguments are checked as `/`-separated text, not parsed as options: `--out=/tmp` passes.
//!   These checks catch mistakes; the sandbox is what confines a plugin.
//! - `[limits]` defaults: `memory = "256MiB"`, `cpu = "10s"`, `call_timeout = "5s"`,
//!   `concurrency = 64`. Sizes and durations must be more than zero; `memory` may also be a
//!   plain integer of bytes.
//! - `[params]` and each action's `input` are JSON Schemas (draft 2020-12 by default), compiled
//!   when the manifest is read ([`Manifest::params_schema`], [`ActionSpec::input_schema`]) and
//!   kept as written ([`Manifest::params`], [`ActionSpec::input`]). A schema that does not
//!   compile, names an unknown `type` or `format`, or has a `$ref` to a file or URL (only local
//!   `#...` references) is refused. `[params]` must have `type = "object"`, and each
//!   property's `default` must satisfy it.
//! - **The manifest is the contract**: its `[[actions]]` are the actions the plugin offers. A
//!   runtime compares what the code announces with [`Manifest::check_announced`].
//!
//! The reference for plugin authors is `docs/manifest.md`, tested against this parser.
#![warn(missing_docs)]

mod error;
pub mod foreign;
mod kinds;
mod name;
mod parse;
mod schema;
mod suggest;
mod units;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use semver::{Version, VersionReq};

pub use crate::error::ManifestError;
pub use crate::foreign::{Change, Dialect, Foreign, map_name};
pub use crate::kinds::UnknownValueError;
pub use crate::name::{MAX_NAME_LEN, NameError};
pub use crate::schema::{MAX_VIOLATIONS, Schema, SchemaError, Violation};
pub use crate::units::{parse_duration, parse_size};

/// File name of the native manifest.
pub const TOML_MANIFEST: &str = "plugin.toml";
/// File name of the seed-compatible manifest.
pub const JSON_MANIFEST: &str = "plugin.json";
/// The manifest schema version this crate reads.
pub const SCHEMA_VERSION: u32 = 1;

/// A plugin's identifier: `^[a-z][a-z0-9_-]{0,63}$`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PluginName(String);

/// An action's identifier: `^[a-z_][a-z0-9_.-]{0,63}$`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActionName(String);

/// What a plugin is for (informational; from the seed's plugin categories).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PluginKind {
    /// Offers data or services to others.
    Provider,
    /// Transforms data.
    Processor,
    /// Stores data.
    Storage,
    /// Watches something.
    Monitor,
    /// Anything else (default).
    #[default]
    Other,
}

/// How the plugin's code runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    /// A child process speaking protocol v1 on fd 3.
    Process,
    /// A WebAssembly component run by wasmtime.
    Wasm,
}

/// Which file the manifest was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestFormat {
    /// `plugin.toml`.
    Toml,
    /// `plugin.json`.
    Json,
    /// `plugin.yaml` (xcore).
    Yaml,
    /// No manifest: an image-tool package's `__init__.py`.
    Python,
}

/// A validated plugin manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// Manifest schema version (currently always 1).
    pub schema: u32,
    /// Plugin name.
    pub name: PluginName,
    /// Plugin version.
    pub version: Version,
    /// One-line description.
    pub description: String,
    /// Authors, free text.
    pub authors: Vec<String>,
    /// Category.
    pub kind: PluginKind,
    /// Runtime.
    pub runtime: RuntimeKind,
    /// Process: argv, element 0 is a program on `PATH` or a package-relative path, the rest are
    /// arguments (package-relative paths stay inside the package). Wasm: one element, the
    /// package-relative component file.
    pub entry: Vec<String>,
    /// Other plugins this one needs, with semver requirements.
    pub dependencies: BTreeMap<PluginName, VersionReq>,
    /// Requested capabilities.
    pub permissions: Permissions,
    /// Resource limits.
    pub limits: Limits,
    /// JSON Schema of the plugin's settings, if any, as written (see [`Manifest::params_schema`]).
    pub params: Option<serde_json::Value>,
    /// Declared actions: the contract the plugin's code must implement (see
    /// [`Manifest::check_announced`]).
    pub actions: Vec<ActionSpec>,
    /// Event subscriptions.
    pub events: Events,
    /// Python dependencies (`[python]`); the package's `requirements.txt` is read by the host.
    pub python: Python,
    /// The plugin's own HTTP side (`[http]`), if it serves one.
    pub http: Option<Http>,
    /// Which file this came from.
    pub format: ManifestFormat,
    /// Non-fatal findings (e.g. ignored seed keys), each a user-facing sentence.
    pub warnings: Vec<String>,
    /// A package written for another plugin system: what it said and how it was translated.
    /// Its actions are whatever the running plugin announces (it declares none).
    pub foreign: Option<Foreign>,
    /// `params`, compiled.
    params_schema: Option<Schema>,
}

/// Capabilities a plugin asks for. Parsed now, enforced by the sandbox / wasm runtime.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Permissions {
    /// Package-relative paths the plugin may read (the data dir is always read-write).
    pub fs_read: Vec<PathBuf>,
    /// `host:port` pairs the plugin may connect to.
    pub net_connect: Vec<String>,
    /// Host environment variables passed through.
    pub env: Vec<String>,
    /// Host services the plugin may use.
    pub services: Vec<Service>,
    /// Services of the embedding application it may call (`app:NAME` in `services`), by name.
    pub app_services: Vec<String>,
    /// Advisory Python import allow-list (the kernel layers are the boundary).
    pub imports: Vec<String>,
}

/// A host service a plugin may request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// Per-plugin key-value store.
    Kv,
    /// Publish events.
    Events,
    /// Submit background tasks.
    Tasks,
    /// Outgoing HTTP.
    Http,
    /// Call declared dependencies.
    Plugins,
}

/// Resource limits, with defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Memory in bytes (default 256 MiB).
    pub memory: u64,
    /// Bytes the plugin's data dir may hold (default 1 GiB).
    pub disk: u64,
    /// Bytes the plugin may keep in its kv store (keys + values; default 64 MiB).
    pub storage: u64,
    /// CPU time one call may use (default 10 s).
    pub cpu: Duration,
    /// Per-call wall-clock timeout (default 5 s).
    pub call_timeout: Duration,
    /// Maximum in-flight calls (default 64).
    pub concurrency: u32,
    /// Background tasks the plugin runs at once, apart from its calls (default 4).
    pub tasks: u32,
    /// Wall-clock time one task run may take (default 10 minutes).
    pub task_timeout: Duration,
    /// Calls the plugin accepts per period (`rate = { calls = 100, per = "60s" }`); more are
    /// refused with 429 until the window moves on. `None` (the default): no rate limit.
    pub rate: Option<Rate>,
}

/// A call rate limit: at most `calls` calls in any window of `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Calls allowed per window (at least 1).
    pub calls: u32,
    /// The window.
    pub per: Duration,
}

/// One declared action.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionSpec {
    /// Action name.
    pub name: ActionName,
    /// Human description.
    pub description: String,
    /// JSON Schema of the input payload, if given, as written (see [`ActionSpec::input_schema`]).
    pub input: Option<serde_json::Value>,
    /// UI hooks (seed: `execute`, `group`, `vector`, ...).
    pub hooks: Vec<String>,
    /// `input`, compiled.
    input_schema: Option<Schema>,
}

/// Event subscriptions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Events {
    /// Topics this plugin receives (exact match, or a prefix ending in `.*`).
    pub subscribe: Vec<String>,
}

/// Python dependencies of a process plugin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Python {
    /// Requirement specifiers (PEP 508, like `fastapi>=0.110`), as written. Options (`-r`,
    /// `--index-url`, `-e`) are refused. Empty: none here (the package may still ship a
    /// `requirements.txt`).
    pub requirements: Vec<String>,
}

/// The plugin serves HTTP (and WebSocket) itself; the host proxies to it over a Unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Http {
    /// Extra path prefix on the host's server, like `/client-manager` (the plugin is always
    /// reachable under `/plugins/NAME`). Starts with `/`, no trailing `/`, never a path the
    /// host serves itself (see [`RESERVED_PATHS`]).
    pub mount: Option<String>,
    /// A TCP port the host listens on and forwards to the plugin, when the operator allows it.
    pub expose: Option<u16>,
    /// A path of the plugin's HTTP side the host polls for its health, like `/health`.
    pub health: Option<String>,
}

/// First path segments the host serves itself: no plugin's `[http] mount` may start with one.
pub const RESERVED_PATHS: &[&str] = &[
    "/api",
    "/plugin",
    "/plugins",
    "/ui",
    "/metrics",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/.well-known",
];

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 256 * 1024 * 1024,
            disk: 1024 * 1024 * 1024,
            storage: 64 * 1024 * 1024,
            cpu: Duration::from_secs(10),
            call_timeout: Duration::from_secs(5),
            concurrency: 64,
            tasks: 4,
            task_timeout: Duration::from_secs(600),
            rate: None,
        }
    }
}

/// How the actions a plugin's code announces differ from those its manifest declares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActionMismatch {
    /// Declared in the manifest but not announced: the code breaks the contract.
    pub missing: Vec<ActionName>,
    /// Announced but not declared: outside the contract.
    pub extra: Vec<ActionName>,
}

impl ActionMismatch {
    /// Whether the code offers exactly the declared actions.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty()
    }
}

impl ActionSpec {
    /// The compiled `input` schema, to validate each call's payload against; `None` when the
    /// action declares no schema (any JSON payload is accepted).
    pub fn input_schema(&self) -> Option<&Schema> {
        self.input_schema.as_ref()
    }
}

impl Manifest {
    /// Parses and validates `plugin.toml` text.
    pub fn from_toml_str(src: &str) -> Result<Manifest, ManifestError> {
        parse::parse_toml(src)
    }

    /// Parses and validates `plugin.json` text (the seed format, optionally with the
    /// `plugin.toml` fields flattened into the top-level object), or a foreign `plugin.json`
    /// (class-based with `class_path`, xcore with `execution_mode` or `entry_point`), which is
    /// translated (see [`foreign`]).
    pub fn from_json_str(src: &str) -> Result<Manifest, ManifestError> {
        parse::parse_json(src)
    }

    /// Parses and translates an xcore `plugin.yaml`.
    pub fn from_yaml_str(src: &str) -> Result<Manifest, ManifestError> {
        parse::parse_foreign_text(src, foreign::Dialect::Xcore, foreign::YAML_MANIFEST)
    }

    /// The compiled `[params]` schema, if the manifest has one.
    pub fn params_schema(&self) -> Option<&Schema> {
        self.params_schema.as_ref()
    }

    /// The defaults declared in `[params]` (`properties.NAME.default`), as one JSON object; an
    /// empty object when there are none.
    pub fn default_params(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        if let Some(properties) = self
            .params
            .as_ref()
            .and_then(|p| p.get("properties"))
            .and_then(serde_json::Value::as_object)
        {
            for (key, schema) in properties {
                if let Some(default) = schema.get("default") {
                    out.insert(key.clone(), default.clone());
                }
            }
        }
        serde_json::Value::Object(out)
    }

    /// The declared action called `name`.
    pub fn action(&self, name: &str) -> Option<&ActionSpec> {
        self.actions.iter().find(|a| a.name.as_str() == name)
    }

    /// Compares the actions the plugin's code announces (at the process handshake, or in a wasm
    /// component's `describe`) with the declared ones. The manifest is the contract: a
    /// `missing` action means the code does not implement it; an `extra` one is not part of it.
    /// Both lists are in the order given (declared order for `missing`).
    pub fn check_announced<'a>(
        &self,
        announced: impl IntoIterator<Item = &'a ActionName>,
    ) -> ActionMismatch {
        let announced: Vec<&ActionName> = announced.into_iter().collect();
        let missing = self
            .actions
            .iter()
            .filter(|a| !announced.contains(&&a.name))
            .map(|a| a.name.clone())
            .collect();
        let mut extra: Vec<ActionName> = Vec::new();
        for name in announced {
            if self.action(name.as_str()).is_none() && !extra.contains(name) {
                extra.push(name.clone());
            }
        }
        ActionMismatch { missing, extra }
    }

    /// Every key the reader accepts in `format`, as dotted paths (`plugin.name`,
    /// `limits.memory`, `actions.input`, `permissions.fs.read`); `dependencies` and `params`
    /// hold free-form content and are one key each. `docs/manifest.md` documents exactly these.
    pub fn known_keys(format: ManifestFormat) -> Vec<String> {
        parse::known_keys(format)
    }

    /// Reads the manifest of the package in `dir`, in this order: `plugin.toml`; `plugin.json`
    /// (plugd's own form or a foreign one, told apart by its keys); then the foreign forms
    /// `plugin.yaml` / `plugin.yml` (xcore), `manifest.json` (class-based) and an `__init__.py`
    /// that sets `plugin_class` (image tool), each translated (see [`foreign`]).
    ///
    /// When a later candidate is also present a warning says it was ignored.
    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        Manifest::load_staged(dir, dir)
    }

    /// Reads the manifest of a copy of a package (a staged copy, whose directory name is not
    /// the package's): as [`Manifest::load`] of `dir`, except that an image-tool plugin, which
    /// is named after its directory, takes its name from `original`.
    pub fn load_staged(dir: &Path, original: &Path) -> Result<Manifest, ManifestError> {
        let toml_path = dir.join(TOML_MANIFEST);
        let json_path = dir.join(JSON_MANIFEST);
        let mut manifest = if let Some(src) = read_if_exists(&toml_path)? {
            Manifest::from_toml_str(&src).map_err(|e| e.in_file(&toml_path))?
        } else if let Some(src) = read_if_exists(&json_path)? {
            // Read once: its keys say which dialect it is (see `parse::parse_json_in`).
            parse::parse_json_in(&src, dir).map_err(|e| e.in_file(&json_path))?
        } else if let Some((dialect, file)) = foreign::detect(dir) {
            let (native, foreign) = foreign::read(dir, original, dialect, file)?;
            let path = dir.join(file);
            parse::from_native_tree(&native, foreign).map_err(|e| e.in_file(&path))?
        } else {
            return Err(ManifestError::NotFound {
                dir: dir.to_owned(),
            });
        };
        let read = manifest
            .foreign
            .as_ref()
            .map_or(manifest.format.file_name(), |f| f.file);
        for other in [
            TOML_MANIFEST,
            JSON_MANIFEST,
            foreign::YAML_MANIFEST,
            foreign::YML_MANIFEST,
            foreign::CLASS_MANIFEST,
        ] {
            if other != read && dir.join(other).is_file() {
                manifest.warnings.push(format!(
                    "Both `{read}` and `{other}` are in `{}`; `{other}` is ignored; hint: delete `{other}`",
                    dir.display()
                ));
            }
        }
        Ok(manifest)
    }
}

fn read_if_exists(path: &Path) -> Result<Option<String>, ManifestError> {
    match fs::read_to_string(path) {
        Ok(src) => Ok(Some(src)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ManifestError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}
