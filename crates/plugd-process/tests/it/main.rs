//! Hostile children against the real process runtime: small Python scripts that speak protocol
//! v1 by hand (no SDK) and then misbehave — stop reading, flood, spin.

use std::sync::Arc;
use std::time::{Duration, Instant};

use plugd_manifest::{ActionName, Manifest};
use plugd_process::{ProcessConfig, ProcessRuntime};
use plugd_runtime::{Health, Instance, InstanceSpec, Invocation, NullHost, Runtime, RuntimeError};
use serde_json::value::RawValue;

mod lifecycle;

/// Says `hello`, reads `initialize`, and offers `send`/`recv` to the rest of the script.
const PRELUDE: &str = r#"
import json, os, signal, socket, sys, time
sock = socket.socket(fileno=int(os.environ["PLUGD_FD"]))
rfile = sock.makefile("rb")
def send(obj):
    sock.sendall((json.dumps(obj, separators=(",", ":")) + "\n").encode())
def recv():
    line = rfile.readline()
    if not line:
        sys.exit(0)
    return json.loads(line)
send({"jsonrpc": "2.0", "id": 1, "method": "hello", "params": {"protocol": 1}})
init = recv()["result"]
"#;

struct Plugin {
    _dir: tempfile::TempDir,
    instance: Arc<dyn Instance>,
}

async fn start(limits: &str, script: &str, tweak: impl FnOnce(&mut ProcessConfig)) -> Plugin {
    start_with(limits, script, serde_json::json!({}), tweak).await
}

async fn start_with(
    limits: &str,
    script: &str,
    params: serde_json::Value,
    tweak: impl FnOnce(&mut ProcessConfig),
) -> Plugin {
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("pkg");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let toml = format!(
        "[plugin]\nname = \"hostile\"\nversion = \"0.1.0\"\nruntime = \"process\"\nentry = [\"python3\", \"main.py\"]\n[limits]\n{limits}\n[[actions]]\nname = \"a\"\n"
    );
    std::fs::write(package.join("main.py"), format!("{PRELUDE}\n{script}")).unwrap();
    let manifest = Manifest::from_toml_str(&toml).unwrap();
    let mut config = ProcessConfig::default();
    tweak(&mut config);
    let spec = InstanceSpec {
        manifest: Arc::new(manifest),
        package_dir: package,
        data_dir: data,
        params,
        python_env: None,
        http_socket: None,
    };
    let instance = ProcessRuntime::new(config)
        .start(spec, Arc::new(NullHost))
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    Plugin {
        _dir: dir,
        instance,
    }
}

fn invocation(payload: &str, timeout: Duration) -> Invocation {
    Invocation {
        action: ActionName::new("a").unwrap(),
        payload: RawValue::from_string(payload.to_owned()).unwrap(),
        timeout: Some(timeout),
        chain: Vec::new(),
    }
}

fn detail(instance: &dyn Instance, key: &str) -> Option<usize> {
    instance
        .status()
        .details
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.parse().unwrap())
}

fn process_gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

async fn wait_health(instance: &dyn Instance, want: impl Fn(&Health) -> bool) -> Health {
    let mut health = instance.health();
    let got = tokio::time::timeout(Duration::from_secs(20), health.wait_for(|h| want(h)))
        .await
        .expect("health change within 20 s")
        .expect("health channel open");
    got.clone()
}

#[tokio::test]
async fn a_blocked_child_with_a_1_mib_call_stops_within_its_grace() {
    // Handshakes, then never reads again and ignores SIGTERM.
    let p = start(
        "call_timeout = \"5s\"",
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(3600)\n",
        |_| {},
    )
    .await;
    let pid = p.instance.status().pid.unwrap();
    let big = format!("\"{}\"", "x".repeat(1 << 20));
    let started = Instant::now();
    let err = p
        .instance
        .call(invocation(&big, Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    // A second call queues behind the stuck one and still ends on its own deadline.
    let started = Instant::now();
    let err = p
        .instance
        .call(invocation("1", Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(detail(&*p.instance, "protocol.pending"), Some(0));

    let grace = Duration::from_secs(1);
    let started = Instant::now();
    p.instance.stop(grace).await;
    let took = started.elapsed();
    assert!(
        took < grace + Duration::from_millis(1500),
        "stop took {took:?}"
    );
    assert!(process_gone(pid), "the child {pid} is gone");
    let err = p
        .instance
        .call(invocation("1", Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Plugin `hostile` is not running: it was stopped"
    );
}

#[tokio::test]
async fn a_flooding_child_that_stops_reading_is_failed_with_bounded_host_memory() {
    // Thousands of small requests and a few of 2 MiB, then it never reads fd 3 again.
    let script = r#"
big = "x" * (2 << 20)
for i in range(5000):
    send({"jsonrpc": "2.0", "id": 10 + i, "method": "kv.get", "params": {"k": i}})
for i in range(5):
    send({"jsonrpc": "2.0", "id": 9000 + i, "method": "kv.set", "params": {"v": big}})
time.sleep(3600)
"#;
    let p = start("call_timeout = \"5s\"", script, |c| {
        c.ping_interval = Duration::from_millis(500);
        c.ping_timeout = Duration::from_secs(1);
        c.restart.max_crashes = 0;
    })
    .await;
    let pid = p.instance.status().pid.unwrap();
    let instance = p.instance.clone();
    let sampler = tokio::spawn(async move {
        let mut most = (0, 0);
        while let Some(host) = detail(&*instance, "protocol.host_requests") {
            let pending = detail(&*instance, "protocol.pending").unwrap_or(0);
            most = (most.0.max(host), most.1.max(pending));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        most
    });
    let started = Instant::now();
    let err = p
        .instance
        .call(invocation("1", Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            RuntimeError::Timeout { .. } | RuntimeError::Crashed { .. }
        ),
        "{err}"
    );
    let dead = wait_health(&*p.instance, |h| matches!(h, Health::Dead { .. })).await;
    let Health::Dead { reason } = dead else {
        unreachable!()
    };
    assert!(
        reason.contains("did not answer the health ping")
            || reason.contains("did not read its protocol socket"),
        "{reason}"
    );
    let (most_host, most_pending) = sampler.await.unwrap();
    assert!(most_host <= 64, "{most_host} host requests in flight");
    assert!(most_pending <= 2, "{most_pending} requests pending");
    assert!(process_gone(pid), "the child {pid} is gone");
    let started = Instant::now();
    p.instance.stop(Duration::from_secs(1)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Busy for `ms` of CPU per `work` call; spins for ever on `spin`.
const SPINNER: &str = r#"
def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
while True:
    msg = recv()
    if msg.get("method") == "call":
        if msg["params"]["payload"] == "spin":
            while True:
                pass
        burn(0.15)
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"value": "worked"}})
    elif msg.get("method") == "ping":
        send({"jsonrpc": "2.0", "id": msg["id"], "result": "pong"})
"#;

#[tokio::test]
async fn a_spinning_call_exceeds_its_cpu_budget_but_a_busy_plugin_lives() {
    // No ping in the test's time: nothing but a call's start may wake a parked CPU sampler.
    let p = start("cpu = \"400ms\"\ncall_timeout = \"20s\"", SPINNER, |c| {
        c.ping_interval = Duration::from_secs(600);
    })
    .await;
    let pid = p.instance.status().pid.unwrap();
    // 6 calls of 150 ms each: 900 ms in total, more than `limits.cpu`, but each is within it.
    for _ in 0..6 {
        let out = p
            .instance
            .call(invocation("\"work\"", Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(out.result.get(), r#"{"value":"worked"}"#);
    }
    assert_eq!(p.instance.status().pid, Some(pid));

    let err = spin_is_stopped(&*p.instance).await;
    match &err {
        RuntimeError::LimitExceeded { limit, hint, .. } => {
            assert_eq!(limit, "cpu");
            assert!(
                hint.as_deref().unwrap().contains("raise `limits.cpu`"),
                "{err}"
            );
        }
        other => panic!("expected the cpu limit, got {other}"),
    }
    let recovering = wait_health(&*p.instance, |h| matches!(h, Health::Recovering { .. })).await;
    assert!(
        matches!(&recovering, Health::Recovering { reason } if reason.contains("CPU time")),
        "{recovering:?}"
    );
    wait_health(&*p.instance, |h| *h == Health::Ready).await;
    assert_ne!(p.instance.status().pid, Some(pid));
    assert_eq!(p.instance.status().restarts, 1);
    assert!(
        p.instance
            .call(invocation("\"work\"", Duration::from_secs(10)))
            .await
            .is_ok()
    );
    // Idle for longer than the sampler lingers (1 s): it parks, and the next call's start must
    // wake it, or a spinning call would run to its 20 s timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = spin_is_stopped(&*p.instance).await;
    assert!(
        matches!(&err, RuntimeError::LimitExceeded { limit, .. } if limit == "cpu"),
        "{err}"
    );
    p.instance.stop(Duration::from_secs(1)).await;
}

/// Calls `SPINNER`'s `spin` (20 s timeout) and returns its error, which must come within 5 s.
async fn spin_is_stopped(instance: &dyn Instance) -> RuntimeError {
    let started = Instant::now();
    let err = instance
        .call(invocation("\"spin\"", Duration::from_secs(20)))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    err
}

#[tokio::test]
async fn saturated_slots_are_overloaded_and_initialize_carries_the_limits() {
    // Answers a call with the `initialize.limits` it got, after a pause.
    let script = r#"
while True:
    msg = recv()
    if msg.get("method") == "call":
        time.sleep(0.5)
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"value": init["limits"]}})
    elif msg.get("method") == "ping":
        send({"jsonrpc": "2.0", "id": msg["id"], "result": "pong"})
"#;
    let p = start(
        "concurrency = 1\ncall_timeout = \"3s\"\nmemory = \"64MiB\"\ncpu = \"2s\"",
        script,
        |_| {},
    )
    .await;
    let first = {
        let instance = p.instance.clone();
        tokio::spawn(async move { instance.call(invocation("1", Duration::from_secs(3))).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = p
        .instance
        .call(invocation("2", Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "overloaded", "{err}");
    let out = first.await.unwrap().unwrap();
    let limits: serde_json::Value = serde_json::from_str(out.result.get()).unwrap();
    assert_eq!(
        limits["value"],
        serde_json::json!({"call_timeout_ms": 3000, "concurrency": 1, "memory": 64 << 20, "cpu_ms": 2000})
    );
    p.instance.stop(Duration::from_secs(1)).await;
}

/// Answers a call with its params and the params it knows (from `initialize`, then each
/// `params.changed`); exits at once on the payload `"exit"`.
const PARAMS_ECHO: &str = r#"
params = init["params"]
while True:
    msg = recv()
    method = msg.get("method")
    if method == "call":
        if msg["params"]["payload"] == "exit":
            os._exit(3)
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"value": {"call": msg["params"], "params": params}}})
    elif method == "params.changed":
        params = msg["params"]["params"]
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": msg["id"], "result": "pong"})
"#;

async fn echo(instance: &dyn Instance, payload: &str, chain: &[&str]) -> serde_json::Value {
    let mut invocation = invocation(payload, Duration::from_secs(5));
    invocation.chain = chain
        .iter()
        .map(|c| plugd_manifest::PluginName::new(*c).unwrap())
        .collect();
    let out = instance.call(invocation).await.unwrap();
    serde_json::from_str::<serde_json::Value>(out.result.get()).unwrap()["value"].take()
}

#[tokio::test]
async fn call_frames_carry_the_chain_of_the_call() {
    let p = start("call_timeout = \"5s\"", PARAMS_ECHO, |_| {}).await;
    let got = echo(&*p.instance, "1", &["gallery", "thumbs"]).await;
    let call = &got["call"];
    assert_eq!(call["chain"], serde_json::json!(["gallery", "thumbs"]));
    assert_eq!(
        (&call["action"], &call["payload"]),
        (&"a".into(), &1.into())
    );
    let deadline = call["deadline_ms"].as_u64().unwrap();
    assert!((4000..=5000).contains(&deadline), "{deadline}");
    // A call from an application has no chain, and the frame says nothing of one.
    let got = echo(&*p.instance, "2", &[]).await;
    assert_eq!(
        got["call"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["action", "deadline_ms", "payload"]
    );
    p.instance.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn new_params_reach_the_child_and_every_restarted_one() {
    let p = start_with(
        "call_timeout = \"5s\"",
        PARAMS_ECHO,
        serde_json::json!({"q": 1}),
        |_| {},
    )
    .await;
    assert_eq!(
        echo(&*p.instance, "1", &[]).await["params"],
        serde_json::json!({"q": 1})
    );
    p.instance
        .params_changed(&serde_json::json!({"q": 2}))
        .await
        .unwrap();
    // The notification is queued before the call, and the child reads in order.
    assert_eq!(
        echo(&*p.instance, "1", &[]).await["params"],
        serde_json::json!({"q": 2})
    );

    let pid = p.instance.status().pid;
    let err = p
        .instance
        .call(invocation("\"exit\"", Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "plugin_crashed", "{err}");
    // While it restarts the change is kept for the next child (in `initialize`, or sent right
    // after its handshake when the change raced with it).
    p.instance
        .params_changed(&serde_json::json!({"q": 3}))
        .await
        .unwrap();
    let instance = p.instance.clone();
    wait_health(&*p.instance, |h| {
        *h == Health::Ready && instance.status().restarts == 1
    })
    .await;
    assert_ne!(p.instance.status().pid, pid);
    assert_eq!(
        echo(&*p.instance, "1", &[]).await["params"],
        serde_json::json!({"q": 3})
    );

    p.instance.stop(Duration::from_secs(1)).await;
    let err = p
        .instance
        .params_changed(&serde_json::json!({"q": 4}))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Plugin `hostile` is not running: it was stopped"
    );
}
