//! Integration tests of the sandbox layers with real children (`sh -c`, `python3 -c`).
//!
//! Each test asserts the specific failure a layer produces. Tests that depend on a layer the
//! kernel or host may lack check [`probe`] and then assert that the layer is reported as
//! unavailable instead, so they still fail if the report is wrong.

use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use plugd_sandbox::{
    Layer, LayerState, Prepared, Probe, Sandbox, SandboxError, SandboxPolicy, probe,
};

const PYTHON: &str = "/usr/bin/python3";

struct Fixture {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    package: PathBuf,
    data: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_owned();
    // tempdir is 0700; the dedicated uid must be able to traverse it.
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let package = base.join("package");
    let data = base.join("data");
    std::fs::create_dir(&package).unwrap();
    std::fs::create_dir(&data).unwrap();
    std::fs::write(package.join("main.txt"), "package file\n").unwrap();
    std::fs::write(base.join("secret.txt"), "outside\n").unwrap();
    Fixture {
        _tmp: tmp,
        base,
        package,
        data,
    }
}

fn policy(f: &Fixture, name: &str) -> SandboxPolicy {
    let mut p = SandboxPolicy::new(name, &f.package, &f.data);
    p.read_paths = [
        "/usr",
        "/lib",
        "/lib64",
        "/bin",
        "/etc/ld.so.cache",
        "/etc/localtime",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    p
}

/// The policy without the mount namespace, to see what Landlock alone refuses (inside the
/// mount namespace most of those paths do not even exist).
fn landlock_only(f: &Fixture, name: &str) -> SandboxPolicy {
    let mut p = policy(f, name);
    p.disabled = vec![Layer::MountNamespace];
    p
}

fn run(policy: &SandboxPolicy, program: &str, args: &[&str]) -> (Prepared, Output) {
    let prepared = Sandbox::prepare(policy).unwrap();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(&policy.data_dir)
        .stdin(Stdio::null());
    prepared.apply_to(&mut cmd);
    let output = cmd.output().unwrap();
    (prepared, output)
}

fn sh(policy: &SandboxPolicy, script: &str) -> (Prepared, Output) {
    run(policy, "/bin/sh", &["-c", script])
}

fn py(policy: &SandboxPolicy, code: &str) -> (Prepared, Output) {
    run(policy, PYTHON, &["-c", code])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn state(p: &Prepared, layer: Layer) -> LayerState {
    p.layers().iter().find(|s| s.layer == layer).unwrap().state
}

fn kernel() -> Probe {
    probe()
}

#[test]
fn probe_report_names_every_layer() {
    let report = kernel().to_string();
    for line in [
        "cgroup:",
        "network namespace:",
        "user namespace:",
        "rlimits:",
        "dedicated uid:",
        "landlock:",
        "seccomp:",
    ] {
        assert!(report.contains(line), "{line} missing from:\n{report}");
    }
}

#[test]
fn layers_are_reported_in_order_and_match_the_probe() {
    let f = fixture();
    let k = kernel();
    let prepared = Sandbox::prepare(&policy(&f, "order")).unwrap();
    let layers: Vec<Layer> = prepared.layers().iter().map(|s| s.layer).collect();
    assert_eq!(layers, Layer::ALL);
    let expect = |available: bool| {
        if available {
            LayerState::Applied
        } else {
            LayerState::Unavailable
        }
    };
    assert_eq!(state(&prepared, Layer::Rlimits), LayerState::Applied);
    assert_eq!(state(&prepared, Layer::Uid), expect(k.root));
    for layer in [
        Layer::IpcNamespace,
        Layer::PidNamespace,
        Layer::MountNamespace,
    ] {
        assert_eq!(state(&prepared, layer), expect(k.root), "{layer}");
    }
    assert_eq!(
        state(&prepared, Layer::Landlock),
        expect(k.landlock_abi > 0)
    );
    assert_eq!(state(&prepared, Layer::Seccomp), expect(k.seccomp));
    assert_eq!(
        state(&prepared, Layer::NetworkNamespace),
        expect(k.network_namespace)
    );
    assert_eq!(
        state(&prepared, Layer::Cgroup),
        expect(k.cgroup.has("memory") || k.cgroup.has("pids"))
    );
}

#[test]
fn reading_etc_shadow_is_denied() {
    let f = fixture();
    let (_p, o) = sh(&landlock_only(&f, "shadow"), "cat /etc/shadow");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
}

#[test]
fn reading_outside_package_and_read_paths_is_denied_inside_is_allowed() {
    let f = fixture();
    let script = format!(
        "cat {}/main.txt && cat {}/secret.txt",
        f.package.display(),
        f.base.display()
    );
    let (_p, o) = sh(&landlock_only(&f, "read"), &script);
    assert_eq!(stdout(&o), "package file\n");
    assert!(
        stderr(&o).contains("secret.txt: Permission denied"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn writing_outside_the_data_dir_is_denied() {
    let f = fixture();
    let script = format!(
        "echo x > {}/new.txt; echo x > {}/new.txt; echo x > /tmp/plugd-sandbox-escape",
        f.base.display(),
        f.package.display()
    );
    let (_p, o) = sh(&landlock_only(&f, "write-out"), &script);
    let err = stderr(&o);
    assert_eq!(err.matches("Permission denied").count(), 3, "{err}");
    assert!(!f.base.join("new.txt").exists() && !f.package.join("new.txt").exists());
}

#[test]
fn writing_inside_the_data_dir_works_and_belongs_to_the_dedicated_uid() {
    let f = fixture();
    let (p, o) = sh(
        &policy(&f, "write-in"),
        "mkdir sub && echo hello > sub/f.txt && cat sub/f.txt && id -u",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let uid_line = stdout(&o).lines().nth(1).unwrap().to_owned();
    let meta = std::fs::metadata(f.data.join("sub/f.txt")).unwrap();
    match p.ids() {
        Some((uid, _)) => {
            assert_eq!(uid_line, uid.to_string());
            assert_eq!(meta.uid(), uid);
            assert_eq!(std::fs::metadata(&f.data).unwrap().uid(), uid);
        }
        None => assert!(!kernel().root),
    }
}

#[test]
fn a_symlink_from_the_data_dir_to_outside_is_not_followed() {
    let f = fixture();
    symlink(f.base.join("secret.txt"), f.data.join("link")).unwrap();
    let (_p, o) = sh(&landlock_only(&f, "symlink"), "cat link");
    assert!(
        stderr(&o).contains("link: Permission denied"),
        "{}",
        stderr(&o)
    );
    // The ownership walk changed the link, not its target.
    assert_eq!(
        std::fs::metadata(f.base.join("secret.txt")).unwrap().uid(),
        unsafe { libc::geteuid() }
    );
}

const CONNECT: &str = r#"
import socket, sys
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
except OSError as e:
    print("socket", e.errno); sys.exit()
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
    print("connected")
except OSError as e:
    print("connect", e.errno)
"#;

fn connect(policy: &SandboxPolicy, port: u16) -> String {
    let (_p, o) = run(policy, PYTHON, &["-c", CONNECT, &port.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().to_owned()
}

#[test]
fn no_network_socket_is_refused_by_seccomp() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let expected = if kernel().seccomp {
        "socket 13"
    } else {
        "connect 13"
    };
    assert_eq!(connect(&policy(&f, "net-seccomp"), port), expected);
}

#[test]
fn no_network_connect_is_refused_by_landlock_without_seccomp() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = policy(&f, "net-landlock");
    p.disabled = vec![Layer::Seccomp];
    // EACCES from Landlock (ABI ≥ 4) comes before routing; without it the empty netns answers.
    let expected = if kernel().landlock_net() {
        "connect 13"
    } else {
        "connect 101"
    };
    assert_eq!(connect(&p, port), expected);
}

#[test]
fn no_network_connect_is_unreachable_in_the_empty_netns() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = policy(&f, "net-netns");
    p.disabled = vec![Layer::Seccomp, Layer::Landlock];
    let expected = if kernel().network_namespace {
        "connect 101"
    } else {
        "connected"
    };
    assert_eq!(connect(&p, port), expected); // ENETUNREACH: loopback is down
}

#[test]
fn granted_port_connects_and_other_ports_are_refused() {
    let f = fixture();
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut p = policy(&f, "net-granted");
    p.net_connect = vec![("127.0.0.1".into(), allowed.local_addr().unwrap().port())];
    assert_eq!(
        connect(&p, allowed.local_addr().unwrap().port()),
        "connected"
    );
    let expected = if kernel().landlock_net() {
        "connect 13"
    } else {
        "connected"
    };
    assert_eq!(connect(&p, other.local_addr().unwrap().port()), expected);
}

#[test]
fn fork_bomb_is_bounded_with_eagain() {
    let f = fixture();
    let mut p = policy(&f, "forkbomb");
    p.pids_max = Some(8);
    let code = r#"
import os, time
n = 0
try:
    for _ in range(100):
        if os.fork() == 0:
            time.sleep(3); os._exit(0)
        n += 1
    print("unbounded", n)
except BlockingIOError as e:
    print("EAGAIN", e.errno, n)
"#;
    let (prepared, o) = py(&p, code);
    let out = stdout(&o);
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields[..2], ["EAGAIN", "11"], "{out} {}", stderr(&o));
    assert!(fields[2].parse::<u64>().unwrap() < 8, "{out}");
    prepared.kill_all();
}

#[test]
fn allocation_past_the_memory_limit_raises_memory_error() {
    let f = fixture();
    let mut p = policy(&f, "memory-rlimit");
    p.memory_bytes = Some(64 << 20);
    let (_p, o) = py(&p, "b = bytearray(128 << 20)");
    assert!(stderr(&o).contains("MemoryError"), "{}", stderr(&o));
}

#[test]
fn touching_memory_past_the_cgroup_limit_is_oom_killed() {
    let f = fixture();
    let mut p = policy(&f, "memory-oom");
    p.memory_bytes = Some(64 << 20);
    // Shared anonymous memory is not counted by RLIMIT_DATA, so only the cgroup can stop it.
    let code = "import mmap\nm = mmap.mmap(-1, 256 << 20)\nfor i in range(0, 256 << 20, 4096): m[i] = 1\nprint('survived')";
    let (prepared, o) = py(&p, code);
    if kernel().cgroup.has("memory") {
        assert_eq!(o.status.signal(), Some(libc::SIGKILL), "{}", stderr(&o));
        assert!(prepared.oom_killed());
        let peak = prepared.memory_peak().unwrap();
        assert!(peak > 32 << 20 && peak <= 64 << 20, "peak {peak}");
    } else {
        assert_eq!(stdout(&o), "survived\n");
        assert!(!prepared.oom_killed());
    }
}

#[test]
fn cpu_spin_past_rlimit_cpu_is_killed() {
    let f = fixture();
    let mut p = policy(&f, "cpu");
    p.cpu_time = Some(Duration::from_millis(500)); // rounds up to 1s
    let (prepared, o) = sh(&p, "while :; do :; done");
    let signal = o.status.signal();
    assert!(
        signal == Some(libc::SIGXCPU) || signal == Some(libc::SIGKILL),
        "{:?}",
        o.status
    );
    if kernel().cgroup.has("cpuacct")
        || kernel().cgroup.version == Some(plugd_sandbox::CgroupVersion::V2)
    {
        assert!(prepared.cpu_usage().unwrap() >= Duration::from_millis(900));
    }
}

const KILL: &str = "import os, signal, sys\ntry:\n    os.kill(int(sys.argv[1]), signal.SIGTERM); print('sent')\nexcept OSError as e:\n    print('kill', e.errno)";

fn kill_sibling(policy: &SandboxPolicy) -> String {
    let mut sibling = Command::new("sleep").arg("30").spawn().unwrap();
    let (_p, o) = run(policy, PYTHON, &["-c", KILL, &sibling.id().to_string()]);
    let alive = sibling.try_wait().unwrap().is_none();
    sibling.kill().unwrap();
    sibling.wait().unwrap();
    format!("{} alive={alive}", stdout(&o).trim())
}

#[test]
fn signalling_a_process_outside_is_denied_by_uid() {
    let f = fixture();
    let expected = if kernel().root || kernel().landlock_scope() {
        "kill 1 alive=true"
    } else {
        "sent alive=false"
    };
    let mut p = policy(&f, "kill-uid");
    p.disabled = vec![Layer::PidNamespace];
    assert_eq!(kill_sibling(&p), expected);
}

#[test]
fn signalling_a_process_outside_is_denied_by_landlock_scope() {
    let f = fixture();
    let mut p = policy(&f, "kill-scope");
    p.disabled = vec![Layer::Uid, Layer::PidNamespace];
    let expected = if kernel().landlock_scope() {
        "kill 1 alive=true"
    } else {
        "sent alive=false"
    };
    assert_eq!(kill_sibling(&p), expected);
}

#[test]
fn unshare_ptrace_and_clone3_are_denied_by_seccomp() {
    let f = fixture();
    let code = r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def errno(r): return 0 if r == 0 else ctypes.get_errno()
print("unshare", errno(libc.unshare(0x10000000)))
print("ptrace", errno(libc.ptrace(0, 0, None, None)))
print("clone3", errno(libc.syscall(435, None, 0)))
"#;
    let (_p, o) = py(&policy(&f, "seccomp"), code);
    assert!(o.status.success(), "{}", stderr(&o));
    if kernel().seccomp {
        assert_eq!(stdout(&o), "unshare 1\nptrace 1\nclone3 38\n");
    }
}

#[test]
fn the_child_environment_is_left_alone() {
    let f = fixture();
    let prepared = Sandbox::prepare(&policy(&f, "env")).unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "echo \"$PLUGD_TEST_VAR|$PATH\""])
        .env("PLUGD_TEST_VAR", "kept")
        .current_dir(&f.data);
    prepared.apply_to(&mut cmd);
    let o = cmd.output().unwrap();
    assert_eq!(
        stdout(&o),
        format!("kept|{}\n", std::env::var("PATH").unwrap())
    );
}

#[test]
fn dropping_kills_leftovers_and_removes_the_cgroup() {
    let f = fixture();
    // Without the PID namespace the orphan outlives the child: only the cgroup can end it.
    let mut p = policy(&f, "drop");
    p.disabled = vec![Layer::PidNamespace];
    let (prepared, o) = sh(&p, "sleep 30 >/dev/null 2>&1 & echo $!");
    let pid: i32 = stdout(&o).trim().parse().unwrap();
    let paths = prepared.cgroup_paths();
    assert_eq!(
        paths.is_empty(),
        state(&prepared, Layer::Cgroup) != LayerState::Applied
    );
    drop(prepared);
    for path in &paths {
        assert!(!path.exists(), "{} left behind", path.display());
    }
    if !paths.is_empty() {
        // Killed and reaped by init (we are not its parent), so it is gone or a zombie.
        assert!(gone(pid), "{pid} survived");
    }
}

/// The child moves itself into every hierarchy of its cgroup before exec (on v1 by its one
/// thread, through `tasks`), so what it starts later is born there too.
#[test]
fn what_the_child_starts_is_in_its_cgroup_in_every_hierarchy() {
    let f = fixture();
    let mut p = policy(&f, "inherit");
    p.disabled = vec![Layer::PidNamespace];
    let (prepared, o) = sh(&p, "sleep 30 >/dev/null 2>&1 & echo $!");
    let pid = stdout(&o).trim().to_owned();
    let paths = prepared.cgroup_paths();
    if state(&prepared, Layer::Cgroup) == LayerState::Applied {
        assert!(!paths.is_empty());
    }
    for path in &paths {
        let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == pid),
            "{pid} is not in {}: {procs:?}",
            path.display()
        );
    }
    prepared.kill_all();
}

/// The host pid is gone (or a zombie waiting for its reaper).
fn gone(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.is_empty() || status.contains("State:\tZ")
}

#[test]
fn a_required_layer_that_is_disabled_fails_prepare() {
    let f = fixture();
    let mut p = policy(&f, "strict");
    p.required = vec![Layer::Landlock];
    p.disabled = vec![Layer::Landlock];
    let err = Sandbox::prepare(&p).unwrap_err();
    assert!(matches!(
        err,
        SandboxError::LayerUnavailable {
            layer: Layer::Landlock,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "Sandbox layer `landlock` is required but unavailable: disabled by policy"
    );
}

#[test]
fn a_missing_package_dir_fails_prepare() {
    let f = fixture();
    let mut p = policy(&f, "missing");
    p.package_dir = f.base.join("nope");
    let err = Sandbox::prepare(&p).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "Sandbox path `{}` is unusable: No such file or directory (os error 2)",
            p.package_dir.display()
        )
    );
}

#[test]
fn default_ids_are_stable_and_spread() {
    assert_eq!(
        plugd_sandbox::default_ids("thumbs"),
        plugd_sandbox::default_ids("thumbs")
    );
    assert_ne!(
        plugd_sandbox::default_ids("thumbs"),
        plugd_sandbox::default_ids("thumbs2")
    );
    let (uid, gid) = plugd_sandbox::default_ids("thumbs");
    assert_eq!(uid, gid);
    assert!((1_000_000_000..1_000_000_000 + (1 << 24)).contains(&uid));
}

/// Waits (deadline 10 s) until every pid is gone from the host's `/proc`.
fn wait_gone(pids: &[i32]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !pids.iter().all(|p| gone(*p)) {
        assert!(std::time::Instant::now() < deadline, "survivors: {pids:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

mod hostile;
mod uids;
