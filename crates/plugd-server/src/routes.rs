//! `router(host, config) -> Router`: every route of the API.

use axum::extract::rejection::{BytesRejection, QueryRejection};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use plugd_host::{Host, PluginState};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

#[allow(unused_imports)] // named by the OpenAPI attributes
use crate::dto::{
    Health, HealthCounts, KvItemDto, KvPageDto, LogLineDto, LogsDto, ParamsDto, ParamsHistoryDto,
    PluginDto, PluginList, RevisionDto, UnloadedDto,
};
use crate::error::ApiError;
use crate::{auth, events, logs, scripts, tasks};

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest accepted request body in bytes.
    pub max_body: usize,
    /// The longest any request may take, a safety net above each plugin's own call timeout:
    /// past it the client gets 504 `request_timeout` and the call is dropped (cancelled).
    pub request_timeout: Duration,
    /// What `/readyz` reports.
    pub readiness: Readiness,
    /// Ends the open event and task streams (trigger it when shutting down).
    pub shutdown: crate::Shutdown,
    /// The proxy to plugins' own HTTP servers (`/plugins/NAME/...`, mounts).
    pub proxy: crate::Proxy,
    /// When requests need a token.
    pub auth: crate::AuthConfig,
    /// Record metrics and serve them at `/metrics` (installs the process's metrics recorder);
    /// off, nothing is recorded and `/metrics` answers 404 `metrics_disabled`.
    pub metrics: bool,
    /// The script manager behind `/api/v1/scripts`, `/templates` and `/runs`; `None`: those
    /// answer 503 `scripts_unavailable`.
    pub scripts: Option<plugd_scripts::Scripts>,
}

impl Default for ServerConfig {
    /// 1 MiB bodies, 10-minute requests; ready from the start (for a host started before the
    /// router is built).
    fn default() -> Self {
        ServerConfig {
            max_body: 1024 * 1024,
            request_timeout: Duration::from_secs(600),
            readiness: Readiness::ready(),
            shutdown: crate::Shutdown::new(),
            proxy: crate::Proxy::new(crate::ProxyConfig::default()),
            auth: crate::AuthConfig::default(),
            metrics: true,
            scripts: None,
        }
    }
}

/// Whether the host's first start wave is done: `/readyz` answers 503 until
/// [`Readiness::set_ready`] is called, then 200. Clones share one flag.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Not ready yet: the plugins are being started in the background.
    pub fn pending() -> Readiness {
        Readiness(Arc::new(AtomicBool::new(false)))
    }

    /// Already ready.
    pub fn ready() -> Readiness {
        Readiness(Arc::new(AtomicBool::new(true)))
    }

    /// Marks the start wave done.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the start wave is done.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the handlers share; handlers that need only the host extract `State<Host>`. One `Arc`:
/// axum clones the state for every request, and a clone of the fields (the proxy's client, the
/// auth, the scripts, ...) cost a dozen reference counts each time.
#[derive(Clone)]
pub(crate) struct AppState(Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// The fields of [`AppState`].
pub(crate) struct SharedState {
    pub(crate) host: Host,
    readiness: Readiness,
    pub(crate) max_body: usize,
    pub(crate) shutdown: crate::Shutdown,
    pub(crate) proxy: crate::Proxy,
    pub(crate) auth: crate::Auth,
    pub(crate) metrics: bool,
    pub(crate) scripts: Option<plugd_scripts::Scripts>,
}

impl FromRef<AppState> for crate::Auth {
    fn from_ref(state: &AppState) -> crate::Auth {
        state.auth.clone()
    }
}

impl FromRef<AppState> for Host {
    fn from_ref(state: &AppState) -> Host {
        state.host.clone()
    }
}

/// The whole API as an axum router.
pub fn router(host: Host, config: ServerConfig) -> Router {
    app(host, config).router
}

/// The API's router and what a server puts beside it, sharing its tokens and sessions.
pub struct App {
    /// The whole API ([`router`]).
    pub router: Router,
    /// Lets a [`crate::HandoffListener`] in front of the router hand WebSockets to plugins.
    pub handoff: crate::Handoff,
    /// The router's auth, for [`exposed_router`]s.
    pub auth: crate::Auth,
}

/// [`router`], its hand-off and its auth.
pub fn app(host: Host, config: ServerConfig) -> App {
    if config.metrics {
        let _ = crate::metrics::install();
    }
    let auth = crate::Auth::new(host.clone(), config.auth.clone());
    let state = AppState(Arc::new(SharedState {
        auth: auth.clone(),
        metrics: config.metrics,
        host,
        readiness: config.readiness.clone(),
        max_body: config.max_body,
        shutdown: config.shutdown.clone(),
        proxy: config.proxy.clone(),
        scripts: config.scripts.clone(),
    }));
    if tokio::runtime::Handle::try_current().is_ok() {
        config
            .proxy
            .spawn_health_checks(state.host.clone(), config.shutdown.clone());
        auth.spawn_refresh(config.shutdown.clone());
    }
    let timeout = config.request_timeout;
    // The trace layer's spans and events are at debug level: under the default filter they are
    // off, and the layer would still read the clock twice and wrap every response body (~0.8 µs
    // of server CPU per wasm echo of ~10 µs, bench/README.md). So it is there only when the subscriber wants its
    // output when the router is built (`RUST_LOG=tower_http=debug`, or `debug`).
    let trace = tracing::enabled!(target: "tower_http::trace", tracing::Level::DEBUG).then(|| {
        ServiceBuilder::new()
            .map_response(axum_body)
            .layer(TraceLayer::new_for_http())
    });
    let handoff = crate::Handoff::new(state.host.clone(), auth.clone());
    let router = Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/plugin/{name}/{action}", post(call))
        .route("/api/v1/plugins", get(list))
        .route("/api/admin/v1/plugins", get(list_admin))
        .route("/api/v1/plugins/{name}", get(show).delete(uninstall))
        .route("/api/v1/plugins/{name}/logs", get(logs::recent))
        .route("/api/v1/plugins/{name}/logs/stream", get(logs::follow))
        .route(
            "/api/v1/plugins/{name}/params",
            get(params).put(put_params).patch(patch_params),
        )
        .route("/api/v1/plugins/{name}/params/history", get(params_history))
        .route("/api/v1/plugins/{name}/kv", get(kv))
        .route("/api/v1/plugins/{name}/actions/{action}", post(call_v1))
        // One route per operation (not `{op}`), so `GET /api/v1/plugins/NAME/anything` is a 404,
        // not a 405 for a route that does not exist.
        .route("/api/v1/plugins/{name}/load", post(load))
        .route("/api/v1/plugins/{name}/unload", post(unload))
        .route("/api/v1/plugins/{name}/reload", post(reload))
        .route("/api/v1/plugins/{name}/restart", post(restart))
        .route("/api/v1/gc", post(gc))
        .route("/api/v1/events", get(events::history).post(events::publish))
        .route("/api/v1/events/stream", get(events::follow))
        .route("/api/v1/events/dead", get(events::dead))
        .route(
            "/api/v1/events/dead/{plugin}/{seq}/replay",
            post(events::replay),
        )
        .route("/api/v1/tasks", get(tasks::list).post(tasks::submit))
        .route("/api/v1/tasks/stream", get(tasks::watch))
        .route("/api/v1/tasks/{id}", get(tasks::show))
        .route("/api/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/api/v1/scripts", get(scripts::list).post(scripts::add))
        .route("/api/v1/scripts/check", post(scripts::check))
        .route("/api/v1/scripts/export", post(scripts::export))
        .route("/api/v1/scripts/import", post(scripts::import))
        .route(
            "/api/v1/scripts/{id}",
            get(scripts::show)
                .put(scripts::edit)
                .delete(scripts::remove),
        )
        .route(
            "/api/v1/scripts/{id}/permissions",
            put(scripts::permissions),
        )
        .route("/api/v1/scripts/{id}/versions", get(scripts::versions))
        .route(
            "/api/v1/scripts/{id}/versions/{version}",
            get(scripts::version),
        )
        .route("/api/v1/scripts/{id}/diff", get(scripts::diff))
        .route("/api/v1/scripts/{id}/rollback", post(scripts::rollback))
        .route(
            "/api/v1/scripts/{id}/runs",
            get(scripts::script_runs).post(scripts::run_script),
        )
        .route("/api/v1/runs", get(scripts::runs).post(scripts::run_file))
        .route("/api/v1/runs/{id}", get(scripts::show_run))
        .route("/api/v1/runs/{id}/stream", get(scripts::follow))
        .route("/api/v1/runs/{id}/cancel", post(scripts::cancel))
        .route(
            "/api/v1/templates",
            get(scripts::templates).post(scripts::add_template),
        )
        .route(
            "/api/v1/templates/{name}",
            get(scripts::template).delete(scripts::remove_template),
        )
        .route(
            "/api/v1/templates/{name}/instantiate",
            post(scripts::instantiate),
        )
        .route("/metrics", get(crate::metrics::handler))
        .route("/api/v1/openapi.json", get(crate::openapi::openapi))
        .route(
            "/api/v1/session",
            get(auth::session).post(auth::log_in).delete(auth::log_out),
        )
        .route(
            "/api/v1/tokens",
            get(auth::list_tokens).post(auth::create_token),
        )
        .route("/api/v1/tokens/{which}", delete(auth::revoke_token))
        .merge(crate::ui::routes())
        .route("/plugins/{name}", any(plugin_http))
        .route("/plugins/{name}/", any(plugin_http))
        .route("/plugins/{name}/{*rest}", any(plugin_http))
        .fallback(mounted_or_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // One layer made of all five: `Router::layer` boxes each layer it is given around every
        // route, and a request then clones (allocates) every boxed level below it, so stacking
        // them as separate `layer` calls cost a dozen allocations per request. The 408 mapping and
        // auth are plain services (no boxed future per request).
        .layer(
            ServiceBuilder::new()
                .option_layer(trace)
                // tower-http's timeout answers an empty 408, which no handler produces: the
                // layer above turns it into the API's JSON error.
                .map_response(move |response: Response| timeout_as_json(response, timeout))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    timeout,
                ))
                .layer(DefaultBodyLimit::max(config.max_body))
                // Inside the timeout: a store lookup of an unknown token is bounded too.
                .layer(auth::AuthLayer(auth.clone())),
        )
        .with_state(state);
    App {
        router,
        handoff,
        auth,
    }
}

/// `/plugins/NAME`: the root of the plugin's own HTTP side (documented apart: OpenAPI has no
/// empty path parameter).
#[utoipa::path(get, path = "/plugins/{name}", tag = "plugin-http",
    description = "The plugin's own HTTP server (`[http]` in its manifest), any method, forwarded as is. Scope: `http:PLUGIN`.",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, description = "Whatever the plugin's HTTP server answers (any status)"), (status = "4XX", description = "The plugin's own client errors (its own body), or 404 `plugin_not_found` / 413 as the API's JSON error"), (status = 502, description = "`plugin_unreachable`", body = crate::openapi::ErrorBody), (status = 503, description = "`not_running` or the plugin has no HTTP side", body = crate::openapi::ErrorBody), (status = 504, description = "`plugin_timeout`", body = crate::openapi::ErrorBody)))]
#[allow(dead_code)]
pub(crate) fn plugin_http_root() {}

/// `/plugins/NAME/...`: the plugin's own HTTP side.
#[utoipa::path(get, path = "/plugins/{name}/{rest}", tag = "plugin-http",
    description = "A path of the plugin's own HTTP server, any method, forwarded with the prefix stripped (sent as `X-Forwarded-Prefix`). Scope: `http:PLUGIN`.",
    params(("name" = String, Path, description = "Plugin name"), ("rest" = String, Path, description = "The path below the plugin's prefix")),
    responses((status = 200, description = "Whatever the plugin's HTTP server answers (any status)"), (status = "4XX", description = "The plugin's own client errors (its own body), or 404 `plugin_not_found` / 413 as the API's JSON error"), (status = 502, description = "`plugin_unreachable`", body = crate::openapi::ErrorBody), (status = 503, description = "`not_running` or the plugin has no HTTP side", body = crate::openapi::ErrorBody), (status = 504, description = "`plugin_timeout`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn plugin_http(
    State(state): State<AppState>,
    Path(params): Path<std::collections::HashMap<String, String>>,
    req: axum::extract::Request,
) -> Response {
    let name = params.get("name").cloned().unwrap_or_default();
    let prefix = format!("/plugins/{name}");
    // The prefix is stripped from the raw path: a name written percent-encoded would not match.
    let raw = req.uri().path();
    if !(raw == prefix || raw.starts_with(&format!("{prefix}/"))) {
        return not_found(req.uri().clone()).await.into_response();
    }
    state.proxy.forward(&state.host, &name, &prefix, req).await
}

/// A path no route has: a plugin's `[http] mount`, or 404.
async fn mounted_or_not_found(
    State(state): State<AppState>,
    req: axum::extract::Request,
) -> Response {
    match state.host.http_mounted(req.uri().path()) {
        Some((plugin, mount)) => {
            state
                .proxy
                .forward(&state.host, plugin.as_str(), &mount, req)
                .await
        }
        None => not_found(req.uri().clone()).await.into_response(),
    }
}

/// The router of one exposed port (`plugd serve --allow-expose PORT`): every request goes to the
/// running plugin exposed on it, unprefixed, judged by `auth` (the main router's: the same
/// tokens and sessions) as its `/plugins/NAME` routes are. `remap` holds the operator's
/// `--expose NAME=PORT`.
pub fn exposed_router(
    host: Host,
    proxy: crate::Proxy,
    auth: crate::Auth,
    port: u16,
    remap: std::collections::BTreeMap<String, u16>,
) -> Router {
    let handler = move |mut req: axum::extract::Request| {
        let (host, proxy, auth, remap) = (host.clone(), proxy.clone(), auth.clone(), remap.clone());
        async move {
            // `--expose NAME=PORT` reserves PORT for NAME; otherwise the plugin that declares
            // PORT (the host starts at most one of those).
            let reserved = remap
                .iter()
                .find(|(_, p)| **p == port)
                .map(|(n, _)| n.clone());
            let target = host.http_routes().into_iter().find(|route| {
                let Some(declared) = route.expose else {
                    return false;
                };
                match (&reserved, remap.get(route.plugin.as_str())) {
                    (Some(owner), _) => owner == route.plugin.as_str(),
                    (None, Some(_)) => false,
                    (None, None) => declared == port,
                }
            });
            let plugin = target.as_ref().map(|route| route.plugin.as_str());
            if let Err(refused) = auth.judge_exposed(&mut req, plugin).await {
                return *refused;
            }
            match target {
                Some(route) => proxy.forward(&host, route.plugin.as_str(), "", req).await,
                None => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_exposed",
                    format!(
                        "No running plugin is exposed on port {port}; hint: `plugd status` shows which plugins serve HTTP"
                    ),
                )
                .into_response(),
            }
        }
    };
    Router::new().fallback(handler)
}

/// A response with any body as one with axum's (the trace layer's wraps the body).
fn axum_body<B>(response: axum::http::Response<B>) -> Response
where
    B: axum::body::HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    response.map(axum::body::Body::new)
}

fn timeout_as_json(response: Response, timeout: Duration) -> Response {
    if response.status() != StatusCode::REQUEST_TIMEOUT {
        return response;
    }
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "request_timeout",
        format!(
            "The request took longer than {} and was cancelled; hint: raise the limit with `plugd serve --request-timeout SECONDS`",
            if timeout.subsec_millis() == 0 {
                format!("{} s", timeout.as_secs())
            } else {
                format!("{} ms", timeout.as_millis())
            }
        ),
    )
    .into_response()
}

fn counts(host: &Host) -> HealthCounts {
    let plugins = host.plugins();
    let count = |state| plugins.iter().filter(|p| p.state == state).count();
    HealthCounts {
        total: plugins.len(),
        running: count(PluginState::Running),
        failed: count(PluginState::Failed),
    }
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    description = "Liveness: answers as soon as the port is bound, while plugins may still be starting. No credential needed.",
    responses((status = 200, description = "Alive, with plugin counts", body = Health)))]
/// Liveness: answers as soon as the port is bound, while plugins may still be starting.
pub(crate) async fn health(State(host): State<Host>) -> Json<Health> {
    Json(Health {
        status: "ok",
        plugins: counts(&host),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    description = "Readiness: 503 `starting` until the first start wave is done. No credential needed.",
    responses((status = 200, description = "Ready", body = Health), (status = 503, description = "Still starting", body = Health)))]
/// Readiness: 503 `starting` until the first start wave is done, then 200 `ready`.
pub(crate) async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let plugins = counts(&state.host);
    if state.readiness.is_ready() {
        (
            StatusCode::OK,
            Json(Health {
                status: "ready",
                plugins,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "starting",
                plugins,
            }),
        )
    }
}

#[utoipa::path(post, path = "/plugin/{name}/{action}", tag = "calls",
    description = "Calls a plugin action with a JSON payload (an empty body is `{}`). Scope: `call:PLUGIN` or `call:PLUGIN/ACTION`.",
    params(("name" = String, Path, description = "Plugin name"), ("action" = String, Path, description = "Action name")),
    request_body(content = Object, content_type = "application/json", description = "The action's input"),
    responses(
        (status = 200, description = "The action's JSON result", content_type = "application/json", body = Object),
        (status = 400, description = "`bad_json`, `bad_payload` (the input breaks the action's schema)", body = crate::openapi::ErrorBody),
        (status = 404, description = "`plugin_not_found` or `unknown_action`", body = crate::openapi::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorBody),
        (status = "4XX", description = "A client error the plugin chose (`code` is the plugin's)", body = crate::openapi::ErrorBody),
        (status = 429, description = "`overloaded` or the plugin's concurrency limit", body = crate::openapi::ErrorBody),
        (status = 502, description = "The plugin failed, crashed or answered badly", body = crate::openapi::ErrorBody),
        (status = 503, description = "`not_running`", body = crate::openapi::ErrorBody),
        (status = 504, description = "`timeout` (the plugin's `call_timeout`) or `request_timeout`", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn call(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let host = &state.host;
    let body = body.map_err(|rejection| body_error(rejection, state.max_body))?;
    let payload: Box<RawValue> = if body.iter().all(u8::is_ascii_whitespace) {
        RawValue::from_string("{}".to_owned()).expect("`{}` is valid JSON")
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("Request body is not valid JSON: {e}"),
            )
        })?
    };
    let outcome = host.call(&name, &action, payload).await?;
    let raw: Box<str> = outcome.result.into();
    let mut response = String::from(raw).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `POST /api/v1/plugins/{name}/actions/{action}`: the same call under the versioned prefix.
#[utoipa::path(post, path = "/api/v1/plugins/{name}/actions/{action}", tag = "calls",
    description = "Same as `POST /plugin/{name}/{action}`. Scope: `call:PLUGIN` or `call:PLUGIN/ACTION`.",
    params(("name" = String, Path, description = "Plugin name"), ("action" = String, Path, description = "Action name")),
    request_body(content = Object, content_type = "application/json", description = "The action's input"),
    responses(
        (status = 200, description = "The action's JSON result", content_type = "application/json", body = Object),
        (status = 400, description = "`bad_json`, `bad_payload` (the input breaks the action's schema)", body = crate::openapi::ErrorBody),
        (status = 404, description = "`plugin_not_found` or `unknown_action`", body = crate::openapi::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorBody),
        (status = "4XX", description = "A client error the plugin chose (`code` is the plugin's)", body = crate::openapi::ErrorBody),
        (status = 429, description = "`overloaded` or the plugin's concurrency limit", body = crate::openapi::ErrorBody),
        (status = 502, description = "The plugin failed, crashed or answered badly", body = crate::openapi::ErrorBody),
        (status = 503, description = "`not_running`", body = crate::openapi::ErrorBody),
        (status = 504, description = "`timeout` (the plugin's `call_timeout`) or `request_timeout`", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn call_v1(
    state: State<AppState>,
    path: Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    call(state, path, body).await
}

/// A body that could not be read: too large (naming the limit), or broken.
pub(crate) fn body_error(rejection: BytesRejection, max_body: usize) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload_too_large",
            format!(
                "Request body is larger than the limit of {max_body} bytes; hint: send a smaller payload, or raise the limit with `plugd serve --max-body BYTES`"
            ),
        )
    } else {
        ApiError::new(status, "bad_request", rejection.body_text())
    }
}

#[utoipa::path(get, path = "/api/v1/plugins", tag = "plugins",
    description = "Every plugin with its state, and the packages that could not be read. Scope: `read`.",
    responses((status = 200, description = "The plugins", body = PluginList)))]
pub(crate) async fn list(State(state): State<AppState>) -> Json<PluginList> {
    let host = &state.host;
    Json(PluginList {
        plugins: host
            .plugins()
            .into_iter()
            .map(|p| PluginDto::from(p).with_health(&state.proxy))
            .collect(),
        problems: host.problems().into_iter().map(Into::into).collect(),
    })
}

/// `GET /api/admin/v1/plugins`: the listing under its older path.
#[utoipa::path(get, path = "/api/admin/v1/plugins", tag = "plugins",
    description = "Same as `GET /api/v1/plugins` (kept for older clients). Scope: `read`.",
    responses((status = 200, description = "The plugins", body = PluginList)))]
pub(crate) async fn list_admin(state: State<AppState>) -> Json<PluginList> {
    list(state).await
}

#[utoipa::path(get, path = "/api/v1/plugins/{name}", tag = "plugins",
    description = "One plugin: state, version, trust, limits, supervision, metrics. Scope: `read`.",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, description = "The plugin", body = PluginDto), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PluginDto>, ApiError> {
    Ok(Json(
        PluginDto::from(state.host.plugin(&name)?).with_health(&state.proxy),
    ))
}

#[utoipa::path(post, path = "/api/v1/plugins/{name}/load", tag = "plugins",
    description = "Re-scans the plugins directory, starts the plugin's missing dependencies, then the plugin. Scope: `admin`.",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, description = "The plugin after the operation", body = PluginDto), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody), (status = 409, description = "`cannot_load`: the package or a dependency cannot be loaded", body = crate::openapi::ErrorBody), (status = 502, description = "The plugin failed to start", body = crate::openapi::ErrorBody), (status = 503, description = "`not_running`", body = crate::openapi::ErrorBody), (status = 504, description = "A start or stop took too long", body = crate::openapi::ErrorBody)))]
pub(crate) async fn load(
    State(host): State<Host>,
    Path(name): Path<String>,
) -> Result<Json<PluginDto>, ApiError> {
    Ok(Json(host.load(&name).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/plugins/{name}/unload", tag = "plugins",
    description = "Stops the plugin's running dependants, then the plugin. Scope: `admin`.",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, description = "The plugin, and which dependants were stopped", body = UnloadedDto), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody), (status = 409, description = "`cannot_load`: the package or a dependency cannot be loaded", body = crate::openapi::ErrorBody), (status = 502, description = "The plugin failed to start", body = crate::openapi::ErrorBody), (status = 503, description = "`not_running`", body = crate::openapi::ErrorBody), (status = 504, description = "A start or stop took too long", body = crate::openapi::ErrorBody)))]
pub(crate) async fn unload(
    State(host): State<Host>,
    Path(name): Path<String>,
) -> Result<Json<UnloadedDto>, ApiError> {
    Ok(Json(host.unload(&name).await?.into()))
}

#[derive(Deserialize)]
pub(crate) struct UninstallQuery {
    #[serde(default)]
    keep_data: bool,
}

/// `DELETE /api/v1/plugins/{name}?keep_data=true|false`: stops the plugin (and its running
/// dependants) and forgets it until `load`; its data goes too unless `keep_data`.
#[utoipa::path(delete, path = "/api/v1/plugins/{name}", tag = "plugins",
    description = "Stops the plugin (and its running dependants) and forgets it until `load`; its data goes too unless `keep_data`. Scope: `admin`.",
    params(("name" = String, Path, description = "Plugin name"), ("keep_data" = Option<bool>, Query, description = "Keep its data dir, kv and params")),
    responses((status = 200, description = "The plugin, and which dependants were stopped", body = UnloadedDto), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody), (status = 409, description = "`cannot_load`: the package or a dependency cannot be loaded", body = crate::openapi::ErrorBody), (status = 502, description = "The plugin failed to start", body = crate::openapi::ErrorBody), (status = 503, description = "`not_running`", body = crate::openapi::ErrorBody), (status = 504, description = "A start or stop took too long", body = crate::openapi::ErrorBody)))]
pub(crate) async fn uninstall(
    State(host): State<Host>,
    Path(name): Path<String>,
    query: Result<Query<UninstallQuery>, QueryRejection>,
) -> Result<Json<UnloadedDto>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    Ok(Json(host.uninstall(&name, q.keep_data).await?.into()))
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
}

/// Who changed params, for their history: the CLI says so in its user agent.
fn source(headers: &HeaderMap) -> &'static str {
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if agent.starts_with("plugd-cli") {
        "cli"
    } else {
        "api"
    }
}

/// A params body: any JSON value (the host says what is wrong with a non-object).
fn json_body(body: Result<Bytes, BytesRejection>, max_body: usize) -> Result<Value, ApiError> {
    let body = body.map_err(|rejection| body_error(rejection, max_body))?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("Request body is not valid JSON: {e}"),
        )
    })
}

#[utoipa::path(get, path = "/api/v1/plugins/{name}/params", tag = "data",
    description = "The plugin's params and the JSON Schema they follow. Scope: `read`.",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, description = "Params and schema", body = ParamsDto), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody), (status = 503, description = "The store is busy", body = crate::openapi::ErrorBody)))]
pub(crate) async fn params(
    State(host): State<Host>,
    Path(name): Path<String>,
) -> Result<Json<ParamsDto>, ApiError> {
    let view = host.params(&name).await?;
    Ok(Json(ParamsDto {
        params: view.value,
        schema: view.schema,
    }))
}

/// `PUT`: the body replaces the params (keys left out take their defaults).
#[utoipa::path(put, path = "/api/v1/plugins/{name}/params", tag = "data",
    description = "Replaces the params (keys left out take their defaults); validated whole against the schema. Scope: `params:write`.",
    params(("name" = String, Path, description = "Plugin name")), request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "The params as stored", body = Object), (status = 400, description = "`bad_json` or `bad_params` (with `violations`)", body = crate::openapi::ErrorBody), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody), (status = 409, description = "`conflict`", body = crate::openapi::ErrorBody), (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorBody), (status = 429, description = "`overloaded`", body = crate::openapi::ErrorBody), (status = 503, description = "The store is busy", body = crate::openapi::ErrorBody)))]
pub(crate) async fn put_params(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let value = json_body(body, state.max_body)?;
    let params = state
        .host
        .set_params(&name, value, source(&headers))
        .await?;
    Ok(Json(serde_json::json!({ "params": params })))
}

/// `PATCH`: the body is a JSON merge patch (RFC 7396; `null` resets a key to its default).
#[utoipa::path(patch, path = "/api/v1/plugins/{name}/params", tag = "data",
    description = "Changes params with a JSON merge patch (RFC 7396; `null` resets a key). Scope: `params:write`.",
    params(("name" = String, Path, description = "Plugin name")), request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "The params as stored", body = Object), (status = 400, description = "`bad_json` or `bad_params` (with `violations`)", body = crate::openapi::ErrorBody), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody), (status = 409, description = "`conflict`", body = crate::openapi::ErrorBody), (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorBody), (status = 429, description = "`overloaded`", body = crate::openapi::ErrorBody), (status = 503, description = "The store is busy", body = crate::openapi::ErrorBody)))]
pub(crate) async fn patch_params(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let patch = json_body(body, state.max_body)?;
    let params = state
        .host
        .patch_params(&name, patch, source(&headers))
        .await?;
    Ok(Json(serde_json::json!({ "params": params })))
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    limit: Option<usize>,
}

/// The most revisions one history request returns.
const MAX_HISTORY: usize = 1000;

#[utoipa::path(get, path = "/api/v1/plugins/{name}/params/history", tag = "data",
    description = "Stored params changes, newest first. Scope: `read`.",
    params(("name" = String, Path, description = "Plugin name"), ("limit" = Option<usize>, Query, description = "Most revisions (default 20, at most 1000)")),
    responses((status = 200, description = "Revisions", body = ParamsHistoryDto), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn params_history(
    State(host): State<Host>,
    Path(name): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<ParamsHistoryDto>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(20).clamp(1, MAX_HISTORY);
    let revisions = host.params_history(&name, limit).await?;
    Ok(Json(ParamsHistoryDto {
        plugin: name,
        revisions: revisions.into_iter().map(RevisionDto::from).collect(),
    }))
}

#[derive(Deserialize)]
pub(crate) struct KvQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/plugins/{name}/kv", tag = "data",
    description = "A page of the plugin's kv entries, sorted by key. Scope: `kv:read`.",
    params(("name" = String, Path, description = "Plugin name"), ("prefix" = Option<String>, Query, description = "Only keys starting with this"), ("after" = Option<String>, Query, description = "Keys after this one (the previous page's `next`)"), ("limit" = Option<usize>, Query, description = "Most entries")),
    responses((status = 200, description = "Entries", body = KvPageDto), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody)))]
/// A read-only page of a plugin's kv entries.
pub(crate) async fn kv(
    State(host): State<Host>,
    Path(name): Path<String>,
    query: Result<Query<KvQuery>, QueryRejection>,
) -> Result<Json<KvPageDto>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(100).clamp(1, plugd_host::MAX_PAGE);
    let (items, next) = host
        .kv_page(&name, &q.prefix, q.after.as_deref(), limit)
        .await?;
    Ok(Json(KvPageDto {
        items: items
            .into_iter()
            .map(|(key, value)| KvItemDto { key, value })
            .collect(),
        next,
    }))
}

#[utoipa::path(post, path = "/api/v1/plugins/{name}/reload", tag = "plugins",
    description = "Verifies and resolves the package as it is on disk and swaps that version in without dropping a call; if it cannot load, the running version keeps serving. Scope: `admin`.",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, description = "The plugin after the operation", body = PluginDto), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody), (status = 409, description = "`cannot_load`: the package or a dependency cannot be loaded", body = crate::openapi::ErrorBody), (status = 502, description = "The plugin failed to start", body = crate::openapi::ErrorBody), (status = 503, description = "`not_running`", body = crate::openapi::ErrorBody), (status = 504, description = "A start or stop took too long", body = crate::openapi::ErrorBody)))]
pub(crate) async fn reload(
    State(host): State<Host>,
    Path(name): Path<String>,
) -> Result<Json<PluginDto>, ApiError> {
    Ok(Json(host.reload(&name).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/plugins/{name}/restart", tag = "plugins",
    description = "A fresh instance from the package on disk, started beside the old one; clears `failed`. Scope: `admin`.",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, description = "The plugin after the operation", body = PluginDto), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody), (status = 409, description = "`cannot_load`: the package or a dependency cannot be loaded", body = crate::openapi::ErrorBody), (status = 502, description = "The plugin failed to start", body = crate::openapi::ErrorBody), (status = 503, description = "`not_running`", body = crate::openapi::ErrorBody), (status = 504, description = "A start or stop took too long", body = crate::openapi::ErrorBody)))]
pub(crate) async fn restart(
    State(host): State<Host>,
    Path(name): Path<String>,
) -> Result<Json<PluginDto>, ApiError> {
    Ok(Json(host.restart(&name).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/gc", tag = "plugins",
    description = "Removes staged package copies, compiled code and Python environments no running plugin uses. Scope: `admin`.",
    responses((status = 200, description = "What was removed", body = Object), (status = 503, description = "Busy", body = crate::openapi::ErrorBody)))]
pub(crate) async fn gc(State(host): State<Host>) -> Result<Json<serde_json::Value>, ApiError> {
    let c = host.collect_garbage().await?;
    Ok(Json(serde_json::json!({
        "packages": c.packages.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "package_bytes": c.package_bytes,
        "runtime_bytes": c.runtime_bytes,
        "envs": c.envs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "env_bytes": c.env_bytes,
    })))
}

/// A route that exists, asked with another method.
async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    let hint = if method == Method::GET {
        "actions and lifecycle operations are `POST`"
    } else {
        "listings, status, logs, params and kv are `GET`; actions and lifecycle operations are `POST`; params change with `PUT` or `PATCH`, `DELETE /api/v1/plugins/NAME` uninstalls"
    };
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "Route `{}` does not accept `{method}`; hint: {hint}",
            uri.path()
        ),
    )
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "No route `{}`; hint: calls are `POST /plugin/NAME/ACTION`, the plugins are listed at `GET /api/v1/plugins`",
            uri.path()
        ),
    )
}
