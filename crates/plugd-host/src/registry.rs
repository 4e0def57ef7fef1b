//! Per-plugin records: state, the running instance, counters and the log ring.

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use plugd_manifest::{Manifest, PluginName};
use plugd_runtime::{ActionInfo, Instance, LogLevel, LogSource};

/// Where a plugin is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginState {
    /// Found on disk, manifest read.
    Discovered,
    /// Dependencies resolved; waiting for its wave.
    Resolved,
    /// Its runtime is starting it.
    Starting,
    /// Serving calls.
    Running,
    /// Being stopped.
    Stopping,
    /// Stopped (unloaded, or shut down with the host).
    Stopped,
    /// Could not be loaded or crashed for good; see the reason.
    Failed,
}

impl PluginState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Discovered => "discovered",
            PluginState::Resolved => "resolved",
            PluginState::Starting => "starting",
            PluginState::Running => "running",
            PluginState::Stopping => "stopping",
            PluginState::Stopped => "stopped",
            PluginState::Failed => "failed",
        }
    }
}

impl fmt::Display for PluginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A package in the plugins directory that could not even be named (no readable manifest and a
/// directory name that is not a valid plugin name).
#[derive(Clone, Debug)]
pub struct Problem {
    /// The package directory.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// One captured log line.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// When the host received it.
    pub at: SystemTime,
    /// Where it came from.
    pub source: LogSource,
    /// Its level.
    pub level: LogLevel,
    /// The text.
    pub message: String,
}

/// A snapshot of one plugin for listings and status.
#[derive(Clone, Debug)]
pub struct PluginInfo {
    /// Name.
    pub name: PluginName,
    /// The manifest, when it could be read.
    pub manifest: Option<Arc<Manifest>>,
    /// Package directory.
    pub dir: PathBuf,
    /// Lifecycle state.
    pub state: PluginState,
    /// Why it failed or stopped, if it did.
    pub reason: Option<String>,
    /// Load wave (0 = no dependencies), when resolved.
    pub wave: Option<usize>,
    /// Actions: as announced by the running plugin, else from the manifest.
    pub actions: Vec<ActionInfo>,
    /// Restarts after crashes.
    pub restarts: u32,
    /// The runtime's last error (e.g. the last crash), even when it recovered.
    pub last_error: Option<String>,
    /// OS process id, if any.
    pub pid: Option<u32>,
    /// Calls answered (successfully or not).
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Calls in flight now.
    pub in_flight: u64,
    /// Replies that arrived after their call timed out.
    pub late_replies: u64,
    /// Capability requests denied by policy.
    pub denials: u64,
    /// Runtime-specific details.
    pub details: Vec<(String, String)>,
    /// Trust of the running (or last started) package.
    pub trust: Option<TrustLevel>,
}

/// Whether a package was signed by a key in the trust store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustLevel {
    /// Signed by the key with this id, which is in the trust store.
    Trusted {
        /// Key id.
        key_id: String,
    },
    /// Not signed; runs with the untrusted capability set (refused in strict mode).
    Untrusted,
}

pub(crate) struct Slot {
    pub name: PluginName,
    pub inner: Mutex<SlotInner>,
    pub logs: Mutex<VecDeque<LogLine>>,
    pub log_capacity: usize,
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub in_flight: AtomicU64,
    pub denials: AtomicU64,
}

pub(crate) struct SlotInner {
    pub dir: PathBuf,
    pub manifest: Option<Arc<Manifest>>,
    pub state: PluginState,
    pub reason: Option<String>,
    pub wave: Option<usize>,
    pub instance: Option<Arc<dyn Instance>>,
    pub trust: Option<TrustLevel>,
}

impl Slot {
    pub(crate) fn new(name: PluginName, dir: PathBuf, log_capacity: usize) -> Arc<Self> {
        Arc::new(Slot {
            name,
            inner: Mutex::new(SlotInner {
                dir,
                manifest: None,
                state: PluginState::Discovered,
                reason: None,
                wave: None,
                instance: None,
                trust: None,
            }),
            logs: Mutex::new(VecDeque::new()),
            log_capacity,
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            denials: AtomicU64::new(0),
        })
    }

    pub(crate) fn set_state(&self, state: PluginState, reason: Option<String>) {
        let mut inner = self.inner.lock();
        inner.state = state;
        inner.reason = reason;
    }

    pub(crate) fn push_log(&self, source: LogSource, level: LogLevel, message: &str) {
        let mut logs = self.logs.lock();
        if logs.len() == self.log_capacity {
            logs.pop_front();
        }
        logs.push_back(LogLine {
            at: SystemTime::now(),
            source,
            level,
            message: message.to_owned(),
        });
    }

    pub(crate) fn info(&self) -> PluginInfo {
        let inner = self.inner.lock();
        let status = inner
            .instance
            .as_ref()
            .map(|i| i.status())
            .unwrap_or_default();
        let mut actions = inner
            .instance
            .as_ref()
            .map(|i| i.actions())
            .unwrap_or_default();
        if actions.is_empty()
            && let Some(m) = &inner.manifest
        {
            actions = m
                .actions
                .iter()
                .map(|a| ActionInfo {
                    name: a.name.clone(),
                    description: a.description.clone(),
                })
                .collect();
        }
        let (state, reason) = if inner.state == PluginState::Running && status.dead {
            (PluginState::Failed, status.last_error.clone())
        } else {
            (inner.state, inner.reason.clone())
        };
        PluginInfo {
            name: self.name.clone(),
            manifest: inner.manifest.clone(),
            dir: inner.dir.clone(),
            state,
            reason,
            wave: inner.wave,
            actions,
            restarts: status.restarts,
            last_error: status.last_error,
            pid: status.pid,
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            late_replies: status.late_replies,
            denials: self.denials.load(Ordering::Relaxed),
            details: status.details,
            trust: inner.trust.clone(),
        }
    }
}
