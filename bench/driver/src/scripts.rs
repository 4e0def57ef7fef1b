//! `plugd-bench scripts`: the script manager (issue 14). The overhead of a confined run of a
//! script that does nothing, next to `python3 -c pass` run bare in the same run:
//! - `bare`: `python3 -c pass`, spawned and waited for;
//! - `server`: what `plugd serve` does for `POST /api/v1/scripts/ID/runs` + wait, in-process:
//!   validate, record the queued run, prepare the sandbox (cgroup, namespaces, uid, Landlock,
//!   seccomp), spawn, sample, record the end (committed) — request to recorded result;
//! - `server-env3`: the same with a cached environment of 3 locked packages (needs `uv` and the
//!   index once);
//! - `concurrent`: runs per second with 4 at once, next to 4 bare `python3 -c pass` at once;
//! - `cli`: end to end, `plugd script run ID` against a running `plugd serve` (CLI process,
//!   HTTP, run, record, stream);
//! - `paired`: `bare` and `server` alternating run by run, the median of each pair's ratio
//!   (what `bench/ab-scripts.sh` compares);
//! - `kernel`: `python3 -c pass` in a bare `plugd-sandbox` child with every layer, and without
//!   its cgroup: what the confinement itself costs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use plugd_scripts::{AddRequest, RunRequest, RunTarget, Scripts, ScriptsConfig};
use plugd_store::{AddMode, Store, StoreConfig};

pub(crate) struct Config {
    pub repo: PathBuf,
    pub runs: usize,
    pub warmup: usize,
    pub rounds: usize,
    pub dir: PathBuf,
    pub cases: Vec<String>,
    /// A pause before each timed run of the bare and server cases (not timed), so that runs
    /// arrive like separate requests instead of back to back.
    pub gap: std::time::Duration,
}

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len().max(1);
    samples
        .get(((n as f64 * q) as usize).min(n - 1))
        .copied()
        .unwrap_or(0.0)
}

struct Line {
    case: &'static str,
    p50_ms: f64,
    p90_ms: f64,
    per_sec: f64,
}

fn report(lines: &[Line]) {
    println!(
        "{:<34} {:>9} {:>9} {:>10}",
        "case", "p50 ms", "p90 ms", "runs/s"
    );
    for l in lines {
        println!(
            "{:<34} {:>9.2} {:>9.2} {:>10.1}",
            l.case, l.p50_ms, l.p90_ms, l.per_sec
        );
        println!(
            "{{\"bench\":\"scripts\",\"case\":\"{}\",\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"runs_per_sec\":{:.2}}}",
            l.case, l.p50_ms, l.p90_ms, l.per_sec
        );
    }
}

/// The `python3` scripts run with: the first on the children's `PATH` (not a version manager's
/// shim on the host's own `PATH`).
fn python3() -> PathBuf {
    std::env::split_paths(plugd_process::CHILD_PATH)
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

async fn bare_once() -> anyhow::Result<()> {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let status = tokio::process::Command::new(PYTHON.get_or_init(python3))
        .args(["-c", "pass"])
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .context("cannot run python3")?;
    if !status.success() {
        bail!("python3 -c pass failed: {status}");
    }
    Ok(())
}

async fn measure<F, Fut>(
    case: &'static str,
    n: usize,
    warmup: usize,
    gap: std::time::Duration,
    f: F,
) -> anyhow::Result<Line>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for _ in 0..warmup {
        f().await?;
    }
    let mut samples = Vec::with_capacity(n);
    let mut paused = std::time::Duration::ZERO;
    let started = Instant::now();
    for _ in 0..n {
        if !gap.is_zero() {
            let t = Instant::now();
            tokio::time::sleep(gap).await;
            paused += t.elapsed();
        }
        let t = Instant::now();
        f().await?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let wall = (started.elapsed() - paused).as_secs_f64();
    Ok(Line {
        case,
        p50_ms: percentile(&mut samples, 0.5),
        p90_ms: percentile(&mut samples, 0.9),
        per_sec: n as f64 / wall,
    })
}

/// `bare` and `server` alternating run by run: the ratio of each pair (taken within ~40 ms of
/// each other) is immune to the machine drifting between phases, which moves whole rounds of
/// either case by 10–30 % on this VM. `gap` (untimed) goes before each run: without one, the
/// bare run would share the CPU with the end of the server run before it (the supervisor's exit
/// and the cgroup's removal, done off the run's path).
async fn paired(
    scripts: &Scripts,
    n: usize,
    warmup: usize,
    gap: std::time::Duration,
) -> anyhow::Result<()> {
    for _ in 0..warmup {
        bare_once().await?;
        run_and_wait(scripts, "noop").await?;
    }
    let (mut bare, mut server, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        tokio::time::sleep(gap).await;
        let t = Instant::now();
        bare_once().await?;
        let b = t.elapsed().as_secs_f64() * 1e3;
        tokio::time::sleep(gap).await;
        let t = Instant::now();
        run_and_wait(scripts, "noop").await?;
        let s = t.elapsed().as_secs_f64() * 1e3;
        bare.push(b);
        server.push(s);
        ratios.push(s / b);
    }
    let (b50, s50) = (percentile(&mut bare, 0.5), percentile(&mut server, 0.5));
    let (r25, r50, r75) = (
        percentile(&mut ratios, 0.25),
        percentile(&mut ratios, 0.5),
        percentile(&mut ratios, 0.75),
    );
    println!(
        "paired, {n} pairs: bare p50 {b50:.2} ms, server p50 {s50:.2} ms, ratio per pair p50 {r50:.3} (p25 {r25:.3}, p75 {r75:.3})"
    );
    println!(
        "{{\"bench\":\"scripts\",\"case\":\"paired\",\"pairs\":{n},\"bare_p50_ms\":{b50:.3},\"server_p50_ms\":{s50:.3},\"ratio_p50\":{r50:.4},\"ratio_p25\":{r25:.4},\"ratio_p75\":{r75:.4}}}"
    );
    Ok(())
}

async fn concurrently<F, Fut>(
    case: &'static str,
    n: usize,
    at_once: usize,
    f: F,
) -> anyhow::Result<Line>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..at_once {
        let (f, next) = (f.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
                let t = Instant::now();
                f().await?;
                samples.push(t.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await??);
    }
    let wall = started.elapsed().as_secs_f64();
    Ok(Line {
        case,
        p50_ms: percentile(&mut samples, 0.5),
        p90_ms: percentile(&mut samples, 0.9),
        per_sec: n as f64 / wall,
    })
}

async fn manager(repo: &Path, dir: &Path, max_runs: usize) -> anyhow::Result<Scripts> {
    let store = Store::open(StoreConfig::new(dir.join("plugd.db"))).await?;
    let mut config = ScriptsConfig::new(dir);
    let sdk = repo.join("sdk/python/src");
    config
        .base_env
        .push(("PYTHONPATH".into(), sdk.into_os_string()));
    config.max_runs = max_runs;
    Scripts::open(store, config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn run_and_wait(scripts: &Scripts, id: &str) -> anyhow::Result<()> {
    let started = scripts
        .run(RunRequest {
            target: RunTarget::Script {
                id: id.to_owned(),
                version: None,
            },
            args: Default::default(),
            who: "bench".into(),
            privileged: true,
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let view = scripts
        .wait(started.id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if view.record.state != "succeeded" {
        bail!(
            "run {} ended {}: {:?}",
            started.id,
            view.record.state,
            view.record.reason
        );
    }
    Ok(())
}

async fn add(scripts: &Scripts, id: &str, source: &str) -> anyhow::Result<()> {
    scripts
        .add(
            AddRequest {
                id: Some(id.to_owned()),
                source: source.to_owned(),
                ..AddRequest::default()
            },
            AddMode::Create,
        )
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let want = |c: &str| config.cases.is_empty() || config.cases.iter().any(|x| x == c);
    let tmp = tempfile_dir(&config.dir)?;
    let scripts = manager(&config.repo, &tmp, 4).await?;
    add(&scripts, "noop", "pass\n").await?;
    let with_env = if want("server-env3") {
        match add(
            &scripts,
            "noop-env3",
            "# /// script\n# dependencies = [\"six\", \"idna\", \"certifi\"]\n# ///\npass\n",
        )
        .await
        {
            Ok(()) => {
                // Builds the environment once (not measured).
                run_and_wait(&scripts, "noop-env3").await?;
                true
            }
            Err(e) => {
                eprintln!("skipping server-env3: {e}");
                false
            }
        }
    } else {
        false
    };
    for round in 0..config.rounds {
        println!("# round {}", round + 1);
        let mut lines = Vec::new();
        if want("bare") {
            lines.push(
                measure(
                    "bare python3 -c pass",
                    config.runs,
                    config.warmup,
                    config.gap,
                    bare_once,
                )
                .await?,
            );
        }
        if want("server") {
            let s = scripts.clone();
            lines.push(
                measure(
                    "server: confined no-op run",
                    config.runs,
                    config.warmup,
                    config.gap,
                    || {
                        let s = s.clone();
                        async move { run_and_wait(&s, "noop").await }
                    },
                )
                .await?,
            );
        }
        // Only when asked: it repeats the bare and server cases.
        if config.cases.iter().any(|c| c == "paired") {
            paired(&scripts, config.runs, config.warmup, config.gap).await?;
        }
        if with_env {
            let s = scripts.clone();
            lines.push(
                measure(
                    "server: no-op, 3-package env",
                    config.runs,
                    config.warmup,
                    config.gap,
                    || {
                        let s = s.clone();
                        async move { run_and_wait(&s, "noop-env3").await }
                    },
                )
                .await?,
            );
        }
        if want("concurrent") {
            lines.push(concurrently("bare, 4 at once", config.runs * 2, 4, bare_once).await?);
            let s = scripts.clone();
            lines.push(
                concurrently("server, 4 at once", config.runs * 2, 4, move || {
                    let s = s.clone();
                    async move { run_and_wait(&s, "noop").await }
                })
                .await?,
            );
        }
        if want("cli") {
            lines.push(cli(&config, &tmp).await?);
        }
        let mut kernel_cases: Vec<(&'static str, Vec<plugd_sandbox::Layer>)> = Vec::new();
        if want("kernel") {
            kernel_cases.push(("sandbox: python3 -c pass, all layers", vec![]));
            kernel_cases.push((
                "sandbox: the same without its cgroup",
                vec![plugd_sandbox::Layer::Cgroup],
            ));
        }
        if want("layers") {
            // What each layer costs: all layers but that one.
            use plugd_sandbox::Layer;
            for (case, layer) in [
                (
                    "sandbox: without network namespace",
                    Layer::NetworkNamespace,
                ),
                ("sandbox: without IPC namespace", Layer::IpcNamespace),
                ("sandbox: without PID namespace", Layer::PidNamespace),
                ("sandbox: without mount namespace", Layer::MountNamespace),
                ("sandbox: without rlimits", Layer::Rlimits),
                ("sandbox: without dedicated uid", Layer::Uid),
                ("sandbox: without Landlock", Layer::Landlock),
                ("sandbox: without seccomp", Layer::Seccomp),
            ] {
                kernel_cases.push((case, vec![layer]));
            }
        }
        {
            for (case, disabled) in kernel_cases {
                let mut samples = Vec::new();
                let started = Instant::now();
                for i in 0..config.runs + config.warmup {
                    let took = sandboxed_python(&tmp, disabled.clone()).await?;
                    if i >= config.warmup {
                        samples.push(took);
                    }
                }
                let wall = started.elapsed().as_secs_f64();
                lines.push(Line {
                    case,
                    p50_ms: percentile(&mut samples, 0.5),
                    p90_ms: percentile(&mut samples, 0.9),
                    per_sec: config.runs as f64 / wall,
                });
            }
        }
        report(&lines);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// `python3 -c pass` in a bare `plugd-sandbox` child (the layers of a script run), 10 ms apart
/// like requests: what the kernel's confinement costs by itself, with and without the cgroup
/// (on cgroup v1 a task's move into a cgroup waits for an RCU grace period).
async fn sandboxed_python(dir: &Path, disabled: Vec<plugd_sandbox::Layer>) -> anyhow::Result<f64> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let work = dir.join("kernel-work");
    std::fs::create_dir_all(&work)?;
    let mut policy = plugd_sandbox::SandboxPolicy::new(format!("bench-kernel-{n}"), dir, &work);
    policy.read_paths = plugd_process::SandboxConfig::default().read_paths;
    policy.cpu_quota = Some(1.0);
    policy.disabled = disabled;
    let started = Instant::now();
    let prepared = plugd_sandbox::Sandbox::prepare(&policy)?;
    let mut cmd = tokio::process::Command::new(python3());
    cmd.args(["-c", "pass"])
        .env_clear()
        .env("PATH", plugd_process::CHILD_PATH);
    prepared.apply_to(cmd.as_std_mut());
    let status = cmd.status().await?;
    let took = started.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        bail!("sandboxed python3 failed: {status}");
    }
    Ok(took)
}

/// `plugd script run noop` against a `plugd serve` on port 0 (the `plugd` next to this binary).
async fn cli(config: &Config, tmp: &Path) -> anyhow::Result<Line> {
    let plugd = std::env::current_exe()?
        .parent()
        .context("no directory")?
        .join("plugd");
    static ROUND: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = tmp.join(format!(
        "cli-{}",
        ROUND.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(dir.join("plugins"))?;
    /// The server, killed however this function ends.
    struct Serving(std::process::Child);
    impl Drop for Serving {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = std::process::Command::new(&plugd)
        .args(["serve", "--listen", "127.0.0.1:0", "--plugins"])
        .arg(dir.join("plugins"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start `{}`", plugd.display()))?;
    let stdout = server.stdout.take().context("no stdout");
    let server = Serving(server);
    let stdout = stdout?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let first = lines.next().context("serve printed nothing")??;
    let url = first
        .strip_prefix("plugd listening on ")
        .context("unexpected first line")?
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    let file = dir.join("noop.py");
    std::fs::write(&file, "pass\n")?;
    let cli = |args: &[&str]| {
        std::process::Command::new(&plugd)
            .arg("--server")
            .arg(&url)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    };
    let ok = cli(&[
        "script",
        "add",
        file.to_str().unwrap_or_default(),
        "--id",
        "noop",
    ])?;
    if !ok.success() {
        bail!("plugd script add failed");
    }
    let line = measure(
        "cli: plugd script run noop",
        config.runs,
        config.warmup,
        std::time::Duration::ZERO,
        || {
            let status = cli(&["script", "run", "noop"]);
            async move {
                if status?.success() {
                    Ok(())
                } else {
                    bail!("plugd script run failed")
                }
            }
        },
    )
    .await;
    drop(server);
    line
}

fn tempfile_dir(base: &Path) -> anyhow::Result<PathBuf> {
    let dir = base.join(format!("plugd-bench-scripts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // Scripts run as their own uid: the state dir's parents must let it in (the mount namespace
    // does), and the dir itself is plugd's.
    Ok(dir)
}
