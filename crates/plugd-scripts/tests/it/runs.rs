//! Runs: arguments in, progress, samples, output and a result out, all recorded.

use plugd_scripts::RunTarget;
use plugd_scripts::run::RunEvent;
use serde_json::json;

use crate::{add, manager, run, run_source};

const WORKER: &str = r#"# /// script
# [tool.plugd]
# name = "Worker"
# allowed_imports = ["time"]
# ///
import time
from plugd import script

args = script.args()
n = args.get("n", 3)
for i in range(n):
    script.progress((i + 1) / n, f"step {i + 1}")
    print(f"line {i + 1}", flush=True)
    time.sleep(0.12)
script.result({"done": n, "who": args.get("who")})
"#;

#[tokio::test]
async fn a_run_gets_its_args_reports_progress_and_records_its_result() {
    let (scripts, _dir) = manager().await;
    add(&scripts, "worker", WORKER).await;
    let (view, events) = run(
        &scripts,
        RunTarget::Script {
            id: "worker".into(),
            version: None,
        },
        json!({"n": 3, "who": "ada"}),
    )
    .await;
    let r = &view.record;
    assert_eq!(r.state, "succeeded", "{r:?}");
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.result, Some(json!({"done": 3, "who": "ada"})));
    assert_eq!(r.output, "line 1\nline 2\nline 3\n");
    assert_eq!(r.output_bytes, 21);
    assert_eq!(
        (r.script_id.as_deref(), r.version),
        (Some("worker"), Some(1))
    );
    assert_eq!(r.args, json!({"n": 3, "who": "ada"}));
    assert_eq!(r.who, "test");
    assert!(r.peak_rss.unwrap_or(0) > 1 << 20, "{r:?}");
    assert!(r.duration_ms.unwrap() >= 300, "{r:?}");
    let progress: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::Progress { fraction, .. } => Some(*fraction),
            _ => None,
        })
        .collect();
    assert_eq!(progress.len(), 3, "{events:?}");
    assert!((progress[2] - 1.0).abs() < 1e-9);
    assert!(matches!(events.first(), Some(RunEvent::Started { .. })));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, RunEvent::Sample(s) if s.memory > 0)),
        "samples with memory: {events:?}"
    );
    assert!(matches!(events.last(), Some(RunEvent::Ended { state, .. }) if state == "succeeded"));
    // The history has it.
    let runs = scripts.runs(Some("worker"), None, 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, view.record.id);
}

#[tokio::test]
async fn a_failing_script_is_recorded_with_its_status_and_output() {
    let (scripts, _dir) = manager().await;
    let (view, _) = run_source(
        &scripts,
        "import sys\nprint('about to fail')\nraise SystemExit(3)\n",
        json!({}),
    )
    .await;
    let r = &view.record;
    assert_eq!(r.state, "failed");
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.reason.as_deref(), Some("exited with status 3"));
    assert_eq!(r.output, "about to fail\n");
    assert_eq!(r.script_id, None);
    assert_eq!(r.label, "test.py");
}

#[tokio::test]
async fn a_script_that_fails_its_checks_never_runs() {
    let (scripts, _dir) = manager().await;
    let err = scripts
        .run(plugd_scripts::RunRequest {
            target: RunTarget::Source {
                name: "bad.py".into(),
                source: "def f(:\n".into(),
                overrides: Default::default(),
            },
            args: Default::default(),
            who: "test".into(),
            privileged: true,
        })
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code, "invalid_script");
    assert_eq!((err.problems[0].line, err.problems[0].column), (1, 7));
    assert!(scripts.runs(None, None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn runs_wait_for_a_slot_and_a_queued_run_can_be_cancelled() {
    let (scripts, _dir) = crate::manager_with(|c| c.max_runs = 1).await;
    let slow = "import time\ntime.sleep(30)\n";
    let first = scripts
        .run(plugd_scripts::RunRequest {
            target: RunTarget::Source {
                name: "slow.py".into(),
                source: slow.into(),
                overrides: Default::default(),
            },
            args: Default::default(),
            who: "test".into(),
            privileged: true,
        })
        .await
        .unwrap();
    let second = scripts
        .run(plugd_scripts::RunRequest {
            target: RunTarget::Source {
                name: "slow.py".into(),
                source: slow.into(),
                overrides: Default::default(),
            },
            args: Default::default(),
            who: "test".into(),
            privileged: true,
        })
        .await
        .unwrap();
    // The second waits for the only slot.
    let view = scripts.run_view(second.id).await.unwrap();
    assert_eq!(view.record.state, "queued");
    scripts.cancel(second.id).await.unwrap();
    let second = scripts.wait(second.id).await.unwrap();
    assert_eq!(second.record.state, "cancelled");
    assert_eq!(second.record.started_at_ms, None);
    // The running one is killed by its cancel.
    scripts.cancel(first.id).await.unwrap();
    let first = scripts.wait(first.id).await.unwrap();
    assert_eq!(first.record.state, "cancelled");
    assert_eq!(first.record.reason.as_deref(), Some("cancelled"));
    assert!(first.record.duration_ms.unwrap() < 10_000);
    assert_eq!(
        scripts.cancel(first.record.id).await.unwrap_err().code,
        "conflict"
    );
}

/// The names in `dir` (none when it does not exist).
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn the_next_runs_work_dir_and_cgroup_are_made_ahead_and_removed_with_the_manager() {
    let (scripts, dir) = manager().await;
    let work = dir.path().join("scripts").join("work");
    let records = dir.path().join("sandbox");
    let (view, _) = run_source(&scripts, "pass\n", json!({})).await;
    assert_eq!(view.record.state, "succeeded", "{:?}", view.record);
    // The run's own work dir is gone; one made for the next run is there, empty, with its
    // cgroup recorded (the sandbox records each cgroup it makes) when there is a cgroup layer.
    scripts.settled().await;
    let spare = names(&work);
    assert_eq!(spare.len(), 1, "{spare:?}");
    let spare = spare[0].clone();
    assert!(names(&work.join(&spare)).is_empty());
    let confined = nix_root();
    if confined {
        let recorded = names(&records);
        assert!(
            recorded
                .iter()
                .any(|r| r.starts_with(&format!("script-{spare}-"))),
            "{recorded:?}"
        );
    }
    // The next run takes it: its dir goes with that run, and the run's end makes another.
    let (view, _) = run_source(&scripts, "pass\n", json!({})).await;
    assert_eq!(view.record.state, "succeeded", "{:?}", view.record);
    scripts.settled().await;
    let after = names(&work);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after[0], spare, "the second run made its own work dir");
    // A spare changed while it waited is not used: removed, and the run makes its own.
    let planted = work.join(&after[0]).join("planted");
    std::fs::write(&planted, "left for the next run").unwrap();
    let (view, _) = run_source(
        &scripts,
        "import os\nassert os.listdir('.') == [], os.listdir('.')\n",
        json!({}),
    )
    .await;
    assert_eq!(view.record.state, "succeeded", "{:?}", view.record);
    scripts.settled().await;
    assert!(!planted.exists());
    assert_eq!(names(&work).len(), 1);
    // Dropping the manager removes what was made ahead.
    drop(scripts);
    assert_eq!(names(&work), Vec::<String>::new());
    if confined {
        let recorded = names(&records);
        assert!(
            !recorded.iter().any(|r| r.starts_with("script-")),
            "{recorded:?}"
        );
    }
}

fn nix_root() -> bool {
    // SAFETY: a system call without arguments.
    unsafe { libc::geteuid() == 0 }
}
