//! The plugd WebAssembly runtime: wasmtime components behind the [`plugd_runtime`] boundary.
//!
//! A wasm plugin is a component targeting the world `plugin` of `wit/plugd.wit`
//! (`plugd:plugin@0.1.0`). [`WasmRuntime`] implements [`Runtime`] for
//! [`RuntimeKind::Wasm`] manifests.
//!
//! # Decisions
//! - **One engine per runtime**, with the pooling allocator (instantiation is a few
//!   microseconds) and epoch interruption: a background thread ticks the epoch every
//!   [`WasmConfig::epoch_tick`]; at each tick a running call checks its stop time,
//!   `min(timeout, limits.cpu)` after it started, so a guest in an endless loop traps (at most
//!   a tick late, never early) and the host gets
//!   [`RuntimeError::Timeout`] (or `LimitExceeded { limit: "cpu" }` when the CPU budget is the
//!   smaller of the two).
//! - **Compiled code is cached on disk** under [`WasmConfig::cache_dir`] (see `cache.rs`), and
//!   shared in memory between plugins whose component bytes are identical: one `InstancePre`
//!   per distinct component.
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
//!   `limits.concurrency` bounds calls in flight: a call waits for a slot, and the wait counts
//!   against its timeout (the same policy as the process runtime).
//! - **Capabilities** (WASI 0.2): the data dir is preopened read-write as `/data`, each
//!   `permissions.fs_read` directory read-only as `/package/<path>`; the environment holds only
//!   the listed variables plus `PLUGD_DATA_DIR=/data` and `PLUGD_PARAMS` (the settings as JSON);
//!   stdout and stderr go line by line to [`HostCalls::log`]. There is no network: a manifest
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
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{PluginPre, State};
use crate::cache::ContentDigest;
pub use crate::instance::WasmInstance;

/// The `plugd:plugin` package version this host speaks.
pub const WIT_VERSION: &str = "0.1.0";
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
    /// Compiled code by content digest, shared while some instance uses it.
    codes: Mutex<HashMap<ContentDigest, Weak<Code>>>,
    compiled: AtomicU64,
    loaded: AtomicU64,
    shared: AtomicU64,
}

/// One compiled component, linked and ready to instantiate.
pub(crate) struct Code {
    pub(crate) pre: PluginPre<State>,
}

impl WasmRuntime {
    /// Sets up the engine, the linker and the cache directory, and starts the epoch ticker.
    pub fn new(config: WasmConfig) -> Result<WasmRuntime, WasmError> {
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
        bindings::Plugin::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
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
            compiled: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            shared: AtomicU64::new(0),
        });
        spawn_ticker(&inner);
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
        let inner = self.inner.clone();
        let handle = tokio::runtime::Handle::current();
        let path = spec.package_dir.join(&entry);
        let code = {
            let name = plugin.clone();
            tokio::task::spawn_blocking(move || inner.code_for(&name, &path, &entry))
                .await
                .map_err(|e| RuntimeError::StartFailed {
                    plugin: plugin.clone(),
                    reason: format!("compiling panicked: {e}"),
                })??
        };
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
}

impl Inner {
    /// Reads, checks, compiles (or loads) and links the component at `path`.
    fn code_for(
        &self,
        plugin: &PluginName,
        path: &std::path::Path,
        entry: &str,
    ) -> Result<Arc<Code>, RuntimeError> {
        // Read once: the digest, the cache key and the compiled code all come from these bytes.
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::StartFailed {
            plugin: plugin.clone(),
            reason: format!("cannot read `{entry}`: {e}; hint: build the component first"),
        })?;
        let digest = cache::digest(&bytes);
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(code) = codes.get(&digest).and_then(Weak::upgrade) {
            self.shared.fetch_add(1, Ordering::Relaxed);
            return Ok(code);
        }
        // Compiling under the lock means two starts of one component compile it once.
        let component = self.component(plugin, &bytes, &digest, entry)?;
        check_world(plugin, entry, &component, &self.engine)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::Refused {
                plugin: plugin.clone(),
                reason: format!(
                    "component `{entry}` cannot be linked: {}; hint: plugd provides WASI 0.2 (without network) and `{WIT_PACKAGE}/host@{WIT_VERSION}`",
                    e.root_cause()
                ),
            })?;
        let pre = PluginPre::new(pre).map_err(|e| RuntimeError::Refused {
            plugin: plugin.clone(),
            reason: format!(
                "component `{entry}` does not export `{WIT_PACKAGE}/guest@{WIT_VERSION}`: {}",
                e.root_cause()
            ),
        })?;
        let code = Arc::new(Code { pre });
        codes.retain(|_, weak| weak.strong_count() > 0);
        codes.insert(digest, Arc::downgrade(&code));
        Ok(code)
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

/// Refuses a component built against another version of `plugd:plugin` before linking, so the
/// author gets a version message instead of a type mismatch.
fn check_world(
    plugin: &PluginName,
    entry: &str,
    component: &Component,
    engine: &Engine,
) -> Result<(), RuntimeError> {
    let ty = component.component_type();
    let names = ty
        .imports(engine)
        .chain(ty.exports(engine))
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name);
    let mut exports_guest = false;
    for name in names {
        let Some(rest) = name
            .strip_prefix(WIT_PACKAGE)
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
        if !compatible(version) {
            let shown = if version.is_empty() {
                "an unversioned"
            } else {
                version
            };
            return Err(RuntimeError::Refused {
                plugin: plugin.clone(),
                reason: format!(
                    "component `{entry}` targets `{WIT_PACKAGE}@{shown}`, this host speaks `{WIT_PACKAGE}@{WIT_VERSION}`; hint: rebuild the plugin against this host's `wit/plugd.wit`"
                ),
            });
        }
        if rest.starts_with("guest@") {
            exports_guest = true;
        }
    }
    if !exports_guest {
        return Err(RuntimeError::Refused {
            plugin: plugin.clone(),
            reason: format!(
                "component `{entry}` does not export `{WIT_PACKAGE}/guest@{WIT_VERSION}`; hint: build it for the world `plugin` of `wit/plugd.wit`"
            ),
        });
    }
    Ok(())
}

/// Semver compatibility with [`WIT_VERSION`]: same major, and for `0.x` the same minor.
fn compatible(version: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(version), parse(WIT_VERSION)) {
        (Some((0, minor)), Some((0, ours))) => minor == ours,
        (Some((major, _)), Some((ours, _))) => major == ours,
        _ => false,
    }
}

/// Advances the engine's epoch until the runtime is dropped.
fn spawn_ticker(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let engine = inner.engine.clone();
    let tick = inner.config.epoch_tick.max(Duration::from_micros(100));
    let spawned = std::thread::Builder::new()
        .name("plugd-wasm-epoch".to_owned())
        .spawn(move || {
            while weak.strong_count() > 0 {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        });
    if let Err(e) = spawned {
        // Without the ticker no deadline fires; refuse nothing now, but say so loudly.
        tracing::error!(error = %e, "Could not start the wasm epoch thread; call deadlines will not fire");
    }
}
