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
        r#"{"name": "legacy", "version": "1.0.0", "class_path": "plugins.legacy.Plugin"}"#,
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
    let class_path =
        "`class_path` is ignored: plugd runs plugins as processes or wasm; hint: set `entry`";
    check(
        &server.cli(&["list"]),
        &Expect::Ok {
            stdout: &[&format!("legacy: warning: {class_path}")],
        },
    );
    check(
        &server.cli(&["status", "legacy"]),
        &Expect::Ok {
            stdout: &[
                &format!("  warning: {class_path}"),
                "  warning: No `entry` given; running `python3 main.py` as the seed did",
            ],
        },
    );
}
