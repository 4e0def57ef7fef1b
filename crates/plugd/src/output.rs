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
    fn continuation_lines_are_indented() {
        assert_eq!(indent("one\ntwo\n", 4), "one\n    two");
    }
}
