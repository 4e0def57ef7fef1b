//! Plugins with Python dependencies: environments built with `uv` from wheels the test makes
//! (no network: `find_links` + `no_index`), shared by lock, checked against their requirements,
//! confined like the plugin, and garbage collected.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use plugd_host::pyenv::{self, HASH_HEADER, LOCK_FILE, Requirements, Source};
use plugd_host::{Host, HostConfig, PluginState, PythonConfig};
use plugd_process::SandboxConfig;
use serde_json::{Value, json};

use crate::support::*;

/// Writes `NAME-VERSION-py3-none-any.whl` into `dir`: a package `NAME` whose `shout(text)`
/// returns the text upper-cased and tagged with the package and version.
fn wheel(dir: &Path, name: &str, version: &str) {
    const SCRIPT: &str = r#"
import base64, hashlib, sys, zipfile
name, version, out = sys.argv[1:4]
info = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": f"def shout(text):\n    return text.upper() + ' ({name} {version})'\n",
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: plugd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for path, text in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    record.append(f"{path},sha256={digest},{len(text.encode())}")
record.append(f"{info}/RECORD,,")
files[f"{info}/RECORD"] = "\n".join(record) + "\n"
with zipfile.ZipFile(f"{out}/{name}-{version}-py3-none-any.whl", "w") as z:
    for path, text in files.items():
        z.writestr(path, text)
"#;
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("python3")
        .args(["-c", SCRIPT, name, version])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A wheel directory with `tinydep 1.0` and `tinyother 2.0`.
fn wheels(f: &Fixture) -> PathBuf {
    let dir = f.dir.path().join("wheels");
    wheel(&dir, "tinydep", "1.0");
    wheel(&dir, "tinyother", "2.0");
    dir
}

/// Installs from the test's wheels only: no index, no network.
fn offline(f: &Fixture, config: &mut HostConfig) {
    config.python = PythonConfig {
        find_links: vec![wheels(f)],
        no_index: true,
        ..PythonConfig::default()
    };
}

/// A plugin that imports `tinydep` and answers with it, and says which environment it runs in.
const USES_DEP: &str = r#"import tinydep
@plugin.action()
async def shout(p):
    return {"text": tinydep.shout(p["text"]), "prefix": sys.prefix}
"#;

fn requires(reqs: &[&str]) -> String {
    let list: Vec<String> = reqs.iter().map(|r| format!("\"{r}\"")).collect();
    format!("[python]\nrequirements = [{}]\n", list.join(", "))
}

fn state(f: &Fixture) -> PathBuf {
    f.dir.path().join("state")
}

/// The environments in `STATE/envs` (not the build leftovers or lock files).
fn envs(f: &Fixture) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(state(f).join("envs"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Everything in `STATE/envs` whose name starts with `.building-`.
fn building(f: &Fixture) -> Vec<String> {
    std::fs::read_dir(state(f).join("envs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".building-"))
        .collect()
}

/// [`Fixture::sandboxed_host`] with the test's wheels as the only package source.
fn sandboxed_host(f: &Fixture, sandbox: SandboxConfig) -> Host {
    let mut process = plugd_process::ProcessConfig::default();
    process.base_env.push((
        "PYTHONPATH".into(),
        f.dir.path().join("sdk").into_os_string(),
    ));
    process.start_timeout = std::time::Duration::from_secs(30);
    process.ping_interval = std::time::Duration::from_secs(1);
    process.ping_timeout = std::time::Duration::from_secs(20);
    process.sandbox = Some(sandbox);
    let mut config = HostConfig::new(f.plugins(), state(f));
    config.stop_grace = std::time::Duration::from_secs(2);
    offline(f, &mut config);
    Host::builder(config)
        .runtime(std::sync::Arc::new(plugd_process::ProcessRuntime::new(
            process,
        )))
        .build()
}

async fn shout(host: &Host, plugin: &str) -> Value {
    let out = call(host, plugin, "shout", r#"{"text":"hi"}"#)
        .await
        .unwrap_or_else(|e| panic!("`{plugin}` failed: {e}"));
    serde_json::from_str::<Value>(&out).unwrap()["value"].take()
}

fn reason(host: &Host, name: &str) -> String {
    let p = info(host, name);
    assert_eq!(p.state, PluginState::Failed, "{name}: {:?}", p.reason);
    p.reason.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_imports_its_dependency_and_the_same_lock_shares_one_env() {
    let f = Fixture::new();
    // The same requirement in the manifest and (with a comment and blank lines) in a
    // `requirements.txt`: one normalized hash, one lock, one environment.
    f.sdk_plugin("a", "1.0.0", &[], &requires(&["tinydep==1.0"]), USES_DEP);
    f.sdk_plugin("b", "1.0.0", &[], "", USES_DEP);
    std::fs::write(
        f.plugins().join("b/requirements.txt"),
        "# what b needs\n\n  tinydep==1.0   # pinned\n",
    )
    .unwrap();
    let host = f.host_with_config(|c| offline(&f, c));
    host.start().await.unwrap();
    assert_eq!(states(&host), ["a running", "b running"]);

    let [env] = envs(&f).try_into().unwrap();
    for name in ["a", "b"] {
        let got = shout(&host, name).await;
        assert_eq!(got["text"], "HI (tinydep 1.0)");
        assert_eq!(got["prefix"], env.to_str().unwrap(), "{name}");
    }
    // The lock resolved for them is cached by requirements hash, with the hash header.
    let hash = pyenv::requirements_hash(&["tinydep==1.0".to_owned()]);
    let lock = std::fs::read_to_string(state(&f).join(format!("locks/{hash}.lock"))).unwrap();
    assert!(
        lock.starts_with(&format!("{HASH_HEADER}{hash}\n")),
        "{lock}"
    );
    assert!(lock.contains("tinydep==1.0"), "{lock}");
    assert!(lock.contains("--hash=sha256:"), "{lock}");
    assert_eq!(pyenv::lock_header_hash(&lock), Some(hash.as_str()));
    let inode = std::fs::metadata(&env).unwrap().ino();
    host.shutdown().await;

    // A second host on the same state dir, with no `uv` at all: the cached lock and the
    // environment are reused as they are (same directory, same inode), so nothing ran uv.
    let host = f.host_with_config(|c| {
        offline(&f, c);
        c.python.uv = Some("/nonexistent/uv".into());
    });
    host.start().await.unwrap();
    assert_eq!(states(&host), ["a running", "b running"]);
    assert_eq!(envs(&f), std::slice::from_ref(&env));
    assert_eq!(std::fs::metadata(&env).unwrap().ino(), inode);
    assert_eq!(shout(&host, "b").await["prefix"], env.to_str().unwrap());

    // A cache hit costs a few small reads: time it (reported, not asserted).
    let manifest = plugd_manifest::Manifest::load(&f.plugins().join("a")).unwrap();
    let started = Instant::now();
    let hit = pyenv::prepare_env(host.config(), "a", &f.plugins().join("a"), &manifest).unwrap();
    eprintln!(
        "cached environment: prepare_env took {:?}",
        started.elapsed()
    );
    assert_eq!(hit, Some(env));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_that_does_not_match_its_requirements_is_refused() {
    let f = Fixture::new();
    f.sdk_plugin(
        "stale",
        "1.0.0",
        &[],
        &requires(&["tinydep==1.0"]),
        USES_DEP,
    );
    // A lock made from other requirements (the plugin's were edited after `plugd lock`).
    let other = pyenv::requirements_hash(&["tinydep==0.9".to_owned()]);
    std::fs::write(
        f.plugins().join("stale").join(LOCK_FILE),
        format!(
            "{HASH_HEADER}{other}\ntinydep==0.9 \\\n    --hash=sha256:{}\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    // A lock without the header cannot be checked at all.
    f.sdk_plugin(
        "headless",
        "1.0.0",
        &[],
        &requires(&["tinydep==1.0"]),
        USES_DEP,
    );
    std::fs::write(
        f.plugins().join("headless").join(LOCK_FILE),
        "tinydep==1.0 \\\n    --hash=sha256:00\n",
    )
    .unwrap();
    // Both `[python] requirements` and a `requirements.txt`: which one would be meant?
    f.sdk_plugin("both", "1.0.0", &[], &requires(&["tinydep==1.0"]), USES_DEP);
    std::fs::write(f.plugins().join("both/requirements.txt"), "tinydep==1.0\n").unwrap();
    let host = f.host_with_config(|c| offline(&f, c));
    host.start().await.unwrap();

    let stale = reason(&host, "stale");
    assert!(
        stale.contains("Plugin `stale` was refused: its lock does not match its requirements"),
        "{stale}"
    );
    assert!(stale.contains("`tinydep==1.0`"), "{stale}");
    assert!(stale.contains("hint: `plugd lock DIR`"), "{stale}");
    let headless = reason(&host, "headless");
    assert!(headless.contains(HASH_HEADER.trim()), "{headless}");
    assert!(headless.contains("hint: `plugd lock DIR`"), "{headless}");
    let both = reason(&host, "both");
    assert!(both.contains("Plugin `both`"), "{both}");
    assert!(both.contains("`[python] requirements`"), "{both}");
    assert!(both.contains("`requirements.txt`"), "{both}");
    // Nothing was built for any of them.
    assert!(envs(&f).is_empty());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_requires_a_lock_and_runs_a_signed_one() {
    let f = Fixture::new();
    let key = trusted_signing_key(&f);
    f.sdk_plugin(
        "unlocked",
        "1.0.0",
        &[],
        &requires(&["tinydep==1.0"]),
        USES_DEP,
    );
    f.sdk_plugin(
        "locked",
        "1.0.0",
        &[],
        &requires(&["tinydep==1.0"]),
        USES_DEP,
    );
    // `plugd lock` (the same function) writes the lock into the package, then it is signed.
    let python = PythonConfig {
        find_links: vec![wheels(&f)],
        no_index: true,
        ..PythonConfig::default()
    };
    let requirements = Requirements {
        lines: vec!["tinydep==1.0".into()],
        source: Source::Manifest,
    };
    let lock =
        pyenv::lock_requirements(&state(&f), &python, "Package `locked`", &requirements).unwrap();
    assert_eq!(lock.packages, 1);
    std::fs::write(f.plugins().join("locked").join(LOCK_FILE), &lock.text).unwrap();
    for name in ["unlocked", "locked"] {
        plugd_trust::sign_package(&f.plugins().join(name), &key).unwrap();
    }
    let host = f.host_with_config(|c| {
        offline(&f, c);
        c.strict = true;
    });
    host.start().await.unwrap();

    let unlocked = reason(&host, "unlocked");
    assert!(
        unlocked.contains("Plugin `unlocked` was refused"),
        "{unlocked}"
    );
    assert!(
        unlocked.contains("strict mode requires a lock; hint: `plugd lock DIR`, then sign"),
        "{unlocked}"
    );
    assert_eq!(info(&host, "locked").state, PluginState::Running);
    assert_eq!(shout(&host, "locked").await["text"], "HI (tinydep 1.0)");
    // No lock was resolved on the host's side: the package's own was used.
    assert!(
        !state(&f)
            .join("locks")
            .join(format!("{}.lock", lock.requirements_hash))
            .exists()
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_requirement_fails_the_start_naming_it() {
    let f = Fixture::new();
    f.sdk_plugin(
        "missing",
        "1.0.0",
        &[],
        &requires(&["tinydep==1.0", "nosuchpkg==1.0"]),
        USES_DEP,
    );
    f.sdk_plugin("bystander", "1.0.0", &[], "", ECHO);
    let host = f.host_with_config(|c| offline(&f, c));
    host.start().await.unwrap();
    let missing = reason(&host, "missing");
    assert!(
        missing.starts_with(
            "Plugin `missing` cannot resolve its Python requirements (`nosuchpkg==1.0`): uv: "
        ),
        "{missing}"
    );
    assert!(missing.contains("nosuchpkg"), "{missing}");
    assert!(missing.contains("hint: "), "{missing}");
    assert_eq!(info(&host, "bystander").state, PluginState::Running);
    assert!(envs(&f).is_empty());
    assert!(
        !state(&f).join("locks").exists()
            || std::fs::read_dir(state(&f).join("locks"))
                .unwrap()
                .next()
                .is_none()
    );
    host.shutdown().await;

    // Without `uv`, the reason names the fix.
    let g = Fixture::new();
    g.sdk_plugin(
        "needs-uv",
        "1.0.0",
        &[],
        &requires(&["tinydep==1.0"]),
        USES_DEP,
    );
    let host = g.host_with_config(|c| {
        offline(&g, c);
        c.python.uv = Some("/nonexistent/uv".into());
    });
    host.start().await.unwrap();
    let no_uv = reason(&host, "needs-uv");
    assert!(no_uv.contains("Plugin `needs-uv` needs `uv`"), "{no_uv}");
    assert!(no_uv.contains("`tinydep==1.0`"), "{no_uv}");
    assert!(
        no_uv.contains(&format!("pip install uv=={}", pyenv::UV_VERSION)),
        "{no_uv}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_plugin_with_deps_has_no_network_in_the_sandbox() {
    let f = Fixture::sandboxed();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = format!(
        "{USES_DEP}{}",
        r#"import socket
@plugin.action()
async def connect(p):
    tinydep.shout("imported")
    try:
        # Seccomp refuses the socket itself; without it, the empty netns refuses the connect.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(("127.0.0.1", p["port"]))
            return {"ok": "connected"}
    except OSError as e:
        return {"errno": e.errno, "error": str(e)}
"#
    );
    f.sdk_plugin("netless", "1.0.0", &[], &requires(&["tinydep==1.0"]), &body);
    let sandbox = SandboxConfig {
        strict: false,
        ..SandboxConfig::default()
    };
    let host = sandboxed_host(&f, sandbox);
    host.start().await.unwrap();
    let p = info(&host, "netless");
    assert_eq!(p.state, PluginState::Running, "{:?}", p.reason);
    assert!(matches!(p.trust, Some(plugd_host::TrustLevel::Untrusted)));
    let layer = |name: &str| {
        p.details
            .iter()
            .find(|(k, _)| k == &format!("sandbox.{name}"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (netns, seccomp) = (layer("netns"), layer("seccomp"));
    assert!(
        netns.starts_with("applied") || seccomp.starts_with("applied"),
        "no layer that takes the network away applies here: netns {netns}, seccomp {seccomp}"
    );

    // Its environment was built (with the network the host has) and it imports from it...
    let [env] = envs(&f).try_into().unwrap();
    let got = shout(&host, "netless").await;
    assert_eq!(got["text"], "HI (tinydep 1.0)");
    assert_eq!(got["prefix"], env.to_str().unwrap());
    // ... yet it cannot reach a listener on the host's loopback.
    let out = call(
        &host,
        "netless",
        "connect",
        &json!({ "port": port }).to_string(),
    )
    .await
    .unwrap();
    let got = &serde_json::from_str::<Value>(&out).unwrap()["value"];
    assert!(got["errno"].as_i64().is_some(), "{got}");
    listener.set_nonblocking(true).unwrap();
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_unused_envs_and_keeps_used_ones() {
    let f = Fixture::new();
    f.sdk_plugin(
        "keeps",
        "1.0.0",
        &[],
        &requires(&["tinydep==1.0"]),
        USES_DEP,
    );
    let other = "import tinyother\n@plugin.action()\nasync def shout(p):\n    return {\"text\": tinyother.shout(p[\"text\"]), \"prefix\": sys.prefix}\n";
    f.sdk_plugin("goes", "1.0.0", &[], &requires(&["tinyother==2.0"]), other);
    let host = f.host_with_config(|c| offline(&f, c));
    host.start().await.unwrap();
    assert_eq!(states(&host), ["goes running", "keeps running"]);
    assert_eq!(shout(&host, "goes").await["text"], "HI (tinyother 2.0)");
    let kept = PathBuf::from(shout(&host, "keeps").await["prefix"].as_str().unwrap());
    let gone = PathBuf::from(shout(&host, "goes").await["prefix"].as_str().unwrap());
    assert_ne!(kept, gone);
    assert_eq!(envs(&f), {
        let mut both = vec![kept.clone(), gone.clone()];
        both.sort();
        both
    });

    // While both run, nothing goes.
    let c = host.collect_garbage().await.unwrap();
    assert!(c.envs.is_empty(), "{c:?}");
    host.unload("goes").await.unwrap();
    let c = host.collect_garbage().await.unwrap();
    assert_eq!(c.envs, std::slice::from_ref(&gone));
    assert!(c.env_bytes > 0);
    assert_eq!(envs(&f), std::slice::from_ref(&kept));
    // The plugin still in use keeps serving from its environment.
    assert_eq!(shout(&host, "keeps").await["text"], "HI (tinydep 1.0)");
    // Loading the other again rebuilds its environment (from the cached lock and uv's cache).
    host.load("goes").await.unwrap();
    assert_eq!(shout(&host, "goes").await["prefix"], gone.to_str().unwrap());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_build_is_cleaned_and_never_used() {
    let f = Fixture::new();
    f.sdk_plugin("p", "1.0.0", &[], &requires(&["tinydep==1.0"]), USES_DEP);
    let host = f.host_with_config(|c| offline(&f, c));
    host.start().await.unwrap();
    let [env] = envs(&f).try_into().unwrap();
    host.shutdown().await;

    // As if a host was killed while building this environment (and another one): the
    // environment was never renamed into place, half a venv is left in `.building-*`.
    std::fs::remove_dir_all(&env).unwrap();
    let hash = env.file_name().unwrap().to_str().unwrap().to_owned();
    let envs_dir = state(&f).join("envs");
    for leftover in [
        format!(".building-{hash}-dead"),
        ".building-00000000deadbeef-dead".to_owned(),
    ] {
        std::fs::create_dir_all(envs_dir.join(&leftover).join("bin")).unwrap();
        std::fs::write(envs_dir.join(&leftover).join("bin/python3"), "half").unwrap();
    }
    let host = f.host_with_config(|c| offline(&f, c));
    host.start().await.unwrap();
    assert_eq!(states(&host), ["p running"]);
    // The build cleaned its own hash's leftover and any other nobody is building.
    assert!(building(&f).is_empty(), "{:?}", building(&f));
    assert_eq!(envs(&f), std::slice::from_ref(&env));
    assert_eq!(shout(&host, "p").await["prefix"], env.to_str().unwrap());

    // GC cleans a leftover made after the start too.
    std::fs::create_dir_all(envs_dir.join(".building-0123456789abcdef-x")).unwrap();
    let c = host.collect_garbage().await.unwrap();
    assert_eq!(c.envs, [envs_dir.join(".building-0123456789abcdef-x")]);
    assert_eq!(envs(&f), [env]);
    host.shutdown().await;
}
