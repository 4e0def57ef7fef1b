//! The one gate every plugin log line passes, whatever its source (stdout, stderr, structured
//! `log` frames, the wasm `host::log` import): a length cap, a token bucket per plugin, and an
//! escaping rule so a plugin can never forge a host log line.

use std::time::Instant;

use plugd_runtime::MAX_LOG_LINE;

/// Sustained log lines per second per plugin; the excess is dropped and counted.
pub(crate) const LINES_PER_SECOND: u32 = 200;
/// Lines a plugin may log in a burst above the sustained rate.
pub(crate) const BURST: u32 = 1000;

/// A token bucket (log lines, emitted events): `rate` per second sustained, `burst` at once.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
    dropped: u64,
}

/// The bucket of one plugin's log lines.
pub(crate) type LogGate = Bucket;

impl Default for Bucket {
    fn default() -> Self {
        Bucket::new(LINES_PER_SECOND, BURST)
    }
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Bucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: None,
            dropped: 0,
        }
    }

    /// Whether a line arriving `now` is kept, and — on the first kept line after some were
    /// dropped — how many were dropped.
    pub(crate) fn admit(&mut self, now: Instant) -> (bool, Option<u64>) {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            let note = (self.dropped > 0).then(|| std::mem::take(&mut self.dropped));
            (true, note)
        } else {
            self.dropped += 1;
            (false, None)
        }
    }
}

/// Caps a line at [`MAX_LOG_LINE`] bytes (on a character boundary, marked) and escapes every
/// control character but tab, so newlines and ANSI escapes inside a message stay inside it.
pub(crate) fn sanitize(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_LOG_LINE) + 16);
    let mut cut = false;
    for c in message.chars() {
        let escaped_len = match c {
            '\t' => 1,
            '\n' | '\r' => 2,
            c if c.is_control() => 6,
            c => c.len_utf8(),
        };
        if out.len() + escaped_len > MAX_LOG_LINE {
            cut = true;
            break;
        }
        match c {
            '\t' => out.push('\t'),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:02x}}}", c as u32)),
            c => out.push(c),
        }
    }
    if cut {
        out.push_str(" …[cut]");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn control_characters_cannot_forge_lines_or_colours() {
        assert_eq!(sanitize("a\nINFO host: fake"), "a\\nINFO host: fake");
        assert_eq!(sanitize("\u{1b}[31mred\r"), "\\u{1b}[31mred\\r");
        assert_eq!(sanitize("tab\tok ünï"), "tab\tok ünï");
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let line = "é".repeat(MAX_LOG_LINE);
        let out = sanitize(&line);
        assert!(out.ends_with(" …[cut]"));
        assert!(out.len() <= MAX_LOG_LINE + " …[cut]".len());
        let escaped = sanitize(&"\n".repeat(MAX_LOG_LINE));
        assert!(escaped.len() <= MAX_LOG_LINE + " …[cut]".len());
    }

    #[test]
    fn the_bucket_drops_a_flood_and_reports_it() {
        let mut gate = LogGate::default();
        let t0 = Instant::now();
        let kept = (0..BURST + 500).filter(|_| gate.admit(t0).0).count();
        assert_eq!(kept, BURST as usize);
        // One second later the bucket has refilled by the sustained rate.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(gate.admit(t1), (true, Some(500)));
        let more = (0..LINES_PER_SECOND * 2)
            .filter(|_| gate.admit(t1).0)
            .count();
        assert_eq!(more, LINES_PER_SECOND as usize - 1);
    }
}
