//! Memory accounting for one store: the manifest's `limits.memory` over all of its memories.

use wasmtime::ResourceLimiter;

/// Grants linear-memory growth while the store's memories stay under the limit, and remembers
/// a refusal so a failed call can be reported as a memory limit rather than a bare trap.
pub(crate) struct Limiter {
    limit: usize,
    used: usize,
    /// Set when a growth was refused; cleared by the runtime before each call.
    pub(crate) denied: bool,
}

/// Tables may hold at most this many elements (function references); generous for real guests.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl Limiter {
    pub(crate) fn new(limit: u64) -> Limiter {
        Limiter {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            used: 0,
            denied: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        if self.used.saturating_add(grow) > self.limit {
            self.denied = true;
            return Ok(false);
        }
        self.used += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
