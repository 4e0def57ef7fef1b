//! "Acknowledged means committed", through the real binary: a plugin writes kv entries while the
//! API acknowledges them; `plugd serve` is SIGKILLed in the middle of the stream; after a restart
//! every acknowledged entry is there.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::{Server, open_tempdir};

const LEDGER_TOML: &str = r#"[plugin]
name = "ledger"
version = "1.0.0"
runtime = "process"
entry = ["python3", "main.py"]

[permissions]
services = ["kv"]
"#;

const LEDGER_PY: &str = r#"from plugd import Plugin
plugin = Plugin()

@plugin.action()
async def add(p):
    return await plugin.kv.set(p["k"], p["v"])

@plugin.action()
async def get(p):
    return await plugin.kv.get(p["k"])

plugin.run()
"#;

/// `POST path` with a JSON body: the status, or `None` when the server went away.
pub(crate) fn post(authority: &str, path: &str, body: &str) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect(authority).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n")?.1;
    Some((status, serde_json::from_str(body).ok()?))
}

#[test]
fn entries_acknowledged_before_a_sigkill_survive_the_restart() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(plugins.join("ledger")).unwrap();
    std::fs::write(plugins.join("ledger/plugin.toml"), LEDGER_TOML).unwrap();
    std::fs::write(plugins.join("ledger/main.py"), LEDGER_PY).unwrap();
    let state = tmp.path().join("state");
    let args = [
        OsStr::new("--plugins"),
        plugins.as_os_str(),
        OsStr::new("--state-dir"),
        state.as_os_str(),
    ];
    let mut server = Server::spawn(tmp.path(), &args, &tmp.path().join("serve.log"));
    let authority = server.url.strip_prefix("http://").unwrap().to_owned();

    // Four writers; each records the keys the API acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (authority, stop) = (authority.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{w}-{i}");
                    let body = serde_json::json!({ "k": key, "v": i }).to_string();
                    match post(&authority, "/plugin/ledger/add", &body) {
                        Some((200, _)) => acked.push(key),
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    // Let a few hundred writes through, then kill the host without warning, writes in flight.
    while writers.iter().all(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_millis(200));
        let probe = post(&authority, "/plugin/ledger/get", r#"{"k": "w0-50"}"#);
        if matches!(probe, Some((200, ref v)) if v["value"] == 50) {
            break;
        }
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        acked.len() >= 50,
        "only {} writes were acknowledged",
        acked.len()
    );

    let server = Server::spawn(tmp.path(), &args, &tmp.path().join("serve2.log"));
    let authority = server.url.strip_prefix("http://").unwrap().to_owned();
    for key in &acked {
        let body = serde_json::json!({ "k": key }).to_string();
        let (status, value) = post(&authority, "/plugin/ledger/get", &body).unwrap();
        assert_eq!(status, 200, "{value}");
        let n: u64 = key.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(value["value"], n, "acknowledged `{key}` was lost");
    }
}
