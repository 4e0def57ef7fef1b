//! `plugd emit`, `plugd events` (history and `--follow`), `plugd events dead`, `plugd events
//! replay`: the events API of a running server.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use crate::client::{self, segment};
use crate::output;

/// `plugd emit TOPIC [JSON]`.
pub(crate) fn emit(
    server: &str,
    topic: &str,
    payload: Option<&str>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let payload = client::payload_arg(payload)?;
    let payload: Value = serde_json::from_str(&payload)?;
    let body = serde_json::json!({ "topic": topic, "payload": payload }).to_string();
    let answer = client::json(server, "POST", "/api/v1/events", Some(body.as_bytes()))?;
    if as_json {
        output::print_json(&answer);
        return Ok(ExitCode::SUCCESS);
    }
    let subscribers: Vec<&str> = answer["subscribers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let seq = answer["seq"].as_u64().unwrap_or(0);
    match subscribers.len() {
        0 => println!("Published event {seq} (`{topic}`); no plugin subscribes to it"),
        n => println!(
            "Published event {seq} (`{topic}`) to {n} subscriber{}: {}",
            if n == 1 { "" } else { "s" },
            subscribers.join(", ")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `plugd events` lists or follows.
pub(crate) struct Filter<'a> {
    pub topic: Option<&'a str>,
    pub after: Option<u64>,
    pub limit: usize,
}

/// `plugd events [--topic P] [--after N] [--limit N]`: the stored events, oldest first.
pub(crate) fn history(
    server: &str,
    filter: &Filter<'_>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let mut path = format!(
        "/api/v1/events?after={}&limit={}",
        filter.after.unwrap_or(0),
        filter.limit
    );
    if let Some(topic) = filter.topic {
        path.push_str(&format!("&topic={}", segment(topic)));
    }
    let answer = client::get_json(server, &path)?;
    if as_json {
        output::print_json(&answer);
        return Ok(ExitCode::SUCCESS);
    }
    let events = answer["events"].as_array().cloned().unwrap_or_default();
    if events.is_empty() {
        println!(
            "No events{}{}",
            filter
                .topic
                .map(|t| format!(" matching `{t}`"))
                .unwrap_or_default(),
            filter
                .after
                .map(|a| format!(" after {a}"))
                .unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for event in &events {
        println!("{}", event_line(event));
    }
    if events.len() >= filter.limit {
        eprintln!(
            "(the first {} shown; `--after {}` continues)",
            events.len(),
            answer["next"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One event on one line: seq, time, topic, source, the payload as compact JSON.
fn event_line(event: &Value) -> String {
    let source = event["source"].as_str().unwrap_or("app");
    let target = event["target"]
        .as_str()
        .map(|t| format!(" → {t}"))
        .unwrap_or_default();
    format!(
        "{:<6} {} {:<24} {source}{target}  {}",
        event["seq"].to_string(),
        output::utc(event["at_ms"].as_u64().unwrap_or(0)),
        event["topic"].as_str().unwrap_or("-"),
        event["payload"]
    )
}

/// `plugd events --follow`: the live stream (after `--after` when given) until Ctrl-C or the
/// server ends it.
pub(crate) fn follow(server: &str, filter: &Filter<'_>, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut path = "/api/v1/events/stream".to_owned();
    if let Some(topic) = filter.topic {
        path.push_str(&format!("?topic={}", segment(topic)));
    }
    let mut stream = client::stream(server, &path, filter.after)?;
    let mut last = filter.after;
    let stdout = std::io::stdout();
    loop {
        let next = stream.next_event().map_err(|e| {
            anyhow::anyhow!(
                "The event stream of plugd at `{server}` broke: {e}{}",
                resume_hint(last)
            )
        })?;
        let Some(event) = next else {
            anyhow::bail!(
                "plugd at `{server}` ended the event stream (it is shutting down?){}",
                resume_hint(last)
            );
        };
        let value: Value = serde_json::from_str(&event.data).with_context(|| {
            format!("The server sent an event that is not JSON: {}", event.data)
        })?;
        if event.event == "error" {
            anyhow::bail!(
                "{}{}",
                value
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("The server ended the stream with an error"),
                resume_hint(last)
            );
        }
        if event.event != "event" {
            continue;
        }
        last = value["seq"].as_u64().or(last);
        let mut out = stdout.lock();
        let written = if as_json {
            writeln!(out, "{value}")
        } else {
            writeln!(out, "{}", event_line(&value))
        };
        // A closed pipe (`| head`) ends the command quietly.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn resume_hint(last: Option<u64>) -> String {
    last.map(|seq| format!("; hint: resume with `plugd events --follow --after {seq}`"))
        .unwrap_or_default()
}

/// `plugd events dead [--plugin NAME]`: dead letters, newest first.
pub(crate) fn dead(
    server: &str,
    plugin: Option<&str>,
    limit: usize,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/api/v1/events/dead?limit={limit}");
    if let Some(name) = plugin {
        path.push_str(&format!("&plugin={}", segment(name)));
    }
    let answer = client::get_json(server, &path)?;
    if as_json {
        output::print_json(&answer);
        return Ok(ExitCode::SUCCESS);
    }
    let dead = answer["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if dead.is_empty() {
        match plugin {
            Some(name) => println!("No dead letters for `{name}`"),
            None => println!("No dead letters"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    for d in &dead {
        let event = &d["event"];
        println!(
            "{} {} event {} `{}`: {} attempts failed, last: {}",
            output::utc(d["at_ms"].as_u64().unwrap_or(0)),
            d["plugin"].as_str().unwrap_or("-"),
            event["seq"],
            event["topic"].as_str().unwrap_or("-"),
            d["attempts"],
            d["error"].as_str().unwrap_or("-")
        );
        println!("    payload {}", event["payload"]);
    }
    println!("Replay one with `plugd events replay PLUGIN SEQ`");
    Ok(ExitCode::SUCCESS)
}

/// `plugd events replay PLUGIN SEQ`.
pub(crate) fn replay(
    server: &str,
    plugin: &str,
    seq: u64,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let answer = client::json(
        server,
        "POST",
        &format!("/api/v1/events/dead/{}/{seq}/replay", segment(plugin)),
        Some(b""),
    )?;
    if as_json {
        output::print_json(&answer);
    } else {
        println!(
            "Replayed event {seq} to `{plugin}` as event {}",
            answer["replayed"]
        );
    }
    Ok(ExitCode::SUCCESS)
}
