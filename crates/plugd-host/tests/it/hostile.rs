//! Hostile plugins under the sandbox: each attack fails with its specific error (an errno, an
//! OOM kill, a limit) while a well-behaved `bystander` keeps serving throughout.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use plugd_host::{Host, PluginState, TrustLevel};
use plugd_process::SandboxConfig;
use plugd_runtime::LogSource;
use serde_json::{Value, json};

use crate::support::*;

const EACCES: i64 = 13;
const EPERM: i64 = 1;
const EAGAIN: i64 = 11;
const ENOENT: i64 = 2;
const ESRCH: i64 = 3;
const EROFS: i64 = 30;
const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

/// Prepended to every hostile plugin: `attempt` turns an `OSError` into `{errno, error}`, so the
/// test can assert the exact errno the kernel gave.
const PRELUDE: &str = r#"import mmap, socket
def attempt(fn):
    try:
        return {"ok": repr(fn())}
    except OSError as e:
        return {"errno": e.errno, "error": str(e)}
def read(path):
    with open(path, "rb") as f:
        return f.read()
def write(path):
    with open(path, "w") as f:
        return f.write("pwned")
"#;

/// Writes the hostile plugin (its actions after [`PRELUDE`] and `echo`) and the bystander.
fn plugins(f: &Fixture, extra: &str, actions: &str) {
    // Attacks that end in a kill (100 MB frame, OOM) can take seconds on a loaded 2-core
    // machine: give calls room unless the test sets its own `call_timeout`.
    let limits = if extra.contains("call_timeout") {
        extra.to_owned()
    } else if extra.contains("[limits]") {
        extra.replace("[limits]\n", "[limits]\ncall_timeout = \"60s\"\n")
    } else {
        format!("{extra}[limits]\ncall_timeout = \"60s\"\n")
    };
    f.sdk_plugin(
        "hostile",
        "1.0.0",
        &[],
        &limits,
        &format!("{PRELUDE}{ECHO}{actions}"),
    );
    f.sdk_plugin("bystander", "1.0.0", &[], "", ECHO);
}

fn sandbox() -> SandboxConfig {
    SandboxConfig {
        strict: false,
        ..SandboxConfig::default()
    }
}

/// Starts a sandboxed host and checks that both plugins run.
async fn start(f: &Fixture, sandbox: SandboxConfig) -> Host {
    let host = f.sandboxed_host(sandbox, |_| {});
    host.start().await.unwrap();
    assert_eq!(states(&host), ["bystander running", "hostile running"]);
    host
}

/// Calls a hostile action and returns its JSON value.
async fn attack(host: &Host, action: &str, payload: Value) -> Value {
    let out = call(host, "hostile", action, &payload.to_string())
        .await
        .unwrap_or_else(|e| panic!("`{action}` failed: {e}"));
    serde_json::from_str::<Value>(&out).unwrap()["value"].take()
}

/// The errno of an `attempt`, with the whole result for the failure message.
#[track_caller]
fn assert_errno(got: &Value, errno: i64) {
    assert_eq!(got["errno"].as_i64(), Some(errno), "{got}");
}

/// The bystander still answers, from the same process it started with.
async fn assert_bystander_serves(host: &Host, pid: Option<u32>) {
    assert_eq!(
        call(host, "bystander", "echo", "7").await.unwrap(),
        r#"{"value":7}"#
    );
    let p = info(host, "bystander");
    assert_eq!((p.pid, p.restarts), (pid, 0));
}

async fn assert_hostile_serves(host: &Host) {
    assert_eq!(
        call(host, "hostile", "echo", "1").await.unwrap(),
        r#"{"value":1}"#
    );
}

/// A world-readable (and writable) file outside every package, owned by the test.
fn secret(f: &Fixture) -> PathBuf {
    let path = f.dir.path().join("secret.txt");
    std::fs::write(&path, "the host's secret").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    path
}

fn text(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// Waits for the hostile plugin's `n`-th restart and returns its last error.
async fn restarted(host: &Host, n: u32) -> String {
    eventually("hostile restarts", || {
        running(host, "hostile") && info(host, "hostile").restarts == n
    })
    .await;
    info(host, "hostile").last_error.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_outside_the_package_is_denied() {
    let f = Fixture::sandboxed();
    let actions = "@plugin.action()\nasync def read_all(p):\n    return {path: attempt(lambda: read(path)) for path in p['paths']}\n";
    plugins(&f, "", actions);
    let secret = secret(&f);
    let host = start(&f, sandbox()).await;
    let bystander = info(&host, "bystander").pid;

    // The plugin runs in its own mount namespace, from a staged copy of its package (its working
    // directory): the host's files, its own source tree and the bystander's do not exist there
    // (Landlock would refuse them with EACCES beneath that; the sandbox crate tests that layer).
    let paths = [
        "/etc/shadow".to_owned(),
        "/root/.bashrc".to_owned(),
        text(&secret),
        text(&f.plugins().join("hostile/main.py")),
        text(&f.plugins().join("bystander/main.py")),
        "main.py".to_owned(),
    ];
    let got = attack(&host, "read_all", json!({ "paths": paths })).await;
    for path in &paths[..5] {
        assert_errno(&got[path], ENOENT);
    }
    // Control: the staged package stays readable.
    assert!(got["main.py"]["ok"].is_string(), "{got}");
    assert_bystander_serves(&host, bystander).await;
    assert_hostile_serves(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_outside_the_data_dir_is_denied() {
    let f = Fixture::sandboxed();
    let actions = "@plugin.action()\nasync def write_all(p):\n    return {path: attempt(lambda: write(path)) for path in p['paths']}\n";
    plugins(&f, "", actions);
    let secret = secret(&f);
    let host = start(&f, sandbox()).await;
    let bystander = info(&host, "bystander").pid;

    // `/tmp` inside is the plugin's own tmpfs: writing there works and never reaches the host's.
    let tmp = PathBuf::from(format!("/tmp/plugd-hostile-{}", std::process::id()));
    // `main.py` is the plugin's own staged code (its working directory), mounted read-only.
    let data = f.dir.path().join("state/data/hostile/ok.txt");
    let paths = [text(&tmp), text(&secret), "main.py".to_owned(), text(&data)];
    let got = attack(&host, "write_all", json!({ "paths": paths })).await;
    assert_eq!(got[text(&tmp)]["ok"], "5", "{got}");
    assert!(!tmp.exists(), "the host's /tmp is untouched");
    // Creating a path outside the granted directories is Landlock's refusal, even where the
    // parent does not exist inside.
    assert_errno(&got[text(&secret)], EACCES);
    assert_errno(&got["main.py"], EROFS);
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "the host's secret"
    );
    // Control: the data dir is writable.
    assert_eq!(got[text(&data)]["ok"], "5", "{got}");
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "pwned");
    assert_bystander_serves(&host, bystander).await;
    assert_hostile_serves(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_out_of_the_data_dir_are_not_followed() {
    let f = Fixture::sandboxed();
    let actions = r#"@plugin.action()
async def escape(p):
    link = os.path.join(os.environ["PLUGD_DATA_DIR"], "escape")
    os.symlink(p["target"], link)
    return {"read": attempt(lambda: read(link)), "write": attempt(lambda: write(link))}
"#;
    plugins(&f, "", actions);
    let secret = secret(&f);
    let host = start(&f, sandbox()).await;
    let bystander = info(&host, "bystander").pid;

    let got = attack(&host, "escape", json!({ "target": text(&secret) })).await;
    // The link itself may be made (it is a file in the data dir); following it is denied.
    let link = f.dir.path().join("state/data/hostile/escape");
    assert_eq!(std::fs::read_link(&link).unwrap(), secret);
    // Its target does not exist inside the plugin's root; creating it is Landlock's refusal.
    assert_errno(&got["read"], ENOENT);
    assert_errno(&got["write"], EACCES);
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "the host's secret"
    );
    assert_bystander_serves(&host, bystander).await;
    assert_hostile_serves(&host).await;
    host.shutdown().await;
}

const CONNECT: &str = r#"@plugin.action()
async def connect(p):
    def go(family, host):
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.settimeout(2)
            s.connect((host, p["port"]))
            return "connected"
        finally:
            s.close()
    return {"v4": attempt(lambda: go(socket.AF_INET, "127.0.0.1")),
            "v6": attempt(lambda: go(socket.AF_INET6, "::1"))}
@plugin.action()
async def bind(p):
    def go():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()
        finally:
            s.close()
    return attempt(go)
"#;

/// No connection reached `listener`.
fn assert_untouched(listener: &TcpListener) {
    listener.set_nonblocking(true).unwrap();
    let err = listener.accept().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_without_network_cannot_open_an_ip_socket() {
    let f = Fixture::sandboxed();
    plugins(&f, "", CONNECT);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host = start(&f, sandbox()).await;
    let bystander = info(&host, "bystander").pid;

    // Seccomp refuses IP sockets outright (EACCES), so the empty network namespace (where the
    // connect would fail with ENETUNREACH) is never even reached.
    let got = attack(&host, "connect", json!({ "port": port })).await;
    assert_errno(&got["v4"], EACCES);
    assert_errno(&got["v6"], EACCES);
    assert_errno(&attack(&host, "bind", json!({})).await, EACCES);
    assert_untouched(&listener);
    assert_bystander_serves(&host, bystander).await;
    assert_hostile_serves(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_plugin_connects_only_to_its_granted_port() {
    let f = Fixture::sandboxed();
    let key = trusted_signing_key(&f);
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed_port = allowed.local_addr().unwrap().port();
    let other_port = other.local_addr().unwrap().port();
    plugins(
        &f,
        &format!("[permissions]\nnet.connect = [\"127.0.0.1:{allowed_port}\"]\n"),
        CONNECT,
    );
    plugd_trust::sign_package(&f.plugins().join("hostile"), &key).unwrap();
    let host = start(&f, sandbox()).await;
    let p = info(&host, "hostile");
    assert!(matches!(p.trust, Some(TrustLevel::Trusted { .. })));
    assert_eq!(p.denials, 0);
    let detail = |layer: &str| {
        p.details
            .iter()
            .find(|(k, _)| k == &format!("sandbox.{layer}"))
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(
        detail("netns"),
        "skipped: network granted: stays in the host network namespace"
    );
    let landlock = detail("landlock");
    assert!(
        landlock.contains(&format!(
            "TCP connect to ports {allowed_port} only, no TCP bind"
        )),
        "{landlock}"
    );
    let bystander = info(&host, "bystander").pid;

    // Landlock allows TCP connect by port only: the other port is refused with EACCES.
    let got = attack(&host, "connect", json!({ "port": other_port })).await;
    assert_errno(&got["v4"], EACCES);
    assert_errno(&got["v6"], EACCES);
    assert_untouched(&other);
    // No TCP port may be bound, so the plugin cannot serve anything either.
    assert_errno(&attack(&host, "bind", json!({})).await, EACCES);
    // Control: the granted port is reachable.
    let got = attack(&host, "connect", json!({ "port": allowed_port })).await;
    assert_eq!(got["v4"]["ok"], "'connected'", "{got}");
    allowed.accept().unwrap();
    assert_bystander_serves(&host, bystander).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_environment_is_out_of_reach() {
    let f = Fixture::sandboxed();
    let actions = r#"@plugin.action()
async def env(p):
    return {"environ": dict(os.environ),
            "proc": attempt(lambda: read("/proc/%d/environ" % p["host"]))}
"#;
    plugins(&f, "", actions);
    let host = start(&f, sandbox()).await;
    let bystander = info(&host, "bystander").pid;

    let ours: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("CARGO"))
        .collect();
    assert!(!ours.is_empty(), "cargo runs this test with `CARGO_*` set");
    let got = attack(&host, "env", json!({ "host": std::process::id() })).await;
    let environ = got["environ"].as_object().unwrap();
    for name in &ours {
        assert!(!environ.contains_key(name), "{name} leaked: {environ:?}");
    }
    assert_eq!(
        environ["PLUGD_DATA_DIR"],
        text(&f.dir.path().join("state/data/hostile"))
    );
    // The plugin has its own PID namespace and `/proc`: the host is not in it.
    assert_errno(&got["proc"], ENOENT);
    assert_bystander_serves(&host, bystander).await;
    assert_hostile_serves(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalling_the_host_or_another_plugin_is_denied() {
    let f = Fixture::sandboxed();
    let actions = "@plugin.action()\nasync def kill(p):\n    return {str(pid): attempt(lambda: os.kill(pid, p['signal'])) for pid in p['pids']}\n";
    plugins(&f, "", actions);
    let host = start(&f, sandbox()).await;
    let bystander = info(&host, "bystander").pid;

    let pids = [std::process::id(), bystander.unwrap()];
    for signal in [SIGTERM, SIGKILL] {
        let got = attack(&host, "kill", json!({ "pids": pids, "signal": signal })).await;
        // Its own PID namespace: the host and the bystander are not even visible.
        for pid in pids {
            assert_errno(&got[pid.to_string()], ESRCH);
        }
    }
    // This test process is the host: it is still here to assert.
    assert_bystander_serves(&host, bystander).await;
    assert_hostile_serves(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_hits_the_pids_limit() {
    let f = Fixture::sandboxed();
    // Children wait on a pipe until the parent closes it, so they all exist at once.
    let actions = r#"@plugin.action()
async def bomb(p):
    r, w = os.pipe()
    pids, failure = [], None
    while len(pids) < 1000:
        try:
            pid = os.fork()
        except OSError as e:
            failure = {"errno": e.errno, "error": str(e)}
            break
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        pids.append(pid)
    os.close(w)
    os.close(r)
    for pid in pids:
        os.waitpid(pid, 0)
    return {"forked": len(pids), "failure": failure}
"#;
    plugins(&f, "", actions);
    let pids_max = 16;
    let host = start(
        &f,
        SandboxConfig {
            pids_max,
            ..sandbox()
        },
    )
    .await;
    let bystander = info(&host, "bystander").pid;

    let first = attack(&host, "bomb", json!({})).await;
    assert_errno(&first["failure"], EAGAIN);
    let forked = first["forked"].as_u64().unwrap();
    assert!(0 < forked && forked < pids_max, "{first}");
    // The children were reaped: the same budget is available again, and the plugin serves.
    let again = attack(&host, "bomb", json!({})).await;
    assert_eq!(again["forked"], first["forked"], "{again}");
    assert_eq!(info(&host, "hostile").restarts, 0);
    assert_bystander_serves(&host, bystander).await;
    assert_hostile_serves(&host).await;
    host.shutdown().await;
}

const MEMORY: &str = r#"@plugin.action()
async def alloc(p):
    try:
        block = bytearray(p["mib"] << 20)
        return "allocated"
    except MemoryError:
        return "MemoryError"
@plugin.action()
async def shared(p):
    # Shared anonymous memory is not counted by RLIMIT_DATA, only by the cgroup.
    m = mmap.mmap(-1, p["mib"] << 20)
    chunk = b"x" * (1 << 20)
    for off in range(0, len(m), len(chunk)):
        m[off:off + len(chunk)] = chunk
    return "touched"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocating_past_the_memory_limit_fails() {
    let f = Fixture::sandboxed();
    plugins(&f, "[limits]\nmemory = \"64MiB\"\n", MEMORY);
    let host = start(&f, sandbox()).await;
    let bystander = info(&host, "bystander").pid;

    // RLIMIT_DATA refuses the allocation: Python raises MemoryError and carries on.
    assert_eq!(
        attack(&host, "alloc", json!({ "mib": 512 })).await,
        "MemoryError"
    );
    assert_eq!(
        attack(&host, "alloc", json!({ "mib": 8 })).await,
        "allocated"
    );
    assert_eq!(info(&host, "hostile").restarts, 0);

    // Memory RLIMIT_DATA does not see is charged to the cgroup, whose OOM killer ends the child.
    let err = call(&host, "hostile", "shared", r#"{"mib": 512}"#)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "plugin_crashed", "{err}");
    let last = restarted(&host, 1).await;
    assert!(
        last.contains("was killed by signal 9 (SIGKILL): it ran out of memory (limit 64 MiB)"),
        "{last}"
    );
    assert_bystander_serves(&host, bystander).await;
    assert_hostile_serves(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_past_the_cpu_limit_of_a_call_fails_it_and_restarts() {
    let f = Fixture::sandboxed();
    // A sync action runs on a worker thread, so health pings keep being answered: the CPU limit,
    // not the ping, ends it.
    let actions = "@plugin.action()\ndef spin(p):\n    while True:\n        pass\n";
    plugins(
        &f,
        "[limits]\ncpu = \"1s\"\ncall_timeout = \"30s\"\n",
        actions,
    );
    let host = start(&f, sandbox()).await;
    let bystander = info(&host, "bystander").pid;

    // `limits.cpu` is CPU time per call: the runtime samples the child's CPU time while the
    // call runs, fails the call past it and restarts the child.
    let err = call(&host, "hostile", "spin", "{}").await.unwrap_err();
    assert_eq!(err.code(), "limit_exceeded", "{err}");
    assert!(
        err.to_string()
            .starts_with("Plugin `hostile` exceeded its cpu limit; hint: its calls used "),
        "{err}"
    );
    restarted(&host, 1).await;
    assert_bystander_serves(&host, bystander).await;
    assert_hostile_serves(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_floods_on_both_streams_are_capped_and_rate_limited() {
    let f = Fixture::sandboxed();
    let actions = r#"@plugin.action()
def flood(p):
    for i in range(20000):
        print("out", i)
        print("err", i, file=sys.stderr)
    sys.stdout.write("o" * 100000 + "\n")
    sys.stderr.write("e" * 100000 + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    return "flooded"
"#;
    plugins(&f, "", actions);
    let host = f.sandboxed_host(sandbox(), |_| {});
    host.start().await.unwrap();
    let bystander = info(&host, "bystander").pid;

    assert_eq!(attack(&host, "flood", json!({})).await, "flooded");
    eventually("the suppression is reported", || {
        log_text(&host, "hostile").contains("log lines of this plugin (more than 200 lines/s)")
    })
    .await;
    let logs = host.logs("hostile", 10_000).unwrap();
    assert!(logs.len() <= 200, "the ring is capped: {}", logs.len());
    assert!(
        logs.iter()
            .all(|l| l.message.len() <= plugd_runtime::MAX_LOG_LINE + " …[cut]".len())
    );
    let from = |source: LogSource, prefix: &str| {
        logs.iter()
            .filter(|l| l.source == source && l.message.starts_with(prefix))
            .count()
    };
    assert!(from(LogSource::Stdout, "out ") > 0);
    assert!(from(LogSource::Stderr, "err ") > 0);
    // Far fewer lines got through than were written: the drop count is in the log.
    let dropped: u64 = log_text(&host, "hostile")
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Dropped ")?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(dropped > 30_000, "dropped {dropped}");
    assert_eq!(info(&host, "hostile").restarts, 0);
    assert_bystander_serves(&host, bystander).await;
    assert_hostile_serves(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_protocol_frame_is_refused() {
    let f = Fixture::sandboxed();
    // A memoryview avoids copying the rest of the frame after every partial write.
    let actions = r#"@plugin.action()
def huge(p):
    data = memoryview(b"[" + b"1," * (50 << 20))
    while data:
        try:
            data = data[os.write(3, data):]
        except BlockingIOError:
            time.sleep(0.001)
"#;
    plugins(&f, "", actions);
    let host = start(&f, sandbox()).await;
    let bystander = info(&host, "bystander").pid;

    let err = call(&host, "hostile", "huge", "{}").await.unwrap_err();
    assert_eq!(err.code(), "plugin_crashed", "{err}");
    let expect = "its protocol stream broke: Frame exceeds the 16777216-byte limit";
    assert!(err.to_string().contains(expect), "{err}");
    let last = restarted(&host, 1).await;
    assert!(last.contains(expect), "{last}");
    assert_bystander_serves(&host, bystander).await;
    assert_hostile_serves(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_never_answers_times_out() {
    let f = Fixture::sandboxed();
    // `stall` awaits forever (the SDK gives up at the deadline without a reply); `block` holds a
    // worker thread, which the SDK cannot interrupt.
    let actions = "@plugin.action()\nasync def stall(p):\n    await asyncio.Future()\n@plugin.action()\ndef block(p):\n    time.sleep(3600)\n";
    plugins(&f, "[limits]\ncall_timeout = \"300ms\"\n", actions);
    let host = start(&f, sandbox()).await;
    let bystander = info(&host, "bystander").pid;

    for action in ["stall", "block"] {
        let err = call(&host, "hostile", action, "{}").await.unwrap_err();
        assert_eq!(err.code(), "plugin_timeout", "{err}");
        assert_eq!(
            err.to_string(),
            format!("Plugin `hostile` did not answer `{action}` within 300ms")
        );
    }
    let p = info(&host, "hostile");
    assert_eq!((p.restarts, p.late_replies), (0, 0));
    assert_bystander_serves(&host, bystander).await;
    assert_hostile_serves(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_starts_with_every_layer_applied() {
    let f = Fixture::sandboxed();
    let actions = "@plugin.action()\nasync def ids(p):\n    return [os.getuid(), os.getgid(), os.getgroups()]\n";
    plugins(&f, "", actions);
    let host = start(
        &f,
        SandboxConfig {
            strict: true,
            ..SandboxConfig::default()
        },
    )
    .await;
    let layers = [
        "sandbox.cgroup",
        "sandbox.netns",
        "sandbox.ipcns",
        "sandbox.pidns",
        "sandbox.mountns",
        "sandbox.rlimits",
        "sandbox.uid",
        "sandbox.landlock",
        "sandbox.seccomp",
    ];
    for name in ["bystander", "hostile"] {
        let p = info(&host, name);
        assert_eq!(p.state, PluginState::Running);
        let details: Vec<&(String, String)> = p
            .details
            .iter()
            .filter(|(k, _)| k.starts_with("sandbox."))
            .collect();
        let keys: Vec<&str> = details.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, layers, "{name}");
        for (layer, state) in details {
            assert!(state.starts_with("applied: "), "{name} {layer}: {state}");
        }
    }
    // The uid layer's detail names the uid the child really runs as.
    let ids = attack(&host, "ids", json!({})).await;
    let (uid, gid) = (ids[0].as_u64().unwrap(), ids[1].as_u64().unwrap());
    assert_ne!(uid, 0);
    assert_eq!(ids[2], json!([]));
    let detail = &info(&host, "hostile").details;
    let uid_detail = &detail.iter().find(|(k, _)| k == "sandbox.uid").unwrap().1;
    assert_eq!(
        uid_detail,
        &format!(
            "applied: uid {uid}, gid {gid}, no supplementary groups, allocated in `/var/lib/plugd/uids`"
        )
    );
    // Each plugin has a uid of its own.
    let uid_of = |name: &str| {
        info(&host, name)
            .details
            .into_iter()
            .find(|(k, _)| k == "sandbox.uid")
            .unwrap()
            .1
    };
    assert_ne!(uid_of("bystander"), uid_of("hostile"));
    assert_bystander_serves(&host, info(&host, "bystander").pid).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_unix_sockets_by_path_are_unreachable() {
    let f = Fixture::sandboxed();
    let actions = r#"@plugin.action()
async def connect_all(p):
    def connect(path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.sendall(b"pwned")
        return "connected"
    return {path: attempt(lambda: connect(path)) for path in p["paths"]}
@plugin.action()
async def own_socket(p):
    path = os.path.join(os.environ["PLUGD_DATA_DIR"], "mine.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    return "ok"
"#;
    plugins(&f, "", actions);
    // Root-owned, mode 0777 listening sockets where host services keep theirs.
    let mut paths = Vec::new();
    let mut listeners = Vec::new();
    for dir in ["/tmp", "/run"] {
        let path = PathBuf::from(format!("{dir}/plugd-hostile-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        listener.set_nonblocking(true).unwrap();
        paths.push(text(&path));
        listeners.push((path, listener));
    }
    let host = start(&f, sandbox()).await;
    let bystander = info(&host, "bystander").pid;
    let got = attack(&host, "connect_all", json!({ "paths": paths })).await;
    for path in &paths {
        assert_errno(&got[path], ENOENT);
    }
    for (path, listener) in &listeners {
        assert!(
            listener.accept().is_err(),
            "nothing connected to {}",
            path.display()
        );
        let _ = std::fs::remove_file(path);
    }
    // The plugin keeps its own sockets in its data dir.
    assert_eq!(attack(&host, "own_socket", json!({})).await, "ok");
    assert_bystander_serves(&host, bystander).await;
    assert_hostile_serves(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_startup_code_setuid_bits_and_vsock_are_refused() {
    let f = Fixture::sandboxed();
    let actions = r##"@plugin.action()
async def plant(p):
    import site, stat, sys
    data = os.environ["PLUGD_DATA_DIR"]
    out = {"home": os.environ.get("HOME"), "user_site": site.ENABLE_USER_SITE,
           "no_user_site": sys.flags.no_user_site}
    for base in [os.environ.get("HOME", "/nonexistent"), data]:
        d = os.path.join(base, ".local/lib/python%d.%d/site-packages" % sys.version_info[:2])
        out["plant " + base] = attempt(lambda: (os.makedirs(d, exist_ok=True),
            write(os.path.join(d, "usercustomize.py"))))
    exe = os.path.join(data, "suid")
    with open(exe, "wb") as fh:
        fh.write(b"#!/bin/sh\nexit 0\n")
    out["chmod_suid"] = attempt(lambda: os.chmod(exe, 0o4755))
    out["chmod_x"] = attempt(lambda: os.chmod(exe, 0o755))
    out["exec_data"] = attempt(lambda: os.execv(exe, [exe]))
    out["vsock"] = attempt(lambda: socket.socket(40, socket.SOCK_STREAM))
    return out
@plugin.action()
async def planted(p):
    import sys
    return "usercustomize" in sys.modules
"##;
    plugins(&f, "", actions);
    let host = start(&f, sandbox()).await;
    let bystander = info(&host, "bystander").pid;
    let got = attack(&host, "plant", json!({})).await;
    // HOME is a fresh tmpfs, not the data dir, and Python runs without a user site.
    assert_eq!(got["home"], "/home/plugd", "{got}");
    assert_eq!(got["no_user_site"], 1, "{got}");
    assert_errno(&got["chmod_suid"], EPERM);
    assert!(got["chmod_x"]["ok"].is_string(), "{got}");
    // The data dir is mounted noexec.
    assert_errno(&got["exec_data"], EACCES);
    assert_errno(&got["vsock"], EACCES);
    // Whatever was planted never runs in the next start of the plugin (a reload here).
    host.reload("hostile").await.unwrap();
    assert_eq!(attack(&host, "planted", json!({})).await, false);
    assert_bystander_serves(&host, bystander).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_sysv_ipc_is_invisible_and_uids_are_distinct() {
    let f = Fixture::sandboxed();
    let actions = r#"@plugin.action()
async def shm(p):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    r = libc.shmget(p["key"], 0, 0)
    return {"shmget": r, "errno": ctypes.get_errno()}
@plugin.action()
async def ids(p):
    return [os.getuid(), os.getgid()]
"#;
    plugins(&f, "", actions);
    // A host segment with a well-known key, readable by anyone.
    let key = 0x504c_5547 + (std::process::id() as i32 & 0xfff);
    // SAFETY: plain SysV calls with constant arguments; the segment is removed below.
    let id = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | 0o666) };
    assert!(id >= 0, "shmget on the host");
    let host = start(&f, sandbox()).await;
    let bystander = info(&host, "bystander").pid;
    let got = attack(&host, "shm", json!({ "key": key })).await;
    assert_eq!(got["shmget"], -1, "{got}");
    assert_eq!(got["errno"], ENOENT, "{got}");
    // SAFETY: removes the segment created above.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    let uid_of = |name: &str| {
        info(&host, name)
            .details
            .into_iter()
            .find(|(k, _)| k == "sandbox.uid")
            .unwrap()
            .1
    };
    assert_ne!(uid_of("hostile"), uid_of("bystander"));
    assert_bystander_serves(&host, bystander).await;
    host.shutdown().await;
}
