//! What the client commands show: manifest warnings, failure reasons, tracebacks, colours.

use std::ffi::OsStr;

use crate::{Expect, Server, check, open_tempdir};

#[test]
fn manifest_warnings_are_shown_by_list_and_status() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    let dir = plugins.join("legacy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("plugin.json"),
        r#"{"name": "legacy", "version": "1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("main.py"),
        "from plugd import Plugin\nplugin = Plugin()\nplugin.run()\n",
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
        ],
        &tmp.path().join("serve.log"),
    );
    let defaulted = "No `entry` given; running `python3 main.py` as the seed did";
    check(
        &server.cli(&["list"]),
        &Expect::Ok {
            stdout: &[&format!("legacy: warning: {defaulted}")],
        },
    );
    check(
        &server.cli(&["status", "legacy"]),
        &Expect::Ok {
            stdout: &[&format!("  warning: {defaulted}")],
        },
    );
}

/// A plugin that dies at import, with a traceback through its own file.
const BROKEN_PY: &str = "import helper\n";
const HELPER_PY: &str = "def explode():\n    raise RuntimeError('boom at import')\n\nexplode()\n";

#[test]
fn a_failed_plugin_says_why_in_list_and_status_without_colours() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    let dir = plugins.join("broken");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        "schema = 1\n[plugin]\nname = \"broken\"\nversion = \"0.1.0\"\nruntime = \"process\"\nentry = [\"python3\", \"main.py\"]\n",
    )
    .unwrap();
    std::fs::write(dir.join("main.py"), BROKEN_PY).unwrap();
    std::fs::write(dir.join("helper.py"), HELPER_PY).unwrap();
    let state = tmp.path().join("state");
    let log = tmp.path().join("serve.log");
    let server = Server::spawn(
        tmp.path(),
        &[
            OsStr::new("--plugins"),
            plugins.as_os_str(),
            OsStr::new("--state-dir"),
            state.as_os_str(),
        ],
        &log,
    );
    let list = server.cli(&["list"]);
    check(
        &list,
        &Expect::Ok {
            stdout: &["REASON"],
        },
    );
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with("broken "))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains("failed"), "{list}");
    assert!(
        row.ends_with(
            "could not start: it exited with status 1 before saying `hello`: RuntimeError: boom at import (more: `plugd status broken`)"
        ),
        "{list}"
    );

    // The traceback names the source package's files, indented under the reason.
    let status = server.cli(&["status", "broken"]);
    let helper = format!(
        "\n        File \"{}\", line 4, in <module>\n",
        dir.join("helper.py").display()
    );
    check(
        &status,
        &Expect::Ok {
            stdout: &[
                "broken 0.1.0 — failed",
                &format!("  package: {}", dir.display()),
                "  reason: Plugin `broken` could not start: it exited with status 1 before saying `hello`\n    last stderr:\n      Traceback (most recent call last):\n",
                &helper,
                "\n      RuntimeError: boom at import\n",
            ],
        },
    );
    assert!(!status.stdout.contains("/packages/broken-"), "{status}");

    // Neither the server's log (a file) nor the CLI's output carries colour codes.
    drop(server);
    let log = crate::read(&log);
    assert!(log.contains("broken"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{log}"
    );
    assert!(!status.stdout.contains('\u{1b}'), "{status}");
}
