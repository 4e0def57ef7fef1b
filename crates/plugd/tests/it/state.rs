//! Where plugd keeps its state: relative paths resolved once at startup, one trust-store rule
//! for every command, and the warning about a state dir sandboxed plugins cannot reach.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;

use crate::{Expect, Server, check, checkout_copy, open_tempdir, plugd_in, read};

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn a_relative_state_dir_keeps_the_data_across_restarts() {
    let (tmp, plugins) = checkout_copy();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    // What `./dev serve` and the README do: a relative `--state-dir`, served from elsewhere.
    let args = [
        os("--plugins"),
        plugins.as_os_str(),
        os("--state-dir"),
        os(".plugd"),
    ];
    let get = ["call", "store", "get", r#"{"key":"colour"}"#];

    let server = Server::spawn(&work, &args, &tmp.path().join("serve-1.log"));
    check(
        &server.cli(&["call", "store", "put", r#"{"key":"colour","value":"teal"}"#]),
        &Expect::Ok {
            stdout: &[r#""stored": true"#],
        },
    );
    check(
        &server.cli(&get),
        &Expect::Ok {
            stdout: &[r#""value": "teal""#],
        },
    );
    drop(server);
    let saved = work.join(".plugd/data/store/store.json");
    assert_eq!(read(&saved), r#"{"colour": "teal"}"#);

    let server = Server::spawn(&work, &args, &tmp.path().join("serve-2.log"));
    check(
        &server.cli(&get),
        &Expect::Ok {
            stdout: &[r#""found": true"#, r#""value": "teal""#],
        },
    );
}

#[test]
fn every_command_finds_the_trust_store_under_the_state_dir() {
    let (tmp, plugins) = checkout_copy();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let key = tmp.path().join("signing.key");
    let hello = plugins.join("hello");
    let (key, hello) = (key.to_str().unwrap(), hello.to_str().unwrap());
    plugd_in(&work, &["keygen", "--out", key]).ok();
    plugd_in(&work, &["sign", hello, "--key", key]).ok();

    // With the default state dir `.plugd` of the current directory, `trust add`, `trust list`,
    // `verify` and `serve` all use `.plugd/trust`.
    let store = work.join(".plugd/trust");
    let added = plugd_in(&work, &["trust", "add", &format!("{key}.pub")]);
    check(
        &added,
        &Expect::Ok {
            stdout: &[&format!("in `{}`", store.display())],
        },
    );
    let key_id = added.stdout.split_whitespace().nth(2).unwrap().to_owned();
    check(
        &plugd_in(&work, &["trust", "list"]),
        &Expect::Ok { stdout: &[&key_id] },
    );
    check(
        &plugd_in(&work, &["verify", hello]),
        &Expect::Ok {
            stdout: &[&format!("is signed by trusted key {key_id}")],
        },
    );
    let server = Server::spawn(
        &work,
        &[os("--plugins"), plugins.as_os_str(), os("--strict")],
        &tmp.path().join("serve-1.log"),
    );
    let list = server.plugins_json();
    let hello_info = &list["plugins"][0];
    assert_eq!(
        (
            &hello_info["name"],
            &hello_info["state"],
            &hello_info["trust"]
        ),
        (
            &serde_json::json!("hello"),
            &serde_json::json!("running"),
            &serde_json::json!("trusted")
        ),
        "{list}\n{}",
        server.log()
    );
    drop(server);

    // Another state dir has another (empty) trust store, and the refusal names it.
    let other = work.join("other/trust");
    let refusal = format!("which is not in the trust store `{}`", other.display());
    check(
        &plugd_in(&work, &["verify", hello, "--state-dir", "other"]),
        &Expect::Err {
            stderr: &[&refusal, "--state-dir"],
        },
    );
    let server = Server::spawn(
        &work,
        &[
            os("--plugins"),
            plugins.as_os_str(),
            os("--state-dir"),
            os("other"),
        ],
        &tmp.path().join("serve-2.log"),
    );
    let hello_info = server.plugins_json()["plugins"][0].clone();
    assert_eq!(hello_info["state"], "failed", "{hello_info}");
    let reason = hello_info["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&refusal), "{hello_info}");
}

#[test]
fn a_state_dir_under_a_private_directory_just_works() {
    // A project under `/root` or a 0700 home: the sandbox uids cannot traverse it on the host,
    // but each plugin's own root (mount namespace) has its package, SDK and data dir bound below
    // fresh 0755 directories.
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    let private = tmp.path().join("private");
    std::fs::create_dir_all(plugins.join("keeper")).unwrap();
    std::fs::create_dir_all(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        plugins.join("keeper/plugin.toml"),
        "[plugin]\nname = \"keeper\"\nversion = \"1.0.0\"\nruntime = \"process\"\nentry = [\"python3\", \"main.py\"]\n",
    )
    .unwrap();
    std::fs::write(
        plugins.join("keeper/main.py"),
        "import os\nfrom plugd import Plugin\nplugin = Plugin()\n@plugin.action()\ndef keep(p):\n    path = os.path.join(os.environ['PLUGD_DATA_DIR'], 'kept')\n    open(path, 'w').write(p)\n    return open(path).read()\nplugin.run()\n",
    )
    .unwrap();
    let state = private.join("state");
    let args = [
        os("--plugins"),
        plugins.as_os_str(),
        os("--state-dir"),
        state.as_os_str(),
    ];
    let log = tmp.path().join("serve.log");
    let server = Server::spawn(tmp.path(), &args, &log);
    let kept = server.cli(&["call", "keeper", "keep", "\"safe\""]);
    assert!(kept.stdout.contains("safe"), "{kept}");
    assert_eq!(read(&state.join("data/keeper/kept")), "safe");
    drop(server);
    assert!(!read(&log).contains("cannot enter"), "no false warning");
}

#[test]
fn a_second_server_on_the_same_state_dir_is_refused_until_the_first_is_gone() {
    let (tmp, plugins) = checkout_copy();
    let state = tmp.path().join("state");
    let (plugins_arg, state_arg) = (plugins.to_str().unwrap(), state.to_str().unwrap());
    let mut server = Server::start(&plugins, tmp.path());
    let second = plugd_in(
        tmp.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--plugins",
            plugins_arg,
            "--state-dir",
            state_arg,
        ],
    );
    check(
        &second,
        &Expect::Err {
            stderr: &[
                "Another `plugd serve`",
                "is using the state dir",
                "--state-dir",
            ],
        },
    );
    // Killed outright, the first leaves the dir free at once for the next.
    crate::signal(server.child.id(), libc::SIGKILL).unwrap();
    server.child.wait().unwrap();
    drop(server);
    let server = Server::start(&plugins, tmp.path());
    check(&server.cli(&["list"]), &Expect::Ok { stdout: &["hello"] });
}
