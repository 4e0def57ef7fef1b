//! `serve` binds its port first: the API answers while plugins start, `/readyz` says when the
//! start wave is done, and a busy port is reported at once.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::{Expect, Server, check, open_tempdir, plugd};

/// A plugin that holds its start-up until the test creates `release` in its data dir (instead
/// of sleeping a fixed time: the test decides when it has seen what it needs).
const GATED_PY: &str = r#"
import os
import time

from plugd import Plugin

plugin = Plugin()


@plugin.action(description="Answers pong")
async def ping(payload):
    return "pong"


deadline = time.monotonic() + 30
while not os.path.exists(os.path.join(os.environ["PLUGD_DATA_DIR"], "release")):
    if time.monotonic() > deadline:
        raise SystemExit("never released")
    time.sleep(0.02)
plugin.run()
"#;

const GATED_TOML: &str = r#"schema = 1

[plugin]
name = "gated"
version = "0.1.0"
runtime = "process"
entry = ["python3", "main.py"]

[limits]
call_timeout = "5s"

[[actions]]
name = "ping"
description = "Answers pong"
"#;

fn write_gated(plugins: &Path) {
    let dir = plugins.join("gated");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("plugin.toml"), GATED_TOML).unwrap();
    std::fs::write(dir.join("main.py"), GATED_PY).unwrap();
}

/// `GET path` on `url` (`http://host:port`): status and JSON body.
fn get(url: &str, path: &str) -> (u16, Value) {
    let authority = url.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1;
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"));
    (status, body)
}

#[test]
fn the_api_answers_while_plugins_start_and_readyz_flips() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    write_gated(&plugins);
    let state = tmp.path().join("state");
    let args = [
        OsStr::new("--plugins"),
        plugins.as_os_str(),
        OsStr::new("--state-dir"),
        state.as_os_str(),
    ];
    let mut server = Server::spawn_unready(tmp.path(), &args, &tmp.path().join("serve.log"));

    let (status, health) = get(&server.url, "/healthz");
    assert_eq!((status, &health["status"]), (200, &"ok".into()), "{health}");
    let (status, ready) = get(&server.url, "/readyz");
    assert_eq!(
        (status, &ready["status"]),
        (503, &"starting".into()),
        "{ready}"
    );
    // The plugin is listed as starting (once discovery has named it).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let states = server.states();
        if states == [("gated".to_owned(), "starting".to_owned())] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{states:?}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    check(
        &server.cli(&["call", "gated", "ping"]),
        &Expect::Err {
            stderr: &["plugin_not_running", "503"],
        },
    );

    std::fs::write(state.join("data/gated/release"), "").unwrap();
    server.wait_ready();
    let (status, ready) = get(&server.url, "/readyz");
    assert_eq!(
        (status, &ready["status"]),
        (200, &"ready".into()),
        "{ready}"
    );
    assert_eq!(ready["plugins"]["running"], 1, "{ready}");
    check(
        &server.cli(&["call", "gated", "ping"]),
        &Expect::Ok { stdout: &["pong"] },
    );
}

#[test]
fn a_busy_port_is_reported_at_once() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    // Never released: if `serve` started plugins before binding, it would wait for this one.
    write_gated(&plugins);
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let state = tmp.path().join("state");
    check(
        &plugd(&[
            "serve",
            "--listen",
            &addr,
            "--plugins",
            plugins.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]),
        &Expect::Err {
            stderr: &[
                &format!("Cannot listen on `{addr}`: the address is already in use"),
                "hint:",
                "`--listen 127.0.0.1:0`",
            ],
        },
    );
    assert!(
        !state.join("data/gated").exists(),
        "a plugin was started before the port was bound"
    );
}
