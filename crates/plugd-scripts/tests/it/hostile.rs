//! Scripts that try to escape or exhaust: each is contained by the kernel sandbox with a clear
//! recorded reason, and the history keeps every run.

use std::os::unix::fs::PermissionsExt;

use plugd_scripts::RunTarget;
use plugd_scripts::meta::{LimitsSpec, NetworkSpec, Overrides};
use serde_json::{Value, json};

use crate::{manager, run};

async fn run_with(
    scripts: &plugd_scripts::Scripts,
    source: &str,
    overrides: Overrides,
) -> plugd_scripts::RunRecordView {
    run(
        scripts,
        RunTarget::Source {
            name: "hostile.py".into(),
            source: source.to_owned(),
            overrides,
        },
        json!({}),
    )
    .await
    .0
    .record
}

fn limits(l: LimitsSpec) -> Overrides {
    Overrides {
        limits: l,
        ..Overrides::default()
    }
}

#[tokio::test]
async fn files_outside_its_paths_cannot_be_read_even_by_computed_names() {
    let (scripts, dir) = manager().await;
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let granted = dir.path().join("granted.txt");
    std::fs::write(&granted, "granted").unwrap();
    std::fs::set_permissions(&granted, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Paths built at run time: the static check cannot see them; the kernel must.
    let source = format!(
        r#"import json, sys
from plugd import script
out = {{}}
for name, path in [("shadow", "/etc/" + "shadow"), ("secret", {secret:?} + ""), ("granted", {granted:?} + ""), ("db", {db:?} + "")]:
    try:
        with open(path) as f:
            out[name] = f.read()
    except Exception as e:
        out[name] = type(e).__name__
script.result(out)
"#,
        secret = secret.display().to_string(),
        granted = granted.display().to_string(),
        db = dir.path().join("plugd.db").display().to_string(),
    );
    let r = run_with(
        &scripts,
        &source,
        Overrides {
            read: Some(vec![granted.clone()]),
            ..Overrides::default()
        },
    )
    .await;
    assert_eq!(r.state, "succeeded", "{r:?}");
    let result = r.result.unwrap();
    assert_eq!(result["granted"], "granted");
    for denied in ["shadow", "secret", "db"] {
        let v = result[denied].as_str().unwrap();
        assert!(
            v == "FileNotFoundError" || v == "PermissionError",
            "{denied}: {v}"
        );
    }
}

#[tokio::test]
async fn a_dynamic_import_of_socket_still_has_no_network() {
    let (scripts, _dir) = manager().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let source = format!(
        r#"# /// script
# [tool.plugd]
# allowed_imports = ["importlib"]
# ///
import importlib
from plugd import script
sock_mod = importlib.import_module("so" + "cket")
try:
    s = sock_mod.create_connection(("127.0.0.1", {port}), timeout=2)
    script.result("connected")
except Exception as e:
    script.result(type(e).__name__)
"#
    );
    let r = run_with(&scripts, &source, Overrides::default()).await;
    assert_eq!(r.state, "succeeded", "{r:?}");
    let result = r.result.unwrap();
    assert_ne!(result, json!("connected"));
    assert!(
        ["PermissionError", "OSError", "ConnectionRefusedError"]
            .contains(&result.as_str().unwrap()),
        "{result}"
    );
    assert!(listener.accept().is_err(), "nothing reached the listener");
}

#[tokio::test]
async fn granted_ports_are_the_only_network() {
    let (scripts, _dir) = manager().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let source = format!(
        r#"import socket
from plugd import script
out = []
for port in ({port}, {other_port}):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        out.append("ok")
    except Exception as e:
        out.append(type(e).__name__)
script.result(out)
"#
    );
    let r = run_with(
        &scripts,
        &source,
        Overrides {
            network: Some(NetworkSpec::List(vec![format!("127.0.0.1:{port}")])),
            ..Overrides::default()
        },
    )
    .await;
    assert_eq!(r.state, "succeeded", "{r:?}");
    let result = r.result.unwrap();
    assert_eq!(result[0], "ok", "{result}");
    assert_eq!(result[1], "PermissionError", "{result}");
}

#[tokio::test]
async fn a_fork_bomb_meets_its_process_limit_and_dies_with_the_run() {
    let (scripts, _dir) = manager().await;
    let source = r#"import os, time
from plugd import script
n = 0
for _ in range(200):
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
    except OSError as e:
        break
script.result(n)
"#;
    let started = std::time::Instant::now();
    let r = run_with(
        &scripts,
        source,
        limits(LimitsSpec {
            processes: Some(8),
            ..LimitsSpec::default()
        }),
    )
    .await;
    let forked = r.result.as_ref().and_then(Value::as_u64).unwrap();
    assert!(forked < 8, "{r:?}");
    // Its children were killed with it: the run did not wait for their sleep.
    assert!(started.elapsed().as_secs() < 30);
    assert_eq!(r.state, "succeeded", "{r:?}");
}

#[tokio::test]
async fn memory_past_its_limit_is_stopped_with_the_reason() {
    let (scripts, _dir) = manager().await;
    let source = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n";
    let r = run_with(
        &scripts,
        source,
        limits(LimitsSpec {
            memory: Some("64MiB".into()),
            ..LimitsSpec::default()
        }),
    )
    .await;
    assert_ne!(r.state, "succeeded", "{r:?}");
    let reason = r.reason.unwrap();
    assert!(reason.starts_with("memory limit of 64 MiB"), "{reason}");
}

#[tokio::test]
async fn cpu_past_its_limit_is_stopped_with_the_reason() {
    let (scripts, _dir) = manager().await;
    let r = run_with(
        &scripts,
        "while True:\n    pass\n",
        limits(LimitsSpec {
            cpu: Some("1s".into()),
            ..LimitsSpec::default()
        }),
    )
    .await;
    assert_eq!(r.state, "killed", "{r:?}");
    assert_eq!(r.reason.as_deref(), Some("CPU time limit of 1 s exceeded"));
    assert!(r.cpu_ms.unwrap() >= 900, "{r:?}");
}

#[tokio::test]
async fn a_gigabyte_of_output_is_cut_at_its_limit_and_the_record_stays_small() {
    let (scripts, _dir) = manager().await;
    let source = "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(1 << 20):\n    sys.stdout.write(line)\n";
    let r = run_with(
        &scripts,
        source,
        limits(LimitsSpec {
            output: Some("1MiB".into()),
            ..LimitsSpec::default()
        }),
    )
    .await;
    assert_eq!(r.state, "killed", "{r:?}");
    assert_eq!(r.reason.as_deref(), Some("output limit of 1 MiB exceeded"));
    assert!(
        r.output_bytes > 1 << 20 && r.output_bytes < 64 << 20,
        "{}",
        r.output_bytes
    );
    assert!(r.output.len() < 70 << 10, "{}", r.output.len());
    assert!(r.output.contains("bytes of output not kept"));
}

#[tokio::test]
async fn a_run_past_its_wall_clock_is_stopped() {
    let (scripts, _dir) = manager().await;
    let r = run_with(
        &scripts,
        "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n",
        limits(LimitsSpec {
            wall: Some("1s".into()),
            ..LimitsSpec::default()
        }),
    )
    .await;
    assert_eq!(r.state, "killed", "{r:?}");
    assert_eq!(
        r.reason.as_deref(),
        Some("wall-clock limit of 1 s exceeded")
    );
    assert_eq!(r.output, "sleeping\n");
    assert!(r.duration_ms.unwrap() < 10_000);
}

#[tokio::test]
async fn without_filesystem_nothing_can_be_written_and_write_paths_work() {
    let (scripts, dir) = manager().await;
    let source = r#"from plugd import script
out = {}
for name, path in [("cwd", "out.txt"), ("tmp", "/" + "tmp/x")]:
    try:
        with open(path, "w") as f:
            f.write("data")
        out[name] = "written"
    except Exception as e:
        out[name] = type(e).__name__
script.result(out)
"#;
    let r = run_with(
        &scripts,
        source,
        Overrides {
            filesystem: Some(false),
            ..Overrides::default()
        },
    )
    .await;
    assert_eq!(r.state, "succeeded", "{r:?}");
    let result = r.result.unwrap();
    assert_eq!(result["cwd"], "OSError", "{result}");
    assert_eq!(result["tmp"], "OSError", "{result}");

    // A granted write path is writable, and what is written stays.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let source = format!(
        "with open({:?} + '/report.txt', 'w') as f:\n    f.write('report')\n",
        out.display().to_string()
    );
    let r = run_with(
        &scripts,
        &source,
        Overrides {
            write: Some(vec![out.clone()]),
            ..Overrides::default()
        },
    )
    .await;
    assert_eq!(r.state, "succeeded", "{r:?}");
    assert_eq!(
        std::fs::read_to_string(out.join("report.txt")).unwrap(),
        "report"
    );
}

#[tokio::test]
async fn a_granted_path_its_uid_cannot_read_is_refused_with_the_fix() {
    let (scripts, dir) = manager().await;
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let r = run_with(
        &scripts,
        "print('never')\n",
        Overrides {
            read: Some(vec![private.clone()]),
            ..Overrides::default()
        },
    )
    .await;
    assert_eq!(r.state, "failed", "{r:?}");
    let reason = r.reason.unwrap();
    assert!(
        reason.contains("is not readable by the script's uid") && reason.contains("hint: `chown"),
        "{reason}"
    );
    assert_eq!(r.output, "");
    // Every hostile run of this file is in the history.
    assert_eq!(scripts.runs(None, None, 10).await.unwrap().len(), 1);
}
