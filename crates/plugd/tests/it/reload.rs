//! Hot reload through the real binary: `plugd serve --watch` while a client keeps 16 calls in
//! flight and the plugin is rewritten 20 times. Every call must succeed, and every answer must
//! come from a version that was written — per client, never an older one after a newer one (the
//! switch is atomic).
//!
//! Then `plugd status` shows the swaps, a broken rewrite keeps the running version serving and
//! is recorded as a failed reload, and `plugd dev` serves one package with watch on.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Server, open_tempdir, repo};

/// Calls kept in flight.
const CLIENTS: usize = 16;
/// Rewrites of the plugin.
const REWRITES: u32 = 20;
/// How long one rewrite may take to serve (a start in the sandbox, under 16 clients, on 2 cores).
const SWAP_DEADLINE: Duration = Duration::from_secs(30);

const HELLO_TOML: &str = r#"[plugin]
name = "hello"
version = "1.0.0"
runtime = "process"
entry = ["python3", "main.py"]
"#;

/// The Python plugin, answering with its generation `N`.
fn hello_py(generation: u32) -> String {
    format!(
        r#"from plugd import Plugin
plugin = Plugin()

@plugin.action()
async def which(payload):
    plugin.log.debug("which called in generation {generation}")
    return {{"generation": {generation}}}

plugin.run()
"#
    )
}

/// Writes `bytes` to `path` the way editors and `git checkout` do: a temp file renamed over it.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `POST path` with a JSON body on a fresh connection: the status and body, or what went wrong.
fn post(authority: &str, path: &str, body: &str) -> Result<(u16, Value), String> {
    let mut stream = TcpStream::connect(authority).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {raw:?}"))?;
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let value = serde_json::from_str(body).map_err(|e| format!("body {body:?}: {e}"))?;
    Ok((status, value))
}

/// 16 clients calling `path` until stopped; each checks that every answer succeeds and that the
/// marker `mark` pulls out of it never goes back.
struct Load {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    clients: Vec<JoinHandle<Result<(), String>>>,
}

impl Load {
    fn start(authority: &str, path: &'static str, mark: fn(&Value) -> Option<u32>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let clients = (0..CLIENTS)
            .map(|_| {
                let (authority, stop, calls) = (authority.to_owned(), stop.clone(), calls.clone());
                std::thread::spawn(move || {
                    let mut newest = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let (status, body) = post(&authority, path, "{}")?;
                        if status != 200 {
                            return Err(format!("status {status}: {body}"));
                        }
                        let seen = mark(&body).ok_or_else(|| format!("no marker in {body}"))?;
                        if seen < newest {
                            return Err(format!("answer from {seen} after one from {newest}"));
                        }
                        newest = seen;
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        Load {
            stop,
            calls,
            clients,
        }
    }

    /// Stops the clients; every call they made must have succeeded. Returns how many.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            if let Err(e) = client.join().unwrap() {
                panic!("a call failed during the reloads: {e}");
            }
        }
        self.calls.load(Ordering::Relaxed)
    }
}

/// Polls `path` until `mark` of its answer is `want`.
fn wait_for(
    authority: &str,
    path: &str,
    mark: fn(&Value) -> Option<u32>,
    want: u32,
    log: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + SWAP_DEADLINE;
    loop {
        if let Ok((200, body)) = post(authority, path, "{}")
            && mark(&body) == Some(want)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "version {want} did not serve within {SWAP_DEADLINE:?}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn serve_watching(tmp: &Path, plugins: &Path) -> Server {
    let state = tmp.join("state");
    Server::spawn(
        tmp,
        &[
            OsStr::new("--plugins"),
            plugins.as_os_str(),
            OsStr::new("--state-dir"),
            state.as_os_str(),
            OsStr::new("--watch"),
        ],
        &tmp.join("serve.log"),
    )
}

/// The plugin's supervision record, from `plugd --json status NAME`.
fn supervision(server: &Server, name: &str) -> Value {
    let run = server.cli(&["--json", "status", name]);
    run.ok();
    let status: Value = serde_json::from_str(&run.stdout).unwrap();
    status["plugin"]["supervision"].clone()
}

/// The supervision record once it holds `n` swaps: a swap is recorded when the old version has
/// drained and stopped, a little after the new one answers.
fn swaps_recorded(server: &Server, name: &str, n: usize) -> Value {
    let deadline = Instant::now() + SWAP_DEADLINE;
    loop {
        let record = supervision(server, name);
        let len = record["swaps"].as_array().map_or(0, Vec::len);
        if len >= n {
            assert_eq!(len, n, "{record:#}");
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "{len} swaps, not {n}: {record:#}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn generation(body: &Value) -> Option<u32> {
    body["value"]["generation"].as_u64().map(|g| g as u32)
}

#[test]
fn a_python_plugin_rewritten_20_times_under_load_drops_no_call() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    let dir = plugins.join("hello");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("plugin.toml"), HELLO_TOML).unwrap();
    std::fs::write(dir.join("main.py"), hello_py(0)).unwrap();
    let server = serve_watching(tmp.path(), &plugins);
    let authority = server.url.strip_prefix("http://").unwrap().to_owned();
    let log = || server.log();

    let load = Load::start(&authority, "/plugin/hello/which", generation);
    for n in 1..=REWRITES {
        replace(&dir.join("main.py"), hello_py(n).as_bytes());
        wait_for(&authority, "/plugin/hello/which", generation, n, &log);
    }
    let calls = load.finish();
    assert!(calls > u64::from(REWRITES), "only {calls} calls");

    let record = swaps_recorded(&server, "hello", REWRITES as usize);
    let swaps = record["swaps"].as_array().unwrap();
    for swap in swaps {
        assert_eq!(swap["trigger"], "watch", "{swap}");
        assert_eq!(swap["ok"], true, "{swap}");
    }

    // A broken rewrite: the running version keeps serving, the failure is on record.
    replace(&dir.join("main.py"), b"def broken(:\n");
    let deadline = Instant::now() + SWAP_DEADLINE;
    let failed = loop {
        let record = supervision(&server, "hello");
        if let Some(failed) = record["swaps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["ok"] == false)
        {
            break failed.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no failed reload: {record:#}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        failed["error"].as_str().unwrap().contains("SyntaxError"),
        "{failed}"
    );
    let (status, body) = post(&authority, "/plugin/hello/which", "{}").unwrap();
    assert_eq!((status, generation(&body)), (200, Some(REWRITES)), "{body}");
    let status = server.cli(&["status", "hello"]);
    assert!(status.ok().stdout.contains("FAILED"), "{status}");
}

#[test]
fn a_wasm_plugin_swapped_20_times_under_load_drops_no_call() {
    let example = repo().join("examples/plugins/hello-c-wasm");
    let built = std::fs::read(example.join("plugin.wasm")).unwrap_or_else(|e| {
        panic!("`hello-c-wasm/plugin.wasm`: {e}; hint: run `examples/plugins/build.sh` first")
    });
    // The second component: the same code answering `build-B`.
    let marker = |b: &[u8]| b.windows(7).position(|w| w == b"build-A");
    let at = marker(&built).expect("`build-A` in plugin.wasm");
    let mut other = built.clone();
    other[at..at + 7].copy_from_slice(b"build-B");
    let builds = [built, other];

    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    let dir = plugins.join("hello-c-wasm");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(example.join("plugin.toml"), dir.join("plugin.toml")).unwrap();
    std::fs::write(dir.join("plugin.wasm"), &builds[0]).unwrap();
    let server = serve_watching(tmp.path(), &plugins);
    let authority = server.url.strip_prefix("http://").unwrap().to_owned();
    let log = || server.log();

    // Each client sees A, B, A, ...: the marker is the build, so "never back" cannot be checked
    // across swaps here; every answer must still be a success from one of the two builds.
    fn build(body: &Value) -> Option<u32> {
        match body["value"]["build"].as_str()? {
            "build-A" | "build-B" => Some(0),
            _ => None,
        }
    }
    fn which(body: &Value) -> Option<u32> {
        match body["value"]["build"].as_str()? {
            "build-A" => Some(0),
            "build-B" => Some(1),
            _ => None,
        }
    }
    let load = Load::start(&authority, "/plugin/hello-c-wasm/build", build);
    for n in 1..=REWRITES {
        let i = (n % 2) as usize;
        replace(&dir.join("plugin.wasm"), &builds[i]);
        wait_for(
            &authority,
            "/plugin/hello-c-wasm/build",
            which,
            i as u32,
            &log,
        );
    }
    let calls = load.finish();
    assert!(calls > u64::from(REWRITES), "only {calls} calls");
    let record = swaps_recorded(&server, "hello-c-wasm", REWRITES as usize);
    let swaps = record["swaps"].as_array().unwrap();
    assert!(swaps.iter().all(|s| s["ok"] == true), "{record:#}");
}

#[test]
fn dev_serves_one_package_and_reloads_it_on_change() {
    let tmp = open_tempdir();
    let dir = tmp.path().join("work/hello");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("plugin.toml"), HELLO_TOML).unwrap();
    std::fs::write(dir.join("main.py"), hello_py(0)).unwrap();
    // A sibling package that `dev` must not serve.
    let sibling = tmp.path().join("work/other");
    std::fs::create_dir_all(&sibling).unwrap();
    std::fs::write(
        sibling.join("plugin.toml"),
        HELLO_TOML.replace("\"hello\"", "\"other\""),
    )
    .unwrap();
    std::fs::write(sibling.join("main.py"), hello_py(0)).unwrap();

    // From inside the package, with the default state dir `./.plugd`: it must not land in the
    // package (it would become part of it), but in the temp dir.
    let temp = tmp.path().join("temp");
    std::fs::create_dir(&temp).unwrap();
    let server = Server::spawn_command(
        &dir,
        "dev",
        &[OsStr::new(".")],
        &[("TMPDIR", temp.as_os_str())],
        &tmp.path().join("dev.log"),
    );
    let authority = server.url.strip_prefix("http://").unwrap().to_owned();
    assert!(
        !dir.join(".plugd").exists(),
        "state dir made inside the package"
    );
    assert!(
        temp.join("plugd-dev/hello/plugd.db").exists(),
        "{}",
        server.log()
    );
    let names: Vec<String> = server.plugins_json()["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["hello"]);

    replace(&dir.join("main.py"), hello_py(7).as_bytes());
    wait_for(&authority, "/plugin/hello/which", generation, 7, &|| {
        server.log()
    });
    // The plugin's log lines, debug included, are in the terminal.
    let deadline = Instant::now() + SWAP_DEADLINE;
    while !server.log().contains("which called in generation 7") {
        assert!(
            Instant::now() < deadline,
            "no plugin log line:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
