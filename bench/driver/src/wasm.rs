//! `plugd-bench wasm`: the wasm runtime in-process (call latency of `hello-c-wasm` on the async
//! `Instance::call` path and on `call_blocking`, pooled and fresh instances, next to the thread
//! hand-offs it avoids) and host start-up with 1,000 copies of `hello-c-wasm`, warm cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use plugd_host::{Host, HostConfig, PluginState};
use plugd_manifest::{ActionName, Manifest};
use plugd_runtime::{Instance, InstanceSpec, Invocation, NullHost};
use plugd_wasm::{InstanceReuse, WasmConfig, WasmInstance, WasmRuntime};
use serde_json::value::RawValue;

use crate::plugins::HELLO_C_WASM;

/// What `plugd-bench wasm` measures.
pub(crate) struct Config {
    pub(crate) repo: PathBuf,
    /// Calls per latency case (split over the rounds).
    pub(crate) calls: usize,
    pub(crate) warmup: usize,
    pub(crate) rounds: usize,
    /// Plugin copies for the start-up measurement (0 skips it).
    pub(crate) copies: usize,
    pub(crate) payload: String,
}

/// The latency cases, in the order they run within a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    AsyncPooled,
    AsyncFresh,
    BlockingPooled,
    BlockingFresh,
    SpawnBlockingPooled,
    BlockInPlacePooled,
}

impl Case {
    const ALL: [Case; 6] = [
        Case::AsyncPooled,
        Case::AsyncFresh,
        Case::BlockingPooled,
        Case::BlockingFresh,
        Case::SpawnBlockingPooled,
        Case::BlockInPlacePooled,
    ];

    fn label(self) -> &'static str {
        match self {
            Case::AsyncPooled => "Instance::call (async), pooled",
            Case::AsyncFresh => "Instance::call (async), fresh",
            Case::BlockingPooled => "call_blocking, pooled",
            Case::BlockingFresh => "call_blocking, fresh",
            Case::SpawnBlockingPooled => "spawn_blocking(call_blocking), pooled",
            Case::BlockInPlacePooled => "block_in_place(call_blocking), pooled",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Case::AsyncPooled => "async_pooled",
            Case::AsyncFresh => "async_fresh",
            Case::BlockingPooled => "blocking_pooled",
            Case::BlockingFresh => "blocking_fresh",
            Case::SpawnBlockingPooled => "spawn_blocking_pooled",
            Case::BlockInPlacePooled => "block_in_place_pooled",
        }
    }

    fn fresh(self) -> bool {
        matches!(self, Case::AsyncFresh | Case::BlockingFresh)
    }
}

/// Runs the latency cases, then the start-up measurement. Must run on a multi-threaded runtime
/// (`block_in_place`).
pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let scratch = std::env::temp_dir().join(format!("plugd-bench-wasm-{}", std::process::id()));
    let result = run_in(&config, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn run_in(config: &Config, scratch: &Path) -> anyhow::Result<()> {
    let source = config.repo.join("examples/plugins").join(HELLO_C_WASM);
    ensure!(
        source.join("plugin.wasm").is_file(),
        "`{}` is missing; hint: run `examples/plugins/build.sh`",
        source.join("plugin.wasm").display()
    );
    let payload =
        RawValue::from_string(config.payload.clone()).context("The payload is not valid JSON")?;
    println!(
        "wasm in-process: `{HELLO_C_WASM}` echo, {}-byte payload, {} calls per case in {} rounds, {} warm-up calls, 1 in flight",
        payload.get().len(),
        config.calls,
        config.rounds,
        config.warmup
    );

    let pooled_rt = WasmRuntime::new(WasmConfig::new(scratch.join("cache")))?;
    let mut fresh_config = WasmConfig::new(scratch.join("cache"));
    fresh_config.instance_reuse = InstanceReuse::Fresh;
    let fresh_rt = WasmRuntime::new(fresh_config)?;
    let pooled = start(&pooled_rt, spec(&source, scratch, "pooled")?).await?;
    let fresh = start(&fresh_rt, spec(&source, scratch, "fresh")?).await?;
    let invocation = Invocation {
        action: ActionName::new("echo")?,
        payload,
        timeout: None,
        chain: Vec::new(),
    };
    let answer = pooled.call(again(&invocation)).await?;
    let wrapped = format!(r#"{{"value":{}}}"#, invocation.payload.get());
    ensure!(
        answer.result.get() == wrapped || answer.result.get() == invocation.payload.get(),
        "`echo` answered {}",
        answer.result.get()
    );

    let per_round = (config.calls / config.rounds.max(1)).max(1);
    let mut samples: Vec<(Case, Vec<Duration>)> =
        Case::ALL.iter().map(|&c| (c, Vec::new())).collect();
    for round in 0..config.rounds.max(1) {
        for (case, out) in &mut samples {
            let instance = if case.fresh() { &fresh } else { &pooled };
            let warmup = if round == 0 { config.warmup } else { 0 };
            out.extend(measure(*case, instance, &invocation, warmup, per_round).await?);
        }
    }
    println!(
        "\n{:<40} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "case", "calls", "p50 µs", "p90 µs", "p99 µs", "mean µs"
    );
    let mut json = serde_json::Map::new();
    let p50 = |case: Case| percentile(&samples_of(&samples, case), 0.5);
    for (case, s) in &samples {
        let mut s = s.clone();
        s.sort();
        let mean = s.iter().sum::<Duration>().as_secs_f64() * 1e6 / s.len() as f64;
        println!(
            "{:<40} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            case.label(),
            s.len(),
            percentile(&s, 0.5),
            percentile(&s, 0.9),
            percentile(&s, 0.99),
            mean
        );
        json.insert(
            format!("{}_p50_us", case.key()),
            round2(percentile(&s, 0.5)),
        );
        json.insert(
            format!("{}_p99_us", case.key()),
            round2(percentile(&s, 0.99)),
        );
    }
    let (ap, af) = (p50(Case::AsyncPooled), p50(Case::AsyncFresh));
    println!(
        "\ntarget: wasm call p50, pooled instance, async path {ap:.2} µs (≤ 1 µs: {}); fresh instance {af:.2} µs (≤ 10 µs: {})",
        verdict(ap <= 1.0),
        verdict(af <= 10.0)
    );
    drop((pooled, fresh, pooled_rt, fresh_rt));

    if config.copies > 0 {
        let (took, running, stats) = start_many(&source, scratch, config.copies).await?;
        println!(
            "\nhost start, {} copies of `{HELLO_C_WASM}`, warm cache: Host::start to all running {:.3} s ({running} running; compiled {}, loaded {}, shared {})",
            config.copies,
            took.as_secs_f64(),
            stats.compiled,
            stats.loaded,
            stats.shared
        );
        println!(
            "target: host start with 1,000 wasm plugins, warm cache {:.3} s (≤ 1 s: {})",
            took.as_secs_f64(),
            verdict(took <= Duration::from_secs(1))
        );
        json.insert("start_copies".into(), config.copies.into());
        json.insert("start_ms".into(), round2(took.as_secs_f64() * 1000.0));
    }
    println!(
        "JSON {}",
        serde_json::json!({ "bench": "plugd-wasm", "results": json })
    );
    Ok(())
}

/// A copy of an invocation (`Invocation` is not `Clone`: the host moves each one into a call).
fn again(invocation: &Invocation) -> Invocation {
    Invocation {
        action: invocation.action.clone(),
        payload: invocation.payload.clone(),
        timeout: invocation.timeout,
        chain: invocation.chain.clone(),
    }
}

fn samples_of(samples: &[(Case, Vec<Duration>)], case: Case) -> Vec<Duration> {
    let mut s = samples
        .iter()
        .find(|(c, _)| *c == case)
        .map(|(_, s)| s.clone())
        .unwrap_or_default();
    s.sort();
    s
}

/// One case: `warmup` untimed calls, then `n` timed ones, one at a time.
async fn measure(
    case: Case,
    instance: &Arc<WasmInstance>,
    invocation: &Invocation,
    warmup: usize,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    match case {
        Case::AsyncPooled | Case::AsyncFresh => {
            let dyn_instance: Arc<dyn Instance> = instance.clone();
            for _ in 0..warmup {
                dyn_instance.call(again(invocation)).await?;
            }
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                // The clone is the caller's (`Host::call` owns its payload); it is timed too.
                let t = Instant::now();
                dyn_instance.call(again(invocation)).await?;
                out.push(t.elapsed());
            }
            Ok(out)
        }
        Case::BlockingPooled | Case::BlockingFresh => {
            // A thread of its own, as an embedder calling from outside the runtime would.
            let (instance, invocation) = (instance.clone(), again(invocation));
            tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Duration>> {
                for _ in 0..warmup {
                    instance.call_blocking(&invocation)?;
                }
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    instance.call_blocking(&invocation)?;
                    out.push(t.elapsed());
                }
                Ok(out)
            })
            .await?
        }
        Case::SpawnBlockingPooled => {
            // The design this runtime had before: every call moved to the blocking pool.
            let mut out = Vec::with_capacity(n);
            for i in 0..warmup + n {
                let (instance, invocation) = (instance.clone(), again(invocation));
                let t = Instant::now();
                tokio::task::spawn_blocking(move || instance.call_blocking(&invocation)).await??;
                if i >= warmup {
                    out.push(t.elapsed());
                }
            }
            Ok(out)
        }
        Case::BlockInPlacePooled => {
            // The alternative: run on this worker, handing its other tasks to another thread.
            let mut out = Vec::with_capacity(n);
            for i in 0..warmup + n {
                let t = Instant::now();
                tokio::task::block_in_place(|| instance.call_blocking(invocation))?;
                if i >= warmup {
                    out.push(t.elapsed());
                }
            }
            Ok(out)
        }
    }
}

/// Starts `copies` plugins once (compiling into the cache), shuts the host down, then starts
/// them again with a new runtime and host; returns the second `Host::start`'s time.
async fn start_many(
    source: &Path,
    scratch: &Path,
    copies: usize,
) -> anyhow::Result<(Duration, usize, plugd_wasm::CacheStats)> {
    let plugins = scratch.join("many/plugins");
    let state = scratch.join("many/state");
    let toml = std::fs::read_to_string(source.join("plugin.toml"))?;
    let wasm = std::fs::read(source.join("plugin.wasm"))?;
    let needle = format!("name = \"{HELLO_C_WASM}\"");
    ensure!(
        toml.contains(&needle),
        "`{HELLO_C_WASM}`'s manifest has no `{needle}`"
    );
    for i in 0..copies {
        let name = format!("{HELLO_C_WASM}-{i:04}");
        let dir = plugins.join(&name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("plugin.toml"),
            toml.replacen(&needle, &format!("name = \"{name}\""), 1),
        )?;
        std::fs::write(dir.join("plugin.wasm"), &wasm)?;
    }
    let host_with = |runtime: WasmRuntime| {
        Host::builder(HostConfig::new(&plugins, &state))
            .runtime(Arc::new(runtime))
            .build()
    };
    let cache = state.join("wasm-cache");
    {
        let host = host_with(WasmRuntime::new(WasmConfig::new(&cache))?);
        let t = Instant::now();
        host.start().await?;
        let running = count_running(&host);
        println!(
            "\nhost start, {copies} copies, cold cache (first start): {:.3} s, {running} running",
            t.elapsed().as_secs_f64()
        );
        host.shutdown().await;
    }
    let runtime = WasmRuntime::new(WasmConfig::new(&cache))?;
    let stats_handle = runtime.clone();
    let host = host_with(runtime);
    let t = Instant::now();
    host.start().await?;
    let running = count_running(&host);
    let took = t.elapsed();
    ensure!(
        running == copies,
        "only {running} of {copies} plugins are running"
    );
    let stats = stats_handle.cache_stats();
    host.shutdown().await;
    Ok((took, running, stats))
}

fn count_running(host: &Host) -> usize {
    host.plugins()
        .iter()
        .filter(|p| p.state == PluginState::Running)
        .count()
}

fn spec(source: &Path, scratch: &Path, name: &str) -> anyhow::Result<InstanceSpec> {
    let toml = std::fs::read_to_string(source.join("plugin.toml"))?;
    let data_dir = scratch.join("data").join(name);
    std::fs::create_dir_all(&data_dir)?;
    Ok(InstanceSpec {
        manifest: Arc::new(Manifest::from_toml_str(&toml)?),
        package_dir: source.to_path_buf(),
        data_dir,
        params: serde_json::json!({}),
        python_env: None,
        http_socket: None,
    })
}

async fn start(runtime: &WasmRuntime, spec: InstanceSpec) -> anyhow::Result<Arc<WasmInstance>> {
    Ok(runtime.start_wasm(spec, Arc::new(NullHost)).await?)
}

/// The `p`-quantile of sorted samples, in microseconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn round2(x: f64) -> serde_json::Value {
    serde_json::json!((x * 100.0).round() / 100.0)
}
