//! The tasks routes: submit, list, show, cancel and the live stream (Server-Sent Events).
//!
//! - `POST /api/v1/tasks` `{"plugin","task","payload"?,"key"?,"priority"?,"dedupe"?,
//!   "max_attempts"?}` → 201 with the task once it is durable (`queued`); 200 with the existing
//!   task (`deduped: true`) when `dedupe` found a queued task of that key.
//! - `GET /api/v1/tasks?plugin=&state=&key=&before=&limit=` → `{"tasks": [...], "next": ID}`,
//!   newest first (`next` is the `before` of the following page, `null` at the end).
//! - `GET /api/v1/tasks/{id}`; `POST /api/v1/tasks/{id}/cancel` (returns once the task is
//!   settled; 409 `conflict` for a finished task).
//! - `GET /api/v1/tasks/stream?plugin=NAME` or `?id=ID`: SSE. It starts with the current view of
//!   what it follows (the task; or every queued and running task, oldest first), then sends each
//!   change: a `task` event (data: the whole task) for each state change, a `progress` event
//!   (data: `{"id","plugin","state","progress","message"}`) for each progress report. A stream
//!   of one task ends after that task's final state. A receiver that lagged behind the host's
//!   updates sends the current view of every task it had shown as unfinished, then of every
//!   unfinished one. A store failure ends the stream with an `error` event.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use plugd_host::{Host, HostError, TaskQuery, TaskState, TaskSubmit, TaskView};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::routes::AppState;
use crate::stream::{self, Shutdown};

/// The most tasks one list request returns (and the most of each state a stream starts with).
const MAX_TASKS: usize = 1000;
/// Finished tasks a stream remembers, so an update it received late cannot undo their end.
const MAX_REMEMBERED: usize = 100_000;

/// A task as the API shows it.
#[derive(Serialize, ToSchema)]
pub(crate) struct TaskDto<'a> {
    pub id: u64,
    pub plugin: &'a str,
    pub task: &'a str,
    pub payload: &'a Value,
    pub key: Option<&'a str>,
    pub priority: bool,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: &'static str,
    /// Runs started so far (a run cut short by a host restart counts).
    pub attempts: u32,
    pub max_attempts: u32,
    /// Fraction done (0 to 1), as last reported.
    pub progress: Option<f64>,
    pub message: Option<&'a str>,
    pub result: Option<&'a Value>,
    pub error: Option<&'a str>,
    pub error_code: Option<&'a str>,
    /// Cancelled while running: whether the handler stopped.
    pub stopped: Option<bool>,
    /// ms since the Unix epoch.
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// A queued retry waits until then (0: no wait).
    pub not_before_ms: u64,
    /// The answer to a `dedupe` submit is this existing queued task.
    pub deduped: bool,
}

impl<'a> From<&'a TaskView> for TaskDto<'a> {
    fn from(t: &'a TaskView) -> Self {
        TaskDto {
            id: t.id,
            plugin: &t.plugin,
            task: &t.task,
            payload: &t.payload,
            key: t.key.as_deref(),
            priority: t.priority,
            state: t.state.as_str(),
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            progress: t.progress,
            message: t.message.as_deref(),
            result: t.result.as_ref(),
            error: t.error.as_deref(),
            error_code: t.error_code.as_deref(),
            stopped: t.stopped,
            submitted_ms: t.submitted_ms,
            started_ms: t.started_ms,
            finished_ms: t.finished_ms,
            not_before_ms: t.not_before_ms,
            deduped: t.deduped,
        }
    }
}

/// A progress report, as the stream sends it.
#[derive(Serialize, ToSchema)]
struct ProgressDto<'a> {
    id: u64,
    plugin: &'a str,
    state: &'static str,
    progress: Option<f64>,
    message: Option<&'a str>,
}

/// `POST /api/v1/tasks` body, for the API document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SubmitDoc {
    plugin: String,
    /// A task handler the plugin registered.
    task: String,
    /// Defaults to `{}`.
    payload: Option<Value>,
    key: Option<String>,
    priority: Option<bool>,
    /// With `key`: return the queued task of that key instead of adding one.
    dedupe: Option<bool>,
    /// 1 to 20 (default 3).
    max_attempts: Option<u32>,
}

/// A page of tasks, for the API document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct TaskPageDoc<'a> {
    tasks: Vec<TaskDto<'a>>,
    /// The id to pass as `before` for the next page (`null`: no more).
    next: Option<u64>,
}

const SUBMIT_SHAPE: &str = r#"{"plugin": "gallery", "task": "embed", "payload": {...}} with optional "key", "priority", "dedupe" and "max_attempts""#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    plugin: String,
    task: String,
    #[serde(default = "crate::events::empty_object")]
    payload: Value,
    key: Option<String>,
    #[serde(default)]
    priority: bool,
    #[serde(default)]
    dedupe: bool,
    max_attempts: Option<u32>,
}

/// `POST /api/v1/tasks`.
#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks",
    description = "Submits a background task to a plugin's queue. Scope: `tasks:submit`.",
    request_body(content = SubmitDoc, content_type = "application/json"),
    responses((status = 201, description = "Queued", body = TaskDto<'_>), (status = 200, description = "`dedupe`: the queued task of that key", body = TaskDto<'_>), (status = 400, description = "`bad_request` or `bad_json`", body = crate::openapi::ErrorBody), (status = 404, description = "`plugin_not_found` or unknown task", body = crate::openapi::ErrorBody), (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorBody), (status = 429, description = "`overloaded`: the plugin's queue is full", body = crate::openapi::ErrorBody), (status = 503, description = "Busy", body = crate::openapi::ErrorBody)))]
pub(crate) async fn submit(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: SubmitBody = stream::body(body, state.max_body, SUBMIT_SHAPE)?;
    if body.dedupe && body.key.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`dedupe` needs a `key`: it returns the queued task of that key instead of a new one",
        ));
    }
    let view = state
        .host
        .submit(TaskSubmit {
            plugin: body.plugin,
            task: body.task,
            payload: body.payload,
            key: body.key,
            priority: body.priority,
            dedupe: body.dedupe,
            max_attempts: body.max_attempts,
        })
        .await?;
    let status = if view.deduped {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut response = (status, Json(TaskDto::from(&view))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/tasks/{}", view.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    plugin: Option<String>,
    state: Option<String>,
    key: Option<String>,
    before: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/v1/tasks`.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks",
    description = "Tasks, newest first. Scope: `read`.",
    params(("plugin" = Option<String>, Query, description = "Only this plugin's"), ("state" = Option<String>, Query, description = "queued, running, succeeded, failed or cancelled"), ("key" = Option<String>, Query, description = "Only this key's"), ("before" = Option<u64>, Query, description = "Only ids below this (the previous page's `next`)"), ("limit" = Option<usize>, Query, description = "Most tasks (default 100, at most 1000)")),
    responses((status = 200, description = "Tasks", body = TaskPageDoc<'_>), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn list(
    State(host): State<Host>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = stream::query(query)?;
    let state = q.state.as_deref().map(parse_state).transpose()?;
    if let Some(plugin) = &q.plugin {
        host.plugin(plugin)?;
    }
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_TASKS);
    let tasks = host
        .tasks(TaskQuery {
            plugin: q.plugin,
            state,
            key: q.key,
            before: q.before,
            limit: Some(limit),
        })
        .await?;
    let next = (tasks.len() == limit)
        .then(|| tasks.last().map(|t| t.id))
        .flatten();
    Ok(Json(serde_json::json!({
        "tasks": tasks.iter().map(TaskDto::from).collect::<Vec<_>>(),
        "next": next,
    })))
}

fn parse_state(text: &str) -> Result<TaskState, ApiError> {
    TaskState::parse(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "Unknown task state `{}`; hint: use one of `queued`, `running`, `succeeded`, `failed`, `cancelled`",
                text.escape_default()
            ),
        )
    })
}

/// `GET /api/v1/tasks/{id}`.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks",
    description = "One task: state, attempts, progress, timings, payload, result or error. Scope: `read`.",
    params(("id" = u64, Path, description = "Task id")),
    responses((status = 200, description = "The task", body = TaskDto<'_>), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`task_not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn show(
    State(host): State<Host>,
    path: Result<Path<u64>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = stream::path(path)?;
    let view = host.task(id).await?;
    Ok(Json(
        serde_json::to_value(TaskDto::from(&view)).unwrap_or_default(),
    ))
}

/// `POST /api/v1/tasks/{id}/cancel`.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks",
    description = "Cancels a task: a queued one at once; a running one is asked to stop and the answer comes when its run is over. Scope: `tasks:submit`.",
    params(("id" = u64, Path, description = "Task id")),
    responses((status = 200, description = "The task after the cancel", body = TaskDto<'_>), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`task_not_found`", body = crate::openapi::ErrorBody), (status = 409, description = "`conflict`: already finished", body = crate::openapi::ErrorBody), (status = 503, description = "Busy", body = crate::openapi::ErrorBody), (status = 504, description = "The run did not end in time", body = crate::openapi::ErrorBody)))]
pub(crate) async fn cancel(
    State(host): State<Host>,
    headers: HeaderMap,
    path: Result<Path<u64>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = stream::path(path)?;
    let view = host.cancel_task(id, stream::who(&headers)).await?;
    Ok(Json(
        serde_json::to_value(TaskDto::from(&view)).unwrap_or_default(),
    ))
}

#[derive(Deserialize)]
pub(crate) struct WatchQuery {
    plugin: Option<String>,
    id: Option<u64>,
}

/// What a stream follows.
#[derive(Clone)]
enum Filter {
    One(u64),
    Plugin(Option<String>),
}

impl Filter {
    fn wants(&self, view: &TaskView) -> bool {
        match self {
            Filter::One(id) => view.id == *id,
            Filter::Plugin(None) => true,
            Filter::Plugin(Some(name)) => view.plugin == *name,
        }
    }
}

/// `GET /api/v1/tasks/stream`.
#[utoipa::path(get, path = "/api/v1/tasks/stream", tag = "tasks",
    description = "Server-Sent Events: task updates and progress, starting with the queued and running tasks. Scope: `read`.",
    params(("plugin" = Option<String>, Query, description = "Only this plugin's tasks"), ("id" = Option<u64>, Query, description = "Only this task")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn watch(
    State(state): State<AppState>,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let q = stream::query(query)?;
    let filter = match (q.id, q.plugin) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "Follow one task (`id`) or a plugin's tasks (`plugin`), not both",
            ));
        }
        (Some(id), None) => Filter::One(id),
        (None, plugin) => {
            if let Some(name) = &plugin {
                state.host.plugin(name)?;
            }
            Filter::Plugin(plugin)
        }
    };
    let mut watch = Watch {
        // Subscribed before the first read, so no change falls between the two.
        updates: state.host.task_updates(),
        host: state.host.clone(),
        filter,
        pending: VecDeque::new(),
        open: HashMap::new(),
        finished: HashSet::new(),
        resync: false,
        ended: false,
        shutdown: state.shutdown.clone(),
    };
    // The first view is read here, so an unknown task is a 404, not a stream.
    watch.current().await?;
    Ok(Sse::new(futures::stream::unfold(watch, Watch::next)).keep_alive(stream::keep_alive()))
}

/// One client's task stream.
struct Watch {
    host: Host,
    updates: broadcast::Receiver<Arc<TaskView>>,
    filter: Filter,
    pending: VecDeque<Event>,
    /// Tasks sent as queued or running, with the [`rank`] of the view sent last.
    open: HashMap<u64, u32>,
    /// Tasks sent as finished.
    finished: HashSet<u64>,
    /// The receiver lagged: send the current views before the next update.
    resync: bool,
    /// Send what is pending, then end.
    ended: bool,
    shutdown: Shutdown,
}

impl Watch {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Watch)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.ended || self.shutdown.is_triggered() {
                return None;
            }
            if self.resync {
                self.resync = false;
                if let Err(e) = self.current().await {
                    self.pending.push_back(stream::sse_error(e));
                    self.ended = true;
                }
                continue;
            }
            let received = tokio::select! {
                () = self.shutdown.wait() => return None,
                received = self.updates.recv() => received,
            };
            match received {
                Ok(view) if self.filter.wants(&view) => self.push(&view),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => self.resync = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Queues the current view of what the stream follows: the one task; or each task shown as
    /// unfinished so far, then every queued and running one (oldest first).
    async fn current(&mut self) -> Result<(), HostError> {
        let plugin = match &self.filter {
            Filter::One(id) => {
                let view = self.host.task(*id).await?;
                self.push(&view);
                return Ok(());
            }
            Filter::Plugin(plugin) => plugin.clone(),
        };
        let mut open: Vec<u64> = self.open.keys().copied().collect();
        open.sort_unstable();
        for id in open {
            match self.host.task(id).await {
                Ok(view) => self.push(&view),
                // Purged meanwhile: nothing more will come.
                Err(HostError::NotFound(_)) => {
                    self.open.remove(&id);
                }
                Err(e) => return Err(e),
            }
        }
        let mut views = Vec::new();
        for state in [TaskState::Running, TaskState::Queued] {
            views.extend(
                self.host
                    .tasks(TaskQuery {
                        plugin: plugin.clone(),
                        state: Some(state),
                        limit: Some(MAX_TASKS),
                        ..TaskQuery::default()
                    })
                    .await?,
            );
        }
        views.sort_unstable_by_key(|v| v.id);
        for view in &views {
            self.push(view);
        }
        Ok(())
    }

    fn push(&mut self, view: &TaskView) {
        // Finished is final: an update read before the end was sent must not undo it.
        if self.finished.contains(&view.id) {
            return;
        }
        // A progress report is a partial view: no task name.
        if view.task.is_empty() {
            self.pending.push_back(stream::sse_json(
                "progress",
                &ProgressDto {
                    id: view.id,
                    plugin: &view.plugin,
                    state: view.state.as_str(),
                    progress: view.progress,
                    message: view.message.as_deref(),
                },
            ));
            return;
        }
        // Updates of one task may reach the broadcast out of order (a submit's `queued` after
        // the `running` of the runner it woke): never step a task back.
        let rank = rank(view);
        if self.open.get(&view.id).is_some_and(|sent| rank < *sent) {
            return;
        }
        self.pending
            .push_back(stream::sse_json("task", &TaskDto::from(view)));
        if view.state.is_finished() {
            self.open.remove(&view.id);
            if self.finished.len() >= MAX_REMEMBERED {
                self.finished.clear();
            }
            self.finished.insert(view.id);
            if matches!(self.filter, Filter::One(_)) {
                self.ended = true;
            }
        } else {
            self.open.insert(view.id, rank);
        }
    }
}

/// Where an unfinished task is in its life: `queued` before attempt n is 2n, `running` attempt n
/// is 2n − 1 (so a retry's `queued` comes after the run it follows).
fn rank(view: &TaskView) -> u32 {
    match view.state {
        TaskState::Running => (2 * view.attempts).saturating_sub(1),
        _ => 2 * view.attempts,
    }
}
