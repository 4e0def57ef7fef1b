//! Calls between plugins (`plugin.call`): only to a declared dependency (the `[dependencies]`
//! entry is the grant), with the caller's identity and the rest of its deadline travelling along,
//! and never in a loop: a call whose chain already holds the callee is refused, as is a chain
//! longer than [`MAX_CHAIN`].

use std::sync::Arc;
use std::time::Duration;

use plugd_manifest::{Manifest, PluginName};
use plugd_runtime::HostCallError;
use serde::Deserialize;
use serde_json::Value;

use crate::registry::Slot;
use crate::{CallOptions, Host};

/// The most plugins one chain of calls may pass through.
pub const MAX_CHAIN: usize = 8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Call {
    plugin: String,
    action: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    context: Option<Context>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Context {
    #[serde(default)]
    chain: Vec<String>,
    #[serde(default)]
    deadline_ms: Option<u64>,
}

fn refuse(code: &str, message: String) -> HostCallError {
    HostCallError::Service {
        code: code.to_owned(),
        message,
    }
}

/// Serves `plugin.call` from `slot`'s plugin.
pub(crate) async fn plugin_call(
    host: &Host,
    slot: &Arc<Slot>,
    manifest: &Manifest,
    params: Value,
) -> Result<Value, HostCallError> {
    let call: Call = serde_json::from_value(params).map_err(|e| {
        HostCallError::Invalid(format!(
            "`plugin.call` needs `plugin`, `action` and `payload`: {e}"
        ))
    })?;
    let caller = &slot.name;
    let Ok(callee) = PluginName::new(&call.plugin) else {
        return Err(refuse(
            "not_found",
            format!("`{}` is not a plugin name", call.plugin.escape_default()),
        ));
    };
    if !manifest.dependencies.contains_key(&callee) {
        slot.deny("plugin_call");
        let message = format!(
            "Plugin `{caller}` may call only the plugins it depends on, and `{callee}` is not in its `[dependencies]`; hint: add `{callee} = \"*\"` (or a version requirement) there"
        );
        slot.push_log(
            plugd_runtime::LogSource::Runtime,
            plugd_runtime::LogLevel::Warn,
            &format!("Denied `plugin.call`: {message}"),
        );
        return Err(refuse("not_granted", message));
    }
    let context = call.context.unwrap_or(Context {
        chain: Vec::new(),
        deadline_ms: None,
    });
    let mut chain = Vec::with_capacity(context.chain.len() + 1);
    for name in &context.chain {
        let name = PluginName::new(name).map_err(|_| {
            HostCallError::Invalid(format!(
                "`{}` in the call chain is not a plugin name",
                name.escape_default()
            ))
        })?;
        chain.push(name);
    }
    // The chain ends with the caller, whatever the plugin sent.
    if chain.last() != Some(caller) {
        chain.push(caller.clone());
    }
    if chain.contains(&callee) {
        let path: Vec<&str> = chain
            .iter()
            .map(PluginName::as_str)
            .chain([callee.as_str()])
            .collect();
        return Err(refuse(
            "cycle",
            format!(
                "Plugin `{caller}` cannot call `{callee}`: the calls would loop ({}); calls between plugins may not form a cycle",
                path.join(" → ")
            ),
        ));
    }
    if chain.len() > MAX_CHAIN {
        return Err(refuse(
            "chain_too_long",
            format!(
                "Plugin `{caller}` cannot call `{callee}`: the chain of calls is already {} plugins long (at most {MAX_CHAIN})",
                chain.len()
            ),
        ));
    }
    let payload = serde_json::value::to_raw_value(&call.payload)
        .map_err(|e| HostCallError::Invalid(format!("The payload is not JSON: {e}")))?;
    let options = CallOptions {
        timeout: context.deadline_ms.map(Duration::from_millis),
        chain,
    };
    let outcome = host
        .call_with(callee.as_str(), &call.action, payload, options)
        .await
        .map_err(crate::services::host_error)?;
    serde_json::from_str(outcome.result.get())
        .map_err(|e| HostCallError::Failed(format!("`{callee}` answered with invalid JSON: {e}")))
}
