//! The supervision record of a plugin, kept by the host across its versions: the faults its
//! runtime reported (crashes, failed restarts, with their time) and every version swap (reload,
//! restart) with how long it took or why it failed. Bounded: the newest [`KEPT`] of each.
//!
//! The runtime owns restarts after a crash (backoff, crash budget); the host only records what it
//! is told through `Health` and shows the runtime's scheduled restart (`InstanceStatus::backoff`).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use plugd_manifest::Version;

/// Entries kept of each kind.
pub const KEPT: usize = 20;

/// Topic of the event the host publishes when a reload or restart fails.
pub const RELOAD_FAILED: &str = "plugd.plugin.reload_failed";

/// A fault the runtime reported (a crash, a failed restart, giving up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// When the host learned of it.
    pub at: SystemTime,
    /// What happened, as the runtime put it.
    pub reason: String,
}

/// What asked for a version swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// `plugd reload`, `POST .../reload` or [`crate::Host::reload`].
    Reload,
    /// `plugd restart`, `POST .../restart` or [`crate::Host::restart`].
    Restart,
    /// A change in the plugins directory seen by the watcher (`plugd serve --watch`).
    Watch,
}

impl Trigger {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Reload => "reload",
            Trigger::Restart => "restart",
            Trigger::Watch => "watch",
        }
    }
}

/// One attempt to replace a plugin's version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swap {
    /// When it began.
    pub at: SystemTime,
    /// What asked for it.
    pub trigger: Trigger,
    /// The version serving before (none when the plugin was not running).
    pub from: Option<Version>,
    /// The version it tried to start (none when its manifest could not be read).
    pub to: Option<Version>,
    /// From the start of the attempt to the new version serving (or to the failure): reading,
    /// verifying and staging the package, starting the new instance, switching.
    pub took: Duration,
    /// `Err(reason)` when it failed; the version in `from` kept serving.
    pub outcome: Result<(), String>,
}

/// A plugin's supervision record.
#[derive(Clone, Debug, Default)]
pub(crate) struct Record {
    pub faults: VecDeque<Fault>,
    pub swaps: VecDeque<Swap>,
}

impl Record {
    pub(crate) fn fault(&mut self, reason: String) {
        push_bounded(
            &mut self.faults,
            Fault {
                at: SystemTime::now(),
                reason,
            },
        );
    }

    pub(crate) fn swap(&mut self, swap: Swap) {
        push_bounded(&mut self.swaps, swap);
    }
}

fn push_bounded<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() >= KEPT {
        list.pop_front();
    }
    list.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_the_newest_entries() {
        let mut record = Record::default();
        for i in 0..KEPT + 5 {
            record.fault(format!("crash {i}"));
        }
        assert_eq!(record.faults.len(), KEPT);
        assert_eq!(record.faults.front().unwrap().reason, "crash 5");
        assert_eq!(
            record.faults.back().unwrap().reason,
            format!("crash {}", KEPT + 4)
        );
    }
}
