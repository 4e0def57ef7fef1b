//! Human output for the CLI: tables and detail views built from the API's JSON.

use serde_json::Value;

pub(crate) fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `plugd list`: one row per plugin.
pub(crate) fn plugin_table(value: &Value) {
    let plugins = value["plugins"].as_array().cloned().unwrap_or_default();
    if plugins.is_empty() {
        println!("No plugins installed.");
    }
    let rows: Vec<[String; 7]> = plugins
        .iter()
        .map(|p| {
            let actions: Vec<&str> = p["actions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| s(&a["name"]))
                .collect();
            [
                s(&p["name"]).to_owned(),
                s(&p["version"]).to_owned(),
                s(&p["state"]).to_owned(),
                s(&p["runtime"]).to_owned(),
                s(&p["trust"]).to_owned(),
                p["wave"]
                    .as_u64()
                    .map(|w| w.to_string())
                    .unwrap_or_else(|| "-".into()),
                actions.join(", "),
            ]
        })
        .collect();
    let header = [
        "NAME", "VERSION", "STATE", "RUNTIME", "TRUST", "WAVE", "ACTIONS",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == 6 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    if !rows.is_empty() {
        line(header);
    }
    for row in &rows {
        line([
            &row[0], &row[1], &row[2], &row[3], &row[4], &row[5], &row[6],
        ]);
    }
    for p in &plugins {
        if let Some(reason) = p["reason"].as_str()
            && p["state"] == "failed"
        {
            println!("\n{}: {reason}", s(&p["name"]));
        }
    }
    for p in &plugins {
        for warning in p["warnings"].as_array().into_iter().flatten() {
            println!("\n{}: warning: {}", s(&p["name"]), s(warning));
        }
    }
    for problem in value["problems"].as_array().into_iter().flatten() {
        println!("\n{}: {}", s(&problem["path"]), s(&problem["message"]));
    }
}

/// `plugd status NAME`: everything about one plugin.
pub(crate) fn plugin_detail(p: &Value, logs: Option<&Value>) {
    println!(
        "{} {} — {}",
        s(&p["name"]),
        s(&p["version"]),
        s(&p["state"])
    );
    if let Some(d) = p["description"].as_str().filter(|d| !d.is_empty()) {
        println!("  {d}");
    }
    println!(
        "  runtime: {}   kind: {}   wave: {}   trust: {}{}",
        s(&p["runtime"]),
        s(&p["kind"]),
        p["wave"],
        s(&p["trust"]),
        p["key_id"]
            .as_str()
            .map(|k| format!(" (key {k})"))
            .unwrap_or_default()
    );
    if let Some(reason) = p["reason"].as_str() {
        println!("  reason: {reason}");
    }
    if let Some(err) = p["last_error"].as_str() {
        println!("  last error: {err}");
    }
    for warning in p["warnings"].as_array().into_iter().flatten() {
        println!("  warning: {}", s(warning));
    }
    let m = &p["metrics"];
    println!(
        "  calls: {}   errors: {}   in flight: {}   restarts: {}   late replies: {}",
        m["calls"], m["errors"], m["in_flight"], m["restarts"], m["late_replies"]
    );
    let deps: Vec<String> = p["dependencies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| format!("{} {}", s(&d["name"]), s(&d["requirement"])))
        .collect();
    if !deps.is_empty() {
        println!("  depends on: {}", deps.join(", "));
    }
    for a in p["actions"].as_array().into_iter().flatten() {
        println!("  action {:<16} {}", s(&a["name"]), s(&a["description"]));
    }
    if let Some(lines) = logs.and_then(Value::as_array).filter(|l| !l.is_empty()) {
        println!("  recent logs:");
        for l in lines {
            println!(
                "    [{}/{}] {}",
                s(&l["source"]),
                s(&l["level"]),
                s(&l["message"])
            );
        }
    }
}

/// `plugd call`: the value, then notifications and groups if any.
pub(crate) fn call_result(result: &Value) {
    let value = result.get("value").unwrap_or(result);
    match value {
        Value::String(text) => println!("{text}"),
        other => print_json(other),
    }
    for n in result["notifications"].as_array().into_iter().flatten() {
        eprintln!(
            "[{}] {}: {}",
            s(&n["type"]),
            s(&n["name"]),
            s(&n["message"])
        );
    }
    if let Some(groups) = result["groups"].as_array().filter(|g| !g.is_empty()) {
        eprintln!("{} group(s); use --json to see them", groups.len());
    }
}
