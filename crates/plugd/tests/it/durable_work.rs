//! Durable tasks and events through the real binary: `plugd serve` is SIGKILLed with tasks
//! queued and one running, and events published but not yet delivered; after a restart every
//! queued task runs, the running one runs again (its `attempt` says 2), and every event is
//! delivered (at least once).

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::durable::post;
use crate::{Server, open_tempdir};

const WORKER_TOML: &str = r#"[plugin]
name = "worker"
version = "1.0.0"
runtime = "process"
entry = ["python3", "main.py"]

[permissions]
services = ["kv", "tasks"]

[limits]
tasks = 1

[events]
subscribe = ["work.*"]
"#;

/// Tasks and events record themselves in kv. The first run of a `block` task and the first
/// delivery of event 0 hang (until the host is killed); later ones go through.
const WORKER_PY: &str = r#"import asyncio
from plugd import Plugin
plugin = Plugin()

@plugin.action()
async def enqueue(p):
    ids = []
    for i in range(p["n"]):
        ids.append(int(await plugin.submit("job", {"block": i == 0})))
    return ids

@plugin.action()
async def get(p):
    return await plugin.kv.get(p["k"])

@plugin.task("job")
async def job(payload, ctx):
    await plugin.kv.set(f"run-{ctx.id}-{ctx.attempt}", True)
    if payload["block"] and ctx.attempt == 1:
        await asyncio.sleep(3600)
    await plugin.kv.set(f"done-{ctx.id}", ctx.attempt)
    return ctx.attempt

@plugin.on_event("work.*")
async def note(topic, payload):
    n = payload["n"]
    if n == 0 and not await plugin.kv.get("ev-blocked"):
        await plugin.kv.set("ev-blocked", True)
        await asyncio.sleep(3600)
    await plugin.kv.set(f"ev-{n}", True)

plugin.run()
"#;

const PRODUCER_TOML: &str = r#"[plugin]
name = "producer"
version = "1.0.0"
runtime = "process"
entry = ["python3", "main.py"]

[permissions]
services = ["events"]
"#;

const PRODUCER_PY: &str = r#"from plugd import Plugin
plugin = Plugin()

@plugin.action()
async def fire(p):
    for n in range(p["n"]):
        await plugin.emit("work.note", {"n": n})
    return p["n"]

plugin.run()
"#;

fn get(authority: &str, key: &str) -> Value {
    let body = json!({ "k": key }).to_string();
    match post(authority, "/plugin/worker/get", &body) {
        Some((200, v)) => v["value"].clone(),
        _ => Value::Null,
    }
}

/// Waits until `key` holds something (panics after 60 s).
fn wait_for(authority: &str, key: &str) -> Value {
    let started = Instant::now();
    loop {
        let v = get(authority, key);
        if !v.is_null() {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "`{key}` never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn queued_and_running_tasks_and_undelivered_events_survive_a_sigkill() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    for (name, toml, py) in [
        ("worker", WORKER_TOML, WORKER_PY),
        ("producer", PRODUCER_TOML, PRODUCER_PY),
    ] {
        std::fs::create_dir_all(plugins.join(name)).unwrap();
        std::fs::write(plugins.join(name).join("plugin.toml"), toml).unwrap();
        std::fs::write(plugins.join(name).join("main.py"), py).unwrap();
    }
    let state = tmp.path().join("state");
    let args = [
        OsStr::new("--plugins"),
        plugins.as_os_str(),
        OsStr::new("--state-dir"),
        state.as_os_str(),
    ];
    let mut server = Server::spawn(tmp.path(), &args, &tmp.path().join("serve.log"));
    let authority = server.url.strip_prefix("http://").unwrap().to_owned();

    let (status, ids) = post(&authority, "/plugin/worker/enqueue", r#"{"n": 4}"#).unwrap();
    assert_eq!(status, 200, "{ids}");
    let ids: Vec<u64> = serde_json::from_value(ids["value"].clone()).unwrap();
    let (status, fired) = post(&authority, "/plugin/producer/fire", r#"{"n": 10}"#).unwrap();
    assert_eq!(status, 200, "{fired}");
    // The first task hangs in its first run (the others wait: one task at a time), and the
    // first event hangs in its first delivery (the others wait behind it: in order).
    wait_for(&authority, &format!("run-{}-1", ids[0]));
    wait_for(&authority, "ev-blocked");
    assert!(get(&authority, &format!("run-{}-1", ids[1])).is_null());
    assert!(get(&authority, "ev-1").is_null());
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();

    let server = Server::spawn(tmp.path(), &args, &tmp.path().join("serve2.log"));
    let authority = server.url.strip_prefix("http://").unwrap().to_owned();
    for (i, id) in ids.iter().enumerate() {
        let attempt = wait_for(&authority, &format!("done-{id}"));
        let expected = if i == 0 { 2 } else { 1 };
        assert_eq!(attempt, expected, "task {id}: the cut-short run counts");
    }
    for n in 0..10 {
        wait_for(&authority, &format!("ev-{n}"));
    }
}
