//! Property test: any sequence of commits (puts, deletes, expects), undos and redos leaves the
//! store exactly where a model (`BTreeMap` + two stacks) says, with the same ids and errors.

use std::collections::{BTreeMap, HashSet};

use plugd_store::{Commit, CommitId, KvLimits, Store, StoreError};
use proptest::prelude::*;
use serde_json::{Value, json};

const KEYS: [&str; 5] = ["a", "b", "c", "d/e", "é"];
const DEPTH: usize = 4;
const LIMITS: KvLimits = KvLimits {
    max_key: 1024,
    max_value: 1 << 20,
    quota: 60,
};

#[derive(Clone, Debug)]
enum Step {
    Commit(Commit),
    Undo,
    Redo,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..100).prop_map(|n| json!(n)),
        "[a-z]{0,14}".prop_map(|s| json!(s)),
        Just(Value::Null),
    ]
}

fn key() -> impl Strategy<Value = String> {
    proptest::sample::select(&KEYS[..]).prop_map(str::to_owned)
}

fn step() -> impl Strategy<Value = Step> {
    let commit = (
        proptest::collection::vec((key(), value()), 0..4),
        proptest::collection::vec(key(), 0..3),
        proptest::collection::vec((key(), proptest::option::of(value())), 0..2),
    )
        .prop_map(|(puts, deletes, expect)| {
            Step::Commit(Commit {
                puts,
                deletes,
                expect,
            })
        });
    prop_oneof![3 => commit, 1 => Just(Step::Undo), 1 => Just(Step::Redo)]
}

/// Keys with the values that flip a commit to its other side (`None` = absent).
type Ops = Vec<(String, Option<Value>)>;

/// The model: the map, and stacks of (id, the values that flip a commit to its other side).
#[derive(Default)]
struct Model {
    map: BTreeMap<String, Value>,
    undo: Vec<(u64, Ops)>,
    redo: Vec<(u64, Ops)>,
    next_id: u64,
}

fn size(key: &str, value: Option<&Value>) -> i64 {
    value.map_or(0, |v| (key.len() + v.to_string().len()) as i64)
}

impl Model {
    /// Bytes the undo and redo stacks keep: each key plus the value it flips to, if any.
    fn history(&self) -> u64 {
        self.undo
            .iter()
            .chain(&self.redo)
            .flat_map(|(_, ops)| ops)
            .map(|(k, v)| (k.len() + v.as_ref().map_or(0, |v| v.to_string().len())) as u64)
            .sum()
    }

    fn usage(&self) -> u64 {
        self.map.iter().map(|(k, v)| size(k, Some(v))).sum::<i64>() as u64
    }

    /// Applies `ops` and returns what flips them back.
    fn apply(&mut self, ops: Ops) -> Ops {
        ops.into_iter()
            .map(|(key, value)| {
                let before = match value {
                    Some(value) => self.map.insert(key.clone(), value),
                    None => self.map.remove(&key),
                };
                (key, before)
            })
            .collect()
    }

    fn commit(&mut self, commit: Commit) -> Result<CommitId, StoreError> {
        if commit.puts.is_empty() && commit.deletes.is_empty() {
            return Err(StoreError::EmptyCommit);
        }
        let mut seen = HashSet::new();
        let ops: Ops = commit
            .puts
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .chain(commit.deletes.into_iter().map(|k| (k, None)))
            .collect();
        for (key, _) in &ops {
            if !seen.insert(key.clone()) {
                return Err(StoreError::DuplicateKey { key: key.clone() });
            }
        }
        for (key, want) in &commit.expect {
            if self.map.get(key) != want.as_ref() {
                return Err(StoreError::Conflict { key: key.clone() });
            }
        }
        let delta: i64 = ops
            .iter()
            .map(|(k, v)| size(k, v.as_ref()) - size(k, self.map.get(k)))
            .sum();
        let used = (self.usage() as i64 + delta) as u64;
        if delta > 0 && used > LIMITS.quota {
            return Err(StoreError::QuotaExceeded {
                plugin: "p".into(),
                used,
                quota: LIMITS.quota,
            });
        }
        self.next_id += 1;
        let puts: Vec<bool> = ops.iter().map(|(_, v)| v.is_some()).collect();
        let inverse = self.apply(ops);
        // Deleting an absent key is not kept in the history.
        let inverse: Ops = inverse
            .into_iter()
            .zip(puts)
            .filter(|((_, before), put)| *put || before.is_some())
            .map(|(op, _)| op)
            .collect();
        self.redo.clear();
        self.undo.push((self.next_id, inverse));
        // The history is held within the depth and, in bytes, within the quota.
        while self.undo.len() > DEPTH || (!self.undo.is_empty() && self.history() > LIMITS.quota) {
            self.undo.remove(0);
        }
        Ok(CommitId(self.next_id))
    }

    fn undo(&mut self) -> Option<CommitId> {
        let (id, ops) = self.undo.pop()?;
        let back = self.apply(ops);
        self.redo.push((id, back));
        Some(CommitId(id))
    }

    fn redo(&mut self) -> Option<CommitId> {
        let (id, ops) = self.redo.pop()?;
        let back = self.apply(ops);
        self.undo.push((id, back));
        Some(CommitId(id))
    }
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::in_memory(DEPTH);
        let mut model = Model::default();
        for (n, step) in steps.into_iter().enumerate() {
            match step {
                Step::Commit(commit) => {
                    let got = store.kv_commit("p", commit.clone(), &LIMITS).await;
                    let want = model.commit(commit);
                    prop_assert_eq!(got, want, "step {}", n);
                }
                Step::Undo => prop_assert_eq!(
                    store.kv_undo("p").await.unwrap(),
                    model.undo(),
                    "step {}",
                    n
                ),
                Step::Redo => prop_assert_eq!(
                    store.kv_redo("p").await.unwrap(),
                    model.redo(),
                    "step {}",
                    n
                ),
            }
            let all: BTreeMap<String, Value> = store
                .kv_list("p", "", None, 100)
                .await
                .unwrap()
                .into_iter()
                .collect();
            prop_assert_eq!(&all, &model.map, "step {}", n);
            prop_assert_eq!(
                store.kv_usage("p").await.unwrap(),
                model.usage(),
                "step {}",
                n
            );
        }
        // Another plugin was never touched.
        prop_assert_eq!(store.kv_list("q", "", None, 100).await.unwrap(), vec![]);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn commits_undos_and_redos_match_the_model(steps in proptest::collection::vec(step(), 1..40)) {
        run(steps)?;
    }
}
