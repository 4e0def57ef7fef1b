//! An application that embeds the plugd host: it offers plugins a service of its own (`db`, an
//! in-memory table of users), loads the plugins it ships (`examples/embed/plugins`), calls one
//! that uses the service, and prints the answer.
//!
//! ```sh
//! cargo run -p plugd-embed-example                # greets user 1 and user 2, then user 99
//! cargo run -p plugd-embed-example -- PLUGINS_DIR  # another plugins directory
//! ```
//!
//! App services are for trusted plugins only, so the application trusts what it ships: it copies
//! its plugins into a private state dir, signs the copies with a key made for this run and puts
//! that key in the host's trust store. An application that gets plugins from elsewhere would
//! instead trust its vendors' public keys (`plugd trust add`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use parking_lot::Mutex;
use plugd_host::{AppService, AppServiceError, Host, HostConfig};
use plugd_manifest::PluginName;
use plugd_process::{ProcessConfig, ProcessRuntime};
use serde_json::{Value, json};

/// The application's own database: users by id, and how often a plugin asked for each.
struct MemoryDb {
    users: Mutex<HashMap<u64, (String, u64)>>,
}

impl MemoryDb {
    fn new() -> MemoryDb {
        let users = [(1, "Ada"), (2, "Grace")]
            .into_iter()
            .map(|(id, name)| (id, (name.to_owned(), 0)))
            .collect();
        MemoryDb {
            users: Mutex::new(users),
        }
    }
}

#[async_trait]
impl AppService for MemoryDb {
    async fn call(
        &self,
        caller: &PluginName,
        method: &str,
        params: Value,
    ) -> Result<Value, AppServiceError> {
        match method {
            "user" => {
                let id = params["id"].as_u64().ok_or_else(|| {
                    AppServiceError::new("bad_request", "`user` needs an integer `id`")
                })?;
                let mut users = self.users.lock();
                let (name, visits) = users.get_mut(&id).ok_or_else(|| {
                    AppServiceError::new("not_found", format!("No user with id {id}"))
                })?;
                *visits += 1;
                println!("db: `{caller}` looked up user {id}");
                Ok(json!({ "name": name, "visits": visits }))
            }
            other => Err(AppServiceError::new(
                "unknown_method",
                format!("The `db` service has no method `{other}`; hint: use `user`"),
            )),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let shipped = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins"),
    };
    let state = tempfile::tempdir().context("Cannot create a state dir")?;
    let plugins = state.path().join("plugins");
    trust_shipped(&shipped, &plugins, state.path())?;

    // Python plugins import the SDK from this checkout (`plugd serve` ships its own copy).
    let sdk = std::env::var_os("PLUGD_SDK").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python/src"),
        PathBuf::from,
    );
    let mut process = ProcessConfig::default();
    process
        .base_env
        .push(("PYTHONPATH".into(), sdk.into_os_string()));

    let host = Host::builder(HostConfig::new(&plugins, state.path()))
        .runtime(Arc::new(ProcessRuntime::new(process)))
        .service("db", Arc::new(MemoryDb::new()))
        .build();
    host.start().await?;
    for p in host.plugins() {
        println!(
            "plugin `{}`: {}{}",
            p.name,
            p.state,
            p.reason.map(|r| format!(" ({r})")).unwrap_or_default()
        );
    }
    for id in [1, 2, 1, 99] {
        let payload = serde_json::value::to_raw_value(&json!({ "id": id }))?;
        match host.call("greeter", "greet", payload).await {
            Ok(outcome) => println!("greet {id}: {}", outcome.result.get()),
            Err(e) => println!("greet {id} failed ({}): {e}", e.code()),
        }
    }
    host.shutdown().await;
    Ok(())
}

/// Copies each shipped plugin to `plugins`, signs the copy with a key made for this run, and
/// trusts that key in the host's trust store (`STATE/trust`).
fn trust_shipped(shipped: &Path, plugins: &Path, state: &Path) -> anyhow::Result<()> {
    let key = plugd_trust::SecretKey::generate();
    plugd_trust::TrustStore::open(&state.join("trust"))?.add_key(&key.public_key())?;
    for entry in std::fs::read_dir(shipped)
        .with_context(|| format!("Cannot read the plugins dir `{}`", shipped.display()))?
    {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let copy = plugins.join(entry.file_name());
        copy_dir(&entry.path(), &copy)?;
        plugd_trust::sign_package(&copy, &key)?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name() == "__pycache__" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()))?;
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}
