//! Test fixtures: plugins written into a temp plugins dir, and a host with fast timings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use plugd_host::{Host, HostConfig, HostError, PluginInfo, PluginState};
use plugd_process::{ProcessConfig, ProcessRuntime};
use serde_json::value::RawValue;

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        Fixture { dir }
    }

    pub fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Writes a plugin package. `extra` is appended to `plugin.toml`; `deps` go to
    /// `[dependencies]`.
    pub fn plugin(
        &self,
        name: &str,
        version: &str,
        deps: &[(&str, &str)],
        extra: &str,
        main_py: &str,
    ) {
        let dir = self.plugins().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut toml = format!(
            "[plugin]\nname = \"{name}\"\nversion = \"{version}\"\nruntime = \"process\"\nentry = [\"python3\", \"main.py\"]\n"
        );
        if !deps.is_empty() {
            toml.push_str("[dependencies]\n");
            for (d, r) in deps {
                toml.push_str(&format!("{d} = \"{r}\"\n"));
            }
        }
        toml.push_str(extra);
        std::fs::write(dir.join("plugin.toml"), toml).unwrap();
        std::fs::write(dir.join("main.py"), main_py).unwrap();
    }

    /// A plugin built with the SDK from a few action definitions.
    pub fn sdk_plugin(
        &self,
        name: &str,
        version: &str,
        deps: &[(&str, &str)],
        extra: &str,
        body: &str,
    ) {
        let main = format!(
            "import asyncio, os, sys, time\nfrom plugd import Plugin\nplugin = Plugin()\n{body}\nplugin.run()\n"
        );
        self.plugin(name, version, deps, extra, &main);
    }

    pub fn host(&self) -> Host {
        self.host_with(|_| {})
    }

    pub fn host_with_config(&self, tweak: impl FnOnce(&mut HostConfig)) -> Host {
        self.build(|_| {}, tweak)
    }

    pub fn host_with(&self, tweak: impl FnOnce(&mut ProcessConfig)) -> Host {
        self.build(tweak, |_| {})
    }

    fn build(
        &self,
        tweak: impl FnOnce(&mut ProcessConfig),
        tweak_host: impl FnOnce(&mut HostConfig),
    ) -> Host {
        let mut config = ProcessConfig::default();
        config
            .base_env
            .push(("PYTHONPATH".into(), sdk_path().into_os_string()));
        config.start_timeout = Duration::from_secs(30);
        // Generous: the suite runs many Python children in parallel on small CI machines.
        config.ping_interval = Duration::from_secs(1);
        config.ping_timeout = Duration::from_secs(20);
        config.restart.initial_backoff = Duration::from_millis(20);
        tweak(&mut config);
        let mut host_config = HostConfig::new(self.plugins(), self.dir.path().join("state"));
        host_config.stop_grace = Duration::from_secs(2);
        host_config.log_lines = 200;
        tweak_host(&mut host_config);
        Host::builder(host_config)
            .runtime(Arc::new(ProcessRuntime::new(config)))
            .build()
    }
}

pub fn sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sdk/python/src")
        .canonicalize()
        .unwrap()
}

pub fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

pub async fn call(
    host: &Host,
    plugin: &str,
    action: &str,
    payload: &str,
) -> Result<String, HostError> {
    host.call(plugin, action, raw(payload))
        .await
        .map(|o| o.result.get().to_owned())
}

pub fn info(host: &Host, name: &str) -> PluginInfo {
    host.plugin(name).unwrap()
}

/// `(state, reason)` of every plugin, as text, for compact assertions.
pub fn states(host: &Host) -> Vec<String> {
    host.plugins()
        .into_iter()
        .map(|p| format!("{} {}", p.name, p.state))
        .collect()
}

/// Polls until `cond` holds (at most 30 s). Timing is not asserted: this only waits for an
/// asynchronous state change (a restart) to happen.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Whether the plugin runs a child other than `old` (one snapshot: state and pid read together).
pub fn restarted(host: &Host, name: &str, old: Option<u32>) -> bool {
    host.plugin(name)
        .map(|p| p.state == PluginState::Running && p.pid.is_some() && p.pid != old)
        .unwrap_or(false)
}

pub fn running(host: &Host, name: &str) -> bool {
    host.plugin(name)
        .map(|p| p.state == PluginState::Running && p.pid.is_some())
        .unwrap_or(false)
}

pub fn log_text(host: &Host, name: &str) -> String {
    host.logs(name, 10_000)
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .collect::<Vec<_>>()
        .join("\n")
}

pub const ECHO: &str = "@plugin.action()\nasync def echo(p):\n    return p\n";

/// Sandboxed children run as their own uid: the fixture's directories must be traversable by
/// others, and the SDK must sit where that uid can read it (the checkout may not be).
impl Fixture {
    /// A fixture (0755) with a copy of the SDK in `sdk/` and a host with the sandbox on.
    pub fn sandboxed() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let f = Fixture::new();
        let open = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(f.dir.path(), open.clone()).unwrap();
        std::fs::set_permissions(f.plugins(), open).unwrap();
        copy_tree(&sdk_path().join("plugd"), &f.dir.path().join("sdk/plugd"));
        f
    }

    /// A host whose process runtime confines every child with `sandbox`.
    pub fn sandboxed_host(
        &self,
        sandbox: plugd_process::SandboxConfig,
        tweak: impl FnOnce(&mut ProcessConfig),
    ) -> Host {
        let sdk = self.dir.path().join("sdk");
        self.build(
            |c| {
                c.base_env.retain(|(k, _)| k != "PYTHONPATH");
                c.base_env.push(("PYTHONPATH".into(), sdk.into_os_string()));
                c.sandbox = Some(sandbox);
                tweak(c);
            },
            |_| {},
        )
    }
}

/// Copies a source tree world-readable (0755 directories, 0644 files), without byte code.
fn copy_tree(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "__pycache__" {
                copy_tree(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

/// A fresh signing key whose public half is in the fixture's trust store.
pub fn trusted_signing_key(f: &Fixture) -> plugd_trust::SecretKey {
    let key = plugd_trust::SecretKey::generate();
    let public = key
        .write(
            &f.dir.path().join("signing.key"),
            plugd_trust::Overwrite::Refuse,
        )
        .unwrap();
    plugd_trust::TrustStore::open(&f.dir.path().join("state/trust"))
        .unwrap()
        .add(&public)
        .unwrap();
    key
}
