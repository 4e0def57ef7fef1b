//! Plugins that misbehave: each fault is an error value for the caller and a state change for
//! the plugin; the host and the other plugins keep serving.

use std::time::Duration;

use plugd_host::PluginState;

use crate::support::*;

/// A raw protocol child (no SDK) that says hello and then runs `after_hello`.
fn raw_plugin(after_hello: &str) -> String {
    format!(
        r#"import json, os, sys, time
sock = os.fdopen(3, "rb+", buffering=0)
sock.write(b'{{"jsonrpc":"2.0","id":1,"method":"hello","params":{{"protocol":1}}}}\n')
reader = os.fdopen(os.dup(3), "rb")
init = reader.readline()
{after_hello}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_have_clear_reasons() {
    let f = Fixture::new();
    f.plugin("silent", "1.0.0", &[], "", "import time\ntime.sleep(60)\n");
    f.plugin(
        "garbage",
        "1.0.0",
        &[],
        "",
        "import os\nos.write(3, b'this is not json\\n')\nimport time\ntime.sleep(60)\n",
    );
    f.plugin(
        "closer",
        "1.0.0",
        &[],
        "",
        "import os, time\nos.close(3)\ntime.sleep(60)\n",
    );
    f.plugin(
        "future",
        "1.0.0",
        &[],
        "",
        "import os, time\nos.write(3, b'{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"hello\",\"params\":{\"protocol\":2}}\\n')\ntime.sleep(60)\n",
    );
    f.plugin("chatty", "1.0.0", &[], "", "import os, time\nos.write(3, b'{\"jsonrpc\":\"2.0\",\"method\":\"log\",\"params\":{\"message\":\"hi\"}}\\n')\ntime.sleep(60)\n");
    f.plugin("no-program", "1.0.0", &[], "", "");
    std::fs::write(
        f.plugins().join("no-program/plugin.toml"),
        "[plugin]\nname = \"no-program\"\nversion = \"1.0.0\"\nruntime = \"process\"\nentry = [\"definitely-not-a-program-xyz\"]\n",
    )
    .unwrap();
    f.sdk_plugin("good", "1.0.0", &[], "", ECHO);
    let host = f.host_with(|c| c.start_timeout = Duration::from_secs(3));
    host.start().await.unwrap();

    let reason = |name: &str| {
        let p = info(&host, name);
        assert_eq!(p.state, PluginState::Failed, "{name}");
        p.reason.unwrap()
    };
    let cases = [
        (
            "silent",
            "could not start: it did not say `hello` within 3s",
        ),
        (
            "garbage",
            "could not start: it sent garbage instead of `hello`: Frame is not valid JSON",
        ),
        (
            "closer",
            "could not start: it closed its protocol socket before saying `hello`",
        ),
        (
            "future",
            "could not start: it speaks protocol 2 but this host speaks 1",
        ),
        ("chatty", "could not start: it sent `log` before `hello`"),
        (
            "no-program",
            "could not start: program `definitely-not-a-program-xyz` is not on the `PATH`",
        ),
    ];
    for (name, expect) in cases {
        let got = reason(name);
        assert!(got.contains(expect), "{name}: {got}");
    }
    assert!(running(&host, "good"));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restarts_with_backoff_and_the_reason_stays_visible() {
    let f = Fixture::new();
    let body = format!(
        "{ECHO}@plugin.action()\nasync def crash(p):\n    print('about to die', file=sys.stderr, flush=True)\n    os._exit(3)\n"
    );
    f.sdk_plugin("fragile", "1.0.0", &[], "", &body);
    f.sdk_plugin("bystander", "1.0.0", &[], "", ECHO);
    let host = f.host();
    host.start().await.unwrap();
    let pid = info(&host, "fragile").pid.unwrap();

    let err = call(&host, "fragile", "crash", "{}").await.unwrap_err();
    assert_eq!(err.code(), "plugin_crashed", "{err}");
    eventually("fragile restarts", || {
        restarted(&host, "fragile", Some(pid))
    })
    .await;
    let p = info(&host, "fragile");
    assert_eq!(p.restarts, 1, "{p:?}\nlog:\n{}", log_text(&host, "fragile"));
    let last = p.last_error.unwrap();
    assert!(last.contains("exited with status 3"), "{last}");
    assert!(last.contains("about to die"), "{last}");
    assert_eq!(
        call(&host, "fragile", "echo", "1").await.unwrap(),
        r#"{"value":1}"#
    );
    assert_eq!(
        call(&host, "bystander", "echo", "2").await.unwrap(),
        r#"{"value":2}"#
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_keeps_crashing_is_given_up() {
    let f = Fixture::new();
    // Says hello, then dies a moment later, every time.
    f.plugin(
        "doomed",
        "1.0.0",
        &[],
        "",
        &raw_plugin("time.sleep(0.05)\nsys.exit(9)"),
    );
    let host = f.host_with(|c| {
        c.restart.max_crashes = 2;
        c.restart.initial_backoff = Duration::from_millis(10);
    });
    host.start().await.unwrap();
    eventually("doomed is given up", || {
        info(&host, "doomed").state == PluginState::Failed
    })
    .await;
    let reason = info(&host, "doomed").reason.unwrap();
    assert!(
        reason.contains("crashed 3 times within 60s, gave up"),
        "{reason}"
    );
    assert!(reason.contains("exited with status 9"), "{reason}");
    // Given up is a stored state: calls are refused with the reason, and `load` can retry.
    let err = call(&host, "doomed", "x", "{}").await.unwrap_err();
    assert_eq!(err.code(), "plugin_not_running", "{err}");
    assert!(err.to_string().contains("gave up"), "{err}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_drop_late_replies_and_count_them() {
    let f = Fixture::new();
    // The SDK stops work at the deadline; this raw child answers late on purpose.
    let serve = r#"import threading
lock = threading.Lock()
for line in reader:
    msg = json.loads(line)
    if msg.get("method") == "ping":
        with lock:
            sock.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": "pong"}, separators=(",", ":")).encode() + b"\n")
    elif msg.get("method") == "call":
        def answer(msg=msg):
            p = msg["params"]["payload"]
            time.sleep(p["s"])
            with lock:
                sock.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"value": p["tag"]}}, separators=(",", ":")).encode() + b"\n")
        threading.Thread(target=answer).start()"#;
    f.plugin(
        "slow",
        "1.0.0",
        &[],
        "[limits]\ncall_timeout = \"300ms\"\n",
        &raw_plugin(serve),
    );
    let host = f.host();
    host.start().await.unwrap();
    let err = call(&host, "slow", "slow", r#"{"s": 0.6, "tag": "late"}"#)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Plugin `slow` did not answer `slow` within 300ms"
    );
    assert_eq!(err.code(), "plugin_timeout");
    // The late reply must not be delivered to the next call, which is answered after it.
    assert_eq!(
        call(&host, "slow", "slow", r#"{"s": 0.0, "tag": "next"}"#)
            .await
            .unwrap(),
        r#"{"value":"next"}"#
    );
    eventually("the late reply arrives and is counted", || {
        info(&host, "slow").late_replies == 1
    })
    .await;
    assert_eq!(info(&host, "slow").restarts, 0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_get_their_own_answers_despite_print() {
    let f = Fixture::new();
    let body = "@plugin.action()\nasync def work(p):\n    print('working on', p['i'], 'x' * 5000)\n    await asyncio.sleep((64 - p['i']) / 1000)\n    print('done', p['i'])\n    return p['i'] * 2\n@plugin.action()\ndef blocking(p):\n    time.sleep(0.01)\n    return p['i']\n";
    f.sdk_plugin("busy", "1.0.0", &[], "", body);
    let host = f.host();
    host.start().await.unwrap();
    let calls = (0..64).map(|i| {
        let host = host.clone();
        async move {
            let action = if i % 4 == 0 { "blocking" } else { "work" };
            let got = call(&host, "busy", action, &format!(r#"{{"i": {i}}}"#))
                .await
                .unwrap();
            let want = if i % 4 == 0 { i } else { i * 2 };
            assert_eq!(got, format!(r#"{{"value":{want}}}"#));
        }
    });
    futures::future::join_all(calls).await;
    let p = info(&host, "busy");
    assert_eq!((p.calls, p.errors, p.restarts), (64, 0, 0));
    eventually("stdout lines reach the log", || {
        log_text(&host, "busy").contains("done 1")
    })
    .await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_garbage_oversized_frames_and_hangs_restart_the_plugin() {
    let f = Fixture::new();
    let body = format!(
        "{ECHO}@plugin.action()\nasync def garble(p):\n    os.write(3, b'{{{{nope\\n')\n    await asyncio.sleep(5)\n\
@plugin.action()\ndef huge(p):\n    data = b'[' + b'1,' * (3 << 20)\n    while data:\n        try:\n            data = data[os.write(3, data):]\n        except BlockingIOError:\n            time.sleep(0.001)\n\
@plugin.action()\nasync def freeze(p):\n    time.sleep(30)\n"
    );
    f.sdk_plugin(
        "rogue",
        "1.0.0",
        &[],
        "[limits]\ncall_timeout = \"10s\"\n",
        &body,
    );
    f.sdk_plugin("bystander", "1.0.0", &[], "", ECHO);
    let host = f.host_with(|c| {
        c.max_frame = 1 << 20;
        c.ping_interval = Duration::from_millis(500);
        c.ping_timeout = Duration::from_secs(2);
    });
    host.start().await.unwrap();

    let cases = [
        (
            "garble",
            "it sent a malformed protocol frame: Frame is not valid JSON",
        ),
        (
            "huge",
            "its protocol stream broke: Frame exceeds the 1048576-byte limit",
        ),
        // `freeze` blocks the SDK's event loop, so the health ping goes unanswered.
        (
            "freeze",
            "it did not answer the health ping within 2s and was killed",
        ),
    ];
    for (restarts, (action, expect)) in cases.into_iter().enumerate() {
        let err = call(&host, "rogue", action, "{}").await.unwrap_err();
        assert_eq!(err.code(), "plugin_crashed", "{action}: {err}");
        assert!(err.to_string().contains(expect), "{action}: {err}");
        eventually("rogue restarts", || {
            running(&host, "rogue") && info(&host, "rogue").restarts as usize == restarts + 1
        })
        .await;
        assert!(info(&host, "rogue").last_error.unwrap().contains(expect));
        assert_eq!(
            call(&host, "bystander", "echo", "0").await.unwrap(),
            r#"{"value":0}"#
        );
    }
    assert_eq!(
        call(&host, "rogue", "echo", "1").await.unwrap(),
        r#"{"value":1}"#
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_floods_are_capped_and_rate_limited() {
    let f = Fixture::new();
    let body = format!(
        "{ECHO}@plugin.action()\ndef flood(p):\n    for i in range(50000):\n        print('line', i)\n    sys.stdout.write('y' * 100000 + '\\n')\n    sys.stdout.flush()\n    return 'flooded'\n"
    );
    f.sdk_plugin("noisy", "1.0.0", &[], "", &body);
    // The host's one log gate (cap, rate, escaping) applies to captured output too.
    let host = f.host();
    host.start().await.unwrap();
    assert_eq!(
        call(&host, "noisy", "flood", "{}").await.unwrap(),
        r#"{"value":"flooded"}"#
    );
    eventually("the suppression is reported", || {
        log_text(&host, "noisy").contains("log lines of this plugin (more than 200 lines/s)")
    })
    .await;
    let logs = host.logs("noisy", 10_000).unwrap();
    assert!(logs.len() <= 200, "the ring is capped: {}", logs.len());
    assert!(
        logs.iter()
            .all(|l| l.message.len() <= plugd_runtime::MAX_LOG_LINE + " …[cut]".len())
    );
    assert_eq!(
        call(&host, "noisy", "echo", "3").await.unwrap(),
        r#"{"value":3}"#
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_ignores_shutdown_and_sigterm_is_killed_on_unload() {
    let f = Fixture::new();
    // Ignores the `shutdown` notification and SIGTERM; only SIGKILL ends it.
    let serve = r#"import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
for line in reader:
    msg = json.loads(line)
    if msg.get("method") == "ping":
        sock.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": "pong"}).encode() + b"\n")"#;
    f.plugin("stubborn", "1.0.0", &[], "", &raw_plugin(serve));
    let host = f.host_with_config(|c| c.stop_grace = Duration::from_millis(300));
    host.start().await.unwrap();
    let pid = info(&host, "stubborn").pid.unwrap() as libc::pid_t;
    host.unload("stubborn").await.unwrap();
    assert_eq!(info(&host, "stubborn").state, PluginState::Stopped);
    // SAFETY: signal 0 only checks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "the stubborn child must be gone after unload");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ESRCH)
    );
}
