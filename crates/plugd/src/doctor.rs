//! `plugd doctor`: which confinement layers this kernel provides, and, when a server is
//! reachable, which layers each running plugin actually got.

use std::process::ExitCode;

use serde_json::Value;

pub(crate) fn run(server: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let probe = plugd_sandbox::probe();
    let plugins = crate::client::get_json(server, "/api/v1/plugins").ok();
    if as_json {
        let layers: Vec<Value> = plugins
            .as_ref()
            .and_then(|v| v["plugins"].as_array())
            .into_iter()
            .flatten()
            .map(|p| serde_json::json!({ "plugin": p["name"], "sandbox": p["details"] }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "kernel": probe.to_string(),
                "plugins": layers,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{probe}");
    match plugins {
        None => {
            println!("\n(no server at `{server}`: start `plugd serve` to see what each plugin got)")
        }
        Some(list) => {
            for p in list["plugins"].as_array().into_iter().flatten() {
                println!(
                    "\n{} ({})",
                    p["name"].as_str().unwrap_or("?"),
                    p["state"].as_str().unwrap_or("?")
                );
                for line in confinement(p) {
                    println!("  {line}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What confines one plugin: its sandbox layers, or what stands in for them.
fn confinement(p: &Value) -> Vec<String> {
    let layers: Vec<String> = p["details"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| {
            let layer = key.strip_prefix("sandbox.")?;
            Some(format!("{layer:<18} {}", value.as_str().unwrap_or("")))
        })
        .collect();
    if !layers.is_empty() {
        layers
    } else if p["runtime"] == "wasm" {
        vec![
            "confined by wasmtime: only the WASI capabilities its manifest grants (its data dir, `fs.read` paths, listed env vars; no network), with memory and CPU limits per call".to_owned(),
        ]
    } else {
        vec!["not confined (`--no-sandbox`, or the plugin is not running)".to_owned()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_plugins_are_confined_by_wasmtime() {
        let wasm = serde_json::json!({"name": "w", "runtime": "wasm", "details": {}});
        assert!(confinement(&wasm)[0].starts_with("confined by wasmtime"));
        let bare = serde_json::json!({"name": "p", "runtime": "process", "details": {}});
        assert!(confinement(&bare)[0].starts_with("not confined"));
        let boxed = serde_json::json!({"runtime": "process", "details": {"sandbox.uid": "on (uid 4242)", "other": "x"}});
        assert_eq!(
            confinement(&boxed),
            [format!("{:<18} on (uid 4242)", "uid")]
        );
    }
}
