//! The commands that talk to a running `plugd serve`, over HTTP with `ureq`.
//!
//! Plain HTTP only: the CLI talks to a local server, and a TLS stack (rustls and its crypto)
//! would add much of the binary's build time for no local use. A remote server belongs behind a
//! TLS-terminating proxy on the same host.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::output;

/// How long connecting may take: a local server accepts at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer may take: above the server's own request timeout, so the server's error
/// (with its reason) arrives first.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(660);
/// The largest response read: above the host's 16 MiB frame cap.
const MAX_RESPONSE: u64 = 64 << 20;

/// The API token every request carries (`--token` / `PLUGD_TOKEN`), set once by `main`.
pub(crate) static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Adds `Authorization: Bearer TOKEN` when a token was given.
fn authorized<B>(request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
    match TOKEN.get() {
        Some(token) => request.header("authorization", format!("Bearer {token}")),
        None => request,
    }
}

/// A decoded HTTP response.
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// Checks the server URL and returns it without a trailing `/`.
fn base_url(server: &str) -> anyhow::Result<&str> {
    if !server.starts_with("http://") {
        bail!(
            "Server URL `{server}` must start with `http://` (this build has no TLS); hint: e.g. `--server http://127.0.0.1:8080`"
        );
    }
    Ok(server.trim_end_matches('/'))
}

/// Percent-encodes one path segment (a plugin or action name): everything but the unreserved
/// characters of RFC 3986, so a name can never add a segment, a query or a fragment.
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn request(
    server: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> anyhow::Result<Response> {
    request_typed(server, method, path, body, "application/json")
}

/// Sends raw bytes of `content_type` (an archive) and returns the raw answer of a 2xx, or the
/// API error as an `Err`.
pub(crate) fn bytes(
    server: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    content_type: &str,
) -> anyhow::Result<Vec<u8>> {
    let response = request_typed(server, method, path, body, content_type)?;
    if (200..300).contains(&response.status) {
        Ok(response.body)
    } else {
        Err(api_error(response.status, &response.body))
    }
}

fn request_typed(
    server: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    content_type: &str,
) -> anyhow::Result<Response> {
    let url = format!("{}{path}", base_url(server)?);
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .timeout_recv_body(Some(RESPONSE_TIMEOUT))
        // API errors are JSON bodies with a code and a message: read them, do not fail early.
        .http_status_as_error(false)
        .user_agent("plugd-cli")
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let body = body.unwrap_or_default();
    let sent = match method {
        "GET" => authorized(agent.get(&url))
            .header("accept", "application/json")
            .call(),
        "DELETE" => authorized(agent.delete(&url))
            .header("accept", "application/json")
            .call(),
        "PUT" => authorized(agent.put(&url))
            .header("accept", "application/json")
            .header("content-type", content_type)
            .send(body),
        "PATCH" => authorized(agent.patch(&url))
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .send(body),
        _ => authorized(agent.post(&url))
            .header("accept", "application/json")
            .header("content-type", content_type)
            .send(body),
    };
    let mut response = sent.map_err(|e| transport_error(server, e))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE)
        .read_to_vec()
        .map_err(|e| transport_error(server, e))?;
    Ok(Response { status, body })
}

/// A request that got no HTTP answer, said in the user's terms.
fn transport_error(server: &str, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve)
        | ureq::Error::Io(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound => anyhow::anyhow!(
            "Cannot reach plugd at `{server}`: {e}; hint: start it with `plugd serve` or pass `--server URL`"
        ),
        ureq::Error::Timeout(_) => anyhow::anyhow!(
            "plugd at `{server}` did not answer within {} s; hint: see the server's log",
            RESPONSE_TIMEOUT.as_secs()
        ),
        ureq::Error::BodyExceedsLimit(limit) => anyhow::anyhow!(
            "The answer of plugd at `{server}` is larger than {} MiB; hint: use the HTTP API directly for large results",
            limit >> 20
        ),
        e => anyhow::anyhow!("Talking to plugd at `{server}` failed: {e}"),
    }
}

/// How long a stream may stay silent: the server sends a keep-alive comment every 15 s.
const STREAM_IDLE: Duration = Duration::from_secs(60);

/// Opens a Server-Sent Events stream (`GET path`), resuming after `last_event_id` when given;
/// an API error (404, 400) is returned as an `Err` like [`json`]'s.
pub(crate) fn stream(
    server: &str,
    path: &str,
    last_event_id: Option<u64>,
) -> anyhow::Result<crate::sse::SseReader<impl std::io::BufRead + use<>>> {
    let url = format!("{}{path}", base_url(server)?);
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        // The body never ends by itself; only silence past the keep-alives means a lost server.
        .timeout_recv_body(None)
        .timeout_per_read(Some(STREAM_IDLE))
        .http_status_as_error(false)
        .user_agent("plugd-cli")
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut request = authorized(agent.get(&url)).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.call().map_err(|e| transport_error(server, e))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if !(200..300).contains(&status) {
        let body = body
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| transport_error(server, e))?;
        return Err(api_error(status, &body));
    }
    Ok(crate::sse::SseReader::new(std::io::BufReader::new(
        body.into_reader(),
    )))
}

/// The error of a non-2xx answer: the API's message and code.
fn api_error(status: u16, body: &[u8]) -> anyhow::Error {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return anyhow::anyhow!("The server answered {status} with a non-JSON body");
    };
    let code = value
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("error");
    let message = value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("no message");
    anyhow::anyhow!("{message} ({code}, HTTP {status})")
}

/// Sends a request and returns the JSON body of a 2xx answer, or the API error as an `Err`.
pub(crate) fn json(
    server: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> anyhow::Result<Value> {
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
    let plugin = json(
        server,
        "GET",
        &format!("/api/v1/plugins/{}", segment(name)),
        None,
    )?;
    let log_lines = json(
        server,
        "GET",
        &format!("/api/v1/plugins/{}/logs?limit={logs}", segment(name)),
        None,
    )?;
    if as_json {
        output::print_json(&serde_json::json!({ "plugin": plugin, "logs": log_lines["lines"] }));
    } else {
        output::plugin_detail(&plugin, Some(&log_lines["lines"]));
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON payload argument: the text, `-` for stdin, `{}` when absent; checked before anything
/// is sent.
pub(crate) fn payload_arg(payload: Option<&str>) -> anyhow::Result<String> {
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
    Ok(payload)
}

pub(crate) fn call(
    server: &str,
    plugin: &str,
    action: &str,
    payload: Option<&str>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let payload = payload_arg(payload)?;
    let result = json(
        server,
        "POST",
        &format!("/plugin/{}/{}", segment(plugin), segment(action)),
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
        &format!("/api/v1/plugins/{}/{op}", segment(name)),
        Some(b""),
    )?;
    if as_json {
        output::print_json(&plugin);
    } else {
        output::plugin_detail(&plugin, None);
        output::also_stopped(&plugin, name);
    }
    Ok(ExitCode::SUCCESS)
}

/// `plugd gc`: asks the server to collect, and says what went.
pub(crate) fn gc(server: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let answer = json(server, "POST", "/api/v1/gc", Some(b""))?;
    if as_json {
        output::print_json(&answer);
        return Ok(ExitCode::SUCCESS);
    }
    let copies = answer["packages"].as_array().map_or(0, Vec::len);
    let envs = answer["envs"].as_array().map_or(0, Vec::len);
    let mib = |key: &str| answer[key].as_u64().unwrap_or(0) as f64 / f64::from(1 << 20);
    println!(
        "Removed {copies} staged package cop{} ({:.1} MiB), {envs} Python environment{} ({:.1} MiB) and {:.1} MiB of compiled code",
        if copies == 1 { "y" } else { "ies" },
        mib("package_bytes"),
        if envs == 1 { "" } else { "s" },
        mib("env_bytes"),
        mib("runtime_bytes")
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_encoded_path_segment() {
        assert_eq!(segment("hello-world_1.0~x"), "hello-world_1.0~x");
        assert_eq!(segment("a/b?c#d e%"), "a%2Fb%3Fc%23d%20e%25");
        assert_eq!(segment(".."), "..");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn server_urls_must_be_plain_http() {
        assert_eq!(base_url("http://h:1/base/").unwrap(), "http://h:1/base");
        let e = base_url("https://h").unwrap_err().to_string();
        assert!(
            e.contains("must start with `http://` (this build has no TLS)"),
            "{e}"
        );
    }
}
