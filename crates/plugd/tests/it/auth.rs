//! API tokens through the real binary: created offline before `serve` and through it, scopes
//! enforced per route (401 without a valid token, 403 without the scope), revocation, the
//! dashboard's session cookie, and `--auth required` with no token at all.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::http::{Answer, request};
use crate::{Run, Server, checkout_copy_of};

/// `plugd ARGS...` with `PLUGD_TOKEN=token` (none when empty).
fn plugd_as(token: &str, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plugd"));
    command
        .args(args)
        .env_remove("PLUGD_SERVER")
        .env_remove("PLUGD_STATE_DIR")
        .env_remove("PLUGD_TRUST_DIR")
        .env_remove("PLUGD_TOKEN")
        .stdin(Stdio::null());
    if !token.is_empty() {
        command.env("PLUGD_TOKEN", token);
    }
    let out = command.output().unwrap();
    Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// `plugd token create` offline on `state`; returns the secret (stdout's only line).
pub(crate) fn create_token(state: &Path, name: &str, scopes: &[&str]) -> String {
    let state = state.to_str().unwrap();
    let mut args = vec!["token", "create", "--state-dir", state, "--name", name];
    for scope in scopes {
        args.extend(["--scope", scope]);
    }
    let run = plugd_as("", &args);
    run.ok();
    assert!(run.stderr.contains("shown only this once"), "{run}");
    let token = run.stdout.trim().to_owned();
    assert!(token.starts_with("plugd_"), "{run}");
    token
}

fn http(server: &Server, method: &str, path: &str, headers: &[&str], body: &str) -> Answer {
    let authority = server.url.trim_start_matches("http://");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    request(authority, &head, body.as_bytes())
}

fn code(answer: &Answer) -> String {
    answer.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn tokens_gate_every_route_by_scope() {
    let (tmp, plugins) = checkout_copy_of(&["hello"]);
    let state = tmp.path().join("state");
    // Before the server exists: the first admin token, and narrower ones.
    let admin = create_token(&state, "admin", &["admin"]);
    let reader = create_token(&state, "reader", &["read"]);
    let greeter = create_token(&state, "greeter", &["call:hello/greet"]);
    let server = Server::start(&plugins, tmp.path());
    let url = server.url.as_str();

    // Health needs nothing; everything else needs a token once one exists.
    assert_eq!(http(&server, "GET", "/healthz", &[], "").status, 200);
    let anonymous = http(&server, "GET", "/api/v1/plugins", &[], "");
    assert_eq!(anonymous.status, 401);
    assert_eq!(code(&anonymous), "unauthorized");
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Bearer realm=\"plugd\"")
    );
    let run = plugd_as("", &["--server", url, "list"]);
    assert!(
        !run.success && run.stderr.contains("needs a token"),
        "{run}"
    );
    let run = plugd_as("plugd_forged", &["--server", url, "list"]);
    assert!(
        !run.success && run.stderr.contains("invalid_token"),
        "{run}"
    );

    // `read` lists but cannot call, change params or manage plugins.
    plugd_as(&reader, &["--server", url, "list"]).ok();
    let run = plugd_as(
        &reader,
        &[
            "--server",
            url,
            "call",
            "hello",
            "greet",
            r#"{"name":"Ada"}"#,
        ],
    );
    assert!(
        !run.success && run.stderr.contains("lacks the scope `call:hello/greet`"),
        "{run}"
    );
    let run = plugd_as(&reader, &["--server", url, "reload", "hello"]);
    assert!(!run.success && run.stderr.contains("`admin`"), "{run}");
    let metrics = http(
        &server,
        "GET",
        "/metrics",
        &[&format!("Authorization: Bearer {reader}")],
        "",
    );
    assert_eq!(metrics.status, 200);
    assert_eq!(http(&server, "GET", "/metrics", &[], "").status, 401);

    // `call:hello/greet` calls that action alone, and lists nothing.
    let run = plugd_as(
        &greeter,
        &[
            "--server",
            url,
            "call",
            "hello",
            "greet",
            r#"{"name":"Ada"}"#,
        ],
    );
    assert!(run.ok().stdout.contains("Ada"), "{run}");
    let run = plugd_as(&greeter, &["--server", url, "call", "hello", "echo", "{}"]);
    assert!(!run.success && run.stderr.contains("forbidden"), "{run}");
    assert_eq!(
        http(
            &server,
            "GET",
            "/api/v1/plugins",
            &[&format!("Authorization: Bearer {greeter}")],
            ""
        )
        .status,
        403
    );

    // Through the server with the admin token: create, use, revoke — revocation is immediate.
    let run = plugd_as(
        &admin,
        &[
            "--server", url, "token", "create", "--remote", "--name", "late", "--scope", "read",
        ],
    );
    let late = run.ok().stdout.trim().to_owned();
    plugd_as(&late, &["--server", url, "list"]).ok();
    let run = plugd_as(
        &admin,
        &["--server", url, "--json", "token", "list", "--remote"],
    );
    let listed: serde_json::Value = serde_json::from_str(&run.ok().stdout).unwrap();
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "reader", "greeter", "late"]);
    assert!(
        !run.stdout.contains("plugd_"),
        "a listing never shows a secret: {run}"
    );
    plugd_as(
        &admin,
        &["--server", url, "token", "revoke", "late", "--remote"],
    )
    .ok();
    let run = plugd_as(&late, &["--server", url, "list"]);
    assert!(
        !run.success && run.stderr.contains("invalid_token"),
        "{run}"
    );
    // A non-admin cannot manage tokens.
    let run = plugd_as(&reader, &["--server", url, "token", "list", "--remote"]);
    assert!(!run.success && run.stderr.contains("forbidden"), "{run}");

    // A token created offline while the server runs works at once.
    let offline = create_token(&state, "offline", &["read"]);
    plugd_as(&offline, &["--server", url, "list"]).ok();
}

#[test]
fn the_dashboard_session_is_an_http_only_cookie_that_ends_on_log_out() {
    let (tmp, plugins) = checkout_copy_of(&["hello"]);
    let state = tmp.path().join("state");
    let token = create_token(&state, "ui", &["read", "call:hello"]);
    let server = Server::start(&plugins, tmp.path());

    let refused = http(
        &server,
        "POST",
        "/api/v1/session",
        &["Content-Type: application/json"],
        r#"{"token":"plugd_nope"}"#,
    );
    assert_eq!(refused.status, 401);
    assert_eq!(code(&refused), "invalid_token");

    let login = http(
        &server,
        "POST",
        "/api/v1/session",
        &["Content-Type: application/json"],
        &format!(r#"{{"token":"{token}"}}"#),
    );
    assert_eq!(
        login.status,
        200,
        "{}",
        String::from_utf8_lossy(&login.body)
    );
    assert_eq!(
        login.json()["scopes"],
        serde_json::json!(["read", "call:hello"])
    );
    let set_cookie = login.header("set-cookie").unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3600"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains(&token), "the cookie is not the token");
    let cookie = format!("Cookie: {}", set_cookie.split(';').next().unwrap());

    let me = http(&server, "GET", "/api/v1/session", &[&cookie], "");
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["name"], "ui");
    assert_eq!(me.json()["auth_required"], true);
    assert_eq!(
        http(&server, "GET", "/api/v1/plugins", &[&cookie], "").status,
        200
    );
    let call = http(
        &server,
        "POST",
        "/plugin/hello/greet",
        &[&cookie, "Content-Type: application/json"],
        r#"{"name":"Bo"}"#,
    );
    assert_eq!(call.status, 200);
    // A state change another origin started is refused even with the cookie.
    let forged = http(
        &server,
        "POST",
        "/plugin/hello/greet",
        &[
            &cookie,
            "Origin: http://evil.example",
            "Content-Type: application/json",
        ],
        r#"{"name":"Bo"}"#,
    );
    assert_eq!(forged.status, 403);
    assert_eq!(code(&forged), "cross_origin");
    // So is a WebSocket handshake: a `GET`, but a channel both ways (a page on a plugin's
    // exposed port is same-site — sites ignore ports — so the browser sends the cookie).
    let upgrade = ["Connection: Upgrade", "Upgrade: websocket"];
    let hijack = http(
        &server,
        "GET",
        "/api/v1/plugins",
        &[
            &cookie,
            upgrade[0],
            upgrade[1],
            "Origin: http://127.0.0.1:10000",
        ],
        "",
    );
    assert_eq!(hijack.status, 403);
    assert_eq!(code(&hijack), "cross_origin");
    let plain_get = http(
        &server,
        "GET",
        "/api/v1/plugins",
        &[&cookie, "Origin: http://127.0.0.1:10000"],
        "",
    );
    assert_eq!(plain_get.status, 200, "a plain cross-origin GET only reads");

    let out = http(&server, "DELETE", "/api/v1/session", &[&cookie], "");
    assert_eq!(out.status, 204);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    let after = http(&server, "GET", "/api/v1/plugins", &[&cookie], "");
    assert_eq!(after.status, 401);
    assert!(String::from_utf8_lossy(&after.body).contains("session has ended"));
}

#[test]
fn auth_required_without_tokens_answers_only_health() {
    let (tmp, plugins) = checkout_copy_of(&["hello"]);
    let state = tmp.path().join("state");
    let server = Server::spawn(
        tmp.path(),
        &[
            OsStr::new("--plugins"),
            plugins.as_os_str(),
            OsStr::new("--state-dir"),
            state.as_os_str(),
            OsStr::new("--auth"),
            OsStr::new("required"),
            OsStr::new("--metrics-public"),
        ],
        &tmp.path().join("serve.log"),
    );
    assert_eq!(http(&server, "GET", "/healthz", &[], "").status, 200);
    assert_eq!(http(&server, "GET", "/readyz", &[], "").status, 200);
    assert_eq!(http(&server, "GET", "/metrics", &[], "").status, 200);
    assert_eq!(http(&server, "GET", "/api/v1/plugins", &[], "").status, 401);
    assert_eq!(
        http(&server, "POST", "/plugin/hello/greet", &[], "{}").status,
        401
    );
    // Unknown paths do not tell strangers what exists.
    assert_eq!(http(&server, "GET", "/nowhere", &[], "").status, 401);
    let me = http(&server, "GET", "/api/v1/session", &[], "");
    assert_eq!(me.status, 401);
}

#[test]
fn a_plugins_own_http_needs_its_scope_and_never_sees_plugd_credentials() {
    let tmp = crate::open_tempdir();
    let plugins = tmp.path().join("plugins");
    crate::http::web_plugin(&plugins, "web", "mount = \"/web-app\"\n");
    let state = tmp.path().join("state");
    crate::sign_and_trust(tmp.path(), &plugins, &state, &["web"]);
    let web = create_token(&state, "web-user", &["http:web"]);
    let reader = create_token(&state, "reader", &["read"]);
    let server = Server::start(&plugins, tmp.path());

    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    for path in ["/plugins/web/echo", "/web-app/echo"] {
        assert_eq!(http(&server, "GET", path, &[], "").status, 401, "{path}");
        let refused = http(&server, "GET", path, &[&bearer(&reader)], "");
        assert_eq!(refused.status, 403, "{path}");
        assert!(String::from_utf8_lossy(&refused.body).contains("`http:web`"));
        let seen = http(
            &server,
            "GET",
            path,
            &[&bearer(&web), "Cookie: theme=dark; plugd_session=abc"],
            "",
        );
        assert_eq!(seen.status, 200, "{path}");
        let headers = &seen.json()["headers"];
        assert!(headers.get("authorization").is_none(), "{headers}");
        assert_eq!(headers["cookie"], "theme=dark", "{path}");
    }
}
