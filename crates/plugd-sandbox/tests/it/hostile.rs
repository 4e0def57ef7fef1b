//! Hostile children against the namespace layers, the uid allocation and the seccomp
//! allow-list (issue 7): each attack fails with its specific errno or outcome.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;

const ENOENT: &str = "2";
const EACCES: &str = "13";
const EPERM: &str = "1";

/// Every namespace layer needs a root host; these tests assert the layer is reported
/// unavailable otherwise (and skip the attack, which would then succeed by design).
fn namespaces() -> bool {
    let root = kernel().root;
    if !root {
        let f = fixture();
        let p = Sandbox::prepare(&policy(&f, "no-root")).unwrap();
        assert_eq!(state(&p, Layer::MountNamespace), LayerState::Unavailable);
    }
    root
}

/// Runs python `code` (with `attempt(fn)` printing the errno or `ok`) and returns stdout lines.
fn attempts(p: &SandboxPolicy, code: &str, args: &[&str]) -> Vec<String> {
    let prelude = "import os, sys, socket, ctypes\ndef attempt(fn):\n    try:\n        fn(); print('ok')\n    except OSError as e:\n        print(e.errno)\n";
    let script = format!("{prelude}{code}");
    let mut all = vec!["-c", script.as_str()];
    all.extend(args);
    let (_p, o) = run(p, PYTHON, &all);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).lines().map(str::to_owned).collect()
}

/// A world-writable listening socket at `path`, as a root-owned D-Bus or X11 socket would be.
fn host_socket(path: &Path) -> UnixListener {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

const CONNECT_UNIX: &str = "for path in sys.argv[1:]:\n    s = socket.socket(socket.AF_UNIX)\n    attempt(lambda: s.connect(path))\n";

#[test]
fn host_unix_sockets_by_path_do_not_exist_inside() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    let tag = format!("plugd-sbx-{}", std::process::id());
    let paths = [
        PathBuf::from(format!("/tmp/{tag}.sock")),
        PathBuf::from(format!("/run/{tag}.sock")),
        f.base.join("beside-the-package.sock"),
    ];
    let listeners: Vec<UnixListener> = paths.iter().map(|p| host_socket(p)).collect();
    let mut args: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    // `/var/run` is the usual alias of `/run`.
    args.push(format!("/var/run/{tag}.sock"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = attempts(&policy(&f, "unix-path"), CONNECT_UNIX, &args);
    assert_eq!(got, [ENOENT, ENOENT, ENOENT, ENOENT]);
    for listener in &listeners {
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
    }
    for path in &paths {
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn the_host_tmp_and_run_are_not_the_childs() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    let marker = format!("/tmp/plugd-sbx-marker-{}", std::process::id());
    std::fs::write(&marker, "host").unwrap();
    let code = "print(sorted(os.listdir('/tmp')), os.path.exists('/run'), os.path.exists(sys.argv[1]))\nopen('/tmp/mine', 'w').write('x')\nprint(open('/tmp/mine').read())\n";
    let got = attempts(&policy(&f, "tmp"), code, &[&marker]);
    // The fresh `/tmp` holds only the directories leading to the fixture (itself in `/tmp`).
    let first = f
        .base
        .strip_prefix("/tmp")
        .unwrap()
        .components()
        .next()
        .unwrap();
    let first = first.as_os_str().to_str().unwrap();
    assert_eq!(got, [format!("['{first}'] False False"), "x".into()]);
    assert!(
        !Path::new("/tmp/mine").exists() || std::fs::read_to_string("/tmp/mine").unwrap() != "x"
    );
    std::fs::remove_file(marker).unwrap();
}

#[test]
fn abstract_sockets_of_the_host_are_out_of_scope_and_own_sockets_work() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    let name = format!("plugd-sbx-abstract-{}", std::process::id());
    let code = r#"
s = socket.socket(socket.AF_UNIX)
attempt(lambda: s.connect("\0" + sys.argv[1]))
path = os.path.join(sys.argv[2], "own.sock")
if os.path.exists(path): os.unlink(path)
server = socket.socket(socket.AF_UNIX)
server.bind(path); server.listen(1)
c = socket.socket(socket.AF_UNIX)
attempt(lambda: c.connect(path))
a, b = socket.socketpair()
a.send(b"y"); print(b.recv(1).decode())
"#;
    let data = f.data.display().to_string();
    // A host service listening on an abstract name (they are scoped by network namespace).
    let fd = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        UnixListener::bind_addr(&addr).unwrap()
    };
    // In the empty network namespace the name does not exist: ECONNREFUSED.
    let got = attempts(&policy(&f, "unix-own"), code, &[&name, &data]);
    assert_eq!(got, ["111", "ok", "y"]);
    // Granted network (host namespace): Landlock's scope (ABI ≥ 6) refuses it with EPERM.
    let mut p = policy(&f, "unix-own-net");
    p.net_connect = vec![("127.0.0.1".into(), 9)];
    let expected = if kernel().landlock_scope() {
        EPERM
    } else {
        "ok"
    };
    let got = attempts(&p, code, &[&name, &data]);
    assert_eq!(got, [expected, "ok", "y"]);
    drop(fd);
}

/// `shmget(key, 0, 0)` from the host side: the id, or the errno.
fn host_shmget(key: i32) -> Result<i32, i32> {
    // SAFETY: shmget has no memory arguments.
    let id = unsafe { libc::shmget(key, 0, 0) };
    if id < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(id)
    }
}

const SYSV: &str = r#"
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
def errno_of(r):
    return str(ctypes.get_errno()) if r == -1 else "ok"
host_shm, host_msg, own = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print(errno_of(libc.shmget(host_shm, 0, 0)))
print(errno_of(libc.msgget(host_msg, 0)))
shmid = int(sys.argv[4])
r = libc.shmat(shmid, None, 0)
print(str(ctypes.get_errno()) if r in (None, ctypes.c_void_p(-1).value) else "attached")
print(errno_of(libc.shmget(own, 4096, 0o1600)))
print(errno_of(libc.msgget(own, 0o1600)))
"#;

#[test]
fn host_sysv_ipc_is_invisible_and_the_childs_own_is_gone_after_it() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    let base = 0x5000_0000 | (std::process::id() as i32 & 0xffff) << 8;
    let (host_shm, host_msg, own) = (base + 1, base + 2, base + 3);
    // SAFETY: SysV calls with integer arguments; the segment is removed below.
    let (shmid, msqid) = unsafe {
        let shmid = libc::shmget(host_shm, 4096, libc::IPC_CREAT | 0o666);
        let msqid = libc::msgget(host_msg, libc::IPC_CREAT | 0o666);
        (shmid, msqid)
    };
    assert!(shmid >= 0 && msqid >= 0);
    let args = [
        host_shm.to_string(),
        host_msg.to_string(),
        own.to_string(),
        shmid.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = policy(&f, "sysv");
    let got = attempts(&p, SYSV, &args);
    // ENOENT for the host's keys, EINVAL for the host's segment id, and the child makes its own.
    assert_eq!(got, [ENOENT, ENOENT, "22", "ok", "ok"]);
    // The child's segment never reached the host and died with the child's namespace: a second
    // child does not find it either.
    assert_eq!(host_shmget(own), Err(libc::ENOENT));
    let again = attempts(
        &p,
        "libc = ctypes.CDLL(None, use_errno=True)\nr = libc.shmget(int(sys.argv[1]), 0, 0)\nprint(ctypes.get_errno() if r == -1 else 'found')\n",
        &[&own.to_string()],
    );
    assert_eq!(again, [ENOENT]);
    // SAFETY: removing what this test created.
    unsafe {
        libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut());
        libc::msgctl(msqid, libc::IPC_RMID, std::ptr::null_mut());
    }
}

/// Every pid of the PID namespace `child` made for its children, as the host sees them.
fn namespace_members(child: u32) -> Vec<i32> {
    let ns = std::fs::read_link(format!("/proc/{child}/ns/pid_for_children")).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .ok()
                .as_ref()
                == Some(&ns)
        })
        .collect()
}

/// Starts `script` confined and returns once it printed its first line.
fn start(p: &SandboxPolicy, script: &str) -> (Prepared, std::process::Child, String) {
    start_program(p, "/bin/sh", script)
}

/// [`start`] with another interpreter: `program -c code`.
fn start_program(
    p: &SandboxPolicy,
    program: &str,
    code: &str,
) -> (Prepared, std::process::Child, String) {
    let prepared = Sandbox::prepare(p).unwrap();
    let mut cmd = Command::new(program);
    cmd.args(["-c", code])
        .current_dir(&p.data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    prepared.apply_to(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (prepared, child, line.trim().to_owned())
}

const ORPHAN: &str = "setsid sh -c 'sleep 300 & sleep 300 & echo $$' >/dev/null; sh -c '(sleep 300 &) ; exit 0'; echo ready $$; exec sleep 300";

#[test]
fn a_double_forked_setsid_grandchild_dies_with_the_killed_child() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    // Without the cgroup layer nothing but the PID namespace can end the orphans.
    let mut p = policy(&f, "orphan-kill");
    p.disabled = vec![Layer::Cgroup];
    let (prepared, mut child, line) = start(&p, ORPHAN);
    // The plugin is pid 2: a plugd init is pid 1.
    assert_eq!(line, "ready 2");
    let members = namespace_members(child.id());
    assert!(members.len() >= 5, "init, plugin and orphans: {members:?}");
    // SAFETY: kill with a pid we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    wait_gone(&members);
    drop(prepared);
}

#[test]
fn orphans_die_when_the_plugin_exits_and_its_status_passes_through() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    let mut p = policy(&f, "orphan-exit");
    p.disabled = vec![Layer::Cgroup];
    let (_prepared, mut child, line) = start(
        &p,
        "setsid sh -c 'sleep 300 &' >/dev/null; echo up; read x < /dev/zero; exit 7",
    );
    assert_eq!(line, "up");
    let members = namespace_members(child.id());
    // The plugin (reading /dev/zero forever) is sent SIGTERM through X, the outer init.
    // SAFETY: kill with a pid we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    wait_gone(&members);

    let (_p, o) = sh(&p, "sh -c 'sleep 300 &'; exit 7");
    assert_eq!(o.status.code(), Some(7));
    let (_p, o) = sh(&p, "kill -SEGV $$");
    assert_eq!(o.status.signal(), Some(libc::SIGSEGV));
}

#[test]
fn the_host_and_its_processes_are_not_in_the_childs_pid_namespace() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    let code = "for pid in map(int, sys.argv[1:]):\n    attempt(lambda: os.kill(pid, 0))\nprint(os.getpid())\n";
    let host = std::process::id().to_string();
    let got = attempts(&policy(&f, "pidns"), code, &[&host, "1"]);
    // ESRCH for the host's pid; pid 1 is the plugd init, another uid: EPERM.
    assert_eq!(got, ["3", EPERM, "2"]);
}

const USERCUSTOMIZE: &str = "import os, site, sys\nsp = site.getusersitepackages()\nos.makedirs(sp, exist_ok=True)\nopen(os.path.join(sp, 'usercustomize.py'), 'w').write('print(\"PLANTED\")')\nprint(os.environ['HOME'], sp.startswith(os.environ['HOME']))";

#[test]
fn code_planted_in_home_or_the_data_dir_is_never_run_by_python() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    let p = policy(&f, "usercustomize");
    let home = p.home.display().to_string();
    let python = |code: &str, home: &str, nousersite: bool| {
        let prepared = Sandbox::prepare(&p).unwrap();
        let mut cmd = Command::new(PYTHON);
        cmd.args(["-c", code])
            .env_clear()
            .env("HOME", home)
            .current_dir(&p.data_dir);
        if nousersite {
            cmd.env("PYTHONNOUSERSITE", "1");
        }
        prepared.apply_to(&mut cmd);
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    // One run plants a user site hook in its HOME; the next run starts with a fresh HOME.
    assert_eq!(
        python(USERCUSTOMIZE, &home, false),
        format!("{home} True\n")
    );
    assert_eq!(python("print('clean')", &home, false), "clean\n");
    // Even within one run, PYTHONNOUSERSITE keeps the planted hook out.
    let both = format!(
        "{USERCUSTOMIZE}\nimport subprocess\nsys.stdout.flush()\nsubprocess.run([sys.executable, '-c', 'print(1)'])"
    );
    assert_eq!(python(&both, &home, true), format!("{home} True\n1\n"));
    // A hook planted in the data dir (the old HOME) by the host side of an earlier version.
    let site = f.data.join(".local/lib/python3.11/site-packages");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("usercustomize.py"), "print('PLANTED')").unwrap();
    assert_eq!(python("print('clean')", &home, true), "clean\n");
}

#[test]
fn setuid_files_in_the_data_dir_cannot_be_made_or_run() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    let p = policy(&f, "setuid");
    // Left by an earlier, less confined run: a setuid copy of `id` owned by the plugin's uid.
    let planted = f.data.join("planted");
    std::fs::copy("/usr/bin/id", &planted).unwrap();
    let code = r#"
import shutil, subprocess
d = sys.argv[1]
shutil.copy("/usr/bin/id", os.path.join(d, "mine"))
for mode in (0o4755, 0o2755, 0o6755):
    attempt(lambda: os.chmod(os.path.join(d, "mine"), mode))
attempt(lambda: os.chmod(os.path.join(d, "mine"), 0o755))
attempt(lambda: os.close(os.open(os.path.join(d, "new"), os.O_CREAT | os.O_WRONLY, 0o4755)))
import stat
attempt(lambda: os.mknod(os.path.join(d, "node"), stat.S_IFREG | 0o4755))
libc = ctypes.CDLL(None, use_errno=True)
def raw_mknod():
    if libc.syscall(133, os.path.join(d, "node2").encode(), stat.S_IFREG | 0o2755, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
attempt(raw_mknod)
attempt(lambda: os.close(os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o6755)))
attempt(lambda: os.mknod(os.path.join(d, "plain"), stat.S_IFREG | 0o644))
attempt(lambda: subprocess.run([os.path.join(d, "planted")]))
attempt(lambda: subprocess.run([os.path.join(d, "mine")]))
r = subprocess.run(["/lib64/ld-linux-x86-64.so.2", os.path.join(d, "mine")], capture_output=True, text=True)
print(r.returncode != 0, "failed to map segment" in r.stderr or "Permission denied" in r.stderr)
"#;
    let (prepared, _) = py(&p, "pass");
    let (uid, _) = prepared.ids().unwrap();
    drop(prepared);
    std::os::unix::fs::chown(&planted, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let data = f.data.display().to_string();
    let got = attempts(&p, code, &[&data]);
    assert_eq!(
        got,
        [
            EPERM,
            EPERM,
            EPERM,
            "ok",
            EPERM,
            EPERM,
            EPERM,
            EPERM,
            "ok",
            EACCES,
            EACCES,
            "True True"
        ]
    );
    assert!(!f.data.join("node").exists() && !f.data.join("node2").exists());
    // The mode bits were refused, not just ignored.
    let mode = std::fs::metadata(f.data.join("mine"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
}

#[test]
fn only_unix_sockets_without_network_and_no_vsock_with_it() {
    let f = fixture();
    let code = "for family in map(int, sys.argv[1:]):\n    attempt(lambda: socket.socket(family, socket.SOCK_STREAM if family in (1, 2, 10, 40) else socket.SOCK_RAW).close())\nattempt(lambda: socket.socketpair(socket.AF_UNIX))\n";
    // AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_VSOCK, AF_BLUETOOTH, AF_ALG.
    let families = ["1", "2", "10", "16", "17", "40", "31", "38"];
    let got = attempts(&policy(&f, "families"), code, &families);
    if !kernel().seccomp {
        return;
    }
    assert_eq!(got[0], "ok");
    for (family, errno) in families.iter().zip(&got).skip(1) {
        assert_eq!(errno, EACCES, "family {family}");
    }
    assert_eq!(got[8], "ok");
    // Granted network: IP stays open, VSOCK and the rest are still refused.
    let mut p = policy(&f, "families-net");
    p.net_connect = vec![("127.0.0.1".into(), 9)];
    let got = attempts(&p, code, &["2", "10", "40", "17", "31"]);
    assert_eq!(got, ["ok", "ok", EACCES, EACCES, EACCES, "ok"]);
}

#[test]
fn a_package_below_a_0700_directory_is_reachable_inside() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    let closed = f.base.join("closed");
    let package = closed.join("deep/package");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(package.join("main.txt"), "deep package\n").unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut p = policy(&f, "closed");
    p.package_dir = package.clone();
    let (_p, o) = sh(&p, &format!("cat {}/main.txt", package.display()));
    assert_eq!(stdout(&o), "deep package\n", "{}", stderr(&o));
    // Control: the same package without the mount namespace is behind the 0700 directory.
    p.disabled = vec![Layer::MountNamespace];
    let (_p, o) = sh(&p, &format!("cat {}/main.txt", package.display()));
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
}

#[test]
fn system_paths_package_and_root_are_read_only_inside() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    let script = format!(
        "touch /usr/x; touch {}/x; mkdir /new; touch /dev/x; cat /etc/shadow; echo ok > x; cat x",
        f.package.display()
    );
    let (_p, o) = sh(&policy(&f, "ro"), &script);
    let err = stderr(&o);
    for expect in [
        "touch: cannot touch '/usr/x': Read-only file system",
        "/package/x': Read-only file system",
        "/new’: Read-only file system",
        "touch: cannot touch '/dev/x': Permission denied",
        "/etc/shadow: No such file or directory",
    ] {
        assert!(err.contains(expect), "{expect} missing from {err}");
    }
    assert_eq!(stdout(&o), "ok\n");
}

#[test]
fn the_disk_limit_caps_each_file_with_sigxfsz() {
    let f = fixture();
    let mut p = policy(&f, "disk");
    p.disk_bytes = Some(1 << 20);
    let (prepared, o) = sh(&p, "exec head -c 2097152 /dev/zero > big");
    assert_eq!(o.status.signal(), Some(libc::SIGXFSZ), "{}", stderr(&o));
    assert_eq!(
        std::fs::metadata(f.data.join("big")).unwrap().len(),
        1 << 20
    );
    let rlimits = &prepared
        .layers()
        .iter()
        .find(|s| s.layer == Layer::Rlimits)
        .unwrap()
        .detail;
    assert!(rlimits.contains("fsize 1048576"), "{rlimits}");
}

#[test]
fn cgroup_cpu_quota_is_written() {
    let f = fixture();
    let mut p = policy(&f, "quota");
    p.cpu_quota = Some(0.5);
    let prepared = Sandbox::prepare(&p).unwrap();
    if !kernel().cgroup.has("cpu") {
        return;
    }
    let paths = prepared.cgroup_paths();
    let cpu = paths
        .iter()
        .find_map(|d| {
            std::fs::read_to_string(d.join("cpu.cfs_quota_us"))
                .or_else(|_| std::fs::read_to_string(d.join("cpu.max")))
                .ok()
        })
        .unwrap();
    assert!(
        cpu.trim() == "50000" || cpu.trim() == "50000 100000",
        "{cpu}"
    );
    let detail = &prepared.layers()[0].detail;
    assert!(detail.contains("cpu quota 0.5 cores"), "{detail}");
}

/// Resident memory of `pid` in KiB (`VmRSS`), if it is still there.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The first child of `pid`, if it has one.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_owned())
}

#[test]
fn the_pid_namespace_inits_keep_none_of_the_hosts_heap() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    let p = policy(&f, "inits");
    // 256 MiB of touched heap in the "host" when the child is spawned.
    let ballast = std::hint::black_box(vec![7u8; 256 << 20]);
    let prepared = Sandbox::prepare(&p).unwrap();
    assert_eq!(state(&prepared, Layer::PidNamespace), LayerState::Applied);
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("30").current_dir(&p.data_dir).stdin(Stdio::null());
    prepared.apply_to(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    // X is the direct child; Y (the namespace's init, sharing X's memory) and the plugin are
    // X's children.
    let x = child.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let settled = loop {
        let below = children(x);
        let exec = below.iter().any(|&p| comm(p).as_deref() == Some("sleep"));
        let y = below
            .iter()
            .copied()
            .find(|&p| comm(p).is_some_and(|c| c != "sleep"));
        let (rx, ry) = (rss_kib(x), y.and_then(rss_kib));
        // Below 32 MiB each while the host holds 256 MiB: the inherited heap was dropped.
        if exec && rx.is_some_and(|r| r < 32 << 10) && ry.is_some_and(|r| r < 32 << 10) {
            break Ok(());
        }
        if std::time::Instant::now() > deadline {
            break Err(format!("X {rx:?} KiB, Y {ry:?} KiB, plugin exec'd: {exec}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    settled.unwrap();
    assert_eq!(ballast[ballast.len() - 1], 7);
}

/// The end report's status, read within 10 s.
fn read_report(report: plugd_sandbox::EndReport) -> std::process::ExitStatus {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut pipe = std::fs::File::from(report.into_fd());
    let mut poll = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one descriptor we own.
    assert_eq!(unsafe { libc::poll(&mut poll, 1, 10_000) }, 1, "no report");
    let mut bytes = [0u8; 4];
    pipe.read_exact(&mut bytes).unwrap();
    plugd_sandbox::EndReport::decode(bytes)
}

#[test]
fn the_end_report_comes_once_nothing_of_the_plugin_runs() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    let mut p = policy(&f, "end-report");
    // Only the PID namespace ends the orphan.
    p.disabled = vec![Layer::Cgroup];
    for (script, code, signal) in [
        (
            "setsid sh -c 'sleep 300 &' >/dev/null; echo up; exit 7",
            Some(7),
            None,
        ),
        ("echo up; kill -SEGV $$", None, Some(libc::SIGSEGV)),
    ] {
        let prepared = Sandbox::prepare(&p).unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script])
            .current_dir(&p.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let report = prepared
            .apply_reporting_end(&mut cmd)
            .unwrap()
            .expect("a PID namespace has a report");
        let mut child = cmd.spawn().unwrap();
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid_for_children", child.id())).unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "up\n");
        let status = read_report(report);
        assert_eq!((status.code(), status.signal()), (code, signal), "{script}");
        // Reported only once the namespace is empty: no process of it left, at once.
        let left: Vec<i32> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                    .ok()
                    .as_ref()
                    == Some(&ns)
            })
            .collect();
        assert!(
            left.is_empty(),
            "{script}: still in the namespace: {left:?}"
        );
        // The child itself ends the same way.
        let own = child.wait().unwrap();
        assert_eq!((own.code(), own.signal()), (code, signal), "{script}");
    }
    // Without a PID namespace there is nothing to report: wait for the child.
    p.disabled.push(Layer::PidNamespace);
    let prepared = Sandbox::prepare(&p).unwrap();
    let mut cmd = Command::new("/bin/true");
    assert!(prepared.apply_reporting_end(&mut cmd).unwrap().is_none());
}

#[test]
fn forwarded_signals_reach_the_plugins_process_group() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    // The plugin ignores SIGTERM and waits for a child of its own, which ends on SIGTERM (and
    // on its own after 10 s, with status 3, if none comes). The child blocks SIGTERM and waits
    // for it with `sigtimedwait`: a Python handler plus `signal.pause()` loses a signal that
    // lands between the interpreter's last check and the `pause` (seen under load).
    let code = r#"
import os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an ignored signal is discarded, even blocked
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    print("up", flush=True)
    os._exit(0 if signal.sigtimedwait({signal.SIGTERM}, 10) else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let p = policy(&f, "signals");
    let (_prepared, mut child, line) = start_program(&p, PYTHON, code);
    assert_eq!(line, "up");
    // SAFETY: kill with a pid we spawned (X, which forwards).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the plugin's child got no SIGTERM: {status:?}"
    );
}

#[test]
fn the_namespaces_init_is_invisible_to_the_plugin() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    // pid 1 is a copy of the host (its command line, its environment). Landlock refuses the
    // plugin `/proc` beyond its grants (EACCES); below that, the namespace's `/proc` does not
    // even show pid 1 (`hidepid=2`: ENOENT).
    let code =
        "attempt(lambda: open('/proc/1/cmdline').close())\nattempt(lambda: os.stat('/proc/1'))\n";
    let got = attempts(&policy(&f, "hidepid"), code, &[]);
    assert_eq!(got, [ENOENT, ENOENT]);
}

/// The CPUs `pid` (or `thread-self`) may run on, from its `Cpus_allowed_list` (`0-1,3`).
fn cpus_allowed(pid: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(first.parse::<usize>().unwrap()..=last.parse::<usize>().unwrap());
    }
    cpus
}

#[test]
fn a_child_started_on_the_spawning_cpu_may_run_on_every_cpu_the_host_may() {
    if !namespaces() {
        return;
    }
    let f = fixture();
    let p = policy(&f, "cpus");
    let prepared = Sandbox::prepare(&p).unwrap();
    // The plugin's `/proc` is out of its reach (Landlock): it asks the kernel.
    let code = "import os, sys, time\nprint(','.join(map(str, sorted(os.sched_getaffinity(0)))), flush=True)\ntime.sleep(300)";
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-c", code])
        .current_dir(&p.data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    prepared.apply_to(&mut cmd);
    let host = cpus_allowed("thread-self");
    let mut child = prepared.spawn_here(|| cmd.spawn()).unwrap();
    // The spawning thread has its own mask back.
    assert_eq!(cpus_allowed("thread-self"), host);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    // The plugin, its supervisor X (the child) and the namespace's init Y (X's other child).
    let plugin: Vec<usize> = line.trim().split(',').map(|c| c.parse().unwrap()).collect();
    assert_eq!(plugin, host, "the plugin");
    let x = child.id();
    assert_eq!(cpus_allowed(&x.to_string()), host, "X");
    let inits: Vec<u32> = children(x)
        .into_iter()
        .filter(|&c| comm(c).as_deref() != Some("python3"))
        .collect();
    assert_eq!(inits.len(), 1, "X's children: {:?}", children(x));
    assert_eq!(cpus_allowed(&inits[0].to_string()), host, "Y");
    child.kill().unwrap();
    child.wait().unwrap();
}
