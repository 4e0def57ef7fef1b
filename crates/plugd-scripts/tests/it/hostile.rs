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
    // Granted paths live outside plugd's state dir (grants there are refused).
    let outside = tempfile::tempdir().unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let granted = outside.path().join("granted.txt");
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
    let (scripts, _dir) = manager().await;
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
    let outside = tempfile::tempdir().unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = outside.path().join("out");
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
    let (scripts, _dir) = manager().await;
    let outside = tempfile::tempdir().unwrap();
    let private = outside.path().join("private");
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

#[tokio::test]
async fn grants_of_plugds_own_state_ports_or_through_symlinks_are_refused() {
    let (scripts, dir) = crate::manager_with(|c| c.forbidden_ports = vec![8080]).await;
    let try_run = |overrides: Overrides| {
        let scripts = scripts.clone();
        async move {
            scripts
                .run(plugd_scripts::RunRequest {
                    target: RunTarget::Source {
                        name: "grab.py".into(),
                        source: "pass\n".into(),
                        overrides,
                    },
                    args: Default::default(),
                    who: "test".into(),
                    privileged: true,
                })
                .await
        }
    };
    // The state dir (the store, other runs' work dirs), a parent of it, the kernel's trees.
    for path in [
        dir.path().to_owned(),
        dir.path().join("plugd.db"),
        "/proc/1".into(),
    ] {
        let err = try_run(Overrides {
            read: Some(vec![path.clone()]),
            ..Overrides::default()
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("{} was granted", path.display()));
        assert!(
            err.message.contains("where no script may reach"),
            "{}",
            err.message
        );
    }
    // The server's own port.
    let err = try_run(Overrides {
        network: Some(NetworkSpec::List(vec!["example.org:8080".into()])),
        ..Overrides::default()
    })
    .await
    .err()
    .unwrap();
    assert!(
        err.message.contains("port 8080, plugd's own"),
        "{}",
        err.message
    );
    // A granted path with a symbolic link in it is not followed.
    let outside = tempfile::tempdir().unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = outside.path().join("link");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let r = run_with(
        &scripts,
        "print('never')\n",
        Overrides {
            read: Some(vec![link.clone()]),
            ..Overrides::default()
        },
    )
    .await;
    assert_eq!(r.state, "failed", "{r:?}");
    assert!(
        r.reason
            .unwrap()
            .contains("resolves through a symbolic link"),
        "symlink followed"
    );
}

#[tokio::test]
async fn without_admin_a_file_run_gets_no_grants_and_only_current_versions_run() {
    let (scripts, _dir) = manager().await;
    let unprivileged = |target: RunTarget| plugd_scripts::RunRequest {
        target,
        args: Default::default(),
        who: "runner".into(),
        privileged: false,
    };
    let file = |overrides: Overrides| RunTarget::Source {
        name: "f.py".into(),
        source: "pass\n".into(),
        overrides,
    };
    for overrides in [
        Overrides {
            read: Some(vec!["/srv".into()]),
            ..Overrides::default()
        },
        Overrides {
            network: Some(NetworkSpec::List(vec!["example.org:443".into()])),
            ..Overrides::default()
        },
        limits(LimitsSpec {
            memory: Some("1TiB".into()),
            ..LimitsSpec::default()
        }),
    ] {
        let err = scripts
            .run(unprivileged(file(overrides)))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, "forbidden", "{}", err.message);
    }
    // Within the defaults it runs.
    let ok = scripts
        .run(unprivileged(file(Overrides::default())))
        .await
        .unwrap();
    assert_eq!(scripts.wait(ok.id).await.unwrap().record.state, "succeeded");
    // A narrowed script's older version is not runnable without admin.
    crate::add(&scripts, "narrowed", "pass\n").await;
    scripts
        .set_meta(
            "narrowed",
            &Overrides {
                filesystem: Some(false),
                ..Overrides::default()
            },
        )
        .await
        .unwrap();
    let err = scripts
        .run(unprivileged(RunTarget::Script {
            id: "narrowed".into(),
            version: Some(1),
        }))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code, "forbidden");
    let current = scripts
        .run(unprivileged(RunTarget::Script {
            id: "narrowed".into(),
            version: Some(2),
        }))
        .await
        .unwrap();
    assert_eq!(
        scripts.wait(current.id).await.unwrap().record.state,
        "succeeded"
    );
}
