//! Human output for the CLI: tables and detail views built from the API's JSON.

use serde_json::Value;

/// Whether to colour what goes to `stream`: only a terminal, and never when `NO_COLOR` is set to
/// anything non-empty (<https://no-color.org>).
pub(crate) fn colour(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub(crate) fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `plugd list`: one row per plugin; a plugin that is not running says why in its last column.
pub(crate) fn plugin_table(value: &Value) {
    let plugins = value["plugins"].as_array().cloned().unwrap_or_default();
    if plugins.is_empty() {
        println!("No plugins installed.");
    }
    let rows: Vec<[String; 8]> = plugins
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
                if actions.is_empty() {
                    "-".to_owned()
                } else {
                    actions.join(",")
                },
                reason_cell(p),
            ]
        })
        .collect();
    let header = [
        "NAME", "VERSION", "STATE", "RUNTIME", "TRUST", "WAVE", "ACTIONS", "REASON",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 8]| {
        let mut out = String::new();
        for (cell, w) in cells.iter().zip(widths) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        println!("{}", out.trim_end());
    };
    if !rows.is_empty() {
        line(header);
    }
    for row in &rows {
        line([
            &row[0], &row[1], &row[2], &row[3], &row[4], &row[5], &row[6], &row[7],
        ]);
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

/// The REASON cell: empty for a running plugin, else the first line of its reason and the
/// last line of the stderr it quotes (the exception, for a traceback), pointing to `plugd status`
/// when there is more.
fn reason_cell(p: &Value) -> String {
    let Some(reason) = p["reason"].as_str().filter(|_| p["state"] != "running") else {
        return String::new();
    };
    let reason = expand(&unstage(reason, p));
    let lines: Vec<&str> = reason.lines().collect();
    match lines.as_slice() {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [first, .., last] => format!(
            "{first}: {} (more: `plugd status {}`)",
            last.trim(),
            s(&p["name"])
        ),
    }
}

/// A reason as lines: the process runtime quotes a child's last stderr lines on one line,
/// `...; last stderr: L1 | L2 | ...`; they become a `last stderr:` block, one line each, with
/// their own indentation (a traceback's nesting) kept.
fn expand(text: &str) -> String {
    match text.split_once("; last stderr: ") {
        Some((head, tail)) => {
            let lines: Vec<&str> = tail.split(" | ").collect();
            format!("{head}\nlast stderr:\n  {}", lines.join("\n  "))
        }
        None => text.to_owned(),
    }
}

/// `plugd status NAME`: everything about one plugin. Multi-line texts (tracebacks) are indented
/// under their label, and paths into the staged copy are shown as paths in the source package.
/// `Also stopped `a`, `b`, which depend on `NAME``: the running dependants an unload or an
/// uninstall stopped first (nothing when there were none).
pub(crate) fn also_stopped(answer: &Value, name: &str) {
    let also: Vec<String> = answer["also_stopped"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(|n| format!("`{n}`")))
        .collect();
    if !also.is_empty() {
        println!(
            "Also stopped {}, which depend{} on `{name}`",
            also.join(", "),
            if also.len() == 1 { "s" } else { "" }
        );
    }
}

pub(crate) fn plugin_detail(p: &Value, logs: Option<&Value>) {
    let text = |v: &Value| expand(&unstage(s(v), p));
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
    if p["package"].is_string() {
        println!("  package: {}", s(&p["package"]));
    }
    if p["foreign"].is_object() {
        let f = &p["foreign"];
        println!(
            "  foreign: {} plugin `{}` from `{}` (`plugd migrate` converts it)",
            s(&f["dialect"]),
            s(&f["original_name"]),
            s(&f["file"])
        );
    }
    if p["reason"].is_string() {
        println!("  reason: {}", indent(&text(&p["reason"]), 4));
    }
    if p["last_error"].is_string() {
        println!("  last error: {}", indent(&text(&p["last_error"]), 4));
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
    http(&p["http"], &text);
    supervision(&p["supervision"], &text);
    if let Some(lines) = logs.and_then(Value::as_array).filter(|l| !l.is_empty()) {
        println!("  recent logs:");
        for l in lines {
            println!(
                "    [{}/{}] {}",
                s(&l["source"]),
                s(&l["level"]),
                indent(&text(&l["message"]), 6)
            );
        }
    }
}

/// The plugin's own HTTP side: where it is reached, and its last health check.
fn http(h: &Value, text: &dyn Fn(&Value) -> String) {
    if !h.is_object() {
        return;
    }
    let mut at: Vec<String> = vec![text(&h["path"])];
    if let Some(mount) = h["mount"].as_str() {
        at.push(mount.to_owned());
    }
    let expose = h["expose"]
        .as_u64()
        .map(|p| format!("   exposed on port {p} (where the server allows it)"))
        .unwrap_or_default();
    println!("  http: {}{expose}", at.join(", "));
    if let Some(path) = h["health_path"].as_str() {
        let health = &h["health"];
        let status = if health.is_object() {
            let verdict = if health["ok"].as_bool() == Some(true) {
                "ok"
            } else {
                "FAILING"
            };
            format!(
                "{verdict}: {} (at {} UTC)",
                text(&health["detail"]),
                utc(health["checked_at_ms"].as_u64().unwrap_or(0))
            )
        } else {
            "not checked yet".to_owned()
        };
        println!("  http health ({path}): {status}");
    }
}

/// The supervision record: the scheduled restart, the last crashes, the reload history (the
/// newest five of each; `--json` has all the host keeps).
fn supervision(sv: &Value, text: &dyn Fn(&Value) -> String) {
    const SHOWN: usize = 5;
    let b = &sv["backoff"];
    if b.is_object() {
        println!(
            "  restarting at {} UTC (after {} ms; crash {} of {} allowed within {} s)",
            utc(b["next_attempt_ms"].as_u64().unwrap_or(0)),
            b["delay_ms"],
            b["crashes"],
            b["budget"],
            b["window_ms"].as_u64().unwrap_or(0) / 1000
        );
    }
    let newest = |key: &str| -> Vec<Value> {
        let all = sv[key].as_array().cloned().unwrap_or_default();
        let skip = all.len().saturating_sub(SHOWN);
        all.into_iter().skip(skip).collect()
    };
    let faults = newest("faults");
    if !faults.is_empty() {
        println!("  recent faults:");
        for f in faults {
            println!(
                "    {}  {}",
                utc(f["at_ms"].as_u64().unwrap_or(0)),
                indent(&text(&f["reason"]), 6)
            );
        }
    }
    let swaps = newest("swaps");
    if !swaps.is_empty() {
        println!("  reloads:");
        for w in swaps {
            let version = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            let outcome = if w["ok"].as_bool() == Some(true) {
                format!("in {:.1} ms", w["took_ms"].as_f64().unwrap_or(0.0))
            } else {
                format!("FAILED: {}", indent(&text(&w["error"]), 6))
            };
            println!(
                "    {}  {:<7} {} -> {}  {outcome}",
                utc(w["at_ms"].as_u64().unwrap_or(0)),
                s(&w["trigger"]),
                version(&w["from"]),
                version(&w["to"]),
            );
        }
    }
}

/// `text` with every line after the first indented by `by` spaces, so a traceback stays under
/// its label.
fn indent(text: &str, by: usize) -> String {
    let pad = format!("\n{}", " ".repeat(by));
    text.trim_end().replace('\n', &pad)
}

/// `text` with every path into the staged copy of plugin `p`
/// (`STATE/packages/NAME-VERSION-DIGEST12/...`) shown in its source package instead: that is
/// the file the user edits.
fn unstage(text: &str, p: &Value) -> String {
    match (
        p["name"].as_str(),
        p["version"].as_str(),
        p["package"].as_str(),
    ) {
        (Some(name), Some(version), Some(package)) => {
            unstage_paths(text, &format!("{name}-{version}"), package)
        }
        _ => text.to_owned(),
    }
}

/// [`unstage`] for the staged directories named `PACKAGE_ID-DIGEST12`.
fn unstage_paths(text: &str, package_id: &str, package: &str) -> String {
    let marker = format!("/packages/{package_id}-");
    let is_delimiter = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '(' | ':');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(&marker) {
        let after = &rest[i + marker.len()..];
        let end = after
            .find(|c: char| c == '/' || is_delimiter(c))
            .unwrap_or(after.len());
        // Exactly the twelve hex digits of the digest follow.
        let digest = &after[..end];
        let staged = digest.len() == 12 && digest.bytes().all(|b| b.is_ascii_hexdigit());
        let head = &rest[..i];
        if staged {
            let start = head.rfind(is_delimiter).map_or(0, |j| j + 1);
            out.push_str(&head[..start]);
            out.push_str(package);
            rest = &after[end..];
        } else {
            out.push_str(&rest[..i + marker.len()]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `plugd call`: the value on stdout, then notifications and groups (the documented result
/// shape, `docs/protocol.md` "Action results") on stderr.
pub(crate) fn call_result(result: &Value) {
    let value = result.get("value").unwrap_or(result);
    match value {
        Value::String(text) => println!("{text}"),
        other => print_json(other),
    }
    for n in result["notifications"].as_array().into_iter().flatten() {
        let title = n["title"]
            .as_str()
            .map(|t| format!("{t}: "))
            .unwrap_or_default();
        eprintln!("[{}] {title}{}", s(&n["level"]), s(&n["message"]));
        for a in n["actions"].as_array().into_iter().flatten() {
            eprintln!(
                "  follow-up: {} (action `{}`)",
                a["label"].as_str().unwrap_or_else(|| s(&a["action"])),
                s(&a["action"])
            );
        }
    }
    for g in result["groups"].as_array().into_iter().flatten() {
        let members = g["members"].as_array().map_or(0, Vec::len);
        let score = g["score"]
            .as_f64()
            .map(|x| format!(", score {x}"))
            .unwrap_or_default();
        eprintln!(
            "group {}: {members} member{}{score}",
            s(&g["name"]),
            if members == 1 { "" } else { "s" }
        );
    }
}

/// `plugd params NAME`: one line per key, its value and what the schema allows, briefly.
pub(crate) fn params(name: &str, view: &Value) {
    let params = view["params"].as_object().cloned().unwrap_or_default();
    let properties = view["schema"]["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if view["schema"].is_null() {
        println!("Plugin `{name}` declares no `[params]`");
        if params.is_empty() {
            return;
        }
    } else {
        println!("Params of `{name}`:");
    }
    // Schema order first (as declared), then keys the schema does not name.
    let mut keys: Vec<&String> = properties.keys().collect();
    keys.extend(params.keys().filter(|k| !properties.contains_key(*k)));
    let rows: Vec<[String; 3]> = keys
        .iter()
        .map(|k| {
            [
                (*k).clone(),
                params.get(*k).map_or("-".to_owned(), Value::to_string),
                properties.get(*k).map(describe).unwrap_or_default(),
            ]
        })
        .collect();
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (w0, w1) = (width(0), width(1));
    for [key, value, about] in &rows {
        println!(
            "  {}",
            format!("{key:<w0$}  {value:<w1$}  {about}").trim_end()
        );
    }
}

/// A schema property in a few words: `integer, at least 1, default 8`.
fn describe(schema: &Value) -> String {
    let mut parts = Vec::new();
    match &schema["type"] {
        Value::String(t) => parts.push(t.clone()),
        Value::Array(ts) => parts.push(
            ts.iter()
                .map(|t| s(t).to_owned())
                .collect::<Vec<_>>()
                .join("|"),
        ),
        _ => {}
    }
    if let Some(options) = schema["enum"].as_array() {
        let options: Vec<String> = options.iter().map(Value::to_string).collect();
        parts.push(format!("one of {}", options.join(", ")));
    }
    match (schema.get("minimum"), schema.get("maximum")) {
        (Some(lo), Some(hi)) => parts.push(format!("{lo}..{hi}")),
        (Some(lo), None) => parts.push(format!("at least {lo}")),
        (None, Some(hi)) => parts.push(format!("at most {hi}")),
        (None, None) => {}
    }
    if let Some(default) = schema.get("default") {
        parts.push(format!("default {default}"));
    }
    if let Some(d) = schema["description"].as_str() {
        parts.push(format!("— {d}"));
    }
    parts.join(", ").replace(", —", " —")
}

/// `plugd params NAME --history`: each stored change, newest first.
pub(crate) fn params_history(name: &str, history: &Value) {
    let revisions = history["revisions"].as_array().cloned().unwrap_or_default();
    if revisions.is_empty() {
        println!("The params of `{name}` were never changed: it runs with its defaults");
        return;
    }
    println!("REV  WHEN (UTC)           SOURCE     PARAMS");
    for r in &revisions {
        println!(
            "{:<4} {:<20} {:<10} {}",
            r["revision"].to_string(),
            utc(r["at_ms"].as_u64().unwrap_or(0)),
            s(&r["source"]),
            r["params"]
        );
    }
}

/// `plugd kv NAME [PREFIX]`: one row per entry, the value as compact JSON.
pub(crate) fn kv_table(name: &str, prefix: &str, items: &[Value]) {
    if items.is_empty() {
        if prefix.is_empty() {
            println!("Plugin `{name}` has no kv entries");
        } else {
            println!("Plugin `{name}` has no kv entries under `{prefix}`");
        }
        return;
    }
    let width = items
        .iter()
        .map(|i| s(&i["key"]).chars().count())
        .max()
        .unwrap_or(0)
        .max(3);
    println!("{:<width$}  VALUE", "KEY");
    for item in items {
        println!("{:<width$}  {}", s(&item["key"]), item["value"]);
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_paths_are_shown_in_the_source_package() {
        let text = "Traceback (most recent call last):\n  File \"/srv/state/packages/hello-0.1.0-0123456789ab/main.py\", line 3\nPermissionError: '/srv/state/packages/hello-0.1.0-0123456789ab'";
        assert_eq!(
            unstage_paths(text, "hello-0.1.0", "/home/me/plugins/hello"),
            "Traceback (most recent call last):\n  File \"/home/me/plugins/hello/main.py\", line 3\nPermissionError: '/home/me/plugins/hello'"
        );
        // Another plugin's copy, or a path that only looks similar, is left alone.
        for other in [
            "/s/packages/hello-world-0.1.0-0123456789ab/main.py",
            "/s/packages/hello-0.1.0-xyz/main.py",
            "/s/packages/hello-0.1.0-0123456789abc/main.py",
            "/s/packages/hello-0.2.0-0123456789ab/main.py",
        ] {
            assert_eq!(unstage_paths(other, "hello-0.1.0", "/p/hello"), other);
        }
    }

    #[test]
    fn quoted_stderr_becomes_a_block() {
        assert_eq!(
            expand("It exited; last stderr: Traceback: |   File \"m.py\" | E: boom"),
            "It exited\nlast stderr:\n  Traceback:\n    File \"m.py\"\n  E: boom"
        );
        assert_eq!(expand("plain | text"), "plain | text");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_825_600_000), "2000-02-29 12:00:00");
        assert_eq!(utc(1_767_225_599_999), "2025-12-31 23:59:59");
    }

    #[test]
    fn schema_properties_are_described_briefly() {
        use serde_json::json;
        assert_eq!(
            describe(&json!({"type": "integer", "minimum": 1, "default": 8})),
            "integer, at least 1, default 8"
        );
        assert_eq!(
            describe(
                &json!({"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                              "description": "How alike"})
            ),
            "number, 0..1, default 0.5 — How alike"
        );
        assert_eq!(
            describe(&json!({"type": "string", "enum": ["fast", "slow"]})),
            "string, one of \"fast\", \"slow\""
        );
    }

    #[test]
    fn continuation_lines_are_indented() {
        assert_eq!(indent("one\ntwo\n", 4), "one\n    two");
    }
}
