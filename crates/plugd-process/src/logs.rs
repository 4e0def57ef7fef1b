//! Captures a child's stdout/stderr line by line into the plugin's log, with a line-length cap
//! and a rate limit so a flooding child costs the host bounded memory and time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use plugd_runtime::{HostCalls, LogLevel, LogSource};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::LogLimits;

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

/// Reads `stream` until EOF, forwarding lines to `host`.
pub(crate) async fn capture<R: AsyncRead + Unpin>(
    stream: R,
    source: LogSource,
    host: Arc<dyn HostCalls>,
    limits: LogLimits,
    tail: Option<Arc<Tail>>,
) {
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut line = Vec::with_capacity(256);
    let mut bucket = TokenBucket::new(limits.lines_per_second, limits.burst);
    let level = if source == LogSource::Stderr {
        LogLevel::Warn
    } else {
        LogLevel::Info
    };
    loop {
        line.clear();
        let truncated = match read_capped_line(&mut reader, &mut line, limits.max_line).await {
            Ok(Some(truncated)) => truncated,
            Ok(None) | Err(_) => break,
        };
        if !bucket.take() {
            continue;
        }
        if let Some(dropped) = bucket.report_dropped() {
            host.log(
                LogSource::Runtime,
                LogLevel::Warn,
                &format!(
                    "Suppressed {dropped} log lines: the plugin writes faster than {} lines/s",
                    limits.lines_per_second
                ),
            );
        }
        let mut text = String::from_utf8_lossy(&line).into_owned();
        if truncated {
            text.push_str(" …[truncated]");
        }
        if let Some(tail) = &tail {
            tail.push(&text);
        }
        host.log(source, level, &text);
    }
    if let Some(dropped) = bucket.report_dropped() {
        host.log(
            LogSource::Runtime,
            LogLevel::Warn,
            &format!("Suppressed {dropped} log lines"),
        );
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

struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
            dropped: 0,
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    fn report_dropped(&mut self) -> Option<u64> {
        (self.dropped > 0).then(|| std::mem::take(&mut self.dropped))
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

    #[test]
    fn bucket_drops_beyond_burst_and_reports_once() {
        let mut bucket = TokenBucket::new(1, 3);
        let taken = (0..10).filter(|_| bucket.take()).count();
        assert_eq!(taken, 3);
        assert_eq!(bucket.report_dropped(), Some(7));
        assert_eq!(bucket.report_dropped(), None);
    }
}
