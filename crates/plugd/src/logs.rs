//! `plugd logs NAME [--follow]`: a plugin's log lines from a running server, and the new ones
//! live. The recent lines are read first, then the stream resumes after the newest of them
//! (lines are numbered per plugin), so none is shown twice or missed.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use crate::client::{self, segment};
use crate::output;

/// What `plugd logs` shows.
pub(crate) struct LogsArgs<'a> {
    pub name: &'a str,
    /// How many recent lines first.
    pub lines: usize,
    pub follow: bool,
    pub as_json: bool,
}

pub(crate) fn run(server: &str, args: &LogsArgs<'_>) -> anyhow::Result<ExitCode> {
    let name = segment(args.name);
    let recent = client::get_json(
        server,
        &format!("/api/v1/plugins/{name}/logs?limit={}", args.lines),
    )?;
    let lines = recent["lines"].as_array().cloned().unwrap_or_default();
    let colour = output::colour(&std::io::stdout());
    let mut last = None;
    if args.as_json && !args.follow {
        output::print_json(&recent);
        return Ok(ExitCode::SUCCESS);
    }
    for line in &lines {
        last = line["seq"].as_u64().or(last);
        if !print(line, args.as_json, colour) {
            return Ok(ExitCode::SUCCESS);
        }
    }
    if !args.follow {
        if lines.is_empty() && !args.as_json {
            eprintln!("No log lines from `{}` yet.", args.name);
        }
        return Ok(ExitCode::SUCCESS);
    }
    // After the newest line shown; with none shown, from line 0 (every line still held).
    let mut stream = client::stream(
        server,
        &format!("/api/v1/plugins/{name}/logs/stream"),
        Some(last.unwrap_or(0)),
    )?;
    loop {
        let next = stream
            .next_event()
            .map_err(|e| anyhow::anyhow!("The log stream of plugd at `{server}` broke: {e}"))?;
        let Some(event) = next else {
            anyhow::bail!("plugd at `{server}` ended the log stream (it is shutting down?)");
        };
        let value: Value = serde_json::from_str(&event.data)
            .with_context(|| format!("The server sent a line that is not JSON: {}", event.data))?;
        if event.event == "error" {
            anyhow::bail!(
                "{}",
                value
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("The server ended the log stream with an error")
            );
        }
        if event.event != "log" {
            continue;
        }
        if let (Some(before), Some(seq)) = (last, value["seq"].as_u64())
            && seq > before + 1
            && !args.as_json
        {
            eprintln!(
                "… {} lines dropped (the server keeps a bounded ring)",
                seq - before - 1
            );
        }
        last = value["seq"].as_u64().or(last);
        if !print(&value, args.as_json, colour) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Prints one line; false when stdout is closed (`| head`), which ends the command quietly.
fn print(line: &Value, as_json: bool, colour: bool) -> bool {
    let mut out = std::io::stdout().lock();
    let written = if as_json {
        writeln!(out, "{line}")
    } else {
        writeln!(out, "{}", human(line, colour))
    };
    written.and_then(|()| out.flush()).is_ok()
}

/// `TIME LEVEL SOURCE message`, the level coloured on a terminal.
fn human(line: &Value, colour: bool) -> String {
    let level = line["level"].as_str().unwrap_or("info");
    let padded = format!("{level:<5}");
    let level = match (colour, level) {
        (false, _) => padded,
        (true, "error") => format!("\x1b[31m{padded}\x1b[0m"),
        (true, "warn") => format!("\x1b[33m{padded}\x1b[0m"),
        (true, "debug" | "trace") => format!("\x1b[2m{padded}\x1b[0m"),
        (true, _) => padded,
    };
    format!(
        "{} {level} {:<7} {}",
        output::utc(line["at_ms"].as_u64().unwrap_or(0)),
        line["source"].as_str().unwrap_or("-"),
        line["message"].as_str().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_line_is_time_level_source_message_coloured_only_when_asked() {
        let line =
            json!({"seq": 3, "at_ms": 0, "source": "stderr", "level": "error", "message": "boom"});
        assert_eq!(
            human(&line, false),
            format!("{} error stderr  boom", output::utc(0))
        );
        assert!(human(&line, true).contains("\x1b[31merror\x1b[0m"));
        let info =
            json!({"seq": 4, "at_ms": 0, "source": "plugin", "level": "info", "message": "hi"});
        assert!(!human(&info, true).contains('\x1b'), "info is plain");
    }
}
