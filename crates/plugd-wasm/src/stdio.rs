//! The guest's stdout and stderr: split into capped lines, forwarded to the plugin's log, and
//! the last stderr lines kept to explain a trap.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use plugd_runtime::{HostCalls, LogLevel, LogSource, MAX_LOG_LINE};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How many of the last non-blank stderr lines an instance keeps to explain a trap (enough for
/// a short Python traceback's last frame and exception plus the language runtime's own note).
pub(crate) const STDERR_TAIL: usize = 6;

/// The most a line keeps: one byte past the host's cap, so the host sees that the line was
/// longer and marks the cut. The rest of an overlong line is dropped up to its newline, so a
/// guest writing without newlines costs the host at most this much per stream.
const KEEP: usize = MAX_LOG_LINE + 1;

/// A `StdoutStream` whose lines go to [`HostCalls::log`] with the given source (which applies
/// the one cap, rate limit and escaping of every log source).
#[derive(Clone)]
pub(crate) struct LogStream {
    sink: Arc<Mutex<LineSink>>,
    /// Whether the sink keeps any tail lines: set under the lock when one is kept, so clearing
    /// an empty tail at every call's start (the common case) takes no lock.
    has_tail: Arc<AtomicBool>,
}

struct LineSink {
    host: Arc<dyn HostCalls>,
    source: LogSource,
    buf: Vec<u8>,
    /// [`LogStream::has_tail`], shared.
    has_tail: Arc<AtomicBool>,
    /// Whether the current line passed [`KEEP`] bytes (the rest is being dropped).
    overlong: bool,
    /// The last [`STDERR_TAIL`] complete lines (stderr only; empty for stdout).
    tail: VecDeque<String>,
}

impl LogStream {
    pub(crate) fn new(host: Arc<dyn HostCalls>, source: LogSource) -> LogStream {
        let has_tail = Arc::new(AtomicBool::new(false));
        LogStream {
            sink: Arc::new(Mutex::new(LineSink {
                host,
                source,
                buf: Vec::new(),
                has_tail: has_tail.clone(),
                overlong: false,
                tail: VecDeque::with_capacity(STDERR_TAIL),
            })),
            has_tail,
        }
    }

    fn write(&self, bytes: &[u8]) {
        self.lock().write(bytes);
    }

    /// The last non-blank lines written (a pending partial line counts as the last one), oldest
    /// first.
    /// For stderr only: stdout keeps none.
    pub(crate) fn tail(&self) -> Vec<String> {
        let sink = self.lock();
        let mut lines: Vec<String> = sink.tail.iter().cloned().collect();
        if !sink.line().trim().is_empty() {
            if lines.len() == STDERR_TAIL {
                lines.remove(0);
            }
            lines.push(sink.line());
        }
        lines
    }

    /// Forgets the kept lines (at the start of each call, so a trap shows its own call's).
    /// Without kept lines it takes no lock. The guest writes only while it runs, on the task
    /// that calls this between runs, so no line is being kept meanwhile.
    pub(crate) fn clear_tail(&self) {
        if self.has_tail.load(Ordering::Acquire) {
            let mut sink = self.lock();
            sink.tail.clear();
            self.has_tail.store(false, Ordering::Release);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LineSink> {
        self.sink.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LineSink {
    fn write(&mut self, mut bytes: &[u8]) {
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            self.keep(&bytes[..pos]);
            self.flush_line();
            bytes = &bytes[pos + 1..];
        }
        self.keep(bytes);
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = KEEP.saturating_sub(self.buf.len());
        self.overlong |= bytes.len() > room;
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn line(&self) -> String {
        let line = String::from_utf8_lossy(&self.buf);
        line.strip_suffix('\r').unwrap_or(&line).to_owned()
    }

    fn flush_line(&mut self) {
        let line = self.line();
        let level = match self.source {
            LogSource::Stderr => LogLevel::Warn,
            _ => LogLevel::Info,
        };
        self.host.log(self.source, level, &line);
        if self.source == LogSource::Stderr && !line.trim().is_empty() {
            if self.tail.len() == STDERR_TAIL {
                self.tail.pop_front();
            }
            self.tail.push_back(line);
            self.has_tail.store(true, Ordering::Release);
        }
        self.buf.clear();
        self.overlong = false;
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.flush_line();
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        LogStream::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use plugd_runtime::{HostCallError, Progress};

    use super::*;

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl HostCalls for Lines {
        fn log(&self, _: LogSource, _: LogLevel, message: &str) {
            self.0.lock().unwrap().push(message.to_owned());
        }
        fn progress(&self, _: Progress) {}
        async fn emit(&self, _: &str, _: serde_json::Value) -> Result<(), HostCallError> {
            Ok(())
        }
        async fn request(
            &self,
            m: &str,
            _: serde_json::Value,
        ) -> Result<serde_json::Value, HostCallError> {
            Err(HostCallError::Unknown(m.to_owned()))
        }
    }

    #[test]
    fn an_overlong_line_is_kept_one_byte_past_the_cap_and_the_rest_dropped() {
        let host = Arc::new(Lines::default());
        let stream = LogStream::new(host.clone(), LogSource::Stdout);
        // 10 MiB without a newline, in pieces: the sink never holds more than `KEEP` bytes.
        for _ in 0..160 {
            stream.write(&[b'x'; 64 * 1024]);
            assert!(stream.lock().buf.len() <= KEEP);
        }
        stream.write(b"tail of the long line\nnext\r\n");
        let lines = host.0.lock().unwrap().clone();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], "x".repeat(KEEP));
        assert_eq!(lines[1], "next");
        assert!(stream.tail().is_empty(), "stdout keeps no tail");
    }

    #[test]
    fn stderr_keeps_its_last_lines_including_a_partial_one() {
        let host = Arc::new(Lines::default());
        let stream = LogStream::new(host.clone(), LogSource::Stderr);
        stream.write(b"1\n2\n3\n\n4\n5\n6\n7\n");
        assert_eq!(stream.tail(), ["2", "3", "4", "5", "6", "7"]);
        stream.write(b"Value");
        stream.write(b"Error: py kaboom");
        assert_eq!(
            stream.tail(),
            ["3", "4", "5", "6", "7", "ValueError: py kaboom"]
        );
        stream.clear_tail();
        assert_eq!(stream.tail(), ["ValueError: py kaboom"]);
        // Every line, blank ones too, went to the log.
        assert_eq!(host.0.lock().unwrap().len(), 8);
        // A line kept after a clear is cleared by the next one (the lock-free check sees it).
        stream.write(b"\nlater\n");
        assert_eq!(stream.tail(), ["ValueError: py kaboom", "later"]);
        stream.clear_tail();
        assert!(stream.tail().is_empty());
        stream.clear_tail();
        assert!(stream.tail().is_empty());
    }
}
