//! `plugd params`, `plugd kv` and `plugd uninstall`: a plugin's settings and stored data on a
//! running server.

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use crate::client::{json, segment};
use crate::output;

/// What `plugd params` does besides showing the params.
#[derive(Debug)]
pub(crate) enum ParamsOp {
    /// Show them.
    Show,
    /// Change these keys (a JSON merge patch).
    Set(Vec<String>),
    /// Back to the defaults (`PUT {}`).
    Reset,
    /// The stored changes, newest first.
    History { limit: usize },
}

pub(crate) fn params(
    server: &str,
    name: &str,
    op: ParamsOp,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let url = format!("/api/v1/plugins/{}/params", segment(name));
    let changed = match op {
        ParamsOp::Show => None,
        ParamsOp::Set(pairs) => {
            let patch = merge_patch(&pairs)?;
            Some(json(
                server,
                "PATCH",
                &url,
                Some(patch.to_string().as_bytes()),
            )?)
        }
        ParamsOp::Reset => Some(json(server, "PUT", &url, Some(b"{}"))?),
        ParamsOp::History { limit } => {
            let history = json(server, "GET", &format!("{url}/history?limit={limit}"), None)?;
            if as_json {
                output::print_json(&history);
            } else {
                output::params_history(name, &history);
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if as_json && let Some(changed) = changed {
        output::print_json(&changed);
        return Ok(ExitCode::SUCCESS);
    }
    let view = json(server, "GET", &url, None)?;
    if as_json {
        output::print_json(&view);
        return Ok(ExitCode::SUCCESS);
    }
    if changed.is_some() {
        println!("Changed the params of `{name}`; the running plugin has them");
    }
    output::params(name, &view);
    Ok(ExitCode::SUCCESS)
}

/// `--set KEY=VALUE ...` as one merge patch: each value is JSON if it parses, else a string
/// (`--set threshold=0.7` is a number, `--set mode=fast` the string `"fast"`, `--set key=null`
/// back to the default).
pub(crate) fn merge_patch(pairs: &[String]) -> anyhow::Result<Value> {
    let mut patch = Map::new();
    for pair in pairs {
        let Some((key, text)) = pair.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            bail!("`{pair}` is not `KEY=VALUE`; hint: e.g. `--set threshold=0.7`");
        };
        let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()));
        patch.insert(key.to_owned(), value);
    }
    Ok(Value::Object(patch))
}

/// The most entries `plugd kv` asks for in one request (the server's page limit).
const KV_PAGE: usize = 1000;

pub(crate) fn kv(
    server: &str,
    name: &str,
    prefix: &str,
    limit: usize,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let mut items: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    let next = loop {
        let want = (limit - items.len()).min(KV_PAGE);
        let mut url = format!(
            "/api/v1/plugins/{}/kv?limit={want}&prefix={}",
            segment(name),
            segment(prefix)
        );
        if let Some(after) = &after {
            url.push_str(&format!("&after={}", segment(after)));
        }
        let page = json(server, "GET", &url, None)?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        let next = page["next"].as_str().map(str::to_owned);
        match next {
            Some(key) if items.len() < limit => after = Some(key),
            next => break next,
        }
    };
    if as_json {
        output::print_json(&json!({ "items": items, "next": next }));
        return Ok(ExitCode::SUCCESS);
    }
    output::kv_table(name, prefix, &items);
    if let Some(next) = next {
        println!(
            "More entries follow `{next}`; hint: `plugd kv {name}{} --limit {}` shows more",
            if prefix.is_empty() {
                String::new()
            } else {
                format!(" {prefix}")
            },
            limit.saturating_mul(10)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn uninstall(
    server: &str,
    name: &str,
    keep_data: bool,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let answer = json(
        server,
        "DELETE",
        &format!("/api/v1/plugins/{}?keep_data={keep_data}", segment(name)),
        None,
    )
    .context("Uninstall failed")?;
    if as_json {
        output::print_json(&answer);
        return Ok(ExitCode::SUCCESS);
    }
    if keep_data {
        println!(
            "Uninstalled `{name}`: stopped; its data dir, kv and params were kept, its package stays in the plugins directory"
        );
    } else {
        println!(
            "Uninstalled `{name}`: stopped; removed its data dir, kv, params and staged copies; its package stays in the plugins directory"
        );
    }
    output::also_stopped(&answer, name);
    println!("`plugd load {name}` installs it again");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_are_json_or_else_strings() {
        let pairs: Vec<String> = [
            "batch_size=16",
            "threshold=0.7",
            "mode=fast",
            "tags=[\"a\"]",
            "gone=null",
            "eq=a=b",
            "empty=",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            merge_patch(&pairs).unwrap(),
            json!({"batch_size": 16, "threshold": 0.7, "mode": "fast", "tags": ["a"],
                   "gone": null, "eq": "a=b", "empty": ""})
        );
        for bad in ["novalue", "=1"] {
            assert_eq!(
                merge_patch(&[bad.to_owned()]).unwrap_err().to_string(),
                format!("`{bad}` is not `KEY=VALUE`; hint: e.g. `--set threshold=0.7`")
            );
        }
    }
}
