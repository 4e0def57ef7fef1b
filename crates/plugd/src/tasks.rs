//! `plugd task submit|show|cancel` and `plugd tasks [--watch]`: the tasks API of a running
//! server, with indicatif progress bars fed by the task stream.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::client::{self, segment};
use crate::output;

/// `plugd task submit --wait`: the task failed.
pub(crate) const EXIT_FAILED: u8 = 3;
/// `plugd task submit --wait`: the task was cancelled.
pub(crate) const EXIT_CANCELLED: u8 = 4;

/// The steps of a bar: progress is a fraction, shown to 0.1 %.
const STEPS: u64 = 1000;

/// What `plugd task submit` sends.
pub(crate) struct Submit<'a> {
    pub plugin: &'a str,
    pub task: &'a str,
    pub payload: Option<&'a str>,
    pub key: Option<&'a str>,
    pub priority: bool,
    pub dedupe: bool,
    pub max_attempts: Option<u32>,
}

/// `plugd task submit PLUGIN TASK [JSON] [--wait]`.
pub(crate) fn submit(
    server: &str,
    submit: &Submit<'_>,
    wait: bool,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let payload: Value = serde_json::from_str(&client::payload_arg(submit.payload)?)?;
    let mut body = serde_json::json!({
        "plugin": submit.plugin,
        "task": submit.task,
        "payload": payload,
        "priority": submit.priority,
        "dedupe": submit.dedupe,
    });
    if let Some(key) = submit.key {
        body["key"] = key.into();
    }
    if let Some(n) = submit.max_attempts {
        body["max_attempts"] = n.into();
    }
    let task = client::json(
        server,
        "POST",
        "/api/v1/tasks",
        Some(body.to_string().as_bytes()),
    )?;
    let id = task["id"]
        .as_u64()
        .context("The server answered a task without an id")?;
    if wait {
        return wait_for(server, id, as_json);
    }
    if as_json {
        output::print_json(&task);
    } else if task["deduped"].as_bool() == Some(true) {
        println!(
            "Task {id} ({}) is already queued with key `{}`; no new task was submitted",
            label(&task),
            task["key"].as_str().unwrap_or("-")
        );
    } else {
        println!(
            "Task {id} ({}) queued; follow it with `plugd task show {id}`",
            label(&task)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `plugin/task`.
fn label(task: &Value) -> String {
    format!(
        "{}/{}",
        task["plugin"].as_str().unwrap_or("-"),
        task["task"].as_str().unwrap_or("-")
    )
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {percent:>3}% {elapsed:>4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Follows one task until it is over, with one progress bar on stderr (on a terminal), then
/// prints its result (exit 0) or its error (exit 3 failed, 4 cancelled).
fn wait_for(server: &str, id: u64, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut stream = client::stream(server, &format!("/api/v1/tasks/stream?id={id}"), None)?;
    let bar = ProgressBar::new(STEPS).with_style(bar_style());
    bar.set_prefix(format!("task {id}"));
    bar.enable_steady_tick(Duration::from_millis(120));
    let last = loop {
        let next = stream.next_event();
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) | Err(_) => {
                bar.abandon();
                anyhow::bail!(
                    "The task stream of plugd at `{server}` ended before task {id} finished; hint: `plugd task show {id}` says where it is"
                );
            }
        };
        let value: Value = serde_json::from_str(&event.data).with_context(|| {
            format!("The server sent an update that is not JSON: {}", event.data)
        })?;
        match event.event.as_str() {
            "error" => {
                bar.abandon();
                anyhow::bail!(
                    "{}",
                    value
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("The server ended the task stream with an error")
                );
            }
            "progress" => show_progress(&bar, &value),
            "task" => {
                bar.set_prefix(format!("task {id} {}", label(&value)));
                match value["state"].as_str() {
                    Some("succeeded" | "failed" | "cancelled") => break value,
                    Some("queued") => {
                        let retry = value["attempts"].as_u64().unwrap_or(0) > 0;
                        bar.set_message(if retry {
                            "queued for a retry"
                        } else {
                            "queued"
                        });
                    }
                    _ => show_progress(&bar, &value),
                }
            }
            _ => {}
        }
    };
    bar.finish_and_clear();
    if as_json {
        output::print_json(&last);
    }
    match last["state"].as_str() {
        Some("succeeded") => {
            if !as_json {
                match &last["result"] {
                    Value::String(text) => println!("{text}"),
                    other => output::print_json(other),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("cancelled") => {
            if !as_json {
                eprintln!(
                    "Task {id} ({}) was cancelled: {}",
                    label(&last),
                    error(&last)
                );
            }
            Ok(ExitCode::from(EXIT_CANCELLED))
        }
        _ => {
            if !as_json {
                eprintln!(
                    "Task {id} ({}) failed after {} attempt{}: {}",
                    label(&last),
                    last["attempts"],
                    if last["attempts"].as_u64() == Some(1) {
                        ""
                    } else {
                        "s"
                    },
                    error(&last)
                );
            }
            Ok(ExitCode::from(EXIT_FAILED))
        }
    }
}

/// `message (code)`.
fn error(task: &Value) -> String {
    let message = task["error"].as_str().unwrap_or("no message");
    match task["error_code"].as_str() {
        Some(code) => format!("{message} ({code})"),
        None => message.to_owned(),
    }
}

fn show_progress(bar: &ProgressBar, value: &Value) {
    if let Some(fraction) = value["progress"].as_f64() {
        bar.set_position((fraction.clamp(0.0, 1.0) * STEPS as f64).round() as u64);
    }
    match value["message"].as_str() {
        Some(message) => bar.set_message(message.to_owned()),
        None if value["state"] == "running" => bar.set_message("running"),
        None => {}
    }
}

/// `plugd task show ID`.
pub(crate) fn show(server: &str, id: u64, as_json: bool) -> anyhow::Result<ExitCode> {
    let task = client::get_json(server, &format!("/api/v1/tasks/{id}"))?;
    if as_json {
        output::print_json(&task);
    } else {
        detail(&task);
    }
    Ok(ExitCode::SUCCESS)
}

fn detail(t: &Value) {
    let ms = |key: &str| t[key].as_u64().map(output::utc);
    println!(
        "Task {} ({}): {}",
        t["id"],
        label(t),
        t["state"].as_str().unwrap_or("-")
    );
    if let Some(key) = t["key"].as_str() {
        println!("  key:       {key}");
    }
    if t["priority"] == true {
        println!("  priority:  yes");
    }
    println!("  attempts:  {} of {}", t["attempts"], t["max_attempts"]);
    if let Some(at) = ms("submitted_ms") {
        println!("  submitted: {at} UTC");
    }
    if let Some(at) = ms("started_ms") {
        println!("  started:   {at} UTC");
    }
    if let Some(at) = ms("finished_ms") {
        let took = t["finished_ms"]
            .as_u64()
            .zip(t["started_ms"].as_u64())
            .map(|(end, start)| format!(" (ran {:.1} s)", end.saturating_sub(start) as f64 / 1e3))
            .unwrap_or_default();
        println!("  finished:  {at} UTC{took}");
    }
    if t["state"] == "queued" && t["not_before_ms"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  retry at:  {} UTC",
            output::utc(t["not_before_ms"].as_u64().unwrap_or(0))
        );
    }
    if let Some(fraction) = t["progress"].as_f64() {
        let message = t["message"]
            .as_str()
            .map(|m| format!(" {m}"))
            .unwrap_or_default();
        println!("  progress:  {:.0}%{message}", fraction * 100.0);
    } else if let Some(message) = t["message"].as_str() {
        println!("  progress:  {message}");
    }
    println!("  payload:   {}", t["payload"]);
    if !t["result"].is_null() {
        println!("  result:    {}", t["result"]);
    }
    if t["error"].is_string() {
        println!("  error:     {}", error(t));
    }
    match t["stopped"].as_bool() {
        Some(true) => println!("  the handler stopped when cancelled"),
        Some(false) => println!("  the handler did not stop within the grace when cancelled"),
        None => {}
    }
}

/// `plugd task cancel ID`.
pub(crate) fn cancel(server: &str, id: u64, as_json: bool) -> anyhow::Result<ExitCode> {
    let task = client::json(
        server,
        "POST",
        &format!("/api/v1/tasks/{id}/cancel"),
        Some(b""),
    )?;
    if as_json {
        output::print_json(&task);
        return Ok(ExitCode::SUCCESS);
    }
    let what = format!("Task {id} ({})", label(&task));
    match (task["state"].as_str(), task["stopped"].as_bool()) {
        (Some("cancelled"), None) => println!("{what} cancelled before it ran"),
        (Some("cancelled"), Some(true)) => println!("{what} cancelled; its handler stopped"),
        (Some("cancelled"), Some(false)) => println!(
            "{what} cancelled; its handler did not stop within the grace and may still be working"
        ),
        (Some(state), _) => println!("{what} ended as {state} before the cancel took effect"),
        (None, _) => println!("{what}: no state"),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `plugd tasks` lists.
pub(crate) struct ListFilter<'a> {
    pub plugin: Option<&'a str>,
    pub state: Option<&'a str>,
    pub key: Option<&'a str>,
    pub limit: usize,
}

/// `plugd tasks`: a table, newest first.
pub(crate) fn list(
    server: &str,
    filter: &ListFilter<'_>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/api/v1/tasks?limit={}", filter.limit);
    for (name, value) in [
        ("plugin", filter.plugin),
        ("state", filter.state),
        ("key", filter.key),
    ] {
        if let Some(value) = value {
            path.push_str(&format!("&{name}={}", segment(value)));
        }
    }
    let answer = client::get_json(server, &path)?;
    if as_json {
        output::print_json(&answer);
        return Ok(ExitCode::SUCCESS);
    }
    let tasks = answer["tasks"].as_array().cloned().unwrap_or_default();
    if tasks.is_empty() {
        println!("No tasks");
        return Ok(ExitCode::SUCCESS);
    }
    table(&tasks);
    if !answer["next"].is_null() {
        eprintln!(
            "(the newest {} shown; raise `--limit` for more)",
            tasks.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn table(tasks: &[Value]) {
    let header = [
        "ID",
        "PLUGIN",
        "TASK",
        "KEY",
        "STATE",
        "TRIES",
        "PROGRESS",
        "SUBMITTED",
        "DETAIL",
    ];
    let rows: Vec<[String; 9]> = tasks
        .iter()
        .map(|t| {
            let detail = match t["state"].as_str() {
                // The code first: the message is cut to the column.
                Some("failed" | "cancelled") => match t["error_code"].as_str() {
                    Some(code) => format!("{code}: {}", t["error"].as_str().unwrap_or("")),
                    None => t["error"].as_str().unwrap_or("").to_owned(),
                },
                _ => t["message"].as_str().unwrap_or("").to_owned(),
            };
            [
                t["id"].to_string(),
                t["plugin"].as_str().unwrap_or("-").to_owned(),
                t["task"].as_str().unwrap_or("-").to_owned(),
                t["key"].as_str().unwrap_or("-").to_owned(),
                t["state"].as_str().unwrap_or("-").to_owned(),
                format!("{}/{}", t["attempts"], t["max_attempts"]),
                t["progress"]
                    .as_f64()
                    .map(|f| format!("{:.0}%", f * 100.0))
                    .unwrap_or_else(|| "-".to_owned()),
                output::utc(t["submitted_ms"].as_u64().unwrap_or(0)),
                truncate(&detail, 60),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (cell, w) in cells.iter().zip(widths) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn truncate(text: &str, max: usize) -> String {
    let text = text.lines().next().unwrap_or("");
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// `plugd tasks --watch`: one progress bar per running task (indicatif, on stderr) and a line
/// per finished one, until Ctrl-C. Not on a terminal (or with `--json`), one line per change.
pub(crate) fn watch(
    server: &str,
    plugin: Option<&str>,
    key: Option<&str>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let path = match plugin {
        Some(name) => format!("/api/v1/tasks/stream?plugin={}", segment(name)),
        None => "/api/v1/tasks/stream".to_owned(),
    };
    let mut stream = client::stream(server, &path, None)?;
    let bars = std::io::stderr().is_terminal() && !as_json;
    let mut board = Board::new(bars);
    loop {
        let event = match stream.next_event() {
            Ok(Some(event)) => event,
            Ok(None) | Err(_) => {
                board.multi.clear().ok();
                anyhow::bail!("plugd at `{server}` ended the task stream (it is shutting down?)");
            }
        };
        let value: Value = serde_json::from_str(&event.data).with_context(|| {
            format!("The server sent an update that is not JSON: {}", event.data)
        })?;
        if event.event == "error" {
            board.multi.clear().ok();
            anyhow::bail!(
                "{}",
                value
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("The server ended the task stream with an error")
            );
        }
        let id = value["id"].as_u64().unwrap_or(0);
        let wanted = match event.event.as_str() {
            "task" => key.is_none_or(|k| value["key"].as_str() == Some(k)),
            "progress" => board.tasks.contains_key(&id),
            _ => false,
        };
        if !wanted {
            continue;
        }
        if as_json {
            let line = serde_json::json!({ "event": event.event, "data": value });
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(ExitCode::SUCCESS);
            }
            continue;
        }
        if event.event == "progress" {
            board.progress(id, &value);
        } else {
            board.task(id, &value);
        }
    }
}

/// What `--watch` shows: the tasks it follows, a bar per running one, a summary line.
struct Board {
    multi: MultiProgress,
    summary: Option<ProgressBar>,
    /// Unfinished tasks: their state and their bar (running ones, on a terminal).
    tasks: HashMap<u64, (String, Option<ProgressBar>)>,
    bars: bool,
}

impl Board {
    fn new(bars: bool) -> Board {
        let multi = MultiProgress::new();
        let summary = bars.then(|| {
            let summary = multi.add(ProgressBar::new_spinner());
            summary.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            summary.enable_steady_tick(Duration::from_millis(120));
            summary
        });
        let board = Board {
            multi,
            summary,
            tasks: HashMap::new(),
            bars,
        };
        board.summarise();
        board
    }

    /// A line above the bars (or on stdout, without bars).
    fn say(&self, line: String) {
        if self.bars {
            self.multi.println(line).ok();
        } else {
            println!("{line}");
            std::io::stdout().flush().ok();
        }
    }

    fn summarise(&self) {
        if let Some(summary) = &self.summary {
            let running = self.tasks.values().filter(|(s, _)| s == "running").count();
            let queued = self.tasks.len() - running;
            summary.set_message(format!(
                "{running} running, {queued} queued; Ctrl-C to stop watching (the tasks go on)"
            ));
        }
    }

    fn task(&mut self, id: u64, t: &Value) {
        let state = t["state"].as_str().unwrap_or("-").to_owned();
        let what = format!("task {id} {}", label(t));
        let previous = self.tasks.remove(&id);
        let (old_state, bar) = match previous {
            Some((s, bar)) => (Some(s), bar),
            None => (None, None),
        };
        match state.as_str() {
            "succeeded" | "failed" | "cancelled" => {
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                let how = match state.as_str() {
                    "succeeded" => {
                        let took = t["finished_ms"]
                            .as_u64()
                            .zip(t["started_ms"].as_u64())
                            .map(|(e, s)| format!(" in {:.1} s", e.saturating_sub(s) as f64 / 1e3))
                            .unwrap_or_default();
                        format!("succeeded{took}")
                    }
                    other => format!("{other}: {}", error(t)),
                };
                self.say(format!("{what} {how}"));
            }
            "running" => {
                let bar = bar.or_else(|| {
                    self.bars.then(|| {
                        let bar = ProgressBar::new(STEPS).with_style(bar_style());
                        let bar = match &self.summary {
                            Some(summary) => self.multi.insert_before(summary, bar),
                            None => self.multi.add(bar),
                        };
                        bar.set_prefix(what.clone());
                        bar
                    })
                });
                if let Some(bar) = &bar {
                    show_progress(bar, t);
                }
                if !self.bars && old_state.as_deref() != Some("running") {
                    self.say(format!("{what} running (attempt {})", t["attempts"]));
                }
                self.tasks.insert(id, (state, bar));
            }
            _ => {
                // Queued: new, or back for a retry.
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                if !self.bars && old_state.as_deref() != Some("queued") {
                    self.say(format!("{what} queued"));
                }
                self.tasks.insert(id, (state, None));
            }
        }
        self.summarise();
    }

    fn progress(&mut self, id: u64, p: &Value) {
        if let Some((_, Some(bar))) = self.tasks.get(&id) {
            show_progress(bar, p);
        }
    }
}
