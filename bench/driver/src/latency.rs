//! `plugd-bench latency`: call latency through `plugd-host` with 1 and N calls in flight, next to
//! raw pipe round trips to the same kind of child, all measured in one run.
//!
//! The raw pipe is what the process runtime does minus the host: a socket pair on fd 3, one
//! newline-delimited JSON-RPC frame written and one read back with tokio, from Rust.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use plugd_host::{Host, HostConfig, PluginState};
use plugd_process::{ProcessConfig, ProcessRuntime};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

use crate::plugins;
use crate::stats::{CpuClock, CpuDelta, Summary};

/// What `latency` runs.
pub(crate) struct Config {
    pub repo: PathBuf,
    pub calls: usize,
    pub warmup: usize,
    pub in_flight: usize,
    pub threads: Option<usize>,
    pub rounds: usize,
    pub payload: String,
    pub cases: Vec<Case>,
}

/// One kind of round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Case {
    /// The raw pipe to `bench/raw_pipe_child.py`: the baseline of the targets.
    RawPython,
    /// The host calling `hello` (Python SDK): what the targets are about.
    HostHello,
    /// The host calling `raw_pipe_child.py` as a plugin: host cost with the same child.
    HostRawpy,
    /// The raw pipe to the instant Rust child: the floor of a round trip.
    RawRust,
    /// The host calling the instant Rust child: the host's own cost on top of that floor.
    HostRust,
}

impl Case {
    pub(crate) const ALL: [Case; 5] = [
        Case::RawPython,
        Case::HostHello,
        Case::HostRawpy,
        Case::RawRust,
        Case::HostRust,
    ];

    pub(crate) fn parse(s: &str) -> anyhow::Result<Case> {
        Ok(match s {
            "raw-python" => Case::RawPython,
            "host-hello" => Case::HostHello,
            "host-rawpy" => Case::HostRawpy,
            "raw-rust" => Case::RawRust,
            "host-rust" => Case::HostRust,
            other => bail!(
                "Unknown case `{other}`; hint: use host-hello, raw-python, host-rawpy, host-rust or raw-rust"
            ),
        })
    }

    fn label(self) -> &'static str {
        match self {
            Case::RawPython => "raw pipe -> raw_pipe_child.py",
            Case::HostHello => "host -> hello (Python SDK)",
            Case::HostRawpy => "host -> raw_pipe_child.py",
            Case::RawRust => "raw pipe -> Rust fake child",
            Case::HostRust => "host -> Rust fake child",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Case::RawPython => "raw-python",
            Case::HostHello => "host-hello",
            Case::HostRawpy => "host-rawpy",
            Case::RawRust => "raw-rust",
            Case::HostRust => "host-rust",
        }
    }

    fn is_host(self) -> bool {
        matches!(self, Case::HostHello | Case::HostRawpy | Case::HostRust)
    }
}

pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let payload =
        RawValue::from_string(config.payload.clone()).context("`--payload` is not valid JSON")?;
    let scratch = std::env::temp_dir().join(format!("plugd-bench-{}", std::process::id()));
    let result = run_in(&config, &payload, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn run_in(
    config: &Config,
    payload: &RawValue,
    scratch: &std::path::Path,
) -> anyhow::Result<()> {
    let threads = config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "plugd-bench latency: {} calls per case in {} interleaved rounds after {} warm-up, {} in flight, payload {} bytes, tokio {}",
        config.calls,
        config.rounds,
        config.warmup,
        config.in_flight,
        payload.get().len(),
        if config.threads == Some(1) {
            "current_thread".to_owned()
        } else {
            format!("multi_thread ({threads} workers)")
        }
    );

    let host = if config.cases.iter().any(|c| c.is_host()) {
        let plugins_dir = scratch.join("plugins");
        plugins::make(&config.repo, &plugins_dir, false)?;
        let mut process = ProcessConfig::default();
        process.base_env.push((
            "PYTHONPATH".into(),
            config.repo.join("sdk/python/src").into_os_string(),
        ));
        let host = Host::builder(HostConfig::new(&plugins_dir, scratch.join("state")))
            .runtime(Arc::new(ProcessRuntime::new(process)))
            .build();
        host.start().await?;
        for p in host.plugins() {
            ensure!(
                p.state == PluginState::Running,
                "Plugin `{}` is {}: {}",
                p.name,
                p.state,
                p.reason.as_deref().unwrap_or("no reason given")
            );
        }
        Some(host)
    } else {
        None
    };

    let outcome = measure(config, host.as_ref(), payload).await;
    if let Some(host) = &host {
        host.shutdown().await;
    }
    let results = outcome?;

    println!();
    println!("{}", Summary::header());
    for (_, seq, conc) in &results {
        println!("{}", seq.row());
        println!("{}", conc.row());
    }
    println!(
        "(self cpu = this process, i.e. the host side; child cpu = the plugin process; both per call)"
    );

    let find = |case: Case| results.iter().find(|(c, _, _)| *c == case);
    let mut ratios = serde_json::Map::new();
    println!();
    if let (Some((_, hello, hello_c)), Some((_, raw, raw_c))) =
        (find(Case::HostHello), find(Case::RawPython))
    {
        let r1 = hello.p50_us / raw.p50_us;
        let rc = hello_c.p50_us / raw_c.p50_us;
        println!(
            "target: host->hello p50 {:.1} µs (≤ 25 µs: {}), {:.2}x the raw Python pipe (≤ 2.5x: {}); with {} in flight {:.2}x",
            hello.p50_us,
            verdict(hello.p50_us <= 25.0),
            r1,
            verdict(r1 <= 2.5),
            config.in_flight,
            rc
        );
        ratios.insert("hello_over_raw_python_p50".into(), round2(r1));
        ratios.insert("hello_over_raw_python_p50_concurrent".into(), round2(rc));
    }
    if let (Some((_, h, _)), Some((_, r, _))) = (find(Case::HostRawpy), find(Case::RawPython)) {
        println!(
            "host overhead, same Python child: +{:.1} µs p50 ({:.2}x); host cpu/call {:.1} µs vs {:.1} µs raw",
            h.p50_us - r.p50_us,
            h.p50_us / r.p50_us,
            h.self_cpu_us,
            r.self_cpu_us
        );
        ratios.insert(
            "host_rawpy_over_raw_python_p50".into(),
            round2(h.p50_us / r.p50_us),
        );
    }
    if let (Some((_, h, _)), Some((_, r, _))) = (find(Case::HostRust), find(Case::RawRust)) {
        println!(
            "host overhead, instant Rust child: +{:.1} µs p50 ({:.1} vs {:.1} µs)",
            h.p50_us - r.p50_us,
            h.p50_us,
            r.p50_us
        );
        ratios.insert(
            "host_rust_minus_raw_rust_p50_us".into(),
            round2(h.p50_us - r.p50_us),
        );
    }
    if let (Some((_, h, _)), Some((_, r, _))) = (find(Case::HostHello), find(Case::HostRawpy)) {
        println!(
            "Python SDK overhead over a bare Python loop: +{:.1} µs p50; child cpu/call {:.1} vs {:.1} µs",
            h.p50_us - r.p50_us,
            h.child_cpu_us,
            r.child_cpu_us
        );
    }

    let json = serde_json::json!({
        "bench": "plugd-latency",
        "calls": config.calls,
        "warmup": config.warmup,
        "rounds": config.rounds,
        "in_flight": config.in_flight,
        "payload_bytes": payload.get().len(),
        "tokio_workers": if config.threads == Some(1) { 0 } else { threads },
        "results": results.iter().flat_map(|(_, s, c)| [s.json(), c.json()]).collect::<Vec<_>>(),
        "ratios": ratios,
    });
    println!();
    println!("JSON {json}");
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn round2(x: f64) -> serde_json::Value {
    serde_json::json!((x * 100.0).round() / 100.0)
}

/// Checks that an echo answered with the payload (bare or as `{"value": payload}`).
fn check_echo(result: &str, payload: &RawValue) -> anyhow::Result<()> {
    let got: serde_json::Value = serde_json::from_str(result)?;
    let want: serde_json::Value = serde_json::from_str(payload.get())?;
    let value = got.get("value").unwrap_or(&got);
    ensure!(
        *value == want,
        "The echo answered `{result}`, not the payload"
    );
    Ok(())
}

/// Runs every case in `rounds` interleaved rounds, so that background load (other builds, a
/// noisy neighbour) spreads over all cases alike instead of skewing whichever ran at the time.
async fn measure(
    config: &Config,
    host: Option<&Host>,
    payload: &RawValue,
) -> anyhow::Result<Vec<(Case, Summary, Summary)>> {
    let mut targets = Vec::new();
    for &case in &config.cases {
        let mut target = Target::open(case, config, host).await?;
        let first = target.call_once(payload).await?;
        check_echo(first.get(), payload)?;
        for _ in 0..config.warmup {
            target.call_once(payload).await?;
        }
        targets.push((case, target, Acc::default(), Acc::default()));
    }
    let rounds = config.rounds.max(1);
    let per_round = (config.calls / rounds).max(1);
    // Whole batches per caller with N in flight.
    let per_round_conc = (per_round / config.in_flight).max(1) * config.in_flight;
    for round in 0..rounds {
        for (_, target, seq, conc) in &mut targets {
            seq.add(target.sequential(per_round, payload).await?);
            conc.add(
                target
                    .concurrent(per_round_conc, config.in_flight, payload)
                    .await?,
            );
        }
        eprintln!("  round {}/{rounds} done", round + 1);
    }
    let mut results = Vec::new();
    for (case, target, seq, conc) in targets {
        target.close().await;
        results.push((
            case,
            seq.summary(case, 1),
            conc.summary(case, config.in_flight),
        ));
    }
    Ok(results)
}

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

    fn summary(self, case: Case, in_flight: usize) -> Summary {
        Summary::new(
            (case.key(), case.label()),
            in_flight,
            self.samples,
            self.wall,
            self.cpu,
        )
    }
}

/// Latency samples in ns, the wall time of the run and the CPU it took.
type Run = (Vec<u64>, Duration, CpuDelta);

/// Where calls go: a plugin through the host, or a child on a raw pipe.
enum Target {
    Host {
        host: Host,
        plugin: &'static str,
        pid: Option<u32>,
    },
    Pipe(Box<Pipe>),
}

impl Target {
    async fn open(case: Case, config: &Config, host: Option<&Host>) -> anyhow::Result<Target> {
        let plugin = match case {
            Case::HostHello => plugins::HELLO,
            Case::HostRawpy => plugins::RAWPY,
            Case::HostRust => plugins::RUSTECHO,
            Case::RawPython => {
                let raw = plugins::raw_child(&config.repo);
                let args = [raw.as_os_str(), "--no-hello".as_ref()];
                return Ok(Target::Pipe(Box::new(Pipe::spawn(
                    "python3", &args, config,
                )?)));
            }
            Case::RawRust => {
                let exe = std::env::current_exe()?;
                let args = ["fake-child".as_ref(), "--no-hello".as_ref()];
                return Ok(Target::Pipe(Box::new(Pipe::spawn(
                    exe.as_os_str(),
                    &args,
                    config,
                )?)));
            }
        };
        let host = host.context("The host did not start")?.clone();
        let pid = host.plugin(plugin)?.pid;
        Ok(Target::Host { host, plugin, pid })
    }

    async fn call_once(&mut self, payload: &RawValue) -> anyhow::Result<Box<RawValue>> {
        match self {
            Target::Host { host, plugin, .. } => {
                Ok(host.call(plugin, "echo", payload.to_owned()).await?.result)
            }
            Target::Pipe(pipe) => pipe.round_trip(payload).await,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Target::Host { pid, .. } => *pid,
            Target::Pipe(pipe) => pipe.child.id(),
        }
    }

    /// `n` calls one after the other.
    async fn sequential(&mut self, n: usize, payload: &RawValue) -> anyhow::Result<Run> {
        let mut samples = Vec::with_capacity(n);
        let cpu = CpuClock::start(self.pid());
        let started = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            match self {
                // The payload copy is part of a call: the HTTP route makes one too.
                Target::Host { host, plugin, .. } => {
                    drop(host.call(plugin, "echo", payload.to_owned()).await?)
                }
                Target::Pipe(pipe) => drop(pipe.round_trip(payload).await?),
            }
            samples.push(t.elapsed().as_nanos() as u64);
        }
        Ok((samples, started.elapsed(), cpu.stop()))
    }

    /// `n` calls with `in_flight` outstanding at any time.
    async fn concurrent(
        &mut self,
        n: usize,
        in_flight: usize,
        payload: &RawValue,
    ) -> anyhow::Result<Run> {
        match self {
            Target::Host { host, plugin, pid } => {
                let per_caller = n / in_flight;
                let cpu = CpuClock::start(*pid);
                let started = Instant::now();
                let callers: Vec<_> = (0..in_flight)
                    .map(|_| {
                        let (host, plugin, payload) = (host.clone(), *plugin, payload.to_owned());
                        tokio::spawn(async move {
                            let mut samples = Vec::with_capacity(per_caller);
                            for _ in 0..per_caller {
                                let t = Instant::now();
                                host.call(plugin, "echo", payload.clone()).await?;
                                samples.push(t.elapsed().as_nanos() as u64);
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
            Target::Pipe(pipe) => pipe.concurrent(n, in_flight, payload).await,
        }
    }

    async fn close(self) {
        if let Target::Pipe(pipe) = self {
            pipe.shutdown().await;
        }
    }
}

/// A child on the other end of a socket pair on its fd 3, spawned as the process runtime does.
struct Pipe {
    child: Child,
    reader: BufReader<OwnedReadHalf>,
    /// `None` only while [`Pipe::concurrent`] has lent it to its writer task.
    writer: Option<OwnedWriteHalf>,
    next_id: u64,
    frame: Vec<u8>,
    line: Vec<u8>,
}

impl Pipe {
    fn spawn(
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&std::ffi::OsStr],
        config: &Config,
    ) -> anyhow::Result<Pipe> {
        let (parent_end, child_end) = std::os::unix::net::UnixStream::pair()?;
        let base = ProcessConfig::default().base_env;
        let mut cmd = Command::new(program.as_ref());
        cmd.args(args)
            .current_dir(&config.repo)
            .env_clear()
            .envs(base.iter().map(|(k, v)| (k, v)))
            .env("PLUGD_FD", "3")
            .env("PLUGD_PROTOCOL", "1")
            .env("PLUGD_PLUGIN", "bench")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true);
        let child_fd = std::os::fd::AsRawFd::as_raw_fd(&child_end);
        // SAFETY: the hook runs between fork and exec and only calls dup2 and fcntl, which are
        // async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if child_fd == 3 {
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(child_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("Cannot run `{}`", program.as_ref().display()))?;
        drop(child_end);
        parent_end.set_nonblocking(true)?;
        let (read, writer) = UnixStream::from_std(parent_end)?.into_split();
        Ok(Pipe {
            child,
            reader: BufReader::new(read),
            writer: Some(writer),
            next_id: 10,
            frame: Vec::with_capacity(256),
            line: Vec::with_capacity(256),
        })
    }

    /// One call: encode, write, read the reply line, decode and check its id.
    async fn round_trip(&mut self, payload: &RawValue) -> anyhow::Result<Box<RawValue>> {
        let id = self.next_id;
        self.next_id += 1;
        call_frame(&mut self.frame, id, payload);
        self.writer
            .as_mut()
            .context("The pipe has no writer")?
            .write_all(&self.frame)
            .await?;
        self.line.clear();
        if self.reader.read_until(b'\n', &mut self.line).await? == 0 {
            bail!("The raw child closed its socket");
        }
        let reply: Reply = serde_json::from_slice(&self.line)?;
        ensure!(
            reply.id == id,
            "The raw child answered id {} to call {id}",
            reply.id
        );
        Ok(reply.result)
    }

    /// One task writes while at most `in_flight` calls are outstanding; this one reads the
    /// replies and times each against its send time.
    async fn concurrent(
        &mut self,
        n: usize,
        in_flight: usize,
        payload: &RawValue,
    ) -> anyhow::Result<Run> {
        let first_id = self.next_id;
        self.next_id += n as u64;
        let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let window = Arc::new(Semaphore::new(in_flight));
        let mut writer = self.writer.take().context("The pipe has no writer")?;
        let cpu = CpuClock::start(self.child.id());
        let base = Instant::now();
        let writer_task = {
            let (sent, window, payload) = (sent.clone(), window.clone(), payload.to_owned());
            tokio::spawn(async move {
                let mut frame = Vec::with_capacity(256);
                for (i, sent) in sent.iter().enumerate() {
                    window.acquire().await?.forget();
                    call_frame(&mut frame, first_id + i as u64, &payload);
                    sent.store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    writer.write_all(&frame).await?;
                }
                anyhow::Ok(writer)
            })
        };
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            self.line.clear();
            if self.reader.read_until(b'\n', &mut self.line).await? == 0 {
                bail!("The raw child closed its socket");
            }
            let now = base.elapsed().as_nanos() as u64;
            let reply: Reply = serde_json::from_slice(&self.line)?;
            let i = reply
                .id
                .checked_sub(first_id)
                .filter(|&i| (i as usize) < n)
                .context("Unexpected reply id")?;
            samples.push(now.saturating_sub(sent[i as usize].load(Ordering::Relaxed)));
            window.add_permits(1);
        }
        let wall = base.elapsed();
        self.writer = Some(writer_task.await??);
        Ok((samples, wall, cpu.stop()))
    }

    async fn shutdown(mut self) {
        if let Some(writer) = self.writer.as_mut() {
            let _ = writer
                .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"shutdown\",\"params\":{}}\n")
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

#[derive(Deserialize)]
struct Reply {
    id: u64,
    result: Box<RawValue>,
}

fn call_frame(frame: &mut Vec<u8>, id: u64, payload: &RawValue) {
    use std::io::Write;
    frame.clear();
    let _ = writeln!(
        frame,
        r#"{{"jsonrpc":"2.0","id":{id},"method":"call","params":{{"action":"echo","payload":{},"deadline_ms":5000}}}}"#,
        payload.get()
    );
}
