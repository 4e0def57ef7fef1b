//! The event log (cursors, subscription filters, dead letters, purge) and the task table.

use plugd_store::{Advance, NewEvent, NewTask, TaskEnd, TaskFilter, TaskState};

use crate::file_store;

fn event(topic: &str, n: u32) -> NewEvent {
    NewEvent {
        topic: topic.to_owned(),
        payload: n.to_string(),
        hops: 0,
        source: None,
        target: None,
    }
}

fn patterns(list: &[&str]) -> Vec<String> {
    list.iter().map(|p| (*p).to_owned()).collect()
}

#[tokio::test]
async fn a_subscriber_reads_what_its_patterns_match_and_a_complete_mark() {
    let (store, _dir) = file_store().await;
    for (i, topic) in [
        "image.imported",
        "image",
        "image.raw.new",
        "images.x",
        "video.new",
    ]
    .iter()
    .enumerate()
    {
        store.event_append(event(topic, i as u32)).await.unwrap();
    }
    let mut replay = event("image", 9);
    replay.target = Some("other".into());
    store.event_append(replay).await.unwrap();
    let topics = |events: &[plugd_store::StoredEvent]| {
        events.iter().map(|e| e.topic.clone()).collect::<Vec<_>>()
    };
    let (got, complete) = store
        .events_for("sub", &patterns(&["image.*"]), 0, 100)
        .await
        .unwrap();
    assert_eq!(topics(&got), ["image.imported", "image.raw.new"]);
    assert_eq!(complete, 6, "complete up to the newest event");
    let (got, _) = store
        .events_for("sub", &patterns(&["image", "video.new"]), 0, 100)
        .await
        .unwrap();
    assert_eq!(
        topics(&got),
        ["image", "video.new"],
        "not another plugin's replay"
    );
    let (got, _) = store
        .events_for("other", &patterns(&[]), 0, 100)
        .await
        .unwrap();
    assert_eq!(topics(&got), ["image"], "its own replay, without patterns");
    let (got, _) = store
        .events_for("sub", &patterns(&["*"]), 2, 100)
        .await
        .unwrap();
    assert_eq!(
        got.len(),
        3,
        "after seq 2, all but the other plugin's replay"
    );
    // A page that is full is complete only up to its last event.
    let (got, complete) = store
        .events_for("sub", &patterns(&["*"]), 0, 2)
        .await
        .unwrap();
    assert_eq!((got.len(), complete), (2, 2));
    assert_eq!(
        store
            .events_pending("sub", &patterns(&["image.*"]), 1)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn cursors_start_at_the_end_and_never_move_back() {
    let (store, _dir) = file_store().await;
    store.event_append(event("a", 1)).await.unwrap();
    assert_eq!(store.event_subscribe("sub").await.unwrap(), 1);
    store.event_append(event("a", 2)).await.unwrap();
    assert_eq!(store.event_subscribe("sub").await.unwrap(), 1, "kept");
    store
        .event_advance(
            "sub",
            Advance {
                cursor: 2,
                dead: vec![],
            },
        )
        .await
        .unwrap();
    store
        .event_advance(
            "sub",
            Advance {
                cursor: 1,
                dead: vec![],
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.event_cursors().await.unwrap(),
        [("sub".to_owned(), 2)]
    );
    store.event_unsubscribe("sub").await.unwrap();
    assert!(store.event_cursors().await.unwrap().is_empty());
}

#[tokio::test]
async fn dead_letters_are_listed_replayed_once_and_purged() {
    let (store, _dir) = file_store().await;
    let seq = store.event_append(event("a", 1)).await.unwrap();
    store.event_subscribe("sub").await.unwrap();
    store
        .event_advance(
            "sub",
            Advance {
                cursor: seq,
                dead: vec![(seq, 5, "it raised".into())],
            },
        )
        .await
        .unwrap();
    let dead = store.dead_events(Some("sub"), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].event.topic.as_str(), dead[0].attempts), ("a", 5));
    // A purge of what is older than the dead letter keeps it and its event.
    store.purge(dead[0].at_ms).await.unwrap();
    let copy = store.event_replay("sub", seq).await.unwrap().unwrap();
    assert!(copy > seq);
    assert_eq!(
        store.event_replay("sub", seq).await.unwrap(),
        None,
        "only once"
    );
    assert!(store.dead_events(None, 10).await.unwrap().is_empty());
    // Past the retention period dead letters go too.
    store
        .event_advance(
            "sub",
            Advance {
                cursor: copy,
                dead: vec![(copy, 5, "again".into())],
            },
        )
        .await
        .unwrap();
    let (_, dead, _) = store.purge(u64::MAX / 2).await.unwrap();
    assert_eq!(dead, 1);
}

#[tokio::test]
async fn purge_keeps_what_a_cursor_still_needs_and_ids_are_never_reused() {
    let (store, _dir) = file_store().await;
    store.event_subscribe("sub").await.unwrap();
    for n in 0..4 {
        store.event_append(event("a", n)).await.unwrap();
    }
    store
        .event_advance(
            "sub",
            Advance {
                cursor: 2,
                dead: vec![],
            },
        )
        .await
        .unwrap();
    let (events, _, _) = store.purge(u64::MAX / 2).await.unwrap();
    assert_eq!(events, 2, "1 and 2 are past the only cursor");
    assert_eq!(store.events_after(0, 10).await.unwrap().len(), 2);
    store.event_unsubscribe("sub").await.unwrap();
    store.purge(u64::MAX / 2).await.unwrap();
    assert!(store.events_after(0, 10).await.unwrap().is_empty());
    let next = store.event_append(event("a", 9)).await.unwrap();
    assert_eq!(next, 5, "AUTOINCREMENT: no id reused after a purge");
}

fn new_task(task: &str, key: Option<&str>, dedupe: bool) -> NewTask {
    NewTask {
        plugin: "p".into(),
        task: task.into(),
        after_last: false,
        payload: "{}".into(),
        key: key.map(str::to_owned),
        priority: false,
        max_attempts: 3,
        dedupe,
    }
}

#[tokio::test]
async fn a_task_goes_through_its_states_and_retries_go_back_to_the_queue() {
    let (store, _dir) = file_store().await;
    let (task, deduped) = store.task_insert(new_task("t", None, false)).await.unwrap();
    assert!(!deduped);
    assert_eq!((task.state, task.attempts), (TaskState::Queued, 0));
    let running = store.task_start(task.id).await.unwrap();
    assert_eq!((running.state, running.attempts), (TaskState::Running, 1));
    let retry = store
        .task_end(
            task.id,
            TaskEnd::Failed {
                error: "try again".into(),
                code: "retry".into(),
                retry_at_ms: Some(123),
            },
            Some((Some(0.5), Some("half".into()))),
        )
        .await
        .unwrap();
    assert_eq!((retry.state, retry.not_before_ms), (TaskState::Queued, 123));
    assert_eq!(retry.progress, Some(0.5));
    store.task_start(task.id).await.unwrap();
    let done = store
        .task_end(
            task.id,
            TaskEnd::Succeeded {
                result: "42".into(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!((done.attempts, done.result.as_deref()), (2, Some("42")));
    assert!(done.finished_ms.is_some());
    let listed = store
        .tasks(TaskFilter {
            state: Some(TaskState::Succeeded),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn dedupe_returns_the_queued_task_of_the_key_only() {
    let (store, _dir) = file_store().await;
    let (first, _) = store
        .task_insert(new_task("t", Some("k"), true))
        .await
        .unwrap();
    let (again, deduped) = store
        .task_insert(new_task("t", Some("k"), true))
        .await
        .unwrap();
    assert!(deduped);
    assert_eq!(again.id, first.id);
    store.task_start(first.id).await.unwrap();
    let (third, deduped) = store
        .task_insert(new_task("t", Some("k"), true))
        .await
        .unwrap();
    assert!(!deduped, "the first is running, not queued");
    assert_ne!(third.id, first.id);
}

#[tokio::test]
async fn running_tasks_are_queued_again_after_a_crash() {
    let (store, _dir) = file_store().await;
    let (a, _) = store.task_insert(new_task("a", None, false)).await.unwrap();
    let (b, _) = store.task_insert(new_task("b", None, false)).await.unwrap();
    store.task_start(a.id).await.unwrap();
    assert_eq!(store.tasks_requeue_running().await.unwrap(), 1);
    let unfinished = store.tasks_unfinished().await.unwrap();
    assert_eq!(
        unfinished
            .iter()
            .map(|t| (t.id, t.state, t.attempts))
            .collect::<Vec<_>>(),
        [(a.id, TaskState::Queued, 1), (b.id, TaskState::Queued, 0)]
    );
    store.forget_plugin_work("p").await.unwrap();
    assert!(store.tasks_unfinished().await.unwrap().is_empty());
}

/// Appends one at a time commit on the caller's thread; the log is still checkpointed (by the
/// writer thread, woken for it), so it does not grow without end.
#[tokio::test]
async fn appends_committed_on_the_callers_thread_still_get_the_log_checkpointed() {
    let (store, dir) = file_store().await;
    let payload = format!("\"{}\"", "x".repeat(2000));
    let wal = dir.path().join("state/plugd.db-wal");
    let mut largest = 0;
    for n in 0..4000 {
        store
            .event_append(NewEvent {
                payload: payload.clone(),
                ..event("big.one", n)
            })
            .await
            .unwrap();
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    // The first was due after ~500 appends and ran (on the writer thread) long before the end.
    assert!(store.checkpoints() >= 1, "no checkpoint ran");
    // 4,000 appends wrote ~8,000 pages (32 MiB of frames); checkpoints every ~1,000 pages keep
    // the file near that.
    assert!(
        largest < 12 << 20,
        "the log grew to {largest} bytes: not checkpointed"
    );
}
