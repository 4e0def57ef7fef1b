//! `plugd-bench compat`: discovery and start of many foreign-format Python plugins (issue 16)
//! next to the same plugins in native form, in one run.
//!
//! Three plugin directories of `--plugins` packages each, all answering one action:
//! - `native`: `plugin.toml` and a `main.py` written with the SDK (`@plugin.action`);
//! - `xcore`: `plugin.yaml`, `src/main.py` with `class Plugin` and `async handle(...)`, and a
//!   `data/` file to seed, run by `python3 -m plugd.compat`;
//! - `class-based`: `plugin.json` with `class_path` and a `BasePlugin` subclass registering a
//!   service.
//!
//! The SDK's bytecode is compiled first, as `plugd serve` does with the SDK it installs.
//! Each round builds a fresh `Host` on the directory's state dir and times `Host::start` until
//! every plugin runs (after one unmeasured start per directory, which stages the packages and
//! seeds the data dirs). The per-plugin load times are the host's own
//! `plugd_plugin_load_duration_seconds` samples, captured by a recorder installed here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use plugd_host::{Host, HostConfig, PluginState};
use plugd_process::{ProcessConfig, ProcessRuntime};

/// What `plugd-bench compat` measures.
pub(crate) struct Config {
    /// The plugd checkout (for the SDK).
    pub repo: PathBuf,
    /// Plugins per directory.
    pub plugins: usize,
    /// Measured starts per directory.
    pub rounds: usize,
    /// Where the plugin and state directories go (default: a temp dir).
    pub dir: Option<PathBuf>,
}

const FORMATS: [&str; 3] = ["native", "xcore", "class-based"];

pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let samples = Arc::new(Samples::default());
    metrics::set_global_recorder(Capture(samples.clone()))
        .map_err(|_| anyhow::anyhow!("A metrics recorder is already installed"))?;
    let scratch = match &config.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("plugd-bench-compat-{}", std::process::id())),
    };
    let sdk = config.repo.join("sdk/python/src");
    ensure!(
        sdk.join("plugd/compat/__main__.py").is_file(),
        "`{}` has no SDK with `plugd.compat`; hint: pass `--repo DIR`",
        config.repo.display()
    );
    for format in FORMATS {
        make(
            &scratch.join(format).join("plugins"),
            format,
            config.plugins,
        )?;
    }
    // As `plugd serve` does with the SDK it installs: plugins cannot write its bytecode.
    let compiled = std::process::Command::new("python3")
        .args(["-m", "compileall", "-q"])
        .arg(&sdk)
        .env("PATH", plugd_process::CHILD_PATH)
        .status()
        .context("Cannot run `python3 -m compileall`")?;
    ensure!(compiled.success(), "compiling the SDK's bytecode failed");
    println!(
        "Host start with {} Python plugins per format (all Running); {} measured starts each after one unmeasured start; formats interleaved per round",
        config.plugins, config.rounds
    );
    let mut starts: Vec<Vec<Duration>> = vec![Vec::new(); FORMATS.len()];
    let mut loads: Vec<Vec<f64>> = vec![Vec::new(); FORMATS.len()];
    for round in 0..=config.rounds {
        for (i, format) in FORMATS.iter().enumerate() {
            samples.take();
            let took = start_once(&scratch.join(format), &sdk, config.plugins).await?;
            let per_plugin = samples.take();
            if round > 0 {
                starts[i].push(took);
                loads[i].extend(per_plugin);
            }
        }
        eprintln!("  round {round}/{} done", config.rounds);
    }
    println!();
    println!(
        "{:<14} {:>12} {:>12} {:>12} {:>16} {:>16}",
        "format", "start p50 ms", "start min", "start max", "load p50 ms", "load p99 ms"
    );
    let mut report = serde_json::Map::new();
    let mut medians = Vec::new();
    for (i, format) in FORMATS.iter().enumerate() {
        let mut s: Vec<f64> = starts[i].iter().map(|d| d.as_secs_f64() * 1e3).collect();
        s.sort_by(f64::total_cmp);
        let mut l: Vec<f64> = loads[i].iter().map(|x| x * 1e3).collect();
        l.sort_by(f64::total_cmp);
        let (med, min, max) = (pct(&s, 0.5), s[0], s[s.len() - 1]);
        let (l50, l99) = (pct(&l, 0.5), pct(&l, 0.99));
        println!("{format:<14} {med:>12.0} {min:>12.0} {max:>12.0} {l50:>16.1} {l99:>16.1}");
        medians.push(med);
        report.insert(
            (*format).to_owned(),
            serde_json::json!({
                "start_ms": {"median": r1(med), "min": r1(min), "max": r1(max)},
                "load_ms": {"p50": r1(l50), "p99": r1(l99), "samples": l.len()},
            }),
        );
    }
    for (i, format) in FORMATS.iter().enumerate().skip(1) {
        let ratio = medians[i] / medians[0];
        println!(
            "target: discovery + start of {} {format} plugins {:.0} ms vs {:.0} ms native (median): {ratio:.2}x (≤ 1.2x: {})",
            config.plugins,
            medians[i],
            medians[0],
            if ratio <= 1.2 { "met" } else { "MISSED" }
        );
        report.insert(
            format!("{format}_over_native"),
            serde_json::json!((ratio * 100.0).round() / 100.0),
        );
    }
    println!("{}", serde_json::Value::Object(report));
    if config.dir.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}

/// The `q` quantile of sorted values (nearest rank).
fn pct(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Builds a host on `DIR/state` for `DIR/plugins`, times `Host::start`, checks every plugin
/// runs and answers, and shuts it down.
async fn start_once(dir: &Path, sdk: &Path, plugins: usize) -> anyhow::Result<Duration> {
    let mut process = ProcessConfig::default();
    process
        .base_env
        .push(("PYTHONPATH".into(), sdk.as_os_str().to_owned()));
    let host = Host::builder(HostConfig::new(dir.join("plugins"), dir.join("state")))
        .runtime(Arc::new(ProcessRuntime::new(process)))
        .build();
    let started = Instant::now();
    let result = host.start().await;
    let took = started.elapsed();
    let infos = host.plugins();
    let running = infos
        .iter()
        .filter(|p| p.state == PluginState::Running)
        .count();
    let failed = infos.iter().find(|p| p.state != PluginState::Running);
    let answer = match infos.first() {
        Some(p) => Some(
            host.call(
                p.name.as_str(),
                "get",
                serde_json::value::RawValue::from_string("{}".into())?,
            )
            .await,
        ),
        None => None,
    };
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
    if let Some(answer) = answer {
        answer.context("The first plugin does not answer `get`")?;
    }
    Ok(took)
}

/// Writes `n` packages of `format` into `dir` (replacing what was there).
fn make(dir: &Path, format: &str, n: usize) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    for i in 0..n {
        let pkg = dir.join(format!("p{i:03}"));
        std::fs::create_dir_all(&pkg)
            .with_context(|| format!("Cannot create `{}`", pkg.display()))?;
        match format {
            "native" => {
                std::fs::write(
                    pkg.join("plugin.toml"),
                    format!(
                        "[plugin]\nname = \"bench-{i:03}\"\nversion = \"1.0.0\"\nruntime = \"process\"\nentry = [\"python3\", \"main.py\"]\n\n[permissions]\nservices = [\"kv\", \"events\", \"tasks\"]\n"
                    ),
                )?;
                std::fs::write(
                    pkg.join("main.py"),
                    "from plugd import Plugin\n\nplugin = Plugin()\n\n\n@plugin.action()\nasync def get(payload):\n    return {\"ok\": True}\n\n\nplugin.run()\n",
                )?;
            }
            "xcore" => {
                std::fs::write(
                    pkg.join("plugin.yaml"),
                    format!(
                        "name: Bench Plugin {i:03}\nversion: 1.0.0\nexecution_mode: sandboxed\nentry_point: src/main.py\nresources:\n  timeout_seconds: 5\n  max_memory_mb: 256\n"
                    ),
                )?;
                std::fs::create_dir_all(pkg.join("src"))?;
                std::fs::create_dir_all(pkg.join("data"))?;
                std::fs::write(pkg.join("data/seed.json"), "[]\n")?;
                std::fs::write(
                    pkg.join("src/main.py"),
                    "class Plugin:\n    async def on_load(self):\n        pass\n\n    async def handle(self, action, payload):\n        return {\"status\": \"ok\", \"action\": action}\n",
                )?;
            }
            "class-based" => {
                std::fs::write(
                    pkg.join("plugin.json"),
                    format!(
                        "{{\"class_path\": \"plugins.bench.plugin.BenchPlugin\", \"name\": \"bench_{i:03}\", \"version\": \"1.0.0\", \"dependencies\": []}}\n"
                    ),
                )?;
                std::fs::write(
                    pkg.join("plugin.py"),
                    "from core.base_plugin import BasePlugin\n\n\nclass BenchPlugin(BasePlugin):\n    async def on_load(self):\n        await self.runtime.service_registry.register(\"bench.get\", self.get)\n\n    async def get(self):\n        return {\"ok\": True}\n",
                )?;
            }
            other => bail!("unknown format `{other}`"),
        }
    }
    Ok(())
}

/// The host's `plugd_plugin_load_duration_seconds` samples since the last `take`.
#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl Samples {
    fn take(&self) -> Vec<f64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(value);
    }
}

/// A recorder that keeps only the load-duration histogram.
struct Capture(Arc<Samples>);

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        if key.name() == "plugd_plugin_load_duration_seconds" {
            Histogram::from_arc(self.0.clone())
        } else {
            Histogram::noop()
        }
    }
}
