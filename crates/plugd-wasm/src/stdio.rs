//! The guest's stdout and stderr: split into lines and forwarded to the plugin's log.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use plugd_runtime::{HostCalls, LogLevel, LogSource};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A line longer than this is cut and forwarded in pieces, so a guest cannot make the host
/// buffer without bound.
const MAX_LINE: usize = 8 * 1024;

/// A `StdoutStream` whose lines go to [`HostCalls::log`] with the given source.
#[derive(Clone)]
pub(crate) struct LogStream {
    sink: Arc<Mutex<LineSink>>,
}

struct LineSink {
    host: Arc<dyn HostCalls>,
    source: LogSource,
    buf: Vec<u8>,
}

impl LogStream {
    pub(crate) fn new(host: Arc<dyn HostCalls>, source: LogSource) -> LogStream {
        LogStream {
            sink: Arc::new(Mutex::new(LineSink {
                host,
                source,
                buf: Vec::new(),
            })),
        }
    }

    fn write(&self, bytes: &[u8]) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        sink.write(bytes);
    }
}

impl LineSink {
    fn write(&mut self, mut bytes: &[u8]) {
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            self.buf.extend_from_slice(&bytes[..pos]);
            self.flush_line();
            bytes = &bytes[pos + 1..];
        }
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= MAX_LINE {
            let rest = self.buf.split_off(MAX_LINE);
            self.flush_line();
            self.buf = rest;
        }
    }

    fn flush_line(&mut self) {
        let line = String::from_utf8_lossy(&self.buf);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        let level = match self.source {
            LogSource::Stderr => LogLevel::Warn,
            _ => LogLevel::Info,
        };
        self.host.log(self.source, level, line);
        self.buf.clear();
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
