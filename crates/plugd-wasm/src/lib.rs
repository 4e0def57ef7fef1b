//! The plugd WebAssembly runtime: wasmtime components behind the [`plugd_runtime`] boundary.
//!
//! A wasm plugin is a component targeting the world `plugin` (or `plugin-full`) of
//! `wit/plugd-0.2.wit` (`plugd:plugin@0.2.0`), or the world `plugin` of `wit/plugd.wit`
//! (`plugd:plugin@0.1.0`). [`WasmRuntime`] implements [`Runtime`] for
//! [`RuntimeKind::Wasm`] manifests.
//!
//! # Decisions
//! - **Two worlds, one linker**: the imports of 0.1 and 0.2 are both linked (their names carry
//!   the version); the version a component targets is read from its import and export names
//!   before linking, and any other version is refused naming both. A 0.2 error may carry a
//!   status: 400..=499 is the caller's fault ([`RuntimeError::ClientError`], 401/403 become
//!   400). `lifecycle` and `tasks` are optional exports of 0.2, looked up on their own:
//!   `on-start` runs once on the first instance (its error fails the start), `on-stop` once at
//!   stop (within the grace period), `on-params-changed` through
//!   [`WasmInstance::params_changed`], `run-task` through [`WasmInstance::run_task`].
//! - **One engine per runtime**, with the pooling allocator (instantiation is a few
//!   microseconds) and epoch interruption: a background thread ticks the epoch every
//!   [`WasmConfig::epoch_tick`]; at each tick a running call checks its stop time,
//!   `min(timeout, limits.cpu)` after it started, so a guest in an endless loop traps (at most
//!   a tick late, never early) and the host gets
//!   [`RuntimeError::Timeout`] (or `LimitExceeded { limit: "cpu" }` when the CPU budget is the
//!   smaller of the two).
//! - **Compiled code is cached on disk** under [`WasmConfig::cache_dir`] (see `cache.rs`), and
//!   shared in memory between plugins whose component bytes are identical: one `InstancePre`
//!   per distinct component. Compilation runs on blocking threads, one cell per digest: starts
//!   of the same bytes wait for one compilation, starts of different components compile in
//!   parallel (at most one per core at a time; the rest wait for a turn).
//! - **Instances are pooled by default** ([`InstanceReuse::Pooled`]): a call takes a ready
//!   instance or instantiates one, and gives it back when it returns normally. An instance
//!   whose call trapped, timed out or hit a limit is dropped, never reused; the next call gets
//!   a fresh one, so a fault poisons only the instance it happened in. A plugin may therefore
//!   see memory from an earlier call of the same instance, but never rely on it: several
//!   instances serve concurrent calls, and each may be replaced at any time. Persistent state
//!   belongs in the data dir or the `kv` service. [`InstanceReuse::Fresh`] instantiates for
//!   every call (measured in `bench/wasm`).
//! - **Limits**: `limits.memory` bounds the linear memories of each instance (a refused growth
//!   that ends the call in a trap is reported as `LimitExceeded { limit: "memory" }`);
//!   `limits.concurrency` bounds calls in flight through [`plugd_runtime::CallSlots`], the
//!   policy shared with the process runtime: a call waits for a slot, the wait counts against
//!   its timeout, and a call that gets no slot in time is `Overloaded` (429).
//! - **Capabilities** (WASI 0.2): the data dir is preopened read-write as `/data`, each
//!   `permissions.fs_read` directory read-only as `/package/<path>`; the environment holds only
//!   the listed variables plus `PLUGD_DATA_DIR=/data` and `PLUGD_PARAMS` (the settings as JSON);
//!   stdout and stderr go line by line to [`HostCalls::log`] (a line is kept up to
//!   [`plugd_runtime::MAX_LOG_LINE`] bytes, the rest dropped; the host caps, rate-limits and
//!   escapes every log source), and the last stderr lines of an instance are added to the
//!   message of a trap in it (a Python or JS runtime prints the uncaught exception there). There is no network: a manifest
//!   with `permissions.net_connect` is refused at start, and sockets deny every address.
//! - **Calls run inline on the caller's task, as wasmtime async calls** (`call_async`: the guest
//!   runs on a fiber stack from the pool, polled by the caller's future). There is no thread
//!   hand-off, which was most of the cost of a short call (`bench/README.md`, release: a pooled
//!   call is 0.95 µs p50 this way, 25 µs when moved to `spawn_blocking`; `block_in_place` is as
//!   fast but wakes a thread per call, holds an OS thread for a looping guest and panics on a
//!   current-thread runtime). A long call does not hold the worker: at every epoch tick the
//!   guest yields to tokio (`tokio::task::yield_now`, so other tasks run first) and is resumed,
//!   until its deadline, where it traps as before. Host requests are awaited, not blocked on. A caller that drops
//!   the call's future cancels the guest; its instance is discarded.
//!   [`WasmInstance::call_blocking`] drives the same future on the calling (non-async) thread.
#![warn(missing_docs)]

mod bindings;
mod cache;
mod instance;
mod limits;
mod stdio;
#[cfg(feature = "test-guest")]
#[doc(hidden)]
pub mod test_guest;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use plugd_manifest::{PluginName, RuntimeKind};
use plugd_runtime::{HostCalls, Instance, InstanceSpec, Runtime, RuntimeError};
use wasmtime::component::{Component, InstancePre, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{Indices, State, VERSIONS};
use crate::cache::ContentDigest;
pub use crate::instance::WasmInstance;

/// The newest `plugd:plugin` package version this host speaks (`wit/plugd-0.2.wit`); it also
/// runs components built for `0.1.0` (`wit/plugd.wit`).
pub const WIT_VERSION: &str = "0.2.0";
const WIT_PACKAGE: &str = "plugd:plugin";

/// How the runtime is set up.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WasmConfig {
    /// Where compiled components are cached (created if missing).
    pub cache_dir: PathBuf,
    /// Whether instances are reused across calls.
    pub instance_reuse: InstanceReuse,
    /// How many component instances may exist at once in this runtime, across all plugins
    /// (the size of the pooling allocator). Instantiating past it fails the call with
    /// `LimitExceeded { limit: "instances" }`.
    pub max_instances: u32,
    /// The largest linear memory any instance may have (a ceiling over every manifest's
    /// `limits.memory`; address space is reserved for it).
    pub max_memory_size: u64,
    /// How often the epoch advances: the granularity of call deadlines.
    pub epoch_tick: Duration,
}

impl WasmConfig {
    /// The defaults, caching compiled code in `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> WasmConfig {
        WasmConfig {
            cache_dir: cache_dir.into(),
            instance_reuse: InstanceReuse::default(),
            max_instances: 2_000,
            max_memory_size: 4 << 30,
            epoch_tick: Duration::from_millis(2),
        }
    }
}

/// Whether a plugin's instances serve more than one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceReuse {
    /// Keep up to `max_idle` ready instances per plugin and reuse them; a faulted instance is
    /// dropped and replaced.
    Pooled {
        /// Ready instances kept per plugin between calls.
        max_idle: usize,
    },
    /// A new instance for every call; nothing survives a call.
    Fresh,
}

impl Default for InstanceReuse {
    fn default() -> Self {
        InstanceReuse::Pooled { max_idle: 4 }
    }
}

/// Counters of the compiled-code cache, for tests and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Components compiled by cranelift (cache misses).
    pub compiled: u64,
    /// Components loaded from a cache file.
    pub loaded: u64,
    /// Starts that reused code already in memory (same component bytes as a running plugin).
    pub shared: u64,
}

/// Why the runtime could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WasmError {
    /// wasmtime refused the configuration.
    #[error("Could not set up the wasm engine: {0}")]
    Engine(String),
    /// The thread that advances the epoch could not be started (without it no deadline fires).
    #[error("Could not start the wasm epoch thread: {0}")]
    EpochThread(io::Error),
    /// The cache directory could not be created.
    #[error("Could not create the compiled-code cache `{path}`: {source}")]
    CacheDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// The wasm runtime: one wasmtime engine, its linker, and the compiled-code cache.
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    linker: Linker<State>,
    pub(crate) config: WasmConfig,
    engine_key: String,
    /// Compiled code by content digest, shared while some instance uses it. One cell per
    /// digest: the first start of a component compiles it, concurrent starts of the same bytes
    /// wait for that one, and starts of other components compile meanwhile.
    codes: Mutex<HashMap<ContentDigest, CodeCell>>,
    /// Compilations running at once (one per core: a compilation is single-threaded).
    /// Starts beyond it wait here for a turn.
    compile_slots: Arc<tokio::sync::Semaphore>,
    compiled: AtomicU64,
    loaded: AtomicU64,
    shared: AtomicU64,
}

type CodeCell = Arc<tokio::sync::OnceCell<Weak<Code>>>;

/// One compiled component, linked and ready to instantiate.
pub(crate) struct Code {
    pub(crate) pre: InstancePre<State>,
    /// Its exports, in the world it targets.
    pub(crate) indices: Indices,
    /// The `plugd:plugin` version it targets (one of `bindings::VERSIONS`).
    pub(crate) version: &'static str,
}

impl WasmRuntime {
    /// Sets up the engine, the linker and the cache directory, and starts the epoch ticker.
    pub fn new(config: WasmConfig) -> Result<WasmRuntime, WasmError> {
        WasmRuntime::with_ticker(config, std::thread::Builder::new())
    }

    /// [`WasmRuntime::new`] with the epoch thread built by `ticker` (tests make it fail).
    fn with_ticker(
        config: WasmConfig,
        ticker: std::thread::Builder,
    ) -> Result<WasmRuntime, WasmError> {
        let mut pool = PoolingAllocationConfig::default();
        let instances = config.max_instances.max(1);
        let max_memory = usize::try_from(config.max_memory_size).unwrap_or(usize::MAX);
        // A component built by componentize-py or componentize-js holds several core
        // instances, memories and tables; these ratios leave room for them.
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(8))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(8))
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(32)
            .max_core_instance_size(4 << 20)
            .max_component_instance_size(4 << 20)
            .table_elements(1_000_000)
            .max_memory_size(max_memory)
            // One fiber stack per call in flight; no more calls than instances can run.
            .total_stacks(instances);
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| WasmError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        // Both worlds' imports: their names carry the version, so they do not collide.
        bindings::v01::Plugin::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
            &mut linker,
            |state| state,
        )
        .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        bindings::v02::PluginFull::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
            &mut linker,
            |state| state,
        )
        .map_err(|e| WasmError::Engine(format!("{e:#}")))?;

        cache::create_dir(&config.cache_dir).map_err(|source| WasmError::CacheDir {
            path: config.cache_dir.clone(),
            source,
        })?;
        let engine_key = cache::engine_key(&engine);
        let inner = Arc::new(Inner {
            engine,
            linker,
            config,
            engine_key,
            codes: Mutex::new(HashMap::new()),
            compile_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            compiled: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            shared: AtomicU64::new(0),
        });
        spawn_ticker(&inner, ticker).map_err(WasmError::EpochThread)?;
        Ok(WasmRuntime { inner })
    }

    /// Cache counters since this runtime was created.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.inner.compiled.load(Ordering::Relaxed),
            loaded: self.inner.loaded.load(Ordering::Relaxed),
            shared: self.inner.shared.load(Ordering::Relaxed),
        }
    }

    /// Starts a plugin and returns the concrete instance (for [`WasmInstance::call_blocking`]).
    pub async fn start_wasm(
        &self,
        spec: InstanceSpec,
        host: Arc<dyn HostCalls>,
    ) -> Result<Arc<WasmInstance>, RuntimeError> {
        let plugin = spec.manifest.name.clone();
        if spec.manifest.runtime != RuntimeKind::Wasm {
            return Err(RuntimeError::Refused {
                plugin,
                reason: "its manifest asks for `runtime = \"process\"`, not `wasm`".to_owned(),
            });
        }
        if !spec.manifest.permissions.net_connect.is_empty() {
            return Err(RuntimeError::Refused {
                plugin,
                reason: "network for wasm plugins is not supported yet (`permissions.net_connect`); hint: use `runtime = \"process\"` or remove `net.connect`".to_owned(),
            });
        }
        let Some(entry) = spec.manifest.entry.first().cloned() else {
            return Err(RuntimeError::StartFailed {
                plugin,
                reason: "its manifest has no `entry`; hint: set `entry = \"plugin.wasm\"`"
                    .to_owned(),
            });
        };
        let handle = tokio::runtime::Handle::current();
        let path = spec.package_dir.join(&entry);
        let code = self.inner.code_for(&plugin, path, entry).await?;
        WasmInstance::start(self.inner.clone(), code, spec, host, handle).await
    }
}

#[async_trait]
impl Runtime for WasmRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Wasm
    }

    async fn start(
        &self,
        spec: InstanceSpec,
        host: Arc<dyn HostCalls>,
    ) -> Result<Arc<dyn Instance>, RuntimeError> {
        let instance: Arc<dyn Instance> = self.start_wasm(spec, host).await?;
        Ok(instance)
    }

    /// Removes every compiled file in the cache that no live component uses (stopped plugins,
    /// replaced versions, files of another wasmtime). A plugin started again later compiles
    /// again. The host calls this under its lifecycle lock, so no start is compiling meanwhile.
    async fn collect_garbage(&self) -> Result<u64, String> {
        let live: std::collections::HashSet<PathBuf> = {
            let codes = self.inner.codes.lock().unwrap_or_else(|e| e.into_inner());
            codes
                .iter()
                .filter(|(_, cell)| cell.get().is_some_and(|code| code.strong_count() > 0))
                .map(|(digest, _)| {
                    cache::path(&self.inner.config.cache_dir, digest, &self.inner.engine_key)
                })
                .collect()
        };
        let dir = self.inner.config.cache_dir.clone();
        tokio::task::spawn_blocking(move || cache::collect(&dir, &live))
            .await
            .map_err(|e| format!("the wasm cache collection failed: {e}"))?
            .map_err(|e| {
                format!(
                    "the wasm cache `{}` could not be cleaned: {e}",
                    self.inner.config.cache_dir.display()
                )
            })
    }
}

impl Inner {
    /// Reads the component at `path` and returns its linked code: shared with a running plugin
    /// of the same bytes, or compiled (or loaded from the cache) on a blocking thread.
    async fn code_for(
        self: &Arc<Self>,
        plugin: &PluginName,
        path: PathBuf,
        entry: String,
    ) -> Result<Arc<Code>, RuntimeError> {
        let panicked = |e: tokio::task::JoinError| RuntimeError::StartFailed {
            plugin: plugin.clone(),
            reason: format!("compiling `{entry}` panicked: {e}"),
        };
        // Read once: the digest, the cache key and the compiled code all come from these bytes.
        let read = {
            let (plugin, entry) = (plugin.clone(), entry.clone());
            tokio::task::spawn_blocking(move || {
                let bytes = std::fs::read(&path).map_err(|e| RuntimeError::StartFailed {
                    plugin,
                    reason: format!("cannot read `{entry}`: {e}; hint: build the component first"),
                })?;
                let digest = cache::digest(&bytes);
                Ok::<_, RuntimeError>((bytes, digest))
            })
        };
        let (bytes, digest) = read.await.map_err(panicked)??;
        let bytes = Arc::new(bytes);
        // A cell whose code was dropped between our lookup and our upgrade is replaced; one more
        // round then compiles. Bounded: each round either returns or replaces a dead cell.
        for _ in 0..3 {
            let cell = self.cell(&digest);
            let mut made = None;
            let init = cell
                .get_or_try_init(|| async {
                    let code = self.compile(plugin, &bytes, digest, &entry).await?;
                    let weak = Arc::downgrade(&code);
                    made = Some(code);
                    Ok::<_, RuntimeError>(weak)
                })
                .await;
            let weak = match init {
                Ok(weak) => weak,
                Err(e) => {
                    // A component that does not compile or link leaves no entry behind.
                    let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
                    if codes
                        .get(&digest)
                        .is_some_and(|c| Arc::ptr_eq(c, &cell) && !c.initialized())
                    {
                        codes.remove(&digest);
                    }
                    return Err(e);
                }
            };
            if let Some(code) = made {
                return Ok(code);
            }
            if let Some(code) = weak.upgrade() {
                self.shared.fetch_add(1, Ordering::Relaxed);
                return Ok(code);
            }
            let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
            if codes.get(&digest).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                codes.remove(&digest);
            }
        }
        self.compile(plugin, &bytes, digest, &entry).await
    }

    /// The cell of `digest`: the live one, or a new one in place of a missing or dead one.
    fn cell(&self, digest: &ContentDigest) -> CodeCell {
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        let live = |cell: &CodeCell| match cell.get() {
            // Still compiling: wait for it.
            None => true,
            Some(weak) => weak.strong_count() > 0,
        };
        if let Some(cell) = codes.get(digest).filter(|c| live(c)) {
            return cell.clone();
        }
        codes.retain(|_, cell| live(cell));
        let cell = CodeCell::default();
        codes.insert(*digest, cell.clone());
        cell
    }

    /// Compiles (or loads), checks and links one component on a blocking thread, waiting for
    /// a compile slot first.
    async fn compile(
        self: &Arc<Self>,
        plugin: &PluginName,
        bytes: &Arc<Vec<u8>>,
        digest: ContentDigest,
        entry: &str,
    ) -> Result<Arc<Code>, RuntimeError> {
        // The semaphore is never closed. The slot moves into the blocking job, so a start that
        // is dropped meanwhile does not free it before the compilation ends.
        let slot = self.compile_slots.clone().acquire_owned().await.ok();
        let (inner, bytes) = (self.clone(), bytes.clone());
        let (name, entry_owned) = (plugin.clone(), entry.to_owned());
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            inner.link(&name, &bytes, &digest, &entry_owned)
        })
        .await
        .map_err(|e| RuntimeError::StartFailed {
            plugin: plugin.clone(),
            reason: format!("compiling `{entry}` panicked: {e}"),
        })?
    }

    /// Compiles (or loads), checks and links the component `bytes`.
    fn link(
        &self,
        plugin: &PluginName,
        bytes: &[u8],
        digest: &ContentDigest,
        entry: &str,
    ) -> Result<Arc<Code>, RuntimeError> {
        let component = self.component(plugin, bytes, digest, entry)?;
        let version = check_world(plugin, entry, &component, &self.engine)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::Refused {
                plugin: plugin.clone(),
                reason: format!(
                    "component `{entry}` cannot be linked: {}; hint: plugd provides WASI 0.2 (without network) and `{WIT_PACKAGE}/host@{version}`",
                    e.root_cause()
                ),
            })?;
        let indices = Indices::new(&pre, version).map_err(|e| RuntimeError::Refused {
            plugin: plugin.clone(),
            reason: format!(
                "component `{entry}` does not export `{WIT_PACKAGE}/guest@{version}`: {}",
                e.root_cause()
            ),
        })?;
        Ok(Arc::new(Code {
            pre,
            indices,
            version,
        }))
    }

    fn component(
        &self,
        plugin: &PluginName,
        bytes: &[u8],
        digest: &ContentDigest,
        entry: &str,
    ) -> Result<Component, RuntimeError> {
        let path = cache::path(&self.config.cache_dir, digest, &self.engine_key);
        if let Some(component) = cache::load(&self.engine, &path) {
            self.loaded.fetch_add(1, Ordering::Relaxed);
            return Ok(component);
        }
        let not_component = |e: wasmtime::Error| RuntimeError::StartFailed {
            plugin: plugin.clone(),
            reason: format!(
                "`{entry}` is not a valid WebAssembly component: {}; hint: wrap a core module with `wasm-tools component new`",
                e.root_cause()
            ),
        };
        let compiled = self
            .engine
            .precompile_component(bytes)
            .map_err(not_component)?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = cache::store(&path, &compiled) {
            tracing::warn!(path = %path.display(), error = %e, "Could not write the compiled-code cache");
        }
        // SAFETY: `compiled` was produced just now by this engine's `precompile_component`.
        unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(not_component)
    }
}

/// Finds the version of `plugd:plugin` the component targets (one of [`VERSIONS`]) and refuses
/// any other before linking, so the author gets a version message instead of a type mismatch.
fn check_world(
    plugin: &PluginName,
    entry: &str,
    component: &Component,
    engine: &Engine,
) -> Result<&'static str, RuntimeError> {
    let ty = component.component_type();
    let names = ty
        .imports(engine)
        .chain(ty.exports(engine))
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name);
    let mut targeted: Option<&'static str> = None;
    let mut exports_guest = false;
    for name in names {
        let Some(rest) = name
            .strip_prefix(WIT_PACKAGE)
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
        let ours = VERSIONS.iter().copied().find(|v| compatible(version, v));
        let Some(ours) = ours.filter(|v| targeted.is_none_or(|t| t == *v)) else {
            let shown = if version.is_empty() {
                "an unversioned"
            } else {
                version
            };
            let speaks = VERSIONS
                .iter()
                .rev()
                .map(|v| format!("`{WIT_PACKAGE}@{v}`"))
                .collect::<Vec<_>>()
                .join(" and ");
            let mixed = match targeted {
                Some(t) if ours.is_some() => format!(" mixed with `{WIT_PACKAGE}@{t}`"),
                _ => String::new(),
            };
            return Err(RuntimeError::Refused {
                plugin: plugin.clone(),
                reason: format!(
                    "component `{entry}` targets `{WIT_PACKAGE}@{shown}`{mixed}, this host speaks {speaks}; hint: rebuild the plugin against this host's `wit/plugd-0.2.wit`"
                ),
            });
        };
        targeted = Some(ours);
        if rest.starts_with("guest@") {
            exports_guest = true;
        }
    }
    match targeted {
        Some(version) if exports_guest => Ok(version),
        _ => Err(RuntimeError::Refused {
            plugin: plugin.clone(),
            reason: format!(
                "component `{entry}` does not export `{WIT_PACKAGE}/guest`; hint: build it for the world `plugin` of `wit/plugd-0.2.wit`"
            ),
        }),
    }
}

/// Semver compatibility of `version` with `ours`: same major, and for `0.x` the same minor.
fn compatible(version: &str, ours: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(version), parse(ours)) {
        (Some((0, minor)), Some((0, ours))) => minor == ours,
        (Some((major, _)), Some((ours, _))) => major == ours,
        _ => false,
    }
}

/// Advances the engine's epoch until the runtime is dropped.
fn spawn_ticker(inner: &Arc<Inner>, ticker: std::thread::Builder) -> io::Result<()> {
    let weak = Arc::downgrade(inner);
    let engine = inner.engine.clone();
    let tick = inner.config.epoch_tick.max(Duration::from_micros(100));
    ticker
        .name("plugd-wasm-epoch".to_owned())
        .spawn(move || {
            while weak.strong_count() > 0 {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .map(drop)
}
