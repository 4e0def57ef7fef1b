//! Durable events: a topic and a JSON payload, delivered **at least once, in publish order**, to
//! every plugin that subscribed (exact topic, a prefix ending in `.*`, or `*`).
//!
//! - **Publish** (`Host::publish`, a plugin's `emit`) appends the event to the store's event log
//!   and returns once it is committed; one row however many plugins subscribe. Before that it
//!   reserves a place in each subscriber's backlog: a subscriber with [`HostConfig::event_backlog`]
//!   events waiting refuses the event (`overloaded`, 429) and nothing is written.
//! - **Delivery**: each subscriber has its own task and its own cursor in the store (every event up
//!   to it is handled). The task reads the events it gets after its cursor in batches, hands
//!   them to the running instance one by one, waiting for each to be acknowledged, and then
//!   moves the cursor in one write. A subscriber that keeps up reads its batch from memory: the
//!   newest committed events are kept in a bounded window ([`Recent`]) that holds every `seq`
//!   from its start on, so a batch read there is the one the store would give; a subscriber
//!   whose cursor is before the window (after a restart, a lag, a replay) reads the store. A
//!   restarting, reloading or failed plugin keeps its cursor and gets what it missed when it runs
//!   again; a host killed mid-batch delivers the batch again.
//!   Slow subscribers never delay others or the publisher.
//! - **Failures**: a handler that fails is retried [`EVENT_ATTEMPTS`] times with doubling backoff
//!   from [`EVENT_BACKOFF`], holding that subscriber's later events meanwhile; then the event is
//!   dead-lettered (`GET /api/v1/events/dead`) and delivery moves on. A replayed dead letter is a
//!   copy of the event for that plugin alone, delivered after what is already waiting.
//! - **Loops**: an event carries a hop count; an event a plugin emits while it handles an event of
//!   hop `h` has hop `h + 1`, and past [`MAX_HOPS`] it is refused. Each plugin may emit
//!   [`EMIT_RATE`] events per second (burst [`EMIT_BURST`]).
//! - A plugin that is unloaded or uninstalled stops being a subscriber (its cursor is removed):
//!   it does not get what is published while it is unloaded.
//!
//! [`HostConfig::event_backlog`]: crate::HostConfig::event_backlog

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use plugd_manifest::PluginName;
use plugd_runtime::{LogLevel, LogSource, RuntimeError};
use plugd_store::{Advance, DeadEvent, NewEvent, StoredEvent};
use serde_json::value::RawValue;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::registry::{PluginState, Slot};
use crate::{Host, HostError, now_ms};

/// How many times an event may cause another event.
pub const MAX_HOPS: u8 = 8;
/// Events per second a plugin may emit, sustained.
pub const EMIT_RATE: u32 = 100;
/// Events a plugin may emit at once above the sustained rate.
pub const EMIT_BURST: u32 = 500;
/// The longest topic name.
const MAX_TOPIC: usize = 256;
/// The largest event payload (as JSON text); larger ones are refused.
pub const MAX_EVENT_PAYLOAD: usize = 256 << 10;
/// Deliveries of one event to one subscriber before it is dead-lettered.
pub const EVENT_ATTEMPTS: u32 = 5;
/// The wait before the first retry of a failed delivery; it doubles with each retry.
pub const EVENT_BACKOFF: Duration = Duration::from_millis(200);
/// Events a subscriber may have waiting before publishing to it is refused (the default of
/// [`crate::HostConfig::event_backlog`]).
pub const DEFAULT_EVENT_BACKLOG: u64 = 10_000;
/// Events read from the store per batch (and acknowledged with one cursor write).
const BATCH: usize = 256;
/// How often an idle delivery task looks again without being woken (a safety net: every
/// publish and every start wakes it).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The most events, and payload and topic bytes, the in-memory window of newest events holds.
const RECENT_EVENTS: usize = 4096;
const RECENT_BYTES: usize = 16 << 20;

/// An event as the host hands it to applications (the live stream and the history).
#[derive(Clone, Debug)]
pub struct EventRecord {
    /// Its position in the event log (increasing; the `id` of the SSE stream).
    pub seq: u64,
    /// The topic.
    pub topic: String,
    /// The payload (JSON).
    pub payload: Box<RawValue>,
    /// The plugin that published it, `None` for an application.
    pub source: Option<String>,
    /// The one plugin it is for (a replayed dead letter), `None` for all subscribers.
    pub target: Option<String>,
    /// When it was published, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl EventRecord {
    fn from_stored(event: StoredEvent) -> EventRecord {
        EventRecord {
            payload: RawValue::from_string(event.payload)
                .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON")),
            seq: event.seq,
            topic: event.topic,
            source: event.source,
            target: event.target,
            at_ms: event.at_ms,
        }
    }
}

/// What [`Host::publish`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The event's position in the log.
    pub seq: u64,
    /// The plugins it will be delivered to.
    pub subscribers: Vec<PluginName>,
}

/// An event a subscriber's handler kept failing on.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The subscriber.
    pub plugin: String,
    /// The event.
    pub event: EventRecord,
    /// Deliveries tried.
    pub attempts: u32,
    /// The last failure.
    pub error: String,
    /// When it was dead-lettered (ms since the Unix epoch).
    pub at_ms: u64,
}

impl DeadLetter {
    fn from_stored(dead: DeadEvent) -> DeadLetter {
        DeadLetter {
            plugin: dead.plugin,
            event: EventRecord::from_stored(dead.event),
            attempts: dead.attempts,
            error: dead.error,
            at_ms: dead.at_ms,
        }
    }
}

/// Delivery counters of one subscriber, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriberInfo {
    /// Events waiting for it (an estimate between restarts of its delivery task).
    pub backlog: u64,
    /// Its cursor: every event up to this `seq` is handled.
    pub cursor: u64,
    /// Events delivered since the host started.
    pub delivered: u64,
    /// Deliveries that failed (each retry counts).
    pub failures: u64,
    /// Events dead-lettered since the host started.
    pub dead: u64,
}

/// One subscribing plugin: its patterns, backlog and delivery task.
pub(crate) struct Subscriber {
    name: PluginName,
    patterns: RwLock<Vec<String>>,
    backlog: AtomicU64,
    cursor: AtomicU64,
    delivered: AtomicU64,
    failures: AtomicU64,
    dead: AtomicU64,
    wake: Notify,
    stop: CancellationToken,
}

impl Subscriber {
    /// Whether the subscriber gets `topic`: `*` is every topic but the host's own (`plugd.*`),
    /// which a plugin gets only by subscribing to them by name (and only when trusted).
    fn matches(&self, topic: &str) -> bool {
        self.patterns
            .read()
            .iter()
            .any(|p| subscription_matches(p, topic))
    }

    pub(crate) fn info(&self) -> SubscriberInfo {
        SubscriberInfo {
            backlog: self.backlog.load(Ordering::SeqCst),
            cursor: self.cursor.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
        }
    }
}

/// Every subscriber and the live stream of published events.
pub(crate) struct Bus {
    subscribers: RwLock<HashMap<PluginName, Arc<Subscriber>>>,
    live: broadcast::Sender<Arc<EventRecord>>,
    /// Serialises subscribe/unsubscribe of one plugin with its delivery task's start.
    changes: Mutex<()>,
    /// The newest committed events, where delivery tasks that keep up read their batches.
    recent: Mutex<Recent>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            subscribers: RwLock::new(HashMap::new()),
            live: broadcast::channel(1024).0,
            changes: Mutex::new(()),
            recent: Mutex::new(Recent::default()),
        }
    }
}

/// A window of the newest committed events, in memory, holding **every** `seq` from `start` to
/// `upto`: read from there, a subscriber's batch is exactly what the store would answer (the
/// events after its cursor that it gets, in order), without a read of the store.
///
/// Every published event is put here once its append has committed. Appends commit in `seq`
/// order but their publishers put them here in any order, so `upto` only moves over a run
/// without holes; events above a hole wait until it fills (microseconds: the put follows the
/// commit at once). A hole that never fills (a publish whose caller went away while its append
/// waited for the writer) keeps `upto` where it is and sends readers to the store; once it has
/// held `upto` for [`HOLE_WAIT`], it is dropped with everything before it, as is an event the
/// window never gets (a replayed dead letter, [`Recent::skip`]); and when the window is full its
/// oldest events leave it, a hole among them included.
#[derive(Default)]
pub(crate) struct Recent {
    events: BTreeMap<u64, Arc<StoredEvent>>,
    /// The first `seq` the window answers for (0: nothing put yet).
    start: u64,
    /// Every `seq` in `start..=upto` is in `events` (`upto` is `start - 1` when none is).
    upto: u64,
    bytes: usize,
    /// Since when `upto` has stood at this value with events above it (a hole).
    stuck: Option<(u64, std::time::Instant)>,
}

/// What an event counts against [`RECENT_BYTES`].
fn weight(event: &StoredEvent) -> usize {
    event.payload.len() + event.topic.len()
}

/// How long a hole may hold the window before it is taken for one that will never fill.
const HOLE_WAIT: Duration = Duration::from_secs(1);

impl Recent {
    /// Puts a committed event in the window (`now`: the time, for holes).
    pub(crate) fn put(&mut self, event: Arc<StoredEvent>, now: std::time::Instant) {
        let seq = event.seq;
        if self.start == 0 {
            self.start = seq;
            self.upto = seq.saturating_sub(1);
        }
        if seq < self.start || self.events.contains_key(&seq) || seq <= self.upto {
            return;
        }
        self.bytes += weight(&event);
        self.events.insert(seq, event);
        self.advance();
        while self.events.len() > RECENT_EVENTS || self.bytes > RECENT_BYTES {
            let Some((seq, old)) = self.events.pop_first() else {
                break;
            };
            self.bytes -= weight(&old);
            self.start = seq + 1;
            if self.upto < self.start {
                // The run before a hole is gone: the hole goes too, and the window starts at
                // the next event it holds.
                match self.events.first_key_value() {
                    Some((&next, _)) => {
                        self.start = next;
                        self.upto = next - 1;
                        self.advance();
                    }
                    None => self.upto = self.start - 1,
                }
            }
        }
        self.check_hole(now);
    }

    /// Drops a hole that has held `upto` for [`HOLE_WAIT`] (see the type's docs).
    fn check_hole(&mut self, now: std::time::Instant) {
        self.stuck = match self.stuck {
            _ if !self.holed() => None,
            Some((upto, since)) if upto == self.upto => {
                if now.duration_since(since) < HOLE_WAIT {
                    return;
                }
                self.skip(self.upto + 1);
                self.holed().then_some((self.upto, now))
            }
            _ => Some((self.upto, now)),
        };
    }

    /// Leaves `seq` out of the window for good: what came before it is dropped too, so no
    /// reader takes the window for complete across it.
    pub(crate) fn skip(&mut self, seq: u64) {
        if self.start == 0 {
            self.start = seq + 1;
            self.upto = seq;
            return;
        }
        if seq < self.start {
            return;
        }
        while let Some(entry) = self.events.first_entry() {
            if *entry.key() > seq {
                break;
            }
            let old = entry.remove();
            self.bytes -= weight(&old);
        }
        self.start = seq + 1;
        self.upto = self.upto.max(seq);
        self.advance();
    }

    /// Whether events wait above a hole.
    fn holed(&self) -> bool {
        self.events
            .last_key_value()
            .is_some_and(|(&last, _)| last > self.upto)
    }

    fn advance(&mut self) {
        while self.events.contains_key(&(self.upto + 1)) {
            self.upto += 1;
        }
    }

    /// What `plugin`, subscribed to `patterns`, gets after `cursor` (at most `limit`) and the
    /// `seq` up to which that answer is complete, as [`plugd_store::Store::events_for`] answers;
    /// `None` when the window does not hold every event after `cursor` it knows of (the cursor
    /// is before its start) or holds nothing new.
    pub(crate) fn events_for(
        &self,
        plugin: &str,
        patterns: &[String],
        cursor: u64,
        limit: usize,
    ) -> Option<(Vec<Arc<StoredEvent>>, u64)> {
        if self.start == 0 || cursor.saturating_add(1) < self.start || self.upto <= cursor {
            return None;
        }
        let mut batch = Vec::new();
        for (&seq, event) in self.events.range(cursor + 1..=self.upto) {
            let gets = match &event.target {
                Some(target) => target == plugin,
                None => patterns
                    .iter()
                    .any(|p| subscription_matches(p, &event.topic)),
            };
            if gets {
                batch.push(event.clone());
                if batch.len() >= limit {
                    return Some((batch, seq));
                }
            }
        }
        Some((batch, self.upto))
    }
}

impl Bus {
    pub(crate) fn subscriber(&self, name: &str) -> Option<Arc<Subscriber>> {
        self.subscribers.read().get(name).cloned()
    }

    /// Stops every delivery task (host shutdown); cursors stay in the store.
    pub(crate) fn stop_all(&self) {
        for subscriber in self.subscribers.write().drain().map(|(_, s)| s) {
            subscriber.stop.cancel();
        }
    }
}

/// Hop count of the event a slot is handling now (0 when none); see the module docs.
pub(crate) type DeliveringHops = std::sync::atomic::AtomicU8;

impl Host {
    /// Publishes an event to every subscribed plugin; returns once it is durable, with its
    /// position in the log and the subscribers it will reach. Refused when a subscriber's
    /// backlog is full (`overloaded`) or the topic or payload is invalid.
    pub async fn publish(
        &self,
        topic: &str,
        payload: serde_json::Value,
    ) -> Result<Published, HostError> {
        self.publish_from(None, topic, payload).await
    }

    /// Follows published events live (the receiver lags, and then says so, when it falls more
    /// than 1,024 events behind; read the gap with [`Host::events_after`]).
    pub fn events_live(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.inner.bus.live.subscribe()
    }

    /// Up to `limit` events after `seq` whose topic matches `pattern` (all with `None`), in
    /// publish order, from the log (events are kept for the retention period).
    pub async fn events_after(
        &self,
        seq: u64,
        pattern: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, HostError> {
        let store = self.store().await?;
        let mut found = Vec::new();
        let mut after = seq;
        // Filter in pages, so a rare topic does not make one huge read.
        while found.len() < limit {
            let page = store.events_after(after, BATCH.max(limit)).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            let full = page.len() >= BATCH.max(limit);
            found.extend(
                page.into_iter()
                    .filter(|e| pattern.is_none_or(|p| topic_matches(p, &e.topic)))
                    .map(EventRecord::from_stored),
            );
            if !full {
                break;
            }
        }
        found.truncate(limit);
        Ok(found)
    }

    /// Dead letters, newest first, of one plugin or of all.
    pub async fn dead_events(
        &self,
        plugin: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, HostError> {
        if let Some(name) = plugin {
            self.inner.existing(name)?;
        }
        Ok(self
            .store()
            .await?
            .dead_events(plugin, limit)
            .await?
            .into_iter()
            .map(DeadLetter::from_stored)
            .collect())
    }

    /// Replays a dead letter: the event goes to that plugin again (alone), after what already
    /// waits for it. Returns the copy's `seq`.
    pub async fn replay_dead(&self, plugin: &str, seq: u64) -> Result<u64, HostError> {
        self.inner.existing(plugin)?;
        let subscriber = self.inner.bus.subscriber(plugin);
        if let Some(s) = &subscriber {
            s.backlog.fetch_add(1, Ordering::SeqCst);
        }
        let replayed = self.store().await?.event_replay(plugin, seq).await;
        let undo = || {
            if let Some(s) = &subscriber {
                s.backlog.fetch_sub(1, Ordering::SeqCst);
            }
        };
        match replayed {
            Ok(Some(copy)) => {
                // The copy is not put in the window: it is a hole there, read from the store.
                self.inner.bus.recent.lock().skip(copy);
                if let Some(s) = &subscriber {
                    s.wake.notify_one();
                }
                // Followers of the live stream see the copy too (read back for its payload).
                if self.inner.bus.live.receiver_count() > 0
                    && let Ok(found) = self.store().await?.events_after(copy - 1, 1).await
                    && let Some(event) = found.into_iter().find(|e| e.seq == copy)
                {
                    let _ = self
                        .inner
                        .bus
                        .live
                        .send(Arc::new(EventRecord::from_stored(event)));
                }
                Ok(copy)
            }
            Ok(None) => {
                undo();
                Err(HostError::NotFound(format!(
                    "Plugin `{plugin}` has no dead letter for event {seq}; hint: `plugd events dead` lists them"
                )))
            }
            Err(e) => {
                undo();
                Err(e.into())
            }
        }
    }

    /// Delivery counters of a subscribing plugin (`None` when it subscribes to nothing).
    pub fn subscriber_info(&self, plugin: &str) -> Option<SubscriberInfo> {
        self.inner.bus.subscriber(plugin).map(|s| s.info())
    }

    pub(crate) async fn publish_from(
        &self,
        sender: Option<&Arc<Slot>>,
        topic: &str,
        payload: serde_json::Value,
    ) -> Result<Published, HostError> {
        check_topic(topic)?;
        self.publish_checked(sender, topic, payload).await
    }

    /// Publishes one of the host's own events (a topic under `plugd.`, which plugins and apps
    /// cannot publish). A failure is logged, never passed on: the host's events report what
    /// happened, they must not make it fail.
    pub(crate) async fn publish_host(&self, topic: &str, payload: serde_json::Value) {
        debug_assert!(topic.starts_with("plugd."));
        if let Err(e) = self.publish_checked(None, topic, payload).await {
            tracing::warn!("cannot publish `{topic}`: {e}");
        }
    }

    async fn publish_checked(
        &self,
        sender: Option<&Arc<Slot>>,
        topic: &str,
        payload: serde_json::Value,
    ) -> Result<Published, HostError> {
        let hops = match sender {
            Some(slot) => {
                let hops = slot
                    .delivering_hops
                    .load(Ordering::Relaxed)
                    .saturating_add(1);
                if hops > MAX_HOPS {
                    return Err(HostError::Invalid(format!(
                        "Event `{topic}` was refused: it is hop {hops} of a chain of events (at most {MAX_HOPS}); hint: a plugin that emits while it handles an event must not feed a loop"
                    )));
                }
                if !slot.emit_bucket.lock().admit(std::time::Instant::now()).0 {
                    return Err(HostError::Overloaded(format!(
                        "Plugin `{}` emits more than {EMIT_RATE} events per second; event `{topic}` was refused",
                        slot.name
                    )));
                }
                hops
            }
            None => 0,
        };
        let payload = serde_json::to_string(&payload).map_err(|e| {
            HostError::Invalid(format!(
                "Event `{topic}` has a payload that is not JSON: {e}"
            ))
        })?;
        if payload.len() > MAX_EVENT_PAYLOAD {
            return Err(HostError::Invalid(format!(
                "Event `{topic}` was refused: its payload is {} bytes, more than {MAX_EVENT_PAYLOAD}; hint: put large data in kv or the data dir and send its key",
                payload.len()
            )));
        }
        let store = self.store().await?;
        // Reserve a place in every subscriber's backlog before the event exists, so a full one
        // refuses it with nothing written.
        let sender_name = sender.map(|s| &s.name);
        let limit = self.inner.config.event_backlog;
        let mut reserved: Vec<Arc<Subscriber>> = Vec::new();
        let subscribers: Vec<Arc<Subscriber>> = self
            .inner
            .bus
            .subscribers
            .read()
            .values()
            .filter(|s| Some(&s.name) != sender_name && s.matches(topic))
            .cloned()
            .collect();
        for subscriber in subscribers {
            if subscriber.backlog.fetch_add(1, Ordering::SeqCst) >= limit {
                subscriber.backlog.fetch_sub(1, Ordering::SeqCst);
                for r in &reserved {
                    r.backlog.fetch_sub(1, Ordering::SeqCst);
                }
                return Err(HostError::Overloaded(format!(
                    "Event `{topic}` was refused: plugin `{}` already has {limit} events waiting; hint: see `plugd status {}` (is it failing or slow?), or unload it if it should not receive events",
                    subscriber.name, subscriber.name
                )));
            }
            reserved.push(subscriber);
        }
        let event = NewEvent {
            topic: topic.to_owned(),
            payload,
            hops,
            source: sender.map(|s| s.name.to_string()),
            target: None,
        };
        let topic_owned = event.topic.clone();
        let record_payload = event.payload.clone();
        let seq = match store.event_append(event).await {
            Ok(seq) => seq,
            Err(e) => {
                for r in &reserved {
                    r.backlog.fetch_sub(1, Ordering::SeqCst);
                }
                return Err(e.into());
            }
        };
        crate::telemetry::published();
        let stored = Arc::new(StoredEvent {
            seq,
            topic: topic_owned,
            payload: record_payload,
            hops,
            source: sender.map(|s| s.name.to_string()),
            target: None,
            at_ms: now_ms(),
        });
        // In the window before the subscribers are woken, so that they find it there.
        self.inner
            .bus
            .recent
            .lock()
            .put(stored.clone(), std::time::Instant::now());
        for r in &reserved {
            r.wake.notify_one();
        }
        if let Some(slot) = sender {
            slot.emitted.fetch_add(1, Ordering::Relaxed);
        }
        if self.inner.bus.live.receiver_count() > 0 {
            let record = EventRecord {
                seq,
                topic: topic.to_owned(),
                payload: RawValue::from_string(stored.payload.clone())
                    .map_err(|e| HostError::Invalid(e.to_string()))?,
                source: stored.source.clone(),
                target: None,
                at_ms: stored.at_ms,
            };
            let _ = self.inner.bus.live.send(Arc::new(record));
        }
        Ok(Published {
            seq,
            subscribers: reserved.iter().map(|s| s.name.clone()).collect(),
        })
    }

    /// Makes a started plugin a subscriber of what its manifest subscribes to (creating its
    /// cursor at the end of the log the first time), updates the patterns of an existing one, or
    /// removes it when it subscribes to nothing any more. Starts its delivery task.
    pub(crate) async fn subscribe(&self, slot: &Arc<Slot>, patterns: Vec<String>) {
        let name = slot.name.clone();
        if patterns.is_empty() {
            self.unsubscribe(&name).await;
            return;
        }
        if let Some(existing) = self.inner.bus.subscriber(name.as_str()) {
            *existing.patterns.write() = patterns;
            existing.wake.notify_one();
            return;
        }
        let store = match self.store().await {
            Ok(store) => store.clone(),
            Err(e) => {
                slot.push_log(
                    LogSource::Runtime,
                    LogLevel::Error,
                    &format!("Cannot subscribe to events: {e}"),
                );
                return;
            }
        };
        let cursor = match store.event_subscribe(name.as_str()).await {
            Ok(cursor) => cursor,
            Err(e) => {
                slot.push_log(
                    LogSource::Runtime,
                    LogLevel::Error,
                    &format!("Cannot subscribe to events: {e}"),
                );
                return;
            }
        };
        let backlog = store
            .events_pending(name.as_str(), &patterns, cursor)
            .await
            .unwrap_or(0);
        let subscriber = Arc::new(Subscriber {
            name: name.clone(),
            patterns: RwLock::new(patterns),
            backlog: AtomicU64::new(backlog),
            cursor: AtomicU64::new(cursor),
            delivered: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            wake: Notify::new(),
            stop: CancellationToken::new(),
        });
        {
            let _serial = self.inner.bus.changes.lock();
            let mut subscribers = self.inner.bus.subscribers.write();
            if subscribers.contains_key(&name) {
                return;
            }
            subscribers.insert(name, subscriber.clone());
        }
        let host = Arc::downgrade(&self.inner);
        let slot = Arc::downgrade(slot);
        tokio::spawn(async move {
            deliver(host, slot, subscriber, store).await;
        });
    }

    /// Stops a plugin's deliveries and forgets its cursor (unload, uninstall).
    pub(crate) async fn unsubscribe(&self, name: &PluginName) {
        let removed = {
            let _serial = self.inner.bus.changes.lock();
            self.inner.bus.subscribers.write().remove(name)
        };
        if let Some(subscriber) = removed {
            subscriber.stop.cancel();
        }
        if let Ok(store) = self.store().await
            && let Err(e) = store.event_unsubscribe(name.as_str()).await
        {
            tracing::warn!(plugin = %name, "cannot remove the event cursor: {e}");
        }
    }
}

/// The delivery task of one subscriber: see the module docs. Ends when the subscriber is
/// stopped or the host is dropped.
async fn deliver(
    host: std::sync::Weak<crate::lifecycle::HostInner>,
    slot: std::sync::Weak<Slot>,
    subscriber: Arc<Subscriber>,
    store: plugd_store::Store,
) {
    let stop = subscriber.stop.clone();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let woken = subscriber.wake.notified();
        let (Some(host_inner), Some(slot)) = (host.upgrade(), slot.upgrade()) else {
            return;
        };
        let Some(generation) = slot.running() else {
            let started = slot.phase_changed.notified();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = started => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        };
        let cursor = subscriber.cursor.load(Ordering::Relaxed);
        let patterns = subscriber.patterns.read().clone();
        let in_memory = host_inner.bus.recent.lock().events_for(
            subscriber.name.as_str(),
            &patterns,
            cursor,
            BATCH,
        );
        let found = match in_memory {
            Some(found) => Ok(found),
            None => store
                .events_for(subscriber.name.as_str(), &patterns, cursor, BATCH)
                .await
                .map(|(batch, complete)| (batch.into_iter().map(Arc::new).collect(), complete)),
        };
        let (batch, complete): (Vec<Arc<StoredEvent>>, u64) = match found {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(plugin = %subscriber.name, "cannot read the event log: {e}");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
        };
        if batch.is_empty() {
            if complete > cursor {
                // Only events it does not get: move past them without a write per event.
                subscriber.cursor.store(complete, Ordering::Relaxed);
                let _ = store
                    .event_advance(
                        subscriber.name.as_str(),
                        Advance {
                            cursor: complete,
                            dead: Vec::new(),
                        },
                    )
                    .await;
            }
            drop((slot, generation));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = woken => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        }
        let mut advance = Advance {
            cursor,
            dead: Vec::new(),
        };
        let mut handled = 0u64;
        let timeout = generation.manifest.limits.call_timeout;
        'events: for event in &batch {
            let payload = match RawValue::from_string(event.payload.clone()) {
                Ok(p) => p,
                Err(e) => {
                    advance
                        .dead
                        .push((event.seq, 0, format!("its payload is not JSON: {e}")));
                    advance.cursor = event.seq;
                    handled += 1;
                    continue;
                }
            };
            let mut attempts = 0u32;
            loop {
                if stop.is_cancelled() {
                    break 'events;
                }
                // The instance may have been replaced (reload) or stopped since the batch began.
                let Some(generation) = slot.running() else {
                    break 'events;
                };
                slot.delivering_hops.store(event.hops, Ordering::Relaxed);
                let outcome = tokio::select! {
                    _ = stop.cancelled() => break 'events,
                    outcome = tokio::time::timeout(timeout, generation.instance.event(&event.topic, &payload)) => outcome,
                };
                slot.delivering_hops.store(0, Ordering::Relaxed);
                let problem = match outcome {
                    Ok(Ok(())) => {
                        subscriber.delivered.fetch_add(1, Ordering::Relaxed);
                        slot.handles().delivered.increment(1);
                        break;
                    }
                    // Not the event's fault: wait for the plugin to serve again, uncounted.
                    Ok(Err(RuntimeError::NotRunning { .. })) => {
                        tokio::select! {
                            _ = stop.cancelled() => break 'events,
                            _ = tokio::time::sleep(EVENT_BACKOFF) => {}
                        }
                        continue;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("its handler did not finish within {timeout:?}"),
                };
                attempts += 1;
                subscriber.failures.fetch_add(1, Ordering::Relaxed);
                if attempts >= EVENT_ATTEMPTS {
                    let error = format!(
                        "Event `{}` (seq {}) was dead-lettered after {attempts} failed deliveries: {problem}",
                        event.topic, event.seq
                    );
                    slot.push_log(LogSource::Runtime, LogLevel::Error, &error);
                    subscriber.dead.fetch_add(1, Ordering::Relaxed);
                    advance.dead.push((event.seq, attempts, problem));
                    break;
                }
                let backoff = EVENT_BACKOFF * 2u32.saturating_pow(attempts - 1);
                slot.push_log(
                    LogSource::Runtime,
                    LogLevel::Warn,
                    &format!(
                        "Event `{}` (seq {}) failed (attempt {attempts} of {EVENT_ATTEMPTS}, next in {backoff:?}): {problem}",
                        event.topic, event.seq
                    ),
                );
                tokio::select! {
                    _ = stop.cancelled() => break 'events,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
            advance.cursor = event.seq;
            handled += 1;
        }
        if batch.len() < BATCH && handled == batch.len() as u64 && complete > advance.cursor {
            advance.cursor = complete;
        }
        if advance.cursor > cursor {
            match store
                .event_advance(subscriber.name.as_str(), advance.clone())
                .await
            {
                Ok(()) => {
                    // Counted once stored: a batch that is delivered again is not counted twice.
                    if !advance.dead.is_empty() {
                        slot.handles().dead.increment(advance.dead.len() as u64);
                    }
                    subscriber.cursor.store(advance.cursor, Ordering::Relaxed);
                    let _ =
                        subscriber
                            .backlog
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                                Some(b.saturating_sub(handled))
                            });
                }
                Err(e) => {
                    // Delivered again later: at least once.
                    tracing::warn!(plugin = %subscriber.name, "cannot move the event cursor: {e}");
                }
            }
        }
    }
}

/// Whether the plugin counts as subscribed while in this state: everything but unloaded or
/// uninstalled (a restarting, reloading or failed plugin gets its events later).
pub(crate) fn keeps_subscription(state: PluginState) -> bool {
    !matches!(state, PluginState::Stopped | PluginState::Uninstalled)
}

/// Checks an event topic: 1 to 256 printable characters, not under `plugd.` (the host's own).
pub(crate) fn check_topic(topic: &str) -> Result<(), HostError> {
    if topic.is_empty() || topic.len() > MAX_TOPIC || topic.chars().any(char::is_control) {
        return Err(HostError::Invalid(format!(
            "Event topic `{}` is not valid; hint: use 1 to {MAX_TOPIC} printable characters, e.g. `image.imported`",
            topic.escape_default()
        )));
    }
    if topic == "plugd" || topic.starts_with("plugd.") {
        return Err(HostError::Invalid(format!(
            "Event topic `{topic}` is reserved: topics under `plugd.` are the host's own; hint: use your own prefix, e.g. `myapp.{}`",
            topic.trim_start_matches("plugd.")
        )));
    }
    Ok(())
}

/// Whether a plugin's subscription pattern matches a topic: as [`topic_matches`], except that
/// `*` leaves out the host's own topics (`plugd.*`). The store's subscription filter agrees.
pub(crate) fn subscription_matches(pattern: &str, topic: &str) -> bool {
    if pattern == "*" {
        return !topic.starts_with("plugd.");
    }
    topic_matches(pattern, topic)
}

/// Whether a subscription pattern (an exact topic, `prefix.*`, or `*`) matches a topic.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(prefix) => {
            topic.len() > prefix.len() + 1
                && topic.starts_with(prefix)
                && topic.as_bytes()[prefix.len()] == b'.'
        }
        None => pattern == topic || pattern == "*",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use plugd_store::{NewEvent, Store, StoreConfig, StoredEvent};

    use super::{
        HOLE_WAIT, RECENT_EVENTS, Recent, check_topic, subscription_matches, topic_matches,
    };

    fn event(seq: u64, topic: &str, target: Option<&str>) -> Arc<StoredEvent> {
        Arc::new(StoredEvent {
            seq,
            topic: topic.to_owned(),
            payload: format!("{{\"n\":{seq}}}"),
            hops: 0,
            source: None,
            target: target.map(str::to_owned),
            at_ms: 0,
        })
    }

    fn seqs(found: Option<(Vec<Arc<StoredEvent>>, u64)>) -> Option<(Vec<u64>, u64)> {
        found.map(|(batch, complete)| (batch.iter().map(|e| e.seq).collect(), complete))
    }

    const ALL: &[String] = &[];

    /// One fixed instant: holes only expire in the test that moves time on.
    fn now() -> std::time::Instant {
        static NOW: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *NOW.get_or_init(std::time::Instant::now)
    }

    fn star() -> Vec<String> {
        vec!["*".to_owned()]
    }

    #[test]
    fn the_window_answers_only_across_a_run_without_holes() {
        let mut recent = Recent::default();
        assert_eq!(seqs(recent.events_for("p", &star(), 0, 10)), None);
        recent.put(event(5, "a.x", None), now());
        // Before its first event: the window cannot say what came earlier.
        assert_eq!(seqs(recent.events_for("p", &star(), 3, 10)), None);
        assert_eq!(
            seqs(recent.events_for("p", &star(), 4, 10)),
            Some((vec![5], 5))
        );
        // 7 before 6 (publishers put them in any order): 7 waits for the hole to fill.
        recent.put(event(7, "a.x", None), now());
        assert_eq!(
            seqs(recent.events_for("p", &star(), 4, 10)),
            Some((vec![5], 5))
        );
        assert_eq!(seqs(recent.events_for("p", &star(), 5, 10)), None);
        recent.put(event(6, "a.x", None), now());
        assert_eq!(
            seqs(recent.events_for("p", &star(), 5, 10)),
            Some((vec![6, 7], 7))
        );
        // Put twice, or older than the window: ignored.
        recent.put(event(6, "a.x", None), now());
        recent.put(event(2, "a.x", None), now());
        assert_eq!(
            seqs(recent.events_for("p", &star(), 4, 10)),
            Some((vec![5, 6, 7], 7))
        );
        // A hole that is skipped for good takes everything before it out of the window.
        recent.skip(8);
        recent.put(event(9, "a.x", None), now());
        assert_eq!(seqs(recent.events_for("p", &star(), 7, 10)), None);
        assert_eq!(
            seqs(recent.events_for("p", &star(), 8, 10)),
            Some((vec![9], 9))
        );
    }

    #[test]
    fn a_hole_that_never_fills_leaves_a_full_window_with_the_oldest_events() {
        let mut recent = Recent::default();
        recent.put(event(1, "a.x", None), now());
        // 2 never comes (its publisher went away after the commit).
        for seq in 3..(RECENT_EVENTS as u64 + 3) {
            recent.put(event(seq, "a.x", None), now());
        }
        // Full: 1 left, and the hole with it; the window starts after the hole.
        assert_eq!(seqs(recent.events_for("p", &star(), 1, 1)), None);
        assert_eq!(
            seqs(recent.events_for("p", &star(), 2, 1)),
            Some((vec![3], 3))
        );
        assert!(recent.events.len() <= RECENT_EVENTS);
    }

    #[test]
    fn a_hole_that_holds_the_window_for_a_second_is_dropped() {
        let t0 = now();
        let mut recent = Recent::default();
        recent.put(event(1, "a.x", None), t0);
        recent.put(event(3, "a.x", None), t0);
        // A hole that fills in time changes nothing.
        recent.put(event(2, "a.x", None), t0 + HOLE_WAIT / 2);
        assert_eq!(
            seqs(recent.events_for("p", &star(), 0, 10)),
            Some((vec![1, 2, 3], 3))
        );
        // 4 never comes.
        recent.put(event(5, "a.x", None), t0 + HOLE_WAIT);
        recent.put(event(6, "a.x", None), t0 + HOLE_WAIT * 3 / 2);
        assert_eq!(
            seqs(recent.events_for("p", &star(), 0, 10)),
            Some((vec![1, 2, 3], 3))
        );
        assert_eq!(seqs(recent.events_for("p", &star(), 3, 10)), None);
        recent.put(event(7, "a.x", None), t0 + HOLE_WAIT * 2);
        // Dropped with what came before it: readers before it go to the store, the others on.
        assert_eq!(seqs(recent.events_for("p", &star(), 3, 10)), None);
        assert_eq!(
            seqs(recent.events_for("p", &star(), 4, 10)),
            Some((vec![5, 6, 7], 7))
        );
        // A late put of the hole is ignored.
        recent.put(event(4, "a.x", None), t0 + HOLE_WAIT * 2);
        assert_eq!(seqs(recent.events_for("p", &star(), 3, 10)), None);
    }

    #[test]
    fn a_batch_from_memory_is_the_batch_the_store_gives() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = Store::open(StoreConfig::new(dir.path().join("plugd.db")))
                .await
                .unwrap();
            let topics = [
                ("image.imported", None),
                ("image.raw.new", None),
                ("image", None),
                ("plugd.plugin.reload_failed", None),
                ("images.x", None),
                ("mail.sent", Some("p")),
                ("image.imported", Some("q")),
                ("mail.sent", None),
            ];
            let mut recent = Recent::default();
            let mut stored = Vec::new();
            for round in 0..3 {
                for (topic, target) in topics {
                    let seq = store
                        .event_append(NewEvent {
                            topic: topic.to_owned(),
                            payload: format!("{{\"round\":{round}}}"),
                            hops: 0,
                            source: None,
                            target: target.map(str::to_owned),
                        })
                        .await
                        .unwrap();
                    recent.put(event(seq, topic, target), now());
                    stored.push(event(seq, topic, target));
                }
            }
            let subscriptions: Vec<Vec<String>> = vec![
                star(),
                vec!["image.*".to_owned()],
                vec!["image".to_owned(), "mail.sent".to_owned()],
                vec!["plugd.*".to_owned(), "images.x".to_owned()],
                ALL.to_vec(),
            ];
            for patterns in &subscriptions {
                for plugin in ["p", "q"] {
                    for cursor in 0..24 {
                        for limit in [1, 2, 5, 256] {
                            let from_store = store
                                .events_for(plugin, patterns, cursor, limit)
                                .await
                                .unwrap();
                            let from_memory = recent
                                .events_for(plugin, patterns, cursor, limit)
                                .map(|(b, c)| (b.iter().map(|e| e.seq).collect::<Vec<_>>(), c))
                                .expect("the window holds every event after the cursor");
                            let expected = (
                                from_store.0.iter().map(|e| e.seq).collect::<Vec<_>>(),
                                from_store.1,
                            );
                            assert_eq!(
                                from_memory, expected,
                                "{plugin} {patterns:?} after {cursor}, at most {limit}"
                            );
                        }
                    }
                }
            }
            // The same events put out of order, 10 never (a hole) and 15 skipped (a replay):
            // wherever this window answers, its batch is the store's cut at its "complete up
            // to", and that mark is never past what it holds without a hole.
            let mut scrambled = Recent::default();
            let mut order: Vec<Arc<StoredEvent>> = stored.clone();
            order.reverse();
            order.rotate_left(7);
            for e in order {
                match e.seq {
                    10 => {}
                    15 => scrambled.skip(15),
                    _ => scrambled.put(e, now()),
                }
            }
            let mut answered = 0;
            for patterns in &subscriptions {
                for plugin in ["p", "q"] {
                    let all = store.events_for(plugin, patterns, 0, 1000).await.unwrap().0;
                    for cursor in 0..24 {
                        for limit in [1, 2, 5, 256] {
                            let Some((batch, complete)) =
                                scrambled.events_for(plugin, patterns, cursor, limit)
                            else {
                                continue;
                            };
                            answered += 1;
                            let got: Vec<u64> = batch.iter().map(|e| e.seq).collect();
                            let want: Vec<u64> = all
                                .iter()
                                .map(|e| e.seq)
                                .filter(|&seq| seq > cursor && seq <= complete)
                                .take(limit)
                                .collect();
                            assert_eq!(got, want, "{plugin} {patterns:?} after {cursor}");
                            assert!(complete >= 16, "answered across a hole: {complete}");
                        }
                    }
                }
            }
            assert!(answered > 0, "the scrambled window never answered");
        });
    }

    #[test]
    fn a_star_subscription_leaves_out_the_hosts_own_topics() {
        assert!(subscription_matches("*", "image.imported"));
        assert!(!subscription_matches("*", "plugd.plugin.reload_failed"));
        assert!(subscription_matches(
            "plugd.*",
            "plugd.plugin.reload_failed"
        ));
        assert!(topic_matches("*", "plugd.plugin.reload_failed"));
    }

    #[test]
    fn topic_patterns() {
        let cases = [
            ("image.imported", "image.imported", true),
            ("image.imported", "image.deleted", false),
            ("image.*", "image.imported", true),
            ("image.*", "image.raw.new", true),
            ("image.*", "image", false),
            ("image.*", "image.", false),
            ("image.*", "images.x", false),
            ("*", "anything", true),
        ];
        for (pattern, topic, expect) in cases {
            assert_eq!(
                topic_matches(pattern, topic),
                expect,
                "{pattern} vs {topic}"
            );
        }
    }

    #[test]
    fn reserved_and_malformed_topics_are_refused() {
        assert!(check_topic("image.imported").is_ok());
        for bad in ["", "plugd", "plugd.plugin.reload_failed", "a\nb"] {
            let err = check_topic(bad).unwrap_err().to_string();
            assert!(err.contains("topic"), "{bad:?}: {err}");
        }
        assert!(check_topic(&"x".repeat(257)).is_err());
    }
}
