//! What runs in the child between `fork` and `exec`: system calls on prepared values only.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::SandboxPolicy;

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;

/// Everything the child needs, built in the parent. Applying it allocates nothing and takes
/// no lock, so it is safe in a `pre_exec` hook of a multi-threaded parent.
#[derive(Default)]
pub(crate) struct ChildPlan {
    /// `cgroup.procs` of each cgroup directory, opened for writing.
    pub(crate) cgroup_procs: Vec<OwnedFd>,
    /// The shared empty network namespace (owned by a process-wide static).
    pub(crate) netns: Option<RawFd>,
    /// `(resource, limit)` pairs for `setrlimit`.
    pub(crate) rlimits: Vec<(i32, libc::rlimit)>,
    /// The dedicated `(uid, gid)`.
    pub(crate) ids: Option<(u32, u32)>,
    /// `PR_SET_PDEATHSIG`, set after the uid change (which clears it).
    pub(crate) parent_death_signal: Option<i32>,
    /// The host's pid, to notice a parent that died before the signal was armed.
    pub(crate) parent_pid: libc::pid_t,
    /// The Landlock ruleset.
    pub(crate) landlock: Option<OwnedFd>,
    /// Seccomp programs, installed in order.
    pub(crate) seccomp: Vec<Vec<libc::sock_filter>>,
}

impl fmt::Debug for ChildPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildPlan")
            .field("cgroup_procs", &self.cgroup_procs)
            .field("netns", &self.netns)
            .field(
                "rlimits",
                &self
                    .rlimits
                    .iter()
                    .map(|(r, l)| (r, l.rlim_cur, l.rlim_max))
                    .collect::<Vec<_>>(),
            )
            .field("ids", &self.ids)
            .field("parent_death_signal", &self.parent_death_signal)
            .field("landlock", &self.landlock)
            .field(
                "seccomp_programs",
                &self.seccomp.iter().map(Vec::len).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn check(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl ChildPlan {
    /// Runs in the child. Only async-signal-safe system calls; `io::Error::last_os_error`
    /// does not allocate. The order matters: cgroup and namespace need root, the uid change
    /// drops it, Landlock needs `no_new_privs`, and seccomp comes last so that it does not
    /// have to allow the calls before it.
    pub(crate) fn apply(&self) -> io::Result<()> {
        // SAFETY (for every block below): plain system calls on integers and on memory owned
        // by `self`, which outlives the calls.
        unsafe {
            for fd in &self.cgroup_procs {
                // "0" means the writing process.
                check(libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) as libc::c_long)?;
            }
            if let Some(fd) = self.netns {
                check(libc::setns(fd, libc::CLONE_NEWNET).into())?;
            }
            for (resource, limit) in &self.rlimits {
                check(libc::setrlimit(*resource as _, limit).into())?;
            }
            if let Some((uid, gid)) = self.ids {
                check(libc::setgroups(0, std::ptr::null()).into())?;
                check(libc::setresgid(gid, gid, gid).into())?;
                check(libc::setresuid(uid, uid, uid).into())?;
            }
            if let Some(signal) = self.parent_death_signal {
                check(
                    libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0).into(),
                )?;
                if libc::getppid() != self.parent_pid {
                    // The host died before the signal was armed: do not run orphaned.
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0).into())?;
            if let Some(fd) = &self.landlock {
                check(libc::syscall(
                    libc::SYS_landlock_restrict_self,
                    fd.as_raw_fd(),
                    0 as libc::c_uint,
                ))?;
            }
            for program in &self.seccomp {
                let prog = libc::sock_fprog {
                    len: program.len() as libc::c_ushort,
                    filter: program.as_ptr().cast_mut(),
                };
                check(libc::syscall(
                    libc::SYS_seccomp,
                    SECCOMP_SET_MODE_FILTER,
                    0 as libc::c_uint,
                    &prog,
                ))?;
            }
        }
        Ok(())
    }
}

/// The rlimits for `policy` and a description. `RLIMIT_NPROC` counts every process of the
/// real uid on the machine, so it is only set when the child gets a uid of its own.
pub(crate) fn rlimits(
    policy: &SandboxPolicy,
    dedicated_uid: bool,
) -> (Vec<(i32, libc::rlimit)>, String) {
    let mut limits: Vec<(i32, u64, u64, String)> = Vec::new();
    if let Some(bytes) = policy.memory_bytes {
        limits.push((
            libc::RLIMIT_DATA as i32,
            bytes,
            bytes,
            format!("data {bytes}"),
        ));
    }
    if let Some(cpu) = policy.cpu_time {
        let soft = cpu.as_secs() + u64::from(cpu.subsec_nanos() > 0);
        let soft = soft.max(1);
        limits.push((
            libc::RLIMIT_CPU as i32,
            soft,
            soft + 1,
            format!("cpu {soft}s (SIGXCPU, SIGKILL at {}s)", soft + 1),
        ));
    }
    if let Some(n) = policy.nofile {
        limits.push((libc::RLIMIT_NOFILE as i32, n, n, format!("nofile {n}")));
    }
    if let (Some(n), true) = (policy.pids_max, dedicated_uid) {
        limits.push((libc::RLIMIT_NPROC as i32, n, n, format!("nproc {n}")));
    }
    limits.push((libc::RLIMIT_CORE as i32, 0, 0, "core 0".into()));
    if let Some(bytes) = policy.fsize_bytes {
        limits.push((
            libc::RLIMIT_FSIZE as i32,
            bytes,
            bytes,
            format!("fsize {bytes}"),
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let detail = limits
        .iter()
        .map(|l| l.3.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let limits = limits
        .into_iter()
        .map(|(resource, soft, hard, _)| {
            let (mut soft, mut hard) = (soft as libc::rlim_t, hard as libc::rlim_t);
            if !root {
                // Without CAP_SYS_RESOURCE a hard limit can only be lowered.
                let mut current = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: libc::RLIM_INFINITY,
                };
                // SAFETY: `current` is a valid out-pointer.
                unsafe { libc::getrlimit(resource as _, &mut current) };
                hard = hard.min(current.rlim_max);
                soft = soft.min(hard);
            }
            (
                resource,
                libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                },
            )
        })
        .collect();
    (limits, detail)
}
