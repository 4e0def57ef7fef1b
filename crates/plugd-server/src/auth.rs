//! API tokens, their scopes and dashboard sessions.
//!
//! - A token is `plugd_` + 43 characters (256 random bits, base64url). The store keeps only its
//!   SHA-256; the secret is printed once, when it is created. No slow KDF: a random 256-bit
//!   secret cannot be guessed, so hashing only has to make a stolen database useless.
//! - Every request but `/healthz`, `/readyz`, the dashboard's static files and the log-in route
//!   needs a credential once auth is on: `--auth required`, or (`--auth auto`, the default on a
//!   loopback address) as soon as one token exists. 401 without a valid credential, 403 with
//!   one that lacks the route's scope.
//! - The check hashes the presented secret and looks the hash up in an in-memory map (well under
//!   a microsecond). Looking up a hash, not comparing secrets, is what keeps it constant-time in
//!   the secret: a timing difference can only tell an attacker about a hash they cannot invert.
//! - The map is loaded from the store before the first request is judged, refreshed every
//!   [`REFRESH`] (so a token revoked offline with `plugd token revoke` stops working within
//!   that), and a hash it does not know is looked up in the store (so a token created offline
//!   works at once).
//! - Browsers cannot put a token on an `EventSource` or a WebSocket: the dashboard trades its
//!   token for a session cookie (`POST /api/v1/session`): random, kept hashed in memory only,
//!   HttpOnly, SameSite=Strict, valid [`SESSION_IDLE`] after its last use and at most
//!   [`SESSION_MAX`], never past its token's expiry or revocation.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::{Mutex, RwLock};
use plugd_host::Host;
use plugd_store::{Store, TokenRecord};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::error::ApiError;

/// What every token secret starts with (so secret scanners and people recognise one).
pub const TOKEN_PREFIX: &str = "plugd_";
/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "plugd_session";
/// How often the token map is reloaded from the store.
pub const REFRESH: Duration = Duration::from_secs(5);
/// A session ends this long after its last use.
pub const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// A session ends this long after the log-in, however much it is used.
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept at once (the oldest go first).
const MAX_SESSIONS: usize = 10_000;

/// When a token is needed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// As soon as one token exists (the default on a loopback address).
    #[default]
    Auto,
    /// Always: with no token, nothing but health, readiness and the log-in page answers.
    Required,
}

/// Auth settings of the server.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// When a token is needed.
    pub mode: AuthMode,
    /// `/metrics` without a token (for a scraper on a trusted network).
    pub metrics_public: bool,
}

/// One permission a token carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Everything.
    Admin,
    /// Every listing and status: plugins, logs, params, events, tasks, metrics, the API doc.
    Read,
    /// Calling the actions of one plugin (`*`: every plugin), or one action of it.
    Call {
        /// Plugin name or `*`.
        plugin: String,
        /// One action; `None`: all of them.
        action: Option<String>,
    },
    /// Publishing events.
    EventsPublish,
    /// Submitting and cancelling background tasks.
    TasksSubmit,
    /// Changing plugins' params.
    ParamsWrite,
    /// Reading plugins' kv entries (their data: not part of `read`).
    KvRead,
    /// Running scripts.
    ScriptsRun,
    /// A plugin's own HTTP routes (`/plugins/NAME/...` and its mount); `*`: every plugin.
    Http {
        /// Plugin name or `*`.
        plugin: String,
    },
}

/// The scopes `plugd token create --scope` accepts, for messages.
pub const SCOPES_HINT: &str = "admin, read, call:PLUGIN, call:PLUGIN/ACTION, call:*, events:publish, tasks:submit, params:write, kv:read, scripts:run, http:PLUGIN, http:*";

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        let name_ok = |n: &str| {
            n == "*"
                || (!n.is_empty()
                    && n.len() <= 128
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
        };
        let scope = match s {
            "admin" => Scope::Admin,
            "read" => Scope::Read,
            "events:publish" => Scope::EventsPublish,
            "tasks:submit" => Scope::TasksSubmit,
            "params:write" => Scope::ParamsWrite,
            "kv:read" => Scope::KvRead,
            "scripts:run" => Scope::ScriptsRun,
            _ => {
                if let Some(rest) = s.strip_prefix("call:") {
                    let (plugin, action) = match rest.split_once('/') {
                        Some((p, a)) => (p, Some(a)),
                        None => (rest, None),
                    };
                    if !name_ok(plugin) || action.is_some_and(|a| a == "*" || !name_ok(a)) {
                        return Err(format!(
                            "Invalid scope `{s}`: write `call:PLUGIN`, `call:PLUGIN/ACTION` or `call:*`"
                        ));
                    }
                    Scope::Call {
                        plugin: plugin.to_owned(),
                        action: action.map(str::to_owned),
                    }
                } else if let Some(plugin) = s.strip_prefix("http:") {
                    if !name_ok(plugin) {
                        return Err(format!(
                            "Invalid scope `{s}`: write `http:PLUGIN` or `http:*`"
                        ));
                    }
                    Scope::Http {
                        plugin: plugin.to_owned(),
                    }
                } else {
                    return Err(format!(
                        "Unknown scope `{s}`; hint: the scopes are {SCOPES_HINT}"
                    ));
                }
            }
        };
        Ok(scope)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Read => f.write_str("read"),
            Scope::Call {
                plugin,
                action: None,
            } => write!(f, "call:{plugin}"),
            Scope::Call {
                plugin,
                action: Some(action),
            } => write!(f, "call:{plugin}/{action}"),
            Scope::EventsPublish => f.write_str("events:publish"),
            Scope::TasksSubmit => f.write_str("tasks:submit"),
            Scope::ParamsWrite => f.write_str("params:write"),
            Scope::KvRead => f.write_str("kv:read"),
            Scope::ScriptsRun => f.write_str("scripts:run"),
            Scope::Http { plugin } => write!(f, "http:{plugin}"),
        }
    }
}

impl Scope {
    /// Whether a token holding `self` may do what `needed` names.
    pub fn allows(&self, needed: &Scope) -> bool {
        match (self, needed) {
            (Scope::Admin, _) => true,
            (
                Scope::Call { plugin, action },
                Scope::Call {
                    plugin: p,
                    action: a,
                },
            ) => (plugin == "*" || plugin == p) && (action.is_none() || action == a),
            (Scope::Http { plugin }, Scope::Http { plugin: p }) => plugin == "*" || plugin == p,
            (held, needed) => held == needed,
        }
    }
}

/// Parses `--scope` values, refusing an empty list.
pub fn parse_scopes(scopes: &[String]) -> Result<Vec<Scope>, String> {
    if scopes.is_empty() {
        return Err(format!(
            "A token needs at least one scope; hint: pass `--scope read` (the scopes are {SCOPES_HINT})"
        ));
    }
    let mut parsed: Vec<Scope> = Vec::new();
    for s in scopes {
        let scope: Scope = s.parse()?;
        if !parsed.contains(&scope) {
            parsed.push(scope);
        }
    }
    Ok(parsed)
}

/// A new token: the secret (shown once) and the record to store.
pub fn new_token(
    name: &str,
    scopes: &[Scope],
    expires_at_ms: Option<u64>,
) -> Result<(String, TokenRecord), String> {
    check_name(name)?;
    let mut raw = [0u8; 32];
    OsRng.fill_bytes(&mut raw);
    let secret = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
    let hash = hash(&secret);
    let id: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    Ok((
        secret,
        TokenRecord {
            id,
            hash,
            name: name.to_owned(),
            scopes: scopes.iter().map(ToString::to_string).collect(),
            created_at_ms: 0,
            expires_at_ms,
        },
    ))
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
    {
        return Err(format!(
            "Invalid token name `{}`: use 1 to 64 letters, digits, `-`, `_`, `.` or `@`",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// SHA-256 of a secret (a token or a session id).
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a valid credential grants: the token's identity and scopes.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The token's public id.
    pub id: String,
    /// The token's name.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// When it stops working.
    pub expires_at_ms: Option<u64>,
    hash: [u8; 32],
}

impl Grant {
    fn from_record(record: &TokenRecord) -> Grant {
        Grant {
            id: record.id.clone(),
            name: record.name.clone(),
            // A scope this build does not know (written by a newer plugd) grants nothing.
            scopes: record
                .scopes
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            expires_at_ms: record.expires_at_ms,
            hash: record.hash,
        }
    }

    fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Whether one of the scopes allows `needed`.
    pub fn allows(&self, needed: &Scope) -> bool {
        self.scopes.iter().any(|s| s.allows(needed))
    }

    fn scope_names(&self) -> Vec<String> {
        self.scopes.iter().map(ToString::to_string).collect()
    }
}

/// The grant of the request's credential, when it had a valid one (a request extension).
#[derive(Clone, Debug)]
pub struct Caller(pub Option<Arc<Grant>>);

struct Session {
    token: [u8; 32],
    created: Instant,
    last_used: Instant,
}

/// The server's tokens and sessions. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    config: AuthConfig,
    host: Host,
    loaded: OnceCell<()>,
    tokens: RwLock<HashMap<[u8; 32], Arc<Grant>>>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
}

impl Auth {
    /// Auth for `host`'s store; its tokens are loaded when the first request arrives.
    pub fn new(host: Host, config: AuthConfig) -> Auth {
        Auth {
            inner: Arc::new(Inner {
                config,
                host,
                loaded: OnceCell::new(),
                tokens: RwLock::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
            }),
        }
    }

    async fn store(&self) -> Result<&Store, ApiError> {
        self.inner.host.store().await.map_err(ApiError::from)
    }

    /// Loads the tokens once; later calls return at once.
    async fn ensure_loaded(&self) -> Result<(), ApiError> {
        self.inner
            .loaded
            .get_or_try_init(|| async { self.reload().await })
            .await
            .map(|_| ())
    }

    /// Replaces the token map with the store's tokens.
    pub async fn reload(&self) -> Result<(), ApiError> {
        let records = self.store().await?.tokens().await.map_err(store_error)?;
        let map = records
            .iter()
            .map(|r| (r.hash, Arc::new(Grant::from_record(r))))
            .collect();
        *self.inner.tokens.write() = map;
        Ok(())
    }

    /// Reloads the tokens every [`REFRESH`] until `shutdown`.
    pub(crate) fn spawn_refresh(&self, shutdown: crate::Shutdown) {
        let auth = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.wait() => return,
                }
                if let Err(e) = auth.reload().await {
                    tracing::warn!("Cannot reload the API tokens: {}", e.message);
                }
            }
        });
    }

    /// Whether requests need a credential now.
    pub(crate) fn active(&self) -> bool {
        self.inner.config.mode == AuthMode::Required || !self.inner.tokens.read().is_empty()
    }

    /// [`Auth::token_grant`] when it needs no store: `None` when the secret looks like a token
    /// but is not in the map.
    fn cached_grant(&self, secret: &str) -> Option<Option<Arc<Grant>>> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Some(None);
        }
        let grant = self.inner.tokens.read().get(&hash(secret)).cloned()?;
        Some((!grant.expired(now_ms())).then_some(grant))
    }

    /// The grant of a token secret: from the map, else from the store (a token created by
    /// another process); `None` for an unknown, revoked or expired one.
    async fn token_grant(&self, secret: &str) -> Result<Option<Arc<Grant>>, ApiError> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let hash = hash(secret);
        let cached = self.inner.tokens.read().get(&hash).cloned();
        let grant = match cached {
            Some(grant) => grant,
            None => {
                let found = self
                    .store()
                    .await?
                    .token_by_hash(hash)
                    .await
                    .map_err(store_error)?;
                let Some(record) = found else {
                    return Ok(None);
                };
                let grant = Arc::new(Grant::from_record(&record));
                self.inner.tokens.write().insert(hash, grant.clone());
                grant
            }
        };
        Ok((!grant.expired(now_ms())).then_some(grant))
    }

    fn session_grant(&self, cookie: &str) -> Option<Arc<Grant>> {
        let key = hash(cookie);
        let now = Instant::now();
        let mut sessions = self.inner.sessions.lock();
        let session = sessions.get_mut(&key)?;
        let grant = self.inner.tokens.read().get(&session.token).cloned();
        let live = now.duration_since(session.last_used) < SESSION_IDLE
            && now.duration_since(session.created) < SESSION_MAX;
        match grant {
            Some(grant) if live && !grant.expired(now_ms()) => {
                session.last_used = now;
                Some(grant)
            }
            _ => {
                sessions.remove(&key);
                None
            }
        }
    }

    fn open_session(&self, grant: &Grant) -> String {
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let id = URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut sessions = self.inner.sessions.lock();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| {
                now.duration_since(s.last_used) < SESSION_IDLE
                    && now.duration_since(s.created) < SESSION_MAX
            });
            if sessions.len() >= MAX_SESSIONS
                && let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            hash(&id),
            Session {
                token: grant.hash,
                created: now,
                last_used: now,
            },
        );
        id
    }

    fn close_session(&self, cookie: &str) {
        self.inner.sessions.lock().remove(&hash(cookie));
    }
}

fn store_error(e: plugd_store::StoreError) -> ApiError {
    ApiError::from(plugd_host::HostError::Store(e))
}

/// The credential a request carries.
enum Credential<'a> {
    None,
    Bearer(&'a str),
    Session(&'a str),
}

fn credential(headers: &HeaderMap) -> Credential<'_> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().unwrap_or_default();
        return match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Credential::Bearer(token.trim())
            }
            _ => Credential::Bearer(""),
        };
    }
    match session_cookie(headers) {
        Some(id) => Credential::Session(id),
        None => Credential::None,
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

/// What a route needs: nothing, any valid credential, or a scope.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    Nothing,
    AnyCredential,
    Scope(Scope),
}

/// The percent-decoded `index`th segment of `path` (0 is the part after the first `/`), as the
/// handlers' `Path` extractor decodes it.
fn segment(path: &str, index: usize) -> String {
    let raw = path
        .split('/')
        .nth(index + 1)
        .unwrap_or_default()
        .as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The route table's scopes: one arm per route of `routes::router`. A route missing here needs
/// `admin` (the test `every_route_has_a_scope` lists them).
fn need(method: &Method, route: Option<&str>, path: &str, config: &AuthConfig) -> Need {
    let read = || Need::Scope(Scope::Read);
    let get = method == Method::GET || method == Method::HEAD;
    let Some(route) = route else {
        // No route: a plugin's mount (decided by the caller), else a 404 that must not tell
        // strangers which paths exist.
        return Need::AnyCredential;
    };
    match route {
        "/healthz" | "/readyz" | "/ui" | "/ui/" | "/ui/{*file}" | "/api/v1/session" => {
            Need::Nothing
        }
        "/metrics" if config.metrics_public => Need::Nothing,
        "/metrics" | "/api/v1/openapi.json" => read(),
        "/plugin/{name}/{action}" => Need::Scope(Scope::Call {
            plugin: segment(path, 1),
            action: Some(segment(path, 2)),
        }),
        "/api/v1/plugins/{name}/actions/{action}" => Need::Scope(Scope::Call {
            plugin: segment(path, 3),
            action: Some(segment(path, 5)),
        }),
        "/plugins/{name}" | "/plugins/{name}/" | "/plugins/{name}/{*rest}" => {
            Need::Scope(Scope::Http {
                plugin: segment(path, 1),
            })
        }
        "/api/v1/plugins"
        | "/api/admin/v1/plugins"
        | "/api/v1/plugins/{name}/logs"
        | "/api/v1/plugins/{name}/logs/stream"
        | "/api/v1/plugins/{name}/params/history"
        | "/api/v1/events/stream"
        | "/api/v1/events/dead"
        | "/api/v1/tasks/stream"
        | "/api/v1/tasks/{id}"
        | "/api/v1/scripts"
        | "/api/v1/scripts/{id}"
        | "/api/v1/scripts/{id}/versions"
        | "/api/v1/scripts/{id}/versions/{version}"
        | "/api/v1/scripts/{id}/diff"
        | "/api/v1/scripts/{id}/runs"
        | "/api/v1/runs"
        | "/api/v1/runs/{id}"
        | "/api/v1/runs/{id}/stream"
        | "/api/v1/templates"
        | "/api/v1/templates/{name}"
            if get =>
        {
            read()
        }
        // Reading scripts, checking one and exporting them change nothing.
        "/api/v1/scripts/check" | "/api/v1/scripts/export" => read(),
        "/api/v1/scripts/{id}/runs" | "/api/v1/runs" | "/api/v1/runs/{id}/cancel" => {
            Need::Scope(Scope::ScriptsRun)
        }
        "/api/v1/plugins/{name}"
        | "/api/v1/plugins/{name}/params"
        | "/api/v1/events"
        | "/api/v1/tasks"
            if get =>
        {
            read()
        }
        "/api/v1/plugins/{name}/params" => Need::Scope(Scope::ParamsWrite),
        "/api/v1/plugins/{name}/kv" => Need::Scope(Scope::KvRead),
        "/api/v1/events" => Need::Scope(Scope::EventsPublish),
        "/api/v1/tasks" | "/api/v1/tasks/{id}/cancel" => Need::Scope(Scope::TasksSubmit),
        _ => Need::Scope(Scope::Admin),
    }
}

/// The middleware: judges the request's credential against the route's scope, records the
/// caller for the handlers, and keeps plugd credentials away from plugins' own HTTP servers.
///
/// A tower layer rather than `axum::middleware::from_fn`: most requests (tokens loaded, and no
/// credential, a session, or a token already in the map) are judged without waiting, and then
/// the route's future is returned as is. `from_fn` boxed a future and cloned the inner service
/// for every request (with the `map_response` it replaced, ~0.5 µs of a 10 µs request:
/// bench/README.md). Only a request that needs the store (the first, which loads the tokens,
/// or a token not in the map) takes a boxed slow path.
#[derive(Clone)]
pub(crate) struct AuthLayer(pub(crate) Auth);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            auth: self.0.clone(),
            inner,
        }
    }
}

/// [`AuthLayer`]'s service.
#[derive(Clone)]
pub(crate) struct AuthService<S> {
    auth: Auth,
    inner: S,
}

impl<S> tower::Service<Request> for AuthService<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = AuthFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        match self.auth.judge_now(&mut req) {
            Some(Ok(())) => AuthFuture::Inner {
                fut: self.inner.call(req),
            },
            Some(Err(refused)) => AuthFuture::Refused {
                response: Some(*refused),
            },
            None => {
                // The ready service goes with the request; a clone stays for the next one.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let auth = self.auth.clone();
                AuthFuture::Waiting {
                    fut: Box::pin(async move {
                        match auth.judge(&mut req).await {
                            Ok(()) => match inner.call(req).await {
                                Ok(response) => response,
                                Err(never) => match never {},
                            },
                            Err(refused) => *refused,
                        }
                    }),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// [`AuthService`]'s future: the route's own, a refusal, or the slow path.
    #[project = AuthFutureProj]
    pub(crate) enum AuthFuture<F> {
        Inner { #[pin] fut: F },
        Refused { response: Option<Response> },
        Waiting { fut: std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> },
    }
}

impl<F> std::future::Future for AuthFuture<F>
where
    F: std::future::Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            AuthFutureProj::Inner { fut } => fut.poll(cx),
            AuthFutureProj::Refused { response } => {
                std::task::Poll::Ready(Ok(response.take().expect("an auth refusal is polled once")))
            }
            AuthFutureProj::Waiting { fut } => fut.as_mut().poll(cx).map(Ok),
        }
    }
}

/// What a request needs, worked out from its route and path.
struct Plan {
    active: bool,
    need: Need,
    to_plugin: bool,
}

impl Auth {
    /// The judgement when it needs no waiting (`None`: it needs the store; see [`Auth::judge`]).
    fn judge_now(&self, req: &mut Request) -> Option<Result<(), Box<Response>>> {
        self.inner.loaded.initialized().then_some(())?;
        let plan = self.plan(req);
        let (grant, by_cookie) = match credential(req.headers()) {
            Credential::None => (None, false),
            Credential::Bearer(secret) => (self.cached_grant(secret)?, false),
            Credential::Session(id) => (self.session_grant(id), true),
        };
        Some(self.decide(req, &plan, grant, by_cookie))
    }

    /// The whole judgement: loads the tokens first if need be, and looks up a token that is not
    /// in the map in the store.
    async fn judge(&self, req: &mut Request) -> Result<(), Box<Response>> {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_owned());
        self.judge_route(req, route.as_deref()).await
    }

    /// The whole judgement of a request the router has not seen, `route` standing for the
    /// route it would match (the WebSocket hand-off judges the request head before hyper
    /// reads it); on success the credentials are stripped as for a routed request.
    pub(crate) async fn judge_route(
        &self,
        req: &mut Request,
        route: Option<&str>,
    ) -> Result<(), Box<Response>> {
        self.judge_planned(req, |auth, req| auth.plan_for(req, route))
            .await
    }

    /// The judgement of a request to an exposed port (`plugd serve --allow-expose`), whose paths
    /// are the plugin's own: the scope of its `/plugins/NAME` routes (`http:NAME`), and its
    /// credentials stripped as there. `plugin` is `None` when no plugin is exposed on the port:
    /// any credential then, so that strangers learn nothing of what runs.
    pub(crate) async fn judge_exposed(
        &self,
        req: &mut Request,
        plugin: Option<&str>,
    ) -> Result<(), Box<Response>> {
        self.judge_planned(req, |auth, _| {
            let active = auth.active();
            let need = match plugin {
                _ if !active => Need::Nothing,
                Some(plugin) => Need::Scope(Scope::Http {
                    plugin: plugin.to_owned(),
                }),
                None => Need::AnyCredential,
            };
            Plan {
                active,
                need,
                to_plugin: true,
            }
        })
        .await
    }

    /// Loads the tokens if need be, plans with `plan` (which may ask whether auth is active
    /// only then), and judges the request's credential against the plan.
    async fn judge_planned(
        &self,
        req: &mut Request,
        plan: impl FnOnce(&Auth, &Request) -> Plan,
    ) -> Result<(), Box<Response>> {
        self.ensure_loaded()
            .await
            .map_err(|e| Box::new(e.into_response()))?;
        let plan = plan(self, req);
        let (grant, by_cookie) = self.grant_of(req.headers()).await?;
        self.decide(req, &plan, grant, by_cookie)
    }

    /// The grant of a request's credential (a token looked up in the store if it is not in
    /// the map), and whether it came from a session cookie.
    async fn grant_of(
        &self,
        headers: &HeaderMap,
    ) -> Result<(Option<Arc<Grant>>, bool), Box<Response>> {
        Ok(match credential(headers) {
            Credential::None => (None, false),
            Credential::Bearer(secret) => match self.token_grant(secret).await {
                Ok(grant) => (grant, false),
                Err(e) => return Err(Box::new(e.into_response())),
            },
            Credential::Session(id) => (self.session_grant(id), true),
        })
    }

    fn plan(&self, req: &Request) -> Plan {
        let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
        self.plan_for(req, route)
    }

    fn plan_for(&self, req: &Request, route: Option<&str>) -> Plan {
        let active = self.active();
        if active {
            let mut need = need(req.method(), route, req.uri().path(), &self.inner.config);
            if route.is_none()
                && let Some((plugin, _)) = self.inner.host.http_mounted(req.uri().path())
            {
                need = Need::Scope(Scope::Http {
                    plugin: plugin.as_str().to_owned(),
                });
            }
            let to_plugin = matches!(need, Need::Scope(Scope::Http { .. }));
            Plan {
                active,
                need,
                to_plugin,
            }
        } else {
            // No token is needed: only whether the request goes to a plugin's own HTTP side (its
            // credentials are stripped) matters, and that needs no scope built from the path.
            let to_plugin = match route {
                Some(route) => is_plugin_http_route(route),
                None => self.inner.host.http_mounted(req.uri().path()).is_some(),
            };
            Plan {
                active,
                need: Need::Nothing,
                to_plugin,
            }
        }
    }

    /// Judges the credential's grant against the plan; on success strips what a plugin must not
    /// see and records the caller.
    fn decide(
        &self,
        req: &mut Request,
        plan: &Plan,
        grant: Option<Arc<Grant>>,
        by_cookie: bool,
    ) -> Result<(), Box<Response>> {
        let Plan {
            active,
            ref need,
            to_plugin,
        } = *plan;
        if active && *need != Need::Nothing {
            let Some(grant) = &grant else {
                // A bearer token that names no live token is "invalid", not "missing".
                return Err(Box::new(match credential(req.headers()) {
                    Credential::Bearer(_) => invalid_token(),
                    _ => unauthorized(by_cookie),
                }));
            };
            if let Need::Scope(scope) = need
                && !grant.allows(scope)
            {
                return Err(Box::new(forbidden(grant, scope)));
            }
            // A session cookie rides along on any same-site request: refuse a state change that
            // another origin started (SameSite=Strict already stops cross-site ones in browsers;
            // "site" ignores ports, so a page on a plugin's exposed port is same-site). A
            // WebSocket handshake is a `GET` but opens a channel both ways: judged the same.
            if by_cookie
                && (!is_safe(req.method()) || crate::proxy::wants_upgrade(req.headers()).is_some())
                && cross_origin(req.headers())
            {
                return Err(Box::new(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "cross_origin",
                    "A request from another origin cannot use the dashboard's session; hint: send the token as `Authorization: Bearer TOKEN`",
                )
                .into_response()));
            }
        }
        if to_plugin {
            strip_credentials(req.headers_mut(), active);
        }
        req.extensions_mut().insert(Caller(grant));
        Ok(())
    }
}

/// The routes of plugins' own HTTP sides (what [`need`] maps to [`Scope::Http`]).
fn is_plugin_http_route(route: &str) -> bool {
    matches!(
        route,
        "/plugins/{name}" | "/plugins/{name}/" | "/plugins/{name}/{*rest}"
    )
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the `Origin` header names another host than the request's `Host`.
fn cross_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    !origin_host.eq_ignore_ascii_case(host)
}

/// A plugin's HTTP server never sees the session cookie, nor (when auth is on) the bearer token
/// that let the request through.
fn strip_credentials(headers: &mut HeaderMap, active: bool) {
    if active {
        headers.remove(header::AUTHORIZATION);
    }
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .map(str::trim)
                .filter(|pair| {
                    pair.split_once('=')
                        .is_none_or(|(name, _)| name != SESSION_COOKIE)
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|v| !v.is_empty())
        .collect();
    headers.remove(header::COOKIE);
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(header::COOKIE, value);
        }
    }
}

fn with_challenge(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"plugd\""),
    );
    response
}

fn unauthorized(by_cookie: bool) -> Response {
    let message = if by_cookie {
        "The dashboard session has ended (expired, logged out, or its token was revoked); hint: log in again"
    } else {
        "This route needs a token; hint: send `Authorization: Bearer TOKEN` (the CLI reads `PLUGD_TOKEN` or `--token`); an admin creates one with `plugd token create --name NAME --scope read`"
    };
    with_challenge(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response())
}

fn invalid_token() -> Response {
    with_challenge(
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The token is not valid: unknown, revoked or expired; hint: `plugd token list` shows the tokens, `plugd token create` makes a new one",
        )
        .into_response(),
    )
}

fn forbidden(grant: &Grant, scope: &Scope) -> Response {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "Token `{}` lacks the scope `{scope}` this route needs (it has: {}); hint: create a token with `--scope {scope}`",
            grant.name,
            grant.scope_names().join(", ")
        ),
    )
    .into_response()
}

// ---- routes: the session (dashboard log-in) and token management ----

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct LogIn {
    token: String,
}

/// Who a credential is, as the session routes answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Whoami {
    auth_required: bool,
    id: Option<String>,
    name: Option<String>,
    scopes: Vec<String>,
    expires_at_ms: Option<u64>,
}

fn whoami(auth: &Auth, grant: Option<&Grant>) -> Whoami {
    match grant {
        Some(g) => Whoami {
            auth_required: auth.active(),
            id: Some(g.id.clone()),
            name: Some(g.name.clone()),
            scopes: g.scope_names(),
            expires_at_ms: g.expires_at_ms,
        },
        None => Whoami {
            auth_required: false,
            id: None,
            name: None,
            scopes: vec!["admin".to_owned()],
            expires_at_ms: None,
        },
    }
}

/// `GET /api/v1/session`: who the request's credential is; 401 when auth is on without one.
#[utoipa::path(get, path = "/api/v1/session", tag = "auth",
    description = "Who the request's credential is. With auth off: `auth_required` false and the `admin` scope. No credential needed (401 when auth is on without one).",
    responses((status = 200, description = "The caller", body = Whoami), (status = 401, description = "`unauthorized`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn session(
    State(auth): State<Auth>,
    Extension(caller): Extension<Caller>,
) -> Response {
    match (&caller.0, auth.active()) {
        (None, true) => unauthorized(false),
        (grant, _) => Json(whoami(&auth, grant.as_deref())).into_response(),
    }
}

/// `POST /api/v1/session {"token"}`: a session cookie for the dashboard.
#[utoipa::path(post, path = "/api/v1/session", tag = "auth",
    description = "Trades a token for the dashboard's session cookie (HttpOnly, SameSite=Strict). No credential needed.",
    request_body(content = LogIn, content_type = "application/json"),
    responses((status = 200, description = "Logged in; `Set-Cookie: plugd_session=...`", body = Whoami), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 401, description = "`invalid_token`", body = crate::openapi::ErrorBody), (status = 503, description = "The store is busy", body = crate::openapi::ErrorBody)))]
pub(crate) async fn log_in(
    State(auth): State<Auth>,
    body: Result<Json<LogIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "The body must be JSON `{\"token\": \"plugd_...\"}`",
        )
        .into_response();
    };
    let grant = match auth.token_grant(body.token.trim()).await {
        Ok(Some(grant)) => grant,
        Ok(None) => return invalid_token(),
        Err(e) => return e.into_response(),
    };
    let id = auth.open_session(&grant);
    let cookie = format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_IDLE.as_secs()
    );
    let mut response = Json(whoami(&auth, Some(&grant))).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `DELETE /api/v1/session`: ends the session and clears the cookie.
#[utoipa::path(delete, path = "/api/v1/session", tag = "auth",
    description = "Ends the session and clears the cookie. No credential needed.",
    responses((status = 204, description = "Logged out")))]
pub(crate) async fn log_out(State(auth): State<Auth>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        auth.close_session(id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        ))
        .expect("a valid header value"),
    );
    response
}

/// A token as listings show it (never its secret or hash).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TokenDto {
    id: String,
    name: String,
    scopes: Vec<String>,
    created_at_ms: u64,
    expires_at_ms: Option<u64>,
    expired: bool,
}

impl From<&TokenRecord> for TokenDto {
    fn from(r: &TokenRecord) -> TokenDto {
        TokenDto {
            id: r.id.clone(),
            name: r.name.clone(),
            scopes: r.scopes.clone(),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            expired: r.expires_at_ms.is_some_and(|at| at <= now_ms()),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TokenList {
    tokens: Vec<TokenDto>,
}

/// `GET /api/v1/tokens`.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "auth",
    description = "Every token (never a secret). Scope: `admin`.",
    responses((status = 200, description = "Tokens", body = TokenList)))]
pub(crate) async fn list_tokens(State(auth): State<Auth>) -> Result<Json<TokenList>, ApiError> {
    let tokens = auth.store().await?.tokens().await.map_err(store_error)?;
    Ok(Json(TokenList {
        tokens: tokens.iter().map(TokenDto::from).collect(),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct NewToken {
    #[schema(pattern = "^[A-Za-z0-9_.@-]{1,64}$")]
    name: String,
    /// `admin`, `read`, `call:PLUGIN[/ACTION]`, `events:publish`, `tasks:submit`,
    /// `params:write`, `kv:read`, `scripts:run`, `http:PLUGIN`.
    #[schema(min_items = 1)]
    scopes: Vec<String>,
    /// Lifetime in seconds; absent: never expires.
    expires_in_s: Option<u64>,
}

/// A created token: the only answer that carries the secret.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedToken {
    token: String,
    #[serde(flatten)]
    info: TokenDto,
}

/// `POST /api/v1/tokens {"name", "scopes", "expires_in_s"?}` → 201 with the secret.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "auth",
    description = "Creates a token; the answer is the only time its secret is shown. Scope: `admin`.",
    request_body(content = NewToken, content_type = "application/json"),
    responses((status = 201, description = "Created, with `token`", body = CreatedToken), (status = 400, description = "`bad_request`: bad name or scope", body = crate::openapi::ErrorBody), (status = 409, description = "`conflict`: the name is taken", body = crate::openapi::ErrorBody), (status = 503, description = "Busy", body = crate::openapi::ErrorBody)))]
pub(crate) async fn create_token(
    State(auth): State<Auth>,
    body: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "The body must be JSON `{{\"name\": \"...\", \"scopes\": [\"read\"], \"expires_in_s\": 86400}}`: {}",
                e.body_text()
            ),
        )
    })?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let scopes = parse_scopes(&body.scopes).map_err(bad)?;
    let expires = body
        .expires_in_s
        .map(|s| now_ms().saturating_add(s.saturating_mul(1000)));
    let (secret, record) = new_token(&body.name, &scopes, expires).map_err(bad)?;
    let stored = auth
        .store()
        .await?
        .create_token(record)
        .await
        .map_err(store_error)?;
    auth.inner
        .tokens
        .write()
        .insert(stored.hash, Arc::new(Grant::from_record(&stored)));
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: secret,
            info: TokenDto::from(&stored),
        }),
    ))
}

/// `DELETE /api/v1/tokens/{id_or_name}`: revokes at once (its sessions end with it).
#[utoipa::path(delete, path = "/api/v1/tokens/{which}", tag = "auth",
    description = "Revokes a token at once (its sessions end with it). Scope: `admin`.",
    params(("which" = String, Path, description = "The token's id or name")),
    responses((status = 200, description = "The revoked token", body = TokenDto), (status = 404, description = "`token_not_found`", body = crate::openapi::ErrorBody), (status = 503, description = "Busy", body = crate::openapi::ErrorBody)))]
pub(crate) async fn revoke_token(
    State(auth): State<Auth>,
    Path(which): Path<String>,
) -> Result<Json<TokenDto>, ApiError> {
    let revoked = auth
        .store()
        .await?
        .revoke_token(&which)
        .await
        .map_err(store_error)?;
    let Some(revoked) = revoked else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "token_not_found",
            format!("No token has the id or name `{which}`; hint: `plugd token list` shows them"),
        ));
    };
    auth.inner.tokens.write().remove(&revoked.hash);
    Ok(Json(TokenDto::from(&revoked)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_print_and_refuse_with_the_list() {
        for s in [
            "admin",
            "read",
            "call:hello",
            "call:hello/greet",
            "call:*",
            "events:publish",
            "tasks:submit",
            "params:write",
            "kv:read",
            "scripts:run",
            "http:client-manager",
            "http:*",
        ] {
            assert_eq!(s.parse::<Scope>().unwrap().to_string(), s);
        }
        let e = "write".parse::<Scope>().unwrap_err();
        assert!(
            e.contains("Unknown scope `write`") && e.contains("call:PLUGIN"),
            "{e}"
        );
        assert!("call:".parse::<Scope>().is_err());
        assert!("call:a/b/c".parse::<Scope>().is_err());
        assert!("call:hello/*".parse::<Scope>().is_err());
        assert!("http:a b".parse::<Scope>().is_err());
        assert!(
            parse_scopes(&[])
                .unwrap_err()
                .contains("at least one scope")
        );
    }

    #[test]
    fn a_scope_allows_what_it_names_and_admin_allows_everything() {
        let call = |p: &str, a: &str| Scope::Call {
            plugin: p.into(),
            action: Some(a.into()),
        };
        let s = |t: &str| t.parse::<Scope>().unwrap();
        assert!(s("call:hello").allows(&call("hello", "greet")));
        assert!(s("call:hello/greet").allows(&call("hello", "greet")));
        assert!(!s("call:hello/greet").allows(&call("hello", "echo")));
        assert!(!s("call:hello").allows(&call("gallery", "tag")));
        assert!(s("call:*").allows(&call("gallery", "tag")));
        assert!(!s("read").allows(&call("hello", "greet")));
        assert!(!s("read").allows(&Scope::KvRead));
        assert!(!s("read").allows(&Scope::Admin));
        assert!(s("http:*").allows(&s("http:x")));
        assert!(!s("http:y").allows(&s("http:x")));
        for needed in ["kv:read", "http:x", "call:a/b", "events:publish"] {
            assert!(s("admin").allows(&s(needed)));
        }
    }

    #[test]
    fn a_new_token_is_random_prefixed_and_stored_by_hash_only() {
        let (secret, record) = new_token("ci", &[Scope::Read], None).unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX));
        assert_eq!(secret.len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(record.hash, hash(&secret));
        assert_eq!(record.id.len(), 12);
        assert_eq!(record.scopes, ["read"]);
        let (other, _) = new_token("ci", &[Scope::Read], None).unwrap();
        assert_ne!(secret, other);
        assert!(new_token("has space", &[Scope::Read], None).is_err());
        assert!(new_token("", &[Scope::Read], None).is_err());
    }

    #[test]
    fn every_route_needs_the_scope_its_resource_names() {
        let c = AuthConfig::default();
        let n = |m: Method, r: &str, p: &str| need(&m, Some(r), p, &c);
        assert_eq!(n(Method::GET, "/healthz", "/healthz"), Need::Nothing);
        assert_eq!(n(Method::GET, "/ui/{*file}", "/ui/app.js"), Need::Nothing);
        assert_eq!(
            n(
                Method::POST,
                "/plugin/{name}/{action}",
                "/plugin/hel%6Co/greet"
            ),
            Need::Scope(Scope::Call {
                plugin: "hello".into(),
                action: Some("greet".into())
            })
        );
        assert_eq!(
            n(
                Method::POST,
                "/api/v1/plugins/{name}/actions/{action}",
                "/api/v1/plugins/hello/actions/greet"
            ),
            Need::Scope(Scope::Call {
                plugin: "hello".into(),
                action: Some("greet".into())
            })
        );
        let read = Need::Scope(Scope::Read);
        assert_eq!(n(Method::GET, "/api/v1/plugins", "/api/v1/plugins"), read);
        assert_eq!(
            n(Method::GET, "/api/v1/plugins/{name}", "/api/v1/plugins/x"),
            read
        );
        assert_eq!(
            n(
                Method::DELETE,
                "/api/v1/plugins/{name}",
                "/api/v1/plugins/x"
            ),
            Need::Scope(Scope::Admin)
        );
        assert_eq!(
            n(
                Method::PATCH,
                "/api/v1/plugins/{name}/params",
                "/api/v1/plugins/x/params"
            ),
            Need::Scope(Scope::ParamsWrite)
        );
        assert_eq!(
            n(
                Method::GET,
                "/api/v1/plugins/{name}/kv",
                "/api/v1/plugins/x/kv"
            ),
            Need::Scope(Scope::KvRead)
        );
        assert_eq!(
            n(Method::POST, "/api/v1/events", "/api/v1/events"),
            Need::Scope(Scope::EventsPublish)
        );
        assert_eq!(
            n(
                Method::POST,
                "/api/v1/tasks/{id}/cancel",
                "/api/v1/tasks/3/cancel"
            ),
            Need::Scope(Scope::TasksSubmit)
        );
        assert_eq!(
            n(
                Method::POST,
                "/api/v1/plugins/{name}/reload",
                "/api/v1/plugins/x/reload"
            ),
            Need::Scope(Scope::Admin)
        );
        assert_eq!(
            n(Method::GET, "/plugins/{name}/{*rest}", "/plugins/cm/a/b"),
            Need::Scope(Scope::Http {
                plugin: "cm".into()
            })
        );
        // Scripts: reading is `read`, running and cancelling `scripts:run`, changing `admin`.
        assert_eq!(n(Method::GET, "/api/v1/scripts", "/api/v1/scripts"), read);
        assert_eq!(
            n(
                Method::GET,
                "/api/v1/runs/{id}/stream",
                "/api/v1/runs/1/stream"
            ),
            read
        );
        assert_eq!(
            n(
                Method::POST,
                "/api/v1/scripts/check",
                "/api/v1/scripts/check"
            ),
            read
        );
        assert_eq!(
            n(Method::POST, "/api/v1/scripts", "/api/v1/scripts"),
            Need::Scope(Scope::Admin)
        );
        assert_eq!(
            n(
                Method::POST,
                "/api/v1/scripts/import",
                "/api/v1/scripts/import"
            ),
            Need::Scope(Scope::Admin)
        );
        for (method, route, path) in [
            (
                Method::POST,
                "/api/v1/scripts/{id}/runs",
                "/api/v1/scripts/r/runs",
            ),
            (Method::POST, "/api/v1/runs", "/api/v1/runs"),
            (
                Method::POST,
                "/api/v1/runs/{id}/cancel",
                "/api/v1/runs/2/cancel",
            ),
        ] {
            assert_eq!(
                n(method, route, path),
                Need::Scope(Scope::ScriptsRun),
                "{path}"
            );
        }
        assert_eq!(n(Method::GET, "/metrics", "/metrics"), read);
        let public = AuthConfig {
            metrics_public: true,
            ..AuthConfig::default()
        };
        assert_eq!(
            need(&Method::GET, Some("/metrics"), "/metrics", &public),
            Need::Nothing
        );
        assert_eq!(
            need(&Method::GET, None, "/nowhere", &c),
            Need::AnyCredential
        );
    }

    #[test]
    fn the_plugin_http_routes_are_exactly_those_that_need_an_http_scope() {
        let c = AuthConfig::default();
        for route in [
            "/plugins/{name}",
            "/plugins/{name}/",
            "/plugins/{name}/{*rest}",
            "/plugin/{name}/{action}",
            "/api/v1/plugins",
            "/api/v1/plugins/{name}/actions/{action}",
            "/healthz",
            "/ui/{*file}",
        ] {
            for method in [Method::GET, Method::POST] {
                let http = matches!(
                    need(&method, Some(route), "/plugins/p/x", &c),
                    Need::Scope(Scope::Http { .. })
                );
                assert_eq!(is_plugin_http_route(route), http, "{method} {route}");
            }
        }
    }

    #[test]
    fn credentials_for_a_plugin_are_removed_but_its_own_cookies_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer plugd_x".parse().unwrap());
        headers.insert(
            header::COOKIE,
            "theme=dark; plugd_session=abc; lang=en".parse().unwrap(),
        );
        strip_credentials(&mut headers, true);
        assert!(headers.get(header::AUTHORIZATION).is_none());
        assert_eq!(headers.get(header::COOKIE).unwrap(), "theme=dark; lang=en");
        let mut only = HeaderMap::new();
        only.insert(header::COOKIE, "plugd_session=abc".parse().unwrap());
        strip_credentials(&mut only, false);
        assert!(only.get(header::COOKIE).is_none());
    }

    #[test]
    fn an_origin_other_than_the_host_is_cross_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(!cross_origin(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(!cross_origin(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(cross_origin(&h));
    }
}
