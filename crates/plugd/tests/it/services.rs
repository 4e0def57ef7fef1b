//! Host services through the real binary: `plugd params`, `plugd kv`, `plugd uninstall` on the
//! `gallery` example, its background indexing (`plugd emit` -> `embed` tasks -> one rebuild),
//! and app services from `plugd.toml` forwarded to an HTTP endpoint.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Expect, Server, check, checkout_copy_of, plugd};

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Polls `plugd status NAME` until its recent logs contain `needle` (10 s at most).
#[track_caller]
fn wait_for_log(server: &Server, name: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = server.cli(&["status", name]);
        if status.ok().stdout.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no log {needle:?} in 10 s: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const IMAGES: &str =
    r#"{"images":[{"id":"a","score":0.1},{"id":"b","score":0.15},{"id":"c","score":0.9}]}"#;

#[test]
fn params_kv_and_uninstall_from_the_cli() {
    let (tmp, plugins) = checkout_copy_of(&["gallery"]);
    let server = Server::start(&plugins, tmp.path());

    check(
        &server.cli(&["params", "gallery"]),
        &Expect::Ok {
            stdout: &[
                "Params of `gallery`:",
                "batch_size  8    integer, at least 1, default 8 — Images handled per progress step",
                "threshold   0.5  number, 0..1, default 0.5 — How alike",
            ],
        },
    );
    check(
        &server.cli(&[
            "params",
            "gallery",
            "--set",
            "batch_size=16",
            "--set",
            "threshold=0.95",
        ]),
        &Expect::Ok {
            stdout: &[
                "Changed the params of `gallery`; the running plugin has them",
                "batch_size  16",
                "threshold   0.95",
            ],
        },
    );
    // Every violation is named, and nothing changes.
    check(
        &server.cli(&[
            "params",
            "gallery",
            "--set",
            "batch_size=0",
            "--set",
            "threshold=high",
        ]),
        &Expect::Err {
            stderr: &[
                "The params of plugin `gallery` were not changed: ",
                "`/batch_size`: ",
                "`/threshold`: ",
                "(bad_params, HTTP 400)",
            ],
        },
    );
    let params: Value =
        serde_json::from_str(&server.cli(&["--json", "params", "gallery"]).ok().stdout).unwrap();
    assert_eq!(
        params["params"],
        json!({"batch_size": 16, "threshold": 0.95})
    );
    // With threshold 0.95 only scores 0.05 apart share a group.
    let clustered = server.cli(&["--json", "call", "gallery", "cluster", IMAGES]);
    let clustered: Value = serde_json::from_str(&clustered.ok().stdout).unwrap();
    assert_eq!(clustered["value"], json!({"images": 3, "groups": 2}));
    // `@plugin.on_params_changed` logged them (it runs as a task of its own, so the record may
    // arrive after the call's answer).
    wait_for_log(
        &server,
        "gallery",
        "Params changed: batch_size=16, threshold=0.95",
    );
    assert_eq!(
        clustered["groups"],
        json!([
            {"name": "Cluster 1", "members": ["a", "b"], "id": "cluster-1", "score": 0.125,
             "scores": {"spread": 0.05}},
            {"name": "Cluster 2", "members": ["c"], "id": "cluster-2", "score": 0.9,
             "scores": {"spread": 0.0}},
        ])
    );
    assert_eq!(
        clustered["notifications"][0],
        json!({"level": "success", "title": "Clustered",
        "message": "3 images in 2 groups (threshold 0.95)",
        "actions": [
            {"action": "tag", "label": "Tag Cluster 1", "payload": {"ids": ["a", "b"], "tag": "cluster-1"}},
            {"action": "tag", "label": "Tag Cluster 2", "payload": {"ids": ["c"], "tag": "cluster-2"}},
        ]})
    );
    assert_eq!(
        clustered["notifications"][1],
        json!({"level": "warning", "title": "Outliers", "message": "1 image(s) match no other",
               "data": {"ids": ["c"]}})
    );
    // The human output shows notifications and groups.
    check(
        &server.cli(&["call", "gallery", "cluster", IMAGES]),
        &Expect::Ok {
            stdout: &[r#""groups": 2"#],
        },
    );
    let human = server.cli(&["call", "gallery", "cluster", IMAGES]);
    for needle in [
        "[success] Clustered: 3 images in 2 groups (threshold 0.95)",
        "  follow-up: Tag Cluster 1 (action `tag`)",
        "[warning] Outliers: 1 image(s) match no other",
        "group Cluster 1: 2 members, score 0.125",
    ] {
        assert!(human.stderr.contains(needle), "missing {needle:?}: {human}");
    }
    // The typed input is checked by the host against the manifest's schema.
    check(
        &server.cli(&["call", "gallery", "cluster", r#"{"images":[{"id":"a"}]}"#]),
        &Expect::Err {
            stderr: &["bad_payload", "/images/0"],
        },
    );

    check(
        &server.cli(&["params", "gallery", "--history"]),
        &Expect::Ok {
            stdout: &[
                "REV  WHEN (UTC)",
                r#"1    "#,
                r#"cli        {"batch_size":16,"threshold":0.95}"#,
            ],
        },
    );
    check(
        &server.cli(&["params", "gallery", "--reset"]),
        &Expect::Ok {
            stdout: &["batch_size  8  ", "threshold   0.5"],
        },
    );

    // A commit of several keys, undone and redone as a whole.
    check(
        &server.cli(&[
            "call",
            "gallery",
            "tag",
            r#"{"ids":["a","b"],"tag":"cats"}"#,
        ]),
        &Expect::Ok {
            stdout: &[r#""tagged": 2"#],
        },
    );
    check(
        &server.cli(&["kv", "gallery"]),
        &Expect::Ok {
            stdout: &["KEY    VALUE", "tag/a  \"cats\"", "tag/b  \"cats\""],
        },
    );
    server.cli(&["call", "gallery", "undo"]).ok();
    check(
        &server.cli(&["kv", "gallery", "tag/"]),
        &Expect::Ok {
            stdout: &["Plugin `gallery` has no kv entries under `tag/`"],
        },
    );
    server.cli(&["call", "gallery", "redo"]).ok();
    let kv: Value =
        serde_json::from_str(&server.cli(&["--json", "kv", "gallery", "tag/"]).ok().stdout)
            .unwrap();
    assert_eq!(
        kv,
        json!({"items": [{"key": "tag/a", "value": "cats"}, {"key": "tag/b", "value": "cats"}],
               "next": null})
    );
    check(
        &server.cli(&["kv", "gallery", "--limit", "1"]),
        &Expect::Ok {
            stdout: &[
                "tag/a  \"cats\"",
                "More entries follow `tag/a`; hint: `plugd kv gallery --limit 10` shows more",
            ],
        },
    );

    // Uninstall keeping the data, load again: the tags are still there.
    check(
        &server.cli(&["uninstall", "gallery", "--keep-data"]),
        &Expect::Ok {
            stdout: &[
                "Uninstalled `gallery`: stopped; its data dir, kv and params were kept",
                "`plugd load gallery` installs it again",
            ],
        },
    );
    check(
        &server.cli(&["list"]),
        &Expect::Ok {
            stdout: &["uninstalled"],
        },
    );
    server.cli(&["load", "gallery"]).ok();
    check(
        &server.cli(&["kv", "gallery"]),
        &Expect::Ok {
            stdout: &["tag/a  \"cats\""],
        },
    );
    // Uninstall for good: a reinstall starts clean.
    check(
        &server.cli(&["uninstall", "gallery"]),
        &Expect::Ok {
            stdout: &["removed its data dir, kv, params and staged copies"],
        },
    );
    server.cli(&["load", "gallery"]).ok();
    check(
        &server.cli(&["kv", "gallery"]),
        &Expect::Ok {
            stdout: &["Plugin `gallery` has no kv entries"],
        },
    );
    check(
        &server.cli(&["uninstall", "nope"]),
        &Expect::Err {
            stderr: &["Plugin `nope` is not installed", "plugin_not_found"],
        },
    );
}

/// The issue's example: ten `plugd emit image.imported` give ten `embed` tasks (key `index`), each
/// with its progress, and the `after_last("index")` hook rebuilds the index from all ten
/// embeddings once they are done.
#[test]
fn gallery_indexes_imported_images_with_one_rebuild_after_the_last_embedding() {
    let (tmp, plugins) = checkout_copy_of(&["gallery"]);
    let server = Server::start(&plugins, tmp.path());
    for i in 0..10 {
        check(
            &server.cli(&[
                "emit",
                "image.imported",
                &format!(r#"{{"path":"photos/{i}.png"}}"#),
            ]),
            &Expect::Ok {
                stdout: &["to 1 subscriber: gallery"],
            },
        );
    }
    // The index is rebuilt once the last embedding finished: poll until it holds all ten.
    let deadline = Instant::now() + Duration::from_secs(60);
    let index = loop {
        let index: Value = serde_json::from_str(
            &server
                .cli(&["--json", "call", "gallery", "index"])
                .ok()
                .stdout,
        )
        .unwrap();
        if index["value"]["images"] == 10 {
            break index["value"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no index of 10 images in 60 s: {index}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(index["dims"], 16);
    let nearest = index["nearest"].as_object().unwrap();
    assert_eq!(nearest.len(), 10, "{index}");
    for (path, near) in nearest {
        assert_ne!(
            near["path"],
            json!(path),
            "an image is not its own neighbour"
        );
        assert!(
            nearest.contains_key(near["path"].as_str().unwrap()),
            "{index}"
        );
        let similarity = near["similarity"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&similarity), "{index}");
    }

    let listed: Value = serde_json::from_str(
        &server
            .cli(&["--json", "tasks", "--plugin", "gallery", "--key", "index"])
            .ok()
            .stdout,
    )
    .unwrap();
    let tasks = listed["tasks"].as_array().unwrap();
    let (embeds, hooks): (Vec<&Value>, Vec<&Value>) =
        tasks.iter().partition(|t| t["task"] == "embed");
    assert_eq!(embeds.len(), 10, "{listed}");
    let mut paths: Vec<&str> = embeds
        .iter()
        .map(|t| {
            assert_eq!(t["state"], "succeeded", "{t}");
            // Its last progress report, kept with the task.
            assert_eq!(t["progress"], 1.0, "{t}");
            assert_eq!(t["result"]["dims"], 16, "{t}");
            t["payload"]["path"].as_str().unwrap()
        })
        .collect();
    paths.sort_unstable();
    let mut expected: Vec<String> = (0..10).map(|i| format!("photos/{i}.png")).collect();
    expected.sort_unstable();
    assert_eq!(paths, expected);
    // Every rebuild is an after-last run, and the index counts them.
    assert!(
        hooks
            .iter()
            .all(|t| t["task"] == "@after_last" && t["state"] == "succeeded")
    );
    assert_eq!(index["rebuilds"], hooks.len(), "{listed}");
    // The last rebuild started after every embedding had finished.
    let last_end = embeds
        .iter()
        .map(|t| t["finished_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    let last_hook = hooks
        .iter()
        .map(|t| t["started_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(last_hook >= last_end, "{listed}");
    // When every embed was queued before the first one finished (the usual case: each takes
    // 0.2 s), the count of the key never dropped to zero in between: exactly one rebuild.
    let last_submit = embeds
        .iter()
        .map(|t| t["submitted_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    let first_end = embeds
        .iter()
        .map(|t| t["finished_ms"].as_u64().unwrap())
        .min()
        .unwrap();
    if last_submit < first_end {
        assert_eq!(hooks.len(), 1, "one burst, one rebuild: {listed}");
    }
    // The embeddings are files in the data dir: the kv (the tags' undo history) is untouched.
    check(
        &server.cli(&["kv", "gallery"]),
        &Expect::Ok {
            stdout: &["Plugin `gallery` has no kv entries"],
        },
    );
}

#[test]
fn uninstall_names_the_dependants_it_stopped() {
    let (tmp, plugins) = checkout_copy_of(&["store", "thumbs"]);
    let server = Server::start(&plugins, tmp.path());
    check(
        &server.cli(&["uninstall", "store"]),
        &Expect::Ok {
            stdout: &[
                "Uninstalled `store`",
                "Also stopped `thumbs`, which depends on `store`",
            ],
        },
    );
    assert_eq!(
        server.states(),
        crate::pairs(&[("store", "uninstalled"), ("thumbs", "stopped")])
    );
    // It stays uninstalled across a restart of the server.
    drop(server);
    let server = Server::start(&plugins, tmp.path());
    // Its dependant does not start without it, and says why.
    assert_eq!(
        server.states(),
        crate::pairs(&[("store", "uninstalled"), ("thumbs", "failed")]),
        "{}",
        server.log()
    );
    let thumbs = server.cli(&["status", "thumbs"]);
    assert!(
        thumbs
            .stdout
            .contains("its dependency `store` is uninstalled"),
        "{thumbs}"
    );
}

#[test]
fn help_says_what_each_host_service_command_does() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["params", "--help"],
            &[
                "Show a plugin's params",
                "--set <KEY=VALUE>",
                "parsed as JSON and falls back to a string",
                "--reset",
                "--history",
                "plugd params gallery --set batch_size=16",
            ],
        ),
        (
            &["kv", "--help"],
            &[
                "Show a plugin's kv entries",
                "read-only",
                "[PREFIX]",
                "--limit",
            ],
        ),
        (
            &["uninstall", "--help"],
            &[
                "Uninstall a plugin on a running server",
                "never touched",
                "--keep-data",
            ],
        ),
        (
            &["serve", "--help"],
            &[
                "--durability <DURABILITY>",
                "power loss",
                "--undo-depth <N>",
            ],
        ),
    ];
    for (args, stdout) in cases {
        check(&plugd(args), &Expect::Ok { stdout });
    }
    check(
        &plugd(&["params", "x", "--reset", "--set", "a=1"]),
        &Expect::Err {
            stderr: &["cannot be used with"],
        },
    );
}

#[test]
fn serve_takes_durability_and_undo_depth() {
    let (tmp, plugins) = checkout_copy_of(&["gallery"]);
    let state = tmp.path().join("state");
    let server = Server::spawn(
        tmp.path(),
        &[
            os("--plugins"),
            plugins.as_os_str(),
            os("--state-dir"),
            state.as_os_str(),
            os("--durability"),
            os("full"),
            os("--undo-depth"),
            os("1"),
        ],
        &tmp.path().join("serve.log"),
    );
    for tag in ["one", "two"] {
        server
            .cli(&[
                "call",
                "gallery",
                "tag",
                &format!(r#"{{"ids":["a"],"tag":"{tag}"}}"#),
            ])
            .ok();
    }
    // One commit can be undone; the second undo finds nothing.
    check(
        &server.cli(&["call", "gallery", "undo"]),
        &Expect::Ok {
            stdout: &[r#""undone": 2"#],
        },
    );
    check(
        &server.cli(&["call", "gallery", "undo"]),
        &Expect::Ok {
            stdout: &[r#""undone": null"#],
        },
    );
    check(
        &server.cli(&["kv", "gallery"]),
        &Expect::Ok {
            stdout: &["tag/a  \"one\""],
        },
    );
    check(
        &plugd(&["serve", "--durability", "maybe"]),
        &Expect::Err {
            stderr: &["invalid value 'maybe'", "process", "full"],
        },
    );
}

const REPORTER_TOML: &str = r#"[plugin]
name = "reporter"
version = "1.0.0"
runtime = "process"
entry = ["python3", "main.py"]

[permissions]
services = ["app:db", "app:down"]

[[actions]]
name = "report"

[[actions]]
name = "refused"
"#;

const REPORTER_PY: &str = r#"from plugd import HostError, Plugin

plugin = Plugin()


@plugin.action()
async def report(payload):
    return await plugin.service("db", "query", {"sql": payload["sql"]})


@plugin.action()
async def refused(payload):
    try:
        await plugin.service(payload["service"], payload["method"], {})
    except HostError as e:
        return {"code": e.code, "message": e.message}
    return {"code": None}


plugin.run()
"#;

/// One request the fake application received: its path, and its body as JSON.
type Forwarded = (String, Value);

/// A tiny HTTP application on `127.0.0.1:0`: answers `query` with rows, anything else with a
/// 404 error body; sends what it received to the returned channel. Returns its URL.
fn fake_app() -> (String, std::sync::mpsc::Receiver<Forwarded>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/plugd/services", listener.local_addr().unwrap());
    let (seen, received) = std::sync::mpsc::channel();
    // Ends with the test process; serves one connection at a time (`Connection: close`).
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap();
            let path = request_line.split_whitespace().nth(1).unwrap().to_owned();
            let (status, answer) = if body["method"] == "query" {
                (
                    "200 OK",
                    json!({"rows": [[1, "Ada"]], "sql": body["params"]["sql"], "for": body["plugin"]}),
                )
            } else {
                (
                    "404 Not Found",
                    json!({"error": {"code": "unknown_method", "message": format!("No method `{}`", body["method"].as_str().unwrap())}}),
                )
            };
            let _ = seen.send((path, body));
            let answer = answer.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, received)
}

#[test]
fn a_signed_plugin_calls_an_app_service_of_plugd_toml() {
    let tmp = crate::open_tempdir();
    let plugins = tmp.path().join("plugins");
    let dir = plugins.join("reporter");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("plugin.toml"), REPORTER_TOML).unwrap();
    std::fs::write(dir.join("main.py"), REPORTER_PY).unwrap();
    // App services are for trusted plugins: sign it and trust the key in the server's state dir.
    let state = tmp.path().join("state");
    crate::sign_and_trust(tmp.path(), &plugins, &state, &["reporter"]);

    let (url, received) = fake_app();
    // `down` points at a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let config = tmp.path().join("plugd.toml");
    std::fs::write(
        &config,
        format!(
            "[services.db]\nurl = \"{url}\"\ntimeout = \"5s\"\n\n[services.down]\nurl = \"{down}\"\n"
        ),
    )
    .unwrap();
    let server = Server::spawn(
        tmp.path(),
        &[
            os("--plugins"),
            plugins.as_os_str(),
            os("--state-dir"),
            state.as_os_str(),
            os("--config"),
            config.as_os_str(),
        ],
        &tmp.path().join("serve.log"),
    );
    let info: Value =
        serde_json::from_str(&server.cli(&["--json", "status", "reporter"]).ok().stdout).unwrap();
    assert_eq!(
        (&info["plugin"]["state"], &info["plugin"]["trust"]),
        (&json!("running"), &json!("trusted")),
        "{info}\n{}",
        server.log()
    );

    let report = server.cli(&[
        "--json",
        "call",
        "reporter",
        "report",
        r#"{"sql":"select 1"}"#,
    ]);
    let report: Value = serde_json::from_str(&report.ok().stdout).unwrap();
    assert_eq!(
        report,
        json!({"value": {"rows": [[1, "Ada"]], "sql": "select 1", "for": "reporter"}})
    );
    let (path, forwarded) = received
        .recv_timeout(Duration::from_secs(5))
        .expect("the service call reached the application");
    assert_eq!(path, "/plugd/services");
    assert_eq!(
        forwarded,
        json!({"plugin": "reporter", "method": "query", "params": {"sql": "select 1"}})
    );

    // The application's error code and message reach the plugin as they are.
    let refused = server.cli(&[
        "--json",
        "call",
        "reporter",
        "refused",
        r#"{"service":"db","method":"drop"}"#,
    ]);
    let refused: Value = serde_json::from_str(&refused.ok().stdout).unwrap();
    assert_eq!(
        refused["value"],
        json!({"code": "unknown_method", "message": "No method `drop`"})
    );
    // An application that is not there is `unavailable`, with the URL.
    let down_answer = server.cli(&[
        "--json",
        "call",
        "reporter",
        "refused",
        r#"{"service":"down","method":"ping"}"#,
    ]);
    let down_answer: Value = serde_json::from_str(&down_answer.ok().stdout).unwrap();
    assert_eq!(down_answer["value"]["code"], "unavailable", "{down_answer}");
    let message = down_answer["value"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("Service `down` cannot be reached at `{down}`: ")),
        "{message}"
    );
    // A service the config does not offer is refused by the host.
    let unknown = server.cli(&[
        "--json",
        "call",
        "reporter",
        "refused",
        r#"{"service":"mail","method":"send"}"#,
    ]);
    let unknown: Value = serde_json::from_str(&unknown.ok().stdout).unwrap();
    assert_eq!(unknown["value"]["code"], "not_granted", "{unknown}");
}
