//! The script manager's routes: `/api/v1/scripts`, `/api/v1/templates` and `/api/v1/runs`,
//! thin over [`plugd_scripts::Scripts`]. Reading needs `read`; running and cancelling
//! `scripts:run`; changing scripts and templates `admin`.

use std::convert::Infallible;

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use plugd_scripts::meta::Overrides;
use plugd_scripts::run::RunEvent;
use plugd_scripts::template::Var;
use plugd_scripts::{AddRequest, ListFilter, RunRequest, RunTarget, ScriptError, Scripts};
use plugd_store::AddMode;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::AppState;
use crate::stream::{self, Shutdown};

impl From<ScriptError> for ApiError {
    fn from(e: ScriptError) -> ApiError {
        let status = match e.code {
            "bad_request" | "invalid_script" | "dependencies" => StatusCode::BAD_REQUEST,
            "not_found" => StatusCode::NOT_FOUND,
            "conflict" => StatusCode::CONFLICT,
            "overloaded" => StatusCode::TOO_MANY_REQUESTS,
            "untrusted" | "forbidden" => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut api = ApiError::new(status, e.code, e.message);
        if !e.problems.is_empty() || !e.details.is_empty() {
            api.extra = Some(Box::new(crate::error::ErrorExtra {
                problems: e
                    .problems
                    .iter()
                    .map(|p| serde_json::to_value(p).unwrap_or_default())
                    .collect(),
                details: e.details,
                retry_after: None,
            }));
        }
        api
    }
}

fn manager(state: &AppState) -> Result<&Scripts, ApiError> {
    state.scripts.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "scripts_unavailable",
            "This server runs no script manager",
        )
    })
}

/// Whether the caller may widen what a script may do: `admin`, or a server without auth.
fn privileged(state: &AppState, caller: &Caller) -> bool {
    match &caller.0 {
        Some(grant) => grant.allows(&crate::auth::Scope::Admin),
        None => !state.auth.active(),
    }
}

fn who(caller: &Caller, headers: &HeaderMap) -> String {
    match &caller.0 {
        Some(grant) => grant.name.clone(),
        None => stream::who(headers).to_owned(),
    }
}

fn id_path(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|p| p.0)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
}

const ADD_SHAPE: &str =
    r#"{"source": "print('hi')", "id"?: "...", "overrides"?: {"tags": [...], "limits": {...}}}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    id: Option<String>,
    source: String,
    #[serde(default)]
    overrides: Overrides,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct AddDoc {
    /// The script id; default: its `[tool.plugd] id`.
    id: Option<String>,
    /// The Python source, with its PEP 723 block.
    source: String,
    /// Overrides of its metadata: `name`, `description`, `author`, `category`, `tags`,
    /// `allowed_imports`, `read`, `write`, `network`, `filesystem`, `limits` (`memory`, `cpu`,
    /// `wall`, `output`, `processes`).
    #[schema(value_type = Option<Object>)]
    overrides: Option<Value>,
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    tag: Option<String>,
    category: Option<String>,
    search: Option<String>,
}

/// `GET /api/v1/scripts`.
#[utoipa::path(get, path = "/api/v1/scripts", tag = "scripts",
    description = "Registered scripts with their current version's metadata. Scope: `read`.",
    params(("tag" = Option<String>, Query, description = "Only those with this tag"), ("category" = Option<String>, Query, description = "Only this category"), ("search" = Option<String>, Query, description = "Id, name or description contains this")),
    responses((status = 200, description = "`{\"scripts\": [...]}`", body = Object), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = stream::query(query)?;
    let scripts = manager(&state)?
        .list(&ListFilter {
            tag: q.tag,
            category: q.category,
            search: q.search,
        })
        .await?;
    Ok(Json(json!({ "scripts": scripts })))
}

/// `POST /api/v1/scripts`.
#[utoipa::path(post, path = "/api/v1/scripts", tag = "scripts",
    description = "Registers a script: its metadata from its PEP 723 block and `overrides`, checked statically, its dependencies locked. Scope: `admin`.",
    request_body(content = AddDoc, content_type = "application/json"),
    responses((status = 201, description = "Registered (`created` false: an earlier version had this content)", body = Object), (status = 400, description = "`bad_request`, `bad_json`, `invalid_script` (with `problems`) or `dependencies`", body = crate::openapi::ErrorBody), (status = 409, description = "`conflict`: the id is taken", body = crate::openapi::ErrorBody)))]
pub(crate) async fn add(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: AddBody = stream::body(body, state.max_body, ADD_SHAPE)?;
    let added = manager(&state)?
        .add(
            AddRequest {
                id: body.id,
                source: body.source,
                overrides: body.overrides,
            },
            AddMode::Create,
        )
        .await?;
    let mut response = (StatusCode::CREATED, Json(added.clone())).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/scripts/{}", added.script.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /api/v1/scripts/{id}`.
#[utoipa::path(get, path = "/api/v1/scripts/{id}", tag = "scripts",
    description = "A script: its current version with source and lock. Scope: `read`.",
    params(("id" = String, Path, description = "Script id")),
    responses((status = 200, description = "The script", body = Object), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn show(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = id_path(id)?;
    let scripts = manager(&state)?;
    let info = scripts.show(&id).await?;
    let version = scripts.version(&id, None).await?;
    let mut value = serde_json::to_value(info).unwrap_or_default();
    value["source"] = json!(version.source);
    value["lock"] = json!(version.lock);
    Ok(Json(value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditBody {
    source: Option<String>,
    #[serde(default)]
    overrides: Overrides,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct EditDoc {
    /// The new source; without it only the metadata changes.
    source: Option<String>,
    /// Overrides of its metadata.
    #[schema(value_type = Option<Object>)]
    overrides: Option<Value>,
}

/// `PUT /api/v1/scripts/{id}`.
#[utoipa::path(put, path = "/api/v1/scripts/{id}", tag = "scripts",
    description = "Adds a version: a new source (its metadata from its block and `overrides`), or only `overrides` on the current version. Content an earlier version had makes that version current. Scope: `admin`.",
    params(("id" = String, Path, description = "Script id")),
    request_body(content = EditDoc, content_type = "application/json"),
    responses((status = 200, description = "The version", body = Object), (status = 400, description = "`bad_request`, `bad_json`, `invalid_script` or `dependencies`", body = crate::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn edit(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<plugd_scripts::Added>, ApiError> {
    let id = id_path(id)?;
    let body: EditBody = stream::body(
        body,
        state.max_body,
        r#"{"source"?: "...", "overrides"?: {...}}"#,
    )?;
    let scripts = manager(&state)?;
    let added = match body.source {
        Some(source) => {
            scripts
                .add(
                    AddRequest {
                        id: Some(id),
                        source,
                        overrides: body.overrides,
                    },
                    AddMode::Edit,
                )
                .await?
        }
        None => scripts.set_meta(&id, &body.overrides).await?,
    };
    Ok(Json(added))
}

/// `PUT /api/v1/scripts/{id}/permissions`.
#[utoipa::path(put, path = "/api/v1/scripts/{id}/permissions", tag = "scripts",
    description = "Adds a version with changed permissions or limits (the body is `overrides`: `allowed_imports`, `read`, `write`, `network`, `filesystem`, `limits`). Scope: `admin`.",
    params(("id" = String, Path, description = "Script id")),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "The version", body = Object), (status = 400, description = "`bad_request` or `invalid_script`", body = crate::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn permissions(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<plugd_scripts::Added>, ApiError> {
    let id = id_path(id)?;
    let overrides: Overrides = stream::body(
        body,
        state.max_body,
        r#"{"network": false, "limits": {"memory": "128MiB"}}"#,
    )?;
    Ok(Json(manager(&state)?.set_meta(&id, &overrides).await?))
}

/// `DELETE /api/v1/scripts/{id}`.
#[utoipa::path(delete, path = "/api/v1/scripts/{id}", tag = "scripts",
    description = "Removes a script and its versions (its runs stay in the history). Scope: `admin`.",
    params(("id" = String, Path, description = "Script id")),
    responses((status = 204, description = "Removed"), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = id_path(id)?;
    manager(&state)?.remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/scripts/{id}/versions`.
#[utoipa::path(get, path = "/api/v1/scripts/{id}/versions", tag = "scripts",
    description = "Every version, oldest first. Scope: `read`.",
    params(("id" = String, Path, description = "Script id")),
    responses((status = 200, description = "`{\"versions\": [...]}`", body = Object), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn versions(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = id_path(id)?;
    Ok(Json(
        json!({ "versions": manager(&state)?.versions(&id).await? }),
    ))
}

/// `GET /api/v1/scripts/{id}/versions/{version}`.
#[utoipa::path(get, path = "/api/v1/scripts/{id}/versions/{version}", tag = "scripts",
    description = "One version with its source and lock. Scope: `read`.",
    params(("id" = String, Path, description = "Script id"), ("version" = u64, Path, description = "Version")),
    responses((status = 200, description = "The version", body = Object), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn version(
    State(state): State<AppState>,
    path: Result<Path<(String, u64)>, PathRejection>,
) -> Result<Json<plugd_scripts::VersionInfo>, ApiError> {
    let (id, version) = stream::path(path)?;
    Ok(Json(manager(&state)?.version(&id, Some(version)).await?))
}

#[derive(Deserialize)]
pub(crate) struct DiffQuery {
    from: u64,
    to: u64,
}

/// `GET /api/v1/scripts/{id}/diff`.
#[utoipa::path(get, path = "/api/v1/scripts/{id}/diff", tag = "scripts",
    description = "A unified diff of two versions (source, then metadata). Scope: `read`.",
    params(("id" = String, Path, description = "Script id"), ("from" = u64, Query, description = "Older version"), ("to" = u64, Query, description = "Newer version")),
    responses((status = 200, description = "`{\"diff\": \"...\"}`", body = Object), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn diff(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = id_path(id)?;
    let q = stream::query(query)?;
    Ok(Json(
        json!({ "diff": manager(&state)?.diff(&id, q.from, q.to).await? }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackBody {
    /// The version runs should use from now on.
    version: u64,
}

/// `POST /api/v1/scripts/{id}/rollback`.
#[utoipa::path(post, path = "/api/v1/scripts/{id}/rollback", tag = "scripts",
    description = "Makes an earlier (or later) version the one runs use. Scope: `admin`.",
    params(("id" = String, Path, description = "Script id")),
    request_body(content = RollbackBody, content_type = "application/json"),
    responses((status = 200, description = "The script", body = Object), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`not_found`: no such script or version", body = crate::openapi::ErrorBody)))]
pub(crate) async fn rollback(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<plugd_scripts::ScriptInfo>, ApiError> {
    let id = id_path(id)?;
    let body: RollbackBody = stream::body(body, state.max_body, r#"{"version": 1}"#)?;
    Ok(Json(manager(&state)?.rollback(&id, body.version).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckBody {
    /// The Python source.
    source: String,
    /// Overrides of its metadata.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    overrides: Overrides,
}

/// `POST /api/v1/scripts/check`.
#[utoipa::path(post, path = "/api/v1/scripts/check", tag = "scripts",
    description = "Reads a script's metadata and checks it statically (syntax, imports, literal paths); stores and runs nothing. Scope: `read`.",
    request_body(content = CheckBody, content_type = "application/json"),
    responses((status = 200, description = "`{\"ok\", \"meta\", \"problems\"}`", body = Object), (status = 400, description = "`bad_request`: its metadata block is invalid", body = crate::openapi::ErrorBody)))]
pub(crate) async fn check(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body: CheckBody = stream::body(body, state.max_body, r#"{"source": "..."}"#)?;
    let (meta, problems) = manager(&state)?.check(&body.source, &body.overrides)?;
    let ok = problems
        .iter()
        .all(|p| p.severity == plugd_scripts::check::Severity::Warning);
    Ok(Json(
        json!({ "ok": ok, "meta": meta, "problems": problems }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunBody {
    #[serde(default)]
    args: Map<String, Value>,
    version: Option<u64>,
    #[serde(default)]
    wait: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct RunDoc {
    /// The arguments (`script.args()`), a JSON object.
    #[schema(value_type = Option<Object>)]
    args: Option<Value>,
    /// The version to run (default: the current one).
    version: Option<u64>,
    /// Answer when the run has ended, with its record.
    wait: Option<bool>,
}

/// `POST /api/v1/scripts/{id}/runs`.
#[utoipa::path(post, path = "/api/v1/scripts/{id}/runs", tag = "runs",
    description = "Runs a registered script, confined, with arguments. Answers 202 with the queued run at once, or with `wait` 200 with its record once it ended. Follow it with `GET /api/v1/runs/{id}/stream`. Scope: `scripts:run`.",
    params(("id" = String, Path, description = "Script id")),
    request_body(content = RunDoc, content_type = "application/json"),
    responses((status = 202, description = "Queued", body = Object), (status = 200, description = "`wait`: ended (any state)", body = Object), (status = 400, description = "`bad_request` or `invalid_script`", body = crate::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody), (status = 429, description = "`overloaded`: too many runs waiting", body = crate::openapi::ErrorBody)))]
pub(crate) async fn run_script(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = id_path(id)?;
    let body: RunBody = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => RunBody::default(),
        _ => stream::body(
            body,
            state.max_body,
            r#"{"args"?: {...}, "version"?: 2, "wait"?: true}"#,
        )?,
    };
    start(
        &state,
        RunRequest {
            target: RunTarget::Script {
                id,
                version: body.version,
            },
            args: body.args,
            who: who(&caller, &headers),
            privileged: privileged(&state, &caller),
        },
        body.wait,
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRunBody {
    name: Option<String>,
    source: String,
    #[serde(default)]
    overrides: Overrides,
    #[serde(default)]
    args: Map<String, Value>,
    #[serde(default)]
    wait: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct FileRunDoc {
    /// The file's name, for the record (default `script.py`).
    name: Option<String>,
    /// Its source.
    source: String,
    /// Overrides of its metadata.
    #[schema(value_type = Option<Object>)]
    overrides: Option<Value>,
    /// The arguments.
    #[schema(value_type = Option<Object>)]
    args: Option<Value>,
    /// Answer when the run has ended.
    wait: Option<bool>,
}

/// `POST /api/v1/runs`.
#[utoipa::path(post, path = "/api/v1/runs", tag = "runs",
    description = "Runs a script's source without registering it: still checked, confined and recorded. Scope: `scripts:run`.",
    request_body(content = FileRunDoc, content_type = "application/json"),
    responses((status = 202, description = "Queued", body = Object), (status = 200, description = "`wait`: ended (any state)", body = Object), (status = 400, description = "`bad_request`, `bad_json`, `invalid_script` or `dependencies`", body = crate::openapi::ErrorBody), (status = 429, description = "`overloaded`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn run_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: FileRunBody = stream::body(
        body,
        state.max_body,
        r#"{"source": "...", "args"?: {...}, "wait"?: true}"#,
    )?;
    start(
        &state,
        RunRequest {
            target: RunTarget::Source {
                name: body.name.unwrap_or_else(|| "script.py".into()),
                source: body.source,
                overrides: body.overrides,
            },
            args: body.args,
            who: who(&caller, &headers),
            privileged: privileged(&state, &caller),
        },
        body.wait,
    )
    .await
}

async fn start(state: &AppState, req: RunRequest, wait: bool) -> Result<Response, ApiError> {
    let scripts = manager(state)?;
    let started = scripts.run(req).await?;
    let location = format!("/api/v1/runs/{}", started.id);
    let (status, view) = if wait {
        (StatusCode::OK, scripts.wait(started.id).await?)
    } else {
        (StatusCode::ACCEPTED, scripts.run_view(started.id).await?)
    };
    let mut response = (status, Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Most runs one page lists: a run carries up to 64 KiB of output and its result.
const MAX_RUNS_PAGE: usize = 200;

#[derive(Deserialize)]
pub(crate) struct RunsQuery {
    script: Option<String>,
    before: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/v1/runs`.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs",
    description = "Runs, newest first. Scope: `read`.",
    params(("script" = Option<String>, Query, description = "Only this script's"), ("before" = Option<u64>, Query, description = "Only ids below this"), ("limit" = Option<usize>, Query, description = "Most runs (default 50, at most 200)")),
    responses((status = 200, description = "`{\"runs\": [...]}`", body = Object), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`not_found`: no such script", body = crate::openapi::ErrorBody)))]
pub(crate) async fn runs(
    State(state): State<AppState>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = stream::query(query)?;
    let runs = manager(&state)?
        .runs(
            q.script.as_deref(),
            q.before,
            q.limit.unwrap_or(50).min(MAX_RUNS_PAGE),
        )
        .await?;
    Ok(Json(json!({ "runs": runs })))
}

/// `GET /api/v1/scripts/{id}/runs`.
#[utoipa::path(get, path = "/api/v1/scripts/{id}/runs", tag = "runs",
    description = "A script's runs, newest first. Scope: `read`.",
    params(("id" = String, Path, description = "Script id"), ("before" = Option<u64>, Query, description = "Only ids below this"), ("limit" = Option<usize>, Query, description = "Most runs (default 50, at most 200)")),
    responses((status = 200, description = "`{\"runs\": [...]}`", body = Object), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn script_runs(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = id_path(id)?;
    let q = stream::query(query)?;
    let runs = manager(&state)?
        .runs(
            Some(&id),
            q.before,
            q.limit.unwrap_or(50).min(MAX_RUNS_PAGE),
        )
        .await?;
    Ok(Json(json!({ "runs": runs })))
}

/// `GET /api/v1/runs/{id}`.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs",
    description = "One run: its record (state, version, args, who, timings, exit status, peak memory, CPU time, output excerpt, result) and, while it runs, its latest progress and sample (`live`). Scope: `read`.",
    params(("id" = u64, Path, description = "Run id")),
    responses((status = 200, description = "The run", body = Object), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn show_run(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<plugd_scripts::RunView>, ApiError> {
    let id = stream::path(id)?;
    Ok(Json(manager(&state)?.run_view(id).await?))
}

/// `POST /api/v1/runs/{id}/cancel`.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "runs",
    description = "Cancels a run: a queued one ends at once, a running one is killed. Scope: `scripts:run`.",
    params(("id" = u64, Path, description = "Run id")),
    responses((status = 202, description = "Cancelling; the run's stream or record shows `cancelled`", body = Object), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody), (status = 409, description = "`conflict`: it has ended", body = crate::openapi::ErrorBody)))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = stream::path(id)?;
    manager(&state)?.cancel(id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "cancelling": true })),
    ))
}

/// `GET /api/v1/runs/{id}/stream`.
#[utoipa::path(get, path = "/api/v1/runs/{id}/stream", tag = "runs",
    description = "Server-Sent Events of one run: `snapshot` (its state now), then `output` (`{stream, text}`), `progress` (`{fraction, message}`), `sample` (`{elapsed_ms, cpu_percent, cpu_ms, memory, peak_memory}`) as they happen, and `ended` with its final record, after which the stream ends. A run that has ended gives `ended` at once. Scope: `read`.",
    params(("id" = u64, Path, description = "Run id")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn follow(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = stream::path(id)?;
    let scripts = manager(&state)?.clone();
    let (first, rx) = match scripts.follow(id) {
        Some((snapshot, rx)) => (stream::sse_json("snapshot", &snapshot), Some(rx)),
        None => {
            let view = scripts.run_view(id).await?;
            (stream::sse_json("ended", &view), None)
        }
    };
    let follow = Follow {
        id,
        scripts,
        first: Some(first),
        rx,
        done: false,
        shutdown: state.shutdown.clone(),
    };
    Ok(Sse::new(futures::stream::unfold(follow, Follow::next)).keep_alive(stream::keep_alive()))
}

struct Follow {
    id: u64,
    scripts: Scripts,
    first: Option<Event>,
    rx: Option<broadcast::Receiver<RunEvent>>,
    done: bool,
    shutdown: Shutdown,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Follow)> {
        if let Some(first) = self.first.take() {
            return Some((Ok(first), self));
        }
        if self.done {
            return None;
        }
        let rx = self.rx.as_mut()?;
        {
            let event = tokio::select! {
                e = rx.recv() => e,
                () = self.shutdown.wait() => return None,
            };
            let event = match event {
                Ok(RunEvent::Ended { .. }) | Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    let view = self.scripts.run_view(self.id).await.ok();
                    return Some((Ok(stream::sse_json("ended", &view)), self));
                }
                Ok(RunEvent::Output { stream, text }) => {
                    stream::sse_json("output", &json!({ "stream": stream, "text": text }))
                }
                Ok(RunEvent::Progress { fraction, message }) => stream::sse_json(
                    "progress",
                    &json!({ "fraction": fraction, "message": message }),
                ),
                Ok(RunEvent::Sample(sample)) => stream::sse_json("sample", &sample),
                Ok(RunEvent::Started { run, at_ms }) => {
                    stream::sse_json("started", &json!({ "run": run, "at_ms": at_ms }))
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    stream::sse_json("lagged", &json!({ "missed": n }))
                }
            };
            Some((Ok(event), self))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateBody {
    name: String,
    #[serde(default)]
    description: String,
    source: String,
    #[serde(default)]
    vars: Vec<Var>,
    #[serde(default)]
    var_specs: Vec<String>,
    #[serde(default)]
    replace: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct TemplateDoc {
    /// Its name.
    name: String,
    /// What it makes.
    description: Option<String>,
    /// The template text, with `{{ variable }}` placeholders.
    source: String,
    /// Variables as objects: `{"name", "type": "string|int|float|bool|enum", "choices"?, "required"?, "default"?, "description"?}`.
    #[schema(value_type = Option<Vec<Object>>)]
    vars: Option<Vec<Value>>,
    /// Variables as the CLI writes them: `NAME:TYPE[:required][=DEFAULT][#DESCRIPTION]`.
    var_specs: Option<Vec<String>>,
    /// Overwrite a template of that name.
    replace: Option<bool>,
}

/// `GET /api/v1/templates`.
#[utoipa::path(get, path = "/api/v1/templates", tag = "scripts",
    description = "Script templates. Scope: `read`.",
    responses((status = 200, description = "`{\"templates\": [...]}`", body = Object)))]
pub(crate) async fn templates(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({ "templates": manager(&state)?.templates().await? }),
    ))
}

/// `POST /api/v1/templates`.
#[utoipa::path(post, path = "/api/v1/templates", tag = "scripts",
    description = "Stores a template; its placeholders must name declared variables. Scope: `admin`.",
    request_body(content = TemplateDoc, content_type = "application/json"),
    responses((status = 201, description = "Stored", body = Object), (status = 400, description = "`bad_request` (with `details`) or `bad_json`", body = crate::openapi::ErrorBody), (status = 409, description = "`conflict`: the name is taken (send `replace`)", body = crate::openapi::ErrorBody)))]
pub(crate) async fn add_template(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<plugd_scripts::TemplateInfo>), ApiError> {
    let body: TemplateBody = stream::body(
        body,
        state.max_body,
        r#"{"name": "...", "source": "...", "var_specs": ["limit:int=10"]}"#,
    )?;
    let mut vars = body.vars;
    for spec in &body.var_specs {
        vars.push(
            plugd_scripts::template::parse_var(spec)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e))?,
        );
    }
    let stored = manager(&state)?
        .add_template(
            &body.name,
            &body.description,
            &body.source,
            vars,
            body.replace,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

/// `GET /api/v1/templates/{name}`.
#[utoipa::path(get, path = "/api/v1/templates/{name}", tag = "scripts",
    description = "One template. Scope: `read`.",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, description = "The template", body = Object), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn template(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<plugd_scripts::TemplateInfo>, ApiError> {
    let name = id_path(name)?;
    Ok(Json(manager(&state)?.template(&name).await?))
}

/// `DELETE /api/v1/templates/{name}`.
#[utoipa::path(delete, path = "/api/v1/templates/{name}", tag = "scripts",
    description = "Removes a template. Scope: `admin`.",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 204, description = "Removed"), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn remove_template(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = id_path(name)?;
    manager(&state)?.remove_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstantiateBody {
    id: String,
    #[serde(default)]
    values: Map<String, Value>,
    #[serde(default)]
    overrides: Overrides,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct InstantiateDoc {
    /// The new script's id.
    id: String,
    /// Variable values (JSON of the variable's type, or a string to convert).
    #[schema(value_type = Option<Object>)]
    values: Option<Value>,
    /// Overrides of the rendered script's metadata.
    #[schema(value_type = Option<Object>)]
    overrides: Option<Value>,
}

/// `POST /api/v1/templates/{name}/instantiate`.
#[utoipa::path(post, path = "/api/v1/templates/{name}/instantiate", tag = "scripts",
    description = "Renders the template with `values` and registers the result as script `id`. Missing or ill-typed values are refused, all listed in `details`. Scope: `admin`.",
    params(("name" = String, Path, description = "Template name")),
    request_body(content = InstantiateDoc, content_type = "application/json"),
    responses((status = 201, description = "Registered", body = Object), (status = 400, description = "`bad_request` (with `details`), `bad_json` or `invalid_script`", body = crate::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody), (status = 409, description = "`conflict`: the id is taken", body = crate::openapi::ErrorBody)))]
pub(crate) async fn instantiate(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<plugd_scripts::Added>), ApiError> {
    let name = id_path(name)?;
    let body: InstantiateBody = stream::body(
        body,
        state.max_body,
        r#"{"id": "...", "values": {"limit": 10}}"#,
    )?;
    let added = manager(&state)?
        .instantiate(&name, &body.id, &body.values, body.overrides)
        .await?;
    Ok((StatusCode::CREATED, Json(added)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExportBody {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all_versions: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct ExportDoc {
    /// Scripts to export (default: all).
    ids: Option<Vec<String>>,
    /// Every version (default: the current one).
    all_versions: Option<bool>,
}

/// `POST /api/v1/scripts/export`.
#[utoipa::path(post, path = "/api/v1/scripts/export", tag = "scripts",
    description = "An archive (tar.gz) of scripts with their versions, metadata and locks. Sign it where the key is: `plugd script export --key KEY`. Scope: `read`.",
    request_body(content = ExportDoc, content_type = "application/json"),
    responses((status = 200, description = "The archive", content_type = "application/gzip", body = Vec<u8>), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn export(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: ExportBody = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => ExportBody::default(),
        _ => stream::body(
            body,
            state.max_body,
            r#"{"ids"?: ["a"], "all_versions"?: true}"#,
        )?,
    };
    let bytes = manager(&state)?
        .export(&body.ids, body.all_versions, None)
        .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/gzip"),
        )],
        bytes,
    )
        .into_response())
}

#[derive(Deserialize)]
pub(crate) struct ImportQuery {
    #[serde(default)]
    require_signature: bool,
}

/// `POST /api/v1/scripts/import`.
#[utoipa::path(post, path = "/api/v1/scripts/import", tag = "scripts",
    description = "Imports an archive made by export: unsafe entries (`..`, absolute paths, links, devices) refuse it whole; a signature must verify against the server's trust store; every version's digest and checks are re-done before anything is stored. Scope: `admin`.",
    params(("require_signature" = Option<bool>, Query, description = "Refuse an unsigned archive")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The archive's bytes (a gzip'd tar; any content type is read as bytes)"),
    responses((status = 200, description = "`{\"scripts\": [{\"id\", \"versions_added\", \"current\"}], \"signed_by\"}`", body = Object), (status = 400, description = "`bad_request` or `invalid_script`", body = crate::openapi::ErrorBody), (status = 403, description = "`untrusted`: a bad, unknown or missing signature", body = crate::openapi::ErrorBody), (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn import(
    State(state): State<AppState>,
    query: Result<Query<ImportQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<plugd_scripts::ImportReport>, ApiError> {
    let q = stream::query(query)?;
    let body = body.map_err(|rejection| crate::routes::body_error(rejection, state.max_body))?;
    Ok(Json(
        manager(&state)?.import(&body, q.require_signature).await?,
    ))
}
