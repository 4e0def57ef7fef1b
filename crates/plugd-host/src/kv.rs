//! The `kv` service: a plugin's own key-value store, every write an undoable commit, kept by
//! `plugd-store`. Keys are at most 1 KiB, values (as JSON) at most 1 MiB, and all of a plugin's
//! entries at most its `limits.storage`; a write past any of them changes nothing.

use std::sync::Arc;

use plugd_manifest::Manifest;
use plugd_runtime::HostCallError;
use plugd_store::{Commit, KvLimits};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::registry::Slot;
use crate::{Host, HostError};

/// The longest key.
pub const MAX_KEY: usize = 1024;
/// The largest value, as JSON text.
pub const MAX_VALUE: usize = 1 << 20;
/// The most entries one `kv.list` page returns.
pub const MAX_PAGE: usize = 1000;
/// The most puts, deletes and expectations one commit may hold.
pub const MAX_COMMIT_OPS: usize = 1000;

fn limits(manifest: &Manifest) -> KvLimits {
    KvLimits {
        max_key: MAX_KEY,
        max_value: MAX_VALUE,
        quota: manifest.limits.storage,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Key {
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Set {
    key: String,
    value: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct List {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitParams {
    #[serde(default)]
    puts: serde_json::Map<String, Value>,
    #[serde(default)]
    deletes: Vec<String>,
    #[serde(default)]
    expect: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nothing {}

fn parse<T: for<'de> Deserialize<'de>>(method: &str, params: Value) -> Result<T, HostCallError> {
    // `{}` and `null` both mean "no parameters".
    let params = if params.is_null() { json!({}) } else { params };
    serde_json::from_value(params)
        .map_err(|e| HostCallError::Invalid(format!("Bad parameters for `{method}`: {e}")))
}

fn store_error(e: plugd_store::StoreError) -> HostCallError {
    HostCallError::Service {
        code: e.code().to_owned(),
        message: e.to_string(),
    }
}

/// Serves one `kv.*` request of `slot`'s plugin (the grant was checked by the caller).
pub(crate) async fn request(
    host: &Host,
    slot: &Arc<Slot>,
    manifest: &Manifest,
    method: &str,
    params: Value,
) -> Result<Value, HostCallError> {
    let store = host.store().await.map_err(crate::services::host_error)?;
    let plugin = slot.name.as_str();
    let limits = limits(manifest);
    let commit = |c: Commit| async move {
        store
            .kv_commit(plugin, c, &limits)
            .await
            .map(|id| json!({ "commit": id.0 }))
            .map_err(store_error)
    };
    match method {
        "kv.get" => {
            let Key { key } = parse(method, params)?;
            Ok(
                match store.kv_get(plugin, &key).await.map_err(store_error)? {
                    Some(value) => json!({ "found": true, "value": value }),
                    None => json!({ "found": false }),
                },
            )
        }
        "kv.set" => {
            let Set { key, value } = parse(method, params)?;
            commit(Commit {
                puts: vec![(key, value)],
                ..Default::default()
            })
            .await
        }
        "kv.delete" => {
            let Key { key } = parse(method, params)?;
            commit(Commit {
                deletes: vec![key],
                ..Default::default()
            })
            .await
        }
        "kv.commit" => {
            let p: CommitParams = parse(method, params)?;
            let ops = p.puts.len() + p.deletes.len() + p.expect.len();
            if ops > MAX_COMMIT_OPS {
                return Err(HostCallError::Invalid(format!(
                    "A commit may hold at most {MAX_COMMIT_OPS} puts, deletes and expectations, not {ops}; hint: split it"
                )));
            }
            commit(Commit {
                puts: p.puts.into_iter().collect(),
                deletes: p.deletes,
                expect: p
                    .expect
                    .into_iter()
                    .map(|(k, v)| (k, (!v.is_null()).then_some(v)))
                    .collect(),
            })
            .await
        }
        "kv.list" => {
            let List {
                prefix,
                after,
                limit,
            } = parse(method, params)?;
            let (items, next) = page(
                store,
                plugin,
                &prefix,
                after.as_deref(),
                limit.unwrap_or(100),
            )
            .await
            .map_err(store_error)?;
            let items: Vec<Value> = items
                .into_iter()
                .map(|(key, value)| json!({ "key": key, "value": value }))
                .collect();
            Ok(json!({ "items": items, "next": next }))
        }
        "kv.undo" | "kv.redo" => {
            let Nothing {} = parse(method, params)?;
            let done = if method == "kv.undo" {
                store.kv_undo(plugin).await
            } else {
                store.kv_redo(plugin).await
            };
            Ok(json!({ "commit": done.map_err(store_error)?.map(|id| id.0) }))
        }
        other => Err(HostCallError::Unknown(other.to_owned())),
    }
}

/// One page of entries and the key to continue after (`None` at the end). A page holds at most
/// `limit` entries (1..=[`MAX_PAGE`]) and about [`plugd_store::KV_PAGE_BYTES`] of text, so a page of
/// large values never makes a huge answer; a page cut by size points past its last key.
async fn page(
    store: &plugd_store::Store,
    plugin: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<(String, Value)>, Option<String>), plugd_store::StoreError> {
    let limit = limit.clamp(1, MAX_PAGE);
    // One more than asked tells whether there is a next page.
    let mut items = store.kv_list(plugin, prefix, after, limit + 1).await?;
    let cut_by_size = items.len() <= limit
        && items
            .iter()
            .map(|(k, v)| k.len() + v.to_string().len())
            .sum::<usize>()
            >= plugd_store::KV_PAGE_BYTES;
    let next = if items.len() > limit || cut_by_size {
        items.truncate(limit);
        items.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    Ok((items, next))
}

impl Host {
    /// A page of a plugin's kv entries (keys starting with `prefix`, after `after`) and the key
    /// to continue after, for operators; read-only.
    pub async fn kv_page(
        &self,
        name: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, Value)>, Option<String>), HostError> {
        self.inner.existing(name)?;
        Ok(page(self.store().await?, name, prefix, after, limit).await?)
    }
}
