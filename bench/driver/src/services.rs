//! `plugd-bench services`: the cost of host services (issue 10). A Python SDK plugin's `kv.set`
//! round trip next to its plain echo, durable kv commits per second with many calls in flight
//! for both durability modes next to a bare SQLite insert loop, and `Host::start` with 100
//! plugins on an empty store and on a store holding ~100 MB of kv, all in one run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use plugd_host::{Host, HostConfig, PluginState};
use plugd_process::{CHILD_PATH, ProcessConfig, ProcessRuntime};
use plugd_store::{Commit, Durability, KvLimits, Store, StoreConfig};
use rusqlite::Connection;
use serde_json::value::RawValue;

use crate::stats::{CpuClock, CpuDelta, Summary};

/// The benchmark plugin: `echo` and `kvset` through the Python SDK, granted the `kv` service.
const KVBENCH: &str = "kvbench";

/// Keys cycle through this many names, so a long run stays far below the plugin's 64 MiB
/// quota (a replaced key costs the store what an insert does: a row written, an undo row).
const KEYSPACE: u64 = 100_000;

/// What `plugd-bench services` runs.
pub(crate) struct Config {
    pub repo: PathBuf,
    /// Calls per case and durability mode, split over the rounds.
    pub calls: usize,
    pub warmup: usize,
    pub in_flight: usize,
    pub rounds: usize,
    pub payload: String,
    /// Plugins started by the start-up measurement (0 skips it).
    pub plugins: usize,
    /// Megabytes of kv written into the second store before the start-up measurement.
    pub store_mb: u64,
    /// Measured starts per store (after one unmeasured start each, which stages the packages).
    pub start_rounds: usize,
    /// Where the scratch directory goes: the disk being measured.
    pub dir: PathBuf,
    /// The call cases to run, in this order within a round (empty: no call measurements).
    pub cases: Vec<Case>,
    /// The durability modes the call cases run against.
    pub modes: Vec<Durability>,
}

/// One kind of measurement against one durability mode's host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Case {
    /// `echo` through the host, one call in flight: the baseline of the kv.set target.
    Echo,
    /// `kvset` through the host, one call in flight: a kv.set round trip plus the echo's cost.
    Kvset,
    /// `echo` with N in flight: the plugin's call ceiling without the store.
    EchoConcurrent,
    /// `kvset` with N in flight: durable commits per second (group commit).
    KvsetConcurrent,
    /// rusqlite on its own, one autocommit `INSERT OR REPLACE` per row, same pragmas (a
    /// quarter as many rows as calls).
    Bare,
    /// `kvget` through the host, one call in flight: a kv request round trip answered from the
    /// read pool, without the writer (where kvset's extra time goes).
    Kvget,
    /// `Store::kv_commit` of the same put on the host's own store, from this process, one in
    /// flight: the store's share of a kvset, without the plugin.
    StoreCommit,
    /// `kvset_timed` through the host, one call in flight, but the sample is what the plugin
    /// measured around `await plugin.kv.set(...)` with `time.perf_counter_ns()`: one kv.set round
    /// trip (plugin -> host -> store -> host -> plugin), the like of one echo round trip.
    KvsetInPlugin,
    /// `kvget_timed` through the host, like `KvsetInPlugin` but the plugin times `await
    /// plugin.kv.get(...)`: a kv request round trip answered from the read pool, no commit (the
    /// floor under a kv.set).
    KvgetInPlugin,
}

impl Case {
    pub(crate) const ALL: [Case; 9] = [
        Case::Bare,
        Case::Echo,
        Case::Kvset,
        Case::KvsetInPlugin,
        Case::EchoConcurrent,
        Case::KvsetConcurrent,
        Case::Kvget,
        Case::StoreCommit,
        Case::KvgetInPlugin,
    ];

    /// The cases the verdicts need.
    const TARGETS: [Case; 6] = [
        Case::Bare,
        Case::Echo,
        Case::Kvset,
        Case::KvsetInPlugin,
        Case::EchoConcurrent,
        Case::KvsetConcurrent,
    ];

    fn label(self) -> &'static str {
        match self {
            Case::Echo | Case::EchoConcurrent => "host -> kvbench echo",
            Case::Kvset | Case::KvsetConcurrent => "host -> kvbench kvset",
            Case::Bare => "bare SQLite insert loop (1 row/txn)",
            Case::Kvget => "host -> kvbench kvget",
            Case::StoreCommit => "Store::kv_commit, no host",
            Case::KvsetInPlugin => "kvbench: await kv.set (in plugin)",
            Case::KvgetInPlugin => "kvbench: await kv.get (in plugin)",
        }
    }

    /// Parses a `--cases` list; `none` is the empty list.
    pub(crate) fn parse_list(list: &str) -> anyhow::Result<Vec<Case>> {
        if list == "none" {
            return Ok(Vec::new());
        }
        list.split(',')
            .map(|name| {
                Case::ALL
                    .into_iter()
                    .find(|c| c.key() == name)
                    .with_context(|| {
                        format!("Unknown case `{name}`; hint: use bare-sqlite, echo, kvset, kvset-in-plugin, echo-concurrent, kvset-concurrent, kvget, store-commit, kvget-in-plugin or none")
                    })
            })
            .collect()
    }

    fn key(self) -> &'static str {
        match self {
            Case::Echo => "echo",
            Case::Kvset => "kvset",
            Case::EchoConcurrent => "echo-concurrent",
            Case::KvsetConcurrent => "kvset-concurrent",
            Case::Bare => "bare-sqlite",
            Case::Kvget => "kvget",
            Case::StoreCommit => "store-commit",
            Case::KvsetInPlugin => "kvset-in-plugin",
            Case::KvgetInPlugin => "kvget-in-plugin",
        }
    }
}

/// Parses a `--modes` list (`process`, `full`).
pub(crate) fn parse_modes(list: &str) -> anyhow::Result<Vec<Durability>> {
    list.split(',')
        .map(|name| match name {
            "process" => Ok(Durability::Process),
            "full" => Ok(Durability::Full),
            other => bail!("Unknown durability `{other}`; hint: use process or full"),
        })
        .collect()
}

fn mode_name(durability: Durability) -> &'static str {
    match durability {
        Durability::Process => "process",
        Durability::Full => "full",
    }
}

/// `Summary` wants `'static` labels; these few strings live as long as the process anyway.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    RawValue::from_string(config.payload.clone()).context("`--payload` is not valid JSON")?;
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("Cannot create `{}`", config.dir.display()))?;
    let scratch = config
        .dir
        .join(format!("plugd-bench-services-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = run_in(&config, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn run_in(config: &Config, scratch: &Path) -> anyhow::Result<()> {
    let mut json = serde_json::json!({
        "bench": "plugd-services",
        "calls": config.calls,
        "warmup": config.warmup,
        "rounds": config.rounds,
        "in_flight": config.in_flight,
        "payload_bytes": config.payload.len(),
    });
    if !config.cases.is_empty() && !config.modes.is_empty() {
        json["calls_results"] = calls(config, scratch).await?;
    }
    if config.plugins > 0 {
        json["start"] = start_up(config, scratch).await?;
    }
    println!();
    println!("JSON {json}");
    Ok(())
}

// --- calls: echo vs kvset, group commit, bare SQLite ------------------------------------------

/// One durability mode: its host (own state dir) and its bare SQLite connection.
struct Mode {
    durability: Durability,
    host: Host,
    pid: Option<u32>,
    /// Locked by the blocking task while the bare loop runs (a `Connection` is not `Sync`).
    bare: Arc<std::sync::Mutex<Bare>>,
    /// Commit keys handed out so far (every kvset writes the next one).
    next_key: Arc<AtomicU64>,
    acc: Vec<(Case, Acc)>,
    /// Store transactions and kvset commits of the concurrent phases, for commits per batch.
    batches: u64,
    concurrent_commits: u64,
}

async fn calls(config: &Config, scratch: &Path) -> anyhow::Result<serde_json::Value> {
    let payload = RawValue::from_string(config.payload.clone())?;
    println!(
        "plugd-bench services: {} calls per case and mode in {} interleaved rounds after {} warm-up, {} in flight, payload {} bytes, scratch on `{}`",
        config.calls,
        config.rounds,
        config.warmup,
        config.in_flight,
        payload.get().len(),
        config.dir.display()
    );
    let plugins_dir = scratch.join("kv-plugins");
    make_kvbench(&plugins_dir)?;

    // Both hosts run side by side so that the rounds interleave the modes and background load
    // spreads over all cases alike.
    let mut modes = Vec::new();
    for &durability in &config.modes {
        let name = mode_name(durability);
        let state = scratch.join(format!("state-{name}"));
        let mut host_config = HostConfig::new(&plugins_dir, &state);
        host_config.durability = durability;
        let mut process = ProcessConfig::default();
        process.base_env.push((
            "PYTHONPATH".into(),
            config.repo.join("sdk/python/src").into_os_string(),
        ));
        // `kvbench` runs under cProfile and writes its stats there when it stops (profiling
        // only: it slows the child down).
        if let Some(out) = std::env::var_os("PLUGD_BENCH_PROFILE") {
            let mut out = std::path::PathBuf::from(out);
            out.as_mut_os_string().push(format!(".{name}"));
            process
                .base_env
                .push(("PLUGD_BENCH_PROFILE".into(), out.into_os_string()));
        }
        let host = Host::builder(host_config)
            .runtime(Arc::new(ProcessRuntime::new(process)))
            .build();
        host.start().await?;
        let info = host.plugin(KVBENCH)?;
        ensure!(
            info.state == PluginState::Running,
            "Plugin `{KVBENCH}` is {} in the `{name}` host: {}",
            info.state,
            info.reason.as_deref().unwrap_or("no reason given")
        );
        let bare = Bare::open(&state.join("bare.db"), durability)?;
        modes.push(Mode {
            durability,
            pid: info.pid,
            host,
            bare: Arc::new(std::sync::Mutex::new(bare)),
            next_key: Arc::new(AtomicU64::new(0)),
            acc: config.cases.iter().map(|&c| (c, Acc::default())).collect(),
            batches: 0,
            concurrent_commits: 0,
        });
    }

    let outcome = measure_calls(config, &mut modes, &payload).await;
    for mode in &modes {
        mode.host.shutdown().await;
    }
    outcome?;

    let mut results = Vec::new();
    println!();
    println!("{:<10}{}", "mode", Summary::header());
    for mode in &mut modes {
        let name = mode_name(mode.durability);
        for (case, acc) in std::mem::take(&mut mode.acc) {
            let in_flight = match case {
                Case::EchoConcurrent | Case::KvsetConcurrent => config.in_flight,
                _ => 1,
            };
            let key = leak(format!("{name}/{}", case.key()));
            let summary = acc.summary(key, case.label(), in_flight);
            println!("{:<10}{}", format!("[{name}]"), summary.row());
            results.push((mode.durability, case, summary));
        }
    }
    println!(
        "(self cpu = this process: host, store writer, bare loop; child cpu = kvbench; both per call)"
    );

    let find = |d: Durability, c: Case| {
        results
            .iter()
            .find(|(rd, rc, _)| *rd == d && *rc == c)
            .map(|(_, _, s)| s)
            .context("A case is missing")
    };
    println!();
    let mut targets = serde_json::Map::new();
    // The verdicts need every case; a subset (`--cases`, for profiling) prints only the table.
    let all = Case::TARGETS.iter().all(|c| config.cases.contains(c));
    for mode in modes.iter().filter(|_| all) {
        let (d, name) = (mode.durability, mode_name(mode.durability));
        let (echo, kvset) = (find(d, Case::Echo)?, find(d, Case::Kvset)?);
        let in_plugin = find(d, Case::KvsetInPlugin)?;
        let rt_ratio = in_plugin.p50_us / echo.p50_us;
        let (conc, bare) = (find(d, Case::KvsetConcurrent)?, find(d, Case::Bare)?);
        let echo_conc = find(d, Case::EchoConcurrent)?;
        let ratio = kvset.p50_us / echo.p50_us;
        let per_batch = mode.concurrent_commits as f64 / mode.batches.max(1) as f64;
        // The verdict compares one round trip with one round trip: the plugin's `await
        // plugin.kv.set(...)` as it measures it, next to the host's echo call of that plugin.
        // The whole `kvset` call holds two (the call, and the kv.set inside it) and is shown too.
        if d == Durability::Process {
            println!(
                "target: kv.set round trip in the plugin p50 {:.1} µs vs echo p50 {:.1} µs: {:.2}x (≤ 1.5x: {}) [{name}]",
                in_plugin.p50_us,
                echo.p50_us,
                rt_ratio,
                verdict(rt_ratio <= 1.5)
            );
        } else {
            println!(
                "kv.set round trip in the plugin p50 {:.1} µs vs echo p50 {:.1} µs: {:.2}x [{name}]",
                in_plugin.p50_us, echo.p50_us, rt_ratio
            );
        }
        println!(
            "whole kvset call (a call holding a kv.set) p50 {:.1} µs vs echo p50 {:.1} µs: {:.2}x [{name}]",
            kvset.p50_us, echo.p50_us, ratio
        );
        println!(
            "target: durable kv commits/s with {} in flight from one plugin {:.0}/s (≥ 10,000/s: {}) [{name}]; {:.1} commits per transaction; {:.2}x the bare SQLite loop ({:.0}/s); echo with {} in flight {:.0}/s",
            config.in_flight,
            conc.calls_per_sec,
            verdict(conc.calls_per_sec >= 10_000.0),
            per_batch,
            conc.calls_per_sec / bare.calls_per_sec,
            bare.calls_per_sec,
            config.in_flight,
            echo_conc.calls_per_sec
        );
        println!(
            "sequential kvset p50 {:.1} µs (bare SQLite insert p50 {:.1} µs; kvset - echo = {:.1} µs) [{name}]",
            kvset.p50_us,
            bare.p50_us,
            kvset.p50_us - echo.p50_us
        );
        targets.insert(
            name.into(),
            serde_json::json!({
                "kvset_over_echo_p50": round2(ratio),
                "kv_set_in_plugin_over_echo_p50": round2(rt_ratio),
                "kv_set_in_plugin_p50_us": round2(in_plugin.p50_us),
                "commits_per_sec_concurrent": conc.calls_per_sec.round(),
                "commits_per_txn": round2(per_batch),
                "concurrent_over_bare": round2(conc.calls_per_sec / bare.calls_per_sec),
                "bare_inserts_per_sec": bare.calls_per_sec.round(),
                "kvset_p50_us": round2(kvset.p50_us),
                "echo_p50_us": round2(echo.p50_us),
            }),
        );
    }
    Ok(serde_json::json!({
        "results": results.iter().map(|(_, _, s)| s.json()).collect::<Vec<_>>(),
        "summary": targets,
    }))
}

async fn measure_calls(
    config: &Config,
    modes: &mut [Mode],
    payload: &RawValue,
) -> anyhow::Result<()> {
    for mode in modes.iter() {
        // The SDK wraps a handler's return value as the result's `value`.
        let value = |raw: &RawValue| -> anyhow::Result<serde_json::Value> {
            let mut v: serde_json::Value = serde_json::from_str(raw.get())?;
            Ok(v.get_mut("value").map(serde_json::Value::take).unwrap_or(v))
        };
        let echo = mode
            .host
            .call(KVBENCH, "echo", payload.to_owned())
            .await?
            .result;
        ensure!(
            value(&echo)? == serde_json::from_str::<serde_json::Value>(payload.get())?,
            "`{KVBENCH}` echo answered `{}`, not the payload",
            echo.get()
        );
        let commit = kvset(&mode.host, &mode.next_key, payload).await?;
        ensure!(
            value(&commit)?.is_u64(),
            "`{KVBENCH}` kvset answered `{}`, not a commit id",
            commit.get()
        );
        for timed in [Case::KvsetInPlugin, Case::KvgetInPlugin] {
            if mode.acc.iter().any(|(c, _)| *c == timed) {
                // Fails early if the plugin does not answer a duration.
                call(&mode.host, timed, &mode.next_key, payload).await?;
            }
        }
        for _ in 0..config.warmup {
            mode.host.call(KVBENCH, "echo", payload.to_owned()).await?;
            kvset(&mode.host, &mode.next_key, payload).await?;
        }
    }
    let rounds = config.rounds.max(1);
    let per_round = (config.calls / rounds).max(1);
    let in_flight = config.in_flight.max(1);
    // Whole batches per caller with N in flight.
    let per_round_conc = (per_round / in_flight).max(1) * in_flight;
    for round in 0..rounds {
        for mode in modes.iter_mut() {
            for i in 0..mode.acc.len() {
                let case = mode.acc[i].0;
                let run = match case {
                    Case::Bare => {
                        let (bare, payload) = (mode.bare.clone(), payload.get().to_owned());
                        // A quarter of the calls: with `FULL` each row waits for an fsync, and
                        // its rate is steady after a few thousand.
                        let rows = (per_round / 4).max(1);
                        tokio::task::spawn_blocking(move || {
                            bare.lock()
                                .map_err(|_| anyhow::anyhow!("The bare loop panicked"))?
                                .run(rows, &payload)
                        })
                        .await??
                    }
                    Case::Echo
                    | Case::Kvset
                    | Case::KvsetInPlugin
                    | Case::KvgetInPlugin
                    | Case::Kvget
                    | Case::StoreCommit => sequential(mode, case, per_round, payload).await?,
                    Case::EchoConcurrent | Case::KvsetConcurrent => {
                        let before = mode.host.store().await?.batches();
                        let run =
                            concurrent(mode, case, per_round_conc, in_flight, payload).await?;
                        if case == Case::KvsetConcurrent {
                            mode.batches += mode.host.store().await?.batches() - before;
                            mode.concurrent_commits += per_round_conc as u64;
                        }
                        run
                    }
                };
                mode.acc[i].1.add(run);
            }
        }
        eprintln!("  round {}/{rounds} done", round + 1);
    }
    Ok(())
}

/// One `kvset` call with the next key and the payload as value; returns the raw result.
async fn kvset(host: &Host, next: &AtomicU64, payload: &RawValue) -> anyhow::Result<Box<RawValue>> {
    let n = next.fetch_add(1, Ordering::Relaxed) % KEYSPACE;
    // Building the parameters is part of the call, as the payload copy is for `echo`.
    let params = RawValue::from_string(format!(r#"{{"k":"k{n}","v":{}}}"#, payload.get()))?;
    Ok(host.call(KVBENCH, "kvset", params).await?.result)
}

/// One call of `case`; returns the duration the plugin measured itself, if the case has one
/// (in ns), else `None` (the caller's own clock is the sample).
async fn call(
    host: &Host,
    case: Case,
    next: &AtomicU64,
    payload: &RawValue,
) -> anyhow::Result<Option<u64>> {
    match case {
        Case::Echo | Case::EchoConcurrent => {
            drop(host.call(KVBENCH, "echo", payload.to_owned()).await?)
        }
        Case::Kvget => {
            // `k1` exists from the first kvset on (the warm-up writes it).
            let params = RawValue::from_string(r#"{"k":"k1"}"#.to_owned())?;
            drop(host.call(KVBENCH, "kvget", params).await?)
        }
        Case::StoreCommit => {
            let n = next.fetch_add(1, Ordering::Relaxed) % KEYSPACE;
            let value: serde_json::Value = serde_json::from_str(payload.get())?;
            let commit = Commit {
                puts: vec![(format!("k{n}"), value)],
                ..Commit::default()
            };
            // Its own plugin name: the same writer and file, its own undo stack.
            host.store()
                .await?
                .kv_commit("kvbench-direct", commit, &KvLimits::default())
                .await?;
        }
        Case::KvsetInPlugin | Case::KvgetInPlugin => {
            let (action, params) = if case == Case::KvsetInPlugin {
                let n = next.fetch_add(1, Ordering::Relaxed) % KEYSPACE;
                let params = format!(r#"{{"k":"k{n}","v":{}}}"#, payload.get());
                ("kvset_timed", params)
            } else {
                // `k1` exists from the first kvset on (the warm-up writes it).
                ("kvget_timed", r#"{"k":"k1"}"#.to_owned())
            };
            let result = host
                .call(KVBENCH, action, RawValue::from_string(params)?)
                .await?
                .result;
            // The SDK wraps the handler's return value as `{"value": ns}`.
            let answer: serde_json::Value = serde_json::from_str(result.get())?;
            let ns = answer
                .get("value")
                .and_then(serde_json::Value::as_u64)
                .with_context(|| {
                    format!("`{action}` answered `{}`, not a duration", result.get())
                })?;
            return Ok(Some(ns));
        }
        _ => drop(kvset(host, next, payload).await?),
    }
    Ok(None)
}

async fn sequential(mode: &Mode, case: Case, n: usize, payload: &RawValue) -> anyhow::Result<Run> {
    let mut samples = Vec::with_capacity(n);
    let cpu = CpuClock::start(mode.pid);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let measured = call(&mode.host, case, &mode.next_key, payload).await?;
        samples.push(measured.unwrap_or_else(|| t.elapsed().as_nanos() as u64));
    }
    Ok((samples, started.elapsed(), cpu.stop()))
}

async fn concurrent(
    mode: &Mode,
    case: Case,
    n: usize,
    in_flight: usize,
    payload: &RawValue,
) -> anyhow::Result<Run> {
    let per_caller = n / in_flight;
    let cpu = CpuClock::start(mode.pid);
    let started = Instant::now();
    let callers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (host, next, payload) =
                (mode.host.clone(), mode.next_key.clone(), payload.to_owned());
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(per_caller);
                for _ in 0..per_caller {
                    let t = Instant::now();
                    let measured = call(&host, case, &next, &payload).await?;
                    samples.push(measured.unwrap_or_else(|| t.elapsed().as_nanos() as u64));
                }
                anyhow::Ok(samples)
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(n);
    for caller in callers {
        samples.extend(caller.await??);
    }
    Ok((samples, started.elapsed(), cpu.stop()))
}

/// The baseline: rusqlite on its own, one autocommit `INSERT OR REPLACE` per row (one durable
/// transaction each), WAL with the pragma the store uses for the mode, no threads.
struct Bare {
    conn: Connection,
    next: u64,
}

impl Bare {
    fn open(path: &Path, durability: Durability) -> anyhow::Result<Bare> {
        let conn =
            Connection::open(path).with_context(|| format!("Cannot open `{}`", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.execute_batch(
            "CREATE TABLE kv (plugin TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (plugin, key))",
        )?;
        Ok(Bare { conn, next: 0 })
    }

    fn run(&mut self, n: usize, value: &str) -> anyhow::Result<Run> {
        let mut insert = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO kv (plugin, key, value) VALUES ('p', ?1, ?2)",
        )?;
        let mut samples = Vec::with_capacity(n);
        let cpu = CpuClock::start(None);
        let started = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            let key = format!("k{}", self.next % KEYSPACE);
            self.next += 1;
            insert.execute((key, value))?;
            samples.push(t.elapsed().as_nanos() as u64);
        }
        Ok((samples, started.elapsed(), cpu.stop()))
    }
}

/// Latency samples in ns, the wall time of the run and the CPU it took.
type Run = (Vec<u64>, Duration, CpuDelta);

/// Samples, wall time and CPU time summed over rounds.
#[derive(Default)]
struct Acc {
    samples: Vec<u64>,
    wall: Duration,
    cpu: CpuDelta,
}

impl Acc {
    fn add(&mut self, (samples, wall, cpu): Run) {
        self.samples.extend(samples);
        self.wall += wall;
        self.cpu.self_cpu += cpu.self_cpu;
        self.cpu.child_cpu += cpu.child_cpu;
    }

    fn summary(self, key: &'static str, label: &'static str, in_flight: usize) -> Summary {
        Summary::new((key, label), in_flight, self.samples, self.wall, self.cpu)
    }
}

/// Writes the `kvbench` package: the Python SDK, `echo`, `kvset`, `kvget`, `kvset_timed` and
/// `kvget_timed`,
/// `kv` granted.
fn make_kvbench(plugins_dir: &Path) -> anyhow::Result<()> {
    let dir = plugins_dir.join(KVBENCH);
    std::fs::create_dir_all(&dir).with_context(|| format!("Cannot create `{}`", dir.display()))?;
    std::fs::write(
        dir.join("plugin.toml"),
        format!(
            r#"schema = 1

[plugin]
name = "{KVBENCH}"
version = "0.1.0"
description = "Benchmark plugin: an echo and a kv write (generated by `plugd-bench services`)"
runtime = "process"
entry = ["python3", "main.py"]

[permissions]
services = ["kv"]

[limits]
call_timeout = "5s"
concurrency = 64

[[actions]]
name = "echo"
description = "Returns the payload unchanged"

[[actions]]
name = "kvset"
description = "Stores `v` under `k`; returns the commit id"

[[actions]]
name = "kvget"
description = "Returns the value of `k`"

[[actions]]
name = "kvset_timed"
description = "Stores `v` under `k`; returns how long `await plugin.kv.set` took, in ns"

[[actions]]
name = "kvget_timed"
description = "Reads `k`; returns how long `await plugin.kv.get` took, in ns"
"#
        ),
    )?;
    std::fs::write(
        dir.join("main.py"),
        r#""""`kvbench`: an echo and a kv write, for `plugd-bench services`."""

import time

from plugd import Plugin

plugin = Plugin()


@plugin.action(description="Returns the payload unchanged")
async def echo(payload):
    return payload


@plugin.action(description="Stores `v` under `k`; returns the commit id")
async def kvset(p):
    return await plugin.kv.set(p["k"], p["v"])


@plugin.action(description="Returns the value of `k`")
async def kvget(p):
    return await plugin.kv.get(p["k"])


@plugin.action(description="Stores `v` under `k`; returns how long `await plugin.kv.set` took, in ns")
async def kvset_timed(p):
    started = time.perf_counter_ns()
    await plugin.kv.set(p["k"], p["v"])
    return time.perf_counter_ns() - started


@plugin.action(description="Reads `k`; returns how long `await plugin.kv.get` took, in ns")
async def kvget_timed(p):
    started = time.perf_counter_ns()
    await plugin.kv.get(p["k"])
    return time.perf_counter_ns() - started


if __name__ == "__main__":
    import os

    profile = os.environ.get("PLUGD_BENCH_PROFILE")
    if profile:
        import cProfile

        cProfile.run("plugin.run()", profile)
    else:
        plugin.run()
"#,
    )?;
    Ok(())
}

// --- host start-up: empty store vs ~100 MB of kv -----------------------------------------------

async fn start_up(config: &Config, scratch: &Path) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe().context("Cannot find the `plugd-bench` executable")?;
    let exe_dir = exe.parent().context("The executable has no directory")?;
    let exe_name = exe
        .file_name()
        .and_then(|n| n.to_str())
        .context("The executable's name is not UTF-8")?;
    println!();
    println!(
        "Host start: {} plugins (`{exe_name} fake-child`, the latency bench's `rustecho`, found on the children's `PATH` rather than copied: the binary is large), empty store vs ~{} MB of kv; {} measured starts each after one unmeasured start",
        config.plugins, config.store_mb, config.start_rounds
    );
    let plugins_dir = scratch.join("start-plugins");
    let names: Vec<String> = (0..config.plugins)
        .map(|i| format!("echo-{i:03}"))
        .collect();
    for name in &names {
        let dir = plugins_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("plugin.toml"), echo_manifest(name, exe_name))?;
    }
    let mut path = std::ffi::OsString::from(exe_dir);
    path.push(":");
    path.push(CHILD_PATH);

    let empty = scratch.join("state-empty");
    let filled = scratch.join("state-filled");
    let (written, took) = prefill(
        &HostConfig::new(&plugins_dir, &filled).store_path(),
        &names,
        config.store_mb << 20,
    )
    .await?;
    let db_size = db_bytes(&filled)?;
    println!(
        "prefill: {:.1} MB of keys and values in {:.1} s through `plugd_store::Store` ({:.1} MB/s); `plugd.db*` is {:.1} MB",
        written as f64 / 1e6,
        took.as_secs_f64(),
        written as f64 / 1e6 / took.as_secs_f64(),
        db_size as f64 / 1e6
    );

    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 0..=config.start_rounds {
        // Alternate which store goes first, so neither always follows the other's shutdown.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let state = if which == 0 { &empty } else { &filled };
            let took = start_once(&plugins_dir, state, &path, config.plugins).await?;
            // Round 0 stages the packages into each state dir: a first start, not measured.
            if round > 0 {
                times[which].push(took);
            }
        }
        if round == 0 {
            eprintln!("  start-up warm-up done");
        } else {
            eprintln!("  start-up round {round}/{} done", config.start_rounds);
        }
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len().max(1) as f64;
        (
            v.get(v.len() / 2).copied().map_or(0.0, ms),
            v.first().copied().map_or(0.0, ms),
            v.last().copied().map_or(0.0, ms),
            mean,
        )
    };
    let [mut e, mut f] = times;
    let (e_med, e_min, e_max, e_mean) = stats(&mut e);
    let (f_med, f_min, f_max, f_mean) = stats(&mut f);
    println!();
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>10}",
        "Host::start, all Running", "median ms", "min ms", "max ms", "mean ms"
    );
    println!(
        "{:<34} {e_med:>10.1} {e_min:>10.1} {e_max:>10.1} {e_mean:>10.1}",
        "empty store"
    );
    println!(
        "{:<34} {f_med:>10.1} {f_min:>10.1} {f_max:>10.1} {f_mean:>10.1}",
        format!("store with {:.0} MB of kv", db_size as f64 / 1e6)
    );
    let ratio = f_med / e_med;
    println!(
        "target: host start with {} plugins and a {:.0} MB store {:.1} ms vs {:.1} ms empty (median): {:.2}x (≤ 1.10x: {})",
        config.plugins,
        db_size as f64 / 1e6,
        f_med,
        e_med,
        ratio,
        verdict(ratio <= 1.10)
    );
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    Ok(serde_json::json!({
        "plugins": config.plugins,
        "store_bytes": db_size,
        "kv_bytes": written,
        "rounds": config.start_rounds,
        "empty_ms": {"median": r1(e_med), "min": r1(e_min), "max": r1(e_max), "mean": r1(e_mean)},
        "filled_ms": {"median": r1(f_med), "min": r1(f_min), "max": r1(f_max), "mean": r1(f_mean)},
        "filled_over_empty_median": round2(ratio),
    }))
}

/// Builds a host on `state`, times `Host::start` until it returns, checks that every plugin is
/// running, and shuts it down.
async fn start_once(
    plugins_dir: &Path,
    state: &Path,
    path: &std::ffi::OsStr,
    plugins: usize,
) -> anyhow::Result<Duration> {
    let mut process = ProcessConfig::default();
    for (key, value) in &mut process.base_env {
        if key == "PATH" {
            *value = path.to_owned();
        }
    }
    let host = Host::builder(HostConfig::new(plugins_dir, state))
        .runtime(Arc::new(ProcessRuntime::new(process)))
        .build();
    let started = Instant::now();
    let result = host.start().await;
    let took = started.elapsed();
    let running = host
        .plugins()
        .iter()
        .filter(|p| p.state == PluginState::Running)
        .count();
    let failed = host
        .plugins()
        .into_iter()
        .find(|p| p.state != PluginState::Running);
    host.shutdown().await;
    result?;
    if let Some(p) = failed {
        bail!(
            "Plugin `{}` is {}: {}",
            p.name,
            p.state,
            p.reason.as_deref().unwrap_or("no reason given")
        );
    }
    ensure!(
        running == plugins,
        "{running} of {plugins} plugins are running"
    );
    Ok(took)
}

/// Writes about `bytes` of kv (keys plus ~1 KB JSON string values) spread evenly over the
/// plugins, 100 puts per commit, 8 commits in flight; returns the bytes written and the time.
async fn prefill(path: &Path, plugins: &[String], bytes: u64) -> anyhow::Result<(u64, Duration)> {
    const VALUE: usize = 1000;
    const PUTS: usize = 100;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let store = Store::open(StoreConfig::new(path)).await?;
    let started = Instant::now();
    let per_plugin = bytes / plugins.len().max(1) as u64;
    let entry = (VALUE + 2 + 12) as u64;
    let keys = per_plugin.div_ceil(entry) as usize;
    let written = Arc::new(AtomicU64::new(0));
    // The store checks each plugin's quota; these plugins never run kvset, so a high one is
    // fine (and lets `--plugins 1 --store-mb 100` work).
    let limits = KvLimits {
        quota: u64::MAX,
        ..KvLimits::default()
    };
    let work = Arc::new(std::sync::Mutex::new(
        plugins
            .iter()
            .flat_map(|p| (0..keys).step_by(PUTS).map(move |first| (p.clone(), first)))
            .collect::<Vec<_>>(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (store, work, written) = (store.clone(), work.clone(), written.clone());
        tasks.spawn(async move {
            loop {
                let Some((plugin, first)) =
                    work.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop()
                else {
                    return anyhow::Ok(());
                };
                let mut commit = Commit::default();
                for k in first..(first + PUTS).min(keys) {
                    let key = format!("data/{k:06}");
                    // Distinct content per key, so nothing is shared or trivially compressible.
                    let fill = format!("{plugin}/{key}/");
                    let value = fill.repeat(VALUE / fill.len() + 1)[..VALUE].to_owned();
                    written.fetch_add((key.len() + value.len() + 2) as u64, Ordering::Relaxed);
                    commit.puts.push((key, serde_json::Value::String(value)));
                }
                store.kv_commit(&plugin, commit, &limits).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok((written.load(Ordering::Relaxed), started.elapsed()))
}

/// Size of `STATE/plugd.db` and its WAL.
fn db_bytes(state: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for name in ["plugd.db", "plugd.db-wal"] {
        if let Ok(meta) = std::fs::metadata(state.join(name)) {
            total += meta.len();
        }
    }
    ensure!(total > 0, "No store in `{}`", state.display());
    Ok(total)
}

fn echo_manifest(name: &str, program: &str) -> String {
    format!(
        r#"schema = 1

[plugin]
name = "{name}"
version = "0.1.0"
description = "Benchmark echo child (generated by `plugd-bench services`)"
runtime = "process"
entry = ["{program}", "fake-child"]

[[actions]]
name = "echo"
description = "Returns the payload as `{{\"value\": payload}}`"
"#
    )
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn round2(x: f64) -> serde_json::Value {
    serde_json::json!((x * 100.0).round() / 100.0)
}
