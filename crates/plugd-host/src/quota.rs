//! The data-dir quota (`limits.disk`): the host measures each running plugin's data dir
//! periodically and fails the plugin, with the reason, when it holds more than its quota. The
//! process sandbox also caps each file's size (`RLIMIT_FSIZE`), so one write cannot run far past
//! the quota between two checks.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Weak};

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};

use crate::Host;
use crate::lifecycle::HostInner;
use crate::registry::Slot;

/// Most entries [`dir_usage`] visits before it gives up.
const MAX_ENTRIES: u64 = 1_000_000;
/// Deepest directory level [`dir_usage`] descends to.
const MAX_DEPTH: u32 = 256;

/// Bytes actually allocated on disk under `path` (`st_blocks`, so sparse files count what they
/// use), without following symlinks, without crossing into other file systems, counting a
/// file with several hard links once. The walk is bounded: more than a million entries or 256
/// levels is an error (a plugin cannot make the host walk forever).
pub fn dir_usage(path: &Path) -> io::Result<u64> {
    let root = rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&root)?;
    let mut walk = Walk {
        dev: stat.st_dev,
        entries: 0,
        linked: HashSet::new(),
    };
    Ok(stat.st_blocks as u64 * 512 + walk.dir(root, 0)?)
}

struct Walk {
    dev: u64,
    entries: u64,
    linked: HashSet<(u64, u64)>,
}

impl Walk {
    fn dir(&mut self, dir: OwnedFd, depth: u32) -> io::Result<u64> {
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!(
                "Directory tree is deeper than {MAX_DEPTH} levels"
            )));
        }
        let mut total = 0;
        for entry in Dir::read_from(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(io::Error::other(format!("More than {MAX_ENTRIES} entries")));
            }
            let stat = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                // Deleted while we walk.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            if stat.st_dev != self.dev {
                continue;
            }
            if stat.st_nlink > 1
                && FileType::from_raw_mode(stat.st_mode) != FileType::Directory
                && !self.linked.insert((stat.st_dev, stat.st_ino))
            {
                continue;
            }
            total += stat.st_blocks as u64 * 512;
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
                    Ok(sub) => total += self.dir(sub, depth + 1)?,
                    Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(total)
    }
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
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn usage_counts_allocated_bytes_once_and_follows_no_link() {
        let base = tempfile::tempdir().unwrap();
        let data = base.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let usage = || dir_usage(&data).unwrap();
        let empty = usage();
        std::fs::write(data.join("a"), vec![1u8; 1 << 20]).unwrap();
        std::fs::hard_link(data.join("a"), data.join("a-again")).unwrap();
        // Sparse: 100 MiB long, nothing allocated.
        let sparse = std::fs::File::create(data.join("sparse")).unwrap();
        sparse.set_len(100 << 20).unwrap();
        std::fs::write(base.path().join("outside"), vec![1u8; 4 << 20]).unwrap();
        symlink(base.path().join("outside"), data.join("link")).unwrap();
        symlink(base.path(), data.join("dir-link")).unwrap();
        std::fs::create_dir(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/b"), vec![1u8; 1 << 20]).unwrap();
        let used = usage() - empty;
        assert!((2 << 20..(2 << 20) + (64 << 10)).contains(&used), "{used}");
        assert_eq!(
            dir_usage(&base.path().join("nope")).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }
}
