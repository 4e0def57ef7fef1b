//! Newline-delimited framing with a hard size limit, so a child cannot make the host buffer an
//! unbounded line.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame exceeded the limit.
    #[error("Frame exceeds the {limit}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("Connection closed in the middle of a frame")]
    Truncated,
    /// I/O error.
    #[error("Reading a frame failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads newline-terminated frames from a buffered reader.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    max: usize,
    buf: Vec<u8>,
}

impl<R: AsyncBufRead + Unpin> FrameReader<R> {
    /// Wraps `inner`; frames longer than `max` bytes are refused.
    pub fn new(inner: R, max: usize) -> Self {
        FrameReader {
            inner,
            max,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Reads the next frame (without its newline). `Ok(None)` at a clean end of stream.
    /// Empty lines are skipped.
    pub async fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        self.buf.clear();
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            match memchr(available) {
                Some(pos) => {
                    if self.buf.len() + pos > self.max {
                        return Err(FrameError::TooLarge { limit: self.max });
                    }
                    self.buf.extend_from_slice(&available[..pos]);
                    self.inner.consume(pos + 1);
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        self.buf.clear();
                        continue;
                    }
                    return Ok(Some(&self.buf));
                }
                None => {
                    let n = available.len();
                    if self.buf.len() + n > self.max {
                        return Err(FrameError::TooLarge { limit: self.max });
                    }
                    self.buf.extend_from_slice(available);
                    self.inner.consume(n);
                }
            }
        }
    }
}

fn memchr(haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8], max: usize) -> Vec<String> {
        let mut reader = FrameReader::new(tokio::io::BufReader::with_capacity(4, input), max);
        let mut out = Vec::new();
        loop {
            match reader.next_frame().await {
                Ok(Some(f)) => out.push(String::from_utf8_lossy(f).into_owned()),
                Ok(None) => break,
                Err(e) => {
                    out.push(format!("error: {e}"));
                    break;
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_across_buffer_boundaries() {
        assert_eq!(
            frames(b"{\"a\":1}\n\n{\"bb\":22}\n", 64).await,
            ["{\"a\":1}", "{\"bb\":22}"]
        );
    }

    #[tokio::test]
    async fn refuses_oversized_and_truncated_frames() {
        assert_eq!(
            frames(b"0123456789\n", 8).await,
            ["error: Frame exceeds the 8-byte limit"]
        );
        assert_eq!(
            frames(b"ok\nunfinished", 64).await,
            ["ok", "error: Connection closed in the middle of a frame"]
        );
    }
}
