//! Per-child cgroups under the host's own cgroup: v1 (one directory per controller) or v2.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::probe::CgroupProbe;
use crate::{SandboxError, SandboxPolicy};

/// Which cgroup hierarchy the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy hierarchies, one per controller (or per group of co-mounted controllers).
    V1,
    /// The unified hierarchy.
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        })
    }
}

const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
const CPU_PERIOD_US: u64 = 100_000;

struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    options: Vec<String>,
}

fn mounts() -> Vec<Mount> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?.to_owned();
            let _source = right.next()?;
            let options = right.next()?.split(',').map(str::to_owned).collect();
            Some(Mount {
                root: unescape(left.get(3)?),
                point: PathBuf::from(unescape(left.get(4)?)),
                fstype,
                options,
            })
        })
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .collect()
}

/// Mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `(controllers, path)` for each line of `/proc/self/cgroup`.
fn memberships() -> Vec<(Vec<String>, String)> {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            Some((controllers, parts.next()?.to_owned()))
        })
        .collect()
}

fn own_dir(mount: &Mount, path: &str) -> PathBuf {
    let relative = if mount.root == "/" {
        path
    } else {
        path.strip_prefix(mount.root.as_str()).unwrap_or(path)
    };
    mount.point.join(relative.trim_start_matches('/'))
}

fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

pub(crate) fn probe() -> CgroupProbe {
    let mounts = mounts();
    let members = memberships();
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let mount = mounts.iter().find(|m| m.fstype == "cgroup2");
        let path = members
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p.as_str());
        let (Some(mount), Some(path)) = (mount, path) else {
            return CgroupProbe {
                version: Some(CgroupVersion::V2),
                controllers: Vec::new(),
                problem: Some("Cannot find this process's cgroup v2 directory".into()),
            };
        };
        let dir = own_dir(mount, path);
        let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let controllers: Vec<(String, PathBuf)> = V2_CONTROLLERS
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| ((*c).to_owned(), dir.clone()))
            .collect();
        let problem = if !writable(&dir) {
            Some(format!(
                "Cgroup `{}` is not writable; hint: run plugd in a delegated cgroup (systemd `Delegate=yes`)",
                dir.display()
            ))
        } else if controllers.len() < V2_CONTROLLERS.len() {
            Some(format!(
                "Cgroup `{}` lacks some of the `memory`, `cpu`, `pids` controllers; hint: enable them in the parent's `cgroup.subtree_control`",
                dir.display()
            ))
        } else {
            None
        };
        let controllers = if writable(&dir) {
            controllers
        } else {
            Vec::new()
        };
        return CgroupProbe {
            version: Some(CgroupVersion::V2),
            controllers,
            problem,
        };
    }

    let mut controllers = Vec::new();
    let mut missing = Vec::new();
    for controller in V1_CONTROLLERS {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == controller));
        let path = members
            .iter()
            .find(|(c, _)| c.iter().any(|c| c == controller))
            .map(|(_, p)| p.as_str());
        match (mount, path) {
            (Some(mount), Some(path)) => {
                let dir = own_dir(mount, path);
                if writable(&dir) {
                    controllers.push((controller.to_owned(), dir));
                } else {
                    missing.push(format!("`{controller}` (`{}` not writable)", dir.display()));
                }
            }
            _ => missing.push(format!("`{controller}` (not mounted)")),
        }
    }
    if controllers.is_empty()
        && missing.len() == V1_CONTROLLERS.len()
        && !mounts.iter().any(|m| m.fstype == "cgroup")
    {
        return CgroupProbe {
            version: None,
            controllers,
            problem: Some("No cgroup file system is mounted".into()),
        };
    }
    let problem =
        (!missing.is_empty()).then(|| format!("Unusable controllers: {}", missing.join(", ")));
    CgroupProbe {
        version: Some(CgroupVersion::V1),
        controllers,
        problem,
    }
}

/// One directory of the child's cgroup and the controllers it serves.
#[derive(Debug)]
struct Dir {
    path: PathBuf,
    controllers: Vec<String>,
}

/// The child's cgroup: one directory on v2, one per hierarchy on v1. Removed on drop.
#[derive(Debug)]
pub(crate) struct Cgroup {
    version: CgroupVersion,
    dirs: Vec<Dir>,
    /// The record of this cgroup for [`crate::reap_leftovers`], removed after the cgroup.
    record: Option<PathBuf>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn cg_err(path: &Path) -> impl FnOnce(io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Cgroup {
        path: path.to_owned(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    fs::write(path, value).map_err(cg_err(path))
}

impl Cgroup {
    /// Creates `plugd/<name>-<pid>-<n>` under the host's cgroup and writes the limits.
    ///
    /// The inner `Err` says why the layer is unavailable; the outer one is a failure of an
    /// available layer.
    pub(crate) fn create(
        probe: &CgroupProbe,
        policy: &SandboxPolicy,
    ) -> Result<Result<Cgroup, String>, SandboxError> {
        match Cgroup::make(probe, policy)? {
            Ok(cgroup) => {
                cgroup.write_limits(policy)?;
                Ok(Ok(cgroup))
            }
            Err(reason) => Ok(Err(reason)),
        }
    }

    /// A cgroup made ahead (by [`Cgroup::make`]) taken for `policy`: its limits written.
    pub(crate) fn configure(self, policy: &SandboxPolicy) -> Result<Cgroup, SandboxError> {
        self.write_limits(policy)?;
        Ok(self)
    }

    /// Creates the directories of `plugd/<name>-<pid>-<n>` and the record, without limits.
    pub(crate) fn make(
        probe: &CgroupProbe,
        policy: &SandboxPolicy,
    ) -> Result<Result<Cgroup, String>, SandboxError> {
        let Some(version) = probe.version else {
            return Ok(Err(probe
                .problem
                .clone()
                .unwrap_or_else(|| "No cgroup file system".into())));
        };
        if probe.controllers.is_empty() {
            return Ok(Err(probe
                .problem
                .clone()
                .unwrap_or_else(|| "No usable cgroup controller".into())));
        }
        let leaf = format!(
            "{}-{}-{}",
            sanitize(&policy.name),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut dirs: Vec<Dir> = Vec::new();
        for (controller, own) in &probe.controllers {
            match dirs
                .iter_mut()
                .find(|d| d.path.parent().and_then(Path::parent) == Some(own.as_path()))
            {
                Some(dir) => dir.controllers.push(controller.clone()),
                None => dirs.push(Dir {
                    path: own.join("plugd").join(&leaf),
                    controllers: vec![controller.clone()],
                }),
            }
        }
        let mut cgroup = Cgroup {
            version,
            dirs: Vec::new(),
            record: None,
        };
        for dir in dirs {
            let base = dir.path.parent().expect("leaf has a parent");
            if version == CgroupVersion::V2
                && let Err(reason) = enable_v2_controllers(base, &dir.controllers)
            {
                return Ok(Err(reason));
            }
            if let Err(e) = fs::create_dir_all(&dir.path) {
                return Ok(Err(format!(
                    "Cannot create cgroup `{}`: {e}",
                    dir.path.display()
                )));
            }
            // Pushed at once so that a failure below removes it.
            cgroup.dirs.push(dir);
        }
        if let Some(dir) = &policy.record_dir {
            let record = crate::reap::record(dir, &leaf, &cgroup.paths()).map_err(|source| {
                SandboxError::Path {
                    path: dir.clone(),
                    source,
                }
            })?;
            cgroup.record = Some(record);
        }
        Ok(Ok(cgroup))
    }

    /// Whether the cgroup has `controller` (`memory`, `cpu`, `cpuacct`, `pids`).
    pub(crate) fn has(&self, controller: &str) -> bool {
        self.dir(controller).is_some()
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| d.controllers.iter().any(|c| c == controller))
            .map(|d| d.path.as_path())
    }

    fn write_limits(&self, policy: &SandboxPolicy) -> Result<(), SandboxError> {
        let v2 = self.version == CgroupVersion::V2;
        if let (Some(bytes), Some(dir)) = (policy.memory_bytes, self.dir("memory")) {
            if v2 {
                write(&dir.join("memory.max"), &bytes.to_string())?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
            } else {
                write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                // memsw (memory + swap) must be ≥ the memory limit; it exists only with swap
                // accounting, so its absence is not an error.
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &bytes.to_string())?;
                }
            }
        }
        if let (Some(max), Some(dir)) = (policy.pids_max, self.dir("pids")) {
            write(&dir.join("pids.max"), &max.to_string())?;
        }
        if let (Some(quota), Some(dir)) = (policy.cpu_quota, self.dir("cpu")) {
            let quota_us = ((quota * CPU_PERIOD_US as f64) as u64).max(1000);
            if v2 {
                write(&dir.join("cpu.max"), &format!("{quota_us} {CPU_PERIOD_US}"))?;
            } else {
                write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
            }
        }
        Ok(())
    }

    /// What the layer enforces, for [`crate::LayerStatus::detail`].
    pub(crate) fn describe(&self, policy: &SandboxPolicy) -> String {
        let mut parts = vec![self.version.to_string()];
        if let (Some(b), Some(_)) = (policy.memory_bytes, self.dir("memory")) {
            parts.push(format!("memory {b} bytes"));
        }
        if let (Some(p), Some(_)) = (policy.pids_max, self.dir("pids")) {
            parts.push(format!("pids {p}"));
        }
        if let (Some(q), Some(_)) = (policy.cpu_quota, self.dir("cpu")) {
            parts.push(format!("cpu quota {q} cores"));
        }
        let missing: Vec<&str> = ["memory", "cpu", "pids"]
            .into_iter()
            .filter(|c| self.dir(c).is_none())
            .collect();
        if !missing.is_empty() {
            parts.push(format!("without {}", missing.join(", ")));
        }
        parts.join(", ")
    }

    /// The file of every directory the child writes `0` to, to move itself in, opened for
    /// writing in the parent: `cgroup.procs` on v2; on v1 `tasks`.
    ///
    /// On v1, moving a whole thread group (`cgroup.procs`) write-locks the kernel's
    /// `cgroup_threadgroup_rwsem`, which waits for an RCU grace period unless another migration
    /// happened moments before: 8–15 ms per hierarchy on an idle host (measured; the largest
    /// part of a sandboxed start). Moving the writing thread itself (`0` to `tasks`) skips that
    /// lock (`cgroup_procs_write_start`: "if we migrate a single thread, we don't care about
    /// threadgroup stability"), ~25 µs. The child writes it between fork and exec, while it is
    /// single-threaded, so its one thread is the whole process, and everything it starts later
    /// is born in the cgroup.
    pub(crate) fn procs_fds(&self) -> Result<Vec<OwnedFd>, SandboxError> {
        let file = match self.version {
            CgroupVersion::V1 => "tasks",
            CgroupVersion::V2 => "cgroup.procs",
        };
        self.dirs
            .iter()
            .map(|d| {
                let path = d.path.join(file);
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .and_then(crate::fds::lift)
                    .map_err(cg_err(&path))
            })
            .collect()
    }

    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }

    fn read(&self, controller: &str, file: &str) -> Option<String> {
        fs::read_to_string(self.dir(controller)?.join(file)).ok()
    }

    pub(crate) fn oom_killed(&self) -> bool {
        let file = if self.version == CgroupVersion::V2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        self.read("memory", file)
            .and_then(|text| keyed(&text, "oom_kill"))
            .is_some_and(|n| n > 0)
    }

    pub(crate) fn memory_peak(&self) -> Option<u64> {
        let file = if self.version == CgroupVersion::V2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        self.read("memory", file)?.trim().parse().ok()
    }

    pub(crate) fn memory_current(&self) -> Option<u64> {
        let file = if self.version == CgroupVersion::V2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        self.read("memory", file)?.trim().parse().ok()
    }

    pub(crate) fn cpu_usage(&self) -> Option<Duration> {
        if self.version == CgroupVersion::V2 {
            keyed(&self.read("cpu", "cpu.stat")?, "usage_usec").map(Duration::from_micros)
        } else {
            self.read("cpuacct", "cpuacct.usage")?
                .trim()
                .parse()
                .ok()
                .map(Duration::from_nanos)
        }
    }

    pub(crate) fn kill_all(&self) {
        kill_all(&self.paths());
    }
}

/// The tasks of the cgroup directories `dirs`, deduplicated.
pub(crate) fn pids(dirs: &[PathBuf]) -> Vec<libc::pid_t> {
    let mut pids: Vec<libc::pid_t> = dirs
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Sends SIGKILL to every task in `dirs` (`cgroup.kill` on v2) and returns how many were sent.
pub(crate) fn kill_all(dirs: &[PathBuf]) -> usize {
    let v2 = dirs.iter().all(|d| d.join("cgroup.kill").exists());
    if v2
        && dirs
            .iter()
            .all(|d| fs::write(d.join("cgroup.kill"), "1").is_ok())
    {
        return 0;
    }
    let mut sent = 0;
    // A task may fork while we read the list; the pids limit bounds how often that helps it.
    for _ in 0..50 {
        let pids = pids(dirs);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill has no memory preconditions. The pid was in our cgroup a moment
            // ago; reuse of a pid within that window is the accepted race of `kill`.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    sent
}

/// Removes the (killed) cgroup directories; killed tasks leave asynchronously, so retry a while.
pub(crate) fn remove_dirs(dirs: &[PathBuf]) -> usize {
    let mut removed = 0;
    for dir in dirs {
        for _ in 0..100 {
            match fs::remove_dir(dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(()) => {
                    removed += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    removed
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let paths = self.paths();
        kill_all(&paths);
        remove_dirs(&paths);
        if let Some(record) = &self.record {
            let _ = fs::remove_file(record);
        }
    }
}

fn enable_v2_controllers(base: &Path, controllers: &[String]) -> Result<(), String> {
    let own = base.parent().expect("plugd dir has a parent");
    for dir in [own, base] {
        if let Err(e) = fs::create_dir_all(dir) {
            return Err(format!("Cannot create cgroup `{}`: {e}", dir.display()));
        }
        let control = dir.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&control).unwrap_or_default();
        for c in controllers {
            if enabled.split_whitespace().any(|e| e == c) {
                continue;
            }
            if let Err(e) = fs::write(&control, format!("+{c}")) {
                return Err(format!(
                    "Cannot enable `{c}` in `{}`: {e}; hint: run plugd in its own delegated cgroup with no other processes (systemd `Delegate=yes`)",
                    control.display()
                ));
            }
        }
    }
    Ok(())
}

/// `key N` lines, as in `memory.events`, `memory.oom_control` and `cpu.stat`.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "child".into() } else { s }
}
