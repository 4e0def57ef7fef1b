//! Linux confinement of a plugin child process: prepared in the parent, applied before exec.
//!
//! The sandbox is built in two steps so that nothing allocates between `fork` and `exec`:
//!
//! 1. [`Sandbox::prepare`] runs in the parent. It creates the cgroup, gets the shared empty
//!    network namespace, builds the Landlock ruleset and the seccomp programs, chowns the data
//!    dir to the dedicated uid and opens every file descriptor the child will need.
//! 2. [`Prepared::apply_to`] installs a `pre_exec` hook on a [`std::process::Command`] (for a
//!    `tokio::process::Command`, pass `cmd.as_std_mut()`). In the child it only issues system
//!    calls on those prepared values, in this order: join the cgroup, enter the network
//!    namespace, set rlimits, drop to the dedicated uid/gid, set the parent-death signal,
//!    `PR_SET_NO_NEW_PRIVS`, Landlock `restrict_self`, seccomp filters last.
//!
//! # Use from a process runtime
//! ```no_run
//! # use plugd_sandbox::{Sandbox, SandboxPolicy};
//! # fn demo(mut cmd: std::process::Command) -> Result<(), Box<dyn std::error::Error>> {
//! let mut policy = SandboxPolicy::new("thumbs", "/srv/plugd/packages/thumbs", "/srv/plugd/data/thumbs");
//! policy.read_paths = vec!["/usr".into(), "/lib".into(), "/etc/ld.so.cache".into()];
//! policy.parent_death_signal = Some(libc::SIGKILL);
//! let prepared = Sandbox::prepare(&policy)?; // keep it as long as the child runs
//! prepared.apply_to(&mut cmd); // tokio: `prepared.apply_to(cmd.as_std_mut())`
//! let child = cmd.spawn()?;
//! // … later: `prepared.oom_killed()` classifies a SIGKILL; dropping `prepared` cleans up.
//! # drop(child); Ok(()) }
//! ```
//!
//! # Network
//! Landlock restricts TCP by port only, so `net.connect = ["api.example.org:443"]` becomes
//! "TCP connect to port 443 on any host" at the kernel layer. A plugin that is granted any
//! network stays in the host network namespace (it needs DNS and routes), may create IP
//! sockets, may `connect` TCP only to the granted ports (Landlock ABI ≥ 4) and may bind no TCP
//! port; UDP is not restricted by Landlock before ABI 10 and stays open (DNS needs it). Host
//! names are enforced by the host's egress service, not here. A plugin granted no network is
//! moved into one shared empty network namespace (only a down loopback), IP/packet/netlink
//! sockets are refused by seccomp and every TCP connect/bind is refused by Landlock.
#![warn(missing_docs)]

mod cgroup;
mod child;
mod cpus;
mod fds;
mod ids;
mod lsm;
mod mounts;
mod netns;
mod probe;
mod reap;
mod seccomp;

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::cgroup::CgroupVersion;
pub use crate::fds::{die_with_parent, inherit_as};
pub use crate::probe::{CgroupProbe, Probe, probe};

use crate::cgroup::Cgroup;
use crate::child::ChildPlan;

/// One confinement layer, as reported by [`probe`] and [`Prepared::layers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Layer {
    /// A cgroup with memory, CPU and pids limits (v1 or v2).
    Cgroup,
    /// The shared empty network namespace (only for plugins granted no network).
    NetworkNamespace,
    /// A SysV IPC namespace of the child's own: no host segments, nothing survives the child.
    IpcNamespace,
    /// A PID namespace of the child's own with a tiny init (the plugin is not pid 1): every
    /// process of the plugin dies with it and with the host.
    PidNamespace,
    /// A mount namespace whose root is a minimal tmpfs: read-only system paths, package and
    /// SDK at their own paths, the data dir `nosuid,nodev,noexec`, a fresh `/tmp` and `HOME`.
    MountNamespace,
    /// Resource limits (`setrlimit`): data size, CPU seconds, files, processes, core, file size.
    Rlimits,
    /// A dedicated unprivileged uid/gid from the machine-wide allocation table (needs a root
    /// host).
    Uid,
    /// Landlock: file system, TCP port and scope restrictions.
    Landlock,
    /// The seccomp deny-list.
    Seccomp,
}

impl Layer {
    /// Every layer, in the order they are applied in the child.
    pub const ALL: [Layer; 9] = [
        Layer::Cgroup,
        Layer::NetworkNamespace,
        Layer::IpcNamespace,
        Layer::PidNamespace,
        Layer::MountNamespace,
        Layer::Rlimits,
        Layer::Uid,
        Layer::Landlock,
        Layer::Seccomp,
    ];

    /// A stable lowercase name (`cgroup`, `netns`, `ipcns`, `pidns`, `mountns`, `rlimits`,
    /// `uid`, `landlock`, `seccomp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Cgroup => "cgroup",
            Layer::NetworkNamespace => "netns",
            Layer::IpcNamespace => "ipcns",
            Layer::PidNamespace => "pidns",
            Layer::MountNamespace => "mountns",
            Layer::Rlimits => "rlimits",
            Layer::Uid => "uid",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a layer is in force for a prepared child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayerState {
    /// The layer is applied in the child.
    Applied,
    /// This kernel or this host process cannot provide the layer.
    Unavailable,
    /// The layer is not needed or was disabled by the policy.
    Skipped,
}

impl fmt::Display for LayerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayerState::Applied => "applied",
            LayerState::Unavailable => "unavailable",
            LayerState::Skipped => "skipped",
        })
    }
}

/// The state of one layer for one prepared child, with a human explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStatus {
    /// The layer.
    pub layer: Layer,
    /// Applied, unavailable or skipped.
    pub state: LayerState,
    /// What exactly is in force, or why it is not (e.g. `Landlock ABI 7: fs, tcp, scope`).
    pub detail: String,
}

impl fmt::Display for LayerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.layer, self.state, self.detail)
    }
}

/// What a child may do, as plain values; the host translates a manifest into this.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxPolicy {
    /// A name for the cgroup and the default uid, usually the plugin name.
    pub name: String,
    /// The package directory: read-only (and executable).
    pub package_dir: PathBuf,
    /// The data directory: read-write, not executable; chowned to the dedicated uid.
    pub data_dir: PathBuf,
    /// Extra read-only (and executable) paths: interpreter prefixes, `/etc/ld.so.cache`, …
    /// Paths that do not exist are left out and named in the Landlock layer's detail.
    pub read_paths: Vec<PathBuf>,
    /// Extra read-write (not executable) paths, treated like the data dir: bound at their own
    /// path in the mount namespace and writable under Landlock. They must exist. Unlike the data
    /// dir they are not chowned: the child's uid must already be able to write them.
    pub write_paths: Vec<PathBuf>,
    /// Granted TCP connections as `(host, port)`; empty means no network at all. Only the
    /// port is enforced by the kernel (see the crate docs).
    pub net_connect: Vec<(String, u16)>,
    /// Memory limit: cgroup memory (and swap) limit, and `RLIMIT_DATA`.
    pub memory_bytes: Option<u64>,
    /// CPU seconds for the child's lifetime: `RLIMIT_CPU` soft (SIGXCPU), hard = soft + 1s
    /// (SIGKILL). Rounded up to whole seconds.
    pub cpu_time: Option<Duration>,
    /// CPU bandwidth as a fraction of one core (e.g. `0.5`), through the cgroup CPU quota.
    pub cpu_quota: Option<f64>,
    /// Maximum number of tasks: cgroup `pids.max`. `RLIMIT_NPROC` (which counts per uid, machine
    /// wide) is only the fallback when the cgroup has no `pids` controller and the child has a
    /// dedicated uid.
    pub pids_max: Option<u64>,
    /// Maximum number of open files (`RLIMIT_NOFILE`).
    pub nofile: Option<u64>,
    /// Largest file the child may write (`RLIMIT_FSIZE`, SIGXFSZ past it).
    pub fsize_bytes: Option<u64>,
    /// The data-dir quota: no single file may grow past it (`RLIMIT_FSIZE` is the smaller of
    /// this and [`SandboxPolicy::fsize_bytes`]); the host also measures the whole dir with
    /// `plugd_host::dir_usage` and stops a plugin that is over.
    pub disk_bytes: Option<u64>,
    /// Dedicated `(uid, gid)`. When the host is root and this is `None`, an id is allocated in
    /// [`SandboxPolicy::uid_table`] for the data dir (see [`allocate_ids`]). Ignored when the host
    /// is not root.
    pub ids: Option<(u32, u32)>,
    /// The machine-wide uid allocation table shared by every plugd process on the machine.
    pub uid_table: PathBuf,
    /// An empty directory the child mounts its minimal root on (in its own mount namespace only).
    pub mount_root: PathBuf,
    /// `HOME` inside the mount namespace: a fresh tmpfs owned by the child's uid.
    pub home: PathBuf,
    /// Size of each fresh tmpfs (`/tmp`, `HOME`, `/dev/shm`); their pages are charged to the
    /// child's memory cgroup.
    pub tmpfs_bytes: u64,
    /// Where the child's cgroup is recorded while it exists, so that a later incarnation of the
    /// host can reap what a killed one left (see [`reap_leftovers`]). Usually `STATE/sandbox`.
    pub record_dir: Option<PathBuf>,
    /// Signal sent to the child when the thread that spawned it dies (`PR_SET_PDEATHSIG`).
    /// Set here rather than in the caller's own hook because the uid change clears it.
    pub parent_death_signal: Option<i32>,
    /// Layers that must be in force: [`Sandbox::prepare`] fails if one is unavailable.
    pub required: Vec<Layer>,
    /// Layers to leave out on purpose (tests, measurements, a debugging operator).
    pub disabled: Vec<Layer>,
}

impl SandboxPolicy {
    /// A policy with no network, 256 MiB, 64 tasks, 256 files, 1 GiB files and no CPU limit.
    pub fn new(
        name: impl Into<String>,
        package_dir: impl Into<PathBuf>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        SandboxPolicy {
            name: name.into(),
            package_dir: package_dir.into(),
            data_dir: data_dir.into(),
            read_paths: Vec::new(),
            write_paths: Vec::new(),
            net_connect: Vec::new(),
            memory_bytes: Some(256 << 20),
            cpu_time: None,
            cpu_quota: None,
            pids_max: Some(64),
            nofile: Some(256),
            fsize_bytes: Some(1 << 30),
            disk_bytes: None,
            ids: None,
            uid_table: PathBuf::from(DEFAULT_UID_TABLE),
            mount_root: PathBuf::from(DEFAULT_MOUNT_ROOT),
            home: PathBuf::from(DEFAULT_HOME),
            tmpfs_bytes: 64 << 20,
            record_dir: None,
            parent_death_signal: None,
            required: Vec::new(),
            disabled: Vec::new(),
        }
    }

    fn network_granted(&self) -> bool {
        !self.net_connect.is_empty()
    }

    fn disabled(&self, layer: Layer) -> bool {
        self.disabled.contains(&layer)
    }
}

pub use crate::ids::{
    DEFAULT_ID_BASE, DEFAULT_ID_SPAN, DEFAULT_UID_TABLE, allocate_ids, default_ids,
};
pub use crate::reap::{ReapReport, reap_leftovers};

/// Default [`SandboxPolicy::mount_root`].
pub const DEFAULT_MOUNT_ROOT: &str = "/var/lib/plugd/root";
/// Default [`SandboxPolicy::home`].
pub const DEFAULT_HOME: &str = "/home/plugd";

/// Why a sandbox could not be prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A layer listed in [`SandboxPolicy::required`] is not available.
    #[error("Sandbox layer `{layer}` is required but unavailable: {reason}")]
    LayerUnavailable {
        /// The layer.
        layer: Layer,
        /// Why it is unavailable, with a hint where the fix is known.
        reason: String,
    },
    /// A path named by the policy is missing or unusable.
    #[error("Sandbox path `{path}` is unusable: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The cgroup could not be created or configured.
    #[error("Cannot set up cgroup `{path}`: {source}")]
    Cgroup {
        /// The cgroup file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The Landlock ruleset could not be built.
    #[error("Cannot build the Landlock ruleset: {0}")]
    Landlock(String),
    /// The seccomp program could not be built.
    #[error("Cannot build the seccomp filter: {0}")]
    Seccomp(String),
}

/// Entry point: turns a [`SandboxPolicy`] into a [`Prepared`] sandbox.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sandbox;

impl Sandbox {
    /// Prepares everything in the parent; see the crate docs for what is done where.
    ///
    /// Fails when a path of the policy is missing, when a required layer is unavailable, or
    /// when an available layer cannot be set up. An unavailable layer that is not required is
    /// reported by [`Prepared::layers`].
    pub fn prepare(policy: &SandboxPolicy) -> Result<Prepared, SandboxError> {
        Sandbox::prepare_with(policy, None)
    }

    /// Makes the cgroup directories (and their record) that a later [`Sandbox::prepare_with`]
    /// of a policy with the same name will take, so that making them (four `mkdir`s on cgroup
    /// v1, ~0.15 ms) is not on that child's path. `None` when the policy gets no cgroup here.
    /// Dropping it unused removes them.
    pub fn cgroup_ahead(policy: &SandboxPolicy) -> Result<Option<CgroupAhead>, SandboxError> {
        if policy.disabled(Layer::Cgroup) {
            return Ok(None);
        }
        let probe = crate::probe::recent();
        Ok(Cgroup::make(&probe.cgroup, policy)?
            .ok()
            .map(|cgroup| CgroupAhead {
                name: policy.name.clone(),
                cgroup,
            }))
    }

    /// As [`Sandbox::prepare`], taking the cgroup made by [`Sandbox::cgroup_ahead`] when it
    /// was made for a policy of the same name (else it is dropped, and a cgroup made here).
    pub fn prepare_with(
        policy: &SandboxPolicy,
        ahead: Option<CgroupAhead>,
    ) -> Result<Prepared, SandboxError> {
        let probe = crate::probe::recent();
        let mut layers = Vec::new();
        let mut plan = ChildPlan::default();

        for path in [&policy.package_dir, &policy.data_dir]
            .into_iter()
            .chain(&policy.write_paths)
        {
            std::fs::metadata(path).map_err(|source| SandboxError::Path {
                path: path.clone(),
                source,
            })?;
        }

        // Cgroup.
        let cgroup = if policy.disabled(Layer::Cgroup) {
            layers.push(skipped(Layer::Cgroup, "disabled by policy"));
            None
        } else {
            let made = match ahead {
                Some(ahead) if ahead.name == policy.name => Ok(ahead.cgroup.configure(policy)?),
                _ => Cgroup::create(&probe.cgroup, policy)?,
            };
            match made {
                Ok(cgroup) => {
                    layers.push(applied(Layer::Cgroup, cgroup.describe(policy)));
                    plan.cgroup_procs = cgroup.procs_fds()?;
                    Some(cgroup)
                }
                Err(reason) => {
                    layers.push(unavailable(Layer::Cgroup, reason));
                    None
                }
            }
        };

        // Network namespace.
        if policy.network_granted() {
            layers.push(skipped(
                Layer::NetworkNamespace,
                "network granted: stays in the host network namespace",
            ));
        } else if policy.disabled(Layer::NetworkNamespace) {
            layers.push(skipped(Layer::NetworkNamespace, "disabled by policy"));
        } else {
            match netns::shared_empty() {
                Ok(fd) => {
                    plan.netns = Some(fd);
                    layers.push(applied(
                        Layer::NetworkNamespace,
                        "shared empty network namespace".into(),
                    ));
                }
                Err(reason) => layers.push(unavailable(Layer::NetworkNamespace, reason)),
            }
        }

        // Namespaces of the child's own: unshared in the direct child, which needs root.
        let namespaces_possible = probe.root;
        let mut namespace = |layer: Layer, flag: libc::c_int, detail: &str| {
            if policy.disabled(layer) {
                layers.push(skipped(layer, "disabled by policy"));
                false
            } else if !namespaces_possible {
                layers.push(unavailable(
                    layer,
                    "the host is not root; hint: run plugd as root (or with `CAP_SYS_ADMIN`)"
                        .into(),
                ));
                false
            } else {
                plan.unshare |= flag;
                layers.push(applied(layer, detail.into()));
                true
            }
        };
        namespace(
            Layer::IpcNamespace,
            libc::CLONE_NEWIPC,
            "own SysV IPC namespace: no host segments or queues, none outlive the child",
        );
        let pid_namespace = namespace(
            Layer::PidNamespace,
            libc::CLONE_NEWPID,
            "own PID namespace under a plugd init (the plugin is pid 2): signals forwarded, orphans reaped, every process dies with the plugin and with the host",
        );

        // Dedicated ids (decided before the mounts: `HOME` belongs to them).
        let ids = if policy.disabled(Layer::Uid) {
            layers.push(skipped(Layer::Uid, "disabled by policy"));
            None
        } else if !probe.root {
            layers.push(unavailable(
                Layer::Uid,
                "the host is not root; hint: run plugd as root to give each plugin its own uid"
                    .into(),
            ));
            None
        } else {
            let (uid, gid, how) = match policy.ids {
                Some((uid, gid)) => (uid, gid, "given by the host".to_owned()),
                None => {
                    let owner = std::fs::canonicalize(&policy.data_dir).map_err(|source| {
                        SandboxError::Path {
                            path: policy.data_dir.clone(),
                            source,
                        }
                    })?;
                    let (uid, gid) = allocate_ids(&policy.uid_table, &owner).map_err(|source| {
                        SandboxError::Path {
                            path: policy.uid_table.clone(),
                            source,
                        }
                    })?;
                    (
                        uid,
                        gid,
                        format!("allocated in `{}`", policy.uid_table.display()),
                    )
                }
            };
            ids::chown_tree(&policy.data_dir, uid, gid)?;
            layers.push(applied(
                Layer::Uid,
                format!("uid {uid}, gid {gid}, no supplementary groups, {how}"),
            ));
            Some((uid, gid))
        };
        plan.ids = ids;

        // The existing read paths (missing ones are named in the Landlock detail).
        let read_paths: Vec<PathBuf> = policy
            .read_paths
            .iter()
            .filter(|p| p.exists() || std::fs::symlink_metadata(p).is_ok())
            .cloned()
            .collect();

        // Mount namespace.
        let mount_namespace = if policy.disabled(Layer::MountNamespace) {
            layers.push(skipped(Layer::MountNamespace, "disabled by policy"));
            false
        } else if !namespaces_possible {
            layers.push(unavailable(
                Layer::MountNamespace,
                "the host is not root; hint: run plugd as root (or with `CAP_SYS_ADMIN`)".into(),
            ));
            false
        } else {
            // SAFETY: geteuid/getegid have no preconditions.
            let own = unsafe { (libc::geteuid(), libc::getegid()) };
            let (mounts, detail) =
                mounts::plan(policy, &read_paths, ids.unwrap_or(own), pid_namespace)?;
            plan.mounts = Some(mounts);
            plan.unshare |= libc::CLONE_NEWNS;
            layers.push(applied(Layer::MountNamespace, detail));
            true
        };

        // Rlimits.
        if policy.disabled(Layer::Rlimits) {
            layers.push(skipped(Layer::Rlimits, "disabled by policy"));
        } else {
            let pids_cgroup = cgroup.as_ref().is_some_and(|c| c.has("pids"));
            let (limits, detail) = child::rlimits(policy, ids.is_some() && !pids_cgroup);
            plan.rlimits = limits;
            layers.push(applied(Layer::Rlimits, detail));
        }

        plan.parent_death_signal = policy.parent_death_signal;
        plan.parent_pid = std::process::id() as libc::pid_t;

        // Landlock.
        if policy.disabled(Layer::Landlock) {
            layers.push(skipped(Layer::Landlock, "disabled by policy"));
        } else if probe.landlock_abi == 0 {
            layers.push(unavailable(
                Layer::Landlock,
                "this kernel has no Landlock; hint: boot Linux ≥ 5.13 with `lsm=...,landlock`"
                    .into(),
            ));
        } else {
            let (fd, writable, mut detail) = lsm::ruleset(policy, probe.landlock_abi)?;
            plan.landlock = fd;
            if mount_namespace {
                plan.landlock_writable = writable;
                detail.push_str(&format!(
                    "; read-write (no exec) fresh `/tmp`, `{}` and `/dev/shm`",
                    policy.home.display()
                ));
            }
            layers.push(applied(Layer::Landlock, detail));
        }

        // Seccomp.
        if policy.disabled(Layer::Seccomp) {
            layers.push(skipped(Layer::Seccomp, "disabled by policy"));
        } else if !probe.seccomp {
            layers.push(unavailable(
                Layer::Seccomp,
                "this kernel has no seccomp filter support".into(),
            ));
        } else {
            let (programs, detail) = seccomp::programs(policy.network_granted())?;
            plan.seccomp = programs;
            layers.push(applied(Layer::Seccomp, detail));
        }

        layers.sort_by_key(|s| s.layer);
        // A layer skipped because it is not needed (the netns of a plugin granted network) does
        // not fail a requirement; one disabled by the policy or unavailable does.
        for layer in &policy.required {
            let missing = |s: &&LayerStatus| {
                s.layer == *layer && (s.state == LayerState::Unavailable || policy.disabled(*layer))
            };
            if let Some(status) = layers.iter().find(missing) {
                return Err(SandboxError::LayerUnavailable {
                    layer: *layer,
                    reason: status.detail.clone(),
                });
            }
        }

        plan.affinity = crate::cpus::own_affinity();
        let tcp_confined =
            policy.network_granted() || (plan.landlock.is_some() && probe.landlock_net());
        Ok(Prepared {
            plan: Arc::new(plan),
            cgroup,
            layers,
            ids,
            tcp_confined,
        })
    }
}

fn applied(layer: Layer, detail: String) -> LayerStatus {
    LayerStatus {
        layer,
        state: LayerState::Applied,
        detail,
    }
}

fn unavailable(layer: Layer, detail: String) -> LayerStatus {
    LayerStatus {
        layer,
        state: LayerState::Unavailable,
        detail,
    }
}

fn skipped(layer: Layer, detail: &str) -> LayerStatus {
    LayerStatus {
        layer,
        state: LayerState::Skipped,
        detail: detail.to_owned(),
    }
}

/// The read end of a pipe on which the supervising process of a child with a PID namespace
/// writes the plugin's wait status (4 bytes, native endian, as `waitpid` gives it) once the
/// plugin has ended and the namespace is dead, just before it ends itself the same way.
///
/// Nothing arrives when the supervisor is killed (a cgroup kill, the OOM killer): wait for the
/// child at the same time, and take whichever comes first. The child must still be reaped.
#[derive(Debug)]
pub struct EndReport(OwnedFd);

impl EndReport {
    /// The pipe's read end (close-on-exec, blocking).
    pub fn into_fd(self) -> OwnedFd {
        self.0
    }

    /// The status the 4 bytes read from the pipe say.
    pub fn decode(bytes: [u8; 4]) -> std::process::ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        std::process::ExitStatus::from_raw(i32::from_ne_bytes(bytes))
    }
}

/// The cgroup of a child to come, made by [`Sandbox::cgroup_ahead`]; removed when dropped
/// unused.
#[derive(Debug)]
pub struct CgroupAhead {
    name: String,
    cgroup: Cgroup,
}

/// A sandbox ready to be applied to one child; owns the child's cgroup.
///
/// Dropping it kills whatever is left in the cgroup and removes the cgroup directories.
#[derive(Debug)]
pub struct Prepared {
    plan: Arc<ChildPlan>,
    cgroup: Option<Cgroup>,
    layers: Vec<LayerStatus>,
    ids: Option<(u32, u32)>,
    tcp_confined: bool,
}

impl Prepared {
    /// Whether a TCP socket of the host's network namespace handed to the child (a WebSocket's
    /// client connection) gives it no more network than its policy does: it was granted
    /// network anyway, or Landlock (ABI ≥ 4) stops it from re-connecting or binding such a
    /// socket beyond its `net_connect` ports. Without either, a plugin confined to an empty
    /// network namespace could `connect` a handed socket to the host's services.
    pub fn confines_handed_tcp(&self) -> bool {
        self.tcp_confined
    }

    /// Installs the confinement as a `pre_exec` hook of `cmd` (for a
    /// `tokio::process::Command`, pass `cmd.as_std_mut()`).
    ///
    /// Hooks run in the order they were added. Hooks added before this one run as the host's
    /// user, outside the sandbox; hooks added after it run confined (dedicated uid, Landlock,
    /// seccomp). The uid change clears `PR_SET_PDEATHSIG`, so set it through
    /// [`SandboxPolicy::parent_death_signal`] (or in a hook added after this one), never in a
    /// hook added before. Apply one `Prepared` to one child: a second child would share the
    /// cgroup and its limits, and the cgroup is removed when the `Prepared` is dropped.
    pub fn apply_to(&self, cmd: &mut std::process::Command) {
        self.install(cmd, None);
    }

    /// As [`Prepared::apply_to`], and, when the child gets a PID namespace, returns an
    /// [`EndReport`]: the child's end is known from it as soon as nothing of the plugin runs,
    /// without waiting for the supervising process's own exit (it tears down a copy of the
    /// host's memory and the mount namespace, about half a millisecond). Without a PID
    /// namespace there is no report (`None`): wait for the child.
    pub fn apply_reporting_end(
        &self,
        cmd: &mut std::process::Command,
    ) -> std::io::Result<Option<EndReport>> {
        if self.plan.unshare & libc::CLONE_NEWPID == 0 {
            self.apply_to(cmd);
            return Ok(None);
        }
        let mut ends = [0; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors owned by nobody else.
        let (read, write) =
            unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
        // Above the stdio and fd-3 plumbing of the child, like every prepared descriptor.
        let write = Arc::new(crate::fds::lift(write)?);
        self.install(cmd, Some(write));
        Ok(Some(EndReport(read)))
    }

    /// Runs `spawn`, which forks the child this sandbox was applied to, with the calling thread
    /// pinned to the CPU it is on, and returns what `spawn` returned.
    ///
    /// The child, its supervisor and the PID namespace's init then start on this CPU and run
    /// there one after the other, while this thread waits for the plugin's `exec`, instead of
    /// each being woken on another, idle, CPU (a wake-up of an idle virtual CPU costs 0.05–0.2
    /// ms on the VMs measured, several per start: ~0.9 ms of a confined script run). Each of
    /// them takes the host's CPU mask back before it waits or execs, and this thread gets its
    /// own back before this returns; the child gives it back to this thread already, before
    /// the plugin's `exec` wakes it (else it would be woken pinned to the plugin's CPU). Without
    /// a known mask (it could not be read) this only calls `spawn`.
    pub fn spawn_here<T>(&self, spawn: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering::Relaxed;
        let pinned = self
            .plan
            .affinity
            .is_some()
            .then(crate::cpus::Pinned::here)
            .flatten();
        if pinned.is_some() {
            // SAFETY: a system call without arguments.
            let tid = unsafe { libc::gettid() };
            self.plan.spawner.store(tid, Relaxed);
        }
        let spawned = spawn();
        self.plan.spawner.store(0, Relaxed);
        drop(pinned);
        spawned
    }

    fn install(&self, cmd: &mut std::process::Command, report: Option<Arc<OwnedFd>>) {
        use std::os::unix::process::CommandExt;
        let plan = Arc::clone(&self.plan);
        // SAFETY: the hook only makes async-signal-safe system calls on values prepared in the
        // parent; it neither allocates nor takes locks (see `ChildPlan::apply`). The write end
        // of the report lives as long as the hook, so its number is valid at every fork.
        unsafe {
            cmd.pre_exec(move || plan.apply(report.as_ref().map(|fd| fd.as_raw_fd())));
        }
    }

    /// The state of each layer for this child, in application order.
    pub fn layers(&self) -> &[LayerStatus] {
        &self.layers
    }

    /// The uid and gid the child runs as, when a dedicated one is used.
    pub fn ids(&self) -> Option<(u32, u32)> {
        self.ids
    }

    /// Whether the kernel's OOM killer killed a task of this child's cgroup.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(Cgroup::oom_killed)
    }

    /// The highest memory use of the cgroup, in bytes, when known.
    pub fn memory_peak(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(Cgroup::memory_peak)
    }

    /// The memory the cgroup uses now (page cache included), in bytes, when known.
    pub fn memory_current(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(Cgroup::memory_current)
    }

    /// CPU time used by the cgroup so far, when known.
    pub fn cpu_usage(&self) -> Option<Duration> {
        self.cgroup.as_ref().and_then(Cgroup::cpu_usage)
    }

    /// The directories of the child's cgroup (one on v2, one per hierarchy on v1).
    pub fn cgroup_paths(&self) -> Vec<PathBuf> {
        self.cgroup.as_ref().map(Cgroup::paths).unwrap_or_default()
    }

    /// Sends SIGKILL to every task in the cgroup (no-op without a cgroup).
    pub fn kill_all(&self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all();
        }
    }
}
