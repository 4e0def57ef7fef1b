//! Params: a plugin's persistent settings, validated by the `[params]` JSON Schema of its
//! manifest, stored with a history, and delivered to the running plugin when they change.
//!
//! The effective params are the schema's defaults overlaid with what is stored. A change is
//! validated whole (defaults filled in first) and refused with every violation; nothing is stored
//! then. When a new version's schema no longer accepts some stored keys, the plugin starts with
//! the valid subset plus defaults, says so in its log and status, and the old value stays in the
//! history.

use plugd_manifest::{Manifest, Violation};
use plugd_store::ParamsRevision;
use serde_json::{Map, Value};

use crate::registry::Slot;
use crate::{Host, HostError};

/// A plugin's params as the API shows them.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamsView {
    /// The effective value (defaults overlaid with what is stored).
    pub value: Value,
    /// The schema from the manifest, if it declares `[params]`.
    pub schema: Option<Value>,
}

impl Host {
    /// The effective params of a plugin.
    pub async fn params(&self, name: &str) -> Result<ParamsView, HostError> {
        let slot = self.inner.existing(name)?;
        let manifest = current_manifest(&slot)?;
        let stored = self
            .store()
            .await?
            .params(name)
            .await
            .map_err(store_error)?;
        let (value, _) = effective(&manifest, stored.as_ref());
        Ok(ParamsView {
            value,
            schema: manifest.params.clone(),
        })
    }

    /// Replaces a plugin's params (`PUT`): keys left out take their defaults. Refused with every
    /// violation when the result does not fit the schema; otherwise stored (with history) and
    /// delivered to the running plugin. Returns the new effective value.
    ///
    /// Runs under the lifecycle lock, like load, reload, unload and uninstall: the schema that
    /// validates the change is the one of the generation that receives it, a reload starts its
    /// new version with the stored value from before or after the change (never between the
    /// store and the delivery), and an uninstalled plugin (whose params were just removed) gets
    /// none back.
    pub async fn set_params(
        &self,
        name: &str,
        value: Value,
        source: &str,
    ) -> Result<Value, HostError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        self.set_params_locked(name, value, source).await
    }

    async fn set_params_locked(
        &self,
        name: &str,
        value: Value,
        source: &str,
    ) -> Result<Value, HostError> {
        let slot = self.inner.existing(name)?;
        if slot.inner.lock().state() == crate::PluginState::Uninstalled {
            // A conflict with the plugin's state (409), not a server fault: nothing will
            // change by retrying until someone installs it again.
            return Err(HostError::Conflict(format!(
                "Plugin `{name}` is uninstalled, so it has no params; hint: `plugd load {name}` installs it again"
            )));
        }
        let manifest = current_manifest(&slot)?;
        let full = resolve(&manifest, value).map_err(|violations| HostError::InvalidParams {
            plugin: name.to_owned(),
            violations,
        })?;
        self.store()
            .await?
            .set_params(name, &full, source)
            .await
            .map_err(store_error)?;
        if let Some(generation) = slot.running()
            && let Err(e) = generation.instance.params_changed(&full).await
        {
            slot.push_log(
                plugd_runtime::LogSource::Runtime,
                plugd_runtime::LogLevel::Warn,
                &format!("The new params were stored but not delivered: {e}"),
            );
        }
        Ok(full)
    }

    /// Changes some keys (`PATCH`, a JSON merge patch, RFC 7396) and then behaves like
    /// [`Host::set_params`].
    pub async fn patch_params(
        &self,
        name: &str,
        patch: Value,
        source: &str,
    ) -> Result<Value, HostError> {
        // The read and the write under one lock: two patches cannot lose each other's keys.
        let _lifecycle = self.inner.lifecycle.lock().await;
        let mut value = self.params(name).await?.value;
        merge_patch(&mut value, patch);
        self.set_params_locked(name, value, source).await
    }

    /// Every stored change of a plugin's params, newest first.
    pub async fn params_history(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<ParamsRevision>, HostError> {
        self.inner.existing(name)?;
        self.store()
            .await?
            .params_history(name, limit)
            .await
            .map_err(store_error)
    }

    /// The params a starting version gets, and a note when stored keys had to be dropped (the
    /// reduced value is stored, so the history keeps the old one).
    pub(crate) async fn params_for_start(
        &self,
        manifest: &Manifest,
    ) -> Result<(Value, Option<String>), String> {
        let store = self.store().await.map_err(|e| e.to_string())?;
        let name = manifest.name.as_str();
        let stored = store.params(name).await.map_err(|e| e.to_string())?;
        let (value, dropped) = effective(manifest, stored.as_ref());
        if dropped.is_empty() {
            return Ok((value, None));
        }
        store
            .set_params(name, &value, "migration")
            .await
            .map_err(|e| e.to_string())?;
        let keys: Vec<String> = dropped.iter().map(|k| format!("`{k}`")).collect();
        Ok((
            value,
            Some(format!(
                "Params {} of plugin `{name}` do not fit the schema of version {} and were reset to their defaults; the old values are in the params history; hint: `plugd params {name}` shows the current ones",
                keys.join(", "),
                manifest.version
            )),
        ))
    }
}

/// The manifest that governs a plugin's params: the running version's, else the installed one.
fn current_manifest(slot: &Slot) -> Result<std::sync::Arc<Manifest>, HostError> {
    if let Some(generation) = slot.running() {
        return Ok(generation.manifest.clone());
    }
    slot.inner.lock().manifest.clone().ok_or_else(|| {
        HostError::CannotLoad(format!(
            "Plugin `{}` has no readable manifest, so its params schema is unknown",
            slot.name
        ))
    })
}

/// A whole new params object: defaults for the keys left out, then validated whole.
fn resolve(manifest: &Manifest, value: Value) -> Result<Value, Vec<Violation>> {
    let Value::Object(given) = value else {
        return Err(vec![Violation {
            pointer: String::new(),
            message: "params must be a JSON object".to_owned(),
        }]);
    };
    let mut full = defaults(manifest);
    full.extend(given);
    let full = Value::Object(full);
    match manifest.params_schema() {
        Some(schema) => schema.validate(&full).map(|()| full),
        None => Ok(full),
    }
}

/// The schema's defaults as an object.
fn defaults(manifest: &Manifest) -> Map<String, Value> {
    match manifest.default_params() {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Defaults overlaid with the stored keys that keep the whole valid; returns the value and the
/// stored keys that had to be dropped.
fn effective(manifest: &Manifest, stored: Option<&Value>) -> (Value, Vec<String>) {
    let mut value = defaults(manifest);
    let mut dropped = Vec::new();
    let Some(Value::Object(stored)) = stored else {
        return (Value::Object(value), dropped);
    };
    let Some(schema) = manifest.params_schema() else {
        value.extend(stored.clone());
        return (Value::Object(value), dropped);
    };
    let mut whole = value.clone();
    whole.extend(stored.clone());
    if schema.is_valid(&Value::Object(whole.clone())) {
        return (Value::Object(whole), dropped);
    }
    // Keep each stored key that fits on its own (over the defaults), one at a time.
    for (key, v) in stored {
        let mut candidate = value.clone();
        candidate.insert(key.clone(), v.clone());
        if schema.is_valid(&Value::Object(candidate.clone())) {
            value = candidate;
        } else {
            dropped.push(key.clone());
        }
    }
    (Value::Object(value), dropped)
}

/// RFC 7396: objects merge recursively, `null` removes a key, anything else replaces.
fn merge_patch(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let map = target.as_object_mut().expect("made an object above");
            for (key, value) in patch {
                if value.is_null() {
                    map.remove(&key);
                } else {
                    merge_patch(map.entry(key).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other,
    }
}

pub(crate) fn store_error(e: plugd_store::StoreError) -> HostError {
    HostError::Store(e)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn manifest() -> Manifest {
        Manifest::from_toml_str(
            r#"
[plugin]
name = "gallery"
version = "2.0.0"
runtime = "process"
entry = ["python3", "main.py"]
[params]
type = "object"
additionalProperties = false
[params.properties.batch_size]
type = "integer"
minimum = 1
default = 8
[params.properties.threshold]
type = "number"
default = 0.5
"#,
        )
        .unwrap()
    }

    #[test]
    fn stored_keys_overlay_defaults_and_misfits_are_dropped() {
        let m = manifest();
        assert_eq!(
            effective(&m, None),
            (json!({"batch_size": 8, "threshold": 0.5}), vec![])
        );
        let stored = json!({"batch_size": 32});
        assert_eq!(
            effective(&m, Some(&stored)),
            (json!({"batch_size": 32, "threshold": 0.5}), vec![])
        );
        // A value of the old version that no longer fits, and a key that no longer exists.
        let stored = json!({"batch_size": 0, "threshold": 0.9, "legacy": true});
        let (value, dropped) = effective(&m, Some(&stored));
        assert_eq!(value, json!({"batch_size": 8, "threshold": 0.9}));
        assert_eq!(dropped, ["batch_size", "legacy"]);
    }

    /// Golden files: `tests/params/NAME.json` is a params object given to the gallery schema
    /// (`tests/params/schema.toml`); `NAME.out` is the stored value, `NAME.err` every violation.
    /// `UPDATE_EXPECT=1` rewrites them.
    #[test]
    fn golden_params() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/params");
        let manifest =
            Manifest::from_toml_str(&std::fs::read_to_string(dir.join("schema.toml")).unwrap())
                .unwrap();
        let mut cases: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        cases.sort();
        assert!(cases.len() >= 6, "{cases:?}");
        for case in cases {
            let given: Value =
                serde_json::from_str(&std::fs::read_to_string(&case).unwrap()).unwrap();
            let (kept, actual) = match resolve(&manifest, given) {
                Ok(v) => (
                    "out",
                    format!("{}\n", serde_json::to_string_pretty(&v).unwrap()),
                ),
                Err(violations) => (
                    "err",
                    violations
                        .iter()
                        .map(|v| {
                            format!(
                                "{}: {}\n",
                                if v.pointer.is_empty() {
                                    "/"
                                } else {
                                    &v.pointer
                                },
                                v.message
                            )
                        })
                        .collect(),
                ),
            };
            let other = if kept == "out" { "err" } else { "out" };
            if std::env::var_os("UPDATE_EXPECT").is_some() {
                let _ = std::fs::remove_file(case.with_extension(other));
            } else {
                assert!(
                    !case.with_extension(other).exists(),
                    "{} is now {kept}",
                    case.display()
                );
            }
            expect_test::expect_file![case.with_extension(kept)].assert_eq(&actual);
        }
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut v, json!({"a": null, "b": {"c": 9}, "e": [1]}));
        assert_eq!(v, json!({"b": {"c": 9, "d": 3}, "e": [1]}));
    }
}
