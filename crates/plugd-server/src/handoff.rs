//! The WebSocket hand-off: a WebSocket to a plugin's own HTTP side leaves the host's data path.
//!
//! A relay (client → plugd → plugin and back) wakes plugd twice per message; no relay meets a
//! round trip within 1.2× of the app served directly on this kind of machine (bench/README.md,
//! issue 13). So [`HandoffListener`] looks at the first bytes of every new connection before
//! hyper does (`MSG_PEEK`: nothing is consumed). When they are a complete WebSocket handshake
//! (`GET`, HTTP/1.1, `Connection: upgrade`, `Upgrade: websocket`, no body) to
//! `/plugins/NAME/...` or a plugin's `[http] mount`, the plugin runs and said `http_handoff` in
//! its `hello`, and the request passes auth exactly as the router would judge it, the head is
//! read off the socket, rewritten as the proxy forwards a request (prefix stripped,
//! `X-Forwarded-*` and the plugin's `X-Plugd-Secret` set, plugd's credentials removed), and
//! sent with the client's TCP socket (`SCM_RIGHTS`) on the plugin's hand-off channel (a socket
//! pair; only the host holds this end). The plugin's server (the Python SDK's uvicorn) then
//! serves the connection from that head on, handshake included: plugd sees none of its frames.
//!
//! Anything else goes to hyper untouched, and a WebSocket that was not handed over is relayed
//! as before: a head still incomplete ~60 ms after its first bytes (or over 16 KiB), a plugin
//! that does not take hand-offs, a request auth refuses (hyper then answers the refusal,
//! counted and logged as usual), a hand-off channel that is full or closed. Exposed ports
//! (`[http] expose`) always relay.
//!
//! What changes for a handed-over WebSocket: the plugin holds the connection, so a reload's
//! drain does not wait for it (the old version closes it when it stops, as it would cut a
//! relayed one), and a plugin that hangs leaves the client waiting for its `101` rather than
//! getting plugd's 504. The client socket is the host's network namespace's; a confined plugin
//! can read and write it but, under Landlock's TCP rules, not re-connect it, bind it or listen
//! on it (ARCHITECTURE.md, "WebSocket hand-off").

use std::io::{IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use plugd_host::Host;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::Auth;

/// The largest request head looked at; a longer one is relayed.
const MAX_HEAD: usize = 16 * 1024;
/// The most headers a handed-over head may have.
const MAX_HEADERS: usize = 64;
/// How long a new connection may stay silent before it goes to hyper without a look (hyper
/// then waits for it as it would have).
const PEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// Handed-over WebSockets, by plugin.
pub(crate) const HTTP_HANDOFFS: &str = "plugd_http_handoffs_total";

/// What the hand-off needs from the server: the host (routes, plugins) and the router's auth.
/// Made by [`crate::app`] with its router, so both judge with the same tokens and sessions.
#[derive(Clone)]
pub struct Handoff {
    host: Host,
    auth: Auth,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff").finish_non_exhaustive()
    }
}

impl Handoff {
    pub(crate) fn new(host: Host, auth: Auth) -> Handoff {
        Handoff { host, auth }
    }
}

/// A TCP listener for `axum::serve` that hands WebSockets to plugins (see the module's doc) and
/// yields every other connection, unread, to hyper.
pub struct HandoffListener {
    connections: mpsc::Receiver<(TcpStream, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl HandoffListener {
    /// Accepts on `listener` from now on (in a task of its own, ended when this is dropped).
    pub fn new(listener: TcpListener, handoff: Handoff) -> std::io::Result<HandoffListener> {
        let local = listener.local_addr()?;
        let (tx, connections) = mpsc::channel(64);
        let accepting = tokio::spawn(accept_loop(listener, tx, Arc::new(handoff)));
        Ok(HandoffListener {
            connections,
            local,
            accepting,
        })
    }
}

impl Drop for HandoffListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for HandoffListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop ended (it never does by itself): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    tx: mpsc::Sender<(TcpStream, SocketAddr)>,
    handoff: Arc<Handoff>,
) {
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        // No plugin serves HTTP: nothing to look at, straight to hyper.
        if !handoff.host.serves_http() {
            if tx.send((stream, addr)).await.is_err() {
                return;
            }
            continue;
        }
        let (tx, handoff) = (tx.clone(), handoff.clone());
        tokio::spawn(async move {
            let stream = tokio::select! {
                sorted = handoff.sort(stream, addr) => sorted,
                // The server stopped accepting: a connection still silent is dropped.
                () = tx.closed() => None,
            };
            if let Some(stream) = stream {
                let _ = tx.send((stream, addr)).await;
            }
        });
    }
}

/// As axum's own listener: a connection-level error is the client's; others (out of file
/// descriptors) are logged and retried after a pause.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A WebSocket handshake found in a connection's first bytes.
#[derive(Debug, PartialEq)]
struct Head {
    /// Its length in bytes (what is read off the socket when it is handed over).
    len: usize,
    /// The request target (path and query), as sent.
    target: String,
    headers: HeaderMap,
    /// The `Upgrade` value.
    upgrade: HeaderValue,
}

/// Where a handed-over request goes.
#[derive(Debug, PartialEq)]
struct Target {
    plugin: String,
    /// What is stripped from the path (`/plugins/NAME` or the mount).
    prefix: String,
    /// The router's route for it (`None`: a mount, the router's fallback).
    route: Option<&'static str>,
}

enum Sorted {
    /// Not handed over: hyper serves it.
    Hyper(TcpStream),
    /// Handed over, or answered and closed.
    Gone,
}

impl Handoff {
    /// Looks at the first bytes of `stream`: hands a WebSocket over, or gives it back for hyper.
    /// `None`: the connection is gone (handed over, or closed by the client).
    async fn sort(&self, stream: TcpStream, addr: SocketAddr) -> Option<TcpStream> {
        // Nothing is allocated for a connection that stays silent: thousands of idle ones must
        // not hold a head buffer each.
        match tokio::time::timeout(PEEK_TIMEOUT, stream.readable()).await {
            Err(_) => return Some(stream),
            Ok(Err(_)) => return None,
            Ok(Ok(())) => {}
        }
        let mut buf = vec![0u8; MAX_HEAD];
        let mut n = match stream.peek(&mut buf).await {
            Err(_) | Ok(0) => return None,
            Ok(n) => n,
        };
        // A `GET` head written in pieces (a client that formats it with several writes) is
        // looked at again a few times, for at most ~60 ms in all, before it goes to hyper.
        let mut pause = Duration::from_millis(2);
        while n < MAX_HEAD
            && buf.starts_with(b"GET ")
            && matches!(head_state(&buf[..n]), HeadState::Partial)
            && pause <= Duration::from_millis(32)
        {
            tokio::time::sleep(pause).await;
            pause *= 2;
            n = match stream.peek(&mut buf).await {
                Err(_) | Ok(0) => return None,
                Ok(n) => n,
            };
        }
        let Some(head) = parse_head(&buf[..n]) else {
            return Some(stream);
        };
        drop(buf);
        match self.hand_off(stream, addr, head).await {
            Sorted::Hyper(stream) => Some(stream),
            Sorted::Gone => None,
        }
    }

    async fn hand_off(&self, stream: TcpStream, addr: SocketAddr, head: Head) -> Sorted {
        let path = head.target.split('?').next().unwrap_or_default();
        let Some(target) = route(&self.host, path) else {
            return Sorted::Hyper(stream);
        };
        let Ok(endpoint) = self.host.http_endpoint(&target.plugin) else {
            return Sorted::Hyper(stream);
        };
        let Some(channel) = endpoint.handoff.clone() else {
            return Sorted::Hyper(stream);
        };
        // Judged as the router would judge it; a refusal is hyper's to answer (and count).
        let Ok(uri) = Uri::try_from(head.target.as_str()) else {
            return Sorted::Hyper(stream);
        };
        let mut req = Request::new(Body::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = uri;
        *req.headers_mut() = head.headers;
        if self.auth.judge_route(&mut req, target.route).await.is_err() {
            return Sorted::Hyper(stream);
        }
        let mut headers = std::mem::take(req.headers_mut());
        crate::proxy::forwarded_headers(
            &mut headers,
            Some(head.upgrade),
            Some(addr.ip()),
            &target.prefix,
            endpoint.secret.as_deref(),
        );
        single_request(&mut headers);
        let forwarded = forwarded_head(&head.target, &target.prefix, &headers);
        if forwarded.len() > MAX_HEAD {
            return Sorted::Hyper(stream);
        }
        // Room for the record before anything is read: a plugin that stopped reading its
        // channel (full) or whose child died leaves the connection to the relay, untouched.
        if let Err(why) = has_room(&channel) {
            tracing::debug!(plugin = %target.plugin, "hand-off channel {why}: relaying");
            return Sorted::Hyper(stream);
        }
        let _ = stream.set_nodelay(true);
        // Out of the reactor: the plugin reads this socket from now on.
        let Ok(mut client) = stream.into_std() else {
            return Sorted::Gone;
        };
        if let Err(e) = consume(&mut client, head.len) {
            tracing::debug!(plugin = %target.plugin, "client went away during the hand-off: {e}");
            return Sorted::Gone;
        }
        match send_soon(&channel, &forwarded, client.as_fd()).await {
            Ok(()) => {
                metrics::counter!(HTTP_HANDOFFS, "plugin" => target.plugin.clone()).increment(1);
                tracing::debug!(plugin = %target.plugin, client = %addr, "WebSocket handed over");
            }
            Err(e) => {
                // The head is read: too late to relay. Answer as the proxy does.
                tracing::warn!(plugin = %target.plugin, "hand-off failed after the head was read: {e}");
                let _ = client.write_all(&bad_gateway(&target.plugin));
            }
        }
        Sorted::Gone
    }
}

enum HeadState {
    /// A valid head so far, not complete.
    Partial,
    /// Complete, or not a head at all.
    Done,
}

fn head_state(data: &[u8]) -> HeadState {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Request::new(&mut slots).parse(data) {
        Ok(httparse::Status::Partial) => HeadState::Partial,
        _ => HeadState::Done,
    }
}

/// The WebSocket handshake at the start of `data`, if it is a complete one.
fn parse_head(data: &[u8]) -> Option<Head> {
    if !data.starts_with(b"GET ") {
        return None;
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(len) = req.parse(data).ok()? else {
        return None;
    };
    if req.version != Some(1) {
        return None;
    }
    let target = req.path?.to_owned();
    if !target.starts_with('/') {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        headers.append(name, value);
    }
    // A body would follow the head: not a handshake. Nor is a head whose length is said twice
    // (a reader that takes the other value would see a second request where this one saw none).
    let mut lengths = headers.get_all(axum::http::header::CONTENT_LENGTH).iter();
    if headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || lengths.next().is_some_and(|v| v.as_bytes() != b"0")
        || lengths.next().is_some()
    {
        return None;
    }
    let upgrade = crate::proxy::wants_upgrade(&headers)?;
    if !upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return None;
    }
    Some(Head {
        len,
        target,
        headers,
        upgrade,
    })
}

/// The plugin and prefix `path` goes to, as the router would send it: `/plugins/NAME[/...]`
/// (a name written plainly; one with `%` is left to the router), else a running plugin's mount.
fn route(host: &Host, path: &str) -> Option<Target> {
    if let Some(rest) = path.strip_prefix("/plugins/") {
        let (name, below) = rest
            .split_once('/')
            .map_or((rest, None), |(n, b)| (n, Some(b)));
        if name.is_empty() || name.contains('%') {
            return None;
        }
        return Some(Target {
            plugin: name.to_owned(),
            prefix: format!("/plugins/{name}"),
            route: Some(match below {
                None => "/plugins/{name}",
                Some("") => "/plugins/{name}/",
                Some(_) => "/plugins/{name}/{*rest}",
            }),
        });
    }
    let (plugin, mount) = host.http_mounted(path)?;
    Some(Target {
        plugin: plugin.to_string(),
        prefix: mount,
        route: None,
    })
}

/// A handed-over connection carries this one request and nothing after it: a server that
/// does not switch protocols (it answers the handshake with anything but `101`: no WebSocket
/// support, a refusal) closes the connection after its answer. Otherwise a client could send
/// further requests on it, and the plugin would take them as they came, never judged by auth,
/// with plugd's credentials and its own `X-Forwarded-For` unstripped. The handshake has no body:
/// no length goes along.
fn single_request(headers: &mut HeaderMap) {
    headers.insert(
        axum::http::header::CONNECTION,
        HeaderValue::from_static("upgrade, close"),
    );
    headers.remove(axum::http::header::CONTENT_LENGTH);
}

/// The head the plugin gets: the target with `prefix` stripped, HTTP/1.1, `headers`.
fn forwarded_head(target: &str, prefix: &str, headers: &HeaderMap) -> Vec<u8> {
    let rest = target.strip_prefix(prefix).unwrap_or(target);
    let mut out = Vec::with_capacity(256 + headers.len() * 48);
    out.extend_from_slice(b"GET ");
    if !rest.starts_with('/') {
        out.push(b'/');
    }
    out.extend_from_slice(rest.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Whether the hand-off channel takes a record now (`Err`: why not).
fn has_room(channel: &OwnedFd) -> Result<(), &'static str> {
    use rustix::event::{PollFd, PollFlags};
    let mut fds = [PollFd::new(channel, PollFlags::OUT)];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if rustix::event::poll(&mut fds, Some(&now)).is_err() {
        return Err("cannot be polled");
    }
    let revents = fds[0].revents();
    if revents.intersects(PollFlags::HUP | PollFlags::ERR) {
        Err("is closed (the plugin's child is gone)")
    } else if revents.contains(PollFlags::OUT) {
        Ok(())
    } else {
        Err("is full (the plugin does not read it)")
    }
}

/// [`send`], retried for up to ~250 ms while the channel is full (a hand-off racing this one
/// took the room [`has_room`] saw).
async fn send_soon(
    channel: &OwnedFd,
    head: &[u8],
    client: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<()> {
    let mut pause = Duration::from_millis(1);
    loop {
        match send(channel, head, client) {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && pause <= Duration::from_millis(128) =>
            {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            sent => return sent,
        }
    }
}

/// Reads exactly the `len` bytes of the head, which the peek saw queued.
fn consume(client: &mut std::net::TcpStream, len: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; len];
    client.read_exact(&mut buf)
}

/// Sends `head` with `client` attached, as one record.
fn send(
    channel: &OwnedFd,
    head: &[u8],
    client: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds = [client];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("no room for the descriptor"));
    }
    let sent = rustix::net::sendmsg(
        channel,
        &[IoSlice::new(head)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != head.len() {
        return Err(std::io::Error::other("the record was cut short"));
    }
    Ok(())
}

/// The proxy's 502 `plugin_unreachable`, written by hand (hyper no longer has the connection).
fn bad_gateway(plugin: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "error": {
            "code": "plugin_unreachable",
            "message": format!("Plugin `{plugin}` did not take the WebSocket; hint: `plugd status {plugin}` shows its log"),
        }
    })
    .to_string();
    format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDSHAKE: &[u8] = b"GET /plugins/chat/ws?room=1 HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Forwarded-For: 6.6.6.6\r\nX-Plugd-Secret: forged\r\n\r\n";

    #[test]
    fn a_complete_websocket_handshake_is_a_head() {
        let mut data = HANDSHAKE.to_vec();
        data.extend_from_slice(b"\x81\x05hello");
        let head = parse_head(&data).expect("a handshake");
        assert_eq!(head.len, HANDSHAKE.len());
        assert_eq!(head.target, "/plugins/chat/ws?room=1");
        assert_eq!(head.upgrade, "websocket");
        assert_eq!(head.headers["sec-websocket-version"], "13");
    }

    #[test]
    fn anything_but_a_complete_websocket_handshake_is_left_to_hyper() {
        let cut = &HANDSHAKE[..HANDSHAKE.len() - 3];
        let post = [b"POST".as_slice(), &HANDSHAKE[3..]].concat();
        let http10 = String::from_utf8_lossy(HANDSHAKE).replace("HTTP/1.1", "HTTP/1.0");
        let h2c = String::from_utf8_lossy(HANDSHAKE).replace("websocket", "h2c");
        let no_connection =
            String::from_utf8_lossy(HANDSHAKE).replace("keep-alive, Upgrade", "keep-alive");
        let body =
            String::from_utf8_lossy(HANDSHAKE).replace("\r\n\r\n", "\r\nContent-Length: 5\r\n\r\n");
        let two_lengths = String::from_utf8_lossy(HANDSHAKE).replace(
            "\r\n\r\n",
            "\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n",
        );
        let absolute = String::from_utf8_lossy(HANDSHAKE).replace("GET /", "GET http://x/");
        for (what, data) in [
            ("a head cut short", cut.to_vec()),
            ("a POST", post),
            ("HTTP/1.0", http10.into_bytes()),
            ("another protocol", h2c.into_bytes()),
            ("no `Connection: upgrade`", no_connection.into_bytes()),
            ("a body", body.into_bytes()),
            ("two lengths", two_lengths.into_bytes()),
            ("an absolute target", absolute.into_bytes()),
            (
                "HTTP/2's preface",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            ),
        ] {
            assert_eq!(parse_head(&data), None, "{what}");
        }
    }

    #[test]
    fn the_forwarded_head_strips_the_prefix_and_carries_the_headers() {
        let with_length =
            String::from_utf8_lossy(HANDSHAKE).replace("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n");
        let head = parse_head(with_length.as_bytes()).expect("a handshake");
        let mut headers = head.headers;
        crate::proxy::forwarded_headers(
            &mut headers,
            Some(head.upgrade),
            Some("127.0.0.9".parse().expect("an address")),
            "/plugins/chat",
            Some("s3cr3t-of-the-plugin"),
        );
        single_request(&mut headers);
        let text = String::from_utf8(forwarded_head(&head.target, "/plugins/chat", &headers))
            .expect("UTF-8");
        assert!(text.starts_with("GET /ws?room=1 HTTP/1.1\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        for line in [
            // Closed after the answer unless that is a `101`: one request per hand-off.
            "connection: upgrade, close",
            "upgrade: websocket",
            "host: example.test",
            "x-forwarded-for: 127.0.0.9",
            "x-forwarded-prefix: /plugins/chat",
            "x-forwarded-host: example.test",
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
            "x-plugd-secret: s3cr3t-of-the-plugin",
        ] {
            assert!(text.contains(&format!("{line}\r\n")), "{line} in {text}");
        }
        assert!(!text.contains("content-length"), "{text}");
        assert!(
            !text.contains("6.6.6.6"),
            "the client's X-Forwarded-For is replaced: {text}"
        );
        assert!(
            !text.contains("forged"),
            "the client's X-Plugd-Secret is replaced: {text}"
        );
        // The root of the plugin: `/plugins/chat` → `/`.
        let root = String::from_utf8(forwarded_head("/plugins/chat", "/plugins/chat", &headers))
            .expect("UTF-8");
        assert!(root.starts_with("GET / HTTP/1.1\r\n"), "{root}");
        let query = String::from_utf8(forwarded_head(
            "/plugins/chat?x=1",
            "/plugins/chat",
            &headers,
        ))
        .expect("UTF-8");
        assert!(query.starts_with("GET /?x=1 HTTP/1.1\r\n"), "{query}");
    }
}
