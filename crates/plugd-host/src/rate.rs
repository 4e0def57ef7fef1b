//! A plugin's call rate limit (`limits.rate`): at most `calls` calls in any window of `per`.
//!
//! A sliding log of the admitted calls' times, exact rather than a token bucket's average (a
//! bucket of `calls` tokens refilled over `per` would admit up to twice `calls` in one window).
//! Its memory is bounded by `calls`, which the manifest caps at 100,000.

use std::collections::VecDeque;
use std::time::Duration;

use plugd_manifest::Rate;
use tokio::time::Instant;

/// The times of the calls admitted in the current window, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Window {
    admitted: VecDeque<Instant>,
}

impl Window {
    /// Admits a call arriving `now` under `rate`, or says how long until one would be admitted.
    pub(crate) fn admit(&mut self, now: Instant, rate: Rate) -> Result<(), Duration> {
        let calls = rate.calls as usize;
        while let Some(&oldest) = self.admitted.front() {
            if now.saturating_duration_since(oldest) >= rate.per || self.admitted.len() > calls {
                self.admitted.pop_front();
            } else {
                break;
            }
        }
        if self.admitted.len() < calls {
            self.admitted.push_back(now);
            return Ok(());
        }
        let oldest = self.admitted.front().copied().unwrap_or(now);
        Err((oldest + rate.per).saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(calls: u32, secs: u64) -> Rate {
        Rate {
            calls,
            per: Duration::from_secs(secs),
        }
    }

    #[test]
    fn admits_at_most_calls_in_any_window() {
        let start = Instant::now();
        let mut w = Window::default();
        let r = rate(3, 10);
        for i in 0..3 {
            assert_eq!(w.admit(start + Duration::from_secs(i), r), Ok(()));
        }
        // The fourth within 10 s of the first is refused until the first leaves the window.
        assert_eq!(
            w.admit(start + Duration::from_secs(4), r),
            Err(Duration::from_secs(6))
        );
        assert_eq!(w.admit(start + Duration::from_secs(10), r), Ok(()));
        // The call at 1 s left the window at 11 s: one more fits, then none until 12 s.
        assert_eq!(w.admit(start + Duration::from_secs(11), r), Ok(()));
        assert_eq!(
            w.admit(start + Duration::from_millis(11_500), r),
            Err(Duration::from_millis(500))
        );
        // A lower rate after a reload trims what is kept.
        assert!(
            w.admit(start + Duration::from_secs(12), rate(1, 10))
                .is_err()
        );
        assert_eq!(
            w.admit(start + Duration::from_secs(21), rate(1, 10)),
            Ok(())
        );
    }
}
