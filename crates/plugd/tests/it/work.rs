//! Events and tasks through the real binary: `plugd emit`, `plugd events` (history, `--follow`,
//! `dead`, `replay`), `plugd task submit|show|cancel` (with `--wait` and its exit codes),
//! `plugd tasks` (table and `--watch`), and the `serve` flags and `[durable]` config of the
//! bounds.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Expect, Server, check, open_tempdir, plugd};

const WORKER_TOML: &str = r#"[plugin]
name = "worker"
version = "1.0.0"
runtime = "process"
entry = ["python3", "main.py"]

[limits]
tasks = 1

[events]
subscribe = ["image.*"]
"#;

const WORKER_PY: &str = r#"import asyncio
from plugd import Plugin
plugin = Plugin()

@plugin.on_event("image.*")
async def on_image(topic, payload):
    if isinstance(payload, dict) and payload.get("fail"):
        raise ValueError("cannot handle it")

@plugin.task("step")
async def step(payload, ctx):
    ctx.progress(0.5, "half way")
    await asyncio.sleep(0.05)
    return {"done": payload}

@plugin.task("hold")
async def hold(payload, ctx):
    ctx.progress(0.25, "holding")
    await asyncio.sleep(60)
    return "finished"

plugin.run()
"#;

/// A plugins dir with `worker` in `tmp`.
fn worker(tmp: &Path) -> std::path::PathBuf {
    let plugins = tmp.join("plugins");
    std::fs::create_dir_all(plugins.join("worker")).unwrap();
    std::fs::write(plugins.join("worker/plugin.toml"), WORKER_TOML).unwrap();
    std::fs::write(plugins.join("worker/main.py"), WORKER_PY).unwrap();
    plugins
}

/// A CLI command that keeps running (`--follow`, `--watch`, `--wait`): its stdout line by line.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(server: &Server, args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_plugd"))
            .args(["--server", &server.url])
            .args(args)
            .env_remove("PLUGD_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let reader = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one contains `needle` (30 s at most); returns it.
    #[track_caller]
    fn line_with(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!("no line with {needle:?} ({e}); seen: {:#?}", self.seen),
            }
        }
    }

    /// Waits for the exit (30 s at most): the code and stderr.
    #[track_caller]
    fn exit(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr)
                    .unwrap();
                return (status.code(), stderr);
            }
            assert!(Instant::now() < deadline, "`plugd` did not exit in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--json task show ID`, parsed.
fn task(server: &Server, id: u64) -> Value {
    let run = server.cli(&["--json", "task", "show", &id.to_string()]);
    serde_json::from_str(&run.ok().stdout).unwrap()
}

/// Submits a task with `--json`; returns its id.
fn submit(server: &Server, args: &[&str]) -> u64 {
    let mut full = vec!["--json", "task", "submit"];
    full.extend_from_slice(args);
    let run = server.cli(&full);
    let task: Value = serde_json::from_str(&run.ok().stdout).unwrap();
    task["id"].as_u64().unwrap()
}

#[test]
fn events_from_the_cli_emit_list_follow_and_dead_letters() {
    let tmp = open_tempdir();
    let plugins = worker(tmp.path());
    let mut server = Server::start(&plugins, tmp.path());

    check(
        &server.cli(&["emit", "image.imported", r#"{"path":"a.png"}"#]),
        &Expect::Ok {
            stdout: &["Published event 1 (`image.imported`) to 1 subscriber: worker"],
        },
    );
    check(
        &server.cli(&["emit", "audio.done"]),
        &Expect::Ok {
            stdout: &["Published event 2 (`audio.done`); no plugin subscribes to it"],
        },
    );
    let run = server.cli(&["--json", "emit", "image.broken", r#"{"fail":true}"#]);
    let published: Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert_eq!(published["seq"], 3);
    assert_eq!(published["subscribers"], serde_json::json!(["worker"]));

    let list = server.cli(&["events"]);
    let lines: Vec<&str> = list.ok().stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(lines[0].starts_with("1 "), "{list}");
    assert!(lines[0].contains("image.imported"), "{list}");
    assert!(lines[0].contains(r#"{"path":"a.png"}"#), "{list}");
    check(
        &server.cli(&["events", "--topic", "audio.*"]),
        &Expect::Ok {
            stdout: &["audio.done"],
        },
    );
    let images = server.cli(&["events", "--topic", "image.*", "--after", "1"]);
    assert_eq!(images.ok().stdout.lines().count(), 1, "{images}");
    check(
        &server.cli(&["events", "--topic", "nothing.here"]),
        &Expect::Ok {
            stdout: &["No events matching `nothing.here`"],
        },
    );

    // Refused before or by the server, with the reason.
    check(
        &server.cli(&["emit", "plugd.started"]),
        &Expect::Err {
            stderr: &["reserved", "(bad_request, HTTP 400)"],
        },
    );
    check(
        &plugd(&["--server", "http://127.0.0.1:9", "emit", "a", "{nope"]),
        &Expect::Err {
            stderr: &["The payload is not valid JSON"],
        },
    );
    check(
        &server.cli(&["events", "--topic", "image*"]),
        &Expect::Err {
            stderr: &["Topic pattern `image*` is not valid"],
        },
    );

    // Follow: the stored events after 1, then a live one, one JSON object per line.
    let mut follow = Running::start(&server, &["--json", "events", "--follow", "--after", "1"]);
    let line = follow.line_with("audio.done");
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["seq"], 2);
    follow.line_with("image.broken");
    server.cli(&["emit", "image.late"]).ok();
    let line = follow.line_with("image.late");
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["seq"], 4);

    // The failing delivery becomes a dead letter (5 tries over ~3 s); replay sends a copy.
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let dead = server.cli(&["events", "dead", "--plugin", "worker"]);
        if dead.ok().stdout.contains("image.broken") {
            break dead;
        }
        assert!(Instant::now() < deadline, "no dead letter: {dead}");
        std::thread::sleep(Duration::from_millis(100));
    };
    check(
        &dead,
        &Expect::Ok {
            stdout: &[
                "worker event 3 `image.broken`: 5 attempts failed, last:",
                "cannot handle it",
                r#"payload {"fail":true}"#,
            ],
        },
    );
    check(
        &server.cli(&["events", "replay", "worker", "3"]),
        &Expect::Ok {
            stdout: &["Replayed event 3 to `worker` as event 5"],
        },
    );
    // A replayed copy is not broadcast live: the follower reads it from the store at the next
    // published event (whose seq leaves a gap), in order.
    server.cli(&["emit", "image.after"]).ok();
    let line = follow.line_with(r#""seq":5"#);
    assert!(line.contains(r#""target":"worker""#), "{line}");
    follow.line_with(r#""seq":6"#);
    check(
        &server.cli(&["events", "replay", "worker", "99"]),
        &Expect::Err {
            stderr: &["has no dead letter for event 99", "(not_found, HTTP 404)"],
        },
    );
    check(
        &server.cli(&["events", "dead", "--plugin", "nope"]),
        &Expect::Err {
            stderr: &["(plugin_not_found, HTTP 404)"],
        },
    );

    // Stopping the server ends the follower (it does not hold the shutdown up), with a hint.
    let started = Instant::now();
    assert!(server.terminate().success());
    assert!(started.elapsed() < Duration::from_secs(20));
    let (code, stderr) = follow.exit();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("ended the event stream")
            && stderr.contains("resume with `plugd events --follow --after 6`"),
        "{stderr}"
    );
}

#[test]
fn tasks_from_the_cli_submit_wait_watch_show_and_cancel() {
    let tmp = open_tempdir();
    let plugins = worker(tmp.path());
    let server = Server::start(&plugins, tmp.path());

    // `--wait`: the result on stdout, exit 0.
    let run = server.cli(&["task", "submit", "worker", "step", r#"{"n":1}"#, "--wait"]);
    assert_eq!(run.code, Some(0), "{run}");
    let result: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(result, serde_json::json!({"done": {"n": 1}}));

    // A task the plugin has no handler for: exit 3, the error and its code on stderr.
    let run = server.cli(&["task", "submit", "worker", "nope", "--wait"]);
    assert_eq!(run.code, Some(3), "{run}");
    assert!(
        run.stderr.contains("failed after 1 attempt: ")
            && run.stderr.contains("has no task `nope`")
            && run.stderr.contains("(task_not_found)"),
        "{run}"
    );

    // Watch, while a task is held, another queued behind it and then cancelled.
    let mut watch = Running::start(&server, &["tasks", "--watch", "--plugin", "worker"]);
    let waiting = Running::start(&server, &["task", "submit", "worker", "hold", "--wait"]);
    let held = watch.line_with("worker/hold running");
    let held: u64 = held.split_whitespace().nth(1).unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while task(&server, held)["progress"] != 0.25 {
        assert!(
            Instant::now() < deadline,
            "no progress: {}",
            task(&server, held)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    check(
        &server.cli(&["task", "show", &held.to_string()]),
        &Expect::Ok {
            stdout: &[
                &format!("Task {held} (worker/hold): running"),
                "attempts:  1 of 3",
                "progress:  25% holding",
                "payload:   {}",
            ],
        },
    );
    check(
        &server.cli(&["task", "submit", "worker", "step", "{}", "--key", "k"]),
        &Expect::Ok {
            stdout: &["(worker/step) queued; follow it with `plugd task show"],
        },
    );
    let queued = submit(&server, &["worker", "step", "{}", "--key", "k", "--dedupe"]);
    check(
        &server.cli(&["task", "submit", "worker", "step", "--key", "k", "--dedupe"]),
        &Expect::Ok {
            stdout: &[&format!(
                "Task {queued} (worker/step) is already queued with key `k`; no new task was submitted"
            )],
        },
    );
    watch.line_with(&format!("task {queued} worker/step queued"));
    check(
        &server.cli(&["task", "cancel", &queued.to_string()]),
        &Expect::Ok {
            stdout: &[&format!(
                "Task {queued} (worker/step) cancelled before it ran"
            )],
        },
    );
    watch.line_with(&format!("task {queued} worker/step cancelled: "));
    check(
        &server.cli(&["task", "cancel", &held.to_string()]),
        &Expect::Ok {
            stdout: &[&format!(
                "Task {held} (worker/hold) cancelled; its handler stopped"
            )],
        },
    );
    watch.line_with(&format!("task {held} worker/hold cancelled: "));
    // The waiting submit exits 4 for a cancelled task, saying so.
    let (code, stderr) = waiting.exit();
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("Task {held} (worker/hold) was cancelled: ")),
        "{stderr}"
    );

    // The table, filtered; show; bad filters.
    let table = server.cli(&["tasks"]);
    let lines: Vec<&str> = table.ok().stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATE") && lines[0].contains("PROGRESS"),
        "{table}"
    );
    // step, nope, hold, the cancelled step (and the `@after_last` run its key `k` ended with).
    let rows = lines[1..].iter().filter(|l| !l.contains("@after_last"));
    assert_eq!(rows.count(), 4, "{table}");
    let failed = server.cli(&["tasks", "--state", "failed"]);
    assert_eq!(failed.ok().stdout.lines().count(), 2, "{failed}");
    assert!(failed.stdout.contains("task_not_found"), "{failed}");
    check(
        &server.cli(&["task", "show", &held.to_string()]),
        &Expect::Ok {
            stdout: &[
                &format!("Task {held} (worker/hold): cancelled"),
                "the handler stopped when cancelled",
            ],
        },
    );
    check(
        &server.cli(&["tasks", "--state", "done"]),
        &Expect::Err {
            stderr: &["invalid value 'done' for '--state"],
        },
    );
    check(
        &server.cli(&["task", "show", "999"]),
        &Expect::Err {
            stderr: &["There is no task 999", "(not_found, HTTP 404)"],
        },
    );
    check(
        &server.cli(&["task", "submit", "nope", "step"]),
        &Expect::Err {
            stderr: &["(plugin_not_found, HTTP 404)"],
        },
    );
    check(
        &server.cli(&["task", "submit", "worker", "step", "--dedupe"]),
        &Expect::Err {
            stderr: &["--key <KEY>"],
        },
    );
}

#[test]
fn serve_takes_the_bounds_from_flags_over_the_config_file() {
    let tmp = open_tempdir();
    let plugins = worker(tmp.path());
    let config = tmp.path().join("plugd.toml");
    std::fs::write(
        &config,
        "[durable]\nretention = \"0\"\ntask_queue = 5\nevent_backlog = 100\n",
    )
    .unwrap();
    let state = tmp.path().join("state");
    let server = Server::spawn(
        tmp.path(),
        &[
            OsStr::new("--plugins"),
            plugins.as_os_str(),
            OsStr::new("--state-dir"),
            state.as_os_str(),
            OsStr::new("--config"),
            config.as_os_str(),
            OsStr::new("--task-queue"),
            OsStr::new("1"),
        ],
        &tmp.path().join("serve.log"),
    );
    // One runs, one waits: the queue of 1 (the flag, not the file's 5) is full.
    let held = submit(&server, &["worker", "hold"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while task(&server, held)["state"] != "running" {
        assert!(Instant::now() < deadline, "the task did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    submit(&server, &["worker", "step"]);
    check(
        &server.cli(&["task", "submit", "worker", "step"]),
        &Expect::Err {
            stderr: &["already has 1 queued tasks", "(overloaded, HTTP 429)"],
        },
    );

    for (args, needle) in [
        (
            &["serve", "--retention", "7 days"][..],
            "Invalid retention `7 days`",
        ),
        (&["serve", "--task-queue", "0"][..], "--task-queue <N>"),
    ] {
        check(&plugd(args), &Expect::Err { stderr: &[needle] });
    }
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[durable]\nretention = \"forever\"\n").unwrap();
    check(
        &plugd(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--plugins",
            plugins.to_str().unwrap(),
            "--state-dir",
            tmp.path().join("state2").to_str().unwrap(),
            "--config",
            bad.to_str().unwrap(),
        ]),
        &Expect::Err {
            stderr: &["In `[durable]`: Invalid retention `forever`"],
        },
    );
}
