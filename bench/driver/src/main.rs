//! `plugd-bench`: the benchmark driver behind `bench/run.sh` (a harness, not a test).
//!
//! Subcommands:
//! - `latency`: call latency through `plugd-host` next to raw pipe round trips, in one run;
//! - `wasm`: the wasm runtime in-process (call latency, async and blocking, pooled and fresh)
//!   and host start-up with 1,000 wasm plugins;
//! - `services`: host services (issue 10): a Python plugin's `kv.set` next to its echo, durable
//!   kv commits per second in both durability modes next to bare SQLite, and host start-up with
//!   100 plugins on an empty and on a ~100 MB store;
//! - `work`: durable tasks and events (issue 11): tasks end to end and event delivery per
//!   second, publish-to-handler latency, next to the plain calls of the same wasm and Python
//!   plugins;
//! - `reload`: hot reload (issue 12): from a file written into the plugins directory to the new
//!   version answering, for a Python plugin and a C wasm component;
//! - `scripts`: the script manager (issue 14): a confined no-op run (request to recorded
//!   result, in-process) next to `python3 -c pass`, with a 3-package environment, 4 at once, and
//!   `plugd script run` end to end;
//! - `compat`: foreign plugins (issue 16): discovery and start of 100 xcore and 100
//!   class-based Python plugins next to 100 native ones, with per-plugin load p50/p99 from the
//!   host's own load-duration metric;
//! - `ws-echo URL...`: WebSocket echo round trips (issue 13), e.g. through plugd's proxy and
//!   straight to the app;
//! - `rewrite DIR`: rewrites a package every so often, for `run.sh` to run beside `wrk`;
//! - `tcp-relay --listen ADDR --to ADDR`: a bare tokio TCP relay, the raw limit of the proxy's
//!   WebSocket relay;
//! - `axum-echo --listen ADDR`: a bare axum server with `POST /echo`, the HTTP baseline;
//! - `make-plugins DIR`: the plugins directory the benchmarks use (for `plugd serve`);
//! - `fake-child`: an instant-answer protocol child in Rust (run by the host as a plugin).

mod compat;
mod echo;
mod fake_child;
mod latency;
mod plugins;
mod reload;
mod scripts;
mod services;
mod stats;
mod wasm;
mod work;
mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

/// The default payload: 105 bytes of JSON, about what a small API call carries.
pub(crate) const DEFAULT_PAYLOAD: &str = r#"{"user":"Ada Lovelace","id":1815,"tags":["math","engine","notes"],"active":true,"score":98.6,"lang":"en"}"#;

const USAGE: &str = "\
Usage:
  plugd-bench latency [--repo DIR] [-n CALLS] [--warmup CALLS] [--in-flight N] [--threads N]
                      [--rounds N] [--payload JSON] [--cases LIST]
  plugd-bench wasm [--repo DIR] [-n CALLS] [--warmup CALLS] [--rounds N] [--copies N]
                   [--payload JSON]
  plugd-bench services [--repo DIR] [-n CALLS] [--warmup CALLS] [--in-flight N] [--rounds N]
                       [--payload JSON] [--plugins N] [--store-mb MB] [--start-rounds N]
                       [--dir DIR] [--cases LIST] [--modes process,full]
  plugd-bench work [--repo DIR] [-n CALLS] [--tasks N] [--events N] [--latency N]
                   [--warmup N] [--in-flight N] [--rounds N] [--dir DIR]
                   [--durability process|full]
  plugd-bench reload [--repo DIR] [--swaps N] [--interval-ms MS] [--dir DIR]
                     [--cases python,wasm] [--poll-us US]
  plugd-bench compat [--repo DIR] [--plugins N] [--rounds N] [--dir DIR]
  plugd-bench rewrite DIR [--repo DIR] [--times N] [--interval-ms MS]
  plugd-bench scripts [--repo DIR] [-n RUNS] [--warmup RUNS] [--rounds N] [--dir DIR]
                      [--cases bare,server,server-env3,concurrent,cli,kernel,layers,paired]
                      [--gap-ms MS]
  plugd-bench ws-echo URL... [-n N] [--warmup N] [--size BYTES]
  plugd-bench axum-echo --listen ADDR
  plugd-bench tcp-relay --listen ADDR --to ADDR|unix:PATH
  plugd-bench make-plugins DIR [--repo DIR]
  plugd-bench fake-child [--no-hello]

`--cases` is a comma-separated subset of: host-hello, raw-python, host-rawpy, host-rust, raw-rust
(default: all). `--repo` defaults to the checkout this binary was built from. `services --dir`
is where its scratch state goes (the disk measured; default the temporary directory);
`--plugins 0` skips its start-up measurement; its `--cases` is a subset of bare-sqlite, echo,
kvset, kvset-in-plugin, echo-concurrent, kvset-concurrent, kvget, store-commit, kvget-in-plugin (default: all;
`none` skips the calls; the verdicts need the first six). `PLUGD_BENCH_PROFILE=FILE` runs its `kvbench` under cProfile (stats to FILE.MODE).";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("plugd-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("{USAGE}");
        return Ok(ExitCode::from(2));
    }
    let command = args.remove(0);
    let mut args = Args(args);
    match command.as_str() {
        "latency" => {
            let mut config = latency::Config {
                repo: args
                    .value("--repo")?
                    .map(PathBuf::from)
                    .unwrap_or_else(default_repo),
                calls: args.parsed("-n")?.unwrap_or(20_000),
                warmup: args.parsed("--warmup")?.unwrap_or(2_000),
                in_flight: args.parsed("--in-flight")?.unwrap_or(64),
                threads: args.parsed("--threads")?,
                rounds: args.parsed("--rounds")?.unwrap_or(5),
                payload: args
                    .value("--payload")?
                    .unwrap_or_else(|| DEFAULT_PAYLOAD.to_owned()),
                cases: latency::Case::ALL.to_vec(),
            };
            if let Some(list) = args.value("--cases")? {
                config.cases = list
                    .split(',')
                    .map(latency::Case::parse)
                    .collect::<Result<_, _>>()?;
            }
            args.finish()?;
            let mut builder = match config.threads {
                Some(1) => tokio::runtime::Builder::new_current_thread(),
                Some(n) => {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    b.worker_threads(n);
                    b
                }
                // The same flavour as `plugd serve`: multi-threaded, one worker per core.
                None => tokio::runtime::Builder::new_multi_thread(),
            };
            let runtime = builder.enable_all().build()?;
            // On a worker, like an axum handler: `block_on`'s own thread does not drive I/O, so
            // every wake-up would cost a cross-thread hand-off that real callers do not pay.
            runtime.block_on(async { tokio::spawn(latency::run(config)).await? })?;
        }
        "compat" => {
            let config = compat::Config {
                repo: args
                    .value("--repo")?
                    .map(PathBuf::from)
                    .unwrap_or_else(default_repo),
                plugins: args.parsed("--plugins")?.unwrap_or(100),
                rounds: args.parsed("--rounds")?.unwrap_or(3),
                dir: args.value("--dir")?.map(PathBuf::from),
            };
            args.finish()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async { tokio::spawn(compat::run(config)).await? })?;
        }
        "wasm" => {
            let config = wasm::Config {
                repo: args
                    .value("--repo")?
                    .map(PathBuf::from)
                    .unwrap_or_else(default_repo),
                calls: args.parsed("-n")?.unwrap_or(50_000),
                warmup: args.parsed("--warmup")?.unwrap_or(2_000),
                rounds: args.parsed("--rounds")?.unwrap_or(5),
                copies: args.parsed("--copies")?.unwrap_or(1_000),
                payload: args
                    .value("--payload")?
                    .unwrap_or_else(|| DEFAULT_PAYLOAD.to_owned()),
            };
            args.finish()?;
            // The same flavour as `plugd serve`; the calls run on a worker, like a handler's.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async { tokio::spawn(wasm::run(config)).await? })?;
        }
        "services" => {
            let mut config = services::Config {
                repo: args
                    .value("--repo")?
                    .map(PathBuf::from)
                    .unwrap_or_else(default_repo),
                calls: args.parsed("-n")?.unwrap_or(20_000),
                warmup: args.parsed("--warmup")?.unwrap_or(2_000),
                in_flight: args.parsed("--in-flight")?.unwrap_or(64),
                rounds: args.parsed("--rounds")?.unwrap_or(5),
                payload: args
                    .value("--payload")?
                    .unwrap_or_else(|| DEFAULT_PAYLOAD.to_owned()),
                plugins: args.parsed("--plugins")?.unwrap_or(100),
                store_mb: args.parsed("--store-mb")?.unwrap_or(100),
                start_rounds: args.parsed("--start-rounds")?.unwrap_or(5),
                dir: args
                    .value("--dir")?
                    .map(PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir),
                cases: services::Case::ALL.to_vec(),
                modes: vec![
                    plugd_store::Durability::Process,
                    plugd_store::Durability::Full,
                ],
            };
            if let Some(list) = args.value("--cases")? {
                config.cases = services::Case::parse_list(&list)?;
            }
            if let Some(list) = args.value("--modes")? {
                config.modes = services::parse_modes(&list)?;
            }
            args.finish()?;
            // The same flavour as `plugd serve`; the calls start on a worker, like a handler's.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async { tokio::spawn(services::run(config)).await? })?;
        }
        "scripts" => {
            let config = scripts::Config {
                repo: args
                    .value("--repo")?
                    .map(PathBuf::from)
                    .unwrap_or_else(default_repo),
                runs: args.parsed("-n")?.unwrap_or(100),
                warmup: args.parsed("--warmup")?.unwrap_or(5),
                rounds: args.parsed("--rounds")?.unwrap_or(3),
                dir: args
                    .value("--dir")?
                    .map(PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir),
                cases: args
                    .value("--cases")?
                    .map(|l| l.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
                gap: std::time::Duration::from_millis(args.parsed("--gap-ms")?.unwrap_or(0)),
            };
            args.finish()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async { tokio::spawn(scripts::run(config)).await? })?;
        }
        "work" => {
            let config = work::Config {
                repo: args
                    .value("--repo")?
                    .map(PathBuf::from)
                    .unwrap_or_else(default_repo),
                calls: args.parsed("-n")?.unwrap_or(20_000),
                tasks: args.parsed("--tasks")?.unwrap_or(20_000),
                events: args.parsed("--events")?.unwrap_or(20_000),
                latency: args.parsed("--latency")?.unwrap_or(2_000),
                warmup: args.parsed("--warmup")?.unwrap_or(1_000),
                in_flight: args.parsed("--in-flight")?.unwrap_or(64),
                rounds: args.parsed("--rounds")?.unwrap_or(5),
                dir: args
                    .value("--dir")?
                    .map(PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir),
                durability: match args.value("--durability")?.as_deref() {
                    None | Some("process") => plugd_store::Durability::Process,
                    Some("full") => plugd_store::Durability::Full,
                    Some(other) => bail!("Unknown durability `{other}`; hint: use process or full"),
                },
            };
            args.finish()?;
            // The same flavour as `plugd serve`; the cases start on a worker, like a handler's.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async { tokio::spawn(work::run(config)).await? })?;
        }
        "reload" => {
            let config = reload::Config {
                repo: args
                    .value("--repo")?
                    .map(PathBuf::from)
                    .unwrap_or_else(default_repo),
                swaps: args.parsed("--swaps")?.unwrap_or(50),
                interval: std::time::Duration::from_millis(
                    args.parsed("--interval-ms")?.unwrap_or(500),
                ),
                dir: args
                    .value("--dir")?
                    .map(PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir),
                cases: args
                    .value("--cases")?
                    .unwrap_or_else(|| "python,wasm".into())
                    .split(',')
                    .map(str::to_owned)
                    .collect(),
                poll: std::time::Duration::from_micros(args.parsed("--poll-us")?.unwrap_or(100)),
            };
            args.finish()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async { tokio::spawn(reload::run(config)).await? })?;
        }
        "rewrite" => {
            let repo = args
                .value("--repo")?
                .map(PathBuf::from)
                .unwrap_or_else(default_repo);
            let times = args.parsed("--times")?.unwrap_or(50);
            let interval =
                std::time::Duration::from_millis(args.parsed("--interval-ms")?.unwrap_or(500));
            let dir = args
                .positional()
                .context("`rewrite` needs a package directory")?;
            args.finish()?;
            reload::rewrite(&repo, std::path::Path::new(&dir), times, interval)?;
        }
        "ws-echo" => {
            let n = args.parsed("-n")?.unwrap_or(5_000);
            let warmup = args.parsed("--warmup")?.unwrap_or(500);
            let size = args.parsed("--size")?.unwrap_or(64);
            let mut urls = Vec::new();
            while let Some(url) = args.positional() {
                urls.push(url);
            }
            args.finish()?;
            anyhow::ensure!(!urls.is_empty(), "`ws-echo` needs at least one ws:// URL");
            ws::run(&urls, n, warmup, size)?;
        }
        "tcp-relay" => {
            let listen: SocketAddr = args
                .parsed("--listen")?
                .context("`tcp-relay` needs `--listen ADDR`")?;
            let to = args
                .value("--to")?
                .context("`tcp-relay` needs `--to ADDR` or `--to unix:PATH`")?;
            args.finish()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(ws::relay(listen, to))?;
        }
        "axum-echo" => {
            let listen: SocketAddr = args
                .parsed("--listen")?
                .context("`axum-echo` needs `--listen ADDR`")?;
            args.finish()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(echo::serve(listen))?;
        }
        "make-plugins" => {
            let repo = args
                .value("--repo")?
                .map(PathBuf::from)
                .unwrap_or_else(default_repo);
            let dir = args
                .positional()
                .context("`make-plugins` needs a directory")?;
            args.finish()?;
            plugins::make(&repo, std::path::Path::new(&dir), true)?;
        }
        "fake-child" => {
            let hello = !args.flag("--no-hello");
            args.finish()?;
            fake_child::run(hello)?;
        }
        "-h" | "--help" | "help" => println!("{USAGE}"),
        other => bail!("Unknown subcommand `{other}`\n\n{USAGE}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The checkout this binary was built from (`bench/driver/../..`).
fn default_repo() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    dir.canonicalize().unwrap_or(dir)
}

/// A tiny argument parser: the driver has a handful of options and no need for clap.
struct Args(Vec<String>);

impl Args {
    fn value(&mut self, name: &str) -> anyhow::Result<Option<String>> {
        let Some(i) = self.0.iter().position(|a| a == name) else {
            return Ok(None);
        };
        if i + 1 >= self.0.len() {
            bail!("Option `{name}` needs a value");
        }
        let value = self.0.remove(i + 1);
        self.0.remove(i);
        Ok(Some(value))
    }

    fn parsed<T: std::str::FromStr>(&mut self, name: &str) -> anyhow::Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.value(name)? {
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e| anyhow::anyhow!("Invalid `{name}` value `{v}`: {e}")),
            None => Ok(None),
        }
    }

    fn flag(&mut self, name: &str) -> bool {
        let found = self.0.iter().position(|a| a == name);
        if let Some(i) = found {
            self.0.remove(i);
        }
        found.is_some()
    }

    fn positional(&mut self) -> Option<String> {
        let i = self.0.iter().position(|a| !a.starts_with('-'))?;
        Some(self.0.remove(i))
    }

    fn finish(self) -> anyhow::Result<()> {
        match self.0.first() {
            Some(extra) => bail!("Unexpected argument `{extra}`\n\n{USAGE}"),
            None => Ok(()),
        }
    }
}
