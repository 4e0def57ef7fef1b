//! The script manager through the real binary: `plugd script ...` and `plugd template ...`
//! against `plugd serve`, scripts run confined by its sandbox.

use serde_json::Value;

use crate::{Expect, Server, check, open_tempdir, plugd};

const REPORT: &str = r#"# /// script
# [tool.plugd]
# id = "report"
# name = "Report"
# category = "reports"
# tags = ["csv", "demo"]
# allowed_imports = ["time"]
# ///
import time
from plugd import script

args = script.args()
for i in range(3):
    script.progress((i + 1) / 3, f"part {i + 1}")
    print(f"part {i + 1}", flush=True)
    time.sleep(0.05)
script.result({"rows": args.get("rows", 0), "version": 1})
"#;

fn server() -> (tempfile::TempDir, Server) {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let server = Server::start(&plugins, tmp.path());
    (tmp, server)
}

fn json(run: &crate::Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run}"))
}

#[test]
fn scripts_are_registered_versioned_run_and_recorded() {
    let (tmp, server) = server();
    let file = tmp.path().join("report.py");
    std::fs::write(&file, REPORT).unwrap();
    let file = file.to_str().unwrap();

    check(
        &server.cli(&["script", "add", file]),
        &Expect::Ok {
            stdout: &["Registered `report` v1"],
        },
    );
    check(
        &server.cli(&["script", "list", "--tag", "csv"]),
        &Expect::Ok {
            stdout: &["report", "v1", "reports", "Report"],
        },
    );
    assert!(
        !server
            .cli(&["script", "list", "--tag", "nope"])
            .stdout
            .contains("report")
    );

    // A run: output live, the result on stdout, exit 0.
    check(
        &server.cli(&["script", "run", "report", "--arg", "rows=7"]),
        &Expect::Ok {
            stdout: &["part 1\npart 2\npart 3\n", r#"{"rows":7,"version":1}"#],
        },
    );
    let record = json(&server.cli(&["--json", "script", "run", "report", "--arg", "rows=2"]));
    assert_eq!(record["state"], "succeeded");
    assert_eq!(record["result"]["rows"], 2);
    assert_eq!(record["who"], "cli");
    assert!(record["peak_rss"].as_u64().unwrap() > 0, "{record}");

    // A new version, its diff, a rollback.
    std::fs::write(
        tmp.path().join("v2.py"),
        REPORT.replace("\"version\": 1", "\"version\": 2"),
    )
    .unwrap();
    check(
        &server.cli(&[
            "script",
            "edit",
            "report",
            tmp.path().join("v2.py").to_str().unwrap(),
        ]),
        &Expect::Ok {
            stdout: &["Updated `report` v2"],
        },
    );
    check(
        &server.cli(&["script", "diff", "report", "1", "2"]),
        &Expect::Ok {
            stdout: &[
                "--- report v1",
                "+++ report v2",
                "+script.result({\"rows\": args.get(\"rows\", 0), \"version\": 2})",
            ],
        },
    );
    let v2 = json(&server.cli(&["--json", "script", "run", "report"]));
    assert_eq!(v2["result"]["version"], 2);
    assert_eq!(v2["version"], 2);
    server.cli(&["script", "rollback", "report", "1"]).ok();
    let v1 = json(&server.cli(&["--json", "script", "run", "report"]));
    assert_eq!(v1["result"]["version"], 1);
    let old = json(&server.cli(&["--json", "script", "run", "report", "--version", "2"]));
    assert_eq!(old["result"]["version"], 2);
    let versions = json(&server.cli(&["--json", "script", "versions", "report"]));
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);

    // Changed limits make a version; a run past them is killed with the reason, and plugd
    // exits non-zero.
    server
        .cli(&["script", "edit", "report", "--wall", "1s"])
        .ok();
    std::fs::write(tmp.path().join("slow.py"), "import time\ntime.sleep(30)\n").unwrap();
    let slow = server.cli(&[
        "script",
        "run",
        tmp.path().join("slow.py").to_str().unwrap(),
        "--wall",
        "1s",
    ]);
    check(
        &slow,
        &Expect::Err {
            stderr: &["killed", "wall-clock limit of 1 s exceeded"],
        },
    );

    // A failing script: plugd exits with its status.
    std::fs::write(tmp.path().join("fail.py"), "raise SystemExit(5)\n").unwrap();
    let fail = server.cli(&[
        "script",
        "run",
        tmp.path().join("fail.py").to_str().unwrap(),
    ]);
    assert_eq!(fail.code, Some(5), "{fail}");

    // The history.
    let runs = json(&server.cli(&["--json", "script", "runs", "report"]));
    let runs = runs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 5, "{runs:?}");
    assert!(runs.iter().all(|r| r["state"] == "succeeded"));
    let all = json(&server.cli(&["--json", "script", "runs"]));
    assert_eq!(all["runs"].as_array().unwrap().len(), 7);
    let first = runs.last().unwrap()["id"].as_u64().unwrap().to_string();
    check(
        &server.cli(&["script", "status", &first]),
        &Expect::Ok {
            stdout: &["succeeded", "part 3", r#"{"rows":7,"version":1}"#],
        },
    );

    // Counted for Prometheus.
    let authority = server.url.trim_start_matches("http://");
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let metrics = String::from_utf8(crate::http::request(authority, &head, b"").body).unwrap();
    assert!(
        metrics.contains("plugd_script_runs_total{state=\"succeeded\"} 5"),
        "{metrics}"
    );
    assert!(metrics.contains("plugd_script_runs_total{state=\"killed\"} 1"));
    assert!(metrics.contains("plugd_script_runs_total{state=\"failed\"} 1"));

    // Removal keeps the history.
    server.cli(&["script", "rm", "report"]).ok();
    check(
        &server.cli(&["script", "run", "report"]),
        &Expect::Err {
            stderr: &["No script `report`", "not_found"],
        },
    );
    assert_eq!(
        json(&server.cli(&["--json", "script", "runs"]))["runs"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
}

#[test]
fn check_needs_no_server_and_names_line_and_column() {
    let tmp = open_tempdir();
    let file = tmp.path().join("bad.py");
    std::fs::write(&file, "# /// script\n# [tool.plugd]\n# allowed_imports = [\"json\"]\n# ///\nimport json\nimport socket\nopen('/etc/shadow')\n").unwrap();
    let run = plugd(&[
        "--server",
        "http://127.0.0.1:9",
        "script",
        "check",
        file.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stdout.contains("bad.py:6:8: error: Import of `socket`"),
        "{run}"
    );
    assert!(
        run.stdout.contains("bad.py:7:6: error: Path `/etc/shadow`"),
        "{run}"
    );
    std::fs::write(&file, "print('fine')\n").unwrap();
    check(
        &plugd(&["script", "check", file.to_str().unwrap()]),
        &Expect::Ok { stdout: &["ok"] },
    );
}

#[test]
fn templates_make_scripts_and_archives_round_trip_signed() {
    let (tmp, server) = server();
    let t = tmp.path().join("reader.py");
    std::fs::write(
        &t,
        "# /// script\n# [tool.plugd]\n# tags = [\"made\"]\n# ///\nfrom plugd import script\nscript.result({'format': '{{ input_format }}', 'limit': {{ limit }}})\n",
    )
    .unwrap();
    check(
        &server.cli(&[
            "template",
            "add",
            "reader",
            t.to_str().unwrap(),
            "--var",
            "input_format:enum(csv|json):required",
            "--var",
            "limit:int=10#Rows to read",
        ]),
        &Expect::Ok {
            stdout: &["Stored template `reader` with 2 variables"],
        },
    );
    check(
        &server.cli(&["template", "list"]),
        &Expect::Ok {
            stdout: &["reader", "input_format:enum(csv|json), limit:int"],
        },
    );
    check(
        &server.cli(&[
            "script",
            "new",
            "bad",
            "--from",
            "reader",
            "--set",
            "input_format=xml",
            "--set",
            "limit=many",
        ]),
        &Expect::Err {
            stderr: &[
                "`input_format`: `\"xml\"` is not one of csv, json",
                "`limit`: `\"many\"` is not an int",
            ],
        },
    );
    server
        .cli(&[
            "script",
            "new",
            "csv-reader",
            "--from",
            "reader",
            "--set",
            "input_format=csv",
        ])
        .ok();
    let run = json(&server.cli(&["--json", "script", "run", "csv-reader"]));
    assert_eq!(
        run["result"],
        serde_json::json!({"format": "csv", "limit": 10})
    );

    // Export signed; import into another server that trusts the key, and requires signatures.
    let key = tmp.path().join("scripts.key");
    plugd(&["keygen", "--out", key.to_str().unwrap()]).ok();
    let archive = tmp.path().join("scripts.tar.gz");
    check(
        &server.cli(&[
            "script",
            "export",
            "--all-versions",
            "-o",
            archive.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]),
        &Expect::Ok {
            stdout: &["1 scripts, 1 versions, signed with key"],
        },
    );
    let other_tmp = open_tempdir();
    let other_state = other_tmp.path().join("state");
    plugd(&[
        "--state-dir",
        other_state.to_str().unwrap(),
        "trust",
        "add",
        &format!("{}.pub", key.display()),
    ])
    .ok();
    std::fs::create_dir_all(other_tmp.path().join("plugins")).unwrap();
    let other = Server::start(&other_tmp.path().join("plugins"), other_tmp.path());
    check(
        &other.cli(&[
            "script",
            "import",
            archive.to_str().unwrap(),
            "--require-signature",
        ]),
        &Expect::Ok {
            stdout: &[
                "Signed by trusted key",
                "csv-reader: 1 new versions, runs v1",
            ],
        },
    );
    let run = json(&other.cli(&["--json", "script", "run", "csv-reader"]));
    assert_eq!(run["result"]["format"], "csv");
    // A byte changed in the archive: refused, nothing stored.
    let mut bytes = std::fs::read(&archive).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    let tampered = tmp.path().join("tampered.tar.gz");
    std::fs::write(&tampered, &bytes).unwrap();
    let third_tmp = open_tempdir();
    std::fs::create_dir_all(third_tmp.path().join("plugins")).unwrap();
    let third = Server::start(&third_tmp.path().join("plugins"), third_tmp.path());
    let refused = third.cli(&["script", "import", tampered.to_str().unwrap()]);
    assert!(!refused.success, "{refused}");
    assert!(third.cli(&["script", "list"]).stdout.contains("No scripts"));
}

#[test]
fn a_run_cut_by_a_killed_host_is_recorded_as_failed_after_restart() {
    let (tmp, mut server) = server();
    std::fs::write(tmp.path().join("long.py"), "import time\ntime.sleep(60)\n").unwrap();
    let queued = json(&server.cli(&[
        "--json",
        "script",
        "run",
        tmp.path().join("long.py").to_str().unwrap(),
        "--detach",
    ]));
    let id = queued["id"].as_u64().unwrap();
    // Wait until it runs, then kill the host outright.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = json(&server.cli(&["--json", "script", "status", &id.to_string()]));
        if r["state"] == "running" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    crate::signal(server.child.id(), libc::SIGKILL).unwrap();
    server.child.wait().unwrap();
    drop(server);
    let server = Server::start(&tmp.path().join("plugins"), tmp.path());
    let r = json(&server.cli(&["--json", "script", "status", &id.to_string()]));
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(r["reason"], "the host stopped before the run ended");
}
