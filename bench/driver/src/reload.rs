//! `plugd-bench reload` (issue 12): from a file written into the plugins directory to the new
//! version answering, through the real watcher (`Host::watch`, inotify, 20 ms debounce), for a
//! Python plugin and for a C wasm component; and `plugd-bench rewrite`, the rewriter `run.sh`
//! runs beside `wrk` to show that no call fails while a plugin is swapped.
//!
//! Each swap: write the package file (a temp file renamed over it, as editors do), then call the
//! plugin in a loop until the answer names the new version. The loop is a client of its own: a
//! thread that calls, and sleeps `--poll-us` (100 µs) between calls, so the measurement adds at
//! most that to a sample; `--poll-us 0` spins instead, a runtime worker calling back to back,
//! which on 2 cores takes one of them away from the swap it is timing. Reported next to it: the swap itself
//! as the host recorded it (verify and stage, start the new instance, handshake, switch: the
//! plugin's own start time), so the watcher's share is the difference.
//!
//! The wasm swaps alternate two builds of `hello-c-wasm` (the built `plugin.wasm` and a copy
//! answering `build-B`): the first sight of each is compiled, and reported apart; the others
//! come from the compile cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use plugd_host::{Host, HostConfig, PluginState, WatchConfig};
use plugd_process::{ProcessConfig, ProcessRuntime};
use plugd_wasm::{WasmConfig, WasmRuntime};
use serde_json::value::RawValue;

use crate::plugins::HELLO_C_WASM;

pub(crate) struct Config {
    pub repo: PathBuf,
    pub swaps: usize,
    pub interval: Duration,
    pub dir: PathBuf,
    pub cases: Vec<String>,
    /// Pause between the polling client's calls; zero: spin on a runtime worker.
    pub poll: Duration,
}

/// The Python plugin of the measurement: answers its generation.
const PY_TOML: &str = r#"[plugin]
name = "gen"
version = "1.0.0"
runtime = "process"
entry = ["python3", "main.py"]
"#;

fn gen_py(generation: usize) -> String {
    format!(
        "from plugd import Plugin\nplugin = Plugin()\n\n@plugin.action()\nasync def which(payload):\n    return {{\"generation\": {generation}}}\n\nplugin.run()\n"
    )
}

/// Writes `bytes` to `path` through a temp file renamed over it.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("Cannot write `{}`", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("Cannot replace `{}`", path.display()))?;
    Ok(())
}

/// The two builds of the C component: as built, and the same code answering `build-B`.
pub(crate) fn wasm_builds(repo: &Path) -> anyhow::Result<[Vec<u8>; 2]> {
    let path = repo
        .join("examples/plugins")
        .join(HELLO_C_WASM)
        .join("plugin.wasm");
    let a = std::fs::read(&path).with_context(|| {
        format!(
            "Cannot read `{}`; hint: run `examples/plugins/build.sh hello-c-wasm`",
            path.display()
        )
    })?;
    let at = a
        .windows(7)
        .position(|w| w == b"build-A")
        .context("`plugin.wasm` has no `build-A` marker; hint: rebuild it with `build.sh`")?;
    let mut b = a.clone();
    b[at..at + 7].copy_from_slice(b"build-B");
    Ok([a, b])
}

pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let scratch = tempdir_in(&config.dir)?;
    let outcome = run_in(&config, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

fn tempdir_in(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("plugd-bench-reload-{}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

async fn run_in(config: &Config, scratch: &Path) -> anyhow::Result<()> {
    println!(
        "plugd-bench reload: {} swaps per case, one every {} ms; watcher debounce {} ms (the default); no sandbox",
        config.swaps,
        config.interval.as_millis(),
        WatchConfig::default().debounce.as_millis()
    );
    println!(
        "{:<34} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "case", "swaps", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for case in &config.cases {
        match case.as_str() {
            "python" => python(config, &scratch.join("python")).await?,
            "wasm" => wasm(config, &scratch.join("wasm")).await?,
            other => bail!("Unknown case `{other}`; hint: python, wasm"),
        }
    }
    Ok(())
}

async fn host(config: &Config, scratch: &Path) -> anyhow::Result<Host> {
    let mut process = ProcessConfig::default();
    process.base_env.push((
        "PYTHONPATH".into(),
        config.repo.join("sdk/python/src").into_os_string(),
    ));
    let wasm = WasmRuntime::new(WasmConfig::new(scratch.join("wasm-cache")))?;
    let host = Host::builder(HostConfig::new(
        scratch.join("plugins"),
        scratch.join("state"),
    ))
    .runtime(Arc::new(ProcessRuntime::new(process)))
    .runtime(Arc::new(wasm))
    .build();
    host.start().await?;
    Ok(host)
}

/// Calls `plugin`'s `action` until its answer contains `want`; the time it took. With a poll
/// pause the calls come from a thread of their own (each awaited with `block_on`), else from this
/// task back to back.
async fn until_answer(
    host: &Host,
    plugin: &str,
    action: &str,
    want: &str,
    since: Instant,
    poll: Duration,
) -> anyhow::Result<Duration> {
    if poll.is_zero() {
        return poll_answer(host, plugin, action, want, since, || async {
            tokio::task::yield_now().await
        })
        .await;
    }
    let (host, plugin, action, want) = (
        host.clone(),
        plugin.to_owned(),
        action.to_owned(),
        want.to_owned(),
    );
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        runtime.block_on(poll_answer(
            &host,
            &plugin,
            &action,
            &want,
            since,
            || async { std::thread::sleep(poll) },
        ))
    })
    .await?
}

async fn poll_answer<F, Fut>(
    host: &Host,
    plugin: &str,
    action: &str,
    want: &str,
    since: Instant,
    pause: F,
) -> anyhow::Result<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let payload = RawValue::from_string("{}".into())?;
    let deadline = since + Duration::from_secs(30);
    loop {
        // A failed call would be a dropped call: the bench stops on it.
        let answer = host
            .call(plugin, action, payload.clone())
            .await
            .with_context(|| format!("A call to `{plugin}` failed during a swap"))?;
        if answer.result.get().contains(want) {
            return Ok(since.elapsed());
        }
        ensure!(
            Instant::now() < deadline,
            "`{plugin}` still answers {} 30 s after the write",
            answer.result.get()
        );
        pause().await;
    }
}

/// The swap the host recorded for `plugin` that began after `since` (it is recorded once the old
/// version has drained and stopped, a little after the new one answers), checked to be a success.
async fn last_swap(host: &Host, plugin: &str, since: SystemTime) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = host.plugin(plugin)?;
        if let Some(swap) = info.swaps.last().filter(|s| s.at >= since) {
            if let Err(e) = &swap.outcome {
                bail!("The swap of `{plugin}` failed: {e}");
            }
            return Ok(swap.took);
        }
        ensure!(Instant::now() < deadline, "No swap of `{plugin}` recorded");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn row(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let n = samples.len().max(1);
    let at = |q: f64| {
        samples
            .get(((n as f64 * q) as usize).min(n - 1))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{name:<34} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        samples.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
}

fn p50(samples: &[Duration]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

async fn python(config: &Config, scratch: &Path) -> anyhow::Result<()> {
    let dir = scratch.join("plugins/gen");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("plugin.toml"), PY_TOML)?;
    std::fs::write(dir.join("main.py"), gen_py(0))?;
    let host = host(config, scratch).await?;
    let outcome = async {
        ensure!(host.plugin("gen")?.state == PluginState::Running, "`gen` did not start");
        let _watching = host.watch(WatchConfig::default())?;
        let (mut answer, mut swap) = (Vec::new(), Vec::new());
        for n in 1..=config.swaps {
            let next = Instant::now() + config.interval;
            let (since, wall) = (Instant::now(), SystemTime::now());
            replace(&dir.join("main.py"), gen_py(n).as_bytes())?;
            answer.push(
                until_answer(
                    &host,
                    "gen",
                    "which",
                    &format!("\"generation\":{n}}}"),
                    since,
                    config.poll,
                )
                .await?,
            );
            swap.push(last_swap(&host, "gen", wall).await?);
            tokio::time::sleep_until(next.into()).await;
        }
        let watch = p50(&answer) - p50(&swap);
        row("python: write -> new answers", answer);
        row("python: swap (stage+start+switch)", swap);
        println!(
            "target: python write -> answer <= 50 ms + its start: {} (p50 {watch:.1} ms beyond the swap)",
            if watch <= 50.0 { "met" } else { "MISSED" }
        );
        Ok(())
    }
    .await;
    host.shutdown().await;
    outcome
}

async fn wasm(config: &Config, scratch: &Path) -> anyhow::Result<()> {
    let builds = wasm_builds(&config.repo)?;
    let example = config.repo.join("examples/plugins").join(HELLO_C_WASM);
    let dir = scratch.join("plugins").join(HELLO_C_WASM);
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(example.join("plugin.toml"), dir.join("plugin.toml"))?;
    std::fs::write(dir.join("plugin.wasm"), &builds[0])?;
    let host = host(config, scratch).await?;
    let outcome = async {
        ensure!(
            host.plugin(HELLO_C_WASM)?.state == PluginState::Running,
            "`{HELLO_C_WASM}` did not start"
        );
        let _watching = host.watch(WatchConfig::default())?;
        let (mut first, mut answer, mut swap) = (Vec::new(), Vec::new(), Vec::new());
        for n in 1..=config.swaps {
            let next = Instant::now() + config.interval;
            let i = n % 2;
            let (since, wall) = (Instant::now(), SystemTime::now());
            replace(&dir.join("plugin.wasm"), &builds[i])?;
            let want = if i == 0 { "build-A" } else { "build-B" };
            let took = until_answer(&host, HELLO_C_WASM, "build", want, since, config.poll).await?;
            // Build B is compiled on its first sight (A was compiled by the start).
            if n == 1 {
                first.push(took);
            } else {
                answer.push(took);
                swap.push(last_swap(&host, HELLO_C_WASM, wall).await?);
            }
            tokio::time::sleep_until(next.into()).await;
        }
        let p = p50(&answer);
        row("wasm: write -> new answers (cached)", answer);
        row("wasm: swap (stage+start+switch)", swap);
        row("wasm: first sight (compile+swap)", first);
        println!(
            "target: cached C wasm write -> answer <= 30 ms: {} (p50 {p:.1} ms)",
            if p <= 30.0 { "met" } else { "MISSED" }
        );
        Ok(())
    }
    .await;
    host.shutdown().await;
    outcome
}

/// `plugd-bench rewrite DIR`: rewrites the package in `DIR` `times` times, one every `interval`
/// (a wasm package alternates its two builds; a Python one gets a new trailing comment in
/// `main.py`), for `run.sh` to run beside `wrk`.
pub(crate) fn rewrite(
    repo: &Path,
    dir: &Path,
    times: usize,
    interval: Duration,
) -> anyhow::Result<()> {
    let wasm = dir.join("plugin.wasm");
    let builds = if wasm.is_file() {
        Some(wasm_builds(repo)?)
    } else {
        None
    };
    let main = dir.join("main.py");
    let source = if builds.is_none() {
        std::fs::read_to_string(&main).with_context(|| {
            format!(
                "`{}` has neither `plugin.wasm` nor `main.py`",
                dir.display()
            )
        })?
    } else {
        String::new()
    };
    let start = Instant::now();
    for n in 1..=times {
        match &builds {
            Some(builds) => replace(&wasm, &builds[n % 2])?,
            None => replace(&main, format!("{source}\n# rewrite {n}\n").as_bytes())?,
        }
        std::thread::sleep((start + interval * n as u32).saturating_duration_since(Instant::now()));
    }
    println!("rewrote `{}` {times} times", dir.display());
    Ok(())
}
