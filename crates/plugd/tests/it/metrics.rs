//! `GET /metrics` through the real binary: Prometheus text with the call, load, event, proxy and
//! store series recorded by what the test did, labels bounded (an undeclared action is
//! `unknown`, a plugin's own error code never a label), and the scope it needs once tokens exist.

use std::time::Duration;

use crate::http::{Answer, request};
use crate::{Server, checkout_copy_of};

fn send(server: &Server, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
    let authority = server.url.trim_start_matches("http://");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n",
        body.len()
    );
    request(authority, &head, body.as_bytes())
}

/// The value of the sample `series` (name and labels exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
}

fn scrape(server: &Server) -> String {
    let answer = send(server, "GET", "/metrics", None, "");
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    String::from_utf8(answer.body).unwrap()
}

#[test]
fn metrics_count_calls_loads_events_proxied_requests_and_the_store() {
    let (tmp, plugins) = checkout_copy_of(&["hello"]);
    crate::http::web_plugin(&plugins, "web", "");
    let server = Server::start(&plugins, tmp.path());

    for name in ["Ada", "Grace"] {
        let body = format!(r#"{{"name":"{name}"}}"#);
        let answer = send(&server, "POST", "/plugin/hello/greet", None, &body);
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    // Refused before reaching the plugin: the input schema wants a name.
    let bad = send(&server, "POST", "/plugin/hello/greet", None, "{}");
    assert_eq!(bad.status, 400, "{}", String::from_utf8_lossy(&bad.body));
    // An action nobody declared: labelled `unknown`, whatever the caller typed.
    let unknown = send(
        &server,
        "POST",
        "/plugin/hello/no-such-thing-123",
        None,
        "{}",
    );
    assert_eq!(unknown.status, 404);
    // A blue/green swap: counted as a swap and as a second load.
    let reloaded = send(&server, "POST", "/api/v1/plugins/hello/reload", None, "");
    assert_eq!(
        reloaded.status,
        200,
        "{}",
        String::from_utf8_lossy(&reloaded.body)
    );
    let proxied = send(&server, "GET", "/plugins/web/missing", None, "");
    assert_eq!(proxied.status, 404, "the web plugin has no /missing");
    let proxied = send(&server, "GET", "/plugins/web/echo", None, "");
    assert_eq!(proxied.status, 200);
    let published = send(
        &server,
        "POST",
        "/api/v1/events",
        None,
        r#"{"topic":"hello.metrics","payload":{"n":1}}"#,
    );
    assert_eq!(
        published.status,
        202,
        "{}",
        String::from_utf8_lossy(&published.body)
    );
    assert_eq!(published.json()["subscribers"][0], "hello");

    // Delivery to `hello` (it subscribes to `hello.*`) happens in the background.
    let mut text = scrape(&server);
    let started = std::time::Instant::now();
    while sample(&text, r#"plugd_events_delivered_total{plugin="hello"}"#) != Some(1.0) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the event was never delivered:\n{text}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
        text = scrape(&server);
    }

    let expect = [
        (
            r#"plugd_calls_total{plugin="hello",action="greet",outcome="ok"}"#,
            2.0,
        ),
        (
            r#"plugd_calls_total{plugin="hello",action="greet",outcome="bad_payload"}"#,
            1.0,
        ),
        (
            r#"plugd_calls_total{plugin="hello",action="unknown",outcome="action_not_found"}"#,
            1.0,
        ),
        (
            r#"plugd_call_duration_seconds_count{plugin="hello",action="greet"}"#,
            3.0,
        ),
        (r#"plugd_calls_in_flight{plugin="hello"}"#, 0.0),
        (
            r#"plugd_plugin_loads_total{plugin="hello",outcome="ok"}"#,
            2.0,
        ),
        (
            r#"plugd_plugin_load_duration_seconds_count{plugin="hello"}"#,
            2.0,
        ),
        (
            r#"plugd_plugin_swaps_total{plugin="hello",trigger="reload",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"plugd_http_proxied_requests_total{plugin="web",status="2xx"}"#,
            1.0,
        ),
        (
            r#"plugd_http_proxied_requests_total{plugin="web",status="4xx"}"#,
            1.0,
        ),
        (r#"plugd_plugins{state="running"}"#, 2.0),
        (r#"plugd_plugins{state="failed"}"#, 0.0),
        ("plugd_events_published_total", 1.0),
        (r#"plugd_events_delivered_total{plugin="hello"}"#, 1.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    let size = sample(&text, "plugd_store_size_bytes").expect("store size");
    assert!(size >= 4096.0, "{size}");
    // Every series has its help and type.
    for family in [
        "plugd_calls_total counter",
        "plugd_call_duration_seconds histogram",
        "plugd_calls_in_flight gauge",
        "plugd_plugins gauge",
        "plugd_store_size_bytes gauge",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}")),
            "{family} in\n{text}"
        );
    }
    assert!(text.contains("# HELP plugd_calls_total "), "{text}");
    // What the caller typed never becomes a label.
    assert!(!text.contains("no-such-thing-123"), "{text}");
    // A histogram bucket of the call durations, from 50 µs up.
    assert!(
        text.contains(
            r#"plugd_call_duration_seconds_bucket{plugin="hello",action="greet",le="0.00005"}"#
        ),
        "{text}"
    );
}

#[test]
fn metrics_need_the_read_scope_once_tokens_exist_unless_public() {
    let (tmp, plugins) = checkout_copy_of(&["hello"]);
    let state = tmp.path().join("state");
    let caller = crate::auth::create_token(&state, "caller", &["call:hello/greet"]);
    let server = Server::start(&plugins, tmp.path());
    assert_eq!(send(&server, "GET", "/metrics", None, "").status, 401);
    let forbidden = send(&server, "GET", "/metrics", Some(&caller), "");
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json()["error"]["code"], "forbidden");
    drop(server);

    let public = Server::start_with(&plugins, tmp.path(), &["--metrics-public"]);
    let text = scrape(&public);
    assert!(text.contains("plugd_plugins"), "{text}");
    // Everything else still needs its token.
    assert_eq!(
        send(&public, "GET", "/api/v1/plugins", None, "").status,
        401
    );
}

#[test]
fn no_metrics_records_nothing_and_says_so() {
    let (tmp, plugins) = checkout_copy_of(&["hello"]);
    let server = Server::start_with(&plugins, tmp.path(), &["--no-metrics"]);
    let answer = send(&server, "GET", "/metrics", None, "");
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["error"]["code"], "metrics_disabled");
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--no-metrics")
    );
}
