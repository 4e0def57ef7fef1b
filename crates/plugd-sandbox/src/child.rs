//! What runs in the child between `fork` and `exec`: system calls on prepared values only.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::SandboxPolicy;
use crate::mounts::MountPlan;

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;

/// Everything the child needs, built in the parent. Applying it allocates nothing and takes
/// no lock, so it is safe in a `pre_exec` hook of a multi-threaded parent.
#[derive(Default)]
pub(crate) struct ChildPlan {
    /// `cgroup.procs` (v2) or `tasks` (v1) of each cgroup directory, opened for writing (see
    /// `Cgroup::procs_fds`).
    pub(crate) cgroup_procs: Vec<OwnedFd>,
    /// The shared empty network namespace (owned by a process-wide static).
    pub(crate) netns: Option<RawFd>,
    /// `CLONE_NEWIPC`, `CLONE_NEWNS`, `CLONE_NEWPID`: namespaces unshared in the direct child.
    pub(crate) unshare: libc::c_int,
    /// The minimal root, when the child gets a mount namespace.
    pub(crate) mounts: Option<MountPlan>,
    /// `(resource, limit)` pairs for `setrlimit`.
    pub(crate) rlimits: Vec<(i32, libc::rlimit)>,
    /// The dedicated `(uid, gid)`.
    pub(crate) ids: Option<(u32, u32)>,
    /// `PR_SET_PDEATHSIG`: set in the direct child with a PID namespace, else after the uid
    /// change (which clears it).
    pub(crate) parent_death_signal: Option<i32>,
    /// The host's pid, to notice a parent that died before the signal was armed.
    pub(crate) parent_pid: libc::pid_t,
    /// The Landlock ruleset.
    pub(crate) landlock: Option<OwnedFd>,
    /// Landlock rights for the child's own tmpfs mounts, added in the child (the parent cannot
    /// open them).
    pub(crate) landlock_writable: u64,
    /// Seccomp programs, installed in order.
    pub(crate) seccomp: Vec<Vec<libc::sock_filter>>,
    /// The CPUs the host's threads may run on, read when the plan was made. The child starts
    /// pinned to its parent thread's CPU (see `Prepared::spawn_here`); X, Y and the plugin take
    /// this mask back before they wait or exec.
    pub(crate) affinity: Option<libc::cpu_set_t>,
    /// The thread that forks the child, pinned for it (see `Prepared::spawn_here`), or 0. The
    /// child gives it `affinity` back first thing: that thread waits for the plugin's `exec`
    /// and is woken by it, and pinned it would be woken on the plugin's CPU and take it from
    /// the plugin for its own work after the spawn, with the other CPU idle.
    pub(crate) spawner: std::sync::atomic::AtomicI32,
}

impl fmt::Debug for ChildPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildPlan")
            .field("cgroup_procs", &self.cgroup_procs)
            .field("netns", &self.netns)
            .field("unshare", &self.unshare)
            .field("mounts", &self.mounts)
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
            .field(
                "affinity",
                // SAFETY: counting the bits of an initialised set.
                &self.affinity.map(|set| unsafe { libc::CPU_COUNT(&set) }),
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

/// `struct landlock_path_beneath_attr` (packed in the kernel's header).
#[repr(C, packed)]
struct PathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

/// Signals the inits pass on to the plugin.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

impl ChildPlan {
    fn pid_namespace(&self) -> bool {
        self.unshare & libc::CLONE_NEWPID != 0
    }

    /// Runs in the child. Only async-signal-safe system calls; `io::Error::last_os_error`
    /// does not allocate. The order matters: cgroup and namespaces need root, the uid change
    /// drops it, Landlock needs `no_new_privs`, and seccomp comes last so that it does not
    /// have to allow the calls before it.
    ///
    /// With a PID namespace this returns only in the plugin's process: the direct child (X)
    /// and the namespace's init (Y) stay in [`supervise`] and [`init`] until the plugin exits.
    /// `report` is the write end of an end-report pipe (see `Prepared::apply_reporting_end`),
    /// which X keeps and the plugin does not.
    pub(crate) fn apply(&self, report: Option<libc::c_int>) -> io::Result<()> {
        // SAFETY (for every block below): plain system calls on integers and on memory owned
        // by `self`, which outlives the calls.
        unsafe {
            // Only a child started pinned (`spawn_here`) puts masks back: any other keeps the
            // mask it was given.
            let spawner = self.spawner.load(std::sync::atomic::Ordering::Relaxed);
            let affinity = self.affinity.filter(|_| spawner > 0);
            if spawner > 0 {
                crate::cpus::unpin(spawner, affinity.as_ref());
            }
            if self.pid_namespace()
                && let Some(signal) = self.parent_death_signal
            {
                // X keeps the host's credentials, so its parent-death signal stays armed.
                check(
                    libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0).into(),
                )?;
                if libc::getppid() != self.parent_pid {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            for fd in &self.cgroup_procs {
                // "0" means the writing process (v2) or thread (v1: this single-threaded child).
                check(libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) as libc::c_long)?;
            }
            if let Some(fd) = self.netns {
                check(libc::setns(fd, libc::CLONE_NEWNET).into())?;
            }
            if self.unshare != 0 {
                check(libc::unshare(self.unshare).into())?;
            }
            if self.pid_namespace() {
                fork_init(report.unwrap_or(-1), affinity)?;
            }
            if let Some(mounts) = &self.mounts {
                mounts.run()?;
            }
            for (resource, limit) in &self.rlimits {
                check(libc::setrlimit(*resource as _, limit).into())?;
            }
            if let Some((uid, gid)) = self.ids {
                check(libc::setgroups(0, std::ptr::null()).into())?;
                check(libc::setresgid(gid, gid, gid).into())?;
                check(libc::setresuid(uid, uid, uid).into())?;
            }
            if !self.pid_namespace()
                && let Some(signal) = self.parent_death_signal
            {
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
                if let Some(mounts) = &self.mounts
                    && self.landlock_writable != 0
                {
                    for path in &mounts.writable {
                        let dir = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                        if dir < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        let rule = PathBeneath {
                            allowed_access: self.landlock_writable,
                            parent_fd: dir,
                        };
                        let ret = libc::syscall(
                            libc::SYS_landlock_add_rule,
                            fd.as_raw_fd(),
                            LANDLOCK_RULE_PATH_BENEATH,
                            &rule as *const PathBeneath,
                            0 as libc::c_uint,
                        );
                        libc::close(dir);
                        check(ret)?;
                    }
                }
                check(libc::syscall(
                    libc::SYS_landlock_restrict_self,
                    fd.as_raw_fd(),
                    0 as libc::c_uint,
                ))?;
            }
            // Last before seccomp, which need not allow it: the plugin may run on any of the host's
            // CPUs again, starting from this one.
            crate::cpus::unpin(0, affinity.as_ref());
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

/// A raw `fork`: no `pthread_atfork` handlers of the host run (they may take locks that a
/// thread which does not exist in the child holds).
unsafe fn raw_fork() -> libc::pid_t {
    // SAFETY: clone with only SIGCHLD and no new stack behaves like fork.
    unsafe {
        libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) as libc::pid_t
    }
}

/// Closes every fd from 3 up except those in `keep` (a negative one keeps nothing). `std`'s
/// `Command` reads its error pipe until EOF, so X (and Y, which shares X's table) must not keep
/// it open, or `spawn()` would wait for the plugin to exit.
unsafe fn close_from_3_except(mut keep: [libc::c_int; 3]) {
    keep.sort_unstable();
    // SAFETY: closing fds this process owns; nothing in X or Y uses them afterwards.
    unsafe {
        let mut first: libc::c_uint = 3;
        for fd in keep {
            let Ok(fd) = libc::c_uint::try_from(fd) else {
                continue;
            };
            if fd < first {
                continue;
            }
            if fd > first {
                close_range(first, fd - 1);
            }
            first = fd + 1;
        }
        close_range(first, libc::c_uint::MAX);
    }
}

/// `/proc/self/maps` of this process, or -1.
unsafe fn open_maps() -> libc::c_int {
    // SAFETY: open on a static path.
    unsafe {
        high(libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        ))
    }
}

/// `fd` moved to a number ≥ [`FLOOR`](crate::fds::FLOOR) (the original closed), or -1. X
/// closes 0–2 once the plugin is forked: a descriptor it keeps must not be one of them, which
/// it would be if the host ran with its stdio closed.
unsafe fn high(fd: libc::c_int) -> libc::c_int {
    if !(0..crate::fds::FLOOR).contains(&fd) {
        return fd;
    }
    // SAFETY: fcntl and close on a descriptor this process owns.
    unsafe {
        let moved = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, crate::fds::FLOOR);
        libc::close(fd);
        moved
    }
}

unsafe fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: as above.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) != 0 {
            // Before Linux 5.9: close one by one up to the fd limit.
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            let top = (limit.rlim_cur.min(65536) as libc::c_uint).min(last.saturating_add(1));
            for fd in first..top {
                libc::close(fd as libc::c_int);
            }
        }
    }
}

/// Splits the direct child X into X (outside the PID namespace), Y (its pid 1, the init) and
/// Z (the plugin, pid 2), and returns only in Z.
///
/// Y shares X's memory (`CLONE_VM`, on a stack of its own): creating it copies no page table,
/// and only Z is a copy of X. Z is X's child, so X sees its status directly: X forwards
/// signals to Z and, when Z ends, kills Y (the kernel then kills whatever is left in the
/// namespace) and ends as the plugin did (same exit code, or killed by the same signal), so
/// the host sees the plugin's status. Y reaps the orphans of the namespace. Y dies with X
/// (`PR_SET_PDEATHSIG`), so killing X or the host kills every process of the plugin.
///
/// X and Y are copies of the host that never exec: they are made non-dumpable (no core file,
/// no `ptrace` by the plugin's uid, `/proc/PID` of them owned by root). `report` (or -1) is
/// where X writes the plugin's wait status once the namespace is dead, before its own exit.
unsafe fn fork_init(report: libc::c_int, affinity: Option<libc::cpu_set_t>) -> io::Result<()> {
    // SAFETY: system calls on stack values and on Y's static stack, which only Y uses; see the
    // function docs for the process structure.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        // Children must be reapable by `waitpid` even if the host ignores SIGCHLD.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        // Blocked signals are queued for `sigtimedwait`, even for a namespace's init.
        check(libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old).into())?;
        // An mm flag: Y, which shares the memory, is covered too; the plugin's exec resets it
        // for the plugin.
        check(libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0).into())?;
        // Opened now: once the plugin has pivoted the namespace's root, `/proc` is the plugin's
        // (where X has no pid); X reads them once Z is forked (see `release_inherited_memory`).
        let maps = open_maps();
        // Y checks it after arming its death signal, in case X died before (-1: no pidfds).
        let me = high(
            libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0 as libc::c_uint) as libc::c_int,
        );
        let stack = Y_STACK.0.get().cast::<u8>();
        // `CLONE_FILES`: Y holds no descriptor of its own. Closing std's error pipe in X closes
        // it for Y too, so `spawn()` returns at the plugin's exec even while Y waits for a core.
        let y = libc::clone(
            init,
            stack.add(Y_STACK_SIZE).cast(),
            libc::CLONE_VM | libc::CLONE_FILES | libc::SIGCHLD,
            me as isize as *mut libc::c_void,
        );
        if y < 0 {
            return Err(io::Error::last_os_error());
        }
        let z = raw_fork();
        if z < 0 {
            let error = io::Error::last_os_error();
            libc::kill(y, libc::SIGKILL);
            let mut ignored = 0;
            libc::waitpid(y, &mut ignored, 0);
            return Err(error);
        }
        if z > 0 {
            // Y and Z were placed on this CPU (where Y, Z and X run one after the other, without
            // waking an idle one); from here on, wake-ups may place X and Y anywhere.
            crate::cpus::unpin(y, affinity.as_ref());
            crate::cpus::unpin(0, affinity.as_ref());
            // Y closes `me` once it has looked at it. X needs no stdio either: the plugin's
            // pipes then end when the plugin does, not when X has waited for it.
            close_from_3_except([maps, me, report]);
            for fd in 0..3 {
                libc::close(fd);
            }
            // At once, not later: until X lets go of it, every page of its snapshot the host
            // writes is copied (with a TLB flush of the host's other threads), ~0.8 ms of a
            // 10 ms script run measured; the release itself takes X a fraction of that.
            release_inherited_memory(maps, stack as usize..stack as usize + Y_STACK_SIZE);
            supervise(z, y, report);
        }
        // Z: the plugin, in a process group of its own: a `killpg` of X's group then reaches
        // X only, which forwards once (instead of the plugin getting the signal twice). Its
        // signal mask is the host thread's again.
        for fd in [maps, me, report] {
            if fd >= 0 {
                libc::close(fd);
            }
        }
        libc::setpgid(0, 0);
        check(libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()).into())?;
        Ok(())
    }
}

/// The size of Y's stack: its loop calls a handful of system call wrappers.
const Y_STACK_SIZE: usize = 64 << 10;

/// Y's stack, in the `.bss`: never touched by the host, a page or two of it by each X's Y.
#[repr(C, align(64))]
struct YStack(std::cell::UnsafeCell<[u8; Y_STACK_SIZE]>);

// SAFETY: only a Y (in a process of its own) ever writes it.
unsafe impl Sync for YStack {}

static Y_STACK: YStack = YStack(std::cell::UnsafeCell::new([0; Y_STACK_SIZE]));

thread_local! {
    /// Its address marks the calling thread's TLS block (and, for a thread other than the main
    /// one, its stack mapping), which [`release_inherited_memory`] keeps.
    static TLS_MARK: u8 = const { 0 };
}

/// Drops, in X (and so in Y, which shares its memory), the host's private anonymous memory
/// inherited by `fork` (its heap, its threads' stacks, the runtimes' arenas, compiled wasm code
/// and memory images), right after X has forked the plugin. Neither touches that memory: they
/// run [`supervise`] or [`init`], system calls on stack values only. Without this each plugin's
/// X would pin a copy-on-write snapshot of the host's heap as it was at the spawn for as long
/// as the plugin runs, and every page the host rewrote afterwards would cost a copy (a host at
/// 580 MB after compiling a large component made each process plugin started then cost that
/// much again; a 10 ms script run paid ~0.8 ms in copies while its X held the snapshot).
///
/// Kept: the mapping that holds the stack pointer, the one that holds this thread's TLS (the C
/// library reads its thread descriptor there), every one that overlaps `keep` (Y's stack), every
/// mapping of a file (but a memfd), and the anonymous mapping right after one (a `.bss`). Reads
/// `fd` (its `/proc/self/maps`, closed here) into a stack buffer and parses it by hand: no
/// allocation. Best effort: any failure leaves the memory.
unsafe fn release_inherited_memory(fd: libc::c_int, keep: std::ops::Range<usize>) {
    let marker = 0u8;
    let stack = std::hint::black_box(&marker) as *const u8 as usize;
    let tls = TLS_MARK.with(|m| m as *const u8 as usize);
    // SAFETY: read/close/madvise on our own stack buffers and on mappings that no code of
    // this process touches again (see above).
    unsafe {
        if fd < 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        let mut len = 0usize;
        let mut previous_end = 0usize;
        let mut previous_file = false;
        let mut skipping = false;
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().add(len).cast(), buf.len() - len);
            if n <= 0 {
                break;
            }
            len += n as usize;
            let mut start = 0;
            while let Some(nl) = buf[start..len].iter().position(|&b| b == b'\n') {
                if std::mem::take(&mut skipping) {
                    // The tail of an over-long line: not a line of its own.
                    start += nl + 1;
                    continue;
                }
                if let Some(m) = MapLine::parse(&buf[start..start + nl]) {
                    let bss = previous_file && m.start == previous_end;
                    if m.droppable()
                        && !bss
                        && !m.contains(stack)
                        && !m.contains(tls)
                        && !m.overlaps(&keep)
                    {
                        libc::madvise(
                            m.start as *mut libc::c_void,
                            m.end - m.start,
                            libc::MADV_DONTNEED,
                        );
                    }
                    previous_end = m.end;
                    previous_file = m.inode != 0 && !m.path.starts_with(b"/memfd:");
                }
                start += nl + 1;
            }
            if start == 0 && len == buf.len() {
                // A line longer than the buffer (a long path): skip to its end.
                skipping = true;
                len = 0;
                continue;
            }
            buf.copy_within(start..len, 0);
            len -= start;
        }
        libc::close(fd);
    }
}

/// One line of `/proc/self/maps`: `start-end perms offset dev inode [path]`.
struct MapLine<'a> {
    start: usize,
    end: usize,
    perms: &'a [u8],
    inode: u64,
    path: &'a [u8],
}

impl<'a> MapLine<'a> {
    fn parse(line: &'a [u8]) -> Option<MapLine<'a>> {
        let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
        let range = fields.next()?;
        let dash = range.iter().position(|&b| b == b'-')?;
        let start = hex(&range[..dash])?;
        let end = hex(&range[dash + 1..])?;
        let perms = fields.next()?;
        let _offset = fields.next()?;
        let _dev = fields.next()?;
        let inode = decimal(fields.next()?)?;
        let path = fields.next().unwrap_or(&[]);
        (perms.len() == 4 && start < end).then_some(MapLine {
            start,
            end,
            perms,
            inode,
            path,
        })
    }

    /// Private and anonymous (no file; the `brk` heap counts, as does a private mapping of a
    /// memfd such as wasmtime's memory images): heaps, arenas, other threads' stacks, JIT code.
    /// Read-only and executable ones too (compiled wasm: the host's, never run here).
    fn droppable(&self) -> bool {
        self.perms[3] == b'p'
            && ((self.inode == 0 && (self.path.is_empty() || self.path == b"[heap]"))
                || self.path.starts_with(b"/memfd:"))
    }

    fn contains(&self, address: usize) -> bool {
        (self.start..self.end).contains(&address)
    }

    fn overlaps(&self, range: &std::ops::Range<usize>) -> bool {
        self.start < range.end && range.start < self.end
    }
}

fn hex(digits: &[u8]) -> Option<usize> {
    usize::try_from(number(digits, 16)?).ok()
}

fn decimal(digits: &[u8]) -> Option<u64> {
    number(digits, 10)
}

/// The digits in `radix`, without allocating; `None` for anything else or an overflow.
fn number(digits: &[u8], radix: u32) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = (d as char).to_digit(radix)?;
        acc.checked_mul(u64::from(radix))?.checked_add(u64::from(v))
    })
}

fn forwarded(signal: libc::c_int) -> bool {
    FORWARDED.contains(&signal)
}

/// Waits (with a deadline, in a loop) for the next signal; all are blocked.
unsafe fn next_signal() -> libc::c_int {
    // SAFETY: system calls on stack values.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let timeout = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        libc::sigtimedwait(&all, &mut info, &timeout)
    }
}

/// X: forwards signals to Z's process group; when Z ends, kills Y (and with it the namespace),
/// reports Z's status on `report` (when ≥ 0) and ends like Z.
unsafe fn supervise(z: libc::pid_t, y: libc::pid_t, report: libc::c_int) -> ! {
    // SAFETY: system calls on stack values.
    unsafe {
        loop {
            let signal = next_signal();
            if forwarded(signal) {
                // The plugin and what it started in its group (Z made the group its own first
                // thing; until then only Z).
                if libc::kill(-z, signal) != 0 {
                    libc::kill(z, signal);
                }
            }
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if pid <= 0 {
                    break;
                }
                if pid == z {
                    // Y's exit kills what is left in the namespace; waiting for it means the
                    // host sees X end only once nothing of the plugin runs (and Y leaves no
                    // zombie). Y's exit waits only for the namespace's pids, Z's already freed.
                    libc::kill(y, libc::SIGKILL);
                    let mut ignored = 0;
                    while libc::waitpid(y, &mut ignored, 0) < 0
                        && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                    {
                    }
                    if report >= 0 {
                        // The host learns the end here, not from X's exit, which then tears down
                        // the copy of the host's memory and the mount namespace (an RCU grace
                        // period) off the run's path. Nothing of the plugin runs any more.
                        //
                        // That teardown is cleanup: at idle priority, the host thread the report
                        // wakes (often placed on this CPU, the waker's) runs at once instead of
                        // after it (~0.13 ms measured).
                        let idle = libc::sched_param { sched_priority: 0 };
                        libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle);
                        let bytes = status.to_ne_bytes();
                        libc::write(report, bytes.as_ptr().cast(), bytes.len());
                    }
                    end_like(status);
                }
                // Y killed from outside: the kernel kills Z too, which is reaped next (Y itself
                // is reaped only after that: its exit waits for the namespace's pids).
            }
        }
    }
}

/// Ends this process the way `status` says: the same exit code, or the same signal.
unsafe fn end_like(status: libc::c_int) -> ! {
    // SAFETY: system calls on stack values.
    unsafe {
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            // X is a copy of the host: never dump its core.
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            libc::signal(signal, libc::SIG_DFL);
            libc::kill(libc::getpid(), signal);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::_exit(128 + signal);
        }
        libc::_exit(libc::WEXITSTATUS(status));
    }
}

/// Y, pid 1 of the namespace, on its own stack in X's memory and with X's descriptor table:
/// reaps the orphans (Z is X's child) until X kills it. `arg` is a pidfd of X, or -1.
extern "C" fn init(arg: *mut libc::c_void) -> libc::c_int {
    let x = arg as isize as libc::c_int;
    // SAFETY: system calls on stack values; nothing of X's memory is written.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            libc::_exit(1);
        }
        if x >= 0 {
            let mut poll = libc::pollfd {
                fd: x,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut poll, 1, 0) > 0 && poll.revents & libc::POLLIN != 0 {
                libc::_exit(1); // X is gone already.
            }
            libc::close(x);
        }
        // Out of X's process group, like Z.
        libc::setpgid(0, 0);
        loop {
            next_signal();
            let mut status = 0;
            while libc::waitpid(-1, &mut status, libc::WNOHANG) > 0 {}
        }
    }
}

/// The rlimits for `policy` and a description. `RLIMIT_NPROC` counts every process of the
/// real uid on the machine, so it is only set (`nproc`) when the child gets a uid of its own
/// and there is no pids cgroup to do the job.
pub(crate) fn rlimits(policy: &SandboxPolicy, nproc: bool) -> (Vec<(i32, libc::rlimit)>, String) {
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
    if let (Some(n), true) = (policy.pids_max, nproc) {
        limits.push((libc::RLIMIT_NPROC as i32, n, n, format!("nproc {n}")));
    }
    limits.push((libc::RLIMIT_CORE as i32, 0, 0, "core 0".into()));
    let fsize = match (policy.fsize_bytes, policy.disk_bytes) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(bytes) = fsize {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_lines_parse_and_only_private_anonymous_writable_ones_are_droppable() {
        let heap =
            MapLine::parse(b"55d0c1a2b000-55d0c1c4c000 rw-p 00000000 00:00 0          [heap]")
                .unwrap();
        assert_eq!((heap.start, heap.end), (0x55d0c1a2b000, 0x55d0c1c4c000));
        assert!(heap.droppable());
        assert!(heap.contains(0x55d0c1a2b000) && !heap.contains(0x55d0c1c4c000));
        for dropped in [
            &b"7f1c2c000000-7f1c2c021000 rw-p 00000000 00:00 0 "[..],
            b"6fb2b5ca4000-6fb2b712d000 r-xp 00000000 00:00 0 ",
            b"6fb2a2e3d000-6fb2a4000000 r--p 00000000 00:00 0 ",
            b"7f1c35000000-7f1c35100000 rw-p 00000000 00:01 2048 /memfd:wasm-memory-image (deleted)",
        ] {
            let line = MapLine::parse(dropped).unwrap();
            assert!(line.droppable(), "{}", String::from_utf8_lossy(dropped));
        }
        for kept in [
            &b"7f1c34a00000-7f1c34a04000 rw-p 001d6000 fd:01 1317 /usr/lib/x86_64-linux-gnu/libc.so.6"[..],
            b"7ffd1c5e2000-7ffd1c603000 rw-p 00000000 00:00 0                          [stack]",
            b"7f1c34800000-7f1c34828000 r--p 00000000 fd:01 1317 /usr/lib/x86_64-linux-gnu/libc.so.6",
            b"7f1c35000000-7f1c35100000 rw-s 00000000 00:01 2048 /memfd:wasm-memory-image (deleted)",
            b"7f1c36000000-7f1c36100000 rw-p 00002000 fd:01 99 /srv/plugd/some.data",
            b"7f1c35200000-7f1c35300000 rw-p 00000000 00:00 0 [anon:named]",
        ] {
            let line = MapLine::parse(kept).unwrap();
            assert!(!line.droppable(), "{}", String::from_utf8_lossy(kept));
        }
        for bad in [
            &b""[..],
            b"zz-10 rw-p 0 00:00 0",
            b"10-5 rw-p 0 00:00 0",
            b"10-20 rw 0 00:00 0",
            b"10-20 rw-p 0 00:00",
        ] {
            assert!(
                MapLine::parse(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(hex(b"ffffffffffffffff"), Some(usize::MAX));
        assert_eq!(hex(b"10000000000000000"), None, "overflow");
        assert_eq!(decimal(b"18446744073709551616"), None, "overflow");
        assert_eq!(decimal(b"12a"), None);
    }
}
