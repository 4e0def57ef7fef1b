//! HTTP data transfer objects: the JSON shapes of the API, built from host values.

use plugd_host::{LogLine, PluginInfo, Problem, TrustLevel};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub(crate) struct PluginList {
    pub plugins: Vec<PluginDto>,
    /// Packages that could not be read at all.
    pub problems: Vec<ProblemDto>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ProblemDto {
    pub path: String,
    pub message: String,
}

impl From<Problem> for ProblemDto {
    fn from(p: Problem) -> Self {
        ProblemDto {
            path: p.path.display().to_string(),
            message: p.message,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct PluginDto {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    pub kind: Option<&'static str>,
    pub runtime: Option<&'static str>,
    pub state: &'static str,
    pub reason: Option<String>,
    pub last_error: Option<String>,
    pub wave: Option<usize>,
    pub dependencies: Vec<DependencyDto>,
    pub actions: Vec<ActionDto>,
    pub subscriptions: Vec<String>,
    pub metrics: MetricsDto,
    pub pid: Option<u32>,
    /// `trusted` or `untrusted` (absent before the first start).
    pub trust: Option<&'static str>,
    pub key_id: Option<String>,
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Non-fatal manifest findings (ignored seed keys, defaulted `entry`, ...), then what the
    /// operator should know about how the running version was started (limits clamped to a
    /// ceiling, params reset to their defaults).
    pub warnings: Vec<String>,
    /// The package directory in the plugins dir (the source, not the staged copy it runs from).
    pub package: String,
    /// The limits in force for the running version (after trust policy and ceilings).
    pub limits: Option<LimitsDto>,
    /// Crashes and failed restarts, reloads and restarts: the supervision record.
    pub supervision: SupervisionDto,
    /// The plugin's own HTTP side (`[http]`), if it has one.
    pub http: Option<HttpDto>,
    /// A package written for another plugin system: which, and its own name.
    pub foreign: Option<ForeignDto>,
}

/// Where a plugin's HTTP side is reached, and its last health check.
#[derive(Serialize, ToSchema)]
pub(crate) struct HttpDto {
    /// Always: `/plugins/NAME`.
    pub path: String,
    pub mount: Option<String>,
    /// The port its manifest asks to be exposed on (whether the operator allowed it is the
    /// server's `--allow-expose`).
    pub expose: Option<u16>,
    pub health_path: Option<String>,
    /// The last check of `health_path` (every 10 s while it runs).
    pub health: Option<HttpHealthDto>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct HttpHealthDto {
    pub ok: bool,
    pub detail: String,
    pub checked_at_ms: u64,
}

impl PluginDto {
    /// With the proxy's last health check of its HTTP side.
    pub(crate) fn with_health(mut self, proxy: &crate::Proxy) -> Self {
        if let Some(http) = &mut self.http
            && self.state == "running"
        {
            http.health = proxy.health_of(&self.name).map(|h| HttpHealthDto {
                ok: h.ok,
                detail: h.detail,
                checked_at_ms: h.checked_at_ms,
            });
        }
        self
    }
}

/// What the host and the runtime did to keep a plugin serving.
#[derive(Serialize, ToSchema)]
pub(crate) struct SupervisionDto {
    /// Faults the runtime reported (crashes, failed restarts), oldest first, the newest 20.
    pub faults: Vec<FaultDto>,
    /// The restart the runtime has scheduled after a crash, while it waits.
    pub backoff: Option<BackoffDto>,
    /// Version swaps (reload, restart, a change seen by the watcher), oldest first, the newest 20.
    pub swaps: Vec<SwapDto>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct FaultDto {
    pub at_ms: u64,
    pub reason: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct BackoffDto {
    /// When the next restart is attempted, milliseconds since the Unix epoch.
    pub next_attempt_ms: u64,
    pub delay_ms: u64,
    /// Crashes within the current window, the last one included.
    pub crashes: u32,
    /// Crashes within the window after which the plugin is given up (`failed`).
    pub budget: u32,
    pub window_ms: u64,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct SwapDto {
    pub at_ms: u64,
    /// `reload`, `restart` or `watch`.
    pub trigger: &'static str,
    /// The version serving before (null: none was running).
    pub from: Option<String>,
    /// The version it tried to start (null: its manifest could not be read).
    pub to: Option<String>,
    /// From the start of the attempt to the new version serving, or to the failure.
    pub took_ms: f64,
    pub ok: bool,
    /// Why it failed; the version in `from` kept serving.
    pub error: Option<String>,
}

fn epoch_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SupervisionDto {
    fn new(p: &PluginInfo) -> Self {
        SupervisionDto {
            faults: p
                .faults
                .iter()
                .map(|f| FaultDto {
                    at_ms: epoch_ms(f.at),
                    reason: f.reason.clone(),
                })
                .collect(),
            backoff: p.backoff.as_ref().map(|b| BackoffDto {
                next_attempt_ms: epoch_ms(b.next_attempt),
                delay_ms: b.delay.as_millis() as u64,
                crashes: b.crashes,
                budget: b.budget,
                window_ms: b.window.as_millis() as u64,
            }),
            swaps: p
                .swaps
                .iter()
                .map(|s| SwapDto {
                    at_ms: epoch_ms(s.at),
                    trigger: s.trigger.as_str(),
                    from: s.from.as_ref().map(|v| v.to_string()),
                    to: s.to.as_ref().map(|v| v.to_string()),
                    took_ms: s.took.as_secs_f64() * 1000.0,
                    ok: s.outcome.is_ok(),
                    error: s.outcome.as_ref().err().cloned(),
                })
                .collect(),
        }
    }
}

/// The answer to an unload: the plugin, plus the running dependants it stopped first.
#[derive(Serialize, ToSchema)]
pub(crate) struct UnloadedDto {
    #[serde(flatten)]
    pub plugin: PluginDto,
    pub also_stopped: Vec<String>,
}

impl From<plugd_host::Unloaded> for UnloadedDto {
    fn from(u: plugd_host::Unloaded) -> Self {
        UnloadedDto {
            plugin: u.plugin.into(),
            also_stopped: u.also_stopped.iter().map(|n| n.to_string()).collect(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct LimitsDto {
    pub memory: u64,
    pub disk: u64,
    pub cpu_ms: u128,
    pub call_timeout_ms: u128,
    pub concurrency: u32,
    /// `limits.rate`, if any.
    pub rate: Option<RateDto>,
}

/// At most `calls` calls in any window of `per_ms`.
#[derive(Serialize, ToSchema)]
pub(crate) struct RateDto {
    pub calls: u32,
    pub per_ms: u128,
}

/// What a foreign manifest said about the package (see `docs/migrating.md`).
#[derive(Serialize, ToSchema)]
pub(crate) struct ForeignDto {
    /// `xcore`, `class-based` or `image-tool`.
    pub dialect: &'static str,
    /// The file it was read from (`plugin.yaml`, `plugin.json`, `manifest.json`, `__init__.py`).
    pub file: &'static str,
    /// The plugin's own name, as written (its plugd name is `name`).
    pub original_name: String,
    /// xcore's `execution_mode`, informational.
    pub execution_mode: Option<String>,
    /// Every field dropped or changed by the translation.
    pub changes: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DependencyDto {
    pub name: String,
    pub requirement: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ActionDto {
    pub name: String,
    pub description: String,
    /// The JSON Schema the host validates each call's payload against, as declared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct MetricsDto {
    pub calls: u64,
    pub errors: u64,
    pub in_flight: u64,
    pub restarts: u32,
    pub late_replies: u64,
    pub denials: u64,
    /// Bytes in the data dir at the last quota check.
    pub disk_used: u64,
}

impl From<PluginInfo> for PluginDto {
    fn from(p: PluginInfo) -> Self {
        let m = p.manifest.as_deref();
        let supervision = SupervisionDto::new(&p);
        let http = p.http.as_ref().map(|h| HttpDto {
            path: format!("/plugins/{}", p.name),
            mount: h.mount.clone(),
            expose: h.expose,
            health_path: h.health.clone(),
            health: None,
        });
        let foreign = m.and_then(|m| m.foreign.as_ref()).map(|f| ForeignDto {
            dialect: f.dialect.label(),
            file: f.file,
            original_name: f.original_name.clone(),
            execution_mode: f.execution_mode.clone(),
            changes: f
                .changes
                .iter()
                .map(|c| format!("{}: {}", c.field, c.note))
                .collect(),
        });
        PluginDto {
            supervision,
            http,
            foreign,
            name: p.name.to_string(),
            version: m.map(|m| m.version.to_string()),
            description: m.map(|m| m.description.clone()),
            kind: m.map(|m| m.kind.as_str()),
            runtime: m.map(|m| m.runtime.as_str()),
            state: p.state.as_str(),
            reason: p.reason,
            last_error: p.last_error,
            wave: p.wave,
            dependencies: m
                .map(|m| {
                    m.dependencies
                        .iter()
                        .map(|(n, r)| DependencyDto {
                            name: n.to_string(),
                            requirement: r.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            actions: p
                .actions
                .into_iter()
                .map(|a| ActionDto {
                    input: m
                        .and_then(|m| m.action(a.name.as_str()))
                        .and_then(|spec| spec.input.clone()),
                    name: a.name.to_string(),
                    description: a.description,
                })
                .collect(),
            subscriptions: m.map(|m| m.events.subscribe.clone()).unwrap_or_default(),
            metrics: MetricsDto {
                calls: p.calls,
                errors: p.errors,
                in_flight: p.in_flight,
                restarts: p.restarts,
                late_replies: p.late_replies,
                denials: p.denials,
                disk_used: p.disk_used,
            },
            limits: p.limits.as_ref().map(|l| LimitsDto {
                memory: l.memory,
                disk: l.disk,
                cpu_ms: l.cpu.as_millis(),
                call_timeout_ms: l.call_timeout.as_millis(),
                concurrency: l.concurrency,
                rate: l.rate.map(|r| RateDto {
                    calls: r.calls,
                    per_ms: r.per.as_millis(),
                }),
            }),
            pid: p.pid,
            trust: p.trust.as_ref().map(|t| match t {
                TrustLevel::Trusted { .. } => "trusted",
                TrustLevel::Untrusted => "untrusted",
            }),
            key_id: match &p.trust {
                Some(TrustLevel::Trusted { key_id }) => Some(key_id.clone()),
                _ => None,
            },
            warnings: m
                .map(|m| m.warnings.clone())
                .unwrap_or_default()
                .into_iter()
                .chain(p.notes)
                .collect(),
            package: p.dir.display().to_string(),
            details: p
                .details
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct LogsDto {
    pub plugin: String,
    pub lines: Vec<LogLineDto>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct LogLineDto {
    /// Its number among the plugin's lines (from 1, no gaps: a jump means lines were dropped).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub source: &'static str,
    pub level: &'static str,
    pub message: String,
}

impl From<LogLine> for LogLineDto {
    fn from(l: LogLine) -> Self {
        use plugd_runtime::LogSource;
        LogLineDto {
            seq: l.seq,
            at_ms: epoch_ms(l.at),
            source: match l.source {
                LogSource::Plugin => "plugin",
                LogSource::Stdout => "stdout",
                LogSource::Stderr => "stderr",
                LogSource::Runtime => "runtime",
            },
            level: l.level.as_str(),
            message: l.message,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    pub status: &'static str,
    pub plugins: HealthCounts,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct HealthCounts {
    pub total: usize,
    pub running: usize,
    pub failed: usize,
}

/// `GET /api/v1/plugins/{name}/params`: the effective value and the schema it must fit.
#[derive(Serialize, ToSchema)]
pub(crate) struct ParamsDto {
    pub params: serde_json::Value,
    pub schema: Option<serde_json::Value>,
}

/// `GET /api/v1/plugins/{name}/params/history`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ParamsHistoryDto {
    pub plugin: String,
    /// Newest first.
    pub revisions: Vec<RevisionDto>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RevisionDto {
    pub revision: u64,
    pub params: serde_json::Value,
    /// Who changed it: `api`, `cli`, `migration`, ...
    pub source: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl From<plugd_store::ParamsRevision> for RevisionDto {
    fn from(r: plugd_store::ParamsRevision) -> Self {
        RevisionDto {
            revision: r.revision,
            params: r.value,
            source: r.source,
            at_ms: r.at_ms,
        }
    }
}

/// `GET /api/v1/plugins/{name}/kv`: one page, sorted by key; `next` is the `after` of the next
/// page (`null`: no more).
#[derive(Serialize, ToSchema)]
pub(crate) struct KvPageDto {
    pub items: Vec<KvItemDto>,
    pub next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct KvItemDto {
    pub key: String,
    pub value: serde_json::Value,
}
