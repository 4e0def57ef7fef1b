//! One confined run: the script's interpreter in the same kernel sandbox as process plugins
//! (`plugd-sandbox`: cgroup, namespaces, own uid, Landlock, seccomp), with its arguments on
//! stdin, a status pipe on fd 3 (`progress` and `result` lines from `plugd.script`), bounded
//! output, resource samples from the cgroup every `sample_interval`, and every limit enforced
//! with the reason recorded.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use plugd_sandbox::{EndReport, Layer, LayerState, Prepared, Sandbox, SandboxPolicy};
use plugd_store::RunEnd;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::{Notify, broadcast};

use crate::meta::Meta;
use crate::{ScriptsConfig, human_bytes, human_ms};

/// The fd a script writes its status lines to (`PLUGD_SCRIPT_FD`).
pub const STATUS_FD: i32 = 3;
/// Longest status line (a result) accepted, in bytes.
pub const MAX_STATUS_LINE: usize = 1 << 20;
/// Output kept in the run's record: its first bytes...
const HEAD: usize = 8 << 10;
/// ... and its last ones.
const TAIL: usize = 56 << 10;

/// Something that happened in a run, as its live stream shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    /// Its process started.
    Started {
        /// The run.
        run: u64,
        /// When, in milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// Output, as written (UTF-8, invalid bytes replaced).
    Output {
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The text.
        text: String,
    },
    /// The script reported progress.
    Progress {
        /// 0 to 1.
        fraction: f64,
        /// What it is doing.
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A resource sample.
    Sample(Sample),
    /// The run ended; its record is final.
    Ended {
        /// `succeeded`, `failed`, `cancelled` or `killed`.
        state: String,
        /// The exit status, when it exited.
        exit_code: Option<i64>,
        /// Why it failed or was killed.
        reason: Option<String>,
    },
}

/// CPU and memory of a run at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Milliseconds since it started.
    pub elapsed_ms: u64,
    /// CPU use since the last sample, in percent of one core.
    pub cpu_percent: f64,
    /// CPU time used so far, in milliseconds.
    pub cpu_ms: u64,
    /// Memory in use now, in bytes.
    pub memory: u64,
    /// The highest memory use so far, in bytes.
    pub peak_memory: u64,
}

/// What a live subscriber joining late sees first.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// `queued` or `running` (or the end state once ended).
    pub state: String,
    /// The last progress reported.
    pub progress: Option<ProgressNow>,
    /// The last sample.
    pub sample: Option<Sample>,
    /// The output so far (its last 16 KiB), so a follower joining late misses nothing recent;
    /// the `output` events continue from here.
    pub output: String,
}

/// Progress as a script last reported it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProgressNow {
    /// 0 to 1.
    pub fraction: f64,
    /// What it is doing.
    pub message: Option<String>,
}

/// How much output a [`Snapshot`] keeps.
const SNAPSHOT_OUTPUT: usize = 16 << 10;

/// A run in flight: its live events, cancel switch and latest state.
pub(crate) struct Active {
    pub events: broadcast::Sender<RunEvent>,
    pub cancel: Notify,
    pub cancelled: std::sync::atomic::AtomicBool,
    pub snapshot: Mutex<Snapshot>,
}

impl Active {
    pub(crate) fn new() -> Arc<Active> {
        Arc::new(Active {
            events: broadcast::channel(1024).0,
            cancel: Notify::new(),
            cancelled: std::sync::atomic::AtomicBool::new(false),
            snapshot: Mutex::new(Snapshot {
                state: "queued".into(),
                ..Snapshot::default()
            }),
        })
    }

    fn send(&self, event: RunEvent) {
        {
            let mut s = self.snapshot.lock();
            match &event {
                RunEvent::Progress { fraction, message } => {
                    s.progress = Some(ProgressNow {
                        fraction: *fraction,
                        message: message.clone(),
                    });
                }
                RunEvent::Sample(sample) => s.sample = Some(*sample),
                RunEvent::Started { .. } => s.state = "running".into(),
                RunEvent::Ended { state, .. } => s.state = state.clone(),
                RunEvent::Output { text, .. } => {
                    s.output.push_str(text);
                    if s.output.len() > SNAPSHOT_OUTPUT {
                        let start = s.output.len() - tail(&s.output, SNAPSHOT_OUTPUT).len();
                        s.output.drain(..start);
                    }
                }
            }
            // Sent under the snapshot's lock: a follower reading the snapshot (under the same
            // lock) right after subscribing gets every later event exactly once.
            let _ = self.events.send(event);
        }
    }
}

/// What to run.
#[derive(Clone)]
pub(crate) struct Job {
    pub run_id: u64,
    /// The script id or file name, for messages.
    pub label: String,
    /// A directory holding `script.py` (read-only in the sandbox).
    pub code_dir: PathBuf,
    pub meta: Meta,
    pub python_env: Option<PathBuf>,
    pub args: Value,
    /// Whose uid the run gets: one per script id (allocated on this path).
    pub ids_owner: PathBuf,
}

/// How it ended: the record, and how long its process ran (`None`: it never started).
pub(crate) struct Outcome {
    pub end: RunEnd,
    pub duration_ms: Option<u64>,
}

impl Outcome {
    /// A run that ended without running, for `reason`.
    pub(crate) fn refused(state: &str, reason: String) -> Outcome {
        Outcome {
            end: RunEnd {
                state: state.to_owned(),
                reason: Some(reason),
                ..RunEnd::default()
            },
            duration_ms: None,
        }
    }
}

/// Output kept for the record: the head and the tail, with what was left out between.
#[derive(Default)]
struct Excerpt {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    total: u64,
}

impl Excerpt {
    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = HEAD.saturating_sub(self.head.len());
        let (h, rest) = bytes.split_at(room.min(bytes.len()));
        self.head.extend_from_slice(h);
        self.tail.extend(rest);
        while self.tail.len() > TAIL {
            let extra = self.tail.len() - TAIL;
            self.tail.drain(..extra);
        }
    }

    fn text(&self) -> String {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        let kept = (self.head.len() + self.tail.len()) as u64;
        if self.total > kept {
            out.push_str(&format!(
                "\n[... {} bytes of output not kept ...]\n",
                self.total - kept
            ));
        }
        let (a, b) = self.tail.as_slices();
        let mut tail = a.to_vec();
        tail.extend_from_slice(b);
        out.push_str(&String::from_utf8_lossy(&tail));
        out
    }
}

/// Why the host stopped a run, first reason wins.
#[derive(Default)]
struct Stop {
    reason: Mutex<Option<(String, &'static str)>>,
}

impl Stop {
    fn set(&self, state: &'static str, reason: String) -> bool {
        let mut r = self.reason.lock();
        if r.is_none() {
            *r = Some((reason, state));
            true
        } else {
            false
        }
    }
}

/// A program on the children's `PATH`.
fn find_program(config: &ScriptsConfig, name: &str) -> Option<PathBuf> {
    std::env::split_paths(&plugd_process::base_path(&config.base_env))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether `uid`/`gid` may read (or write) `path` by its mode bits alone.
fn reachable(path: &Path, ids: (u32, u32), write: bool) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "`{}` cannot be reached: {e}; hint: create it, or remove it from `allowed_paths`",
            path.display()
        )
    })?;
    let mode = meta.mode();
    let need = if write { 0o2 } else { 0o4 } | if meta.is_dir() { 0o1 } else { 0 };
    let bits = if meta.uid() == ids.0 {
        (mode >> 6) & 0o7
    } else if meta.gid() == ids.1 {
        (mode >> 3) & 0o7
    } else {
        mode & 0o7
    };
    if bits & need == need {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not {} by the script's uid {} (mode {:04o}, owner {}); hint: `chown {} {}` or make it {}, or remove it from `allowed_paths`",
            path.display(),
            if write { "writable" } else { "readable" },
            ids.0,
            mode & 0o7777,
            meta.uid(),
            ids.0,
            path.display(),
            if write {
                "writable by others"
            } else {
                "readable by others"
            },
        ))
    }
}

/// The sandbox name (its cgroup's) of the run keyed `key`: a spare's cgroup is taken by the
/// run whose policy has the name it was made with.
fn sandbox_name(key: &str) -> String {
    format!("script-{key}")
}

/// Where the sandbox records the cgroups of runs, for `reap_leftovers` after a killed host.
pub(crate) fn records_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("sandbox")
}

/// The sandbox policy of a run: the same layers as a process plugin, from the script's
/// permissions and limits.
fn policy(
    config: &ScriptsConfig,
    job: &Job,
    work: &Path,
    key: &str,
) -> Result<SandboxPolicy, String> {
    let sandbox = config.sandbox.as_ref().expect("checked by the caller");
    let mut policy = SandboxPolicy::new(sandbox_name(key), &job.code_dir, work);
    policy.read_paths = sandbox.read_paths.clone();
    policy.read_paths.extend(job.python_env.iter().cloned());
    for (key, value) in &config.base_env {
        if key == "PYTHONPATH" {
            policy.read_paths.extend(std::env::split_paths(value));
        }
    }
    let p = &job.meta.permissions;
    let limits = &job.meta.limits;
    // A granted path is bound as it resolves now: one with a symbolic link in it (which a
    // script with a write grant could have planted) is refused, not followed.
    for path in p.read.iter().chain(&p.write) {
        if let Ok(real) = std::fs::canonicalize(path)
            && &real != path
        {
            return Err(format!(
                "`{}` resolves through a symbolic link to `{}`; hint: grant the real path",
                path.display(),
                real.display()
            ));
        }
    }
    policy.read_paths.extend(p.read.iter().cloned());
    policy.write_paths = p.write.clone();
    policy.net_connect = p
        .network
        .iter()
        .filter_map(|t| {
            let (host, port) = t.rsplit_once(':')?;
            Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
        })
        .collect();
    policy.memory_bytes = Some(limits.memory);
    // RLIMIT_CPU stops one process at once; the cgroup's total (all its processes) is watched
    // by the sampler.
    policy.cpu_time = Some(Duration::from_millis(limits.cpu_ms));
    policy.cpu_quota = sandbox.cpu_quota;
    policy.pids_max = Some(limits.processes);
    if !p.filesystem {
        // No file may grow past 0 bytes: writes anywhere fail with EFBIG (Python ignores
        // SIGXFSZ), enforced by the kernel.
        policy.fsize_bytes = Some(0);
    }
    policy.home = sandbox.home.clone();
    policy.uid_table = sandbox.uid_table.clone();
    policy.record_dir = Some(records_dir(&config.state_dir));
    policy.parent_death_signal = Some(libc::SIGKILL);
    if sandbox.strict {
        policy.required = Layer::ALL.to_vec();
    }
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ROOT.get_or_init(|| plugd_sandbox::probe().root) {
        std::fs::create_dir_all(&job.ids_owner)
            .map_err(|e| format!("cannot create `{}`: {e}", job.ids_owner.display()))?;
        let owner = std::fs::canonicalize(&job.ids_owner)
            .map_err(|e| format!("cannot resolve `{}`: {e}", job.ids_owner.display()))?;
        let ids = script_ids(&policy.uid_table, &owner)?;
        for path in &p.read {
            reachable(path, ids, false)?;
        }
        for path in &p.write {
            reachable(path, ids, true)?;
        }
        policy.ids = Some(ids);
    } else {
        for path in p.read.iter().chain(&p.write) {
            std::fs::metadata(path).map_err(|e| {
                format!(
                    "`{}` cannot be reached: {e}; hint: create it, or remove it from `allowed_paths`",
                    path.display()
                )
            })?;
        }
    }
    Ok(policy)
}

/// The uid and gid of a script (one per script id), allocated once per host process: the
/// table's lock and read are spared on every later run.
fn script_ids(table: &Path, owner: &Path) -> Result<(u32, u32), String> {
    type Ids = std::collections::HashMap<(PathBuf, PathBuf), (u32, u32)>;
    static KNOWN: std::sync::OnceLock<Mutex<Ids>> = std::sync::OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    let key = (table.to_owned(), owner.to_owned());
    if let Some(ids) = known.lock().get(&key) {
        return Ok(*ids);
    }
    let ids = plugd_sandbox::allocate_ids(table, owner)
        .map_err(|e| format!("cannot allocate its uid: {e}"))?;
    known.lock().insert(key, ids);
    Ok(ids)
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A run made ready to start: its work dir made, its command built, its sandbox prepared (the
/// slow part, done on a blocking thread while the run is being recorded when a slot is free).
pub(crate) struct Ready {
    work: WorkDir,
    python: PathBuf,
    cmd: Command,
    status_read: OwnedFd,
    status_write: OwnedFd,
    prepared: Option<Prepared>,
    report: Option<EndReport>,
    pid_ns: bool,
    /// Where the next spare goes once this run has ended, while the manager lives.
    spares: std::sync::Weak<Mutex<Vec<Spare>>>,
}

/// A run's key with its work dir and cgroup made ahead: by the janitor after a run's end, for
/// the next run (`mkdir` of a work dir on the state dir's file system and of four cgroups on
/// v1: ~0.25 ms off that run's start).
pub(crate) struct Spare {
    key: String,
    work: WorkDir,
    cgroup: Option<plugd_sandbox::CgroupAhead>,
}

impl Spare {
    /// Whether its work dir is still the empty 0700 directory of the host's user that was made
    /// (not removed, replaced or filled meanwhile). One that is not is dropped (removed).
    fn intact(&self) -> bool {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let Ok(meta) = std::fs::symlink_metadata(&self.work.0) else {
            return false;
        };
        // SAFETY: a system call without arguments.
        let euid = unsafe { libc::geteuid() };
        meta.is_dir()
            && meta.uid() == euid
            && meta.permissions().mode() & 0o7777 == 0o700
            && std::fs::read_dir(&self.work.0).is_ok_and(|mut d| d.next().is_none())
    }
}

/// The spares of one `Scripts`, at most [`SPARES_KEPT`]; removed when the last run that may add
/// one has ended after it was dropped.
pub(crate) type Spares = Arc<Mutex<Vec<Spare>>>;

/// Spares kept: a run's end makes one when there are fewer.
const SPARES_KEPT: usize = 2;

/// Makes a spare for `spares` if it holds fewer than [`SPARES_KEPT`] (on the janitor). A
/// failure makes none: the run that would have taken it makes its own and reports the error.
fn refill(spares: &Spares, state_dir: &Path, sandboxed: bool) {
    if spares.lock().len() >= SPARES_KEPT {
        return;
    }
    let key = next_key();
    let Ok(work) = work_dir(state_dir, &key) else {
        return;
    };
    let cgroup = if sandboxed {
        let mut policy = SandboxPolicy::new(sandbox_name(&key), &work.0, &work.0);
        policy.record_dir = Some(records_dir(state_dir));
        Sandbox::cgroup_ahead(&policy).ok().flatten()
    } else {
        None
    };
    let spare = Spare { key, work, cgroup };
    let mut kept = spares.lock();
    if kept.len() < SPARES_KEPT {
        kept.push(spare);
    } else {
        // Another refill (on the blocking pool) made one meanwhile: removed, not kept.
        drop(kept);
        drop(spare);
    }
}

/// Makes the empty work dir of the run keyed `key` (mode 0700: no other run's uid may look
/// in), emptied first in case an earlier host process left one of the same name.
fn work_dir(state_dir: &Path, key: &str) -> Result<WorkDir, String> {
    use std::os::unix::fs::PermissionsExt;
    let work = state_dir.join("scripts").join("work").join(key);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)
        .and_then(|()| std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("cannot create its work dir `{}`: {e}", work.display()))?;
    Ok(WorkDir(work))
}

/// A run's working directory, removed with it.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A name for a run's work dir and cgroup before it has an id (the run is recorded while they
/// are made): unique in this process, and the dir is emptied first in case an earlier host
/// process left one of the same name.
pub(crate) fn next_key() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Runs `job` to its end; never fails: a run that cannot start is a failed outcome with the
/// reason.
pub(crate) async fn execute(
    config: &ScriptsConfig,
    spares: &Spares,
    job: Job,
    active: Arc<Active>,
) -> Outcome {
    match ready(config, &job, spares) {
        Ok(ready) => launch(config, &job, ready, &active).await,
        Err(reason) => Outcome::refused("failed", reason),
    }
}

/// Makes `job` ready to start (blocking: file system, cgroup, sandbox), or says why it cannot
/// start. Its work dir and cgroup are a spare's when `spares` has one, else made here, named by
/// a fresh key. `job.run_id` is not used (it may not be known yet).
pub(crate) fn ready(config: &ScriptsConfig, job: &Job, spares: &Spares) -> Result<Ready, String> {
    // A spare may have waited long: it is used only if it is still what was made.
    let spare = spares.lock().pop().filter(Spare::intact);
    let (key, work, ahead) = match spare {
        Some(spare) => (spare.key, spare.work, spare.cgroup),
        None => {
            let key = next_key();
            let work = work_dir(&config.state_dir, &key)?;
            (key, work, None)
        }
    };
    let key = key.as_str();
    let python = match &job.python_env {
        Some(env) => env.join("bin").join("python3"),
        None => match find_program(config, "python3") {
            Some(p) => p,
            None => {
                return Err(
                    "`python3` is not on the children's `PATH`; hint: install Python 3".into(),
                );
            }
        },
    };
    let (status_read, status_write) =
        pipe().map_err(|e| format!("cannot create its status pipe: {e}"))?;
    let mut cmd = Command::new(&python);
    cmd.arg("-u")
        .arg(job.code_dir.join("script.py"))
        .current_dir(&work.0)
        .env_clear()
        .envs(config.base_env.iter().map(|(k, v)| (k, v)))
        .env("PYTHONNOUSERSITE", "1")
        .env("PLUGD_SCRIPT_FD", STATUS_FD.to_string())
        .env("PLUGD_SCRIPT", &job.label)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(env) = &job.python_env {
        cmd.env("PATH", plugd_process::path_with_env(&config.base_env, env))
            .env("VIRTUAL_ENV", env);
    }
    let child_fd = status_write.as_raw_fd();
    let host_pid = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec only async-signal-safe calls on values prepared here.
    unsafe {
        cmd.pre_exec(move || {
            plugd_sandbox::die_with_parent(host_pid)?;
            plugd_sandbox::inherit_as(child_fd, STATUS_FD)
        });
    }
    let mut report = None;
    let prepared = match &config.sandbox {
        Some(_) => {
            let policy = policy(config, job, &work.0, key)
                .map_err(|e| format!("it cannot be confined: {e}"))?;
            let prepared = Sandbox::prepare_with(&policy, ahead)
                .map_err(|e| format!("its sandbox could not be prepared: {e}"))?;
            report = prepared
                .apply_reporting_end(cmd.as_std_mut())
                .map_err(|e| format!("cannot create its end-report pipe: {e}"))?;
            Some(prepared)
        }
        None => None,
    };
    let applied = |layer: Layer| {
        prepared.as_ref().is_some_and(|p| {
            p.layers()
                .iter()
                .any(|s| s.layer == layer && s.state == LayerState::Applied)
        })
    };
    let home = match (&config.sandbox, applied(Layer::MountNamespace)) {
        (Some(s), true) => s.home.clone(),
        _ => PathBuf::from("/nonexistent"),
    };
    cmd.env("HOME", home);
    let pid_ns = applied(Layer::PidNamespace);
    Ok(Ready {
        work,
        python,
        cmd,
        status_read,
        status_write,
        prepared,
        report,
        pid_ns,
        spares: Arc::downgrade(spares),
    })
}

/// Starts a ready run and supervises it to its end.
pub(crate) async fn launch(
    config: &ScriptsConfig,
    job: &Job,
    ready: Ready,
    active: &Arc<Active>,
) -> Outcome {
    let Ready {
        work,
        python,
        mut cmd,
        status_read,
        status_write,
        prepared,
        report,
        pid_ns,
        spares,
    } = ready;
    cmd.env("PLUGD_RUN_ID", job.run_id.to_string());
    let started = Instant::now();
    // Confined, the child and its supervisors start on this thread's CPU (`spawn_here`).
    let spawned = match &prepared {
        Some(prepared) => prepared.spawn_here(|| cmd.spawn()),
        None => cmd.spawn(),
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Outcome::refused("failed", format!("cannot run `{}`: {e}", python.display()));
        }
    };
    drop(status_write);
    let pid = child.id();
    active.send(RunEvent::Started {
        run: job.run_id,
        at_ms: crate::now_ms(),
    });

    // Arguments on stdin, then EOF (a script that never reads them is fine).
    if let Some(mut stdin) = child.stdin.take() {
        let args = job.args.to_string();
        tokio::spawn(async move {
            let _ = stdin.write_all(args.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
    }

    let stop = Arc::new(Stop::default());
    let limits = job.meta.limits;
    let prepared = Arc::new(prepared);
    let kill = {
        let prepared = prepared.clone();
        move || {
            if let Some(p) = prepared.as_ref() {
                p.kill_all();
            }
            if let Some(pid) = pid
                && let Ok(pgid) = libc::pid_t::try_from(pid)
                && pgid > 1
            {
                // SAFETY: the process group of the child we spawned.
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            }
        }
    };

    let excerpt = Arc::new(Mutex::new(Excerpt::default()));
    let mut readers = Vec::new();
    for (stream, name) in [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            "stdout",
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            "stderr",
        ),
    ] {
        let Some(mut stream) = stream else { continue };
        let (excerpt, active, stop, kill) =
            (excerpt.clone(), active.clone(), stop.clone(), kill.clone());
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let over = {
                    let mut e = excerpt.lock();
                    e.push(&buf[..n]);
                    e.total > limits.output
                };
                if over {
                    if stop.set(
                        "killed",
                        format!("output limit of {} exceeded", human_bytes(limits.output)),
                    ) {
                        kill();
                    }
                    break;
                }
                active.send(RunEvent::Output {
                    stream: name,
                    text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                });
            }
        }));
    }

    // Status lines on fd 3 (a pipe of our own, closed at exit).
    let result: Arc<Mutex<Option<Value>>> = Arc::new(Mutex::new(None));
    let status_reader = {
        let (active, result) = (active.clone(), result.clone());
        tokio::spawn(async move {
            let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(status_read) else {
                return;
            };
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = [0u8; 8192];
            let mut skipping = false;
            loop {
                let n = match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for &b in &buf[..n] {
                    if b == b'\n' {
                        if !skipping {
                            status_line(&pending, &active, &result);
                        }
                        pending.clear();
                        skipping = false;
                    } else if !skipping {
                        pending.push(b);
                        if pending.len() > MAX_STATUS_LINE {
                            pending.clear();
                            skipping = true;
                            active.send(RunEvent::Output {
                                stream: "stderr",
                                text: format!(
                                    "[plugd] a status line over {} was dropped\n",
                                    human_bytes(MAX_STATUS_LINE as u64)
                                ),
                            });
                        }
                    }
                }
            }
        })
    };

    // Samples every interval; the CPU and wall limits.
    let wall = Duration::from_millis(limits.wall_ms);
    let deadline = tokio::time::Instant::now() + wall;
    // The first sample after one interval, not at once: a short run's start is not slowed by
    // reading its cgroup, and its record has the final figures anyway.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + config.sample_interval,
        config.sample_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_cpu = Duration::ZERO;
    let mut last_at = Instant::now();
    let mut peak_seen: u64 = 0;
    let mut armed = true;
    let report =
        report.and_then(|r| tokio::net::unix::pipe::Receiver::from_owned_fd(r.into_fd()).ok());
    let (status, reported) = {
        let end = ended(&mut child, report);
        tokio::pin!(end);
        loop {
            tokio::select! {
                ended = &mut end => break ended,
                () = tokio::time::sleep_until(deadline), if armed => {
                    armed = false;
                    if stop.set("killed", format!("wall-clock limit of {} exceeded", human_ms(limits.wall_ms))) {
                        kill();
                    }
                }
                () = active.cancel.notified() => {
                    if stop.set("cancelled", "cancelled".into()) {
                        kill();
                    }
                }
                _ = tick.tick() => {
                    let (cpu, memory) = usage(prepared.as_ref().as_ref(), pid);
                    peak_seen = peak_seen.max(memory);
                    let now = Instant::now();
                    let dt = now.duration_since(last_at).as_secs_f64();
                    let cpu_percent = if dt > 0.0 {
                        (cpu.saturating_sub(last_cpu).as_secs_f64() / dt * 100.0 * 10.0).round() / 10.0
                    } else {
                        0.0
                    };
                    last_cpu = cpu;
                    last_at = now;
                    let peak = prepared.as_ref().as_ref().and_then(Prepared::memory_peak).unwrap_or(0).max(peak_seen);
                    active.send(RunEvent::Sample(Sample {
                        elapsed_ms: started.elapsed().as_millis() as u64,
                        cpu_percent,
                        cpu_ms: cpu.as_millis() as u64,
                        memory,
                        peak_memory: peak,
                    }));
                    if cpu.as_millis() as u64 > limits.cpu_ms
                        && stop.set("killed", format!("CPU time limit of {} exceeded", human_ms(limits.cpu_ms)))
                    {
                        kill();
                    }
                }
            }
        }
    };
    if reported {
        // Its supervisor ends right after the report: reaped off the run's path.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
    }
    // Whatever it left behind goes with it: with a PID namespace it is gone already (the
    // sandbox's X kills the namespace's init when the script ends and waits for it before it
    // ends itself; and X's process group holds X only), otherwise the cgroup's tasks and the
    // process group are killed here.
    if !pid_ns {
        kill();
    }
    let (cpu, memory) = usage(prepared.as_ref().as_ref(), pid);
    peak_seen = peak_seen.max(memory);
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), status_reader).await;
    let p = prepared.as_ref().as_ref();
    let peak_rss = p
        .and_then(Prepared::memory_peak)
        .unwrap_or(0)
        .max(peak_seen);
    let oom = p.is_some_and(Prepared::oom_killed);
    let (output, output_bytes) = {
        let e = excerpt.lock();
        (e.text(), e.total)
    };
    let result = result.lock().take();
    // Removing the cgroup waits for the kernel to let go of the dead tasks (a few ms on v1):
    // off the run's path, nothing recorded depends on it.
    drop(kill);
    let prepared = Arc::try_unwrap(prepared).ok();
    let (state_dir, sandboxed) = (config.state_dir.clone(), config.sandbox.is_some());
    janitor(move || {
        drop((prepared, work));
        if let Some(spares) = spares.upgrade() {
            refill(&spares, &state_dir, sandboxed);
        }
    });
    let mut exit_code = None;
    let mut signal = None;
    if let Ok(status) = &status {
        use std::os::unix::process::ExitStatusExt;
        exit_code = status.code().map(i64::from);
        signal = status.signal();
        // Under the sandbox's init a signal arrives as 128 + its number.
        if pid_ns
            && signal.is_none()
            && let Some(code) = status.code()
            && code > 128
        {
            signal = Some(code - 128);
        }
    }
    let (state, reason) = if let Some((reason, state)) = stop.reason.lock().take() {
        (state, Some(reason))
    } else if oom {
        (
            "killed",
            Some(format!(
                "memory limit of {} exceeded (killed by the kernel's OOM killer)",
                human_bytes(limits.memory)
            )),
        )
    } else if matches!(signal, Some(libc::SIGXCPU))
        || (matches!(signal, Some(libc::SIGKILL)) && cpu.as_millis() as u64 >= limits.cpu_ms)
    {
        (
            "killed",
            Some(format!(
                "CPU time limit of {} exceeded",
                human_ms(limits.cpu_ms)
            )),
        )
    } else if matches!(signal, Some(libc::SIGSYS)) {
        (
            "killed",
            Some("it made a system call the sandbox forbids (seccomp, SIGSYS)".into()),
        )
    } else if let Some(sig) = signal {
        ("failed", Some(format!("killed by signal {sig}")))
    } else {
        match (&status, exit_code) {
            (Ok(_), Some(0)) => ("succeeded", None),
            // Python turns a refused allocation (RLIMIT_DATA) into a `MemoryError` and exits 1.
            (Ok(_), Some(code)) if tail(&output, 4096).contains("MemoryError") => (
                "failed",
                Some(format!(
                    "memory limit of {} reached (MemoryError); exited with status {code}",
                    human_bytes(limits.memory)
                )),
            ),
            (Ok(_), Some(code)) => ("failed", Some(format!("exited with status {code}"))),
            (Ok(_), None) => ("failed", Some("ended without a status".into())),
            (Err(e), _) => ("failed", Some(format!("cannot wait for it: {e}"))),
        }
    };
    Outcome {
        end: RunEnd {
            state: state.to_owned(),
            exit_code: if signal.is_some() && pid_ns {
                None
            } else {
                exit_code
            },
            reason,
            peak_rss: (peak_rss > 0).then_some(peak_rss),
            cpu_ms: Some(cpu.as_millis() as u64),
            output,
            output_bytes,
            result,
        },
        duration_ms: Some(started.elapsed().as_millis() as u64),
    }
}

/// Runs `job` (removing a run's sandbox and work dir, a few hundred µs of system calls, more on
/// cgroup v1; making the next run's spare) on a janitor thread at the lowest nice value (19),
/// so that a thread with work to do woken on its CPU takes the CPU at once: the end of the run
/// it follows is being recorded and answered at that moment (done on a blocking-pool thread,
/// the removal delayed the answer by 0.3 ms when that thread shared the waiter's CPU). Nice 19,
/// not `SCHED_IDLE`: its jobs take the kernel's cgroup lock, which runs' starts need too, so it
/// must not starve on a busy host while holding it. Past [`JANITOR_BACKLOG`] waiting jobs, or
/// without the thread, the job runs on the blocking pool instead, so nothing piles up.
pub(crate) fn janitor(job: impl FnOnce() + Send + 'static) {
    use std::sync::OnceLock;
    use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
    type Job = Box<dyn FnOnce() + Send>;
    static JANITOR: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();
    let janitor = JANITOR.get_or_init(|| {
        let (tx, rx) = sync_channel::<Job>(JANITOR_BACKLOG);
        std::thread::Builder::new()
            .name("plugd-janitor".into())
            .spawn(move || {
                // SAFETY: a system call on integers, for this thread (a Linux thread's nice
                // value is its own).
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, JANITOR_NICE) };
                for job in rx {
                    job();
                }
            })
            .ok()
            .map(|_| tx)
    });
    let job: Job = Box::new(job);
    let job = match janitor {
        Some(tx) => match tx.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job,
        },
        None => job,
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(job)),
        Err(_) => job(),
    }
}

/// The janitor's nice value: the lowest.
const JANITOR_NICE: libc::c_int = 19;

/// Jobs the janitor may hold before [`janitor`] runs them on the blocking pool.
const JANITOR_BACKLOG: usize = 64;

/// How the child ended: from the sandbox's end report when there is one (`true`: the
/// supervisor's own exit comes a little later and the caller reaps it), else from waiting for
/// the child (a supervisor that was killed reports nothing).
async fn ended(
    child: &mut tokio::process::Child,
    report: Option<tokio::net::unix::pipe::Receiver>,
) -> (std::io::Result<std::process::ExitStatus>, bool) {
    if let Some(mut report) = report {
        let mut bytes = [0u8; 4];
        tokio::select! {
            biased;
            read = report.read_exact(&mut bytes) => {
                if read.is_ok() {
                    return (Ok(plugd_sandbox::EndReport::decode(bytes)), true);
                }
            }
            status = child.wait() => return (status, false),
        }
    }
    (child.wait().await, false)
}

/// The last `n` bytes of `text` or a little fewer (never inside a character).
fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// One status line from the script: `{"progress": f, "message": m}` or `{"result": v}`.
fn status_line(line: &[u8], active: &Active, result: &Mutex<Option<Value>>) {
    let Ok(value) = serde_json::from_slice::<Value>(line) else {
        return;
    };
    if let Some(f) = value.get("progress").and_then(Value::as_f64) {
        active.send(RunEvent::Progress {
            fraction: f.clamp(0.0, 1.0),
            message: value
                .get("message")
                .and_then(Value::as_str)
                .map(|m| m.chars().take(500).collect()),
        });
    } else if let Some(v) = value.get("result") {
        *result.lock() = Some(v.clone());
    }
}

/// CPU time and memory now: from the cgroup, or from `/proc` of the main process without one.
fn usage(prepared: Option<&Prepared>, pid: Option<u32>) -> (Duration, u64) {
    if let Some(p) = prepared
        && let (Some(cpu), Some(mem)) = (p.cpu_usage(), p.memory_current())
    {
        return (cpu, mem);
    }
    let Some(pid) = pid else {
        return (Duration::ZERO, 0);
    };
    let ticks = clock_ticks();
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let t = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(Duration::from_millis(t * 1000 / ticks))
        })
        .unwrap_or_default();
    let rss = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        // SAFETY: sysconf has no preconditions.
        .map(|pages| pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64)
        .unwrap_or(0);
    (cpu, rss)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports, when dropped, the thread it was dropped on and that thread's nice value.
    struct Witness(std::sync::mpsc::Sender<(Option<String>, i32)>);

    impl Drop for Witness {
        fn drop(&mut self) {
            let name = std::thread::current().name().map(str::to_owned);
            // SAFETY: a system call on integers.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            let _ = self.0.send((name, nice));
        }
    }

    #[test]
    fn janitor_jobs_run_on_the_janitor_thread_at_the_lowest_nice_value() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (a, b) = (Witness(tx.clone()), Witness(tx));
        janitor(move || drop(a));
        janitor(move || drop(b));
        for _ in 0..2 {
            let (name, nice) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(name.as_deref(), Some("plugd-janitor"));
            assert_eq!(nice, JANITOR_NICE);
        }
    }

    #[test]
    fn the_excerpt_keeps_head_and_tail() {
        let mut e = Excerpt::default();
        e.push(&vec![b'a'; HEAD]);
        e.push(&vec![b'b'; 100_000]);
        e.push(b"END");
        let text = e.text();
        assert!(text.starts_with("aaa"));
        assert!(text.ends_with("bbbEND"));
        assert!(text.contains(&format!(
            "[... {} bytes of output not kept ...]",
            100_003 - TAIL
        )));
        assert_eq!(e.total, (HEAD + 100_003) as u64);
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aé", 2), "é");
        let mut small = Excerpt::default();
        small.push(b"hi\n");
        assert_eq!(small.text(), "hi\n");
    }
}
