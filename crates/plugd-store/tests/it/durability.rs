//! "Acknowledged means committed": a child process (this test binary, re-run with an env var)
//! commits from 16 tasks and prints each acknowledged commit; the parent SIGKILLs it mid-stream,
//! reopens the file and finds every acknowledged commit.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use plugd_store::{Durability, KvLimits, Store, StoreConfig};
use serde_json::json;

use crate::puts;

const CHILD_DB: &str = "PLUGD_STORE_TEST_CHILD_DB";
const CHILD_FULL: &str = "PLUGD_STORE_TEST_CHILD_FULL";
const TASKS: u64 = 16;
/// Each child task stops by itself after this many commits if nobody kills it.
const PER_TASK: u64 = 20_000;
/// Acknowledgements the parent waits for before the kill.
const KILL_AFTER: usize = 1_500;

/// The child's body. In a normal test run (no env var) it has nothing to do.
#[test]
fn sigkill_child_entry() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let durability = if std::env::var_os(CHILD_FULL).is_some() {
        Durability::Full
    } else {
        Durability::Process
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let config = StoreConfig {
            durability,
            ..StoreConfig::new(path)
        };
        let store = Store::open(config).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..TASKS {
            let store = store.clone();
            tasks.spawn(async move {
                for i in 0..PER_TASK {
                    let key = format!("t{task}-{i}");
                    let id = store
                        .kv_commit("p", puts(&[(key.as_str(), json!(i))]), &KvLimits::default())
                        .await
                        .unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {key} {id}").unwrap();
                    out.flush().unwrap();
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}

fn killed_child_loses_nothing(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugd.db");
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "durability::sigkill_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if durability == Durability::Full {
        command.env(CHILD_FULL, "1");
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    // Lines arrive through a thread so every wait below has a deadline.
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut record = |line: String| {
        if let Some(rest) = line.strip_prefix("ack ") {
            let (key, id) = rest.split_once(' ').expect("`ack KEY ID`");
            acked.push((key.to_owned(), id.parse().unwrap()));
        }
    };
    let mut seen = 0;
    while seen < KILL_AFTER {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the child keeps acknowledging");
        seen += usize::from(line.starts_with("ack "));
        record(line);
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the child died of SIGKILL mid-stream"
    );
    // Everything it printed before dying was acknowledged: read the pipe to its end.
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(10)) {
        record(line);
    }
    reader.join().unwrap();
    assert!(acked.len() >= KILL_AFTER);
    assert!(
        acked.len() < (TASKS * PER_TASK) as usize,
        "killed before it finished"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(StoreConfig::new(&path)).await.unwrap();
        for (key, _) in &acked {
            let i: u64 = key.rsplit('-').next().unwrap().parse().unwrap();
            assert_eq!(
                store.kv_get("p", key).await.unwrap(),
                Some(json!(i)),
                "acknowledged `{key}` was lost"
            );
        }
        // Ids are unique, and the history still reaches the newest acknowledged commit.
        let mut ids: Vec<u64> = acked.iter().map(|(_, id)| *id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), acked.len());
        let newest = store
            .kv_undo("p")
            .await
            .unwrap()
            .expect("a commit to undo")
            .0;
        assert!(newest >= *ids.last().unwrap());
    });
}

#[test]
fn acknowledged_commits_survive_sigkill_with_process_durability() {
    killed_child_loses_nothing(Durability::Process);
}

#[test]
fn acknowledged_commits_survive_sigkill_with_full_durability() {
    killed_child_loses_nothing(Durability::Full);
}
