//! The events routes: publish, history, the live stream (Server-Sent Events) and dead letters.
//!
//! - `POST /api/v1/events` `{"topic","payload"}` → 202 `{"seq","subscribers"}` once the event is
//!   durable.
//! - `GET /api/v1/events?after=SEQ&topic=PATTERN&limit=N` → `{"events": [...], "next": SEQ}`
//!   (`next` is the `after` of the following page).
//! - `GET /api/v1/events/stream?topic=PATTERN&after=SEQ`: every event as an SSE event named
//!   `event`, its `id` the event's `seq`, its data the event as JSON. With `after` or a
//!   `Last-Event-ID` header (which wins: a reconnecting `EventSource` sends it) the stream first
//!   replays the events after that seq from the store, then goes on live; without either it
//!   starts with the next event published. Live events arrive through the host's broadcast; a gap
//!   in their seqs (a publisher that raced another, a lagging receiver, a replayed dead letter)
//!   is filled from the store, so the stream is in seq order and misses nothing between its
//!   first event and its last. A store failure ends the stream with an `error` event.
//! - `GET /api/v1/events/dead?plugin=NAME&limit=N` → `{"dead_letters": [...]}`, newest first.
//! - `POST /api/v1/events/dead/{plugin}/{seq}/replay` → 202 `{"plugin","seq","replayed"}`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use bytes::Bytes;
use futures::Stream;
use plugd_host::{DeadLetter, EventRecord, Host, topic_matches};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::routes::AppState;
use crate::stream::{self, Shutdown};

/// The most events one history request (or one store read of a stream) returns.
pub(crate) const MAX_EVENTS: usize = 1000;
/// Events read from the store per page while a stream catches up.
const CATCH_UP_PAGE: usize = 256;
/// The longest topic pattern (the host's longest topic).
const MAX_PATTERN: usize = 256;

/// An event as the API shows it.
#[derive(Serialize, ToSchema)]
pub(crate) struct EventDto<'a> {
    pub seq: u64,
    pub topic: &'a str,
    /// Any JSON value (an object unless the publisher sent something else).
    #[schema(value_type = serde_json::Value)]
    pub payload: &'a RawValue,
    /// The plugin that published it (`null`: an application).
    pub source: Option<&'a str>,
    /// The one plugin it is for (a replayed dead letter), `null` for every subscriber.
    pub target: Option<&'a str>,
    /// When it was published, ms since the Unix epoch.
    pub at_ms: u64,
}

impl<'a> From<&'a EventRecord> for EventDto<'a> {
    fn from(e: &'a EventRecord) -> Self {
        EventDto {
            seq: e.seq,
            topic: &e.topic,
            payload: &e.payload,
            source: e.source.as_deref(),
            target: e.target.as_deref(),
            at_ms: e.at_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DeadLetterDto<'a> {
    plugin: &'a str,
    event: EventDto<'a>,
    attempts: u32,
    error: &'a str,
    at_ms: u64,
}

impl<'a> From<&'a DeadLetter> for DeadLetterDto<'a> {
    fn from(d: &'a DeadLetter) -> Self {
        DeadLetterDto {
            plugin: &d.plugin,
            event: (&d.event).into(),
            attempts: d.attempts,
            error: &d.error,
            at_ms: d.at_ms,
        }
    }
}

/// `POST /api/v1/events` body, for the API document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct PublishDoc {
    /// e.g. `image.imported` (topics under `plugd.` are the host's).
    #[schema(min_length = 1, max_length = 256)]
    topic: String,
    /// Defaults to `{}`.
    payload: Option<serde_json::Value>,
}

/// A published event, for the API document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct PublishedDoc {
    seq: u64,
    subscribers: Vec<String>,
}

/// A page of events, for the API document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct EventPageDoc<'a> {
    events: Vec<EventDto<'a>>,
    /// The seq to pass as `after` for the next page.
    next: u64,
}

/// Dead letters, for the API document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct DeadLettersDoc<'a> {
    dead_letters: Vec<DeadLetterDto<'a>>,
}

const PUBLISH_SHAPE: &str =
    r#"{"topic": "image.imported", "payload": {...}} (`payload` defaults to {})"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    #[serde(default = "empty_object")]
    payload: Value,
}

pub(crate) fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// `POST /api/v1/events`.
#[utoipa::path(post, path = "/api/v1/events", tag = "events",
    description = "Publishes an event: stored, then delivered at least once, in publish order, to every subscribed plugin. Scope: `events:publish`.",
    request_body(content = PublishDoc, content_type = "application/json"),
    responses((status = 202, description = "Stored; `seq` and the subscribers it goes to", body = PublishedDoc), (status = 400, description = "`bad_request` or `bad_json`", body = crate::openapi::ErrorBody), (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorBody), (status = 429, description = "`overloaded`: a subscriber's backlog is full", body = crate::openapi::ErrorBody), (status = 503, description = "The store is busy", body = crate::openapi::ErrorBody)))]
pub(crate) async fn publish(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body: PublishBody = stream::body(body, state.max_body, PUBLISH_SHAPE)?;
    let published = state.host.publish(&body.topic, body.payload).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "seq": published.seq,
            "subscribers": published.subscribers.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        })),
    ))
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    after: Option<u64>,
    topic: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/events`: the log after `after`, oldest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    description = "Stored events after `after`, oldest first. Scope: `read`.",
    params(("after" = Option<u64>, Query, description = "Only events after this seq"), ("topic" = Option<String>, Query, description = "A topic, `prefix.*` or `*`"), ("limit" = Option<usize>, Query, description = "Most events (default 100, at most 1000)")),
    responses((status = 200, description = "Events and the seq to continue after", body = EventPageDoc<'_>), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn history(
    State(host): State<Host>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = stream::query(query)?;
    if let Some(p) = &q.topic {
        check_pattern(p)?;
    }
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_EVENTS);
    let events = host.events_after(after, q.topic.as_deref(), limit).await?;
    let next = events.last().map_or(after, |e| e.seq);
    Ok(Json(serde_json::json!({
        "events": events.iter().map(EventDto::from).collect::<Vec<_>>(),
        "next": next,
    })))
}

#[derive(Deserialize)]
pub(crate) struct DeadQuery {
    plugin: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/events/dead`.
#[utoipa::path(get, path = "/api/v1/events/dead", tag = "events",
    description = "Dead letters, newest first: events a subscriber's handler kept failing on. Scope: `read`.",
    params(("plugin" = Option<String>, Query, description = "Only this plugin's"), ("limit" = Option<usize>, Query, description = "Most listed")),
    responses((status = 200, description = "Dead letters", body = DeadLettersDoc<'_>), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "`plugin_not_found`: `plugin` is not installed", body = crate::openapi::ErrorBody)))]
pub(crate) async fn dead(
    State(host): State<Host>,
    query: Result<Query<DeadQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = stream::query(query)?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_EVENTS);
    let dead = host.dead_events(q.plugin.as_deref(), limit).await?;
    Ok(Json(serde_json::json!({
        "dead_letters": dead.iter().map(DeadLetterDto::from).collect::<Vec<_>>(),
    })))
}

/// `POST /api/v1/events/dead/{plugin}/{seq}/replay`.
#[utoipa::path(post, path = "/api/v1/events/dead/{plugin}/{seq}/replay", tag = "events",
    description = "Delivers a dead letter again, to that plugin alone. Scope: `admin`.",
    params(("plugin" = String, Path, description = "The subscriber"), ("seq" = u64, Path, description = "The event's seq")),
    responses((status = 202, description = "Queued again", body = Object), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody), (status = 404, description = "No such dead letter or plugin", body = crate::openapi::ErrorBody), (status = 409, description = "`conflict`", body = crate::openapi::ErrorBody), (status = 429, description = "`overloaded`", body = crate::openapi::ErrorBody), (status = 503, description = "Busy", body = crate::openapi::ErrorBody)))]
pub(crate) async fn replay(
    State(host): State<Host>,
    path: Result<Path<(String, u64)>, PathRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (plugin, seq) = stream::path(path)?;
    let replayed = host.replay_dead(&plugin, seq).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "plugin": plugin, "seq": seq, "replayed": replayed })),
    ))
}

#[derive(Deserialize)]
pub(crate) struct FollowQuery {
    topic: Option<String>,
    after: Option<u64>,
}

/// `GET /api/v1/events/stream`.
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "events",
    description = "Server-Sent Events: each published event (`id` is its seq; resume with `Last-Event-ID` or `after`). Scope: `read`.",
    params(("topic" = Option<String>, Query, description = "A topic, `prefix.*` or `*`"), ("after" = Option<u64>, Query, description = "Stored events after this seq first")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String), (status = 400, description = "`bad_request`", body = crate::openapi::ErrorBody)))]
pub(crate) async fn follow(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<FollowQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let q = stream::query(query)?;
    if let Some(p) = &q.topic {
        check_pattern(p)?;
    }
    let last_event_id = stream::last_event_id(&headers, "an event")?;
    let after = last_event_id.or(q.after);
    let follow = Follow {
        // Subscribed before the first store read, so nothing falls between the two.
        live: state.host.events_live(),
        host: state.host.clone(),
        pattern: q.topic,
        last: after,
        catch_up: after.is_some(),
        pending: VecDeque::new(),
        ended: false,
        shutdown: state.shutdown.clone(),
    };
    Ok(Sse::new(futures::stream::unfold(follow, Follow::next)).keep_alive(stream::keep_alive()))
}

/// One client's event stream.
struct Follow {
    host: Host,
    live: tokio::sync::broadcast::Receiver<Arc<EventRecord>>,
    pattern: Option<String>,
    /// Every event up to this seq was sent or does not match (`None`: nothing seen yet).
    last: Option<u64>,
    /// Read the store after `last` before the next live event.
    catch_up: bool,
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
            if self.catch_up {
                self.catch_up = false;
                self.read_store().await;
                continue;
            }
            let received = tokio::select! {
                () = self.shutdown.wait() => return None,
                received = self.live.recv() => received,
            };
            match received {
                Ok(event) => match self.last {
                    Some(last) if event.seq <= last => {}
                    Some(last) if event.seq > last + 1 => {
                        // A gap: whatever fills it is committed (the log is written in seq
                        // order), and so is this event.
                        self.read_store().await;
                        if !self.catch_up && !self.ended {
                            self.last = self.last.max(Some(event.seq));
                        }
                    }
                    _ => {
                        self.last = Some(event.seq);
                        self.push(&event);
                    }
                },
                Err(RecvError::Lagged(_)) => self.catch_up = self.last.is_some(),
                Err(RecvError::Closed) => return None,
            }
        }
    }

    fn push(&mut self, event: &EventRecord) {
        if self
            .pattern
            .as_deref()
            .is_none_or(|p| topic_matches(p, &event.topic))
        {
            self.pending.push_back(
                stream::sse_json("event", &EventDto::from(event)).id(event.seq.to_string()),
            );
        }
    }

    /// Queues every matching event after `last` from the store.
    async fn read_store(&mut self) {
        let Some(mut after) = self.last else { return };
        loop {
            let page = match self
                .host
                .events_after(after, self.pattern.as_deref(), CATCH_UP_PAGE)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    self.pending.push_back(stream::sse_error(e));
                    self.ended = true;
                    return;
                }
            };
            for event in &page {
                after = event.seq;
                self.push(event);
            }
            self.last = Some(after);
            if page.len() < CATCH_UP_PAGE {
                return;
            }
            // A long replay goes out page by page: the client reads while the next is fetched.
            if self.pending.len() >= CATCH_UP_PAGE {
                self.catch_up = true;
                return;
            }
        }
    }
}

/// A `topic` filter must be a topic, `prefix.*` or `*`.
fn check_pattern(pattern: &str) -> Result<(), ApiError> {
    let star_ok = match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(prefix) => !prefix.is_empty() && !prefix.contains('*'),
        None => !pattern.contains('*'),
    };
    if pattern.is_empty()
        || pattern.len() > MAX_PATTERN
        || pattern.chars().any(char::is_control)
        || !star_ok
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "Topic pattern `{}` is not valid; hint: use a topic (`image.imported`), a prefix (`image.*`) or `*`",
                pattern.escape_default()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_topics_prefixes_or_star() {
        for ok in ["a", "image.imported", "image.*", "*", "a.b.*"] {
            assert!(check_pattern(ok).is_ok(), "{ok}");
        }
        for bad in ["", "image*", "*.x", ".*", "a.*.b", "a\nb", "a.**"] {
            assert!(check_pattern(bad).is_err(), "{bad:?}");
        }
        assert!(topic_matches("image.*", "image.imported"));
        assert!(!topic_matches("image.*", "image"));
        assert!(!topic_matches("image.*", "imagery.x"));
        assert!(topic_matches("*", "x"));
        assert!(topic_matches("a.b", "a.b"));
    }
}
