//! A Server-Sent Events reader for the API's streams (`/api/v1/events/stream`,
//! `/api/v1/tasks/stream`): the `text/event-stream` framing of the HTML standard, as much of it
//! as plugd's server sends (`event`, `id`, `data`, comments, blank-line dispatch).

use std::io::BufRead;

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field (`message` when absent).
    pub event: String,
    /// The last `id:` field of this event (empty: none).
    pub id: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Reads events from a byte stream.
pub(crate) struct SseReader<R> {
    reader: R,
    line: String,
}

impl<R: BufRead> SseReader<R> {
    pub(crate) fn new(reader: R) -> Self {
        SseReader {
            reader,
            line: String::new(),
        }
    }

    /// The next event; `None` when the stream ended (an event cut off by the end is dropped, as
    /// the standard says).
    pub(crate) fn next_event(&mut self) -> std::io::Result<Option<SseEvent>> {
        let mut event = SseEvent::default();
        let mut has_data = false;
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line)? == 0 {
                return Ok(None);
            }
            let line = self
                .line
                .strip_suffix('\n')
                .map(|l| l.strip_suffix('\r').unwrap_or(l))
                .unwrap_or(&self.line);
            if line.is_empty() {
                if has_data {
                    if event.event.is_empty() {
                        event.event = "message".to_owned();
                    }
                    return Ok(Some(event));
                }
                // A block of comments or of fields without data dispatches nothing.
                event = SseEvent::default();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => event.event = value.to_owned(),
                "id" if !value.contains('\0') => event.id = value.to_owned(),
                "data" => {
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Vec<SseEvent> {
        let mut reader = SseReader::new(text.as_bytes());
        let mut out = Vec::new();
        while let Some(e) = reader.next_event().unwrap() {
            out.push(e);
        }
        out
    }

    fn ev(event: &str, id: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            id: id.into(),
            data: data.into(),
        }
    }

    #[test]
    fn fields_comments_and_dispatch() {
        assert_eq!(
            all(
                ":keep-alive\n\nevent: event\nid: 7\ndata: {\"a\":1}\n\ndata:x\r\ndata: y\r\n\r\n: c\nevent: task\ndata: {}\n\nevent: cut\ndata: off"
            ),
            [
                ev("event", "7", "{\"a\":1}"),
                ev("message", "", "x\ny"),
                ev("task", "", "{}"),
            ]
        );
        // Fields without data dispatch nothing.
        assert_eq!(all("event: a\nid: 1\n\n"), []);
    }
}
