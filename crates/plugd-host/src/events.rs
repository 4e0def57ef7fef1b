//! Event delivery: a topic and a JSON payload, delivered to every running plugin that subscribed
//! (exact topic, or a prefix ending in `.*`).
//!
//! In memory and bounded (durability comes with the event log): each running generation has one
//! queue of [`EVENT_QUEUE`] events and one task that delivers them in publish order. A full queue
//! drops the new event for that subscriber and counts it. The payload is parsed once and shared by
//! every subscriber. An event carries a hop count: an event a plugin emits while it handles an
//! event of hop `h` has hop `h + 1`, and past [`MAX_HOPS`] it is refused, so two plugins cannot
//! bounce events forever. Each plugin may emit [`EMIT_RATE`] events per second (burst
//! [`EMIT_BURST`]); the excess is refused with an error the plugin sees.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use plugd_manifest::PluginName;
use plugd_runtime::{Instance, LogLevel, LogSource};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::registry::Slot;
use crate::{Host, HostError};

/// Events waiting per subscriber before new ones are dropped for it.
pub const EVENT_QUEUE: usize = 1024;
/// How many times an event may cause another event.
pub const MAX_HOPS: u8 = 8;
/// Events per second a plugin may emit, sustained.
pub const EMIT_RATE: u32 = 100;
/// Events a plugin may emit at once above the sustained rate.
pub const EMIT_BURST: u32 = 500;
/// The longest a subscriber may take over one event before the delivery task moves on.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);
/// The longest topic name.
const MAX_TOPIC: usize = 256;
/// The largest event payload (as JSON text); larger ones are refused, so a queue of
/// [`EVENT_QUEUE`] events stays bounded in bytes too.
pub const MAX_EVENT_PAYLOAD: usize = 256 << 10;

/// One published event, shared by all its subscribers.
pub(crate) struct Event {
    topic: String,
    payload: Box<RawValue>,
    hops: u8,
}

/// The bounded, ordered delivery queue of one running generation.
pub(crate) struct EventQueue {
    tx: mpsc::Sender<Arc<Event>>,
}

impl EventQueue {
    /// Starts the delivery task of one generation. It ends when the queue is dropped (the
    /// generation stopped) after the event in hand.
    ///
    /// The task holds the slot weakly: the slot holds this queue's sender, and a strong
    /// reference would keep both alive after the host is dropped.
    pub(crate) fn start(slot: &Arc<Slot>, instance: Arc<dyn Instance>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Arc<Event>>(EVENT_QUEUE);
        let slot = Arc::downgrade(slot);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let Some(slot) = slot.upgrade() else { return };
                slot.delivering_hops.store(event.hops, Ordering::Relaxed);
                let delivery = instance.event(&event.topic, &event.payload);
                let outcome = tokio::time::timeout(DELIVERY_DEADLINE, delivery).await;
                slot.delivering_hops.store(0, Ordering::Relaxed);
                let problem = match outcome {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {DELIVERY_DEADLINE:?}"),
                };
                slot.push_log(
                    LogSource::Runtime,
                    LogLevel::Warn,
                    &format!("Event `{}` was not delivered: {problem}", event.topic),
                );
            }
        });
        EventQueue { tx }
    }

    /// Queues an event without waiting; `false` when the queue is full or closed.
    fn offer(&self, event: &Arc<Event>) -> bool {
        self.tx.try_send(event.clone()).is_ok()
    }
}

/// Hop count of the event a slot is handling now (0 when none); see the module docs.
pub(crate) type DeliveringHops = AtomicU8;

impl Host {
    /// Publishes an event to every subscribed running plugin and returns how many subscribers
    /// queued it. Delivery is asynchronous and ordered per subscriber; failures are logged to the
    /// subscriber's log. Callable from any thread (no Tokio context needed).
    pub fn publish(&self, topic: &str, payload: serde_json::Value) -> Result<usize, HostError> {
        self.publish_from(None, topic, payload)
    }

    pub(crate) fn publish_from(
        &self,
        sender: Option<&Arc<Slot>>,
        topic: &str,
        payload: serde_json::Value,
    ) -> Result<usize, HostError> {
        if topic.is_empty() || topic.len() > MAX_TOPIC || topic.chars().any(char::is_control) {
            return Err(HostError::Invalid(format!(
                "Event topic `{}` is not valid; hint: use 1 to {MAX_TOPIC} printable characters, e.g. `image.imported`",
                topic.escape_default()
            )));
        }
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
        let payload = serde_json::value::to_raw_value(&payload).map_err(|e| {
            HostError::Invalid(format!(
                "Event `{topic}` has a payload that is not JSON: {e}"
            ))
        })?;
        if payload.get().len() > MAX_EVENT_PAYLOAD {
            return Err(HostError::Invalid(format!(
                "Event `{topic}` was refused: its payload is {} bytes, more than {MAX_EVENT_PAYLOAD}; hint: put large data in kv or the data dir and send its key",
                payload.get().len()
            )));
        }
        let event = Arc::new(Event {
            topic: topic.to_owned(),
            payload,
            hops,
        });
        let sender_name: Option<&PluginName> = sender.map(|s| &s.name);
        let slots: Vec<Arc<Slot>> = self.inner.slots.read().values().cloned().collect();
        let mut queued = 0;
        for slot in slots {
            if Some(&slot.name) == sender_name {
                continue;
            }
            let Some(generation) = slot.running() else {
                continue;
            };
            if !generation
                .manifest
                .events
                .subscribe
                .iter()
                .any(|p| topic_matches(p, topic))
            {
                continue;
            }
            if generation.events.offer(&event) {
                queued += 1;
            } else {
                let dropped = slot.events_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // One line per power of two keeps a flood from flooding the log as well.
                if dropped.is_power_of_two() {
                    slot.push_log(
                        LogSource::Runtime,
                        LogLevel::Warn,
                        &format!("Dropped event `{topic}`: {EVENT_QUEUE} events are already waiting for this plugin ({dropped} dropped so far)"),
                    );
                }
            }
        }
        if let Some(slot) = sender {
            slot.emitted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(queued)
    }
}

/// Whether a subscription pattern matches a topic.
pub(crate) fn topic_matches(pattern: &str, topic: &str) -> bool {
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
    use super::topic_matches;

    #[test]
    fn topic_patterns() {
        let cases = [
            ("image.imported", "image.imported", true),
            ("image.imported", "image.deleted", false),
            ("image.*", "image.imported", true),
            ("image.*", "image", false),
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
}
