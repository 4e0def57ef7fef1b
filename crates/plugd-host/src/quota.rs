//! The data-dir quota (`limits.disk`): the host measures each running plugin's data dir
//! periodically and fails the plugin, with the reason, when it holds more than its quota. The
//! process sandbox also caps each file's size (`RLIMIT_FSIZE`), so one write cannot run far past
//! the quota between two checks.

use crate::Host;
use crate::lifecycle::HostInner;
use crate::registry::Slot;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

/// How many directory entries one measurement visits at most: a plugin cannot make the host walk
/// forever by creating millions of files (past this, the data dir counts as over quota).
const MAX_ENTRIES: u64 = 1_000_000;

/// Bytes allocated on disk under `dir` (not following symlinks; hard links counted once per
/// path), or an error naming the problem. Blocking: run it off the async workers.
pub fn dir_usage(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut visited = 0u64;
    let mut stack: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            visited += 1;
            if visited > MAX_ENTRIES {
                return Err(std::io::Error::other(format!(
                    "more than {MAX_ENTRIES} files and directories"
                )));
            }
            let meta = entry.metadata()?; // `DirEntry::metadata` does not follow symlinks.
            total = total.saturating_add(meta.blocks() * 512);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

impl Host {
    /// Watches the data dir of one generation while it runs: every `interval`, measure; over the
    /// quota (or unmeasurable), fail the plugin with the reason. Ends when the generation stops.
    pub(crate) fn watch_disk(&self, slot: &Arc<Slot>, generation_id: u64, quota: u64) {
        let interval = self.inner.config.disk_check_interval;
        if interval.is_zero() {
            return;
        }
        let data_dir = self.data_dir(&slot.name);
        let host: Weak<HostInner> = Arc::downgrade(&self.inner);
        let slot = Arc::downgrade(slot);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(s) = slot.upgrade() else { return };
                if s.inner.lock().running().map(|g| g.id) != Some(generation_id) {
                    return;
                }
                let dir = data_dir.clone();
                let usage = tokio::task::spawn_blocking(move || dir_usage(&dir)).await;
                let reason = match usage {
                    Ok(Ok(used)) => {
                        s.disk_used
                            .store(used, std::sync::atomic::Ordering::Relaxed);
                        if used <= quota {
                            continue;
                        }
                        format!(
                            "Plugin `{}` was stopped: its data dir holds {} MiB, more than its disk quota of {} MiB (`limits.disk`); hint: free space in `{}` or raise `limits.disk`",
                            s.name,
                            used >> 20,
                            quota >> 20,
                            data_dir.display()
                        )
                    }
                    Ok(Err(e)) => format!(
                        "Plugin `{}` was stopped: its data dir `{}` could not be measured for its disk quota: {e}",
                        s.name,
                        data_dir.display()
                    ),
                    Err(_) => return,
                };
                let Some(inner) = host.upgrade() else { return };
                Host { inner }.give_up(&s, generation_id, reason).await;
                return;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_allocated_bytes_and_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 300_000]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("usr")).unwrap();
        let used = dir_usage(dir.path()).unwrap();
        assert!((300_000..400_000).contains(&used), "{used}");
    }
}
