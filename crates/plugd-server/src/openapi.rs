//! `GET /api/v1/openapi.json`: the API's OpenAPI 3.1 document, derived by `utoipa` from the
//! handlers' `#[utoipa::path]` attributes and the DTOs' `ToSchema` derives. A route added to
//! `routes::router` without a documented handler fails `every_route_is_documented`.
//!
//! Every operation needs a credential once auth is on (see `auth`): the modifier below adds the
//! security requirement and the 401/403 answers to all of them but the public ones.

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder, SecurityRequirement};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::ViolationDto;

/// The error body every failure answers with.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
struct ErrorDetail {
    /// Stable machine-readable code: `plugin_not_found`, `unauthorized`, `forbidden`, ...
    code: String,
    /// Human message, with a hint where the fix is known.
    message: String,
    /// For `bad_params`: each way the value breaks the schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    violations: Option<Vec<ViolationDto>>,
    /// For `invalid_script`: each finding of the static check (`kind`, `severity`, `line`,
    /// `column`, `message`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    problems: Option<Vec<serde_json::Value>>,
    /// Further items, one sentence each (a template's missing variables, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Vec<String>>,
}

/// Routes that answer without a credential (and so document no 401/403).
const PUBLIC: &[&str] = &[
    "/healthz",
    "/readyz",
    "/api/v1/session",
    "/ui",
    "/ui/",
    "/ui/{file}",
];

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `plugd token create` (`plugd_...`); see the scopes in each operation's description",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::SESSION_COOKIE,
                "The dashboard's session cookie, from `POST /api/v1/session`",
            ))),
        );
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                "ErrorBody",
                            ))))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if PUBLIC.contains(&path.as_str()) {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
            ]
            .into_iter()
            .flatten()
            {
                op.security = Some(vec![
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                    SecurityRequirement::new("session", Vec::<String>::new()),
                ]);
                let responses = &mut op.responses.responses;
                responses.entry("401".to_owned()).or_insert_with(|| {
                    error("`unauthorized` or `invalid_token`: no valid token or session")
                });
                responses.entry("403".to_owned()).or_insert_with(|| {
                    error("`forbidden`: the token lacks the scope; `cross_origin`: a session used from another origin")
                });
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "plugd",
        description = "The plugd HTTP API: call plugin actions, manage plugins, params, kv, events and background tasks, scripts and their runs, tokens. Errors are `{\"error\": {\"code\", \"message\"}}`. Once a token exists (or with `--auth required`) every route but health, readiness and the dashboard's log-in needs `Authorization: Bearer TOKEN` or the dashboard's session cookie; each operation names the scope it needs."
    ),
    paths(
        crate::routes::health,
        crate::routes::ready,
        crate::routes::call,
        crate::routes::call_v1,
        crate::routes::list,
        crate::routes::list_admin,
        crate::routes::show,
        crate::routes::uninstall,
        crate::logs::recent,
        crate::logs::follow,
        crate::routes::params,
        crate::routes::put_params,
        crate::routes::patch_params,
        crate::routes::params_history,
        crate::routes::kv,
        crate::routes::load,
        crate::routes::unload,
        crate::routes::reload,
        crate::routes::restart,
        crate::routes::gc,
        crate::routes::plugin_http_root,
        crate::routes::plugin_http,
        crate::events::history,
        crate::events::publish,
        crate::events::follow,
        crate::events::dead,
        crate::events::replay,
        crate::tasks::list,
        crate::tasks::submit,
        crate::tasks::watch,
        crate::tasks::show,
        crate::tasks::cancel,
        crate::scripts::list,
        crate::scripts::add,
        crate::scripts::show,
        crate::scripts::edit,
        crate::scripts::permissions,
        crate::scripts::remove,
        crate::scripts::versions,
        crate::scripts::version,
        crate::scripts::diff,
        crate::scripts::rollback,
        crate::scripts::check,
        crate::scripts::run_script,
        crate::scripts::script_runs,
        crate::scripts::run_file,
        crate::scripts::runs,
        crate::scripts::show_run,
        crate::scripts::cancel,
        crate::scripts::follow,
        crate::scripts::templates,
        crate::scripts::add_template,
        crate::scripts::template,
        crate::scripts::remove_template,
        crate::scripts::instantiate,
        crate::scripts::export,
        crate::scripts::import,
        crate::auth::session,
        crate::auth::log_in,
        crate::auth::log_out,
        crate::auth::list_tokens,
        crate::auth::create_token,
        crate::auth::revoke_token,
        metrics,
        openapi,
        ui_index,
        ui_root,
        ui_file,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "calls", description = "Calling plugin actions"),
        (name = "plugins", description = "Plugins: listing, lifecycle, logs"),
        (name = "data", description = "Plugins' params and kv"),
        (name = "events", description = "Durable events"),
        (name = "tasks", description = "Durable background tasks"),
        (name = "scripts", description = "Stand-alone Python scripts: versions, templates, archives"),
        (name = "runs", description = "Confined script runs with live output, progress, CPU and memory"),
        (name = "plugin-http", description = "Plugins' own HTTP servers, proxied"),
        (name = "auth", description = "Tokens and dashboard sessions"),
        (name = "operations", description = "Metrics, the API document, the dashboard"),
    )
)]
struct ApiDoc;

/// The document, serialised once.
pub(crate) fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serialises")
    })
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    description = "This document. Scope: `read`.",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi() -> Response {
    let mut response = document().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

// Routes served by handlers whose modules document nothing (the metrics exporter, the
// dashboard's static files): their documentation lives here.

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    description = "Prometheus metrics (text exposition format). Scope: `read`, none with `plugd serve --metrics-public`.",
    responses((status = 200, description = "The metrics", content_type = "text/plain", body = String), (status = 404, description = "`metrics_disabled`: the server runs with `--no-metrics`", body = ErrorBody), (status = 503, description = "`metrics_unavailable`: another metrics recorder was installed in this process first", body = ErrorBody))
)]
#[allow(dead_code)]
fn metrics() {}

#[utoipa::path(
    get,
    path = "/ui",
    tag = "operations",
    description = "Redirects to the dashboard (`/ui/`). No credential needed.",
    responses((status = 308, description = "To `/ui/`"))
)]
#[allow(dead_code)]
fn ui_root() {}

#[utoipa::path(
    get,
    path = "/ui/",
    tag = "operations",
    description = "The dashboard's page; it logs in with a token and then uses the API with a session cookie. No credential needed.",
    responses((status = 200, description = "HTML", content_type = "text/html", body = String))
)]
#[allow(dead_code)]
fn ui_index() {}

#[utoipa::path(
    get,
    path = "/ui/{file}",
    tag = "operations",
    description = "The dashboard's static files. No credential needed.",
    params(("file" = String, Path, description = "Asset path")),
    responses(
        (status = 200, description = "The asset", content_type = "application/octet-stream", body = String),
        (status = 304, description = "Unchanged (`If-None-Match`)"),
        (status = 404, description = "`not_found`", body = ErrorBody),
    )
)]
#[allow(dead_code)]
fn ui_file() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths the router serves, read from the `.route("...")` calls of the crate's sources:
    /// a route added without documentation fails here.
    fn routed_paths() -> Vec<String> {
        let mut paths = Vec::new();
        for source in [
            include_str!("routes.rs"),
            include_str!("ui.rs"),
            include_str!("auth.rs"),
        ] {
            let mut rest = source;
            while let Some(at) = rest.find(".route(") {
                rest = rest[at + 7..].trim_start();
                let Some(literal) = rest.strip_prefix('"') else {
                    continue;
                };
                let end = literal.find('"').expect("a closed string literal");
                paths.push(literal[..end].to_owned());
            }
        }
        paths
    }

    /// `{*rest}` is written `{rest}` in OpenAPI; `/plugins/{name}/` is `/plugins/{name}` with an
    /// empty rest.
    fn normalised(path: &str) -> String {
        let path = path.replace("{*", "{");
        if path == "/plugins/{name}/" {
            "/plugins/{name}".to_owned()
        } else {
            path
        }
    }

    #[test]
    fn every_route_is_documented() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        let documented: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        let routed = routed_paths();
        assert!(routed.len() > 30, "the scan found the routes: {routed:?}");
        for path in &routed {
            let path = normalised(path);
            assert!(
                documented.iter().any(|d| **d == path),
                "route `{path}` is not in the OpenAPI document: add `#[utoipa::path]` to its handler and list it in `ApiDoc`"
            );
        }
    }

    #[test]
    fn protected_operations_name_their_scope_and_its_refusals() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if !PUBLIC.contains(&path.as_str()) {
                    let responses = op["responses"].as_object().unwrap();
                    assert!(
                        responses.contains_key("401") && responses.contains_key("403"),
                        "{method} {path}: a protected operation documents 401 and 403"
                    );
                    assert!(op["security"].is_array(), "{method} {path}");
                    let description = op["description"].as_str().unwrap_or_default();
                    assert!(
                        description.contains("Scope: "),
                        "{method} {path} does not name its scope: {description:?}"
                    );
                }
            }
        }
    }
}
