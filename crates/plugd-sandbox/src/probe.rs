//! What this kernel and this host process can provide, for `plugd doctor` and for `prepare`.

use std::fmt;
use std::path::PathBuf;

use crate::cgroup::{self, CgroupVersion};

/// The layers this kernel and this host process provide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Cgroup hierarchy and usable controllers.
    pub cgroup: CgroupProbe,
    /// Whether network namespaces can be created (needs root for the shared one).
    pub network_namespace: bool,
    /// Whether unprivileged user namespaces are enabled.
    pub user_namespace: bool,
    /// Whether each child can get its own IPC namespace (needs root).
    pub ipc_namespace: bool,
    /// Whether each child can get its own PID namespace under the plugd init (needs root).
    pub pid_namespace: bool,
    /// Whether each child can get its own mount namespace and minimal root (needs root).
    pub mount_namespace: bool,
    /// Resource limits are always available.
    pub rlimits: bool,
    /// Whether the host is root, so it can switch children to a dedicated uid.
    pub root: bool,
    /// The Landlock ABI version, 0 when Landlock is missing. File system rules from 1, TCP
    /// bind/connect rules from 4, signal and abstract-socket scoping from 6.
    pub landlock_abi: i32,
    /// Whether seccomp filters are supported.
    pub seccomp: bool,
}

/// The cgroup part of a [`Probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupProbe {
    /// v1, v2, or `None` when no cgroup file system is mounted.
    pub version: Option<CgroupVersion>,
    /// This process's own cgroup directory for each usable controller (`memory`, `cpu`,
    /// `cpuacct`, `pids`); on v2 all are the same directory.
    pub controllers: Vec<(String, PathBuf)>,
    /// Why the cgroup layer is (partly) unusable, when it is.
    pub problem: Option<String>,
}

impl CgroupProbe {
    /// Whether `controller` can be used for children.
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|(c, _)| c == controller)
    }
}

impl Probe {
    /// Whether Landlock can restrict TCP ports (ABI ≥ 4).
    pub fn landlock_net(&self) -> bool {
        self.landlock_abi >= 4
    }

    /// Whether Landlock can scope signals and abstract Unix sockets (ABI ≥ 6).
    pub fn landlock_scope(&self) -> bool {
        self.landlock_abi >= 6
    }
}

/// How long [`recent`] reuses a probe. What it reads (the kernel's features, this process's
/// cgroups and their permissions) changes rarely, if ever, while the host runs.
const REUSE_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// [`probe`], reused for a few seconds: every `Sandbox::prepare` needs it, and probing reads
/// `/proc/self/mountinfo` and a dozen more files (a tenth of a millisecond per spawn).
pub(crate) fn recent() -> Probe {
    static LAST: std::sync::Mutex<Option<(std::time::Instant, Probe)>> =
        std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, probe)) = last.as_ref()
        && at.elapsed() < REUSE_FOR
    {
        return probe.clone();
    }
    let fresh = probe();
    *last = Some((std::time::Instant::now(), fresh.clone()));
    fresh
}

/// Probes the running kernel; cheap (a few small `/proc` and `/sys` reads), no side effects.
pub fn probe() -> Probe {
    // SAFETY: getuid cannot fail and has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let user_namespace = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .is_ok_and(|s| s.trim().parse::<u64>().is_ok_and(|n| n > 0))
        && std::fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone")
            .map_or(true, |s| s.trim() != "0");
    Probe {
        cgroup: cgroup::probe(),
        network_namespace: root && std::path::Path::new("/proc/self/ns/net").exists(),
        user_namespace,
        ipc_namespace: root && std::path::Path::new("/proc/self/ns/ipc").exists(),
        pid_namespace: root && std::path::Path::new("/proc/self/ns/pid").exists(),
        mount_namespace: root && std::path::Path::new("/proc/self/ns/mnt").exists(),
        rlimits: true,
        root,
        landlock_abi: landlock_abi(),
        seccomp: seccomp_supported(),
    }
}

fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute, zero size and the VERSION flag the call only returns the
    // ABI version (or an error) and touches no memory.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    abi.max(0) as i32
}

fn seccomp_supported() -> bool {
    // SAFETY: PR_GET_SECCOMP only reads the calling thread's seccomp mode.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cgroup.version {
            Some(v) => {
                let names: Vec<&str> = self
                    .cgroup
                    .controllers
                    .iter()
                    .map(|(c, _)| c.as_str())
                    .collect();
                let names = if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                };
                writeln!(f, "cgroup:            {v}, usable controllers: {names}")?;
            }
            None => writeln!(f, "cgroup:            not mounted")?,
        }
        if let Some(problem) = &self.cgroup.problem {
            writeln!(f, "                   {problem}")?;
        }
        writeln!(f, "network namespace: {}", yes(self.network_namespace))?;
        writeln!(f, "user namespace:    {}", yes(self.user_namespace))?;
        writeln!(f, "ipc namespace:     {}", yes(self.ipc_namespace))?;
        writeln!(
            f,
            "pid namespace:     {}",
            if self.pid_namespace {
                "yes (the plugin runs as pid 2 under a plugd init)"
            } else {
                "no"
            }
        )?;
        writeln!(
            f,
            "mount namespace:   {}",
            if self.mount_namespace {
                "yes (minimal root: read-only system, package and SDK; data dir nosuid,nodev,noexec; private /tmp and HOME)"
            } else {
                "no"
            }
        )?;
        writeln!(f, "rlimits:           {}", yes(self.rlimits))?;
        writeln!(
            f,
            "dedicated uid:     {}",
            if self.root {
                "yes (host is root; allocated machine-wide in `/var/lib/plugd/uids`)"
            } else {
                "no (host is not root)"
            }
        )?;
        if self.landlock_abi == 0 {
            writeln!(f, "landlock:          no")?;
        } else {
            writeln!(
                f,
                "landlock:          ABI {} (fs: yes, tcp ports: {}, signal/socket scope: {})",
                self.landlock_abi,
                yes(self.landlock_net()),
                yes(self.landlock_scope())
            )?;
        }
        write!(f, "seccomp:           {}", yes(self.seccomp))
    }
}
