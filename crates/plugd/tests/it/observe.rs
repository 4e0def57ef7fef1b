//! Watching a running server from the outside: `plugd logs` (recent lines and `--follow`),
//! `serve --log-format json` with each call's span, and shell completions.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::{Server, checkout_copy_of, plugd};

#[test]
fn logs_shows_recent_lines_then_follows_new_ones() {
    let (tmp, plugins) = checkout_copy_of(&["hello"]);
    let server = Server::start(&plugins, tmp.path());

    // The host's own lines about the start are there from the beginning.
    let recent = server.cli(&["--json", "logs", "hello"]);
    recent.ok();
    let recent: Value = serde_json::from_str(&recent.stdout).unwrap();
    let lines = recent["lines"].as_array().unwrap();
    assert!(!lines.is_empty(), "{recent}");
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let human = server.cli(&["logs", "hello", "-n", "1"]);
    human.ok();
    assert_eq!(human.stdout.lines().count(), 1, "{human}");
    assert!(human.stdout.contains(" runtime "), "{human}");
    assert!(
        !human.stdout.contains('\x1b'),
        "no colour off a terminal: {human}"
    );

    // Following: every line after the newest shown, live.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_plugd"))
        .args([
            "--server",
            &server.url,
            "--json",
            "logs",
            "hello",
            "-n",
            "0",
        ])
        .arg("--follow")
        .env_remove("PLUGD_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // `hello` logs each `hello.*` event it handles. The follower may connect after the emit:
    // it starts after line 0, so it gets every line still held either way.
    server.cli(&["emit", "hello.watched", r#"{"n":7}"#]).ok();
    let mut seen = Vec::new();
    let found = loop {
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(e) => panic!("no followed line ({e}); got {seen:?}\n{}", server.log()),
        };
        let value: Value = serde_json::from_str(&line).unwrap();
        if value["message"]
            .as_str()
            .is_some_and(|m| m.contains("hello.watched"))
        {
            break value;
        }
        seen.push(line);
    };
    assert_eq!(found["source"], "plugin", "{found}");
    assert_eq!(found["level"], "info", "{found}");
    let _ = follower.kill();
    let _ = follower.wait();

    // An unknown plugin is a clear error, for both forms.
    for args in [&["logs", "nobody"][..], &["logs", "nobody", "--follow"]] {
        let run = server.cli(args);
        assert!(!run.success, "{run}");
        assert!(run.stderr.contains("nobody"), "{run}");
        assert!(run.stderr.contains("plugin_not_found"), "{run}");
    }
}

#[test]
fn json_logs_carry_each_calls_span() {
    let (tmp, plugins) = checkout_copy_of(&["hello"]);
    let server = Server::start_with(
        &plugins,
        tmp.path(),
        &["--log-format", "json", "--log", "info,plugd_host=debug"],
    );
    server
        .cli(&["call", "hello", "greet", r#"{"name":"Ada"}"#])
        .ok();
    let log = server.log();
    let mut finished = None;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            value["timestamp"].is_string() && value["level"].is_string(),
            "{line}"
        );
        if value["fields"]["message"] == "call finished" {
            finished = Some(value);
        }
    }
    let finished = finished.unwrap_or_else(|| panic!("no `call finished` line in\n{log}"));
    assert_eq!(finished["span"]["name"], "call", "{finished}");
    assert_eq!(finished["span"]["plugin"], "hello", "{finished}");
    assert_eq!(finished["span"]["action"], "greet", "{finished}");
    assert_eq!(finished["fields"]["outcome"], "ok", "{finished}");
    assert!(
        finished["fields"]["duration_ms"].as_f64().unwrap() > 0.0,
        "{finished}"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_plugd()"),
        ("zsh", "#compdef plugd"),
        ("fish", "complete -c plugd"),
    ] {
        let run = plugd(&["completions", shell]);
        run.ok();
        assert!(
            run.stdout.contains(marker),
            "{shell}: {}",
            &run.stdout[..200]
        );
        // Every subcommand is offered, the new ones included.
        for command in ["serve", "logs", "token", "completions"] {
            assert!(run.stdout.contains(command), "{shell} lacks {command}");
        }
    }
    let run = plugd(&["completions", "tcsh"]);
    assert!(!run.success);
    assert!(run.stderr.contains("possible values"), "{run}");
}
