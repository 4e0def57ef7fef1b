//! End-to-end tests of the `plugd` binary: `plugd serve` on `127.0.0.1:0` with the example
//! plugins, driven by the CLI's own client commands.
//!
//! `serve` gives its children a clean environment (no `PYTHONPATH`), so the plugins must find
//! the Python SDK by themselves. The examples fall back to `<checkout>/sdk/python/src`, found
//! relative to their `main.py`; the tests therefore copy them into a temp dir laid out like a
//! checkout (`examples/plugins/*`) beside a `sdk` link to this checkout's SDK.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

mod auth;
mod compat;
mod config;
mod durable;
mod durable_work;
mod http;
mod lock;
mod metrics;
mod new;
mod observe;
mod output;
mod reload;
mod scripts;
mod services;
mod startup;
mod state;
mod work;

/// How long `serve` may take to print a line it owes (the URL, then readiness).
const LINE_DEADLINE: Duration = Duration::from_secs(60);

/// A running `plugd serve`, stopped with SIGTERM when dropped.
struct Server {
    child: Child,
    url: String,
    stderr: PathBuf,
    /// The lines of `serve`'s stdout, read by a thread that keeps it open to the end (`serve`
    /// must not write to a closed stdout).
    stdout: Receiver<String>,
}

impl Server {
    /// Starts `plugd serve --plugins DIR --listen 127.0.0.1:0` and reads the URL from its first
    /// line of output. The state dir and the server's log live in `tmp`.
    fn start(plugins: &Path, tmp: &Path) -> Server {
        Server::start_with(plugins, tmp, &[])
    }

    /// [`Server::start`] with `extra` flags (its log in `TMP/serve.log`, replaced).
    fn start_with(plugins: &Path, tmp: &Path, extra: &[&str]) -> Server {
        let state = tmp.join("state");
        let mut args = vec![
            "--plugins".as_ref(),
            plugins.as_os_str(),
            "--state-dir".as_ref(),
            state.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        Server::spawn(tmp, &args, &tmp.join("serve.log"))
    }

    /// Starts `plugd serve --listen 127.0.0.1:0 ARGS...` in `cwd`, its log in `log`, and waits
    /// until its first start wave is done.
    fn spawn(cwd: &Path, args: &[&OsStr], log: &Path) -> Server {
        Server::spawn_command(cwd, "serve", args, &[], log)
    }

    /// Starts `plugd serve` like [`Server::spawn`] but returns as soon as it listens (the URL is
    /// its first line of output), while plugins may still be starting.
    fn spawn_unready(cwd: &Path, args: &[&OsStr], log: &Path) -> Server {
        Server::spawn_command_unready(cwd, "serve", args, &[], log)
    }

    /// [`Server::spawn`] of another serving command (`dev`), with extra environment.
    fn spawn_command(
        cwd: &Path,
        command: &str,
        args: &[&OsStr],
        env: &[(&str, &OsStr)],
        log: &Path,
    ) -> Server {
        let mut server = Server::spawn_command_unready(cwd, command, args, env, log);
        server.wait_ready();
        server
    }

    fn spawn_command_unready(
        cwd: &Path,
        command: &str,
        args: &[&OsStr],
        env: &[(&str, &OsStr)],
        log: &Path,
    ) -> Server {
        let stderr = log.to_owned();
        let mut child = Command::new(env!("CARGO_BIN_EXE_plugd"))
            .args([command, "--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .args(args)
            .current_dir(cwd)
            .env_remove("PLUGD_STATE_DIR")
            .env_remove("PLUGD_TRUST_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let reader = BufReader::new(child.stdout.take().unwrap());
        // Bounded by the lines `serve` prints (two); the thread ends when `serve` exits.
        let (lines, stdout) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let line = stdout.recv_timeout(LINE_DEADLINE);
        let Some(url) = line
            .as_deref()
            .ok()
            .and_then(|l| l.strip_prefix("plugd listening on "))
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected first line {line:?}; log:\n{}", read(&stderr));
        };
        Server {
            url: url.to_owned(),
            child,
            stderr,
            stdout,
        }
    }

    /// Waits for `serve`'s `plugd ready` line: every plugin of the first start wave has started
    /// or failed.
    fn wait_ready(&mut self) {
        match self.stdout.recv_timeout(LINE_DEADLINE) {
            Ok(line) if line.starts_with("plugd ready") => {}
            other => panic!(
                "expected `plugd ready`, got {other:?}; log:\n{}",
                self.log()
            ),
        }
    }

    /// Runs `plugd --server URL ARGS...`.
    fn cli(&self, args: &[&str]) -> Run {
        let mut full = vec!["--server", self.url.as_str()];
        full.extend_from_slice(args);
        plugd(&full)
    }

    /// `plugd --json list`, parsed.
    fn plugins_json(&self) -> Value {
        let run = self.cli(&["--json", "list"]);
        run.ok();
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("`--json list` is not JSON ({e}): {run}"))
    }

    /// The state of each plugin, sorted by name.
    fn states(&self) -> Vec<(String, String)> {
        let list = self.plugins_json();
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_owned(),
                    p["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(&mut self) -> ExitStatus {
        // The process may have exited already; `wait` tells.
        let _ = signal(self.child.id(), libc::SIGTERM);
        self.child.wait().unwrap()
    }

    fn log(&self) -> String {
        read(&self.stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// One finished CLI invocation.
struct Run {
    args: Vec<String>,
    success: bool,
    /// The exit code (`None`: killed by a signal).
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(&self) -> &Self {
        assert!(self.success, "expected success: {self}");
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`plugd {}` {}\n--- stdout\n{}--- stderr\n{}",
            self.args.join(" "),
            if self.success { "succeeded" } else { "failed" },
            self.stdout,
            self.stderr
        )
    }
}

/// What a CLI invocation must do: succeed or fail, with these texts in its stdout or stderr.
enum Expect<'a> {
    Ok { stdout: &'a [&'a str] },
    Err { stderr: &'a [&'a str] },
}

/// The one check for CLI invocations: the outcome and the texts that must appear.
#[track_caller]
fn check(run: &Run, expect: &Expect<'_>) {
    let (success, stream, needles) = match *expect {
        Expect::Ok { stdout } => (true, &run.stdout, stdout),
        Expect::Err { stderr } => (false, &run.stderr, stderr),
    };
    assert_eq!(run.success, success, "{run}");
    for needle in needles {
        assert!(stream.contains(needle), "missing {needle:?}: {run}");
    }
}

fn plugd(args: &[&str]) -> Run {
    plugd_in(&std::env::current_dir().unwrap(), args)
}

/// Runs `plugd ARGS...` in `cwd`, with none of the `PLUGD_*` variables of the test's environment.
fn plugd_in(cwd: &Path, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_plugd"))
        .args(args)
        .current_dir(cwd)
        .env_remove("PLUGD_SERVER")
        .env_remove("PLUGD_TOKEN")
        .env_remove("PLUGD_STATE_DIR")
        .env_remove("PLUGD_TRUST_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        success: status.success(),
        code: status.code(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The example plugins most tests use (the others need runtimes or builds of their own).
const EXAMPLES: &[&str] = &["hello", "store", "thumbs"];

/// A temp dir that sandboxed plugins (their own uids) can traverse: `tempdir` makes it 0700.
fn open_tempdir() -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// A temp dir laid out like a checkout: the [`EXAMPLES`] copied to `examples/plugins/`, `sdk`
/// linked to ours. Returns the dir and its plugins dir.
fn checkout_copy() -> (TempDir, PathBuf) {
    checkout_copy_of(EXAMPLES)
}

/// [`checkout_copy`] with these examples.
fn checkout_copy_of(examples: &[&str]) -> (TempDir, PathBuf) {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("examples/plugins");
    for name in examples {
        copy_dir(
            &repo().join("examples/plugins").join(name),
            &plugins.join(name),
        );
    }
    std::os::unix::fs::symlink(repo().join("sdk"), tmp.path().join("sdk")).unwrap();
    (tmp, plugins)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

fn signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The WAVE column of `plugd list`'s table, by plugin name.
fn waves(table: &str) -> Vec<(String, String)> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let wave = header
        .iter()
        .position(|h| *h == "WAVE")
        .unwrap_or_else(|| panic!("no WAVE column:\n{table}"));
    lines
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[0].to_owned(), cells[wave].to_owned())
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn cli_drives_a_running_server() {
    let (tmp, plugins) = checkout_copy_of(&["gallery", "hello", "store", "thumbs"]);
    let server = Server::start(&plugins, tmp.path());

    let list = server.cli(&["list"]);
    check(
        &list,
        &Expect::Ok {
            stdout: &[
                "gallery",
                "cluster,tag,tags,undo,redo",
                "hello",
                "greet,echo",
                "store",
                "put,get,delete,keys",
                "thumbs",
                "plan,remember",
                "running",
            ],
        },
    );
    assert_eq!(
        waves(&list.stdout),
        pairs(&[
            ("gallery", "0"),
            ("hello", "0"),
            ("store", "0"),
            ("thumbs", "1")
        ]),
        "{list}"
    );
    assert_eq!(
        server.states(),
        pairs(&[
            ("gallery", "running"),
            ("hello", "running"),
            ("store", "running"),
            ("thumbs", "running")
        ]),
        "{}",
        server.log()
    );

    check(
        &server.cli(&["call", "hello", "greet", r#"{"name":"Ada"}"#]),
        &Expect::Ok {
            stdout: &["Hello, Ada!"],
        },
    );
    let json = server.cli(&["--json", "call", "hello", "greet", r#"{"name":"Ada"}"#]);
    let value: Value = serde_json::from_str(&json.ok().stdout).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"value": {"message": "Hello, Ada!"}})
    );
    check(
        &server.cli(&["call", "hello", "nope"]),
        &Expect::Err {
            stderr: &[
                "Plugin `hello` has no action `nope`",
                "action_not_found",
                "404",
            ],
        },
    );
    check(
        &server.cli(&["call", "hello", "greet", "{}"]),
        &Expect::Err {
            stderr: &["bad_payload", "400"],
        },
    );
    // Names are one encoded path segment: they cannot add a segment or a query.
    check(
        &server.cli(&["call", "hello", "greet?name=x"]),
        &Expect::Err {
            stderr: &["Plugin `hello` has no action `greet?name=x`", "404"],
        },
    );
    check(
        &server.cli(&["status", "hello/logs"]),
        &Expect::Err {
            stderr: &["`hello/logs`", "plugin_not_found", "404"],
        },
    );
    check(
        &server.cli(&["call", "nope", "greet"]),
        &Expect::Err {
            stderr: &["`nope`", "plugin_not_found"],
        },
    );

    check(
        &server.cli(&["status", "hello"]),
        &Expect::Ok {
            stdout: &[
                "hello 0.1.0 — running",
                "action greet",
                "action echo",
                "recent logs:",
                "Started `hello 0.1.0`",
            ],
        },
    );

    // Unloading a dependency stops its dependant; loading the dependant brings both back.
    check(
        &server.cli(&["unload", "store"]),
        &Expect::Ok {
            stdout: &[
                "store 2.1.0 — stopped",
                "Also stopped `thumbs`, which depends on `store`",
            ],
        },
    );
    check(
        &server.cli(&["status", "thumbs"]),
        &Expect::Ok {
            stdout: &["thumbs 1.0.0 — stopped", "reason:", "`store`"],
        },
    );
    check(
        &server.cli(&["call", "thumbs", "plan", "{}"]),
        &Expect::Err {
            stderr: &["plugin_not_running", "503"],
        },
    );
    check(
        &server.cli(&["load", "thumbs"]),
        &Expect::Ok {
            stdout: &["thumbs 1.0.0 — running"],
        },
    );
    assert_eq!(
        server.states(),
        pairs(&[
            ("gallery", "running"),
            ("hello", "running"),
            ("store", "running"),
            ("thumbs", "running")
        ]),
        "{}",
        server.log()
    );
    check(
        &server.cli(&[
            "call",
            "thumbs",
            "plan",
            r#"{"width":400,"height":200,"max":100}"#,
        ]),
        &Expect::Ok {
            stdout: &[r#""width": 100"#, r#""height": 50"#],
        },
    );
    // `thumbs` stores through its dependency `store` (`plugin.call`).
    check(
        &server.cli(&[
            "call",
            "thumbs",
            "remember",
            r#"{"key":"cat","width":400,"height":200,"max":100}"#,
        ]),
        &Expect::Ok {
            stdout: &[r#""key": "thumbs/cat""#, r#""width": 100"#],
        },
    );
    check(
        &server.cli(&["call", "store", "get", r#"{"key":"thumbs/cat"}"#]),
        &Expect::Ok {
            stdout: &[r#""found": true"#, r#""height": 50"#],
        },
    );
    // Unloading `thumbs` leaves a staged copy nothing runs from: `gc` removes exactly that one.
    server.cli(&["unload", "thumbs"]).ok();
    check(
        &server.cli(&["gc"]),
        &Expect::Ok {
            stdout: &["Removed 1 staged package copy ("],
        },
    );
    check(
        &server.cli(&["gc"]),
        &Expect::Ok {
            stdout: &["Removed 0 staged package copies (0.0 MiB)"],
        },
    );
}

#[test]
fn new_plugin_is_served() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    let dir = plugins.join("my-plugin");
    check(
        &plugd(&[
            "new",
            "my-plugin",
            "--lang",
            "python",
            "--dir",
            dir.to_str().unwrap(),
        ]),
        &Expect::Ok {
            stdout: &["Created plugin `my-plugin`"],
        },
    );
    for file in ["plugin.toml", "main.py", "README.md"] {
        assert!(dir.join(file).is_file(), "`plugd new` did not write {file}");
    }
    // Nothing installed: `serve` ships the SDK, as the generated README says.
    let readme = read(&dir.join("README.md"));
    assert!(!readme.contains("pip install plugd"), "{readme}");
    assert!(
        readme.contains("Nothing to install: `plugd serve` ships the `plugd` Python SDK"),
        "{readme}"
    );

    let server = Server::start(&plugins, tmp.path());
    let states = server.states();
    assert_eq!(
        states,
        pairs(&[("my-plugin", "running")]),
        "{}",
        server.log()
    );
    check(
        &server.cli(&["call", "my-plugin", "hello", r#"{"name":"Ada"}"#]),
        &Expect::Ok {
            stdout: &["Hello, Ada!"],
        },
    );
    // The plugin logs through the SDK into the host's log ring.
    check(
        &server.cli(&["status", "my-plugin"]),
        &Expect::Ok {
            stdout: &["action hello", "Saying hello to Ada"],
        },
    );
}

#[test]
fn new_refuses_a_non_empty_dir() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("keep.txt"), "mine").unwrap();
    check(
        &plugd(&[
            "new",
            "my-plugin",
            "--lang",
            "python",
            "--dir",
            tmp.path().to_str().unwrap(),
        ]),
        &Expect::Err {
            stderr: &["already exists and is not empty"],
        },
    );
    assert_eq!(read(&tmp.path().join("keep.txt")), "mine");
    assert!(!tmp.path().join("plugin.toml").exists());
}

#[test]
fn client_errors_without_a_server() {
    let cases: &[(&[&str], Expect<'_>)] = &[
        (
            &["--server", "http://127.0.0.1:1", "list"],
            Expect::Err {
                stderr: &["Cannot reach plugd at `http://127.0.0.1:1`", "hint:"],
            },
        ),
        (
            &["--server", "https://127.0.0.1:1", "list"],
            Expect::Err {
                stderr: &["must start with `http://`"],
            },
        ),
        (
            &["new", "Not A Name", "--dir", "/nonexistent/plugd-test"],
            Expect::Err {
                stderr: &["Not A Name"],
            },
        ),
        (
            &["serve", "--help"],
            Expect::Ok {
                stdout: &["--plugins", "--listen", "--state-dir"],
            },
        ),
        (
            &["--help"],
            Expect::Ok {
                stdout: &[
                    "Examples:",
                    "plugd new my-plugin --dir plugins/my-plugin",
                    "plugd call my-plugin hello '{\"name\":\"Ada\"}'",
                ],
            },
        ),
        // Each lifecycle command says what it does.
        (
            &["load", "--help"],
            Expect::Ok {
                stdout: &["Load a plugin on a running server", "missing dependencies"],
            },
        ),
        (
            &["unload", "--help"],
            Expect::Ok {
                stdout: &["Unload a plugin on a running server", "dependants first"],
            },
        ),
        (
            &["reload", "--help"],
            Expect::Ok {
                stdout: &[
                    "Reload a plugin from disk on a running server",
                    "the running version keeps serving",
                ],
            },
        ),
    ];
    for (args, expect) in cases {
        check(&plugd(args), expect);
    }
}

#[test]
fn call_with_invalid_json_does_not_contact_the_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    check(
        &plugd(&["--server", &url, "call", "hello", "greet", "{not json"]),
        &Expect::Err {
            stderr: &["The payload is not valid JSON", "hint:"],
        },
    );
    // A connection attempt would be waiting in the backlog by now: the CLI has exited.
    listener.set_nonblocking(true).unwrap();
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the CLI connected: {accepted:?}"
    );
}

#[test]
fn sigterm_stops_serve_and_its_plugins() {
    let (tmp, plugins) = checkout_copy();
    let mut server = Server::start(&plugins, tmp.path());
    let list = server.plugins_json();
    let pids: Vec<(String, u32)> = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let pid = p["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {p}"));
            (p["name"].as_str().unwrap().to_owned(), pid as u32)
        })
        .collect();
    assert_eq!(pids.len(), 3, "{list}");
    for (name, pid) in &pids {
        assert!(
            signal(*pid, 0).is_ok(),
            "`{name}` (pid {pid}) is not running before SIGTERM"
        );
    }

    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{status}; log:\n{}", server.log());
    for (name, pid) in &pids {
        let alive = signal(*pid, 0);
        assert_eq!(
            alive.as_ref().map_err(|e| e.raw_os_error()),
            Err(Some(libc::ESRCH)),
            "`{name}` (pid {pid}) outlived `plugd serve`"
        );
    }
    let log = server.log();
    assert!(log.contains("stopping plugins"), "{log}");
}

/// Signs the packages `names` with a fresh key and trusts it in `state`'s trust store.
pub(crate) fn sign_and_trust(tmp: &Path, plugins: &Path, state: &Path, names: &[&str]) {
    let key = tmp.join("signing.key");
    let (key, state_arg) = (key.to_str().unwrap(), state.to_str().unwrap());
    plugd(&["keygen", "--out", key]).ok();
    for name in names {
        plugd(&["sign", plugins.join(name).to_str().unwrap(), "--key", key]).ok();
    }
    plugd(&[
        "--state-dir",
        state_arg,
        "trust",
        "add",
        &format!("{key}.pub"),
    ])
    .ok();
}
