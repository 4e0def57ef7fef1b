//! Building and spawning a child: the socket pair on fd 3, a clean environment, its own process
//! group, and death with the host.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use plugd_runtime::InstanceSpec;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use plugd_sandbox::{Layer, Prepared, Sandbox, SandboxPolicy};

use crate::{ProcessConfig, SandboxConfig};

/// A freshly spawned child and the host's end of its protocol socket.
pub(crate) struct Spawned {
    pub child: Child,
    pub socket: UnixStream,
    /// The child's confinement; kept alive until the child is reaped (drop removes its cgroup).
    pub sandbox: Option<Prepared>,
    /// The host's end of the hand-off channel (non-blocking), for a plugin with `[http]`.
    pub handoff: Option<std::os::fd::OwnedFd>,
    /// The HTTP socket's file, pinned right after its bind, for a plugin with `[http]`.
    pub http_pin: Option<plugd_runtime::PinnedSocket>,
}

/// Resolves the manifest's entry into a program path and its arguments.
pub(crate) fn resolve_program(
    spec: &InstanceSpec,
    config: &ProcessConfig,
) -> Result<(PathBuf, Vec<String>), String> {
    let entry = &spec.manifest.entry;
    let Some(program) = entry.first() else {
        return Err("its manifest has an empty `entry`".to_owned());
    };
    let args = entry[1..].to_vec();
    // A program the plugin's own Python environment provides (its `python3`, a console script)
    // comes first.
    if let Some(env) = &spec.python_env
        && !program.contains('/')
    {
        let candidate = env.join("bin").join(program);
        if is_executable(&candidate) {
            return Ok((candidate, args));
        }
    }
    if program.contains('/') {
        let path = spec.package_dir.join(program);
        if !path.is_file() {
            return Err(format!(
                "entry program `{program}` does not exist in the package; hint: check `entry` in `plugin.toml`"
            ));
        }
        return Ok((path, args));
    }
    for dir in std::env::split_paths(&crate::base_path(&config.base_env)) {
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return Ok((candidate, args));
        }
    }
    Err(format!(
        "program `{program}` is not on the `PATH`; hint: install it or give a package-relative path in `entry`"
    ))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Spawns the child with the protocol socket as fd 3.
pub(crate) fn spawn(spec: &InstanceSpec, config: &ProcessConfig) -> Result<Spawned, String> {
    let (program, args) = resolve_program(spec, config)?;
    let (parent_end, child_end) =
        StdUnixStream::pair().map_err(|e| format!("cannot create its socket pair: {e}"))?;

    // The HTTP side's listening socket: bound here (a stale file from a crashed child goes
    // first), handed to the child as fd 4; the host connects through the pinned file.
    let (http_listener, http_pin) = match &spec.http_socket {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            let listener = std::os::unix::net::UnixListener::bind(path)
                .and_then(|l| owner_only(path).map(|()| l))
                .map_err(|e| {
                    format!("cannot listen on its HTTP socket `{}`: {e}", path.display())
                })?;
            let pin = pin_socket(path, &listener).map_err(|e| {
                format!(
                    "cannot pin its HTTP socket `{}` (plugd connects through `/proc/self/fd`: /proc must be mounted): {e}",
                    path.display()
                )
            })?;
            // Above the fds the child hook moves into place (3 to 5).
            let high = listener
                .as_fd()
                .try_clone_to_owned()
                .and_then(|fd| above(fd, 10))
                .map_err(|e| format!("cannot pass its HTTP socket: {e}"))?;
            (Some(high), Some(pin))
        }
        None => (None, None),
    };
    let http_fd = http_listener.as_ref().map(|l| l.as_raw_fd());
    // With it, the hand-off channel (fd 5): the host hands WebSockets' client connections over
    // on it. A socket pair, not a path: only the host holds the other end, so no other process
    // (another plugin of the same uid, when the sandbox's uid layer is off) can send records.
    // A plugin that never reads it simply does not say `http_handoff`, and the host relays.
    let (handoff_host, handoff_child) = match &spec.http_socket {
        Some(_) => {
            let (host, child) = seqpacket_pair()
                .and_then(|(host, child)| Ok((host, above(child, 10)?)))
                .map_err(|e| format!("cannot make its hand-off channel: {e}"))?;
            (Some(host), Some(child))
        }
        None => (None, None),
    };
    let handoff_fd = handoff_child.as_ref().map(|l| l.as_raw_fd());

    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .current_dir(&spec.package_dir)
        .env_clear()
        .envs(config.base_env.iter().map(|(k, v)| (k, v)))
        // Nothing the plugin can write may be on a start-up path (issue 7): no user site, and
        // `HOME` is a fresh tmpfs (set below), never the data dir.
        .env("PYTHONNOUSERSITE", "1")
        .env("PLUGD_FD", plugd_protocol::CHILD_FD.to_string())
        .env(
            "PLUGD_PROTOCOL",
            plugd_protocol::PROTOCOL_VERSION.to_string(),
        )
        .env("PLUGD_PLUGIN", spec.manifest.name.as_str())
        .env("PLUGD_DATA_DIR", &spec.data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(env) = &spec.python_env {
        cmd.env("PATH", crate::path_with_env(&config.base_env, env))
            .env("VIRTUAL_ENV", env);
    }
    if http_fd.is_some() {
        cmd.env("PLUGD_HTTP_FD", plugd_protocol::HTTP_FD.to_string());
    }
    if handoff_fd.is_some() {
        cmd.env("PLUGD_HANDOFF_FD", plugd_protocol::HANDOFF_FD.to_string());
    }
    for name in &spec.manifest.permissions.env {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }

    let child_fd = child_end.as_raw_fd();
    let host_pid = std::process::id() as libc::pid_t;
    // SAFETY: the hook runs in the child between fork and exec and only makes
    // async-signal-safe system calls (prctl, getppid, dup2, fcntl); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Die with the host. If the host already died before prctl, exit now.
            plugd_sandbox::die_with_parent(host_pid)?;
            plugd_sandbox::inherit_as(child_fd, plugd_protocol::CHILD_FD)?;
            if let Some(listener) = http_fd {
                plugd_sandbox::inherit_as(listener, plugd_protocol::HTTP_FD)?;
            }
            if let Some(channel) = handoff_fd {
                plugd_sandbox::inherit_as(channel, plugd_protocol::HANDOFF_FD)?;
            }
            Ok(())
        });
    }

    // Hooks run in the order they were added: the fd-3 hook above runs first (as the host's
    // user); the sandbox's hook confines the child last, just before exec.
    let sandbox = match &config.sandbox {
        Some(sandbox_config) => {
            let policy = sandbox_policy(spec, config, sandbox_config);
            if let Some(records) = &policy.record_dir {
                reap_once(records);
            }
            let prepared = Sandbox::prepare(&policy)
                .map_err(|e| format!("its sandbox could not be prepared: {e}"))?;
            prepared.apply_to(cmd.as_std_mut());
            Some(prepared)
        }
        None => None,
    };
    // A fresh tmpfs inside the mount namespace; without one there is no private place, so the
    // plugin gets a `HOME` that does not exist (as system users do).
    let home = match (&config.sandbox, &sandbox) {
        (Some(c), Some(p))
            if p.layers().iter().any(|s| {
                s.layer == Layer::MountNamespace && s.state == plugd_sandbox::LayerState::Applied
            }) =>
        {
            c.home.clone()
        }
        _ => PathBuf::from("/nonexistent"),
    };
    if !spec
        .manifest
        .permissions
        .env
        .iter()
        .any(|name| name == "HOME")
    {
        cmd.env("HOME", home);
    }

    // Confined, the child and its supervisors start on this thread's CPU (`spawn_here`).
    let child = match &sandbox {
        Some(prepared) => prepared.spawn_here(|| cmd.spawn()),
        None => cmd.spawn(),
    }
    .map_err(|e| format!("cannot run `{}`: {e}", program.display()))?;
    drop(child_end);
    // The child holds the listener now; when it dies, connections are refused at once.
    drop(http_listener);
    drop(handoff_child);
    parent_end
        .set_nonblocking(true)
        .map_err(|e| format!("socket setup failed: {e}"))?;
    let socket =
        UnixStream::from_std(parent_end).map_err(|e| format!("socket setup failed: {e}"))?;
    Ok(Spawned {
        child,
        socket,
        sandbox,
        handoff: handoff_host,
        http_pin,
    })
}

/// No user but the owner (the host's) may connect to the socket at `path`; its dir is the
/// owner's only too, so no other user could reach it between the bind and this.
fn owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Pins the socket file `listener` was just bound at: an `O_PATH` descriptor of `path` (not
/// following a symlink), and proof that it is that socket's file — a connection made through
/// it (`/proc/self/fd/N`) arrives at `listener` (which no other process holds yet) carrying a
/// random token, and made by this process (its peer credentials: a process that put its own
/// socket at the path and relayed the probe to ours would be the peer instead). So a process
/// of the host's uid that replaced the file in between is caught, and anything it does to the
/// path later does not matter: the host never connects by path.
fn pin_socket(
    path: &Path,
    listener: &std::os::unix::net::UnixListener,
) -> std::io::Result<plugd_runtime::PinnedSocket> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SERIAL: AtomicU64 = AtomicU64::new(1);
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let pin = plugd_runtime::PinnedSocket {
        fd,
        serial: SERIAL.fetch_add(1, Ordering::Relaxed),
    };
    let mut token = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut token);
    // Non-blocking: a backlog someone filled in the meantime fails the start, never hangs it.
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let probe = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::connect(&probe, &SocketAddrUnix::new(pin.path())?)?;
    if rustix::io::write(&probe, &token)? != token.len() {
        return Err(std::io::Error::other("the probe was cut short"));
    }
    let found = probe_arrived(listener, &token)?;
    if !found {
        return Err(std::io::Error::other(
            "its file was replaced right after the bind (by a process of the host's uid)",
        ));
    }
    Ok(pin)
}

/// Takes the connections queued on `listener` off it, up to the probe; `true` when one of them
/// was made by this process and carries `token` (the probe, written before this is called).
/// Connections come off in the order they came, so the probe is among the first backlog's
/// worth; a process that keeps connecting cannot keep this busy beyond that.
fn probe_arrived(
    listener: &std::os::unix::net::UnixListener,
    token: &[u8; 16],
) -> std::io::Result<bool> {
    use std::io::Read;
    /// More than any backlog the kernel allows by default (`somaxconn`, 4096).
    const MOST: usize = 8192;
    listener.set_nonblocking(true)?;
    let mut found = false;
    for _ in 0..MOST {
        let mut conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => {
                listener.set_nonblocking(false)?;
                return Err(e);
            }
        };
        // The probe wrote before this accept: its token is there already, nothing waits.
        let mut got = [0u8; 17];
        conn.set_nonblocking(true)?;
        found = peer_pid(&conn) == Some(std::process::id())
            && conn.read(&mut got).ok() == Some(16)
            && got[..16] == *token;
        if found {
            break;
        }
    }
    listener.set_nonblocking(false)?;
    Ok(found)
}

/// The pid of the process that connected `conn` (`SO_PEERCRED`), as this process's PID
/// namespace sees it; `None` when that process is outside it (the kernel says 0).
fn peer_pid(conn: &StdUnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid `ucred` and `len` its size; the kernel writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets (close-on-exec): the host's end
/// (non-blocking: a child that does not read makes a send fail now, not wait) and the child's.
fn seqpacket_pair() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let (host, child) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::io::ioctl_fionbio(&host, true)?;
    Ok((host, child))
}

/// `fd` moved to a number ≥ `floor` (close-on-exec): above the fds the child hook moves into
/// place, so no `dup2` overwrites it before it is copied.
fn above(fd: std::os::fd::OwnedFd, floor: libc::c_int) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one we own.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) })
}

/// Reaps, once per record dir and host process, the cgroups a killed earlier incarnation of the
/// host left (`reap_leftovers` never touches those of a running host).
fn reap_once(records: &Path) {
    static DONE: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if done
        .get_or_insert_with(HashSet::new)
        .insert(records.to_owned())
    {
        // Best effort: a failure here must not keep the plugin from starting.
        match plugd_sandbox::reap_leftovers(records) {
            Ok(r) if r.cgroups_removed > 0 => tracing::warn!(
                "Reaped {} cgroups ({} processes) left by a killed earlier host in `{}`",
                r.cgroups_removed,
                r.processes_killed,
                records.display()
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("Cannot reap leftovers in `{}`: {e}", records.display()),
        }
    }
}

/// The sandbox policy for one child, from its manifest's permissions and limits.
fn sandbox_policy(
    spec: &InstanceSpec,
    config: &ProcessConfig,
    sandbox: &SandboxConfig,
) -> SandboxPolicy {
    let manifest = &spec.manifest;
    let mut policy = SandboxPolicy::new(manifest.name.as_str(), &spec.package_dir, &spec.data_dir);
    policy.read_paths = sandbox.read_paths.clone();
    // The plugin's Python environment: read-only, like the package.
    policy.read_paths.extend(spec.python_env.iter().cloned());
    // Whatever the base environment puts on `PYTHONPATH` (e.g. the host-provided SDK) must be
    // readable too.
    for (key, value) in &config.base_env {
        if key == "PYTHONPATH" {
            policy.read_paths.extend(std::env::split_paths(value));
        }
    }
    policy.net_connect = manifest
        .permissions
        .net_connect
        .iter()
        .filter_map(|target| {
            let (host, port) = target.rsplit_once(':')?;
            Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
        })
        .collect();
    policy.memory_bytes = Some(manifest.limits.memory);
    // `limits.cpu` is CPU time per call, enforced by the runtime's sampling (see `instance.rs`),
    // not a lifetime budget of the child: no RLIMIT_CPU from it.
    policy.cpu_time = None;
    policy.pids_max = Some(sandbox.pids_max);
    policy.cpu_quota = sandbox.cpu_quota;
    // The host has already clamped `limits.disk` to the trust level's ceiling.
    policy.disk_bytes = Some(manifest.limits.disk);
    policy.home = sandbox.home.clone();
    policy.uid_table = sandbox.uid_table.clone();
    // The host keeps data dirs in `STATE/data/<name>`; records go to `STATE/sandbox`.
    policy.record_dir = spec
        .data_dir
        .parent()
        .and_then(Path::parent)
        .map(|state| state.join("sandbox"));
    policy.parent_death_signal = Some(libc::SIGKILL);
    if sandbox.strict {
        policy.required = Layer::ALL.to_vec();
    }
    policy
}

/// Sends `signal` to the child's whole process group.
///
/// Refuses pid 0 and 1 and anything that is not a positive `pid_t`: `killpg(0, sig)` would
/// signal the host's own process group.
pub(crate) fn kill_group(pid: u32, signal: libc::c_int) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pgid <= 1 {
        tracing::error!(
            pid,
            "refused to signal process group {pid}: not a plugin's group"
        );
        return false;
    }
    // SAFETY: killpg with a pid we spawned as a process-group leader; failure (already gone) is
    // harmless.
    unsafe { libc::killpg(pgid, signal) == 0 }
}

/// Describes how a child ended, for crash reasons.
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.signal() {
        format!("was killed by signal {sig} ({})", signal_name(sig))
    } else {
        "ended".to_owned()
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGBUS => "SIGBUS",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGINT => "SIGINT",
        libc::SIGSYS => "SIGSYS",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::{kill_group, pin_socket};
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn a_pinned_socket_is_reached_whatever_is_bound_at_its_path_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sock");
        let ours = UnixListener::bind(&path).unwrap();
        let pin = pin_socket(&path, &ours).unwrap();
        assert!(pin.path().starts_with("/proc/self/fd/"));
        // Someone moves the file aside and listens at the path.
        std::fs::rename(&path, dir.path().join("aside")).unwrap();
        let impostor = UnixListener::bind(&path).unwrap();
        impostor.set_nonblocking(true).unwrap();
        let mut client = UnixStream::connect(pin.path()).unwrap();
        client.write_all(b"ping").unwrap();
        let (mut conn, _) = ours.accept().unwrap();
        let mut got = [0u8; 4];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        assert!(impostor.accept().is_err(), "the impostor was reached");
        // The pin's probe left nothing queued on the listener.
        ours.set_nonblocking(true).unwrap();
        assert!(ours.accept().is_err());
    }

    #[test]
    fn only_a_probe_made_by_this_process_counts() {
        // A process that replaced the socket file could relay the probe to ours: the token
        // then arrives, but its connection is that process's, not the host's.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sock");
        let ours = UnixListener::bind(&path).unwrap();
        let token = *b"0123456789abcdef";
        let relay = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode()); print('sent', flush=True); sys.stdin.read()";
        let mut child = std::process::Command::new("python3")
            .args(["-c", relay])
            .arg(&path)
            .arg(std::str::from_utf8(&token).unwrap())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut sent = [0u8; 5];
        child.stdout.take().unwrap().read_exact(&mut sent).unwrap();
        assert!(!super::probe_arrived(&ours, &token).unwrap());
        let _ = child.kill();
        let _ = child.wait();
        // The same bytes from this process: the probe.
        let mut probe = UnixStream::connect(&path).unwrap();
        probe.write_all(&token).unwrap();
        assert!(super::probe_arrived(&ours, &token).unwrap());
        // Nothing is left queued, and the listener is blocking again (as the child gets it).
        ours.set_nonblocking(true).unwrap();
        assert!(ours.accept().is_err());
    }

    #[test]
    fn a_socket_file_replaced_before_the_pin_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sock");
        let ours = UnixListener::bind(&path).unwrap();
        std::fs::rename(&path, dir.path().join("aside")).unwrap();
        let _impostor = UnixListener::bind(&path).unwrap();
        let Err(e) = pin_socket(&path, &ours) else {
            panic!("pinned a socket that is not the listener's");
        };
        assert!(e.to_string().contains("was replaced"), "{e}");
    }

    #[test]
    fn kill_group_refuses_the_hosts_own_group_and_init() {
        // Signal 0 only checks; with pid 0 it would have reached our own group.
        assert!(!kill_group(0, 0));
        assert!(!kill_group(1, 0));
        assert!(!kill_group(u32::MAX, 0));
    }
}
