//! Concurrency slots shared by every runtime: `limits.concurrency` calls run at once, the next
//! waits for a slot within its own deadline, and a call that gets none is `Overloaded` (429).

use std::sync::Arc;
use std::time::Duration;

use plugd_manifest::PluginName;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::RuntimeError;

/// The concurrency slots of one plugin instance.
#[derive(Clone, Debug)]
pub struct CallSlots {
    plugin: PluginName,
    limit: usize,
    semaphore: Arc<Semaphore>,
}

/// A held slot; dropping it frees the slot (also when the call's future is dropped). It borrows
/// the slots: a call holds it for its own duration only, and taking it costs no reference count.
#[derive(Debug)]
pub struct CallPermit<'a> {
    _permit: SemaphorePermit<'a>,
}

impl CallSlots {
    /// `limit` slots (at least one) for `plugin`.
    pub fn new(plugin: PluginName, limit: usize) -> Self {
        let limit = limit.max(1);
        CallSlots {
            plugin,
            limit,
            semaphore: Arc::new(Semaphore::new(limit)),
        }
    }

    /// Takes a slot, waiting at most `wait` (the rest of the call's deadline). A call that gets
    /// no slot in time is refused with [`RuntimeError::Overloaded`], never left queued.
    pub async fn acquire(&self, wait: Duration) -> Result<CallPermit<'_>, RuntimeError> {
        if let Some(permit) = self.try_acquire() {
            return Ok(permit);
        }
        match tokio::time::timeout(wait, self.semaphore.acquire()).await {
            Ok(Ok(permit)) => Ok(CallPermit { _permit: permit }),
            // The semaphore is never closed; treat it like saturation all the same.
            Ok(Err(_)) | Err(_) => Err(RuntimeError::Overloaded {
                plugin: self.plugin.clone(),
                reason: format!(
                    "all {} concurrency slots stayed busy for {wait:?}; hint: raise `limits.concurrency` in `plugin.toml` or send fewer calls at once",
                    self.limit
                ),
            }),
        }
    }

    /// Takes a slot if one is free now, without waiting.
    pub fn try_acquire(&self) -> Option<CallPermit<'_>> {
        self.semaphore
            .try_acquire()
            .ok()
            .map(|permit| CallPermit { _permit: permit })
    }

    /// Slots in use now.
    pub fn in_use(&self) -> usize {
        self.limit - self.semaphore.available_permits()
    }

    /// The number of slots.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(n: usize) -> CallSlots {
        CallSlots::new(PluginName::new("p").unwrap(), n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_is_overloaded_after_the_wait() {
        let s = slots(1);
        let held = s.acquire(Duration::ZERO).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = s.acquire(Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(err.code(), "overloaded");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(err.to_string().contains("all 1 concurrency slots"), "{err}");
        drop(held);
        assert_eq!(s.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_slot_that_frees() {
        let s = slots(1);
        let held = s.acquire(Duration::ZERO).await.unwrap();
        let s2 = s.clone();
        let waiter =
            tokio::spawn(async move { s2.acquire(Duration::from_secs(5)).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
        assert!(waiter.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_takes_no_slot() {
        let s = slots(2);
        let _a = s.acquire(Duration::ZERO).await.unwrap();
        let fut = s.acquire(Duration::from_secs(5));
        drop(fut);
        assert_eq!(s.in_use(), 1);
        let _b = s.acquire(Duration::ZERO).await.unwrap();
        assert_eq!(s.in_use(), 2);
    }

    #[test]
    fn try_acquire_takes_a_free_slot_or_none() {
        let s = slots(1);
        let held = s.try_acquire().expect("a free slot");
        assert_eq!(s.in_use(), 1);
        assert!(s.try_acquire().is_none(), "no second slot");
        drop(held);
        assert!(s.try_acquire().is_some());
    }
}
