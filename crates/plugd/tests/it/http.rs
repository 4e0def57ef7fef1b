//! Plugins' own HTTP sides through the real binary: `[http]` plugins behind `/plugins/NAME/...`,
//! a mount, and an exposed port. The plugin here is the standard library's `http.server` on the
//! listening socket plugd hands it (fd 4) beside the SDK's actions, so every byte on the wire is
//! under the test's control: header hygiene, streaming both ways (a slow upload, Server-Sent
//! Events), a WebSocket conversation relayed frame by frame, the body limit, a plugin that hangs
//! (504) or dies mid-request (502) without touching its neighbour.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Server, open_tempdir};

/// A plugin serving HTTP with the standard library on fd 4 (and one action through the SDK).
const WEB_PY: &str = r#"import base64, hashlib, json, os, socket, struct, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from plugd import Plugin

plugin = Plugin()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def address_string(self):
        return "proxy"

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("keep-alive", "timeout=5")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/echo"):
            headers = {k.lower(): v for k, v in self.headers.items()}
            self.reply(200, {"path": self.path, "headers": headers, "plugin": os.environ["PLUGD_PLUGIN"], "version": self.request_version})
        elif self.path == "/health":
            self.reply(200, {"status": "ok"})
        elif self.path == "/sse":
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(3):
                event = f"data: {i}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/hang":
            time.sleep(30)
        elif self.path == "/die":
            os._exit(3)
        elif self.path == "/ws":
            self.websocket()
        else:
            self.reply(404, {"error": "no such path"})

    def do_POST(self):
        if self.path == "/upload":
            total = chunks = 0
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    total += len(self.rfile.read(size))
                    self.rfile.readline()
                    chunks += 1
            else:
                left = int(self.headers["content-length"])
                while left:
                    got = self.rfile.read1(min(left, 65536))
                    if not got:
                        break
                    left -= len(got)
                    total += len(got)
                    chunks += 1
            self.reply(200, {"bytes": total, "reads": chunks})
        else:
            self.reply(404, {"error": "no such path"})

    def websocket(self):
        key = self.headers["sec-websocket-key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", accept)
        self.end_headers()
        self.wfile.flush()
        conn = self.rfile
        while True:
            head = conn.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", conn.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", conn.read(8))[0]
            mask = conn.read(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(conn.read(length)))
            if opcode == 8:
                self.wfile.write(bytes([0x88, 0]))
                self.wfile.flush()
                return
            if opcode == 1:
                data = ("echo: " + data.decode()).encode()
            n = len(data)
            header = bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack("!H", n) if n < 65536 else bytes([127]) + struct.pack("!Q", n))
            self.wfile.write(header + data)
            self.wfile.flush()

class UnixServer(ThreadingHTTPServer):
    # The sandbox refuses AF_INET sockets; this one only adopts the listener plugd handed over.
    address_family = socket.AF_UNIX

    def server_bind(self):
        pass

server = UnixServer(("", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=int(os.environ["PLUGD_HTTP_FD"]))
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()

@plugin.action()
async def ping(payload):
    return "pong"

plugin.run()
"#;

pub(crate) fn web_plugin(plugins: &Path, name: &str, http: &str) {
    let dir = plugins.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        format!(
            "[plugin]\nname = \"{name}\"\nversion = \"1.0.0\"\nruntime = \"process\"\nentry = [\"python3\", \"main.py\"]\n\n[http]\n{http}"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("main.py"), WEB_PY).unwrap();
}

/// `plugd serve` of `TMP/plugins` with its state in `TMP/state`, plus `extra` flags.
fn serve(tmp: &Path, extra: &[&str]) -> Server {
    let (plugins, state) = (tmp.join("plugins"), tmp.join("state"));
    let mut args = vec![
        OsStr::new("--plugins"),
        plugins.as_os_str(),
        OsStr::new("--state-dir"),
        state.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    Server::spawn(tmp, &args, &tmp.join("serve.log"))
}

/// A TCP port free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Polls `done` until it holds; fails naming `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 exchange on a fresh connection: status, headers (lower-case names), body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn connect(authority: &str) -> TcpStream {
    let stream = TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Reads a response head, then its body (content-length, chunked, or to the end).
fn read_answer(reader: &mut BufReader<TcpStream>) -> Answer {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = get("content-length") {
        body.resize(len.parse().unwrap(), 0);
        reader.read_exact(&mut body).unwrap();
    } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Answer {
        status,
        headers,
        body,
    }
}

pub(crate) fn request(authority: &str, head: &str, body: &[u8]) -> Answer {
    let mut stream = connect(authority);
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    read_answer(&mut BufReader::new(stream))
}

fn get(authority: &str, path: &str) -> Answer {
    request(
        authority,
        &format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"),
        b"",
    )
}

fn authority(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

#[test]
fn a_plugin_serves_http_under_its_path_and_its_mount_with_clean_headers() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    web_plugin(
        &plugins,
        "web",
        "mount = \"/web-app\"\nhealth = \"/health\"\n",
    );
    // Untrusted: its mount is denied, it lives under `/plugins/other` only.
    web_plugin(&plugins, "other", "mount = \"/other\"\n");
    // Its mount would take `/web-app/...` away from `web`: it does not start, and says why.
    web_plugin(&plugins, "web-sub", "mount = \"/web-app/sub\"\n");
    crate::sign_and_trust(
        tmp.path(),
        &plugins,
        &tmp.path().join("state"),
        &["web", "web-sub"],
    );
    let server = Server::start(&plugins, tmp.path());
    let at = authority(&server);
    assert_eq!(get(&at, "/other/echo").status, 404);
    assert_eq!(get(&at, "/plugins/other/echo").json()["plugin"], "other");
    let other = server.cli(&["status", "other"]);
    assert!(
        other
            .stdout
            .contains("Denied `[http] mount = \"/other\"` for untrusted plugin `other`"),
        "{other}"
    );
    let states = server.states();
    assert!(
        states.contains(&("web-sub".into(), "failed".into())),
        "{states:?}"
    );
    let clash = server.cli(&["status", "web-sub"]);
    assert!(
        clash.stdout.contains(
            "Plugin `web-sub` cannot mount its HTTP side at `/web-app/sub`: plugin `web` is mounted at `/web-app`"
        ),
        "{clash}"
    );

    // Under `/plugins/NAME`: the prefix is stripped and sent as X-Forwarded-Prefix; what a client
    // claims in X-Forwarded-* and hop-by-hop headers never reaches the plugin.
    let answer = request(
        &at,
        &format!(
            "GET /plugins/web/echo?x=1 HTTP/1.1\r\nHost: {at}\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Prefix: /evil\r\nConnection: close, x-drop-me\r\nX-Drop-Me: 1\r\nTE: trailers\r\n\r\n"
        ),
        b"",
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let seen = answer.json();
    assert_eq!(seen["path"], "/echo?x=1");
    assert_eq!(seen["plugin"], "web");
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-prefix"], "/plugins/web");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], at.as_str());
    assert!(h.get("x-drop-me").is_none(), "{h}");
    assert!(h.get("te").is_none(), "{h}");
    // The plugin's hop-by-hop `keep-alive` does not reach the client; the version does.
    assert_eq!(answer.header("keep-alive"), None);
    assert_eq!(answer.header("x-plugd-version"), Some("1.0.0"));

    // The mount, and the bare prefix.
    let mounted = get(&at, "/web-app/echo").json();
    assert_eq!(mounted["path"], "/echo");
    assert_eq!(mounted["headers"]["x-forwarded-prefix"], "/web-app");
    assert_eq!(get(&at, "/plugins/web").json()["error"], "no such path");
    // A mount matches whole segments only.
    assert_eq!(get(&at, "/web-apple").status, 404);
    // A name written percent-encoded is not the plugin's path.
    assert_eq!(get(&at, "/plugins/w%65b/echo").status, 404);
    // Without a `Host` (HTTP/1.0), or with `Connection` naming it, the plugin sees a neutral
    // one, never the host's socket path.
    let bare = request(&at, "GET /plugins/web/echo HTTP/1.0\r\n\r\n", b"");
    assert_eq!(bare.json()["headers"]["host"], "localhost");
    // The plugin is always spoken to in HTTP/1.1: an HTTP/1.0 request would make it close the
    // pooled connection, and the next request could pick that connection up as it closes.
    assert_eq!(bare.json()["version"], "HTTP/1.1");
    let sly = request(
        &at,
        &format!("GET /plugins/web/echo HTTP/1.1\r\nHost: {at}\r\nConnection: close, host\r\n\r\n"),
        b"",
    );
    assert_eq!(sly.status, 200, "{}", String::from_utf8_lossy(&sly.body));
    assert_eq!(sly.json()["headers"]["host"], at.as_str());

    // Actions still answer beside the HTTP side.
    assert_eq!(
        request(
            &at,
            &format!("POST /plugin/web/ping HTTP/1.1\r\nHost: {at}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"),
            b"{}",
        )
        .json()["value"],
        "pong"
    );
    // A plugin without `[http]`, or unknown: clear errors.
    let hello = get(&at, "/plugins/nope/x");
    assert_eq!(hello.status, 404);
    assert_eq!(hello.json()["error"]["code"], "plugin_not_found");

    // The health check shows in status.
    let started = Instant::now();
    loop {
        let status = server.cli(&["status", "web"]);
        if status
            .stdout
            .contains("http health (/health): ok: GET /health: 200 OK")
        {
            assert!(
                status.stdout.contains("http: /plugins/web, /web-app"),
                "{status}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no health check shown: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn bodies_stream_both_ways_and_websockets_are_relayed() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    web_plugin(&plugins, "web", "");
    let server = serve(tmp.path(), &["--http-max-body", "100000"]);
    let at = authority(&server);

    // A slow upload, chunked, in ten pieces with pauses: it reaches the plugin whole.
    let mut stream = connect(&at);
    write!(
        stream,
        "POST /plugins/web/upload HTTP/1.1\r\nHost: {at}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    for _ in 0..10 {
        let piece = vec![b'x'; 5000];
        write!(stream, "{:x}\r\n", piece.len()).unwrap();
        stream.write_all(&piece).unwrap();
        stream.write_all(b"\r\n").unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let upload = read_answer(&mut BufReader::new(stream));
    assert_eq!(upload.status, 200);
    assert_eq!(upload.json()["bytes"], 50_000);

    // Over the body limit: 413, whether the length is declared or not.
    let big = vec![b'y'; 150_000];
    let declared = request(
        &at,
        &format!(
            "POST /plugins/web/upload HTTP/1.1\r\nHost: {at}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            big.len()
        ),
        &big,
    );
    assert_eq!(declared.status, 413);
    assert_eq!(declared.json()["error"]["code"], "payload_too_large");
    let mut chunked = format!(
        "POST /plugins/web/upload HTTP/1.1\r\nHost: {at}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        big.len()
    )
    .into_bytes();
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let undeclared = request(&at, "", &chunked);
    assert_eq!(undeclared.status, 413);

    // Server-Sent Events stream through: the first event arrives while the plugin is still
    // writing the rest (it pauses 300 ms between events).
    let mut stream = connect(&at);
    write!(
        stream,
        "GET /plugins/web/sse HTTP/1.1\r\nHost: {at}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        reader.read_line(&mut head).unwrap();
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let mut size = String::new();
    reader.read_line(&mut size).unwrap();
    let mut first = vec![0; usize::from_str_radix(size.trim(), 16).unwrap()];
    reader.read_exact(&mut first).unwrap();
    assert_eq!(first, b"data: 0\n\n");
    assert_eq!(
        reader.buffer().len(),
        2,
        "only the chunk's CRLF may follow the first event yet: the rest is still being written"
    );
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("data: 1") && rest.contains("data: 2"),
        "{rest}"
    );

    // A WebSocket conversation, text and binary, through the proxy.
    let (mut ws, response) =
        tungstenite::connect(format!("ws://{at}/plugins/web/ws")).expect("websocket handshake");
    assert_eq!(response.status(), 101);
    for i in 0..5 {
        ws.send(tungstenite::Message::text(format!("hello {i}")))
            .unwrap();
        assert_eq!(
            ws.read().unwrap(),
            tungstenite::Message::text(format!("echo: hello {i}"))
        );
    }
    let blob: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
    ws.send(tungstenite::Message::binary(blob.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::binary(blob));
    ws.close(None).unwrap();
}

#[test]
fn a_plugin_that_hangs_or_dies_mid_request_gets_504_or_502_and_its_neighbour_serves_on() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    web_plugin(&plugins, "web", "");
    web_plugin(&plugins, "other", "");
    let server = serve(tmp.path(), &["--http-timeout", "1"]);
    let at = authority(&server);

    let hang = get(&at, "/plugins/web/hang");
    assert_eq!(hang.status, 504);
    let error = &hang.json()["error"];
    assert_eq!(error["code"], "plugin_timeout");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("Plugin `web` did not answer within 1 s"),
        "{error}"
    );

    let die = get(&at, "/plugins/web/die");
    assert_eq!(die.status, 502, "{}", String::from_utf8_lossy(&die.body));
    let error = &die.json()["error"];
    assert_eq!(error["code"], "plugin_unreachable");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("Plugin `web` closed the connection without answering"),
        "{error}"
    );
    // The neighbour never noticed.
    assert_eq!(get(&at, "/plugins/other/echo").json()["plugin"], "other");
    // The crashed plugin is restarted by its runtime and serves HTTP again.
    wait_for("web never served again", Duration::from_secs(30), || {
        get(&at, "/plugins/web/health").status == 200
    });
}

#[test]
fn an_exposed_port_serves_a_trusted_plugin_and_never_an_untrusted_one() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    let (port, remapped, untrusted_port) = (free_port(), free_port(), free_port());
    web_plugin(&plugins, "web", &format!("expose = {port}\n"));
    web_plugin(&plugins, "moved", &format!("expose = {port}\n"));
    web_plugin(
        &plugins,
        "stranger",
        &format!("expose = {untrusted_port}\n"),
    );
    // `web` and `moved` are signed and trusted; `stranger` is not.
    let state = tmp.path().join("state");
    crate::sign_and_trust(tmp.path(), &plugins, &state, &["web", "moved"]);
    let server = serve(
        tmp.path(),
        &[
            "--allow-expose",
            &port.to_string(),
            "--allow-expose",
            &untrusted_port.to_string(),
            "--expose",
            &format!("moved={remapped}"),
        ],
    );

    // The exposed port goes straight to the plugin, unprefixed.
    let direct = get(&format!("127.0.0.1:{port}"), "/echo").json();
    assert_eq!(direct["plugin"], "web");
    assert_eq!(direct["path"], "/echo");
    assert!(direct["headers"].get("x-forwarded-prefix").is_none());
    // The operator moved `moved` to another port without touching its signed manifest.
    assert_eq!(
        get(&format!("127.0.0.1:{remapped}"), "/echo").json()["plugin"],
        "moved"
    );
    // An untrusted plugin is never exposed (it stays reachable under /plugins/NAME), and says so.
    let refused = get(&format!("127.0.0.1:{untrusted_port}"), "/echo");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["code"], "not_exposed");
    assert_eq!(
        get(&authority(&server), "/plugins/stranger/echo").json()["plugin"],
        "stranger"
    );
    let logs = server.cli(&["status", "stranger"]);
    assert!(logs.stdout.contains("Denied `[http] expose"), "{logs}");

    // Browsers send the dashboard's session cookie to every port of its host: the plugin
    // behind an exposed port never sees it; its own cookies pass.
    let exposed = format!("127.0.0.1:{port}");
    let echo_as = |headers: &str| {
        request(
            &exposed,
            &format!("GET /echo HTTP/1.1\r\nHost: {exposed}\r\n{headers}Connection: close\r\n\r\n"),
            b"",
        )
    };
    let seen = echo_as("Cookie: plugd_session=abc; theirs=1\r\n").json();
    assert_eq!(seen["headers"]["cookie"], "theirs=1", "{seen}");

    // With auth on, an exposed port is judged as the plugin's `/plugins/NAME` routes are.
    let token = crate::auth::create_token(&state, "web", &["http:web"]);
    // (A token made offline is seen by the server's next refresh of its token map.)
    wait_for("auth never came on", Duration::from_secs(15), || {
        echo_as("").status == 401
    });
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    let allowed = echo_as(&bearer(&token));
    assert_eq!(allowed.status, 200);
    let seen = allowed.json();
    assert_eq!(seen["plugin"], "web");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    // A token for another plugin's HTTP side is not one for this one.
    let other = crate::auth::create_token(&state, "moved", &["http:moved"]);
    let refused = echo_as(&bearer(&other));
    assert_eq!(
        refused.status,
        403,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(
        get_as(&format!("127.0.0.1:{remapped}"), "/echo", &other).json()["plugin"],
        "moved"
    );
    // A port with no plugin on it tells a stranger nothing.
    assert_eq!(
        get(&format!("127.0.0.1:{untrusted_port}"), "/echo").status,
        401
    );
}

/// [`get`] with a bearer token.
fn get_as(authority: &str, path: &str, token: &str) -> Answer {
    request(
        authority,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
        b"",
    )
}

/// The next text message on `ws`, as JSON.
fn next_json(
    ws: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
) -> Value {
    loop {
        match ws.read().expect("a message") {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn the_client_manager_example_serves_rest_websockets_and_sse_through_plugd() {
    // The example as shipped: FastAPI and uvicorn from its requirements.txt, installed by plugd
    // into its own environment (from PyPI), signed and trusted so its mount and port apply.
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    crate::copy_dir(
        &crate::repo().join("examples/plugins/client-manager"),
        &plugins.join("client-manager"),
    );
    let _ = std::fs::remove_dir_all(plugins.join("client-manager/__pycache__"));
    let state = tmp.path().join("state");
    crate::sign_and_trust(tmp.path(), &plugins, &state, &["client-manager"]);
    let port = free_port();
    let server = serve(tmp.path(), &["--expose", &format!("client-manager={port}")]);
    let at = authority(&server);
    let states = server.states();
    assert_eq!(
        states,
        [("client-manager".to_owned(), "running".to_owned())],
        "{}",
        server.log()
    );

    let health = get(&at, "/plugins/client-manager/health");
    assert_eq!(health.status, 200);
    assert_eq!(
        health.json(),
        serde_json::json!({"status": "ok", "clients": 0})
    );

    // Alice through the mount, Bob through the exposed port: one hub.
    let (mut alice, _) = tungstenite::connect(format!("ws://{at}/client-manager/ws/alice"))
        .expect("alice connects through the mount");
    let (mut bob, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}/ws/bob"))
        .expect("bob connects through the exposed port");
    let listed = get(&at, "/client-manager/api/clients").json();
    let mut ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["alice", "bob"], "{listed}");

    // Alice's WebSocket (the main port) was handed over to the plugin, so plugd relays none of
    // its frames; bob's (an exposed port) is relayed. Both reach the same app.
    assert_eq!(handoffs(&at), 1);

    alice.send(tungstenite::Message::text("hello bob")).unwrap();
    let expected = serde_json::json!({"from": "alice", "message": "hello bob"});
    assert_eq!(next_json(&mut bob), expected);
    assert_eq!(next_json(&mut alice), expected);

    // The plugin's actions share the app's state.
    let sent = request(
        &at,
        &format!(
            "POST /plugin/client-manager/broadcast HTTP/1.1\r\nHost: {at}\r\nContent-Type: application/json\r\nContent-Length: 25\r\nConnection: close\r\n\r\n"
        ),
        br#"{"message": "from plugd"}"#,
    );
    assert_eq!(
        sent.json()["value"],
        2,
        "{}",
        String::from_utf8_lossy(&sent.body)
    );
    let expected = serde_json::json!({"from": null, "message": "from plugd"});
    assert_eq!(next_json(&mut alice), expected);
    assert_eq!(next_json(&mut bob), expected);

    // Server-Sent Events through the proxy.
    let events = get(&at, "/plugins/client-manager/api/stream?n=3&interval=20");
    assert_eq!(
        events.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let text = String::from_utf8(events.body).unwrap();
    let data: Vec<&str> = text.lines().filter(|l| l.starts_with("data: ")).collect();
    assert_eq!(
        data,
        [
            r#"data: {"i": 0}"#,
            r#"data: {"i": 1}"#,
            r#"data: {"i": 2}"#
        ]
    );

    // Clients that leave are unregistered.
    alice.close(None).unwrap();
    bob.close(None).unwrap();
    wait_for("clients never left", Duration::from_secs(10), || {
        get(&at, "/plugins/client-manager/health").json()["clients"] == 0
    });

    // With auth on, a WebSocket is judged before it is handed over: refused without a token
    // (by the router, as any request), handed over with one.
    let token = crate::auth::create_token(&state, "ws", &["http:client-manager"]);
    let handshake = format!(
        "GET /plugins/client-manager/ws-echo HTTP/1.1\r\nHost: {at}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    // (A token made offline is seen by the server's next refresh of its token map.)
    wait_for("auth never came on", Duration::from_secs(15), || {
        request(&at, &handshake, b"").status == 401
    });
    let admin = crate::auth::create_token(&state, "admin", &["admin"]);
    let before = handoffs_as(&at, Some(&admin));
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{at}/plugins/client-manager/ws-echo"
    ))
    .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut echo, _) = tungstenite::connect(req).expect("a WebSocket with the token");
    echo.send(tungstenite::Message::text("once more")).unwrap();
    match echo.read().expect("an echo") {
        tungstenite::Message::Text(t) => assert_eq!(t.as_str(), "once more"),
        other => panic!("unexpected {other:?}"),
    }
    echo.close(None).unwrap();
    assert_eq!(handoffs_as(&at, Some(&admin)), before + 1);
    // Refused ones were not.
    assert_eq!(request(&at, &handshake, b"").status, 401);
    assert_eq!(handoffs_as(&at, Some(&admin)), before + 1);

    // A handed-over connection carries the handshake and nothing after it: a request written
    // behind a handshake the plugin refuses (no WebSocket at `/health`) is never served, so it
    // cannot slip past auth (it has no token) on the plugin's side of the connection.
    let mut conn = connect(&at);
    let smuggled = format!(
        "GET /plugins/client-manager/health HTTP/1.1\r\nHost: {at}\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nGET /plugins/client-manager/api/clients HTTP/1.1\r\nHost: {at}\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"
    );
    conn.write_all(smuggled.as_bytes()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answers = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match conn.read(&mut chunk) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the connection stayed open after a refused handshake")
            }
            Ok(0) | Err(_) => break, // closed (a reset too: the smuggled bytes stayed unread)
            Ok(n) => answers.extend_from_slice(&chunk[..n]),
        }
    }
    let answers = String::from_utf8_lossy(&answers);
    assert_eq!(handoffs_as(&at, Some(&admin)), before + 2, "{answers}");
    assert_eq!(answers.matches("HTTP/1.1 ").count(), 1, "{answers}");
    assert!(answers.starts_with("HTTP/1.1 403 "), "{answers}");

    // Whatever else of the host's uid reaches the plugin's socket (another plugin, when the
    // sandbox's uid and mount layers are off; this test runs as that uid) lacks the secret the
    // plugin gave plugd, and is refused; the hand-off channel has no path at all.
    let sockets: Vec<_> = std::fs::read_dir(state.join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    assert!(
        sockets[0].extension().is_some_and(|e| e == "sock"),
        "{sockets:?}"
    );
    let mut direct = std::os::unix::net::UnixStream::connect(&sockets[0]).unwrap();
    direct
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    direct
        .write_all(b"GET /api/clients HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 127.0.0.1\r\nX-Plugd-Secret: guess\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    direct.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(answer.contains(r#""code":"forbidden""#), "{answer}");

    // One that can write `STATE/run` (no Landlock: `--no-sandbox`) and puts its own listener at
    // the path gets no request and no secret: plugd connects through the socket it pinned at
    // the bind, never by path. Eight requests at once need more connections than the pool
    // holds idle, so some are new; all reach the plugin.
    std::fs::rename(&sockets[0], sockets[0].with_extension("aside")).unwrap();
    let impostor = std::os::unix::net::UnixListener::bind(&sockets[0]).unwrap();
    impostor.set_nonblocking(true).unwrap();
    let stream = format!(
        "GET /plugins/client-manager/api/stream?n=2&interval=300 HTTP/1.1\r\nHost: {at}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let (at, stream) = (&at, &stream);
        let streams: Vec<_> = (0..8)
            .map(|_| s.spawn(move || request(at, stream, b"")))
            .collect();
        streams.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for answer in &answers {
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(
            String::from_utf8_lossy(&answer.body)
                .matches("data: ")
                .count(),
            2
        );
    }
    assert!(
        impostor.accept().is_err(),
        "plugd connected to the impostor"
    );
}

/// `plugd_http_handoffs_total` of client-manager, from `/metrics`.
fn handoffs(at: &str) -> u64 {
    handoffs_as(at, None)
}

fn handoffs_as(at: &str, token: Option<&str>) -> u64 {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let answer = request(
        at,
        &format!("GET /metrics HTTP/1.1\r\nHost: {at}\r\n{auth}Connection: close\r\n\r\n"),
        b"",
    );
    assert_eq!(answer.status, 200);
    let text = String::from_utf8(answer.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(r#"plugd_http_handoffs_total{plugin="client-manager"} "#))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A hostile plugin that claims WebSocket hand-offs (without `serve_asgi`) and tries to turn the
/// client socket it is handed, which belongs to the host's network namespace, into a way out of
/// its own empty one. `report` returns what each attempt got.
const SNEAKY_PY: &str = r#"import ctypes, errno, fcntl, os, socket, struct, threading
from plugd import Plugin

plugin = Plugin()
results = {}
libc = ctypes.CDLL(None, use_errno=True)

def attempt(name, fn):
    try:
        fn()
        results[name] = "ok"
    except OSError as e:
        results[name] = errno.errorcode.get(e.errno, str(e.errno))

def disconnect(fd):
    addr = struct.pack("H14x", socket.AF_UNSPEC)
    if libc.connect(fd, addr, len(addr)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))

def attack(sock):
    _, port = sock.getsockname()  # plugd's own port, on the host's loopback
    attempt("ifconf", lambda: fcntl.ioctl(sock.fileno(), 0x8912, struct.pack("iP", 0, 0)))
    attempt("disconnect", lambda: disconnect(sock.fileno()))
    attempt("connect", lambda: sock.connect(("127.0.0.1", port)))
    attempt("fastopen", lambda: sock.sendto(b"x", socket.MSG_FASTOPEN, ("127.0.0.1", port)))
    attempt("listen", lambda: sock.listen(1))
    sock.close()

def take_handoffs():
    channel = socket.socket(fileno=int(os.environ["PLUGD_HANDOFF_FD"]))
    while True:
        head, ancdata, _, _ = channel.recvmsg(65536, socket.CMSG_SPACE(4))
        fd = struct.unpack("i", ancdata[0][2][:4])[0]
        results["head"] = head.decode().split("\r\n")[0]
        attack(socket.socket(fileno=fd))
        results["done"] = True

threading.Thread(target=take_handoffs, daemon=True).start()

send_request = plugin._send_request
plugin._send_request = lambda method, params: send_request(
    method, dict(params, http_handoff=True) if method == "hello" else params)

@plugin.action()
def report(payload):
    return results

plugin.run()
"#;

#[test]
fn a_handed_over_socket_opens_no_way_out_of_an_untrusted_plugins_sandbox() {
    let tmp = open_tempdir();
    let plugins = tmp.path().join("plugins");
    web_plugin(&plugins, "sneaky", "");
    std::fs::write(plugins.join("sneaky/main.py"), SNEAKY_PY).unwrap();
    let server = serve(tmp.path(), &[]);
    let at = authority(&server);
    assert_eq!(
        server.states(),
        [("sneaky".to_owned(), "running".to_owned())],
        "{}",
        server.log()
    );
    let status = server.cli(&["--json", "status", "sneaky"]);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    let handoff = status["plugin"]["details"]["http.handoff"]
        .as_str()
        .unwrap_or_default();
    if handoff.starts_with("off:") {
        // This kernel's Landlock cannot confine a handed socket: plugd relays instead (and the
        // plugin, which does not serve its HTTP socket, never sees the connection).
        return;
    }
    assert!(handoff.starts_with("on:"), "{status}");

    // One write: a head that arrives in pieces too far apart is relayed, not handed over.
    let mut client = connect(&at);
    client
        .write_all(format!(
            "GET /plugins/sneaky/ws HTTP/1.1\r\nHost: {at}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ).as_bytes())
        .unwrap();
    let report = || {
        request(
            &at,
            &format!(
                "POST /plugin/sneaky/report HTTP/1.1\r\nHost: {at}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
            ),
            b"{}",
        )
        .json()["value"]
            .clone()
    };
    let started = Instant::now();
    while report()["done"] != true {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the plugin never got the socket: {}\n{}",
            report(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = report();
    assert_eq!(got["head"], "GET /ws HTTP/1.1", "{got}");
    // It may drop its own client, but not reach anything with the socket: no interface list
    // (seccomp), no connect or TCP Fast Open to the host's ports (Landlock), no listener.
    assert_eq!(got["disconnect"], "ok", "{got}");
    assert_eq!(got["ifconf"], "EPERM", "{got}");
    assert_eq!(got["connect"], "EACCES", "{got}");
    assert_eq!(got["fastopen"], "EACCES", "{got}");
    assert_ne!(got["listen"], "ok", "{got}");
    // The host serves on.
    assert_eq!(get(&at, "/healthz").status, 200);
}
