//! Captures a child's stdout/stderr line by line into the plugin's log. Reading stops a line at
//! [`MAX_LOG_LINE`] bytes, so a child costs the host bounded memory per line; every line goes to
//! the host, which applies the one rate limit, cap and escaping shared by every log source.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use plugd_runtime::{HostCalls, LogLevel, LogSource, MAX_LOG_LINE};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Appended to a line that was cut at [`MAX_LOG_LINE`] bytes.
pub(crate) const CUT_MARK: &str = " …[truncated]";

/// The last few stderr lines, kept for crash reasons.
#[derive(Default)]
pub(crate) struct Tail {
    lines: Mutex<VecDeque<String>>,
}

const TAIL_LINES: usize = 8;

impl Tail {
    fn push(&self, line: &str) {
        let mut lines = self.lines.lock();
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_owned());
    }

    /// The kept lines joined with ` | `, or `None` when there are none.
    pub(crate) fn summary(&self) -> Option<String> {
        let lines = self.lines.lock();
        if lines.is_empty() {
            None
        } else {
            Some(
                lines
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(" | "),
            )
        }
    }
}

/// Reads `stream` until EOF, forwarding every line to `host`.
pub(crate) async fn capture<R: AsyncRead + Unpin>(
    stream: R,
    source: LogSource,
    host: Arc<dyn HostCalls>,
    tail: Option<Arc<Tail>>,
) {
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut line = Vec::with_capacity(256);
    let level = if source == LogSource::Stderr {
        LogLevel::Warn
    } else {
        LogLevel::Info
    };
    loop {
        line.clear();
        let truncated = match read_capped_line(&mut reader, &mut line, MAX_LOG_LINE).await {
            Ok(Some(truncated)) => truncated,
            Ok(None) | Err(_) => break,
        };
        let mut text = String::from_utf8_lossy(&line).into_owned();
        if truncated {
            text.push_str(CUT_MARK);
        }
        if let Some(tail) = &tail {
            tail.push(&text);
        }
        host.log(source, level, &text);
    }
}

/// Reads one line into `out`, keeping at most `max` bytes and discarding the rest of the line.
/// Returns `Some(truncated)`, or `None` at EOF with nothing read.
async fn read_capped_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    out: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    let mut truncated = false;
    let mut any = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if any { Some(truncated) } else { None });
        }
        any = true;
        let (chunk, consumed, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(pos) => (&buf[..pos], pos + 1, true),
            None => (buf, buf.len(), false),
        };
        let room = max.saturating_sub(out.len());
        if chunk.len() > room {
            truncated = true;
        }
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(consumed);
        if done {
            if out.last() == Some(&b'\r') {
                out.pop();
            }
            return Ok(Some(truncated));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caps_long_lines_and_keeps_reading() {
        let input: &[u8] = b"short\n0123456789abcdef\r\nlast-no-newline";
        let mut reader = BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        let mut got = Vec::new();
        while let Some(truncated) = read_capped_line(&mut reader, &mut out, 10).await.unwrap() {
            got.push((String::from_utf8(out.clone()).unwrap(), truncated));
            out.clear();
        }
        assert_eq!(
            got,
            [
                ("short".to_owned(), false),
                ("0123456789".to_owned(), true),
                ("last-no-ne".to_owned(), true)
            ]
        );
    }

    struct Lines(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl HostCalls for Lines {
        fn log(&self, _: LogSource, _: LogLevel, message: &str) {
            self.0.lock().push(message.to_owned());
        }
        fn progress(&self, _: plugd_runtime::Progress) {}
        async fn emit(
            &self,
            _: &str,
            _: serde_json::Value,
        ) -> Result<(), plugd_runtime::HostCallError> {
            Ok(())
        }
        async fn request(
            &self,
            method: &str,
            _: serde_json::Value,
        ) -> Result<serde_json::Value, plugd_runtime::HostCallError> {
            Err(plugd_runtime::HostCallError::Unknown(method.to_owned()))
        }
    }

    #[tokio::test]
    async fn forwards_every_line_and_cuts_long_ones_at_the_shared_cap() {
        let mut input = Vec::new();
        for i in 0..5000 {
            input.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        input.extend(std::iter::repeat_n(b'x', 3 * MAX_LOG_LINE));
        input.extend_from_slice(b"\nend\n");
        let lines = Arc::new(Lines(Mutex::new(Vec::new())));
        let tail = Arc::new(Tail::default());
        capture(
            &input[..],
            LogSource::Stderr,
            lines.clone(),
            Some(tail.clone()),
        )
        .await;
        let got = lines.0.lock();
        // No rate limit here any more: the host applies the one limit for every source.
        assert_eq!(got.len(), 5002);
        assert_eq!(got[4999], "line 4999");
        assert_eq!(got[5000], format!("{}{CUT_MARK}", "x".repeat(MAX_LOG_LINE)));
        assert_eq!(got[5001], "end");
        assert!(tail.summary().unwrap().ends_with(" | end"));
    }
}
