//! plugd's script manager: stand-alone Python scripts with immutable, content-addressed
//! versions, templates, import/export, static checks, per-version dependency locks and confined
//! runs with live progress, CPU and memory, and a history.
//!
//! [`Scripts`] is the one entry point; the HTTP API and the CLI are thin layers over it. Its
//! parts:
//! - [`meta`]: what a script says about itself (its PEP 723 block) and the overrides of CLI
//!   flags and API fields;
//! - [`check`]: static validation with a real Python parser;
//! - [`template`]: `{{ variable }}` templates with typed variables;
//! - [`archive`]: export and import archives, optionally signed;
//! - [`run`]: one confined run (the same `plugd-sandbox` as process plugins).
#![warn(missing_docs)]

pub mod archive;
pub mod check;
pub mod meta;
pub mod run;
pub mod template;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use plugd_host::PythonConfig;
use plugd_process::SandboxConfig;
use plugd_store::{
    AddMode, NewRun, NewScriptVersion, RunRecord, ScriptRecord, ScriptVersion, Store, StoreError,
    TemplateRecord,
};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::task::JoinHandle;

use crate::check::{Problem, Severity};
use crate::meta::{Meta, Overrides};
use crate::run::{Active, Job, Outcome, RunEvent, Snapshot};
use crate::template::Var;

/// Script runs that ended, by `state` (`succeeded`, `failed`, `killed`, `cancelled`).
pub const RUNS_TOTAL: &str = "plugd_script_runs_total";
/// How long runs took from start to end, in seconds.
pub const RUN_DURATION: &str = "plugd_script_run_duration_seconds";
/// Runs queued or running now.
pub const RUNS_ACTIVE: &str = "plugd_script_runs_active";

/// Describes the script manager's metrics to the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        RUNS_TOTAL,
        "Script runs that ended, by state (succeeded, failed, killed, cancelled)"
    );
    metrics::describe_histogram!(
        RUN_DURATION,
        metrics::Unit::Seconds,
        "How long a script run took, from its process's start to its end"
    );
    metrics::describe_gauge!(RUNS_ACTIVE, "Script runs queued or running now");
}

/// How the script manager runs scripts and where it keeps them.
#[derive(Clone, Debug)]
pub struct ScriptsConfig {
    /// plugd's state dir: code in `STATE/scripts/code`, work dirs in `STATE/scripts/work`,
    /// environments in `STATE/envs` (shared with plugins).
    pub state_dir: PathBuf,
    /// Where `uv` comes from and which index it uses.
    pub python: PythonConfig,
    /// The environment every run gets (`PATH`, `PYTHONPATH` with the SDK, ...), as for
    /// process plugins.
    pub base_env: Vec<(OsString, OsString)>,
    /// The kernel sandbox; `None` runs scripts unconfined (development only).
    pub sandbox: Option<SandboxConfig>,
    /// How many runs at once (`serve --max-runs`, default: the number of cores).
    pub max_runs: usize,
    /// How many runs may wait for a slot before new ones are refused (429).
    pub max_queued: usize,
    /// How often a running script's CPU and memory are sampled.
    pub sample_interval: Duration,
    /// How long finished runs are kept (`0`: forever).
    pub retention: Duration,
    /// The trust store that verifies signed archives.
    pub trust_dir: PathBuf,
    /// Refuse unsigned archives on import.
    pub strict: bool,
    /// TCP ports no script may be granted: the server's own (`serve` sets its listen and exposed
    /// ports). Landlock filters by port on every host, loopback included, so a grant of the
    /// API's port would reach the API.
    pub forbidden_ports: Vec<u16>,
}

impl ScriptsConfig {
    /// Defaults for `state_dir`: the process runtime's child environment and sandbox, one run
    /// per core, 1,000 queued, a sample every 250 ms, 7 days of history.
    pub fn new(state_dir: impl Into<PathBuf>) -> ScriptsConfig {
        let state_dir = state_dir.into();
        ScriptsConfig {
            trust_dir: state_dir.join("trust"),
            state_dir,
            python: PythonConfig::default(),
            base_env: plugd_process::ProcessConfig::default().base_env,
            sandbox: Some(SandboxConfig::default()),
            max_runs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_queued: 1000,
            sample_interval: Duration::from_millis(250),
            retention: Duration::from_secs(7 * 24 * 3600),
            strict: false,
            forbidden_ports: Vec::new(),
        }
    }

    /// Refuses grants no script may have, whoever asks: plugd's own state (the store, other
    /// runs' work dirs, the trust store), the kernel's and the host's runtime trees, and the
    /// server's own ports.
    fn check_grants(&self, who: &str, meta: &Meta) -> Result<(), ScriptError> {
        let mut roots: Vec<PathBuf> = [
            "/proc",
            "/sys",
            "/run",
            "/dev",
            "/var/run",
            "/var/lib/plugd",
            "/boot",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        roots.push(self.state_dir.clone());
        roots.push(self.trust_dir.clone());
        if let Ok(real) = std::fs::canonicalize(&self.state_dir) {
            roots.push(real);
        }
        let p = &meta.permissions;
        for path in p.read.iter().chain(&p.write) {
            if let Some(root) = roots
                .iter()
                .find(|root| path.starts_with(root) || root.starts_with(path))
            {
                return Err(ScriptError::bad(format!(
                    "{who}: `allowed_paths` has `{}`, which overlaps `{}`, where no script may reach (plugd's state, the kernel's or the host's runtime files); hint: grant a directory of its own",
                    path.display(),
                    root.display()
                )));
            }
        }
        for target in &p.network {
            let port = target
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok());
            if let Some(port) = port.filter(|port| self.forbidden_ports.contains(port)) {
                return Err(ScriptError::bad(format!(
                    "{who}: `network` grants port {port}, plugd's own (the kernel filters by port on every host, loopback included, so it would reach this server); hint: use another port"
                )));
            }
        }
        Ok(())
    }

    /// Paths every run can read besides what its metadata grants: the static check does not
    /// flag literal paths under them.
    fn reachable(&self) -> Vec<PathBuf> {
        let mut paths = self
            .sandbox
            .as_ref()
            .map(|s| s.read_paths.clone())
            .unwrap_or_else(|| SandboxConfig::default().read_paths);
        for (key, value) in &self.base_env {
            if key == "PYTHONPATH" {
                paths.extend(std::env::split_paths(value));
            }
        }
        paths
    }
}

/// Why a script operation was refused, with a stable code (the API's status table) and, for a
/// script that fails its checks, every problem.
#[derive(Clone, Debug, thiserror::Error, Serialize)]
#[error("{message}")]
pub struct ScriptError {
    /// `bad_request`, `invalid_script`, `not_found`, `conflict`, `overloaded`, `untrusted` or
    /// `internal`.
    pub code: &'static str,
    /// What went wrong, with the fix where known.
    pub message: String,
    /// The static check's findings, when that is why.
    pub problems: Vec<Problem>,
    /// Further items (a template's missing variables, ...), one sentence each.
    pub details: Vec<String>,
}

impl ScriptError {
    fn new(code: &'static str, message: impl Into<String>) -> ScriptError {
        ScriptError {
            code,
            message: message.into(),
            problems: Vec::new(),
            details: Vec::new(),
        }
    }

    fn bad(message: impl Into<String>) -> ScriptError {
        ScriptError::new("bad_request", message)
    }

    fn internal(message: impl Into<String>) -> ScriptError {
        ScriptError::new("internal", message)
    }
}

impl From<StoreError> for ScriptError {
    fn from(e: StoreError) -> ScriptError {
        let code = match e.code() {
            "not_found" => "not_found",
            "conflict" => "conflict",
            "overloaded" => "overloaded",
            "bad_request" => "bad_request",
            _ => "internal",
        };
        ScriptError::new(code, e.to_string())
    }
}

/// A script as listings show it: its current version's metadata.
#[derive(Clone, Debug, Serialize)]
pub struct ScriptInfo {
    /// Its id.
    pub id: String,
    /// The version runs use.
    pub current: u64,
    /// The newest version.
    pub latest: u64,
    /// The current version's digest.
    pub digest: String,
    /// The current version's metadata.
    pub meta: Meta,
    /// When it was registered.
    pub created_at_ms: u64,
    /// When it last changed.
    pub updated_at_ms: u64,
}

/// One version, with its source and lock when asked for.
#[derive(Clone, Debug, Serialize)]
pub struct VersionInfo {
    /// The script.
    pub script_id: String,
    /// Its number.
    pub version: u64,
    /// Its digest.
    pub digest: String,
    /// Whether runs use it.
    pub current: bool,
    /// Its metadata.
    pub meta: Meta,
    /// How many distributions its lock pins.
    pub locked_packages: usize,
    /// When it was added.
    pub created_at_ms: u64,
    /// Its source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Its lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
}

/// What [`Scripts::add`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Added {
    /// The script now.
    pub script: ScriptInfo,
    /// The version that holds the content.
    pub version: u64,
    /// `false` when an earlier version had the same content (it was made current).
    pub created: bool,
    /// The static check's warnings (errors refuse the script).
    pub warnings: Vec<Problem>,
}

/// A script to add or edit.
#[derive(Clone, Debug, Default)]
pub struct AddRequest {
    /// The id; `None`: the script's `[tool.plugd] id`.
    pub id: Option<String>,
    /// The Python source.
    pub source: String,
    /// Flags or API fields that override the script's own metadata.
    pub overrides: Overrides,
}

/// Which scripts [`Scripts::list`] shows.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only those with this tag.
    pub tag: Option<String>,
    /// Only those in this category.
    pub category: Option<String>,
    /// Only those whose id, name or description contains this (case-insensitive).
    pub search: Option<String>,
}

/// What to run.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one per run request, never stored in bulk
pub enum RunTarget {
    /// A registered script, at a version (`None`: the current one).
    Script {
        /// Its id.
        id: String,
        /// Its version.
        version: Option<u64>,
    },
    /// A file's source, run without registering it (still confined, still recorded).
    Source {
        /// The file's name, for the record.
        name: String,
        /// Its text.
        source: String,
        /// Overrides of its metadata.
        overrides: Overrides,
    },
}

/// A run to start.
#[derive(Clone, Debug)]
pub struct RunRequest {
    /// What to run.
    pub target: RunTarget,
    /// Its arguments (`script.args()`, and stdin as JSON).
    pub args: Map<String, Value>,
    /// Who asks (a token name, `cli`, `anonymous`).
    pub who: String,
    /// Whether the caller may change what a script may do (`admin`, or a server without
    /// auth). Without it a file run gets no path or network grant and no limit above the
    /// defaults, and only a script's current version runs: a version an operator has since
    /// narrowed cannot be run for its old grants.
    pub privileged: bool,
}

/// A run that was queued: its id and its live events from the start.
pub struct RunStarted {
    /// The run id.
    pub id: u64,
    /// Its events; the last is [`RunEvent::Ended`].
    pub events: broadcast::Receiver<RunEvent>,
}

/// A run as the API shows it: its record, and while it runs, its latest progress and sample.
#[derive(Clone, Debug, Serialize)]
pub struct RunView {
    /// The record.
    #[serde(flatten)]
    pub record: RunRecordView,
    /// Live state while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<Snapshot>,
}

/// [`RunRecord`], serializable.
#[derive(Clone, Debug, Serialize)]
#[allow(missing_docs)]
pub struct RunRecordView {
    pub id: u64,
    pub script_id: Option<String>,
    pub version: Option<u64>,
    pub digest: String,
    pub label: String,
    pub args: Value,
    pub who: String,
    pub state: String,
    pub queued_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub peak_rss: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub output: String,
    pub output_bytes: u64,
    pub result: Option<Value>,
}

impl From<RunRecord> for RunRecordView {
    fn from(r: RunRecord) -> RunRecordView {
        RunRecordView {
            duration_ms: match (r.started_at_ms, r.ended_at_ms) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
            id: r.id,
            script_id: r.script_id,
            version: r.version,
            digest: r.digest,
            label: r.label,
            args: r.args,
            who: r.who,
            state: r.state,
            queued_at_ms: r.queued_at_ms,
            started_at_ms: r.started_at_ms,
            ended_at_ms: r.ended_at_ms,
            exit_code: r.exit_code,
            reason: r.reason,
            peak_rss: r.peak_rss,
            cpu_ms: r.cpu_ms,
            output: r.output,
            output_bytes: r.output_bytes,
            result: r.result,
        }
    }
}

/// A template as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TemplateInfo {
    /// Its name.
    pub name: String,
    /// What it makes.
    pub description: String,
    /// Its variables.
    pub vars: Vec<Var>,
    /// Its text.
    pub source: String,
    /// When it was first stored.
    pub created_at_ms: u64,
    /// When it was last replaced.
    pub updated_at_ms: u64,
}

/// What an import stored, per script.
#[derive(Clone, Debug, Serialize)]
pub struct Imported {
    /// The script.
    pub id: String,
    /// Versions stored (content already there is not stored again).
    pub versions_added: usize,
    /// The version now current.
    pub current: u64,
}

/// The result of an import: what was stored and who signed it.
#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    /// Per script.
    pub scripts: Vec<Imported>,
    /// The signing key, when the archive was signed (and verified).
    pub signed_by: Option<String>,
}

/// The script manager. Cheap to clone.
#[derive(Clone)]
pub struct Scripts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripts")
            .field("state_dir", &self.inner.config.state_dir)
            .field("active_runs", &self.active_runs())
            .finish()
    }
}

struct Inner {
    store: Store,
    config: Arc<ScriptsConfig>,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    active: Mutex<HashMap<u64, Arc<Active>>>,
    /// The static check's errors by digest (of source and metadata, which with this
    /// configuration's reachable paths decide them): a version is checked once per process, not
    /// on every run.
    checked: Mutex<HashMap<String, Vec<Problem>>>,
    /// Work dirs and cgroups made ahead for the next runs (`run::Spare`).
    spares: run::Spares,
}

/// How many digests' check results are kept; the cache starts over when it is full.
const CHECKED_KEPT: usize = 1024;

impl Scripts {
    /// The manager over `store`. Runs a stopped host left queued or running are marked failed;
    /// with a tokio runtime, finished runs older than the retention are purged every hour.
    pub async fn open(store: Store, config: ScriptsConfig) -> Result<Scripts, ScriptError> {
        let interrupted = store.interrupt_runs().await?;
        // Work dirs and cgroups of runs a killed host left behind (the sandbox records every
        // cgroup it makes; only those of dead hosts are reaped).
        let work = config.state_dir.join("scripts").join("work");
        if work.is_dir() {
            let _ = std::fs::remove_dir_all(&work);
        }
        let records = run::records_dir(&config.state_dir);
        if records.is_dir()
            && let Err(e) = plugd_sandbox::reap_leftovers(&records)
        {
            tracing::warn!("Cannot reap cgroups left by a killed host: {e}");
        }
        if interrupted > 0 {
            tracing::warn!(
                runs = interrupted,
                "marked script runs left unfinished by a stopped host as failed"
            );
        }
        let scripts = Scripts {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(config.max_runs.max(1))),
                store,
                config: Arc::new(config),
                queued: AtomicUsize::new(0),
                active: Mutex::new(HashMap::new()),
                checked: Mutex::new(HashMap::new()),
                spares: Default::default(),
            }),
        };
        let weak = Arc::downgrade(&scripts.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                // A retention of 0 keeps runs forever.
                if inner.config.retention.is_zero() {
                    continue;
                }
                let before = now_ms().saturating_sub(inner.config.retention.as_millis() as u64);
                match inner.store.purge_runs(before).await {
                    Ok(n) if n > 0 => tracing::info!(runs = n, "purged old script runs"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("cannot purge old script runs: {e}"),
                }
            }
        });
        Ok(scripts)
    }

    /// The configuration.
    pub fn config(&self) -> &ScriptsConfig {
        &self.inner.config
    }

    /// Reads a script's metadata, applies `overrides` and checks it statically: what
    /// `plugd script check` shows. Never stores or runs anything.
    pub fn check(
        &self,
        source: &str,
        overrides: &Overrides,
    ) -> Result<(Meta, Vec<Problem>), ScriptError> {
        let described = meta::describe(source).map_err(ScriptError::bad)?;
        let meta = described.meta.apply(overrides).map_err(ScriptError::bad)?;
        let problems = check::check(source, &meta, &self.inner.config.reachable());
        Ok((meta, problems))
    }

    /// Adds a script (`mode` Create), or a version of one (`Edit`).
    pub async fn add(&self, req: AddRequest, mode: AddMode) -> Result<Added, ScriptError> {
        let described = meta::describe(&req.source).map_err(ScriptError::bad)?;
        let id = req.id.clone().or(described.id.clone()).ok_or_else(|| {
            ScriptError::bad(
                "The script has no id; hint: pass `--id ID`, or set `id` in its `[tool.plugd]` table",
            )
        })?;
        meta::valid_id(&id).map_err(ScriptError::bad)?;
        // A new version keeps the overrides the script has (an operator's limits do not vanish
        // with the next edit of its source); the request's own win.
        let mut overrides = req.overrides.clone();
        if mode == AddMode::Edit
            && let Ok(current) = self.inner.store.script_version(&id, None).await
            && let Ok(current) = Meta::from_json(&current.meta)
        {
            overrides = current.overrides.merged(&req.overrides);
        }
        let meta = described
            .meta
            .apply(&overrides)
            .map_err(|e| ScriptError::bad(format!("Script `{id}`: {e}")))?;
        self.store_version(&id, req.source, meta, mode).await
    }

    /// A new version of `id` with only its metadata changed (`setScriptPermissions`).
    pub async fn set_meta(&self, id: &str, overrides: &Overrides) -> Result<Added, ScriptError> {
        let current = self.inner.store.script_version(id, None).await?;
        let meta = Meta::from_json(&current.meta)
            .map_err(ScriptError::internal)?
            .apply(overrides)
            .map_err(|e| ScriptError::bad(format!("Script `{id}`: {e}")))?;
        self.store_version(id, current.source, meta, AddMode::Edit)
            .await
    }

    async fn store_version(
        &self,
        id: &str,
        source: String,
        meta: Meta,
        mode: AddMode,
    ) -> Result<Added, ScriptError> {
        self.inner
            .config
            .check_grants(&format!("Script `{id}`"), &meta)?;
        let problems = check::check(&source, &meta, &self.inner.config.reachable());
        let (errors, warnings): (Vec<Problem>, Vec<Problem>) = problems
            .into_iter()
            .partition(|p| p.severity == Severity::Error);
        if !errors.is_empty() {
            return Err(invalid(&format!("Script `{id}`"), errors));
        }
        let lock = self.lock(id, &meta).await?;
        let digest = meta.digest(&source);
        let added = self
            .inner
            .store
            .add_script_version(
                NewScriptVersion {
                    script_id: id.to_owned(),
                    digest,
                    source,
                    meta: meta.to_json(),
                    lock,
                },
                mode,
            )
            .await?;
        Ok(Added {
            script: self.info(id).await?,
            version: added.version,
            created: added.created,
            warnings,
        })
    }

    /// The uv lock of a script's dependencies (`None` without any), cached by requirements.
    async fn lock(&self, who: &str, meta: &Meta) -> Result<Option<String>, ScriptError> {
        if meta.dependencies.is_empty() {
            return Ok(None);
        }
        let lines = plugd_host::pyenv::normalize(&meta.dependencies.join("\n"));
        let config = self.inner.config.clone();
        let who = format!("Script `{who}`");
        let text = tokio::task::spawn_blocking(move || {
            plugd_host::pyenv::cached_lock_text(&config.state_dir, &config.python, &who, &lines)
        })
        .await
        .map_err(|e| ScriptError::internal(e.to_string()))?
        .map_err(|e| ScriptError::new("dependencies", e))?;
        Ok(Some(text))
    }

    async fn info(&self, id: &str) -> Result<ScriptInfo, ScriptError> {
        let record =
            self.inner.store.script(id).await?.ok_or_else(|| {
                ScriptError::from(StoreError::ScriptNotFound { id: id.to_owned() })
            })?;
        let version = self.inner.store.script_version(id, None).await?;
        Ok(script_info(record, &version))
    }

    /// One script.
    pub async fn show(&self, id: &str) -> Result<ScriptInfo, ScriptError> {
        self.info(id).await
    }

    /// Scripts matching `filter`, by id.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<ScriptInfo>, ScriptError> {
        let mut out = Vec::new();
        for record in self.inner.store.scripts().await? {
            let Ok(version) = self.inner.store.script_version(&record.id, None).await else {
                continue;
            };
            let info = script_info(record, &version);
            let m = &info.meta;
            if filter.tag.as_ref().is_some_and(|t| !m.tags.contains(t)) {
                continue;
            }
            if filter
                .category
                .as_ref()
                .is_some_and(|c| m.category.as_deref() != Some(c.as_str()))
            {
                continue;
            }
            if let Some(q) = &filter.search {
                let q = q.to_lowercase();
                let hay = [
                    Some(info.id.as_str()),
                    m.name.as_deref(),
                    m.description.as_deref(),
                ];
                if !hay.iter().flatten().any(|h| h.to_lowercase().contains(&q)) {
                    continue;
                }
            }
            out.push(info);
        }
        Ok(out)
    }

    /// Every version of a script, oldest first (without sources).
    pub async fn versions(&self, id: &str) -> Result<Vec<VersionInfo>, ScriptError> {
        let record = self.inner.store.script(id).await?;
        let current = record.map_or(0, |r| r.current);
        Ok(self
            .inner
            .store
            .script_versions(id)
            .await?
            .into_iter()
            .map(|v| version_info(v, current, false))
            .collect())
    }

    /// One version with its source and lock (`None`: the current one).
    pub async fn version(
        &self,
        id: &str,
        version: Option<u64>,
    ) -> Result<VersionInfo, ScriptError> {
        let record = self.inner.store.script(id).await?;
        let current = record.map_or(0, |r| r.current);
        let v = self.inner.store.script_version(id, version).await?;
        Ok(version_info(v, current, true))
    }

    /// A unified diff of two versions: the source, then the metadata if it changed.
    pub async fn diff(&self, id: &str, a: u64, b: u64) -> Result<String, ScriptError> {
        let va = self.inner.store.script_version(id, Some(a)).await?;
        let vb = self.inner.store.script_version(id, Some(b)).await?;
        let mut out = similar::TextDiff::from_lines(&va.source, &vb.source)
            .unified_diff()
            .context_radius(3)
            .header(&format!("{id} v{a}"), &format!("{id} v{b}"))
            .to_string();
        if va.meta != vb.meta {
            let pa = serde_json::to_string_pretty(&va.meta).unwrap_or_default() + "\n";
            let pb = serde_json::to_string_pretty(&vb.meta).unwrap_or_default() + "\n";
            out.push_str(
                &similar::TextDiff::from_lines(&pa, &pb)
                    .unified_diff()
                    .context_radius(2)
                    .header(
                        &format!("{id} v{a} metadata"),
                        &format!("{id} v{b} metadata"),
                    )
                    .to_string(),
            );
        }
        Ok(out)
    }

    /// Makes version `version` the one runs use.
    pub async fn rollback(&self, id: &str, version: u64) -> Result<ScriptInfo, ScriptError> {
        self.inner.store.set_script_current(id, version).await?;
        self.info(id).await
    }

    /// Removes a script and its versions; its runs stay in the history.
    pub async fn remove(&self, id: &str) -> Result<(), ScriptError> {
        if self.inner.store.remove_script(id).await? {
            Ok(())
        } else {
            Err(StoreError::ScriptNotFound { id: id.to_owned() }.into())
        }
    }

    /// Stores a template (`replace`: overwrite one of the same name).
    pub async fn add_template(
        &self,
        name: &str,
        description: &str,
        source: &str,
        vars: Vec<Var>,
        replace: bool,
    ) -> Result<TemplateInfo, ScriptError> {
        meta::valid_id(name)
            .map_err(|e| ScriptError::bad(e.replace("Script id", "Template name")))?;
        if let Err(problems) = template::validate(source, &vars) {
            let mut e = ScriptError::bad(format!(
                "Template `{name}` was refused: {}",
                problems.join("; ")
            ));
            e.details = problems;
            return Err(e);
        }
        let stored = self
            .inner
            .store
            .put_template(
                TemplateRecord {
                    name: name.to_owned(),
                    description: description.to_owned(),
                    source: source.to_owned(),
                    vars: serde_json::to_value(&vars).unwrap_or_default(),
                    created_at_ms: 0,
                    updated_at_ms: 0,
                },
                replace,
            )
            .await?;
        template_info(stored)
    }

    /// Every template.
    pub async fn templates(&self) -> Result<Vec<TemplateInfo>, ScriptError> {
        self.inner
            .store
            .templates()
            .await?
            .into_iter()
            .map(template_info)
            .collect()
    }

    /// One template.
    pub async fn template(&self, name: &str) -> Result<TemplateInfo, ScriptError> {
        match self.inner.store.template(name).await? {
            Some(t) => template_info(t),
            None => Err(ScriptError::new(
                "not_found",
                format!("No template `{name}`; hint: `plugd template list` shows them"),
            )),
        }
    }

    /// Removes a template.
    pub async fn remove_template(&self, name: &str) -> Result<(), ScriptError> {
        if self.inner.store.remove_template(name).await? {
            Ok(())
        } else {
            Err(ScriptError::new(
                "not_found",
                format!("No template `{name}`; hint: `plugd template list` shows them"),
            ))
        }
    }

    /// Renders template `name` with `values` and registers the result as script `id`.
    pub async fn instantiate(
        &self,
        name: &str,
        id: &str,
        values: &Map<String, Value>,
        overrides: Overrides,
    ) -> Result<Added, ScriptError> {
        let t = self.template(name).await?;
        let source = template::render(&t.source, &t.vars, values).map_err(|problems| {
            let mut e = ScriptError::bad(format!(
                "Template `{name}` cannot be instantiated: {}",
                problems.join("; ")
            ));
            e.details = problems;
            e
        })?;
        self.add(
            AddRequest {
                id: Some(id.to_owned()),
                source,
                overrides,
            },
            AddMode::Create,
        )
        .await
    }

    /// An archive of `ids` (all scripts when empty): the current version of each, or every
    /// version; signed with `key` when given.
    pub async fn export(
        &self,
        ids: &[String],
        all_versions: bool,
        key: Option<&plugd_trust::SecretKey>,
    ) -> Result<Vec<u8>, ScriptError> {
        let ids: Vec<String> = if ids.is_empty() {
            self.inner
                .store
                .scripts()
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect()
        } else {
            ids.to_vec()
        };
        let mut all = Vec::new();
        for id in &ids {
            let record =
                self.inner.store.script(id).await?.ok_or_else(|| {
                    ScriptError::from(StoreError::ScriptNotFound { id: id.clone() })
                })?;
            let versions = if all_versions {
                self.inner.store.script_versions(id).await?
            } else {
                vec![self.inner.store.script_version(id, None).await?]
            };
            let current = versions
                .iter()
                .find(|v| v.version == record.current)
                .map(|v| v.digest.clone())
                .unwrap_or_default();
            all.push((id.clone(), current, versions));
        }
        let borrowed: Vec<(String, String, Vec<archive::VersionFiles<'_>>)> = all
            .iter()
            .map(|(id, current, versions)| {
                (
                    id.clone(),
                    current.clone(),
                    versions
                        .iter()
                        .map(|v| archive::VersionFiles {
                            version: v.version,
                            digest: &v.digest,
                            meta: &v.meta,
                            source: &v.source,
                            lock: v.lock.as_deref(),
                        })
                        .collect(),
                )
            })
            .collect();
        archive::write(&borrowed, key).map_err(ScriptError::internal)
    }

    /// Imports an archive: verified (a signature must come from the trust store; strict mode or
    /// `require_signature` refuses unsigned archives), every version's digest and checks
    /// re-done, all before anything is stored.
    pub async fn import(
        &self,
        bytes: &[u8],
        require_signature: bool,
    ) -> Result<ImportReport, ScriptError> {
        let owned = bytes.to_vec();
        let unpacked = tokio::task::spawn_blocking(move || archive::read(&owned))
            .await
            .map_err(|e| ScriptError::internal(e.to_string()))?
            .map_err(ScriptError::bad)?;
        let signed_by = match &unpacked.signature {
            Some(sig) => {
                let store = plugd_trust::TrustStore::open(&self.inner.config.trust_dir)
                    .map_err(|e| ScriptError::new("untrusted", e.to_string()))?;
                let key = plugd_trust::verify_detached(
                    archive::SIGNATURE_KIND,
                    "script archive",
                    &unpacked.index_sha256,
                    &sig.key_id,
                    &sig.signature,
                    &plugd_trust::KeySource::Store(&store),
                )
                .map_err(|e| ScriptError::new("untrusted", e.to_string()))?;
                Some(key.to_string())
            }
            None if require_signature || self.inner.config.strict => {
                return Err(ScriptError::new(
                    "untrusted",
                    "The archive is not signed, and this server requires signed archives; hint: export it with `--key KEY`",
                ));
            }
            None => None,
        };
        // Everything is checked first; nothing is stored unless all of it is good.
        let mut planned = Vec::new();
        for script in &unpacked.index.scripts {
            meta::valid_id(&script.id).map_err(ScriptError::bad)?;
            let mut versions = Vec::new();
            for v in &script.versions {
                let source = unpacked.text(&v.source).map_err(ScriptError::bad)?;
                let meta = Meta::from_json(&v.meta)
                    .and_then(|m| m.apply(&Overrides::default()))
                    .map_err(|e| {
                        ScriptError::bad(format!("Script `{}` v{}: {e}", script.id, v.version))
                    })?;
                if meta.digest(&source) != v.digest {
                    return Err(ScriptError::bad(format!(
                        "Script `{}` v{}: its digest does not match its source and metadata (altered after export); the archive was refused",
                        script.id, v.version
                    )));
                }
                let errors: Vec<Problem> =
                    check::check(&source, &meta, &self.inner.config.reachable())
                        .into_iter()
                        .filter(|p| p.severity == Severity::Error)
                        .collect();
                if !errors.is_empty() {
                    return Err(invalid(
                        &format!("Script `{}` v{}", script.id, v.version),
                        errors,
                    ));
                }
                let lock = v
                    .lock
                    .as_ref()
                    .map(|p| unpacked.text(p))
                    .transpose()
                    .map_err(ScriptError::bad)?;
                if let Some(lock) = &lock
                    && let Some(line) = lock
                        .lines()
                        .map(str::trim)
                        .find(|l| l.starts_with('-') && !l.starts_with("--hash="))
                {
                    return Err(ScriptError::bad(format!(
                        "Script `{}` v{}: its lock has the option line `{}`; a lock holds pins and hashes only; the archive was refused",
                        script.id,
                        v.version,
                        line.escape_debug()
                    )));
                }
                versions.push((v.digest.clone(), source, meta, lock));
            }
            planned.push((script.id.clone(), script.current.clone(), versions));
        }
        let mut report = Vec::new();
        for (id, current, versions) in planned {
            let mut added = 0;
            let mut current_version = None;
            for (digest, source, meta, lock) in versions {
                let a = self
                    .inner
                    .store
                    .add_script_version(
                        NewScriptVersion {
                            script_id: id.clone(),
                            digest: digest.clone(),
                            source,
                            meta: meta.to_json(),
                            lock,
                        },
                        AddMode::Upsert,
                    )
                    .await?;
                added += usize::from(a.created);
                if digest == current {
                    current_version = Some(a.version);
                }
            }
            if let Some(v) = current_version {
                self.inner.store.set_script_current(&id, v).await?;
            }
            let now = self.inner.store.script(&id).await?.map_or(0, |r| r.current);
            report.push(Imported {
                id,
                versions_added: added,
                current: now,
            });
        }
        Ok(ImportReport {
            scripts: report,
            signed_by,
        })
    }

    /// Queues a run: validated first (a script that fails its checks is refused and nothing
    /// runs), then recorded, then run when a slot is free. Its events start at `Started`.
    pub async fn run(&self, req: RunRequest) -> Result<RunStarted, ScriptError> {
        let inner = &self.inner;
        let (script_id, version, label, source, meta, lock, digest) = match &req.target {
            RunTarget::Script { id, version } => {
                let v = inner.store.script_version(id, *version).await?;
                let meta = Meta::from_json(&v.meta).map_err(ScriptError::internal)?;
                (
                    Some(id.clone()),
                    Some(v.version),
                    id.clone(),
                    v.source,
                    meta,
                    v.lock,
                    v.digest,
                )
            }
            RunTarget::Source {
                name,
                source,
                overrides,
            } => {
                if name.is_empty()
                    || name.len() > 255
                    || name.chars().any(|c| c.is_control() || c == '/')
                {
                    return Err(ScriptError::bad(
                        "A file run's `name` must be 1 to 255 characters without `/` or control characters",
                    ));
                }
                let described = meta::describe(source).map_err(ScriptError::bad)?;
                let meta = described
                    .meta
                    .apply(overrides)
                    .map_err(|e| ScriptError::bad(format!("`{name}`: {e}")))?;
                let lock = self.lock(name, &meta).await?;
                let digest = meta.digest(source);
                (None, None, name.clone(), source.clone(), meta, lock, digest)
            }
        };
        if !req.privileged {
            unprivileged(&req.target, &meta, version, &label, &inner.store).await?;
        }
        if req.args.len() > MAX_ARGS
            || Value::Object(req.args.clone()).to_string().len() > MAX_ARGS_BYTES
        {
            return Err(ScriptError::bad(format!(
                "The run's arguments are over {} of JSON; hint: pass large data as a file it may read",
                human_bytes(MAX_ARGS_BYTES as u64)
            )));
        }
        inner.config.check_grants(&format!("`{label}`"), &meta)?;
        let who = req.who.clone();
        let cached = inner.checked.lock().get(&digest).cloned();
        let errors = match cached {
            Some(errors) => errors,
            None => {
                let errors: Vec<Problem> = check::check(&source, &meta, &inner.config.reachable())
                    .into_iter()
                    .filter(|p| p.severity == Severity::Error)
                    .collect();
                let mut checked = inner.checked.lock();
                if checked.len() >= CHECKED_KEPT {
                    checked.clear();
                }
                checked.insert(digest.clone(), errors.clone());
                errors
            }
        };
        if !errors.is_empty() {
            return Err(invalid(&format!("`{label}`"), errors));
        }
        if inner.queued.fetch_add(1, Ordering::SeqCst) >= inner.config.max_queued {
            inner.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(ScriptError::new(
                "overloaded",
                format!(
                    "{} runs are waiting already; hint: retry later, or raise `serve --max-runs`",
                    inner.config.max_queued
                ),
            ));
        }
        let code_dir = match code_dir(&inner.config.state_dir, &digest, &source) {
            Ok(dir) => dir,
            Err(e) => {
                inner.queued.fetch_sub(1, Ordering::SeqCst);
                return Err(ScriptError::internal(e));
            }
        };
        // One uid per script id; file runs get one per caller, so one caller's file run
        // cannot write into another's work dir.
        let owner = match &script_id {
            Some(id) => id.clone(),
            None => format!(
                "_files-{}",
                who.chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .take(64)
                    .collect::<String>()
            ),
        };
        let ids_owner = inner
            .config
            .state_dir
            .join("scripts")
            .join("uids")
            .join(owner);
        let mut job = Job {
            run_id: 0,
            label: label.clone(),
            code_dir,
            meta,
            python_env: None,
            args: Value::Object(req.args.clone()),
            ids_owner,
        };
        // A free slot and no environment to build: the run starts now, so its sandbox is
        // prepared (about a millisecond of file system and cgroup work) on a blocking thread
        // while it is recorded, and it is recorded as running in the same write.
        let early = if lock.is_none() {
            inner.slots.clone().try_acquire_owned().ok().map(|permit| {
                let (config, spares) = (inner.config.clone(), inner.spares.clone());
                let ready = job.clone();
                let handle =
                    tokio::task::spawn_blocking(move || run::ready(&config, &ready, &spares));
                (permit, handle)
            })
        } else {
            None
        };
        let new_run = NewRun {
            script_id: script_id.clone(),
            version,
            digest,
            label,
            args: Value::Object(req.args),
            who: req.who.clone(),
        };
        let inserted = if early.is_some() {
            inner.store.insert_started_run(new_run).await
        } else {
            inner.store.insert_run(new_run).await
        };
        let id = match inserted {
            Ok(id) => id,
            Err(e) => {
                inner.queued.fetch_sub(1, Ordering::SeqCst);
                if let Some((_, handle)) = early {
                    // What it made is removed when it is dropped: the cgroup's removal blocks,
                    // so not on this thread.
                    tokio::spawn(async move {
                        if let Ok(Ok(ready)) = handle.await {
                            tokio::task::spawn_blocking(move || drop(ready));
                        }
                    });
                }
                return Err(e.into());
            }
        };
        job.run_id = id;
        let active = Active::new();
        let events = active.events.subscribe();
        inner.active.lock().insert(id, active.clone());
        metrics::gauge!(RUNS_ACTIVE).set(inner.active.lock().len() as f64);
        let this = self.clone();
        tokio::spawn(async move {
            this.drive(job, lock, active, early).await;
        });
        Ok(RunStarted { id, events })
    }

    /// Waits for a slot (unless it has one, `early`, with its run being made ready), runs,
    /// records the end.
    async fn drive(
        &self,
        mut job: Job,
        lock: Option<String>,
        active: Arc<Active>,
        early: Option<(OwnedSemaphorePermit, JoinHandle<Result<run::Ready, String>>)>,
    ) {
        let inner = &self.inner;
        let id = job.run_id;
        if let Some((permit, ready)) = early {
            inner.queued.fetch_sub(1, Ordering::SeqCst);
            let outcome = match ready.await {
                Ok(Ok(ready)) => run::launch(&inner.config, &job, ready, &active).await,
                Ok(Err(reason)) => Outcome::refused("failed", reason),
                Err(e) => Outcome::refused("failed", format!("its preparation failed: {e}")),
            };
            drop(permit);
            self.record_end(id, outcome, &active).await;
            return;
        }
        let permit = tokio::select! {
            permit = inner.slots.clone().acquire_owned() => permit.ok(),
            () = active.cancel.notified() => None,
        };
        inner.queued.fetch_sub(1, Ordering::SeqCst);
        let outcome = if permit.is_none() {
            Outcome::refused("cancelled", "cancelled while queued".into())
        } else if let Err(e) = inner.store.start_run(id).await {
            Outcome::refused("failed", format!("cannot record its start: {e}"))
        } else {
            match self.environment(&job, lock).await {
                Ok(env) => {
                    job.python_env = env;
                    run::execute(&inner.config, &inner.spares, job, active.clone()).await
                }
                Err(e) => Outcome::refused("failed", e),
            }
        };
        drop(permit);
        self.record_end(id, outcome, &active).await;
    }

    /// Records how a run ended and tells its followers.
    async fn record_end(&self, id: u64, outcome: Outcome, active: &Active) {
        let inner = &self.inner;
        let Outcome { end, duration_ms } = outcome;
        let (state, exit_code, reason) = (end.state.clone(), end.exit_code, end.reason.clone());
        if let Err(e) = inner.store.finish_run(id, end).await {
            tracing::error!(run = id, "cannot record the end of a script run: {e}");
        }
        metrics::counter!(RUNS_TOTAL, "state" => state.clone()).increment(1);
        if let Some(ms) = duration_ms {
            metrics::histogram!(RUN_DURATION).record(ms as f64 / 1000.0);
        }
        active.send_ended(&state, exit_code, reason);
        inner.active.lock().remove(&id);
        metrics::gauge!(RUNS_ACTIVE).set(inner.active.lock().len() as f64);
    }

    async fn environment(
        &self,
        job: &Job,
        lock: Option<String>,
    ) -> Result<Option<PathBuf>, String> {
        let Some(lock) = lock else { return Ok(None) };
        let config = self.inner.config.clone();
        let who = format!("Script `{}`", job.label);
        let lines = plugd_host::pyenv::normalize(&job.meta.dependencies.join("\n"));
        tokio::task::spawn_blocking(move || {
            plugd_host::pyenv::env_for_lock(&config.state_dir, &config.python, &who, &lines, &lock)
        })
        .await
        .map_err(|e| e.to_string())?
        .map(Some)
    }

    /// Cancels a run: a queued one ends at once, a running one is killed. Cancelling a run that
    /// has ended is refused with `conflict`.
    pub async fn cancel(&self, id: u64) -> Result<(), ScriptError> {
        let active = self.inner.active.lock().get(&id).cloned();
        match active {
            Some(a) => {
                a.cancelled.store(true, Ordering::SeqCst);
                a.cancel.notify_one();
                Ok(())
            }
            None => match self.inner.store.run(id).await? {
                Some(r) => Err(ScriptError::new(
                    "conflict",
                    format!("Run {id} has ended already ({})", r.state),
                )),
                None => Err(not_found_run(id)),
            },
        }
    }

    /// One run: its record, and its live state while it runs.
    pub async fn run_view(&self, id: u64) -> Result<RunView, ScriptError> {
        let record = self
            .inner
            .store
            .run(id)
            .await?
            .ok_or_else(|| not_found_run(id))?;
        let live = self
            .inner
            .active
            .lock()
            .get(&id)
            .map(|a| a.snapshot.lock().clone());
        Ok(RunView {
            record: record.into(),
            live,
        })
    }

    /// Runs, newest first: of one script (which must exist) or of all.
    pub async fn runs(
        &self,
        script_id: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RunRecordView>, ScriptError> {
        if let Some(id) = script_id
            && self.inner.store.script(id).await?.is_none()
            && self.inner.store.runs(Some(id), None, 1).await?.is_empty()
        {
            return Err(StoreError::ScriptNotFound { id: id.to_owned() }.into());
        }
        Ok(self
            .inner
            .store
            .runs(script_id, before, limit)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Follows a run: its live state now and its events from here on, or `None` when it has
    /// ended (read its record).
    pub fn follow(&self, id: u64) -> Option<(Snapshot, broadcast::Receiver<RunEvent>)> {
        let active = self.inner.active.lock().get(&id).cloned()?;
        // Events are sent under the snapshot's lock, so subscribing under it splits the run's
        // events exactly: those in the snapshot, and those the receiver gets.
        let (snapshot, rx) = {
            let snapshot = active.snapshot.lock();
            (snapshot.clone(), active.events.subscribe())
        };
        if !matches!(snapshot.state.as_str(), "queued" | "running") {
            return None;
        }
        Some((snapshot, rx))
    }

    /// Waits until what ended runs left to the janitor thread is done: their work dirs and
    /// cgroups removed, the next runs' made ahead (it works at the lowest nice value, after the
    /// runs' records are written and answered). Jobs past its backlog of 64, which run on the
    /// blocking pool instead, are not waited for.
    pub async fn settled(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        run::janitor(move || {
            let _ = tx.send(());
        });
        let _ = rx.await;
    }

    /// Waits until run `id` has ended and returns its record.
    pub async fn wait(&self, id: u64) -> Result<RunView, ScriptError> {
        if let Some((_, mut rx)) = self.follow(id) {
            loop {
                match rx.recv().await {
                    Ok(RunEvent::Ended { .. }) | Err(broadcast::error::RecvError::Closed) => break,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                }
            }
        }
        // The record is written before `Ended` is sent.
        self.run_view(id).await
    }

    /// Runs queued or running now.
    pub fn active_runs(&self) -> usize {
        self.inner.active.lock().len()
    }
}

impl Active {
    fn send_ended(&self, state: &str, exit_code: Option<i64>, reason: Option<String>) {
        let event = RunEvent::Ended {
            state: state.to_owned(),
            exit_code,
            reason,
        };
        let mut snapshot = self.snapshot.lock();
        snapshot.state = state.to_owned();
        let _ = self.events.send(event);
    }
}

/// Most arguments of one run, in keys and in bytes of JSON.
const MAX_ARGS: usize = 1000;
const MAX_ARGS_BYTES: usize = 64 << 10;

/// What a caller without `admin` may run: see [`RunRequest::privileged`].
async fn unprivileged(
    target: &RunTarget,
    meta: &Meta,
    version: Option<u64>,
    label: &str,
    store: &Store,
) -> Result<(), ScriptError> {
    let forbidden = |what: &str| {
        ScriptError::new(
            "forbidden",
            format!(
                "`{label}`: {what} needs the `admin` scope; hint: register the script (admin) with the grants it needs, then run it"
            ),
        )
    };
    match target {
        RunTarget::Source { .. } => {
            let p = &meta.permissions;
            if !p.read.is_empty() || !p.write.is_empty() || !p.network.is_empty() {
                return Err(forbidden("a file run with path or network grants"));
            }
            let (l, d) = (&meta.limits, meta::Limits::default());
            if l.memory > d.memory
                || l.cpu_ms > d.cpu_ms
                || l.wall_ms > d.wall_ms
                || l.output > d.output
                || l.processes > d.processes
            {
                return Err(forbidden("a file run with limits above the defaults"));
            }
        }
        RunTarget::Script {
            id,
            version: Some(_),
        } => {
            let current = store.script(id).await?.map(|r| r.current);
            if version != current {
                return Err(forbidden("running a version other than the current one"));
            }
        }
        RunTarget::Script { .. } => {}
    }
    Ok(())
}

fn not_found_run(id: u64) -> ScriptError {
    ScriptError::new(
        "not_found",
        format!("No run {id}; hint: `plugd script runs` lists recent runs"),
    )
}

fn invalid(who: &str, errors: Vec<Problem>) -> ScriptError {
    let first = errors
        .iter()
        .take(3)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let more = if errors.len() > 3 {
        format!(" (and {} more)", errors.len() - 3)
    } else {
        String::new()
    };
    ScriptError {
        code: "invalid_script",
        message: format!("{who} fails its checks: {first}{more}"),
        problems: errors,
        details: Vec::new(),
    }
}

fn script_info(record: ScriptRecord, version: &ScriptVersion) -> ScriptInfo {
    ScriptInfo {
        id: record.id,
        current: record.current,
        latest: record.latest,
        digest: version.digest.clone(),
        meta: Meta::from_json(&version.meta).unwrap_or_else(|_| {
            meta::describe("")
                .map(|d| d.meta)
                .expect("default metadata")
        }),
        created_at_ms: record.created_at_ms,
        updated_at_ms: record.updated_at_ms,
    }
}

fn version_info(v: ScriptVersion, current: u64, with_text: bool) -> VersionInfo {
    VersionInfo {
        current: v.version == current,
        locked_packages: v.lock.as_deref().map_or(0, count_pins),
        meta: Meta::from_json(&v.meta).unwrap_or_else(|_| {
            meta::describe("")
                .map(|d| d.meta)
                .expect("default metadata")
        }),
        script_id: v.script_id,
        version: v.version,
        digest: v.digest,
        created_at_ms: v.created_at_ms,
        source: with_text.then_some(v.source),
        lock: if with_text { v.lock } else { None },
    }
}

fn count_pins(lock: &str) -> usize {
    lock.lines()
        .filter(|l| {
            let l = l.trim_start();
            !l.is_empty() && !l.starts_with('#') && !l.starts_with("--") && l.contains("==")
        })
        .count()
}

fn template_info(t: TemplateRecord) -> Result<TemplateInfo, ScriptError> {
    Ok(TemplateInfo {
        vars: serde_json::from_value(t.vars).map_err(|e| {
            ScriptError::internal(format!("Stored template `{}` is unreadable: {e}", t.name))
        })?,
        name: t.name,
        description: t.description,
        source: t.source,
        created_at_ms: t.created_at_ms,
        updated_at_ms: t.updated_at_ms,
    })
}

/// `STATE/scripts/code/<digest>/script.py`, written once (atomically) and readable by every
/// script uid.
fn code_dir(state_dir: &Path, digest: &str, source: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let dir = state_dir
        .join("scripts")
        .join("code")
        .join(&hex[..hex.len().min(32)]);
    let file = dir.join("script.py");
    if std::fs::read_to_string(&file).is_ok_and(|s| s == source) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    let tmp = dir.join(format!(".script.py.{}", std::process::id()));
    std::fs::write(&tmp, source)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)))
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|e| format!("cannot write `{}`: {e}", file.display()))?;
    Ok(dir)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `256 MiB`, `1.5 KiB`, `12 bytes`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64;
    let mut unit = "";
    for u in UNITS {
        value /= 1024.0;
        unit = u;
        if value < 1024.0 {
            break;
        }
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// `250 ms`, `2 s`, `1.5 s`, `5 min`.
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}
