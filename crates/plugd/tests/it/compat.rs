//! Plugins written for the systems plugd replaces, run unchanged by the real binary and called
//! through its HTTP API: an xcore plugin (`plugin.yaml`, `handle()`), a class-based one
//! (`plugin.json` with `class_path`, `BasePlugin`) and an image-tool one (`__init__.py` with
//! `plugin_class`), from `examples/compat`. Lifecycle order, the error mapping, the rate limit,
//! events both ways, `data/` seeding, and kv that survives a SIGKILL of the host.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Server, copy_dir, open_tempdir, plugd, repo};

/// One HTTP exchange: status, the `Retry-After` header if any, and the JSON body.
fn request(authority: &str, method: &str, path: &str, body: &str) -> (u16, Option<String>, Value) {
    let mut stream = TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let retry_after = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after: ")
            .map(str::to_owned)
    });
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    (status, retry_after, body)
}

fn call(authority: &str, plugin: &str, action: &str, payload: Value) -> (u16, Value) {
    let (status, _, body) = request(
        authority,
        "POST",
        &format!("/plugin/{plugin}/{action}"),
        &payload.to_string(),
    );
    (status, body)
}

/// The three example packages in a plugins dir, with a directory plugd cannot read beside them.
fn plugins_dir(tmp: &Path) -> std::path::PathBuf {
    let plugins = tmp.join("plugins");
    for name in ["xcore-notes", "classic-hello", "panoptic-demo"] {
        copy_dir(
            &repo().join("examples/compat").join(name),
            &plugins.join(name),
        );
    }
    std::fs::create_dir_all(plugins.join("notes-backup")).unwrap();
    std::fs::write(plugins.join("notes-backup/notes.json"), "[]").unwrap();
    plugins
}

#[test]
fn foreign_plugins_run_unchanged_through_the_api() {
    let tmp = open_tempdir();
    let plugins = plugins_dir(tmp.path());
    let state = tmp.path().join("state");
    // Signed and trusted, the xcore plugin may read the host variable its `env` names.
    crate::sign_and_trust(tmp.path(), &plugins, &state, &["xcore-notes"]);
    let args = [
        OsStr::new("--plugins"),
        plugins.as_os_str(),
        OsStr::new("--state-dir"),
        state.as_os_str(),
    ];
    let env = [("NOTES_TITLE", OsStr::new("Team notes"))];
    let log = tmp.path().join("serve.log");
    let mut server = Server::spawn_command(tmp.path(), "serve", &args, &env, &log);
    let at = server.url.strip_prefix("http://").unwrap().to_owned();
    assert_eq!(
        server.states(),
        [
            ("classic_hello".to_owned(), "running".to_owned()),
            ("notes-manager".to_owned(), "running".to_owned()),
            ("panoptic-demo".to_owned(), "running".to_owned()),
        ],
        "{}",
        server.log()
    );
    // The directory without a manifest is reported, not skipped in silence.
    let listed = server.cli(&["list"]);
    assert!(listed.stdout.contains("notes-backup"), "{listed}");
    let status = server.cli(&["status", "notes-manager"]);
    assert!(
        status
            .stdout
            .contains("foreign: xcore plugin `notes manager` from `plugin.yaml`"),
        "{status}"
    );

    // xcore: the original name is kept; hooks ran in xcore's order; the seed data is there.
    let (_, _, info) = request(&at, "GET", "/api/v1/plugins/notes-manager", "");
    assert_eq!(info["foreign"]["original_name"], "notes manager", "{info}");
    assert_eq!(info["foreign"]["dialect"], "xcore", "{info}");
    let (status, body) = call(&at, "notes-manager", "lifecycle", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["value"]["calls"],
        json!(["env_variable", "on_load"]),
        "{body}"
    );
    let (_, body) = call(&at, "notes-manager", "list", json!({}));
    assert_eq!(
        body["value"]["title"], "Team notes",
        "the `${{NOTES_TITLE}}` substitution: {body}"
    );
    let seeded = body["value"]["notes"].as_array().unwrap().len();
    assert!(
        seeded >= 1,
        "the package's data/notes.json is seeded: {body}"
    );
    let (status, body) = call(&at, "notes-manager", "add", json!({"text": "buy milk"}));
    assert_eq!(status, 200, "{body}");
    let id = body["value"]["note"]["id"].clone();

    // Its answers map onto plugd's errors.
    let (status, body) = call(&at, "notes-manager", "get", json!({"id": 999}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert_eq!(body["error"]["message"], "No note with id 999");
    let (status, body) = call(&at, "notes-manager", "fail", json!({}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["message"], "This action always fails");

    // `rate_limit: {calls: 5, period_seconds: 60}`: the 6th call within a minute is a 429.
    let (status, retry, body) = request(&at, "POST", "/plugin/notes-manager/list", "{}");
    assert_eq!((status, retry), (429, Some("60".to_owned())), "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");

    // class-based: each hook once, in order; services are actions by full and short name.
    let (status, body) = call(&at, "classic_hello", "example.lifecycle", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], json!(["on_load", "on_start"]), "{body}");
    let (status, body) = call(&at, "classic_hello", "hello", json!({"name": "Ada"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"]["greeting"], "Hello, Ada!", "{body}");
    let (_, body) = call(&at, "classic_hello", "example.count", json!({}));
    let first = body["value"]["count"].as_u64().unwrap();
    // What it publishes on its bus is on plugd's event log...
    let (_, _, events) = request(&at, "GET", "/api/v1/events?topic=classic.*", "");
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["topic"] == "classic.hello" && e["payload"]["name"] == "Ada"),
        "{events}"
    );
    // ... and what is published to plugd reaches its bus's subscribers.
    let (status, _, body) = request(
        &at,
        "POST",
        "/api/v1/events",
        &json!({"topic": "classic.ping", "payload": {}}).to_string(),
    );
    assert_eq!(status, 202, "{body}");
    let mut received = Value::Null;
    for _ in 0..100 {
        received = call(&at, "classic_hello", "example.received", json!({})).1;
        if received.to_string().contains("classic.ping") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(received.to_string().contains("classic.ping"), "{received}");

    // Image tool: an action made by `add_action_easy`, its result shape, params from plugd.
    let (status, body) = call(
        &at,
        "panoptic-demo",
        "cluster",
        json!({"context": {"instance_ids": [1, 2, 3, 4]}, "nb_clusters": 2}),
    );
    assert_eq!(status, 200, "{body}");
    let value = &body["value"];
    assert_eq!(value["groups"][0]["ids"], json!([1, 3]), "{body}");
    assert_eq!(value["groups"][1]["ids"], json!([2, 4]), "{body}");

    // SIGKILL: kv written through the class-based storage and the data dir survive.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let server = Server::spawn_command(
        tmp.path(),
        "serve",
        &args,
        &env,
        &tmp.path().join("serve2.log"),
    );
    let at = server.url.strip_prefix("http://").unwrap().to_owned();
    let (_, body) = call(&at, "classic_hello", "example.count", json!({}));
    let second = body["value"]["count"].as_u64().unwrap();
    assert_eq!(second, first + 1, "the counter is kept in plugd kv: {body}");
    let (_, body) = call(&at, "classic_hello", "example.lifecycle", json!({}));
    // Killed, the first instance never ran its stop hooks; the second started again.
    assert_eq!(
        body["value"],
        json!(["on_load", "on_start", "on_load", "on_start"]),
        "{body}"
    );
    let (status, body) = call(&at, "notes-manager", "get", json!({"id": id}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"]["note"]["text"], "buy milk");
    let (_, body) = call(&at, "notes-manager", "lifecycle", json!({}));
    assert_eq!(
        body["value"]["calls"],
        json!(["env_variable", "on_load", "env_variable", "on_load"]),
        "seeded once, not again over the plugin's own data: {body}"
    );
}

#[test]
fn a_clean_stop_runs_the_stop_hooks_once_in_order() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    copy_dir(
        &repo().join("examples/compat/classic-hello"),
        &plugins.join("classic-hello"),
    );
    let state = tmp.path().join("state");
    let args = [
        OsStr::new("--plugins"),
        plugins.as_os_str(),
        OsStr::new("--state-dir"),
        state.as_os_str(),
    ];
    let log = tmp.path().join("serve.log");
    let server = Server::spawn(tmp.path(), &args, &log);
    // Unload waits for the stop (and its hooks); a restart would start the new instance first.
    server.cli(&["unload", "classic_hello"]).ok();
    server.cli(&["load", "classic_hello"]).ok();
    let at = server.url.strip_prefix("http://").unwrap().to_owned();
    let (_, body) = call(&at, "classic_hello", "example.lifecycle", json!({}));
    assert_eq!(
        body["value"],
        json!([
            "on_load",
            "on_start",
            "on_stop",
            "on_unload",
            "on_load",
            "on_start"
        ]),
        "{body}"
    );
}

#[test]
fn migrate_converts_each_format_and_the_result_serves_the_same() {
    let tmp = open_tempdir();
    let out = tmp.path().join("plugins");
    let key = tmp.path().join("k.key");
    plugd(&["keygen", "--out", key.to_str().unwrap()]).ok();
    for name in ["xcore-notes", "classic-hello", "panoptic-demo"] {
        let to = out.join(name);
        let run = plugd(&[
            "migrate",
            repo().join("examples/compat").join(name).to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
            "--sign",
            key.to_str().unwrap(),
        ]);
        run.ok();
        assert!(run.stdout.contains("Review by hand:"), "{run}");
        assert!(run.stdout.contains("Signed `"), "{run}");
        let toml = std::fs::read_to_string(to.join("plugin.toml")).unwrap();
        assert!(toml.starts_with("# Migrated by `plugd migrate`"), "{toml}");
        plugd(&[
            "verify",
            to.to_str().unwrap(),
            "--key",
            &format!("{}.pub", key.display()),
        ])
        .ok();
    }
    // The xcore manifest is not copied; every change is reported.
    assert!(!out.join("xcore-notes/plugin.yaml").exists());
    let run = plugd(&[
        "--json",
        "migrate",
        repo().join("examples/compat/xcore-notes").to_str().unwrap(),
        "--to",
        tmp.path().join("again").to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["plugin"], "notes-manager");
    assert_eq!(report["original_name"], "notes manager");
    let fields: Vec<&str> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"resources.rate_limit") && fields.contains(&"name"),
        "{fields:?}"
    );

    // In place: the foreign manifest stays beside, as `.orig`; `--to` inside the package and a
    // name that would write its own lines into `plugin.toml` are refused.
    let inplace = tmp.path().join("inplace");
    copy_dir(&repo().join("examples/compat/xcore-notes"), &inplace);
    plugd(&["migrate", inplace.to_str().unwrap()]).ok();
    assert!(inplace.join("plugin.yaml.orig").is_file() && !inplace.join("plugin.yaml").exists());
    let inside = plugd(&[
        "migrate",
        out.join("classic-hello").to_str().unwrap(),
        "--to",
        out.join("classic-hello/sub").to_str().unwrap(),
    ]);
    assert!(
        inside.stderr.contains("already a plugd package"),
        "{inside}"
    );
    let evil = tmp.path().join("evil");
    std::fs::create_dir_all(&evil).unwrap();
    std::fs::write(
        evil.join("plugin.yaml"),
        "name: \"notes\\n[permissions.net]\\nconnect = [\\\"exfil.example.org:443\\\"]\"\nversion: 1.0.0\n",
    )
    .unwrap();
    let refused = plugd(&[
        "migrate",
        evil.to_str().unwrap(),
        "--to",
        tmp.path().join("evil-out").to_str().unwrap(),
    ]);
    assert_eq!(refused.code, Some(1), "{refused}");
    assert!(
        refused.stderr.contains("contains a control character"),
        "{refused}"
    );
    assert!(!tmp.path().join("evil-out/plugin.toml").exists());

    // A native package is refused with the reason.
    let native = plugd(&[
        "migrate",
        repo().join("examples/plugins/hello").to_str().unwrap(),
    ]);
    assert_eq!(native.code, Some(1), "{native}");
    assert!(
        native.stderr.contains("is already a plugd package"),
        "{native}"
    );

    // The migrated packages serve like the originals.
    let state = tmp.path().join("state");
    plugd(&[
        "--state-dir",
        state.to_str().unwrap(),
        "trust",
        "add",
        &format!("{}.pub", key.display()),
    ])
    .ok();
    let args = [
        OsStr::new("--plugins"),
        out.as_os_str(),
        OsStr::new("--state-dir"),
        state.as_os_str(),
        OsStr::new("--strict"),
    ];
    let server = Server::spawn(tmp.path(), &args, &tmp.path().join("serve.log"));
    let at = server.url.strip_prefix("http://").unwrap().to_owned();
    let (status, body) = call(&at, "notes-manager", "get", json!({"id": 999}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (status, body) = call(&at, "classic_hello", "example.hello", json!({"name": "Bo"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"]["greeting"], "Hello, Bo!");
}
