//! A plugin's log lines: the recent ones (`GET /api/v1/plugins/NAME/logs`) and a live stream
//! (`GET /api/v1/plugins/NAME/logs/stream`, Server-Sent Events) for `plugd logs --follow` and
//! the dashboard.
//!
//! Lines are numbered per plugin (`seq`, from 1, no gaps), so a reader pages or resumes after
//! the last line it has: read the recent lines, then stream `after` the newest of them; nothing
//! falls between the two. The host keeps a bounded ring of lines: a follower too slow for a
//! flood sees the seq jump where lines were dropped before it read them.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use futures::Stream;
use plugd_host::Host;
use serde::Deserialize;
use tokio::sync::watch;

use crate::dto::{LogLineDto, LogsDto};
use crate::error::ApiError;
use crate::routes::AppState;
use crate::stream::{self, Shutdown};

/// The most lines one read returns (and one stream step sends).
const MAX_LINES: usize = 10_000;

#[derive(Deserialize)]
pub(crate) struct LogsQuery {
    limit: Option<usize>,
    after: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/plugins/{name}/logs", tag = "plugins",
    description = "The plugin's log lines, oldest first: the last `limit`, or with `after` the first `limit` after that seq. Scope: `read`.",
    params(("name" = String, Path, description = "Plugin name"), ("limit" = Option<usize>, Query, description = "Most lines (default 100, at most 10000)"), ("after" = Option<u64>, Query, description = "Only lines whose seq is greater")),
    responses((status = 200, description = "Log lines", body = LogsDto), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn recent(
    State(host): State<Host>,
    Path(name): Path<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<LogsDto>, ApiError> {
    let q = stream::query(query)?;
    let limit = q.limit.unwrap_or(100).min(MAX_LINES);
    let lines = host.logs_after(&name, q.after, limit)?;
    Ok(Json(LogsDto {
        plugin: name,
        lines: lines.into_iter().map(LogLineDto::from).collect(),
    }))
}

#[derive(Deserialize)]
pub(crate) struct FollowQuery {
    after: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/plugins/{name}/logs/stream", tag = "plugins",
    description = "Server-Sent Events: each new log line of the plugin as a `log` event (`id` is its seq; resume with `Last-Event-ID` or `after`, which first sends the lines after it still held). Scope: `read`.",
    params(("name" = String, Path, description = "Plugin name"), ("after" = Option<u64>, Query, description = "Lines after this seq first")),
    responses((status = 200, description = "A stream of `log` events", content_type = "text/event-stream", body = String), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`plugin_not_found`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn follow(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<FollowQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let q = stream::query(query)?;
    let last_event_id = stream::last_event_id(&headers, "a log line")?;
    // Subscribed before the first read, so no line falls between the two.
    let mut updates = state.host.log_updates(&name)?;
    let newest = *updates.borrow_and_update();
    let follow = Follow {
        host: state.host.clone(),
        name,
        updates,
        last: last_event_id.or(q.after).unwrap_or(newest),
        pending: VecDeque::new(),
        ended: false,
        shutdown: state.shutdown.clone(),
    };
    Ok(Sse::new(futures::stream::unfold(follow, Follow::next)).keep_alive(stream::keep_alive()))
}

/// One client's log stream.
struct Follow {
    host: Host,
    name: String,
    updates: watch::Receiver<u64>,
    /// Every line up to this seq was sent.
    last: u64,
    pending: VecDeque<Event>,
    /// Send what is pending, then end.
    ended: bool,
    shutdown: Shutdown,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Follow)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.ended || self.shutdown.is_triggered() {
                return None;
            }
            let lines = match self.host.logs_after(&self.name, Some(self.last), MAX_LINES) {
                Ok(lines) => lines,
                // The plugin is gone (its package was removed): say why, then end.
                Err(e) => {
                    self.ended = true;
                    return Some((Ok(stream::sse_error(e)), self));
                }
            };
            if let Some(newest) = lines.last() {
                self.last = newest.seq;
                self.pending.extend(lines.into_iter().map(|line| {
                    let id = line.seq.to_string();
                    stream::sse_json("log", &LogLineDto::from(line)).id(id)
                }));
                continue;
            }
            tokio::select! {
                changed = self.updates.changed() => {
                    if changed.is_err() {
                        // The plugin's slot is gone: nothing more will come.
                        return None;
                    }
                }
                () = self.shutdown.wait() => return None,
            }
        }
    }
}
