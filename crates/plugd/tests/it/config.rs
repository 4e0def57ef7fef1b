//! `plugd serve --config plugd.toml`: the operator's ceilings reach the plugins, and a bad file
//! stops `serve` with a message naming the key.

use std::ffi::OsStr;

use crate::{Server, open_tempdir, plugd};

const GREEDY_TOML: &str = r#"[plugin]
name = "greedy"
version = "1.0.0"
runtime = "process"
entry = ["python3", "main.py"]

[limits]
memory = "1GiB"
concurrency = 500

[[actions]]
name = "size"
[actions.input]
type = "object"
required = ["w"]
properties = { w = { type = "integer" } }
"#;

const GREEDY_PY: &str = r#"from plugd import Plugin
plugin = Plugin()
@plugin.action()
async def size(p):
    return p["w"] * 2
plugin.run()
"#;

#[test]
fn ceilings_from_the_config_file_clamp_what_a_manifest_asks_for() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(plugins.join("greedy")).unwrap();
    std::fs::write(plugins.join("greedy/plugin.toml"), GREEDY_TOML).unwrap();
    std::fs::write(plugins.join("greedy/main.py"), GREEDY_PY).unwrap();
    let config = tmp.path().join("plugd.toml");
    std::fs::write(
        &config,
        "[ceilings.untrusted]\nmemory = \"128MiB\"\nconcurrency = 16\n",
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
        ],
        &tmp.path().join("serve.log"),
    );
    let plugin = server.cli(&["--json", "status", "greedy"]);
    let status: serde_json::Value = serde_json::from_str(&plugin.stdout).unwrap();
    let json = &status["plugin"];
    assert_eq!(json["state"], "running", "{json}");
    assert_eq!(json["limits"]["memory"], 128 << 20, "{json}");
    assert_eq!(json["limits"]["concurrency"], 16, "{json}");
    // The clamp is in the plugin's log, as a warning.
    let logs = status["logs"].to_string();
    assert!(
        logs.contains("more than the untrusted ceiling of \\\"128MiB\\\""),
        "{logs}"
    );
    // The declared input schema is in the API, and the host enforces it.
    assert_eq!(json["actions"][0]["input"]["required"][0], "w", "{json}");
    let bad = server.cli(&["call", "greedy", "size", "{\"w\": \"x\"}"]);
    assert!(!bad.success);
    assert!(
        bad.stderr
            .contains("`/w`: \"x\" is not of type \"integer\""),
        "{bad}"
    );
    let good = server.cli(&["call", "greedy", "size", "{\"w\": 21}"]);
    assert!(good.stdout.contains("42"), "{good}");
}

#[test]
fn a_bad_config_file_stops_serve_naming_the_key() {
    let tmp = open_tempdir();
    std::fs::create_dir_all(tmp.path().join("plugins")).unwrap();
    let config = tmp.path().join("plugd.toml");
    std::fs::write(&config, "[ceilings.untrusted]\nram = \"1GiB\"\n").unwrap();
    let run = plugd(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--plugins",
        tmp.path().join("plugins").to_str().unwrap(),
        "--state-dir",
        tmp.path().join("state").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!run.success);
    assert!(
        run.stderr
            .contains("In `[ceilings.untrusted]`, key `ram`: unknown limit `ram`"),
        "{run}"
    );
}
