//! The reverse proxy to plugins' own HTTP servers (`[http]`): `/plugins/{name}/...`, each
//! plugin's `[http] mount`, and the ports the operator lets plugins expose. Requests and
//! responses stream through with bounded buffers (hyper on both sides); a WebSocket (any
//! `Upgrade`) is relayed byte for byte once both sides have switched protocols, so no message is
//! ever buffered whole.
//!
//! Each plugin generation listens on its own Unix socket (the host hands the listening
//! descriptor to the plugin), so no network namespace is opened for it and a reload switches
//! HTTP traffic in the same step as calls. A request holds a lease on the generation it went to
//! ([`plugd_host::HttpEndpoint`]): a replaced version drains its requests like its calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use plugd_host::{Host, HttpEndpoint};
use tokio::net::UnixStream;

use crate::error::ApiError;

/// Proxy settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Largest request body forwarded to a plugin, in bytes (larger: 413).
    pub max_body: u64,
    /// How long a plugin may take to connect and send its response headers (then: 504).
    pub timeout: Duration,
    /// How often each plugin's `[http] health` path is checked.
    pub health_interval: Duration,
}

impl Default for ProxyConfig {
    /// 64 MiB bodies, 60 s to answer, health every 10 s.
    fn default() -> Self {
        ProxyConfig {
            max_body: 64 * 1024 * 1024,
            timeout: Duration::from_secs(60),
            health_interval: Duration::from_secs(10),
        }
    }
}

/// The last health check of a plugin's HTTP side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpHealth {
    /// Whether it answered 2xx.
    pub ok: bool,
    /// What it answered (`200 OK`) or why it did not.
    pub detail: String,
    /// When (ms since the Unix epoch).
    pub checked_at_ms: u64,
}

/// The proxy's shared state: its HTTP client (pooled connections per plugin socket) and the
/// health checks' results.
#[derive(Clone)]
pub struct Proxy {
    client: Client<UnixConnector, Body>,
    config: ProxyConfig,
    health: Arc<Mutex<HashMap<String, HttpHealth>>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The `status` label of a proxied request: `1xx` to `5xx`.
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and are never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_PLUGD_VERSION: HeaderName = HeaderName::from_static("x-plugd-version");
/// `plugd_protocol::HTTP_SECRET_HEADER`.
const X_PLUGD_SECRET: HeaderName = HeaderName::from_static("x-plugd-secret");

impl Proxy {
    /// A proxy with its own connection pool.
    pub fn new(config: ProxyConfig) -> Proxy {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(UnixConnector);
        Proxy {
            client,
            config,
            health: Arc::default(),
        }
    }

    /// The last health check of `plugin`'s HTTP side, if it has one and was checked.
    pub fn health_of(&self, plugin: &str) -> Option<HttpHealth> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(plugin)
            .cloned()
    }

    /// Forwards `req` to the HTTP side of `plugin`, with `prefix` (what the client's path had
    /// before the plugin's own path; empty for an exposed port) stripped from the path and sent
    /// as `X-Forwarded-Prefix`.
    pub async fn forward(&self, host: &Host, plugin: &str, prefix: &str, req: Request) -> Response {
        let endpoint = match host.http_endpoint(plugin) {
            Ok(endpoint) => endpoint,
            // Not counted: the name comes from the request path, and may name no plugin.
            Err(e) => return ApiError::from(e).into_response(),
        };
        let name = endpoint.plugin.to_string();
        let response = match self.forward_to(endpoint, prefix, req).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        };
        metrics::counter!(
            crate::metrics::HTTP_PROXIED,
            "plugin" => name,
            "status" => status_class(response.status()),
        )
        .increment(1);
        response
    }

    async fn forward_to(
        &self,
        endpoint: HttpEndpoint,
        prefix: &str,
        mut req: Request,
    ) -> Result<Response, ApiError> {
        let name = endpoint.plugin.to_string();
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "The request body is over the {} bytes plugd forwards to plugin `{name}`; hint: raise it with `plugd serve --http-max-body BYTES`",
                    self.config.max_body
                ),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.config.max_body) {
            return Err(too_large());
        }
        let upgrade = wants_upgrade(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path();
        let rest = path.strip_prefix(prefix).unwrap_or(path);
        let rest = if rest.is_empty() { "/" } else { rest };
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        };
        let authority = endpoint_authority(&endpoint).map_err(|why| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "plugin_unreachable",
                format!("Plugin `{name}` cannot be reached: {why}"),
            )
        })?;
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("Cannot forward this path: {e}"),
                )
            })?;
        // Always HTTP/1.1 to the plugin, whatever the client spoke: an HTTP/1.0 request would
        // make the plugin close the pooled connection after its answer, and the next request
        // picking that connection from the pool would fail (502) if it won the race with the
        // close.
        parts.version = axum::http::Version::HTTP_11;
        forwarded_headers(
            &mut parts.headers,
            upgrade,
            peer,
            prefix,
            endpoint.secret.as_deref(),
        );
        let max = self.config.max_body;
        let body = Body::new(http_body_util::Limited::new(body, max as usize));
        let upstream = hyper::Request::from_parts(parts, body);

        let answer = tokio::time::timeout(self.config.timeout, self.client.request(upstream)).await;
        let mut response = match answer {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "plugin_timeout",
                    format!(
                        "Plugin `{name}` did not answer within {} s; hint: check `plugd status {name}`",
                        self.config.timeout.as_secs()
                    ),
                ));
            }
            Ok(Err(e)) => {
                if is_length_limit(&e) {
                    return Err(too_large());
                }
                let what = if e.is_connect() {
                    "could not be reached"
                } else {
                    "closed the connection without answering"
                };
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "plugin_unreachable",
                    format!(
                        "Plugin `{name}` {what} ({}); hint: `plugd status {name}` shows its log",
                        describe(&e)
                    ),
                ));
            }
            Ok(Ok(response)) => response,
        };

        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let (mut parts, _) = response.into_parts();
            // The switch is end to end: `Connection` and `Upgrade` go back to the client.
            let (connection, protocol) = (
                parts.headers.get(header::CONNECTION).cloned(),
                parts.headers.get(header::UPGRADE).cloned(),
            );
            clean_hop_by_hop(&mut parts.headers);
            if let (Some(c), Some(u)) = (connection, protocol) {
                parts.headers.insert(header::CONNECTION, c);
                parts.headers.insert(header::UPGRADE, u);
            }
            tokio::spawn(relay(endpoint, client_upgrade, upstream_upgrade));
            return Ok(Response::from_parts(parts, Body::empty()));
        }

        let (mut parts, body) = response.into_parts();
        clean_hop_by_hop(&mut parts.headers);
        if let Ok(v) = HeaderValue::from_str(&endpoint.version) {
            parts.headers.insert(X_PLUGD_VERSION, v);
        }
        // The lease lives as long as the body streams (an SSE stream keeps it).
        let body = LeasedBody {
            inner: body,
            _lease: endpoint,
        };
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    /// Checks the `[http] health` path of every running plugin that has one, every
    /// `health_interval`, until `shutdown` fires.
    pub fn spawn_health_checks(&self, host: Host, shutdown: crate::Shutdown) {
        let proxy = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(proxy.config.health_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.wait() => return,
                }
                proxy.check_all(&host).await;
            }
        });
    }

    /// One round of health checks (plugins checked concurrently, each within 2 s).
    pub async fn check_all(&self, host: &Host) {
        let routes = host.http_routes();
        let checks = routes.iter().filter_map(|route| {
            let path = route.health.clone()?;
            let name = route.plugin.to_string();
            Some(async move {
                let health = self.check(host, &name, &path).await;
                (name, health)
            })
        });
        let results = futures::future::join_all(checks).await;
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.retain(|name, _| routes.iter().any(|r| r.plugin.as_str() == name));
        health.extend(results);
    }

    async fn check(&self, host: &Host, name: &str, path: &str) -> HttpHealth {
        let checked_at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // The whole check, body included, within 2 s; at most 4 KiB of body is read.
        let outcome = tokio::time::timeout(Duration::from_secs(2), async {
            let endpoint = host.http_endpoint(name).map_err(|e| e.to_string())?;
            let uri = Uri::builder()
                .scheme("http")
                .authority(endpoint_authority(&endpoint)?)
                .path_and_query(path)
                .build()
                .map_err(|e| e.to_string())?;
            let mut req = hyper::Request::get(uri)
                .header(header::HOST, "plugd-health")
                .body(Body::empty())
                .map_err(|e| e.to_string())?;
            if let Some(v) = endpoint
                .secret
                .as_deref()
                .and_then(|s| HeaderValue::from_str(s).ok())
            {
                req.headers_mut().insert(X_PLUGD_SECRET, v);
            }
            let response = self.client.request(req).await.map_err(|e| describe(&e))?;
            let status = response.status();
            // Read (and drop) a small body, so the connection goes back to the pool.
            let _ = http_body_util::Limited::new(response.into_body(), 4096)
                .collect()
                .await;
            Ok::<_, String>(status)
        })
        .await
        .unwrap_or_else(|_| Err("no complete answer within 2 s".to_owned()));
        match outcome {
            Ok(status) => HttpHealth {
                ok: status.is_success(),
                detail: format!("GET {path}: {status}"),
                checked_at_ms,
            },
            Err(why) => HttpHealth {
                ok: false,
                detail: format!("GET {path}: {why}"),
                checked_at_ms,
            },
        }
    }
}

/// The headers of a request as forwarded to a plugin's HTTP side: hop-by-hop headers removed
/// (`Connection` and `Upgrade` kept for an upgrade), the client's `Host` kept, and the
/// `X-Forwarded-*` headers plugd sets replacing any the client sent.
pub(crate) fn forwarded_headers(
    headers: &mut HeaderMap,
    upgrade: Option<HeaderValue>,
    peer: Option<std::net::IpAddr>,
    prefix: &str,
    secret: Option<&str>,
) {
    let original_host = headers.get(header::HOST).cloned();
    clean_hop_by_hop(headers);
    // Always a `Host` the client gave (or a neutral one): never one derived from the URI,
    // whose authority is the host's socket path.
    headers.insert(
        header::HOST,
        original_host
            .clone()
            .unwrap_or_else(|| HeaderValue::from_static("localhost")),
    );
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    for name in [
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        X_FORWARDED_PREFIX,
        FORWARDED,
        X_PLUGD_SECRET,
    ] {
        headers.remove(name);
    }
    if let Some(v) = secret.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert(X_PLUGD_SECRET, v);
    }
    if let Some(ip) = peer
        && let Ok(v) = HeaderValue::from_str(&ip.to_string())
    {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(h) = original_host {
        headers.insert(X_FORWARDED_HOST, h);
    }
    if !prefix.is_empty()
        && let Ok(v) = HeaderValue::from_str(prefix)
    {
        headers.insert(X_FORWARDED_PREFIX, v);
    }
}

/// The protocol an upgrade request asks for (`Upgrade: websocket`), if it is one.
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return None;
    }
    headers.get(header::UPGRADE).cloned()
}

/// Removes the hop-by-hop headers, and every header `Connection` names.
fn clean_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Relays an upgraded connection both ways until either side closes; the lease keeps the
/// generation draining meanwhile.
async fn relay(
    lease: HttpEndpoint,
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(plugin = %lease.plugin, "upgrade failed: {e}");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    // Ends when both sides have closed, or when the plugin's version stops (a client that never
    // closes must not keep a stopped version's lease, and this task, forever).
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = copied {
                tracing::debug!(plugin = %lease.plugin, "upgraded connection ended: {e}");
            }
        }
        () = lease.halted() => {
            tracing::debug!(plugin = %lease.plugin, "upgraded connection cut: its version stopped");
        }
    }
    drop(lease);
}

/// A response body that holds the request's lease until it is done or dropped.
struct LeasedBody {
    inner: hyper::body::Incoming,
    _lease: HttpEndpoint,
}

impl hyper::body::Body for LeasedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn is_length_limit(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The innermost cause of a client error, which says what happened (`connection refused`,
/// `connection closed before message completed`).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        text = err.to_string();
        source = err.source();
    }
    text
}

/// Where the proxy connects for `endpoint`: its pinned socket (`/proc/self/fd/N`, with the pin's
/// serial, so the pool never mixes two pins that had the same descriptor number). Never the
/// socket's path, which a process of the host's uid could have replaced: an endpoint without
/// a pin (a runtime that does not pin) is not reached at all.
fn endpoint_authority(endpoint: &HttpEndpoint) -> Result<String, String> {
    match &endpoint.pinned {
        Some(pin) => Ok(socket_authority(&pin.path(), Some(pin.serial))),
        None => Err(format!(
            "its runtime did not pin its socket `{}`, and plugd connects to none by path",
            endpoint.socket.display()
        )),
    }
}

/// The socket path as a URI authority (hex), with a serial (`-N`) when there is one, so the
/// pool keeps one set of connections per socket and the connector knows where to connect.
fn socket_authority(socket: &Path, serial: Option<u64>) -> String {
    use std::fmt::Write as _;
    let bytes = socket.as_os_str().as_encoded_bytes();
    let mut out = String::with_capacity(bytes.len() * 2 + 11);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    if let Some(serial) = serial {
        let _ = write!(out, "-{serial}");
    }
    out
}

/// The socket path and serial [`socket_authority`] wrote.
fn socket_from_authority(authority: &str) -> Option<(PathBuf, Option<u64>)> {
    use std::os::unix::ffi::OsStringExt;
    let (hex, serial) = match authority.split_once('-') {
        Some((hex, serial)) => (hex, Some(serial.parse().ok()?)),
        None => (authority, None),
    };
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    Some((PathBuf::from(std::ffi::OsString::from_vec(bytes?)), serial))
}

/// Connects the pooled client to a plugin's Unix socket (named by the URI's authority: the
/// pinned socket's `/proc/self/fd/N`, see [`endpoint_authority`]).
#[derive(Clone, Copy, Debug, Default)]
struct UnixConnector;

impl tower::Service<Uri> for UnixConnector {
    type Response = UnixIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<UnixIo, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let (path, _) = uri
                .host()
                .and_then(socket_from_authority)
                .ok_or_else(|| std::io::Error::other("not a plugin socket"))?;
            let stream = UnixStream::connect(&path).await?;
            Ok(UnixIo(TokioIo::new(stream)))
        })
    }
}

struct UnixIo(TokioIo<UnixStream>);

impl Connection for UnixIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UnixIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UnixIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_survive_the_authority() {
        let path = Path::new("/var/lib/plugd/run/12.sock");
        let authority = socket_authority(path, None);
        assert!(authority.parse::<axum::http::uri::Authority>().is_ok());
        assert_eq!(
            socket_from_authority(&authority).unwrap(),
            (path.to_path_buf(), None)
        );
        let pinned = Path::new("/proc/self/fd/17");
        let with_serial = socket_authority(pinned, Some(4242));
        assert!(with_serial.parse::<axum::http::uri::Authority>().is_ok());
        assert_eq!(
            socket_from_authority(&with_serial).unwrap(),
            (pinned.to_path_buf(), Some(4242))
        );
        assert_eq!(socket_from_authority("zz"), None);
        assert_eq!(socket_from_authority("2f-x"), None);
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        clean_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn only_a_connection_upgrade_with_a_protocol_is_an_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(wants_upgrade(&headers), None, "no `Connection: upgrade`");
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(wants_upgrade(&headers).unwrap(), "websocket");
    }
}
