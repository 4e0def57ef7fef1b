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
                let details = p["details"].as_object();
                let mut any = false;
                for (key, value) in details.into_iter().flatten() {
                    if let Some(layer) = key.strip_prefix("sandbox.") {
                        println!("  {layer:<18} {}", value.as_str().unwrap_or(""));
                        any = true;
                    }
                }
                if !any {
                    println!("  not confined (runtime without a sandbox, or `--no-sandbox`)");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
