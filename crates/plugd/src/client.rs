//! The commands that talk to a running `plugd serve`: a minimal HTTP/1.1 client over
//! `std::net` (plain HTTP on a trusted local address; no TLS, no redirects).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::output;

/// A decoded HTTP response.
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// Parses `http://host:port[/prefix]`.
fn split_url(base: &str) -> anyhow::Result<(String, String)> {
    let rest = base.strip_prefix("http://").with_context(|| {
        format!("Server URL `{base}` must start with `http://`; hint: e.g. `--server http://127.0.0.1:8080`")
    })?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    Ok((authority.to_owned(), prefix.to_owned()))
}

fn request(
    server: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> anyhow::Result<Response> {
    let (authority, prefix) = split_url(server)?;
    let mut stream = TcpStream::connect(&authority).with_context(|| {
        format!("Cannot reach plugd at `{server}`; hint: start it with `plugd serve` or pass `--server URL`")
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: plugd-cli\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .context("Reading the server's response failed")?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("The server sent a malformed HTTP response")?;
    let head = std::str::from_utf8(&raw[..split]).context("The server sent a non-UTF-8 header")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("The server sent no HTTP status")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = raw[split + 4..].to_vec();
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("Malformed chunked body")?;
        let size_text = std::str::from_utf8(&data[..line_end])?
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        let size = usize::from_str_radix(size_text, 16).context("Malformed chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            bail!("Truncated chunked body");
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// Sends a request and returns the JSON body of a 2xx answer, or the API error as an `Err`.
fn json(server: &str, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Value> {
    let response = request(server, method, path, body)?;
    let value: Value = serde_json::from_slice(&response.body).with_context(|| {
        format!(
            "The server answered {} with a non-JSON body",
            response.status
        )
    })?;
    if (200..300).contains(&response.status) {
        return Ok(value);
    }
    let code = value
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("error");
    let message = value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("no message");
    bail!("{message} ({code}, HTTP {})", response.status)
}

/// `GET path` on the server, as JSON.
pub(crate) fn get_json(server: &str, path: &str) -> anyhow::Result<Value> {
    json(server, "GET", path, None)
}

pub(crate) fn list(server: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let value = json(server, "GET", "/api/v1/plugins", None)?;
    if as_json {
        output::print_json(&value);
    } else {
        output::plugin_table(&value);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn status(
    server: &str,
    name: Option<&str>,
    logs: usize,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let Some(name) = name else {
        let value = json(server, "GET", "/api/v1/plugins", None)?;
        if as_json {
            output::print_json(&value);
        } else {
            for plugin in value["plugins"].as_array().into_iter().flatten() {
                output::plugin_detail(plugin, None);
                println!();
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let plugin = json(server, "GET", &format!("/api/v1/plugins/{name}"), None)?;
    let log_lines = json(
        server,
        "GET",
        &format!("/api/v1/plugins/{name}/logs?limit={logs}"),
        None,
    )?;
    if as_json {
        output::print_json(&serde_json::json!({ "plugin": plugin, "logs": log_lines["lines"] }));
    } else {
        output::plugin_detail(&plugin, Some(&log_lines["lines"]));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn call(
    server: &str,
    plugin: &str,
    action: &str,
    payload: Option<&str>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let payload = match payload {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("Reading the payload from stdin failed")?;
            s
        }
        Some(p) => p.to_owned(),
        None => "{}".to_owned(),
    };
    if let Err(e) = serde_json::from_str::<Value>(&payload) {
        bail!(
            "The payload is not valid JSON: {e}; hint: quote it for the shell, e.g. '{{\"name\":\"Ada\"}}'"
        );
    }
    let result = json(
        server,
        "POST",
        &format!("/plugin/{plugin}/{action}"),
        Some(payload.as_bytes()),
    )?;
    if as_json {
        output::print_json(&result);
    } else {
        output::call_result(&result);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn lifecycle(
    server: &str,
    name: &str,
    op: &str,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let plugin = json(
        server,
        "POST",
        &format!("/api/v1/plugins/{name}/{op}"),
        Some(b""),
    )?;
    if as_json {
        output::print_json(&plugin);
    } else {
        output::plugin_detail(&plugin, None);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain =
            parse_response(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!(
            (plain.status, plain.body.as_slice()),
            (404, b"{}".as_slice())
        );
        let chunked = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.body, b"{\"a\":1}");
    }

    #[test]
    fn splits_server_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080").unwrap(),
            ("127.0.0.1:8080".into(), "".into())
        );
        assert_eq!(
            split_url("http://h:1/base/").unwrap(),
            ("h:1".into(), "/base".into())
        );
        assert!(
            split_url("https://h")
                .unwrap_err()
                .to_string()
                .contains("must start with `http://`")
        );
    }
}
