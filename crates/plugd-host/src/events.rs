//! Event delivery: a topic and a JSON payload, delivered to every running plugin that subscribed
//! (exact topic, or a prefix ending in `.*`).

use plugd_manifest::PluginName;
use plugd_runtime::{LogLevel, LogSource};
use serde_json::value::RawValue;

use crate::Host;
use crate::registry::PluginState;

impl Host {
    /// Publishes an event to every subscribed running plugin. Returns how many plugins it was
    /// delivered to. Delivery is asynchronous; failures are logged to the subscriber's log.
    pub fn publish(&self, topic: &str, payload: serde_json::Value) -> usize {
        self.publish_from(None, topic, payload)
    }

    pub(crate) fn publish_from(
        &self,
        sender: Option<&PluginName>,
        topic: &str,
        payload: serde_json::Value,
    ) -> usize {
        let raw: Box<RawValue> = match serde_json::value::to_raw_value(&payload) {
            Ok(r) => r,
            Err(_) => return 0,
        };
        let targets: Vec<_> =
            self.inner
                .slots
                .read()
                .values()
                .filter(|slot| Some(&slot.name) != sender)
                .filter_map(|slot| {
                    let inner = slot.inner.lock();
                    let subscribed = inner.manifest.as_ref().is_some_and(|m| {
                        m.events.subscribe.iter().any(|p| topic_matches(p, topic))
                    });
                    match (&inner.instance, inner.state) {
                        (Some(instance), PluginState::Running) if subscribed => {
                            Some((slot.clone(), instance.clone()))
                        }
                        _ => None,
                    }
                })
                .collect();
        let count = targets.len();
        for (slot, instance) in targets {
            let topic = topic.to_owned();
            let raw = raw.clone();
            tokio::spawn(async move {
                if let Err(e) = instance.event(&topic, &raw).await {
                    slot.push_log(
                        LogSource::Runtime,
                        LogLevel::Warn,
                        &format!("Event `{topic}` was not delivered: {e}"),
                    );
                }
            });
        }
        count
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
