//! plugd-scripts' integration tests: real scripts run by `python3` in the real sandbox.

mod hostile;
mod manage;
mod runs;

use std::time::Duration;

use plugd_scripts::run::RunEvent;
use plugd_scripts::{AddRequest, RunRequest, RunTarget, RunView, Scripts, ScriptsConfig};
use plugd_store::{AddMode, Store, StoreConfig};
use serde_json::{Map, Value};

/// A manager on a fresh state dir, the repository's SDK on `PYTHONPATH`, sampling every 50 ms.
async fn manager() -> (Scripts, tempfile::TempDir) {
    manager_with(|_| {}).await
}

async fn manager_with(change: impl FnOnce(&mut ScriptsConfig)) -> (Scripts, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("plugd.db")))
        .await
        .unwrap();
    let mut config = ScriptsConfig::new(dir.path());
    let sdk = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk/python/src");
    let sdk = std::fs::canonicalize(sdk).unwrap();
    config
        .base_env
        .push(("PYTHONPATH".into(), sdk.into_os_string()));
    config.sample_interval = Duration::from_millis(50);
    change(&mut config);
    (Scripts::open(store, config).await.unwrap(), dir)
}

/// Registers `source` as `id`.
async fn add(scripts: &Scripts, id: &str, source: &str) {
    scripts
        .add(
            AddRequest {
                id: Some(id.to_owned()),
                source: source.to_owned(),
                ..AddRequest::default()
            },
            AddMode::Create,
        )
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"));
}

/// Runs a file's source to its end; returns the record and the events seen.
async fn run_source(scripts: &Scripts, source: &str, args: Value) -> (RunView, Vec<RunEvent>) {
    run(
        scripts,
        RunTarget::Source {
            name: "test.py".into(),
            source: source.to_owned(),
            overrides: Default::default(),
        },
        args,
    )
    .await
}

async fn run(scripts: &Scripts, target: RunTarget, args: Value) -> (RunView, Vec<RunEvent>) {
    let args: Map<String, Value> = serde_json::from_value(args).unwrap();
    let mut started = scripts
        .run(RunRequest {
            target,
            args,
            who: "test".into(),
            privileged: true,
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let event = tokio::time::timeout_at(deadline, started.events.recv())
            .await
            .expect("the run ends within a minute");
        match event {
            Ok(event) => {
                let end = matches!(event, RunEvent::Ended { .. });
                events.push(event);
                if end {
                    break;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    (scripts.run_view(started.id).await.unwrap(), events)
}
